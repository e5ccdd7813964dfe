"""Tests for firmware_protocol.session: a gateway and a board session end to end over fake links."""

from __future__ import annotations

import asyncio
import gc
import logging
import random
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_protocol import session as session_module
from firmware_protocol.errors import MessageError, ProtocolError
from firmware_protocol.frame import SEQ_MODULO, Flags, Frame, MessageType, NakCode
from firmware_protocol.session import (
    HANDLER_FAILED_NAK,
    MAX_RETRIES,
    QUEUE_SIZE,
    AckTimeout,
    FrameReceiver,
    LinkClosed,
    NakReceived,
    Session,
    SessionError,
    SessionState,
    Withdrawn,
)

ADDRESS = 7
FAST_S = 0.005  # the ack timeout in tests
GATE_TIMEOUT_S = 10.0  # a gate that never opens fails the test instead of hanging it

Predicate = Callable[[Frame], bool]


class _Watch:
    def __init__(self, predicate: Predicate, count: int) -> None:
        self.predicate = predicate
        self.left = count
        self.gate = asyncio.Event()

    def saw(self, frame: Frame) -> None:
        if self.predicate(frame):
            self.left -= 1
            if self.left <= 0:
                self.gate.set()


class End:
    """One end of a ``Link``: the transport a session writes to."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self.peer: FrameReceiver | None = None  # the session at the other end

    def send_frame(self, frame: Frame) -> None:
        self.link.carry(frame, self.peer)


class Link:
    """An in-memory frame link: exact, delayed, seeded-random lossy, duplicating, or dead."""

    def __init__(
        self,
        *,
        delay_s: float | None = None,  # None: delivered inside send_frame
        loss: float = 0.0,  # fraction of frames dropped, either way, answers included
        seed: int = 0,
        duplicate: bool = False,
    ) -> None:
        self.delay_s = delay_s
        self.loss = loss
        self.rng = random.Random(seed)
        self.duplicate = duplicate
        self.dead = False
        self.drop: Predicate = lambda frame: False  # a test's own filter
        self.written: list[Frame] = []  # every frame either end wrote, delivered or not
        self.dropped = 0
        self.gateway_end = End(self)
        self.board_end = End(self)
        self._watches: list[_Watch] = []

    def when(self, predicate: Predicate, count: int = 1) -> asyncio.Event:
        """A gate that opens once ``count`` more frames matching ``predicate`` are written."""
        watch = _Watch(predicate, count)
        self._watches.append(watch)
        return watch.gate

    def carry(self, frame: Frame, receiver: FrameReceiver | None) -> None:
        self.written.append(frame)
        for watch in self._watches:
            watch.saw(frame)
        lost = self.loss > 0 and self.rng.random() < self.loss
        if receiver is None or self.dead or self.drop(frame) or lost:
            self.dropped += 1
            return
        for _ in range(2 if self.duplicate else 1):
            if self.delay_s is None:
                receiver.frame_received(frame)
            else:
                asyncio.get_running_loop().call_later(self.delay_s, receiver.frame_received, frame)


class Tap:
    """A transport that only records: for feeding a session frames by hand."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []

    def send_frame(self, frame: Frame) -> None:
        self.frames.append(frame)


class Handler:
    """An application handler that records each frame, optionally waits on a gate, answers."""

    def __init__(
        self,
        answer: Callable[[Frame], NakCode | None] = lambda frame: None,
        gate: asyncio.Event | None = None,
    ) -> None:
        self.answer = answer
        self.gate = gate
        self.frames: list[Frame] = []
        self._watches: list[tuple[int, asyncio.Event]] = []

    async def __call__(self, frame: Frame) -> NakCode | None:
        self.frames.append(frame)
        for count, gate in self._watches:
            if len(self.frames) >= count:
                gate.set()
        if self.gate is not None:
            await self.gate.wait()
        return self.answer(frame)

    def when(self, count: int) -> asyncio.Event:
        """A gate that opens once the handler has been given ``count`` frames."""
        gate = asyncio.Event()
        if len(self.frames) >= count:
            gate.set()
        self._watches.append((count, gate))
        return gate

    @property
    def seqs(self) -> list[int]:
        return [frame.seq for frame in self.frames]

    @property
    def payloads(self) -> list[bytes]:
        return [frame.payload for frame in self.frames]


