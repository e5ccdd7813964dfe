"""The offline cache: the site's data in SQLite, and the in-memory view decisions read.

SQLite is the durable copy; ``Cache.view`` is what decisions use. A snapshot replaces
everything in one transaction and the new view is swapped in only after the commit, so both a
SQLite reader and a decision see the old site or the new one, never a mix. A corrupt file is
moved aside and the cache starts empty, asking for a resync, rather than stopping the gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import gc
import json
import logging
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite

from gateway.cache_rows import (
    BODY_COLLECTIONS,
    CREDENTIAL_COLUMNS,
    MIGRATIONS,
    USER_COLUMNS,
    body_from_row,
    credential_from_row,
    insert_sql,
    read_credential_tables,
    to_rows,
    user_from_row,
)
from gateway.codec import COLLECTIONS, Delta, FormatError, Snapshot, site_from_json, site_to_json
from gateway.memory import release_free_memory
from gateway.model import GUEST_USER_PREFIX, Credential, CredentialKind, User
from gateway.sqlite import move_aside, open_database, transaction
from gateway.view import EMPTY_SITE, CacheView

_LOGGER = logging.getLogger(__name__)

_LOAD_BATCH = 4096
#: Long work in a worker thread lets the event loop run at least this often (see ``Pacer``).
PACE_SLICE_S = 0.0005


class ApplyResult(enum.StrEnum):
    """What an apply did."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"  # this version (or a newer one) is already held: nothing to do
    STALE = "stale"  # a snapshot older than the one held: refused
    GAP = "gap"  # a delta that does not start from the version held: needs a snapshot


class Pacer:
    """Called between small steps of long work in a worker thread; now and then lets others run.

    Python code in a thread holds the GIL: the event loop, woken by a reader, waits for it up to
    the interpreter's switch interval (5 ms) each time. Every ``slice_s`` of work this releases
    the GIL for a moment, so a decision waits at most about one slice.
    """

    __slots__ = ("_calls", "_due", "_slice_s")

    def __init__(self, slice_s: float = PACE_SLICE_S) -> None:
        self._slice_s = slice_s
        self._calls = 0
        self._due = time.perf_counter() + slice_s

    def __call__(self) -> None:
        self._calls += 1
        if self._calls & 7:  # reading the clock costs more than most steps
            return
        if time.perf_counter() >= self._due:
            time.sleep(0)  # releases the GIL: a thread waiting for it (the loop's) takes it
            self._due = time.perf_counter() + self._slice_s


