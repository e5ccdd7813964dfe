"""A simulated door I/O board: the firmware side of SPEC.md, built from the protocol's own classes.

``VirtualBoard`` has one relay, one key reader (with a PIN keypad if ``BoardConfig.keypad``) and
three inputs (door contact, REX, tamper) per door, numbered door by door: relay *d* and reader
*d* belong to door *d*, inputs ``3d``, ``3d+1`` and ``3d+2`` are its contact, REX and tamper.
It speaks through a ``Session(from_board=True)`` and a ``FrameDecoder`` over any ``ByteStream``:
a pty master fd (``FdStream``), an asyncio transport (``TransportStream``, e.g. a TCP
connection), or an in-memory pipe (``memory_pipe``).

What it does (SPEC.md, "Supervision", "Messages"): the four board states; HELLO → BOARD_INFO;
CONFIGURE (supervision timeout, safe states); RELAY_SET, RELAY_PULSE (ends on its own; a
retransmission is never carried out twice, the Session guarantees it); READER_FEEDBACK (kept per
reader, the LED goes off after its duration); STATE_REQUEST → STATE_REPORT on its own monotonic
clock; broadcast HEARTBEAT/RELAY_SET/RELAY_PULSE/READER_FEEDBACK, an identical broadcast carried
out once; the supervision timer and fallback; an event queue of ``EVENT_QUEUE_FRAMES`` that
discards events when full and queues one EVENT_QUEUE_OVERFLOW as soon as there is room again;
a KEY_PRESENTED or PIN_ENTERED still unanswered ``KEY_EVENT_MAX_AGE_S`` after the presentation
is withdrawn from the queue (``Session.withdraw``), even if it was sent already, and never sent
again (SPEC.md, "Board events").

Bus access as SPEC.md says it, on a shared bus as on a point-to-point link (``_SlotGate``): the
board answers a frame addressed to it at once, with ``MORE`` when it may send frames of its own
and has one queued, and then sends its head; when the gateway answers a head that carried
``MORE``, the next frame follows. An own frame carries ``MORE`` if another was queued behind it
when it was first sent, and is resent byte for byte (``MORE`` as first sent) after each answer
of the board's that announces it, until the gateway answers it (or it is withdrawn); never on a
timer, never unannounced.

Simplified:

* The reply starts as soon as the event loop gets to it, not within 0.5..10 ms.
* Events wait in the Session's FIFO queue, so a BOARD_INFO queues behind events already waiting
  (instead of right behind the frame in flight) and does not replace an earlier one.
* No debounce, no wiring inversion; beep patterns are remembered, not timed.
* A PIN is typed whole (``enter_pin``: its digits, then ``#``), so there is no entry to clear
  with ``*`` or to time out (``PIN_ENTRY_TIMEOUT_MS``).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, Protocol, Self

from firmware_protocol import (
    BROADCAST_ADDRESS,
    PROTOCOL_VERSION,
    BeepPattern,
    BoardFault,
    BoardInfo,
    Capability,
    Configure,
    FaultCode,
    Flags,
    Frame,
    FrameDecoder,
    FrameError,
    Heartbeat,
    Hello,
    InputChanged,
    InputKind,
    InputState,
    KeyPresented,
    LedPattern,
    Message,
    MessageError,
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
    encode_frame,
    encode_message,
)
from firmware_protocol.session import Session

_LOGGER = logging.getLogger(__name__)

#: Frames the board's event queue holds, the one in flight included (SPEC.md, "Board events":
#: at least 16).
EVENT_QUEUE_FRAMES = 16
#: A KEY_PRESENTED unanswered this long after the presentation is withdrawn, in seconds
#: (SPEC.md, "Timing": KEY_EVENT_MAX_AGE_MS). Read at each presentation, so tests may shrink it.
KEY_EVENT_MAX_AGE_S = 3.0
#: Physics mode: from relay on (unlocked) to door contact open, in seconds.
PHYSICS_OPEN_DELAY_S = 0.05
#: Physics mode: how long a door the physics opened stays open, in seconds.
PHYSICS_OPEN_TIME_S = 0.5
#: How long REX stays pressed in ``press_rex``, in seconds.
REX_PRESS_S = 0.0
#: Inputs per door: contact, REX, tamper.
INPUTS_PER_DOOR = 3
_U32 = 1 << 32

#: Gateway → board types the board carries out in each state (SPEC.md, "Supervision").
_IDENTIFIED_TYPES = frozenset(
    {MessageType.HELLO, MessageType.HEARTBEAT, MessageType.CONFIGURE, MessageType.STATE_REQUEST}
)
_GATEWAY_TYPES = _IDENTIFIED_TYPES | {
    MessageType.RELAY_SET,
    MessageType.RELAY_PULSE,
    MessageType.READER_FEEDBACK,
}
_BROADCAST_TYPES = frozenset(
    {
        MessageType.HEARTBEAT,
        MessageType.RELAY_SET,
        MessageType.RELAY_PULSE,
        MessageType.READER_FEEDBACK,
    }
)


class BoardState(enum.StrEnum):
    """The board's protocol state (SPEC.md, "Supervision")."""

    UNCONFIGURED = "unconfigured"
    IDENTIFIED = "identified"
    CONFIGURED = "configured"
    FALLBACK = "fallback"


