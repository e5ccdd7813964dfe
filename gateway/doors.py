"""The door controller: one state machine per door, and the only thing that drives a relay.

It feeds each door's ``DoorStateMachine`` (gateway/door_state.py) with grants, door inputs,
mode changes and timers, and carries out what the machine returns: relay commands (in order, each
confirmed by the hardware or reported as failed), events, reader signals. It picks each door's
mode (a command's override, else the unlock schedule, else normal) and recovers the doors' state
from the hardware's report at start and whenever a board comes (back) online.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from drivers.base import CommandFailed, Feedback, InputEvent, InputRole
from drivers.board_bank import BoardEvent, BoardFaultEvent, BoardStatus
from gateway.cache import Cache
from gateway.config import DoorEntry
from gateway.door_modes import DoorModeStore
from gateway.door_state import (
    UNLOCK_S_RANGE,
    Action,
    DoorSettings,
    DoorStateMachine,
    DoorStatus,
    Emit,
    FeedbackKind,
    SetRelay,
)
from gateway.door_state import Feedback as ReaderSignal
from gateway.events import EventLog, new_event
from gateway.hardware import Hardware
from gateway.model import Decision, Door, DoorMode, Event, EventType, Reason
from gateway.view import CacheView

_LOGGER = logging.getLogger(__name__)

#: How often unlock schedules are re-read; a window edge is late by at most this (seconds).
SCHEDULE_TICK_S = 10.0
#: After a failed relay command, the door is read back and corrected after this long, doubling
#: for each further failure in a row up to the cap (seconds).
RELAY_RETRY_S = 1.0
RELAY_RETRY_CAP_S = 60.0
#: How long a mode change or a stop waits for the hardware to confirm its relay moves (seconds).
RELAY_CONFIRM_TIMEOUT_S = 2.0

_SIGNALS = {FeedbackKind.HELD_OPEN_WARNING: Feedback.HELD_OPEN, FeedbackKind.CLEAR: Feedback.IDLE}


def desired_mode(
    view: CacheView,
    door_id: str,
    override: DoorMode | None,
    now: datetime,
    first_grant: date | None = None,
) -> DoorMode:
    """A door's mode: a command's override, else UNLOCKED while its unlock schedule is open.

    A door that unlocks only after the first person (``unlock_after_first_grant``) needs a grant
    on the site-local day of ``now`` (``first_grant``) before its schedule holds it unlocked.
    """
    if override is not None:
        return override
    door = view.doors.get(door_id)
    if door is None or not _schedule_open(view, door, now):
        return DoorMode.NORMAL
    if door.unlock_after_first_grant and first_grant != now.astimezone(view.tz).date():
        return DoorMode.NORMAL
    return DoorMode.UNLOCKED


def _schedule_open(view: CacheView, door: Door, now: datetime) -> bool:
    schedule = view.compiled.get(door.unlock_schedule_id or "")
    return schedule is not None and schedule.is_open(now, now.astimezone(view.tz))


def door_settings(entry: DoorEntry, door: Door) -> DoorSettings:
    """The state machine's settings: the installer's wiring, the site's unlock time."""
    low, high = UNLOCK_S_RANGE
    return DoorSettings(
        unlock_s=min(max(door.unlock_seconds, low), high),
        relock_on_close=entry.relock_on_close,
        held_open_s=entry.held_open_s,
        rex_unlocks=entry.rex_unlocks,
        rex_grace_s=entry.rex_grace_s,
        wiring=entry.wiring,  # type: ignore[arg-type]  # the same strings, checked by both
        contact=entry.contact,  # type: ignore[arg-type]
        has_contact=entry.has_contact,
    )


class ControllerState(enum.StrEnum):
    """Lifecycle of the door controller."""

    NEW = "new"
    RUNNING = "running"
    STOPPED = "stopped"


@dataclass(eq=False, slots=True)
class _Door:
    """One door: its machine and its pending deadline."""

    machine: DoorStateMachine
    timer: asyncio.TimerHandle | None = None
    failures: int = 0  # relay commands failed in a row
    epoch: int = 0  # counts relay commands and inputs: a report older than them is stale
    retry: asyncio.TimerHandle | None = None  # a recovery after a failed relay command


