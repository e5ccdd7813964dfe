"""Tests for gateway.web_live: the event stream, the relay self-test and the live pages' files."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest

from gateway import web_live
from gateway.app import Gateway
from gateway.events import LoggedEvent, new_event
from gateway.model import EventType
from gateway.web_live import MAX_STREAMS, QUEUE_BOUND, STREAMS, StreamClient
from tests.conftest import ADA, ConfigFactory, GatewayFactory

Event = tuple[str, Any]


@dataclass
class Live:
    """A started gateway and an HTTP session pointed at its web server."""

    gw: Gateway
    session: aiohttp.ClientSession
    base: str


async def _live(gw: Gateway) -> AsyncIterator[Live]:
    async with aiohttp.ClientSession() as session:
        yield Live(gw, session, f"http://127.0.0.1:{gw.web.port}")


@pytest.fixture
async def live(start_gateway: GatewayFactory) -> AsyncIterator[Live]:
    async for value in _live(await start_gateway()):
        yield value


@pytest.fixture
async def virtual(
    start_gateway: GatewayFactory, gateway_config: ConfigFactory
) -> AsyncIterator[Live]:
    gw = await start_gateway(gateway_config(hardware={"backend": "virtual"}))
    async for value in _live(gw):
        yield value


class Stream:
    """Reads server-sent events from a response, each within a deadline."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.comments: list[str] = []
        self.seen: list[Event] = []

    async def next(self, within_s: float = 5.0) -> Event:
        """The next event as (name, parsed data); comments are kept aside."""
        name, data = "message", list[str]()
        async with asyncio.timeout(within_s):
            while True:
                raw = await self.response.content.readline()
                assert raw, "the stream ended"
                line = raw.decode().rstrip("\r\n")
                if not line:
                    if data:
                        self.seen.append((name, json.loads("\n".join(data))))
                        return self.seen[-1]
                    continue
                if line.startswith(":"):
                    self.comments.append(line[1:].strip())
                elif line.startswith("event:"):
                    name = line.partition(":")[2].strip()
                elif line.startswith("data:"):
                    data.append(line.partition(":")[2].strip())

    async def until(self, predicate: Callable[[str, Any], bool], within_s: float = 5.0) -> Event:
        """The first event seen so far or next that ``predicate`` accepts."""
        for name, data in self.seen:
            if predicate(name, data):
                return name, data
        async with asyncio.timeout(within_s):
            while True:
                name, data = await self.next(within_s)
                if predicate(name, data):
                    return name, data


async def open_stream(live: Live, **headers: str) -> tuple[aiohttp.ClientResponse, Stream]:
    response = await live.session.get(live.base + "/api/stream", headers=headers)
    return response, Stream(response)


def door(doors: list[dict[str, Any]], door_id: str) -> dict[str, Any]:
    [found] = [d for d in doors if d["id"] == door_id]
    return found


async def test_the_stream_starts_with_a_snapshot_of_the_doors_and_health(live: Live) -> None:
    response, stream = await open_stream(live)
    async with response:
        assert response.status == 200
        assert response.content_type == "text/event-stream"
        name, data = await stream.next()

    assert name == "snapshot"
    async with live.session.get(live.base + "/api/doors") as doors:
        assert data["doors"] == await doors.json()
    assert door(data["doors"], "front")["name"] == "Front door"
    assert data["health"]["site"] == "Demo coworking"
    assert data["backend"] == "simulated"