class RunState(enum.StrEnum):
    """Lifecycle of the simulator object; it runs once."""

    NEW = "new"
    RUNNING = "running"
    STOPPED = "stopped"


class ByteStream(Protocol):
    """A byte pipe to the gateway: delivers bytes to ``on_data`` once opened; writes may drop."""

    def open(
        self, on_data: Callable[[bytes], None], on_lost: Callable[[Exception | None], None]
    ) -> None:
        """Start delivering received bytes (in the event loop)."""

    def write(self, data: bytes) -> None:
        """Send bytes; never blocks, may drop them (a line that nobody reads)."""

    def close(self) -> None:
        """Stop delivering; does not close resources the stream does not own."""


class FdStream:
    """A ByteStream over a file descriptor (a pty master); the fd stays the caller's."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_data: Callable[[bytes], None] | None = None
        self._on_lost: Callable[[Exception | None], None] | None = None

    def open(
        self, on_data: Callable[[bytes], None], on_lost: Callable[[Exception | None], None]
    ) -> None:
        """Watch the fd on the running loop."""
        os.set_blocking(self._fd, False)
        self._on_data, self._on_lost = on_data, on_lost
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._fd, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self._fd, 4096)
        except BlockingIOError:
            return
        except OSError as err:
            self.close()
            if self._on_lost is not None:
                self._on_lost(err)
            return
        if not data:
            self.close()
            if self._on_lost is not None:
                self._on_lost(None)
            return
        if self._on_data is not None:
            self._on_data(data)

    def write(self, data: bytes) -> None:
        """Write what the pty takes; the rest is lost like bytes on an unread line."""
        try:
            written = os.write(self._fd, data)
        except (BlockingIOError, OSError) as err:
            _LOGGER.debug("Virtual board: write of %d bytes dropped: %s", len(data), err)
            return
        if written < len(data):
            _LOGGER.debug("Virtual board: %d of %d bytes dropped", len(data) - written, len(data))

    def close(self) -> None:
        """Stop watching the fd."""
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._fd)
            self._loop = None


class TransportStream(asyncio.Protocol):
    """A ByteStream over an asyncio transport: use it as the protocol of a connection."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._on_data: Callable[[bytes], None] | None = None
        self._on_lost: Callable[[Exception | None], None] | None = None
        self._early = bytearray()
        self.connected = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """asyncio: the connection is up."""
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self.connected.set()

    def data_received(self, data: bytes) -> None:
        """asyncio: bytes arrived."""
        if self._on_data is None:
            self._early += data
        else:
            self._on_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        """asyncio: the connection is gone."""
        self._transport = None
        if self._on_lost is not None:
            self._on_lost(exc)

    def open(
        self, on_data: Callable[[bytes], None], on_lost: Callable[[Exception | None], None]
    ) -> None:
        """Start delivering bytes (including any that arrived before)."""
        self._on_data, self._on_lost = on_data, on_lost
        if self._early:
            early, self._early = bytes(self._early), bytearray()
            on_data(early)

    def write(self, data: bytes) -> None:
        """Send bytes if connected."""
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        """Close the connection."""
        self._on_data = self._on_lost = None
        if self._transport is not None:
            self._transport.close()


