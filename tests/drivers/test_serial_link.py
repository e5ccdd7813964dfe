"""End-to-end tests of drivers.serial_link: a gateway BoardLink and a virtual board over a real pty."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

import pytest

from drivers.pty_pair import PtyPair
from drivers.serial_link import BoardLink, LinkState
from drivers.virtual_board import BoardConfig, BoardState, FdStream, TransportStream, VirtualBoard
from firmware_protocol import (
    BeepPattern,
    BoardInfo,
    Configure,
    Frame,
    Heartbeat,
    Hello,
    InputChanged,
    InputKind,
    KeyPresented,
    LedPattern,
    Message,
    MessageType,
    NakCode,
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


def reader_threads() -> list[threading.Thread]:
    """The link reader threads still alive."""
    return [t for t in threading.enumerate() if t.name.startswith("board-link-reader")]


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
    assert not reader_threads()


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
    assert not reader_threads()
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
    assert not reader_threads()


async def test_unknown_board_type_is_refused(rig: Rig) -> None:
    assert rig.gw.session is not None
    with pytest.raises(NakReceived) as caught:
        await rig.gw.session.request(MessageType.STATE_REPORT, b"")
    assert caught.value.code is NakCode.UNKNOWN_TYPE
