"""Tests of drivers.virtual_board over a real pty, driven by a gateway BoardLink."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator

import pytest

from drivers import virtual_board
from drivers.pty_pair import PtyPair
from drivers.virtual_board import EVENT_QUEUE_FRAMES, BoardConfig, BoardState, VirtualBoard
from firmware_protocol import (
    BROADCAST_ADDRESS,
    SEQ_MODULO,
    BoardFault,
    BoardInfo,
    Capability,
    Configure,
    FaultCode,
    Flags,
    Frame,
    Heartbeat,
    Hello,
    InputChanged,
    Message,
    MessageError,
    MessageType,
    NakCode,
    PinEntered,
    RelayPulse,
    RelaySet,
    SafeState,
    StateReport,
    StateRequest,
    decode_message,
    encode_frame,
    encode_message,
)
from firmware_protocol.session import NakReceived
from tests.drivers.test_board_bank import (
    RecordingHub,
    drain,
    slot_violations,
    unslotted_frames,
)
from tests.drivers.test_serial_link import ADDRESS, WAIT_S, Rig, pty_rig


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    """A board with a short supervision timeout, configured and polled."""
    async with pty_rig() as rig:
        rig.gw.start_polling()
        await rig.gw.handshake((SafeState.FAIL_SECURE, SafeState.FAIL_SAFE), 300)
        yield rig


async def test_commands_before_the_handshake_are_refused() -> None:
    async with pty_rig() as rig:
        assert rig.board.state is BoardState.UNCONFIGURED
        with pytest.raises(NakReceived) as caught:
            await rig.gw.request(RelayPulse(0, 100))
        assert caught.value.code is NakCode.NOT_CONFIGURED
        assert rig.board.pulse_count(0) == 0


async def test_bad_relay_index_is_refused(rig: Rig) -> None:
    with pytest.raises(NakReceived) as caught:
        await rig.gw.request(RelaySet(7, True))
    assert caught.value.code is NakCode.BAD_INDEX


async def test_a_retransmitted_pulse_is_carried_out_once(rig: Rig) -> None:
    session = rig.gw.session
    assert session is not None
    await rig.gw.stop_polling()
    # The same frame twice, as the session resends it when an ACK is lost.
    frame = Frame(ADDRESS, (session.next_seq + 1000) % 65536, *encode_message(RelayPulse(0, 5000)))
    rig.link.send_frame(frame)
    rig.link.send_frame(frame)
    async with asyncio.timeout(WAIT_S):
        await rig.board.wait_for(lambda: rig.board.relay_on(0))
    await rig.gw.request(RelaySet(1, True))  # ordered behind both copies on the line
    assert rig.board.pulse_count(0) == 1


async def test_gateway_silence_drives_relays_to_safe_states(rig: Rig) -> None:
    await rig.gw.request(RelaySet(0, True))  # unlocked: fail-secure must lock it
    assert rig.board.relay_bits == 0b01
    await rig.gw.stop_polling()
    async with asyncio.timeout(WAIT_S):
        await rig.board.wait_for(lambda: rig.board.state is BoardState.FALLBACK)
    assert not rig.board.relay_on(0)  # FAIL_SECURE: de-energised, the door locks
    assert rig.board.relay_on(1)  # FAIL_SAFE: energised, the door unlocks
    # Silent in FALLBACK; the fault comes once the gateway is back and says HELLO.
    with pytest.raises(NakReceived) as caught:
        await rig.gw.request(RelaySet(0, True))
    assert caught.value.code is NakCode.NOT_CONFIGURED
    rig.gw.start_polling()
    await rig.gw.request(Hello(1, 1000))
    fault = await rig.gw.expect(BoardFault)
    assert fault.code is FaultCode.SUPERVISION_LOST
    assert rig.board.state is BoardState.IDENTIFIED
    assert rig.board.relay_bits == 0b10  # kept until commanded after the handshake


async def test_broadcast_pulse_is_carried_out_once_and_unanswered(rig: Rig) -> None:
    frame = Frame(BROADCAST_ADDRESS, 77, *encode_message(RelayPulse(1, 5000)))
    rig.link.send_frame(frame)
    rig.link.send_frame(frame)
    async with asyncio.timeout(WAIT_S):
        await rig.board.wait_for(lambda: rig.board.relay_on(1))
    await rig.gw.request(RelaySet(0, False))
    assert rig.board.pulse_count(1) == 1


async def test_physics_opens_the_door_after_unlock_and_closes_it() -> None:
    config = BoardConfig(
        address=ADDRESS, doors=1, physics=True, physics_open_delay_s=0.02, physics_open_time_s=0.1
    )
    async with pty_rig(config) as rig:
        rig.gw.start_polling()
        await rig.gw.handshake((SafeState.FAIL_SECURE,))
        await rig.gw.request(RelayPulse(0, 50))
        await rig.gw.wait_for(
            lambda: sum(isinstance(m, InputChanged) for m in rig.gw.messages) >= 2
        )
        changes = [(m.input_index, m.level) for m in rig.gw.messages if isinstance(m, InputChanged)]
        assert changes == [(0, 1), (0, 0)]
        assert not rig.board.door_open(0)


# -- reply slots, frame by frame (SPEC.md, "Bus access") -----------------------------------

#: Long enough that the board stays supervised through a test that polls only when it chooses.
LONG_SUPERVISION_MS = 60_000


class RawGateway:
    """Gateway frames written straight onto the pty: nothing is retransmitted or sent unasked."""

    def __init__(self, pty: PtyPair, hub: RecordingHub) -> None:
        self._fd = pty.slave_fd
        self._hub = hub
        self._taken = 0  # frames of hub.heard already looked at
        self._seq = 1000

    def send(self, frame: Frame) -> None:
        """Write one frame, with the leading delimiter."""
        os.write(self._fd, b"\x00" + encode_frame(frame))

    def frame(self, message: Message, address: int = ADDRESS) -> Frame:
        """``message`` as the gateway's next new frame to ``address``."""
        self._seq += 1
        return Frame(address, self._seq, *encode_message(message))

    async def exchange(
        self, message: Message, *, answer: MessageType | None = MessageType.ACK
    ) -> list[Frame]:
        """Send ``message`` and serve the board's reply slot; the board's frames in it, in order.

        Each own frame of the board gets ``answer`` (a NAK says BUSY); with None it gets none,
        and the slot ends at it.
        """
        self.send(self.frame(message))
        frames = [await self.board_frame()]
        while frames[-1].flags & Flags.MORE:
            frames.append(await self.board_frame())
            if answer is None:
                break
            payload = b"" if answer is MessageType.ACK else bytes([NakCode.BUSY])
            self.send(Frame(ADDRESS, frames[-1].seq, answer, payload))
        return frames

    async def board_frame(self) -> Frame:
        """The next board frame on the bus."""
        heard = self._hub.heard
        await self._hub.wait_for(lambda: any(h.frame.from_board for h in heard[self._taken :]))
        index = next(i for i in range(self._taken, len(heard)) if heard[i].frame.from_board)
        self._taken = index + 1
        return heard[index].frame

    async def handshake(self) -> None:
        """HELLO (BOARD_INFO follows in its slot) and CONFIGURE with one relay."""
        await self.exchange(Hello(1, 1000))
        await self.exchange(Configure(LONG_SUPERVISION_MS, (SafeState.FAIL_SECURE,)))


