"""Door boards on one bus as the gateway's hardware backend: relays, readers, inputs, board events.

``BoardBank`` owns one ``BoardLink`` and, per configured board address, the handshake and the
supervision of SPEC.md ("Bus access", "Session", "Supervision"). It implements ``RelayBank``
(channel → board relay) and ``ReaderBank`` (reader id → board reader: KEY_PRESENTED and
PIN_ENTERED become ``CredentialRead``), turns INPUT_CHANGED into ``InputEvent`` and BOARD_FAULT /
online / offline into ``BoardEvent``. A PIN's digits are handed to the read handler and never
logged (SPEC.md, "PIN_ENTERED").

How it runs:

* A supervisor task builds the link (one ``Session`` per board), opens it, and starts one worker
  task per board. When the link fails it stops the workers, marks every board offline and builds
  a new link after the reconnect policy's delay.
* A board's worker runs the handshake (HELLO → BOARD_INFO → CONFIGURE → STATE_REQUEST) and then
  addresses the board at least every ``poll_interval_s``: with the next queued command, or a
  HEARTBEAT. Those frames give the board its reply slots for events. A frame the board leaves
  unanswered after every retransmission marks it offline; the worker then retries the handshake
  after the policy's delay, without holding up the other boards' workers. NAK ``NOT_CONFIGURED``
  (the board restarted or fell back) restarts the handshake at once.
* Only one station talks (SPEC.md, "Bus access"): ``_bus`` is held from a request to a board
  until that board's reply slot ends. The link shows the bank every frame exchanged with the
  board (``_ReplySlot``); the slot goes on while the board's last frame carried ``MORE`` (on an
  ACK/NAK: a frame of its follows now; on its own frame: the next follows the gateway's answer)
  or while a board frame is still unanswered. It ends when neither holds, or after the session's
  retransmission timeout (``RETRANSMIT_TIMEOUT_MS``) without a frame either way: a board that
  announces a frame and stays silent costs one timeout, and is not marked offline for it.
  Turns on the bus (``BusTurns``) go to waiting commands before idle HEARTBEATs.
* ``set``/``pulse``/``feedback`` are synchronous (``RelayBank``/``ReaderBank``): the command is
  queued (bounded) for the board's worker, and a command that is not carried out is reported
  (WARNING and ``on_command_failed``), never taken as done. A relay's state changes when the
  board has acknowledged the command. ``set_relay``/``pulse_relay``/``send_feedback`` await
  the acknowledgement and raise ``CommandFailed``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType, TracebackType
from typing import NamedTuple, Protocol, Self, TypeAlias, TypeVar

from drivers import base
from drivers.base import CredentialRead, Feedback, InputEvent, InputRole
from drivers.serial_link import DEFAULT_BAUDRATE, BoardLink, PortOpenError, Rs485Options
from firmware_protocol import (
    MAX_ADDRESS,
    MIN_ADDRESS,
    PROTOCOL_VERSION,
    SEQ_MODULO,
    BeepPattern,
    BoardFault,
    BoardInfo,
    Configure,
    FaultCode,
    Flags,
    Frame,
    Heartbeat,
    Hello,
    InputChanged,
    InputKind,
    KeyPresented,
    LedPattern,
    Message,
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
from firmware_protocol.messages import (
    MAX_INPUTS,
    MAX_RELAYS,
    RELAY_PULSE_MAX_MS,
    RELAY_PULSE_MIN_MS,
    SUPERVISION_TIMEOUT_MIN_MS,
)
from firmware_protocol.session import (
    AckTimeout,
    FrameHandler,
    LinkClosed,
    NakReceived,
    SessionError,
)

_LOGGER = logging.getLogger(__name__)

#: How often each online board is addressed at least once, in seconds. SPEC.md "Timing" asks for
#: at least once a second; a board's event waits for its next reply slot, so this bounds the
#: latency of a key or REX: 5 ms keeps a key-to-relay exchange well inside 15 ms (bench e2e).
POLL_INTERVAL_S = 0.005
#: Sent in HELLO: the longest the gateway leaves a board unaddressed (SPEC.md "Timing").
HEARTBEAT_INTERVAL_MS = 1000
#: Recommended CONFIGURE value, at least 3 heartbeat intervals (SPEC.md "Timing").
SUPERVISION_TIMEOUT_MS = 3000
#: Commands that may wait for one board's worker; a command that finds the queue full fails.
COMMAND_QUEUE_SIZE = 16
#: How long a STATE_REPORT may take to arrive after the board acknowledged STATE_REQUEST.
STATE_REPORT_TIMEOUT_S = 2.0
#: How long GRANTED, DENIED, LOW_ASSURANCE and FAULT stay on a reader (READER_FEEDBACK
#: duration_ms): ``drivers.base.FEEDBACK_SHOWN_S``.
FEEDBACK_DURATION_MS = round(base.FEEDBACK_SHOWN_S * 1000)

_U32 = 1 << 32
_U16 = 0xFFFF
_T = TypeVar("_T")


class BoardBankError(Exception):
    """Base of this module's errors."""


class BoardBankConfigError(BoardBankError, ValueError):
    """The configuration is inconsistent (fix it and restart)."""


class UnknownChannelError(BoardBankError, LookupError):
    """No relay or reader is configured under that name (a wiring mistake in the caller)."""


class HandshakeError(BoardBankError):
    """The board answered, but the handshake could not complete (retried with the policy)."""


class CommandFailed(BoardBankError, base.CommandFailed):
    """A command was not (known to be) carried out by the board; ``channel`` names its target."""


class CommandRefused(CommandFailed):
    """The board refused the command (NAK); sending it again will not help."""


class CommandUnconfirmed(CommandFailed):
    """The board did not answer; it may or may not have carried the command out."""


class BoardOffline(CommandFailed):
    """The board is offline (or the bank is stopped); the command was not sent."""


