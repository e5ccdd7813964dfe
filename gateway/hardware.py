"""The door hardware the configuration names, behind one interface for the door controller.

Backends (``[hardware] backend``):

- ``virtual``, the embedded default: virtual door boards (``drivers.virtual_board``) run in this
  process on one pty, as on one RS-485 bus, and the gateway drives them through the unchanged
  serial driver and ``BoardBank``. Their doors open after an unlock and close by themselves.
- ``board``: real door boards on a serial or RS-485 bus (``BoardBank``).
- ``gpio``: relays on the Pi's own header (``GpioRelays``); no door inputs; readers simulated.
- ``simulated``: relays and readers in memory, no serial line (development and tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeAlias

from drivers.base import CredentialRead, Feedback, InputEvent, InputRole, ReaderBank, RelayBank
from drivers.board_bank import (
    BoardBank,
    BoardBankConfig,
    BoardEvent,
    BoardSpec,
    CommandFailed,
)
from drivers.gpio_relays import GpioError, GpioRelays, LibgpiodLines, LineSpec
from drivers.pty_pair import PtyPair
from drivers.serial_link import Rs485Options
from drivers.simulated import SimulatedReaders, SimulatedRelays
from drivers.virtual_board import BoardConfig, VirtualBoard
from drivers.virtual_bus import BusHub
from firmware_protocol import SafeState
from gateway.backoff import Backoff
from gateway.config import DOORS_PER_BOARD, Config, DoorEntry

_LOGGER = logging.getLogger(__name__)

#: A board that stopped answering is tried again after at most this long (seconds).
BOARD_RETRY_CAP_S = 30.0


@dataclass(frozen=True, slots=True)
class DoorReport:
    """What the hardware reports for one door now: its relay and raw inputs (None: not wired)."""

    relay_energised: bool
    contact: int | None = None
    tamper: bool = False


BoardHandler: TypeAlias = Callable[[BoardEvent], None]


class Hardware(Protocol):
    """Relays, readers and inputs of the site's doors, and the boards behind them."""

    @property
    def backend(self) -> str:
        """The configured backend's name."""

    @property
    def relays(self) -> RelayBank:
        """Every door's lock relay, by door id."""

    @property
    def readers(self) -> ReaderBank:
        """Every door's reader, by door id."""

    def set_input_handler(self, handler: Callable[[InputEvent], None]) -> None:
        """Deliver every door input change to ``handler``."""

    def set_board_handler(self, handler: BoardHandler) -> None:
        """Deliver boards going online or offline, and their faults, to ``handler``."""

    def board_doors(self, address: int) -> tuple[str, ...]:
        """The doors wired to the board at ``address``."""

    def wired(self, door: str) -> bool:
        """Whether this gateway drives ``door`` (a site's other doors belong to other gateways)."""

    async def start(self) -> None:
        """Bring the hardware up; boards that do not answer are reported, not raised."""

    async def stop(self) -> None:
        """Release everything; idempotent."""

    async def reports(self, doors: Iterable[str]) -> dict[str, DoorReport]:
        """What the hardware says about ``doors`` now (doors it cannot reach are left out)."""


