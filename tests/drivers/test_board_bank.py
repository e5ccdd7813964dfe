"""End-to-end tests of drivers.board_bank: a BoardBank on a real pty, virtual boards on its master."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import pytest

from drivers import virtual_board
from drivers.base import CredentialRead, Feedback
from drivers.board_bank import (
    BankState,
    BoardBank,
    BoardBankConfig,
    BoardBankConfigError,
    BoardEvent,
    BoardFaultEvent,
    BoardOffline,
    BoardPort,
    BoardSpec,
    BoardStatus,
    CommandFailed,
    CommandRefused,
    InputBinding,
    InputEvent,
    InputRole,
    UnknownChannelError,
)
from drivers.pty_pair import PtyPair
from drivers.virtual_board import (
    EVENT_QUEUE_FRAMES,
    BoardConfig,
    BoardState,
    FdStream,
    TransportStream,
    VirtualBoard,
)
from drivers.virtual_bus import BusHub
from firmware_protocol import (
    UNACKNOWLEDGED_TYPES,
    BeepPattern,
    Capability,
    FaultCode,
    Flags,
    Frame,
    FrameDecoder,
    Heartbeat,
    LedPattern,
    Message,
    NakCode,
    ReaderFeedback,
    RelayPulse,
    SafeState,
)
from gateway.backoff import Backoff

WAIT_S = 3.0
DOORS: Mapping[int, Sequence[str]] = {5: ("front", "back"), 6: ("lobby", "garage")}


def fast_bank(
    config: BoardBankConfig,
    rec: Recorder,
    *,
    ack_timeout_s: float = 0.03,
    poll_interval_s: float = 0.02,
) -> BoardBank:
    """A bank with every timing shrunk for tests."""
    bank = BoardBank(
        config,
        backoff=lambda: Backoff(base_s=0.02, cap_s=0.1),
        on_board_event=rec.board_event,
        on_command_failed=rec.failed,
        poll_interval_s=poll_interval_s,
        ack_timeout_s=ack_timeout_s,
        max_retries=3,
        read_poll_interval_s=0.02,
    )
    bank.set_input_handler(rec.input)
    bank.set_handler(rec.read)
    bank.add_listener(rec.relay)
    return bank


def door_config(url: str, addresses: Sequence[int]) -> BoardBankConfig:
    """Two doors per board (relay 1 fail-safe), wired the virtual board's way."""
    spec = BoardSpec({1: SafeState.FAIL_SAFE}, supervision_timeout_ms=3000)
    return BoardBankConfig.per_door(url, {a: DOORS[a] for a in addresses}, spec=spec)


