"""Open every SQLite database of the gateway one way: checked, in WAL mode, migrated atomically.

Connections are opened with ``isolation_level=None``: the sqlite3 module never begins or commits
a transaction on its own, so every write outside ``transaction()`` is its own autocommit
statement and every multi-statement change is an explicit ``BEGIN IMMEDIATE`` … ``COMMIT``.
``BEGIN IMMEDIATE`` takes the write lock up front, so a transaction never fails half-way with
SQLITE_BUSY when it upgrades from reading to writing.

``PRAGMA user_version`` counts the migrations applied. Missing migrations run in one
transaction, statement by statement (``executescript`` would commit on its own), so a database
is always at exactly one known schema version.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import aiosqlite

_LOGGER = logging.getLogger(__name__)

#: The SQL statements of one schema version, in order.
Migration = tuple[str, ...]

#: How long a statement waits for another connection's lock before failing with SQLITE_BUSY.
BUSY_TIMEOUT_MS = 5000

#: Files SQLite keeps beside a database; they belong to it and move with it.
_SIBLING_SUFFIXES = ("-wal", "-shm", "-journal")

#: Primary result codes that mean the file's content is unusable, not that access failed.
_CORRUPTION_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})

#: How many integrity_check messages a reason quotes.
_REASON_MESSAGES = 3

Synchronous = Literal["NORMAL", "FULL", "EXTRA"]
_SYNCHRONOUS: frozenset[str] = frozenset({"NORMAL", "FULL", "EXTRA"})


class DatabaseError(Exception):
    """A database could not be opened, checked or migrated."""


class DatabaseCorruptError(DatabaseError):
    """The file is not a readable SQLite database or fails its integrity check."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path} is corrupt: {reason}")
        self.path = path
        self.reason = reason


class DatabaseNewerError(DatabaseError):
    """The file's schema version is above what this code knows (written by a newer gateway)."""


@dataclass(frozen=True)
class OpenResult:
    """An open, migrated connection, and whether a corrupt file was moved aside to get it."""

    connection: aiosqlite.Connection
    reset: bool
    moved_to: Path | None
    reason: str | None


