"""The durable event outbox: events wait here, committed, until the uplink has delivered them.

The outbox lives in its own file (``outbox.db``) so that a long cache write never delays an
event. Appends are group-committed by one writer task: ``append()`` resolves only once the
event's row is committed with ``synchronous=FULL``. The table is bounded by ``max_rows``; when
it overflows, the oldest events of the lowest priority class are dropped, counted in ``drops``
and announced by one ``events.dropped`` event (see docs/events.md).
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import sqlite3
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import aiosqlite

from gateway.model import Event, EventPriority, EventType
from gateway.sqlite import Migration, open_database, transaction

_LOGGER = logging.getLogger(__name__)

#: Appends waiting for the writer; a full queue makes append() wait instead of dropping.
QUEUE_MAX_ITEMS = 10_000

#: A trim brings the row count down to this fraction of max_rows, so trims are not per-append.
TRIM_TARGET_FRACTION = 0.99

#: Bounds on the ``?`` placeholders of one statement (SQLite's limit is 32766).
_ACK_CHUNK = 500
_INSERT_CHUNK = 1000  # rows of 5 values each

MIGRATIONS: Final[tuple[Migration, ...]] = (
    (
        # AUTOINCREMENT: a seq is never reused, even after the newest rows are deleted.
        """
        CREATE TABLE events (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            type TEXT NOT NULL,
            priority INTEGER NOT NULL,
            at TEXT NOT NULL,
            body TEXT NOT NULL
        )
        """,
        "CREATE INDEX events_priority_seq ON events (priority, seq)",
        "CREATE TABLE drops (priority INTEGER PRIMARY KEY, count INTEGER NOT NULL)",
    ),
)


class OutboxError(Exception):
    """An event could not be stored in, or read from, the outbox."""


class OutboxClosedError(OutboxError):
    """The outbox is not running (not started yet, stopping or stopped)."""


class OutboxState(enum.StrEnum):
    """Lifecycle of an ``Outbox``; it runs once."""

    NEW = "new"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event in the outbox with its sequence number (monotonic, never reused)."""

    seq: int
    event: Event


@dataclass(frozen=True, slots=True)
class OutboxStats:
    """Size of the outbox and what retention has dropped since the file was created."""

    rows: int
    max_rows: int
    queued: int
    oldest_seq: int | None
    newest_seq: int | None
    dropped: Mapping[EventPriority, int]


def event_to_json(event: Event) -> str:
    """Encode ``event`` as compact, sorted JSON; ValueError on a naive ``at`` or non-JSON data."""
    document = {
        "id": event.id,
        "type": event.type.value,
        "at": _format_at(event.at),
        "data": dict(event.data),
    }
    return json.dumps(document, separators=(",", ":"), sort_keys=True, allow_nan=False)


def event_from_json(text: str) -> Event:
    """Decode what ``event_to_json`` wrote; ValueError on anything else, unknown types included."""
    document = json.loads(text)
    if not isinstance(document, dict):
        raise ValueError(f"stored event is not a JSON object: {text[:80]!r}")
    try:
        event_id, type_name, at_text, data = (
            document["id"],
            document["type"],
            document["at"],
            document["data"],
        )
    except KeyError as err:
        raise ValueError(f"stored event lacks {err.args[0]!r}: {text[:80]!r}") from None
    if not isinstance(event_id, str) or not isinstance(data, dict) or not isinstance(at_text, str):
        raise ValueError(f"stored event has fields of the wrong type: {text[:80]!r}")
    try:
        event_type = EventType(type_name)
    except ValueError:
        # The outbox only holds what this code wrote: an unknown type is a bug, not input to skip.
        raise ValueError(f"stored event {event_id!r} has unknown type {type_name!r}") from None
    at = datetime.fromisoformat(at_text)
    if at.tzinfo is None:
        raise ValueError(f"stored event {event_id!r} has a naive timestamp {at_text!r}")
    return Event(id=event_id, type=event_type, at=at, data=data)


def _format_at(at: datetime) -> str:
    """ISO-8601 in UTC with microseconds and offset, e.g. ``2024-05-01T12:00:00.000000+00:00``."""
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"event time must be timezone-aware, got {at!r}")
    return at.astimezone(UTC).isoformat(timespec="microseconds")


async def _execute(conn: aiosqlite.Connection, sql: str, params: Iterable[Any]) -> int:
    """Execute one statement, close its cursor and return how many rows it changed."""
    async with conn.execute(sql, params) as cursor:
        return cursor.rowcount


