"""The whole gateway against door boards: the embedded virtual boards, and a board on a pty.

The "virtual" backend runs the boards inside the gateway; the "board" backend is driven here by
a VirtualBoard the test owns on the master side of a pty, exactly as a real board on a serial
line (same serial driver, protocol, sessions and BoardBank).
"""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from drivers import base
from drivers.base import CredentialRead
from drivers.pty_pair import PtyPair
from drivers.virtual_board import BoardConfig, BoardState, FdStream, VirtualBoard
from firmware_protocol import BeepPattern, LedPattern, Message, NakCode, RelaySet
from firmware_protocol.frame import Frame
from gateway import codec
from gateway.app import Gateway
from gateway.hardware import BoardHardware
from gateway.mechkeys import respond
from gateway.model import CredentialKind, DoorMode, Reason
from gateway.site_keys import SITE_KEY_FILE
from tests.conftest import (
    ADA,
    BOB,
    UNKNOWN,
    ConfigFactory,
    EventWaiter,
    GatewayFactory,
    demo_json,
)

ADA_KEY = "A1A2A3A4A5A6A7A8"  # Ada's mechatronic key (assurance high)
SITE_KEY = bytes(range(16))

Waiter = Callable[[Gateway], EventWaiter]


def site_with_keys(unlock_seconds: float | None = None) -> codec.Snapshot:
    """The demo site (Ada has a mechatronic key) at version 2, unlock times optionally changed."""
    data = demo_json()
    data["version"] = 2
    assert {"id": "key-ada", "user": "ada", "kind": "mech_key", "value": ADA_KEY, "assurance": "high"} in data["credentials"]  # fmt: skip
    for door in data["doors"]:
        door["unlock_seconds"] = unlock_seconds or door["unlock_seconds"]
    return codec.snapshot_from_json(data)


def virtual_board(gw: Gateway, door: str) -> tuple[VirtualBoard, int]:
    """The embedded virtual board driving ``door``, and the door's index on it."""
    hardware = gw.hardware
    assert isinstance(hardware, BoardHardware)
    found = hardware.virtual_door(door)
    assert found is not None
    return found


def led(board: VirtualBoard, reader: int) -> LedPattern | int | None:
    """What the reader's LED shows (None: never told)."""
    feedback = board.reader_feedback(reader)
    return None if feedback is None else feedback.led


async def answer_key(board: VirtualBoard, index: int, site_key: bytes, key: str) -> None:
    """Present a genuine key at the board's reader ``index``."""
    challenge = os.urandom(16)
    key_id = bytes.fromhex(key)
    await board.present_key(index, key_id, challenge, respond(site_key, key_id, challenge))


# --- the embedded default: virtual boards inside the gateway --------------------------------


async def test_a_grant_unlocks_the_virtual_door_which_opens_closes_and_relocks(
    start_gateway: GatewayFactory, gateway_config: ConfigFactory, event_waiter: Waiter
) -> None:
    gw = await start_gateway(gateway_config(hardware={"backend": "virtual"}))
    waiter = event_waiter(gw)
    board, index = virtual_board(gw, "front")
    [online] = waiter.matching("board.online")
    assert online.event.data == {"address": 1, "firmware": "1.0.0", "serial": b"VBRD0001".hex()}

    decision = await gw.entry.handle(CredentialRead("front", "nfc_uid", ADA))

    assert decision.granted
    # Feedback is shown only after the board acknowledged the relay.
    assert board.relay_on(index)
    await board.wait_for(lambda: board.reader_feedback(index) is not None)
    assert led(board, index) is LedPattern.SOLID_GREEN
    await waiter.wait_for("door.opened", door="front", by="grant")
    await waiter.wait_for("door.closed", door="front")
    [locked] = await waiter.wait_for("door.locked", door="front", by="close")
    assert locked.event.data == {"door": "front", "by": "close", "mode": "normal"}
    await board.wait_for(lambda: not board.relay_on(index))
    assert not gw.relays.is_on("front")
    assert not waiter.matching("door.forced_open")


