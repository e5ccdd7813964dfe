"""Tests for gateway.outbox: committed before resolved, group commit, draining stop, retention."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import outbox as outbox_module
from gateway.events import new_event
from gateway.model import Event, EventPriority, EventType
from gateway.outbox import (
    Outbox,
    OutboxClosedError,
    OutboxError,
    OutboxState,
    StoredEvent,
    event_from_json,
    event_to_json,
)
from tests.sqlite_files import plain

BASE = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)

ROUTINE = EventType.ACCESS_GRANTED
NOTABLE = EventType.ACCESS_DENIED
SECURITY = EventType.DOOR_MODE_CHANGED


def ev(n: int, type_: EventType = ROUTINE, prefix: str = "e") -> Event:
    return Event(
        id=f"{prefix}{n}",
        type=type_,
        at=BASE + timedelta(seconds=n, microseconds=n),
        data={"n": n, "door": "front"},
    )


def write_file(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)


def state_of(box: Outbox) -> OutboxState:
    """Read the state through a call, so the type checker does not pin it between awaits."""
    return box.state


def row_count(path: Path) -> int:
    with plain(path) as conn:
        return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "outbox.db"


@pytest.fixture
async def make_outbox(path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Start outboxes on ``path``; every one is stopped at the end of the test."""
    started: list[Outbox] = []

    async def make(max_rows: int = 1000, batch_max: int = 256) -> Outbox:
        box = Outbox(path, max_rows=max_rows, batch_max=batch_max)
        await box.start()
        started.append(box)
        return box

    yield make
    for box in started:
        await box.stop()


async def all_pending(box: Outbox) -> list[StoredEvent]:
    return await box.pending(limit=100_000)


async def test_append_resolves_after_the_row_is_committed(
    make_outbox: Callable[..., Any], path: Path
) -> None:
    box: Outbox = await make_outbox()
    assert box.state is OutboxState.RUNNING
    assert box.reset_reason is None
    seqs = []
    for n in range(5):
        event = ev(n)
        seq = await box.append(event)
        # Another connection sees the row: it is committed, not just written.
        with plain(path) as conn:
            row = conn.execute(
                "SELECT id, type, priority, at, body FROM events WHERE seq = ?", (seq,)
            ).fetchone()
        assert row == (
            event.id,
            "access.granted",
            int(EventPriority.ROUTINE),
            event.at.isoformat(timespec="microseconds"),
            event_to_json(event),
        )
        seqs.append(seq)
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == 5


async def test_concurrent_appends_commit_in_queue_order(
    make_outbox: Callable[..., Any], path: Path
) -> None:
    box: Outbox = await make_outbox(batch_max=32)
    events = [ev(n) for n in range(200)]
    seqs = await asyncio.gather(*(box.append(e) for e in events))
    assert len(set(seqs)) == 200
    assert list(seqs) == sorted(seqs)
    stored = await all_pending(box)
    assert [s.seq for s in stored] == list(seqs)
    assert [s.event for s in stored] == events
    assert row_count(path) == 200


async def test_a_batch_larger_than_one_insert_statement(
    make_outbox: Callable[..., Any], path: Path
) -> None:
    box: Outbox = await make_outbox(max_rows=5000, batch_max=2500)
    seqs = await asyncio.gather(*(box.append(ev(n)) for n in range(2200)))
    assert list(seqs) == sorted(seqs)
    assert len(set(seqs)) == 2200
    assert row_count(path) == 2200


async def test_stop_commits_every_accepted_append(path: Path) -> None:
    box = Outbox(path, max_rows=10_000, batch_max=16)
    await box.start()
    tasks = [asyncio.create_task(box.append(ev(n))) for n in range(500)]
    await asyncio.sleep(0)  # one pass of the loop: every task has queued its event
    await box.stop()
    assert box.state is OutboxState.STOPPED
    assert all(t.done() for t in tasks)
    seqs = [t.result() for t in tasks]
    assert seqs == sorted(seqs)
    assert row_count(path) == 500

    await box.stop()  # idempotent
    with pytest.raises(OutboxClosedError):
        await box.append(ev(1000))
    with pytest.raises(OutboxClosedError):
        await box.pending()


async def test_stop_with_a_full_queue_never_leaves_an_append_hanging(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outbox_module, "QUEUE_MAX_ITEMS", 8)
    box = Outbox(path, max_rows=10_000, batch_max=4)
    await box.start()
    tasks = [asyncio.create_task(box.append(ev(n))) for n in range(60)]
    await asyncio.sleep(0)  # 8 queued, the rest wait for room
    await box.stop()
    await asyncio.wait(tasks, timeout=5)
    assert all(t.done() for t in tasks)
    committed = [t.result() for t in tasks if t.exception() is None]
    for t in tasks:
        if t.exception() is not None:
            assert isinstance(t.exception(), OutboxClosedError)
    assert len(committed) >= 8
    assert row_count(path) == len(committed)


