"""The protocol's one exception tree.

Classified by what the caller does: a ``FrameError`` or ``MessageError`` concerns one frame, which
is dropped (a board answers a ``MessageError`` with a NAK carrying ``nak_code``); the link goes on.
"""

from __future__ import annotations

import enum

from firmware_protocol.frame import MessageType, NakCode


class FrameErrorKind(enum.StrEnum):
    """What was wrong with the bytes (SPEC.md, "Receiving a packet"); the values appear in vectors.json."""

    BAD_COBS = "bad_cobs"  # the COBS encoding is invalid
    TOO_LONG = "too_long"  # more bytes than the largest frame, or a payload over MAX_PAYLOAD
    TRUNCATED = "truncated"  # shorter than a header and a CRC
    BAD_CRC = "bad_crc"
    BAD_VERSION = "bad_version"  # a protocol version this library does not speak
    LENGTH_MISMATCH = "length_mismatch"  # the header's length is not the payload's
    BAD_ADDRESS = "bad_address"  # 0 or 248..254: reserved, never a board nor broadcast
    BAD_FIELD = "bad_field"  # encoding only: a header field out of its range


class ProtocolError(Exception):
    """Base of every error this package raises."""


class FrameError(ProtocolError):
    """Bytes that are not a valid frame: drop them and continue (``raw`` is kept for a hex log)."""

    def __init__(self, kind: FrameErrorKind, detail: str, raw: bytes = b"") -> None:
        super().__init__(f"{kind.value}: {detail}")
        self.kind = kind
        self.detail = detail
        self.raw = raw


class MessageError(ProtocolError):
    """A payload that does not decode for its type (or an unknown type): drop it, or NAK it."""

    def __init__(
        self,
        msg_type: MessageType | int,
        detail: str,
        nak_code: NakCode = NakCode.BAD_PAYLOAD,
    ) -> None:
        super().__init__(f"type 0x{int(msg_type):02X}: {detail}")
        self.msg_type = msg_type
        self.detail = detail
        self.nak_code = nak_code
