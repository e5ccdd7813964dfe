"""Builds vectors.json, the byte-exact test vectors of SPEC.md ("Test vectors").

``python -m firmware_protocol.vectors`` rewrites the file next to this module;
``python -m firmware_protocol.vectors --check`` exits 1 if the file is not what the code builds.
The committed file is the reference: the tests check the library against it byte for byte.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import json
import sys
import typing
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from firmware_protocol import frame as frame_module
from firmware_protocol import messages, wire
from firmware_protocol.errors import FrameError, MessageError
from firmware_protocol.frame import BROADCAST_ADDRESS, Flags, Frame, MessageType, NakCode
from firmware_protocol.messages import (
    Ack,
    BeepPattern,
    BoardFault,
    BoardInfo,
    Capability,
    Configure,
    FaultCode,
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
)

JSON = dict[str, Any]

VECTORS_PATH = Path(__file__).with_name("vectors.json")

BOARD = 5  # the board address the vectors use
FROM_BOARD = Flags.FROM_BOARD


def hexstr(data: bytes) -> str:
    """Bytes as lowercase hex, one space between bytes (``bytes.fromhex`` reads it back)."""
    return data.hex(" ")


def message_to_json(msg: Message) -> JSON:
    """A message as {"type": name, "fields": {...}}: ints, hex strings for bytes, lists."""

    def value(v: Any) -> Any:
        if isinstance(v, bytes):
            return hexstr(v)
        if isinstance(v, int):  # bool, IntEnum and IntFlag values too
            return int(v)
        if isinstance(v, tuple):
            return [value(item) for item in v]
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: value(getattr(v, f.name)) for f in dataclasses.fields(v)}
        return v

    fields = {f.name: value(getattr(msg, f.name)) for f in dataclasses.fields(msg)}
    return {"type": msg.TYPE.name, "fields": fields}


def message_from_json(data: JSON) -> Message:
    """The message ``message_to_json`` described."""
    cls = messages.MESSAGE_CLASSES[MessageType[data["type"]]]
    hints = typing.get_type_hints(cls)
    kwargs: JSON = {}
    for name, v in data["fields"].items():
        if hints[name] is bytes:
            kwargs[name] = bytes.fromhex(v)
        elif isinstance(v, list):
            kwargs[name] = tuple(InputState(**i) if isinstance(i, dict) else i for i in v)
        else:
            kwargs[name] = v
    return cls(**kwargs)


def header_json(frame: Frame) -> JSON:
    """A frame's header fields, and its payload in hex."""
    return {
        "version": frame.version,
        "address": frame.address,
        "flags": int(frame.flags),
        "seq": frame.seq,
        "type": int(frame.msg_type),
        "length": len(frame.payload),
        "payload": hexstr(frame.payload),
    }


def outcome_json(item: Frame | FrameError) -> JSON:
    """What a receiver makes of one packet: a frame (and its message, or the NAK it earns)."""
    if isinstance(item, FrameError):
        return {"frame_error": item.kind.value}
    result: JSON = {"frame": header_json(item)}
    try:
        result["message"] = message_to_json(messages.decode_message(item))
    except MessageError as err:
        result["message_error"] = {"nak_code": int(err.nak_code), "nak": err.nak_code.name}
    return result


def raw_packet(
    *,
    version: int = frame_module.PROTOCOL_VERSION,
    address: int = BOARD,
    flags: int = 0,
    seq: int = 0,
    msg_type: int,
    payload: bytes = b"",
    length: int | None = None,
    crc_xor: int = 0,
) -> bytes:
    """A packet (before COBS) built without any check, for malformed vectors."""
    body = bytes([version, address, flags]) + seq.to_bytes(2, "little")
    body += bytes([msg_type, len(payload) if length is None else length]) + payload
    crc = wire.crc16(body) ^ crc_xor
    return body + crc.to_bytes(wire.CRC_SIZE, "little")


def stuffed(packet: bytes) -> bytes:
    """``packet`` COBS-encoded and delimited."""
    return wire.cobs_encode(packet) + bytes([wire.DELIMITER])


