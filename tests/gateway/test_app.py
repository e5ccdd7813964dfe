"""Tests for gateway.app: the composition root seeds, records its lifecycle and survives bad files."""

from __future__ import annotations

import socket
import stat
from pathlib import Path

import pytest

from drivers.base import CredentialRead
from gateway.app import Gateway, demo_snapshot
from gateway.outbox import OutboxState
from gateway.web import WebServerError
from tests.conftest import (
    ADA,
    UNKNOWN,
    Clock,
    ConfigFactory,
    GatewayFactory,
    config_data,
    outbox_types,
    read_outbox,
    sim_readers,
)


def state_dir(gw: Gateway) -> Path:
    return gw.config.gateway.state_dir


async def test_first_start_seeds_the_demo_site(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway()

    assert gw.cache.version == 1
    # Demo data is a stand-in: any upstream snapshot replaces it.
    assert gw.cache.origin == "demo"
    assert gw.cache.needs_resync
    assert gw.cache.view.site.name == "Demo coworking"
    assert sorted(gw.cache.view.users) == ["ada", "bob", "carla", "dan", "eve"]
    events = read_outbox(state_dir(gw))
    assert [(kind, data) for _, kind, data in events] == [
        ("cache.updated", {"source": "demo", "version": 1}),
        ("gateway.started", {"cache_version": 1}),
    ]


def test_demo_snapshot_is_the_shipped_site() -> None:
    snapshot = demo_snapshot()

    assert snapshot.version == 1
    assert snapshot.site.timezone == "Europe/Rome"
    assert {d.id for d in snapshot.entities["doors"]} == {
        "front",
        "lobby",
        "office-3",
        "server-room",
    }


async def test_state_dir_is_created_private(
    tmp_path: Path, start_gateway: GatewayFactory, gateway_config: ConfigFactory
) -> None:
    loose = tmp_path / "state"
    loose.mkdir(mode=0o755)
    loose.chmod(0o755)

    gw = await start_gateway(gateway_config())

    assert state_dir(gw) == loose
    assert stat.S_IMODE(loose.stat().st_mode) == 0o700


async def test_nested_state_dir_is_created(
    tmp_path: Path, start_gateway: GatewayFactory, free_port: int
) -> None:
    from gateway.config import parse_config

    nested = tmp_path / "a" / "b" / "state"
    gw = await start_gateway(parse_config(config_data(nested, free_port)))

    assert nested.is_dir()
    assert stat.S_IMODE(nested.stat().st_mode) == 0o700
    assert (nested / "cache.db").exists()
    assert gw.cache.version == 1


async def test_stop_records_gateway_stopped_after_every_event(
    start_gateway: GatewayFactory,
) -> None:
    gw = await start_gateway()
    await gw.entry.handle(CredentialRead("front", "nfc_uid", ADA))
    await gw.entry.handle(CredentialRead("front", "nfc_uid", UNKNOWN))
    recorded = {e.event.id for e in gw.events.recent(200)}

    await gw.stop()

    types = outbox_types(state_dir(gw))
    assert types[-1] == "gateway.stopped"
    assert types.count("gateway.stopped") == 1
    assert {"access.granted", "access.denied", "door.unlocked"} <= set(types)
    # Stopping locks the door still pulsed open, and says so before gateway.stopped.
    assert types[-2:] == ["door.locked", "gateway.stopped"]
    assert len(read_outbox(state_dir(gw))) == len(recorded) + 2
    assert gw.outbox.state is OutboxState.STOPPED


async def test_stop_finishes_presentations_in_flight(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway()
    sim_readers(gw).present(CredentialRead("front", "nfc_uid", ADA))  # a task, not yet run

    await gw.stop()

    types = outbox_types(state_dir(gw))
    assert "access.granted" in types
    assert types.index("access.granted") < types.index("gateway.stopped")


async def test_stop_is_idempotent(start_gateway: GatewayFactory) -> None:
    gw = await start_gateway()
    await gw.stop()
    await gw.stop()

    assert outbox_types(state_dir(gw)).count("gateway.stopped") == 1


async def test_second_start_does_not_reseed(
    start_gateway: GatewayFactory, gateway_config: ConfigFactory
) -> None:
    first = await start_gateway(gateway_config())
    await first.stop()

    second = await start_gateway(gateway_config())
    await second.stop()

    assert second.cache.version == 1
    assert outbox_types(state_dir(second)) == [
        "cache.updated",
        "gateway.started",
        "gateway.stopped",
        "gateway.started",
        "gateway.stopped",
    ]


async def test_no_demo_seed_leaves_the_cache_empty(
    start_gateway: GatewayFactory, gateway_config: ConfigFactory
) -> None:
    gw = await start_gateway(gateway_config(demo={"seed": False}))

    assert gw.cache.version == 0
    assert gw.cache.needs_resync
    assert gw.cache.view.doors == {}
    assert read_outbox(state_dir(gw)) == [(1, "gateway.started", {"cache_version": 0})]


async def test_corrupt_cache_is_reset_and_recorded(
    tmp_path: Path, start_gateway: GatewayFactory, gateway_config: ConfigFactory
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "cache.db").write_bytes(b"this is not a database, " * 200)

    gw = await start_gateway(gateway_config())

    resets = [data for _, kind, data in read_outbox(state) if kind == "cache.reset"]
    assert len(resets) == 1
    assert resets[0]["store"] == "cache"
    assert resets[0]["reason"]
    assert gw.cache.reset_reason is not None
    # A reset cache waits for upstream: the demo site is never put back in its place.
    assert gw.cache.version == 0
    assert gw.cache.needs_resync
    assert "cache.updated" not in [kind for _, kind, _ in read_outbox(state)]
    assert any(p.name.startswith("cache.db.corrupt") for p in state.iterdir())


async def test_corrupt_outbox_is_reset_and_recorded_in_the_new_one(
    tmp_path: Path, start_gateway: GatewayFactory, gateway_config: ConfigFactory
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "outbox.db").write_bytes(b"\x00garbage" * 500)

    await start_gateway(gateway_config())

    events = read_outbox(state)
    assert events[0][1] == "cache.reset"
    assert events[0][2]["store"] == "outbox"
    assert "gateway.started" in [kind for _, kind, _ in events]


async def test_failed_start_stops_what_had_started(
    gateway_config: ConfigFactory, clock: Clock
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        gw = Gateway(gateway_config(web={"port": port}), clock=clock)

        with pytest.raises(WebServerError, match="address already in use"):
            await gw.start()

    assert gw.outbox.state is OutboxState.STOPPED
    with pytest.raises(RuntimeError, match="not started"):
        await gw.cache.apply_snapshot(demo_snapshot())
    assert "gateway.started" not in outbox_types(state_dir(gw))
