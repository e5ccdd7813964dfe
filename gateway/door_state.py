"""One door's lock, position and alarms as a pure state machine (no I/O, clock or logging).

The caller feeds inputs stamped with a monotonic time in seconds and executes the actions each
input returns, in order: ``SetRelay`` (the electrical level for the door's lock relay),
``Emit`` (an event to record) and ``Feedback`` (a reader signal). It arms one timer per door at
``next_deadline()`` and calls ``tick()`` when it fires; every input also runs whatever deadline
has already passed, so a late tick never loses a relock or an alarm.

Representation: four independent parts rather than one product of states.

- ``mode`` is the door's mode (``DoorMode``), set by the controller.
- ``phase`` (``DoorPhase``) is the lock's intended state, derived from the mode and the timed
  unlock: HELD_UNLOCKED in the UNLOCKED and EMERGENCY_OPEN modes, UNLOCKED while a grant's (or a
  REX press's) unlock time runs in NORMAL mode (or a lockdown override grant's, in LOCKDOWN),
  LOCKED otherwise.
  After every input the relay is driven to match the phase; ``locked`` is the level last
  commanded or found by ``recover()`` (None until then).
- ``door_open`` is the door's position from its contact (None: unknown, or no contact).
- three alarm flags, each raised and cleared once: ``forced_open_alarm``, ``held_open_alarm``
  and ``tamper_active``.

The reader's resting signal (``reader_signal``) is derived from the alarms alone: forced open
beats held open beats none (CLEAR). It is what the reader returns to after anything else it
shows; a ``Feedback`` action is returned whenever it changes, and only then.

Decisions where the rules leave room (docs/door-states.md tells site managers the same):

- A grant made while the door is held unlocked, or an unlock time running when EMERGENCY_OPEN
  begins, is remembered: back in NORMAL before it ends, the door stays unlocked until it ends
  ("let the last person through"). LOCKDOWN cancels a running unlock time at once, and a grant
  in LOCKDOWN does nothing unless it is an override (the site's lockdown override tag).
- An opening within a grant's unlock time is not forced: the person let in may still be
  passing. After the door closed behind them (relock on close) only ``CLOSE_GRACE_S`` of that
  remains, and a lockdown ends it at once. A REX press excuses an opening while
  pressed and for ``rex_grace_s`` after press or release, in every mode (egress hardware lets
  people out even in lockdown).
- Held-open alarms are raised in NORMAL and LOCKDOWN only, for any opening (authorised or
  forced). A door propped open while held unlocked is normal: entering UNLOCKED or
  EMERGENCY_OPEN clears a held-open alarm, and leaving them with the door open starts the
  held-open time from the mode change.
- With ``relock_on_close``, closing the door ends a running unlock time once the door has opened
  since that unlock (the grant is used), in every mode; in NORMAL the door relocks at once.
- A contact report is a change: a door reported open by ``contact()`` while its position was
  unknown is judged like any opening (it may be forced).
- ``recover()`` adopts what the board reports before changing anything: a lock level differing
  from the last one known is emitted (at the first recovery, only a lock found unlocked: a door
  starting locked is not news, nor one found closed) (``"by": "recover", "found": true``), then the relay is
  driven to the phase. A door found open is reported as opened (``"by": "recover"``) but never
  as forced (when it opened is unknown); its held-open time starts at the recovery.
- The machine obeys the mode it is given; which mode wins (a command's override over a
  schedule) is the controller's choice. Mode changes are recorded by the controller.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, TypeVar

from gateway.model import DoorMode, EventType

__all__ = [
    "HELD_OPEN_S_RANGE",
    "REX_GRACE_S_RANGE",
    "UNLOCK_S_RANGE",
    "Action",
    "ContactType",
    "DoorPhase",
    "DoorSettings",
    "DoorStateMachine",
    "DoorStatus",
    "Emit",
    "Feedback",
    "FeedbackKind",
    "SetRelay",
    "Wiring",
]


class DoorPhase(enum.StrEnum):
    """The lock's intended state."""

    LOCKED = "locked"
    UNLOCKED = "unlocked"  # timed, after a grant or a REX press
    HELD_UNLOCKED = "held_unlocked"  # by mode: UNLOCKED (schedule) or EMERGENCY_OPEN


