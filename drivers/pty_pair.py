"""A pseudo-terminal pair: a virtual board on the master side, a serial port path on the slave side.

The board reads and writes the master fd; the gateway opens ``slave_path`` like any serial port
(``BoardLink(pair.slave_path)``). Both ends are put in raw mode so no byte is translated, echoed
or swallowed by the line discipline. The pair keeps its own slave fd open, so the master never
sees a hang-up while the gateway closes and reopens the path.
"""

from __future__ import annotations

import contextlib
import os
import tty
from types import TracebackType
from typing import Self


class PtyPair:
    """One ``os.openpty()`` pair in raw mode; ``close()`` is idempotent."""

    def __init__(self) -> None:
        master_fd, slave_fd = os.openpty()
        try:
            tty.setraw(slave_fd)
            tty.setraw(master_fd)
            self.slave_path = os.ttyname(slave_fd)
        except BaseException:
            os.close(master_fd)
            os.close(slave_fd)
            raise
        self.master_fd = master_fd
        self.slave_fd = slave_fd
        self._closed = False

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        """True once both fds are closed."""
        return self._closed

    def close(self) -> None:
        """Close both fds (the gateway's port then fails with an I/O error)."""
        if self._closed:
            return
        self._closed = True
        for fd in (self.master_fd, self.slave_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
