"""Tests for gateway.sqlite: checked open, atomic migrations, corrupt files moved aside."""

from __future__ import annotations

import contextlib
import re
import sqlite3
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import aiosqlite
import pytest

from gateway.sqlite import (
    DatabaseCorruptError,
    DatabaseError,
    DatabaseNewerError,
    Migration,
    OpenResult,
    Synchronous,
    open_database,
    transaction,
)
from tests.sqlite_files import plain

M1: Migration = ("CREATE TABLE a (x INTEGER NOT NULL)",)
M2: Migration = (
    "CREATE TABLE b (y TEXT NOT NULL)",
    "INSERT INTO b (y) VALUES ('seeded by 2')",
)
FAILING: Migration = (
    "CREATE TABLE c (z INTEGER)",
    "INSERT INTO c (z) VALUES (1)",
    "INSERT INTO no_such_table VALUES (1)",
)

CORRUPT_NAME = re.compile(r"^(?P<base>.+)\.corrupt-\d{8}T\d{6}Z(-\d+)?$")


def tables(path: Path) -> set[str]:
    with plain(path) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {str(row[0]) for row in rows}


def user_version(path: Path) -> int:
    with plain(path) as conn:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])


def corrupt_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if ".corrupt-" in p.name)


@contextlib.asynccontextmanager
async def opened(
    path: Path, migrations: Sequence[Migration], synchronous: Synchronous = "NORMAL"
) -> AsyncIterator[OpenResult]:
    result = await open_database(path, migrations, on_corrupt="move_aside", synchronous=synchronous)
    try:
        yield result
    finally:
        await result.connection.close()


async def scalar(conn: aiosqlite.Connection, sql: str) -> object:
    rows = list(await conn.execute_fetchall(sql))
    value: object = rows[0][0]
    return value


def make_real_db(path: Path, rows: int = 400) -> None:
    """A database spanning dozens of pages, with an index to cross-check."""
    with plain(path) as conn:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, payload BLOB)")
        conn.execute("CREATE INDEX t_name ON t (name)")
        conn.executemany(
            "INSERT INTO t (name, payload) VALUES (?, ?)",
            [(f"name-{i}", bytes([i % 256]) * 300) for i in range(rows)],
        )
        conn.commit()