async def test_seq_is_never_reused(make_outbox: Callable[..., Any], path: Path) -> None:
    box: Outbox = await make_outbox()
    seqs = [await box.append(ev(n)) for n in range(3)]
    assert await box.ack([seqs[-1]]) == 1
    fourth = await box.append(ev(3))
    assert fourth > seqs[-1]
    assert await box.ack([fourth, *seqs]) == 3
    await box.stop()

    reopened: Outbox = await make_outbox()
    assert (await reopened.stats()).rows == 0
    assert await reopened.append(ev(4)) > fourth


async def test_pending_and_ack(make_outbox: Callable[..., Any], path: Path) -> None:
    box: Outbox = await make_outbox()
    events = [ev(n, NOTABLE if n % 2 else ROUTINE) for n in range(5)]
    seqs = [await box.append(e) for e in events]

    stored = await box.pending()
    assert stored == [StoredEvent(s, e) for s, e in zip(seqs, events, strict=True)]
    assert [s.seq for s in await box.pending(after_seq=seqs[1], limit=2)] == seqs[2:4]

    assert await box.ack([seqs[0], seqs[1], seqs[1], 999_999]) == 2
    assert await box.ack([]) == 0
    assert [s.seq for s in await box.pending()] == seqs[2:]
    stats = await box.stats()
    assert (stats.rows, stats.oldest_seq, stats.newest_seq) == (3, seqs[2], seqs[4])
    assert stats.dropped == dict.fromkeys(EventPriority, 0)
    assert row_count(path) == 3
    with pytest.raises(ValueError, match="limit"):
        await box.pending(limit=0)


async def test_duplicate_ids_fail_alone(make_outbox: Callable[..., Any]) -> None:
    box: Outbox = await make_outbox()
    first = await box.append(ev(1))
    appends = [box.append(ev(2)), box.append(ev(1)), box.append(ev(3)), box.append(ev(3))]
    results = await asyncio.gather(*appends, return_exceptions=True)
    assert isinstance(results[1], OutboxError)
    assert isinstance(results[3], OutboxError)
    assert "duplicate" in str(results[1])
    assert isinstance(results[0], int)
    assert isinstance(results[2], int)
    assert first < results[0] < results[2]
    assert [s.event.id for s in await box.pending()] == ["e1", "e2", "e3"]


async def test_unencodable_event_fails_its_caller_only(make_outbox: Callable[..., Any]) -> None:
    box: Outbox = await make_outbox()
    naive = Event(id="naive", type=ROUTINE, at=datetime(2024, 1, 1), data={})
    with pytest.raises(ValueError, match="timezone-aware"):
        await box.append(naive)
    with pytest.raises(TypeError):
        await box.append(Event(id="bad", type=ROUTINE, at=BASE, data={"x": object()}))
    assert await box.append(ev(1)) > 0
    assert (await box.stats()).rows == 1


async def test_a_failed_write_fails_its_batch_and_the_writer_carries_on(
    make_outbox: Callable[..., Any], path: Path
) -> None:
    box: Outbox = await make_outbox()
    before = await box.append(ev(0))
    # Take the table away behind the outbox's back: the next insert really fails.
    with plain(path) as conn:
        conn.execute("ALTER TABLE events RENAME TO events_away")
        conn.commit()
    with pytest.raises(OutboxError, match="not stored"):
        await box.append(ev(1))
    with plain(path) as conn:
        conn.execute("ALTER TABLE events_away RENAME TO events")
        conn.commit()
    after = await box.append(ev(2))
    assert after > before
    assert [s.event.id for s in await box.pending()] == ["e0", "e2"]


def dropped_notices(stored: list[StoredEvent]) -> list[dict[str, Any]]:
    return [dict(s.event.data) for s in stored if s.event.type is EventType.EVENTS_DROPPED]


def ids_of(stored: list[StoredEvent], type_: EventType) -> list[str]:
    return [s.event.id for s in stored if s.event.type is type_]


