"""Shared fixtures: free loopback ports, configs in tmp_path, and gateways on a controllable clock."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import pytest
from hypothesis import settings

from drivers.simulated import SimulatedReaders, SimulatedRelays
from gateway import codec
from gateway.app import Gateway
from gateway.config import Config, parse_config
from gateway.events import LoggedEvent

# No per-example deadline: on a shared two-core machine a slow example is noise, not a bug (the
# timed targets live in bench/); hypothesis still reports any example that fails.
settings.register_profile("luckey", deadline=None)
settings.load_profile("luckey")

ROME = ZoneInfo("Europe/Rome")

#: Tuesday 1 December 2026, 15:00 in Rome: business hours are open, the lobby's schedule is not.
DEFAULT_NOW = datetime(2026, 12, 1, 15, 0, tzinfo=ROME)

ADA = "04A1B2C3D4E5F6"  # staff: every door, any time (nfc_uid, assurance low)
BOB = "04B0B0B0B0B0B0"  # hot desk: front and lobby in business hours
CARLA = "04CA71A0000001"  # suspended
UNKNOWN = "04FFFFFFFFFF01"  # in no cache


def pick_free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def free_port() -> int:
    """A free loopback port."""
    return pick_free_port()


@dataclass
class Clock:
    """A wall clock a test sets by hand: ``clock.now = ...``; calling it reads it."""

    now: datetime = DEFAULT_NOW

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    """A clock standing still at DEFAULT_NOW until a test moves it."""
    return Clock()


def config_data(state_dir: Path, port: int, **sections: dict[str, Any]) -> dict[str, Any]:
    """Parsed-TOML data for a gateway in ``state_dir`` on ``port``; ``sections`` override."""
    data: dict[str, Any] = {
        "gateway": {"state_dir": str(state_dir), "log_format": "json"},
        "web": {"host": "127.0.0.1", "port": port},
        "demo": {"seed": True},
        # In-memory relays and readers: tests of the board path ask for "virtual" themselves.
        "hardware": {"backend": "simulated"},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return data


ConfigFactory = Callable[..., Config]


@pytest.fixture
def gateway_config(tmp_path: Path) -> ConfigFactory:
    """``gateway_config(**sections)``: a validated Config with its state in tmp_path/state."""

    def make(**sections: dict[str, Any]) -> Config:
        return parse_config(config_data(tmp_path / "state", pick_free_port(), **sections))

    return make


def toml_text(data: dict[str, Any]) -> str:
    """The TOML for a two-level table of strings, numbers and booleans."""
    lines = []
    for section, values in data.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {json.dumps(value)}" for key, value in values.items())
        lines.append("")
    return "\n".join(lines)


def demo_json() -> dict[str, Any]:
    """The demo site shipped with the gateway, as JSON (a fresh copy)."""
    text = resources.files("gateway").joinpath("data/demo-site.json").read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


def demo_snapshot(*, version: int = 1, unlock_seconds: float | None = None) -> codec.Snapshot:
    """The demo site at ``version``, every door's unlock time optionally shortened."""
    data = demo_json()
    data["version"] = version
    if unlock_seconds is not None:
        for door in data["doors"]:
            door["unlock_seconds"] = unlock_seconds
    return codec.snapshot_from_json(data)


def read_outbox(state_dir: Path) -> list[tuple[int, str, dict[str, Any]]]:
    """Every committed event in the outbox file, as (seq, type, data), read with plain sqlite3."""
    conn = sqlite3.connect(state_dir / "outbox.db")
    try:
        rows = conn.execute("SELECT seq, type, body FROM events ORDER BY seq").fetchall()
    finally:
        conn.close()
    return [(int(seq), str(kind), json.loads(body)["data"]) for seq, kind, body in rows]


def outbox_types(state_dir: Path) -> list[str]:
    """The types of the committed events, oldest first."""
    return [kind for _, kind, _ in read_outbox(state_dir)]


class GatewayFactory(Protocol):
    """Starts a gateway (stopped again at teardown)."""

    async def __call__(
        self, config: Config | None = None, *, clock: Clock | None = None
    ) -> Gateway: ...


@pytest.fixture
async def start_gateway(
    gateway_config: ConfigFactory, clock: Clock
) -> AsyncIterator[GatewayFactory]:
    """``await start_gateway(config=None, clock=None)``: a started Gateway, stopped at teardown."""
    started: list[Gateway] = []
    default_clock = clock

    async def start(config: Config | None = None, *, clock: Clock | None = None) -> Gateway:
        gw = Gateway(config or gateway_config(), clock=clock or default_clock)
        await gw.start()
        started.append(gw)
        return gw

    yield start
    for gw in reversed(started):
        await gw.stop()  # idempotent: a test may have stopped it already


class EventWaiter:
    """Collects a gateway's recorded events; ``wait_for`` gates on one (no sleeping)."""

    def __init__(self, gw: Gateway) -> None:
        self.events: list[LoggedEvent] = list(reversed(gw.events.recent(200)))
        self._changed = asyncio.Event()
        self.remove = gw.events.add_listener(self._on_event)

    def _on_event(self, logged: LoggedEvent) -> None:
        self.events.append(logged)
        self._changed.set()

    def matching(self, event_type: str, **data: Any) -> list[LoggedEvent]:
        """The events so far of ``event_type`` whose data holds every item of ``data``."""
        return [
            e
            for e in self.events
            if e.event.type == event_type and all(e.event.data.get(k) == v for k, v in data.items())
        ]

    async def wait_for(
        self, event_type: str, count: int = 1, within_s: float = 5.0, **data: Any
    ) -> list[LoggedEvent]:
        """Wait until ``count`` matching events were recorded; return them."""
        async with asyncio.timeout(within_s):
            while len(found := self.matching(event_type, **data)) < count:
                self._changed.clear()
                await self._changed.wait()
        return found


@pytest.fixture
def event_waiter() -> Iterator[Callable[[Gateway], EventWaiter]]:
    """``event_waiter(gw)``: an EventWaiter listening to ``gw`` until teardown."""
    waiters: list[EventWaiter] = []

    def make(gw: Gateway) -> EventWaiter:
        waiter = EventWaiter(gw)
        waiters.append(waiter)
        return waiter

    yield make
    for waiter in waiters:
        with contextlib.suppress(ValueError):
            waiter.remove()


def sim_readers(gw: Gateway) -> SimulatedReaders:
    """The gateway's readers, which must be the in-memory ones (backend "simulated")."""
    readers = gw.readers
    assert isinstance(readers, SimulatedReaders)
    return readers


def sim_relays(gw: Gateway) -> SimulatedRelays:
    """The gateway's relays, which must be the in-memory ones (backend "simulated")."""
    relays = gw.relays
    assert isinstance(relays, SimulatedRelays)
    return relays
