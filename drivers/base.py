"""The interfaces every backend implements, and the typed values they exchange."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class CredentialRead:
    """What a reader captured: the credential kind, its identifier, and any proof bytes."""

    reader_id: str
    kind: str
    value: str
    proof: bytes = b""


class Feedback(enum.StrEnum):
    """What a reader shows the person in front of it."""

    GRANTED = "granted"  # green LED, short beep
    DENIED = "denied"  # red LED, two beeps
    IDLE = "idle"


class RelayBank(Protocol):
    """Door relays addressed by channel name."""

    def is_on(self, channel: str) -> bool:
        """Whether the relay is energised now."""

    def set(self, channel: str, on: bool) -> None:
        """Energise (``on``) or release a relay until told otherwise."""

    def pulse(self, channel: str, seconds: float) -> None:
        """Energise a relay for ``seconds``, then release it (a new pulse extends the old)."""

    def add_listener(self, listener: Callable[[str, bool], None]) -> Callable[[], None]:
        """Call ``listener(channel, on)`` on every change; returns a remover."""


class ReaderBank(Protocol):
    """Credential readers addressed by reader id."""

    def set_handler(self, handler: Callable[[CredentialRead], None]) -> None:
        """Deliver every read to ``handler`` (called in the event loop)."""

    def feedback(self, reader_id: str, feedback: Feedback) -> None:
        """Show ``feedback`` on a reader."""