@contextlib.asynccontextmanager
async def raw_rig(
    *, keypad: bool = False
) -> AsyncIterator[tuple[VirtualBoard, RawGateway, RecordingHub]]:
    """A one-door board on a recorded bus, and a raw gateway on the pty's other end."""
    loop = asyncio.get_running_loop()
    with PtyPair() as pty:
        hub = RecordingHub(pty.master_fd)
        board = VirtualBoard(BoardConfig(address=ADDRESS, doors=1, keypad=keypad))
        loop.add_reader(pty.slave_fd, drain, pty.slave_fd)  # the trace is read from the hub
        try:
            await board.start(hub.endpoint())
            yield board, RawGateway(pty, hub), hub
        finally:
            loop.remove_reader(pty.slave_fd)
            await board.stop()
            hub.close()


def shape(frames: list[Frame]) -> list[tuple[MessageType | int, bool]]:
    """Each frame's type and whether it carries MORE."""
    return [(f.msg_type, bool(f.flags & Flags.MORE)) for f in frames]


def changes(frames: list[Frame]) -> list[tuple[int, int]]:
    """(input, level) of each INPUT_CHANGED among ``frames``."""
    messages = [decode_message(f) for f in frames if f.msg_type == MessageType.INPUT_CHANGED]
    return [(m.input_index, m.level) for m in messages if isinstance(m, InputChanged)]


ACK, MORE_EVENT = (MessageType.ACK, False), (MessageType.INPUT_CHANGED, True)
ANNOUNCING_ACK, LAST_EVENT = (MessageType.ACK, True), (MessageType.INPUT_CHANGED, False)


