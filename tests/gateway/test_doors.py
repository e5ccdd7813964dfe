"""Tests for gateway.doors: modes from commands and unlock schedules, and the relays they drive."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

import pytest

from drivers.base import CommandFailed, CredentialRead, Feedback, InputEvent, InputRole
from gateway import codec, doors
from gateway.app import Gateway
from gateway.doors import ControllerState, desired_mode
from gateway.hardware import DoorReport, LocalHardware
from gateway.model import DoorMode, Reason
from gateway.view import CacheView
from tests.conftest import (
    ADA,
    BOB,
    ROME,
    UNKNOWN,
    Clock,
    ConfigFactory,
    EventWaiter,
    GatewayFactory,
    demo_json,
    demo_snapshot,
    read_outbox,
    sim_readers,
    sim_relays,
)

#: Tuesday 1 December 2026 in Rome; the lobby's unlock schedule is open 09:00-13:00 Mon-Fri.
LOBBY_OPEN = datetime(2026, 12, 1, 10, 0, tzinfo=ROME)
LOBBY_CLOSED = datetime(2026, 12, 1, 14, 0, tzinfo=ROME)


def mode_events(gw: Gateway) -> list[dict[str, Any]]:
    """The door.mode_changed events committed to the outbox, oldest first."""
    state = gw.config.gateway.state_dir
    return [data for _, kind, data in read_outbox(state) if kind == "door.mode_changed"]


def controller_state(gw: Gateway) -> ControllerState:
    return gw.doors.state


async def present(gw: Gateway, door: str, value: str) -> Reason:
    decision = await gw.entry.handle(CredentialRead(door, "nfc_uid", value))
    return decision.reason


# --- lockdown -------------------------------------------------------------------------------


async def test_lockdown_denies_a_valid_card_and_survives_a_restart(
    start_gateway: GatewayFactory, gateway_config: ConfigFactory
) -> None:
    config = gateway_config()
    gw = await start_gateway(config)
    assert controller_state(gw) is ControllerState.RUNNING

    await gw.doors.set_mode("front", DoorMode.LOCKDOWN, source="test")

    assert gw.doors.mode("front") is DoorMode.LOCKDOWN
    assert await present(gw, "front", ADA) is Reason.DOOR_LOCKDOWN
    assert not gw.relays.is_on("front")
    assert await present(gw, "office-3", ADA) is Reason.ASSURANCE_TOO_LOW  # other doors untouched
    await gw.stop()
    assert controller_state(gw) is ControllerState.STOPPED
    assert mode_events(gw) == [
        {"door": "front", "mode": "lockdown", "previous": "normal", "source": "test"}
    ]

    again = await start_gateway(config)

    assert again.doors.mode("front") is DoorMode.LOCKDOWN
    assert await present(again, "front", ADA) is Reason.DOOR_LOCKDOWN
    assert not again.relays.is_on("front")

    await again.doors.set_mode("front", DoorMode.NORMAL, source="test")

    assert again.doors.mode("front") is DoorMode.NORMAL
    assert await present(again, "front", ADA) is Reason.GRANTED
    assert again.relays.is_on("front")
    await again.stop()
    assert mode_events(again)[-1] == {
        "door": "front",
        "mode": "normal",
        "previous": "lockdown",
        "source": "test",
    }

    third = await start_gateway(config)
    assert third.doors.mode("front") is DoorMode.NORMAL


async def test_lockdown_releases_a_door_in_the_middle_of_a_pulse(
    start_gateway: GatewayFactory,
) -> None:
    gw = await start_gateway()
    assert await present(gw, "front", ADA) is Reason.GRANTED
    assert gw.relays.is_on("front")

    await gw.doors.set_mode("front", DoorMode.LOCKDOWN, source="test")

    assert not gw.relays.is_on("front")


async def test_a_lockdown_event_is_recorded_while_running(
    start_gateway: GatewayFactory, event_waiter: Callable[[Gateway], EventWaiter]
) -> None:
    gw = await start_gateway()
    waiter = event_waiter(gw)

    await gw.doors.set_mode("server-room", DoorMode.LOCKDOWN, source="api")

    [logged] = await waiter.wait_for("door.mode_changed", door="server-room")
    assert logged.event.data == {
        "door": "server-room",
        "mode": "lockdown",
        "previous": "normal",
        "source": "api",
    }


# --- emergency open -------------------------------------------------------------------------


async def test_emergency_open_holds_the_relay_and_grants_everyone(
    start_gateway: GatewayFactory, gateway_config: ConfigFactory
) -> None:
    gw = await start_gateway(gateway_config(demo={"seed": False}))
    await gw.cache.apply_snapshot(demo_snapshot(unlock_seconds=0.5))
    changes: list[tuple[str, bool]] = []
    gw.relays.add_listener(lambda ch, on: changes.append((ch, on)))

    await gw.doors.set_mode("front", DoorMode.EMERGENCY_OPEN, source="fire-panel")

    assert gw.relays.is_on("front")
    assert await present(gw, "front", UNKNOWN) is Reason.EMERGENCY_OPEN
    assert await present(gw, "front", ADA) is Reason.EMERGENCY_OPEN
    # Held, not pulsed: a reference pulse on another door elapses and front is still on.
    released = asyncio.Event()
    gw.relays.add_listener(lambda ch, on: released.set() if ch == "lobby" and not on else None)
    assert await present(gw, "lobby", ADA) is Reason.GRANTED
    await asyncio.wait_for(released.wait(), timeout=5)
    assert gw.relays.is_on("front")
    assert ("front", False) not in changes

    await gw.doors.set_mode("front", DoorMode.NORMAL, source="fire-panel")

    assert not gw.relays.is_on("front")
    assert gw.doors.mode("front") is DoorMode.NORMAL


# --- unlock schedules -----------------------------------------------------------------------


async def test_unlock_schedule_holds_the_door_while_open(
    start_gateway: GatewayFactory,
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
    event_waiter: Callable[[Gateway], EventWaiter],
) -> None:
    monkeypatch.setattr(doors, "SCHEDULE_TICK_S", 0.01)
    clock.now = LOBBY_OPEN
    gw = await start_gateway()
    waiter = event_waiter(gw)

    assert gw.doors.mode("lobby") is DoorMode.UNLOCKED
    assert gw.relays.is_on("lobby")
    assert gw.doors.mode("front") is DoorMode.NORMAL
    assert not gw.relays.is_on("front")

    clock.now = LOBBY_CLOSED
    [closed] = await waiter.wait_for("door.mode_changed", door="lobby", mode="normal")

    assert closed.event.data == {
        "door": "lobby",
        "mode": "normal",
        "previous": "unlocked",
        "source": "schedule",
    }
    assert not gw.relays.is_on("lobby")
    assert gw.doors.mode("lobby") is DoorMode.NORMAL

    clock.now = LOBBY_OPEN + timedelta(days=1)  # Wednesday, open again
    await waiter.wait_for("door.mode_changed", door="lobby", mode="unlocked", previous="normal")

    assert gw.relays.is_on("lobby")
    await waiter.wait_for("door.unlocked", count=2, door="lobby")


async def test_unlock_schedule_is_closed_on_a_holiday(
    start_gateway: GatewayFactory, clock: Clock
) -> None:
    clock.now = datetime(2026, 12, 8, 10, 0, tzinfo=ROME)  # a Tuesday, and a public holiday

    gw = await start_gateway()

    assert gw.doors.mode("lobby") is DoorMode.NORMAL
    assert not gw.relays.is_on("lobby")


async def test_a_cache_change_applies_a_new_unlock_schedule(
    start_gateway: GatewayFactory, clock: Clock, event_waiter: Callable[[Gateway], EventWaiter]
) -> None:
    clock.now = LOBBY_OPEN
    gw = await start_gateway()
    waiter = event_waiter(gw)
    assert gw.doors.mode("front") is DoorMode.NORMAL
    data = demo_json()
    data["version"] = 2
    for door in data["doors"]:
        if door["id"] == "front":
            door["unlock_schedule"] = "business-hours"
        if door["id"] == "lobby":
            del door["unlock_schedule"]

    await gw.cache.apply_snapshot(codec.snapshot_from_json(data))

    assert gw.doors.mode("front") is DoorMode.UNLOCKED
    assert gw.relays.is_on("front")
    assert gw.doors.mode("lobby") is DoorMode.NORMAL
    assert not gw.relays.is_on("lobby")
    await waiter.wait_for("door.mode_changed", count=2, source="cache")
    changes = {e.event.data["door"]: e.event.data for e in waiter.matching("door.mode_changed")}
    assert changes["front"]["mode"] == "unlocked"
    assert changes["lobby"] == {
        "door": "lobby",
        "mode": "normal",
        "previous": "unlocked",
        "source": "cache",
    }


async def test_a_granted_read_does_not_cut_an_unlocked_door_short(
    start_gateway: GatewayFactory, gateway_config: ConfigFactory, clock: Clock
) -> None:
    clock.now = LOBBY_OPEN
    gw = await start_gateway(gateway_config(demo={"seed": False}))
    await gw.cache.apply_snapshot(demo_snapshot(unlock_seconds=0.5))
    assert gw.relays.is_on("lobby")
    front_released = asyncio.Event()
    gw.relays.add_listener(
        lambda ch, on: front_released.set() if ch == "front" and not on else None
    )

    assert await present(gw, "lobby", BOB) is Reason.GRANTED
    assert await present(gw, "front", BOB) is Reason.GRANTED
    await asyncio.wait_for(front_released.wait(), timeout=5)

    assert gw.relays.is_on("lobby")
    assert gw.doors.mode("lobby") is DoorMode.UNLOCKED


async def test_lockdown_overrides_an_open_unlock_schedule(
    start_gateway: GatewayFactory, clock: Clock
) -> None:
    clock.now = LOBBY_OPEN
    gw = await start_gateway()
    assert gw.relays.is_on("lobby")

    await gw.doors.set_mode("lobby", DoorMode.LOCKDOWN, source="test")

    assert not gw.relays.is_on("lobby")
    assert await present(gw, "lobby", ADA) is Reason.DOOR_LOCKDOWN

    await gw.doors.set_mode("lobby", DoorMode.NORMAL, source="test")

    assert gw.doors.mode("lobby") is DoorMode.UNLOCKED  # the schedule takes over again
    assert gw.relays.is_on("lobby")


async def test_a_held_unlock_by_command_lasts_until_normal_and_survives_a_restart(
    start_gateway: GatewayFactory, gateway_config: ConfigFactory, clock: Clock
) -> None:
    clock.now = LOBBY_CLOSED  # no schedule holds anything open
    config = gateway_config()
    gw = await start_gateway(config)

    assert await gw.doors.set_mode("front", DoorMode.UNLOCKED, source="command")

    assert gw.relays.is_on("front")
    assert gw.door_modes.load() == {"front": DoorMode.UNLOCKED}
    await gw.stop()
    again = await start_gateway(config)
    assert again.doors.mode("front") is DoorMode.UNLOCKED
    assert again.relays.is_on("front")
    assert await again.doors.set_mode("front", DoorMode.NORMAL, source="command")
    assert not again.relays.is_on("front")


async def test_a_remote_momentary_unlock_runs_its_own_time_but_never_in_lockdown(
    start_gateway: GatewayFactory, event_waiter: Callable[[Gateway], EventWaiter]
) -> None:
    gw = await start_gateway()
    waiter = event_waiter(gw)

    assert await gw.doors.unlock("front", 0.5, source="command c-1")

    assert gw.relays.is_on("front")
    [unlocked] = await waiter.wait_for("door.unlocked", door="front")
    assert unlocked.event.data == {"door": "front", "by": "command", "mode": "normal"}
    await waiter.wait_for("door.locked", door="front", by="timeout")
    await gw.doors.set_mode("front", DoorMode.LOCKDOWN, source="test")
    assert not await gw.doors.unlock("front", None, source="command c-2")
    assert not gw.relays.is_on("front")


def test_desired_mode_prefers_the_override() -> None:
    snapshot = codec.snapshot_from_json(demo_json())
    cache_view = CacheView.build(snapshot.version, snapshot.site, snapshot.entities)

    assert desired_mode(cache_view, "lobby", None, LOBBY_OPEN) is DoorMode.UNLOCKED
    assert desired_mode(cache_view, "lobby", None, LOBBY_CLOSED) is DoorMode.NORMAL
    assert desired_mode(cache_view, "front", None, LOBBY_OPEN) is DoorMode.NORMAL
    assert desired_mode(cache_view, "lobby", DoorMode.LOCKDOWN, LOBBY_OPEN) is DoorMode.LOCKDOWN
    assert desired_mode(cache_view, "nowhere", None, LOBBY_OPEN) is DoorMode.NORMAL
    # The window is read in the site's time zone: 08:30 UTC is 09:30 in Rome.
    utc_morning = datetime.fromisoformat("2026-12-01T08:30:00+00:00")
    assert desired_mode(cache_view, "lobby", None, utc_morning) is DoorMode.UNLOCKED


async def test_a_door_removed_while_held_open_is_released(
    start_gateway: GatewayFactory, clock: Clock, event_waiter: Callable[[Gateway], EventWaiter]
) -> None:
    clock.now = LOBBY_OPEN
    gw = await start_gateway()
    waiter = event_waiter(gw)
    assert gw.relays.is_on("lobby")
    data = demo_json()
    data["version"] = 2
    data["doors"] = [d for d in data["doors"] if d["id"] != "lobby"]
    for rule in data["rules"]:
        rule["doors"] = [d for d in rule["doors"] if d != "lobby"]

    await gw.cache.apply_snapshot(codec.snapshot_from_json(data))

    assert "lobby" not in gw.cache.view.doors
    [locked] = await waiter.wait_for("door.locked", door="lobby", by="removed")
    assert locked.event.data == {"door": "lobby", "by": "removed", "mode": "normal"}
    assert not gw.relays.is_on("lobby")
    assert gw.doors.status("lobby") is None


async def test_a_grant_just_before_the_unlock_schedule_ends_still_gets_its_time(
    start_gateway: GatewayFactory,
    gateway_config: ConfigFactory,
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
    event_waiter: Callable[[Gateway], EventWaiter],
) -> None:
    monkeypatch.setattr(doors, "SCHEDULE_TICK_S", 0.01)
    clock.now = datetime(2026, 12, 1, 12, 59, 58, tzinfo=ROME)  # the lobby closes at 13:00
    gw = await start_gateway(gateway_config(demo={"seed": False}))
    await gw.cache.apply_snapshot(demo_snapshot(unlock_seconds=1.0))
    waiter = event_waiter(gw)
    released = asyncio.Event()
    gw.relays.add_listener(lambda ch, on: released.set() if ch == "lobby" and not on else None)
    assert gw.doors.mode("lobby") is DoorMode.UNLOCKED

    assert await present(gw, "lobby", BOB) is Reason.GRANTED
    clock.now = datetime(2026, 12, 1, 13, 0, 1, tzinfo=ROME)
    await waiter.wait_for("door.mode_changed", door="lobby", mode="normal")

    # The schedule has ended, but the person just granted still has the door open...
    assert gw.relays.is_on("lobby")
    # ...until their unlock time runs out.
    await asyncio.wait_for(released.wait(), timeout=5)
    assert not gw.relays.is_on("lobby")


async def test_the_schedule_keeps_running_after_a_relay_fails(
    start_gateway: GatewayFactory,
    gateway_config: ConfigFactory,
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
    event_waiter: Callable[[Gateway], EventWaiter],
) -> None:
    monkeypatch.setattr(doors, "SCHEDULE_TICK_S", 0.01)
    clock.now = LOBBY_OPEN
    gw = await start_gateway()
    waiter = event_waiter(gw)
    real_drive = gw.relays.drive
    failures = {"left": 1}

    def flaky_drive(channel: str, on: bool) -> asyncio.Future[None]:
        if channel == "lobby" and failures["left"]:
            failures["left"] -= 1
            failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            failed.set_exception(CommandFailed(channel, "relay board did not answer"))
            return failed
        return real_drive(channel, on)

    monkeypatch.setattr(doors, "RELAY_RETRY_S", 0.01)
    monkeypatch.setattr(gw.relays, "drive", flaky_drive)
    clock.now = LOBBY_CLOSED
    # The schedule pass fails on the lobby: reported, then read back and locked by a recovery.
    [failed] = await waiter.wait_for("door.relay_failed", door="lobby")
    assert failed.event.data == {
        "door": "lobby",
        "energised": False,
        "by": "mode",
        "reason": "lobby: relay board did not answer",
    }
    # The relay is read back still energised, then locked.
    await waiter.wait_for("door.unlocked", door="lobby", by="recover", found=True)
    await waiter.wait_for("door.locked", door="lobby", by="recover")
    assert not gw.relays.is_on("lobby")
    assert gw.doors.state is ControllerState.RUNNING


# --- lockdown override tag --------------------------------------------------------------------


def demo_with(**changes: Any) -> codec.Snapshot:
    """The demo site at version 2: Bob on the security team, doors changed by ``changes``."""
    data = demo_json()
    data["version"] = 2
    for user in data["users"]:
        if user["id"] == "bob":
            user["tags"] = [*user["tags"], "security"]
    for door in data["doors"]:
        door.update(changes.get(door["id"], {}))
    return codec.snapshot_from_json(data)


async def test_the_override_tag_opens_a_door_in_lockdown_for_its_unlock_time_only(
    start_gateway: GatewayFactory,
    gateway_config: ConfigFactory,
    event_waiter: Callable[[Gateway], EventWaiter],
) -> None:
    gw = await start_gateway(gateway_config(demo={"seed": False}))
    await gw.cache.apply_snapshot(demo_with(front={"unlock_seconds": 0.5}))
    waiter = event_waiter(gw)
    await gw.doors.set_mode("front", DoorMode.LOCKDOWN, source="test")

    assert await present(gw, "front", ADA) is Reason.DOOR_LOCKDOWN  # staff is not enough
    assert not gw.relays.is_on("front")
    assert await present(gw, "front", BOB) is Reason.LOCKDOWN_OVERRIDE

    assert gw.relays.is_on("front")
    [unlocked] = await waiter.wait_for("door.unlocked", door="front", by="grant")
    assert unlocked.event.data["mode"] == "lockdown"
    await waiter.wait_for("door.locked", door="front", by="timeout")
    assert not gw.relays.is_on("front")
    assert gw.doors.mode("front") is DoorMode.LOCKDOWN


# --- first person in --------------------------------------------------------------------------


async def test_a_first_person_in_door_waits_for_its_first_grant_of_the_day(
    start_gateway: GatewayFactory,
    gateway_config: ConfigFactory,
    clock: Clock,
    event_waiter: Callable[[Gateway], EventWaiter],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(doors, "SCHEDULE_TICK_S", 0.01)
    clock.now = LOBBY_OPEN
    gw = await start_gateway(gateway_config(demo={"seed": False}))
    lobby = {"unlock_after_first_grant": True, "unlock_seconds": 0.5}
    await gw.cache.apply_snapshot(demo_with(lobby=lobby))
    waiter = event_waiter(gw)
    # The schedule is open, but nobody has arrived yet.
    assert gw.doors.mode("lobby") is DoorMode.NORMAL
    assert gw.doors.mode_at("lobby", LOBBY_OPEN) is DoorMode.NORMAL
    assert await present(gw, "lobby", UNKNOWN) is Reason.UNKNOWN_CREDENTIAL  # a denial is not it
    assert gw.doors.mode("lobby") is DoorMode.NORMAL

    assert await present(gw, "lobby", BOB) is Reason.GRANTED

    assert gw.doors.mode("lobby") is DoorMode.UNLOCKED
    [changed] = waiter.matching("door.mode_changed", door="lobby")
    assert changed.event.data == {
        "door": "lobby",
        "mode": "unlocked",
        "previous": "normal",
        "source": "first_grant",
    }
    assert gw.relays.is_on("lobby")
    # The schedule closes: locked; the next morning it waits for someone again.
    clock.now = LOBBY_CLOSED
    await waiter.wait_for("door.mode_changed", door="lobby", mode="normal")
    await waiter.wait_for("door.locked", door="lobby")  # Bob's unlock time ends first
    clock.now = LOBBY_OPEN + timedelta(days=1)
    gw.doors.refresh()  # the schedule pass of the next morning
    assert gw.doors.mode("lobby") is DoorMode.NORMAL
    assert not gw.relays.is_on("lobby")


async def test_a_grant_outside_the_schedule_does_not_count_as_the_first_person(
    start_gateway: GatewayFactory,
    gateway_config: ConfigFactory,
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(doors, "SCHEDULE_TICK_S", 0.01)
    clock.now = LOBBY_OPEN - timedelta(hours=2)  # 08:00, before the 09:00 opening
    gw = await start_gateway(gateway_config(demo={"seed": False}))
    await gw.cache.apply_snapshot(demo_with(lobby={"unlock_after_first_grant": True}))
    assert await present(gw, "lobby", ADA) is Reason.GRANTED

    clock.now = LOBBY_OPEN
    gw.doors.refresh()  # the schedule pass at the opening

    assert gw.doors.mode("lobby") is DoorMode.NORMAL


async def test_first_person_in_survives_a_restart_within_the_open_period(
    start_gateway: GatewayFactory, gateway_config: ConfigFactory, clock: Clock
) -> None:
    clock.now = LOBBY_OPEN
    config = gateway_config(demo={"seed": False})
    gw = await start_gateway(config)
    await gw.cache.apply_snapshot(demo_with(lobby={"unlock_after_first_grant": True}))
    assert await present(gw, "lobby", BOB) is Reason.GRANTED
    assert gw.doors.mode("lobby") is DoorMode.UNLOCKED
    await gw.stop()

    clock.now = LOBBY_OPEN + timedelta(minutes=30)
    again = await start_gateway(config)
    assert again.doors.mode("lobby") is DoorMode.UNLOCKED  # people are already in
    await again.stop()

    clock.now = LOBBY_OPEN + timedelta(days=1)  # the schedule closed in between
    third = await start_gateway(config)
    assert third.doors.mode("lobby") is DoorMode.NORMAL


# --- relay commands that fail ----------------------------------------------------------------


def failing_drive(gw: Gateway, door: str, *, times: int, carried_out: bool = False) -> list[int]:
    """Make the next ``times`` relay commands for ``door`` fail (after moving the relay when
    ``carried_out``: a lost acknowledgement); returns a counter of the failures left."""
    relays = sim_relays(gw)
    real_drive = relays.drive
    left = [times]

    def drive(channel: str, on: bool) -> asyncio.Future[None]:
        if channel != door or not left[0]:
            return real_drive(channel, on)
        left[0] -= 1
        if carried_out:
            relays.set(channel, on)
        failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        failed.set_exception(CommandFailed(channel, "no acknowledgement"))
        return failed

    setattr(relays, "drive", drive)  # noqa: B010 - the instance's method, for this test only
    return left


async def test_a_grant_after_a_failed_unlock_drives_the_relay_again_before_showing_green(
    start_gateway: GatewayFactory,
    monkeypatch: pytest.MonkeyPatch,
    event_waiter: Callable[[Gateway], EventWaiter],
) -> None:
    monkeypatch.setattr(doors, "RELAY_RETRY_S", 60.0)  # no read-back in between
    gw = await start_gateway()
    waiter = event_waiter(gw)
    failing_drive(gw, "front", times=1)

    assert await present(gw, "front", ADA) is Reason.GRANTED
    assert sim_readers(gw).shown["front"] is Feedback.FAULT
    assert not gw.relays.is_on("front")
    [failed] = await waiter.wait_for("door.relay_failed", door="front")
    assert failed.event.data == {
        "door": "front",
        "energised": True,
        "by": "grant",
        "reason": "front: no acknowledgement",
    }
    assert not waiter.matching("door.unlocked")  # never reported as done
    assert gw.doors.unlocked("front") is None  # not known

    assert await present(gw, "front", ADA) is Reason.GRANTED

    assert gw.relays.is_on("front")
    assert sim_readers(gw).shown["front"] is Feedback.GRANTED
    assert gw.doors.unlocked("front") is True


async def test_a_clean_read_back_ends_a_run_of_failures_so_the_next_is_reported(
    start_gateway: GatewayFactory,
    gateway_config: ConfigFactory,
    monkeypatch: pytest.MonkeyPatch,
    event_waiter: Callable[[Gateway], EventWaiter],
) -> None:
    monkeypatch.setattr(doors, "RELAY_RETRY_S", 0.01)
    gw = await start_gateway(gateway_config(demo={"seed": False}))
    await gw.cache.apply_snapshot(demo_snapshot(unlock_seconds=0.5))
    waiter = event_waiter(gw)
    failing_drive(gw, "front", times=1, carried_out=True)  # the board did it; its ACK was lost
    await present(gw, "front", ADA)
    await waiter.wait_for("door.relay_failed", door="front")
    # The read-back finds the relay as wanted: no correction, nothing more to report.
    await waiter.wait_for("door.locked", door="front", by="timeout")
    assert not waiter.matching("door.unlocked", found=True)

    failing_drive(gw, "front", times=1)
    await present(gw, "front", ADA)

    await waiter.wait_for("door.relay_failed", count=2, door="front")


async def test_emergency_open_grants_do_not_outlast_the_emergency(
    start_gateway: GatewayFactory, event_waiter: Callable[[Gateway], EventWaiter]
) -> None:
    gw = await start_gateway()
    waiter = event_waiter(gw)
    await gw.doors.set_mode("front", DoorMode.EMERGENCY_OPEN, source="fire-panel")
    assert await present(gw, "front", UNKNOWN) is Reason.EMERGENCY_OPEN

    await gw.doors.set_mode("front", DoorMode.NORMAL, source="fire-panel")

    assert not gw.relays.is_on("front")  # locked at once, not after an unlock time
    [locked] = await waiter.wait_for("door.locked", door="front")
    assert locked.event.data == {"door": "front", "by": "mode", "mode": "normal"}


async def test_a_read_back_asked_before_a_grant_does_not_undo_it(
    start_gateway: GatewayFactory,
    monkeypatch: pytest.MonkeyPatch,
    event_waiter: Callable[[Gateway], EventWaiter],
) -> None:
    gw = await start_gateway()
    waiter = event_waiter(gw)
    real_reports = gw.hardware.reports

    async def reports_overtaken_by_a_grant(door_ids: Iterable[str]) -> dict[str, DoorReport]:
        reports = await real_reports(door_ids)  # the relay is off when asked
        assert await present(gw, "front", ADA) is Reason.GRANTED  # meanwhile, someone badges
        return reports

    monkeypatch.setattr(gw.hardware, "reports", reports_overtaken_by_a_grant)
    relays = sim_relays(gw)
    drives: list[tuple[str, bool]] = []
    real_drive = relays.drive

    def counting_drive(channel: str, on: bool) -> asyncio.Future[None]:
        drives.append((channel, on))
        return real_drive(channel, on)

    monkeypatch.setattr(relays, "drive", counting_drive)

    await gw.doors.recover(["front"])

    assert gw.relays.is_on("front")
    # The stale "off" was not taken as the truth: no "found locked", no second unlock command.
    assert drives == [("front", True)]
    await waiter.wait_for("door.unlocked", door="front", by="grant")


# --- the reader's resting signal ------------------------------------------------------------


def contact(door: str, level: int) -> InputEvent:
    """The door's contact at a raw level (normally closed: 1 is open)."""
    return InputEvent(door, InputRole.CONTACT, level, board_clock_ms=0, address=0, index=0)


