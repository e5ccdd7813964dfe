"""The session: sequence numbers, acknowledgement, retransmission, duplicate suppression.

One ``Session`` per (gateway, board) pair, on each end of the link: the gateway has one per
board address, a board (real or virtual) has one for the gateway. A session speaks ``Frame``
objects through a ``FrameTransport``; bytes, ports and routing by address are the wire layer's
job, and the wire layer calls ``frame_received`` for every frame of this peer and
``connection_lost`` when the link is gone (``FrameReceiver`` is that half of the contract).

The rules (SPEC.md, "Session"):

* Every frame but an ACK or NAK is answered by its receiver with an ACK, or a NAK whose one-byte
  payload is a ``NakCode``, carrying the same ``seq`` and ``address``; FROM_BOARD is set on the
  answer when a board answers.
* The sender numbers its frames with its own uint16 counter (wrapping at ``SEQ_MODULO``),
  registers the pending future for the seq before writing, and sends the identical frame again
  every ``ack_timeout_s`` until it is answered. A *request* gives up after ``max_retries``
  retransmissions (``AckTimeout``); an *event* is retransmitted until it is answered, withdrawn
  by its sender, or the session closes, so it is never lost while the link lives and wanted.
* The receiver remembers the last frame it accepted from its peer and the answer it gave: the
  identical frame again is answered again with the same answer and is not delivered again, so
  a retransmitted relay pulse is never carried out twice. A new frame is delivered once; the
  handler's return value picks the answer (None: ACK, a ``NakCode``: NAK). A handler that
  raises ``MessageError`` is answered with the error's ``nak_code``, one that raises anything
  else with ``HANDLER_FAILED_NAK``; either way the session keeps running.

Choices this module makes:

* **One frame in flight per direction.** Requests and events share one FIFO queue; the next
  frame goes out only once the previous one is answered or given up. This is what makes "last
  frame" duplicate suppression sound: a retransmission is always of the sender's newest frame,
  so on a link that does not reorder (a serial line does not) an older frame never arrives after
  a newer one. On a half-duplex bus it costs nothing, only one frame is on the wire at a time.
  A request queued behind an unanswered event waits for it (or for the link to close).
* **A duplicate is the same frame again:** the remembered seq, type and payload (flags aside).
  A different frame with the remembered seq can only come from a peer that restarted its
  counter, and is delivered.
* **Backpressure, never drop.** At most ``queue_size`` frames wait besides the one in flight;
  ``send()`` and ``request()`` wait for room. Received frames wait in a queue of the same size
  for the handler; a frame that finds it full is dropped unanswered, as if the line had lost it,
  and the peer's retransmission brings it again.
* **Echo and strays are ignored.** A frame for another address, or with our own FROM_BOARD
  direction (an RS-485 transceiver hears itself), is dropped.
* **Withdrawal** (``withdraw``): the sender may take back an event it no longer wants sent (a
  board drops a key presentation nobody answered in time, SPEC.md "Board events"). A queued
  event leaves the queue; the frame in flight is simply not sent again, and a late answer to it
  is stale. Either way its future fails with ``Withdrawn``, and the next frame takes the next seq
  as usual: to the receiver a withdrawn frame is one it never got, or one whose answer was lost.
* **Link loss fails everything with ``LinkClosed``**: the caller of every request in flight or
  queued, every ``send()`` waiting for room, and the future of every unanswered event (their
  number is logged); a handler still running is cancelled.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self, TypeAlias

from firmware_protocol.errors import MessageError, ProtocolError
from firmware_protocol.frame import (
    MAX_ADDRESS,
    MAX_PAYLOAD,
    MIN_ADDRESS,
    PROTOCOL_VERSION,
    SEQ_MODULO,
    UNACKNOWLEDGED_TYPES,
    Flags,
    Frame,
    MessageType,
    NakCode,
)

_LOGGER = logging.getLogger(__name__)

#: How long a sender waits for the answer to a frame before sending it again, in seconds.
#: Read when a session is built, so a test may shrink it (or pass ``ack_timeout_s``).
ACK_TIMEOUT_S = 0.05

#: Retransmissions of a request before it fails with ``AckTimeout`` (events have no limit).
MAX_RETRIES = 5

#: Frames that may wait to be sent (besides the one in flight), and received frames that may
#: wait for the handler.
QUEUE_SIZE = 64

#: The answer to a frame whose handler raised: the receiver could not carry it out.
HANDLER_FAILED_NAK = NakCode.HARDWARE_FAULT

#: Carries out a received frame; returns None to ACK it or a ``NakCode`` to NAK it.
FrameHandler: TypeAlias = Callable[[Frame], Awaitable[NakCode | None]]


class SessionError(ProtocolError):
    """Base of the session's errors: a frame was not (known to be) carried out by the peer."""


