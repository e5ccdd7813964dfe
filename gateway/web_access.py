"""Operator views in the web app: who can open a door, what a user can open, and when.

``GET /api/doors/{door}/who-can`` and ``GET /api/users/{user}/can-open`` answer with
``gateway.operator_views`` (the same ``access.decide`` as the doors), each door in the mode it
would be in at the instant asked about; ``/access`` is the page. Both views are linear in the
site's size (about a second for 100k credentials): they run in a worker thread, over the
immutable view current when the request came, so the doors keep being served meanwhile.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway.operator_views import can_open, can_open_to_json, who_can, who_can_to_json
from gateway.web_admin import static_page

if TYPE_CHECKING:
    from gateway.app import Gateway

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: At most this many ids are named when an id is unknown.
KNOWN_IDS_SHOWN = 10
_FLAGS = {"1": True, "true": True, "0": False, "false": False}


def _error(
    cls: type[web.HTTPException], message: str, field: str | None = None
) -> web.HTTPException:
    body = {"error": message} if field is None else {"error": message, "field": field}
    return cls(text=json.dumps(body), content_type="application/json")


def _some(ids: Iterable[str]) -> str:
    known = sorted(ids)
    shown = ", ".join(known[:KNOWN_IDS_SHOWN]) or "none"
    return f"{shown}, … ({len(known)} in all)" if len(known) > KNOWN_IDS_SHOWN else shown


def _instant(request: web.Request, now: datetime) -> datetime:
    """The ``at`` parameter as an aware instant (absent: ``now``); a 400 naming it otherwise."""
    text = request.query.get("at")
    if text is None:
        return now
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise _error(
            web.HTTPBadRequest,
            f"'at' must be an ISO 8601 instant with a UTC offset, e.g. 2026-12-01T09:00:00+01:00 "
            f"(a '+' in a query string must be sent as %2B), not {text[:40]!r}",
            "at",
        ) from None
    if at.tzinfo is None or at.utcoffset() is None:
        raise _error(
            web.HTTPBadRequest,
            "'at' must carry a UTC offset, e.g. 2026-12-01T09:00:00+01:00",
            "at",
        )
    return at


def _flag(request: web.Request, name: str) -> bool:
    text = request.query.get(name, "0")
    if text not in _FLAGS:
        allowed = ", ".join(_FLAGS)
        raise _error(web.HTTPBadRequest, f"'{name}' must be one of {allowed}", name)
    return _FLAGS[text]


def _out_of_range(at: datetime) -> web.HTTPException:
    return _error(web.HTTPBadRequest, f"'at' {at.isoformat()} is out of range", "at")


def add_routes(app: web.Application, gw: Gateway, admin: Callable[[Handler], Handler]) -> None:
    """Add the operator views' page and API; admin wraps every route."""

    def outage(at: datetime) -> timedelta | None:
        return None if gw.cloud is None else gw.cloud.offline_for(at)

    async def page(request: web.Request) -> web.StreamResponse:
        """The operator views page."""
        return static_page("access.html")

    async def script(request: web.Request) -> web.StreamResponse:
        """The operator views page's script."""
        return static_page("access.js")

    async def door_who_can(request: web.Request) -> web.StreamResponse:
        """Every credential that opens the door at ``at`` (``denied=1``: and the near misses)."""
        door = request.match_info["door"]
        view = gw.cache.view
        if door not in view.doors:
            raise _error(web.HTTPNotFound, f"no door {door!r}; doors: {_some(view.doors)}")
        at = _instant(request, gw.clock())
        denied = _flag(request, "denied")
        try:
            mode = gw.doors.mode_at(door, at)
            offline_for = outage(at)

            def answer() -> dict[str, Any]:
                holders = who_can(
                    view, door, at, mode=mode, offline_for=offline_for, include_denied=denied
                )
                return who_can_to_json(view, door, at, mode, holders, denied=denied)

            body = await asyncio.to_thread(answer)
        except OverflowError:
            raise _out_of_range(at) from None
        return web.json_response(body)

    async def user_can_open(request: web.Request) -> web.StreamResponse:
        """Each of the user's credentials decided at every door at ``at``, and their rules."""
        user = request.match_info["user"]
        view = gw.cache.view
        if view.user(user) is None:
            raise _error(web.HTTPNotFound, f"no user {user!r}; users: {_some(view.users)}")
        at = _instant(request, gw.clock())
        try:
            # The doors' modes are read here, on the loop that owns them.
            modes = {door: gw.doors.mode_at(door, at) for door in view.doors}
            offline_for = outage(at)

            def answer() -> dict[str, Any]:
                doors = can_open(view, user, at, mode=modes.__getitem__, offline_for=offline_for)
                return can_open_to_json(view, user, at, doors)

            body = await asyncio.to_thread(answer)
        except OverflowError:
            raise _out_of_range(at) from None
        return web.json_response(body)

    app.router.add_get("/access", admin(page))
    app.router.add_get("/access.js", admin(script))
    app.router.add_get("/api/doors/{door}/who-can", admin(door_who_can))
    app.router.add_get("/api/users/{user}/can-open", admin(user_can_open))