def make_pair(
    link: Link,
    board: Handler,
    gateway: Handler | None = None,
    *,
    ack_timeout_s: float = FAST_S,
    max_retries: int = MAX_RETRIES,
    queue_size: int = QUEUE_SIZE,
    gateway_seq: int = 0,
) -> tuple[Session, Session]:
    """A gateway session and a board session joined by ``link``."""
    gateway_session = Session(
        link.gateway_end,
        address=ADDRESS,
        from_board=False,
        handler=gateway or Handler(),
        ack_timeout_s=ack_timeout_s,
        max_retries=max_retries,
        queue_size=queue_size,
        initial_seq=gateway_seq,
    )
    board_session = Session(
        link.board_end,
        address=ADDRESS,
        from_board=True,
        handler=board,
        ack_timeout_s=ack_timeout_s,
        max_retries=max_retries,
        queue_size=queue_size,
    )
    link.gateway_end.peer = board_session
    link.board_end.peer = gateway_session
    return gateway_session, board_session


def board_session(transport: Tap, handler: Handler) -> Session:
    return Session(transport, address=ADDRESS, from_board=True, handler=handler)


async def opened(gate: asyncio.Event) -> None:
    async with asyncio.timeout(GATE_TIMEOUT_S):
        await gate.wait()


async def until(condition: Callable[[], bool]) -> None:
    """Let ready callbacks run until ``condition`` holds (no time passes)."""
    for _ in range(100):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


def requests_of(frames: list[Frame], *, from_board: bool) -> list[Frame]:
    return [f for f in frames if f.needs_ack and f.from_board == from_board]


def answers_of(frames: list[Frame], *, from_board: bool) -> list[Frame]:
    return [f for f in frames if not f.needs_ack and f.from_board == from_board]


def index(i: int) -> bytes:
    return i.to_bytes(2, "big")


async def test_request_is_acked_with_its_seq_and_address() -> None:
    link = Link()
    board = Handler()
    # An ACK ends the wait at once: with this timeout, waiting it out would fail the test.
    gateway, board_end = make_pair(link, board, ack_timeout_s=3600)
    async with gateway, board_end, asyncio.timeout(GATE_TIMEOUT_S):
        await gateway.request(MessageType.RELAY_PULSE, b"\x01")
    assert board.frames == [Frame(ADDRESS, 0, MessageType.RELAY_PULSE, b"\x01")]
    assert link.written == [
        Frame(ADDRESS, 0, MessageType.RELAY_PULSE, b"\x01"),
        Frame(ADDRESS, 0, MessageType.ACK, flags=Flags.FROM_BOARD),
    ]
    assert gateway.next_seq == 1


async def test_nak_surfaces_its_code() -> None:
    link = Link()
    gateway, board = make_pair(link, Handler(answer=lambda frame: NakCode.BAD_INDEX))
    async with gateway, board:
        with pytest.raises(NakReceived) as info:
            await gateway.request(MessageType.RELAY_SET, b"\x09\x01")
    assert info.value.code is NakCode.BAD_INDEX
    assert info.value.frame.seq == 0
    assert link.written[-1] == Frame(
        ADDRESS, 0, MessageType.NAK, bytes([NakCode.BAD_INDEX]), Flags.FROM_BOARD
    )