class NakReceived(SessionError):
    """The peer refused the frame; retrying the same frame will not help (except after BUSY)."""

    def __init__(self, code: NakCode | int | None, frame: Frame) -> None:
        name = code.name if isinstance(code, NakCode) else code
        super().__init__(f"{_type_name(frame.msg_type)} seq {frame.seq} refused: {name}")
        self.code = code  # None when the NAK carried no code; an int for a code we do not know
        self.frame = frame


class AckTimeout(SessionError):
    """No answer after every retransmission; the peer may or may not have carried it out."""

    def __init__(self, frame: Frame, retransmissions: int) -> None:
        super().__init__(
            f"{_type_name(frame.msg_type)} seq {frame.seq} unanswered "
            f"after {retransmissions} retransmissions"
        )
        self.frame = frame
        self.retransmissions = retransmissions


class LinkClosed(SessionError):
    """The session is not running (not started, closed, or its link is gone)."""


class Withdrawn(SessionError):
    """The sender withdrew the frame unanswered; if it was sent, the peer may have carried it out."""

    def __init__(self, msg_type: MessageType | int, frame: Frame | None) -> None:
        sent = "never sent" if frame is None else f"seq {frame.seq}, sent"
        super().__init__(f"{_type_name(msg_type)} withdrawn unanswered ({sent})")
        self.msg_type = msg_type
        self.frame = frame  # as last sent; None if it never left the queue


class FrameTransport(Protocol):
    """Where a session writes frames: the wire layer, or a fake in tests."""

    def send_frame(self, frame: Frame) -> None:
        """Write ``frame``; fire and forget, may drop it (lossy link), should not raise."""


class FrameReceiver(Protocol):
    """What the wire layer calls on a session (``Session`` is one)."""

    def frame_received(self, frame: Frame) -> None:
        """Take one decoded frame from this peer."""

    def connection_lost(self, exc: Exception | None) -> None:
        """The link is gone; ``exc`` says why, None for an orderly close."""


class SessionState(enum.StrEnum):
    """Lifecycle of a ``Session``; it runs once."""

    NEW = "new"
    RUNNING = "running"
    CLOSED = "closed"


@dataclass(slots=True)
class _Outgoing:
    """A frame waiting to be sent, and the future its outcome settles (a request's caller waits)."""

    msg_type: MessageType | int
    payload: bytes
    future: asyncio.Future[None]
    event: bool  # retransmitted until answered, never given up (a request is, after max_retries)


@dataclass(slots=True)
class _InFlight:
    """The frame on the wire and the future its ACK or NAK resolves."""

    item: _Outgoing
    frame: Frame
    answer: asyncio.Future[Frame]


@dataclass(slots=True)
class _Accepted:
    """The last new frame from the peer and, once its handler returned, the answer given."""

    frame: Frame
    answer: Frame | None = None


