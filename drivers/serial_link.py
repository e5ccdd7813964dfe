"""The gateway's end of one board bus: a serial port, the frame decoder, and a Session per board.

``BoardLink`` owns one port opened by pyserial URL (``/dev/ttyUSB0``, a pty path, or
``socket://host:port`` for ser2net). A dedicated reader thread blocks on the port and hands the
bytes to the event loop (``call_soon_threadsafe``), where ``FrameDecoder`` splits them into frames
and each frame goes to the ``Session`` of its address. Writes never block the loop: ``send_frame``
puts the frame on a bounded queue and a dedicated writer thread writes the queue in order (one
write bounded by ``WRITE_TIMEOUT_S``); a frame that finds the queue full is dropped and counted,
and the session retransmits it like any lost frame. The port is opened in an executor; when
``start()`` is cancelled meanwhile, the port is closed as soon as the open finishes.

The link runs once: when the port fails every session gets ``connection_lost`` (pending requests
fail with ``LinkClosed``) and the link is ``FAILED``; the owner builds a new link (and new
sessions) when its reconnect policy says so. Handshake, heartbeats and polling (SPEC.md,
"Supervision", "Bus access") belong to the layer above, which speaks through ``board(address)``.
A board may also have a ``FrameObserver``: it sees every frame exchanged with that board (each
received one before its session does, each sent one once it is queued for writing), so the layer
above can follow the board's reply slot (the ``MORE`` flag) without reaching into the session.

RS-485: pass ``rs485=Rs485Options(...)`` to have the kernel driver toggle RTS around each
transmission (``serial.rs485.RS485Settings``); only for a real UART whose driver supports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, TypeAlias

from firmware_protocol import Frame, FrameDecoder, FrameError, encode_frame
from firmware_protocol.session import FrameHandler, LinkClosed, Session

_LOGGER = logging.getLogger(__name__)

#: Sees every frame exchanged with one board: received (FROM_BOARD set) and queued for sending.
FrameObserver: TypeAlias = Callable[[Frame], None]

#: SPEC.md, "Transport": 115200 baud 8N1 unless the installer configures another rate.
DEFAULT_BAUDRATE = 115_200
#: How long the reader thread blocks in one read before it checks whether it should stop.
READ_POLL_INTERVAL_S = 0.05
#: Longest a write may block on a full driver buffer before the port counts as failed.
WRITE_TIMEOUT_S = 0.5
#: Longest ``stop()`` waits for the reader thread to notice and end.
READER_JOIN_TIMEOUT_S = 2.0
#: Longest ``stop()`` waits for the writer thread; a blocked write ends by ``WRITE_TIMEOUT_S``.
WRITER_JOIN_TIMEOUT_S = 2.0
#: Frames waiting for the writer thread; more are dropped (the sessions retransmit).
WRITE_QUEUE_FRAMES = 64
#: Bytes asked for per read; the thread reads what is waiting, at least one byte.
READ_CHUNK_BYTES = 4096
#: Sent before every frame (SPEC.md, "Leading delimiter"): ends noise the receiver buffered.
LEADING_DELIMITER = b"\x00"


class BoardLinkError(Exception):
    """Base of this module's errors."""


class PortOpenError(BoardLinkError):
    """The port could not be opened (retry later through the reconnect policy)."""


class LinkState(enum.StrEnum):
    """Lifecycle of a ``BoardLink``; it runs once."""

    NEW = "new"
    OPENING = "opening"
    OPEN = "open"
    FAILED = "failed"  # the port failed; sessions were told, the link is finished
    CLOSED = "closed"  # stopped by its owner


@dataclass(frozen=True, slots=True)
class Rs485Options:
    """Kernel RS-485 direction control (``serial.rs485.RS485Settings``); delays in seconds."""

    rts_level_for_tx: bool = True
    rts_level_for_rx: bool = False
    delay_before_tx_s: float | None = None
    delay_before_rx_s: float | None = None


