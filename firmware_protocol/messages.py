"""Typed messages: one frozen dataclass per MessageType and its payload layout (SPEC.md, "Messages").

Payloads are little-endian with fixed layouts. A message is validated when it is built, so a
decoded payload and a hand-built message obey the same rules, and ``to_payload`` cannot fail.
Codes a newer board may send (fault codes, input kinds, NAK codes, capability bits) decode to a
bare int (or keep their unknown bits) instead of failing.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Self, TypeAlias, TypeVar

from firmware_protocol.errors import MessageError
from firmware_protocol.frame import Frame, MessageType, NakCode, TolerantIntEnum

#: STATE_REPORT carries relays as a u16 bit set.
MAX_RELAYS = 16
#: Inputs in one STATE_REPORT (2 bytes each; well under MAX_PAYLOAD).
MAX_INPUTS = 64
#: BOARD_FAULT detail, in bytes of UTF-8.
MAX_FAULT_DETAIL = 64
SERIAL_NUMBER_SIZE = 8
KEY_ID_SIZE = 8
CHALLENGE_SIZE = 16
RESPONSE_SIZE = 16
#: PIN_ENTERED: the most digits in one entry, and the size of its zero-padded digit field.
MAX_PIN_DIGITS = 12
#: RELAY_PULSE duration bounds, in milliseconds (one hour at most).
RELAY_PULSE_MIN_MS = 1
RELAY_PULSE_MAX_MS = 3_600_000
#: CONFIGURE supervision timeout lower bound, in milliseconds (0 would mean "never supervised").
SUPERVISION_TIMEOUT_MIN_MS = 100

_U8 = 0xFF
_U16 = 0xFFFF
_U32 = 0xFFFF_FFFF

_E = TypeVar("_E", bound=enum.IntEnum)


class Capability(enum.IntFlag):
    """BOARD_INFO capability bits; unknown bits from a newer board are kept."""

    NONE = 0x00
    KEY_READER = 0x01  # mechatronic key reader (KEY_PRESENTED)
    KEYPAD = 0x02  # PIN keypad (PIN_ENTERED)
    RS485 = 0x04  # the board sits on a multi-drop RS-485 bus


class SafeState(enum.IntEnum):
    """A relay's level when the gateway goes silent (CONFIGURE; SPEC.md, "Supervision")."""

    FAIL_SECURE = 0  # de-energise (locks a strike; unlocks a maglock)
    FAIL_SAFE = 1  # energise (unlocks a strike; locks a maglock)


class LedPattern(enum.IntEnum):
    """Reader LED pattern (READER_FEEDBACK)."""

    OFF = 0
    SOLID_GREEN = 1
    SOLID_RED = 2
    BLINK_GREEN = 3
    BLINK_RED = 4
    BLINK_AMBER = 5
    SOLID_AMBER = 6


class BeepPattern(enum.IntEnum):
    """Reader beeper pattern (READER_FEEDBACK)."""

    NONE = 0
    SHORT = 1
    LONG = 2
    DOUBLE = 3
    TRIPLE = 4
    CONTINUOUS = 5  # sounds for the feedback's duration


class InputKind(TolerantIntEnum):
    """What an input is wired to (STATE_REPORT, INPUT_CHANGED)."""

    DOOR_CONTACT = 1  # level 1: door open
    REX = 2  # request to exit; level 1: pressed
    TAMPER = 3  # level 1: enclosure open or tampered
    AUX = 4  # anything else; level 1: active


class FaultCode(TolerantIntEnum):
    """What went wrong on a board (BOARD_FAULT)."""

    BROWNOUT = 1  # supply dipped below the board's threshold
    RELAY_DRIVER = 2  # a relay coil or driver failed its check
    READER_BUS = 3  # a reader stopped answering
    WATCHDOG_RESET = 4  # the board restarted on its watchdog
    CONFIG_LOST = 5  # the board's stored settings were invalid and were reset to defaults
    SUPERVISION_LOST = 6  # the gateway went silent; relays went to their safe states
    EVENT_QUEUE_OVERFLOW = 7  # events were discarded; ask for a STATE_REPORT


