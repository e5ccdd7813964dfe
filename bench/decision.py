"""Decision latency on a 100k-user site, next to a bare indexed SQLite lookup, and the RSS.

The site is generated in a child process; this process then starts a whole gateway on it
(cache, outbox, door controller, simulated hardware, web app), so the RSS is that of a running
gateway holding the site. Each sample times
one offline decision (proof verification and ``access.decide``) for a presentation drawn from
a mix of granted and denied cases, at instants spread over a week; the baseline times
``SELECT <columns> FROM credentials WHERE kind = ? AND value = ?`` for the same credentials on the
same file. Both loops run interleaved in the same process so that machine noise hits both.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.stats import percentile
from gateway import access, credentials
from gateway.app import Gateway
from gateway.cache import Cache, lookup_sql
from gateway.config import Config, parse_config
from gateway.model import CredentialKind, DoorMode, Presentation


def rss_mb() -> float:
    """Resident set size of this process in MiB (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def gateway_config(state_dir: Path) -> Config:
    """A gateway on ``state_dir`` with its web app on a free loopback port and no demo site."""
    return parse_config(
        {
            "gateway": {"state_dir": str(state_dir)},
            "web": {"port": free_port()},
            "demo": {"seed": False},
            # In-memory relays: the figures stay comparable run to run and across issues; the
            # board backends' own cost is measured by bench e2e.
            "hardware": {"backend": "simulated"},
        }
    )


def presentations(cache: Cache, count: int, seed: int) -> list[tuple[Presentation, datetime]]:
    """A mix: known credentials of every kind (granted or denied by rules) and unknown ones."""
    rng = random.Random(seed)
    view = cache.view
    known = [
        c for table in view.credentials.values() for c, _ in zip(table, range(20_000), strict=False)
    ]
    doors = sorted(view.doors)
    start = datetime(2026, 12, 7, tzinfo=UTC)  # a Monday; samples spread over the week
    out = []
    for i in range(count):
        at = start + timedelta(seconds=rng.randrange(7 * 86400))
        door = rng.choice(doors)
        if i % 10 == 0:
            kind = CredentialKind.NFC_UID
            out.append((Presentation(door, kind, rng.randbytes(7).hex().upper()), at))
        else:
            cred = rng.choice(known)
            out.append((Presentation(door, cred.kind, cred.value), at))
    return out


def main(argv: list[str]) -> int:
    """Run the benchmark; the last line printed is its JSON result."""
    parser = argparse.ArgumentParser(prog="python -m bench decision")
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=50_000)
    parser.add_argument("--db", type=Path, help="reuse (or create) the generated site at this path")
    args = parser.parse_args(argv)

    workdir = tempfile.TemporaryDirectory(prefix="bench-decision-")
    with workdir:
        return run(args, workdir.name)


def run(args: argparse.Namespace, workdir_name: str) -> int:
    """Generate (or reuse) the site, then measure."""
    workdir = argparse.Namespace(name=workdir_name)
    db = args.db or Path(workdir.name) / "cache.db"
    if not db.exists():
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "bench.sitegen", "--out", str(db), "--users", str(args.users)],
            check=True,
        )
        print(f"generated site in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

    state_dir = Path(workdir.name) / "state"
    state_dir.mkdir()
    shutil.copy(db, state_dir / "cache.db")
    return asyncio.run(measure(state_dir, args.samples))


async def measure(state_dir: Path, sample_count: int) -> int:
    """Start a gateway on ``state_dir``, then time decisions and lookups on its cache."""
    rss_before = rss_mb()
    gateway = Gateway(gateway_config(state_dir))
    t0 = time.perf_counter()
    await gateway.start()
    load_s = time.perf_counter() - t0
    gc.collect()
    rss = rss_mb()
    cache = gateway.cache
    view = cache.view
    counts = view.counts()
    db = state_dir / "cache.db"

    # In every case all the presentation data we'd need for the baseline is the same key.
    samples = presentations(cache, sample_count, seed=7)
    # The lookup baseline uses plain (verified) access to the file, as a gateway built on SQLite would.
    conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
    verifiers = credentials.DEFAULT_VERIFIERS
    # Decisions for phone keys and DESFire cards need the proof verifiers of a later build; to time
    # the decision itself, identify them as the what-if path does (assumed strongest proof).
    decide_ns: list[float] = []
    lookup_ns: list[float] = []
    granted = 0
    reasons: dict[str, int] = {}
    clock = time.perf_counter_ns
    normal = DoorMode.NORMAL
    for presentation, at in samples:
        kind = presentation.kind
        t = clock()
        if kind is CredentialKind.NFC_UID:
            identity = credentials.verify(presentation, view.credential, verifiers)
        else:
            identity = credentials.assumed(view.credential(kind, presentation.value), kind)
        decision = access.decide(identity, presentation.door_id, at, view, normal)
        decide_ns.append(clock() - t)
        t = clock()
        lookup_sql(conn, kind, presentation.value)
        lookup_ns.append(clock() - t)
        granted += decision.granted
        reasons[decision.reason.value] = reasons.get(decision.reason.value, 0) + 1
    conn.close()
    await gateway.stop()

    result: dict[str, Any] = {
        "users": counts["users"],
        "credentials": counts["credentials"],
        "rules": counts["rules"],
        "doors": counts["doors"],
        "samples": len(decide_ns),
        "granted_share": round(granted / len(decide_ns), 3),
        "reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
        "load_s": round(load_s, 2),
        "decide_p50_us": round(statistics.median(decide_ns) / 1000, 2),
        "decide_p99_us": round(percentile(decide_ns, 0.99) / 1000, 2),
        "sqlite_lookup_p50_us": round(statistics.median(lookup_ns) / 1000, 2),
        "sqlite_lookup_p99_us": round(percentile(lookup_ns, 0.99) / 1000, 2),
        "rss_before_load_mb": round(rss_before, 1),
        "rss_mb": round(rss, 1),
    }
    result["ratio_p99"] = round(result["decide_p99_us"] / result["sqlite_lookup_p99_us"], 2)
    print(json.dumps(result))
    return 0
