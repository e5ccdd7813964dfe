"""The systemd notify protocol: readiness, status, stopping, and the watchdog fed from the loop.

Under ``Type=notify`` systemd passes ``NOTIFY_SOCKET`` (a unix datagram socket, possibly in the
abstract namespace when it starts with ``@``) and, with ``WatchdogSec=``, ``WATCHDOG_USEC``.
Anywhere else both are absent and every call here does nothing, so the daemon runs the same in
a terminal. The watchdog is fed by a task on the event loop: a loop that hangs stops feeding it,
and systemd restarts the service. (sd_notify(3), sd_watchdog_enabled(3))
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Mapping

_LOGGER = logging.getLogger(__name__)


class Notifier:
    """Sends notifications to systemd, if it is listening; never raises for a lost socket."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._address = _address(env.get("NOTIFY_SOCKET", ""))
        self.watchdog_s = _watchdog_s(env, os.getpid())
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        """True under systemd with ``Type=notify``."""
        return self._address is not None

    def send(self, **fields: str) -> bool:
        """Send ``KEY=value`` lines (``ready="1"`` → ``READY=1``); True if delivered."""
        if self._address is None:
            return False
        message = "\n".join(f"{key.upper()}={value}" for key, value in fields.items()).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message, self._address)
        except OSError as err:
            _LOGGER.warning("cannot notify systemd (%s)", err)
            return False
        return True

    def ready(self, status: str) -> None:
        """The daemon is up; start feeding the watchdog if systemd asked for one."""
        self.send(ready="1", status=status)
        if self.watchdog_s is not None and self._task is None:
            self._task = asyncio.create_task(self._feed(self.watchdog_s), name="sd-watchdog")

    def stopping(self) -> None:
        """The daemon is stopping (systemd then waits up to TimeoutStopSec)."""
        self.send(stopping="1", status="stopping")

    async def close(self) -> None:
        """Stop feeding the watchdog."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _feed(self, interval_s: float) -> None:
        # Half the timeout, as sd_watchdog_enabled(3) advises: one late tick is not a restart.
        while True:
            self.send(watchdog="1")
            await asyncio.sleep(interval_s / 2)


def _address(text: str) -> str | bytes | None:
    if not text or text[0] not in "/@":
        return None  # unset, or a form this daemon does not speak (vsock)
    return b"\0" + text[1:].encode() if text[0] == "@" else text


def _watchdog_s(env: Mapping[str, str], pid: int) -> float | None:
    """The watchdog timeout systemd set for this process, in seconds, or None."""
    text = env.get("WATCHDOG_USEC", "")
    owner = env.get("WATCHDOG_PID", "")
    if not text.isdecimal() or int(text) == 0:
        return None
    if owner and (not owner.isdecimal() or int(owner) != pid):
        return None  # meant for another process (a parent that exec'd us keeps it otherwise)
    return int(text) / 1_000_000