@pytest.mark.parametrize(("payload", "code"), [(b"\xee", 0xEE), (b"", None)])
async def test_nak_with_an_unknown_or_missing_code(payload: bytes, code: int | None) -> None:
    tap = Tap()
    async with Session(tap, address=ADDRESS, from_board=False, handler=Handler()) as gateway:
        request = asyncio.create_task(gateway.request(MessageType.HEARTBEAT))
        await until(lambda: bool(tap.frames))
        gateway.frame_received(Frame(ADDRESS, 0, MessageType.NAK, payload, Flags.FROM_BOARD))
        with pytest.raises(NakReceived) as info:
            await request
    assert info.value.code == code


async def test_handler_exception_becomes_a_nak_and_the_session_survives(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def explode(frame: Frame) -> NakCode | None:
        if frame.payload == b"boom":
            raise RuntimeError("relay driver bug")
        return None

    link = Link()
    board = Handler(answer=explode)
    gateway, board_end = make_pair(link, board)
    async with gateway, board_end:
        with (
            caplog.at_level(logging.ERROR, logger="firmware_protocol.session"),
            pytest.raises(NakReceived) as info,
        ):
            await gateway.request(MessageType.RELAY_PULSE, b"boom")
        await gateway.request(MessageType.RELAY_PULSE, b"fine")
        assert board_end.state is SessionState.RUNNING
    assert info.value.code is HANDLER_FAILED_NAK
    assert board.payloads == [b"boom", b"fine"]
    assert any("relay driver bug" in (r.exc_text or "") for r in caplog.records)


async def test_a_message_error_becomes_a_nak_with_its_code() -> None:
    def refuse(frame: Frame) -> NakCode | None:
        if frame.msg_type == MessageType.READER_FEEDBACK:
            raise MessageError(frame.msg_type, "no such reader", nak_code=NakCode.BAD_INDEX)
        return None

    link = Link()
    gateway, board = make_pair(link, Handler(answer=refuse))
    async with gateway, board:
        with pytest.raises(NakReceived) as info:
            await gateway.request(MessageType.READER_FEEDBACK, b"\x09")
        await gateway.request(MessageType.HEARTBEAT)  # the session goes on
    assert info.value.code is NakCode.BAD_INDEX


async def test_lossy_link_carries_out_every_request_once_in_order() -> None:
    link = Link(loss=0.3, seed=1234)
    board = Handler()
    gateway, board_end = make_pair(link, board, max_retries=30)
    async with gateway, board_end:
        for i in range(200):
            await gateway.request(MessageType.RELAY_PULSE, index(i))
    assert board.seqs == list(range(200))
    assert board.payloads == [index(i) for i in range(200)]
    # The loss was real: frames were dropped and requests retransmitted.
    assert link.dropped > 100
    assert len(requests_of(link.written, from_board=False)) > 250


@pytest.mark.parametrize("verdict", [None, NakCode.BUSY])
async def test_a_lost_answer_is_repeated_not_carried_out_again(verdict: NakCode | None) -> None:
    link = Link()
    lost: list[Frame] = []

    def lose_first_answer(frame: Frame) -> bool:
        if not frame.needs_ack and not lost:
            lost.append(frame)
            return True
        return False

    link.drop = lose_first_answer
    board = Handler(answer=lambda frame: verdict)
    gateway, board_end = make_pair(link, board)
    async with gateway, board_end:
        if verdict is None:
            await gateway.request(MessageType.RELAY_PULSE, b"\x02")
        else:
            with pytest.raises(NakReceived) as info:
                await gateway.request(MessageType.RELAY_PULSE, b"\x02")
            assert info.value.code is verdict
    assert len(board.frames) == 1
    sent = requests_of(link.written, from_board=False)
    answers = answers_of(link.written, from_board=True)
    assert len(sent) == 2
    assert sent[0] == sent[1]
    assert len(answers) == 2
    assert answers[0] == answers[1]


async def test_dead_link_times_out_after_max_retries() -> None:
    link = Link()
    link.dead = True
    board = Handler()
    gateway, board_end = make_pair(link, board, max_retries=3)
    async with gateway, board_end:
        with pytest.raises(AckTimeout) as info:
            await gateway.request(MessageType.HEARTBEAT)
        assert info.value.retransmissions == 3
        assert link.written == [Frame(ADDRESS, 0, MessageType.HEARTBEAT)] * 4
        link.dead = False
        await gateway.request(MessageType.HEARTBEAT)
    assert board.seqs == [1]


async def test_timing_constants_are_read_when_a_session_is_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(session_module, "ACK_TIMEOUT_S", 0.001)
    monkeypatch.setattr(session_module, "MAX_RETRIES", 0)
    link = Link()
    link.dead = True
    gateway = Session(link.gateway_end, address=ADDRESS, from_board=False, handler=Handler())
    async with gateway, asyncio.timeout(GATE_TIMEOUT_S):
        with pytest.raises(AckTimeout):
            await gateway.request(MessageType.HEARTBEAT)
    assert len(link.written) == 1


async def test_a_cancelled_request_stops_being_retransmitted() -> None:
    link = Link()
    link.dead = True
    board = Handler()
    gateway, board_end = make_pair(link, board)
    async with gateway, board_end:
        request = asyncio.create_task(gateway.request(MessageType.HEARTBEAT))
        await opened(link.when(lambda frame: True, count=2))
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
        link.dead = False
        await gateway.request(MessageType.HELLO)
    assert [(f.seq, f.msg_type) for f in board.frames] == [(1, MessageType.HELLO)]


async def test_close_fails_every_pending_caller_and_leaves_no_task() -> None:
    link = Link()
    never = asyncio.Event()
    board = Handler(gate=never)  # the board never finishes carrying out the first frame
    gateway, board_end = make_pair(link, board, queue_size=2)
    await gateway.start()
    await board_end.start()
    in_flight = asyncio.create_task(gateway.request(MessageType.RELAY_SET, b"\x00"))
    await opened(board.when(1))
    queued = [
        asyncio.create_task(gateway.request(MessageType.RELAY_SET, bytes([i]))) for i in (1, 2)
    ]
    blocked = asyncio.create_task(gateway.send(MessageType.READER_FEEDBACK, b"\x03"))
    await until(lambda: gateway.queued == 2)
    await asyncio.sleep(0)
    assert not blocked.done()

    await gateway.close()
    for task in (in_flight, *queued, blocked):
        with pytest.raises(LinkClosed):
            await task
    await board_end.close()  # cancels the handler still running
    assert asyncio.all_tasks() == {asyncio.current_task()}
    assert gateway.state is SessionState.CLOSED
    assert len(board.frames) == 1


async def test_link_loss_reported_by_the_transport_fails_pending_callers() -> None:
    link = Link()
    link.dead = True
    gateway, board = make_pair(link, Handler())
    async with gateway, board:
        request = asyncio.create_task(gateway.request(MessageType.HEARTBEAT))
        await opened(link.when(lambda frame: True))
        cause = OSError("serial port vanished")
        gateway.connection_lost(cause)
        with pytest.raises(LinkClosed) as info:
            await request
        assert info.value.__cause__ is cause
        assert gateway.state is SessionState.CLOSED
        with pytest.raises(LinkClosed):
            await gateway.request(MessageType.HEARTBEAT)
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_a_transport_that_raises_has_lost_its_link() -> None:
    class Broken:
        def send_frame(self, frame: Frame) -> None:
            raise OSError("write failed")

    async with Session(Broken(), address=ADDRESS, from_board=False, handler=Handler()) as gateway:
        with pytest.raises(LinkClosed) as info:
            await gateway.request(MessageType.HEARTBEAT)
        assert isinstance(info.value.__cause__, OSError)
        assert gateway.state is SessionState.CLOSED
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_sessions_not_running_refuse_sends() -> None:
    link = Link()
    gateway, board = make_pair(link, Handler())
    with pytest.raises(LinkClosed):
        await gateway.request(MessageType.HEARTBEAT)  # not started yet
    async with gateway:
        pass
    with pytest.raises(LinkClosed):
        await gateway.request(MessageType.HEARTBEAT)
    with pytest.raises(LinkClosed):
        await gateway.send(MessageType.HEARTBEAT)
    with pytest.raises(SessionError):
        await gateway.start()
    await gateway.close()  # idempotent
    await board.close()  # never started
    assert link.written == []


def test_session_errors_belong_to_the_package_tree() -> None:
    for error in (SessionError, NakReceived, AckTimeout, LinkClosed, Withdrawn):
        assert issubclass(error, ProtocolError)


async def test_session_tasks_are_named() -> None:
    gateway, board = make_pair(Link(), Handler())
    async with gateway, board:
        names = {task.get_name() for task in asyncio.all_tasks()}
    assert {
        "session-send:gateway:7",
        "session-receive:gateway:7",
        "session-send:board:7",
        "session-receive:board:7",
    } <= names


async def test_seq_wraps_past_65535() -> None:
    link = Link(loss=0.3, seed=7)
    board = Handler()
    gateway, board_end = make_pair(link, board, max_retries=30, gateway_seq=SEQ_MODULO - 3)
    async with gateway, board_end:
        for i in range(6):
            await gateway.request(MessageType.RELAY_PULSE, bytes([i]))
    assert board.seqs == [65533, 65534, 65535, 0, 1, 2]
    assert board.payloads == [bytes([i]) for i in range(6)]
    assert gateway.next_seq == 3


async def test_full_queue_makes_send_wait() -> None:
    link = Link()
    gate = asyncio.Event()
    gateway_handler = Handler(gate=gate)  # holds the first event until the gate opens
    gateway, board = make_pair(link, Handler(), gateway_handler, queue_size=2)
    async with gateway, board:
        for i in range(3):
            await board.send(MessageType.INPUT_CHANGED, bytes([i]))
        fourth = asyncio.create_task(board.send(MessageType.INPUT_CHANGED, b"\x03"))
        # The first event is retransmitted while the gateway is still carrying it out.
        await opened(link.when(lambda frame: frame.from_board, count=4))
        assert not fourth.done()
        assert board.queued == 2
        assert gateway_handler.payloads == [b"\x00"]  # retransmissions were not delivered
        assert answers_of(link.written, from_board=False) == []  # nor answered yet
        last_acked = link.when(lambda frame: not frame.from_board and frame.seq == 3)
        gate.set()
        await fourth
        await opened(last_acked)
    assert gateway_handler.payloads == [bytes([i]) for i in range(4)]
    assert gateway_handler.seqs == [0, 1, 2, 3]


async def test_events_are_retransmitted_until_acked() -> None:
    link = Link()
    link.dead = True
    gateway_handler = Handler()
    gateway, board = make_pair(link, Handler(), gateway_handler, max_retries=1)
    async with gateway, board:
        for i in range(3):
            await board.send(MessageType.INPUT_CHANGED, bytes([i]))
        await opened(link.when(lambda frame: True, count=8))  # far beyond 1 + max_retries
        assert set(link.written) == {
            Frame(ADDRESS, 0, MessageType.INPUT_CHANGED, b"\x00", Flags.FROM_BOARD)
        }
        last_acked = link.when(lambda frame: not frame.from_board and frame.seq == 2)
        link.dead = False
        await opened(last_acked)
    assert gateway_handler.payloads == [b"\x00", b"\x01", b"\x02"]
    assert {f.flags for f in answers_of(link.written, from_board=False)} == {Flags.NONE}


async def test_events_arrive_in_order_over_a_lossy_link() -> None:
    link = Link(loss=0.4, seed=99)
    gateway_handler = Handler()
    gateway, board = make_pair(link, Handler(), gateway_handler)
    async with gateway, board:
        for i in range(100):
            await board.send(MessageType.INPUT_CHANGED, index(i))
        await opened(gateway_handler.when(100))
    assert gateway_handler.payloads == [index(i) for i in range(100)]
    assert gateway_handler.seqs == list(range(100))


async def test_duplicating_link_delivers_each_frame_once() -> None:
    link = Link(duplicate=True)
    board_handler = Handler()
    gateway_handler = Handler()
    gateway, board = make_pair(link, board_handler, gateway_handler)
    async with gateway, board:
        for i in range(20):
            await board.send(MessageType.INPUT_CHANGED, index(i))
        for i in range(20):
            await gateway.request(MessageType.RELAY_PULSE, index(i))
        await opened(gateway_handler.when(20))
    assert board_handler.payloads == [index(i) for i in range(20)]
    assert gateway_handler.payloads == [index(i) for i in range(20)]


async def test_delayed_link_slower_than_the_ack_timeout() -> None:
    link = Link(delay_s=FAST_S * 0.8)  # a round trip takes longer than the ack timeout
    board = Handler()
    gateway, board_end = make_pair(link, board)
    async with gateway, board_end:
        for i in range(20):
            await gateway.request(MessageType.RELAY_PULSE, index(i))
    assert board.payloads == [index(i) for i in range(20)]
    # Requests were retransmitted before their ACK came, and the copies answered again.
    assert len(requests_of(link.written, from_board=False)) > 20
    assert len(answers_of(link.written, from_board=True)) > 20


async def test_strays_and_echoes_are_ignored() -> None:
    tap = Tap()
    handler = Handler()
    async with board_session(tap, handler) as board:
        board.frame_received(Frame(ADDRESS + 1, 0, MessageType.HEARTBEAT))  # another board's
        board.frame_received(Frame(ADDRESS, 0, MessageType.HEARTBEAT, flags=Flags.FROM_BOARD))
        board.frame_received(Frame(ADDRESS, 1, MessageType.ACK))  # answers nothing in flight
        board.frame_received(Frame(ADDRESS, 2, MessageType.HEARTBEAT))
        await until(lambda: bool(tap.frames))
    assert handler.seqs == [2]
    assert tap.frames == [Frame(ADDRESS, 2, MessageType.ACK, flags=Flags.FROM_BOARD)]


async def test_a_frame_of_another_version_is_refused_unseen() -> None:
    tap = Tap()
    handler = Handler()
    async with board_session(tap, handler) as board:
        board.frame_received(Frame(ADDRESS, 4, MessageType.RELAY_PULSE, b"\x01", version=2))
        await until(lambda: bool(tap.frames))
    assert handler.frames == []
    assert tap.frames == [
        Frame(ADDRESS, 4, MessageType.NAK, bytes([NakCode.UNSUPPORTED_VERSION]), Flags.FROM_BOARD)
    ]


async def test_same_seq_with_other_content_is_a_new_frame() -> None:
    tap = Tap()
    handler = Handler()
    async with board_session(tap, handler) as board:
        board.frame_received(Frame(ADDRESS, 0, MessageType.RELAY_PULSE, b"\x01"))
        await until(lambda: len(tap.frames) == 1)
        board.frame_received(Frame(ADDRESS, 0, MessageType.RELAY_PULSE, b"\x01"))  # again
        assert len(tap.frames) == 2  # answered at once, from memory
        board.frame_received(Frame(ADDRESS, 0, MessageType.HELLO))  # the peer restarted
        await until(lambda: len(tap.frames) == 3)
    assert [f.msg_type for f in handler.frames] == [MessageType.RELAY_PULSE, MessageType.HELLO]
    assert set(tap.frames) == {Frame(ADDRESS, 0, MessageType.ACK, flags=Flags.FROM_BOARD)}


async def test_a_retransmission_with_other_flags_is_still_a_duplicate() -> None:
    tap = Tap()
    handler = Handler()
    other_bit = Flags(0x02)  # a flag the board may change between copies (MORE)
    async with Session(tap, address=ADDRESS, from_board=False, handler=handler) as gateway:
        event = Frame(ADDRESS, 9, MessageType.INPUT_CHANGED, b"\x01", Flags.FROM_BOARD)
        gateway.frame_received(event)
        await until(lambda: len(tap.frames) == 1)
        gateway.frame_received(
            Frame(ADDRESS, 9, MessageType.INPUT_CHANGED, b"\x01", Flags.FROM_BOARD | other_bit)
        )
    assert handler.seqs == [9]
    assert tap.frames == [Frame(ADDRESS, 9, MessageType.ACK)] * 2


async def test_refuses_to_send_acks_or_oversized_payloads() -> None:
    async with Session(Tap(), address=ADDRESS, from_board=False, handler=Handler()) as gateway:
        with pytest.raises(ValueError, match="ACK and NAK"):
            await gateway.request(MessageType.ACK)
        with pytest.raises(ValueError, match="exceeds"):
            await gateway.send(MessageType.STATE_REPORT, bytes(241))


async def test_an_events_outcome_settles_the_future_send_returns() -> None:
    link = Link()
    gateway_handler = Handler(
        answer=lambda frame: NakCode.BUSY if frame.payload == b"\x01" else None
    )
    gateway, board = make_pair(link, Handler(), gateway_handler)
    async with gateway, board:
        acked = await board.send(MessageType.INPUT_CHANGED, b"\x00")
        refused = await board.send(MessageType.INPUT_CHANGED, b"\x01")
        await acked  # ACKed: settled without an error
        with pytest.raises(NakReceived) as info:
            await refused
        assert info.value.code is NakCode.BUSY
        link.dead = True
        dropped = await board.send(MessageType.INPUT_CHANGED, b"\x02")
    with pytest.raises(LinkClosed):
        await dropped


async def test_a_failed_event_nobody_awaits_is_not_reported_as_unretrieved() -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, object]] = []
    loop.set_exception_handler(lambda loop, context: reported.append(context))
    try:
        link = Link()
        link.dead = True
        gateway, board = make_pair(link, Handler())
        async with gateway, board:
            await board.send(MessageType.INPUT_CHANGED, b"\x00")  # in flight when closed
            await board.send(MessageType.INPUT_CHANGED, b"\x01")  # queued when closed
        await asyncio.sleep(0)  # the futures' callbacks run
        gc.collect()
    finally:
        loop.set_exception_handler(None)
    assert reported == []