@contextlib.contextmanager
def collection_paused() -> Iterator[None]:
    """No automatic garbage collection in the block: for building a large view.

    A site's entities make no reference cycles, but the hundred thousand objects a snapshot
    makes trigger collections, and each walks every object of both views (and the big young
    containers) while holding the GIL: 20 to 150 ms during which decisions wait. Inside the
    block nothing is collected. At the end, what the block made goes straight to the oldest
    generation (``freeze`` then ``unfreeze``: no walk), to be looked at by the next full
    collection, as a view loaded at start is; garbage is only collected later, never kept.
    Process-wide: not for nested or concurrent use.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.unfreeze()
        if enabled:
            gc.enable()


def read_view(path: Path) -> CacheView:
    """Read the whole cache file into a view, in one read transaction (blocking; use a thread)."""
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
    try:
        conn.execute("BEGIN")
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        version = int(meta.get("version", "0"))
        site = site_from_json(json.loads(meta["site"])) if "site" in meta else EMPTY_SITE
        entities: dict[str, list[Any]] = {}
        for collection in BODY_COLLECTIONS:
            rows = conn.execute(f"SELECT body FROM {collection}").fetchall()
            entities[collection] = [
                body_from_row(collection, body, i) for i, (body,) in enumerate(rows)
            ]
        strings: dict[Any, Any] = {}
        users: list[User] = []
        cursor = conn.execute(f"SELECT {USER_COLUMNS} FROM users")
        while batch := cursor.fetchmany(_LOAD_BATCH):
            users.extend(user_from_row(row, strings) for row in batch)
        strings.clear()
        entities["users"] = users
        tables = read_credential_tables(conn, {u.id: u.id for u in users})
        conn.execute("COMMIT")
    finally:
        conn.close()
    return CacheView.build(version, site, entities, tables)


class Cache:
    """The site's data, durable in SQLite and indexed in memory; one writer at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.reset_reason: str | None = None
        self.origin = "upstream"  # or "demo": the demo site, replaced by any upstream snapshot
        self._db: aiosqlite.Connection | None = None
        self._view = CacheView.empty()
        self._lock = asyncio.Lock()
        self._listeners: list[Callable[[CacheView], None]] = []

    @property
    def view(self) -> CacheView:
        """The current view; replaced wholesale (never mutated) when the cache changes."""
        return self._view

    @property
    def version(self) -> int:
        """The version of the data held; 0 when empty."""
        return self._view.version

    @property
    def needs_resync(self) -> bool:
        """True when the cache holds nothing from upstream (new, reset, or the demo site)."""
        return self._view.version == 0 or self.origin == "demo"

    def add_listener(self, listener: Callable[[CacheView], None]) -> Callable[[], None]:
        """Call ``listener(view)`` after each change; returns a function that removes it."""
        self._listeners.append(listener)

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return remove

    async def start(self) -> None:
        """Open (or recreate) the database and load the view."""
        opened = await open_database(self.path, MIGRATIONS, on_corrupt="move_aside")
        self._db = opened.connection
        if opened.reset:
            self.reset_reason = opened.reason
            _LOGGER.error(
                "cache was unreadable (%s); moved to %s, starting empty",
                opened.reason,
                opened.moved_to,
            )
        try:
            self._view = await asyncio.to_thread(read_view, self.path)
        except (FormatError, ValueError, KeyError, TypeError, sqlite3.DatabaseError) as err:
            # Rows that no longer read back are as bad as a corrupt file: keep the file for
            # inspection, start empty and ask for a resync rather than stop the doors.
            await self._db.close()
            moved_to = move_aside(self.path)
            _LOGGER.error(
                "cache content is unreadable (%s); moved to %s, starting empty", err, moved_to
            )
            self.reset_reason = f"unreadable content: {err}"
            self._db = (await open_database(self.path, MIGRATIONS, on_corrupt="raise")).connection
            self._view = CacheView.empty()
        async with self._conn().execute("SELECT value FROM meta WHERE key = 'origin'") as cursor:
            row = await cursor.fetchone()
        self.origin = str(row[0]) if row else "upstream"
        await asyncio.to_thread(release_free_memory)  # trimming a large heap takes a while
        _LOGGER.info("cache loaded: version %d, %s", self.version, self._view.counts())

    async def stop(self) -> None:
        """Close the database; idempotent."""
        if self._db is not None:
            db, self._db = self._db, None
            await db.close()

    def _conn(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("cache is not started")
        return self._db

    async def apply_snapshot(self, snapshot: Snapshot, *, origin: str = "upstream") -> ApplyResult:
        """Replace everything with ``snapshot`` atomically; an older version is refused.

        Demo data (``origin="demo"``) is replaced by any upstream snapshot, whatever its version.
        """
        async with self._lock:
            replaces_demo = self.origin == "demo" and origin != "demo"
            if snapshot.version < self.version and not replaces_demo:
                return ApplyResult.STALE
            if snapshot.version == self.version and not replaces_demo:
                return ApplyResult.DUPLICATE
            async with transaction(self._conn()) as db:
                for collection in COLLECTIONS:
                    await db.execute(f"DELETE FROM {collection}")
                    await db.executemany(
                        insert_sql(collection),
                        to_rows(collection, snapshot.entities.get(collection, ())),
                    )
                await self._write_meta(db, snapshot.version, snapshot.site, origin)
            self.origin = origin
            view = await asyncio.to_thread(
                functools.partial(
                    CacheView.build,
                    snapshot.version,
                    snapshot.site,
                    snapshot.entities,
                    pause=Pacer(),
                )
            )
            replaced = [self._view]
            self._swap(view)
            await asyncio.to_thread(_release, replaced)
            return ApplyResult.APPLIED

    async def apply_delta(self, delta: Delta) -> ApplyResult:
        """Apply ``delta`` on top of its base version; old or repeated versions do nothing."""
        async with self._lock:
            if delta.version <= self.version:
                return ApplyResult.DUPLICATE
            if delta.base_version != self.version or self.needs_resync:
                return ApplyResult.GAP  # an empty or demo cache needs a whole snapshot first
            self._view.check_delta(delta)
            await self._write_and_swap(delta)
            return ApplyResult.APPLIED

    async def enrol(self, credential: Credential) -> None:
        """Add or replace one credential enrolled here, keeping the version.

        The cloud learns of it from the enrolment event and sends it back in its data; until
        then the next snapshot may drop it. FormatError if its user is not in the cache or its
        value belongs to another credential.
        """
        await self.apply_local(upserts={"credentials": (credential,)})

    async def apply_local(
        self,
        *,
        upserts: Mapping[str, tuple[Any, ...]] | None = None,
        deletes: Mapping[str, frozenset[str]] | None = None,
    ) -> None:
        """Apply changes made at this gateway (enrolment, a local integration), keeping the version.

        Checked like a delta (FormatError names what is wrong, and nothing is applied); an
        upstream snapshot replaces them, so their owner applies them again after one.
        """
        async with self._lock:
            delta = Delta(self.version, self.version, upserts=upserts or {}, deletes=deletes or {})
            self._view.check_delta(delta)
            await self._write_and_swap(delta)

    async def _write_and_swap(self, delta: Delta) -> None:
        """Write a checked delta in one transaction, then swap in the view with it applied."""
        view = self._view
        gone: list[Credential] = []
        try:
            async with transaction(self._conn()) as db:
                gone = await self._write_delta(db, delta)
                await self._write_meta(db, delta.version, delta.site or view.site, self.origin)
        except sqlite3.IntegrityError as err:
            raise FormatError(
                "upsert.credentials",
                f"a credential value is already used by another credential ({err})",
            ) from None
        # Off the loop: a large delta rebuilds whole tables, and decisions must not wait.
        self._swap(await asyncio.to_thread(view.apply, delta, gone))

    async def _write_delta(self, db: aiosqlite.Connection, delta: Delta) -> list[Credential]:
        """Write a delta's rows; returns the credentials whose old key left the cache."""
        gone: list[Credential] = []
        removed_users = sorted(delta.deletes.get("users", ()))
        removed_users += sorted(GUEST_USER_PREFIX + i for i in delta.deletes.get("invitations", ()))
        for user_id in removed_users:
            # A user's credentials go with the user, a guest's with the invitation.
            async with db.execute(
                "SELECT id FROM credentials WHERE user_id = ?", (user_id,)
            ) as cursor:
                ids = [row[0] async for row in cursor]
            gone.extend(await self._delete_credentials(db, ids))
        gone.extend(
            await self._delete_credentials(db, sorted(delta.deletes.get("credentials", ())))
        )
        # An upserted credential whose kind or value changed must drop its old key.
        gone.extend(
            await self._delete_credentials(db, [c.id for c in delta.upserts.get("credentials", ())])
        )
        for collection in COLLECTIONS:
            if collection != "credentials":
                await db.executemany(
                    f"DELETE FROM {collection} WHERE id = ?",
                    [(i,) for i in delta.deletes.get(collection, ())],
                )
            await db.executemany(
                insert_sql(collection), to_rows(collection, delta.upserts.get(collection, ()))
            )
        return gone

    async def _delete_credentials(
        self, db: aiosqlite.Connection, ids: list[str]
    ) -> list[Credential]:
        gone: list[Credential] = []
        for credential_id in ids:
            sql = f"SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE id = ?"
            async with db.execute(sql, (credential_id,)) as cursor:
                row = await cursor.fetchone()
            if row is not None:
                gone.append(credential_from_row(tuple(row), {}))
                await db.execute("DELETE FROM credentials WHERE id = ?", (credential_id,))
        return gone

    @staticmethod
    async def _write_meta(db: aiosqlite.Connection, version: int, site: Any, origin: str) -> None:
        now = datetime.now(UTC).isoformat()
        await db.executemany(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
            [
                ("version", str(version)),
                ("site", json.dumps(site_to_json(site))),
                ("applied_at", now),
                ("origin", origin),
            ],
        )

    def _swap(self, view: CacheView) -> None:
        self._view = view
        _LOGGER.info("cache now at version %d", view.version)
        for listener in list(self._listeners):
            try:
                listener(view)
            except Exception:  # one broken listener must not keep the others from the new view
                _LOGGER.exception("cache listener %r failed", listener)


def _release(replaced: list[CacheView]) -> None:
    """Free a replaced view (in a thread, a step at a time), then trim the heap.

    If anything still holds it (a request being answered), it is freed when that lets go.
    """
    view = replaced.pop()
    if sys.getrefcount(view) == 2:  # this name and getrefcount's argument: nothing else
        view.dismantle(Pacer())
    del view
    release_free_memory()  # the old view is gone: hand its pages back


def lookup_sql(
    conn: sqlite3.Connection, kind: CredentialKind, value: str
) -> tuple[Any, ...] | None:
    """One credential's row by its key: the bare indexed lookup that benchmarks compare to."""
    sql = f"SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE kind = ? AND value = ?"
    row = conn.execute(sql, (kind.value, value)).fetchone()
    return None if row is None else tuple(row)
