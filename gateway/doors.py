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
import itertools
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
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
from gateway.first_in import FirstPersonIn, unlock_schedule_open
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

_SIGNALS = {
    FeedbackKind.HELD_OPEN_WARNING: Feedback.HELD_OPEN,
    FeedbackKind.FORCED_OPEN_ALARM: Feedback.DOOR_ALARM,
    FeedbackKind.CLEAR: Feedback.IDLE,
}
_LOCK_EVENTS = (EventType.DOOR_LOCKED, EventType.DOOR_UNLOCKED)


def desired_mode(
    view: CacheView,
    door_id: str,
    override: DoorMode | None,
    now: datetime,
    arrived: bool = False,
) -> DoorMode:
    """A door's mode: a command's override, else UNLOCKED while its unlock schedule is open.

    A first-person-in door (``unlock_after_first_grant``) needs someone let in during the current
    open period (``arrived``) before its schedule holds it unlocked.
    """
    if override is not None:
        return override
    door = view.doors.get(door_id)
    if door is None or not unlock_schedule_open(view, door, now):
        return DoorMode.NORMAL
    if door.unlock_after_first_grant and not arrived:
        return DoorMode.NORMAL
    return DoorMode.UNLOCKED


def door_settings(entry: DoorEntry, door: Door) -> DoorSettings:
    """The state machine's settings: the installer's wiring; the installer's unlock time if set,
    else the site's."""
    low, high = UNLOCK_S_RANGE
    unlock_s = entry.unlock_s or door.unlock_seconds
    return DoorSettings(
        unlock_s=min(max(unlock_s, low), high),
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
    """One door: its machine, its pending deadline, and what became of its relay commands.

    The machine takes a relay command as carried out when it is sent; ``pending`` and
    ``failed`` say whether the hardware has confirmed it, so a grant is never shown as
    successful on a lock that did not move.
    """

    machine: DoorStateMachine
    timer: asyncio.TimerHandle | None = None
    pending: asyncio.Future[None] | None = None  # the last relay command's confirmation
    failed: bool = False  # the last relay command failed: the lock's state is not known
    failures: int = 0  # relay commands failed in a row
    retry: asyncio.TimerHandle | None = None  # a read-back after a failed relay command
    # Counted to tell whether a state report is older than what the controller did or saw.
    relay_epoch: int = 0
    input_epoch: int = 0


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
        self._first_in = FirstPersonIn()
        self._doors: dict[str, _Door] = {}
        self._unwired: set[str] = set()  # site doors another gateway drives (said once)
        self._recoveries: dict[int, asyncio.Task[None]] = {}  # one per board at a time
        self._recover_again: set[int] = set()
        self._removals: set[asyncio.Task[None]] = set()  # removed doors being locked
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
        view = self._cache.view
        self._first_in = FirstPersonIn(self._store.load_first_grants())
        self._first_in.keep_if_still_open(view, self._clock())
        self._remove_listeners.append(self._cache.add_listener(self._on_view))
        for door_id in self._entries:
            if door_id not in view.doors:
                _LOGGER.warning("[doors.%s] is configured but the site has no such door", door_id)
        self._refresh(view, source="start")
        self.state = ControllerState.RUNNING
        await self.recover(self._doors)
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
            for handle in (door.timer, door.retry):
                if handle is not None:
                    handle.cancel()
            locked = self._entries.get(door_id, DoorEntry()).fallback == "locked"
            level = door.machine.settings.relay_level(locked)
            if door.machine.relay_energised is level and not door.failed:
                continue
            event = EventType.DOOR_LOCKED if locked else EventType.DOOR_UNLOCKED
            data = {"door": door_id, "by": "stop", "mode": door.machine.mode.value}
            confirm = self._drive(
                door_id, level, "stop", then=new_event(event, self._clock(), data)
            )
            if confirm is not None:
                confirms.append(confirm)
        for task in self._removals:
            task.cancel()  # the stop itself leaves every relay it knows locked or as configured
        await _all_confirmed(confirms)
        await asyncio.sleep(0)  # confirmation callbacks record their events
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- what the doors are doing -------------------------------------------------------------

    def mode(self, door_id: str) -> DoorMode:
        """The door's current mode (for a door not driven here: what it would be now)."""
        door = self._doors.get(door_id)
        return door.machine.mode if door else self.mode_at(door_id, self._clock())

    def mode_at(self, door_id: str, at: datetime) -> DoorMode:
        """The mode the door would be in at ``at`` (its unlock schedule read at that instant)."""
        view = self._cache.view
        arrived = self._first_in.arrived(door_id)
        return desired_mode(view, door_id, self._overrides.get(door_id), at, arrived)

    def relay_on(self, door_id: str) -> bool:
        """Whether the door's lock relay is energised, as the hardware last confirmed."""
        try:
            return self._hardware.relays.is_on(door_id)
        except LookupError:  # a door of the site that is not wired to this gateway
            return False

    def unlocked(self, door_id: str) -> bool | None:
        """Whether the door's lock is released, as the hardware confirmed (None: not known)."""
        door = self._doors.get(door_id)
        if door is None or door.machine.locked is None or door.failed:
            return None
        if door.pending is not None and not door.pending.done():
            return None  # a command on its way: the relay is about to change
        return not door.machine.settings.is_locked(self.relay_on(door_id))

    def status(self, door_id: str) -> DoorStatus | None:
        """The door's state machine snapshot (None for a door not driven here)."""
        door = self._doors.get(door_id)
        return door.machine.status() if door else None

    def resting_signal(self, door_id: str) -> Feedback:
        """What the door's reader shows between decisions: DOOR_ALARM while it is forced open,
        else HELD_OPEN while held open too long, else IDLE (also for a door not driven here)."""
        door = self._doors.get(door_id)
        return _SIGNALS[door.machine.reader_signal] if door else Feedback.IDLE

    def show_resting_signal(self, door_id: str) -> None:
        """Show the door's resting signal on its reader again (after a decision's signal)."""
        if door_id in self._doors and self.state is ControllerState.RUNNING:
            self._signal(door_id, self.resting_signal(door_id))

    # -- inputs -------------------------------------------------------------------------------

    def grant(self, decision: Decision) -> asyncio.Future[None] | None:
        """Unlock for a granted decision; the future says whether the hardware confirmed it.

        None when the lock is already confirmed unlocked (held by its mode) or for a denial.
        """
        door = self._doors.get(decision.door_id)
        if not decision.granted or door is None or self.state is not ControllerState.RUNNING:
            return None
        if decision.reason is Reason.GRANTED and self._first_in.note(
            self._cache.view, decision.door_id, decision.at
        ):
            self._refresh(self._cache.view, source="first_grant")
            self._save_memory()
        confirm = None
        # Emergency open lets everyone through a door held open: no unlock time of its own,
        # which would otherwise outlast the emergency ("let the last person through").
        if decision.reason is not Reason.EMERGENCY_OPEN:
            override = decision.reason is Reason.LOCKDOWN_OVERRIDE
            actions = door.machine.grant(self._now(), override=override)
            confirm = self._carry_out(decision.door_id, actions, "grant")
        if confirm is None:
            confirm = self._lock_confirmation(decision.door_id, door)
        return confirm

    async def unlock(self, door_id: str, seconds: float | None, *, source: str) -> bool:
        """A remote unlock: the door unlocks for ``seconds`` (its own unlock time if None), as
        for a grant but never in lockdown. True once the hardware confirmed it (or it already was).
        """
        door = self._doors.get(door_id)
        if door is None or self.state is not ControllerState.RUNNING:
            return False
        if door.machine.mode is DoorMode.LOCKDOWN:
            return False
        actions = door.machine.grant(self._now(), seconds=seconds, by="command")
        confirm = self._carry_out(door_id, actions, "command")
        if confirm is None:
            confirm = self._lock_confirmation(door_id, door)
        _LOGGER.info("door %s unlocked by %s", door_id, source)
        return await _all_confirmed([confirm] if confirm is not None else [])

    async def set_mode(self, door_id: str, mode: DoorMode, *, source: str) -> bool:
        """Persist a command's mode for a door (NORMAL clears it) and apply it now; UNLOCKED
        holds it unlocked whatever its schedule (a remote "held" unlock).

        Returns once the hardware confirmed the relay moves it caused: True if all did.
        """
        overrides = dict(self._overrides)
        if mode is DoorMode.NORMAL:
            overrides.pop(door_id, None)
        else:
            overrides[door_id] = mode
        # Durable before it takes effect or is acknowledged.
        await self._store.save(overrides, self._first_in.grants())
        self._overrides = overrides
        confirms = self._refresh(self._cache.view, source=source)
        return await _all_confirmed(confirms)

    def refresh(self) -> None:
        """Re-read unlock schedules now (they are also re-read every ``SCHEDULE_TICK_S``)."""
        self._refresh(self._cache.view)

    async def recover(self, door_ids: Iterable[str]) -> None:
        """Ask the hardware what ``door_ids`` are doing and adopt it (doors it cannot reach wait).

        What the controller did or saw after asking wins over the report: a relay command sent
        (or still unconfirmed) meanwhile makes the report's relay level stale, an input handled
        meanwhile its door contact and tamper.
        """
        asked = {d: self._doors[d] for d in door_ids if d in self._doors}
        marks = {
            d: (door.relay_epoch, door.input_epoch, _unconfirmed(door)) for d, door in asked.items()
        }
        reports = await self._hardware.reports(asked)
        for door_id, door in asked.items():
            report = reports.get(door_id)
            if self._doors.get(door_id) is not door or self.state is not ControllerState.RUNNING:
                continue
            if report is None:
                if door.failed:
                    self._arm_retry(door_id, door)  # not reachable now: ask again later
                continue
            relay_epoch, input_epoch, was_unconfirmed = marks[door_id]
            relay_stale = was_unconfirmed or door.relay_epoch != relay_epoch
            inputs_stale = door.input_epoch != input_epoch
            machine = door.machine
            energised = report.relay_energised
            if relay_stale and machine.relay_energised is not None:
                energised = machine.relay_energised
            actions = machine.recover(
                self._now(),
                energised,
                None if inputs_stale else report.contact,
                machine.tamper_active if inputs_stale else report.tamper,
            )
            moved = self._carry_out(door_id, actions, "recover")
            if relay_stale:
                if door.failed:
                    self._arm_retry(door_id, door)
            elif moved is None:  # found as it should be: whatever failed before is over
                door.failed = False
                door.failures = 0

    # -- carrying out what a machine decided ------------------------------------------------

    def _carry_out(
        self, door_id: str, actions: list[Action], cause: str
    ) -> asyncio.Future[None] | None:
        """Drive relays, record events and signal readers in order; re-arm the door's timer.

        The lock event that follows a relay command is recorded once the hardware confirmed
        the command; if it fails, ``door.relay_failed`` is recorded instead.
        """
        confirm = None
        actions = list(actions)
        while actions:
            action = actions.pop(0)
            if isinstance(action, SetRelay):
                then = None
                follower = actions[0] if actions else None
                if (
                    isinstance(follower, Emit)
                    and follower.event_type in _LOCK_EVENTS
                    and not follower.data.get("found")
                ):
                    actions.pop(0)
                    then = new_event(follower.event_type, self._clock(), follower.data)
                confirm = self._drive(door_id, action.energised, cause, then=then)
            elif isinstance(action, Emit):
                self._spawn(new_event(action.event_type, self._clock(), action.data))
            elif isinstance(action, ReaderSignal):
                self._signal(door_id, _SIGNALS[action.kind])
        self._arm(door_id)
        return confirm

    def _drive(
        self, door_id: str, energised: bool, cause: str, *, then: Event | None = None
    ) -> asyncio.Future[None] | None:
        """Command the relay; ``then`` is recorded once confirmed, a failure is reported."""
        door = self._doors.get(door_id)
        try:
            confirm = self._hardware.relays.drive(door_id, energised)
        except LookupError as err:  # not wired to this gateway after all
            self._relay_failed(door_id, door, energised, cause, str(err))
            return None
        if door is not None:
            door.relay_epoch += 1
            door.pending = confirm
        confirm.add_done_callback(
            lambda f: self._confirmed(f, door_id, door, energised, cause, then)
        )
        return confirm

    def _confirmed(
        self,
        future: asyncio.Future[None],
        door_id: str,
        door: _Door | None,
        energised: bool,
        cause: str,
        then: Event | None,
    ) -> None:
        error = "cancelled" if future.cancelled() else future.exception()
        latest = door is not None and door.pending is future
        if error is None:
            if then is not None:
                self._spawn(then)
            if door is not None and latest:
                door.failed = False
                door.failures = 0
            return
        if door is not None and latest:
            door.failed = True
        self._relay_failed(door_id, door, energised, cause, str(error))

    def _relay_failed(
        self, door_id: str, door: _Door | None, energised: bool, cause: str, reason: str
    ) -> None:
        """Record the failure (the first of a run), then read the door back later."""
        failures = door.failures + 1 if door is not None else 1
        level = logging.WARNING if failures == 1 else logging.DEBUG
        _LOGGER.log(level, "door %s relay %s (%s) failed: %s", door_id, energised, cause, reason)
        if failures == 1:
            data = {"door": door_id, "energised": energised, "by": cause, "reason": reason}
            self._spawn(new_event(EventType.DOOR_RELAY_FAILED, self._clock(), data))
        if door is None or self._doors.get(door_id) is not door:
            return
        door.failures = failures
        self._arm_retry(door_id, door)

    def _arm_retry(self, door_id: str, door: _Door) -> None:
        """Read the door back and correct it later: sooner after a first failure than later ones."""
        if door.retry is not None or self.state is not ControllerState.RUNNING:
            return
        delay = min(RELAY_RETRY_CAP_S, RELAY_RETRY_S * 2 ** max(door.failures - 1, 0))
        door.retry = asyncio.get_running_loop().call_later(delay, self._retry, door_id, door)

    def _retry(self, door_id: str, door: _Door) -> None:
        door.retry = None
        if self._doors.get(door_id) is door and self.state is ControllerState.RUNNING:
            self._track(asyncio.create_task(self.recover([door_id]), name=f"recover-{door_id}"))

    def _lock_confirmation(self, door_id: str, door: _Door) -> asyncio.Future[None] | None:
        """For a grant that moved no relay: whether the lock really is where the machine says."""
        if door.failed and door.machine.relay_energised is not None:
            return self._drive(door_id, door.machine.relay_energised, "grant")
        if _unconfirmed(door):
            return door.pending
        return None

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
        now = self._now()
        if event.kind is InputRole.CONTACT:
            actions = machine.contact(now, event.level)
        elif event.kind is InputRole.REX:
            actions = machine.rex(now, bool(event.level))
        elif event.kind is InputRole.TAMPER:
            actions = machine.tamper(now, bool(event.level))
        else:
            return  # AUX inputs mean nothing to a door yet
        door.input_epoch += 1
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
        """Recover the board's doors: one recovery per board at a time, one more queued."""
        if self.state is not ControllerState.RUNNING:
            return
        if address in self._recoveries:
            self._recover_again.add(address)
            return
        task = asyncio.create_task(self._recover_board_doors(address), name=f"recover-{address}")
        self._recoveries[address] = task
        self._track(task)

    async def _recover_board_doors(self, address: int) -> None:
        try:
            while True:
                self._recover_again.discard(address)
                await self.recover(self._hardware.board_doors(address))
                if address not in self._recover_again or self.state is not ControllerState.RUNNING:
                    return
        finally:
            self._recoveries.pop(address, None)

    # -- modes --------------------------------------------------------------------------------

    def _refresh(self, view: CacheView, *, source: str = "schedule") -> list[asyncio.Future[None]]:
        """Bring every door to its mode; the confirmations of the relay moves it made."""
        now = self._clock()
        if self._first_in.close_periods(view, now):
            self._save_memory()
        confirms: list[asyncio.Future[None]] = []
        for door_id in [d for d in self._doors if d not in view.doors]:
            self._remove(door_id)
        new = []
        for door_id, door in view.doors.items():
            if door_id not in self._doors:
                if not self._hardware.wired(door_id):
                    if door_id not in self._unwired:
                        self._unwired.add(door_id)
                        _LOGGER.info("door %s is not wired to this gateway", door_id)
                    continue
                new.append(door_id)
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
                try:
                    confirm = self._adopt_known_relay(door_id)
                except Exception:
                    _LOGGER.exception("could not start door %s", door_id)
                    continue
                if confirm is not None:
                    confirms.append(confirm)
            self._track(asyncio.create_task(self.recover(new), name="recover-new-doors"))
        return confirms

    def _remove(self, door_id: str) -> None:
        """A door gone from the site must not stay held open: lock it until the lock obeys."""
        gone = self._doors.pop(door_id)
        for handle in (gone.timer, gone.retry):
            if handle is not None:
                handle.cancel()
        level = gone.machine.settings.relay_level(True)
        self._track(
            asyncio.create_task(self._lock_removed(door_id, level), name=f"remove-{door_id}")
        )
        if self._overrides.pop(door_id, None) is not None:
            self._save_memory()  # a door added again later starts without an old lockdown
        _LOGGER.info("door %s removed from the site; locking it", door_id)

    async def _lock_removed(self, door_id: str, level: bool) -> None:
        """Lock a removed door, trying again (backing off) until its relay obeys."""
        for attempt in itertools.count():
            try:
                await asyncio.wait_for(
                    self._hardware.relays.drive(door_id, level), RELAY_CONFIRM_TIMEOUT_S
                )
            except (CommandFailed, LookupError, TimeoutError) as err:
                if attempt == 0:
                    self._relay_failed(door_id, None, level, "removed", str(err))
                await asyncio.sleep(min(RELAY_RETRY_CAP_S, RELAY_RETRY_S * 2**attempt))
                continue
            data = {"door": door_id, "by": "removed", "mode": DoorMode.NORMAL.value}
            self._spawn(new_event(EventType.DOOR_LOCKED, self._clock(), data))
            return

    def _adopt_known_relay(self, door_id: str) -> asyncio.Future[None] | None:
        door = self._doors.get(door_id)
        if door is None:
            return None
        actions = door.machine.recover(self._now(), self.relay_on(door_id), None, False)
        return self._carry_out(door_id, actions, "recover")

    def _refresh_door(
        self, view: CacheView, door: Door, now: datetime, source: str
    ) -> asyncio.Future[None] | None:
        arrived = self._first_in.arrived(door.id)
        mode = desired_mode(view, door.id, self._overrides.get(door.id), now, arrived)
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

    def _save_memory(self) -> None:
        """Save modes and first grants in the background (nothing waits on a first grant)."""
        save = self._store.save(dict(self._overrides), self._first_in.grants())
        self._track(asyncio.create_task(save, name="save-door-memory"))

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


def _unconfirmed(door: _Door) -> bool:
    """Whether the door's last relay command is still on its way."""
    return door.pending is not None and not door.pending.done()


async def _all_confirmed(confirms: list[asyncio.Future[None]]) -> bool:
    """Wait (bounded) for relay confirmations; True if every one succeeded in time."""
    if not confirms:
        return True
    done, pending = await asyncio.wait(confirms, timeout=RELAY_CONFIRM_TIMEOUT_S)
    return not pending and all(not f.cancelled() and f.exception() is None for f in done)