# -- withdrawal ----------------------------------------------------------------------------


async def test_a_queued_event_withdrawn_leaves_the_queue_and_takes_no_seq() -> None:
    link = Link()
    link.dead = True  # the first event stays in flight, the others queued
    gateway_handler = Handler()
    gateway, board = make_pair(link, Handler(), gateway_handler, queue_size=2)
    async with gateway, board:
        head = await board.send(MessageType.INPUT_CHANGED, b"\x00")
        await opened(link.when(lambda frame: frame.from_board))
        withdrawn = await board.send(MessageType.KEY_PRESENTED, b"\x01")
        await board.send(MessageType.INPUT_CHANGED, b"\x02")
        blocked = asyncio.create_task(board.send(MessageType.INPUT_CHANGED, b"\x03"))
        await until(lambda: board.queued == 2)
        await asyncio.sleep(0)
        assert not blocked.done()  # the queue is full

        assert board.withdraw(withdrawn)
        assert board.queued == 1  # at once, and its room goes to the send that waited for it
        with pytest.raises(Withdrawn) as info:
            await withdrawn
        assert info.value.frame is None
        assert info.value.msg_type == MessageType.KEY_PRESENTED
        async with asyncio.timeout(GATE_TIMEOUT_S):
            last = await blocked
        assert not head.done()  # the frame in flight goes on

        link.dead = False
        await asyncio.wait_for(last, GATE_TIMEOUT_S)
    assert gateway_handler.payloads == [b"\x00", b"\x02", b"\x03"]
    assert gateway_handler.seqs == [0, 1, 2]
    assert b"\x01" not in {frame.payload for frame in link.written}