async def test_virtual_doors_report_forced_openings_rex_and_tamper(
    start_gateway: GatewayFactory, gateway_config: ConfigFactory, event_waiter: Waiter
) -> None:
    gw = await start_gateway(gateway_config(hardware={"backend": "virtual"}))
    waiter = event_waiter(gw)
    board, index = virtual_board(gw, "lobby")
    await waiter.wait_for("board.online")

    await board.force_open(index)
    [forced] = await waiter.wait_for("door.forced_open", door="lobby")
    assert forced.event.data == {"door": "lobby", "mode": "normal"}
    status = gw.doors.status("lobby")
    assert status is not None
    assert (status.door_open, status.forced_open_alarm) == (True, True)
    await board.wait_for(lambda: led(board, index) is LedPattern.BLINK_RED)  # the door alarm
    alarm = board.reader_feedback(index)
    assert alarm is not None
    assert (alarm.beep, alarm.duration_ms) == (BeepPattern.CONTINUOUS, 0)  # until it closes
    await board.close_door(index)
    await waiter.wait_for("door.forced_open", door="lobby", cleared=True)
    await board.wait_for(lambda: led(board, index) is LedPattern.OFF)

    await board.press_rex(index)
    [rex] = await waiter.wait_for("door.rex", door="lobby")
    assert rex.event.data == {"door": "lobby", "unlocks": True, "mode": "normal"}
    await waiter.wait_for("door.unlocked", door="lobby", by="rex")
    await board.wait_for(lambda: board.relay_on(index))

    await board.tamper(index)
    [tamper] = await waiter.wait_for("door.tamper", door="lobby")
    assert tamper.event.data == {"door": "lobby", "active": True}


