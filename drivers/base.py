"""The interfaces every backend implements, and the typed values they exchange."""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol


class CommandFailed(Exception):
    """A relay or reader command the hardware did not confirm (never taken as done)."""

    def __init__(self, channel: str, detail: str) -> None:
        super().__init__(f"{channel}: {detail}")
        self.channel = channel
        self.detail = detail


@dataclass(frozen=True, slots=True)
class CredentialRead:
    """What a reader captured: the credential kind, its identifier, and any proof bytes."""

    reader_id: str
    kind: str
    value: str = field(repr=False)  # a PIN's digits, a card's UID: never in a log line by accident
    proof: bytes = field(default=b"", repr=False)


class Feedback(enum.StrEnum):
    """What a reader shows the person in front of it."""

    GRANTED = "granted"  # green LED, short beep
    DENIED = "denied"  # red LED, two beeps
    LOW_ASSURANCE = (
        "low_assurance"  # denied: this door wants a stronger credential; amber, two beeps
    )
    FAULT = "fault"  # granted, but the lock did not confirm: blinking amber, long beep
    HELD_OPEN = "held_open"  # the door is held open too long: blinking red, beeping, until cleared
    DOOR_ALARM = (
        "door_alarm"  # the door was forced open: blinking red, continuous tone, until closed
    )
    IDLE = "idle"


#: How long a reader shows GRANTED, DENIED, LOW_ASSURANCE or FAULT before its LED goes off, in
#: seconds. HELD_OPEN, DOOR_ALARM and IDLE stay until the next feedback; the gateway shows a
#: door's alarm again once a decision's signal has run its course.
FEEDBACK_SHOWN_S = 3.0


class InputRole(enum.StrEnum):
    """What a door input means to its door."""

    CONTACT = "contact"  # raw level; the door's contact type says which level is open
    REX = "rex"  # level 1: request-to-exit pressed
    TAMPER = "tamper"  # level 1: enclosure open
    AUX = "aux"


@dataclass(frozen=True, slots=True)
class InputEvent:
    """An input of a door changed level; ``address``/``index`` say where it is wired."""

    channel: str  # the door id
    kind: InputRole
    level: int  # 1: active (REX pressed, tamper); the contact's raw level
    board_clock_ms: int
    address: int
    index: int


class RelayBank(Protocol):
    """Door relays addressed by channel name."""

    def is_on(self, channel: str) -> bool:
        """Whether the relay is energised now."""

    def set(self, channel: str, on: bool) -> None:
        """Energise (``on``) or release a relay until told otherwise."""

    def pulse(self, channel: str, seconds: float) -> None:
        """Energise a relay for ``seconds``, then release it (a new pulse extends the old)."""

    def drive(self, channel: str, on: bool) -> asyncio.Future[None]:
        """Set a relay now (commands keep their order); the future fails with CommandFailed."""

    def add_listener(self, listener: Callable[[str, bool], None]) -> Callable[[], None]:
        """Call ``listener(channel, on)`` on every change; returns a remover."""


class ReaderBank(Protocol):
    """Credential readers addressed by reader id."""

    def set_handler(self, handler: Callable[[CredentialRead], None]) -> None:
        """Deliver every read to ``handler`` (called in the event loop)."""

    def feedback(self, reader_id: str, feedback: Feedback) -> None:
        """Show ``feedback`` on a reader."""
