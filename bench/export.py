"""A year of events exported from the journal as CSV: rows/s, and memory that stays flat.

A journal file (gateway/journal.py's schema) is filled with ``--days`` x ``--per-day`` events
(a mix of grants, denials and door events at every door of six, user names looked up from a
dict of 5 000) through ``executemany``. Then, in the same process and on the same file:

- ``baseline``: the export's own queries (keyset pages of ``--page-rows`` by ``(at, seq)``
  through aiosqlite) with no CSV formatting: what reading alone costs;
- ``export``: ``gateway.journal.export_csv`` over the whole range, every chunk written to
  /dev/null, as the web route and the CLI do.

Memory: the process's RSS high-water mark (VmHWM) is reset just before the export and read
after it; ``rss_growth_mb`` is that peak minus the RSS before, so the fill and the baseline do
not count. ``maxrss_growth_mb`` is the same from ``getrusage`` (a lifetime peak: it only grows
if the export exceeded everything before it). A second export under ``tracemalloc`` gives the
peak of Python allocations (``--no-tracemalloc`` skips it: it runs slower).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import resource
import sqlite3
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO
from zoneinfo import ZoneInfo

import aiosqlite

from bench.stats import percentile
from gateway.journal import INSERT_ROW, MIGRATIONS, event_row, export_csv, format_at
from gateway.model import Event, EventType
from gateway.sqlite import open_database

DOORS = ("front", "back", "lobby", "server-room", "garage", "roof")
USERS = 5_000
#: RSS growth an export may cost, whatever the range (the brief's bound).
RSS_LIMIT_MB = 20.0
SITE_TZ = ZoneInfo("Europe/Rome")
START = datetime(2025, 1, 1, tzinfo=SITE_TZ)
INSERT_CHUNK = 10_000


def events(days: int, per_day: int) -> Iterator[Event]:
    """``per_day`` events a day from START, evenly spread: a door's usual mix."""
    step = timedelta(days=1) / per_day
    for i in range(days * per_day):
        at = START + i * step
        door = DOORS[i % len(DOORS)]
        user = f"user-{i * 7919 % USERS}"
        kind = i % 10
        data: dict[str, Any]
        if kind < 6:
            granted = kind != 5
            event_type = EventType.ACCESS_GRANTED if granted else EventType.ACCESS_DENIED
            data = {
                "door": door,
                "reason": "granted" if granted else "outside_schedule",
                "mode": "normal",
                "credential": f"card-{user}",
                "user": user,
                "rule": "staff" if granted else None,
                "assurance": "low",
                "kind": "nfc_uid",
                "value_hint": f"04…{i % 65536:04X}",
            }
        elif kind < 8:
            event_type, data = EventType.DOOR_OPENED, {"door": door, "by": "grant"}
        else:
            event_type, data = EventType.DOOR_CLOSED, {"door": door, "open_s": 3.5}
        yield Event(id=uuid.uuid4().hex, type=event_type, at=at, data=data)


