"""Door modes set by command (lockdown, emergency open), durable in their own small file.

Kept apart from the cache so that a corrupt cache being reset never lifts a lockdown, and
written atomically with an fsync so that an acknowledged command survives a power cut.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path

from gateway.model import DoorMode

_LOGGER = logging.getLogger(__name__)
FORMAT = 1


class DoorModeStore:
    """Reads and writes ``door_modes.json``; NORMAL doors are simply absent."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self, *, repair: bool = True) -> dict[str, DoorMode]:
        """The saved modes; a missing file is none, an unreadable one reported (and, with
        ``repair``, moved aside so the next save starts clean)."""
        try:
            document = json.loads(self.path.read_text(encoding="utf-8"))
            if document.get("format") != FORMAT:
                raise ValueError(f"format {document.get('format')!r}, expected {FORMAT}")
            return {str(door): DoorMode(mode) for door, mode in document["modes"].items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            if not repair:
                _LOGGER.error("door modes file %s is unreadable (%s)", self.path, err)
                return {}
            aside = self.path.with_name(
                f"{self.path.name}.unreadable-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
            )
            # Losing a lockdown silently would be worse than refusing to start, but refusing to
            # start opens nothing either: start with no overrides and say so loudly.
            _LOGGER.error(
                "door modes file %s is unreadable (%s); moved to %s", self.path, err, aside
            )
            self.path.replace(aside)
            return {}

    async def save(self, modes: dict[str, DoorMode]) -> None:
        """Replace the file with ``modes`` (NORMAL ones left out), durably."""
        document = {
            "format": FORMAT,
            "modes": {
                door: mode.value
                for door, mode in sorted(modes.items())
                if mode is not DoorMode.NORMAL
            },
        }
        await asyncio.to_thread(self._write, json.dumps(document, indent=2) + "\n")

    def _write(self, text: str) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, text.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.replace(self.path)
        # The rename is durable only once the directory entry is on disk too.
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
