"""The webhook endpoint over real HTTP: only signed, fresh, well-formed, first-seen events pass."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.officernd.receiver import PATH, WebhookReceiver
from gateway.officernd.webhooks import MAX_BODY_BYTES, SIGNATURE_HEADER, WebhookEvent, signature

SECRET = "whsec-0123456789abcdef"


class Endpoint:
    def __init__(self) -> None:
        self.secret: str | None = SECRET
        self.events: list[WebhookEvent] = []
        self.now = [1_800_000_000.0]
        self.receiver = WebhookReceiver(
            lambda: self.secret,
            self.events.append,
            wall_clock=lambda: self.now[0],
            monotonic=lambda: self.now[0],
        )
        self.url = ""
        self.session: aiohttp.ClientSession | None = None

    async def post(
        self, body: bytes, header: str | None = None, *, sign: bool = True
    ) -> tuple[int, dict[str, Any]]:
        assert self.session is not None
        headers = {"Content-Type": "application/json"}
        if header is not None:
            headers[SIGNATURE_HEADER] = header
        elif sign:
            headers[SIGNATURE_HEADER] = signature(SECRET, body, int(self.now[0]))
        async with self.session.post(self.url, data=body, headers=headers) as reply:
            return reply.status, await reply.json()


def event_body(event_id: str = "ev-1", event_type: str = "member.updated") -> bytes:
    body = {
        "event": event_id,
        "eventType": event_type,
        "data": {"object": {"_id": "64f0c0ffee00000000000001"}, "previousAttributes": {}},
        "createdAt": "2027-01-15T08:00:00.000Z",
    }
    return json.dumps(body).encode()


@pytest.fixture
async def endpoint() -> AsyncIterator[Endpoint]:
    point = Endpoint()
    app = web.Application(client_max_size=4 * MAX_BODY_BYTES)
    app.router.add_post(PATH, point.receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    point.url = f"http://127.0.0.1:{port}{PATH}"
    async with aiohttp.ClientSession() as session:
        point.session = session
        yield point
    await runner.cleanup()


async def test_a_signed_event_is_taken_once(endpoint: Endpoint) -> None:
    assert await endpoint.post(event_body()) == (200, {"accepted": True})
    assert await endpoint.post(event_body()) == (200, {"duplicate": True})
    [event] = endpoint.events
    assert (event.event_id, event.entity, event.object_id) == (
        "ev-1",
        "members",
        "64f0c0ffee00000000000001",
    )
    assert endpoint.receiver.status() == {"accepted": 1, "duplicates": 1, "rejected": {}}


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "unsigned"),
        ("t=1800000000,v1=" + "0" * 64, "bad signature"),
        ("garbage", "malformed signature"),
    ],
)
async def test_unsigned_or_badly_signed_deliveries_are_refused(
    endpoint: Endpoint, header: str | None, reason: str
) -> None:
    status, body = await endpoint.post(event_body(), header, sign=False)
    assert status == 401
    assert body == {"error": reason}
    assert endpoint.events == []


async def test_a_stale_or_future_timestamp_is_refused(endpoint: Endpoint) -> None:
    body = event_body()
    old = signature(SECRET, body, int(endpoint.now[0]) - 301)
    assert await endpoint.post(body, old) == (401, {"error": "stale timestamp"})
    ahead = signature(SECRET, body, int(endpoint.now[0]) + 301)
    assert await endpoint.post(body, ahead) == (401, {"error": "stale timestamp"})
    assert endpoint.events == []


async def test_a_refused_delivery_does_not_spend_its_event_id(endpoint: Endpoint) -> None:
    body = event_body("ev-7")
    await endpoint.post(body, "t=1800000000,v1=" + "1" * 64, sign=False)
    assert await endpoint.post(body) == (200, {"accepted": True})  # the genuine one still passes


async def test_signed_but_malformed_bodies_are_refused_after_the_signature(
    endpoint: Endpoint,
) -> None:
    for body in (b"not json", b"[]", json.dumps({"eventType": "member.updated"}).encode()):
        status, answer = await endpoint.post(body)
        assert status == 400
        assert answer["error"] == "malformed body"
    assert endpoint.events == []


async def test_a_body_too_large_is_refused_unread(endpoint: Endpoint) -> None:
    body = b"{" + b" " * (MAX_BODY_BYTES + 10) + b"}"
    assert await endpoint.post(body) == (413, {"error": "body too large"})


async def test_without_a_webhook_secret_the_endpoint_is_not_there(endpoint: Endpoint) -> None:
    endpoint.secret = None
    status, body = await endpoint.post(event_body())
    assert status == 404
    assert "no OfficeRnD webhook" in body["error"]
    assert endpoint.events == []


async def test_refusals_are_logged_at_most_once_a_minute_per_reason(
    endpoint: Endpoint, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.officernd.receiver")
    for _ in range(5):
        await endpoint.post(event_body(), None, sign=False)
    endpoint.now[0] += 61
    await endpoint.post(event_body(), None, sign=False)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert "unsigned" in lines[0]
    assert "5 since last said" in lines[1]
    assert endpoint.receiver.status()["rejected"] == {"unsigned": 6}
    assert all(SECRET not in line for line in lines)


async def test_a_body_arriving_in_pieces_is_read_whole(endpoint: Endpoint) -> None:
    body = event_body("ev-chunked")
    header = signature(SECRET, body, int(endpoint.now[0]))

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 7):
            yield body[start : start + 7]

    assert endpoint.session is not None
    async with endpoint.session.post(
        endpoint.url,
        data=pieces(),
        headers={"Content-Type": "application/json", SIGNATURE_HEADER: header},
    ) as reply:
        assert reply.status == 200
    assert [e.event_id for e in endpoint.events] == ["ev-chunked"]


async def test_a_chunked_body_over_the_limit_is_refused_as_too_large(endpoint: Endpoint) -> None:
    async def pieces() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield b" " * (MAX_BODY_BYTES // 4)

    assert endpoint.session is not None
    async with endpoint.session.post(
        endpoint.url, data=pieces(), headers={SIGNATURE_HEADER: "t=1,v1=" + "0" * 64}
    ) as reply:
        assert reply.status == 413