async def test_a_forced_door_reader_rests_on_the_alarm_through_mode_changes_and_decisions(
    start_gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    handlers: list[Callable[[InputEvent], None]] = []  # the simulated backend has no inputs
    monkeypatch.setattr(
        LocalHardware, "set_input_handler", lambda self, handler: handlers.append(handler)
    )
    gw = await start_gateway()
    [door_input] = handlers
    readers = sim_readers(gw)
    assert gw.doors.resting_signal("front") is Feedback.IDLE

    door_input(contact("front", 1))  # forced open
    assert gw.doors.resting_signal("front") is Feedback.DOOR_ALARM
    assert readers.shown.get("front") is Feedback.DOOR_ALARM
    for mode in (DoorMode.UNLOCKED, DoorMode.LOCKDOWN, DoorMode.NORMAL):
        await gw.doors.set_mode("front", mode, source="test")
        assert readers.shown.get("front") is Feedback.DOOR_ALARM  # still forced: no all-clear

    readers.feedback("front", Feedback.GRANTED)  # a decision's signal, run its course
    gw.doors.show_resting_signal("front")
    assert readers.shown.get("front") is Feedback.DOOR_ALARM

    door_input(contact("front", 0))
    assert gw.doors.resting_signal("front") is Feedback.IDLE
    assert readers.shown.get("front") is Feedback.IDLE
    assert gw.doors.resting_signal("garage") is Feedback.IDLE  # not a door of the site
    gw.doors.show_resting_signal("garage")
    assert "garage" not in readers.shown


@pytest.mark.parametrize(
    ("installer_s", "site_s", "used_s"),
    [(0.0, 5.0, 5.0), (12.0, 5.0, 12.0), (0.2, 5.0, 0.5), (0.0, 9000.0, 3600.0)],
)
def test_the_installers_unlock_time_wins_over_the_sites_within_the_range(
    installer_s: float, site_s: float, used_s: float
) -> None:
    from gateway.config import DoorEntry
    from gateway.model import Door

    settings = doors.door_settings(
        DoorEntry(unlock_s=installer_s), Door("front", "Front", unlock_seconds=site_s)
    )
    assert settings.unlock_s == used_s
