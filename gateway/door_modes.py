"""Door modes set by command (lockdown, emergency open), durable in their own small file.

Kept apart from the cache so that a corrupt cache being reset never lifts a lockdown, and
written atomically with an fsync so that an acknowledged command survives a power cut. The same
file remembers, for first-person-in doors, when the first person of the current open period
was let in (``first_grants``), so a restart does not relock a door people are already using.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from gateway.files import write_atomically
from gateway.model import DoorMode

_LOGGER = logging.getLogger(__name__)
FORMAT = 1


class DoorModeStore:
    """Reads and writes ``door_modes.json``; NORMAL doors are simply absent."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writing = asyncio.Lock()  # one writer at a time: they share the temporary file

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

    def load_first_grants(self) -> dict[str, datetime]:
        """When each first-person-in door's current open period got its first grant (none if
        the file is missing or unreadable: those doors then wait for the next person)."""
        try:
            document = json.loads(self.path.read_text(encoding="utf-8"))
            grants = document.get("first_grants", {})
            loaded = {str(door): datetime.fromisoformat(at) for door, at in grants.items()}
        except (OSError, ValueError, TypeError, AttributeError):
            return {}
        return {door: at for door, at in loaded.items() if at.tzinfo is not None}

    async def save(
        self, modes: Mapping[str, DoorMode], first_grants: Mapping[str, datetime] | None = None
    ) -> None:
        """Replace the file with ``modes`` (NORMAL ones left out) and ``first_grants``, durably."""
        document: dict[str, object] = {
            "format": FORMAT,
            "modes": {
                door: mode.value
                for door, mode in sorted(modes.items())
                if mode is not DoorMode.NORMAL
            },
        }
        if first_grants:
            document["first_grants"] = {
                door: at.isoformat() for door, at in sorted(first_grants.items())
            }
        async with self._writing:
            text = json.dumps(document, indent=2) + "\n"
            await asyncio.to_thread(write_atomically, self.path, text)
