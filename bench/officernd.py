"""OfficeRnD: a full sync of a large organisation, and a signed webhook → the decision it changes.

The fake OfficeRnD (tests/officernd/fake.py) serves a generated organisation (10,000 members,
12,000 memberships, 60 plans by default; 80 % of members with a card in the documented custom
property) over real HTTP on loopback with no added latency, paging at the maximum page size.
A whole ``Gateway`` (simulated hardware, the demo site's doors) is activated against it with
the CLI's ``activate`` and a config rule giving every plan the front door, and started.

**Full sync**: the first full sync the daemon runs at start, as its sync measures it (every
listing read, the whole mapping, the cache written and swapped): seconds and HTTP requests,
next to the requests paging needs (one per page of each listing, plus the token).

**Webhook → enforced**: one member with a card and a membership of a plan the rule names.
Each sample removes the membership in the fake (or adds one back) and has the fake deliver the
signed ``membership.removed`` (``.created``) event to the gateway's receiver; the clock
(``time.perf_counter``) starts just before the delivery and stops when a decision for the
member's card at the front door, taken in a cache listener the way the entry service takes it,
gives the new answer (so it is the first decision any read could get). The receiver answers
before processing; the rest is the re-fetch by id, the member's re-mapping and the cache write.
The baseline, measured alternately in the same run, is the delivery alone: the same signed POST
to the same receiver for an event id it has already seen (answered at once, nothing processed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.stats import percentile
from gateway import access
from gateway.app import Gateway
from gateway.config import parse_config
from gateway.credentials import Verified
from gateway.model import CredentialKind, Reason
from gateway.officernd.activation import activate
from gateway.officernd.client import MAX_PAGE_SIZE
from gateway.view import CacheView
from tests.conftest import pick_free_port
from tests.officernd.fake import FakeOfficeRnD, populate

CARD = "04BE0C4A000001"
WARMUP = 5
WAIT_S = 30.0


def give_cards(fake: FakeOfficeRnD, share: float, seed: int) -> int:
    """Put a card in the card property of ``share`` of the members; how many got one."""
    rng = random.Random(seed)
    given = 0
    for index, member_id in enumerate(list(fake._store["members"])):
        if rng.random() < share:
            fake.update(
                "members", member_id, properties={"luckey_cards": f"nfc_uid:04{index:012X}"}
            )
            given += 1
    return given


async def wait_until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


class Watcher:
    """Decides for one card at one door on every new cache view; stamps when the answer flips."""

    def __init__(self, gw: Gateway, door: str) -> None:
        self._door = door
        self._clock = gw.clock
        self.expect: Reason | None = None
        self.arrived = asyncio.Event()
        self.stamp = 0.0
        self.reason = self._decide(gw.cache.view)
        gw.cache.add_listener(self._on_view)

    def _decide(self, view: CacheView) -> Reason:
        credential = view.credential(CredentialKind.NFC_UID, CARD)
        if credential is None:
            return Reason.UNKNOWN_CREDENTIAL
        verified = Verified(credential, credential.assurance)
        return access.decide(verified, self._door, self._clock(), view).reason

    def _on_view(self, view: CacheView) -> None:
        reason = self._decide(view)
        if reason is self.expect and self.reason is not reason:
            self.stamp = time.perf_counter()
            self.arrived.set()
        self.reason = reason


async def measure(members: int, memberships: int, plans: int, samples: int) -> dict[str, Any]:
    logging.getLogger("gateway").setLevel(logging.ERROR)
    async with FakeOfficeRnD() as fake:
        populate(fake, members=members, memberships=memberships, plans=plans, seed=1)
        give_cards(fake, 0.8, seed=2)
        plan_names = sorted(p["name"] for p in fake._store["plans"].values())
        hot = next(p for p in fake._store["plans"].values() if p["name"] == plan_names[0])["_id"]
        probe = fake.add_member("Bench Member", properties={"luckey_cards": f"nfc_uid:{CARD}"})
        membership = fake.add_membership(hot, member=probe["_id"], start="2026-01-01")
        listed = {k: len(fake._store[k]) for k in ("members", "companies", "memberships", "plans")}
        pages = sum(-(-n // MAX_PAGE_SIZE) or 1 for n in listed.values())

        with tempfile.TemporaryDirectory(prefix="bench-officernd-") as tmp:
            port = pick_free_port()
            config = parse_config(
                {
                    "gateway": {"state_dir": str(Path(tmp) / "state"), "log_level": "error"},
                    "web": {"host": "127.0.0.1", "port": port},
                    "hardware": {"backend": "simulated"},
                    "officernd": {
                        "webhook_url": f"http://127.0.0.1:{port}/hooks/officernd",
                        "poll_interval_s": 0,
                        "rules": {"all-plans": {"plans": plan_names, "doors": ["front"]}},
                    },
                }
            )
            await activate(
                config.gateway.state_dir,
                fake.org,
                fake.client_id,
                fake.client_secret,
                api_base=fake.api_base,
                identity_url=fake.identity_url,
            )
            gw = Gateway(config)
            await gw.start()
            try:
                service = gw.officernd

                def synced() -> bool:
                    return service.sync is not None and service.sync.last_full_sync is not None

                await wait_until(synced, "the first full sync")
                sync = service.sync
                if sync is None or sync.last_full_sync is None:
                    raise RuntimeError(f"OfficeRnD did not sync: {service.status()}")
                summary = sync.last_full_sync
                watcher = Watcher(gw, "front")
                if watcher.reason is not Reason.GRANTED:
                    raise RuntimeError(f"the probe member is not let in: {watcher.reason}")
                enforced, delivered = await webhook_samples(fake, watcher, membership, samples)
            finally:
                await gw.stop()
    return {
        "members": summary.members,
        "memberships": summary.memberships,
        "plans": summary.plans,
        "users": summary.users,
        "cards": summary.cards,
        "requests": summary.requests,
        "paging_requests": pages,
        "sync_s": round(summary.seconds, 2),
        "webhook_samples": len(enforced),
        "webhook_to_enforced_p50_ms": round(statistics.median(enforced), 2),
        "webhook_to_enforced_p99_ms": round(percentile(enforced, 0.99), 2),
        "delivery_p50_ms": round(statistics.median(delivered), 2),
        "delivery_p99_ms": round(percentile(delivered, 0.99), 2),
        "ratio_p99": round(percentile(enforced, 0.99) / percentile(delivered, 0.99), 2),
    }


async def webhook_samples(
    fake: FakeOfficeRnD, watcher: Watcher, membership: dict[str, Any], samples: int
) -> tuple[list[float], list[float]]:
    """Alternate: a membership removed / added back, each delivered as a signed webhook."""
    enforced: list[float] = []
    delivered: list[float] = []
    current = membership
    for index in range(WARMUP + samples):
        if index % 2 == 0:
            fake.remove("memberships", current["_id"])
            event, expect = "membership.removed", Reason.NO_RULE_FOR_DOOR
        else:
            current = fake.add_membership(
                current["plan"], member=current["member"], start="2026-01-01"
            )
            event, expect = "membership.created", Reason.GRANTED
        watcher.expect = expect
        watcher.arrived.clear()
        event_id = f"bench-{index}"
        start = time.perf_counter()
        statuses = await fake.emit(event, current, event_id=event_id)
        if statuses != [200]:
            raise RuntimeError(f"the gateway answered {statuses}")
        await asyncio.wait_for(watcher.arrived.wait(), WAIT_S)
        took = watcher.stamp - start
        # The baseline: the same delivery again, a repeat the receiver answers and drops.
        start = time.perf_counter()
        await fake.emit(event, current, event_id=event_id)
        bare = time.perf_counter() - start
        if index >= WARMUP:
            enforced.append(took * 1000)
            delivered.append(bare * 1000)
        await asyncio.sleep(random.uniform(0, 0.01))
    return enforced, delivered


def main(argv: list[str]) -> int:
    """Run the benchmark; the last line printed is its JSON result."""
    parser = argparse.ArgumentParser(prog="python -m bench officernd")
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--memberships", type=int, default=12_000)
    parser.add_argument("--plans", type=int, default=60)
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    with contextlib.suppress(KeyboardInterrupt):
        result = asyncio.run(measure(args.members, args.memberships, args.plans, args.samples))
        print(json.dumps(result))
        return 0
    return 1