class Session:
    """Reliable, ordered, exactly-once delivery of frames to one peer over a lossy transport."""

    def __init__(
        self,
        transport: FrameTransport,
        *,
        address: int,
        from_board: bool,
        handler: FrameHandler,
        ack_timeout_s: float | None = None,
        max_retries: int | None = None,
        queue_size: int | None = None,
        initial_seq: int = 0,
    ) -> None:
        """``address`` is the board's; ``from_board`` is True on the board's end of the link."""
        ack_timeout_s = ACK_TIMEOUT_S if ack_timeout_s is None else ack_timeout_s
        max_retries = MAX_RETRIES if max_retries is None else max_retries
        queue_size = QUEUE_SIZE if queue_size is None else queue_size
        if not MIN_ADDRESS <= address <= MAX_ADDRESS:
            raise ValueError(f"board address {address} outside {MIN_ADDRESS}..{MAX_ADDRESS}")
        if not ack_timeout_s > 0:
            raise ValueError(f"ack_timeout_s must be positive, not {ack_timeout_s}")
        if max_retries < 0:
            raise ValueError(f"max_retries must not be negative, not {max_retries}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, not {queue_size}")
        if not 0 <= initial_seq < SEQ_MODULO:
            raise ValueError(f"initial_seq {initial_seq} outside 0..{SEQ_MODULO - 1}")
        self._transport = transport
        self._address = address
        self._from_board = from_board
        self._flags = Flags.FROM_BOARD if from_board else Flags.NONE
        self._handler = handler
        self._ack_timeout_s = ack_timeout_s
        self._max_retries = max_retries
        self._queue_size = queue_size
        self._next_seq = initial_seq
        self._label = f"{'board' if from_board else 'gateway'}:{address}"
        self._state = SessionState.NEW
        # Sending: the queue, its two wake-ups, and the one frame on the wire.
        self._outbox: collections.deque[_Outgoing] = collections.deque()
        self._outbox_ready = asyncio.Event()
        self._room = asyncio.Event()
        self._in_flight: _InFlight | None = None
        # Receiving: frames waiting for the handler, and what duplicate suppression remembers.
        self._inbox: collections.deque[Frame] = collections.deque()
        self._inbox_ready = asyncio.Event()
        self._accepted: _Accepted | None = None
        self._sender: asyncio.Task[None] | None = None
        self._receiver: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def state(self) -> SessionState:
        """Where the session is in its lifecycle."""
        return self._state

    @property
    def address(self) -> int:
        """The board's bus address."""
        return self._address

    @property
    def from_board(self) -> bool:
        """True on the board's end of the link."""
        return self._from_board

    @property
    def ack_timeout_s(self) -> float:
        """How long the session waits for an answer before sending a frame again, in seconds."""
        return self._ack_timeout_s

    @property
    def next_seq(self) -> int:
        """The seq the next frame sent will carry."""
        return self._next_seq

    @property
    def queued(self) -> int:
        """Frames waiting to be sent, not counting the one in flight."""
        return len(self._outbox)

    @property
    def in_flight(self) -> Frame | None:
        """The frame sent and waiting for its answer (None: none is)."""
        flight = self._in_flight
        return None if flight is None or flight.answer.done() else flight.frame

    def _set_state(self, state: SessionState) -> None:
        """The one place the state changes."""
        _LOGGER.debug("Session %s: %s -> %s", self._label, self._state, state)
        self._state = state

    async def start(self) -> None:
        """Start sending and receiving."""
        if self._state is not SessionState.NEW:
            raise SessionError(f"session {self._label} cannot start from state {self._state}")
        self._sender = asyncio.create_task(self._run_sender(), name=f"session-send:{self._label}")
        self._receiver = asyncio.create_task(
            self._run_receiver(), name=f"session-receive:{self._label}"
        )
        for task in (self._sender, self._receiver):
            task.add_done_callback(self._task_done)
        self._set_state(SessionState.RUNNING)

    async def close(self) -> None:
        """Fail everything pending with ``LinkClosed`` and wait for the tasks to end; idempotent."""
        self._shutdown("session closed", None)
        tasks = [task for task in (self._sender, self._receiver) if task is not None]
        if tasks:
            # asyncio.wait does not raise the tasks' CancelledError, but does raise our own.
            await asyncio.wait(tasks)

    def connection_lost(self, exc: Exception | None) -> None:
        """The link is gone: fail everything pending with LinkClosed; ``close()`` still reaps."""
        self._shutdown("link lost", exc)

    async def request(self, msg_type: MessageType | int, payload: bytes = b"") -> None:
        """Send a frame and wait for its ACK; raises NakReceived, AckTimeout or LinkClosed."""
        item = self._outgoing(msg_type, payload, event=False)
        await self._enqueue(item)
        # Cancelling the caller cancels the future: the sender then stops retransmitting.
        await item.future

    async def send(self, msg_type: MessageType | int, payload: bytes = b"") -> asyncio.Future[None]:
        """Queue an event, sent in order and retransmitted until answered; waits for room.

        Returns once queued, with the event's outcome, which nobody needs to await: None once
        ACKed, or ``NakReceived`` (also logged; the next event goes out), ``Withdrawn``, or
        ``LinkClosed`` when the session closed first. Raises ``LinkClosed``.
        """
        item = self._outgoing(msg_type, payload, event=True)
        # The session reports what befalls an event itself: an outcome nobody looks at is fine.
        item.future.add_done_callback(_outcome_seen)
        await self._enqueue(item)
        return item.future

    def withdraw(self, sent: asyncio.Future[None]) -> bool:
        """Stop sending the event ``sent`` is the outcome of, unless answered; True if withdrawn.

        A queued event leaves the queue; one in flight is not sent again and a late answer to it
        is ignored. ``sent`` fails with ``Withdrawn``. Already answered, refused, withdrawn, or
        dropped at close: a no-op.
        """
        if sent.done():
            return False
        flight = self._in_flight
        if flight is not None and flight.item.future is sent:
            if flight.answer.done():
                return False  # answered; the sender task settles it in a moment
            self._in_flight = None  # from now on an answer to it is stale
            sent.set_exception(Withdrawn(flight.item.msg_type, flight.frame))
        else:
            item = next((item for item in self._outbox if item.future is sent), None)
            if item is None:
                return False  # not an event of this session's
            self._outbox.remove(item)
            self._room.set()
            sent.set_exception(Withdrawn(item.msg_type, None))
        _LOGGER.debug("Session %s: %s", self._label, sent.exception())
        return True

    def frame_received(self, frame: Frame) -> None:
        """Take one decoded frame from the wire layer (it routes frames by address)."""
        if self._state is not SessionState.RUNNING:
            _LOGGER.debug("Session %s is %s: dropped %s", self._label, self._state, frame)
            return
        if frame.address != self._address or frame.from_board == self._from_board:
            _LOGGER.debug("Session %s: dropped a stray or echoed frame %s", self._label, frame)
            return
        if frame.msg_type in UNACKNOWLEDGED_TYPES:
            self._answer_received(frame)
            return
        accepted = self._accepted
        if accepted is not None and _same_frame(accepted.frame, frame):
            # A retransmission: the peer missed our answer (or it is not given yet).
            if accepted.answer is not None:
                self._write(accepted.answer)
            return
        if len(self._inbox) >= self._queue_size:
            # Not remembered, so the peer's retransmission is taken as new once there is room.
            _LOGGER.debug("Session %s: receive queue full, dropped %s", self._label, frame)
            return
        self._accepted = _Accepted(frame)
        self._inbox.append(frame)
        self._inbox_ready.set()

    def _outgoing(self, msg_type: MessageType | int, payload: bytes, *, event: bool) -> _Outgoing:
        """A queue item, checked here so that a bad frame fails its caller, not the sender task."""
        if msg_type in UNACKNOWLEDGED_TYPES:
            raise ValueError("ACK and NAK are sent by the session itself")
        if len(payload) > MAX_PAYLOAD:
            raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        return _Outgoing(msg_type, bytes(payload), future, event)

    async def _enqueue(self, item: _Outgoing) -> None:
        """Append ``item`` to the send queue, waiting while it is full."""
        while True:
            if self._state is not SessionState.RUNNING:
                raise LinkClosed(f"session {self._label} is {self._state}")
            if len(self._outbox) < self._queue_size:
                break
            self._room.clear()
            await self._room.wait()
        self._outbox.append(item)
        self._outbox_ready.set()

    def _take_seq(self) -> int:
        """The next seq of this sender's counter."""
        seq = self._next_seq
        self._next_seq = (seq + 1) % SEQ_MODULO
        return seq

    def _write(self, frame: Frame) -> None:
        """Hand ``frame`` to the transport; a transport that raises has lost its link."""
        try:
            self._transport.send_frame(frame)
        except Exception as err:  # the contract says it does not raise: treat it as link loss
            self.connection_lost(err)

    async def _run_sender(self) -> None:
        """Send queued frames one at a time, each until it is answered or given up."""
        while True:
            while not self._outbox:
                self._outbox_ready.clear()
                await self._outbox_ready.wait()
            item = self._outbox.popleft()
            self._room.set()
            if item.future.done():
                continue  # cancelled (a request's caller gave up) while it waited
            await self._transmit(item)

    async def _transmit(self, item: _Outgoing) -> None:
        """Send ``item`` as one frame, retransmit it until answered, and settle its caller."""
        frame = Frame(self._address, self._take_seq(), item.msg_type, item.payload, self._flags)
        answer: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        self._in_flight = _InFlight(item, frame, answer)  # registered before the first write
        # The item's future is done early only if its caller was cancelled or it was withdrawn.
        waiting: set[asyncio.Future[Frame] | asyncio.Future[None]] = {answer, item.future}
        retransmissions = 0
        try:
            while True:
                self._write(frame)
                await asyncio.wait(
                    waiting, timeout=self._ack_timeout_s, return_when=asyncio.FIRST_COMPLETED
                )
                if answer.done() or item.future.done():
                    break
                if not item.event and retransmissions >= self._max_retries:
                    item.future.set_exception(AckTimeout(frame, retransmissions))
                    return
                retransmissions += 1
                _LOGGER.debug(
                    "Session %s: no answer to %s seq %d, retransmission %d",
                    self._label,
                    _type_name(frame.msg_type),
                    frame.seq,
                    retransmissions,
                )
        finally:
            self._in_flight = None
        if not answer.done():
            return  # the request's caller was cancelled, or the frame withdrawn
        reply = answer.result()
        if item.future.done():
            return  # cancelled as the answer came
        if reply.msg_type == MessageType.ACK:
            item.future.set_result(None)
            return
        error = NakReceived(_nak_code(reply.payload), frame)
        if item.event:
            _LOGGER.warning("Session %s: event not carried out: %s", self._label, error)
        item.future.set_exception(error)

    def _answer_received(self, frame: Frame) -> None:
        """Resolve the frame in flight with this ACK or NAK, if it answers it."""
        flight = self._in_flight
        if flight is None or flight.frame.seq != frame.seq or flight.answer.done():
            # An answer to a retransmission of a frame already answered, or given up.
            _LOGGER.debug("Session %s: stale answer %s", self._label, frame)
            return
        flight.answer.set_result(frame)

    async def _run_receiver(self) -> None:
        """Carry out received frames one at a time, in order, and answer each."""
        while True:
            while not self._inbox:
                self._inbox_ready.clear()
                await self._inbox_ready.wait()
            frame = self._inbox.popleft()
            code = await self._carry_out(frame)
            answer = Frame(
                self._address,
                frame.seq,
                MessageType.ACK if code is None else MessageType.NAK,
                b"" if code is None else bytes([code]),
                self._flags,
            )
            accepted = self._accepted
            if accepted is not None and accepted.frame is frame:
                accepted.answer = answer  # a later retransmission gets the same answer
            self._write(answer)

    async def _carry_out(self, frame: Frame) -> NakCode | None:
        """The handler's verdict on ``frame``; a frame of another version is refused unseen."""
        if frame.version != PROTOCOL_VERSION:
            return NakCode.UNSUPPORTED_VERSION
        try:
            return await self._handler(frame)
        except MessageError as err:  # the frame, not the handler, is at fault
            _LOGGER.debug("Session %s: refused seq %d: %s", self._label, frame.seq, err)
            return err.nak_code
        except Exception:
            _LOGGER.exception(
                "Session %s: handler failed on %s seq %d; answering NAK %s",
                self._label,
                _type_name(frame.msg_type),
                frame.seq,
                HANDLER_FAILED_NAK.name,
            )
            return HANDLER_FAILED_NAK

    def _shutdown(self, reason: str, cause: Exception | None) -> None:
        """Close once: fail every caller with ``LinkClosed``, drop the queues, cancel the tasks."""
        if self._state is SessionState.CLOSED:
            return
        self._set_state(SessionState.CLOSED)
        items = list(self._outbox)
        self._outbox.clear()
        self._inbox.clear()
        flight, self._in_flight = self._in_flight, None
        if flight is not None:
            flight.answer.cancel()
            items.insert(0, flight.item)
        events = 0
        for item in items:
            if item.future.done():
                continue  # cancelled (a request's caller gave up)
            if item.event:
                events += 1
            error = LinkClosed(f"session {self._label}: {reason}")
            error.__cause__ = cause
            item.future.set_exception(error)
        if events:
            _LOGGER.warning(
                "Session %s: %s; %d unanswered events dropped", self._label, reason, events
            )
        self._room.set()  # send() callers waiting for room wake up and see CLOSED
        for task in (self._sender, self._receiver):
            if task is not None:
                task.cancel()

    def _task_done(self, task: asyncio.Task[None]) -> None:
        """A session task ended; unless the session is closing, it crashed: close the session."""
        exc = None if task.cancelled() else task.exception()
        if self._state is SessionState.RUNNING:
            _LOGGER.error(
                "Session %s: task %s ended unexpectedly",
                self._label,
                task.get_name(),
                exc_info=exc,
            )
            self._shutdown(
                f"task {task.get_name()} ended", exc if isinstance(exc, Exception) else None
            )


def _outcome_seen(future: asyncio.Future[None]) -> None:
    """Mark an event's failure as retrieved: asyncio would log one that nobody awaited."""
    if not future.cancelled():
        future.exception()


def _nak_code(payload: bytes) -> NakCode | int | None:
    """The code a NAK carries (tolerant of codes this version does not know)."""
    return NakCode.tolerant(payload[0]) if payload else None


def _same_frame(remembered: Frame, frame: Frame) -> bool:
    """Whether ``frame`` is a retransmission of ``remembered`` (flags may differ, e.g. MORE)."""
    return (remembered.seq, remembered.msg_type, remembered.payload) == (
        frame.seq,
        frame.msg_type,
        frame.payload,
    )


def _type_name(msg_type: MessageType | int) -> str:
    """A message type for messages: its name, or its code for a type we do not know."""
    return msg_type.name if isinstance(msg_type, MessageType) else f"type 0x{msg_type:02x}"
