"""The local event journal (gateway/journal.py): fed by the event log, trimmed, exported as CSV."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.base import CredentialRead
from gateway import journal as journal_module
from gateway.config import ConfigError, JournalSection, parse_config
from gateway.events import EventLog, new_event
from gateway.journal import (
    CSV_COLUMNS,
    ExportError,
    Journal,
    JournalError,
    JournalState,
    export_csv,
    export_filename,
    parse_range,
)
from gateway.model import Event, EventType
from gateway.outbox import Outbox
from tests.conftest import ADA, Clock, EventWaiter, GatewayFactory, sim_readers

ROME = ZoneInfo("Europe/Rome")
T0 = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)
NAMES = {"ada": "Ada Lovelace", "bob": "Bob Hot-desk"}


def grant(at: datetime, *, door: str = "front", user: str = "ada", granted: bool = True) -> Event:
    """An access decision event as the entry service records one."""
    data = {
        "door": door,
        "reason": "granted" if granted else "outside_schedule",
        "mode": "normal",
        "credential": f"card-{user}",
        "user": user,
        "rule": "staff" if granted else None,
        "assurance": "low",
    }
    kind = EventType.ACCESS_GRANTED if granted else EventType.ACCESS_DENIED
    return new_event(kind, at, data)


@pytest.fixture
async def journal(tmp_path: Path) -> AsyncIterator[Journal]:
    """A started journal in tmp_path, stopped at teardown."""
    j = Journal(tmp_path / "journal.db", retention_days=400, max_rows=1_000_000, clock=lambda: T0)
    await j.start()
    yield j
    await j.stop()


async def fill(journal: Journal, events: list[Event]) -> None:
    """Append ``events`` and wait until they are committed."""
    for event in events:
        assert journal.append(event)
    await journal.flush()


async def export_text(journal: Journal, start: Any, end: Any, **options: Any) -> str:
    """The whole CSV of an export, joined."""
    options.setdefault("tz", ROME)
    return "".join([chunk async for chunk in journal.export_csv(start, end, **options)])


def parse(text: str) -> list[dict[str, str]]:
    """The CSV as dicts, after checking the header."""
    reader = csv.DictReader(io.StringIO(text, newline=""))
    assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
    return list(reader)


def read_rows(path: Path) -> list[tuple[Any, ...]]:
    """Every journal row, with plain sqlite3."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(
            "SELECT seq, id, type, at, door, user, credential, reason, granted, body "
            "FROM events ORDER BY seq"
        ).fetchall()
    finally:
        conn.close()


# --- fed by the event log -------------------------------------------------------------------


