"""Generate a large synthetic site into a cache file, through the gateway's own apply path.

Run in its own process (``python -m bench.sitegen``) so the benchmark process that loads it
holds only what a running gateway would.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from gateway import codec
from gateway.cache import Cache

KINDS = ("nfc_uid", "ble_phone_key", "desfire")
HEX_BYTES = {"nfc_uid": 7, "ble_phone_key": 16, "desfire": 7}
DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


def _hex(rng: random.Random, n: int) -> str:
    return rng.randbytes(n).hex().upper()


def site_json(
    users: int, creds_per_user: int, rules: int, doors: int, tags: int, seed: int
) -> dict[str, Any]:
    """A site of the given size as snapshot JSON; deterministic for a seed."""
    rng = random.Random(seed)
    base = datetime(2026, 1, 1, tzinfo=UTC)
    schedules = []
    for i in range(20):
        days = sorted(rng.sample(range(7), rng.randint(3, 7)))
        start = rng.randrange(5 * 60, 11 * 60, 30)
        windows: list[dict[str, Any]] = [
            {
                "days": [DAYS[d] for d in days],
                "start": codec.hhmm(start),
                "end": codec.hhmm(start + rng.randrange(4 * 60, 12 * 60, 30)),
            }
        ]
        if i % 5 == 0:
            windows.append({"days": ["fri"], "start": "22:00", "end": "03:00", "overnight": True})
        schedules.append(
            {
                "id": f"sched-{i}",
                "name": f"Schedule {i}",
                "windows": windows,
                "holiday_calendars": ["holidays"],
            }
        )
    holidays = sorted(
        {(base + timedelta(days=rng.randrange(730))).date().isoformat() for _ in range(25)}
    )
    out: dict[str, Any] = {
        "format": codec.FORMAT,
        "version": 1,
        "site": {"id": "bench", "name": "Benchmark site", "timezone": "Europe/Rome"},
        "tags": [{"id": f"tag-{i}", "name": f"Tag {i}", "special": i % 4 == 0} for i in range(tags)]
        + [{"id": f"group-{g}", "name": f"Door group {g}", "scope": "doors"} for g in range(5)],
        "holiday_calendars": [{"id": "holidays", "name": "Holidays", "dates": holidays}],
        "schedules": schedules,
        "doors": [
            {
                "id": f"door-{i}",
                "name": f"Door {i}",
                "min_assurance": "low" if i % 3 else "medium",
                "tags": [f"group-{i % 5}"],
            }
            for i in range(doors)
        ],
        "users": [],
        "credentials": [],
        "rules": [],
    }
    for u in range(users):
        user: dict[str, Any] = {
            "id": f"user-{u}",
            "name": f"User {u}",
            "tags": sorted({f"tag-{rng.randrange(tags)}" for _ in range(rng.randint(1, 3))}),
        }
        if u % 50 == 0:
            user["status"] = "suspended"
        if u % 10 == 0:
            user["valid_until"] = (base + timedelta(days=rng.randrange(30, 900))).isoformat()
        out["users"].append(user)
        for c in range(creds_per_user):
            kind = KINDS[c % len(KINDS)]
            cred: dict[str, Any] = {
                "id": f"cred-{u}-{c}",
                "user": f"user-{u}",
                "kind": kind,
                "value": _hex(rng, HEX_BYTES[kind]),
            }
            if rng.random() < 0.01:
                cred["revoked"] = True
            out["credentials"].append(cred)
    for r in range(rules):
        rule: dict[str, Any] = {
            "id": f"rule-{r}",
            "name": f"Rule {r}",
            "tags": sorted({f"tag-{rng.randrange(tags)}" for _ in range(rng.randint(1, 3))}),
            "doors": sorted({f"door-{rng.randrange(doors)}" for _ in range(rng.randint(1, 5))}),
        }
        if rng.random() < 0.7:
            rule["schedule"] = f"sched-{rng.randrange(len(schedules))}"
        # Luckey-shaped rules too: per credential type, door groups, days and daily slots.
        if r % 4 == 1:
            rule["type"] = "smartphone"
            rule["days"] = [DAYS[d] for d in sorted(rng.sample(range(7), rng.randint(2, 6)))]
        elif r % 4 == 2:
            rule["door_tags"] = [f"group-{rng.randrange(5)}"]
            start = rng.randrange(0, 20 * 60, 30)
            rule["time_slot"] = {
                "start": codec.hhmm(start),
                "end": codec.hhmm((start + 8 * 60) % 1440),
            }
        out["rules"].append(rule)
    for r in range(rules // 4):  # single-user card rules (Luckey's card rules)
        start = rng.randrange(5 * 60, 12 * 60, 30)
        out["rules"].append(
            {
                "id": f"card-rule-{r}",
                "name": f"Card rule {r}",
                "type": "card",
                "users": [f"user-{rng.randrange(users)}"],
                "doors": [f"door-{rng.randrange(doors)}"],
                "days": [DAYS[d] for d in sorted(rng.sample(range(7), 5))],
                "time_slot": {"start": codec.hhmm(start), "end": codec.hhmm(start + 9 * 60)},
            }
        )
    return out


async def generate(path: Path, **size: int) -> codec.Snapshot:
    """Write a generated site into a fresh cache file at ``path``."""
    snapshot = codec.snapshot_from_json(site_json(**size))
    cache = Cache(path)
    await cache.start()
    try:
        await cache.apply_snapshot(snapshot)
    finally:
        await cache.stop()
    return snapshot


def main() -> None:
    """Command line: ``python -m bench.sitegen --out PATH [--users N ...]``."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--creds-per-user", type=int, default=3)
    parser.add_argument("--rules", type=int, default=2_000)
    parser.add_argument("--doors", type=int, default=50)
    parser.add_argument("--tags", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{args.out}{suffix}").unlink(missing_ok=True)
    asyncio.run(
        generate(
            args.out,
            users=args.users,
            creds_per_user=args.creds_per_user,
            rules=args.rules,
            doors=args.doors,
            tags=args.tags,
            seed=args.seed,
        )
    )
    print(json.dumps({"out": str(args.out), "users": args.users}))


if __name__ == "__main__":
    main()
