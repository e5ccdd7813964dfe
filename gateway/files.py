"""Small state files written atomically and durably (written, synced, renamed, dir synced)."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path


class UnsafeFile(Exception):
    """A file that must not be read as it is; the message names the path and the problem."""


def read_regular_file(path: Path, max_bytes: int) -> bytes | None:
    """The bytes of regular file ``path``, None if missing; UnsafeFile if a link, not a regular
    file, over ``max_bytes`` or unreadable (a secret is never read through a link or a pipe)."""
    try:
        # O_NONBLOCK: a named pipe is refused below rather than waited on.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise UnsafeFile(f"{path} is a symbolic link: refusing to read through it") from None
        raise UnsafeFile(f"cannot read {path}: {err.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnsafeFile(f"{path} is not a regular file")
        data = os.read(fd, max_bytes + 1)
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise UnsafeFile(f"{path} is over {max_bytes} bytes")
    return data


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` (mode 0600): after a crash it holds the old or the new."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    tmp.replace(path)
    sync_directory(path.parent)  # the rename is durable only once the entry is on disk too


def create_secret(path: Path, data: bytes) -> None:
    """Create ``path`` holding ``data``, 0600 from its first byte, whole or not at all.

    Written to a temporary file, then hard-linked into place: a crash leaves no empty secret
    behind, and a file another process made meanwhile is kept, never replaced.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)  # left by a crash: O_EXCL below must make a new one, 0600
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    sync_directory(path.parent)


def sync_directory(directory: Path) -> None:
    """fsync ``directory`` so a rename inside it survives a power cut."""
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
