"""A shared RS-485 bus for virtual boards: several boards on one pty master, like one wire.

Every board hears every byte the gateway sends (each ignores frames not addressed to it, as on a
real multi-drop bus) and any board may write to the gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable


class BusHub:
    """A shared RS-485 bus on one pty master: every board hears every frame, all may write."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._ends: list[BusEnd] = []
        os.set_blocking(fd, False)
        asyncio.get_running_loop().add_reader(fd, self._readable)

    def endpoint(self) -> BusEnd:
        """A new place on the bus for one board (a ByteStream)."""
        return BusEnd(self)

    def _readable(self) -> None:
        try:
            data = os.read(self._fd, 4096)
        except OSError:
            return
        for end in list(self._ends):
            end.deliver(data)

    def write(self, data: bytes) -> None:
        """Put bytes on the wire (lost, like on a wire, if the pty refuses them)."""
        with contextlib.suppress(OSError):
            os.write(self._fd, data)

    def join(self, end: BusEnd) -> None:
        """``end`` hears the gateway from now on."""
        self._ends.append(end)

    def leave(self, end: BusEnd) -> None:
        """``end`` hears nothing more."""
        with contextlib.suppress(ValueError):
            self._ends.remove(end)

    def close(self) -> None:
        """Stop listening to the pty master."""
        asyncio.get_running_loop().remove_reader(self._fd)


class BusEnd:
    """One board's ByteStream on a BusHub."""

    def __init__(self, hub: BusHub) -> None:
        self._hub = hub
        self._on_data: Callable[[bytes], None] | None = None

    def open(
        self, on_data: Callable[[bytes], None], on_lost: Callable[[Exception | None], None]
    ) -> None:
        """Join the bus; ``on_data`` gets what the gateway sends (a bus is never lost)."""
        self._on_data = on_data
        self._hub.join(self)

    def deliver(self, data: bytes) -> None:
        """Bytes from the gateway, for this board."""
        if self._on_data is not None:
            self._on_data(data)

    def write(self, data: bytes) -> None:
        """Bytes from this board, to the gateway."""
        self._hub.write(data)

    def close(self) -> None:
        """Leave the bus."""
        self._on_data = None
        self._hub.leave(self)
