"""The CSV export of the event journal: ``GET /api/events/export?from=&to=[&type=][&door=]``.

The response is streamed (chunked) page by page from the journal, so a year of events costs
the gateway one page of memory; dates without an offset are read in the site's timezone.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web

from gateway.journal import ExportError, JournalError, export_filename, parse_range

if TYPE_CHECKING:
    from gateway.app import Gateway

_LOGGER = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_NO_STORE = {"Cache-Control": "no-store"}


def _refused(cls: type[web.HTTPException], message: str, field: str | None) -> web.HTTPException:
    body = {"error": message} if field is None else {"error": message, "field": field}
    return cls(text=json.dumps(body), content_type="application/json", headers=_NO_STORE)


def _listed(request: web.Request, name: str) -> list[str]:
    """Every value of a repeatable, comma-separated query parameter."""
    return [part for value in request.query.getall(name, []) for part in value.split(",")]


def add_routes(app: web.Application, gw: Gateway, admin: Callable[[Handler], Handler]) -> None:
    """Add the export route; ``admin`` wraps it (the admin, or this machine on loopback)."""

    async def export(request: web.Request) -> web.StreamResponse:
        """The journal's events of a time range as CSV, streamed."""
        view = gw.cache.view  # one view for the whole export: names do not change half-way
        tz = view.tz
        doors = request.query.getall("door", [])
        if len(doors) > 1:
            raise _refused(web.HTTPBadRequest, "'door' may be given once", "door")

        def user_name(user_id: str) -> str | None:
            user = view.users.get(user_id)
            return None if user is None else user.name

        try:
            start, end = parse_range(request.query.get("from", ""), request.query.get("to", ""), tz)
            chunks = gw.journal.export_csv(
                start,
                end,
                types=_listed(request, "type"),
                door=doors[0] if doors else None,
                tz=tz,
                user_name=user_name,
            )
        except ExportError as err:
            raise _refused(web.HTTPBadRequest, str(err), err.parameter) from None
        async with contextlib.aclosing(chunks):
            try:
                # The header comes once the journal is open: a journal that cannot be read is
                # an error answer, not an empty file.
                header = await anext(chunks)
            except JournalError as err:
                _LOGGER.warning("CSV export refused: %s", err)
                raise _refused(
                    web.HTTPServiceUnavailable, f"the event journal cannot be read: {err}", None
                ) from None
            response = web.StreamResponse(
                headers={
                    "Content-Disposition": (
                        f'attachment; filename="{export_filename(start, end, tz)}"'
                    ),
                    "X-Content-Type-Options": "nosniff",
                    **_NO_STORE,
                }
            )
            response.content_type = "text/csv"
            response.charset = "utf-8"
            response.enable_chunked_encoding()
            await response.prepare(request)
            await response.write(header.encode())
            # A failure from here on cannot change the status: it aborts the transfer, so the
            # client sees a broken download rather than a short file that looks whole.
            async for chunk in chunks:
                await response.write(chunk.encode())
        await response.write_eof()
        return response

    app.router.add_get("/api/events/export", admin(export))