async def test_a_card_at_a_forced_virtual_door_does_not_silence_its_alarm(
    start_gateway: GatewayFactory,
    gateway_config: ConfigFactory,
    event_waiter: Waiter,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(base, "FEEDBACK_SHOWN_S", 0.2)  # the decision's signal, then the alarm
    gw = await start_gateway(gateway_config(hardware={"backend": "virtual"}))
    waiter = event_waiter(gw)
    board, index = virtual_board(gw, "lobby")
    await waiter.wait_for("board.online")
    await board.force_open(index)
    await waiter.wait_for("door.forced_open", door="lobby")
    await board.wait_for(lambda: led(board, index) is LedPattern.BLINK_RED)

    decision = await gw.entry.handle(CredentialRead("lobby", "nfc_uid", UNKNOWN))

    assert not decision.granted
    await board.wait_for(lambda: led(board, index) is LedPattern.SOLID_RED)  # denied, for a while
    await board.wait_for(lambda: led(board, index) is LedPattern.BLINK_RED)  # the alarm again
    alarm = board.reader_feedback(index)
    assert alarm is not None
    assert (alarm.beep, alarm.duration_ms) == (BeepPattern.CONTINUOUS, 0)
    await board.close_door(index)
    await board.wait_for(lambda: led(board, index) is LedPattern.OFF)


async def test_a_mechatronic_key_on_the_virtual_board_opens_a_high_assurance_door(
    start_gateway: GatewayFactory, gateway_config: ConfigFactory, event_waiter: Waiter
) -> None:
    config = gateway_config(hardware={"backend": "virtual"})
    gw = await start_gateway(config)
    waiter = event_waiter(gw)
    key_file = config.gateway.state_dir / SITE_KEY_FILE
    assert key_file.stat().st_mode & 0o777 == 0o600  # made for this gateway, owner-only
    site_key = bytes.fromhex(key_file.read_text())
    await gw.cache.apply_snapshot(site_with_keys())
    board, index = virtual_board(gw, "server-room")

    await answer_key(board, index, site_key, ADA_KEY)

    [granted] = await waiter.wait_for("access.granted", door="server-room")
    assert granted.event.data["credential"] == "key-ada"
    assert granted.event.data["assurance"] == "high"
    await board.wait_for(lambda: board.relay_on(index))

    # A key answering under another site's key proves nothing.
    await answer_key(board, index, bytes(16), ADA_KEY)
    [denied] = await waiter.wait_for("access.denied", door="server-room")
    assert denied.event.data["reason"] == "proof_invalid"


async def test_lockdown_locks_the_virtual_door_and_the_board_confirms(
    start_gateway: GatewayFactory, gateway_config: ConfigFactory
) -> None:
    gw = await start_gateway(gateway_config(hardware={"backend": "virtual"}))
    board, index = virtual_board(gw, "front")
    assert await gw.doors.set_mode("front", DoorMode.EMERGENCY_OPEN, source="test")
    assert board.relay_on(index)

    assert await gw.doors.set_mode("front", DoorMode.LOCKDOWN, source="test")

    assert not board.relay_on(index)
    assert (
        await gw.entry.handle(CredentialRead("front", "nfc_uid", BOB))
    ).reason is Reason.DOOR_LOCKDOWN


# --- a board on a pty, owned by the test -----------------------------------------------------


@dataclass
class Bus:
    """A pty whose master side the test's boards sit on."""

    pty: PtyPair
    boards: list[VirtualBoard]

    async def power_up(self, board: VirtualBoard) -> VirtualBoard:
        await board.start(FdStream(self.pty.master_fd))
        self.boards.append(board)
        return board


@pytest.fixture
async def bus() -> AsyncIterator[Bus]:
    """A pty; the boards powered up on it are stopped at teardown."""
    with PtyPair() as pty:
        wire = Bus(pty, [])
        yield wire
        for board in wire.boards:
            await board.stop()


def board_config(
    gateway_config: ConfigFactory, bus: Bus, **doors: dict[str, Any]
) -> Any:  # a Config; Any keeps the call sites short
    """A gateway on the "board" backend: board 1 with front and lobby on ``bus``."""
    return gateway_config(
        hardware={
            "backend": "board",
            "bus": bus.pty.slave_path,
            "boards": [{"address": 1, "doors": ["front", "lobby"]}],
        },
        doors=doors,
    )


def write_site_key(state_dir: Path, key: bytes) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(state_dir / SITE_KEY_FILE, os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(key.hex())


async def test_door_states_are_recovered_from_the_board_after_a_gateway_restart(
    start_gateway: GatewayFactory, gateway_config: ConfigFactory, bus: Bus, event_waiter: Waiter
) -> None:
    # Front is an egress door: left unlocked whenever the gateway is not there.
    config = board_config(gateway_config, bus, front={"fallback": "unlocked"})
    board = await bus.power_up(VirtualBoard(BoardConfig(address=1, doors=2)))
    first = await start_gateway(config)
    await first.cache.apply_snapshot(site_with_keys())
    await board.wait_for(lambda: board.state is BoardState.CONFIGURED)
    assert not board.relay_on(0)
    await first.stop()
    assert board.relay_on(0)  # the fallback, confirmed by the board
    await board.open_door(0)  # someone walks out while no gateway runs
    await board.tamper(1)

    second = await start_gateway(config)
    waiter = event_waiter(second)

    # Found as the board reports it, then put back to what its mode wants.
    [found] = waiter.matching("door.unlocked", door="front", by="recover")
    assert found.event.data == {"door": "front", "by": "recover", "found": True, "mode": "normal"}
    [opened] = waiter.matching("door.opened", door="front")
    assert opened.event.data == {"door": "front", "by": "recover", "mode": "normal"}
    assert waiter.matching("door.tamper", door="lobby", active=True, by="recover")
    # The correction is recorded once the board confirmed it.
    await waiter.wait_for("door.locked", door="front", by="recover")
    assert not board.relay_on(0)
    assert not waiter.matching("door.forced_open")
    status = second.doors.status("front")
    assert status is not None
    assert (status.door_open, status.locked) == (True, True)


async def test_a_board_restart_is_noticed_and_its_doors_recovered(
    start_gateway: GatewayFactory,
    gateway_config: ConfigFactory,
    bus: Bus,
    event_waiter: Waiter,
    clock: Any,
) -> None:
    board = await bus.power_up(VirtualBoard(BoardConfig(address=1, doors=2)))
    gw = await start_gateway(board_config(gateway_config, bus))
    await gw.cache.apply_snapshot(site_with_keys())
    waiter = event_waiter(gw)
    assert await gw.doors.set_mode("lobby", DoorMode.EMERGENCY_OPEN, source="test")
    assert board.relay_on(1)

    await board.stop()  # power cut: the board forgets everything
    await waiter.wait_for("board.offline", address=1)
    reborn = await bus.power_up(VirtualBoard(BoardConfig(address=1, doors=2)))

    await waiter.wait_for("board.online", count=2, within_s=10)
    await reborn.wait_for(lambda: reborn.relay_on(1))  # emergency open again, from recovery
    assert not reborn.relay_on(0)


class NakRelayBoard(VirtualBoard):
    """A board whose relays are stuck: every RELAY_SET is refused."""

    def _check(self, frame: Frame, message: Message) -> NakCode | None:
        if isinstance(message, RelaySet):
            return NakCode.HARDWARE_FAULT
        return super()._check(frame, message)


async def test_a_relay_the_board_refuses_is_a_failed_unlock_never_a_success(
    start_gateway: GatewayFactory, gateway_config: ConfigFactory, bus: Bus, event_waiter: Waiter
) -> None:
    board = await bus.power_up(NakRelayBoard(BoardConfig(address=1, doors=2)))
    gw = await start_gateway(board_config(gateway_config, bus))
    await gw.cache.apply_snapshot(site_with_keys())
    waiter = event_waiter(gw)

    decision = await gw.entry.handle(CredentialRead("front", "nfc_uid", ADA))

    assert decision.granted  # the decision stands, and is recorded as such
    await waiter.wait_for("access.granted", door="front")
    [failed] = await waiter.wait_for("door.relay_failed", door="front")
    assert failed.event.data["energised"] is True
    assert failed.event.data["by"] == "grant"
    assert "HARDWARE_FAULT" in failed.event.data["reason"]
    await board.wait_for(lambda: board.reader_feedback(0) is not None)
    assert led(board, 0) is LedPattern.BLINK_AMBER  # not green
    assert not gw.relays.is_on("front")
    assert not board.relay_on(0)


async def test_a_mechatronic_key_on_a_board_with_the_installed_site_key(
    start_gateway: GatewayFactory, gateway_config: ConfigFactory, bus: Bus, event_waiter: Waiter
) -> None:
    config = board_config(gateway_config, bus)
    write_site_key(config.gateway.state_dir, SITE_KEY)
    board = await bus.power_up(VirtualBoard(BoardConfig(address=1, doors=2)))
    gw = await start_gateway(config)
    await gw.cache.apply_snapshot(site_with_keys())
    waiter = event_waiter(gw)

    await answer_key(board, 1, SITE_KEY, ADA_KEY)

    [granted] = await waiter.wait_for("access.granted", door="lobby")
    assert granted.event.data["credential"] == "key-ada"
    await board.wait_for(lambda: board.relay_on(1))


async def test_without_a_site_key_mechatronic_keys_are_refused(
    start_gateway: GatewayFactory, gateway_config: ConfigFactory, bus: Bus, event_waiter: Waiter
) -> None:
    board = await bus.power_up(VirtualBoard(BoardConfig(address=1, doors=2)))
    gw = await start_gateway(board_config(gateway_config, bus))
    await gw.cache.apply_snapshot(site_with_keys())
    waiter = event_waiter(gw)

    await answer_key(board, 0, SITE_KEY, ADA_KEY)

    [denied] = await waiter.wait_for("access.denied", door="front")
    assert denied.event.data["reason"] == "proof_invalid"
    assert not board.relay_on(0)
    assert not waiter.matching("door.unlocked")


# --- a noisy line ------------------------------------------------------------------------------


class NoisyStream(FdStream):
    """The pty master with a noisy line in both directions: bytes lost or flipped at random."""

    def __init__(self, fd: int, rng: random.Random, error_rate: float) -> None:
        super().__init__(fd)
        self._rng = rng
        self._rate = error_rate
        self.damaged = 0

    def _noise(self, data: bytes) -> bytes:
        out = bytearray()
        for byte in data:
            roll = self._rng.random()
            if roll < self._rate / 2:
                self.damaged += 1  # lost
            elif roll < self._rate:
                self.damaged += 1
                out.append(byte ^ (1 << self._rng.randrange(8)))  # one bit flipped
            else:
                out.append(byte)
        return bytes(out)

    def open(
        self, on_data: Callable[[bytes], None], on_lost: Callable[[Exception | None], None]
    ) -> None:
        super().open(lambda data: on_data(self._noise(data)), on_lost)

    def write(self, data: bytes) -> None:
        super().write(self._noise(data))


class CountingBoard(VirtualBoard):
    """Counts the relay commands it carries out (a retransmission must never run twice)."""

    relay_sets = 0

    def _apply(self, message: Message) -> None:
        if isinstance(message, RelaySet):
            self.relay_sets += 1
        super()._apply(message)


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_over_a_noisy_line_every_grant_and_door_event_happens_exactly_once(
    start_gateway: GatewayFactory,
    gateway_config: ConfigFactory,
    bus: Bus,
    event_waiter: Waiter,
    seed: int,
) -> None:
    board = CountingBoard(BoardConfig(address=1, doors=2))
    noisy = NoisyStream(bus.pty.master_fd, random.Random(seed), error_rate=0.004)
    await board.start(noisy)
    bus.boards.append(board)
    gw = await start_gateway(board_config(gateway_config, bus, front={"relock_on_close": False}))
    await gw.cache.apply_snapshot(site_with_keys(unlock_seconds=0.5))
    waiter = event_waiter(gw)
    rounds = 5

    for n in range(1, rounds + 1):
        await gw.entry.handle(CredentialRead("front", "nfc_uid", ADA))
        await board.wait_for(lambda: board.relay_on(0))
        await board.open_door(0)
        await waiter.wait_for("door.opened", count=n, door="front")
        await board.close_door(0)
        await waiter.wait_for("door.closed", count=n, door="front")
        await waiter.wait_for("door.locked", count=n, door="front", by="timeout", within_s=10)
        await board.wait_for(lambda: not board.relay_on(0))

    assert noisy.damaged > 0  # the line really was noisy
    assert len(waiter.matching("door.opened", door="front")) == rounds  # none lost, none twice
    assert len(waiter.matching("door.closed", door="front")) == rounds
    assert not waiter.matching("door.forced_open")
    assert not waiter.matching("door.relay_failed")
    assert not waiter.matching("board.offline")
    # One RELAY_SET on and one off per grant: a retransmission never runs twice.
    assert board.relay_sets == 2 * rounds


async def test_a_seventeenth_door_on_the_default_virtual_board_is_reported_not_driven(
    start_gateway: GatewayFactory, gateway_config: ConfigFactory, event_waiter: Waiter
) -> None:
    gw = await start_gateway(gateway_config(hardware={"backend": "virtual"}, demo={"seed": False}))
    waiter = event_waiter(gw)
    data = demo_json()
    data["doors"] = [{"id": f"door-{n:02}", "name": f"Door {n}"} for n in range(1, 18)]
    data["rules"] = [{"id": "staff", "name": "Staff", "tags": ["staff"], "doors": ["door-17"]}]
    data["schedules"] = []
    await gw.cache.apply_snapshot(codec.snapshot_from_json(data))

    await gw.doors.set_mode("door-17", DoorMode.EMERGENCY_OPEN, source="test")

    [failed] = await waiter.wait_for("door.relay_failed", door="door-17")
    assert "every slot of the virtual board is taken" in failed.event.data["reason"]
    board, index = virtual_board(gw, "door-16")  # the first sixteen have their slots
    assert index == 15
    assert not any(board.relay_on(i) for i in range(16))


async def test_site_doors_on_no_board_of_this_gateway_are_left_alone(
    start_gateway: GatewayFactory, gateway_config: ConfigFactory, bus: Bus, event_waiter: Waiter
) -> None:
    # The site's office-3 and server-room are driven by another gateway.
    await bus.power_up(VirtualBoard(BoardConfig(address=1, doors=2)))
    gw = await start_gateway(board_config(gateway_config, bus))
    await gw.cache.apply_snapshot(site_with_keys())
    waiter = event_waiter(gw)

    assert await gw.doors.set_mode("server-room", DoorMode.LOCKDOWN, source="test")
    assert gw.doors.mode("server-room") is DoorMode.LOCKDOWN  # decisions here still see it
    await gw.doors.set_mode("server-room", DoorMode.NORMAL, source="test")
    await gw.stop()

    assert gw.doors.status("server-room") is None
    assert gw.doors.status("front") is not None
    assert not waiter.matching("door.relay_failed")


async def test_a_lost_key_on_the_blacklist_is_named_even_once_no_longer_enrolled(
    start_gateway: GatewayFactory, gateway_config: ConfigFactory
) -> None:
    gw = await start_gateway(gateway_config(hardware={"backend": "virtual"}))
    lost = "5EC0FFEE00000001"  # the demo site's blacklist; no credential holds it
    assert gw.cache.view.credential(CredentialKind.MECHATRONIC_KEY, lost) is None
    await gw.doors.set_mode("server-room", DoorMode.EMERGENCY_OPEN, source="test")

    decision = await gw.simulator.present_key("server-room", lost)

    assert decision.reason is Reason.KEY_BLACKLISTED  # wins even over emergency open
    assert not decision.granted
    assert (await gw.simulator.present_key("server-room", ADA_KEY)).reason is Reason.EMERGENCY_OPEN
