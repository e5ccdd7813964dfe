"""A mechatronic key on a virtual board, over a real pty, through the whole gateway daemon.

Each sample: the virtual board reports KEY_PRESENTED (key id, a fresh challenge, the key's
answer) → the running ``Gateway`` (backend "board" on the pty's other end: serial link,
BoardBank, entry service, AES-CMAC verification, ``access.decide``, door controller) → RELAY_SET
to the board → the board's ACK, as the gateway sees it (its relay state flips on the ACK). Then
the door is opened and closed on the board, so the gateway relocks it before the next sample.

A pty moves bytes without the line's speed, so the wire floor is computed: the bytes of the
sample's six frames (the poll that opens the board's reply slot and its ACK, KEY_PRESENTED and
its ACK, RELAY_SET and its ACK) at ``baud``, 10 bits a byte. The wait for the poll itself is
not in the floor: it depends on the poll interval, not on the line. On a real line expect roughly floor + measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.stats import percentile
from drivers.pty_pair import PtyPair
from drivers.virtual_board import BoardConfig, FdStream, VirtualBoard
from firmware_protocol import (
    Ack,
    Flags,
    Frame,
    Heartbeat,
    KeyPresented,
    MessageType,
    RelaySet,
    encode_frame,
    encode_message,
)
from gateway import codec
from gateway.app import Gateway
from gateway.config import parse_config
from gateway.mechkeys import respond
from gateway.site_keys import SITE_KEY_FILE

SITE_KEY = bytes.fromhex("000102030405060708090A0B0C0D0E0F")
KEY_ID = bytes.fromhex("0011223344556677")
ADDRESS = 1
DEFAULT_POLL_MS = 5.0


def bench_site() -> codec.Snapshot:
    """One door needing high assurance, one user allowed there with a mechatronic key."""
    return codec.snapshot_from_json(
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


def wire_floor_ms(baud: int) -> float:
    """Milliseconds the line needs for one sample's frames at ``baud`` (8N1: 10 bits a byte)."""
    key = KeyPresented(0, KEY_ID, bytes(16), bytes(16))
    frames = [
        # The poll that opens the board's reply slot, and its ACK announcing the key (MORE).
        Frame(ADDRESS, 7, *encode_message(Heartbeat(0))),
        Frame(ADDRESS, 7, MessageType.ACK, b"", flags=Flags.FROM_BOARD | Flags.MORE),
        Frame(ADDRESS, 1, *encode_message(key)),
        Frame(ADDRESS, 1, *encode_message(Ack())),
        Frame(ADDRESS, 2, *encode_message(RelaySet(0, True))),
        Frame(ADDRESS, 2, MessageType.ACK, b""),
    ]
    wire_bytes = sum(len(encode_frame(f)) + 1 for f in frames)  # +1: the leading 0x00 flush
    return wire_bytes * 10 / baud * 1000


def free_port() -> int:
    """A free TCP port on loopback, for the daemon's web app."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def write_site_key(state_dir: Path) -> None:
    """Install the bench's site key as an installer would (0600)."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(state_dir / SITE_KEY_FILE, os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(SITE_KEY.hex())


async def measure(samples: int, baud: int, poll_ms: float) -> dict[str, Any]:
    """Run ``samples`` presentations end to end through a running gateway; the figures."""
    rng = random.Random(1)
    with tempfile.TemporaryDirectory() as tmp, PtyPair() as pty:
        state_dir = Path(tmp) / "state"
        write_site_key(state_dir)
        config = parse_config(
            {
                "gateway": {"state_dir": str(state_dir), "log_level": "warning"},
                "web": {"port": free_port()},
                "demo": {"seed": False},
                "hardware": {
                    "backend": "board",
                    "bus": pty.slave_path,
                    "baudrate": baud,
                    "poll_interval_ms": poll_ms,
                    "boards": [{"address": ADDRESS, "doors": ["front"]}],
                },
            }
        )
        board = VirtualBoard(BoardConfig(address=ADDRESS, doors=1))
        await board.start(FdStream(pty.master_fd))
        gateway = Gateway(config)
        acked = asyncio.Event()
        try:
            await gateway.start()
            await gateway.cache.apply_snapshot(bench_site())
            gateway.relays.add_listener(lambda door, on: acked.set() if on else None)
            granted: list[str] = []
            gateway.events.add_listener(
                lambda logged: (
                    granted.append(logged.event.id)
                    if logged.event.type == "access.granted"
                    else None
                )
            )
            times: list[float] = []
            for _ in range(samples):
                # Keys arrive at any moment, not just after the last exchange (when the
                # board's reply slot may still be open): wait a random part of a poll cycle.
                await asyncio.sleep(rng.uniform(0, 2 * poll_ms / 1000))
                challenge = os.urandom(16)
                acked.clear()
                t0 = time.perf_counter()
                await board.present_key(0, KEY_ID, challenge, respond(SITE_KEY, KEY_ID, challenge))
                await asyncio.wait_for(acked.wait(), timeout=5)
                times.append((time.perf_counter() - t0) * 1000)
                # Walk through; the gateway relocks on close before the next key.
                await board.open_door(0)
                await board.close_door(0)
                await asyncio.wait_for(board.wait_for(lambda: not board.relay_on(0)), timeout=5)
        finally:
            await gateway.stop()
            await board.stop()
    floor = wire_floor_ms(baud)
    p99 = percentile(times, 0.99)
    return {
        "samples": samples,
        "granted": len(granted),  # access.granted events the gateway recorded
        "poll_interval_ms": poll_ms,
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
        default=DEFAULT_POLL_MS,
        help="how often the gateway addresses the board ([hardware] poll_interval_ms)",
    )
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(measure(args.samples, args.baud, args.poll_ms))))
    return 0
