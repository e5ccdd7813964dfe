"""The local event journal: every recorded event, kept as the site's history, exported as CSV.

The outbox (gateway/outbox.py) deletes an event once the uplink has delivered it; the journal
keeps a copy of each, in its own file (``journal.db``), for the site manager's "export the
events of a time range". It is fed by ``EventLog`` after the outbox commit, through a bounded
queue: an append never waits and never fails its caller (a full queue is counted in
``missed``). One writer task group-commits the queue with ``synchronous=NORMAL`` (the outbox is
the durable copy; this is local history). Retention (``[journal] retention_days`` and
``max_rows``) is enforced by a background task that deletes in small chunks.

An export reads pages of ``PAGE_ROWS`` rows by keyset pagination over ``(at, seq)`` on a
read-only connection of its own: memory stays flat whatever the range, no read transaction
stays open across pages (a long export does not pin the WAL), and the writer is not held up.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import enum
import io
import json
import logging
import sqlite3
from collections.abc import AsyncGenerator, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any, Final

import aiosqlite

from gateway.events import LoggedEvent
from gateway.model import Event, EventType
from gateway.sqlite import BUSY_TIMEOUT_MS, Migration, open_database, transaction

_LOGGER = logging.getLogger(__name__)

#: Events waiting for the writer; beyond this an append is counted as missed, never awaited.
QUEUE_MAX_ITEMS = 10_000
#: Events committed in one transaction at most.
BATCH_MAX = 500
#: Rows deleted by one retention statement: a trim never holds the writer up for long.
TRIM_CHUNK_ROWS = 2_000
#: How often retention runs besides when ``max_rows`` is exceeded, in seconds.
TRIM_INTERVAL_S = 3600.0
#: A trim for ``max_rows`` brings the journal down to this fraction, so it is not per batch.
TRIM_TARGET_FRACTION = 0.99
#: Rows per page of an export (one query each).
PAGE_ROWS = 1000
#: Longest date or date-time text a range bound may be.
_BOUND_MAX_CHARS = 40

MIGRATIONS: Final[tuple[Migration, ...]] = (
    (
        # AUTOINCREMENT: a seq is never reused, so (at, seq) orders events that share an instant.
        """
        CREATE TABLE events (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            type TEXT NOT NULL,
            at TEXT NOT NULL,
            door TEXT,
            user TEXT,
            credential TEXT,
            reason TEXT,
            granted INTEGER,
            body TEXT NOT NULL
        )
        """,
        # The rowid (seq) is the index's last column: it serves ORDER BY at, seq as well.
        "CREATE INDEX events_at ON events (at)",
    ),
)

#: The CSV columns of an export, in order.
CSV_COLUMNS: Final = (
    "at",
    "local_time",
    "type",
    "door",
    "user",
    "user_name",
    "credential",
    "granted",
    "reason",
    "rule",
    "event_id",
)

_EVENT_TYPES: Final = frozenset(t.value for t in EventType)

#: A spreadsheet reads a cell starting with one of these as a formula (OWASP "CSV injection").
_FORMULA_STARTS: Final = ("=", "+", "-", "@", "\t", "\r")

_BOUND_FORMS = (
    "an ISO-8601 date such as 2026-01-01 or a date-time such as 2026-01-01T08:00 "
    "or 2026-01-01T08:00:00+01:00 (without an offset: the site's local time)"
)

#: The statement that writes one ``event_row`` (a duplicate id is skipped).
INSERT_ROW = (
    "INSERT INTO events (id, type, at, door, user, credential, reason, granted, body) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING"
)
_SELECT = (
    "SELECT seq, at, type, door, user, credential, granted, reason, "
    "json_extract(body, '$.rule'), id FROM events"
)


class JournalError(Exception):
    """The journal could not be opened, written or read."""


class ExportError(ValueError):
    """Bad export input; ``parameter`` names it (``from``, ``to``, ``type`` or ``door``)."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter


class JournalState(enum.StrEnum):
    """Lifecycle of a ``Journal``; it runs once."""

    NEW = "new"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class JournalStats:
    """Rows held (as counted by the journal), events missed since start, and the queue."""

    rows: int
    max_rows: int
    retention_days: int
    missed: int
    queued: int