class ReconnectPolicy(Protocol):
    """Delays between reconnect attempts; ``reset()`` after a success."""

    def next_delay(self) -> float:
        """Seconds to wait before the next attempt; counts one more failure."""

    def reset(self) -> None:
        """Forget past failures."""


#: The board's own InputKind for each role (to warn about a wiring/configuration mismatch).
_ROLE_KINDS: Mapping[InputRole, InputKind] = MappingProxyType(
    {
        InputRole.CONTACT: InputKind.DOOR_CONTACT,
        InputRole.REX: InputKind.REX,
        InputRole.TAMPER: InputKind.TAMPER,
        InputRole.AUX: InputKind.AUX,
    }
)

#: READER_FEEDBACK for each Feedback: (LED, beep, duration_ms).
_FEEDBACK: Mapping[Feedback, tuple[LedPattern, BeepPattern, int]] = MappingProxyType(
    {
        Feedback.GRANTED: (LedPattern.SOLID_GREEN, BeepPattern.SHORT, FEEDBACK_DURATION_MS),
        Feedback.DENIED: (LedPattern.SOLID_RED, BeepPattern.DOUBLE, FEEDBACK_DURATION_MS),
        Feedback.LOW_ASSURANCE: (LedPattern.SOLID_AMBER, BeepPattern.DOUBLE, FEEDBACK_DURATION_MS),
        Feedback.FAULT: (LedPattern.BLINK_AMBER, BeepPattern.LONG, FEEDBACK_DURATION_MS),
        Feedback.HELD_OPEN: (LedPattern.BLINK_RED, BeepPattern.TRIPLE, 0),  # until cleared
        Feedback.DOOR_ALARM: (LedPattern.BLINK_RED, BeepPattern.CONTINUOUS, 0),  # until closed
        Feedback.IDLE: (LedPattern.OFF, BeepPattern.NONE, 0),
    }
)


@dataclass(frozen=True, slots=True)
class BoardPort:
    """A relay, reader or input: the board's address and its index on that board."""

    address: int
    index: int


class InputBinding(NamedTuple):
    """What a board input is: the door (channel) it belongs to and its role."""

    channel: str
    kind: InputRole


@dataclass(frozen=True, slots=True)
class BoardSpec:
    """One board: per-relay safe states (relays not listed are FAIL_SECURE) and its timeout."""

    safe_states: Mapping[int, SafeState] = field(default_factory=dict)
    supervision_timeout_ms: int = SUPERVISION_TIMEOUT_MS

    def __post_init__(self) -> None:
        if not SUPERVISION_TIMEOUT_MIN_MS <= self.supervision_timeout_ms <= _U16:
            raise BoardBankConfigError(
                f"supervision_timeout_ms {self.supervision_timeout_ms} is outside "
                f"{SUPERVISION_TIMEOUT_MIN_MS}..{_U16}"
            )
        states: dict[int, SafeState] = {}
        for index, state in dict(self.safe_states).items():
            if not 0 <= index < MAX_RELAYS:
                raise BoardBankConfigError(f"safe state for relay {index} outside 0..15")
            try:
                states[index] = SafeState(state)
            except ValueError:
                raise BoardBankConfigError(f"relay {index}: unknown safe state {state}") from None
        object.__setattr__(self, "safe_states", MappingProxyType(states))

    def configure(self, relay_count: int) -> Configure:
        """The CONFIGURE for a board with ``relay_count`` relays."""
        states = tuple(self.safe_states.get(i, SafeState.FAIL_SECURE) for i in range(relay_count))
        return Configure(self.supervision_timeout_ms, states)


@dataclass(frozen=True, slots=True)
class BoardBankConfig:
    """One bus: its port, its boards, and where each relay, reader and input is."""

    url: str
    boards: Mapping[int, BoardSpec]
    relays: Mapping[str, BoardPort] = field(default_factory=dict)
    readers: Mapping[str, BoardPort] = field(default_factory=dict)
    inputs: Mapping[BoardPort, InputBinding] = field(default_factory=dict)
    baudrate: int = DEFAULT_BAUDRATE
    rs485: Rs485Options | None = None  # kernel RTS direction control for half-duplex RS-485

    def __post_init__(self) -> None:
        if not self.boards:
            raise BoardBankConfigError(f"bus {self.url}: no boards configured")
        for address in self.boards:
            if not MIN_ADDRESS <= address <= MAX_ADDRESS:
                raise BoardBankConfigError(
                    f"bus {self.url}: board address {address} outside {MIN_ADDRESS}..{MAX_ADDRESS}"
                )
        if self.baudrate <= 0:
            raise BoardBankConfigError(f"bus {self.url}: baud rate {self.baudrate}")
        relays = self._ports("relay", self.relays, MAX_RELAYS)
        readers = self._ports("reader", self.readers, 256)
        inputs: dict[BoardPort, InputBinding] = {}
        for key, value in dict(self.inputs).items():
            port = self._port("input", f"{key}", key, MAX_INPUTS)
            channel, kind = value
            try:
                inputs[port] = InputBinding(str(channel), InputRole(kind))
            except ValueError:
                raise BoardBankConfigError(
                    f"bus {self.url}: input {key}: kind {kind!r} is not one of "
                    f"{', '.join(InputRole)}"
                ) from None
        object.__setattr__(self, "boards", MappingProxyType(dict(self.boards)))
        object.__setattr__(self, "relays", MappingProxyType(relays))
        object.__setattr__(self, "readers", MappingProxyType(readers))
        object.__setattr__(self, "inputs", MappingProxyType(inputs))

    def _ports(self, what: str, ports: Mapping[str, BoardPort], limit: int) -> dict[str, BoardPort]:
        checked: dict[str, BoardPort] = {}
        owners: dict[BoardPort, str] = {}
        for name, value in dict(ports).items():
            port = self._port(what, repr(name), value, limit)
            if port in owners:
                raise BoardBankConfigError(
                    f"bus {self.url}: {what} {port.index} of board {port.address} is both "
                    f"{owners[port]!r} and {name!r}"
                )
            owners[port] = name
            checked[name] = port
        return checked

    def _port(
        self, what: str, name: str, value: BoardPort | tuple[int, int], limit: int
    ) -> BoardPort:
        try:
            port = value if isinstance(value, BoardPort) else BoardPort(*value)
        except TypeError:
            raise BoardBankConfigError(
                f"bus {self.url}: {what} {name}: expected (address, index), got {value!r}"
            ) from None
        if port.address not in self.boards:
            raise BoardBankConfigError(
                f"bus {self.url}: {what} {name} is on board {port.address}, which is not configured"
            )
        if not 0 <= port.index < limit:
            raise BoardBankConfigError(
                f"bus {self.url}: {what} {name}: index {port.index} outside 0..{limit - 1}"
            )
        return port

    @classmethod
    def per_door(
        cls,
        url: str,
        doors: Mapping[int, Sequence[str]],
        *,
        baudrate: int = DEFAULT_BAUDRATE,
        spec: BoardSpec | None = None,
    ) -> Self:
        """Boards wired door by door: door *d* has relay *d*, reader *d*, inputs 3d..3d+2.

        ``doors`` maps a board address to its door ids, in door order; each door id names its
        relay, its reader and the channel of its contact, REX and tamper inputs.
        """
        spec = spec or BoardSpec()
        relays: dict[str, BoardPort] = {}
        inputs: dict[BoardPort, InputBinding] = {}
        for address, names in doors.items():
            for door, name in enumerate(names):
                relays[name] = BoardPort(address, door)
                for offset, role in enumerate((InputRole.CONTACT, InputRole.REX, InputRole.TAMPER)):
                    inputs[BoardPort(address, 3 * door + offset)] = InputBinding(name, role)
        return cls(
            url,
            dict.fromkeys(doors, spec),
            relays=relays,
            readers=dict(relays),
            inputs=inputs,
            baudrate=baudrate,
        )