async def _count_rows(conn: aiosqlite.Connection) -> int:
    """Return how many events the table holds."""
    async with conn.execute("SELECT count(*) FROM events") as cursor:
        row = await cursor.fetchone()
    return 0 if row is None else int(row[0])


@dataclass(slots=True)
class _Pending:
    """An accepted append: the event, its encoded row and the caller's future."""

    event: Event
    body: str
    future: asyncio.Future[int]


#: Put on the queue by stop() to wake an idle writer.
_WAKE: Final = None


class Outbox:
    """Durable, bounded queue of events waiting to go upstream."""

    def __init__(self, path: Path, *, max_rows: int, batch_max: int = 256) -> None:
        """Prepare an outbox in ``path`` holding at most ``max_rows`` events; start() opens it."""
        if max_rows < 1:
            raise ValueError(f"max_rows must be at least 1, not {max_rows}")
        if batch_max < 1:
            raise ValueError(f"batch_max must be at least 1, not {batch_max}")
        self.path = path
        self.max_rows = max_rows
        self.batch_max = batch_max
        #: Why the outbox file was found corrupt and moved aside at start, or None.
        self.reset_reason: str | None = None
        self._state = OutboxState.NEW
        self._conn: aiosqlite.Connection | None = None
        self._queue: asyncio.Queue[_Pending | None] = asyncio.Queue(QUEUE_MAX_ITEMS)
        self._writer: asyncio.Task[None] | None = None
        # One connection serves the writer and the readers: a reader must never see, or begin a
        # transaction inside, the writer's open transaction.
        self._lock = asyncio.Lock()
        self._rows = 0  # committed rows, kept in memory so a batch need not count(*)
        self._write_failing = False
        self._stopped = asyncio.Event()

    @property
    def state(self) -> OutboxState:
        """Where the outbox is in its lifecycle."""
        return self._state

    def _set_state(self, state: OutboxState) -> None:
        """The one place the state changes."""
        _LOGGER.debug("Outbox %s: %s -> %s", self.path, self._state, state)
        self._state = state

    async def start(self) -> None:
        """Open (creating, migrating or resetting a corrupt file) and start the writer."""
        if self._state is not OutboxState.NEW:
            raise OutboxError(f"outbox cannot start from state {self._state}")
        result = await open_database(
            self.path, MIGRATIONS, on_corrupt="move_aside", synchronous="FULL"
        )
        self._conn = result.connection
        if result.reset:
            self.reset_reason = result.reason
            _LOGGER.warning(
                "Outbox %s was corrupt (%s); moved to %s, its events are not delivered",
                self.path,
                result.reason,
                result.moved_to,
            )
        try:
            self._rows = await _count_rows(self._conn)
            # max_rows may have shrunk since the file was written.
            if self._rows > self.max_rows:
                async with transaction(self._conn):
                    self._rows, trimmed = await self._trim(self._conn, self._rows)
                self._log_trim(trimmed)
        except BaseException:
            await self._conn.close()
            self._conn = None
            raise
        self._writer = asyncio.create_task(self._run_writer(), name=f"outbox-writer:{self.path}")
        self._set_state(OutboxState.RUNNING)

    async def stop(self) -> None:
        """Commit every accepted append, then close; idempotent."""
        if self._state is OutboxState.NEW:
            self._set_state(OutboxState.STOPPED)
            self._stopped.set()
            return
        if self._state is not OutboxState.RUNNING:
            await self._stopped.wait()
            return
        self._set_state(OutboxState.STOPPING)
        try:
            if self._queue.empty():
                self._queue.put_nowait(_WAKE)  # the writer is idle in get(): wake it to exit
            # A busy writer notices STOPPING by itself once the queue runs empty.
            if self._writer is not None:
                await self._writer
        finally:
            self._fail_queued(OutboxClosedError("outbox stopped before the event was written"))
            async with self._lock:
                if self._conn is not None:
                    await self._conn.close()
                    self._conn = None
            self._set_state(OutboxState.STOPPED)
            self._stopped.set()

    async def append(self, event: Event) -> int:
        """Store ``event``; return its seq once its row is committed."""
        if self._state is not OutboxState.RUNNING:
            raise OutboxClosedError(f"outbox is {self._state}, cannot append")
        # Encode here so that an unencodable event fails its caller, not the whole batch.
        item = _Pending(event, event_to_json(event), asyncio.get_running_loop().create_future())
        await self._queue.put(item)
        if self._writer is None or self._writer.done():
            # The writer exited (stopped) while we waited for room: nobody will take this item.
            self._settle(
                item.future, OutboxClosedError("outbox stopped before the event was written")
            )
        return await item.future

    async def pending(self, after_seq: int = 0, limit: int = 100) -> list[StoredEvent]:
        """Return up to ``limit`` committed events with seq above ``after_seq``, oldest first."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        async with self._lock:
            conn = self._open_connection()
            try:
                rows = await conn.execute_fetchall(
                    "SELECT seq, body FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                    (after_seq, limit),
                )
            except sqlite3.Error as err:
                raise OutboxError(f"reading the outbox failed: {err}") from err
        return [StoredEvent(int(row[0]), event_from_json(str(row[1]))) for row in rows]

    async def ack(self, seqs: Iterable[int]) -> int:
        """Delete delivered events; return how many rows were deleted (unknown seqs count 0)."""
        wanted = sorted(set(seqs))
        if not wanted:
            return 0
        deleted = 0
        async with self._lock:
            conn = self._open_connection()
            try:
                async with transaction(conn):
                    for start in range(0, len(wanted), _ACK_CHUNK):
                        chunk = wanted[start : start + _ACK_CHUNK]
                        marks = ",".join("?" * len(chunk))
                        deleted += await _execute(
                            conn, f"DELETE FROM events WHERE seq IN ({marks})", chunk
                        )
            except sqlite3.Error as err:
                raise OutboxError(f"acknowledging events failed: {err}") from err
            self._rows -= deleted
        return deleted

    async def stats(self) -> OutboxStats:
        """Return the committed row count, seq range and persistent drop totals."""
        async with self._lock:
            conn = self._open_connection()
            try:
                rows = list(
                    await conn.execute_fetchall("SELECT count(*), min(seq), max(seq) FROM events")
                )
                dropped = await self._drop_totals(conn)
            except sqlite3.Error as err:
                raise OutboxError(f"reading outbox statistics failed: {err}") from err
        count, oldest, newest = rows[0]
        return OutboxStats(
            rows=int(count),
            max_rows=self.max_rows,
            queued=self._queue.qsize(),
            oldest_seq=None if oldest is None else int(oldest),
            newest_seq=None if newest is None else int(newest),
            dropped=dropped,
        )

    def _open_connection(self) -> aiosqlite.Connection:
        """Return the connection, or raise OutboxClosedError when there is none."""
        if self._conn is None:
            raise OutboxClosedError(f"outbox is {self._state}")
        return self._conn

    async def _run_writer(self) -> None:
        """Take queued appends in batches and commit each batch; exit once stopping and drained."""
        while True:
            # No await between this check and returning: an append that finds room after it
            # sees the writer done and fails instead of waiting forever.
            if self._state is OutboxState.STOPPING and self._queue.empty():
                return
            first = await self._queue.get()
            batch = [] if first is None else [first]
            while len(batch) < self.batch_max and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is not None:
                    batch.append(item)
            if batch:
                await self._write_batch(batch)

    async def _write_batch(self, batch: list[_Pending]) -> None:
        """Commit ``batch`` in one transaction and settle every future in it."""
        try:
            async with self._lock:
                conn = self._open_connection()
                async with transaction(conn):
                    seqs = await self._insert(conn, batch)
                    estimate = self._rows + sum(seq is not None for seq in seqs)
                    rows, trimmed = await self._trim(conn, estimate)
                # Only a committed batch changes the count: a rolled-back one left the file as is.
                self._rows = rows
                self._log_trim(trimmed)
        except asyncio.CancelledError:
            error = OutboxError("outbox writer cancelled before the event was committed")
            for item in batch:
                self._settle(item.future, error)
            raise
        except Exception as err:
            if self._write_failing:
                _LOGGER.debug("Outbox %s write failed again: %s", self.path, err)
            else:
                _LOGGER.warning("Outbox %s write failed: %s", self.path, err)
            self._write_failing = True
            for item in batch:
                failure = OutboxError(f"event {item.event.id!r} was not stored: {err}")
                failure.__cause__ = err
                self._settle(item.future, failure)
            return
        if self._write_failing:
            _LOGGER.info("Outbox %s writes recovered", self.path)
            self._write_failing = False
        for item, seq in zip(batch, seqs, strict=True):
            if seq is None:
                self._settle(item.future, OutboxError(f"duplicate event id {item.event.id!r}"))
            elif not item.future.done():
                item.future.set_result(seq)

    async def _insert(self, conn: aiosqlite.Connection, batch: list[_Pending]) -> list[int | None]:
        """Insert ``batch`` in one statement; return each item's seq, or None for a duplicate id."""
        # One multi-row INSERT is one round trip to the database thread. A duplicate id is
        # skipped rather than allowed to abort the other events of the batch.
        seq_by_id: dict[str, int] = {}
        for start in range(0, len(batch), _INSERT_CHUNK):
            chunk = batch[start : start + _INSERT_CHUNK]
            params: list[Any] = []
            for item in chunk:
                event = item.event
                params += [event.id, event.type.value, int(event.priority), _format_at(event.at)]
                params.append(item.body)
            rows = await conn.execute_fetchall(
                "INSERT INTO events (id, type, priority, at, body) VALUES "
                + ",".join(["(?,?,?,?,?)"] * len(chunk))
                + " ON CONFLICT (id) DO NOTHING RETURNING id, seq",
                params,
            )
            seq_by_id.update((str(row[0]), int(row[1])) for row in rows)
        seqs: list[int | None] = []
        for item in batch:
            # pop: a second event with the same id in one batch is a duplicate too.
            seqs.append(seq_by_id.pop(item.event.id, None))
        return seqs

    async def _trim(
        self, conn: aiosqlite.Connection, estimate: int
    ) -> tuple[int, dict[EventPriority, int] | None]:
        """Inside the caller's transaction, drop events beyond ``max_rows``.

        Return the row count afterwards and what was dropped per class (None: nothing).
        """
        if estimate <= self.max_rows:
            return estimate, None
        # The running count lives in memory only; a trim decides on the table's true size.
        rows = await _count_rows(conn)
        if rows <= self.max_rows:
            return rows, None
        # The events.dropped row counts too: leave room for it below the target.
        target = max(1, int(self.max_rows * TRIM_TARGET_FRACTION))
        excess = rows + 1 - target
        dropped = dict.fromkeys(EventPriority, 0)
        for priority in sorted(EventPriority):
            if excess == 0:
                break
            count = await _execute(
                conn,
                "DELETE FROM events WHERE seq IN "
                "(SELECT seq FROM events WHERE priority = ? ORDER BY seq LIMIT ?)",
                (int(priority), excess),
            )
            dropped[priority] = count
            excess -= count
        for priority, count in dropped.items():
            if count:
                await _execute(
                    conn,
                    "INSERT INTO drops (priority, count) VALUES (?, ?) "
                    "ON CONFLICT (priority) DO UPDATE SET count = count + excluded.count",
                    (int(priority), count),
                )
        totals = await self._drop_totals(conn)
        notice = Event(
            id=str(uuid.uuid4()),
            type=EventType.EVENTS_DROPPED,
            at=datetime.now(UTC),
            data={
                "dropped": {p.name.lower(): dropped[p] for p in EventPriority},
                "total_dropped": {p.name.lower(): totals[p] for p in EventPriority},
            },
        )
        # Inserted directly, not appended: it cannot start another trim.
        await _execute(
            conn,
            "INSERT INTO events (id, type, priority, at, body) VALUES (?, ?, ?, ?, ?)",
            (
                notice.id,
                notice.type.value,
                int(notice.priority),
                _format_at(notice.at),
                event_to_json(notice),
            ),
        )
        return rows - sum(dropped.values()) + 1, dropped

    def _log_trim(self, dropped: dict[EventPriority, int] | None) -> None:
        """Log a committed trim, once, with its counts."""
        if dropped is None:
            return
        _LOGGER.warning(
            "Outbox %s over %d rows: dropped %d routine, %d notable, %d security events",
            self.path,
            self.max_rows,
            dropped[EventPriority.ROUTINE],
            dropped[EventPriority.NOTABLE],
            dropped[EventPriority.SECURITY],
        )

    async def _drop_totals(self, conn: aiosqlite.Connection) -> dict[EventPriority, int]:
        """Return the persistent drop count of every priority class."""
        totals = dict.fromkeys(EventPriority, 0)
        for priority, count in await conn.execute_fetchall("SELECT priority, count FROM drops"):
            totals[EventPriority(priority)] = int(count)
        return totals

    def _fail_queued(self, error: OutboxError) -> None:
        """Fail every append still queued (only reachable when the writer did not drain)."""
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is not None:
                self._settle(item.future, error)

    @staticmethod
    def _settle(future: asyncio.Future[int], error: BaseException) -> None:
        """Fail ``future`` unless it is already settled (e.g. its caller was cancelled)."""
        if not future.done():
            future.set_exception(error)