async def test_a_presented_card_shows_as_a_decision_and_an_open_door(virtual: Live) -> None:
    response, stream = await open_stream(virtual)
    async with response:
        name, snapshot = await stream.next()
        assert name == "snapshot"
        assert door(snapshot["doors"], "front")["unlocked"] is False

        async with virtual.session.post(
            virtual.base + "/api/simulator/doors/front/present",
            json={"credential": f"nfc_uid:{ADA}"},
        ) as presented:
            assert presented.status == 200

        _, event = await stream.until(lambda n, d: n == "event" and d["type"] == "access.granted")
        _, doors = await stream.until(
            lambda n, d: n == "doors" and door(d, "front")["unlocked"] is True
        )

    assert event["data"]["door"] == "front"
    assert event["data"]["reason"] == "granted"
    assert isinstance(event["seq"], int)
    assert "Ada" in event["explanation"]
    assert event["explanation"].startswith("GRANTED")
    assert door(doors, "front")["relay_energised"] is True


async def test_the_virtual_door_opens_on_the_stream(virtual: Live) -> None:
    response, stream = await open_stream(virtual)
    async with response:
        await stream.next()
        async with virtual.session.post(
            virtual.base + "/api/simulator/doors/front/present",
            json={"credential": f"nfc_uid:{ADA}"},
        ) as presented:
            assert presented.status == 200
        _, doors = await stream.until(lambda n, d: n == "doors" and door(d, "front")["open"])

    assert door(doors, "front")["open"] is True


async def test_a_denial_is_explained_on_the_stream(live: Live) -> None:
    response, stream = await open_stream(live)
    async with response:
        await stream.next()
        async with live.session.post(
            live.base + "/api/simulator/doors/front/present",
            json={"credential": "nfc_uid:04FFFFFFFFFF01"},
        ) as presented:
            assert presented.status == 200
        _, event = await stream.until(lambda n, d: n == "event" and d["type"] == "access.denied")

    assert event["data"]["reason"] == "unknown_credential"
    assert "not in the cache" in event["explanation"]


