"""Tests for firmware_protocol.messages: layouts, validation, tolerance and round trips."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_protocol import messages
from firmware_protocol.errors import MessageError
from firmware_protocol.frame import MAX_PAYLOAD, Flags, Frame, MessageType, NakCode, TolerantIntEnum
from firmware_protocol.messages import (
    MESSAGE_CLASSES,
    Ack,
    BeepPattern,
    BoardFault,
    BoardInfo,
    Capability,
    Configure,
    FaultCode,
    Heartbeat,
    Hello,
    InputChanged,
    InputKind,
    InputState,
    KeyPresented,
    LedPattern,
    Message,
    Nak,
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
from firmware_protocol.wire import decode_packet, encode_frame

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFF_FFFF)
level = st.integers(0, 1)
input_kinds = u8.map(InputKind.tolerant)
pins = st.text(alphabet="0123456789", min_size=1, max_size=messages.MAX_PIN_DIGITS)

message_strategies: dict[type[Any], st.SearchStrategy[Any]] = {
    Hello: st.builds(Hello, u8, st.integers(1, 0xFFFF)),
    BoardInfo: st.builds(
        BoardInfo,
        u8,
        u8,
        u8,
        u8,
        st.integers(0, messages.MAX_RELAYS),
        u8,
        st.integers(0, messages.MAX_INPUTS),
        u8.map(Capability),
        st.binary(min_size=8, max_size=8),
    ),
    Heartbeat: st.builds(Heartbeat, u32),
    Configure: st.builds(
        Configure,
        st.integers(messages.SUPERVISION_TIMEOUT_MIN_MS, 0xFFFF),
        st.lists(st.sampled_from(SafeState), max_size=messages.MAX_RELAYS).map(tuple),
    ),
    RelaySet: st.builds(RelaySet, u8, st.booleans()),
    RelayPulse: st.builds(RelayPulse, u8, st.integers(1, messages.RELAY_PULSE_MAX_MS)),
    ReaderFeedback: st.builds(
        ReaderFeedback, u8, st.sampled_from(LedPattern), st.sampled_from(BeepPattern), u16
    ),
    StateRequest: st.builds(StateRequest),
    StateReport: st.builds(
        StateReport,
        u32,
        u16,
        st.lists(st.builds(InputState, input_kinds, level), max_size=messages.MAX_INPUTS).map(
            tuple
        ),
    ),
    InputChanged: st.builds(InputChanged, u32, u8, input_kinds, level),
    KeyPresented: st.builds(
        KeyPresented,
        u8,
        st.binary(min_size=8, max_size=8),
        st.binary(min_size=16, max_size=16),
        st.binary(min_size=16, max_size=16),
    ),
    PinEntered: st.builds(PinEntered, u8, pins),
    BoardFault: st.builds(
        BoardFault,
        u8.map(FaultCode.tolerant),
        st.text(max_size=64).filter(lambda s: len(s.encode("utf-8")) <= 64),
    ),
    Ack: st.builds(Ack),
    Nak: st.builds(Nak, u8.map(NakCode.tolerant)),
}
any_message: st.SearchStrategy[Message] = st.one_of(*message_strategies.values())


def test_every_type_has_exactly_one_class() -> None:
    assert set(MESSAGE_CLASSES) == set(MessageType)
    assert set(message_strategies) == set(MESSAGE_CLASSES.values())
    for msg_type, cls in MESSAGE_CLASSES.items():
        assert cls.TYPE is msg_type


@pytest.mark.parametrize("cls", list(message_strategies), ids=lambda c: c.__name__)
@given(data=st.data())
def test_round_trip_every_type(cls: type[Any], data: st.DataObject) -> None:
    """Message → payload → frame → bytes → frame → message gives the message back."""
    msg = data.draw(message_strategies[cls])
    msg_type, payload = encode_message(msg)
    assert msg_type is cls.TYPE
    assert len(payload) <= MAX_PAYLOAD
    assert cls.from_payload(payload) == msg
    frame = Frame(9, 0x1234, *encode_message(msg), Flags.FROM_BOARD)
    decoded = decode_message(decode_packet(encode_frame(frame)[:-1]))
    assert decoded == msg
    assert type(decoded) is cls


@given(st.sampled_from(MessageType), st.binary(max_size=MAX_PAYLOAD))
def test_arbitrary_payloads_raise_only_message_error(msg_type: MessageType, payload: bytes) -> None:
    error: MessageError | None = None
    try:
        msg = decode_message(Frame(5, 1, msg_type, payload))
    except MessageError as err:
        error = err
    if error is None:
        assert msg.to_payload() == payload  # what decodes re-encodes to the same bytes
    else:
        assert error.msg_type is msg_type
        assert error.nak_code is NakCode.BAD_PAYLOAD


@pytest.mark.parametrize("code", [0x00, 0x05, 0x55, 0x80, 0xFF])
def test_unknown_type_is_a_message_error_with_the_code(code: int) -> None:
    with pytest.raises(MessageError) as caught:
        decode_message(Frame(5, 1, code, b"\x01"))
    assert caught.value.msg_type == code
    assert caught.value.nak_code is NakCode.UNKNOWN_TYPE
    assert f"0x{code:02X}" in str(caught.value)


def test_known_type_given_as_a_bare_int_decodes() -> None:
    assert decode_message(Frame(5, 1, 0x7E)) == Ack()


@pytest.mark.parametrize(
    ("msg", "payload"),
    [
        (Hello(1, 1000), "01 e8 03"),
        (
            BoardInfo(1, 2, 3, 4, 2, 1, 4, Capability.KEY_READER, bytes(range(8))),
            "01 02 03 04 02 01 04 01 00 01 02 03 04 05 06 07",
        ),
        (Heartbeat(0x01020304), "04 03 02 01"),
        (Configure(3000, (SafeState.FAIL_SAFE, SafeState.FAIL_SECURE)), "b8 0b 01 00"),
        (RelaySet(3, True), "03 01"),
        (RelayPulse(1, 5000), "01 88 13 00 00"),
        (ReaderFeedback(2, LedPattern.BLINK_RED, BeepPattern.LONG, 1500), "02 04 02 dc 05"),
        (StateRequest(), ""),
        (
            StateReport(1, 0x8001, (InputState(InputKind.REX, 1),)),
            "01 00 00 00 01 80 01 02 01",
        ),
        (InputChanged(2, 3, InputKind.TAMPER, 1), "02 00 00 00 03 03 01"),
        (
            KeyPresented(1, b"K" * 8, b"C" * 16, b"R" * 16),
            "01" + "4b" * 8 + "43" * 16 + "52" * 16,
        ),
        (PinEntered(2, "1234"), "02 04 31 32 33 34" + " 00" * 8),
        (PinEntered(0, "000000000000"), "00 0c" + " 30" * 12),
        (BoardFault(FaultCode.BROWNOUT, "5V"), "01 35 56"),
        (Ack(), ""),
        (Nak(NakCode.BAD_INDEX), "03"),
    ],
    ids=lambda v: type(v).__name__ if not isinstance(v, str) else "",
)
def test_payload_layouts(msg: Message, payload: str) -> None:
    """Byte layouts of SPEC.md, "Messages", field by field (little-endian)."""
    assert msg.to_payload() == bytes.fromhex(payload)
    assert type(msg).from_payload(bytes.fromhex(payload)) == msg


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: Hello(256, 1000), "protocol_version"),
        (lambda: Hello(1, 0), "heartbeat_interval_ms"),
        (lambda: BoardInfo(1, 0, 0, 0, 17, 0, 0, Capability.NONE, bytes(8)), "relay_count"),
        (lambda: BoardInfo(1, 0, 0, 0, 0, 0, 65, Capability.NONE, bytes(8)), "input_count"),
        (lambda: BoardInfo(1, 0, 0, 0, 0, 0, 0, Capability.NONE, bytes(7)), "serial_number"),
        (lambda: Heartbeat(1 << 32), "uptime_ms"),
        (lambda: Configure(99, ()), "supervision_timeout_ms"),
        (lambda: Configure(1000, (SafeState.FAIL_SAFE,) * 17), "relay count"),
        (lambda: Configure(1000, (2,)), "safe state"),  # type: ignore[arg-type]
        (lambda: RelaySet(256, True), "relay_index"),
        (lambda: RelaySet(0, 2), "on"),  # type: ignore[arg-type]
        (lambda: RelayPulse(0, 0), "duration_ms"),
        (lambda: RelayPulse(0, messages.RELAY_PULSE_MAX_MS + 1), "duration_ms"),
        (lambda: ReaderFeedback(0, 7, BeepPattern.NONE, 0), "led"),  # type: ignore[arg-type]
        (lambda: ReaderFeedback(0, LedPattern.OFF, 6, 0), "beep"),  # type: ignore[arg-type]
        (lambda: ReaderFeedback(0, LedPattern.OFF, BeepPattern.NONE, 70000), "duration_ms"),
        (lambda: StateReport(0, 0x10000, ()), "relay_bits"),
        (lambda: StateReport(0, 0, (InputState(1, 0),) * 65), "input count"),
        (lambda: InputState(1, 2), "input level"),
        (lambda: InputChanged(0, 0, 256, 0), "kind"),
        (lambda: KeyPresented(0, bytes(8), bytes(15), bytes(16)), "challenge"),
        (lambda: PinEntered(256, "1234"), "reader_index"),
        (lambda: PinEntered(0, ""), "length"),
        (lambda: PinEntered(0, "1" * 13), "length"),
        (lambda: PinEntered(0, "12#4"), "digits"),
        (lambda: PinEntered(0, "١٢٣"), "digits"),  # Arabic-Indic digits: digits, not ASCII
        (lambda: PinEntered(0, b"1234"), "digits"),  # type: ignore[arg-type]
        (lambda: BoardFault(1, "é" * 33), "detail length"),
        (lambda: BoardFault(1, "\udc80"), "detail"),
        (lambda: Nak(-1), "code"),
    ],
)
def test_out_of_range_fields_are_refused(build: Any, field: str) -> None:
    with pytest.raises(MessageError) as caught:
        build()
    assert field in caught.value.detail
    assert caught.value.nak_code is NakCode.BAD_PAYLOAD


WRONG_LENGTHS: dict[type[Any], list[str]] = {
    Hello: ["01 e8", "01 e8 03 00"],
    BoardInfo: ["01" + " 00" * 14, "01" + " 00" * 16],
    Heartbeat: ["00 00 00", "00 00 00 00 00"],
    Configure: ["", "e8"],  # then one byte per relay: the board checks the count
    RelaySet: ["00", "00 00 00"],
    RelayPulse: ["00 01 00 00", "00 01 00 00 00 00"],
    ReaderFeedback: ["00 00 00 00", "00 00 00 00 00 00"],
    StateRequest: ["00"],
    StateReport: ["00 00 00 00 00 00", "00 00 00 00 00 00 00 00", "00 00 00 00 00 00 01 01"],
    InputChanged: ["00 00 00 00 00 01", "00 00 00 00 00 01 00 00"],
    KeyPresented: ["00" * 40, "00" * 42],
    PinEntered: ["00 04 31 32 33 34" + " 00" * 7, "00 04 31 32 33 34" + " 00" * 9],
    BoardFault: ["", "01" + " 41" * 65],
    Ack: ["00"],
    Nak: ["", "01 02"],
}


@pytest.mark.parametrize(
    ("cls", "payload"),
    [(cls, payload) for cls, payloads in WRONG_LENGTHS.items() for payload in payloads],
    ids=lambda v: v.__name__ if isinstance(v, type) else f"{len(bytes.fromhex(v))}B",
)
def test_wrong_payload_length_is_refused(cls: type[Any], payload: str) -> None:
    with pytest.raises(MessageError) as caught:
        cls.from_payload(bytes.fromhex(payload))
    assert caught.value.msg_type is cls.TYPE
    assert caught.value.nak_code is NakCode.BAD_PAYLOAD


@pytest.mark.parametrize(
    ("payload", "detail"),
    [
        ("00 00" + " 00" * 12, "length 0"),
        ("00 0d" + " 31" * 12, "length 13"),
        ("00 ff" + " 31" * 12, "length 255"),
        ("00 04 31 32 23 34" + " 00" * 8, "digits"),  # '#': the enter key, never sent
        ("00 04 31 2a 33 34" + " 00" * 8, "digits"),  # '*': the clear key, never sent
        ("00 04 31 32 00 34" + " 00" * 8, "digits"),  # a NUL inside the digits
        ("00 01 41" + " 00" * 11, "digits"),
        ("00 04 31 32 33 b4" + " 00" * 8, "digits"),  # '4' | 0x80: not ASCII
        ("00 04 31 32 33 34 35" + " 00" * 7, "padding"),  # a digit beyond the length
        ("00 04 31 32 33 34" + " 00" * 7 + " 01", "padding"),
        ("00 0b" + " 31" * 11 + " ff", "padding"),
    ],
)
def test_pin_entered_bad_payloads_are_refused_without_quoting_the_digits(
    payload: str, detail: str
) -> None:
    """SPEC.md, "PIN_ENTERED": each of these is NAK BAD_PAYLOAD; no error text shows the digits."""
    data = bytes.fromhex(payload)
    with pytest.raises(MessageError) as caught:
        decode_message(Frame(5, 1, MessageType.PIN_ENTERED, data, Flags.FROM_BOARD))
    assert caught.value.msg_type is MessageType.PIN_ENTERED
    assert caught.value.nak_code is NakCode.BAD_PAYLOAD
    assert detail in caught.value.detail
    typed = data[2:].rstrip(b"\x00").decode("latin-1")
    if len(typed) >= 3:
        assert typed not in str(caught.value)


def test_pin_entered_round_trips_every_length_and_keeps_leading_zeros() -> None:
    for length in range(1, messages.MAX_PIN_DIGITS + 1):
        pin = ("0" + "9876543210" * 2)[:length]
        payload = PinEntered(3, pin).to_payload()
        assert len(payload) == 2 + messages.MAX_PIN_DIGITS
        assert payload[1] == length
        assert payload[2 + length :] == bytes(messages.MAX_PIN_DIGITS - length)
        assert PinEntered.from_payload(payload) == PinEntered(3, pin)


def test_pin_entered_never_shows_its_digits() -> None:
    """A PIN is never logged (SPEC.md): neither the message nor its frame shows it in a repr."""
    msg = PinEntered(1, "97531")
    frame = Frame(5, 7, *encode_message(msg), Flags.FROM_BOARD)
    for text in (repr(msg), str(msg), repr(frame), str(frame), f"{msg!r} {frame}"):
        assert "97531" not in text
        assert "7531" not in text
    assert repr(msg) == "PinEntered(reader_index=1, digits=<5 withheld>)"
    assert "payload=<14 bytes withheld>" in repr(frame)
    assert "msg_type=<MessageType.PIN_ENTERED: 49>" in repr(frame)
    # Every other frame shows its payload as before.
    assert "payload=b'\\x01\\x02'" in repr(Frame(5, 7, MessageType.RELAY_SET, b"\x01\x02"))


def test_board_fault_detail_limit_counts_utf8_bytes() -> None:
    assert BoardFault(1, "é" * 32).to_payload() == b"\x01" + "é".encode() * 32
    with pytest.raises(MessageError):
        BoardFault.from_payload(b"\x01" + b"a" * 65)
    with pytest.raises(MessageError, match="not UTF-8"):
        BoardFault.from_payload(b"\x01\xc3")


def test_codes_from_newer_boards_are_tolerated() -> None:
    fault = BoardFault.from_payload(b"\x99")
    assert fault.code == 0x99
    assert not isinstance(fault.code, FaultCode)
    assert BoardFault.from_payload(b"\x04").code is FaultCode.WATCHDOG_RESET
    changed = InputChanged.from_payload(bytes.fromhex("00 00 00 00 00 09 01"))
    assert changed.kind == 9
    assert not isinstance(changed.kind, InputKind)
    assert Nak.from_payload(b"\xee").code == 0xEE
    assert Nak.from_payload(b"\x06").code is NakCode.NOT_CONFIGURED
    info = BoardInfo.from_payload(bytes.fromhex("01 00 00 00 00 00 00 85") + bytes(8))
    assert int(info.capabilities) == 0x85
    assert Capability.KEY_READER in info.capabilities
    assert Capability.RS485 in info.capabilities


@pytest.mark.parametrize("enum_type", [MessageType, NakCode, InputKind, FaultCode])
def test_tolerant_gives_the_member_or_the_bare_int(enum_type: type[TolerantIntEnum]) -> None:
    known = next(iter(enum_type))
    assert enum_type.tolerant(int(known)) is known
    assert enum_type.tolerant(0xEE) == 0xEE
    assert not isinstance(enum_type.tolerant(0xEE), enum_type)


def test_gateway_codes_are_strict() -> None:
    """A board refuses (NAK BAD_PAYLOAD) a pattern or safe state it does not know."""
    for payload in ("00 07 00 00 00", "00 00 06 00 00"):
        with pytest.raises(MessageError):
            ReaderFeedback.from_payload(bytes.fromhex(payload))
    with pytest.raises(MessageError):
        Configure.from_payload(bytes.fromhex("e8 03 00 02"))


def test_fields_are_normalised_to_their_types() -> None:
    assert RelaySet(0, 1).on is True  # type: ignore[arg-type]
    assert ReaderFeedback(0, 1, 2, 0).led is LedPattern.SOLID_GREEN  # type: ignore[arg-type]
    assert Configure(1000, (1, 0)).safe_states == (SafeState.FAIL_SAFE, SafeState.FAIL_SECURE)  # type: ignore[arg-type]
    assert StateReport(0, 0, [InputState(1, 1)]).inputs == (InputState(InputKind.DOOR_CONTACT, 1),)  # type: ignore[arg-type]
    assert BoardInfo(1, 0, 0, 0, 0, 0, 0, 5, bytes(8)).capabilities == Capability(5)  # type: ignore[arg-type]


def test_helpers() -> None:
    report = StateReport(0, 0b1010, ())
    assert [report.relay_on(i) for i in range(4)] == [False, True, False, True]
    info = BoardInfo(1, 2, 10, 0, 0, 0, 0, Capability.NONE, bytes(8))
    assert info.firmware_version == "2.10.0"


def test_messages_are_frozen_and_hashable() -> None:
    msg = RelayPulse(0, 100)
    with pytest.raises(AttributeError):
        msg.duration_ms = 5  # type: ignore[misc]
    assert len({RelayPulse(0, 100), RelayPulse(0, 100), Ack()}) == 2