async def test_queued_events_go_out_only_in_a_reply_slot_chained_with_more() -> None:
    async with raw_rig() as (board, gw, hub):
        await gw.handshake()
        await board.press_rex(0)
        await board.open_door(0)
        # A broadcast opens no slot: the board carries it out and keeps its events.
        mark = len(hub.heard)
        gw.send(gw.frame(Heartbeat(7), BROADCAST_ADDRESS))
        await hub.wait_for(lambda: len(hub.heard) > mark)  # heard, so delivered to the board
        assert board.gateway_uptime_ms == 7

        slot = await gw.exchange(Heartbeat(8))
        assert shape(slot) == [ANNOUNCING_ACK, MORE_EVENT, MORE_EVENT, LAST_EVENT]
        assert changes(slot) == [(1, 1), (1, 0), (0, 1)]
        assert shape(await gw.exchange(Heartbeat(9))) == [ACK]  # nothing left
        trace = [(h.frame.msg_type, h.frame.from_board) for h in hub.heard[mark:]]
        gateway_ack, board_event = (MessageType.ACK, False), (MessageType.INPUT_CHANGED, True)
        assert trace == [
            (MessageType.HEARTBEAT, False),  # the broadcast: no answer, no event
            (MessageType.HEARTBEAT, False),
            (MessageType.ACK, True),
            *[board_event, gateway_ack] * 3,  # each once, each after the one before is answered
            (MessageType.HEARTBEAT, False),
            (MessageType.ACK, True),
        ]
        assert unslotted_frames(hub.heard, ADDRESS) == []
        assert slot_violations(hub.heard, ADDRESS) == []


@pytest.mark.parametrize("answer", [MessageType.ACK, MessageType.NAK])
async def test_an_unanswered_head_is_resent_byte_for_byte_in_the_next_slot(
    answer: MessageType,
) -> None:
    async with raw_rig() as (board, gw, hub):
        await gw.handshake()
        await board.open_door(0)
        first = await gw.exchange(Heartbeat(1), answer=None)  # the gateway misses the event
        assert shape(first) == [ANNOUNCING_ACK, LAST_EVENT]
        await board.close_door(0)  # queued behind the unanswered head
        again = await gw.exchange(Heartbeat(2), answer=None)
        # Byte for byte: no MORE now either, though another frame is queued behind it.
        assert shape(again) == [ANNOUNCING_ACK, LAST_EVENT]
        assert encode_frame(again[1]) == encode_frame(first[1])
        # An answer that is not for the head is ignored, and opens no way for a frame.
        gw.send(Frame(ADDRESS, (first[1].seq - 1) % SEQ_MODULO, MessageType.ACK))
        done = await gw.exchange(Heartbeat(3), answer=answer)
        assert shape(done) == [ANNOUNCING_ACK, LAST_EVENT]
        assert done[1] == first[1]
        # The head carried no MORE: its answer ended the slot, the next event waits for one.
        later = await gw.exchange(Heartbeat(4), answer=answer)
        assert shape(later) == [ANNOUNCING_ACK, LAST_EVENT]
        assert changes(later) == [(0, 0)]
        assert shape(await gw.exchange(Heartbeat(5))) == [ACK]
        assert unslotted_frames(hub.heard, ADDRESS) == []


async def test_a_board_that_may_not_send_keeps_its_events_until_hello() -> None:
    async with raw_rig() as (board, gw, hub):
        await board.press_rex(0)
        # UNCONFIGURED: the refusal announces nothing, though events are queued.
        refused = await gw.exchange(Heartbeat(1))
        assert shape(refused) == [(MessageType.NAK, False)]
        slot = await gw.exchange(Hello(1, 1000))
        assert shape(slot) == [
            ANNOUNCING_ACK,
            MORE_EVENT,
            MORE_EVENT,
            (MessageType.BOARD_INFO, False),
        ]
        assert changes(slot) == [(1, 1), (1, 0)]
        assert board.state is BoardState.IDENTIFIED
        assert unslotted_frames(hub.heard, ADDRESS) == []


# -- what leaves the event queue unasked (SPEC.md, "Board events") --------------------------

#: The key age in these tests: far above what the board needs to send a key in a slot that
#: comes at once, so that a loaded machine does not lose the race to the expiry.
SHORT_KEY_AGE_S = 0.5
#: A key age no test waits out: a key presented with it is always collected in time.
LONG_KEY_AGE_S = 600.0
KEY, ANNOUNCING_KEY = (MessageType.KEY_PRESENTED, False), (MessageType.KEY_PRESENTED, True)


async def expired(board: VirtualBoard, count: int) -> None:
    """Return once ``count`` key presentations have expired on ``board``."""
    async with asyncio.timeout(WAIT_S + SHORT_KEY_AGE_S):
        await board.wait_for(lambda: board.keys_expired >= count)


