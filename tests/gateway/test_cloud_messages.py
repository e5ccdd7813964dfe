"""Tests for gateway.cloud_messages: topics, commands, event batches, status and link events."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.cloud_messages import (
    ALL_DOORS,
    BATCH_MAX_BYTES,
    BATCH_MAX_EVENTS,
    COMMAND_MAX_BYTES,
    Command,
    CommandKind,
    CommandStatus,
    LinkState,
    MessageError,
    RejectedWhat,
    Topics,
    UnlockMode,
    check_gateway_id,
    cloud_rejected_event,
    command_payload,
    command_result_event,
    events_batches,
    parse_command,
    status_payload,
    topics,
)
from gateway.model import EVENT_PRIORITY, DoorMode, Event, EventPriority, EventType
from gateway.outbox import StoredEvent, event_from_json, event_to_json

ISSUED = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
EXPIRES = ISSUED + timedelta(minutes=1)
AT = datetime(2026, 12, 1, 10, 0, 30, tzinfo=UTC)

#: The contract's example command.
UNLOCK: dict[str, Any] = {
    "format": 1,
    "id": "c-7f3a",
    "gateway": "gw-1",
    "kind": "unlock",
    "issued_at": "2026-12-01T10:00:00Z",
    "expires_at": "2026-12-01T10:01:00Z",
    "door": "front",
    "mode": "momentary",
    "seconds": 5,
}
SET_MODE: dict[str, Any] = {
    **{k: UNLOCK[k] for k in ("format", "id", "gateway", "issued_at", "expires_at")},
    "kind": "set_mode",
    "door": "*",
    "mode": "lockdown",
}
SYNC: dict[str, Any] = {
    **{k: UNLOCK[k] for k in ("format", "id", "gateway", "issued_at", "expires_at")},
    "kind": "sync",
}
BASES = {"unlock": UNLOCK, "set_mode": SET_MODE, "sync": SYNC}

COMMON = "expires_at, format, gateway, id, issued_at, kind"
OFFSET = "expected an ISO-8601 date-time with a UTC offset"
DOOR_ID = "expected 1-128 of letters, digits and ._:@- (not starting with a symbol)"
COMMAND_ID = "expected 1-64 of letters, digits and ._:-"


def encode(document: Any) -> bytes:
    return json.dumps(document).encode()


def refusal(payload: bytes) -> MessageError:
    with pytest.raises(MessageError) as info:
        parse_command(payload)
    return info.value


# --- topics ---------------------------------------------------------------------------------


def test_topics() -> None:
    assert topics("gw-01_A") == Topics(
        cmd="luckey/v1/gw/gw-01_A/cmd",
        delta="luckey/v1/gw/gw-01_A/delta",
        events="luckey/v1/gw/gw-01_A/events",
        ack="luckey/v1/gw/gw-01_A/ack",
        status="luckey/v1/gw/gw-01_A/status",
    )
    assert topics("g").subscriptions == ("luckey/v1/gw/g/cmd", "luckey/v1/gw/g/delta")
    assert check_gateway_id("x" * 64) == "x" * 64


@pytest.mark.parametrize(
    "gateway_id",
    ["", "x" * 65, "gw/1", "gw+", "#", "gw 1", "gw.1", "gé", "gw\n", "gw\x00"],
)
def test_topics_refuse_a_bad_gateway_id(gateway_id: str) -> None:
    with pytest.raises(ValueError, match="expected 1-64 of A-Z a-z 0-9 _ -") as info:
        topics(gateway_id)
    assert str(info.value).startswith(f"gateway id {gateway_id[:80]!r} is not allowed")


# --- commands: valid ------------------------------------------------------------------------


def test_the_contract_example() -> None:
    assert parse_command(encode(UNLOCK)) == Command(
        id="c-7f3a",
        kind=CommandKind.UNLOCK,
        issued_at=ISSUED,
        expires_at=EXPIRES,
        door="front",
        mode=UnlockMode.MOMENTARY,
        seconds=5,
        gateway="gw-1",
    )


@pytest.mark.parametrize(
    ("changes", "door", "mode", "seconds"),
    [
        ({}, "front", UnlockMode.MOMENTARY, 5),
        ({"seconds": None}, "front", UnlockMode.MOMENTARY, None),
        ({"seconds": 1}, "front", UnlockMode.MOMENTARY, 1),
        ({"seconds": 3600}, "front", UnlockMode.MOMENTARY, 3600),
        ({"mode": "held", "seconds": None}, "front", UnlockMode.HELD, None),
        ({"door": "lobby.2:east@b-1"}, "lobby.2:east@b-1", UnlockMode.MOMENTARY, 5),
    ],
)
def test_valid_unlocks(
    changes: dict[str, Any], door: str, mode: UnlockMode, seconds: int | None
) -> None:
    document = {k: v for k, v in {**UNLOCK, **changes}.items() if v is not None}
    command = parse_command(encode(document))
    assert (command.door, command.mode, command.seconds) == (door, mode, seconds)


def test_held_unlock_may_carry_null_seconds() -> None:
    command = parse_command(encode({**UNLOCK, "mode": "held", "seconds": None}))
    assert (command.mode, command.seconds) == (UnlockMode.HELD, None)


@pytest.mark.parametrize("mode", ["normal", "lockdown", "emergency_open"])
@pytest.mark.parametrize("door", ["front", ALL_DOORS])
def test_valid_set_modes(door: str, mode: str) -> None:
    command = parse_command(encode({**SET_MODE, "door": door, "mode": mode}))
    assert command.kind is CommandKind.SET_MODE
    assert (command.door, command.mode, command.seconds) == (door, DoorMode(mode), None)


def test_valid_sync() -> None:
    assert parse_command(encode(SYNC)) == Command(
        "c-7f3a", CommandKind.SYNC, ISSUED, EXPIRES, gateway="gw-1"
    )


def test_offsets_are_kept_and_a_full_week_is_allowed() -> None:
    rome = timezone(timedelta(hours=1))
    document = {
        **SYNC,
        "issued_at": "2026-12-01T11:00:00+01:00",
        "expires_at": "2026-12-08T10:00:00Z",
    }
    command = parse_command(encode(document))
    assert command.issued_at == ISSUED
    assert command.issued_at.utcoffset() == rome.utcoffset(None)
    assert command.expires_at - command.issued_at == timedelta(days=7)


def test_whitespace_and_field_order_do_not_matter() -> None:
    text = json.dumps(dict(reversed(UNLOCK.items())), indent=4)
    assert parse_command(text.encode()) == parse_command(encode(UNLOCK))


def test_expired() -> None:
    command = parse_command(encode(SYNC))
    assert not command.expired(EXPIRES - timedelta(microseconds=1))
    assert command.expired(EXPIRES)
    assert command.expired(EXPIRES + timedelta(days=1))


def test_command_payload_is_compact_sorted_json() -> None:
    command = parse_command(encode(UNLOCK))
    assert command_payload(command) == (
        b'{"door":"front","expires_at":"2026-12-01T10:01:00+00:00","format":1,"gateway":"gw-1",'
        b'"id":"c-7f3a","issued_at":"2026-12-01T10:00:00+00:00","kind":"unlock",'
        b'"mode":"momentary","seconds":5}'
    )


ids = st.from_regex(r"[A-Za-z0-9._:-]{1,64}", fullmatch=True)
door_ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}", fullmatch=True)
instants = st.datetimes(
    min_value=datetime(2000, 1, 1),
    max_value=datetime(2100, 1, 1),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=-5)), timezone(timedelta(hours=9))]),
)
lifetimes = st.timedeltas(min_value=timedelta(microseconds=1), max_value=timedelta(days=7))


@st.composite
def commands(draw: st.DrawFn) -> Command:
    """Any valid command."""
    kind = draw(st.sampled_from(CommandKind))
    command_id = draw(ids)
    issued_at = draw(instants)
    expires_at = issued_at + draw(lifetimes)
    door: str | None = None
    mode: UnlockMode | DoorMode | None = None
    seconds: int | None = None
    if kind is CommandKind.SET_MODE:
        door = draw(door_ids | st.just(ALL_DOORS))
        mode = draw(st.sampled_from([DoorMode.NORMAL, DoorMode.LOCKDOWN, DoorMode.EMERGENCY_OPEN]))
    elif kind is CommandKind.UNLOCK:
        door = draw(door_ids)
        mode = draw(st.sampled_from(UnlockMode))
        if mode is UnlockMode.MOMENTARY:
            seconds = draw(st.none() | st.integers(1, 3600))
    gateway = draw(st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True))
    return Command(command_id, kind, issued_at, expires_at, door, mode, seconds, gateway)


@given(commands())
def test_round_trip(command: Command) -> None:
    payload = command_payload(command)
    assert len(payload) <= COMMAND_MAX_BYTES
    assert parse_command(payload) == command


# --- commands: refused ----------------------------------------------------------------------

DROP = object()  # a change that removes the field


@pytest.mark.parametrize(
    ("base", "changes", "message"),
    [
        # format
        ("sync", {"format": DROP}, "command.format: missing required field"),
        ("sync", {"gateway": DROP}, "command.gateway: missing required field"),
        (
            "sync",
            {"gateway": "gw/1"},
            "command.gateway: gateway id 'gw/1' is not allowed; expected 1-64 of A-Z a-z 0-9 _ -",
        ),
        ("sync", {"format": 2}, "command.format: 2 is not allowed; this gateway reads format 1"),
        (
            "sync",
            {"format": True},
            "command.format: True is not allowed; this gateway reads format 1",
        ),
        (
            "sync",
            {"format": 1.0},
            "command.format: 1.0 is not allowed; this gateway reads format 1",
        ),
        (
            "sync",
            {"format": "1"},
            "command.format: '1' is not allowed; this gateway reads format 1",
        ),
        # kind
        ("sync", {"kind": DROP}, "command.kind: missing required field"),
        (
            "sync",
            {"kind": "open"},
            "command.kind: 'open' is not allowed; expected one of: unlock, set_mode, sync",
        ),
        (
            "sync",
            {"kind": "SYNC"},
            "command.kind: 'SYNC' is not allowed; expected one of: unlock, set_mode, sync",
        ),
        (
            "sync",
            {"kind": 1},
            "command.kind: 1 is not allowed; expected one of: unlock, set_mode, sync",
        ),
        # fields that no kind, or not this kind, has
        ("sync", {"extra": 1}, f"command.extra: unknown field; allowed: {COMMON}"),
        ("sync", {"door": "front"}, f"command.door: unknown field; allowed: {COMMON}"),
        (
            "set_mode",
            {"seconds": 5},
            f"command.seconds: unknown field; allowed: door, {COMMON}, mode",
        ),
        (
            "unlock",
            {"Door": "front"},
            f"command.Door: unknown field; allowed: door, {COMMON}, mode, seconds",
        ),
        # id
        ("sync", {"id": DROP}, "command.id: missing required field"),
        ("sync", {"id": ""}, f"command.id: '' is not a valid command id; {COMMAND_ID}"),
        ("sync", {"id": "c 1"}, f"command.id: 'c 1' is not a valid command id; {COMMAND_ID}"),
        ("sync", {"id": "c/1"}, f"command.id: 'c/1' is not a valid command id; {COMMAND_ID}"),
        ("sync", {"id": "c@1"}, f"command.id: 'c@1' is not a valid command id; {COMMAND_ID}"),
        (
            "sync",
            {"id": "x" * 65},
            f"command.id: {'x' * 64!r}… is not a valid command id; {COMMAND_ID}",
        ),
        ("sync", {"id": 7}, f"command.id: 7 is not a valid command id; {COMMAND_ID}"),
        ("sync", {"id": None}, f"command.id: None is not a valid command id; {COMMAND_ID}"),
        # issued_at, expires_at
        ("sync", {"issued_at": DROP}, "command.issued_at: missing required field"),
        ("sync", {"expires_at": DROP}, "command.expires_at: missing required field"),
        (
            "sync",
            {"issued_at": "2026-12-01T10:00:00"},
            f"command.issued_at: '2026-12-01T10:00:00' is not allowed; {OFFSET}",
        ),
        (
            "sync",
            {"issued_at": "2026-12-01"},
            f"command.issued_at: '2026-12-01' is not allowed; {OFFSET}",
        ),
        (
            "sync",
            {"issued_at": "yesterday"},
            f"command.issued_at: 'yesterday' is not allowed; {OFFSET}",
        ),
        (
            "sync",
            {"issued_at": 1796119200},
            f"command.issued_at: 1796119200 is not allowed; {OFFSET}",
        ),
        (
            "sync",
            {"expires_at": "2026-12-01T10:01:00"},
            f"command.expires_at: '2026-12-01T10:01:00' is not allowed; {OFFSET}",
        ),
        (
            "sync",
            {"expires_at": "2026-12-01T10:00:00Z"},
            "command.expires_at: 2026-12-01T10:00:00+00:00 must be after issued_at 2026-12-01T10:00:00+00:00",
        ),
        (
            "sync",
            {"expires_at": "2026-12-01T10:30:00+01:00"},
            "command.expires_at: 2026-12-01T10:30:00+01:00 must be after issued_at 2026-12-01T10:00:00+00:00",
        ),
        (
            "sync",
            {"expires_at": "2026-12-08T10:00:01Z"},
            "command.expires_at: 2026-12-08T10:00:01+00:00 is 7 days, 0:00:01 after issued_at "
            "2026-12-01T10:00:00+00:00; at most 7 days are allowed",
        ),
        # unlock: door
        ("unlock", {"door": DROP}, "command.door: missing required field"),
        ("unlock", {"door": ""}, f"command.door: '' is not a valid id; {DOOR_ID}"),
        ("unlock", {"door": ALL_DOORS}, f"command.door: '*' is not a valid id; {DOOR_ID}"),
        ("unlock", {"door": "-front"}, f"command.door: '-front' is not a valid id; {DOOR_ID}"),
        ("unlock", {"door": ["front"]}, f"command.door: ['front'] is not a valid id; {DOOR_ID}"),
        # unlock: mode
        ("unlock", {"mode": DROP}, "command.mode: missing required field"),
        (
            "unlock",
            {"mode": "lockdown"},
            "command.mode: 'lockdown' is not allowed; expected one of: momentary, held",
        ),
        (
            "unlock",
            {"mode": "Momentary"},
            "command.mode: 'Momentary' is not allowed; expected one of: momentary, held",
        ),
        (
            "unlock",
            {"mode": None},
            "command.mode: None is not allowed; expected one of: momentary, held",
        ),
        # unlock: seconds
        (
            "unlock",
            {"seconds": 0},
            "command.seconds: 0 is not allowed; expected an integer from 1 to 3600",
        ),
        (
            "unlock",
            {"seconds": -5},
            "command.seconds: -5 is not allowed; expected an integer from 1 to 3600",
        ),
        (
            "unlock",
            {"seconds": 3601},
            "command.seconds: 3601 is not allowed; expected an integer from 1 to 3600",
        ),
        (
            "unlock",
            {"seconds": 5.0},
            "command.seconds: 5.0 is not allowed; expected an integer from 1 to 3600",
        ),
        (
            "unlock",
            {"seconds": 2.5},
            "command.seconds: 2.5 is not allowed; expected an integer from 1 to 3600",
        ),
        (
            "unlock",
            {"seconds": "5"},
            "command.seconds: '5' is not allowed; expected an integer from 1 to 3600",
        ),
        (
            "unlock",
            {"seconds": True},
            "command.seconds: True is not allowed; expected an integer from 1 to 3600",
        ),
        (
            "unlock",
            {"mode": "held", "seconds": 5},
            "command.seconds: 5 is not allowed with mode 'held'; seconds goes only with 'momentary'",
        ),
        # set_mode
        ("set_mode", {"door": DROP}, "command.door: missing required field"),
        ("set_mode", {"door": "**"}, f"command.door: '**' is not a valid id; {DOOR_ID}"),
        ("set_mode", {"door": None}, f"command.door: None is not a valid id; {DOOR_ID}"),
        ("set_mode", {"mode": DROP}, "command.mode: missing required field"),
        (
            "set_mode",
            {"mode": "unlocked"},
            "command.mode: 'unlocked' is not allowed; expected one of: normal, lockdown, emergency_open",
        ),
        (
            "set_mode",
            {"mode": "momentary"},
            "command.mode: 'momentary' is not allowed; expected one of: normal, lockdown, emergency_open",
        ),
        (
            "set_mode",
            {"mode": 2},
            "command.mode: 2 is not allowed; expected one of: normal, lockdown, emergency_open",
        ),
    ],
)
def test_each_bad_field_is_refused_with_its_path_value_and_rule(
    base: str, changes: dict[str, Any], message: str
) -> None:
    document = {**BASES[base], **changes}
    document = {key: value for key, value in document.items() if value is not DROP}
    error = refusal(encode(document))
    assert str(error) == message
    assert error.path == message.split(":", 1)[0]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"[]", "command: expected an object, got list"),
        (b'"sync"', "command: expected an object, got str"),
        (b"1", "command: expected an object, got int"),
        (b"null", "command: expected an object, got NoneType"),
        (b"", "command: not JSON: Expecting value: line 1 column 1 (char 0)"),
        (b'{"format":1,', "command: not JSON: Expecting property name enclosed in double quotes: line 1 column 13 (char 12)"),
        (b"\xff{}", "command: not UTF-8 text (invalid start byte at byte 0)"),
        (b'{"id":"\xc3"}', "command: not UTF-8 text (invalid continuation byte at byte 7)"),
        ('{"id":"é"}'.encode("utf-16"), "command: not UTF-8 text (invalid start byte at byte 0)"),
        (b'{"format":NaN}', "command: NaN is not allowed; JSON numbers only"),
        (b'{"format":-Infinity}', "command: -Infinity is not allowed; JSON numbers only"),
        (b'{"id":"a","id":"b"}', "command: field 'id' appears twice; each field at most once"),
        (
            b" " * (COMMAND_MAX_BYTES + 1),
            f"command: {COMMAND_MAX_BYTES + 1} bytes is too large; a command is at most {COMMAND_MAX_BYTES}",
        ),
    ],
    ids=[
        "list", "string", "number", "null", "empty", "truncated", "not-utf8", "cut-utf8",
        "utf16", "nan", "infinity", "duplicate", "too-large",
    ],
)  # fmt: skip
def test_undecodable_payloads_are_refused(payload: bytes, message: str) -> None:
    error = refusal(payload)
    assert str(error) == message
    assert error.path == "command"


def test_absurd_nesting_is_refused() -> None:
    error = refusal(b"[" * (COMMAND_MAX_BYTES // 2))
    assert str(error).startswith("command: not JSON: maximum recursion depth exceeded")


def test_a_command_error_is_a_value_error_but_not_a_site_data_error() -> None:
    from gateway.codec import FormatError

    error = refusal(b"[]")
    assert isinstance(error, ValueError)
    assert not isinstance(error, FormatError)


@given(st.binary(max_size=COMMAND_MAX_BYTES + 10))
def test_arbitrary_bytes_raise_only_message_error(payload: bytes) -> None:
    with contextlib.suppress(MessageError):
        parse_command(payload)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)


@given(
    st.sampled_from(list(BASES)),
    st.dictionaries(
        st.sampled_from(
            ["format", "id", "kind", "issued_at", "expires_at", "door", "mode", "seconds", "x"]
        ),
        json_values,
        max_size=3,
    ),
)
def test_arbitrary_field_values_raise_only_message_error(
    base: str, changes: dict[str, Any]
) -> None:
    with contextlib.suppress(MessageError):
        parse_command(encode({**BASES[base], **changes}))


# --- events up ------------------------------------------------------------------------------


def stored(seq: int, pad: int = 0) -> StoredEvent:
    """An event whose JSON form grows by one byte with each unit of ``pad``."""
    event = Event(f"e{seq}", EventType.DOOR_OPENED, AT, {"door": "front", "pad": "x" * pad})
    return StoredEvent(seq, event)


def decode(payload: bytes) -> tuple[str, list[Event]]:
    document = json.loads(payload)
    assert set(document) == {"format", "gateway", "events"}
    assert document["format"] == 1
    events = [event_from_json(json.dumps(item)) for item in document["events"]]
    return document["gateway"], events


def test_no_events_no_messages() -> None:
    assert list(events_batches("gw-1", [])) == []


def test_one_message_holds_the_events_in_outbox_form() -> None:
    events = [stored(1), stored(5), stored(9)]
    [(payload, seqs)] = events_batches("gw-1", events)
    assert seqs == [1, 5, 9]
    assert payload == (
        b'{"format":1,"gateway":"gw-1","events":['
        + b",".join(event_to_json(s.event).encode() for s in events)
        + b"]}"
    )
    assert decode(payload) == ("gw-1", [s.event for s in events])


def test_at_most_100_events_per_message() -> None:
    batches = list(events_batches("gw-1", (stored(seq) for seq in range(1, 251))))
    assert [len(seqs) for _, seqs in batches] == [100, 100, 50]
    assert [seq for _, seqs in batches for seq in seqs] == list(range(1, 251))


def envelope_bytes(gateway_id: str) -> int:
    return len(b'{"format":1,"gateway":"","events":[]}') + len(gateway_id)


def event_bytes(pad: int) -> int:
    return len(event_to_json(stored(1, pad).event))


def test_the_byte_limit_is_exact() -> None:
    # Two events that fill a message to the byte, then the same with one byte more.
    base = event_bytes(0)
    room = BATCH_MAX_BYTES - envelope_bytes("gw-1") - 1  # one comma between the two
    first_pad = room // 2 - base
    second_pad = room - room // 2 - base
    exact = [stored(1, first_pad), stored(2, second_pad)]
    [(payload, seqs)] = events_batches("gw-1", exact)
    assert len(payload) == BATCH_MAX_BYTES
    assert seqs == [1, 2]
    over = [stored(1, first_pad), stored(2, second_pad + 1)]
    assert [seqs for _, seqs in events_batches("gw-1", over)] == [[1], [2]]


def test_an_oversized_event_goes_alone() -> None:
    huge = stored(2, 200 * 1024)
    batches = list(events_batches("gw-1", [stored(1), huge, stored(3)]))
    assert [seqs for _, seqs in batches] == [[1], [2], [3]]
    assert len(batches[1][0]) > BATCH_MAX_BYTES
    assert decode(batches[1][0])[1] == [huge.event]


def test_non_ascii_data_is_counted_in_bytes() -> None:
    event = Event("e1", EventType.ACCESS_DENIED, AT, {"name": "Zoë 🚪" * 4000})
    [(payload, _)] = events_batches("gw-1", [StoredEvent(1, event)])
    assert decode(payload)[1] == [event]


def test_a_bad_gateway_id_fails_at_the_call() -> None:
    with pytest.raises(ValueError, match="gateway id 'gw/1' is not allowed"):
        events_batches("gw/1", [stored(1)])


def test_batches_are_produced_lazily() -> None:
    taken: list[int] = []

    def source() -> Iterator[StoredEvent]:
        for seq in range(1, 1001):
            taken.append(seq)
            yield stored(seq)

    batches = events_batches("gw-1", source())
    _, seqs = next(batches)
    assert seqs == list(range(1, 101))
    assert len(taken) == 101  # the 101st told the first message it was full


@given(
    pads=st.lists(st.integers(0, 40_000) | st.integers(0, 200) | st.just(140_000), max_size=250),
    gateway_id=st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True),
)
def test_batches_keep_order_and_limits_and_are_full(pads: list[int], gateway_id: str) -> None:
    events = [stored(seq, pad) for seq, pad in enumerate(pads, start=7)]
    batches = list(events_batches(gateway_id, events))
    assert [seq for _, seqs in batches for seq in seqs] == [s.seq for s in events]
    position = 0
    for index, (payload, seqs) in enumerate(batches):
        got_gateway, got = decode(payload)
        assert got_gateway == gateway_id
        assert got == [s.event for s in events[position : position + len(seqs)]]
        assert len(seqs) <= BATCH_MAX_EVENTS
        assert len(payload) <= BATCH_MAX_BYTES or len(seqs) == 1
        position += len(seqs)
        if index + 1 < len(batches):
            # Greedy: a message is cut only when the next event would break a limit.
            next_size = len(event_to_json(events[position].event))
            assert len(seqs) == BATCH_MAX_EVENTS or len(payload) + 1 + next_size > BATCH_MAX_BYTES


# --- status ---------------------------------------------------------------------------------


def test_status_online() -> None:
    payload = status_payload(
        "gw-1",
        LinkState.ONLINE,
        at=AT,
        cache_version=42,
        offline_since=None,
        outbox_pending=0,
    )
    assert payload == (
        b'{"at":"2026-12-01T10:00:30.000000+00:00","cache_version":42,"format":1,'
        b'"gateway":"gw-1","offline_since":null,"outbox_pending":0,"state":"online"}'
    )


def test_status_offline_times_are_utc() -> None:
    rome = timezone(timedelta(hours=1))
    payload = status_payload(
        "gw-1",
        LinkState.OFFLINE,
        at=datetime(2026, 12, 1, 11, 0, tzinfo=rome),
        cache_version=None,
        offline_since=datetime(2026, 12, 1, 10, 30, tzinfo=rome),
        outbox_pending=1234,
    )
    assert json.loads(payload) == {
        "format": 1,
        "gateway": "gw-1",
        "state": "offline",
        "at": "2026-12-01T10:00:00.000000+00:00",
        "cache_version": None,
        "offline_since": "2026-12-01T09:30:00.000000+00:00",
        "outbox_pending": 1234,
    }


def test_status_refuses_a_naive_time_and_a_bad_gateway_id() -> None:
    naive = datetime(2026, 12, 1, 10, 0)
    with pytest.raises(ValueError, match="timezone-aware"):
        status_payload(
            "gw-1",
            LinkState.ONLINE,
            at=naive,
            cache_version=1,
            offline_since=None,
            outbox_pending=0,
        )
    with pytest.raises(ValueError, match="timezone-aware"):
        status_payload(
            "gw-1", LinkState.OFFLINE, at=AT, cache_version=1, offline_since=naive, outbox_pending=0
        )
    with pytest.raises(ValueError, match="gateway id"):
        status_payload(
            "gw+", LinkState.ONLINE, at=AT, cache_version=1, offline_since=None, outbox_pending=0
        )


# --- events about the link ------------------------------------------------------------------


@pytest.mark.parametrize("status", list(CommandStatus))
def test_command_result_event(status: CommandStatus) -> None:
    command = parse_command(encode(UNLOCK))
    event = command_result_event(command, status, "front unlocked for 5 s", AT)
    assert event.type is EventType.COMMAND_RESULT
    assert event.priority is EventPriority.SECURITY
    assert event.at == AT
    assert event.data == {
        "command": "c-7f3a",
        "kind": "unlock",
        "status": status.value,
        "detail": "front unlocked for 5 s",
    }
    assert event_from_json(event_to_json(event)) == event


def test_command_result_events_have_unique_ids() -> None:
    command = parse_command(encode(SYNC))
    first = command_result_event(command, CommandStatus.DONE, "", AT)
    second = command_result_event(command, CommandStatus.DONE, "", AT)
    assert first.id != second.id


def test_cloud_rejected_event() -> None:
    event = cloud_rejected_event(
        RejectedWhat.DELTA, "bad signature", AT, {"version": 7, "what": "ignored"}
    )
    assert event.type is EventType.CLOUD_REJECTED
    assert event.priority is EventPriority.SECURITY
    assert event.data == {"what": "delta", "reason": "bad signature", "version": 7}
    assert event_from_json(event_to_json(event)) == event


def test_cloud_rejected_reason_is_bounded() -> None:
    event = cloud_rejected_event(RejectedWhat.COMMAND, "x" * 5000, AT)
    reason = event.data["reason"]
    assert len(reason) == 1000
    assert reason.endswith("x…")


def test_the_new_event_types_are_security_events() -> None:
    for event_type, value in [
        (EventType.COMMAND_RESULT, "command.result"),
        (EventType.CLOUD_REJECTED, "cloud.rejected"),
        (EventType.UPLINK_REFUSED, "uplink.refused"),
    ]:
        assert event_type.value == value
        assert EVENT_PRIORITY[event_type] is EventPriority.SECURITY


def test_docs_priority_table_matches_the_model() -> None:
    text = (Path(__file__).parents[2] / "docs" / "events.md").read_text()
    documented: dict[EventType, EventPriority] = {}
    for name, types in re.findall(r"^\s*\| `(routine|notable|security)`\s*\|(.*)\|$", text, re.M):
        for value in re.findall(r"`([a-z_.]+)`", types):
            documented[EventType(value)] = EventPriority[name.upper()]
    assert documented == dict(EVENT_PRIORITY)
    assert set(EVENT_PRIORITY) == set(EventType)