@dataclass(frozen=True, slots=True)
class BoardStatus:
    """A board came online (handshake done) or went offline, and why."""

    address: int
    online: bool
    reason: str
    info: BoardInfo | None = None  # what the board reported, when online


@dataclass(frozen=True, slots=True)
class BoardFaultEvent:
    """A board reported a fault (BOARD_FAULT)."""

    address: int
    code: FaultCode | int
    detail: str


BoardEvent: TypeAlias = BoardStatus | BoardFaultEvent


@dataclass(frozen=True, slots=True)
class InputSnapshot:
    """One input in a STATE_REPORT, with its configured binding when it has one."""

    index: int
    kind: InputKind | int
    level: int
    binding: InputBinding | None


@dataclass(frozen=True, slots=True)
class BoardSnapshot:
    """What a board reported in a STATE_REPORT: every relay and input."""

    address: int
    board_clock_ms: int
    relays: tuple[bool, ...]  # by relay index, for the relays BOARD_INFO announced
    inputs: tuple[InputSnapshot, ...]
    channels: Mapping[str, bool]  # configured relay channel → energised

    def door_inputs(self, channel: str) -> dict[InputRole, int]:
        """The levels of ``channel``'s configured inputs, by role."""
        return {
            i.binding.kind: i.level
            for i in self.inputs
            if i.binding is not None and i.binding.channel == channel
        }


class BusTurns:
    """The right to talk on the bus, one request at a time; commands waiting go before polls.

    A relay or reader command must not queue behind every other board's idle HEARTBEAT: on a
    bus of several boards that would add one exchange per board to an unlock.
    """

    def __init__(self) -> None:
        self._held = False
        self._urgent: collections.deque[asyncio.Future[None]] = collections.deque()
        self._polls: collections.deque[asyncio.Future[None]] = collections.deque()

    @contextlib.asynccontextmanager
    async def turn(self, *, poll: bool = False) -> AsyncIterator[None]:
        """Hold the bus for the body; a ``poll`` waits while any command waits."""
        await self._acquire(poll)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, poll: bool) -> None:
        if not self._held:
            self._held = True
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._polls if poll else self._urgent
        queue.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # handed the bus just as it was cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):
                    queue.remove(waiter)
            raise

    def _release(self) -> None:
        """Hand the bus to the next waiter (commands first), or free it."""
        for queue in (self._urgent, self._polls):
            while queue:
                waiter = queue.popleft()
                if not waiter.done():
                    waiter.set_result(None)  # still held: it is that waiter's turn now
                    return
        self._held = False


class BankState(enum.StrEnum):
    """Lifecycle of a ``BoardBank``; it runs once."""

    NEW = "new"
    RUNNING = "running"
    STOPPED = "stopped"


class _ReplySlot:
    """One board's reply slot, as the frames exchanged with it show it (SPEC.md, "Bus access")."""

    def __init__(self) -> None:
        self._announced = False  # the board's last frame carried MORE: another is on its way
        self._unanswered: int | None = None  # seq of a board frame the gateway has not answered
        self._last_frame_at = 0.0  # time.monotonic() of the last frame sent or received
        self._changed = asyncio.Event()

    def open(self) -> None:
        """A request is about to go out: a new slot, in which the board has announced nothing."""
        self._announced = False
        self._unanswered = None

    def observe(self, frame: Frame) -> None:
        """The link's frame observer: every frame to or from the board."""
        self._last_frame_at = time.monotonic()
        if frame.from_board:
            self._announced = bool(frame.flags & Flags.MORE)
            if frame.needs_ack:
                self._unanswered = frame.seq
        elif not frame.needs_ack and frame.seq == self._unanswered:
            self._unanswered = None  # our answer is on its way, ahead of any later frame
        self._changed.set()

    @property
    def held(self) -> bool:
        """Whether the board keeps the bus: it announced a frame, or one of its is unanswered."""
        return self._announced or self._unanswered is not None

    async def wait_end(self, quiet_s: float) -> bool:
        """Wait until the slot ends; False if it ended by ``quiet_s`` without a frame."""
        while self.held:
            remaining = self._last_frame_at + quiet_s - time.monotonic()
            if remaining <= 0:
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._changed.wait()
        return True


