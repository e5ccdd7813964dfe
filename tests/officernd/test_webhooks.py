"""Tests for gateway.officernd.webhooks: signatures, event parsing, deduplication."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import math
import time
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from gateway.officernd.client import ALL_SCOPES, OfficeRnDClient, OfficeRnDSettings
from gateway.officernd.webhooks import (
    MAX_BODY_BYTES,
    SIGNATURE_HEADER,
    TOLERANCE_S,
    SeenEvents,
    WebhookEvent,
    WebhookRejected,
    parse_event,
    signature,
    verify,
)
from tests.conftest import pick_free_port
from tests.officernd.fake import FakeOfficeRnD

SECRET = "whsec-3f1c0d9e8b7a"
NOW = 1_796_000_000  # a Unix time in late 2026
MEMBER_ID = "66a1b2c3d4e5f60718293a4b"


def body(**overrides: Any) -> bytes:
    """A member.updated delivery as OfficeRnD sends it, compact JSON."""
    data: dict[str, Any] = {
        "event": "66ffeeddccbbaa0099887766",
        "eventType": "member.updated",
        "data": {
            "object": {"_id": MEMBER_ID, "name": "Ada Lovelace", "status": "active"},
            "previousAttributes": {"status": "pending"},
        },
        "createdAt": "2026-12-01T14:00:00.123Z",
    }
    data.update(overrides)
    return json.dumps(data, separators=(",", ":")).encode()


def hand_signed(secret: str, raw: bytes, t: int | str) -> str:
    """The v1 digest computed here independently of the module: HMAC-SHA256(secret, body.t)."""
    return hmac.new(secret.encode(), raw + b"." + str(t).encode(), hashlib.sha256).hexdigest()


def reason_of(raw: bytes, header: str | None, *, now: float = NOW, secret: str = SECRET) -> str:
    with pytest.raises(WebhookRejected) as caught:
        verify(secret, raw, header, now=now)
    return caught.value.reason


# --- verify -------------------------------------------------------------------------------------


def test_header_name_is_lower_case_officernd_signature() -> None:
    assert SIGNATURE_HEADER == "officernd-signature"


def test_a_good_signature_passes() -> None:
    raw = body()
    verify(SECRET, raw, f"t={NOW},v1={hand_signed(SECRET, raw, NOW)}", now=NOW)


def test_signature_helper_matches_the_documented_scheme() -> None:
    raw = body()
    assert signature(SECRET, raw, NOW) == f"t={NOW},v1={hand_signed(SECRET, raw, NOW)}"


def test_spaces_and_upper_case_hex_are_tolerated() -> None:
    raw = body()
    verify(SECRET, raw, f" t={NOW} , v1={hand_signed(SECRET, raw, NOW).upper()} ", now=NOW)


def test_wrong_secret_is_a_bad_signature() -> None:
    raw = body()
    assert reason_of(raw, signature("another-secret", raw, NOW)) == "bad signature"


def test_tampered_body_is_a_bad_signature() -> None:
    raw = body()
    header = signature(SECRET, raw, NOW)
    tampered = raw.replace(b'"active"', b'"former"')
    assert tampered != raw
    assert reason_of(tampered, header) == "bad signature"


def test_a_timestamp_changed_after_signing_is_a_bad_signature() -> None:
    raw = body()
    digest = hand_signed(SECRET, raw, NOW)
    assert reason_of(raw, f"t={NOW + 1},v1={digest}") == "bad signature"


@pytest.mark.parametrize("offset", [TOLERANCE_S + 1, -(TOLERANCE_S + 1), 86_400, -86_400])
def test_stale_and_future_timestamps_are_refused(offset: int) -> None:
    raw = body()
    header = signature(SECRET, raw, NOW + offset)
    assert reason_of(raw, header) == "stale timestamp"


@pytest.mark.parametrize("offset", [TOLERANCE_S, -TOLERANCE_S, 0])
def test_timestamps_at_the_edge_of_the_window_pass(offset: int) -> None:
    raw = body()
    verify(SECRET, raw, signature(SECRET, raw, NOW + offset), now=NOW)


@pytest.mark.parametrize("now", [math.nan, math.inf, -math.inf])
def test_a_clock_that_is_not_a_number_counts_as_stale(now: float) -> None:
    raw = body()
    assert reason_of(raw, signature(SECRET, raw, NOW), now=now) == "stale timestamp"


@pytest.mark.parametrize("header", [None, "", "   "])
def test_unsigned_deliveries_are_refused(header: str | None) -> None:
    assert reason_of(body(), header) == "unsigned"


@pytest.mark.parametrize(
    "header",
    [
        "garbage",
        f"t={NOW}",  # no v1
        "v1=" + "a" * 64,  # no t
        f"t={NOW},v1=abc",  # short hex
        f"t={NOW},v1=" + "g" * 64,  # not hex
        f"t=-{NOW},v1=" + "a" * 64,
        f"t={NOW}.5,v1=" + "a" * 64,
        "t=\u00b2\u00b3,v1=" + "a" * 64,  # digits, but not ASCII ones
        f"t={NOW},t={NOW},v1=" + "a" * 64,  # two timestamps
        f"t={NOW},,v1=" + "a" * 64,
        f"t={NOW};v1=" + "a" * 64,
        f"t={NOW},v1=" + "a" * 64 + "," + "x" * 3000,
        f"t={NOW}," + ",".join(["v1=" + "a" * 64] * 9),
    ],
)
def test_malformed_headers_are_refused(header: str) -> None:
    assert reason_of(body(), header) == "malformed signature"


def test_any_of_several_v1_values_may_match_during_rotation() -> None:
    raw = body()
    old = hand_signed("old-secret", raw, NOW)
    new = hand_signed(SECRET, raw, NOW)
    verify(SECRET, raw, f"t={NOW},v1={old},v1={new}", now=NOW)
    verify(SECRET, raw, f"t={NOW},v1={new},v1={old}", now=NOW)
    verify("old-secret", raw, f"t={NOW},v1={new},v1={old}", now=NOW)
    assert reason_of(raw, f"t={NOW},v1={old},v1={old}") == "bad signature"


def test_unknown_schemes_are_ignored() -> None:
    raw = body()
    digest = hand_signed(SECRET, raw, NOW)
    verify(SECRET, raw, f"t={NOW},v0=deadbeef,v1={digest}", now=NOW)


def test_an_oversized_body_is_refused_before_hashing() -> None:
    raw = b" " * (MAX_BODY_BYTES + 1)
    assert reason_of(raw, signature(SECRET, raw, NOW)) == "body too large"


def test_an_empty_secret_is_a_configuration_error() -> None:
    raw = body()
    with pytest.raises(ValueError, match="secret"):
        verify("", raw, signature("", raw, NOW), now=NOW)


def test_the_rejection_text_carries_no_secret_or_digest() -> None:
    raw = body()
    digest = hand_signed(SECRET, raw, NOW)
    with pytest.raises(WebhookRejected) as caught:
        verify(SECRET, raw, f"t={NOW},v1={'0' * 64}", now=NOW)
    assert SECRET not in str(caught.value)
    assert digest not in str(caught.value)


@given(header=st.text(max_size=300), now=st.floats(allow_nan=True, allow_infinity=True))
def test_arbitrary_headers_raise_only_webhook_rejected(header: str, now: float) -> None:
    with contextlib.suppress(WebhookRejected):
        verify(SECRET, b'{"event":"x"}', header, now=now)


@given(
    t=st.integers(min_value=0, max_value=10**12 - 1),
    extra=st.lists(
        st.tuples(st.sampled_from(["t", "v1", "v0", "x", " v1 "]), st.text(max_size=70)),
        max_size=5,
    ),
)
def test_structured_garbage_raises_only_webhook_rejected(
    t: int, extra: list[tuple[str, str]]
) -> None:
    header = ",".join([f"t={t}", *(f"{key}={value}" for key, value in extra)])
    with contextlib.suppress(WebhookRejected):
        verify(SECRET, b"{}", header, now=NOW)


@given(raw=st.binary(max_size=200))
def test_any_body_signed_with_the_secret_passes(raw: bytes) -> None:
    verify(SECRET, raw, signature(SECRET, raw, NOW), now=NOW)


# --- parse_event ----------------------------------------------------------------------------------


def test_a_member_event_is_parsed() -> None:
    assert parse_event(body()) == WebhookEvent(
        event_id="66ffeeddccbbaa0099887766",
        event_type="member.updated",
        object_id=MEMBER_ID,
        entity="members",
        created_at="2026-12-01T14:00:00.123Z",
    )


@pytest.mark.parametrize(
    ("event_type", "entity"),
    [
        ("member.created", "members"),
        ("member.removed", "members"),
        ("membership.updated", "memberships"),
        ("company.removed", "companies"),
        ("booking.created", "bookings"),
        ("fee.updated", "fees"),
        ("opportunity.created", "opportunities"),
        ("day.passed", "days"),
    ],
)
def test_the_entity_comes_from_the_type_prefix(event_type: str, entity: str) -> None:
    assert parse_event(body(eventType=event_type)).entity == entity


def test_an_older_shape_object_with_id_still_gives_the_id() -> None:
    raw = body(data={"object": {"id": MEMBER_ID, "fullName": "Ada"}})
    assert parse_event(raw).object_id == MEMBER_ID


@pytest.mark.parametrize(
    "data", [None, {}, {"object": None}, {"object": {"_id": 42}}, {"object": "x"}, []]
)
def test_no_usable_object_id_is_none_not_an_error(data: object) -> None:
    assert parse_event(body(data=data)).object_id is None


def test_created_at_may_be_absent() -> None:
    raw = json.dumps({"event": "e1", "eventType": "member.created"}).encode()
    assert parse_event(raw).created_at == ""


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b"\xff\xfe\x00",
        b"[]",
        b'"member.created"',
        b"[" * 100_000,
        json.dumps({"eventType": "member.created"}).encode(),  # no event id
        json.dumps({"event": "", "eventType": "member.created"}).encode(),
        json.dumps({"event": "e1"}).encode(),  # no type
        json.dumps({"event": 7, "eventType": "member.created"}).encode(),
        json.dumps({"event": "e1", "eventType": "membercreated"}).encode(),
        json.dumps({"event": "e1", "eventType": "Member.created"}).encode(),
        json.dumps({"event": "e" * 200, "eventType": "member.created"}).encode(),
        json.dumps({"event": "e1", "eventType": "member.created", "createdAt": 5}).encode(),
    ],
)
def test_malformed_bodies_are_refused(raw: bytes) -> None:
    with pytest.raises(WebhookRejected) as caught:
        parse_event(raw)
    assert caught.value.reason == "malformed body"


def test_an_oversized_body_is_not_parsed() -> None:
    with pytest.raises(WebhookRejected) as caught:
        parse_event(b" " * (MAX_BODY_BYTES + 1))
    assert caught.value.reason == "body too large"


@given(raw=st.binary(max_size=300))
def test_arbitrary_bodies_raise_only_webhook_rejected(raw: bytes) -> None:
    with contextlib.suppress(WebhookRejected):
        parse_event(raw)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


@given(
    fields=st.dictionaries(
        st.sampled_from(["event", "eventType", "data", "createdAt", "other"]), JSON_VALUES
    ),
    event_type=st.one_of(st.none(), st.text(max_size=30), st.sampled_from(["member.created"])),
    obj=JSON_VALUES,
)
def test_arbitrary_json_events_raise_only_webhook_rejected(
    fields: dict[str, Any], event_type: str | None, obj: Any
) -> None:
    if event_type is not None:
        fields["eventType"] = event_type
    fields.setdefault("data", {"object": obj})
    with contextlib.suppress(WebhookRejected):
        event = parse_event(json.dumps(fields).encode())
        assert event.event_id == fields["event"]
        assert event.object_id is None or isinstance(event.object_id, str)


# --- SeenEvents -----------------------------------------------------------------------------------


class Clock:
    """A monotonic clock moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_redelivery_is_seen_once() -> None:
    seen = SeenEvents()
    assert seen.first_time("e1")
    assert not seen.first_time("e1")
    assert seen.first_time("e2")
    assert not seen.first_time("e1")