async def test_retention_drops_oldest_routine_first_and_says_so(
    make_outbox: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.outbox")
    box: Outbox = await make_outbox(max_rows=100)
    kinds = [SECURITY, SECURITY, SECURITY, NOTABLE, NOTABLE, NOTABLE, ROUTINE, ROUTINE, ROUTINE]
    events = [ev(n, kinds[n % len(kinds)]) for n in range(100)]
    routine_ids = [e.id for e in events if e.type is ROUTINE]
    for e in events:
        await box.append(e)
    assert (await box.stats()).rows == 100
    assert dropped_notices(await all_pending(box)) == []

    # Row 101: trim to 99 rows including the notice, so the 3 oldest routine events go.
    await box.append(ev(100, ROUTINE))
    stored = await all_pending(box)
    stats = await box.stats()
    assert stats.rows == len(stored) == 99
    assert ids_of(stored, ROUTINE) == [*routine_ids[3:], "e100"]
    assert len(ids_of(stored, NOTABLE)) == len([e for e in events if e.type is NOTABLE])
    assert len(ids_of(stored, SECURITY)) == len([e for e in events if e.type is SECURITY])
    assert stats.dropped == {
        EventPriority.ROUTINE: 3,
        EventPriority.NOTABLE: 0,
        EventPriority.SECURITY: 0,
    }
    expected_first = {
        "dropped": {"routine": 3, "notable": 0, "security": 0},
        "total_dropped": {"routine": 3, "notable": 0, "security": 0},
    }
    assert dropped_notices(stored) == [expected_first]
    assert stored[-1].event.type is EventType.EVENTS_DROPPED  # it is the newest row

    # Two more rows: the next trim, one more notice, totals carried on.
    await box.append(ev(101, ROUTINE))
    await box.append(ev(102, ROUTINE))
    stored = await all_pending(box)
    assert len(stored) == 99
    assert ids_of(stored, ROUTINE)[:2] == routine_ids[6:8]
    assert dropped_notices(stored) == [
        expected_first,
        {
            "dropped": {"routine": 3, "notable": 0, "security": 0},
            "total_dropped": {"routine": 6, "notable": 0, "security": 0},
        },
    ]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "dropped 3 routine, 0 notable, 0 security" in warnings[0].getMessage()


async def test_retention_spares_security_while_anything_lower_remains(
    make_outbox: Callable[..., Any],
) -> None:
    box: Outbox = await make_outbox(max_rows=100)
    for n in range(10):
        await box.append(ev(n, NOTABLE))
    for n in range(10, 100):
        await box.append(ev(n, SECURITY))
    # The newest event is the only routine one, yet it goes first; then the oldest notable.
    await box.append(ev(100, ROUTINE))
    stored = await all_pending(box)
    assert ids_of(stored, ROUTINE) == []
    assert ids_of(stored, NOTABLE) == [f"e{n}" for n in range(2, 10)]
    assert len(ids_of(stored, SECURITY)) == 90
    assert (await box.stats()).dropped == {
        EventPriority.ROUTINE: 1,
        EventPriority.NOTABLE: 2,
        EventPriority.SECURITY: 0,
    }

    # Only security left to take once the notable ones are gone: then the oldest security goes.
    for n in range(101, 130):
        await box.append(ev(n, SECURITY))
    stored = await all_pending(box)
    stats = await box.stats()
    assert ids_of(stored, NOTABLE) == []
    assert stats.dropped[EventPriority.NOTABLE] == 10
    assert stats.dropped[EventPriority.SECURITY] > 0
    assert stats.rows <= 100
    security_ids = ids_of(stored, SECURITY)
    assert security_ids == sorted(security_ids, key=lambda i: int(i[1:]))
    assert security_ids[-1] == "e129"
    # Oldest first: what survives is a contiguous run of the newest security events.
    first = int(security_ids[0][1:])
    assert security_ids == [f"e{n}" for n in range(first, 130) if n != 100]
    # Older notices may go with the security class, but the newest one carries the totals.
    notices = dropped_notices(stored)
    assert notices[-1]["total_dropped"] == {
        p.name.lower(): count for p, count in stats.dropped.items()
    }


async def test_one_batch_overflow_is_one_trim(make_outbox: Callable[..., Any]) -> None:
    box: Outbox = await make_outbox(max_rows=100)
    await asyncio.gather(*(box.append(ev(n)) for n in range(150)))
    stored = await all_pending(box)
    assert len(stored) == 99
    assert dropped_notices(stored) == [
        {
            "dropped": {"routine": 52, "notable": 0, "security": 0},
            "total_dropped": {"routine": 52, "notable": 0, "security": 0},
        }
    ]
    assert ids_of(stored, ROUTINE) == [f"e{n}" for n in range(52, 150)]


async def test_drop_totals_survive_a_restart(make_outbox: Callable[..., Any]) -> None:
    box: Outbox = await make_outbox(max_rows=20)
    for n in range(21):
        await box.append(ev(n))
    totals = (await box.stats()).dropped
    assert totals[EventPriority.ROUTINE] == 3
    await box.stop()

    reopened: Outbox = await make_outbox(max_rows=20)
    stats = await reopened.stats()
    assert stats.dropped == totals
    assert stats.rows == 19
    for n in range(21, 23):
        await reopened.append(ev(n))
    notices = dropped_notices(await all_pending(reopened))
    assert notices[-1]["total_dropped"] == {"routine": 6, "notable": 0, "security": 0}


async def test_a_smaller_max_rows_is_applied_at_start(make_outbox: Callable[..., Any]) -> None:
    box: Outbox = await make_outbox(max_rows=100)
    for n in range(50):
        await box.append(ev(n))
    await box.stop()
    smaller: Outbox = await make_outbox(max_rows=10)
    stats = await smaller.stats()
    assert stats.rows == 9
    assert stats.dropped[EventPriority.ROUTINE] == 42


async def test_corrupt_outbox_is_moved_aside_on_start(
    make_outbox: Callable[..., Any], path: Path
) -> None:
    garbage = b"\x00\x01not an outbox\xff" * 300
    write_file(path, garbage)
    box: Outbox = await make_outbox()
    assert box.reset_reason is not None
    assert "not a database" in box.reset_reason
    moved = [p for p in path.parent.iterdir() if p.name.startswith("outbox.db.corrupt-")]
    assert len(moved) == 1
    assert moved[0].read_bytes() == garbage
    assert await box.append(ev(1)) >= 1
    assert row_count(path) == 1


async def test_lifecycle(path: Path) -> None:
    box = Outbox(path, max_rows=10)
    assert state_of(box) is OutboxState.NEW
    with pytest.raises(OutboxClosedError):
        await box.append(ev(1))
    await box.start()
    with pytest.raises(OutboxError, match="cannot start"):
        await box.start()
    stopping = asyncio.create_task(box.stop())
    second = asyncio.create_task(box.stop())
    await asyncio.gather(stopping, second)
    assert state_of(box) is OutboxState.STOPPED

    never_started = Outbox(path, max_rows=10)
    await never_started.stop()
    assert state_of(never_started) is OutboxState.STOPPED
    with pytest.raises(ValueError, match="max_rows"):
        Outbox(path, max_rows=0)


def test_event_json_is_compact_sorted_and_utc() -> None:
    event = Event(
        id="abc",
        type=EventType.ACCESS_GRANTED,
        at=datetime(2024, 5, 1, 14, 0, tzinfo=timezone(timedelta(hours=2))),
        data={"z": 1, "a": [1, 2]},
    )
    assert event_to_json(event) == (
        '{"at":"2024-05-01T12:00:00.000000+00:00","data":{"a":[1,2],"z":1},'
        '"id":"abc","type":"access.granted"}'
    )


def test_unknown_stored_type_is_an_error() -> None:
    text = json.dumps({"id": "x", "type": "door.exploded", "at": BASE.isoformat(), "data": {}})
    with pytest.raises(ValueError, match=r"unknown type 'door\.exploded'"):
        event_from_json(text)
    with pytest.raises(ValueError, match="lacks"):
        event_from_json('{"id": "x"}')


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=12,
)