async def test_fresh_database_gets_every_migration(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "cache.db"
    async with opened(path, [M1, M2]) as result:
        assert (result.reset, result.moved_to, result.reason) == (False, None, None)
        conn = result.connection
        assert await scalar(conn, "PRAGMA user_version") == 2
        assert await scalar(conn, "PRAGMA journal_mode") == "wal"
        assert await scalar(conn, "PRAGMA synchronous") == 1  # NORMAL
        assert await scalar(conn, "PRAGMA foreign_keys") == 1
        assert await scalar(conn, "PRAGMA busy_timeout") == 5000
        assert conn.isolation_level is None
        assert not conn.in_transaction
    assert {"a", "b"} <= tables(path)


async def test_synchronous_is_configurable(tmp_path: Path) -> None:
    async with opened(tmp_path / "outbox.db", [M1], synchronous="FULL") as result:
        assert await scalar(result.connection, "PRAGMA synchronous") == 2  # FULL


async def test_second_open_applies_only_new_migrations(tmp_path: Path) -> None:
    path = tmp_path / "cache.db"
    async with opened(path, [M1]) as result:
        await result.connection.execute("INSERT INTO a (x) VALUES (42)")
    assert user_version(path) == 1

    # Re-running M1 would fail (table a exists) and M2 twice would seed b twice.
    async with opened(path, [M1, M2]) as result:
        conn = result.connection
        assert await scalar(conn, "PRAGMA user_version") == 2
        assert await scalar(conn, "SELECT x FROM a") == 42
        assert await scalar(conn, "SELECT count(*) FROM b") == 1
    async with opened(path, [M1, M2]) as result:
        assert await scalar(result.connection, "SELECT count(*) FROM b") == 1


async def test_failing_migration_rolls_back_wholly(tmp_path: Path) -> None:
    path = tmp_path / "cache.db"
    async with opened(path, [M1]):
        pass

    with pytest.raises(DatabaseError, match="migration 3 failed"):
        await open_database(path, [M1, M2, FAILING], on_corrupt="move_aside")

    assert user_version(path) == 1
    # Neither migration 2 (which succeeded on its own) nor the start of 3 is left behind.
    assert tables(path) == {"a"}
    assert corrupt_files(tmp_path) == []


async def test_failing_first_migrations_leave_a_fresh_file_empty(tmp_path: Path) -> None:
    path = tmp_path / "cache.db"
    with pytest.raises(DatabaseError, match="migration 2 failed"):
        await open_database(path, [M1, FAILING], on_corrupt="raise")
    assert user_version(path) == 0
    assert tables(path) == set()


async def test_garbage_file_is_moved_aside_and_replaced(tmp_path: Path) -> None:
    path = tmp_path / "cache.db"
    garbage = bytes(range(256)) * 64
    path.write_bytes(garbage)
    wal = tmp_path / "cache.db-wal"
    wal.write_bytes(b"stale wal of the corrupt file")

    async with opened(path, [M1, M2]) as result:
        assert result.reset is True
        assert result.reason is not None
        assert "not a database" in result.reason
        assert result.moved_to is not None
        match = CORRUPT_NAME.match(result.moved_to.name)
        assert match is not None
        assert match["base"] == "cache.db"
        assert result.moved_to.read_bytes() == garbage
        # The sibling moved with it, under the same stamp.
        moved_wal = tmp_path / ("cache.db-wal" + result.moved_to.name.removeprefix("cache.db"))
        assert moved_wal.read_bytes() == b"stale wal of the corrupt file"
        assert await scalar(result.connection, "PRAGMA user_version") == 2
        await result.connection.execute("INSERT INTO a (x) VALUES (1)")
    assert user_version(path) == 2


async def test_repeated_resets_never_overwrite_an_earlier_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "cache.db"
    contents = [b"first garbage " * 100, b"second garbage " * 100, b"third garbage " * 100]
    for content in contents:
        path.write_bytes(content)
        async with opened(path, [M1]) as result:
            assert result.reset is True
    moved = [p for p in corrupt_files(tmp_path) if p.name.startswith("cache.db.corrupt-")]
    assert len(moved) == 3
    assert all(CORRUPT_NAME.match(p.name) for p in moved)
    assert sorted(p.read_bytes() for p in moved) == sorted(contents)


async def test_corrupted_page_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "cache.db"
    make_real_db(path)
    size = path.stat().st_size
    assert size > 30 * 4096
    with path.open("r+b") as f:
        f.seek(size // 2)
        f.write(b"\xa5\x5a" * 512)
    original = path.read_bytes()

    async with opened(path, [M1]) as result:
        assert result.reset is True
        assert result.reason is not None
        assert result.reason.startswith("integrity_check:") or "malformed" in result.reason
        assert result.moved_to is not None
        assert result.moved_to.read_bytes() == original
        assert await scalar(result.connection, "SELECT count(*) FROM a") == 0


async def test_corrupt_file_raises_when_asked(tmp_path: Path) -> None:
    path = tmp_path / "cache.db"
    path.write_bytes(b"definitely not sqlite" * 50)
    with pytest.raises(DatabaseCorruptError, match=r"cache\.db") as info:
        await open_database(path, [M1], on_corrupt="raise")
    assert isinstance(info.value, DatabaseError)
    assert "not a database" in info.value.reason
    assert path.read_bytes() == b"definitely not sqlite" * 50
    assert corrupt_files(tmp_path) == []


async def test_newer_database_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "cache.db"
    make_real_db(path, rows=10)
    with plain(path) as conn:
        conn.execute("PRAGMA user_version = 5")
    before = path.read_bytes()

    with pytest.raises(DatabaseNewerError, match="5"):
        await open_database(path, [M1, M2], on_corrupt="move_aside")

    assert path.read_bytes() == before  # not even switched to WAL
    assert corrupt_files(tmp_path) == []
    assert user_version(path) == 5


async def insert_in_transaction(conn: aiosqlite.Connection, *values: int | None) -> None:
    async with transaction(conn):
        for value in values:
            await conn.execute("INSERT INTO a (x) VALUES (?)", (value,))
        if conn.in_transaction:
            raise RuntimeError("still in the transaction: roll it back")


async def test_transaction_commits_or_rolls_back(tmp_path: Path) -> None:
    path = tmp_path / "cache.db"
    async with opened(path, [M1]) as result:
        conn = result.connection
        async with transaction(conn):
            await conn.execute("INSERT INTO a (x) VALUES (1)")
        assert not conn.in_transaction

        with pytest.raises(RuntimeError, match="roll it back"):
            await insert_in_transaction(conn, 2)
        assert not conn.in_transaction
        # A failing statement rolls back the statements before it too.
        with pytest.raises(sqlite3.IntegrityError):
            await insert_in_transaction(conn, 3, None)
        assert not conn.in_transaction
        rows = await conn.execute_fetchall("SELECT x FROM a ORDER BY x")
        assert [row[0] for row in rows] == [1]
    with plain(path) as check:
        assert check.execute("SELECT x FROM a").fetchall() == [(1,)]
