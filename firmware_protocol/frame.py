"""The frame: the unit every layer above the byte stream speaks (see SPEC.md, "Frames").

A frame is a header and a payload. How it travels as bytes (COBS, CRC, delimiter) is the
wire layer's job (``wire.py``); what a payload means is the message layer's (``messages.py``);
acknowledgement and retransmission are the session's (``session.py``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Self

#: The protocol version this library speaks; a frame with another version is refused.
PROTOCOL_VERSION = 1

#: Largest payload in one frame, in bytes (SPEC.md: keeps a whole frame under 256 bytes on the wire).
MAX_PAYLOAD = 240

#: Bus addresses of boards; 0 is never a board (the gateway is the only master on the bus).
MIN_ADDRESS = 1
MAX_ADDRESS = 247
BROADCAST_ADDRESS = 255

SEQ_MODULO = 1 << 16  # sequence numbers are uint16 and wrap


class Flags(enum.IntFlag):
    """Header flag bits."""

    NONE = 0x00
    FROM_BOARD = 0x01  # set on frames a board sends; clear on the gateway's
    MORE = 0x02  # board → gateway: the board has another frame waiting (SPEC.md, "Bus access")


class TolerantIntEnum(enum.IntEnum):
    """An IntEnum whose codes from a newer peer decode to a bare int instead of failing."""

    @classmethod
    def tolerant(cls, code: int) -> Self | int:
        """The member for ``code``, or the bare int for a code this version does not know."""
        try:
            return cls(code)
        except ValueError:
            return code


class MessageType(TolerantIntEnum):
    """What a frame's payload is (SPEC.md, "Messages"). Codes are stable on the wire."""

    HELLO = 0x01  # gateway → board: who are you, and here is my heartbeat interval
    BOARD_INFO = 0x02  # board → gateway: firmware version and capabilities
    HEARTBEAT = 0x03  # gateway → board: I am alive
    CONFIGURE = 0x04  # gateway → board: supervision timeout and per-relay safe state
    RELAY_SET = 0x10  # gateway → board: relay on/off until told otherwise
    RELAY_PULSE = 0x11  # gateway → board: relay on for a duration
    READER_FEEDBACK = 0x12  # gateway → board: LED pattern and beep on a reader
    STATE_REQUEST = 0x20  # gateway → board: send a STATE_REPORT
    STATE_REPORT = 0x21  # board → gateway: every input and relay, with the board's clock
    INPUT_CHANGED = 0x22  # board → gateway: one input changed
    KEY_PRESENTED = 0x30  # board → gateway: a mechatronic key answered a challenge
    PIN_ENTERED = 0x31  # board → gateway: a PIN typed on a keypad (a secret: never logged)
    BOARD_FAULT = 0x40  # board → gateway: something is wrong on the board
    ACK = 0x7E  # either way: the frame with this seq was received and carried out
    NAK = 0x7F  # either way: the frame with this seq was received and refused (payload: NakCode)


class NakCode(TolerantIntEnum):
    """Why a frame was refused (the one-byte payload of a NAK)."""

    UNKNOWN_TYPE = 0x01
    BAD_PAYLOAD = 0x02
    BAD_INDEX = 0x03  # no such relay, reader or input
    UNSUPPORTED_VERSION = 0x04
    BUSY = 0x05  # try again later
    NOT_CONFIGURED = 0x06  # HELLO/CONFIGURE first
    HARDWARE_FAULT = 0x07


#: Types that are never acknowledged themselves (acknowledging an ACK would never end).
UNACKNOWLEDGED_TYPES = frozenset({MessageType.ACK, MessageType.NAK})

#: Types whose payload is a secret (SPEC.md, "PIN_ENTERED"): a frame's repr withholds it, so
#: a frame in a log line never carries a PIN.
SECRET_PAYLOAD_TYPES = frozenset({MessageType.PIN_ENTERED})


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame: header fields and the raw payload bytes."""

    address: int  # the board's bus address, in both directions
    seq: int  # the sender's sequence number (uint16); an ACK/NAK carries the seq it answers
    msg_type: MessageType | int  # an int only for a type this version does not know
    payload: bytes = b""
    flags: Flags = Flags.NONE
    version: int = PROTOCOL_VERSION

    def __repr__(self) -> str:
        payload = repr(self.payload)
        if self.msg_type in SECRET_PAYLOAD_TYPES:
            payload = f"<{len(self.payload)} bytes withheld>"
        return (
            f"{type(self).__qualname__}(address={self.address!r}, seq={self.seq!r}, "
            f"msg_type={self.msg_type!r}, payload={payload}, flags={self.flags!r}, "
            f"version={self.version!r})"
        )

    @property
    def from_board(self) -> bool:
        """True for a frame a board sent."""
        return bool(self.flags & Flags.FROM_BOARD)

    @property
    def needs_ack(self) -> bool:
        """Every frame but an ACK or NAK is acknowledged by its receiver."""
        return self.msg_type not in UNACKNOWLEDGED_TYPES