def test_capacity_forgets_the_oldest_id() -> None:
    seen = SeenEvents(capacity=3, monotonic=Clock())
    for event_id in ("e1", "e2", "e3", "e4"):
        assert seen.first_time(event_id)
    assert len(seen) == 3
    assert not seen.first_time("e4")
    assert not seen.first_time("e2")
    assert seen.first_time("e1")  # pushed out by e4, so new again


def test_ids_expire_after_the_ttl() -> None:
    clock = Clock()
    seen = SeenEvents(ttl_s=60, monotonic=clock)
    assert seen.first_time("e1")
    clock.now += 30
    assert seen.first_time("e2")
    clock.now += 29.9
    assert not seen.first_time("e1")
    clock.now += 0.1
    assert seen.first_time("e1")  # 60 s after it was first seen
    assert not seen.first_time("e2")  # 59.9 s: still remembered
    clock.now += 30
    assert len(seen) == 2  # expired ids are dropped lazily, on the next call
    assert seen.first_time("e3")
    assert len(seen) == 2  # e2 went, e1 (renewed at +60) and e3 stay


def test_forget_lets_a_failed_event_be_retried() -> None:
    seen = SeenEvents()
    assert seen.first_time("e1")
    seen.forget("e1")
    seen.forget("never-seen")
    assert seen.first_time("e1")


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="capacity"):
        SeenEvents(capacity=0)