class MemoryStream:
    """One end of an in-memory pipe (``memory_pipe``); bytes arrive on the next loop turn."""

    def __init__(self) -> None:
        self.peer: MemoryStream | None = None
        self._on_data: Callable[[bytes], None] | None = None
        self._on_lost: Callable[[Exception | None], None] | None = None

    def open(
        self, on_data: Callable[[bytes], None], on_lost: Callable[[Exception | None], None]
    ) -> None:
        """Start delivering bytes written by the peer."""
        self._on_data, self._on_lost = on_data, on_lost

    def write(self, data: bytes) -> None:
        """Deliver ``data`` to the peer (dropped if it is not open)."""
        peer = self.peer
        if peer is not None and peer._on_data is not None:
            asyncio.get_running_loop().call_soon(peer._deliver, bytes(data))

    def _deliver(self, data: bytes) -> None:
        if self._on_data is not None:
            self._on_data(data)

    def close(self) -> None:
        """Stop delivering."""
        self._on_data = self._on_lost = None


def memory_pipe() -> tuple[MemoryStream, MemoryStream]:
    """Two connected in-memory streams."""
    a, b = MemoryStream(), MemoryStream()
    a.peer, b.peer = b, a
    return a, b


@dataclass(frozen=True, slots=True)
class BoardConfig:
    """What the simulated board is: its address, doors and identity."""

    address: int = 1
    doors: int = 2
    serial_number: bytes = b"VBRD0001"
    firmware: tuple[int, int, int] = (1, 0, 0)
    key_reader: bool = True
    keypad: bool = False  # a PIN keypad on every reader (BOARD_INFO capability KEYPAD)
    physics: bool = False  # doors open after their relay unlocks and close later on their own
    physics_open_delay_s: float = PHYSICS_OPEN_DELAY_S
    physics_open_time_s: float = PHYSICS_OPEN_TIME_S

    @property
    def relay_count(self) -> int:
        """One relay per door."""
        return self.doors

    @property
    def input_count(self) -> int:
        """Contact, REX and tamper per door."""
        return self.doors * INPUTS_PER_DOOR


@dataclass(slots=True)
class _Input:
    kind: InputKind
    level: int = 0


@dataclass(slots=True)
class _Relay:
    on: bool = False
    safe_state: SafeState = SafeState.FAIL_SECURE
    pulse: asyncio.TimerHandle | None = None
    pulses: int = 0  # RELAY_PULSE frames carried out (tests assert "never twice")


@dataclass(slots=True)
class _Reader:
    feedback: ReaderFeedback | None = None
    expiry: asyncio.TimerHandle | None = None
    history: list[ReaderFeedback] = field(default_factory=list)


class _SlotGate:
    """The board Session's FrameTransport: what the board sends where, by SPEC.md "Bus access"."""

    def __init__(self, board: VirtualBoard) -> None:
        self._board = board
        self._head: Frame | None = None  # the oldest own frame, as it goes (or went) out
        self._head_sent = False  # its flags are fixed once it was first sent
        self._announced = False  # a MORE of ours promised the next own frame in this slot

    def open_slot(self, frame: Frame) -> None:
        """A valid frame addressed to the board: a new slot; an answer to the head ends the head."""
        head, self._announced = self._head, False
        if frame.needs_ack or head is None or head.seq != frame.seq:
            return  # an answer to anything but the head is ignored (SPEC.md, "Board events")
        self._head = None
        # The head announced the next frame: it follows in this slot once the Session hands it
        # over (the Session sees this answer right after the gate).
        self._announced = bool(head.flags & Flags.MORE)

    def close_slot(self) -> None:
        """Fallback: no own frame goes out until the next slot that allows it."""
        self._announced = False

    def frame_withdrawn(self) -> None:
        """The Session withdrew a frame: forget it if it was the head, and a MORE now unkept."""
        session = self._board.session
        flight = session.in_flight
        if self._head is not None and (flight is None or flight.seq != self._head.seq):
            # Never resent; the Session hands over its next frame, the new head, when it has one.
            self._head, self._head_sent = None, False
        if self._head is None and not session.queued:
            self._announced = False  # nothing left to follow (SPEC.md: it stays silent)

    def send_frame(self, frame: Frame) -> None:
        """FrameTransport: an answer goes out now; an own frame becomes the head, sent when due."""
        if not frame.needs_ack:
            self._answer(frame)
        elif self._head is None or self._head.seq != frame.seq:
            self._new_head(frame)
        # Otherwise the Session's timer offers the head again: a board resends it only in a
        # reply slot, after an answer of its that announces it (SPEC.md, "Retransmission").

    def _new_head(self, frame: Frame) -> None:
        """The Session hands over its next frame: it goes out now only if already announced."""
        self._head, self._head_sent = frame, False
        self._board._made_room()  # it left the Session's queue
        if self._announced:
            self._announced = False
            self._send_head()

    def _answer(self, frame: Frame) -> None:
        """Send an ACK/NAK, with MORE and the head behind it if the board has a frame to send."""
        board = self._board
        more = board._may_send_own() and (self._head is not None or board.session.queued > 0)
        board._write_frame(replace(frame, flags=frame.flags | Flags.MORE) if more else frame)
        if not more:
            return
        if self._head is not None:
            self._send_head()
        else:
            self._announced = True  # the Session hands its next frame over in a moment

    def _send_head(self) -> None:
        """Send the head; its first sending fixes MORE (another frame queued behind it)."""
        head = self._head
        assert head is not None
        if not self._head_sent and self._board.session.queued:
            head = replace(head, flags=head.flags | Flags.MORE)
        self._head, self._head_sent = head, True
        self._board._write_frame(head)