def format_at(at: datetime) -> str:
    """ISO-8601 in UTC with microseconds, as stored: ``2026-01-01T12:00:00.000000+00:00``.

    Fixed width, so text order is time order (and range bounds compare as text).
    """
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"event time must be timezone-aware, got {at!r}")
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def _text(value: object) -> str | None:
    """A data value as column text: strings as they are, anything else as JSON."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def event_row(event: Event) -> tuple[Any, ...]:
    """The journal row of ``event`` (without seq); ValueError on a naive time or non-JSON data."""
    data = event.data
    granted = {EventType.ACCESS_GRANTED: 1, EventType.ACCESS_DENIED: 0}.get(event.type)
    return (
        event.id,
        event.type.value,
        format_at(event.at),
        _text(data.get("door")),
        _text(data.get("user")),
        _text(data.get("credential")),
        _text(data.get("reason")),
        granted,
        json.dumps(dict(data), separators=(",", ":"), sort_keys=True, allow_nan=False),
    )


def parse_bound(value: str | datetime, parameter: str, tz: tzinfo) -> datetime:
    """A range bound as an aware datetime; dates and naive times are read in ``tz``.

    ExportError naming ``parameter`` when the text is not an ISO-8601 date or date-time.
    """
    if isinstance(value, datetime):
        parsed = value
    else:
        text = value.strip()
        if not text:
            raise ExportError(parameter, f"'{parameter}' is required: {_BOUND_FORMS}")
        if len(text) > _BOUND_MAX_CHARS:
            raise ExportError(parameter, f"'{parameter}' is too long; expected {_BOUND_FORMS}")
        try:
            parsed = datetime.fromisoformat(text)  # a date alone is its midnight
        except ValueError:
            raise ExportError(
                parameter, f"'{parameter}' {text!r} is not a date; expected {_BOUND_FORMS}"
            ) from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        parsed = parsed.replace(tzinfo=tz)
    try:
        parsed.astimezone(UTC)
    except (OverflowError, ValueError):
        raise ExportError(
            parameter, f"'{parameter}' {parsed.isoformat()} is out of range (years 1 to 9999)"
        ) from None
    return parsed


def parse_range(
    start: str | datetime, end: str | datetime, tz: tzinfo
) -> tuple[datetime, datetime]:
    """The range ``start <= at < end``; ExportError naming ``from`` or ``to`` if it is not one."""
    begin = parse_bound(start, "from", tz)
    finish = parse_bound(end, "to", tz)
    if finish <= begin:
        raise ExportError(
            "to",
            f"'to' ({finish.isoformat()}) must be later than 'from' ({begin.isoformat()}): "
            "the export holds the events with from <= at < to",
        )
    return begin, finish


def parse_types(types: Iterable[str] | None) -> tuple[str, ...]:
    """Event type names, checked (empty names and duplicates dropped); ExportError on others."""
    if isinstance(types, str):
        types = [types]  # one type, not its letters
    wanted: list[str] = []
    for given in types or ():
        name = given.strip()
        if not name or name in wanted:
            continue
        if name not in _EVENT_TYPES:
            known = ", ".join(t.value for t in EventType)
            raise ExportError("type", f"'type' {name[:60]!r} is not an event type; one of {known}")
        wanted.append(name)
    return tuple(wanted)


def export_filename(start: datetime, end: datetime, tz: tzinfo) -> str:
    """``events-<from>-<to>.csv`` in local time: dates when both are midnights."""

    def stamp(at: datetime) -> str:
        local = at.astimezone(tz)
        if (local.hour, local.minute, local.second, local.microsecond) == (0, 0, 0, 0):
            return local.strftime("%Y-%m-%d")
        return local.strftime("%Y-%m-%dT%H%M%S")

    return f"events-{stamp(start)}-{stamp(end)}.csv"


def _cell(value: object) -> str:
    """A CSV cell; one a spreadsheet would run as a formula gets a leading ``'``."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else str(value)
    if text.startswith(_FORMULA_STARTS):
        return "'" + text
    return text


