"""Live pages of the local web app: the server-sent event stream, the relay self-test and the
scripts of the dashboard and self-test pages.

``GET /api/stream`` sends ``snapshot`` (doors and health) first, then ``event`` for every event
recorded, ``doors`` when any door's JSON changes, ``health`` every few seconds and a keepalive
comment; a client too slow to take its events is dropped, never buffered without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway.events import LoggedEvent
from gateway.explain import explain
from gateway.model import AssuranceLevel, Decision, DoorMode, EventType, Reason
from gateway.outbox import event_to_json
from gateway.web import BadRequest, _body, _door_json, health_json
from gateway.web_admin import static_page

if TYPE_CHECKING:
    from gateway.app import Gateway

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_LOGGER = logging.getLogger(__name__)

#: Events a client may have waiting; one more and it is dropped (it reconnects and resyncs).
QUEUE_BOUND = 256
#: Streams open at once; more are refused with 503.
MAX_STREAMS = 16
DOORS_POLL_S = 0.25
HEALTH_EVERY_S = 5.0
KEEPALIVE_EVERY_S = 15.0
#: A write the client does not take within this long ends its stream (also bounds shutdown).
WRITE_TIMEOUT_S = 10.0
PULSE_DEFAULT_S = 3.0
PULSE_MIN_S = 0.5
PULSE_MAX_S = 30.0
_DECISIONS = frozenset({EventType.ACCESS_GRANTED, EventType.ACCESS_DENIED})


class StreamClient:
    """One connected stream's bounded queue of events; ``offer`` never blocks nor raises."""

    def __init__(self, bound: int = QUEUE_BOUND) -> None:
        # None is the sentinel that ends the stream; the bound leaves room for it.
        self.queue: asyncio.Queue[LoggedEvent | None] = asyncio.Queue(maxsize=bound + 1)
        self.bound = bound
        self.closed = False
        self.dropped = False
        self.on_drop: Callable[[], None] | None = None

    def offer(self, logged: LoggedEvent) -> None:
        """Queue ``logged`` for the client; a full queue drops the client instead of growing."""
        if self.closed:
            return  # the stream ended: a listener not yet removed must do nothing
        if self.queue.qsize() >= self.bound:
            self.drop()
            return
        self.queue.put_nowait(logged)

    def close(self) -> None:
        """End the stream: the handler finishes after what it is writing now."""
        if self.closed:
            return
        self.closed = True
        while not self.queue.empty():  # free the backlog now, not when the handler gets to it
            self.queue.get_nowait()
        self.queue.put_nowait(None)

    def drop(self) -> None:
        """Close the stream of a client that fell behind, and cut its connection."""
        if self.closed:
            return
        self.dropped = True
        self.close()
        if self.on_drop is not None:
            try:
                self.on_drop()
            except Exception:  # called from the event log, which must never see it raise
                _LOGGER.exception("could not cut a slow stream client's connection")

    async def next(self, timeout_s: float) -> LoggedEvent | None:
        """The next queued event, or None after ``timeout_s`` or once closed."""
        if self.closed and self.queue.empty():
            return None
        try:
            async with asyncio.timeout(max(0.0, timeout_s)):
                return await self.queue.get()
        except TimeoutError:
            return None


class StreamHub:
    """The streams open on one web app: bounds their number and ends them at shutdown."""

    def __init__(self, limit: int = MAX_STREAMS) -> None:
        self.limit = limit
        self.clients: set[StreamClient] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    def add(self, client: StreamClient) -> None:
        """Count ``client`` among the open streams."""
        self.clients.add(client)
        self._idle.clear()

    def discard(self, client: StreamClient) -> None:
        """``client``'s stream has ended (idempotent)."""
        self.clients.discard(client)
        if not self.clients:
            self._idle.set()

    async def wait_idle(self) -> None:
        """Return once no stream is open."""
        await self._idle.wait()

    async def close_all(self, app: web.Application) -> None:
        """``on_shutdown``: end every stream, so the server's shutdown need not wait for them."""
        for client in list(self.clients):
            client.close()


#: The web app's open streams.
STREAMS: web.AppKey[StreamHub] = web.AppKey("live_streams", StreamHub)


def event_json(gw: Gateway, logged: LoggedEvent) -> dict[str, Any]:
    """An ``/api/events`` row, with an ``explanation`` for a decision when one can be made."""
    row: dict[str, Any] = {"seq": logged.seq, **json.loads(event_to_json(logged.event))}
    if logged.event.type in _DECISIONS:
        text = _explanation(gw, logged)
        if text is not None:
            row["explanation"] = text
    return row


def _explanation(gw: Gateway, logged: LoggedEvent) -> str | None:
    data = logged.event.data
    try:
        assurance = data.get("assurance")
        decision = Decision(
            granted=logged.event.type is EventType.ACCESS_GRANTED,
            reason=Reason(data["reason"]),
            door_id=str(data["door"]),
            at=logged.event.at,
            mode=DoorMode(data["mode"]),
            credential_id=data.get("credential"),
            user_id=data.get("user"),
            rule_id=data.get("rule"),
            assurance=AssuranceLevel.parse(assurance) if assurance is not None else None,
        )
        return explain(decision, gw.cache.view)
    except (KeyError, ValueError, TypeError):
        return None  # an event of an older format: shown without an explanation