def _check(msg_type: MessageType, name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise MessageError(msg_type, f"{name} {value} is outside {low}..{high}")


def _check_size(msg_type: MessageType, name: str, value: bytes, size: int) -> None:
    if len(value) != size:
        raise MessageError(msg_type, f"{name} is {len(value)} bytes, expected {size}")


def _unpack(msg_type: MessageType, layout: struct.Struct, data: bytes) -> tuple[Any, ...]:
    if len(data) != layout.size:
        raise MessageError(msg_type, f"payload is {len(data)} bytes, expected {layout.size}")
    return layout.unpack(data)


def _unpack_head(msg_type: MessageType, layout: struct.Struct, data: bytes) -> tuple[Any, ...]:
    if len(data) < layout.size:
        raise MessageError(
            msg_type, f"payload is {len(data)} bytes, expected at least {layout.size}"
        )
    return layout.unpack_from(data)


def _strict(msg_type: MessageType, name: str, enum_type: type[_E], value: int) -> _E:
    try:
        return enum_type(value)
    except ValueError:
        raise MessageError(msg_type, f"{name} {value} is not a {enum_type.__name__}") from None


def _set(obj: object, name: str, value: object) -> None:
    """Normalise a field of a frozen dataclass in ``__post_init__``."""
    object.__setattr__(obj, name, value)


@dataclass(frozen=True, slots=True)
class _Empty:
    """A message with no payload."""

    TYPE: ClassVar[MessageType]

    def to_payload(self) -> bytes:
        """The payload bytes (none)."""
        return b""

    @classmethod
    def from_payload(cls, data: bytes) -> Self:
        """The message in ``data``; MessageError if it is not one."""
        _check(cls.TYPE, "payload length", len(data), 0, 0)
        return cls()


@dataclass(frozen=True, slots=True)
class _Fixed:
    """A message whose payload is its fields, in order, packed with its ``_LAYOUT``."""

    TYPE: ClassVar[MessageType]
    _LAYOUT: ClassVar[struct.Struct]

    def to_payload(self) -> bytes:
        """The payload bytes."""
        return self._LAYOUT.pack(*(getattr(self, f.name) for f in fields(self)))

    @classmethod
    def from_payload(cls, data: bytes) -> Self:
        """The message in ``data``; MessageError if it is not one."""
        return cls(*_unpack(cls.TYPE, cls._LAYOUT, data))


@dataclass(frozen=True, slots=True)
class Hello(_Fixed):
    """Gateway → board: start (or restart) a session."""

    TYPE: ClassVar[MessageType] = MessageType.HELLO
    _LAYOUT: ClassVar[struct.Struct] = struct.Struct("<BH")

    protocol_version: int
    heartbeat_interval_ms: int  # the longest the gateway leaves this board unaddressed

    def __post_init__(self) -> None:
        _check(self.TYPE, "protocol_version", self.protocol_version, 0, _U8)
        _check(self.TYPE, "heartbeat_interval_ms", self.heartbeat_interval_ms, 1, _U16)


@dataclass(frozen=True, slots=True)
class BoardInfo(_Fixed):
    """Board → gateway: who the board is (sent after each HELLO)."""

    TYPE: ClassVar[MessageType] = MessageType.BOARD_INFO
    _LAYOUT: ClassVar[struct.Struct] = struct.Struct(f"<8B{SERIAL_NUMBER_SIZE}s")

    protocol_version: int
    firmware_major: int
    firmware_minor: int
    firmware_patch: int
    relay_count: int
    reader_count: int
    input_count: int
    capabilities: Capability
    serial_number: bytes

    def __post_init__(self) -> None:
        for name in ("protocol_version", "firmware_major", "firmware_minor", "firmware_patch"):
            _check(self.TYPE, name, getattr(self, name), 0, _U8)
        _check(self.TYPE, "relay_count", self.relay_count, 0, MAX_RELAYS)
        _check(self.TYPE, "reader_count", self.reader_count, 0, _U8)
        _check(self.TYPE, "input_count", self.input_count, 0, MAX_INPUTS)
        _check(self.TYPE, "capabilities", int(self.capabilities), 0, _U8)
        _check_size(self.TYPE, "serial_number", self.serial_number, SERIAL_NUMBER_SIZE)
        _set(self, "capabilities", Capability(int(self.capabilities)))

    @property
    def firmware_version(self) -> str:
        """The firmware version as "major.minor.patch"."""
        return f"{self.firmware_major}.{self.firmware_minor}.{self.firmware_patch}"


@dataclass(frozen=True, slots=True)
class Heartbeat(_Fixed):
    """Gateway → board: I am alive (also the poll that gives a board its reply slot)."""

    TYPE: ClassVar[MessageType] = MessageType.HEARTBEAT
    _LAYOUT: ClassVar[struct.Struct] = struct.Struct("<I")

    uptime_ms: int  # the gateway's uptime, modulo 2**32

    def __post_init__(self) -> None:
        _check(self.TYPE, "uptime_ms", self.uptime_ms, 0, _U32)


@dataclass(frozen=True, slots=True)
class Configure:
    """Gateway → board: supervision timeout and each relay's safe state, in relay order."""

    TYPE: ClassVar[MessageType] = MessageType.CONFIGURE
    _LAYOUT: ClassVar[struct.Struct] = struct.Struct("<H")

    supervision_timeout_ms: int
    safe_states: tuple[SafeState, ...]

    def __post_init__(self) -> None:
        _check(
            self.TYPE,
            "supervision_timeout_ms",
            self.supervision_timeout_ms,
            SUPERVISION_TIMEOUT_MIN_MS,
            _U16,
        )
        _check(self.TYPE, "relay count", len(self.safe_states), 0, MAX_RELAYS)
        states = tuple(_strict(self.TYPE, "safe state", SafeState, s) for s in self.safe_states)
        _set(self, "safe_states", states)

    def to_payload(self) -> bytes:
        """The payload bytes."""
        return self._LAYOUT.pack(self.supervision_timeout_ms) + bytes(self.safe_states)

    @classmethod
    def from_payload(cls, data: bytes) -> Self:
        """The message in ``data``; MessageError if it is not one."""
        (timeout,) = _unpack_head(cls.TYPE, cls._LAYOUT, data)
        states = data[cls._LAYOUT.size :]
        return cls(timeout, tuple(_strict(cls.TYPE, "safe state", SafeState, s) for s in states))


@dataclass(frozen=True, slots=True)
class RelaySet(_Fixed):
    """Gateway → board: switch a relay on (energised) or off until told otherwise."""

    TYPE: ClassVar[MessageType] = MessageType.RELAY_SET
    _LAYOUT: ClassVar[struct.Struct] = struct.Struct("<BB")

    relay_index: int
    on: bool

    def __post_init__(self) -> None:
        _check(self.TYPE, "relay_index", self.relay_index, 0, _U8)
        _check(self.TYPE, "on", int(self.on), 0, 1)
        _set(self, "on", bool(self.on))


@dataclass(frozen=True, slots=True)
class RelayPulse(_Fixed):
    """Gateway → board: switch a relay on for a duration, then off."""

    TYPE: ClassVar[MessageType] = MessageType.RELAY_PULSE
    _LAYOUT: ClassVar[struct.Struct] = struct.Struct("<BI")

    relay_index: int
    duration_ms: int

    def __post_init__(self) -> None:
        _check(self.TYPE, "relay_index", self.relay_index, 0, _U8)
        _check(self.TYPE, "duration_ms", self.duration_ms, RELAY_PULSE_MIN_MS, RELAY_PULSE_MAX_MS)


@dataclass(frozen=True, slots=True)
class ReaderFeedback(_Fixed):
    """Gateway → board: show an LED pattern and sound a beep pattern on a reader."""

    TYPE: ClassVar[MessageType] = MessageType.READER_FEEDBACK
    _LAYOUT: ClassVar[struct.Struct] = struct.Struct("<BBBH")

    reader_index: int
    led: LedPattern
    beep: BeepPattern
    duration_ms: int  # 0: until the next READER_FEEDBACK for this reader

    def __post_init__(self) -> None:
        _check(self.TYPE, "reader_index", self.reader_index, 0, _U8)
        _check(self.TYPE, "duration_ms", self.duration_ms, 0, _U16)
        _set(self, "led", _strict(self.TYPE, "led", LedPattern, self.led))
        _set(self, "beep", _strict(self.TYPE, "beep", BeepPattern, self.beep))


@dataclass(frozen=True, slots=True)
class StateRequest(_Empty):
    """Gateway → board: send a STATE_REPORT."""

    TYPE: ClassVar[MessageType] = MessageType.STATE_REQUEST


@dataclass(frozen=True, slots=True)
class InputState:
    """One input in a STATE_REPORT."""

    kind: InputKind | int
    level: int  # 1: active (see InputKind)

    def __post_init__(self) -> None:
        _check(MessageType.STATE_REPORT, "input kind", int(self.kind), 0, _U8)
        _check(MessageType.STATE_REPORT, "input level", self.level, 0, 1)
        _set(self, "kind", InputKind.tolerant(int(self.kind)))


@dataclass(frozen=True, slots=True)
class StateReport:
    """Board → gateway: every relay and input, with the board's clock."""

    TYPE: ClassVar[MessageType] = MessageType.STATE_REPORT
    _LAYOUT: ClassVar[struct.Struct] = struct.Struct("<IHB")

    board_clock_ms: int  # monotonic since the board booted, modulo 2**32
    relay_bits: int  # bit i set: relay i is energised
    inputs: tuple[InputState, ...]  # in input index order

    def __post_init__(self) -> None:
        _check(self.TYPE, "board_clock_ms", self.board_clock_ms, 0, _U32)
        _check(self.TYPE, "relay_bits", self.relay_bits, 0, _U16)
        _check(self.TYPE, "input count", len(self.inputs), 0, MAX_INPUTS)
        _set(self, "inputs", tuple(self.inputs))

    def relay_on(self, relay_index: int) -> bool:
        """True if relay ``relay_index`` is energised."""
        return bool(self.relay_bits >> relay_index & 1)

    def to_payload(self) -> bytes:
        """The payload bytes."""
        head = self._LAYOUT.pack(self.board_clock_ms, self.relay_bits, len(self.inputs))
        return head + bytes(b for i in self.inputs for b in (int(i.kind), i.level))

    @classmethod
    def from_payload(cls, data: bytes) -> Self:
        """The message in ``data``; MessageError if it is not one."""
        size = cls._LAYOUT.size
        clock, relays, count = _unpack_head(cls.TYPE, cls._LAYOUT, data)
        _check(cls.TYPE, "payload length", len(data), size + 2 * count, size + 2 * count)
        pairs = data[size:]
        inputs = tuple(InputState(pairs[i], pairs[i + 1]) for i in range(0, len(pairs), 2))
        return cls(clock, relays, inputs)


@dataclass(frozen=True, slots=True)
class InputChanged(_Fixed):
    """Board → gateway: one input changed level (after the board's debounce)."""

    TYPE: ClassVar[MessageType] = MessageType.INPUT_CHANGED
    _LAYOUT: ClassVar[struct.Struct] = struct.Struct("<IBBB")

    board_clock_ms: int  # when it changed, on the board's clock
    input_index: int
    kind: InputKind | int
    level: int  # 1: active (see InputKind)

    def __post_init__(self) -> None:
        _check(self.TYPE, "board_clock_ms", self.board_clock_ms, 0, _U32)
        _check(self.TYPE, "input_index", self.input_index, 0, _U8)
        _check(self.TYPE, "kind", int(self.kind), 0, _U8)
        _check(self.TYPE, "level", self.level, 0, 1)
        _set(self, "kind", InputKind.tolerant(int(self.kind)))


@dataclass(frozen=True, slots=True)
class KeyPresented(_Fixed):
    """Board → gateway: a mechatronic key answered the board's challenge."""

    TYPE: ClassVar[MessageType] = MessageType.KEY_PRESENTED
    _LAYOUT: ClassVar[struct.Struct] = struct.Struct(
        f"<B{KEY_ID_SIZE}s{CHALLENGE_SIZE}s{RESPONSE_SIZE}s"
    )

    reader_index: int
    key_id: bytes
    challenge: bytes  # random, chosen by the board for this presentation
    response: bytes  # the key's answer; the gateway verifies it

    def __post_init__(self) -> None:
        _check(self.TYPE, "reader_index", self.reader_index, 0, _U8)
        _check_size(self.TYPE, "key_id", self.key_id, KEY_ID_SIZE)
        _check_size(self.TYPE, "challenge", self.challenge, CHALLENGE_SIZE)
        _check_size(self.TYPE, "response", self.response, RESPONSE_SIZE)


@dataclass(frozen=True, slots=True)
class PinEntered:
    """Board → gateway: a PIN typed on a keypad and confirmed with its enter key."""

    TYPE: ClassVar[MessageType] = MessageType.PIN_ENTERED
    _LAYOUT: ClassVar[struct.Struct] = struct.Struct(f"<BB{MAX_PIN_DIGITS}s")

    reader_index: int
    digits: str  # 1..MAX_PIN_DIGITS of "0".."9"; a secret, withheld from the repr

    def __post_init__(self) -> None:
        _check(self.TYPE, "reader_index", self.reader_index, 0, _U8)
        if not isinstance(self.digits, str):
            raise MessageError(self.TYPE, "digits is not a str")
        _check(self.TYPE, "length", len(self.digits), 1, MAX_PIN_DIGITS)
        # The error never quotes the digits: it may end up in a log line (SPEC.md, "PIN_ENTERED").
        if not (self.digits.isascii() and self.digits.isdigit()):
            raise MessageError(self.TYPE, "digits are not all ASCII '0'..'9'")

    def __repr__(self) -> str:
        return f"PinEntered(reader_index={self.reader_index}, digits=<{len(self.digits)} withheld>)"

    def to_payload(self) -> bytes:
        """The payload bytes: the digits in ASCII, zero-padded to MAX_PIN_DIGITS."""
        return self._LAYOUT.pack(self.reader_index, len(self.digits), self.digits.encode("ascii"))

    @classmethod
    def from_payload(cls, data: bytes) -> Self:
        """The message in ``data``; MessageError if it is not one."""
        reader_index, length, field = _unpack(cls.TYPE, cls._LAYOUT, data)
        _check(cls.TYPE, "length", length, 1, MAX_PIN_DIGITS)
        digits, padding = field[:length], field[length:]
        if any(padding):
            raise MessageError(cls.TYPE, "the padding after the digits is not all 0x00")
        if not (digits.isascii() and digits.isdigit()):
            raise MessageError(cls.TYPE, "digits are not all ASCII '0'..'9'")
        return cls(reader_index, digits.decode("ascii"))


@dataclass(frozen=True, slots=True)
class BoardFault:
    """Board → gateway: something is wrong on the board."""

    TYPE: ClassVar[MessageType] = MessageType.BOARD_FAULT

    code: FaultCode | int
    detail: str = ""  # human-readable, at most MAX_FAULT_DETAIL bytes of UTF-8

    def __post_init__(self) -> None:
        _check(self.TYPE, "code", int(self.code), 0, _U8)
        try:
            size = len(self.detail.encode("utf-8"))
        except UnicodeEncodeError as err:
            raise MessageError(self.TYPE, f"detail is not encodable as UTF-8: {err}") from None
        _check(self.TYPE, "detail length", size, 0, MAX_FAULT_DETAIL)
        _set(self, "code", FaultCode.tolerant(int(self.code)))

    def to_payload(self) -> bytes:
        """The payload bytes."""
        return bytes([int(self.code)]) + self.detail.encode("utf-8")

    @classmethod
    def from_payload(cls, data: bytes) -> Self:
        """The message in ``data``; MessageError if it is not one."""
        _check(cls.TYPE, "payload length", len(data), 1, 1 + MAX_FAULT_DETAIL)
        try:
            detail = data[1:].decode("utf-8")
        except UnicodeDecodeError as err:
            raise MessageError(cls.TYPE, f"detail is not UTF-8: {err}") from None
        return cls(data[0], detail)


@dataclass(frozen=True, slots=True)
class Ack(_Empty):
    """Either way: the frame with this seq was received and carried out."""

    TYPE: ClassVar[MessageType] = MessageType.ACK


@dataclass(frozen=True, slots=True)
class Nak:
    """Either way: the frame with this seq was received and refused."""

    TYPE: ClassVar[MessageType] = MessageType.NAK

    code: NakCode | int

    def __post_init__(self) -> None:
        _check(self.TYPE, "code", int(self.code), 0, _U8)
        _set(self, "code", NakCode.tolerant(int(self.code)))

    def to_payload(self) -> bytes:
        """The payload bytes."""
        return bytes([int(self.code)])

    @classmethod
    def from_payload(cls, data: bytes) -> Self:
        """The message in ``data``; MessageError if it is not one."""
        _check(cls.TYPE, "payload length", len(data), 1, 1)
        return cls(data[0])


#: Every message; ``match`` on it to handle each type.
Message: TypeAlias = (
    Hello
    | BoardInfo
    | Heartbeat
    | Configure
    | RelaySet
    | RelayPulse
    | ReaderFeedback
    | StateRequest
    | StateReport
    | InputChanged
    | KeyPresented
    | PinEntered
    | BoardFault
    | Ack
    | Nak
)

#: The message class for each type.
MESSAGE_CLASSES: dict[MessageType, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        Hello,
        BoardInfo,
        Heartbeat,
        Configure,
        RelaySet,
        RelayPulse,
        ReaderFeedback,
        StateRequest,
        StateReport,
        InputChanged,
        KeyPresented,
        PinEntered,
        BoardFault,
        Ack,
        Nak,
    )
}


def encode_message(msg: Message) -> tuple[MessageType, bytes]:
    """The type and payload for ``msg``: ``Frame(address, seq, *encode_message(msg))``."""
    return msg.TYPE, msg.to_payload()


def decode_message(frame: Frame) -> Message:
    """The message in ``frame``; MessageError (with the NakCode to answer) if there is none."""
    msg_type = MessageType.tolerant(int(frame.msg_type))
    if not isinstance(msg_type, MessageType):
        raise MessageError(
            msg_type, f"unknown message type 0x{msg_type:02X}", nak_code=NakCode.UNKNOWN_TYPE
        )
    return MESSAGE_CLASSES[msg_type].from_payload(frame.payload)
