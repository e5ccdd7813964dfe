"""The door controller: owns each door's mode and is the only thing that drives a relay."""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable
from datetime import datetime

from drivers.base import RelayBank
from gateway.cache import Cache
from gateway.door_modes import DoorModeStore
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
        self,
        cache: Cache,
        modes: DoorModeStore,
        relays: RelayBank,
        events: EventLog,
        clock: Callable[[], datetime],
    ) -> None:
        self._cache = cache
        self._store = modes
        self._relays = relays
        self._events = events
        self._clock = clock
        self._overrides: dict[str, DoorMode] = {}
        self._modes: dict[str, DoorMode] = {}
        # When the last grant's unlock time ends, per door (loop clock): a grant while the door
        # is held open by its schedule must still leave it open that long if the schedule ends.
        self._granted_until: dict[str, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._ticker: asyncio.Task[None] | None = None
        self._remove_listeners: list[Callable[[], None]] = []
        self.state = ControllerState.NEW

    async def start(self) -> None:
        """Load persisted modes, apply them to the relays, and follow unlock schedules."""
        self._overrides = self._store.load()
        self._remove_listeners.append(self._relays.add_listener(self._on_relay))
        self._remove_listeners.append(self._cache.add_listener(self._on_view))
        self._refresh(self._cache.view, source="start")
        self._ticker = asyncio.create_task(self._tick(), name="door-schedule-ticker")
        self.state = ControllerState.RUNNING

    async def stop(self) -> None:
        """Stop following schedules, lock every door, and wait for door events to be recorded.

        Without a gateway the simulated relays fall back to off; what a real door does then is
        the door board's own fail-safe or fail-secure setting.
        """
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.wait([self._ticker])  # does not swallow a cancellation of stop() itself
            self._ticker = None
        for door_id in list(self._modes):
            self._relays.set(door_id, False)
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
        if door is None:
            return
        self._granted_until[door.id] = asyncio.get_running_loop().time() + door.unlock_seconds
        if self.mode(door.id) is DoorMode.NORMAL:
            self._relays.pulse(door.id, door.unlock_seconds)
        # Held open (unlocked, emergency): already open; _refresh honours the grant if that ends.

    async def set_mode(self, door_id: str, mode: DoorMode, *, source: str) -> None:
        """Persist a command's mode for a door (NORMAL clears it) and apply it now."""
        if mode is DoorMode.UNLOCKED:
            raise ValueError("unlocked is set by the door's unlock schedule, not by command")
        overrides = dict(self._overrides)
        if mode is DoorMode.NORMAL:
            overrides.pop(door_id, None)
        else:
            overrides[door_id] = mode
        await self._store.save(overrides)  # durable before it takes effect or is acknowledged
        self._overrides = overrides
        self._refresh(self._cache.view, source=source)

    def _refresh(self, view: CacheView, *, source: str = "schedule") -> None:
        now = self._clock()
        for door_id in [d for d in self._modes if d not in view.doors]:
            # A door gone from the site must not stay held open: release it (fail secure).
            gone = self._modes.pop(door_id)
            self._relays.set(door_id, False)
            _LOGGER.info("door %s removed from the site; lock released from %s", door_id, gone)
        for door_id in view.doors:
            try:
                self._refresh_door(view, door_id, now, source)
            except Exception:  # one door's relay failing must not leave the others unattended
                _LOGGER.exception("could not update door %s", door_id)

    def _refresh_door(self, view: CacheView, door_id: str, now: datetime, source: str) -> None:
        mode = desired_mode(view, door_id, self._overrides.get(door_id), now)
        old = self._modes.get(door_id)
        if mode is old:
            return
        if mode in (DoorMode.UNLOCKED, DoorMode.EMERGENCY_OPEN):
            self._relays.set(door_id, True)
        else:
            remaining = self._granted_until.get(door_id, 0.0) - asyncio.get_running_loop().time()
            if mode is DoorMode.NORMAL and remaining > 0 and old is not None:
                self._relays.pulse(door_id, remaining)  # let the last person through
            else:
                self._relays.set(door_id, False)
        # Only once the relay has obeyed: a failed command is tried again on the next pass.
        self._modes[door_id] = mode
        if old is None and mode is DoorMode.NORMAL:
            return  # a door starting in its usual state is not news
        _LOGGER.info("door %s mode %s -> %s (%s)", door_id, old, mode, source)
        data = {
            "door": door_id,
            "mode": mode.value,
            "previous": old.value if old else None,
            "source": source,
        }
        self._spawn(new_event(EventType.DOOR_MODE_CHANGED, now, data))

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
            try:
                self._refresh(self._cache.view)
            except Exception:  # keep following schedules whatever one pass ran into
                _LOGGER.exception("door schedule pass failed")
