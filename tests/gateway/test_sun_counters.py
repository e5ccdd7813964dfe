"""SUN read counters: only forward, per UID, kept across restarts by a write-behind task."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from gateway import sun_counters
from gateway.sun_counters import SunCounters
from tests.sqlite_files import plain

UID = "04A1B2C3D4E5F6"
OTHER = "04A1B2C3D4E5F7"


def stored(path: Path) -> dict[str, int]:
    with plain(path) as conn:
        return dict(conn.execute("SELECT uid, counter FROM sun_counters").fetchall())


def moved_aside(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.startswith("sun.db.corrupt-")]


def test_a_counter_only_moves_forward() -> None:
    counters = SunCounters()
    assert counters.last(UID) is None
    assert counters.advance(UID, 0)
    assert not counters.advance(UID, 0)
    assert counters.advance(UID, 5)
    assert not counters.advance(UID, 4)
    assert not counters.advance(UID, 5)
    assert counters.advance(UID, 6)
    assert counters.last(UID) == 6


def test_each_uid_has_its_own_counter_whatever_its_case() -> None:
    counters = SunCounters({UID: 10})
    assert counters.advance(OTHER, 1)
    assert not counters.advance(UID.lower(), 10)
    assert counters.advance(UID.lower(), 11)
    assert counters.last(UID) == 11
    assert len(counters) == 2


@pytest.mark.parametrize("counter", [-1, 1 << 24])
def test_a_counter_outside_24_bits_is_an_error(counter: int) -> None:
    with pytest.raises(ValueError, match="0 to 16777215"):
        SunCounters().advance(UID, counter)


async def test_counters_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "sun.db"
    counters = await SunCounters.open(path)
    assert not counters.reset
    counters.start()
    assert counters.advance(UID, 61)
    assert counters.advance(OTHER, 3)
    await counters.close()
    again = await sun_counters.open(path)
    try:
        assert again.last(UID) == 61
        assert not again.advance(UID, 61)
        assert again.advance(UID, 62)
    finally:
        await again.close()
    assert stored(path) == {UID: 62, OTHER: 3}


async def test_the_writer_stores_behind_the_hot_path(tmp_path: Path) -> None:
    path = tmp_path / "sun.db"
    counters = await SunCounters.open(path)
    counters.start()
    try:
        counters.advance(UID, 7)
        for _ in range(200):
            await asyncio.sleep(0.01)
            if stored(path).get(UID) == 7:
                break
        assert stored(path) == {UID: 7}
    finally:
        await counters.close()


async def test_close_writes_what_was_never_started(tmp_path: Path) -> None:
    path = tmp_path / "sun.db"
    counters = await SunCounters.open(path)
    counters.advance(UID, 9)
    await counters.close()
    assert stored(path) == {UID: 9}
    await counters.close()  # twice is harmless


async def test_a_stored_counter_never_moves_back(tmp_path: Path) -> None:
    path = tmp_path / "sun.db"
    first, second = await SunCounters.open(path), await SunCounters.open(path)
    try:
        first.advance(UID, 10)
        await first.flush()
        second.advance(UID, 5)  # this instance had not seen 10
        await second.flush()
    finally:
        await first.close()
        await second.close()
    assert stored(path) == {UID: 10}


async def test_a_corrupt_file_is_moved_aside_and_counting_restarts(tmp_path: Path) -> None:
    path = tmp_path / "sun.db"
    path.write_bytes(b"this is not a database" * 100)
    counters = await SunCounters.open(path)
    try:
        assert counters.reset
        assert len(counters) == 0
        assert counters.advance(UID, 1)
    finally:
        await counters.close()
    assert moved_aside(tmp_path)


async def test_failed_writes_are_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(sun_counters, "RETRY_S", 0.01)
    path = tmp_path / "sun.db"
    counters = await SunCounters.open(path)
    db: Any = counters._db
    real = db.executemany
    failures = [sqlite3.OperationalError("disk I/O error")] * 2

    async def flaky(sql: str, rows: Any) -> Any:
        if failures:
            raise failures.pop()
        return await real(sql, rows)

    monkeypatch.setattr(db, "executemany", flaky)
    counters.start()
    with caplog.at_level(logging.INFO, logger="gateway.sun_counters"):
        counters.advance(UID, 3)
        for _ in range(300):
            await asyncio.sleep(0.01)
            if stored(path).get(UID) == 3:
                break
        await counters.close()
    assert stored(path) == {UID: 3}
    assert "write failed" in caplog.text
    assert "recovered" in caplog.text
    assert UID not in caplog.text


async def test_a_write_failing_at_close_is_logged_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "sun.db"
    counters = await SunCounters.open(path)
    db: Any = counters._db

    async def broken(sql: str, rows: Any) -> Any:
        raise sqlite3.OperationalError("disk full")

    monkeypatch.setattr(db, "executemany", broken)
    counters.advance(UID, 3)
    with caplog.at_level(logging.ERROR, logger="gateway.sun_counters"):
        await counters.close()
    assert "1 not written at close" in caplog.text
    assert UID not in caplog.text