def _frames() -> list[tuple[str, str, Frame, Message]]:
    """(name, description, frame, message) for the frame vectors."""
    key_id = bytes.fromhex("4c4b000000a1b2c3")
    challenge = bytes.fromhex("00112233445566778899aabbccddeeff")
    response = bytes.fromhex("9f86d081884c7d659a2feaa0c55ad015")
    entries: list[tuple[str, str, int, int, Flags, Message]] = [
        ("hello", "gateway asks board 5 who it is", BOARD, 0x0100, Flags.NONE, Hello(1, 1000)),
        (
            "ack_hello_more",
            "board 5 acknowledges the HELLO; MORE: BOARD_INFO follows in the same reply",
            BOARD,
            0x0100,
            FROM_BOARD | Flags.MORE,
            Ack(),
        ),
        (
            "board_info",
            "firmware 2.3.4, 2 relays, 1 reader, 4 inputs, key reader and RS-485",
            BOARD,
            0x0000,
            FROM_BOARD,
            BoardInfo(
                1,
                2,
                3,
                4,
                2,
                1,
                4,
                Capability.KEY_READER | Capability.RS485,
                bytes.fromhex("4c55000000000042"),
            ),
        ),
        ("ack_board_info", "gateway acknowledges board seq 0", BOARD, 0x0000, Flags.NONE, Ack()),
        (
            "configure",
            "3 s supervision; relay 0 fail-secure, relay 1 fail-safe",
            BOARD,
            0x0101,
            Flags.NONE,
            Configure(3000, (SafeState.FAIL_SECURE, SafeState.FAIL_SAFE)),
        ),
        (
            "configure_no_relays",
            "a reader-only board: no relay bytes",
            BOARD,
            0x0102,
            Flags.NONE,
            Configure(65535, ()),
        ),
        (
            "heartbeat",
            "the worked example of SPEC.md: gateway uptime 1234567 ms",
            BOARD,
            0x0102,
            Flags.NONE,
            messages.Heartbeat(1234567),
        ),
        (
            "heartbeat_seq_wrap",
            "seq 65535 (the next frame carries 0); uptime wrapped",
            BOARD,
            0xFFFF,
            Flags.NONE,
            messages.Heartbeat(0xFFFFFFFF),
        ),
        ("relay_set_on", "energise relay 1", BOARD, 0x0103, Flags.NONE, RelaySet(1, True)),
        (
            "relay_set_off_broadcast",
            "every board: de-energise relay 0 (never answered)",
            BROADCAST_ADDRESS,
            0x0007,
            Flags.NONE,
            RelaySet(0, False),
        ),
        ("relay_pulse", "relay 0 on for 5 s", BOARD, 0x0104, Flags.NONE, RelayPulse(0, 5000)),
        (
            "relay_pulse_max",
            "relay 1 on for one hour (the longest pulse)",
            BOARD,
            0x0105,
            Flags.NONE,
            RelayPulse(1, messages.RELAY_PULSE_MAX_MS),
        ),
        (
            "reader_feedback",
            "reader 0: blink green and beep twice, LED for 3 s",
            BOARD,
            0x0106,
            Flags.NONE,
            ReaderFeedback(0, LedPattern.BLINK_GREEN, BeepPattern.DOUBLE, 3000),
        ),
        (
            "reader_feedback_hold",
            "reader 0: solid red until replaced, no beep",
            BOARD,
            0x0107,
            Flags.NONE,
            ReaderFeedback(0, LedPattern.SOLID_RED, BeepPattern.NONE, 0),
        ),
        ("state_request", "ask for a STATE_REPORT", BOARD, 0x0108, Flags.NONE, StateRequest()),
        (
            "state_report",
            "relay 0 energised; door closed, REX idle, no tamper, aux active",
            BOARD,
            0x0001,
            FROM_BOARD,
            StateReport(
                987654321,
                0b01,
                (
                    InputState(InputKind.DOOR_CONTACT, 0),
                    InputState(InputKind.REX, 0),
                    InputState(InputKind.TAMPER, 0),
                    InputState(InputKind.AUX, 1),
                ),
            ),
        ),
        (
            "state_report_no_inputs",
            "a board without inputs",
            BOARD,
            0x0002,
            FROM_BOARD,
            StateReport(0, 0, ()),
        ),
        (
            "input_changed_more",
            "door contact (input 0) opened; MORE: another frame is queued",
            BOARD,
            0x0003,
            FROM_BOARD | Flags.MORE,
            InputChanged(987660000, 0, InputKind.DOOR_CONTACT, 1),
        ),
        (
            "input_changed_unknown_kind",
            "an input kind this version does not know (9) still decodes",
            BOARD,
            0x0004,
            FROM_BOARD,
            InputChanged(987661000, 3, 9, 0),
        ),
        (
            "key_presented",
            "a key on reader 0 answered the board's challenge",
            BOARD,
            0x0005,
            FROM_BOARD,
            KeyPresented(0, key_id, challenge, response),
        ),
        (
            "pin_entered",
            "PIN 2580 typed on reader 0's keypad and confirmed with #",
            BOARD,
            0x0009,
            FROM_BOARD,
            PinEntered(0, "2580"),
        ),
        (
            "pin_entered_twelve_digits",
            "the longest PIN (12 digits, leading zero kept) on reader 1: no padding",
            BOARD,
            0x000A,
            FROM_BOARD,
            PinEntered(1, "012345678909"),
        ),
        (
            "board_fault",
            "relay driver fault with an ASCII detail",
            BOARD,
            0x0006,
            FROM_BOARD,
            BoardFault(FaultCode.RELAY_DRIVER, "relay 1 coil open"),
        ),
        (
            "board_fault_unknown_code",
            "a fault code this version does not know (0x42), UTF-8 detail",
            BOARD,
            0x0007,
            FROM_BOARD,
            BoardFault(0x42, "Überspannung 28 V"),
        ),
        (
            "board_fault_no_detail",
            "watchdog reset, empty detail",
            BOARD,
            0x0008,
            FROM_BOARD,
            BoardFault(FaultCode.WATCHDOG_RESET),
        ),
        ("ack", "board 5 acknowledges gateway seq 0x0104", BOARD, 0x0104, FROM_BOARD, Ack()),
        (
            "nak",
            "board 5 refuses gateway seq 0x0103: not configured",
            BOARD,
            0x0103,
            FROM_BOARD,
            Nak(NakCode.NOT_CONFIGURED),
        ),
        (
            "nak_unknown_code",
            "a NAK code this version does not know (0x99) still decodes",
            BOARD,
            0x0106,
            FROM_BOARD,
            Nak(0x99),
        ),
    ]
    return [
        (name, text, Frame(address, seq, *messages.encode_message(msg), flags), msg)
        for name, text, address, seq, flags, msg in entries
    ]


