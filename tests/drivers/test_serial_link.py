"""End-to-end tests of drivers.serial_link: a gateway BoardLink and a virtual board over a real pty."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import pytest
import serial

from drivers import serial_link
from drivers.pty_pair import PtyPair
from drivers.serial_link import BoardLink, LinkState, PortOpener
from drivers.virtual_board import BoardConfig, BoardState, FdStream, TransportStream, VirtualBoard
from firmware_protocol import (
    MAX_PAYLOAD,
    BeepPattern,
    BoardInfo,
    Configure,
    Frame,
    FrameDecoder,
    Heartbeat,
    Hello,
    InputChanged,
    InputKind,
    KeyPresented,
    LedPattern,
    Message,
    MessageType,
    NakCode,
    PinEntered,
    ReaderFeedback,
    RelayPulse,
    RelaySet,
    SafeState,
    StateReport,
    StateRequest,
    decode_message,
    encode_message,
)
from firmware_protocol.session import LinkClosed, NakReceived, Session

ADDRESS = 5
WAIT_S = 3.0
POLL_S = 0.02
_M = TypeVar("_M")


class GatewaySide:
    """The test's stand-in for the door controller: records board frames and polls the board."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self._changed = asyncio.Event()
        self._poller: asyncio.Task[None] | None = None
        self.session: Session | None = None

    async def handler(self, frame: Frame) -> NakCode | None:
        """Session handler: keep every board message."""
        self.messages.append(decode_message(frame))
        self._changed.set()
        self._changed = asyncio.Event()
        return None

    async def attach(self, link: BoardLink, address: int = ADDRESS) -> Session:
        """Add the board's session to ``link``."""
        self.session = await link.add_board(address, self.handler)
        return self.session

    async def request(self, message: Message) -> None:
        """Send a command and wait for its ACK."""
        assert self.session is not None
        async with asyncio.timeout(WAIT_S):
            await self.session.request(*encode_message(message))

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` holds after some message arrived."""
        async with asyncio.timeout(WAIT_S):
            while not predicate():
                await self._changed.wait()

    async def expect(self, cls: type[_M]) -> _M:
        """The first recorded message of ``cls``, waiting for it; it is removed."""
        await self.wait_for(lambda: any(isinstance(m, cls) for m in self.messages))
        index = next(i for i, m in enumerate(self.messages) if isinstance(m, cls))
        found = self.messages.pop(index)
        assert isinstance(found, cls)
        return found

    def start_polling(self, interval_s: float = POLL_S) -> None:
        """Send a HEARTBEAT every ``interval_s`` so the board gets reply slots."""
        self._poller = asyncio.create_task(self._poll(interval_s), name="test-poller")

    async def stop_polling(self) -> None:
        """Go silent."""
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None

    async def _poll(self, interval_s: float) -> None:
        assert self.session is not None
        uptime = 0
        while True:
            uptime += 1
            with contextlib.suppress(Exception):
                await self.session.request(*encode_message(Heartbeat(uptime)))
            await asyncio.sleep(interval_s)

    async def handshake(
        self, safe_states: tuple[SafeState, ...], supervision_timeout_ms: int = 3000
    ) -> BoardInfo:
        """HELLO, BOARD_INFO, CONFIGURE (SPEC.md, "Handshake"); polling must be on."""
        await self.request(Hello(1, 1000))
        info = await self.expect(BoardInfo)
        await self.request(Configure(supervision_timeout_ms, safe_states))
        return info


class Rig:
    """A pty, a virtual board on its master, and a BoardLink on its slave."""

    def __init__(self, pty: PtyPair, board: VirtualBoard, link: BoardLink, gw: GatewaySide):
        self.pty, self.board, self.link, self.gw = pty, board, link, gw


@contextlib.asynccontextmanager
async def pty_rig(config: BoardConfig | None = None) -> AsyncIterator[Rig]:
    """Everything wired and started; torn down in reverse."""
    config = config or BoardConfig(address=ADDRESS, doors=2)
    with PtyPair() as pty:
        board = VirtualBoard(config)
        await board.start(FdStream(pty.master_fd))
        try:
            gw = GatewaySide()
            link = BoardLink(pty.slave_path)
            await gw.attach(link, config.address)
            async with link:
                try:
                    yield Rig(pty, board, link, gw)
                finally:
                    await gw.stop_polling()
        finally:
            await board.stop()


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    """A configured board (relay 0 fail-secure, relay 1 fail-safe), polled by the gateway."""
    async with pty_rig() as rig:
        rig.gw.start_polling()
        await rig.gw.handshake((SafeState.FAIL_SECURE, SafeState.FAIL_SAFE))
        yield rig


def link_threads() -> list[threading.Thread]:
    """The link reader and writer threads still alive."""
    return [t for t in threading.enumerate() if t.name.startswith("board-link-")]


def fds_on(path: str) -> int:
    """How many of this process's file descriptors are open on ``path``."""
    count = 0
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the fd of the listing itself is gone by now
            if os.readlink(f"/proc/self/fd/{name}") == path:
                count += 1
    return count


async def test_handshake_identifies_and_configures_the_board() -> None:
    async with pty_rig() as rig:
        assert rig.link.state is LinkState.OPEN
        rig.gw.start_polling()
        info = await rig.gw.handshake((SafeState.FAIL_SECURE, SafeState.FAIL_SAFE), 2000)
        assert (info.relay_count, info.reader_count, info.input_count) == (2, 2, 6)
        assert info.serial_number == rig.board.config.serial_number
        assert rig.board.state is BoardState.CONFIGURED
        assert rig.board.safe_state(1) is SafeState.FAIL_SAFE
        await rig.gw.request(StateRequest())
        report = await rig.gw.expect(StateReport)
        assert report.relay_bits == 0
        assert [i.kind for i in report.inputs[:3]] == [
            InputKind.DOOR_CONTACT,
            InputKind.REX,
            InputKind.TAMPER,
        ]


async def test_relay_pulse_runs_once_and_ends_on_its_own(rig: Rig) -> None:
    await rig.gw.request(RelayPulse(0, 150))
    assert rig.board.relay_on(0)
    assert rig.board.pulse_count(0) == 1
    async with asyncio.timeout(WAIT_S):
        await rig.board.wait_for(lambda: not rig.board.relay_on(0))
    assert rig.board.pulse_count(0) == 1


async def test_reader_feedback_lands(rig: Rig) -> None:
    await rig.gw.request(ReaderFeedback(1, LedPattern.BLINK_GREEN, BeepPattern.DOUBLE, 0))
    shown = rig.board.reader_feedback(1)
    assert shown == ReaderFeedback(1, LedPattern.BLINK_GREEN, BeepPattern.DOUBLE, 0)
    assert rig.board.reader_feedback(0) is None


async def test_state_report_reflects_relays_and_inputs(rig: Rig) -> None:
    await rig.gw.request(RelaySet(1, True))
    await rig.board.open_door(0)
    await rig.board.tamper(1)
    await rig.gw.request(StateRequest())
    report = await rig.gw.expect(StateReport)
    assert report.relay_on(1)
    assert not report.relay_on(0)
    assert [i.level for i in report.inputs] == [1, 0, 0, 0, 0, 1]
    assert report.board_clock_ms > 0


async def test_board_events_arrive_in_order(rig: Rig) -> None:
    await rig.board.press_rex(0)
    await rig.board.open_door(0)
    await rig.board.close_door(0)
    await rig.board.tamper(1)
    await rig.gw.wait_for(lambda: sum(isinstance(m, InputChanged) for m in rig.gw.messages) >= 5)
    changes = [(m.input_index, m.level) for m in rig.gw.messages if isinstance(m, InputChanged)]
    assert changes == [(1, 1), (1, 0), (0, 1), (0, 0), (5, 1)]
    clocks = [m.board_clock_ms for m in rig.gw.messages if isinstance(m, InputChanged)]
    assert clocks == sorted(clocks)


async def test_key_presentation_arrives_intact(rig: Rig) -> None:
    challenge = bytes(range(16))
    response = bytes(range(0xF0, 0x100))
    key_id = b"\x00\x01\x02\x00KEY!"
    await rig.board.present_key(1, key_id, challenge, response)
    got = await rig.gw.expect(KeyPresented)
    assert got == KeyPresented(1, key_id, challenge, response)


async def test_pin_entry_arrives_intact() -> None:
    async with pty_rig(BoardConfig(address=ADDRESS, doors=2, keypad=True)) as rig:
        rig.gw.start_polling()
        await rig.gw.handshake((SafeState.FAIL_SECURE, SafeState.FAIL_SAFE))
        typed = await rig.board.enter_pin(1, "000123456789")
        got = await rig.gw.expect(PinEntered)
        assert got == typed == PinEntered(1, "000123456789")


async def test_noise_on_the_line_does_not_break_the_link(rig: Rig) -> None:
    noise = bytes([0x55, 0x03, 0xFF, 0x00, 0x12, 0x34, 0x00]) + os.urandom(300)
    rig.board.inject_noise(noise)  # towards the gateway
    fd = os.open(rig.pty.slave_path, os.O_WRONLY | os.O_NOCTTY)  # towards the board
    try:
        os.write(fd, noise)
    finally:
        os.close(fd)
    await rig.board.open_door(1)
    changed = await rig.gw.expect(InputChanged)
    assert (changed.input_index, changed.level) == (3, 1)
    await rig.gw.request(RelayPulse(1, 100))
    assert rig.board.pulse_count(1) == 1
    assert rig.link.stats.frame_errors >= 1
    assert rig.board.frame_errors >= 1


class Observer:
    """A frame observer that records every frame it is shown; with ``fail``, it then raises."""

    def __init__(self, *, fail: bool = False) -> None:
        self.frames: list[Frame] = []
        self.fail = fail
        self.changed = asyncio.Event()

    def __call__(self, frame: Frame) -> None:
        self.frames.append(frame)
        self.changed.set()
        if self.fail:
            raise RuntimeError("observer bug")

    def kinds(self) -> list[tuple[MessageType | int, bool]]:
        """(type, from_board) of every frame seen."""
        return [(f.msg_type, f.from_board) for f in self.frames]

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` holds after some frame was seen."""
        async with asyncio.timeout(WAIT_S):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()


@contextlib.asynccontextmanager
async def observed_link(observer: Observer) -> AsyncIterator[Session]:
    """A link with ``observer`` on board ``ADDRESS``; nothing is retransmitted.

    The gateway's timeout is long; the board resends a frame only in a reply slot.
    """
    with PtyPair() as pty:
        board = VirtualBoard(BoardConfig(address=ADDRESS, doors=1))
        await board.start(FdStream(pty.master_fd))
        try:
            link = BoardLink(pty.slave_path)
            session = await link.add_board(
                ADDRESS, GatewaySide().handler, ack_timeout_s=10.0, observer=observer
            )
            async with link:
                yield session
        finally:
            await board.stop()


async def test_a_frame_observer_sees_its_boards_frames_both_ways_answers_first() -> None:
    seen = Observer()
    async with observed_link(seen) as session:
        await session.request(*encode_message(Hello(1, 1000)))
        # The answer was shown before the request returned: its MORE flag can be acted on.
        assert seen.kinds()[:2] == [(MessageType.HELLO, False), (MessageType.ACK, True)]
        assert seen.frames[0].seq == seen.frames[1].seq
        # The BOARD_INFO that follows, and the gateway's answer to it once it is queued.
        await seen.wait_for(lambda: len(seen.frames) >= 4)
        assert seen.kinds()[2:] == [(MessageType.BOARD_INFO, True), (MessageType.ACK, False)]
        assert seen.frames[2].seq == seen.frames[3].seq
        assert {f.address for f in seen.frames} == {ADDRESS}


async def test_a_failing_frame_observer_is_logged_and_the_link_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen = Observer(fail=True)
    async with observed_link(seen) as session:
        await session.request(*encode_message(Hello(1, 1000)))
        await session.request(*encode_message(Heartbeat(1)))
    assert seen.kinds()[:2] == [(MessageType.HELLO, False), (MessageType.ACK, True)]
    assert "frame observer failed" in caplog.text


async def test_link_over_socket_url_to_a_board_on_loopback_tcp() -> None:
    board = VirtualBoard(BoardConfig(address=ADDRESS, doors=1))
    streams: list[TransportStream] = []
    started = asyncio.Event()

    def factory() -> TransportStream:
        stream = TransportStream()
        streams.append(stream)
        started.set()
        return stream

    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    gw = GatewaySide()
    link = BoardLink(f"socket://127.0.0.1:{port}")
    await gw.attach(link)
    try:
        async with link:
            async with asyncio.timeout(WAIT_S):
                await started.wait()
            await board.start(streams[0])
            gw.start_polling()
            info = await gw.handshake((SafeState.FAIL_SECURE,))
            assert info.relay_count == 1
            await gw.request(RelayPulse(0, 50))
            assert board.pulse_count(0) == 1
            await board.press_rex(0)
            assert (await gw.expect(InputChanged)).input_index == 1
            await gw.stop_polling()
    finally:
        await board.stop()
        server.close()
        await server.wait_closed()
    assert not link_threads()


async def test_stop_fails_pending_requests_and_leaves_nothing_behind() -> None:
    with PtyPair() as pty:
        link = BoardLink(pty.slave_path)
        await link.start()
        # Board 9 never answers: its request stays pending until the link closes.
        silent = await link.add_board(9, GatewaySide().handler, ack_timeout_s=10.0)
        pending = asyncio.create_task(silent.request(*encode_message(StateRequest())))
        await asyncio.sleep(0)
        assert not pending.done()
        await link.stop()
        with pytest.raises(LinkClosed):
            await pending
        assert link.state is LinkState.CLOSED
        assert await link.wait_closed() is None
    assert not link_threads()
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert not others


async def test_port_failure_tells_every_session() -> None:
    pty = PtyPair()
    link = BoardLink(pty.slave_path)
    try:
        session = await link.add_board(3, GatewaySide().handler, ack_timeout_s=10.0)
        await link.start()
        pending = asyncio.create_task(session.request(*encode_message(StateRequest())))
        await asyncio.sleep(0)
        pty.close()  # the line goes away under the gateway
        async with asyncio.timeout(WAIT_S):
            error = await link.wait_closed()
        assert error is not None
        assert link.state is LinkState.FAILED
        with pytest.raises(LinkClosed):
            await pending
    finally:
        await link.stop()
        pty.close()
    assert not link_threads()


async def test_unknown_board_type_is_refused(rig: Rig) -> None:
    assert rig.gw.session is not None
    with pytest.raises(NakReceived) as caught:
        await rig.gw.session.request(MessageType.STATE_REPORT, b"")
    assert caught.value.code is NakCode.UNKNOWN_TYPE


# -- writes off the loop -----------------------------------------------------------------------

TICK_S = 0.01
#: Far more than a sound loop needs for a TICK_S sleep even on a loaded machine, far less than a
#: write blocking the loop (STUCK_WRITE_TIMEOUT_S).
TICK_LATENESS_LIMIT_S = 2.0
#: Far above the test's own waits: a write stuck on the unread pty stays stuck, it does not fail.
STUCK_WRITE_TIMEOUT_S = 30.0


def numbered_frame(seq: int) -> Frame:
    """A gateway frame of the largest size, told apart by ``seq``."""
    return Frame(
        ADDRESS, seq, MessageType.HEARTBEAT, seq.to_bytes(2, "little") * (MAX_PAYLOAD // 2)
    )


async def worst_tick_lateness_s(stop: asyncio.Event) -> float:
    """How late a ``sleep(TICK_S)`` woke at worst, ticking until ``stop`` is set."""
    loop = asyncio.get_running_loop()
    worst = 0.0
    while not stop.is_set():
        started = loop.time()
        await asyncio.sleep(TICK_S)
        worst = max(worst, loop.time() - started - TICK_S)
    return worst


async def send_until_stuck(link: BoardLink, drops_in_a_row: int) -> tuple[list[int], int]:
    """Send numbered frames to a pty nobody reads until ``drops_in_a_row`` drop one after another.

    Between those drops the writer has TICK_S each to make room, so it is stuck in a write. The
    loop must stay responsive throughout. The seqs the link took, in order, and how many runs of
    drops there were (the loop may outpace the writer before the pty is full, too).
    """
    taken: list[int] = []
    runs = 0
    in_a_row = 0
    stop_ticking = asyncio.Event()
    ticker = asyncio.create_task(worst_tick_lateness_s(stop_ticking), name="test-ticker")
    seq = 0
    async with asyncio.timeout(WAIT_S):
        while in_a_row < drops_in_a_row:
            dropped = link.stats.frames_dropped
            link.send_frame(numbered_frame(seq))
            seq += 1
            if link.stats.frames_dropped == dropped:
                taken.append(seq - 1)
                in_a_row = 0
                await asyncio.sleep(0)
                continue
            runs += in_a_row == 0
            in_a_row += 1
            await asyncio.sleep(TICK_S)
    stop_ticking.set()
    assert await ticker < TICK_LATENESS_LIMIT_S
    assert link.state is LinkState.OPEN
    assert link.stats.frames_dropped == seq - len(taken)
    return taken, runs


async def test_a_stuck_port_neither_blocks_the_loop_nor_reorders_frames(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(serial_link, "WRITE_TIMEOUT_S", STUCK_WRITE_TIMEOUT_S)
    caplog.set_level(logging.DEBUG, logger=serial_link.__name__)
    with PtyPair() as pty:
        link = BoardLink(pty.slave_path)
        await link.start()
        try:
            taken, runs = await send_until_stuck(link, drops_in_a_row=5)
            drops = [r for r in caplog.records if "write queue full" in r.getMessage()]
            # STYLE 12: the first drop of a run at WARNING, the rest of the run at DEBUG.
            assert [r.levelno for r in drops].count(logging.WARNING) == runs
            assert len(drops) == link.stats.frames_dropped

            # The board reads again: every frame the link took arrives, in order, then new ones.
            decoder = FrameDecoder()
            received: list[int] = []
            arrived = asyncio.Event()

            def on_readable() -> None:
                for item in decoder.feed(os.read(pty.master_fd, 65536)):
                    assert isinstance(item, Frame)
                    received.append(item.seq)
                arrived.set()

            async def wait_for_count(count: int) -> None:
                async with asyncio.timeout(WAIT_S):
                    while len(received) < count:
                        arrived.clear()
                        await arrived.wait()

            loop = asyncio.get_running_loop()
            loop.add_reader(pty.master_fd, on_readable)
            try:
                await wait_for_count(len(taken))
                assert received == taken
                link.send_frame(numbered_frame(60_000))
                await wait_for_count(len(taken) + 1)
                assert received == [*taken, 60_000]
            finally:
                loop.remove_reader(pty.master_fd)
            assert any(
                r.levelno == logging.INFO and "queue for writing again" in r.getMessage()
                for r in caplog.records
            )
        finally:
            await link.stop()
        assert link.stats.frames_sent == len(taken) + 1
    assert not link_threads()


async def test_stop_returns_promptly_while_a_write_is_stuck(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(serial_link, "WRITE_TIMEOUT_S", STUCK_WRITE_TIMEOUT_S)
    with PtyPair() as pty:
        link = BoardLink(pty.slave_path)
        await link.start()
        await send_until_stuck(link, drops_in_a_row=2)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await link.stop()
        assert loop.time() - started < 5.0  # a stuck write would hold it STUCK_WRITE_TIMEOUT_S
        assert link.state is LinkState.CLOSED
        assert not link_threads()
        assert fds_on(pty.slave_path) == 1  # the pair's own slave fd only


async def test_a_write_error_fails_the_link_like_a_read_error() -> None:
    with PtyPair() as pty:
        link = BoardLink(pty.slave_path)
        session = await link.add_board(3, GatewaySide().handler, ack_timeout_s=10.0)
        await link.start()
        try:

            def broken_write(data: bytes) -> int:
                raise serial.SerialException("write failed: [Errno 5] Input/output error")

            link._port.write = broken_write  # the port object the writer thread holds
            pending = asyncio.create_task(session.request(*encode_message(StateRequest())))
            async with asyncio.timeout(WAIT_S):
                error = await link.wait_closed()
            assert isinstance(error, serial.SerialException)
            assert link.state is LinkState.FAILED
            with pytest.raises(LinkClosed):
                await pending
            assert link.stats.frames_sent == 0
        finally:
            await link.stop()
    assert not link_threads()


# -- a start() cancelled while the port opens --------------------------------------------------


async def test_start_cancelled_while_opening_closes_the_port_when_it_arrives(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_serial_for_url = serial.serial_for_url
    opened, release, closed = threading.Event(), threading.Event(), threading.Event()

    def slow_serial_for_url(*args: Any, **kwargs: Any) -> Any:
        """The real open, then held until the test lets it return (a slow socket:// connect)."""
        port = real_serial_for_url(*args, **kwargs)
        real_close = port.close

        def close() -> None:
            real_close()
            closed.set()

        port.close = close
        opened.set()
        release.wait(WAIT_S)
        return port

    monkeypatch.setattr(serial, "serial_for_url", slow_serial_for_url)
    with PtyPair() as pty:
        link = BoardLink(pty.slave_path)
        starting = asyncio.create_task(link.start(), name="test-start")
        assert await asyncio.to_thread(opened.wait, WAIT_S)
        assert fds_on(pty.slave_path) == 2  # the pair's slave fd and the link's port
        starting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await starting
        assert link.state is LinkState.FAILED
        release.set()  # the open finishes after its caller gave up
        assert await asyncio.to_thread(closed.wait, WAIT_S)
        assert fds_on(pty.slave_path) == 1
        await link.stop()
        assert await link.wait_closed() is None
    assert not link_threads()


class FakePort:
    """Just enough of a port to see it closed."""

    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_a_port_opened_before_the_caller_gave_up_is_closed_by_abandon() -> None:
    # The open returned, but the task awaiting it was cancelled before it could take the port.
    port = FakePort()
    opener = PortOpener(lambda: port, "fake://")
    assert opener.run() is port
    assert not port.closed
    opener.abandon()
    assert port.closed


def test_a_port_opened_after_the_caller_gave_up_is_closed_by_the_opening_thread() -> None:
    port = FakePort()
    opener = PortOpener(lambda: port, "fake://")
    opener.abandon()
    assert opener.run() is None
    assert port.closed


async def test_open_off_loop_hands_over_the_port_and_passes_errors_on() -> None:
    loop = asyncio.get_running_loop()
    port = FakePort()
    assert await serial_link.open_off_loop(loop, lambda: port, "fake://") is port
    assert not port.closed

    def failing_open() -> Any:
        raise serial_link.PortOpenError("cannot open fake://")

    with pytest.raises(serial_link.PortOpenError):
        await serial_link.open_off_loop(loop, failing_open, "fake://")
