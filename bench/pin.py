"""A PIN typed on a virtual board's keypad, through the whole gateway daemon, to the decision.

Each sample: the embedded virtual board sends PIN_ENTERED over its pty → board bank → entry
service (lockout check, the site's scrypt in the hashing thread, lookup, ``access.decide``, the
door controller, the event committed) → the decision. The site hashes PINs at its real cost
(scrypt n = 2^14, r = 8, p = 1: 16 MiB). Baseline, in the same run: the bare ``hash_pin`` on a
worker thread, which is the floor a keypad entry cannot go under.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.decision import free_port, rss_mb
from bench.stats import percentile
from gateway import codec
from gateway.app import Gateway
from gateway.config import parse_config
from gateway.model import PinHashing
from gateway.pins import hash_pin

DOORS = ("front", "lobby")


def site(hashing: PinHashing, pins: dict[str, str]) -> codec.Snapshot:
    """Two keypad doors; one user per PIN with a PIN rule for both doors."""
    users = sorted(pins)
    return codec.snapshot_from_json(
        {
            "format": codec.FORMAT,
            "version": 1,
            "site": {
                "id": "bench-pin",
                "name": "PIN bench",
                "timezone": "Europe/Rome",
                "pin_hashing": {
                    "salt": base64.b64encode(hashing.salt).decode(),
                    "n": hashing.n,
                    "r": hashing.r,
                    "p": hashing.p,
                },
            },
            "doors": [
                {"id": d, "name": d, "min_assurance": "low", "keypad": True, "unlock_seconds": 0.5}
                for d in DOORS
            ],
            "users": [{"id": u, "name": u} for u in users],
            "credentials": [
                {"id": f"pin-{u}", "user": u, "kind": "pin", "value": hash_pin(pins[u], hashing)}
                for u in users
            ],
            "rules": [
                {"id": f"r-{u}", "name": u, "type": "pin", "users": [u], "doors": list(DOORS)}
                for u in users
            ],
        }
    )


async def measure(state_dir: Path, samples: int, users: int) -> dict[str, Any]:
    rng = random.Random(7)
    hashing = PinHashing(os.urandom(16))
    pins: dict[str, str] = {}
    while len(pins) < users:
        pin = f"{rng.randrange(10**6):06d}"
        if pin not in pins.values():
            pins[f"user-{len(pins)}"] = pin
    started = time.perf_counter()
    snapshot = await asyncio.to_thread(site, hashing, pins)
    build_s = time.perf_counter() - started
    config = parse_config(
        {
            "gateway": {"state_dir": str(state_dir)},
            "web": {"port": free_port()},
            "demo": {"seed": False},
            "hardware": {"backend": "virtual"},
            "doors": {d: {} for d in DOORS},
        }
    )
    gw = Gateway(config)
    await gw.start()
    try:
        await gw.cache.apply_snapshot(snapshot)
        entry_ms: list[float] = []
        bare_ms: list[float] = []
        granted = 0
        chosen = list(pins.values())
        for i in range(samples):
            pin = rng.choice(chosen)
            door = DOORS[i % len(DOORS)]
            t0 = time.perf_counter()
            decision = await gw.simulator.enter_pin(door, pin)
            entry_ms.append((time.perf_counter() - t0) * 1000)
            granted += decision.granted
            t0 = time.perf_counter()
            await asyncio.to_thread(hash_pin, pin, hashing)
            bare_ms.append((time.perf_counter() - t0) * 1000)
            await asyncio.sleep(0.6)  # the door relocks before the next sample
        return {
            "users_with_pins": users,
            "samples": samples,
            "granted": granted,
            "scrypt": {"n": hashing.n, "r": hashing.r, "p": hashing.p},
            "site_build_s": round(build_s, 2),
            "entry_p50_ms": round(statistics.median(entry_ms), 2),
            "entry_p99_ms": round(percentile(entry_ms, 0.99), 2),
            "bare_hash_p50_ms": round(statistics.median(bare_ms), 2),
            "bare_hash_p99_ms": round(percentile(bare_ms, 0.99), 2),
            "ratio_p99": round(percentile(entry_ms, 0.99) / percentile(bare_ms, 0.99), 2),
            "rss_mb": round(rss_mb(), 1),
        }
    finally:
        await gw.stop()


def main(argv: list[str]) -> int:
    """``python -m bench pin [--samples N] [--users N]``; prints one JSON object last."""
    parser = argparse.ArgumentParser(prog="python -m bench pin")
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--users", type=int, default=200)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-pin-") as tmp:
        figures = asyncio.run(measure(Path(tmp), args.samples, args.users))
    print(json.dumps(figures))
    return 0
