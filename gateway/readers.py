"""All of a gateway's readers as one ``ReaderBank``: the hardware's and the gateway's own.

The hardware's readers are the door boards' reader ports (or the simulated ones); the gateway's
own are NFC readers on its USB or UART and its Bluetooth radio. Every read reaches the one
handler; feedback goes to the hardware's reader of the door (its LED and beeper), since the
gateway's own readers have none they can drive per result.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from drivers.base import CredentialRead, Feedback, ReaderBank

_LOGGER = logging.getLogger(__name__)


class OwnReader(Protocol):
    """A reader the gateway runs itself (NFC frontend, BLE scanner)."""

    def set_handler(self, handler: Callable[[CredentialRead], None]) -> None:
        """Deliver every read to ``handler`` (called in the event loop)."""

    def start(self) -> None:
        """Start reading (from the event loop that is to get the reads)."""

    async def stop(self) -> None:
        """Stop reading; idempotent."""


class ReaderSet:
    """The hardware's readers plus the gateway's own, started and stopped together."""

    def __init__(self, hardware: ReaderBank) -> None:
        self._hardware = hardware
        self._own: list[OwnReader] = []
        self._handler: Callable[[CredentialRead], None] | None = None
        self._started = False

    @property
    def own(self) -> tuple[OwnReader, ...]:
        """The gateway's own readers, in the order added."""
        return tuple(self._own)

    def add(self, reader: OwnReader) -> None:
        """Add one of the gateway's own readers; it starts now if the set already has."""
        self._own.append(reader)
        if self._handler is not None:
            reader.set_handler(self._handler)
        if self._started:
            reader.start()

    def set_handler(self, handler: Callable[[CredentialRead], None]) -> None:
        """Deliver every reader's reads to ``handler``."""
        self._handler = handler
        self._hardware.set_handler(handler)
        for reader in self._own:
            reader.set_handler(handler)

    def feedback(self, reader_id: str, feedback: Feedback) -> None:
        """Show ``feedback`` on the door's hardware reader (LookupError: none wired)."""
        self._hardware.feedback(reader_id, feedback)

    def start(self) -> None:
        """Start the gateway's own readers."""
        self._started = True
        for reader in self._own:
            reader.start()

    async def stop(self) -> None:
        """Stop the gateway's own readers, each even if another fails."""
        self._started = False
        for reader in reversed(self._own):
            try:
                await reader.stop()
            except Exception:  # one reader's failure must not leave the others running
                _LOGGER.exception("stopping reader %r failed", reader)