class Wiring(enum.StrEnum):
    """What an energised relay does to the lock."""

    FAIL_SECURE = "fail_secure"  # energised: unlocked; de-energised: locked (strikes)
    FAIL_SAFE = "fail_safe"  # energised: locked; de-energised: unlocked (maglocks)


class ContactType(enum.StrEnum):
    """How a door contact's raw level maps to open or closed."""

    NORMALLY_CLOSED = "normally_closed"  # circuit closed while the door is: level 1 means open
    NORMALLY_OPEN = "normally_open"  # circuit open while the door is closed: level 0 means open


class FeedbackKind(enum.StrEnum):
    """A resting signal for the door's reader, from its active alarms."""

    HELD_OPEN_WARNING = "held_open_warning"
    FORCED_OPEN_ALARM = "forced_open_alarm"
    CLEAR = "clear"


#: After a relock on close, how long a reopening is still not "forced" (a latch that has not
#: caught yet, the person still passing), in seconds.
CLOSE_GRACE_S = 3.0

UNLOCK_S_RANGE = (0.5, 3600.0)
HELD_OPEN_S_RANGE = (30.0, 600.0)
REX_GRACE_S_RANGE = (0.0, 120.0)

_RANGES = {
    "unlock_s": UNLOCK_S_RANGE,
    "held_open_s": HELD_OPEN_S_RANGE,
    "rex_grace_s": REX_GRACE_S_RANGE,
}
_FLAGS = ("relock_on_close", "rex_unlocks", "has_contact")
_HELD_MODES = (DoorMode.UNLOCKED, DoorMode.EMERGENCY_OPEN)
_TIMED_MODES = (DoorMode.NORMAL, DoorMode.LOCKDOWN)  # where a timed unlock can run

_E = TypeVar("_E", bound=enum.StrEnum)


def _member(kind: type[_E], name: str, value: object) -> _E:
    if isinstance(value, str):  # a member is a str too; config files give plain strings
        try:
            return kind(value)
        except ValueError:
            pass
    allowed = ", ".join(m.value for m in kind)
    raise ValueError(f"door setting {name}={value!r} is not one of: {allowed}")


@dataclass(frozen=True, slots=True)
class DoorSettings:
    """How one door is wired and timed; every field is checked against its allowed range."""

    unlock_s: float = 5.0
    relock_on_close: bool = True
    held_open_s: float = 120.0
    rex_unlocks: bool = True
    rex_grace_s: float = 10.0
    wiring: Wiring = Wiring.FAIL_SECURE
    contact: ContactType = ContactType.NORMALLY_CLOSED
    has_contact: bool = True

    def __post_init__(self) -> None:
        for name, (low, high) in _RANGES.items():
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not low <= value <= high  # also rejects NaN
            ):
                raise ValueError(
                    f"door setting {name}={value!r} is outside the allowed range {low:g}..{high:g} s"
                )
            object.__setattr__(self, name, float(value))
        for name in _FLAGS:
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValueError(f"door setting {name}={value!r} must be true or false")
        object.__setattr__(self, "wiring", _member(Wiring, "wiring", self.wiring))
        object.__setattr__(self, "contact", _member(ContactType, "contact", self.contact))

    def relay_level(self, locked: bool) -> bool:
        """The relay level (True: energised) that puts the lock in the given state."""
        return locked if self.wiring is Wiring.FAIL_SAFE else not locked

    def is_locked(self, energised: bool) -> bool:
        """Whether a relay at the given level leaves the lock locked."""
        return energised if self.wiring is Wiring.FAIL_SAFE else not energised

    def is_open(self, level: int) -> bool:
        """Whether a raw contact level (any non-zero level counts as 1) means the door is open."""
        high = level != 0
        return high if self.contact is ContactType.NORMALLY_CLOSED else not high


@dataclass(frozen=True, slots=True)
class SetRelay:
    """Drive the door's lock relay to this electrical level."""

    energised: bool


@dataclass(frozen=True, slots=True)
class Emit:
    """Record an event; ``data`` is JSON-ready and always carries ``"door"``."""

    event_type: EventType
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Feedback:
    """The reader's resting signal changed to ``kind`` (see ``DoorStateMachine.reader_signal``)."""

    kind: FeedbackKind


Action = SetRelay | Emit | Feedback


@dataclass(frozen=True, slots=True)
class DoorStatus:
    """A snapshot of one door's state, for status pages and tests."""

    door_id: str
    mode: DoorMode
    phase: DoorPhase
    locked: bool | None
    relay_energised: bool | None
    door_open: bool | None
    forced_open_alarm: bool
    held_open_alarm: bool
    tamper_active: bool
    unlock_until: float | None