async def handed_over(board: VirtualBoard) -> None:
    """Let the board's Session take its oldest queued frame in flight (no time passes)."""
    for _ in range(100):
        if board.session.in_flight is not None:
            return
        await asyncio.sleep(0)
    raise AssertionError("the board's Session took no frame in flight")


def keys_heard(hub: RecordingHub) -> list[Frame]:
    """Every KEY_PRESENTED the board put on the bus, retransmissions included."""
    return [h.frame for h in hub.heard if h.frame.msg_type == MessageType.KEY_PRESENTED]


async def test_a_key_not_collected_in_time_is_never_sent_and_one_collected_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with raw_rig() as (board, gw, hub):
        await gw.handshake()
        monkeypatch.setattr(virtual_board, "KEY_EVENT_MAX_AGE_S", SHORT_KEY_AGE_S)
        await board.present_key(0, b"WALKEDAW")  # and nobody gives the board a slot
        await expired(board, 1)
        assert shape(await gw.exchange(Heartbeat(1))) == [ACK]  # nothing left to send

        monkeypatch.setattr(virtual_board, "KEY_EVENT_MAX_AGE_S", LONG_KEY_AGE_S)
        collected = await board.present_key(0, b"STAYING!")
        slot = await gw.exchange(Heartbeat(2))
        assert shape(slot) == [ANNOUNCING_ACK, KEY]
        assert decode_message(slot[1]) == collected
        assert keys_heard(hub) == [slot[1]]
        assert board.keys_expired == 1
        assert unslotted_frames(hub.heard, ADDRESS) == []


async def test_a_key_sent_but_unanswered_in_time_is_not_resent_and_the_next_frame_follows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with raw_rig() as (board, gw, hub):
        await gw.handshake()
        monkeypatch.setattr(virtual_board, "KEY_EVENT_MAX_AGE_S", SHORT_KEY_AGE_S)
        await board.present_key(0, b"WALKEDAW")
        await board.open_door(0)  # queued behind the key
        missed = await gw.exchange(Heartbeat(1), answer=None)  # the gateway misses the key
        assert shape(missed) == [ANNOUNCING_ACK, ANNOUNCING_KEY]
        key = missed[1]
        await expired(board, 1)
        # A late answer to the key answers nothing now: ignored, and nothing follows it.
        gw.send(Frame(ADDRESS, key.seq, MessageType.ACK))
        slot = await gw.exchange(Heartbeat(2))
        assert shape(slot) == [ANNOUNCING_ACK, LAST_EVENT]
        assert changes(slot) == [(0, 1)]
        assert slot[1].seq == (key.seq + 1) % SEQ_MODULO  # the next seq, as after any frame
        assert shape(await gw.exchange(Heartbeat(3))) == [ACK]
        assert keys_heard(hub) == [key]  # sent once, never again
        assert unslotted_frames(hub.heard, ADDRESS) == []


async def test_an_expired_key_does_not_hold_up_the_events_behind_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with raw_rig() as (board, gw, hub):
        await gw.handshake()
        monkeypatch.setattr(virtual_board, "KEY_EVENT_MAX_AGE_S", SHORT_KEY_AGE_S)
        await board.present_key(0, b"WALKEDAW")  # the head, waiting for a slot
        await board.open_door(0)
        await board.close_door(0)
        await expired(board, 1)
        slot = await gw.exchange(Heartbeat(1))
        assert shape(slot) == [ANNOUNCING_ACK, MORE_EVENT, LAST_EVENT]
        assert changes(slot) == [(0, 1), (0, 0)]
        assert keys_heard(hub) == []
        assert unslotted_frames(hub.heard, ADDRESS) == []


async def test_a_full_queue_discards_events_and_queues_one_overflow_fault_once_there_is_room() -> (
    None
):
    async with raw_rig() as (board, gw, hub):
        await gw.handshake()
        await board.open_door(0)
        await handed_over(board)  # in flight: the queue's first frame
        for _ in range(7):
            await board.press_rex(0)
        await board.close_door(0)
        assert board.session.queued == EVENT_QUEUE_FRAMES - 1  # full
        await board.tamper(0)  # discarded
        await board.press_rex(0)  # discarded, both changes
        # Nothing else happens on the board: room, made by the poll, is what queues the fault.
        slot = await gw.exchange(Heartbeat(1))
        assert changes(slot) == [(0, 1), *[(1, 1), (1, 0)] * 7, (0, 0)]
        assert shape(slot) == [
            ANNOUNCING_ACK,
            *[MORE_EVENT] * EVENT_QUEUE_FRAMES,
            (MessageType.BOARD_FAULT, False),
        ]
        assert decode_message(slot[-1]) == BoardFault(FaultCode.EVENT_QUEUE_OVERFLOW)
        # Once. The gateway asks for the state it missed: the tamper input is active.
        report = await gw.exchange(StateRequest())
        assert shape(report) == [ANNOUNCING_ACK, (MessageType.STATE_REPORT, False)]
        state = decode_message(report[1])
        assert isinstance(state, StateReport)
        assert [i.level for i in state.inputs] == [0, 0, 1]
        assert unslotted_frames(hub.heard, ADDRESS) == []
        assert slot_violations(hub.heard, ADDRESS) == []