async def open_database(
    path: Path,
    migrations: Sequence[Migration],
    *,
    on_corrupt: Literal["move_aside", "raise"],
    synchronous: Synchronous = "NORMAL",
) -> OpenResult:
    """Open ``path`` checked and migrated; a corrupt file is moved aside or raised (``on_corrupt``).

    ``synchronous="NORMAL"`` (with WAL) loses no committed transaction when the process crashes,
    but the last ones may roll back on power loss; that suits data an upstream can resend.
    ``"FULL"`` syncs the WAL at every commit, so a commit also survives power loss.
    """
    if synchronous not in _SYNCHRONOUS:
        raise ValueError(f"synchronous must be one of {sorted(_SYNCHRONOUS)}, not {synchronous!r}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DatabaseError(f"{path}: cannot create directory: {err}") from err
    try:
        connection = await _open_once(path, migrations, synchronous)
    except DatabaseCorruptError as err:
        if on_corrupt == "raise":
            raise
        moved_to = move_aside(path)
        _LOGGER.warning(
            "Database %s is corrupt (%s); moved it to %s and starting empty",
            path,
            err.reason,
            moved_to,
        )
        try:
            connection = await _open_once(path, migrations, synchronous)
        except DatabaseCorruptError as again:
            # A file we just created cannot be corrupt unless the storage itself is failing.
            raise DatabaseError(f"{path}: fresh database is unusable: {again.reason}") from again
        return OpenResult(connection, reset=True, moved_to=moved_to, reason=err.reason)
    return OpenResult(connection, reset=False, moved_to=None, reason=None)


@asynccontextmanager
async def transaction(conn: aiosqlite.Connection) -> AsyncIterator[aiosqlite.Connection]:
    """Run the block in ``BEGIN IMMEDIATE``; commit on success, roll back and re-raise on error."""
    try:
        await _run(conn, "BEGIN IMMEDIATE")
    except BaseException:
        # Cancelled while waiting, the BEGIN may still run in the database thread: undo it, or
        # every later transaction on this connection would fail ("within a transaction").
        with contextlib.suppress(sqlite3.Error):
            await conn.rollback()
        raise
    try:
        yield conn
        await _run(conn, "COMMIT")
    except BaseException:
        # rollback() is a no-op when no transaction is open (e.g. COMMIT already went through).
        try:
            await conn.rollback()
        except sqlite3.Error:
            _LOGGER.warning("Rollback failed after an error in a transaction", exc_info=True)
        raise


async def _open_once(
    path: Path, migrations: Sequence[Migration], synchronous: Synchronous
) -> aiosqlite.Connection:
    """Check, connect, configure and migrate ``path``; close the connection on any failure."""
    existing = _read_only_uri(path)
    if existing is not None:
        await _check_existing(path, existing, len(migrations))
    try:
        conn = await aiosqlite.connect(path, isolation_level=None)
    except sqlite3.Error as err:
        raise DatabaseError(f"{path}: cannot open: {err}") from err
    try:
        try:
            await _run(conn, f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            mode = await _pragma(conn, "PRAGMA journal_mode = WAL")
            if str(mode).lower() != "wal":
                _LOGGER.warning("Database %s cannot use WAL (journal_mode=%s)", path, mode)
            await _run(conn, f"PRAGMA synchronous = {synchronous}")
            await _run(conn, "PRAGMA foreign_keys = ON")
        except sqlite3.Error as err:
            if _is_corruption(err):
                raise DatabaseCorruptError(path, str(err)) from err
            raise DatabaseError(f"{path}: {err}") from err
        await _migrate(conn, path, migrations)
    except BaseException:
        await _close_quietly(conn)
        raise
    return conn


async def _check_existing(path: Path, uri: str, known_version: int) -> None:
    """Raise unless ``path`` passes the integrity check and has a schema version we know.

    The check runs on a read-only connection: closing a read-write one would checkpoint and
    delete the -wal file, so a corrupt database would not be moved aside exactly as found.
    """
    try:
        conn = await aiosqlite.connect(uri, uri=True, isolation_level=None)
    except sqlite3.Error as err:
        raise DatabaseError(f"{path}: cannot open: {err}") from err
    try:
        await _run(conn, f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        problem = await _integrity_problem(conn)
        version = None if problem else await _user_version(conn)
    except sqlite3.Error as err:
        if _is_corruption(err):
            raise DatabaseCorruptError(path, str(err)) from err
        raise DatabaseError(f"{path}: {err}") from err
    finally:
        await _close_quietly(conn)
    if problem is not None:
        raise DatabaseCorruptError(path, problem)
    if version is not None and version > known_version:
        # A newer gateway's data is not corrupt: refuse, and leave the file untouched.
        raise DatabaseNewerError(
            f"{path}: schema version {version} is newer than this gateway knows "
            f"({known_version}); refusing to touch it"
        )


async def _migrate(conn: aiosqlite.Connection, path: Path, migrations: Sequence[Migration]) -> None:
    """Apply the migrations ``path`` lacks, all in one transaction."""
    target = len(migrations)
    if await _user_version(conn) == target:
        return
    try:
        async with transaction(conn):
            # Read again under the write lock: another process may have migrated meanwhile.
            current = await _user_version(conn)
            if current > target:
                raise DatabaseNewerError(
                    f"{path}: schema version {current} is newer than this gateway knows ({target})"
                )
            for number in range(current + 1, target + 1):
                for statement in migrations[number - 1]:
                    try:
                        await _run(conn, statement)
                    except sqlite3.Error as err:
                        raise DatabaseError(
                            f"{path}: migration {number} failed: {err}; nothing was applied"
                        ) from err
            await _run(conn, f"PRAGMA user_version = {target}")
    except sqlite3.Error as err:
        raise DatabaseError(f"{path}: migrating to version {target} failed: {err}") from err
    if current < target:
        _LOGGER.info("Database %s migrated from version %d to %d", path, current, target)


async def _integrity_problem(conn: aiosqlite.Connection) -> str | None:
    """Return what ``PRAGMA integrity_check`` found wrong, or None when it says ``ok``."""
    rows = [str(row[0]) for row in await conn.execute_fetchall("PRAGMA integrity_check")]
    if rows == ["ok"]:
        return None
    # A row may hold several newline-separated messages under a "*** in database main ***" header.
    messages = [
        line
        for row in rows
        for line in row.splitlines()
        if line.strip() and not line.startswith("***")
    ]
    reason = "integrity_check: " + "; ".join(messages[:_REASON_MESSAGES])
    if len(messages) > _REASON_MESSAGES:
        reason += f" (and {len(messages) - _REASON_MESSAGES} more)"
    return reason


async def _user_version(conn: aiosqlite.Connection) -> int:
    """Return ``PRAGMA user_version``: the number of migrations applied."""
    return int(await _pragma(conn, "PRAGMA user_version"))


async def _pragma(conn: aiosqlite.Connection, sql: str) -> int | str:
    """Return the single value a pragma statement yields."""
    rows = list(await conn.execute_fetchall(sql))
    value: int | str = rows[0][0]
    return value


async def _run(conn: aiosqlite.Connection, sql: str) -> None:
    """Execute one statement and close its cursor (an open cursor can pin a read snapshot)."""
    async with conn.execute(sql):
        pass


async def _close_quietly(conn: aiosqlite.Connection) -> None:
    """Close ``conn``, logging rather than raising: the caller is already handling an error."""
    try:
        await conn.close()
    except sqlite3.Error:
        _LOGGER.debug("Closing a failed database connection raised", exc_info=True)


def _read_only_uri(path: Path) -> str | None:
    """Return a read-only SQLite URI for ``path``, or None when there is no file to check."""
    if not path.exists():
        return None
    return path.resolve().as_uri() + "?mode=ro"


def _is_corruption(err: sqlite3.Error) -> bool:
    """True when ``err`` says the file's content is unusable (as opposed to locked, missing…)."""
    code = getattr(err, "sqlite_errorcode", None)
    return code is not None and (code & 0xFF) in _CORRUPTION_CODES


def move_aside(path: Path) -> Path:
    """Rename ``path`` and its sibling files to ``<name>.corrupt-<UTC time>``; never overwrite."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    originals = [path, *(path.with_name(path.name + suffix) for suffix in _SIBLING_SUFFIXES)]
    suffix = f".corrupt-{stamp}"
    attempt = 1
    # Two resets within one second must not rename onto (and so delete) the first one's files.
    while any(p.with_name(p.name + suffix).exists() for p in originals):
        attempt += 1
        suffix = f".corrupt-{stamp}-{attempt}"
    for original in originals:
        if not original.exists():
            continue
        try:
            original.rename(original.with_name(original.name + suffix))
        except OSError as err:
            raise DatabaseError(
                f"{path}: cannot move corrupt file {original} aside: {err}"
            ) from err
    return path.with_name(path.name + suffix)
