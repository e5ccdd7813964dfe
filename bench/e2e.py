"""A mechatronic key on a virtual board, over a real pty, to the relay pulse the board acknowledges.

Each sample: the virtual board reports KEY_PRESENTED (key id, a fresh challenge, the key's
answer) → the gateway's BoardBank receives it in the board's next reply slot → the answer is
verified (AES-CMAC, diversified key) → ``access.decide`` against a cache view → RELAY_PULSE to the
board → the board's ACK. The time runs from the presentation to that ACK.

Not yet the whole daemon: these are the parts the daemon will wire together (board backend,
verifier, decision engine), driven directly. A pty moves bytes without the line's speed, so the
wire floor is computed: the bytes of the four frames of a sample at ``baud`` (10 bits a byte).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import time
from datetime import UTC, datetime
from typing import Any

from drivers.base import CredentialRead
from drivers.board_bank import POLL_INTERVAL_S, BoardBank, BoardBankConfig
from drivers.pty_pair import PtyPair
from drivers.virtual_board import BoardConfig, FdStream, VirtualBoard
from firmware_protocol import (
    Ack,
    Frame,
    KeyPresented,
    MessageType,
    RelayPulse,
    encode_frame,
    encode_message,
)
from gateway import access, codec, credentials
from gateway.backoff import Backoff
from gateway.mechkeys import MechanicalKeyVerifier, respond
from gateway.model import CredentialKind, Presentation
from gateway.view import CacheView

SITE_KEY = bytes.fromhex("000102030405060708090A0B0C0D0E0F")
KEY_ID = bytes.fromhex("0011223344556677")
ADDRESS = 1
PULSE_S = 0.2


def site_view() -> CacheView:
    """One door needing high assurance, one user allowed there with a mechatronic key."""
    snapshot = codec.snapshot_from_json(
        {
            "format": 1,
            "version": 1,
            "site": {"id": "bench", "name": "Bench", "timezone": "Europe/Rome"},
            "tags": [{"id": "staff", "name": "Staff"}],
            "doors": [{"id": "front", "name": "Front", "min_assurance": "high"}],
            "users": [{"id": "u1", "name": "User", "tags": ["staff"]}],
            "credentials": [{"id": "k1", "user": "u1", "kind": "mech_key", "value": KEY_ID.hex()}],
            "rules": [{"id": "r1", "name": "Staff", "tags": ["staff"], "doors": ["front"]}],
        }
    )
    return CacheView.build(snapshot.version, snapshot.site, snapshot.entities)


def wire_floor_ms(baud: int) -> float:
    """Milliseconds the line needs for one sample's frames at ``baud`` (8N1: 10 bits a byte)."""
    key = KeyPresented(0, KEY_ID, bytes(16), bytes(16))
    pulse = RelayPulse(0, int(PULSE_S * 1000))
    frames = [
        Frame(ADDRESS, 1, *encode_message(key)),
        Frame(ADDRESS, 1, *encode_message(Ack())),
        Frame(ADDRESS, 2, *encode_message(pulse)),
        Frame(ADDRESS, 2, MessageType.ACK, b""),
    ]
    wire_bytes = sum(len(encode_frame(f)) + 1 for f in frames)  # +1: the leading 0x00 flush
    return wire_bytes * 10 / baud * 1000


def percentile(samples: list[float], q: float) -> float:
    """The q-quantile (0..1) of samples, nearest-rank."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(samples: int, baud: int, poll_s: float) -> dict[str, Any]:
    """Run ``samples`` presentations end to end; the figures as a dict."""
    view = site_view()
    verifier = MechanicalKeyVerifier(SITE_KEY)
    verifiers: dict[CredentialKind, credentials.Verifier] = {
        **credentials.DEFAULT_VERIFIERS,
        CredentialKind.MECHATRONIC_KEY: verifier,
    }
    reads: asyncio.Queue[CredentialRead] = asyncio.Queue()
    rng = random.Random(1)
    now = datetime(2026, 12, 1, 10, tzinfo=UTC)
    with PtyPair() as pty:
        board = VirtualBoard(BoardConfig(address=ADDRESS, doors=1))
        await board.start(FdStream(pty.master_fd))
        config = BoardBankConfig.per_door(pty.slave_path, {ADDRESS: ["front"]}, baudrate=baud)
        bank = BoardBank(config, backoff=Backoff, poll_interval_s=poll_s)
        bank.set_handler(reads.put_nowait)
        try:
            async with bank:
                if not bank.status(ADDRESS).online:
                    raise RuntimeError("the virtual board did not come online")
                times: list[float] = []
                granted = 0
                for _ in range(samples):
                    # Keys arrive at any moment, not just after the last exchange (when the
                    # board's reply slot may still be open): wait a random part of a poll cycle.
                    await asyncio.sleep(rng.uniform(0, 2 * poll_s))
                    challenge = os.urandom(16)
                    t0 = time.perf_counter()
                    await board.present_key(
                        0, KEY_ID, challenge, respond(SITE_KEY, KEY_ID, challenge)
                    )
                    read = await asyncio.wait_for(reads.get(), timeout=5)
                    shown = Presentation(
                        "front", CredentialKind(read.kind), read.value.upper(), read.proof
                    )
                    identity = credentials.verify(shown, view.credential, verifiers)
                    decision = access.decide(identity, "front", now, view)
                    if decision.granted:
                        await bank.pulse_relay("front", PULSE_S)
                        granted += 1
                    times.append((time.perf_counter() - t0) * 1000)
        finally:
            await board.stop()
    floor = wire_floor_ms(baud)
    p99 = percentile(times, 0.99)
    return {
        "samples": samples,
        "granted": granted,
        "poll_interval_ms": poll_s * 1000,
        "baud": baud,
        "e2e_p50_ms": round(statistics.median(times), 3),
        "e2e_p99_ms": round(p99, 3),
        "wire_floor_ms": round(floor, 3),
        "ratio_p99": round(p99 / floor, 2),
    }


def main(argv: list[str]) -> int:
    """Run the benchmark; the last line printed is its JSON result."""
    parser = argparse.ArgumentParser(prog="python -m bench e2e")
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--baud", type=int, default=115200)
    parser.add_argument(
        "--poll-ms",
        type=float,
        default=POLL_INTERVAL_S * 1000,
        help="how often the gateway addresses the board",
    )
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(measure(args.samples, args.baud, args.poll_ms / 1000))))
    return 0