def _malformed() -> list[tuple[str, str, bytes]]:
    """(name, description, wire bytes) of inputs that are not (all) valid frames or messages."""
    heartbeat = Frame(BOARD, 0x0102, MessageType.HEARTBEAT, (1234567).to_bytes(4, "little"))
    good = wire.encode_frame(heartbeat)
    bad_cobs = bytearray(good)
    bad_cobs[0] = 0x20  # the first block claims 31 bytes; the packet has 14
    noise = bytes.fromhex("13 37 ff")
    return [
        (
            "bad_crc",
            "the heartbeat with its CRC's low byte changed",
            stuffed(raw_packet(seq=0x0102, msg_type=0x03, payload=heartbeat.payload, crc_xor=1)),
        ),
        ("bad_cobs", "a COBS code that runs past the end of the packet", bytes(bad_cobs)),
        (
            "truncated",
            "8 bytes: shorter than a header and a CRC (checked before the CRC)",
            stuffed(raw_packet(msg_type=0x03)[:8]),
        ),
        (
            "bad_version",
            "protocol version 2, valid CRC",
            stuffed(raw_packet(version=2, seq=9, msg_type=0x03, payload=bytes(4))),
        ),
        (
            "length_mismatch",
            "the header says 5 payload bytes, 4 follow; valid CRC",
            stuffed(raw_packet(seq=9, msg_type=0x03, payload=bytes(4), length=5)),
        ),
        (
            "bad_address",
            "address 0 is reserved; valid CRC",
            stuffed(raw_packet(address=0, seq=9, msg_type=0x03, payload=bytes(4))),
        ),
        (
            "payload_too_long",
            "241 payload bytes: the encoded packet is 251 bytes, over the 250 allowed",
            stuffed(raw_packet(seq=9, msg_type=0x55, payload=bytes([0xAA]) * 241)),
        ),
        (
            "over_long_run",
            "300 bytes without a delimiter are dropped as one error; the next frame decodes",
            b"\x41" * 300 + b"\x00" + good,
        ),
        (
            "unknown_type",
            "type 0x55 decodes as a frame and fails as a message (NAK UNKNOWN_TYPE)",
            stuffed(raw_packet(seq=10, msg_type=0x55, payload=b"\x01\x02")),
        ),
        (
            "largest_frame",
            "240 payload bytes (type 0x56): 251 bytes on the wire, the most a receiver buffers",
            stuffed(raw_packet(seq=11, msg_type=0x56, payload=bytes(range(240)))),
        ),
        (
            "relay_set_wrong_length",
            "RELAY_SET with 3 payload bytes: a valid frame, a bad payload",
            stuffed(raw_packet(seq=12, msg_type=0x10, payload=b"\x00\x01\x00")),
        ),
        (
            "relay_set_bad_on",
            "RELAY_SET with on = 2",
            stuffed(raw_packet(seq=13, msg_type=0x10, payload=b"\x00\x02")),
        ),
        (
            "relay_pulse_zero",
            "RELAY_PULSE of 0 ms",
            stuffed(raw_packet(seq=14, msg_type=0x11, payload=b"\x00" + bytes(4))),
        ),
        (
            "relay_pulse_too_long",
            "RELAY_PULSE of 3600001 ms",
            stuffed(
                raw_packet(seq=15, msg_type=0x11, payload=b"\x00" + (3600001).to_bytes(4, "little"))
            ),
        ),
        (
            "reader_feedback_unknown_led",
            "READER_FEEDBACK with LED pattern 0x20",
            stuffed(raw_packet(seq=16, msg_type=0x12, payload=b"\x00\x20\x00\x00\x00")),
        ),
        (
            "configure_bad_safe_state",
            "CONFIGURE with safe state 2",
            stuffed(raw_packet(seq=17, msg_type=0x04, payload=b"\xb8\x0b\x02")),
        ),
        (
            "configure_timeout_too_short",
            "CONFIGURE with a supervision timeout of 99 ms",
            stuffed(raw_packet(seq=18, msg_type=0x04, payload=b"\x63\x00")),
        ),
        (
            "state_report_count_mismatch",
            "STATE_REPORT announcing 2 inputs and carrying 1",
            stuffed(
                raw_packet(
                    flags=1, seq=19, msg_type=0x21, payload=bytes(4) + b"\x00\x00\x02\x01\x00"
                )
            ),
        ),
        (
            "board_fault_bad_utf8",
            "BOARD_FAULT whose detail is not UTF-8",
            stuffed(raw_packet(flags=1, seq=20, msg_type=0x40, payload=b"\x01\xff\xfe")),
        ),
        (
            "pin_entered_length_zero",
            "PIN_ENTERED with length 0 (an empty entry is never sent)",
            stuffed(raw_packet(flags=1, seq=22, msg_type=0x31, payload=bytes(14))),
        ),
        (
            "pin_entered_length_too_long",
            "PIN_ENTERED with length 13: more digits than the field holds",
            stuffed(raw_packet(flags=1, seq=23, msg_type=0x31, payload=b"\x00\x0d" + b"1" * 12)),
        ),
        (
            "pin_entered_not_a_digit",
            "PIN_ENTERED '12#4': '#' is the enter key, never a digit",
            stuffed(
                raw_packet(flags=1, seq=24, msg_type=0x31, payload=b"\x00\x04" + b"12#4" + bytes(8))
            ),
        ),
        (
            "pin_entered_bad_padding",
            "PIN_ENTERED '1234' with a non-zero byte after the digits",
            stuffed(
                raw_packet(
                    flags=1, seq=25, msg_type=0x31, payload=b"\x00\x04" + b"12345" + bytes(7)
                )
            ),
        ),
        (
            "pin_entered_wrong_length",
            "PIN_ENTERED with a 13-byte payload (the digit field cut short)",
            stuffed(
                raw_packet(flags=1, seq=26, msg_type=0x31, payload=b"\x00\x04" + b"1234" + bytes(7))
            ),
        ),
        (
            "ack_with_payload",
            "an ACK carrying a byte",
            stuffed(raw_packet(flags=1, seq=21, msg_type=0x7E, payload=b"\x00")),
        ),
        (
            "empty_packets",
            "0x00 0x00 0x00 before a frame: empty packets are ignored",
            b"\x00\x00\x00" + good,
        ),
        (
            "noise_then_flush",
            "line noise, then the sender's leading 0x00: one error, the frame survives",
            good + noise + b"\x00" + good,
        ),
        (
            "noise_without_flush",
            "line noise glued to the next frame (no leading 0x00): that frame is lost",
            good + noise + good,
        ),
    ]