def _seconds(value: float) -> float:
    return round(value, 3)


class DoorStateMachine:
    """One door: inputs stamped with a monotonic time in, actions out."""

    def __init__(
        self,
        door_id: str,
        settings: DoorSettings | None = None,
        *,
        mode: DoorMode = DoorMode.NORMAL,
    ) -> None:
        self.door_id = door_id
        self.settings = settings or DoorSettings()
        self._mode = mode
        self._locked: bool | None = None  # last commanded or found; None before recover()
        self._open: bool | None = None  # None: unknown, or no contact
        self._opened_at: float | None = None
        self._unlock_until: float | None = None  # end of a running timed unlock
        self._opened_since_unlock = False
        self._authorised_until: float | None = None  # openings until then are not forced
        self._authorised_by = "grant"
        self._rex_pressed = False
        self._rex_grace_until: float | None = None
        self._held_at: float | None = None  # when a held-open alarm is due
        self._held_alarm = False
        self._forced_alarm = False
        self._tamper = False
        self._signalled = FeedbackKind.CLEAR  # the reader signal last returned

    # -- what the door is doing ---------------------------------------------------------------

    @property
    def mode(self) -> DoorMode:
        """The mode last set."""
        return self._mode

    @property
    def phase(self) -> DoorPhase:
        """The lock's intended state, derived from the mode and the timed unlock."""
        if self._mode in _HELD_MODES:
            return DoorPhase.HELD_UNLOCKED
        if self._mode in _TIMED_MODES and self._unlock_until is not None:
            return DoorPhase.UNLOCKED
        return DoorPhase.LOCKED

    @property
    def locked(self) -> bool | None:
        """Whether the lock is locked as last commanded or found (None: not known yet)."""
        return self._locked

    @property
    def relay_energised(self) -> bool | None:
        """The relay level last commanded or found (None: not known yet)."""
        return None if self._locked is None else self.settings.relay_level(self._locked)

    @property
    def door_open(self) -> bool | None:
        """The door's position (None: unknown, or the door has no contact)."""
        return self._open

    @property
    def forced_open_alarm(self) -> bool:
        """Whether a forced-open alarm is active."""
        return self._forced_alarm

    @property
    def held_open_alarm(self) -> bool:
        """Whether a held-open alarm is active."""
        return self._held_alarm

    @property
    def tamper_active(self) -> bool:
        """Whether the door's tamper input is active."""
        return self._tamper

    @property
    def reader_signal(self) -> FeedbackKind:
        """What the door's reader shows at rest: the forced-open alarm over the held-open
        warning over nothing (CLEAR)."""
        if self._forced_alarm:
            return FeedbackKind.FORCED_OPEN_ALARM
        if self._held_alarm:
            return FeedbackKind.HELD_OPEN_WARNING
        return FeedbackKind.CLEAR

    def status(self) -> DoorStatus:
        """A snapshot of the door's state."""
        return DoorStatus(
            door_id=self.door_id,
            mode=self._mode,
            phase=self.phase,
            locked=self._locked,
            relay_energised=self.relay_energised,
            door_open=self._open,
            forced_open_alarm=self._forced_alarm,
            held_open_alarm=self._held_alarm,
            tamper_active=self._tamper,
            unlock_until=self._unlock_until,
        )

    def next_deadline(self) -> float | None:
        """The earliest time at which ``tick()`` has something to do, or None."""
        due = [self._held_at]
        if self._mode in _TIMED_MODES:
            due.append(self._unlock_until)
        times = [t for t in due if t is not None]
        return min(times) if times else None

    # -- inputs -------------------------------------------------------------------------------

    def tick(self, now: float) -> list[Action]:
        """Run every deadline that has passed: relock after the unlock time, held-open alarm."""
        out: list[Action] = []
        self._expire(now, out)
        return out

    def grant(
        self, now: float, *, override: bool = False, seconds: float | None = None, by: str = "grant"
    ) -> list[Action]:
        """A granted decision: unlock for ``unlock_s`` (or ``seconds``; extend if unlocked); in
        LOCKDOWN only an ``override`` (the lockdown override tag) unlocks. ``by`` names the cause
        in the events (``grant``, or ``command`` for a remote unlock)."""
        out: list[Action] = []
        self._expire(now, out)
        if self._mode is DoorMode.LOCKDOWN and not override:
            return out
        self._start_unlock(now, by, seconds)
        self._sync(out, by)
        return out

    def rex(self, now: float, pressed: bool) -> list[Action]:
        """The request-to-exit input changed; a press is recorded and may unlock the door."""
        out: list[Action] = []
        self._expire(now, out)
        pressed = bool(pressed)
        if pressed is self._rex_pressed:
            return out
        self._rex_pressed = pressed
        self._rex_grace_until = now + self.settings.rex_grace_s
        if not pressed:
            return out
        unlocks = self.settings.rex_unlocks and self._mode is not DoorMode.LOCKDOWN
        self._emit(out, EventType.DOOR_REX, unlocks=unlocks, mode=self._mode.value)
        if unlocks:
            self._start_unlock(now, "rex")
            self._sync(out, "rex")
        return out

    def contact(self, now: float, level: int) -> list[Action]:
        """The door contact changed to a raw ``level``; ignored for a door without a contact."""
        out: list[Action] = []
        self._expire(now, out)
        if not self.settings.has_contact:
            return out
        is_open = self.settings.is_open(level)
        if is_open is self._open:
            return out
        if is_open:
            self._opened(now, out, recovered=False)
        else:
            self._closed(now, out, recovered=False)
            self._sync(out, "close")
        return out

    def tamper(self, now: float, active: bool) -> list[Action]:
        """The tamper input changed."""
        out: list[Action] = []
        self._expire(now, out)
        self._set_tamper(bool(active), out, recovered=False)
        return out

    def set_mode(self, now: float, mode: DoorMode) -> list[Action]:
        """Change the door's mode and drive the lock to match."""
        out: list[Action] = []
        self._expire(now, out)
        old = self._mode
        if mode is old:
            return out
        self._mode = mode
        if mode is DoorMode.LOCKDOWN:
            self._unlock_until = None
            self._authorised_until = None  # from now on any opening but by REX is forced
            self._opened_since_unlock = False
        if mode in _HELD_MODES:
            self._held_at = None
            if self._held_alarm:
                self._clear_held(now, out, by="mode")
                self._signal(out)  # a forced-open alarm still active stays on the reader
        elif old in _HELD_MODES and self._open:
            self._held_at = now + self.settings.held_open_s
        self._sync(out, "mode")
        return out

    def recover(
        self, now: float, relay_energised: bool, contact_level: int | None, tamper: bool
    ) -> list[Action]:
        """Rebuild the state from what the board reports after a restart, then correct it."""
        out: list[Action] = []
        self._expire(now, out)
        found_locked = self.settings.is_locked(bool(relay_energised))
        # At the first recovery only a lock found unlocked is news.
        news = found_locked is not self._locked and not (self._locked is None and found_locked)
        self._locked = found_locked
        if news:
            event = EventType.DOOR_LOCKED if found_locked else EventType.DOOR_UNLOCKED
            self._emit(out, event, by="recover", found=True, mode=self._mode.value)
        if self.settings.has_contact and contact_level is not None:
            is_open = self.settings.is_open(contact_level)
            if self._open is None and not is_open:
                self._open = False  # a door found closed at its first report is not news
            elif is_open is not self._open:
                if is_open:
                    self._opened(now, out, recovered=True)
                else:
                    self._closed(now, out, recovered=True)
        self._sync(out, "recover")
        self._set_tamper(bool(tamper), out, recovered=True)
        return out

    # -- internals ----------------------------------------------------------------------------

    def _emit(self, out: list[Action], event_type: EventType, **data: Any) -> None:
        out.append(Emit(event_type, {"door": self.door_id, **data}))

    def _signal(self, out: list[Action]) -> None:
        """Signal the reader if its resting signal changed (called after the alarms change)."""
        signal = self.reader_signal
        if signal is not self._signalled:
            self._signalled = signal
            out.append(Feedback(signal))

    def _sync(self, out: list[Action], by: str) -> None:
        """Drive the relay to the phase; one SetRelay and one event per change."""
        want_locked = self.phase is DoorPhase.LOCKED
        if want_locked is self._locked:
            return
        self._locked = want_locked
        if want_locked:
            self._opened_since_unlock = False
        out.append(SetRelay(self.settings.relay_level(want_locked)))
        event = EventType.DOOR_LOCKED if want_locked else EventType.DOOR_UNLOCKED
        self._emit(out, event, by=by, mode=self._mode.value)

    def _start_unlock(self, now: float, by: str, seconds: float | None = None) -> None:
        end = now + (self.settings.unlock_s if seconds is None else seconds)
        self._unlock_until = end if self._unlock_until is None else max(self._unlock_until, end)
        if self._authorised_until is None or end >= self._authorised_until:
            self._authorised_until = end
            self._authorised_by = by
        self._opened_since_unlock = False  # a new grant: the next close, not a past one, relocks

    def _expire(self, now: float, out: list[Action]) -> None:
        """Run the deadlines that have passed, earliest first."""
        while True:
            relock = self._unlock_until
            held = self._held_at
            if relock is not None and relock <= now and (held is None or relock <= held):
                self._unlock_until = None
                self._sync(out, "timeout")  # nothing to do when held unlocked by mode
            elif held is not None and held <= now:
                self._held_at = None
                self._held_alarm = True
                held_s = now - self._opened_at if self._opened_at is not None else 0.0
                self._emit(
                    out,
                    EventType.DOOR_HELD_OPEN,
                    held_s=_seconds(held_s),
                    limit_s=self.settings.held_open_s,
                )
                self._signal(out)  # a forced door keeps its door alarm
            else:
                return

    def _authorisation(self, now: float) -> str | None:
        """What allows the door to open now, or None: an opening now is forced."""
        if self._mode in _HELD_MODES:
            return "mode"
        if self._rex_pressed or (
            self._rex_grace_until is not None and now <= self._rex_grace_until
        ):
            return "rex"
        if self._authorised_until is not None and now <= self._authorised_until:
            return self._authorised_by
        return None

    def _opened(self, now: float, out: list[Action], *, recovered: bool) -> None:
        self._open = True
        self._opened_at = now
        if self._unlock_until is not None:
            self._opened_since_unlock = True
        by = "recover" if recovered else self._authorisation(now)
        self._emit(out, EventType.DOOR_OPENED, by=by or "forced", mode=self._mode.value)
        if by is None:
            self._forced_alarm = True
            self._emit(out, EventType.DOOR_FORCED_OPEN, mode=self._mode.value)
            self._signal(out)
        if self._mode not in _HELD_MODES:
            self._held_at = now + self.settings.held_open_s

    def _closed(self, now: float, out: list[Action], *, recovered: bool) -> None:
        self._open = False
        open_s = None if self._opened_at is None else _seconds(now - self._opened_at)
        self._opened_at = None
        self._held_at = None
        data: dict[str, Any] = {} if open_s is None else {"open_s": open_s}
        if recovered:
            data["by"] = "recover"
        self._emit(out, EventType.DOOR_CLOSED, **data)
        if self._forced_alarm:
            self._forced_alarm = False
            self._emit(out, EventType.DOOR_FORCED_OPEN, cleared=True, **data)
        if self._held_alarm:
            self._clear_held(now, out, by="recover" if recovered else "close", held_s=open_s)
        self._signal(out)  # once both are cleared: the reader goes idle in one step
        if self._unlock_until is not None and self._opened_since_unlock:
            # The grant has been used; in NORMAL the lock follows at once (the caller syncs).
            if self.settings.relock_on_close:
                self._unlock_until = None
                # The grant is used: only a short grace (a latch that has not caught) remains,
                # not the rest of a long unlock time in which a reopening would go unnoticed.
                if self._authorised_until is not None:
                    self._authorised_until = min(self._authorised_until, now + CLOSE_GRACE_S)
            self._opened_since_unlock = False

    def _clear_held(
        self, now: float, out: list[Action], *, by: str, held_s: float | None = None
    ) -> None:
        if held_s is None and self._opened_at is not None:
            held_s = _seconds(now - self._opened_at)
        self._held_alarm = False
        data: dict[str, Any] = {"cleared": True, "by": by}
        if held_s is not None:
            data["held_s"] = held_s
        self._emit(out, EventType.DOOR_HELD_OPEN, **data)

    def _set_tamper(self, active: bool, out: list[Action], *, recovered: bool) -> None:
        if active is self._tamper:
            return
        self._tamper = active
        data: dict[str, Any] = {"active": active}
        if not active:
            data["cleared"] = True
        if recovered:
            data["by"] = "recover"
        self._emit(out, EventType.DOOR_TAMPER, **data)