def fill(path: Path, days: int, per_day: int) -> int:
    """Write the events into the journal file at ``path`` (schema made already); their count."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        rows = 0
        chunk: list[tuple[Any, ...]] = []
        for event in events(days, per_day):
            chunk.append(event_row(event))
            if len(chunk) == INSERT_CHUNK:
                rows += _insert(conn, chunk)
                chunk = []
        rows += _insert(conn, chunk)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return rows


def _insert(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> int:
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(INSERT_ROW, rows)
    conn.execute("COMMIT")
    return len(rows)


def status_kb(field: str) -> int:
    """A field of /proc/self/status in KiB (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak_rss() -> bool:
    """Start VmHWM again from the current RSS (Linux 4.0+); False where that is not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def maxrss_kb() -> int:
    """The process's lifetime peak RSS in KiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def read_only_uri(path: Path) -> str:
    """The SQLite URI that opens ``path`` read-only, as an export does."""
    return path.resolve().as_uri() + "?mode=ro"


async def baseline(uri: str, start: datetime, end: datetime, page_rows: int) -> int:
    """The export's keyset-paged SELECT over the range, no CSV: how many rows it read."""
    conn = await aiosqlite.connect(uri, uri=True)
    select = (
        "SELECT seq, at, type, door, user, credential, granted, reason, "
        "json_extract(body, '$.rule'), id FROM events"
    )
    first = f"{select} WHERE at >= ? AND at < ? ORDER BY at, seq LIMIT ?"
    following = f"{select} WHERE (at, seq) > (?, ?) AND at < ? ORDER BY at, seq LIMIT ?"
    after: list[Any] = [format_at(start)]
    sql, total = first, 0
    try:
        while True:
            rows = list(await conn.execute_fetchall(sql, [*after, format_at(end), page_rows]))
            total += len(rows)
            if len(rows) < page_rows:
                return total
            after, sql = [rows[-1][1], rows[-1][0]], following
    finally:
        await conn.close()


async def export(
    path: Path,
    start: datetime,
    end: datetime,
    page_rows: int,
    names: dict[str, str],
    sink: BinaryIO,
) -> dict[str, Any]:
    """Export the range into ``sink`` (/dev/null): rows, bytes and chunks written."""
    chunks = export_csv(path, start, end, tz=SITE_TZ, user_name=names.get, page_rows=page_rows)
    written = lines = count = 0
    async with contextlib.aclosing(chunks):
        async for chunk in chunks:
            data = chunk.encode()
            sink.write(data)
            written += len(data)
            lines += chunk.count("\r\n")
            count += 1
    return {"rows": lines - 1, "bytes": written, "chunks": count}


async def loop_stalls(stalls: list[float], stop: asyncio.Event) -> None:
    """Record how late each 1 ms sleep wakes up: how long the event loop could not run."""
    while not stop.is_set():
        before = time.perf_counter()
        await asyncio.sleep(0.001)
        stalls.append(time.perf_counter() - before - 0.001)


async def measure(
    days: int, per_day: int, page_rows: int, *, trace: bool, sink: BinaryIO
) -> dict[str, Any]:
    """Fill a journal, then time the baseline and the export, and measure the export's memory."""
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        path = Path(tmp) / "journal.db"
        opened = await open_database(path, MIGRATIONS, on_corrupt="raise")
        await opened.connection.close()
        t0 = time.perf_counter()
        rows = await asyncio.to_thread(fill, path, days, per_day)
        fill_s = time.perf_counter() - t0
        db_bytes = path.stat().st_size
        names = {f"user-{i}": f"Member {i:04d}" for i in range(USERS)}
        start, end = START, START + timedelta(days=days)

        t0 = time.perf_counter()
        selected = await baseline(read_only_uri(path), start, end, page_rows)
        select_s = time.perf_counter() - t0

        gc.collect()
        rss_before_kb = status_kb("VmRSS")
        maxrss_before_kb = maxrss_kb()
        peak_reset = reset_peak_rss()
        stalls: list[float] = []
        stop = asyncio.Event()
        ticker = asyncio.create_task(loop_stalls(stalls, stop), name="loop-stalls")
        t0 = time.perf_counter()
        try:
            result = await export(path, start, end, page_rows, names, sink)
        finally:
            export_s = time.perf_counter() - t0
            stop.set()
            await ticker
        peak_kb = status_kb("VmHWM") if peak_reset else maxrss_kb()
        maxrss_after_kb = maxrss_kb()

        traced_peak_mb = None
        if trace:
            tracemalloc.start()
            await export(path, start, end, page_rows, names, sink)
            traced_peak_mb = round(tracemalloc.get_traced_memory()[1] / 2**20, 2)
            tracemalloc.stop()
    rss_growth_mb = max(0, peak_kb - rss_before_kb) / 1024
    return {
        "rows": rows,
        "days": days,
        "page_rows": page_rows,
        "fill_s": round(fill_s, 2),
        "fill_rows_per_s": round(rows / fill_s),
        "db_mb": round(db_bytes / 2**20, 1),
        "db_bytes_per_row": round(db_bytes / rows),
        "select_rows": selected,
        "select_s": round(select_s, 2),
        "select_rows_per_s": round(selected / select_s),
        "export_rows": result["rows"],
        "export_s": round(export_s, 2),
        "export_rows_per_s": round(result["rows"] / export_s),
        "export_vs_select": round(export_s / select_s, 2),
        "csv_mb": round(result["bytes"] / 2**20, 1),
        "loop_stall_p50_ms": round(percentile(stalls, 0.5) * 1000, 2),
        "loop_stall_p99_ms": round(percentile(stalls, 0.99) * 1000, 2),
        "loop_stall_max_ms": round(max(stalls) * 1000, 2),
        "chunks": result["chunks"],
        "rss_before_mb": round(rss_before_kb / 1024, 1),
        "rss_growth_mb": round(rss_growth_mb, 2),
        "peak_from": "VmHWM (reset before the export)" if peak_reset else "ru_maxrss",
        "maxrss_growth_mb": round((maxrss_after_kb - maxrss_before_kb) / 1024, 2),
        "tracemalloc_peak_mb": traced_peak_mb,
        "rss_limit_mb": RSS_LIMIT_MB,
        "within_limit": rss_growth_mb < RSS_LIMIT_MB and result["rows"] == rows,
    }


def main(argv: list[str]) -> int:
    """Run the benchmark; the last line printed is its JSON result."""
    parser = argparse.ArgumentParser(prog="python -m bench export")
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--per-day", type=int, default=1000)
    parser.add_argument("--page-rows", type=int, default=1000)
    parser.add_argument(
        "--no-tracemalloc", action="store_true", help="skip the second export under tracemalloc"
    )
    args = parser.parse_args(argv)
    with Path(os.devnull).open("wb") as sink:
        figures = asyncio.run(
            measure(
                args.days, args.per_day, args.page_rows, trace=not args.no_tracemalloc, sink=sink
            )
        )
    print(json.dumps(figures))
    if not figures["within_limit"]:
        print(
            f"export grew RSS by {figures['rss_growth_mb']} MB (limit {RSS_LIMIT_MB})",
            file=sys.stderr,
        )
        return 1
    return 0
