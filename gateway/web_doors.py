"""Door mapping in the web app: how each door is wired, saved in the state directory.

``GET /api/settings/doors`` lists the site's doors with their effective mapping;
``PUT /api/settings/doors/{door}`` validates and saves one door's keys (and its board slot),
then asks the run loop for a restart so they take effect. ``/doors`` is the page.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal, get_args, get_origin, get_type_hints

from aiohttp import web

from gateway import local_settings
from gateway.config import BOARD_ADDRESSES, DOORS_PER_BOARD, Config, ConfigError, DoorEntry
from gateway.local_settings import DOOR_KEYS, FieldError, SettingsError
from gateway.web_admin import static_page

if TYPE_CHECKING:
    from gateway.app import Gateway
    from gateway.model import Door

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: Backends whose doors sit on door boards (the board field applies).
BOARD_BACKENDS = ("board", "virtual")
_NO_STORE = {"Cache-Control": "no-store"}


def _refused(status: int, errors: list[FieldError]) -> web.HTTPException:
    """A JSON error: the first message, its field, and every problem."""
    body = {
        "error": errors[0].error,
        "field": errors[0].field,
        "errors": [{"field": e.field, "error": e.error} for e in errors],
    }
    classes: dict[int, type[web.HTTPException]] = {404: web.HTTPNotFound, 409: web.HTTPConflict}
    cls = classes.get(status, web.HTTPBadRequest)
    return cls(text=json.dumps(body), content_type="application/json", headers=_NO_STORE)


def field_schema() -> list[dict[str, Any]]:
    """Each DoorEntry key with its kind, allowed values or bounds, and default (for the form)."""
    hints = get_type_hints(DoorEntry)
    schema = []
    for f in dataclasses.fields(DoorEntry):
        hint = hints[f.name]
        item: dict[str, Any] = {"name": f.name, "default": f.default}
        if get_origin(hint) is Literal:
            item |= {"kind": "enum", "choices": list(get_args(hint))}
        elif hint is bool:
            item["kind"] = "bool"
        elif hint in (int, float):
            item |= {"kind": "number", "min": f.metadata.get("min"), "max": f.metadata.get("max")}
        else:
            item["kind"] = "string"
        if "allowed" in f.metadata:
            item["allowed"] = f.metadata["allowed"]
        schema.append(item)
    return schema


def _board_of(config: Config, door_id: str) -> dict[str, int] | None:
    for board in config.hardware.boards:
        if door_id in board.doors:
            return {"address": board.address, "slot": board.doors.index(door_id)}
    return None


def door_settings_json(
    config: Config, door: Door, saved: local_settings.LocalSettings
) -> dict[str, Any]:
    """One door as the page shows it: site data, effective mapping, board, saved keys."""
    entry = config.doors.get(door.id, DoorEntry())
    saved_keys = sorted(saved.doors.get(door.id, {}))
    if saved.boards is not None and any(door.id in b.get("doors", ()) for b in saved.boards):
        saved_keys.append("board")
    return {
        "id": door.id,
        "name": door.name,
        "unlock_seconds": door.unlock_seconds,
        "min_assurance": door.min_assurance.label,
        "mapping": dataclasses.asdict(entry),
        "board": _board_of(config, door.id),
        "saved": saved_keys,
        "backend": config.hardware.backend,
    }


def add_routes(app: web.Application, gw: Gateway, admin: Callable[[Handler], Handler]) -> None:
    """Add the door mapping page and API; admin wraps every route that needs the admin."""
    state_dir = gw.config.gateway.state_dir
    restart_asked = [False]

    def saved() -> local_settings.LocalSettings:
        try:
            return local_settings.load_settings(state_dir)
        except ConfigError:
            return local_settings.LocalSettings()

    def pending() -> bool:
        """A restart was asked for, or the saved settings are not the ones in effect."""
        if restart_asked[0] or gw.restart_requested.is_set():
            return True
        try:
            return local_settings.with_local_settings(gw.config) != gw.config
        except ConfigError:
            return True

    async def page(request: web.Request) -> web.StreamResponse:
        """The door mapping page."""
        return static_page("doors.html")

    async def script(request: web.Request) -> web.StreamResponse:
        """The door mapping page's script."""
        return static_page("doors.js")

    async def list_doors(request: web.Request) -> web.StreamResponse:
        """Every site door with its mapping; the form's field schema; whether a restart is due."""
        # Small files, but the loop drives the doors: read them in a thread.
        current, restart_pending = await asyncio.to_thread(lambda: (saved(), pending()))
        doors = sorted(gw.cache.view.doors.values(), key=lambda d: d.id)
        body = {
            "doors": [door_settings_json(gw.config, d, current) for d in doors],
            "backend": gw.config.hardware.backend,
            "fields": field_schema(),
            "board_addresses": list(BOARD_ADDRESSES),
            "doors_per_board": DOORS_PER_BOARD,
            "restart_pending": restart_pending,
        }
        return web.json_response(body, headers=_NO_STORE)

    async def put_door(request: web.Request) -> web.StreamResponse:
        """Validate and save one door's keys (and board slot); 200 and a restart, or 400/404."""
        from gateway.web import _body  # noqa: PLC0415 - gateway.web imports this module

        door_id = request.match_info["door"]
        door = gw.cache.view.doors.get(door_id)
        if door is None:
            known = ", ".join(sorted(gw.cache.view.doors)) or "none"
            raise _refused(404, [FieldError("door", f"no door {door_id!r} (doors: {known})")])
        body = await _body(request)
        allowed = (*DOOR_KEYS, "board")
        unknown = [k for k in body if k not in allowed]
        if unknown:
            listed = ", ".join(allowed)
            raise _refused(
                400, [FieldError(k, f"unknown key {k!r}; allowed keys: {listed}") for k in unknown]
            )
        board = _board_request(body.pop("board", None), gw.config.hardware.backend)
        try:
            new_config = await asyncio.to_thread(
                local_settings.save_door, state_dir, gw.config, door_id, body, board=board
            )
        except SettingsError as err:
            raise _refused(400, err.errors) from None
        except ConfigError as err:  # the saved file is damaged: say so, change nothing
            raise _refused(409, [FieldError("settings", str(err))]) from None
        restart_asked[0] = True
        gw.request_restart(f"door {door_id} mapping saved")
        return web.json_response(
            {"door": door_settings_json(new_config, door, saved()), "restart": True},
            headers=_NO_STORE,
        )

    app.router.add_get("/doors", admin(page))
    app.router.add_get("/doors.js", admin(script))
    app.router.add_get("/api/settings/doors", admin(list_doors))
    app.router.add_put("/api/settings/doors/{door}", admin(put_door))


def _board_request(raw: object, backend: str) -> tuple[int, int] | None:
    """The ``board`` of a PUT as (address, slot); a 400 naming the field if unusable."""
    if raw is None:
        return None
    if backend not in BOARD_BACKENDS:
        message = f'doors are not on door boards with backend "{backend}"; leave out "board"'
        raise _refused(400, [FieldError("board", message)])
    if (
        not isinstance(raw, dict)
        or set(raw) != {"address", "slot"}
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in raw.values())
    ):
        message = 'expected {"address": integer, "slot": integer}'
        raise _refused(400, [FieldError("board", message)])
    return raw["address"], raw["slot"]