@dataclass(slots=True)
class _Command:
    """A command for one board's worker; ``channel`` is the relay or reader it concerns."""

    channel: str
    message: Message
    future: asyncio.Future[None]


@dataclass(eq=False, slots=True)
class _Board:
    """What the bank knows about one board."""

    address: int
    spec: BoardSpec
    policy: ReconnectPolicy
    online: bool | None = None  # None until the first attempt
    reason: str = "not started"
    info: BoardInfo | None = None
    link: BoardLink | None = None
    info_waiter: asyncio.Future[BoardInfo] | None = None
    report_waiters: list[asyncio.Future[StateReport]] = field(default_factory=list)
    commands: collections.deque[_Command] = field(default_factory=collections.deque)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    attempted: bool = False  # the first handshake attempt on this bank is over
    slot: _ReplySlot = field(default_factory=_ReplySlot)


class BoardBank:
    """The door boards on one bus as a ``RelayBank`` and a ``ReaderBank``, with inputs and events."""

    def __init__(
        self,
        config: BoardBankConfig,
        *,
        backoff: Callable[[], ReconnectPolicy],
        on_board_event: Callable[[BoardEvent], None] | None = None,
        on_command_failed: Callable[[str, CommandFailed], None] | None = None,
        poll_interval_s: float | None = None,
        heartbeat_interval_ms: int = HEARTBEAT_INTERVAL_MS,
        ack_timeout_s: float | None = None,
        max_retries: int | None = None,
        read_poll_interval_s: float | None = None,
    ) -> None:
        """``backoff()`` makes one reconnect policy (for the link, and for each board)."""
        self._config = config
        self._poll_s = POLL_INTERVAL_S if poll_interval_s is None else poll_interval_s
        if not self._poll_s > 0:
            raise BoardBankConfigError(f"poll_interval_s must be positive, not {self._poll_s}")
        if not 1 <= heartbeat_interval_ms <= _U16:
            raise BoardBankConfigError(
                f"heartbeat_interval_ms {heartbeat_interval_ms} outside 1..65535"
            )
        for address, spec in config.boards.items():
            if spec.supervision_timeout_ms < 3 * heartbeat_interval_ms:
                raise BoardBankConfigError(
                    f"board {address}: supervision_timeout_ms {spec.supervision_timeout_ms} is "
                    f"less than 3 heartbeat intervals ({3 * heartbeat_interval_ms})"
                )
        self._heartbeat_ms = heartbeat_interval_ms
        self._ack_timeout_s = ack_timeout_s
        self._max_retries = max_retries
        self._read_poll_s = read_poll_interval_s
        self._backoff = backoff
        self._on_board_event = on_board_event
        self._on_command_failed = on_command_failed
        self._boards = {
            address: _Board(address, spec, backoff()) for address, spec in config.boards.items()
        }
        self._relay_on: dict[str, bool] = dict.fromkeys(config.relays, False)
        self._relay_by_port = {port: name for name, port in config.relays.items()}
        self._reader_by_port = {port: name for name, port in config.readers.items()}
        self._pulse_ends: dict[str, asyncio.TimerHandle] = {}
        self._listeners: list[Callable[[str, bool], None]] = []
        self._read_handler: Callable[[CredentialRead], None] | None = None
        self._input_handler: Callable[[InputEvent], None] | None = None
        self._state = BankState.NEW
        self._bus = BusTurns()  # held from a request until the board's reply slot ends
        self._supervisor: asyncio.Task[None] | None = None
        self._first_round = asyncio.Event()
        self._started_at = time.monotonic()
        self._link: BoardLink | None = None

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

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def run_state(self) -> BankState:
        """Where the bank is in its lifecycle."""
        return self._state

    @property
    def config(self) -> BoardBankConfig:
        """The bus configuration."""
        return self._config

    def _set_state(self, state: BankState) -> None:
        """The one place the state changes."""
        _LOGGER.debug("Board bank %s: %s -> %s", self._config.url, self._state, state)
        self._state = state

    async def start(self) -> None:
        """Open the link and try every board's handshake once; failures are reported, not raised."""
        if self._state is not BankState.NEW:
            raise BoardBankError(f"board bank {self._config.url} cannot start from {self._state}")
        self._set_state(BankState.RUNNING)
        self._started_at = time.monotonic()
        self._supervisor = asyncio.create_task(
            self._supervise(), name=f"board-bank-link:{self._config.url}"
        )
        await self._first_round.wait()

    async def stop(self) -> None:
        """Stop polling, fail queued commands, close the link; idempotent."""
        if self._state is BankState.STOPPED:
            return
        self._set_state(BankState.STOPPED)
        task, self._supervisor = self._supervisor, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])  # does not raise the task's CancelledError
        for name, handle in list(self._pulse_ends.items()):
            handle.cancel()
            del self._pulse_ends[name]
        for board in self._boards.values():
            self._fail_queued(board, "board bank stopped")

    # -- RelayBank -------------------------------------------------------------------------

    def is_on(self, channel: str) -> bool:
        """Whether the board has acknowledged that the relay is energised (as far as known)."""
        self._relay_port(channel)
        return self._relay_on[channel]

    def set(self, channel: str, on: bool) -> None:
        """Queue RELAY_SET; a failure is logged and reported to ``on_command_failed``."""
        port = self._relay_port(channel)
        self._report(self._submit(port.address, channel, RelaySet(port.index, on)))

    def pulse(self, channel: str, seconds: float) -> None:
        """Queue RELAY_PULSE; a failure is logged and reported to ``on_command_failed``."""
        port = self._relay_port(channel)
        message = RelayPulse(port.index, _pulse_ms(seconds))
        self._report(self._submit(port.address, channel, message))

    def drive(self, channel: str, on: bool) -> asyncio.Future[None]:
        """Queue RELAY_SET; the future settles once the board acknowledged it (CommandFailed)."""
        port = self._relay_port(channel)
        future = self._submit(port.address, channel, RelaySet(port.index, on))
        self._report(future)
        return future

    def add_listener(self, listener: Callable[[str, bool], None]) -> Callable[[], None]:
        """Call ``listener(channel, on)`` on every acknowledged change; returns a remover."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    async def set_relay(self, channel: str, on: bool) -> None:
        """RELAY_SET, returning once the board acknowledged it; raises CommandFailed."""
        port = self._relay_port(channel)
        await self._submit(port.address, channel, RelaySet(port.index, on))

    async def pulse_relay(self, channel: str, seconds: float) -> None:
        """RELAY_PULSE, returning once the board acknowledged it; raises CommandFailed."""
        port = self._relay_port(channel)
        await self._submit(port.address, channel, RelayPulse(port.index, _pulse_ms(seconds)))

    # -- ReaderBank ------------------------------------------------------------------------

    def set_handler(self, handler: Callable[[CredentialRead], None]) -> None:
        """Deliver every KEY_PRESENTED (``mech_key``) and PIN_ENTERED (``pin``) to ``handler``."""
        self._read_handler = handler

    def feedback(self, reader_id: str, feedback: Feedback) -> None:
        """Queue READER_FEEDBACK; a failure is logged and reported to ``on_command_failed``."""
        port = self._reader_port(reader_id)
        self._report(self._submit(port.address, reader_id, _feedback_message(port.index, feedback)))

    async def send_feedback(self, reader_id: str, feedback: Feedback) -> None:
        """READER_FEEDBACK, returning once the board acknowledged it; raises CommandFailed."""
        port = self._reader_port(reader_id)
        await self._submit(port.address, reader_id, _feedback_message(port.index, feedback))

    # -- inputs and boards -----------------------------------------------------------------

    def set_input_handler(self, handler: Callable[[InputEvent], None]) -> None:
        """Deliver every INPUT_CHANGED of a configured input to ``handler``."""
        self._input_handler = handler

    def status(self, address: int) -> BoardStatus:
        """Whether the board at ``address`` is online now, and why (not)."""
        board = self._board(address)
        return BoardStatus(address, bool(board.online), board.reason, board.info)

    async def state(self, address: int) -> BoardSnapshot:
        """STATE_REQUEST → STATE_REPORT; raises BoardOffline or CommandFailed."""
        board = self._board(address)
        what = f"board {address}"
        if not board.online:
            raise BoardOffline(what, f"offline: {board.reason}")
        try:
            report = await self._fetch_state(board, poll=False)
        except NakReceived as err:
            raise CommandRefused(what, f"STATE_REQUEST: {err}") from err
        except AckTimeout as err:
            raise CommandUnconfirmed(what, f"STATE_REQUEST: {err}") from err
        except LinkClosed as err:
            raise BoardOffline(what, str(err)) from err
        except HandshakeError as err:
            raise CommandUnconfirmed(what, str(err)) from err
        return self._snapshot(board, report)

    # -- the supervisor: one link at a time --------------------------------------------------

    async def _supervise(self) -> None:
        """Build the link, run the boards' workers until it fails, and build it again."""
        policy = self._backoff()
        url = self._config.url
        failing = False
        try:
            while True:
                link = BoardLink(
                    url,
                    baudrate=self._config.baudrate,
                    rs485=self._config.rs485,
                    read_poll_interval_s=self._read_poll_s,
                )
                error = await self._run_link(link, policy)
                if error is None:
                    return
                level = logging.DEBUG if failing else logging.WARNING
                failing = True
                delay = policy.next_delay()
                _LOGGER.log(level, "Board bus %s down (%s); retrying in %.2f s", url, error, delay)
                self._first_round.set()
                await asyncio.sleep(delay)
        finally:
            self._first_round.set()

    async def _run_link(self, link: BoardLink, policy: ReconnectPolicy) -> Exception | None:
        """Run one link until it closes; its error, or None once stopped."""
        workers: list[asyncio.Task[None]] = []
        try:
            for board in self._boards.values():
                board.link = link
                await link.add_board(
                    board.address,
                    self._frame_handler(board),
                    ack_timeout_s=self._ack_timeout_s,
                    max_retries=self._max_retries,
                    initial_seq=int.from_bytes(os.urandom(2), "little") % SEQ_MODULO,
                    observer=board.slot.observe,
                )
            try:
                await link.start()
            except PortOpenError as err:
                for board in self._boards.values():
                    self._set_offline(board, f"bus {self._config.url} unavailable: {err}")
                return err
            self._link = link
            policy.reset()
            _LOGGER.info("Board bus %s open", self._config.url)
            for board in self._boards.values():
                workers.append(
                    asyncio.create_task(
                        self._run_board(board, link),
                        name=f"board-bank-board:{self._config.url}:{board.address}",
                    )
                )
            error = await link.wait_closed()
            if error is not None:
                for board in self._boards.values():
                    self._set_offline(board, f"bus {self._config.url} failed: {error}")
            return error
        finally:
            for task in workers:
                task.cancel()
            if workers:
                await asyncio.wait(workers)
            self._link = None
            await link.stop()
            for board in self._boards.values():
                board.link = None

    # -- one board's worker ----------------------------------------------------------------

    async def _run_board(self, board: _Board, link: BoardLink) -> None:
        """Handshake, then poll; offline → retry with the policy; ends when the link closes."""
        retry_now = True
        try:
            while True:
                if not board.online:
                    if not retry_now:
                        await asyncio.sleep(board.policy.next_delay())
                    retry_now = False
                    try:
                        info = await self._handshake(board)
                    except (AckTimeout, NakReceived, HandshakeError) as err:
                        self._set_offline(board, _reason(err))
                        continue
                    finally:
                        self._attempted(board)
                    board.policy.reset()
                    self._set_online(board, info)
                    continue
                command = await self._next_command(board)
                try:
                    if command is None:
                        await self._request(board, Heartbeat(self._uptime_ms()), poll=True)
                    else:
                        await self._execute(board, command)
                except AckTimeout as err:
                    self._set_offline(board, _reason(err))
                except NakReceived as err:
                    if err.code is NakCode.NOT_CONFIGURED:
                        self._set_offline(board, "board is not configured (restarted or fell back)")
                        retry_now = True
                    elif command is None:
                        _LOGGER.debug("Board %d refused HEARTBEAT: %s", board.address, err)
        except (LinkClosed, BoardOffline) as err:
            # The link is gone (the supervisor hears it and builds a new one) or only this
            # board's session closed: either way the board cannot be reached until then.
            if self._state is BankState.RUNNING:
                self._set_offline(board, _reason(err))
            return
        finally:
            self._attempted(board)

    async def _next_command(self, board: _Board) -> _Command | None:
        """The next queued command, or None after a poll interval without one."""
        if not board.commands:
            board.wakeup.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll_s):
                    await board.wakeup.wait()
        return board.commands.popleft() if board.commands else None

    async def _execute(self, board: _Board, command: _Command) -> None:
        """Send ``command``; settle its future; re-raise what says something about the board."""
        if command.future.done():
            return  # its caller gave up waiting
        try:
            await self._send_command(board, command)
        finally:
            if not command.future.done():  # cancelled on the way: the bank is stopping
                command.future.set_exception(
                    BoardOffline(command.channel, f"board {board.address}: not sent, stopping")
                )

    async def _send_command(self, board: _Board, command: _Command) -> None:
        """Send ``command`` and settle its future by the board's answer."""
        try:
            await self._request(board, command.message)
        except NakReceived as err:
            if not command.future.done():
                command.future.set_exception(
                    CommandRefused(command.channel, f"board {board.address} refused: {err}")
                )
            raise
        except AckTimeout as err:
            if not command.future.done():
                command.future.set_exception(
                    CommandUnconfirmed(command.channel, f"board {board.address}: {err}")
                )
            raise
        except LinkClosed as err:
            if not command.future.done():
                command.future.set_exception(
                    BoardOffline(command.channel, f"board {board.address}: {err}")
                )
            raise
        self._acknowledged(command)
        if not command.future.done():
            command.future.set_result(None)

    async def _handshake(self, board: _Board) -> BoardInfo:
        """HELLO → BOARD_INFO → CONFIGURE → STATE_REQUEST → STATE_REPORT (SPEC.md, "Handshake")."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[BoardInfo] = loop.create_future()
        board.info_waiter = waiter
        try:
            await self._request(board, Hello(PROTOCOL_VERSION, self._heartbeat_ms))
            info = await self._await_reply(board, waiter, self._heartbeat_ms / 1000, poll=True)
        finally:
            board.info_waiter = None
            if not waiter.done():
                waiter.cancel()
        board.info = info
        self._validate(board, info)
        await self._request(board, board.spec.configure(info.relay_count))
        report = await self._fetch_state(board, poll=True)
        self._check_input_kinds(board, report)
        return info

    async def _fetch_state(self, board: _Board, *, poll: bool) -> StateReport:
        """STATE_REQUEST and the STATE_REPORT that follows it."""
        waiter: asyncio.Future[StateReport] = asyncio.get_running_loop().create_future()
        board.report_waiters.append(waiter)
        try:
            await self._request(board, StateRequest())
            return await self._await_reply(board, waiter, STATE_REPORT_TIMEOUT_S, poll=poll)
        finally:
            with contextlib.suppress(ValueError):
                board.report_waiters.remove(waiter)
            if not waiter.done():
                waiter.cancel()

    async def _await_reply(
        self, board: _Board, waiter: asyncio.Future[_T], limit_s: float, *, poll: bool
    ) -> _T:
        """Wait for a board frame; with ``poll``, HEARTBEATs give the board its reply slots."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit_s
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise HandshakeError(f"board {board.address} sent no answer within {limit_s:.2f} s")
            await asyncio.wait(
                [waiter], timeout=min(self._poll_s, remaining) if poll else remaining
            )
            if waiter.done():
                return waiter.result()
            if poll:
                await self._request(board, Heartbeat(self._uptime_ms()))

    def _validate(self, board: _Board, info: BoardInfo) -> None:
        """Check BOARD_INFO against the configuration; HandshakeError names what does not fit."""
        if info.protocol_version != PROTOCOL_VERSION:
            raise HandshakeError(
                f"board {board.address} speaks protocol {info.protocol_version}, "
                f"not {PROTOCOL_VERSION}"
            )
        problems: list[str] = []
        for name, port in self._config.relays.items():
            if port.address == board.address and port.index >= info.relay_count:
                problems.append(f"relay {port.index} ({name!r})")
        problems.extend(
            f"relay {index} (safe state)"
            for index in board.spec.safe_states
            if index >= info.relay_count
        )
        for name, port in self._config.readers.items():
            if port.address == board.address and port.index >= info.reader_count:
                problems.append(f"reader {port.index} ({name!r})")
        for port, binding in self._config.inputs.items():
            if port.address == board.address and port.index >= info.input_count:
                problems.append(f"input {port.index} ({binding.channel!r} {binding.kind})")
        if problems:
            raise HandshakeError(
                f"board {board.address} has {info.relay_count} relays, {info.reader_count} "
                f"readers and {info.input_count} inputs; configured but missing: "
                + ", ".join(problems)
            )

    def _check_input_kinds(self, board: _Board, report: StateReport) -> None:
        """Warn when the board reports another kind for a configured input (wiring mismatch)."""
        for index, item in enumerate(report.inputs):
            binding = self._config.inputs.get(BoardPort(board.address, index))
            if binding is not None and item.kind != _ROLE_KINDS[binding.kind]:
                _LOGGER.warning(
                    "Board %d input %d is configured as %s of %s but the board reports kind %s",
                    board.address,
                    index,
                    binding.kind,
                    binding.channel,
                    item.kind,
                )

    # -- requests and commands ---------------------------------------------------------------

    async def _request(self, board: _Board, message: Message, *, poll: bool = False) -> None:
        """One request to ``board``, holding the bus through its reply slot; raises the session's
        errors. A ``poll`` (an idle HEARTBEAT) lets every waiting command go first."""
        link = board.link
        if link is None:
            raise LinkClosed(f"board {board.address}: no link")
        session = link.board(board.address)
        async with self._bus.turn(poll=poll):
            board.slot.open()
            try:
                await session.request(*encode_message(message))
            except NakReceived:
                await self._end_slot(board, session.ack_timeout_s)  # a NAK may announce too
                raise
            # AckTimeout needs no wait: the session waited a timeout after its last frame.
            await self._end_slot(board, session.ack_timeout_s)

    async def _end_slot(self, board: _Board, quiet_s: float) -> None:
        """Keep the bus until the board has sent what it announced, or stayed quiet ``quiet_s``."""
        if not await board.slot.wait_end(quiet_s):
            _LOGGER.debug(
                "Board %d announced a frame and sent none within %.3f s", board.address, quiet_s
            )

    def _submit(self, address: int, channel: str, message: Message) -> asyncio.Future[None]:
        """Queue ``message`` for the board's worker; the future settles when it is answered."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        board = self._boards[address]
        if self._state is not BankState.RUNNING:
            future.set_exception(BoardOffline(channel, f"board bank is {self._state}"))
        elif not board.online:
            future.set_exception(
                BoardOffline(channel, f"board {address} is offline: {board.reason}")
            )
        elif len(board.commands) >= COMMAND_QUEUE_SIZE:
            future.set_exception(CommandFailed(channel, f"board {address} command queue is full"))
        else:
            board.commands.append(_Command(channel, message, future))
            board.wakeup.set()
        return future

    def _report(self, future: asyncio.Future[None]) -> None:
        """Log and report a failed fire-and-forget command (it is never taken as done)."""
        future.add_done_callback(self._command_done)

    def _command_done(self, future: asyncio.Future[None]) -> None:
        if future.cancelled():
            return
        error = future.exception()
        if error is None:
            return
        _LOGGER.warning("Board command failed: %s", error)
        if self._on_command_failed is not None and isinstance(error, CommandFailed):
            self._call(self._on_command_failed, error.channel, error)

    def _acknowledged(self, command: _Command) -> None:
        """The board carried ``command`` out: mirror the relay state it now has."""
        match command.message:
            case RelaySet(on=on):
                self._cancel_pulse_end(command.channel)
                self._relay_changed(command.channel, on)
            case RelayPulse(duration_ms=duration):
                self._cancel_pulse_end(command.channel)
                self._relay_changed(command.channel, True)
                # The board ends the pulse on its own; mirror that on our clock.
                self._pulse_ends[command.channel] = asyncio.get_running_loop().call_later(
                    duration / 1000, self._pulse_ended, command.channel
                )
            case _:
                pass

    def _pulse_ended(self, channel: str) -> None:
        self._pulse_ends.pop(channel, None)
        self._relay_changed(channel, False)

    def _cancel_pulse_end(self, channel: str) -> None:
        handle = self._pulse_ends.pop(channel, None)
        if handle is not None:
            handle.cancel()

    def _relay_changed(self, channel: str, on: bool) -> None:
        if self._relay_on[channel] == on:
            return
        self._relay_on[channel] = on
        _LOGGER.debug("Relay %s %s", channel, "on" if on else "off")
        for listener in list(self._listeners):
            self._call(listener, channel, on)

    def _fail_queued(self, board: _Board, reason: str) -> None:
        """Fail every queued command and every wait for a STATE_REPORT."""
        for waiter in board.report_waiters:
            if not waiter.done():
                waiter.set_exception(BoardOffline(f"board {board.address}", reason))
        board.report_waiters.clear()
        while board.commands:
            command = board.commands.popleft()
            if not command.future.done():
                command.future.set_exception(
                    BoardOffline(command.channel, f"board {board.address}: {reason}")
                )

    # -- frames from the boards ------------------------------------------------------------

    def _frame_handler(self, board: _Board) -> FrameHandler:
        async def handle(frame: Frame) -> NakCode | None:
            return self._board_frame(board, frame)

        return handle

    def _board_frame(self, board: _Board, frame: Frame) -> NakCode | None:
        """Carry out one frame from ``board``; None acknowledges it."""
        message = decode_message(frame)  # MessageError: the session answers its NAK
        match message:
            case BoardInfo():
                if board.info_waiter is not None and not board.info_waiter.done():
                    board.info_waiter.set_result(message)
            case StateReport():
                self._state_reported(board, message)
            case InputChanged():
                self._input_changed(board, message)
            case KeyPresented():
                self._key_presented(board, message)
            case PinEntered():
                self._pin_entered(board, message)
            case BoardFault(code=code, detail=detail):
                name = code.name if isinstance(code, FaultCode) else code
                _LOGGER.warning("Board %d fault %s: %s", board.address, name, detail)
                self._board_event(BoardFaultEvent(board.address, code, detail))
            case _:
                return NakCode.UNKNOWN_TYPE  # a gateway → board type, or an answer
        return None

    def _state_reported(self, board: _Board, report: StateReport) -> None:
        for waiter in board.report_waiters:
            if not waiter.done():
                waiter.set_result(report)
        board.report_waiters.clear()
        for name, port in self._config.relays.items():
            if port.address == board.address:
                on = report.relay_on(port.index)
                if not on:
                    self._cancel_pulse_end(name)
                self._relay_changed(name, on)

    def _input_changed(self, board: _Board, message: InputChanged) -> None:
        binding = self._config.inputs.get(BoardPort(board.address, message.input_index))
        if binding is None:
            _LOGGER.debug("Board %d input %d is not configured", board.address, message.input_index)
            return
        if self._input_handler is None:
            _LOGGER.debug("No input handler: dropped input %d", message.input_index)
            return
        event = InputEvent(
            binding.channel,
            binding.kind,
            message.level,
            message.board_clock_ms,
            board.address,
            message.input_index,
        )
        self._call(self._input_handler, event)

    def _key_presented(self, board: _Board, message: KeyPresented) -> None:
        reader = self._reader_by_port.get(BoardPort(board.address, message.reader_index))
        if reader is None:
            _LOGGER.debug(
                "Board %d reader %d is not configured", board.address, message.reader_index
            )
            return
        if self._read_handler is None:
            _LOGGER.debug("No read handler: dropped a key at %s", reader)
            return
        read = CredentialRead(
            reader, "mech_key", message.key_id.hex().upper(), message.challenge + message.response
        )
        self._call(self._read_handler, read)

    def _pin_entered(self, board: _Board, message: PinEntered) -> None:
        # The digits are a secret: log lines name the reader and the digit count, never the PIN.
        count = len(message.digits)
        reader = self._reader_by_port.get(BoardPort(board.address, message.reader_index))
        if reader is None:
            _LOGGER.debug(
                "Board %d reader %d is not configured: dropped a PIN of %d digits",
                board.address,
                message.reader_index,
                count,
            )
            return
        if self._read_handler is None:
            _LOGGER.debug("No read handler: dropped a PIN of %d digits at %s", count, reader)
            return
        self._call(self._read_handler, CredentialRead(reader, "pin", message.digits, b""))

    # -- board status ------------------------------------------------------------------------

    def _set_online(self, board: _Board, info: BoardInfo) -> None:
        board.online = True
        board.reason = f"firmware {info.firmware_version}, serial {info.serial_number.hex()}"
        _LOGGER.info("Board %d on %s online (%s)", board.address, self._config.url, board.reason)
        self._board_event(BoardStatus(board.address, True, board.reason, info))

    def _set_offline(self, board: _Board, reason: str) -> None:
        was = board.online
        board.reason = reason
        self._fail_queued(board, reason)
        if was is False:
            _LOGGER.debug("Board %d still offline: %s", board.address, reason)
            return
        board.online = False
        _LOGGER.warning("Board %d on %s offline: %s", board.address, self._config.url, reason)
        self._board_event(BoardStatus(board.address, False, reason))

    def _attempted(self, board: _Board) -> None:
        board.attempted = True
        if all(b.attempted for b in self._boards.values()):
            self._first_round.set()

    def _board_event(self, event: BoardEvent) -> None:
        if self._on_board_event is not None:
            self._call(self._on_board_event, event)

    # -- helpers -----------------------------------------------------------------------------

    @staticmethod
    def _call(callback: Callable[..., None], *args: object) -> None:
        """Run a caller's callback; its failure is logged, it does not break the bus."""
        try:
            callback(*args)
        except Exception:
            _LOGGER.exception("Board bank callback %r failed", callback)

    def _relay_port(self, channel: str) -> BoardPort:
        try:
            return self._config.relays[channel]
        except KeyError:
            raise UnknownChannelError(f"no relay channel {channel!r}") from None

    def _reader_port(self, reader_id: str) -> BoardPort:
        try:
            return self._config.readers[reader_id]
        except KeyError:
            raise UnknownChannelError(f"no reader {reader_id!r}") from None

    def _board(self, address: int) -> _Board:
        try:
            return self._boards[address]
        except KeyError:
            raise BoardBankError(f"no board {address} on {self._config.url}") from None

    def _snapshot(self, board: _Board, report: StateReport) -> BoardSnapshot:
        relay_count = board.info.relay_count if board.info is not None else 0
        inputs = tuple(
            InputSnapshot(
                index,
                item.kind,
                item.level,
                self._config.inputs.get(BoardPort(board.address, index)),
            )
            for index, item in enumerate(report.inputs)
        )
        channels = {
            name: report.relay_on(port.index)
            for name, port in self._config.relays.items()
            if port.address == board.address
        }
        return BoardSnapshot(
            board.address,
            report.board_clock_ms,
            tuple(report.relay_on(i) for i in range(relay_count)),
            inputs,
            MappingProxyType(channels),
        )

    def _uptime_ms(self) -> int:
        return int((time.monotonic() - self._started_at) * 1000) % _U32