def _csv_text(rows: Iterable[Sequence[object]]) -> str:
    """Records as the csv module writes them (RFC 4180: QUOTE_MINIMAL, ``\r\n``)."""
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    return buffer.getvalue()


def _csv_line(cells: Sequence[str]) -> str:
    """One record, exactly as ``_csv_text`` writes it, several times faster for plain cells."""
    line = ",".join(cells)
    # Only a cell holding a comma, a quote or a line break needs quoting: then the csv module.
    if (
        line.count(",") == len(cells) - 1
        and '"' not in line
        and "\n" not in line
        and "\r" not in line
    ):
        return line + "\r\n"
    return _csv_text([cells])


def _csv_page(
    rows: Iterable[Sequence[Any]], tz: tzinfo, user_name: Callable[[str], str | None] | None
) -> str:
    """The CSV text of one page of ``_SELECT`` rows."""
    lines = []
    for _seq, at, event_type, door, user, credential, granted, reason, rule, event_id in rows:
        local = datetime.fromisoformat(at).astimezone(tz).isoformat(timespec="seconds")
        name = user_name(user) if user_name is not None and user else None
        lines.append(
            _csv_line(
                (
                    at,
                    local,
                    _cell(event_type),
                    _cell(door),
                    _cell(user),
                    _cell(name),
                    _cell(credential),
                    "" if granted is None else ("true" if granted else "false"),
                    _cell(reason),
                    _cell(rule),
                    _cell(event_id),
                )
            )
        )
    return "".join(lines)


def _reader_uri(path: Path) -> str:
    """The read-only SQLite URI of the journal at ``path``; JournalError if there is none."""
    if not path.is_file():
        raise JournalError(f"no journal at {path}: the gateway creates it when it first runs")
    return path.resolve().as_uri() + "?mode=ro"


async def open_reader(path: Path) -> aiosqlite.Connection:
    """A read-only connection to the journal at ``path``; JournalError if it is not one."""
    uri = _reader_uri(path)
    try:
        conn = await aiosqlite.connect(uri, uri=True, isolation_level=None)
    except sqlite3.Error as err:
        raise JournalError(f"cannot open the journal at {path}: {err}") from err
    try:
        async with conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}"):
            pass
        rows = list(await conn.execute_fetchall("PRAGMA user_version"))
        version = int(rows[0][0])
    except sqlite3.Error as err:
        await conn.close()
        raise JournalError(f"cannot read the journal at {path}: {err}") from err
    except BaseException:
        await conn.close()
        raise
    if version != len(MIGRATIONS):
        await conn.close()
        raise JournalError(
            f"{path} has journal schema version {version}; this gateway reads {len(MIGRATIONS)}"
        )
    return conn


def export_csv(
    path: Path,
    start: str | datetime,
    end: str | datetime,
    types: Iterable[str] | None = None,
    door: str | None = None,
    *,
    tz: tzinfo = UTC,
    user_name: Callable[[str], str | None] | None = None,
    page_rows: int = PAGE_ROWS,
) -> AsyncGenerator[str]:
    """CSV text chunks (the header first, then one per page) of the journal file at ``path``.

    The events with ``start <= at < end``, in time order, optionally only of ``types`` and at
    ``door``. The input is checked now (ExportError naming the parameter); the file is opened
    read-only by the first iteration (JournalError if it cannot be read). Close the iterator
    (``contextlib.aclosing``) when leaving it early.
    """
    if page_rows < 1:
        raise ValueError(f"page_rows must be at least 1, not {page_rows}")
    begin, finish = parse_range(start, end, tz)
    wanted = parse_types(types)
    door = door.strip() if door is not None else None
    return _export(path, begin, finish, wanted, door or None, tz, user_name, page_rows)


