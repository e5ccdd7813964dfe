"""Simulated twins of relays and readers: the embedded default and the tests run on them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from drivers.base import CredentialRead, Feedback

_LOGGER = logging.getLogger(__name__)


class SimulatedRelays:
    """Relays kept in memory; pulses release themselves on the event loop's clock."""

    def __init__(self) -> None:
        self._state: dict[str, bool] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._listeners: list[Callable[[str, bool], None]] = []

    def is_on(self, channel: str) -> bool:
        """Whether the relay is energised now."""
        return self._state.get(channel, False)

    def states(self) -> dict[str, bool]:
        """Every relay that has been touched, with its state."""
        return dict(self._state)

    def set(self, channel: str, on: bool) -> None:
        """Energise or release a relay; cancels a pending pulse release."""
        timer = self._timers.pop(channel, None)
        if timer is not None:
            timer.cancel()
        self._change(channel, on)

    def drive(self, channel: str, on: bool) -> asyncio.Future[None]:
        """Set a relay at once; the returned future is already done."""
        self.set(channel, on)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    def pulse(self, channel: str, seconds: float) -> None:
        """Energise for ``seconds``; a pulse during a pulse restarts the countdown."""
        self.set(channel, True)
        self._timers[channel] = asyncio.get_running_loop().call_later(
            seconds, self._release, channel
        )

    def _release(self, channel: str) -> None:
        self._timers.pop(channel, None)
        self._change(channel, False)

    def _change(self, channel: str, on: bool) -> None:
        if self._state.get(channel, False) == on:  # an unknown relay is off
            self._state[channel] = on
            return
        self._state[channel] = on
        _LOGGER.debug("relay %s %s", channel, "on" if on else "off")
        for listener in list(self._listeners):
            listener(channel, on)

    def add_listener(self, listener: Callable[[str, bool], None]) -> Callable[[], None]:
        """Call ``listener(channel, on)`` on every change; returns a remover."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def close(self) -> None:
        """Cancel pending releases (the process is going away; relays fall back to off)."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()


class SimulatedReaders:
    """Readers that "read" whatever is presented to them through ``present``."""

    def __init__(self) -> None:
        self._handler: Callable[[CredentialRead], None] | None = None
        self.shown: dict[str, Feedback] = {}

    def set_handler(self, handler: Callable[[CredentialRead], None]) -> None:
        """Deliver every read to ``handler``."""
        self._handler = handler

    def present(self, read: CredentialRead) -> None:
        """Simulate a credential held to a reader."""
        if self._handler is None:
            raise RuntimeError("no handler: the readers are not started")
        self._handler(read)

    def feedback(self, reader_id: str, feedback: Feedback) -> None:
        """Remember what the reader shows, as a real one would light up."""
        self.shown[reader_id] = feedback