@given(
    event_id=st.text(min_size=1),
    type_=st.sampled_from(EventType),
    at=st.datetimes(
        min_value=datetime(2000, 1, 1),
        max_value=datetime(2100, 1, 1),
        timezones=st.sampled_from(
            [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))]
        ),
    ),
    data=st.dictionaries(st.text(), json_values, max_size=5),
)
def test_event_json_round_trips(
    event_id: str, type_: EventType, at: datetime, data: dict[str, Any]
) -> None:
    event = Event(id=event_id, type=type_, at=at, data=data)
    text = event_to_json(event)
    back = event_from_json(text)
    assert back == event
    assert back.at.utcoffset() == timedelta(0)
    assert event_to_json(back) == text


async def test_a_transaction_cancelled_at_its_begin_leaves_the_connection_usable(
    tmp_path: Path,
) -> None:
    outbox = Outbox(tmp_path / "outbox.db", max_rows=1000)
    await outbox.start()
    try:
        await outbox.append(new_event(EventType.GATEWAY_STARTED, BASE, {}))
        for _ in range(20):  # cancel acks at every point, the BEGIN included
            task = asyncio.create_task(outbox.ack([1]))
            await asyncio.sleep(0)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        seq = await outbox.append(new_event(EventType.GATEWAY_STOPPED, BASE, {}))
        assert seq > 0  # writes still work: no transaction was left open
    finally:
        await outbox.stop()