class LocalHardware:
    """Relays in memory (``simulated``) or on GPIO lines (``gpio``); readers simulated."""

    def __init__(self, backend: str, relays: SimulatedRelays | GpioRelays) -> None:
        self.backend = backend
        self.relays: SimulatedRelays | GpioRelays = relays
        self.readers = SimulatedReaders()

    def set_input_handler(self, handler: Callable[[InputEvent], None]) -> None:
        """No door inputs on this backend."""

    def set_board_handler(self, handler: BoardHandler) -> None:
        """No boards on this backend."""

    def board_doors(self, address: int) -> tuple[str, ...]:
        """No boards on this backend."""
        return ()

    def wired(self, door: str) -> bool:
        """In memory every door is; on GPIO, the doors with a line."""
        relays = self.relays
        return not isinstance(relays, GpioRelays) or door in relays.channels

    async def start(self) -> None:
        """Request the GPIO lines (nothing to do in memory)."""
        if isinstance(self.relays, GpioRelays):
            self.relays.start()

    async def stop(self) -> None:
        """Put GPIO relays at rest and give the lines back; cancel pending pulses."""
        self.relays.close()

    async def reports(self, doors: Iterable[str]) -> dict[str, DoorReport]:
        """Each door's relay (read back from the chip on GPIO); there are no inputs."""
        relays = self.relays
        reports = {}
        for door in doors:
            try:
                if isinstance(relays, GpioRelays):
                    reports[door] = DoorReport(relays.read(door))
                else:
                    reports[door] = DoorReport(relays.is_on(door))
            except LookupError:
                continue  # not a door this gateway drives
            except GpioError as err:  # the chip refused: not reported, asked again later
                _LOGGER.warning("cannot read the relay of door %s: %s", door, err)
        return reports


class AutoWiring:
    """The default virtual board's relay/reader slots, given to door ids as the site names them.

    Without ``[[hardware.boards]]`` the virtual backend cannot know the site's doors when it
    starts (the site may arrive later from the cloud), so each door takes the next free slot the
    first time it is driven. A RelayBank and a ReaderBank over the bank, in door ids.
    """

    def __init__(self, bank: BoardBank, slots: Iterable[str]) -> None:
        self._bank = bank
        self._free = list(slots)
        self._slot_of: dict[str, str] = {}
        self._door_of: dict[str, str] = {}

    def slot(self, door: str) -> str:
        """The slot wired to ``door`` (the next free one the first time); LookupError if full."""
        slot = self._slot_of.get(door)
        if slot is None:
            if not self._free:
                raise LookupError(f"door {door!r}: every slot of the virtual board is taken")
            slot = self._free.pop(0)
            self._slot_of[door] = slot
            self._door_of[slot] = door
        return slot

    def has_room(self, door: str) -> bool:
        """Whether ``door`` has a slot or can still take one."""
        return door in self._slot_of or bool(self._free)

    def door(self, slot: str) -> str | None:
        """The door wired to ``slot``, if any."""
        return self._door_of.get(slot)

    def is_on(self, channel: str) -> bool:
        """Whether the door's relay is energised (False for a door never driven)."""
        slot = self._slot_of.get(channel)
        return slot is not None and self._bank.is_on(slot)

    def set(self, channel: str, on: bool) -> None:
        """RELAY_SET on the door's slot."""
        self._bank.set(self.slot(channel), on)

    def pulse(self, channel: str, seconds: float) -> None:
        """RELAY_PULSE on the door's slot."""
        self._bank.pulse(self.slot(channel), seconds)

    def drive(self, channel: str, on: bool) -> asyncio.Future[None]:
        """RELAY_SET on the door's slot, confirmed by the board's ACK."""
        return self._bank.drive(self.slot(channel), on)

    def add_listener(self, listener: Callable[[str, bool], None]) -> Callable[[], None]:
        """Relay changes, named by door."""
        return self._bank.add_listener(lambda slot, on: listener(self._door_of.get(slot, slot), on))

    def set_handler(self, handler: Callable[[CredentialRead], None]) -> None:
        """Reads, named by door (a slot no door has taken keeps its slot name)."""

        def named(read: CredentialRead) -> None:
            handler(
                dataclasses.replace(
                    read, reader_id=self._door_of.get(read.reader_id, read.reader_id)
                )
            )

        self._bank.set_handler(named)

    def feedback(self, reader_id: str, feedback: Feedback) -> None:
        """READER_FEEDBACK on the door's slot."""
        self._bank.feedback(self.slot(reader_id), feedback)