async def test_the_event_in_flight_withdrawn_is_not_sent_again_and_a_late_answer_is_stale() -> None:
    link = Link()
    link.dead = True  # the gateway never hears it
    gateway_handler = Handler()
    gateway, board = make_pair(link, Handler(), gateway_handler)
    async with gateway, board:
        key = await board.send(MessageType.KEY_PRESENTED, b"\x01")
        await opened(link.when(lambda frame: frame.from_board, count=2))  # sent, and again
        first = Frame(ADDRESS, 0, MessageType.KEY_PRESENTED, b"\x01", Flags.FROM_BOARD)
        flying = board.in_flight
        assert flying == first

        assert board.withdraw(key)
        assert board.in_flight is None
        written = len(link.written)
        with pytest.raises(Withdrawn) as info:
            await key
        assert info.value.frame == first
        assert not board.withdraw(key)  # once is enough
        board.frame_received(Frame(ADDRESS, 0, MessageType.ACK))  # late: answers nothing now

        link.dead = False
        event = await board.send(MessageType.INPUT_CHANGED, b"\x02")
        await asyncio.wait_for(event, GATE_TIMEOUT_S)  # ACKed: settled without an error
    assert {f.msg_type for f in link.written[written:] if f.from_board} == {
        MessageType.INPUT_CHANGED
    }
    assert gateway_handler.seqs == [1]  # the next seq, as after any frame
    assert gateway_handler.payloads == [b"\x02"]