async def test_health_and_keepalives_follow(live: Live, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(web_live, "HEALTH_EVERY_S", 0.05)
    monkeypatch.setattr(web_live, "KEEPALIVE_EVERY_S", 0.05)
    response, stream = await open_stream(live)
    async with response:
        await stream.next()
        _, health = await stream.until(lambda n, _: n == "health")
        await stream.next()  # another health event: a keepalive came before it

    assert health["status"] == "ok"
    assert "keepalive" in stream.comments


async def test_pulse_unlocks_the_door_and_is_logged(live: Live) -> None:
    response, stream = await open_stream(live)
    async with response:
        await stream.next()
        async with live.session.post(
            live.base + "/api/doors/front/pulse", json={"seconds": 2}
        ) as pulsed:
            assert pulsed.status == 200
            assert await pulsed.json() == {"door": "front", "confirmed": True}
        _, doors = await stream.until(
            lambda n, d: n == "doors" and door(d, "front")["unlocked"] is True
        )
        _, event = await stream.until(lambda n, d: n == "event" and d["type"] == "door.unlocked")

    assert door(doors, "front")["relay_energised"] is True
    assert event["data"]["door"] == "front"


async def test_pulse_without_a_body_uses_the_default(live: Live) -> None:
    async with live.session.post(live.base + "/api/doors/lobby/pulse") as pulsed:
        assert pulsed.status == 200
        assert (await pulsed.json())["door"] == "lobby"
    async with live.session.get(live.base + "/api/doors") as doors:
        assert door(await doors.json(), "lobby")["relay_energised"] is True


async def test_pulse_of_an_unknown_door_is_404(live: Live) -> None:
    async with live.session.post(live.base + "/api/doors/nowhere/pulse", json={}) as pulsed:
        assert pulsed.status == 404
        assert "nowhere" in (await pulsed.json())["error"]


@pytest.mark.parametrize("seconds", ["3", 0, 1000, True, None])
async def test_pulse_refuses_bad_seconds(live: Live, seconds: Any) -> None:
    async with live.session.post(
        live.base + "/api/doors/front/pulse", json={"seconds": seconds}
    ) as pulsed:
        assert pulsed.status == 400
        assert "'seconds'" in (await pulsed.json())["error"]
    assert live.gw.doors.relay_on("front") is False


def _logged(seq: int) -> LoggedEvent:
    at = datetime(2026, 12, 1, 14, 0, tzinfo=UTC)
    return LoggedEvent(seq, new_event(EventType.DOOR_OPENED, at, {"door": "front"}))


async def test_a_client_that_falls_behind_is_dropped_not_buffered() -> None:
    client = StreamClient()
    cut: list[bool] = []
    client.on_drop = lambda: cut.append(True)

    for seq in range(QUEUE_BOUND * 3):
        client.offer(_logged(seq))

    assert client.dropped is True
    assert cut == [True]
    assert client.queue.qsize() == 1  # the backlog is freed: only the end-of-stream mark
    assert await client.next(0.1) is None


async def test_a_queue_within_its_bound_delivers_in_order() -> None:
    client = StreamClient()
    for seq in range(QUEUE_BOUND):
        client.offer(_logged(seq))

    assert client.dropped is False
    first = await client.next(0.1)
    assert first is not None
    assert first.seq == 0
    assert client.queue.qsize() == QUEUE_BOUND - 1


async def test_a_stalled_stream_client_is_dropped_and_unsubscribed(live: Live) -> None:
    response, stream = await open_stream(live)
    async with response:
        await stream.next()
        [client] = _clients(live.gw)
        # Fill the queue while the handler cannot run: nothing awaits in between.
        for seq in range(QUEUE_BOUND + 1):
            client.offer(_logged(10_000 + seq))
        assert client.dropped is True
        async with asyncio.timeout(5):
            await live.gw.web.app[STREAMS].wait_idle()
    assert _clients(live.gw) == []


def _clients(gw: Gateway) -> list[StreamClient]:
    """The stream clients subscribed to the gateway's event log."""
    listeners = gw.events._listeners
    return [
        owner
        for listener in listeners
        if isinstance(owner := getattr(listener, "__self__", None), StreamClient)
    ]


async def test_the_stream_unsubscribes_when_the_client_leaves(live: Live) -> None:
    response, stream = await open_stream(live)
    async with response:
        await stream.next()
        assert len(_clients(live.gw)) == 1
    # The server notices at its next poll of the connection.
    async with asyncio.timeout(5):
        await live.gw.web.app[STREAMS].wait_idle()
    assert _clients(live.gw) == []


async def test_streams_beyond_the_limit_are_refused(live: Live) -> None:
    opened = []
    try:
        for _ in range(MAX_STREAMS):
            response, stream = await open_stream(live)
            opened.append(response)
            assert response.status == 200
            await stream.next()
        async with live.session.get(live.base + "/api/stream") as refused:
            assert refused.status == 503
    finally:
        for response in opened:
            response.close()


async def test_stopping_the_gateway_ends_open_streams(live: Live) -> None:
    response, stream = await open_stream(live)
    async with response:
        await stream.next()
        async with asyncio.timeout(10):
            await live.gw.stop()
            rest = await response.content.read()

    assert _clients(live.gw) == []
    assert b"event: snapshot" not in rest


async def test_a_rebound_host_may_not_open_the_stream(live: Live) -> None:
    response, _ = await open_stream(live, Host=f"evil.example:{live.gw.web.port}")
    async with response:
        assert response.status == 401


@pytest.mark.parametrize(
    ("path", "kind", "needle"),
    [
        ("/selftest", "text/html", 'id="lock-state"'),
        ("/selftest.js", "application/javascript", "EventSource"),
        ("/dashboard.js", "application/javascript", "EventSource"),
        ("/", "text/html", "/dashboard.js"),
    ],
)
async def test_the_live_pages_are_served(live: Live, path: str, kind: str, needle: str) -> None:
    async with live.session.get(live.base + path) as response:
        assert response.status == 200
        assert response.content_type == kind
        text = await response.text()
    assert needle in text
    if path != "/":
        assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    if kind == "text/html":
        assert "<script>" not in text  # no inline script: the policy would block it