class DoorController:
    """Runs every door's state machine and carries out what it decides."""

    def __init__(
        self,
        cache: Cache,
        modes: DoorModeStore,
        hardware: Hardware,
        events: EventLog,
        clock: Callable[[], datetime],
        settings: Mapping[str, DoorEntry] | None = None,
    ) -> None:
        self._cache = cache
        self._store = modes
        self._hardware = hardware
        self._events = events
        self._clock = clock
        self._entries = dict(settings or {})
        self._overrides: dict[str, DoorMode] = {}
        self._doors: dict[str, _Door] = {}
        self._first_grant: dict[str, date] = {}  # site-local day of a door's first grant
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ticker: asyncio.Task[None] | None = None
        self._remove_listeners: list[Callable[[], None]] = []
        self.state = ControllerState.NEW
        # From construction on: boards greeted while the hardware starts are recorded too.
        hardware.set_input_handler(self._on_input)
        hardware.set_board_handler(self._on_board)

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Load persisted modes, recover every door from the hardware, follow schedules."""
        self._overrides = self._store.load()
        self._remove_listeners.append(self._cache.add_listener(self._on_view))
        view = self._cache.view
        self._refresh(view, source="start")
        self.state = ControllerState.RUNNING
        await self.recover(view.doors)
        self._ticker = asyncio.create_task(self._tick(), name="door-schedule-ticker")

    async def stop(self) -> None:
        """Stop following schedules and inputs, leave every door as its fallback says, and wait
        for door events to be recorded.

        A door's fallback (``[doors.ID] fallback``, locked by default) is also what its board
        does by itself when the gateway goes silent, so a stop and a crash end the same way.
        """
        self.state = ControllerState.STOPPED
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.wait([self._ticker])  # does not swallow a cancellation of stop() itself
            self._ticker = None
        for remove in self._remove_listeners:
            remove()
        self._remove_listeners.clear()
        confirms = []
        for door_id, door in self._doors.items():
            if door.timer is not None:
                door.timer.cancel()
            if door.retry is not None:
                door.retry.cancel()
            locked = self._entries.get(door_id, DoorEntry()).fallback == "locked"
            level = door.machine.settings.relay_level(locked)
            if door.machine.relay_energised is level:
                continue
            confirm = self._drive(door_id, level, "stop")
            if confirm is not None:
                confirms.append(confirm)
            event = EventType.DOOR_LOCKED if locked else EventType.DOOR_UNLOCKED
            data = {"door": door_id, "by": "stop", "mode": door.machine.mode.value}
            self._spawn(new_event(event, self._clock(), data))
        await _all_confirmed(confirms)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- what the doors are doing -------------------------------------------------------------

    def mode(self, door_id: str) -> DoorMode:
        """The door's current mode (NORMAL for a door never seen)."""
        door = self._doors.get(door_id)
        return door.machine.mode if door else DoorMode.NORMAL

    def mode_at(self, door_id: str, at: datetime) -> DoorMode:
        """The mode the door would be in at ``at`` (its unlock schedule read at that instant)."""
        view = self._cache.view
        return desired_mode(
            view, door_id, self._overrides.get(door_id), at, self._first_grant.get(door_id)
        )

    def relay_on(self, door_id: str) -> bool:
        """Whether the door's lock relay is energised, as the hardware last confirmed."""
        try:
            return self._hardware.relays.is_on(door_id)
        except LookupError:  # a door of the site that is not wired to this gateway
            return False

    def status(self, door_id: str) -> DoorStatus | None:
        """The door's state machine snapshot (None for a door not on the site)."""
        door = self._doors.get(door_id)
        return door.machine.status() if door else None

    # -- inputs -------------------------------------------------------------------------------

    def grant(self, decision: Decision) -> asyncio.Future[None] | None:
        """Unlock for a granted decision; the future says whether the hardware confirmed it.

        None when no relay had to move (denied, already unlocked, held by its mode).
        """
        door = self._doors.get(decision.door_id)
        if not decision.granted or door is None or self.state is not ControllerState.RUNNING:
            return None
        override = decision.reason is Reason.LOCKDOWN_OVERRIDE
        if decision.reason is Reason.GRANTED:
            self._note_first_grant(decision.door_id, decision.at)
        actions = door.machine.grant(self._now(), override=override)
        return self._carry_out(decision.door_id, actions, "grant")

    async def set_mode(self, door_id: str, mode: DoorMode, *, source: str) -> bool:
        """Persist a command's mode for a door (NORMAL clears it) and apply it now.

        Returns once the hardware confirmed the relay moves it caused: True if all did.
        """
        if mode is DoorMode.UNLOCKED:
            raise ValueError("unlocked is set by the door's unlock schedule, not by command")
        overrides = dict(self._overrides)
        if mode is DoorMode.NORMAL:
            overrides.pop(door_id, None)
        else:
            overrides[door_id] = mode
        await self._store.save(overrides)  # durable before it takes effect or is acknowledged
        self._overrides = overrides
        confirms = self._refresh(self._cache.view, source=source)
        return await _all_confirmed(confirms)

    async def recover(self, door_ids: Iterable[str]) -> None:
        """Ask the hardware what ``door_ids`` are doing and adopt it (doors it cannot reach wait)."""
        epochs = {d: self._doors[d].epoch for d in door_ids if d in self._doors}
        reports = await self._hardware.reports(epochs)
        for door_id, report in reports.items():
            door = self._doors.get(door_id)
            if door is None or self.state is not ControllerState.RUNNING:
                continue
            if door.epoch != epochs[door_id]:
                # A command or an input came after the report was asked for: it knows better.
                _LOGGER.debug("report for door %s is stale; kept what is known", door_id)
                continue
            actions = door.machine.recover(
                self._now(), report.relay_energised, report.contact, report.tamper
            )
            self._carry_out(door_id, actions, "recover")

    # -- carrying out what a machine decided ------------------------------------------------

    def _carry_out(
        self, door_id: str, actions: list[Action], cause: str
    ) -> asyncio.Future[None] | None:
        """Drive relays, record events and signal readers in order; re-arm the door's timer."""
        confirm = None
        for action in actions:
            if isinstance(action, SetRelay):
                confirm = self._drive(door_id, action.energised, cause)
            elif isinstance(action, Emit):
                self._spawn(new_event(action.event_type, self._clock(), action.data))
            elif isinstance(action, ReaderSignal):
                self._signal(door_id, _SIGNALS[action.kind])
        self._arm(door_id)
        return confirm

    def _drive(self, door_id: str, energised: bool, cause: str) -> asyncio.Future[None] | None:
        """Command the relay; a failure becomes a ``door.relay_failed`` event, never a success."""
        door = self._doors.get(door_id)
        if door is not None:
            door.epoch += 1
        try:
            confirm = self._hardware.relays.drive(door_id, energised)
        except LookupError as err:  # not wired to this gateway: said once per command, loudly
            _LOGGER.warning("door %s has no relay here: %s", door_id, err)
            self._relay_failed(door_id, energised, cause, str(err))
            return None
        confirm.add_done_callback(lambda f: self._confirmed(f, door_id, energised, cause))
        return confirm

    def _confirmed(
        self, future: asyncio.Future[None], door_id: str, energised: bool, cause: str
    ) -> None:
        if future.cancelled():
            self._relay_failed(door_id, energised, cause, "cancelled")
        elif (error := future.exception()) is not None:
            self._relay_failed(door_id, energised, cause, str(error))
        elif (door := self._doors.get(door_id)) is not None:
            door.failures = 0

    def _relay_failed(self, door_id: str, energised: bool, cause: str, reason: str) -> None:
        """Record the failure (the first of a run), then ask the hardware again later."""
        door = self._doors.get(door_id)
        failures = door.failures + 1 if door is not None else 1
        level = logging.WARNING if failures == 1 else logging.DEBUG
        _LOGGER.log(level, "door %s relay %s (%s) failed: %s", door_id, energised, cause, reason)
        if failures == 1:
            data = {"door": door_id, "energised": energised, "by": cause, "reason": reason}
            self._spawn(new_event(EventType.DOOR_RELAY_FAILED, self._clock(), data))
        if door is None or self.state is not ControllerState.RUNNING:
            return
        door.failures = failures
        if door.retry is None:
            # The machine believes the command was carried out; what the relay really does is
            # read back and corrected by a recovery, sooner after a first failure than later ones.
            delay = min(RELAY_RETRY_CAP_S, RELAY_RETRY_S * 2 ** (failures - 1))
            door.retry = asyncio.get_running_loop().call_later(delay, self._retry, door_id)

    def _retry(self, door_id: str) -> None:
        door = self._doors.get(door_id)
        if door is None or self.state is not ControllerState.RUNNING:
            return
        door.retry = None
        self._track(asyncio.create_task(self.recover([door_id]), name=f"recover-{door_id}"))

    def _signal(self, door_id: str, feedback: Feedback) -> None:
        try:
            self._hardware.readers.feedback(door_id, feedback)
        except (LookupError, CommandFailed) as err:
            _LOGGER.debug("door %s reader cannot show %s: %s", door_id, feedback, err)

    def _arm(self, door_id: str) -> None:
        """Schedule the door's next deadline on the loop's clock (the machines' time base)."""
        door = self._doors.get(door_id)
        if door is None:
            return
        if door.timer is not None:
            door.timer.cancel()
            door.timer = None
        deadline = door.machine.next_deadline()
        if deadline is not None and self.state is not ControllerState.STOPPED:
            loop = asyncio.get_running_loop()
            door.timer = loop.call_at(deadline, self._deadline, door_id)

    def _deadline(self, door_id: str) -> None:
        door = self._doors.get(door_id)
        if door is not None:
            door.timer = None
            self._carry_out(door_id, door.machine.tick(self._now()), "timeout")

    # -- hardware callbacks -------------------------------------------------------------------

    def _on_input(self, event: InputEvent) -> None:
        door = self._doors.get(event.channel)
        if door is None or self.state is not ControllerState.RUNNING:
            _LOGGER.debug("input %s of %s ignored", event.kind, event.channel)
            return
        machine = door.machine
        if machine.locked is None:
            # Not recovered yet: the pending state report says where this door is, and an
            # input judged before it could call an old opening forced.
            _LOGGER.debug("input %s of %s before its recovery: ignored", event.kind, event.channel)
            return
        door.epoch += 1
        now = self._now()
        if event.kind is InputRole.CONTACT:
            actions = machine.contact(now, event.level)
        elif event.kind is InputRole.REX:
            actions = machine.rex(now, bool(event.level))
        elif event.kind is InputRole.TAMPER:
            actions = machine.tamper(now, bool(event.level))
        else:
            return  # AUX inputs mean nothing to a door yet
        self._carry_out(event.channel, actions, event.kind.value)

    def _on_board(self, event: BoardEvent) -> None:
        at = self._clock()
        if isinstance(event, BoardFaultEvent):
            code = getattr(event.code, "name", str(event.code)).lower()
            data = {"address": event.address, "code": code, "detail": event.detail}
            self._spawn(new_event(EventType.BOARD_FAULT, at, data))
            # Whatever went wrong (events dropped from a full queue, a fallback), the board's
            # report is the truth about its doors now.
            self._recover_board(event.address)
            return
        assert isinstance(event, BoardStatus)
        if not event.online:
            data = {"address": event.address, "reason": event.reason}
            self._spawn(new_event(EventType.BOARD_OFFLINE, at, data))
            return
        info: dict[str, Any] = {"address": event.address}
        if event.info is not None:
            board = event.info
            info["firmware"] = (
                f"{board.firmware_major}.{board.firmware_minor}.{board.firmware_patch}"
            )
            info["serial"] = board.serial_number.hex()
        self._spawn(new_event(EventType.BOARD_ONLINE, at, info))
        # A board that restarted (or was never reached) is asked, not assumed.
        self._recover_board(event.address)

    def _recover_board(self, address: int) -> None:
        if self.state is ControllerState.RUNNING:
            doors = self._hardware.board_doors(address)
            self._track(asyncio.create_task(self.recover(doors), name=f"recover-board-{address}"))

    # -- modes --------------------------------------------------------------------------------

    def _note_first_grant(self, door_id: str, at: datetime) -> None:
        view = self._cache.view
        door = view.doors.get(door_id)
        if door is None or not door.unlock_after_first_grant or not _schedule_open(view, door, at):
            return
        day = at.astimezone(view.tz).date()
        if self._first_grant.get(door_id) != day:
            self._first_grant[door_id] = day
            self._refresh(view, source="first_grant")

    def _refresh(self, view: CacheView, *, source: str = "schedule") -> list[asyncio.Future[None]]:
        """Bring every door to its mode; the confirmations of the relay moves it made."""
        now = self._clock()
        confirms: list[asyncio.Future[None]] = []
        new = [d for d in view.doors if d not in self._doors]
        for door_id in [d for d in self._doors if d not in view.doors]:
            # A door gone from the site must not stay held open: lock it.
            gone = self._doors.pop(door_id)
            for handle in (gone.timer, gone.retry):
                if handle is not None:
                    handle.cancel()
            self._drive(door_id, gone.machine.settings.relay_level(True), "removed")
            _LOGGER.info("door %s removed from the site; locked", door_id)
        for door_id, door in view.doors.items():
            try:
                confirm = self._refresh_door(view, door, now, source)
            except Exception:  # one door failing must not leave the others unattended
                _LOGGER.exception("could not update door %s", door_id)
                continue
            if confirm is not None:
                confirms.append(confirm)
        if new and self.state is ControllerState.RUNNING:
            # A door added to the site starts from its relay as last confirmed, so it obeys its
            # mode at once; its board's full report (door contact, tamper) follows.
            for door_id in new:
                confirm = self._adopt_known_relay(door_id)
                if confirm is not None:
                    confirms.append(confirm)
            self._track(asyncio.create_task(self.recover(new), name="recover-new-doors"))
        return confirms

    def _adopt_known_relay(self, door_id: str) -> asyncio.Future[None] | None:
        door = self._doors.get(door_id)
        if door is None:
            return None
        actions = door.machine.recover(self._now(), self.relay_on(door_id), None, False)
        return self._carry_out(door_id, actions, "recover")

    def _refresh_door(
        self, view: CacheView, door: Door, now: datetime, source: str
    ) -> asyncio.Future[None] | None:
        mode = desired_mode(
            view, door.id, self._overrides.get(door.id), now, self._first_grant.get(door.id)
        )
        settings = door_settings(self._entries.get(door.id, DoorEntry()), door)
        state = self._doors.get(door.id)
        confirm = None
        if state is None:
            self._doors[door.id] = state = _Door(DoorStateMachine(door.id, settings, mode=mode))
            old = None
        else:
            state.machine.settings = settings  # a new unlock time from the site data
            old = state.machine.mode
            if mode is old:
                return None
            confirm = self._carry_out(door.id, state.machine.set_mode(self._now(), mode), "mode")
        if old is None and mode is DoorMode.NORMAL:
            return None  # a door starting in its usual state is not news
        _LOGGER.info("door %s mode %s -> %s (%s)", door.id, old, mode, source)
        data = {
            "door": door.id,
            "mode": mode.value,
            "previous": old.value if old else None,
            "source": source,
        }
        self._spawn(new_event(EventType.DOOR_MODE_CHANGED, now, data))
        return confirm

    def _on_view(self, view: CacheView) -> None:
        self._refresh(view, source="cache")

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(SCHEDULE_TICK_S)
            try:
                self._refresh(self._cache.view)
            except Exception:  # keep following schedules whatever one pass ran into
                _LOGGER.exception("door schedule pass failed")

    # -- events -------------------------------------------------------------------------------

    def _now(self) -> float:
        """The machines' time base: the loop's monotonic clock, in seconds."""
        return asyncio.get_running_loop().time()

    def _spawn(self, event: Event) -> None:
        self._track(asyncio.create_task(self._record(event), name=f"door-event-{event.type}"))

    def _track(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _record(self, event: Event) -> None:
        try:
            await self._events.record(event)
        except Exception:  # the outbox logs its own failure; a door event must not kill the loop
            _LOGGER.exception("could not record %s", event)


async def _all_confirmed(confirms: list[asyncio.Future[None]]) -> bool:
    """Wait (bounded) for relay confirmations; True if every one succeeded in time."""
    if not confirms:
        return True
    done, pending = await asyncio.wait(confirms, timeout=RELAY_CONFIRM_TIMEOUT_S)
    return not pending and all(not f.cancelled() and f.exception() is None for f in done)