def _enums() -> JSON:
    types: Sequence[type[enum.IntEnum] | type[enum.IntFlag]] = (
        MessageType,
        Flags,
        NakCode,
        Capability,
        SafeState,
        LedPattern,
        BeepPattern,
        InputKind,
        FaultCode,
    )
    return {t.__name__: {name: int(m.value) for name, m in t.__members__.items()} for t in types}


def _outcomes(data: bytes) -> list[JSON]:
    return [outcome_json(item) for item in wire.FrameDecoder().feed(data)]


def build_vectors() -> JSON:
    """Every vector, as the JSON document vectors.json holds."""
    frames = []
    for name, text, frame, msg in _frames():
        encoded = wire.encode_frame(frame)
        packet = wire.cobs_decode(encoded[:-1])
        frames.append(
            {
                "name": name,
                "description": text,
                "frame": header_json(frame),
                "message": message_to_json(msg),
                "packet": hexstr(packet),
                "crc": f"0x{wire.crc16(packet[: -wire.CRC_SIZE]):04x}",
                "wire": hexstr(encoded),
            }
        )
    cobs_examples: Iterable[bytes] = (
        b"",
        b"\x00",
        b"\x00\x00",
        b"\x11\x22\x00\x33",
        b"\x11\x22\x33\x44",
        b"\x11\x00\x00\x00",
    )
    return {
        "about": (
            "Byte-exact vectors for the door board protocol (SPEC.md, 'Test vectors'). "
            "Hex strings list bytes in wire order; 'wire' includes the 0x00 delimiter."
        ),
        "constants": {
            "PROTOCOL_VERSION": frame_module.PROTOCOL_VERSION,
            "HEADER_SIZE": wire.HEADER_SIZE,
            "CRC_SIZE": wire.CRC_SIZE,
            "MAX_PAYLOAD": frame_module.MAX_PAYLOAD,
            "MAX_PACKET_SIZE": wire.MAX_PACKET_SIZE,
            "MAX_ENCODED_SIZE": wire.MAX_ENCODED_SIZE,
            "MAX_WIRE_SIZE": wire.MAX_WIRE_SIZE,
            "MIN_ADDRESS": frame_module.MIN_ADDRESS,
            "MAX_ADDRESS": frame_module.MAX_ADDRESS,
            "BROADCAST_ADDRESS": frame_module.BROADCAST_ADDRESS,
            "MAX_RELAYS": messages.MAX_RELAYS,
            "MAX_INPUTS": messages.MAX_INPUTS,
            "MAX_FAULT_DETAIL": messages.MAX_FAULT_DETAIL,
            "MAX_PIN_DIGITS": messages.MAX_PIN_DIGITS,
            "RELAY_PULSE_MAX_MS": messages.RELAY_PULSE_MAX_MS,
            "SUPERVISION_TIMEOUT_MIN_MS": messages.SUPERVISION_TIMEOUT_MIN_MS,
        },
        "enums": _enums(),
        "crc": {
            "algorithm": "CRC-16/CCITT-FALSE",
            "width": 16,
            "poly": f"0x{wire.CRC_POLY:04x}",
            "init": f"0x{wire.CRC_INIT:04x}",
            "refin": False,
            "refout": False,
            "xorout": "0x0000",
            "examples": [
                {"data": hexstr(data), "crc": f"0x{wire.crc16(data):04x}"}
                for data in (b"123456789", b"", bytes.fromhex("01 05 00 02 01 03 04 87 d6 12 00"))
            ],
        },
        "cobs": [
            {"decoded": hexstr(data), "encoded": hexstr(wire.cobs_encode(data))}
            for data in cobs_examples
        ],
        "frames": frames,
        "malformed": [
            {"name": name, "description": text, "wire": hexstr(data), "expect": _outcomes(data)}
            for name, text, data in _malformed()
        ],
    }


def render(vectors: JSON) -> str:
    """The file's text."""
    return json.dumps(vectors, indent=2, ensure_ascii=False) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Write (or with --check, verify) vectors.json."""
    parser = argparse.ArgumentParser(prog="python -m firmware_protocol.vectors")
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    parser.add_argument("path", nargs="?", type=Path, default=VECTORS_PATH)
    args = parser.parse_args(argv)
    text = render(build_vectors())
    if args.check:
        current = args.path.read_text(encoding="utf-8") if args.path.exists() else ""
        if current != text:
            print(f"{args.path} is stale: run python -m firmware_protocol.vectors", file=sys.stderr)
            return 1
        return 0
    args.path.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