async def _export(
    path: Path,
    start: datetime,
    end: datetime,
    types: tuple[str, ...],
    door: str | None,
    tz: tzinfo,
    user_name: Callable[[str], str | None] | None,
    page_rows: int,
) -> AsyncGenerator[str]:
    conn = await open_reader(path)
    try:
        yield _csv_text([CSV_COLUMNS])
        filters = ["at < ?"]
        params: list[Any] = [format_at(end)]
        if types:
            filters.append(f"type IN ({','.join('?' * len(types))})")
            params += types
        if door is not None:
            filters.append("door = ?")
            params.append(door)
        where = " AND ".join(filters)
        first = f"{_SELECT} WHERE at >= ? AND {where} ORDER BY at, seq LIMIT ?"
        # Keyset pagination: each page is one short query that starts after the last row seen.
        following = f"{_SELECT} WHERE (at, seq) > (?, ?) AND {where} ORDER BY at, seq LIMIT ?"
        after: list[Any] = [format_at(start)]
        sql = first
        while True:
            try:
                rows = list(await conn.execute_fetchall(sql, [*after, *params, page_rows]))
            except sqlite3.Error as err:
                raise JournalError(f"reading the journal at {path} failed: {err}") from err
            if not rows:
                return
            # Formatted in a worker thread: the event loop (door decisions) is not held for a
            # whole page, only while the thread has the GIL (a switch interval, 5 ms, at most).
            yield await asyncio.to_thread(_csv_page, rows, tz, user_name)
            if len(rows) < page_rows:
                return
            last = rows[-1]
            after, sql = [last[1], last[0]], following
    finally:
        await conn.close()


async def _execute(conn: aiosqlite.Connection, sql: str, params: Iterable[Any] = ()) -> int:
    """Execute one statement, close its cursor and return how many rows it changed."""
    async with conn.execute(sql, params) as cursor:
        return cursor.rowcount


#: Put on the queue by stop() to wake an idle writer.
_WAKE: Final = None