class BoardHardware:
    """Door boards on one bus through ``BoardBank``; with ``virtual``, boards simulated here."""

    def __init__(
        self,
        backend: str,
        bank_config: BoardBankConfig,
        *,
        poll_interval_s: float,
        heartbeat_interval_ms: int,
        virtual: Iterable[BoardConfig] = (),
        auto_wire: bool = False,
    ) -> None:
        """``auto_wire``: the bank's channels are slots that doors take as they appear."""
        self.backend = backend
        self._virtual_configs = tuple(virtual)
        self._pty: PtyPair | None = None
        self._hub: BusHub | None = None
        self.virtual_boards: dict[int, VirtualBoard] = {}
        if self._virtual_configs:
            # The pty exists from here so the bank can be built now; stop() closes it.
            self._pty = PtyPair()
            bank_config = dataclasses.replace(bank_config, url=self._pty.slave_path)
        self._board_handler: BoardHandler | None = None
        self.bank = BoardBank(
            bank_config,
            backoff=lambda: Backoff(base_s=0.5, cap_s=BOARD_RETRY_CAP_S),
            on_board_event=self._on_board_event,
            poll_interval_s=poll_interval_s,
            heartbeat_interval_ms=heartbeat_interval_ms,
        )
        self.wiring = AutoWiring(self.bank, bank_config.relays) if auto_wire else None
        self.relays: BoardBank | AutoWiring = self.wiring or self.bank
        self.readers: BoardBank | AutoWiring = self.wiring or self.bank
        self._doors_by_board: dict[int, tuple[str, ...]] = {}
        for door, port in bank_config.relays.items():
            self._doors_by_board[port.address] = (*self._doors_by_board.get(port.address, ()), door)

    def set_input_handler(self, handler: Callable[[InputEvent], None]) -> None:
        """Deliver every INPUT_CHANGED of a wired input to ``handler``."""
        wiring = self.wiring
        if wiring is None:
            self.bank.set_input_handler(handler)
            return

        def named(event: InputEvent) -> None:
            door = wiring.door(event.channel)
            if door is not None:  # inputs of a slot no door has taken mean nothing yet
                handler(dataclasses.replace(event, channel=door))

        self.bank.set_input_handler(named)

    def set_board_handler(self, handler: BoardHandler) -> None:
        """Deliver board online/offline/fault to ``handler``."""
        self._board_handler = handler

    def board_doors(self, address: int) -> tuple[str, ...]:
        """The doors whose relays are on the board at ``address``."""
        channels = self._doors_by_board.get(address, ())
        if self.wiring is None:
            return channels
        return tuple(d for d in map(self.wiring.door, channels) if d is not None)

    def wired(self, door: str) -> bool:
        """A door on a configured board, or one that can still take a default virtual slot."""
        if self.wiring is not None:
            return self.wiring.has_room(door)
        return door in self.bank.config.relays

    def virtual_door(self, door: str) -> tuple[VirtualBoard, int] | None:
        """The virtual board driving ``door`` and the door's index on it, if simulated here."""
        try:
            channel = door if self.wiring is None else self.wiring.slot(door)
        except LookupError:
            return None
        port = self.bank.config.relays.get(channel)
        if port is None or port.address not in self.virtual_boards:
            return None
        return self.virtual_boards[port.address], port.index

    async def start(self) -> None:
        """Power the virtual boards up, then open the bus and greet every board."""
        if self._pty is not None:
            self._hub = BusHub(self._pty.master_fd)
            for config in self._virtual_configs:
                board = VirtualBoard(config)
                await board.start(self._hub.endpoint())
                self.virtual_boards[config.address] = board
        await self.bank.start()

    async def stop(self) -> None:
        """Stop polling and close the bus, then power the virtual boards down."""
        await self.bank.stop()
        for board in self.virtual_boards.values():
            await board.stop()
        if self._hub is not None:
            self._hub.close()
            self._hub = None
        if self._pty is not None:
            self._pty.close()

    async def reports(self, doors: Iterable[str]) -> dict[str, DoorReport]:
        """STATE_REQUEST to each online board with one of ``doors``; offline boards are skipped."""
        wiring = self.wiring
        if wiring is not None:
            slots = {}
            for door in doors:
                with contextlib.suppress(LookupError):
                    slots[wiring.slot(door)] = door
            by_slot = await self._reports(slots)
            return {slots[slot]: report for slot, report in by_slot.items()}
        return await self._reports(doors)

    async def _reports(self, channels: Iterable[str]) -> dict[str, DoorReport]:
        wanted = set(channels)
        reports: dict[str, DoorReport] = {}
        for address, wired in self._doors_by_board.items():
            names = tuple(n for n in wired if n in wanted)
            if not names or not self.bank.status(address).online:
                continue
            try:
                snapshot = await self.bank.state(address)
            except CommandFailed as err:
                _LOGGER.warning("board %d did not report its state: %s", address, err)
                continue
            for name in names:
                inputs = snapshot.door_inputs(name)
                reports[name] = DoorReport(
                    snapshot.channels.get(name, False),
                    inputs.get(InputRole.CONTACT),
                    bool(inputs.get(InputRole.TAMPER, 0)),
                )
        return reports

    def _on_board_event(self, event: BoardEvent) -> None:
        if self._board_handler is not None:
            self._board_handler(event)