class VirtualBoard:
    """A door I/O board in software, speaking SPEC.md over a ByteStream."""

    def __init__(self, config: BoardConfig | None = None) -> None:
        self.config = config or BoardConfig()
        cfg = self.config
        self._state = BoardState.UNCONFIGURED
        self._run_state = RunState.NEW
        self._boot = time.monotonic()
        self._relays = [_Relay() for _ in range(cfg.relay_count)]
        self._readers = [_Reader() for _ in range(cfg.doors)]
        self._inputs = [
            _Input(kind)
            for _ in range(cfg.doors)
            for kind in (InputKind.DOOR_CONTACT, InputKind.REX, InputKind.TAMPER)
        ]
        self._decoder = FrameDecoder()
        self._gate = _SlotGate(self)
        self._session = Session(
            self._gate,
            address=cfg.address,
            from_board=True,
            handler=self._handle,
            # One more than ``_queue_full`` lets wait: the overflow fault and the event behind it
            # always fit, so ``send`` never waits.
            queue_size=EVENT_QUEUE_FRAMES,
            initial_seq=int.from_bytes(os.urandom(2), "little"),
        )
        self._stream: ByteStream | None = None
        self._supervision_timeout_s: float | None = None  # set by the first CONFIGURE
        self._supervision: asyncio.TimerHandle | None = None
        self._last_broadcast: Frame | None = None
        self._overflowed = False  # events were discarded: an EVENT_QUEUE_OVERFLOW is owed
        self._key_timers: set[asyncio.TimerHandle] = set()
        self._physics: dict[int, asyncio.TimerHandle] = {}
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self.frame_errors = 0
        self.gateway_uptime_ms: int | None = None
        self.supervision_losses = 0
        self.keys_expired = 0  # KEY_PRESENTED events withdrawn unanswered
        self.pins_expired = 0  # PIN_ENTERED events withdrawn unanswered

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def state(self) -> BoardState:
        """The board's protocol state."""
        return self._state

    @property
    def run_state(self) -> RunState:
        """Whether the simulator runs."""
        return self._run_state

    @property
    def session(self) -> Session:
        """The board's session (for tests that look at sequence numbers)."""
        return self._session

    async def start(self, stream: ByteStream) -> None:
        """Power up on ``stream``: UNCONFIGURED, relays off."""
        if self._run_state is not RunState.NEW:
            raise RuntimeError(f"virtual board cannot start from {self._run_state}")
        self._stream = stream
        await self._session.start()
        self._run_state = RunState.RUNNING
        stream.open(self._data_received, self._stream_lost)

    async def stop(self) -> None:
        """Power down: stop timers and the session; idempotent."""
        if self._run_state is RunState.STOPPED:
            return
        self._run_state = RunState.STOPPED
        if self._stream is not None:
            self._stream.close()
        self._cancel_timers()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)
        await self._session.close()

    def _cancel_timers(self) -> None:
        for handle in (self._supervision, *self._physics.values(), *self._key_timers):
            if handle is not None:
                handle.cancel()
        self._supervision = None
        self._physics.clear()
        self._key_timers.clear()
        for relay in self._relays:
            if relay.pulse is not None:
                relay.pulse.cancel()
                relay.pulse = None
        for reader in self._readers:
            if reader.expiry is not None:
                reader.expiry.cancel()
                reader.expiry = None

    def _stream_lost(self, exc: Exception | None) -> None:
        _LOGGER.info("Virtual board %d: stream lost: %s", self.config.address, exc)

    def _set_state(self, state: BoardState) -> None:
        """The one place the protocol state changes."""
        if state is not self._state:
            _LOGGER.info("Virtual board %d: %s -> %s", self.config.address, self._state, state)
            self._state = state
            self._notify()

    # -- what tests and demos look at ----------------------------------------------------

    @property
    def clock_ms(self) -> int:
        """Milliseconds since the board booted, modulo 2**32."""
        return int((time.monotonic() - self._boot) * 1000) % _U32

    def relay_on(self, relay: int) -> bool:
        """Whether relay ``relay`` is energised."""
        return self._relays[relay].on

    @property
    def relay_bits(self) -> int:
        """Bit i set: relay i energised."""
        return sum(1 << i for i, relay in enumerate(self._relays) if relay.on)

    def pulse_count(self, relay: int) -> int:
        """RELAY_PULSE frames carried out on ``relay``."""
        return self._relays[relay].pulses

    def safe_state(self, relay: int) -> SafeState:
        """The configured safe state of ``relay``."""
        return self._relays[relay].safe_state

    def reader_feedback(self, reader: int) -> ReaderFeedback | None:
        """What reader ``reader`` shows now (None: nothing yet)."""
        return self._readers[reader].feedback

    def input_level(self, index: int) -> int:
        """The level of input ``index``."""
        return self._inputs[index].level

    def door_open(self, door: int) -> bool:
        """Whether the door contact of ``door`` reads open."""
        return bool(self._inputs[door * INPUTS_PER_DOOR].level)

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds, checked after each change (wrap it in a timeout)."""
        while not predicate():
            event = self._changed
            await event.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # -- simulation --------------------------------------------------------------------------

    async def press_rex(self, door: int) -> None:
        """Press and release the request-to-exit button of ``door``."""
        await self._set_input(door * INPUTS_PER_DOOR + 1, 1)
        if REX_PRESS_S:
            await asyncio.sleep(REX_PRESS_S)
        await self._set_input(door * INPUTS_PER_DOOR + 1, 0)

    async def open_door(self, door: int) -> None:
        """The door contact of ``door`` reads open."""
        await self._set_input(door * INPUTS_PER_DOOR, 1)

    async def close_door(self, door: int) -> None:
        """The door contact of ``door`` reads closed."""
        handle = self._physics.pop(door, None)
        if handle is not None:
            handle.cancel()
        await self._set_input(door * INPUTS_PER_DOOR, 0)

    async def force_open(self, door: int) -> None:
        """Someone forces ``door`` open while it is locked (the gateway decides it is forced)."""
        await self.open_door(door)

    async def tamper(self, door: int, active: bool = True) -> None:
        """The tamper input of ``door`` becomes active (or clears)."""
        await self._set_input(door * INPUTS_PER_DOOR + 2, int(active))

    async def present_key(
        self,
        reader: int,
        key_id: bytes,
        challenge: bytes | None = None,
        response: bytes = bytes(16),
    ) -> KeyPresented:
        """A key answers a challenge (random if not given) at ``reader``; returns the event."""
        if not 0 <= reader < len(self._readers):
            raise IndexError(f"no reader {reader}")
        event = KeyPresented(reader, key_id, challenge or os.urandom(16), response)
        sent = await self._queue(event)
        if sent is not None:
            self._expire_later(sent)
        return event

    async def enter_pin(self, reader: int, digits: str) -> PinEntered:
        """Type ``digits`` and ``#`` on the keypad of ``reader``; returns the event.

        Raises RuntimeError on a board without a keypad (it never sends PIN_ENTERED), IndexError
        for a reader it lacks, and MessageError unless ``digits`` are 1..12 of "0".."9".
        """
        if not self.config.keypad:
            raise RuntimeError(f"virtual board {self.config.address} has no keypad")
        if not 0 <= reader < len(self._readers):
            raise IndexError(f"no reader {reader}")
        event = PinEntered(reader, digits)
        sent = await self._queue(event)
        if sent is not None:
            self._expire_later(sent, pin=True)
        return event

    async def fault(self, code: FaultCode, detail: str = "") -> None:
        """Raise a BOARD_FAULT."""
        await self._queue(BoardFault(code, detail))

    def inject_noise(self, data: bytes) -> None:
        """Write raw bytes on the line (tests: the gateway must resync)."""
        if self._stream is not None:
            self._stream.write(data)

    async def _set_input(self, index: int, level: int) -> None:
        item = self._inputs[index]
        if item.level == level:
            return
        item.level = level
        self._notify()
        await self._queue(InputChanged(self.clock_ms, index, item.kind, level))

    async def _queue(self, message: Message) -> asyncio.Future[None] | None:
        """Queue an event for the gateway: its outcome, or None if it was discarded (queue full)."""
        if self._run_state is not RunState.RUNNING:
            return None
        if self._queue_full():
            # The first discard is news, the rest of the burst is not.
            level = logging.DEBUG if self._overflowed else logging.WARNING
            _LOGGER.log(
                level,
                "Virtual board %d: event queue full, dropped %s",
                self.config.address,
                message,
            )
            self._overflowed = True
            return None
        await self._queue_overflow_fault()  # owed, and not queued yet: it comes first
        return await self._session.send(*encode_message(message))

    def _queue_full(self) -> bool:
        """Whether the event queue is full: all but the frame in flight wait in the Session."""
        return self._session.queued >= EVENT_QUEUE_FRAMES - 1

    def _made_room(self) -> None:
        """A frame left the event queue: an overflow fault owed goes in now ("Board events")."""
        if self._overflowed:
            self._spawn(self._queue_overflow_fault(), "overflow-fault")

    async def _queue_overflow_fault(self) -> None:
        """Queue the one EVENT_QUEUE_OVERFLOW owed since events were discarded, if there is room."""
        if not self._overflowed or self._run_state is not RunState.RUNNING or self._queue_full():
            return
        self._overflowed = False
        await self._session.send(*encode_message(BoardFault(FaultCode.EVENT_QUEUE_OVERFLOW)))

    def _expire_later(self, sent: asyncio.Future[None], *, pin: bool = False) -> None:
        """Withdraw the KEY_PRESENTED (PIN_ENTERED) ``sent`` if still unanswered when too old."""
        loop = asyncio.get_running_loop()
        max_age_s = KEY_EVENT_MAX_AGE_S
        timer = loop.call_later(max_age_s, self._expire_key, sent, max_age_s, pin)
        self._key_timers.add(timer)
        # Once its outcome is settled (answered, refused, withdrawn) the timer is done with.
        sent.add_done_callback(lambda _: self._forget_key_timer(timer))

    def _forget_key_timer(self, timer: asyncio.TimerHandle) -> None:
        """Stop and drop an expiry timer (it may have fired already)."""
        timer.cancel()
        self._key_timers.discard(timer)

    def _expire_key(self, sent: asyncio.Future[None], max_age_s: float, pin: bool) -> None:
        """A key (or PIN) nobody answered in time: a door must not open for someone gone."""
        if not self._session.withdraw(sent):
            return  # answered meanwhile
        if pin:
            self.pins_expired += 1
        else:
            self.keys_expired += 1
        _LOGGER.info(
            "Virtual board %d: %s unanswered after %.1f s, withdrawn",
            self.config.address,
            "PIN entry" if pin else "key presentation",
            max_age_s,
        )
        self._gate.frame_withdrawn()
        self._made_room()
        self._notify()

    # -- receiving -------------------------------------------------------------------------

    def _data_received(self, data: bytes) -> None:
        for item in self._decoder.feed(data):
            if isinstance(item, FrameError):
                self.frame_errors += 1
                _LOGGER.debug(
                    "Virtual board %d: dropped bad frame (%s): %s",
                    self.config.address,
                    item,
                    item.raw.hex(" "),
                )
                continue
            self._frame_received(item)

    def _frame_received(self, frame: Frame) -> None:
        if frame.from_board:
            return  # our own frame heard back, or another board's
        if frame.address not in (self.config.address, BROADCAST_ADDRESS):
            return
        self._restart_supervision()
        if frame.address == BROADCAST_ADDRESS:
            self._broadcast(frame)
            return
        self._gate.open_slot(frame)
        self._session.frame_received(frame)

    def _broadcast(self, frame: Frame) -> None:
        """Carry out a broadcast once; never answered (SPEC.md, "Broadcast")."""
        last = self._last_broadcast
        if last is not None and (last.seq, last.msg_type, last.payload) == (
            frame.seq,
            frame.msg_type,
            frame.payload,
        ):
            return
        self._last_broadcast = frame
        if frame.msg_type not in _BROADCAST_TYPES:
            return
        try:
            message = decode_message(frame)
        except MessageError:
            return
        if self._check(frame, message) is None:
            self._apply(message)

    async def _handle(self, frame: Frame) -> NakCode | None:
        """The Session's handler: check a frame in SPEC order and carry it out."""
        if frame.msg_type not in _GATEWAY_TYPES:
            return NakCode.UNKNOWN_TYPE
        message = decode_message(frame)  # MessageError → the Session NAKs with its code
        code = self._check(frame, message)
        if code is not None:
            return code
        if isinstance(message, Hello):
            self._set_state(BoardState.IDENTIFIED)
            await self._queue(self._board_info())  # follows the ACK in this slot
            return None
        if isinstance(message, StateRequest):
            await self._queue(self._state_report())
            return None
        self._apply(message)
        return None

    def _check(self, frame: Frame, message: Message) -> NakCode | None:
        """The NAK ``message`` earns, after it decoded: payload, state, index."""
        if isinstance(message, Hello) and message.protocol_version != PROTOCOL_VERSION:
            return NakCode.UNSUPPORTED_VERSION
        if isinstance(message, Configure) and len(message.safe_states) != len(self._relays):
            return NakCode.BAD_PAYLOAD
        allowed: frozenset[MessageType]
        if self._state is BoardState.CONFIGURED:
            allowed = _GATEWAY_TYPES
        elif self._state is BoardState.IDENTIFIED:
            allowed = _IDENTIFIED_TYPES
        else:
            allowed = frozenset({MessageType.HELLO})
        if frame.msg_type not in allowed:
            return NakCode.NOT_CONFIGURED
        if isinstance(message, RelaySet | RelayPulse) and message.relay_index >= len(self._relays):
            return NakCode.BAD_INDEX
        if isinstance(message, ReaderFeedback) and message.reader_index >= len(self._readers):
            return NakCode.BAD_INDEX
        return None

    def _apply(self, message: Message) -> None:
        """Carry out a checked command."""
        match message:
            case Heartbeat(uptime_ms=uptime):
                self.gateway_uptime_ms = uptime
            case Configure(supervision_timeout_ms=timeout, safe_states=states):
                self._supervision_timeout_s = timeout / 1000
                for relay, safe in zip(self._relays, states, strict=True):
                    relay.safe_state = safe
                self._set_state(BoardState.CONFIGURED)
                self._restart_supervision()
            case RelaySet(relay_index=index, on=on):
                self._cancel_pulse(index)
                self._set_relay(index, on)
            case RelayPulse(relay_index=index, duration_ms=duration):
                self._cancel_pulse(index)
                relay = self._relays[index]
                relay.pulses += 1
                self._set_relay(index, True)
                relay.pulse = asyncio.get_running_loop().call_later(
                    duration / 1000, self._pulse_ended, index
                )
            case ReaderFeedback():
                self._show(message)
            case _:
                pass

    # -- relays, readers, supervision ------------------------------------------------------

    def _set_relay(self, index: int, on: bool) -> None:
        relay = self._relays[index]
        if relay.on == on:
            return
        relay.on = on
        _LOGGER.debug(
            "Virtual board %d: relay %d %s", self.config.address, index, "on" if on else "off"
        )
        self._notify()
        if on and self.config.physics and index < self.config.doors:
            self._schedule_physics(index)

    def _cancel_pulse(self, index: int) -> None:
        relay = self._relays[index]
        if relay.pulse is not None:
            relay.pulse.cancel()
            relay.pulse = None

    def _pulse_ended(self, index: int) -> None:
        self._relays[index].pulse = None
        self._set_relay(index, False)

    def _show(self, feedback: ReaderFeedback) -> None:
        reader = self._readers[feedback.reader_index]
        if reader.expiry is not None:
            reader.expiry.cancel()
            reader.expiry = None
        reader.feedback = feedback
        reader.history.append(feedback)
        del reader.history[:-16]
        if feedback.duration_ms:
            reader.expiry = asyncio.get_running_loop().call_later(
                feedback.duration_ms / 1000, self._feedback_ended, feedback.reader_index
            )
        self._notify()

    def _feedback_ended(self, index: int) -> None:
        reader = self._readers[index]
        reader.expiry = None
        reader.feedback = ReaderFeedback(index, LedPattern.OFF, BeepPattern.NONE, 0)
        self._notify()

    def _restart_supervision(self) -> None:
        """Restart the timer if the board was ever configured and is supervised now."""
        timeout = self._supervision_timeout_s
        if timeout is None or self._state not in (BoardState.IDENTIFIED, BoardState.CONFIGURED):
            return
        if self._supervision is not None:
            self._supervision.cancel()
        self._supervision = asyncio.get_running_loop().call_later(timeout, self._supervision_lost)

    def _supervision_lost(self) -> None:
        """The gateway went silent: relays to their safe states, readers off, fault queued."""
        self._supervision = None
        _LOGGER.warning(
            "Virtual board %d: supervision lost, relays to safe states", self.config.address
        )
        self.supervision_losses += 1
        for index, relay in enumerate(self._relays):
            self._cancel_pulse(index)
            self._set_relay(index, relay.safe_state is SafeState.FAIL_SAFE)
        for index in range(len(self._readers)):
            self._show(ReaderFeedback(index, LedPattern.OFF, BeepPattern.NONE, 0))
        self._set_state(BoardState.FALLBACK)
        self._gate.close_slot()
        self._spawn(self.fault(FaultCode.SUPERVISION_LOST), "supervision-fault")

    def _schedule_physics(self, door: int) -> None:
        if self.door_open(door) or door in self._physics:
            return
        loop = asyncio.get_running_loop()
        self._physics[door] = loop.call_later(
            self.config.physics_open_delay_s, self._physics_open, door
        )

    def _physics_open(self, door: int) -> None:
        self._physics.pop(door, None)
        self._spawn(self.open_door(door), f"door-{door}-open")
        self._physics[door] = asyncio.get_running_loop().call_later(
            self.config.physics_open_delay_s + self.config.physics_open_time_s,
            self._physics_close,
            door,
        )

    def _physics_close(self, door: int) -> None:
        self._physics.pop(door, None)
        self._spawn(self.close_door(door), f"door-{door}-close")

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(
            coro, name=f"virtual-board-{self.config.address}:{name}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- sending -------------------------------------------------------------------------------

    def _may_send_own(self) -> bool:
        return self._state in (BoardState.IDENTIFIED, BoardState.CONFIGURED)

    def _write_frame(self, frame: Frame) -> None:
        if self._stream is not None and self._run_state is RunState.RUNNING:
            self._stream.write(b"\x00" + encode_frame(frame))

    def _board_info(self) -> BoardInfo:
        cfg = self.config
        major, minor, patch = cfg.firmware
        return BoardInfo(
            PROTOCOL_VERSION,
            major,
            minor,
            patch,
            cfg.relay_count,
            cfg.doors,
            cfg.input_count,
            (Capability.KEY_READER if cfg.key_reader else Capability.NONE)
            | (Capability.KEYPAD if cfg.keypad else Capability.NONE),
            cfg.serial_number,
        )

    def _state_report(self) -> StateReport:
        inputs = tuple(InputState(item.kind, item.level) for item in self._inputs)
        return StateReport(self.clock_ms, self.relay_bits, inputs)


__all__ = [
    "EVENT_QUEUE_FRAMES",
    "INPUTS_PER_DOOR",
    "KEY_EVENT_MAX_AGE_S",
    "PHYSICS_OPEN_DELAY_S",
    "PHYSICS_OPEN_TIME_S",
    "BoardConfig",
    "BoardState",
    "ByteStream",
    "FdStream",
    "MemoryStream",
    "RunState",
    "TransportStream",
    "VirtualBoard",
    "memory_pipe",
]
