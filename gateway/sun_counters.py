"""The last SUN read counter seen per NTAG 424 DNA tag, so a recorded SUN URL works only once.

A SUN message is replayable by design (the URL can be copied); what makes a copy useless is
its read counter, which a genuine tag increments on every read. ``advance`` accepts a counter
only if it is strictly greater than the last one accepted for that UID (CREDENTIALS.md).

``advance`` is synchronous and in memory, on the hot path of a decision; a write-behind task
(``start()``) stores new values in the counters' own SQLite file (WAL, ``synchronous=FULL``),
and ``close()`` writes whatever is left. Crash window: a counter accepted in memory but not
yet committed (normally a few milliseconds, longer while the disk fails, when writes are
retried every ``RETRY_S``) is forgotten by a crash or power loss, so a SUN URL read in that
window verifies once more after the restart. A corrupt file is moved aside and counting
starts again from zero (``reset`` says so); every tag's next genuine read re-arms it.

Memory: one integer per UID that ever presented a valid SUN message (only genuine tags of the
site can). Call ``advance`` from the event loop's thread once ``start()`` has run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from pathlib import Path
from typing import Final

import aiosqlite

from gateway.ntag424 import COUNTER_MAX
from gateway.sqlite import Migration, open_database, transaction

_LOGGER = logging.getLogger(__name__)

RETRY_S = 5.0  # wait between attempts while writes fail

MIGRATIONS: Final[tuple[Migration, ...]] = (
    (
        """
        CREATE TABLE sun_counters (
            uid TEXT PRIMARY KEY,
            counter INTEGER NOT NULL CHECK (counter BETWEEN 0 AND 16777215)
        ) WITHOUT ROWID
        """,
    ),
)

# Never move a stored counter backwards, whatever order writes arrive in.
_UPSERT = (
    "INSERT INTO sun_counters (uid, counter) VALUES (?, ?) "
    "ON CONFLICT (uid) DO UPDATE SET counter = max(counter, excluded.counter)"
)


class SunCounters:
    """Per-UID last SUN read counter, only ever moving forward; persisted write-behind."""

    def __init__(
        self,
        last: dict[str, int] | None = None,
        *,
        db: aiosqlite.Connection | None = None,
        reset: bool = False,
    ) -> None:
        self._last: dict[str, int] = dict(last or {})
        self._pending: dict[str, int] = {}
        self._db = db
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.reset = reset  # True: the file was corrupt and was moved aside at open

    @classmethod
    async def open(cls, path: Path) -> SunCounters:
        """Load the counters stored at ``path`` (created if missing)."""
        opened = await open_database(path, MIGRATIONS, on_corrupt="move_aside", synchronous="FULL")
        rows = await opened.connection.execute_fetchall("SELECT uid, counter FROM sun_counters")
        last = {str(uid): int(counter) for uid, counter in rows}
        return cls(last, db=opened.connection, reset=opened.reset)

    def advance(self, uid: str, counter: int) -> bool:
        """True, and remembered, only if ``counter`` is above the last one seen for ``uid``."""
        if not 0 <= counter <= COUNTER_MAX:
            raise ValueError(f"a SUN read counter is 0 to {COUNTER_MAX}, not {counter}")
        key = uid.upper()
        if counter <= self._last.get(key, -1):
            return False
        self._last[key] = counter
        if self._db is not None:
            self._pending[key] = counter
            self._wake.set()
        return True

    def last(self, uid: str) -> int | None:
        """The last counter accepted for ``uid``, or None if it never presented one."""
        return self._last.get(uid.upper())

    def __len__(self) -> int:
        return len(self._last)

    def start(self) -> None:
        """Start the write-behind task (no-op without a file or when already started)."""
        if self._db is None or self._task is not None or self._closing:
            return
        self._task = asyncio.create_task(self._write_behind(), name="sun-counters-writer")

    async def flush(self) -> None:
        """Write every counter accepted so far; raises sqlite3.Error if the write fails."""
        await self._write_pending()

    async def close(self) -> None:
        """Stop the writer, write what is left and close the file."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            task, self._task = self._task, None
            try:
                await task
            except Exception:
                _LOGGER.exception("The SUN counter writer failed")
        if self._db is None:
            return
        try:
            await self._write_pending()
        except sqlite3.Error as err:
            _LOGGER.error(
                "SUN counters: %d not written at close (%s); their URLs may verify once more",
                len(self._pending),
                err,
            )
        finally:
            db, self._db = self._db, None
            await db.close()

    async def _write_behind(self) -> None:
        failing = False
        while not self._closing:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._write_pending()
            except sqlite3.Error as err:
                if not failing:
                    _LOGGER.warning("SUN counters: write failed (%s); retrying", err)
                failing = True
                # Wait, but let close() (which sets the event) cut the wait short.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), RETRY_S)
                self._wake.set()
                continue
            if failing:
                _LOGGER.info("SUN counters: writes recovered")
                failing = False

    async def _write_pending(self) -> None:
        """Commit the pending counters in one transaction; on failure they stay pending."""
        if self._db is None or not self._pending:
            return
        batch, self._pending = self._pending, {}
        try:
            async with transaction(self._db):
                await self._db.executemany(_UPSERT, list(batch.items()))
        except BaseException:
            for uid, counter in batch.items():
                if counter > self._pending.get(uid, -1):
                    self._pending[uid] = counter
            raise


async def open(path: Path) -> SunCounters:
    """Load the counters stored at ``path``: ``SunCounters.open``."""
    return await SunCounters.open(path)