def build_hardware(config: Config) -> Hardware:
    """The backend ``config`` names."""
    hw = config.hardware
    if hw.backend == "simulated":
        return LocalHardware("simulated", SimulatedRelays())
    if hw.backend == "gpio":
        lines = {
            door: LineSpec(entry.gpio_line, entry.gpio_active_low, rest=_rest_energised(entry))
            for door, entry in config.doors.items()
            if entry.gpio_line
        }
        return LocalHardware("gpio", GpioRelays(LibgpiodLines(hw.gpio_chip), lines))
    boards = {b.address: b.doors for b in hw.boards}
    auto_wire = hw.backend == "virtual" and not boards
    if auto_wire:
        # No wiring given: one virtual board whose slots the site's doors take as they appear.
        boards = {1: tuple(f"slot-{n}" for n in range(1, DOORS_PER_BOARD + 1))}
    specs = {
        address: BoardSpec(
            safe_states=_safe_states(doors, config.doors),
            supervision_timeout_ms=hw.supervision_timeout_ms,
        )
        for address, doors in boards.items()
    }
    per_door = BoardBankConfig.per_door(hw.bus or "virtual", boards, baudrate=hw.baudrate)
    bank_config = dataclasses.replace(
        per_door,
        boards=specs,
        rs485=Rs485Options() if hw.rs485 else None,
    )
    virtual = (
        [
            BoardConfig(
                address=a,
                doors=len(d),
                physics=True,
                serial_number=b"VBRD%04d" % a,
                keypad=True,  # the simulated twin's readers all have keypads
            )
            for a, d in boards.items()
        ]
        if hw.backend == "virtual"
        else []
    )
    return BoardHardware(
        hw.backend,
        bank_config,
        poll_interval_s=hw.poll_interval_ms / 1000,
        heartbeat_interval_ms=hw.heartbeat_interval_ms,
        virtual=virtual,
        auto_wire=auto_wire,
    )


def _rest_energised(entry: DoorEntry) -> bool:
    """The relay level that leaves the lock as ``fallback`` says, for the door's wiring."""
    locked = entry.fallback == "locked"
    # A strike (fail_secure) is unlocked when energised; a maglock (fail_safe) is locked.
    return locked if entry.wiring == "fail_safe" else not locked


def _safe_states(doors: Iterable[str], entries: Mapping[str, DoorEntry]) -> dict[int, SafeState]:
    """Each relay's level without a gateway: the one that leaves its lock as ``fallback`` says."""
    default = DoorEntry()
    return {
        index: SafeState.FAIL_SAFE
        if _rest_energised(entries.get(door, default))
        else SafeState.FAIL_SECURE
        for index, door in enumerate(doors)
    }