async def test_events_recorded_through_the_event_log_reach_the_journal(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db", max_rows=1000)
    journal = Journal(tmp_path / "journal.db", retention_days=400, max_rows=10_000)
    log = EventLog(outbox)
    log.add_listener(journal.on_event)
    await outbox.start()
    await journal.start()
    try:
        granted = grant(T0)
        denied = grant(T0 + timedelta(seconds=1), door="lobby", user="bob", granted=False)
        mode = new_event(EventType.DOOR_MODE_CHANGED, T0, {"door": "front", "mode": "lockdown"})
        for event in (granted, denied, mode):
            await log.record(event)
    finally:
        await journal.stop()  # writes what is queued
        await outbox.stop()
    rows = read_rows(tmp_path / "journal.db")
    assert [r[1:9] for r in rows] == [
        (
            granted.id,
            "access.granted",
            "2026-01-10T12:00:00.000000+00:00",
            "front",
            "ada",
            "card-ada",
            "granted",
            1,
        ),
        (
            denied.id,
            "access.denied",
            "2026-01-10T12:00:01.000000+00:00",
            "lobby",
            "bob",
            "card-bob",
            "outside_schedule",
            0,
        ),
        (
            mode.id,
            "door.mode_changed",
            "2026-01-10T12:00:00.000000+00:00",
            "front",
            None,
            None,
            None,
            None,
        ),
    ]
    assert rows[2][9] == '{"door":"front","mode":"lockdown"}'
    assert journal.missed == 0


async def test_the_gateway_journals_its_events(
    start_gateway: GatewayFactory, event_waiter: Callable[..., EventWaiter], clock: Clock
) -> None:
    gw = await start_gateway()
    waiter = event_waiter(gw)
    sim_readers(gw).present(CredentialRead("front", "nfc_uid", ADA))
    [logged] = await waiter.wait_for("access.granted", door="front")
    await gw.stop()
    assert gw.journal.state is JournalState.STOPPED
    rows = read_rows(gw.config.gateway.state_dir / "journal.db")
    types = [row[2] for row in rows]
    assert types[0] == "cache.updated"  # the demo site, seeded after the journal started
    assert "gateway.started" in types
    assert types[-1] == "gateway.stopped"  # recorded before the journal stops
    [row] = [r for r in rows if r[1] == logged.event.id]
    assert row[4:9] == ("front", "ada", "card-ada", "granted", 1)


# --- the export -----------------------------------------------------------------------------


async def test_the_export_holds_exactly_the_events_from_from_to_before_to(
    journal: Journal,
) -> None:
    start = datetime(2026, 1, 1, tzinfo=ROME)  # the site's midnight: 2025-12-31T23:00Z
    end = datetime(2026, 2, 1, tzinfo=ROME)
    micro = timedelta(microseconds=1)
    inside = [start, start + micro, end - micro]
    outside = [start - micro, end, end + timedelta(days=1)]
    events = {at: grant(at) for at in inside + outside}
    await fill(journal, list(events.values()))
    rows = parse(await export_text(journal, "2026-01-01", "2026-02-01"))
    assert [r["event_id"] for r in rows] == [events[at].id for at in inside]
    assert rows[0]["at"] == "2025-12-31T23:00:00.000000+00:00"
    assert rows[0]["local_time"] == "2026-01-01T00:00:00+01:00"
    # Date-times: naive ones in the site's time, others at their offset.
    rows = parse(await export_text(journal, "2026-01-01T00:00", "2026-01-31T22:00:00Z"))
    assert [r["event_id"] for r in rows] == [events[at].id for at in inside[:2]]


async def test_the_export_filters_by_type_and_door(journal: Journal) -> None:
    events = [
        grant(T0, door="front"),
        grant(T0 + timedelta(minutes=1), door="lobby", granted=False),
        grant(T0 + timedelta(minutes=2), door="front", granted=False),
        new_event(EventType.DOOR_FORCED_OPEN, T0 + timedelta(minutes=3), {"door": "front"}),
        new_event(EventType.GATEWAY_STARTED, T0 + timedelta(minutes=4), {}),
    ]
    await fill(journal, events)

    async def ids(**options: Any) -> list[str]:
        text = await export_text(journal, "2026-01-10", "2026-01-11", **options)
        return [r["event_id"] for r in parse(text)]

    assert await ids() == [e.id for e in events]
    assert await ids(types=["access.denied"]) == [events[1].id, events[2].id]
    assert await ids(types="access.denied") == [events[1].id, events[2].id]  # one, not letters
    assert await ids(door="front") == [events[0].id, events[2].id, events[3].id]
    assert await ids(types=["access.denied", "door.forced_open"], door="front") == [
        events[2].id,
        events[3].id,
    ]
    assert await ids(types=["", " "], door="") == [e.id for e in events]  # empty: no filter
    assert await ids(door="garage") == []


async def test_the_csv_parses_back_with_local_times_names_and_rules(journal: Journal) -> None:
    ada = grant(T0)
    bob = grant(T0 + timedelta(hours=1), door="lobby", user="bob", granted=False)
    stranger = grant(T0 + timedelta(hours=2), user="zed")
    note = new_event(
        EventType.CACHE_UPDATED, T0 + timedelta(hours=3), {"source": "demo", "version": 3}
    )
    await fill(journal, [ada, bob, stranger, note])
    text = await export_text(journal, "2026-01-10", "2026-01-11", user_name=NAMES.get)
    assert text.startswith(",".join(CSV_COLUMNS) + "\r\n")
    assert parse(text) == [
        {
            "at": "2026-01-10T12:00:00.000000+00:00",
            "local_time": "2026-01-10T13:00:00+01:00",
            "type": "access.granted",
            "door": "front",
            "user": "ada",
            "user_name": "Ada Lovelace",
            "credential": "card-ada",
            "granted": "true",
            "reason": "granted",
            "rule": "staff",
            "event_id": ada.id,
        },
        {
            "at": "2026-01-10T13:00:00.000000+00:00",
            "local_time": "2026-01-10T14:00:00+01:00",
            "type": "access.denied",
            "door": "lobby",
            "user": "bob",
            "user_name": "Bob Hot-desk",
            "credential": "card-bob",
            "granted": "false",
            "reason": "outside_schedule",
            "rule": "",
            "event_id": bob.id,
        },
        {
            "at": "2026-01-10T14:00:00.000000+00:00",
            "local_time": "2026-01-10T15:00:00+01:00",
            "type": "access.granted",
            "door": "front",
            "user": "zed",
            "user_name": "",  # not in the cache
            "credential": "card-zed",
            "granted": "true",
            "reason": "granted",
            "rule": "staff",
            "event_id": stranger.id,
        },
        {
            "at": "2026-01-10T15:00:00.000000+00:00",
            "local_time": "2026-01-10T16:00:00+01:00",
            "type": "cache.updated",
            "door": "",
            "user": "",
            "user_name": "",
            "credential": "",
            "granted": "",
            "reason": "",
            "rule": "",
            "event_id": note.id,
        },
    ]


async def test_cells_with_commas_quotes_and_line_breaks_parse_back(journal: Journal) -> None:
    door = 'Door "A", east\r\nwing'
    event = new_event(EventType.DOOR_FORCED_OPEN, T0, {"door": door, "reason": "a,b"})
    await fill(journal, [event, grant(T0 + timedelta(seconds=1))])
    parsed = parse(await export_text(journal, "2026-01-10", "2026-01-11"))
    assert [(r["door"], r["reason"]) for r in parsed] == [(door, "a,b"), ("front", "granted")]


@pytest.mark.parametrize("start", ["=", "+", "-", "@", "\t", "\r"])
async def test_cells_a_spreadsheet_would_run_are_neutralised(journal: Journal, start: str) -> None:
    payload = f'{start}HYPERLINK("http://evil.example","x")'
    event = new_event(
        EventType.ACCESS_DENIED,
        T0,
        {"door": payload, "user": payload, "credential": payload, "reason": payload},
    )
    await fill(journal, [event])
    text = await export_text(journal, "2026-01-10", "2026-01-11", user_name=lambda _: payload)
    [row] = parse(text)
    for column in ("door", "user", "user_name", "credential", "reason"):
        assert row[column] == "'" + payload, column
    # What no spreadsheet runs is left alone.
    assert row["type"] == "access.denied"


@given(cells=st.lists(st.text(), min_size=len(CSV_COLUMNS), max_size=len(CSV_COLUMNS)))
def test_a_record_is_written_exactly_as_the_csv_module_writes_it(cells: list[str]) -> None:
    # The fast path (no quoting needed) and the fallback agree with csv.writer on any text.
    buffer = io.StringIO()
    csv.writer(buffer).writerow(cells)
    assert journal_module._csv_line(cells) == buffer.getvalue()


async def test_pages_follow_each_other_through_events_sharing_an_instant(
    journal: Journal,
) -> None:
    # Keyset pagination on (at, seq): 10 events of one instant over pages of 3, none lost.
    same = [grant(T0, user=f"u{i}") for i in range(10)]
    later = [grant(T0 + timedelta(seconds=i + 1), user=f"v{i}") for i in range(5)]
    await fill(journal, same + later)
    chunks = [
        chunk
        async for chunk in journal.export_csv("2026-01-10", "2026-01-11", tz=ROME, page_rows=3)
    ]
    assert len(chunks) == 1 + 5  # the header, then five full pages (a sixth query finds none)
    ids = [r["event_id"] for r in parse("".join(chunks))]
    assert ids == [e.id for e in same + later]


async def test_an_export_streams_from_its_own_read_only_connection(journal: Journal) -> None:
    await fill(journal, [grant(T0 + timedelta(seconds=i)) for i in range(5)])
    chunks = journal.export_csv("2026-01-10", "2026-01-11", page_rows=2)
    async with contextlib.aclosing(chunks):
        header = await anext(chunks)
        assert header.startswith("at,")
        # The writer goes on while an export is half-way: nothing waits for the other.
        await fill(journal, [grant(T0 + timedelta(hours=1))])
        first = await anext(chunks)
    assert first.count("\r\n") == 2


@pytest.mark.parametrize(
    ("start", "end", "parameter", "message"),
    [
        ("", "2026-01-01", "from", "'from' is required"),
        ("2026-13-01", "2026-02-01", "from", "'from' '2026-13-01' is not a date"),
        ("2026-01-01", "next week", "to", "'to' 'next week' is not a date"),
        ("2026-02-01", "2026-01-01", "to", "must be later than 'from'"),
        ("2026-01-01", "2026-01-01", "to", "must be later than 'from'"),
        ("2026-01-01", "9" * 50, "to", "'to' is too long"),
        ("0001-01-01", "2026-01-01", "from", "out of range"),
    ],
)
def test_bad_ranges_name_the_parameter_and_the_allowed_form(
    tmp_path: Path, start: str, end: str, parameter: str, message: str
) -> None:
    with pytest.raises(ExportError) as info:
        export_csv(tmp_path / "journal.db", start, end, tz=ROME)
    assert info.value.parameter == parameter
    assert message in str(info.value)
    if "not a date" in message or "required" in message:
        assert "2026-01-01T08:00:00+01:00" in str(info.value)


def test_an_unknown_type_is_refused_with_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ExportError) as info:
        export_csv(tmp_path / "journal.db", "2026-01-01", "2026-02-01", types=["access.maybe"])
    assert info.value.parameter == "type"
    assert "'access.maybe' is not an event type" in str(info.value)
    assert "access.denied" in str(info.value)


