"""Frames as bytes: header, CRC, COBS and the 0x00 delimiter (SPEC.md, "Framing").

Pure functions and one streaming decoder; no I/O, clock or logging.
"""

from __future__ import annotations

import struct

from firmware_protocol.errors import FrameError, FrameErrorKind
from firmware_protocol.frame import (
    BROADCAST_ADDRESS,
    MAX_ADDRESS,
    MAX_PAYLOAD,
    MIN_ADDRESS,
    PROTOCOL_VERSION,
    SEQ_MODULO,
    Flags,
    Frame,
    MessageType,
)

#: version u8 | address u8 | flags u8 | seq u16 | type u8 | length u8, little-endian (SPEC.md, "Packet").
_HEADER = struct.Struct("<BBBHBB")
HEADER_SIZE = _HEADER.size  # 7

#: CRC-16/CCITT-FALSE (also catalogued as CRC-16/IBM-3740): width 16, poly 0x1021, init 0xFFFF,
#: refin false, refout false, xorout 0x0000, check 0x29B1 over b"123456789" (Greg Cook's CRC
#: catalogue). Sent little-endian after the bytes it covers.
CRC_POLY = 0x1021
CRC_INIT = 0xFFFF
CRC_CHECK = 0x29B1
CRC_SIZE = 2

#: Largest packet before stuffing: header, MAX_PAYLOAD bytes of payload, CRC (249).
MAX_PACKET_SIZE = HEADER_SIZE + MAX_PAYLOAD + CRC_SIZE
#: COBS (Cheshire & Baker, "Consistent Overhead Byte Stuffing", SIGCOMM 1997 / IEEE/ACM ToN 1999)
#: adds one byte per started run of 254 bytes; a packet is under 254 bytes, so exactly one (250).
MAX_ENCODED_SIZE = MAX_PACKET_SIZE + 1
#: Largest frame on the wire: the encoded packet and its 0x00 delimiter (251).
MAX_WIRE_SIZE = MAX_ENCODED_SIZE + 1
DELIMITER = 0x00

_COBS_MAX_CODE = 0xFF  # a block of 254 non-zero bytes with no zero after it


def _crc_table() -> tuple[int, ...]:
    """The 256 partial remainders of CRC_POLY, most significant bit first."""
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ CRC_POLY) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return tuple(table)