def doors_json(gw: Gateway) -> list[dict[str, Any]]:
    """What ``GET /api/doors`` answers."""
    return [
        _door_json(gw, door) for door in sorted(gw.cache.view.doors.values(), key=lambda d: d.id)
    ]


def sse(name: str, data: Any) -> bytes:
    """One server-sent event: ``event: NAME`` and its JSON data (JSON has no raw newlines)."""
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def _abort(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()


def add_routes(app: web.Application, gw: Gateway, admin: Callable[[Handler], Handler]) -> None:
    """Add this module's routes; admin wraps every route that needs the admin."""
    hub = app[STREAMS] = StreamHub()
    app.on_shutdown.append(hub.close_all)

    async def stream(request: web.Request) -> web.StreamResponse:
        """Server-sent events: snapshot, then events, door changes, health and keepalives."""
        if len(hub.clients) >= hub.limit:
            raise web.HTTPServiceUnavailable(
                text=json.dumps({"error": f"at most {hub.limit} live streams at once"}),
                content_type="application/json",
                headers={"Retry-After": "5"},
            )
        client = StreamClient()
        client.on_drop = lambda: _abort(request)
        hub.add(client)
        # Subscribed before the snapshot is taken: nothing recorded in between is missed.
        remove = gw.events.add_listener(client.offer)
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",
            }
        )
        try:
            await response.prepare(request)
            doors = doors_json(gw)
            snapshot = {
                "doors": doors,
                "health": await health_json(gw),
                "backend": gw.config.hardware.backend,  # pages offer the simulator by it
            }
            await _write(response, sse("snapshot", snapshot))
            await _follow(gw, request, response, client, doors)
        except (ConnectionError, TimeoutError):
            _abort(request)  # the client went away or stopped reading: nothing more to send
        finally:
            client.close()
            with contextlib.suppress(ValueError):  # already removed
                remove()
            hub.discard(client)
        return response

    async def pulse(request: web.Request) -> web.StreamResponse:
        """Self-test: release the door's lock for ``seconds``; ``confirmed`` by the hardware."""
        door = request.match_info["door"]
        if door not in gw.cache.view.doors:
            raise web.HTTPNotFound(
                text=json.dumps({"error": f"no door {door!r}"}), content_type="application/json"
            )
        body = await _body(request) if request.body_exists else {}
        seconds = body.get("seconds", PULSE_DEFAULT_S)
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, int | float)
            or not math.isfinite(seconds)
            or not PULSE_MIN_S <= seconds <= PULSE_MAX_S
        ):
            raise BadRequest(
                f"'seconds' must be a number from {PULSE_MIN_S} to {PULSE_MAX_S:g} "
                f"(default {PULSE_DEFAULT_S:g})"
            )
        confirmed = await gw.doors.unlock(door, float(seconds), source="self-test")
        return web.json_response({"door": door, "confirmed": confirmed})

    async def selftest(request: web.Request) -> web.StreamResponse:
        """The installer's self-test page."""
        return static_page("selftest.html")

    async def selftest_js(request: web.Request) -> web.StreamResponse:
        """The self-test page's script."""
        return static_page("selftest.js")

    async def dashboard_js(request: web.Request) -> web.StreamResponse:
        """The dashboard's script."""
        return static_page("dashboard.js")

    app.router.add_get("/api/stream", admin(stream))
    app.router.add_post("/api/doors/{door}/pulse", admin(pulse))
    app.router.add_get("/selftest", admin(selftest))
    app.router.add_get("/selftest.js", selftest_js)
    app.router.add_get("/dashboard.js", dashboard_js)


async def _write(response: web.StreamResponse, data: bytes) -> None:
    async with asyncio.timeout(WRITE_TIMEOUT_S):
        await response.write(data)


async def _follow(
    gw: Gateway,
    request: web.Request,
    response: web.StreamResponse,
    client: StreamClient,
    doors: list[dict[str, Any]],
) -> None:
    """Send what happens until the client leaves, falls behind, or the server shuts down."""
    loop = asyncio.get_running_loop()
    now = loop.time()
    next_doors, next_health, next_keepalive = (
        now + DOORS_POLL_S,
        now + HEALTH_EVERY_S,
        now + KEEPALIVE_EVERY_S,
    )
    while not client.closed:
        logged = await client.next(min(next_doors, next_health, next_keepalive) - loop.time())
        if client.closed or _gone(request):
            return
        if logged is not None:
            await _write(response, sse("event", event_json(gw, logged)))
        now = loop.time()
        if now >= next_doors:
            next_doors = now + DOORS_POLL_S
            current = doors_json(gw)
            if current != doors:
                doors = current
                await _write(response, sse("doors", doors))
        if now >= next_health:
            next_health = now + HEALTH_EVERY_S
            await _write(response, sse("health", await health_json(gw)))
        if now >= next_keepalive:
            next_keepalive = now + KEEPALIVE_EVERY_S
            await _write(response, b": keepalive\n\n")