def test_a_range_is_read_in_the_site_timezone() -> None:
    start, end = parse_range("2026-03-29", "2026-03-30T02:30", ROME)
    assert start == datetime(2026, 3, 28, 23, 0, tzinfo=UTC)
    assert end.tzinfo is ROME
    assert export_filename(start, end, ROME) == "events-2026-03-29-2026-03-30T023000.csv"
    assert export_filename(*parse_range("2026-01-01", "2026-02-01", ROME), ROME) == (
        "events-2026-01-01-2026-02-01.csv"
    )


async def test_reading_a_missing_or_foreign_file_is_a_journal_error(tmp_path: Path) -> None:
    with pytest.raises(JournalError, match="no journal at"):
        await anext(export_csv(tmp_path / "journal.db", "2026-01-01", "2026-02-01"))
    other = tmp_path / "other.db"
    sqlite3.connect(other).close()  # an empty database: schema version 0
    with pytest.raises(JournalError, match="schema version 0"):
        await anext(export_csv(other, "2026-01-01", "2026-02-01"))


# --- never blocking the event log -----------------------------------------------------------


async def test_a_full_queue_counts_what_it_missed_without_blocking(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    journal = Journal(
        tmp_path / "journal.db", retention_days=400, max_rows=10_000, queue_max=3, clock=lambda: T0
    )
    await journal.start()
    try:
        events = [grant(T0 + timedelta(seconds=i)) for i in range(10)]
        with caplog.at_level(logging.INFO, logger="gateway.journal"):
            # No await in between: the writer cannot take anything, the queue fills.
            accepted = [journal.append(event) for event in events]
            assert accepted == [True] * 3 + [False] * 7
            assert journal.missed == 7
            warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
            assert len(warnings) == 1  # logged once, not per event
            assert "queue is full" in warnings[0].getMessage()
            await journal.flush()
            assert journal.append(grant(T0 + timedelta(minutes=1)))  # taking events again
            assert any("takes events again; 7 missed" in r.getMessage() for r in caplog.records)
        await journal.flush()
        assert journal.stats().rows == 4
    finally:
        await journal.stop()


async def test_a_full_journal_never_fails_or_delays_a_recorded_event(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db", max_rows=1000)
    journal = Journal(tmp_path / "journal.db", retention_days=400, max_rows=10_000, queue_max=1)
    log = EventLog(outbox)
    log.add_listener(journal.on_event)
    await outbox.start()
    await journal.start()
    try:
        recorded = await asyncio.gather(*(log.record(grant(T0)) for _ in range(20)))
        assert len({r.seq for r in recorded}) == 20  # every one committed to the outbox
        await journal.flush()
        assert journal.missed > 0
        assert journal.stats().rows + journal.missed == 20
    finally:
        await journal.stop()
        await outbox.stop()


async def test_appends_outside_the_running_state_are_missed_not_raised(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.db", retention_days=400, max_rows=10_000)
    assert journal.append(grant(T0)) is False
    await journal.start()
    await journal.stop()
    assert journal.append(grant(T0)) is False
    assert journal.missed == 2
    await journal.stop()  # idempotent


# --- retention ------------------------------------------------------------------------------


async def test_retention_by_days_deletes_only_events_past_it(tmp_path: Path) -> None:
    clock = Clock(datetime(2026, 12, 1, tzinfo=UTC))
    journal = Journal(tmp_path / "journal.db", retention_days=30, max_rows=10_000, clock=clock)
    await journal.start()
    try:
        old = [grant(clock.now - timedelta(days=31, seconds=i)) for i in range(5)]
        edge = grant(clock.now - timedelta(days=30))  # exactly 30 days: kept
        new = [grant(clock.now - timedelta(days=1)), grant(clock.now)]
        await fill(journal, [*old, edge, *new])
        assert await journal.trim() == 5
        assert [r[1] for r in read_rows(journal.path)] == [edge.id] + [e.id for e in new]
        clock.now += timedelta(days=1)
        assert await journal.trim() == 1
        assert journal.stats().rows == 2
    finally:
        await journal.stop()


async def test_retention_by_rows_deletes_the_oldest_in_small_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_module, "TRIM_CHUNK_ROWS", 7)
    journal = Journal(tmp_path / "journal.db", retention_days=400, max_rows=100, clock=lambda: T0)
    await journal.start()
    try:
        assert journal._conn is not None
        deletes: list[str] = []  # the statements as run, parameters expanded
        await journal._conn.set_trace_callback(
            lambda sql: deletes.append(sql) if sql.startswith("DELETE") else None
        )
        events = [grant(T0 + timedelta(seconds=i)) for i in range(150)]
        await fill(journal, events)
        await journal.trim()  # the trimmer, woken by the batch, may have done part of it
        kept = [r[1] for r in read_rows(journal.path)]
        assert kept == [e.id for e in events[-99:]]  # the oldest went, down to 99 % of max_rows
        assert journal.stats().rows == 99
        limits = [int(d.rsplit("LIMIT", 1)[1].strip(" )")) for d in deletes if "ORDER BY seq" in d]
        assert sum(limits) >= 51
        assert max(limits) <= 7  # never one huge DELETE
        assert len(limits) >= 51 // 7
    finally:
        await journal.stop()


def gate_trims(journal: Journal, monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """An event set once a trim (the background task's or anyone's) has deleted something."""
    deleted = asyncio.Event()
    trim = journal.trim

    async def traced() -> int:
        count = await trim()
        if count:
            deleted.set()
        return count

    monkeypatch.setattr(journal, "trim", traced)
    return deleted


async def test_a_batch_over_max_rows_wakes_the_trimmer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = Journal(tmp_path / "journal.db", retention_days=400, max_rows=20, clock=lambda: T0)
    deleted = gate_trims(journal, monkeypatch)
    await journal.start()
    try:
        await fill(journal, [grant(T0 + timedelta(seconds=i)) for i in range(30)])
        async with asyncio.timeout(5):
            await deleted.wait()
        assert len(read_rows(journal.path)) == journal.stats().rows == 19
    finally:
        await journal.stop()


async def test_rows_are_counted_at_start_and_trimmed_to_a_lowered_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "journal.db"
    first = Journal(path, retention_days=400, max_rows=10_000, clock=lambda: T0)
    await first.start()
    await fill(first, [grant(T0 + timedelta(seconds=i)) for i in range(50)])
    await first.stop()
    again = Journal(path, retention_days=400, max_rows=10, clock=lambda: T0)
    deleted = gate_trims(again, monkeypatch)
    await again.start()
    try:
        async with asyncio.timeout(5):
            await deleted.wait()  # the start-up trim
        assert again.stats().rows == len(read_rows(path)) == 9
    finally:
        await again.stop()


async def test_a_corrupt_journal_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    path.write_bytes(b"this is not a database" * 100)
    journal = Journal(path, retention_days=400, max_rows=10_000)
    await journal.start()
    try:
        assert journal.reset_reason is not None
        assert [name for name in os.listdir(tmp_path) if ".corrupt-" in name]
        await fill(journal, [grant(T0)])
        assert len(read_rows(path)) == 1
    finally:
        await journal.stop()


# --- configuration --------------------------------------------------------------------------


def test_the_journal_section_defaults_and_bounds() -> None:
    assert parse_config({}).journal == JournalSection(retention_days=400, max_rows=2_000_000)
    config = parse_config({"journal": {"retention_days": 30, "max_rows": 1000}})
    assert config.journal == JournalSection(retention_days=30, max_rows=1000)


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("retention_days", 0, "an integer from 1 to 36500"),
        ("retention_days", "400", "an integer from 1 to 36500"),
        ("max_rows", 999, "an integer from 1000 to 100000000"),
        ("max_rows", 2.5, "an integer from 1000 to 100000000"),
    ],
)
def test_bad_journal_settings_name_key_value_and_allowed(
    key: str, value: object, allowed: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"journal": {key: value}})
    assert info.value.key_path == f"journal.{key}"
    assert info.value.allowed == allowed
    assert str(info.value).startswith(f"journal.{key}: ")


def test_an_unknown_journal_key_is_named() -> None:
    with pytest.raises(ConfigError, match=r"journal\.retention: unknown key"):
        parse_config({"journal": {"retention": 10}})