_CRC_TABLE = _crc_table()


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE of ``data``."""
    crc = CRC_INIT
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC_TABLE[(crc >> 8) ^ byte]
    return crc


def cobs_encode(data: bytes) -> bytes:
    """``data`` with every 0x00 removed by COBS; the result holds no 0x00 (no delimiter added)."""
    out = bytearray(b"\x00")  # placeholder for the first block's code
    code_at = 0
    code = 1
    for byte in data:
        if byte:
            out.append(byte)
            code += 1
            if code != _COBS_MAX_CODE:
                continue
        out[code_at] = code  # a zero, or a full block: close the block, open the next
        code_at = len(out)
        out.append(0)
        code = 1
    out[code_at] = code
    return bytes(out)


def cobs_decode(data: bytes) -> bytes:
    """The bytes ``cobs_encode`` made ``data`` from; FrameError (bad_cobs) if it is not COBS."""
    out = bytearray()
    pos, end = 0, len(data)
    while pos < end:
        code = data[pos]
        block_end = pos + code
        if code == 0 or block_end > end:
            raise FrameError(
                FrameErrorKind.BAD_COBS,
                f"code 0x{code:02X} at offset {pos} runs past the end ({end} bytes)"
                if code
                else f"0x00 inside a packet at offset {pos}",
                data,
            )
        block = data[pos + 1 : block_end]
        if 0 in block:
            raise FrameError(FrameErrorKind.BAD_COBS, f"0x00 inside a block at offset {pos}", data)
        out += block
        pos = block_end
        if code != _COBS_MAX_CODE and pos < end:
            out.append(0)
    return bytes(out)


def valid_address(address: int) -> bool:
    """True for a board address (MIN_ADDRESS..MAX_ADDRESS) or BROADCAST_ADDRESS."""
    return MIN_ADDRESS <= address <= MAX_ADDRESS or address == BROADCAST_ADDRESS


def encode_frame(frame: Frame) -> bytes:
    """``frame`` as it goes on the wire: COBS-encoded packet and the 0x00 delimiter."""
    if frame.version != PROTOCOL_VERSION:
        raise FrameError(
            FrameErrorKind.BAD_VERSION, f"version {frame.version} is not {PROTOCOL_VERSION}"
        )
    if not valid_address(frame.address):
        raise FrameError(FrameErrorKind.BAD_ADDRESS, f"address {frame.address} is reserved")
    if len(frame.payload) > MAX_PAYLOAD:
        raise FrameError(
            FrameErrorKind.TOO_LONG, f"payload of {len(frame.payload)} bytes exceeds {MAX_PAYLOAD}"
        )
    for name, value, limit in (
        ("flags", int(frame.flags), 0x100),
        ("seq", frame.seq, SEQ_MODULO),
        ("msg_type", int(frame.msg_type), 0x100),
    ):
        if not 0 <= value < limit:
            raise FrameError(FrameErrorKind.BAD_FIELD, f"{name} {value} is outside 0..{limit - 1}")
    body = (
        _HEADER.pack(
            frame.version,
            frame.address,
            int(frame.flags),
            frame.seq,
            int(frame.msg_type),
            len(frame.payload),
        )
        + frame.payload
    )
    packet = body + crc16(body).to_bytes(CRC_SIZE, "little")
    return cobs_encode(packet) + bytes([DELIMITER])


def decode_packet(packet: bytes) -> Frame:
    """The frame in one COBS-encoded packet (without its delimiter); FrameError if there is none."""
    if len(packet) > MAX_ENCODED_SIZE:
        raise FrameError(
            FrameErrorKind.TOO_LONG, f"{len(packet)} bytes exceed {MAX_ENCODED_SIZE}", packet
        )
    raw = cobs_decode(packet)
    if len(raw) < HEADER_SIZE + CRC_SIZE:
        raise FrameError(
            FrameErrorKind.TRUNCATED,
            f"{len(raw)} bytes are fewer than a header and a CRC ({HEADER_SIZE + CRC_SIZE})",
            packet,
        )
    body = raw[:-CRC_SIZE]
    sent_crc = int.from_bytes(raw[-CRC_SIZE:], "little")
    crc = crc16(body)
    if crc != sent_crc:
        raise FrameError(
            FrameErrorKind.BAD_CRC, f"CRC 0x{sent_crc:04X} sent, 0x{crc:04X} computed", packet
        )
    version, address, flags, seq, msg_type, length = _HEADER.unpack_from(body)
    if version != PROTOCOL_VERSION:
        raise FrameError(
            FrameErrorKind.BAD_VERSION, f"version {version} is not {PROTOCOL_VERSION}", packet
        )
    payload = body[HEADER_SIZE:]
    if length != len(payload):
        raise FrameError(
            FrameErrorKind.LENGTH_MISMATCH,
            f"header says {length} payload bytes, the packet holds {len(payload)}",
            packet,
        )
    if not valid_address(address):
        raise FrameError(FrameErrorKind.BAD_ADDRESS, f"address {address} is reserved", packet)
    return Frame(
        address=address,
        seq=seq,
        msg_type=MessageType.tolerant(msg_type),
        payload=payload,
        flags=Flags(flags),
        version=version,
    )


class FrameDecoder:
    """Splits a byte stream into frames; keeps partial data between feeds; never raises."""

    __slots__ = ("_buffer", "_discarding")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._discarding = False  # inside an over-long run: drop bytes up to the next delimiter

    @property
    def buffered(self) -> int:
        """Bytes held for an unfinished packet (never more than MAX_ENCODED_SIZE)."""
        return len(self._buffer)

    def reset(self) -> None:
        """Forget any partial packet (e.g. after the link was reopened)."""
        self._buffer.clear()
        self._discarding = False

    def feed(self, data: bytes) -> list[Frame | FrameError]:
        """Every frame completed by ``data``, in order, with a FrameError in place of each bad one."""
        results: list[Frame | FrameError] = []
        start, end = 0, len(data)
        while start < end:
            delimiter = data.find(DELIMITER, start)
            stop = end if delimiter < 0 else delimiter
            if not self._discarding:
                room = (
                    MAX_ENCODED_SIZE + 1 - len(self._buffer)
                )  # one more byte proves a run too long
                self._buffer += data[start : min(stop, start + room)]
                if len(self._buffer) > MAX_ENCODED_SIZE:
                    # Report the run once, bounded; resync at the next delimiter.
                    results.append(
                        FrameError(
                            FrameErrorKind.TOO_LONG,
                            f"more than {MAX_ENCODED_SIZE} bytes without a delimiter",
                            bytes(self._buffer[:MAX_ENCODED_SIZE]),
                        )
                    )
                    self._buffer.clear()
                    self._discarding = True
            if delimiter < 0:
                break
            if self._discarding:
                self._discarding = False
            elif self._buffer:  # an empty packet (0x00 0x00) is a sender flushing line noise
                results.append(self._decode(bytes(self._buffer)))
                self._buffer.clear()
            start = delimiter + 1
        return results

    @staticmethod
    def _decode(packet: bytes) -> Frame | FrameError:
        try:
            return decode_packet(packet)
        except FrameError as err:
            return err