# -- keypad (SPEC.md, "PIN_ENTERED") -------------------------------------------------------

PIN = (MessageType.PIN_ENTERED, False)


def board_info(hub: RecordingHub) -> BoardInfo:
    """The BOARD_INFO the board put on the bus."""
    (frame,) = [h.frame for h in hub.heard if h.frame.msg_type == MessageType.BOARD_INFO]
    info = decode_message(frame)
    assert isinstance(info, BoardInfo)
    return info


def pins_heard(hub: RecordingHub) -> list[Frame]:
    """Every PIN_ENTERED the board put on the bus, retransmissions included."""
    return [h.frame for h in hub.heard if h.frame.msg_type == MessageType.PIN_ENTERED]


async def test_a_keypad_board_says_so_and_sends_a_typed_pin_in_its_slot_like_a_key() -> None:
    async with raw_rig(keypad=True) as (board, gw, hub):
        await gw.handshake()
        assert board_info(hub).capabilities == Capability.KEY_READER | Capability.KEYPAD
        typed = await board.enter_pin(0, "2580")
        assert typed == PinEntered(0, "2580")
        await board.open_door(0)  # queued behind the PIN, in order
        slot = await gw.exchange(Heartbeat(1))
        assert shape(slot) == [ANNOUNCING_ACK, (MessageType.PIN_ENTERED, True), LAST_EVENT]
        assert decode_message(slot[1]) == typed
        assert slot[1].payload == bytes.fromhex("00 04 32 35 38 30") + bytes(8)
        assert changes(slot) == [(0, 1)]
        assert shape(await gw.exchange(Heartbeat(2))) == [ACK]  # sent once
        assert pins_heard(hub) == [slot[1]]
        assert unslotted_frames(hub.heard, ADDRESS) == []
        assert slot_violations(hub.heard, ADDRESS) == []


async def test_a_board_without_a_keypad_never_sends_a_pin_and_says_so() -> None:
    async with raw_rig() as (board, gw, hub):
        await gw.handshake()
        assert board_info(hub).capabilities == Capability.KEY_READER  # as before keypads
        with pytest.raises(RuntimeError, match="no keypad"):
            await board.enter_pin(0, "1234")
        assert shape(await gw.exchange(Heartbeat(1))) == [ACK]
        assert pins_heard(hub) == []


async def test_a_pin_the_board_could_not_send_is_refused_before_it_is_queued() -> None:
    async with raw_rig(keypad=True) as (board, gw, hub):
        await gw.handshake()
        with pytest.raises(IndexError):
            await board.enter_pin(1, "1234")  # a one-door board has reader 0 only
        for digits in ("", "1" * 13, "12*4", "12#4"):
            with pytest.raises(MessageError):
                await board.enter_pin(0, digits)
        assert board.session.queued == 0
        assert shape(await gw.exchange(Heartbeat(1))) == [ACK]
        assert pins_heard(hub) == []


async def test_a_pin_not_collected_in_time_is_withdrawn_like_a_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with raw_rig(keypad=True) as (board, gw, hub):
        await gw.handshake()
        monkeypatch.setattr(virtual_board, "KEY_EVENT_MAX_AGE_S", SHORT_KEY_AGE_S)
        await board.enter_pin(0, "1111")  # and nobody gives the board a slot
        async with asyncio.timeout(WAIT_S + SHORT_KEY_AGE_S):
            await board.wait_for(lambda: board.pins_expired == 1)
        assert shape(await gw.exchange(Heartbeat(1))) == [ACK]  # nothing left to send
        assert pins_heard(hub) == []

        monkeypatch.setattr(virtual_board, "KEY_EVENT_MAX_AGE_S", LONG_KEY_AGE_S)
        collected = await board.enter_pin(0, "2222")
        slot = await gw.exchange(Heartbeat(2))
        assert shape(slot) == [ANNOUNCING_ACK, PIN]
        assert decode_message(slot[1]) == collected
        assert (board.pins_expired, board.keys_expired) == (1, 0)
        assert unslotted_frames(hub.heard, ADDRESS) == []
