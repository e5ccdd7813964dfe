"""First person in: a door's unlock schedule holds it unlocked only once someone was let in.

For a door with ``unlock_after_first_grant``, the first granted presentation while its unlock
schedule is open starts the hold for the rest of that open period; the period ends when the
schedule is next seen closed. The times of those first grants are saved with the door modes, so
a restart in the middle of the day keeps the door as people expect; at start each is kept only
if the schedule has stayed open since (checked minute by minute: windows are whole minutes).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta

from gateway.model import Door
from gateway.view import CacheView

#: How finely a saved first grant is checked against the schedule at start.
CHECK_STEP = timedelta(minutes=1)
#: A first grant older than this is not carried over a restart (no open period is that long).
LONGEST_PERIOD = timedelta(days=7)


def unlock_schedule_open(view: CacheView, door: Door, at: datetime) -> bool:
    """Whether the door's unlock schedule is open at ``at`` (False without one)."""
    schedule = view.compiled.get(door.unlock_schedule_id or "")
    return schedule is not None and schedule.is_open(at, at.astimezone(view.tz))


class FirstPersonIn:
    """The first grant of the current open period of each first-person-in door."""

    def __init__(self, grants: Mapping[str, datetime] | None = None) -> None:
        self._at: dict[str, datetime] = dict(grants or {})

    def arrived(self, door_id: str) -> bool:
        """Whether someone was let in at ``door_id`` in its current open period."""
        return door_id in self._at

    def grants(self) -> dict[str, datetime]:
        """A copy, for saving."""
        return dict(self._at)

    def note(self, view: CacheView, door_id: str, at: datetime) -> bool:
        """A grant at ``at``; True if it is the first of the door's open period."""
        door = view.doors.get(door_id)
        if (
            door is None
            or not door.unlock_after_first_grant
            or door_id in self._at
            or not unlock_schedule_open(view, door, at)
        ):
            return False
        self._at[door_id] = at
        return True

    def close_periods(self, view: CacheView, now: datetime) -> bool:
        """Forget the doors whose open period is over (or that no longer wait); True if any."""
        ended = [
            door_id
            for door_id in self._at
            if (door := view.doors.get(door_id)) is None
            or not door.unlock_after_first_grant
            or not unlock_schedule_open(view, door, now)
        ]
        for door_id in ended:
            del self._at[door_id]
        return bool(ended)

    def keep_if_still_open(self, view: CacheView, now: datetime) -> None:
        """At start: keep a saved first grant only if the schedule stayed open since then."""
        for door_id, at in list(self._at.items()):
            door = view.doors.get(door_id)
            if door is None or not (now - LONGEST_PERIOD <= at <= now):
                del self._at[door_id]
                continue
            moment = at
            while moment < now and unlock_schedule_open(view, door, moment):
                moment += CHECK_STEP
            if moment < now or not unlock_schedule_open(view, door, now):
                del self._at[door_id]