async def test_withdrawing_an_answered_event_changes_nothing() -> None:
    tap = Tap()
    async with Session(
        tap, address=ADDRESS, from_board=True, handler=Handler(), ack_timeout_s=3600
    ) as board:
        event = await board.send(MessageType.KEY_PRESENTED, b"\x01")
        await until(lambda: bool(tap.frames))
        board.frame_received(Frame(ADDRESS, tap.frames[0].seq, MessageType.ACK))
        assert board.in_flight is None  # answered, though its outcome is not settled yet
        assert not event.done()
        assert not board.withdraw(event)
        await asyncio.wait_for(event, GATE_TIMEOUT_S)  # ACKed: settled without an error
        assert not board.withdraw(event)  # settled: still nothing to withdraw
        stranger: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        assert not board.withdraw(stranger)  # not this session's
        assert not stranger.done()
    assert tap.frames == [Frame(ADDRESS, 0, MessageType.KEY_PRESENTED, b"\x01", Flags.FROM_BOARD)]


@settings(max_examples=10, deadline=None)
@given(loss=st.floats(min_value=0.0, max_value=0.5), seed=st.integers(0, 2**32 - 1))
async def test_exactly_once_in_order_at_any_loss(loss: float, seed: int) -> None:
    link = Link(loss=loss, seed=seed)
    board_handler = Handler()
    gateway_handler = Handler()
    gateway, board = make_pair(
        link, board_handler, gateway_handler, ack_timeout_s=0.002, max_retries=8
    )

    async def requests() -> list[int]:
        acked = []
        for i in range(15):
            try:
                await gateway.request(MessageType.RELAY_PULSE, bytes([i]))
            except AckTimeout:
                continue
            acked.append(i)
        return acked

    async def events() -> None:
        for i in range(15):
            await board.send(MessageType.INPUT_CHANGED, bytes([i]))
        await opened(gateway_handler.when(15))

    async with gateway, board:
        acked, _ = await asyncio.gather(requests(), events())
    carried_out = [payload[0] for payload in board_handler.payloads]
    assert carried_out == sorted(set(carried_out))  # each at most once, in order
    assert set(acked) <= set(carried_out)  # an ACKed request was carried out
    assert board_handler.seqs == sorted(set(board_handler.seqs))
    assert [payload[0] for payload in gateway_handler.payloads] == list(range(15))