def _pulse_ms(seconds: float) -> int:
    """A pulse length in whole milliseconds; ValueError outside what RELAY_PULSE carries."""
    ms = round(seconds * 1000)
    if not RELAY_PULSE_MIN_MS <= ms <= RELAY_PULSE_MAX_MS:
        raise ValueError(f"pulse of {seconds} s is outside 0.001..3600 s")
    return ms


def _feedback_message(index: int, feedback: Feedback) -> ReaderFeedback:
    led, beep, duration = _FEEDBACK[feedback]
    return ReaderFeedback(index, led, beep, duration)


def _reason(err: Exception) -> str:
    if isinstance(err, AckTimeout):
        return f"no answer ({err})"
    if isinstance(err, SessionError | BoardBankError):
        return str(err)
    return repr(err)


__all__ = [
    "COMMAND_QUEUE_SIZE",
    "FEEDBACK_DURATION_MS",
    "HEARTBEAT_INTERVAL_MS",
    "POLL_INTERVAL_S",
    "STATE_REPORT_TIMEOUT_S",
    "SUPERVISION_TIMEOUT_MS",
    "BankState",
    "BoardBank",
    "BoardBankConfig",
    "BoardBankConfigError",
    "BoardBankError",
    "BoardEvent",
    "BoardFaultEvent",
    "BoardOffline",
    "BoardPort",
    "BoardSnapshot",
    "BoardSpec",
    "BoardStatus",
    "CommandFailed",
    "CommandRefused",
    "CommandUnconfirmed",
    "HandshakeError",
    "InputBinding",
    "InputEvent",
    "InputRole",
    "InputSnapshot",
    "ReconnectPolicy",
    "UnknownChannelError",
]