# --- end to end: the shared fake OfficeRnD delivering to a receiver built on this module --------------


async def test_deliveries_from_the_fake_are_verified_parsed_and_deduplicated() -> None:
    seen = SeenEvents()
    taken: list[WebhookEvent] = []
    refused: list[str] = []
    secret_box: list[str] = []

    async def receive(request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            verify(secret_box[0], raw, request.headers.get(SIGNATURE_HEADER), now=time.time())
            event = parse_event(raw)
        except WebhookRejected as err:
            refused.append(err.reason)
            return web.Response(status=401)
        if seen.first_time(event.event_id):
            taken.append(event)
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/officernd", receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = pick_free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with (
            FakeOfficeRnD(org="acme", client_id="c", client_secret="s") as fake,
            aiohttp.ClientSession() as session,
        ):
            settings = OfficeRnDSettings(
                "acme", "c", "s", fake.api_base, fake.identity_url, ALL_SCOPES
            )
            client = OfficeRnDClient(settings, session)
            hook_id, secret = await client.create_webhook(
                f"http://127.0.0.1:{port}/officernd", ["member.updated"], "gateway"
            )
            secret_box.append(secret)
            ada = fake.add_member("Ada Lovelace")
            assert await fake.emit("member.updated", ada, event_id="e" * 24) == [204]
            assert await fake.emit("member.updated", ada, event_id="e" * 24) == [204]
            assert await fake.emit("member.updated", ada, sign_with="forged") == [401]
            assert await fake.emit("member.updated", ada, timestamp=1) == [401]
    finally:
        await runner.cleanup()
    assert hook_id
    assert [(e.event_id, e.entity, e.object_id) for e in taken] == [
        ("e" * 24, "members", ada["_id"])
    ]
    assert refused == ["bad signature", "stale timestamp"]