@dataclass(slots=True)
class LinkStats:
    """Counters for diagnostics."""

    bytes_received: int = 0
    frames_received: int = 0
    frame_errors: int = 0
    frames_sent: int = 0  # written to the port (counted by the writer thread alone)
    frames_dropped: int = 0  # not written: the write queue was full
    unrouted_frames: int = 0  # valid frames from an address without a session, or echoes


class BoardLink:
    """One serial port (one bus) and the gateway-side ``Session`` of each board on it."""

    def __init__(
        self,
        url: str,
        *,
        baudrate: int = DEFAULT_BAUDRATE,
        rs485: Rs485Options | None = None,
        read_poll_interval_s: float | None = None,
    ) -> None:
        """``url`` is anything ``serial.serial_for_url`` opens."""
        self._url = url
        self._baudrate = baudrate
        self._rs485 = rs485
        self._poll_s = (
            READ_POLL_INTERVAL_S if read_poll_interval_s is None else read_poll_interval_s
        )
        self._state = LinkState.NEW
        self._port: Any = None  # serial.SerialBase; pyserial has no type stubs
        self._decoder = FrameDecoder()
        self._sessions: dict[int, Session] = {}
        self._observers: dict[int, FrameObserver] = {}
        self._reader: threading.Thread | None = None
        self._reader_done: asyncio.Future[None] | None = None
        self._writer: threading.Thread | None = None
        self._writer_done: asyncio.Future[None] | None = None
        # One encoded frame per item; None only wakes the writer so it sees _stopping.
        self._write_queue: queue.Queue[bytes | None] = queue.Queue(maxsize=WRITE_QUEUE_FRAMES)
        self._stopping = threading.Event()  # both threads end once it is set
        self._closed: asyncio.Future[Exception | None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._in_bad_run = False  # STYLE 12: first bad frame at WARNING, repeats at DEBUG
        self._in_drop_run = False  # the same for frames dropped on a full write queue
        self.stats = LinkStats()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def state(self) -> LinkState:
        """Where the link is in its lifecycle."""
        return self._state

    @property
    def url(self) -> str:
        """The port URL."""
        return self._url

    @property
    def addresses(self) -> tuple[int, ...]:
        """The board addresses with a session, in order."""
        return tuple(sorted(self._sessions))

    def _set_state(self, state: LinkState) -> None:
        """The one place the state changes."""
        _LOGGER.debug("Board link %s: %s -> %s", self._url, self._state, state)
        self._state = state

    async def add_board(
        self,
        address: int,
        handler: FrameHandler,
        *,
        ack_timeout_s: float | None = None,
        max_retries: int | None = None,
        initial_seq: int = 0,
        observer: FrameObserver | None = None,
    ) -> Session:
        """Create the session for ``address`` (started when the link opens); ``observer`` sees its frames."""
        if address in self._sessions:
            raise ValueError(f"board {address} already has a session on {self._url}")
        if self._state not in (LinkState.NEW, LinkState.OPENING, LinkState.OPEN):
            raise LinkClosed(f"board link {self._url} is {self._state}")
        session = Session(
            self,
            address=address,
            from_board=False,
            handler=handler,
            ack_timeout_s=ack_timeout_s,
            max_retries=max_retries,
            initial_seq=initial_seq,
        )
        self._sessions[address] = session
        if observer is not None:
            self._observers[address] = observer
        if self._state is LinkState.OPEN:
            await session.start()
        return session

    def board(self, address: int) -> Session:
        """The session of the board at ``address``; KeyError if there is none."""
        try:
            return self._sessions[address]
        except KeyError:
            raise KeyError(f"no board {address} on {self._url}") from None

    async def start(self) -> None:
        """Open the port, start the reader and writer threads and every session; PortOpenError on failure."""
        if self._state is not LinkState.NEW:
            raise BoardLinkError(f"board link {self._url} cannot start from state {self._state}")
        self._set_state(LinkState.OPENING)
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._closed = loop.create_future()
        try:
            # Opening may block (a socket:// connect), so it runs off the loop.
            self._port = await open_off_loop(loop, self._open_port, self._url)
        except BaseException as err:
            self._set_state(LinkState.FAILED)
            if not self._closed.done():
                self._closed.set_result(err if isinstance(err, Exception) else None)
            raise
        self._reader_done = loop.create_future()
        self._reader = threading.Thread(
            target=self._read_loop, name=f"board-link-reader:{self._url}", daemon=True
        )
        self._writer_done = loop.create_future()
        self._writer = threading.Thread(
            target=self._write_loop, name=f"board-link-writer:{self._url}", daemon=True
        )
        self._set_state(LinkState.OPEN)
        self._reader.start()
        self._writer.start()
        for session in self._sessions.values():
            await session.start()
        _LOGGER.info("Board link %s open", self._url)

    def _open_port(self) -> Any:
        """The open pyserial port (runs in an executor thread)."""
        import serial  # noqa: PLC0415 - hardware library, imported by the backend that needs it

        try:
            port = serial.serial_for_url(
                self._url,
                baudrate=self._baudrate,
                timeout=self._poll_s,
                write_timeout=WRITE_TIMEOUT_S,
            )
        except (serial.SerialException, OSError, ValueError) as err:
            raise PortOpenError(f"cannot open {self._url}: {err}") from err
        if self._rs485 is not None:
            import serial.rs485  # noqa: PLC0415

            options = self._rs485
            try:
                port.rs485_mode = serial.rs485.RS485Settings(
                    rts_level_for_tx=options.rts_level_for_tx,
                    rts_level_for_rx=options.rts_level_for_rx,
                    delay_before_tx=options.delay_before_tx_s,
                    delay_before_rx=options.delay_before_rx_s,
                )
            # pyserial raises NotImplementedError for port types without RS-485 control
            # (e.g. socket:// URLs): an installer error to report, not something to finish here.
            except (serial.SerialException, OSError, ValueError, NotImplementedError) as err:
                port.close()
                raise PortOpenError(f"cannot set RS-485 mode on {self._url}: {err}") from err
        return port

    async def stop(self) -> None:
        """Close every session (pending requests fail with LinkClosed), end the threads, close the port; idempotent."""
        if self._state is LinkState.NEW:
            self._set_state(LinkState.CLOSED)
            return
        if self._state is LinkState.OPEN:
            self._set_state(LinkState.CLOSED)
            self._finish(None)
        for session in self._sessions.values():
            await session.close()
        await self._join_thread(self._reader, self._reader_done, READER_JOIN_TIMEOUT_S)
        await self._join_thread(self._writer, self._writer_done, WRITER_JOIN_TIMEOUT_S)
        self._close_port()

    async def wait_closed(self) -> Exception | None:
        """Wait until the link is finished; the port's error, or None after ``stop()``."""
        if self._closed is None:
            raise BoardLinkError(f"board link {self._url} was never started")
        return await asyncio.shield(self._closed)

    def send_frame(self, frame: Frame) -> None:
        """Queue one frame for the writer thread (the sessions' FrameTransport); never blocks.

        Dropped unless the link is open, and when the write queue is full (a stuck port).
        """
        if self._state is not LinkState.OPEN:
            _LOGGER.debug("Board link %s is %s: dropped %s", self._url, self._state, frame)
            return
        try:
            self._write_queue.put_nowait(LEADING_DELIMITER + encode_frame(frame))
        except queue.Full:
            self.stats.frames_dropped += 1
            level = logging.DEBUG if self._in_drop_run else logging.WARNING
            self._in_drop_run = True
            _LOGGER.log(
                level,
                "Board link %s: write queue full (port stuck?), dropped %s seq %d to board %d",
                self._url,
                getattr(frame.msg_type, "name", frame.msg_type),
                frame.seq,
                frame.address,
            )
            return
        if self._in_drop_run:
            self._in_drop_run = False
            _LOGGER.info("Board link %s: frames queue for writing again", self._url)
        self._observe(frame)

    def _write_loop(self) -> None:
        """Writer thread: write the queued frames in order until stopped or the port fails."""
        loop = self._loop
        port = self._port
        assert loop is not None
        error: Exception | None = None
        try:
            while True:
                data = self._write_queue.get()
                if data is None or self._stopping.is_set():
                    break
                port.write(data)
                self.stats.frames_sent += 1
        except Exception as err:  # pyserial raises SerialException, OSError or its timeout
            error = err
        # Not raised into the sessions: like a read error, every session hears of it through
        # connection_lost.
        if error is not None and not self._stopping.is_set():
            self._call_in_loop(loop, self._port_failed, error)
        self._call_in_loop(loop, self._writer_exited)

    def _read_loop(self) -> None:
        """Reader thread: block on the port and pass every chunk to the loop."""
        loop = self._loop
        port = self._port
        assert loop is not None
        error: Exception | None = None
        try:
            while not self._stopping.is_set():
                data = port.read(1)
                if not data:
                    continue
                waiting = port.in_waiting
                if waiting:
                    data += port.read(min(waiting, READ_CHUNK_BYTES))
                self._call_in_loop(loop, self._data_received, bytes(data))
        except Exception as err:  # whatever pyserial raises means the port is gone
            error = err
        if error is not None and not self._stopping.is_set():
            self._call_in_loop(loop, self._port_failed, error)
        self._call_in_loop(loop, self._reader_exited)

    @staticmethod
    def _call_in_loop(
        loop: asyncio.AbstractEventLoop, func: Callable[..., None], *args: Any
    ) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening
            loop.call_soon_threadsafe(func, *args)

    def _reader_exited(self) -> None:
        if self._reader_done is not None and not self._reader_done.done():
            self._reader_done.set_result(None)

    def _writer_exited(self) -> None:
        if self._writer_done is not None and not self._writer_done.done():
            self._writer_done.set_result(None)

    def _data_received(self, data: bytes) -> None:
        """Decode bytes from the port and route each frame to its board's session."""
        if self._state is not LinkState.OPEN:
            return
        self.stats.bytes_received += len(data)
        for item in self._decoder.feed(data):
            if isinstance(item, FrameError):
                self._bad_frame(item)
                continue
            self.stats.frames_received += 1
            if self._in_bad_run:
                self._in_bad_run = False
                _LOGGER.info("Board link %s: valid frames again", self._url)
            self._route(item)

    def _bad_frame(self, err: FrameError) -> None:
        self.stats.frame_errors += 1
        level = logging.DEBUG if self._in_bad_run else logging.WARNING
        self._in_bad_run = True
        _LOGGER.log(
            level, "Board link %s: dropped a bad frame (%s): %s", self._url, err, err.raw.hex(" ")
        )

    def _route(self, frame: Frame) -> None:
        session = self._sessions.get(frame.address)
        if session is None or not frame.from_board:
            # An unknown board, or our own frame heard back on a half-duplex bus.
            self.stats.unrouted_frames += 1
            _LOGGER.debug("Board link %s: no session takes %s", self._url, frame)
            return
        self._observe(frame)  # first, so the observer knows the flags of an answer it awaits
        session.frame_received(frame)

    def _observe(self, frame: Frame) -> None:
        """Show ``frame`` to its board's observer; a failing observer is logged, not fatal."""
        observer = self._observers.get(frame.address)
        if observer is None:
            return
        try:
            observer(frame)
        except Exception:
            _LOGGER.exception("Board link %s: frame observer failed on %s", self._url, frame)

    def _port_failed(self, err: Exception) -> None:
        """The port broke: tell every session once; the reader thread ends on its own."""
        if self._state is not LinkState.OPEN:
            return
        _LOGGER.warning("Board link %s failed: %s", self._url, err)
        self._set_state(LinkState.FAILED)
        self._finish(err)
        for session in self._sessions.values():
            session.connection_lost(err)

    def _finish(self, err: Exception | None) -> None:
        """Stop both threads and settle ``wait_closed``."""
        self._stopping.set()
        with contextlib.suppress(queue.Full):  # full: the writer is busy and sees _stopping next
            self._write_queue.put_nowait(None)
        # Wake a thread blocked in the port (the POSIX backend can; socket:// times out).
        for cancel in ("cancel_read", "cancel_write"):
            with contextlib.suppress(Exception):
                if self._port is not None and hasattr(self._port, cancel):
                    getattr(self._port, cancel)()
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(err)

    async def _join_thread(
        self,
        thread: threading.Thread | None,
        done: asyncio.Future[None] | None,
        timeout_s: float,
    ) -> None:
        if thread is None or done is None:
            return
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.shield(done)
        except TimeoutError:
            _LOGGER.warning("Board link %s: %s did not stop in time", self._url, thread.name)
            return
        thread.join(timeout_s)  # it has signed off: only its last statements are left

    def _close_port(self) -> None:
        port, self._port = self._port, None
        if port is None:
            return
        _close_quietly(port, self._url)
        self._decoder.reset()


def _close_quietly(port: Any, url: str) -> None:
    # pyserial's socket:// close() skips closing its socket when shutdown() fails (the peer is
    # already gone), which leaks the descriptor; close the socket here as well.
    sock = getattr(port, "_socket", None)
    try:
        port.close()
    except Exception as err:  # closing a broken port may fail; it is closed either way
        _LOGGER.debug("Board link %s: close failed: %s", url, err)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.close()


class PortOpener:
    """One port open run in an executor thread; a port that arrives after ``abandon()`` is closed."""

    def __init__(self, open_port: Callable[[], Any], url: str) -> None:
        self._open_port = open_port
        self._url = url
        self._lock = threading.Lock()
        self._abandoned = False
        self._port: Any = None  # opened and handed back, not yet known to be taken

    def run(self) -> Any:
        """The open port (in the executor thread), or None if the caller gave up (then closed here)."""
        port = self._open_port()
        with self._lock:
            if not self._abandoned:
                self._port = port
                return port
        _LOGGER.debug("Board link %s: start was cancelled; closing the port it opened", self._url)
        _close_quietly(port, self._url)
        return None

    def abandon(self) -> None:
        """The caller gives up (on the loop): close the port now if it is open, else when it opens."""
        with self._lock:
            self._abandoned = True
            port, self._port = self._port, None
        if port is not None:
            _LOGGER.debug("Board link %s: start was cancelled; closing the opened port", self._url)
            _close_quietly(port, self._url)


async def open_off_loop(
    loop: asyncio.AbstractEventLoop, open_port: Callable[[], Any], url: str
) -> Any:
    """``open_port()`` in the default executor; if cancelled, it re-raises and leaves no port open."""
    opener = PortOpener(open_port, url)
    try:
        return await loop.run_in_executor(None, opener.run)
    except BaseException:
        # The thread may still be opening (cancelling the future does not stop it): whatever it
        # opens, now or later, is closed instead of holding the tty. The error goes on as it is.
        opener.abandon()
        raise


__all__ = [
    "DEFAULT_BAUDRATE",
    "READER_JOIN_TIMEOUT_S",
    "READ_POLL_INTERVAL_S",
    "WRITER_JOIN_TIMEOUT_S",
    "WRITE_QUEUE_FRAMES",
    "WRITE_TIMEOUT_S",
    "BoardLink",
    "BoardLinkError",
    "FrameObserver",
    "LinkState",
    "LinkStats",
    "PortOpenError",
    "PortOpener",
    "Rs485Options",
    "open_off_loop",
]