@dataclass
class Recorder:
    """Everything the bank reports, with an asyncio.Event gate to wait on."""

    board_events: list[BoardEvent] = field(default_factory=list)
    inputs: list[InputEvent] = field(default_factory=list)
    reads: list[CredentialRead] = field(default_factory=list)
    failures: list[tuple[str, CommandFailed]] = field(default_factory=list)
    relays: list[tuple[str, bool]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def _note(self) -> None:
        self.changed.set()

    def board_event(self, event: BoardEvent) -> None:
        self.board_events.append(event)
        self._note()

    def input(self, event: InputEvent) -> None:
        self.inputs.append(event)
        self._note()

    def read(self, read: CredentialRead) -> None:
        self.reads.append(read)
        self._note()

    def failed(self, channel: str, error: CommandFailed) -> None:
        self.failures.append((channel, error))
        self._note()

    def relay(self, channel: str, on: bool) -> None:
        self.relays.append((channel, on))
        self._note()

    def statuses(self, address: int) -> list[BoardStatus]:
        return [e for e in self.board_events if isinstance(e, BoardStatus) and e.address == address]

    async def wait_for(self, predicate: Callable[[], bool], within_s: float = WAIT_S) -> None:
        async with asyncio.timeout(within_s):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()


class RefusingBoard(VirtualBoard):
    """A virtual board that refuses every RELAY_PULSE on relay 1 with BAD_INDEX."""

    def _check(self, frame: Frame, message: Message) -> NakCode | None:
        if isinstance(message, RelayPulse) and message.relay_index == 1:
            return NakCode.BAD_INDEX
        return super()._check(frame, message)


class CountingBoard(VirtualBoard):
    """A virtual board that counts the HEARTBEATs it carries out (and signals each)."""

    heartbeats = 0

    def _apply(self, message: Message) -> None:
        super()._apply(message)
        if isinstance(message, Heartbeat):
            self.heartbeats += 1
            self._notify()


class HangingBoard(VirtualBoard):
    """A virtual board that never finishes carrying out a RELAY_PULSE (so never answers it)."""

    def __init__(self, config: BoardConfig | None = None) -> None:
        super().__init__(config)
        self.pulse_received = asyncio.Event()

    async def _handle(self, frame: Frame) -> NakCode | None:
        if frame.msg_type == RelayPulse.TYPE:
            self.pulse_received.set()
            await asyncio.Event().wait()
        return await super()._handle(frame)


@dataclass
class Rig:
    """A pty, the virtual boards on its master, and a started BoardBank on its slave."""

    pty: PtyPair
    bank: BoardBank
    rec: Recorder
    boards: dict[int, VirtualBoard]
    hub: BusHub | None
    started: list[VirtualBoard] = field(default_factory=list)

    async def power_up(self, board: VirtualBoard) -> None:
        """Start ``board`` on the bus (the one board's pty master, or the shared hub)."""
        drain(self.pty.master_fd)  # a board powering up hears nothing sent before
        stream = self.hub.endpoint() if self.hub is not None else FdStream(self.pty.master_fd)
        self.started.append(board)
        self.boards[board.config.address] = board
        await board.start(stream)


def drain(fd: int) -> None:
    """Discard whatever waits to be read on ``fd``."""
    os.set_blocking(fd, False)
    with contextlib.suppress(BlockingIOError, OSError):
        while os.read(fd, 4096):
            pass


@contextlib.asynccontextmanager
async def pty_rig(
    addresses: Sequence[int] = (5,),
    *,
    board_type: type[VirtualBoard] = VirtualBoard,
    config: Callable[[str], BoardBankConfig] | None = None,
    start: bool = True,
    ack_timeout_s: float = 0.03,
    poll_interval_s: float = 0.02,
    hub_type: type[BusHub] = BusHub,
    keypad: bool = False,
) -> AsyncIterator[Rig]:
    """Boards started, the bank started (unless ``start`` is False); all torn down in reverse."""
    with PtyPair() as pty:
        hub = hub_type(pty.master_fd) if len(addresses) > 1 else None
        rec = Recorder()
        bank_config = (config or (lambda url: door_config(url, addresses)))(pty.slave_path)
        bank = fast_bank(
            bank_config, rec, ack_timeout_s=ack_timeout_s, poll_interval_s=poll_interval_s
        )
        rig = Rig(pty, bank, rec, {}, hub)
        try:
            for address in addresses:
                await rig.power_up(board_type(BoardConfig(address=address, doors=2, keypad=keypad)))
            if start:
                await rig.bank.start()
            yield rig
        finally:
            await rig.bank.stop()
            for board in rig.started:
                await board.stop()
            if hub is not None:
                hub.close()


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    """One board (address 5, doors "front" and "back"), online."""
    async with pty_rig() as rig:
        yield rig


def reader_threads() -> list[threading.Thread]:
    """Board link reader threads still alive."""
    return [t for t in threading.enumerate() if t.name.startswith("board-link-reader")]


async def test_start_handshakes_and_reports_the_board_online() -> None:
    async with pty_rig(board_type=CountingBoard, start=False) as rig:
        await rig.bank.start()
        (status,) = rig.rec.statuses(5)
        assert status.online
        assert status.info is not None
        assert (status.info.relay_count, status.info.reader_count, status.info.input_count) == (
            2,
            2,
            6,
        )
        assert rig.bank.status(5).online
        board = rig.boards[5]
        assert board.state is BoardState.CONFIGURED
        assert board.safe_state(0) is SafeState.FAIL_SECURE
        assert board.safe_state(1) is SafeState.FAIL_SAFE
        assert not rig.bank.is_on("front")
        # With nothing to send, the poll loop addresses the board with HEARTBEATs.
        assert isinstance(board, CountingBoard)
        async with asyncio.timeout(WAIT_S):
            await board.wait_for(lambda: board.heartbeats >= 5)


async def test_pulse_runs_once_and_is_on_follows_the_acknowledgement(rig: Rig) -> None:
    board = rig.boards[5]
    rig.bank.pulse("front", 0.2)
    assert not rig.bank.is_on("front")  # queued, not yet acknowledged
    await rig.rec.wait_for(lambda: ("front", True) in rig.rec.relays)
    assert rig.bank.is_on("front")
    assert board.relay_on(0)
    assert board.pulse_count(0) == 1
    await rig.rec.wait_for(lambda: ("front", False) in rig.rec.relays)
    assert not rig.bank.is_on("front")
    assert not board.relay_on(0)
    assert board.pulse_count(0) == 1
    assert rig.rec.relays == [("front", True), ("front", False)]
    assert not rig.rec.failures


async def test_set_and_unset(rig: Rig) -> None:
    board = rig.boards[5]
    await rig.bank.set_relay("back", True)
    assert rig.bank.is_on("back")
    assert board.relay_on(1)
    rig.bank.set("back", False)
    await rig.rec.wait_for(lambda: ("back", False) in rig.rec.relays)
    assert not board.relay_on(1)
    assert rig.rec.relays == [("back", True), ("back", False)]
    with pytest.raises(UnknownChannelError):
        rig.bank.set("attic", True)


async def test_a_refused_command_is_reported_as_failed_not_as_done() -> None:
    async with pty_rig(board_type=RefusingBoard) as rig:
        rig.bank.pulse("back", 1.0)
        await rig.rec.wait_for(lambda: bool(rig.rec.failures))
        ((channel, error),) = rig.rec.failures
        assert channel == "back"
        assert isinstance(error, CommandRefused)
        assert "BAD_INDEX" in str(error)
        with pytest.raises(CommandRefused):
            await rig.bank.pulse_relay("back", 1.0)
        assert not rig.bank.is_on("back")
        assert rig.rec.relays == []
        assert rig.boards[5].pulse_count(1) == 0
        # A refusal says nothing about the board: it stays online and takes other commands.
        assert rig.bank.status(5).online
        await rig.bank.pulse_relay("front", 0.05)
        assert rig.boards[5].pulse_count(0) == 1


async def test_feedback_lands_on_the_reader(rig: Rig) -> None:
    board = rig.boards[5]
    rig.bank.feedback("front", Feedback.GRANTED)
    async with asyncio.timeout(WAIT_S):
        await board.wait_for(lambda: board.reader_feedback(0) is not None)
    assert board.reader_feedback(0) == ReaderFeedback(
        0, LedPattern.SOLID_GREEN, BeepPattern.SHORT, 3000
    )
    await rig.bank.send_feedback("back", Feedback.DENIED)
    assert board.reader_feedback(1) == ReaderFeedback(
        1, LedPattern.SOLID_RED, BeepPattern.DOUBLE, 3000
    )
    await rig.bank.send_feedback("back", Feedback.IDLE)
    assert board.reader_feedback(1) == ReaderFeedback(1, LedPattern.OFF, BeepPattern.NONE, 0)
    assert not rig.rec.failures


async def test_a_presented_key_arrives_as_a_credential_read_with_its_proof(rig: Rig) -> None:
    challenge = bytes(range(16))
    response = bytes(range(0xF0, 0x100))
    key_id = b"\x00\x01\x02\xabKEY!"
    await rig.boards[5].present_key(1, key_id, challenge, response)
    await rig.rec.wait_for(lambda: bool(rig.rec.reads))
    (read,) = rig.rec.reads
    assert read == CredentialRead("back", "mech_key", "000102AB4B455921", challenge + response)
    assert len(read.proof) == 32


#: A PIN no log line may show, and its bytes as a hex dump would show them.
SECRET_PIN = "739184"
SECRET_PIN_HEX = SECRET_PIN.encode().hex(" ")


def assert_pin_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    """No captured record shows ``SECRET_PIN``, as text or as hex (SPEC.md, "PIN_ENTERED")."""
    assert caplog.records  # DEBUG and up were captured: the check is not vacuous
    for record in caplog.records:
        text = record.getMessage()
        assert SECRET_PIN not in text, record
        assert SECRET_PIN_HEX not in text, record
    assert SECRET_PIN not in caplog.text


async def test_a_typed_pin_arrives_as_a_pin_credential_read_and_is_never_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with pty_rig(keypad=True) as rig:
        (status,) = rig.rec.statuses(5)
        assert status.info is not None
        assert Capability.KEYPAD in status.info.capabilities
        board = rig.boards[5]
        await board.enter_pin(1, SECRET_PIN)
        await rig.rec.wait_for(lambda: bool(rig.rec.reads))
        # A second entry at the other door, with leading zeros, arrives as typed.
        await board.enter_pin(0, "0042")
        await rig.rec.wait_for(lambda: len(rig.rec.reads) == 2)
    assert rig.rec.reads == [
        CredentialRead(reader_id="back", kind="pin", value=SECRET_PIN, proof=b""),
        CredentialRead(reader_id="front", kind="pin", value="0042", proof=b""),
    ]
    assert board.pins_expired == 0
    assert_pin_never_logged(caplog)


async def test_a_pin_at_a_reader_not_configured_is_dropped_and_logged_without_its_digits(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)

    def front_only(url: str) -> BoardBankConfig:
        spec = BoardSpec({1: SafeState.FAIL_SAFE}, supervision_timeout_ms=3000)
        return BoardBankConfig.per_door(url, {5: ("front",)}, spec=spec)

    async with pty_rig(keypad=True, config=front_only) as rig:
        board = rig.boards[5]
        await board.enter_pin(1, SECRET_PIN)  # reader 1: wired to no door
        await board.enter_pin(0, "1234")
        await rig.rec.wait_for(lambda: bool(rig.rec.reads))
    assert rig.rec.reads == [CredentialRead("front", "pin", "1234")]
    dropped = [r.getMessage() for r in caplog.records if "dropped a PIN" in r.getMessage()]
    assert dropped == ["Board 5 reader 1 is not configured: dropped a PIN of 6 digits"]
    assert_pin_never_logged(caplog)


async def test_inputs_arrive_as_typed_events(rig: Rig) -> None:
    board = rig.boards[5]
    await board.press_rex(0)
    await board.open_door(1)
    await board.tamper(0)
    await rig.rec.wait_for(lambda: len(rig.rec.inputs) >= 4)
    got = [(e.channel, e.kind, e.level) for e in rig.rec.inputs]
    assert got == [
        ("front", InputRole.REX, 1),
        ("front", InputRole.REX, 0),
        ("back", InputRole.CONTACT, 1),
        ("front", InputRole.TAMPER, 1),
    ]
    clocks = [e.board_clock_ms for e in rig.rec.inputs]
    assert clocks == sorted(clocks)
    assert (rig.rec.inputs[2].address, rig.rec.inputs[2].index) == (5, 3)


async def test_state_reflects_relays_and_inputs(rig: Rig) -> None:
    board = rig.boards[5]
    await rig.bank.set_relay("back", True)
    await board.open_door(0)
    await board.tamper(1)
    snapshot = await rig.bank.state(5)
    assert snapshot.address == 5
    assert snapshot.relays == (False, True)
    assert dict(snapshot.channels) == {"front": False, "back": True}
    assert [i.level for i in snapshot.inputs] == [1, 0, 0, 0, 0, 1]
    assert snapshot.door_inputs("front") == {
        InputRole.CONTACT: 1,
        InputRole.REX: 0,
        InputRole.TAMPER: 0,
    }
    assert snapshot.door_inputs("back")[InputRole.TAMPER] == 1
    assert snapshot.inputs[3].binding == InputBinding("back", InputRole.CONTACT)
    assert snapshot.board_clock_ms > 0


async def test_relay_state_is_recovered_from_the_board_at_handshake() -> None:
    async with pty_rig(start=False) as rig:
        # The board's relay is on before this bank exists (a gateway restart).
        board = rig.boards[5]
        board._set_relay(1, True)
        await rig.bank.start()
        assert rig.bank.is_on("back")
        assert not rig.bank.is_on("front")


async def test_board_faults_reach_the_board_event_callback(rig: Rig) -> None:
    await rig.boards[5].fault(FaultCode.READER_BUS, "reader 1 silent")
    await rig.rec.wait_for(
        lambda: any(isinstance(e, BoardFaultEvent) for e in rig.rec.board_events)
    )
    faults = [e for e in rig.rec.board_events if isinstance(e, BoardFaultEvent)]
    assert faults == [BoardFaultEvent(5, FaultCode.READER_BUS, "reader 1 silent")]


async def test_an_expired_key_is_never_read_and_the_events_behind_it_arrive(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(virtual_board, "KEY_EVENT_MAX_AGE_S", 0.2)
    async with pty_rig(start=False) as rig:
        board = rig.boards[5]
        # UNCONFIGURED: the board may not send its own frames, so nobody collects the key.
        await board.present_key(0, b"WALKEDAW")
        await board.open_door(1)
        async with asyncio.timeout(WAIT_S):
            await board.wait_for(lambda: board.keys_expired == 1)
        await rig.bank.start()
        await rig.rec.wait_for(lambda: bool(rig.rec.inputs))
        assert [(e.channel, e.kind, e.level) for e in rig.rec.inputs] == [
            ("back", InputRole.CONTACT, 1)
        ]
        monkeypatch.setattr(virtual_board, "KEY_EVENT_MAX_AGE_S", 600.0)  # never waited out
        await board.present_key(1, b"STAYING!")
        await rig.rec.wait_for(lambda: bool(rig.rec.reads))
        assert [(r.reader_id, r.value) for r in rig.rec.reads] == [
            ("back", b"STAYING!".hex().upper())
        ]
        assert board.keys_expired == 1


async def test_an_overflowing_board_reports_one_fault_once_its_queue_has_room(rig: Rig) -> None:
    board = rig.boards[5]
    for _ in range(EVENT_QUEUE_FRAMES):  # 32 changes, and no turn of the loop for a poll between
        await board.press_rex(0)
    assert board.session.queued == EVENT_QUEUE_FRAMES - 1  # full: the rest was discarded
    await rig.rec.wait_for(
        lambda: any(isinstance(e, BoardFaultEvent) for e in rig.rec.board_events)
    )
    await rig.bank.state(5)  # a STATE_REPORT queues behind everything before it
    faults = [e for e in rig.rec.board_events if isinstance(e, BoardFaultEvent)]
    assert faults == [BoardFaultEvent(5, FaultCode.EVENT_QUEUE_OVERFLOW, "")]
    got = [(e.index, e.level) for e in rig.rec.inputs]
    assert got == [(1, 1), (1, 0)] * (EVENT_QUEUE_FRAMES // 2 - 1) + [(1, 1)]


async def test_silent_board_goes_offline_and_comes_back_after_a_new_handshake(rig: Rig) -> None:
    old = rig.boards[5]
    await old.stop()  # the board stops answering
    await rig.rec.wait_for(lambda: len(rig.rec.statuses(5)) >= 2)
    offline = rig.rec.statuses(5)[-1]
    assert not offline.online
    assert "no answer" in offline.reason
    assert not rig.bank.status(5).online
    rig.bank.pulse("front", 0.1)
    await rig.rec.wait_for(lambda: bool(rig.rec.failures))
    assert isinstance(rig.rec.failures[0][1], BoardOffline)
    with pytest.raises(BoardOffline):
        await rig.bank.state(5)

    new = VirtualBoard(BoardConfig(address=5, doors=2, serial_number=b"VBRD0002"))
    await rig.power_up(new)
    await rig.rec.wait_for(lambda: len(rig.rec.statuses(5)) >= 3)
    online = rig.rec.statuses(5)[-1]
    assert online.online
    assert online.info is not None
    assert online.info.serial_number == b"VBRD0002"
    assert new.state is BoardState.CONFIGURED
    assert new.safe_state(1) is SafeState.FAIL_SAFE
    await rig.bank.pulse_relay("front", 0.05)
    assert new.pulse_count(0) == 1


async def test_a_restarted_board_is_configured_again(rig: Rig) -> None:
    # The board restarts between two polls: it refuses the next frame with NOT_CONFIGURED.
    await rig.boards[5].stop()
    new = VirtualBoard(BoardConfig(address=5, doors=2, serial_number=b"VBRD0003"))
    await rig.power_up(new)
    await rig.rec.wait_for(lambda: len(rig.rec.statuses(5)) >= 3)
    offline, online = rig.rec.statuses(5)[1:3]
    assert not offline.online
    assert online.online
    assert online.info is not None
    assert online.info.serial_number == b"VBRD0003"
    assert new.state is BoardState.CONFIGURED


async def test_two_boards_share_one_bus_and_a_silent_one_does_not_block_the_other() -> None:
    async with pty_rig((5, 6)) as rig:
        assert rig.bank.status(5).online
        assert rig.bank.status(6).online
        await rig.bank.pulse_relay("front", 0.05)
        await rig.bank.pulse_relay("garage", 0.05)
        assert rig.boards[5].pulse_count(0) == 1
        assert rig.boards[6].pulse_count(1) == 1
        assert rig.boards[5].pulse_count(1) == 0
        await rig.boards[6].press_rex(0)
        await rig.rec.wait_for(lambda: len(rig.rec.inputs) >= 2)
        assert {e.channel for e in rig.rec.inputs} == {"lobby"}

        await rig.boards[6].stop()
        await rig.rec.wait_for(lambda: len(rig.rec.statuses(6)) >= 2)
        assert not rig.rec.statuses(6)[-1].online
        # While board 6 is retried, board 5 keeps working.
        for _ in range(3):
            await rig.bank.pulse_relay("back", 0.02)
        assert rig.boards[5].pulse_count(1) == 3
        await rig.boards[5].open_door(0)
        await rig.rec.wait_for(lambda: any(e.channel == "front" for e in rig.rec.inputs))
        assert rig.bank.status(5).online
        assert [s.online for s in rig.rec.statuses(5)] == [True]

        await rig.power_up(VirtualBoard(BoardConfig(address=6, doors=2)))
        await rig.rec.wait_for(lambda: len(rig.rec.statuses(6)) >= 3)
        assert rig.rec.statuses(6)[-1].online
        await rig.bank.pulse_relay("lobby", 0.05)
        assert rig.boards[6].pulse_count(0) == 1


# -- reply slots on a shared bus (SPEC.md, "Bus access") -----------------------------------


class FalseMoreBoard(VirtualBoard):
    """Once ``lying`` is set, announces a frame (MORE) on every answer and never sends one."""

    lying = False

    def _write_frame(self, frame: Frame) -> None:
        if self.lying and frame.msg_type in UNACKNOWLEDGED_TYPES:
            frame = replace(frame, flags=frame.flags | Flags.MORE)
        super()._write_frame(frame)


@dataclass(frozen=True)
class Heard:
    """One frame on the shared bus, and when (time.monotonic()) it was on the wire."""

    at: float
    frame: Frame


class RecordingHub(BusHub):
    """A BusHub that decodes every frame on the wire, both ways, in the order they went."""

    def __init__(self, fd: int) -> None:
        super().__init__(fd)
        self.heard: list[Heard] = []
        self.changed = asyncio.Event()
        self._from_gateway = FrameDecoder()
        self._from_boards = FrameDecoder()
        # Joined before any board, so a gateway frame is heard before a board can react to it.
        self.endpoint().open(lambda data: self._hear(self._from_gateway, data), lambda _: None)

    def write(self, data: bytes) -> None:
        """A board's bytes: heard, then put on the wire."""
        self._hear(self._from_boards, data)
        super().write(data)

    def _hear(self, decoder: FrameDecoder, data: bytes) -> None:
        now = time.monotonic()
        for item in decoder.feed(data):
            if isinstance(item, Frame):
                self.heard.append(Heard(now, item))
                self.changed.set()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds, checked after each frame heard."""
        async with asyncio.timeout(WAIT_S):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()


def slot_violations(heard: Sequence[Heard], address: int) -> list[Frame]:
    """Gateway frames heard while board ``address`` had the bus by SPEC.md "Bus access".

    The board has it after a frame of its with MORE until its next frame arrives, and after a
    frame of its that is answered until the gateway's answer; meanwhile the gateway sends only
    that answer.
    """
    announced = False
    unanswered: int | None = None
    violations: list[Frame] = []
    for frame in (item.frame for item in heard):
        if frame.from_board:
            if frame.address == address:
                announced = bool(frame.flags & Flags.MORE)
                if frame.needs_ack:
                    unanswered = frame.seq
        elif frame.address == address and not frame.needs_ack and frame.seq == unanswered:
            unanswered = None
        elif announced or unanswered is not None:
            violations.append(frame)
    return violations


def more_frames(heard: Sequence[Heard], address: int, *, answers: bool) -> list[Frame]:
    """Board ``address``'s frames with MORE: its answers, or its own frames."""
    return [
        item.frame
        for item in heard
        if item.frame.from_board
        and item.frame.address == address
        and item.frame.flags & Flags.MORE
        and item.frame.needs_ack is not answers
    ]


def unslotted_frames(heard: Sequence[Heard], address: int) -> list[Frame]:
    """Board ``address``'s frames heard outside its reply slots by SPEC.md "Bus access".

    A gateway frame to the board that needs an answer lets the board answer it; the board's
    answer with MORE, or the gateway's answer to the board's own frame with MORE, lets it send
    one frame of its own. Any other gateway frame ends that.
    """
    answer_to: int | None = None  # the seq of the gateway frame the board may answer
    own_due = False  # the board announced its next own frame
    last_own: Frame | None = None
    violations: list[Frame] = []
    for frame in (item.frame for item in heard):
        if not frame.from_board:
            to_board = frame.address == address
            answer_to = frame.seq if to_board and frame.needs_ack else None
            own_due = (
                to_board
                and not frame.needs_ack
                and last_own is not None
                and last_own.seq == frame.seq
                and bool(last_own.flags & Flags.MORE)
            )
        elif frame.address != address:
            continue
        elif not frame.needs_ack:
            allowed, answer_to = frame.seq == answer_to, None
            own_due = allowed and bool(frame.flags & Flags.MORE)
            if not allowed:
                violations.append(frame)
        else:
            if not own_due:
                violations.append(frame)
            own_due, last_own = False, frame
    return violations


async def burst(board: VirtualBoard) -> None:
    """Thirteen input changes at once: with a STATE_REPORT, fewer than the event queue holds."""
    await board.press_rex(0)
    await board.open_door(1)
    await board.press_rex(1)
    await board.tamper(0)
    await board.open_door(0)
    await board.close_door(1)
    await board.tamper(0, False)
    await board.press_rex(0)
    await board.close_door(0)
    await board.tamper(1)


BURST_INPUTS = [
    (1, 1), (1, 0), (3, 1), (4, 1), (4, 0), (2, 1), (0, 1), (3, 0), (2, 0), (1, 1), (1, 0),
    (0, 0), (5, 1),
]  # fmt: skip


async def test_two_boards_bursting_send_only_in_their_slots_and_every_event_arrives_once() -> None:
    # Polls every millisecond: each worker always waits for the bus, so a slot that ended early
    # would be taken by the other board at once. A long timeout: only a hang would end a slot.
    async with pty_rig(
        (5, 6), hub_type=RecordingHub, poll_interval_s=0.001, ack_timeout_s=1.0
    ) as rig:
        hub = rig.hub
        assert isinstance(hub, RecordingHub)
        # Both boards' changes queue at once and go out in chains of frames with MORE.
        await asyncio.gather(burst(rig.boards[5]), burst(rig.boards[6]))
        # A STATE_REPORT queues behind a board's events: once it is in, every event is.
        await asyncio.gather(rig.bank.state(5), rig.bank.state(6))
        heard = list(hub.heard)
        for address in (5, 6):
            got = [(e.index, e.level) for e in rig.rec.inputs if e.address == address]
            assert got == BURST_INPUTS, address  # each once, in order
            assert more_frames(heard, address, answers=True), f"{address} never announced"
            assert len(more_frames(heard, address, answers=False)) >= 3, f"{address}: no chain"
            assert slot_violations(heard, address) == []
            assert unslotted_frames(heard, address) == []
            assert [s.online for s in rig.rec.statuses(address)] == [True]


async def test_a_board_that_announces_a_frame_and_stays_silent_holds_the_bus_one_timeout() -> None:
    quiet_s = 0.05  # the bank's ack timeout: RETRANSMIT_TIMEOUT_MS
    async with pty_rig(
        (5, 6), board_type=FalseMoreBoard, hub_type=RecordingHub, ack_timeout_s=quiet_s
    ) as rig:
        hub = rig.hub
        liar = rig.boards[5]
        assert isinstance(hub, RecordingHub)
        assert isinstance(liar, FalseMoreBoard)
        liar.lying = True
        start = len(hub.heard)
        await hub.wait_for(lambda: len(more_frames(hub.heard[start:], 5, answers=True)) >= 5)
        await rig.bank.pulse_relay("garage", 0.05)  # the other board is still served
        assert rig.boards[6].pulse_count(1) == 1
        liar.lying = False
        heard = hub.heard[start:]
        gaps = [gap for item in heard if (gap := bus_hold(heard, item)) is not None]
        assert len(gaps) >= 4
        # At least one timeout (the slot was held), and nowhere near a hang.
        assert all(quiet_s * 0.9 <= gap < 1.0 for gap in gaps), gaps
        assert rig.bank.status(5).online
        assert [s.online for s in rig.rec.statuses(5)] == [True]


def bus_hold(heard: Sequence[Heard], answer: Heard) -> float | None:
    """Seconds from a board's answer with MORE to the gateway's next new frame (None: none)."""
    frame = answer.frame
    if not (frame.from_board and not frame.needs_ack and frame.flags & Flags.MORE):
        return None
    for item in heard[heard.index(answer) + 1 :]:
        later = item.frame
        if later.from_board or (later.address, later.seq) == (frame.address, frame.seq):
            continue  # a board's frame, or the answered request sent again
        return item.at - answer.at
    return None


async def test_an_index_the_board_lacks_keeps_it_offline_with_a_clear_reason() -> None:
    def config(url: str) -> BoardBankConfig:
        return BoardBankConfig(
            url,
            {5: BoardSpec()},
            relays={"front": BoardPort(5, 0), "annex": BoardPort(5, 7)},
        )

    async with pty_rig(config=config) as rig:
        (status,) = rig.rec.statuses(5)
        assert not status.online
        assert "relay 7 ('annex')" in status.reason
        assert "2 relays" in status.reason
        with pytest.raises(BoardOffline):
            await rig.bank.pulse_relay("front", 0.1)
        assert rig.boards[5].state is not BoardState.CONFIGURED


async def test_stop_leaves_no_task_or_thread_and_fails_later_commands() -> None:
    async with pty_rig() as rig:
        await rig.bank.pulse_relay("front", 0.05)
        await rig.bank.stop()
        assert rig.bank.run_state is BankState.STOPPED
        assert not reader_threads()
        await rig.bank.stop()  # idempotent
        with pytest.raises(BoardOffline):
            await rig.bank.set_relay("front", True)
        await rig.boards[5].stop()
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert not others
    assert not reader_threads()


async def test_a_failed_link_is_rebuilt() -> None:
    boards: list[VirtualBoard] = []
    streams: list[TransportStream] = []
    connected = asyncio.Event()

    async def serve(stream: TransportStream) -> None:
        await stream.connected.wait()
        board = VirtualBoard(BoardConfig(address=5, doors=2))
        boards.append(board)
        await board.start(stream)
        connected.set()

    tasks: set[asyncio.Task[None]] = set()

    def factory() -> TransportStream:
        stream = TransportStream()
        streams.append(stream)
        task = asyncio.create_task(serve(stream), name="test-serve")
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return stream

    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    rec = Recorder()
    bank = fast_bank(door_config(f"socket://127.0.0.1:{port}", (5,)), rec)
    try:
        await bank.start()
        assert bank.status(5).online
        streams[0].close()  # the ser2net end hangs up
        await rec.wait_for(lambda: len(rec.statuses(5)) >= 3)
        offline, online = rec.statuses(5)[1:3]
        assert not offline.online
        assert "failed" in offline.reason
        assert online.online
        assert len(boards) == 2
        await bank.pulse_relay("back", 0.05)
        assert boards[1].pulse_count(1) == 1
    finally:
        await bank.stop()
        for board in boards:
            await board.stop()
        server.close()
        await server.wait_closed()
    assert not reader_threads()


async def test_stop_fails_a_command_in_flight() -> None:
    # Retransmissions 1 s apart: the pulse is still unanswered when the bank stops.
    async with pty_rig(board_type=HangingBoard, ack_timeout_s=1.0) as rig:
        board = rig.boards[5]
        assert isinstance(board, HangingBoard)
        pending = asyncio.create_task(rig.bank.pulse_relay("front", 1.0))
        async with asyncio.timeout(WAIT_S):
            await board.pulse_received.wait()
        await rig.bank.stop()
        with pytest.raises(BoardOffline):
            await pending
        assert not rig.bank.is_on("front")


def test_config_is_validated() -> None:
    with pytest.raises(BoardBankConfigError, match="not configured"):
        BoardBankConfig("/dev/null", {5: BoardSpec()}, relays={"x": BoardPort(6, 0)})
    with pytest.raises(BoardBankConfigError, match="both"):
        BoardBankConfig(
            "/dev/null", {5: BoardSpec()}, relays={"x": BoardPort(5, 0), "y": BoardPort(5, 0)}
        )
    with pytest.raises(BoardBankConfigError, match="kind"):
        BoardBankConfig(
            "/dev/null",
            {5: BoardSpec()},
            inputs={BoardPort(5, 0): InputBinding("x", "doorbell")},  # type: ignore[arg-type]
        )
    with pytest.raises(BoardBankConfigError, match="address"):
        BoardBankConfig("/dev/null", {0: BoardSpec()})
    with pytest.raises(BoardBankConfigError, match="supervision"):
        BoardSpec(supervision_timeout_ms=50)
    with pytest.raises(BoardBankConfigError, match="heartbeat"):
        BoardBank(
            BoardBankConfig("/dev/null", {5: BoardSpec(supervision_timeout_ms=1000)}),
            backoff=Backoff,
        )
    # Plain tuples are accepted and normalised.
    config = BoardBankConfig(
        "/dev/null",
        {5: BoardSpec()},
        relays={"x": (5, 1)},  # type: ignore[dict-item]
        inputs={(5, 2): ("x", "rex")},  # type: ignore[dict-item]
    )
    assert config.relays["x"] == BoardPort(5, 1)
    assert config.inputs[BoardPort(5, 2)] == InputBinding("x", InputRole.REX)
