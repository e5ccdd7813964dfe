"""The door controller: owns each door's mode and is the only thing that drives a relay."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Callable
from datetime import datetime

from drivers.base import RelayBank
from gateway.cache import Cache
from gateway.events import EventLog, new_event
from gateway.model import Decision, DoorMode, Event, EventType
from gateway.view import CacheView

_LOGGER = logging.getLogger(__name__)

SCHEDULE_TICK_S = (
    10.0  # how often unlock schedules are re-read; a window edge is late by at most this
)


def desired_mode(
    view: CacheView, door_id: str, override: DoorMode | None, now: datetime
) -> DoorMode:
    """A door's mode: a command's override, else UNLOCKED while its unlock schedule is open."""
    if override is not None:
        return override
    door = view.doors.get(door_id)
    schedule = view.compiled.get(door.unlock_schedule_id or "") if door else None
    if schedule is not None and schedule.is_open(now, now.astimezone(view.tz)):
        return DoorMode.UNLOCKED
    return DoorMode.NORMAL


class ControllerState(enum.StrEnum):
    """Lifecycle of the door controller."""

    NEW = "new"
    RUNNING = "running"
    STOPPED = "stopped"


class DoorController:
    """Decides each door's mode (command override, unlock schedule, normal) and drives relays."""

    def __init__(
        self, cache: Cache, relays: RelayBank, events: EventLog, clock: Callable[[], datetime]
    ) -> None:
        self._cache = cache
        self._relays = relays
        self._events = events
        self._clock = clock
        self._overrides: dict[str, DoorMode] = {}
        self._modes: dict[str, DoorMode] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._ticker: asyncio.Task[None] | None = None
        self._remove_listeners: list[Callable[[], None]] = []
        self.state = ControllerState.NEW

    async def start(self) -> None:
        """Load persisted modes, apply them to the relays, and follow unlock schedules."""
        self._overrides = await self._cache.door_modes()
        self._remove_listeners.append(self._relays.add_listener(self._on_relay))
        self._remove_listeners.append(self._cache.add_listener(self._on_view))
        self._refresh(self._cache.view)
        self._ticker = asyncio.create_task(self._tick(), name="door-schedule-ticker")
        self.state = ControllerState.RUNNING

    async def stop(self) -> None:
        """Stop following schedules and wait for pending door events to be recorded."""
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        for remove in self._remove_listeners:
            remove()
        self._remove_listeners.clear()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self.state = ControllerState.STOPPED

    def mode(self, door_id: str) -> DoorMode:
        """The door's current mode (NORMAL for a door never seen)."""
        return self._modes.get(door_id, DoorMode.NORMAL)

    def mode_at(self, door_id: str, at: datetime) -> DoorMode:
        """The mode the door would be in at ``at`` (its unlock schedule read at that instant)."""
        return desired_mode(self._cache.view, door_id, self._overrides.get(door_id), at)

    def relay_on(self, door_id: str) -> bool:
        """Whether the door's lock relay is energised (the door is unlocked)."""
        return self._relays.is_on(door_id)

    def grant(self, decision: Decision) -> None:
        """Open the door for a granted decision; does nothing for a denied one."""
        if not decision.granted:
            return
        door = self._cache.view.doors.get(decision.door_id)
        if door is None or self.mode(door.id) is not DoorMode.NORMAL:
            return  # already held open (unlocked, emergency) or unknown: nothing to pulse
        self._relays.pulse(door.id, door.unlock_seconds)

    async def set_mode(self, door_id: str, mode: DoorMode, *, source: str) -> None:
        """Persist a command's mode for a door (NORMAL clears it) and apply it now."""
        if mode is DoorMode.UNLOCKED:
            raise ValueError("unlocked is set by the door's unlock schedule, not by command")
        await self._cache.set_door_mode(door_id, mode)
        if mode is DoorMode.NORMAL:
            self._overrides.pop(door_id, None)
        else:
            self._overrides[door_id] = mode
        self._refresh(self._cache.view, source=source)

    def _refresh(self, view: CacheView, *, source: str = "schedule") -> None:
        now = self._clock()
        for door_id in [d for d in self._modes if d not in view.doors]:
            # A door gone from the site must not stay held open: release it (fail secure).
            gone = self._modes.pop(door_id)
            self._relays.set(door_id, False)
            _LOGGER.info("door %s removed from the site; lock released from %s", door_id, gone)
        for door_id in view.doors:
            mode = desired_mode(view, door_id, self._overrides.get(door_id), now)
            old = self._modes.get(door_id)
            if mode is old:
                continue
            self._modes[door_id] = mode
            # Held open in UNLOCKED and EMERGENCY_OPEN; released (fail secure) otherwise.
            self._relays.set(door_id, mode in (DoorMode.UNLOCKED, DoorMode.EMERGENCY_OPEN))
            if old is not None or mode is not DoorMode.NORMAL:
                _LOGGER.info("door %s mode %s -> %s (%s)", door_id, old, mode, source)
                self._spawn(
                    new_event(
                        EventType.DOOR_MODE_CHANGED,
                        now,
                        {
                            "door": door_id,
                            "mode": mode.value,
                            "previous": old.value if old else None,
                            "source": source,
                        },
                    )
                )

    def _on_view(self, view: CacheView) -> None:
        self._refresh(view, source="cache")

    def _on_relay(self, channel: str, on: bool) -> None:
        event_type = EventType.DOOR_UNLOCKED if on else EventType.DOOR_LOCKED
        self._spawn(new_event(event_type, self._clock(), {"door": channel}))

    def _spawn(self, event: Event) -> None:
        task = asyncio.create_task(self._record(event), name=f"door-event-{event.type}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _record(self, event: Event) -> None:
        try:
            await self._events.record(event)
        except Exception:  # the outbox logs its own failure; a door event must not kill the loop
            _LOGGER.exception("could not record %s", event)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(SCHEDULE_TICK_S)
            self._refresh(self._cache.view)