class Journal:
    """Every recorded event in ``journal.db``, within a retention bound, exportable as CSV."""

    def __init__(
        self,
        path: Path,
        *,
        retention_days: int,
        max_rows: int,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        batch_max: int = BATCH_MAX,
        queue_max: int = QUEUE_MAX_ITEMS,
    ) -> None:
        """Prepare a journal in ``path``; ``clock`` dates the retention cutoff."""
        for name, value in (
            ("retention_days", retention_days),
            ("max_rows", max_rows),
            ("batch_max", batch_max),
            ("queue_max", queue_max),
        ):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, not {value}")
        self.path = path
        self.retention_days = retention_days
        self.max_rows = max_rows
        self.batch_max = batch_max
        #: Why the journal file was found corrupt and moved aside at start, or None.
        self.reset_reason: str | None = None
        self._clock = clock
        self._state = JournalState.NEW
        self._conn: aiosqlite.Connection | None = None
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue(queue_max)
        # One connection serves the writer and the trims; a trim chunk is one statement.
        self._lock = asyncio.Lock()
        self._writer: asyncio.Task[None] | None = None
        self._trimmer: asyncio.Task[None] | None = None
        self._trim_wanted = asyncio.Event()
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()
        self._rows = 0  # committed rows, counted once by the trimmer and kept up to date
        self._missed = 0  # events not journaled: queue full, not running, or a failed write
        self._missing = False  # a run of misses is going on (logged once)
        self._write_failing = False
        self._trim_failing = False

    @property
    def state(self) -> JournalState:
        """Where the journal is in its lifecycle."""
        return self._state

    @property
    def missed(self) -> int:
        """Events not journaled since this object was made (queue full or write failed)."""
        return self._missed

    def stats(self) -> JournalStats:
        """Rows held, bounds, misses and the queue's length."""
        return JournalStats(
            rows=self._rows,
            max_rows=self.max_rows,
            retention_days=self.retention_days,
            missed=self._missed,
            queued=self._queue.qsize(),
        )

    def _set_state(self, state: JournalState) -> None:
        """The one place the state changes."""
        _LOGGER.debug("Journal %s: %s -> %s", self.path, self._state, state)
        self._state = state

    async def start(self) -> None:
        """Open (creating, migrating or moving aside a corrupt file), start writer and trimmer."""
        if self._state is not JournalState.NEW:
            raise JournalError(f"journal cannot start from state {self._state}")
        result = await open_database(
            self.path, MIGRATIONS, on_corrupt="move_aside", synchronous="NORMAL"
        )
        self._conn = result.connection
        if result.reset:
            self.reset_reason = result.reason
            _LOGGER.warning(
                "Journal %s was corrupt (%s); moved to %s, the history starts afresh",
                self.path,
                result.reason,
                result.moved_to,
            )
        self._set_state(JournalState.RUNNING)
        self._writer = asyncio.create_task(self._run_writer(), name=f"journal-writer:{self.path}")
        self._trimmer = asyncio.create_task(
            self._run_trimmer(), name=f"journal-trimmer:{self.path}"
        )

    async def stop(self) -> None:
        """Write what is queued, stop trimming, close; idempotent."""
        if self._state is JournalState.NEW:
            self._set_state(JournalState.STOPPED)
            self._stopped.set()
            return
        if self._state is not JournalState.RUNNING:
            await self._stopped.wait()
            return
        self._set_state(JournalState.STOPPING)
        self._stopping.set()
        self._trim_wanted.set()  # wakes the trimmer to exit
        try:
            if self._queue.empty():
                self._queue.put_nowait(_WAKE)  # the writer is idle in get(): wake it to exit
            tasks = [t for t in (self._writer, self._trimmer) if t is not None]
            if tasks:
                await asyncio.wait(tasks)
            for task in tasks:
                if not task.cancelled() and task.exception() is not None:
                    _LOGGER.error(
                        "Journal task %s failed", task.get_name(), exc_info=task.exception()
                    )
        finally:
            async with self._lock:
                if self._conn is not None:
                    await self._conn.close()
                    self._conn = None
            self._set_state(JournalState.STOPPED)
            self._stopped.set()

    def append(self, event: Event) -> bool:
        """Queue ``event`` for the journal without waiting; False (counted) if it cannot be."""
        if self._state is not JournalState.RUNNING:
            self._missed += 1
            return False
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self._missed += 1
            if not self._missing:
                self._missing = True
                _LOGGER.warning(
                    "Journal %s queue is full (%d events): events are not journaled until it "
                    "drains (they still reach the outbox)",
                    self.path,
                    self._queue.maxsize,
                )
            return False
        if self._missing:
            self._missing = False
            _LOGGER.info("Journal %s takes events again; %d missed so far", self.path, self._missed)
        return True

    async def flush(self) -> None:
        """Return once every event queued so far has been written (or counted as missed)."""
        if self._state in (JournalState.RUNNING, JournalState.STOPPING):
            await self._queue.join()

    def on_event(self, logged: LoggedEvent) -> None:
        """``EventLog`` listener: journal an event the outbox has committed; never raises."""
        self.append(logged.event)

    async def trim(self) -> int:
        """Apply retention now: events older than ``retention_days``, then the oldest beyond
        ``max_rows``, in chunks of ``TRIM_CHUNK_ROWS``; return how many were deleted."""
        conn = self._open_connection()
        cutoff = format_at(self._clock() - timedelta(days=self.retention_days))
        deleted = 0
        try:
            while not self._stopping.is_set():
                async with self._lock:
                    count = await _execute(
                        conn,
                        "DELETE FROM events WHERE seq IN "
                        "(SELECT seq FROM events WHERE at < ? ORDER BY at LIMIT ?)",
                        (cutoff, TRIM_CHUNK_ROWS),
                    )
                self._rows -= count
                deleted += count
                if count < TRIM_CHUNK_ROWS:
                    break
                await asyncio.sleep(0)  # the writer's next batch goes between two chunks
            if self._rows > self.max_rows:
                target = max(1, int(self.max_rows * TRIM_TARGET_FRACTION))
                while self._rows > target and not self._stopping.is_set():
                    async with self._lock:
                        count = await _execute(
                            conn,
                            "DELETE FROM events WHERE seq IN "
                            "(SELECT seq FROM events ORDER BY seq LIMIT ?)",
                            (min(TRIM_CHUNK_ROWS, self._rows - target),),
                        )
                    if count == 0:
                        self._rows = await self._count()  # the running count was off
                        break
                    self._rows -= count
                    deleted += count
                    await asyncio.sleep(0)
        except sqlite3.Error as err:
            raise JournalError(f"trimming the journal at {self.path} failed: {err}") from err
        if deleted:
            _LOGGER.debug(
                "Journal %s: deleted %d events (older than %d days or beyond %d rows)",
                self.path,
                deleted,
                self.retention_days,
                self.max_rows,
            )
        return deleted

    def export_csv(
        self,
        start: str | datetime,
        end: str | datetime,
        types: Iterable[str] | None = None,
        door: str | None = None,
        *,
        tz: tzinfo = UTC,
        user_name: Callable[[str], str | None] | None = None,
        page_rows: int = PAGE_ROWS,
    ) -> AsyncGenerator[str]:
        """CSV chunks of the events with ``start <= at < end`` (see the module's ``export_csv``)."""
        return export_csv(
            self.path,
            start,
            end,
            types,
            door,
            tz=tz,
            user_name=user_name,
            page_rows=page_rows,
        )

    def _open_connection(self) -> aiosqlite.Connection:
        # Open from start() until stop() has let the writer and the trimmer finish.
        if self._conn is None:
            raise JournalError(f"journal is {self._state}")
        return self._conn

    async def _count(self) -> int:
        conn = self._open_connection()
        async with self._lock:
            rows = list(await conn.execute_fetchall("SELECT count(*) FROM events"))
        return int(rows[0][0])

    async def _run_writer(self) -> None:
        """Commit queued events in batches until stopping and the queue is empty."""
        while True:
            item = await self._queue.get()
            taken = 1
            batch = [] if item is None else [item]
            while len(batch) < self.batch_max and not self._queue.empty():
                queued = self._queue.get_nowait()
                taken += 1
                if queued is not None:
                    batch.append(queued)
            try:
                if batch:
                    await self._write(batch)
            finally:
                for _ in range(taken):
                    self._queue.task_done()
            if self._state is not JournalState.RUNNING and self._queue.empty():
                return

    async def _write(self, batch: list[Event]) -> None:
        """Insert ``batch`` in one transaction; a failure is logged once and counted."""
        rows = []
        for event in batch:
            try:
                rows.append(event_row(event))
            except (ValueError, TypeError) as err:  # the outbox took it, so this is a bug
                self._missed += 1
                _LOGGER.error("Journal %s cannot store event %s: %s", self.path, event.id, err)
        if not rows:
            return
        conn = self._conn
        assert conn is not None  # the writer runs only between start and close
        try:
            async with self._lock, transaction(conn):
                cursor = await conn.executemany(INSERT_ROW, rows)
                inserted = cursor.rowcount
                await cursor.close()
        except sqlite3.Error as err:
            self._missed += len(rows)
            if not self._write_failing:
                self._write_failing = True
                _LOGGER.warning("Journal %s writes fail (%s); events are missed", self.path, err)
            else:
                _LOGGER.debug("Journal %s write failed again: %s", self.path, err)
            return
        if self._write_failing:
            self._write_failing = False
            _LOGGER.info("Journal %s writes recovered; %d missed so far", self.path, self._missed)
        self._rows += inserted
        if self._rows > self.max_rows:
            self._trim_wanted.set()

    async def _run_trimmer(self) -> None:
        """Count the rows once, then apply retention at start, hourly and when over max_rows."""
        try:
            self._rows = await self._count()
        except (sqlite3.Error, JournalError) as err:
            _LOGGER.warning("Journal %s cannot be counted (%s)", self.path, err)
        while not self._stopping.is_set():
            self._trim_wanted.clear()
            try:
                await self.trim()
            except JournalError as err:
                if not self._trim_failing:
                    self._trim_failing = True
                    _LOGGER.warning("%s; retrying in %.0f s", err, TRIM_INTERVAL_S)
            else:
                if self._trim_failing:
                    self._trim_failing = False
                    _LOGGER.info("Journal %s retention works again", self.path)
            if self._stopping.is_set():
                return
            # Woken early by a batch over max_rows, or by stop().
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TRIM_INTERVAL_S):
                    await self._trim_wanted.wait()
