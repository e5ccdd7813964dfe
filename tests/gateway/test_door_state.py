"""The per-door state machine: every transition, alarm and recovery, and properties over inputs."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.door_state import (
    CLOSE_GRACE_S,
    Action,
    ContactType,
    DoorPhase,
    DoorSettings,
    DoorStateMachine,
    Emit,
    Feedback,
    FeedbackKind,
    SetRelay,
    Wiring,
)
from gateway.model import DoorMode, EventType

DOOR = "front"
OPEN = 1  # raw level of a normally-closed contact with the door open
CLOSED = 0

UNLOCKED_EV = EventType.DOOR_UNLOCKED
LOCKED_EV = EventType.DOOR_LOCKED
OPENED_EV = EventType.DOOR_OPENED
CLOSED_EV = EventType.DOOR_CLOSED
FORCED_EV = EventType.DOOR_FORCED_OPEN
HELD_EV = EventType.DOOR_HELD_OPEN
TAMPER_EV = EventType.DOOR_TAMPER
REX_EV = EventType.DOOR_REX


def events(actions: list[Action]) -> list[tuple[EventType, dict[str, Any]]]:
    """The events among the actions, in order."""
    return [(a.event_type, a.data) for a in actions if isinstance(a, Emit)]


def types(actions: list[Action]) -> list[EventType]:
    """The event types among the actions, in order."""
    return [a.event_type for a in actions if isinstance(a, Emit)]


def relays(actions: list[Action]) -> list[bool]:
    """The relay levels commanded, in order."""
    return [a.energised for a in actions if isinstance(a, SetRelay)]


def feedback(actions: list[Action]) -> list[FeedbackKind]:
    """The reader signals, in order."""
    return [a.kind for a in actions if isinstance(a, Feedback)]


def door(**kwargs: Any) -> DoorStateMachine:
    """A door in NORMAL mode, recovered at t=0 as locked, closed and untampered."""
    machine = DoorStateMachine(DOOR, DoorSettings(**kwargs))
    relay_locked = machine.settings.relay_level(True)
    closed_level = 0 if machine.settings.contact is ContactType.NORMALLY_CLOSED else 1
    machine.recover(0.0, relay_energised=relay_locked, contact_level=closed_level, tamper=False)
    return machine


# -- settings -------------------------------------------------------------------------------------


def test_settings_defaults() -> None:
    s = DoorSettings()
    assert (s.unlock_s, s.held_open_s, s.rex_grace_s) == (5.0, 120.0, 10.0)
    assert s.relock_on_close
    assert s.rex_unlocks
    assert s.has_contact
    assert s.wiring is Wiring.FAIL_SECURE
    assert s.contact is ContactType.NORMALLY_CLOSED


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("unlock_s", 0.4, "0.5..3600"),
        ("unlock_s", 3601, "0.5..3600"),
        ("unlock_s", math.nan, "0.5..3600"),
        ("held_open_s", 29, "30..600"),
        ("held_open_s", 601, "30..600"),
        ("rex_grace_s", -1, "0..120"),
        ("rex_grace_s", 121, "0..120"),
        ("unlock_s", True, "0.5..3600"),
        ("unlock_s", "5", "0.5..3600"),
    ],
)
def test_settings_out_of_range_name_field_value_and_range(
    field: str, value: object, allowed: str
) -> None:
    with pytest.raises(ValueError, match=field) as caught:
        DoorSettings(**{field: cast(Any, value)})
    assert repr(value) in str(caught.value)
    assert allowed in str(caught.value)


def test_settings_range_edges_are_allowed() -> None:
    DoorSettings(unlock_s=0.5, held_open_s=30, rex_grace_s=0)
    s = DoorSettings(unlock_s=3600, held_open_s=600, rex_grace_s=120)
    assert isinstance(s.held_open_s, float)


@pytest.mark.parametrize("field", ["relock_on_close", "rex_unlocks", "has_contact"])
def test_settings_flags_must_be_booleans(field: str) -> None:
    with pytest.raises(ValueError, match=f"{field}=1 must be true or false"):
        DoorSettings(**{field: cast(Any, 1)})


def test_settings_wiring_and_contact_accept_their_names_and_reject_others() -> None:
    s = DoorSettings(wiring="fail_safe", contact="normally_open")  # type: ignore[arg-type]
    assert s.wiring is Wiring.FAIL_SAFE
    assert s.contact is ContactType.NORMALLY_OPEN
    with pytest.raises(ValueError, match="wiring='maglock' is not one of: fail_secure, fail_safe"):
        DoorSettings(wiring="maglock")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="contact=1 is not one of"):
        DoorSettings(contact=1)  # type: ignore[arg-type]


# -- grant, relock by time, relock on close, extend ----------------------------------------------


def test_grant_unlocks_then_relocks_by_time() -> None:
    d = door()
    assert d.status().phase is DoorPhase.LOCKED
    assert d.next_deadline() is None
    out = d.grant(10.0)
    assert out == [
        SetRelay(True),
        Emit(UNLOCKED_EV, {"door": DOOR, "by": "grant", "mode": "normal"}),
    ]
    assert d.status().phase is DoorPhase.UNLOCKED
    assert d.status().locked is False
    assert d.next_deadline() == 15.0
    assert d.tick(14.9) == []
    out = d.tick(15.0)
    assert out == [
        SetRelay(False),
        Emit(LOCKED_EV, {"door": DOOR, "by": "timeout", "mode": "normal"}),
    ]
    assert d.status().phase is DoorPhase.LOCKED
    assert d.next_deadline() is None
    assert d.tick(20.0) == []


def test_grant_while_unlocked_extends_without_a_second_event() -> None:
    d = door()
    d.grant(10.0)
    assert d.grant(13.0) == []
    assert d.next_deadline() == 18.0
    assert d.tick(15.0) == []
    assert types(d.tick(18.0)) == [LOCKED_EV]


def test_an_earlier_grant_never_shortens_the_unlock() -> None:
    d = door(unlock_s=30)
    d.grant(10.0)
    d.set_mode(11.0, DoorMode.EMERGENCY_OPEN)
    d.set_mode(12.0, DoorMode.NORMAL)
    assert d.next_deadline() == 40.0


def test_relock_on_close_after_the_door_opened() -> None:
    d = door()
    d.grant(10.0)
    out = d.contact(11.0, OPEN)
    assert events(out) == [(OPENED_EV, {"door": DOOR, "by": "grant", "mode": "normal"})]
    out = d.contact(12.5, CLOSED)
    assert out == [
        Emit(CLOSED_EV, {"door": DOOR, "open_s": 1.5}),
        SetRelay(False),
        Emit(LOCKED_EV, {"door": DOOR, "by": "close", "mode": "normal"}),
    ]
    assert d.status().phase is DoorPhase.LOCKED
    assert d.next_deadline() is None
    assert d.tick(15.0) == []


def test_without_relock_on_close_the_door_stays_unlocked_until_the_time_ends() -> None:
    d = door(relock_on_close=False)
    d.grant(10.0)
    d.contact(11.0, OPEN)
    assert types(d.contact(12.0, CLOSED)) == [CLOSED_EV]
    assert d.status().phase is DoorPhase.UNLOCKED
    assert types(d.tick(15.0)) == [LOCKED_EV]


def test_a_close_does_not_relock_unless_the_door_opened_since_the_unlock() -> None:
    d = door()
    d.contact(5.0, OPEN)  # forced, then left open
    d.grant(10.0)  # someone is let in through the open door
    assert types(d.contact(11.0, CLOSED)) == [CLOSED_EV, FORCED_EV]
    assert d.status().phase is DoorPhase.UNLOCKED  # their unlock time still runs
    d.contact(12.0, OPEN)
    assert types(d.contact(13.0, CLOSED)) == [CLOSED_EV, LOCKED_EV]


def test_a_new_grant_while_open_waits_for_the_next_close() -> None:
    d = door()
    d.grant(10.0)
    d.contact(11.0, OPEN)
    d.grant(12.0)  # the next person, while the door is still open
    assert types(d.contact(13.0, CLOSED)) == [CLOSED_EV]
    assert d.status().phase is DoorPhase.UNLOCKED


# -- REX ------------------------------------------------------------------------------------------


def test_rex_unlocks_like_a_grant() -> None:
    d = door()
    out = d.rex(10.0, pressed=True)
    assert out == [
        Emit(REX_EV, {"door": DOOR, "unlocks": True, "mode": "normal"}),
        SetRelay(True),
        Emit(UNLOCKED_EV, {"door": DOOR, "by": "rex", "mode": "normal"}),
    ]
    assert d.rex(10.5, pressed=False) == []
    assert d.rex(10.6, pressed=False) == []
    assert events(d.contact(11.0, OPEN)) == [
        (OPENED_EV, {"door": DOOR, "by": "rex", "mode": "normal"})
    ]
    assert types(d.contact(12.0, CLOSED)) == [CLOSED_EV, LOCKED_EV]


def test_rex_without_rex_unlocks_only_suppresses_the_forced_alarm() -> None:
    d = door(rex_unlocks=False, rex_grace_s=10)
    out = d.rex(10.0, pressed=True)
    assert out == [Emit(REX_EV, {"door": DOOR, "unlocks": False, "mode": "normal"})]
    assert d.status().phase is DoorPhase.LOCKED
    d.rex(10.5, pressed=False)
    assert types(d.contact(20.5, OPEN)) == [OPENED_EV]  # within 10 s of the release
    d.contact(21.0, CLOSED)
    assert types(d.contact(31.0, OPEN)) == [OPENED_EV, FORCED_EV]


def test_rex_held_down_excuses_an_opening_past_the_grace() -> None:
    d = door(rex_unlocks=False, rex_grace_s=0)
    d.rex(10.0, pressed=True)
    assert types(d.contact(100.0, OPEN)) == [OPENED_EV]


# -- forced open ----------------------------------------------------------------------------------


def test_forced_open_is_raised_once_and_cleared_on_close() -> None:
    d = door()
    out = d.contact(10.0, OPEN)
    assert out == [
        Emit(OPENED_EV, {"door": DOOR, "by": "forced", "mode": "normal"}),
        Emit(FORCED_EV, {"door": DOOR, "mode": "normal"}),
        Feedback(FeedbackKind.FORCED_OPEN_ALARM),  # the reader sounds the door alarm
    ]
    assert d.status().forced_open_alarm
    assert d.contact(11.0, OPEN) == []  # a repeated report is not a new opening
    out = d.contact(14.0, CLOSED)
    assert out == [
        Emit(CLOSED_EV, {"door": DOOR, "open_s": 4.0}),
        Emit(FORCED_EV, {"door": DOOR, "cleared": True, "open_s": 4.0}),
        Feedback(FeedbackKind.CLEAR),
    ]
    assert not d.status().forced_open_alarm
    assert relays(out) == []


def test_no_forced_open_within_the_unlock_time_even_after_an_early_relock() -> None:
    d = door()
    d.grant(10.0)
    d.contact(11.0, OPEN)
    d.contact(12.0, CLOSED)  # relocked on close
    assert types(d.contact(14.0, OPEN)) == [OPENED_EV]  # the latch may not have caught yet
    d.contact(14.5, CLOSED)
    assert types(d.contact(15.5, OPEN)) == [OPENED_EV, FORCED_EV]


def test_no_forced_open_at_the_last_instant_of_the_unlock_time() -> None:
    d = door()
    d.grant(10.0)
    out = d.contact(15.0, OPEN)  # the relock runs first, then the opening is judged
    assert types(out) == [LOCKED_EV, OPENED_EV]


# -- held open ------------------------------------------------------------------------------------


def test_held_open_after_an_authorised_opening_and_its_clear() -> None:
    d = door()
    d.grant(10.0)
    d.contact(11.0, OPEN)
    assert d.next_deadline() == 15.0
    assert types(d.tick(15.0)) == [LOCKED_EV]  # relocks behind the open door
    assert d.next_deadline() == 131.0
    assert d.tick(130.0) == []
    out = d.tick(131.0)
    assert out == [
        Emit(HELD_EV, {"door": DOOR, "held_s": 120.0, "limit_s": 120.0}),
        Feedback(FeedbackKind.HELD_OPEN_WARNING),
    ]
    assert d.status().held_open_alarm
    assert d.next_deadline() is None
    assert d.tick(500.0) == []  # raised once
    out = d.contact(141.0, CLOSED)
    assert out == [
        Emit(CLOSED_EV, {"door": DOOR, "open_s": 130.0}),
        Emit(HELD_EV, {"door": DOOR, "cleared": True, "by": "close", "held_s": 130.0}),
        Feedback(FeedbackKind.CLEAR),
    ]
    assert not d.status().held_open_alarm


def test_a_forced_door_left_open_raises_both_alarms() -> None:
    d = door(held_open_s=30)
    d.contact(10.0, OPEN)
    assert types(d.tick(40.0)) == [HELD_EV]
    out = d.contact(50.0, CLOSED)
    assert types(out) == [CLOSED_EV, FORCED_EV, HELD_EV]
    assert [a for a in out if isinstance(a, Feedback)] == [Feedback(FeedbackKind.CLEAR)]  # once
    assert not d.status().forced_open_alarm
    assert not d.status().held_open_alarm


def test_a_forced_door_left_open_keeps_its_door_alarm_on_the_reader() -> None:
    d = door(held_open_s=30)
    assert feedback(d.contact(10.0, OPEN)) == [FeedbackKind.FORCED_OPEN_ALARM]
    out = d.tick(40.0)
    assert out == [Emit(HELD_EV, {"door": DOOR, "held_s": 30.0, "limit_s": 30.0})]  # no downgrade
    assert d.status().held_open_alarm
    assert d.reader_signal is FeedbackKind.FORCED_OPEN_ALARM
    out = d.contact(50.0, CLOSED)
    assert out == [
        Emit(CLOSED_EV, {"door": DOOR, "open_s": 40.0}),
        Emit(FORCED_EV, {"door": DOOR, "cleared": True, "open_s": 40.0}),
        Emit(HELD_EV, {"door": DOOR, "cleared": True, "by": "close", "held_s": 40.0}),
        Feedback(FeedbackKind.CLEAR),
    ]


def test_the_reader_signal_is_the_most_serious_active_alarm() -> None:
    d = door(held_open_s=30)
    seen = [d.reader_signal]
    d.grant(0.0)
    d.contact(1.0, OPEN)  # let in: not forced
    d.tick(31.0)
    seen.append(d.reader_signal)
    d.tamper(32.0, active=True)  # tamper is recorded, not shown at the reader
    seen.append(d.reader_signal)
    d.contact(33.0, CLOSED)
    seen.append(d.reader_signal)
    d.contact(100.0, OPEN)  # forced
    seen.append(d.reader_signal)
    d.tick(130.0)
    seen.append(d.reader_signal)  # forced beats held
    assert seen == [
        FeedbackKind.CLEAR,
        FeedbackKind.HELD_OPEN_WARNING,
        FeedbackKind.HELD_OPEN_WARNING,
        FeedbackKind.CLEAR,
        FeedbackKind.FORCED_OPEN_ALARM,
        FeedbackKind.FORCED_OPEN_ALARM,
    ]


def test_a_late_tick_runs_deadlines_in_order() -> None:
    d = door(held_open_s=30)
    d.grant(0.0)
    d.contact(1.0, OPEN)
    out = d.contact(100.0, CLOSED)  # no tick came: relock, alarm, then the close
    assert types(out) == [LOCKED_EV, HELD_EV, CLOSED_EV, HELD_EV]
    assert events(out)[1][1]["held_s"] == 99.0


def test_held_open_is_not_raised_while_held_unlocked_by_mode() -> None:
    d = door(held_open_s=30)
    d.set_mode(0.0, DoorMode.UNLOCKED)
    out = d.contact(1.0, OPEN)
    assert events(out) == [(OPENED_EV, {"door": DOOR, "by": "mode", "mode": "unlocked"})]
    assert d.next_deadline() is None
    assert d.tick(1000.0) == []


def test_entering_a_held_mode_clears_a_held_open_alarm() -> None:
    d = door(held_open_s=30)
    d.grant(0.0)
    d.contact(1.0, OPEN)
    d.tick(31.0)
    out = d.set_mode(40.0, DoorMode.UNLOCKED)
    assert out == [
        Emit(HELD_EV, {"door": DOOR, "cleared": True, "by": "mode", "held_s": 39.0}),
        Feedback(FeedbackKind.CLEAR),
        SetRelay(True),
        Emit(UNLOCKED_EV, {"door": DOOR, "by": "mode", "mode": "unlocked"}),
    ]


@pytest.mark.parametrize("mode", [DoorMode.UNLOCKED, DoorMode.EMERGENCY_OPEN])
def test_entering_a_held_mode_while_forced_keeps_the_door_alarm(mode: DoorMode) -> None:
    d = door(held_open_s=30)
    d.contact(10.0, OPEN)
    d.tick(40.0)
    out = d.set_mode(45.0, mode)
    assert out == [
        Emit(HELD_EV, {"door": DOOR, "cleared": True, "by": "mode", "held_s": 35.0}),
        SetRelay(True),
        Emit(UNLOCKED_EV, {"door": DOOR, "by": "mode", "mode": mode.value}),
    ]  # no CLEAR: the door is still forced open
    assert d.status().forced_open_alarm
    assert not d.status().held_open_alarm
    assert d.reader_signal is FeedbackKind.FORCED_OPEN_ALARM
    out = d.contact(50.0, CLOSED)
    assert out == [
        Emit(CLOSED_EV, {"door": DOOR, "open_s": 40.0}),
        Emit(FORCED_EV, {"door": DOOR, "cleared": True, "open_s": 40.0}),
        Feedback(FeedbackKind.CLEAR),
    ]


def test_mode_changes_while_forced_leave_the_door_alarm_alone() -> None:
    d = door(held_open_s=30)
    d.contact(10.0, OPEN)
    for at, mode in enumerate(
        [DoorMode.LOCKDOWN, DoorMode.UNLOCKED, DoorMode.NORMAL, DoorMode.EMERGENCY_OPEN], start=11
    ):
        assert feedback(d.set_mode(float(at), mode)) == []
        assert d.reader_signal is FeedbackKind.FORCED_OPEN_ALARM
    assert feedback(d.set_mode(20.0, DoorMode.NORMAL)) == []  # the held time starts now
    assert d.tick(50.0) == [Emit(HELD_EV, {"door": DOOR, "held_s": 40.0, "limit_s": 30.0})]
    assert d.reader_signal is FeedbackKind.FORCED_OPEN_ALARM


def test_leaving_a_held_mode_with_the_door_open_starts_the_held_time() -> None:
    d = door(held_open_s=30)
    d.set_mode(0.0, DoorMode.UNLOCKED)
    d.contact(1.0, OPEN)
    assert types(d.set_mode(100.0, DoorMode.NORMAL)) == [LOCKED_EV]
    assert d.next_deadline() == 130.0
    out = d.tick(130.0)
    assert events(out) == [(HELD_EV, {"door": DOOR, "held_s": 129.0, "limit_s": 30.0})]


# -- tamper ---------------------------------------------------------------------------------------


def test_tamper_active_and_cleared_once_per_change() -> None:
    d = door()
    assert d.tamper(1.0, active=True) == [Emit(TAMPER_EV, {"door": DOOR, "active": True})]
    assert d.status().tamper_active
    assert d.tamper(2.0, active=True) == []
    assert d.tamper(3.0, active=False) == [
        Emit(TAMPER_EV, {"door": DOOR, "active": False, "cleared": True})
    ]
    assert d.tamper(4.0, active=False) == []


# -- modes ----------------------------------------------------------------------------------------


def test_lockdown_during_an_unlock_relocks_at_once() -> None:
    d = door()
    d.grant(10.0)
    out = d.set_mode(11.0, DoorMode.LOCKDOWN)
    assert out == [
        SetRelay(False),
        Emit(LOCKED_EV, {"door": DOOR, "by": "mode", "mode": "lockdown"}),
    ]
    assert d.next_deadline() is None
    assert d.tick(15.0) == []


def test_lockdown_ignores_grants_and_records_rex() -> None:
    d = door()
    d.set_mode(0.0, DoorMode.LOCKDOWN)
    assert d.grant(10.0) == []
    assert d.rex(11.0, pressed=True) == [
        Emit(REX_EV, {"door": DOOR, "unlocks": False, "mode": "lockdown"})
    ]
    assert d.status().phase is DoorPhase.LOCKED
    assert d.status().relay_energised is False


def test_an_override_grant_unlocks_in_lockdown_for_its_unlock_time_only() -> None:
    d = door()
    d.set_mode(0.0, DoorMode.LOCKDOWN)
    assert d.grant(10.0, override=True) == [
        SetRelay(True),
        Emit(UNLOCKED_EV, {"door": DOOR, "by": "grant", "mode": "lockdown"}),
    ]
    assert d.status().phase is DoorPhase.UNLOCKED
    assert d.next_deadline() == 15.0
    assert types(d.contact(11.0, OPEN)) == [OPENED_EV]  # let in: not forced
    assert d.tick(15.0) == [
        SetRelay(False),
        Emit(LOCKED_EV, {"door": DOOR, "by": "timeout", "mode": "lockdown"}),
    ]
    assert d.status().phase is DoorPhase.LOCKED


def test_an_override_grant_relocks_on_close_in_lockdown() -> None:
    d = door()
    d.set_mode(0.0, DoorMode.LOCKDOWN)
    d.grant(10.0, override=True)
    d.contact(11.0, OPEN)
    assert d.contact(12.0, CLOSED)[-2:] == [
        SetRelay(False),
        Emit(LOCKED_EV, {"door": DOOR, "by": "close", "mode": "lockdown"}),
    ]


def test_forced_open_in_lockdown() -> None:
    d = door()
    d.set_mode(0.0, DoorMode.LOCKDOWN)
    assert types(d.contact(10.0, OPEN)) == [OPENED_EV, FORCED_EV]


def test_leaving_lockdown_does_not_revive_a_cancelled_unlock() -> None:
    d = door(unlock_s=30)
    d.grant(10.0)
    d.set_mode(11.0, DoorMode.LOCKDOWN)
    assert d.set_mode(12.0, DoorMode.NORMAL) == []
    assert d.status().phase is DoorPhase.LOCKED


def test_emergency_open_unlocks_whatever_happens() -> None:
    d = door()
    out = d.set_mode(1.0, DoorMode.EMERGENCY_OPEN)
    assert out == [
        SetRelay(True),
        Emit(UNLOCKED_EV, {"door": DOOR, "by": "mode", "mode": "emergency_open"}),
    ]
    assert d.status().phase is DoorPhase.HELD_UNLOCKED
    assert d.grant(2.0) == []
    assert types(d.rex(3.0, pressed=True)) == [REX_EV]
    assert types(d.contact(4.0, OPEN)) == [OPENED_EV]
    assert d.tick(1000.0) == []
    assert types(d.contact(1001.0, CLOSED)) == [CLOSED_EV]
    assert d.status().relay_energised is True


def test_emergency_open_then_back_to_normal_relocks() -> None:
    d = door()
    d.set_mode(1.0, DoorMode.EMERGENCY_OPEN)
    out = d.set_mode(100.0, DoorMode.NORMAL)
    assert out == [SetRelay(False), Emit(LOCKED_EV, {"door": DOOR, "by": "mode", "mode": "normal"})]


def test_back_to_normal_honours_a_grant_still_running() -> None:
    d = door(unlock_s=30)
    d.set_mode(0.0, DoorMode.UNLOCKED)
    d.grant(10.0)
    assert d.next_deadline() is None  # nothing to do while held unlocked
    assert d.set_mode(20.0, DoorMode.NORMAL) == []
    assert d.status().phase is DoorPhase.UNLOCKED
    assert d.next_deadline() == 40.0
    assert events(d.tick(40.0)) == [(LOCKED_EV, {"door": DOOR, "by": "timeout", "mode": "normal"})]


def test_back_to_normal_after_the_grant_ended_relocks() -> None:
    d = door(unlock_s=5)
    d.set_mode(0.0, DoorMode.EMERGENCY_OPEN)
    d.grant(10.0)
    assert d.tick(15.0) == []
    assert types(d.set_mode(20.0, DoorMode.NORMAL)) == [LOCKED_EV]


def test_a_grant_used_while_held_unlocked_is_not_honoured_later() -> None:
    d = door(unlock_s=30)
    d.set_mode(0.0, DoorMode.UNLOCKED)
    d.grant(10.0)
    d.contact(11.0, OPEN)
    d.contact(12.0, CLOSED)
    assert types(d.set_mode(20.0, DoorMode.NORMAL)) == [LOCKED_EV]


def test_unlocked_by_schedule_then_lockdown_then_emergency() -> None:
    d = door()
    assert relays(d.set_mode(0.0, DoorMode.UNLOCKED)) == [True]
    assert relays(d.set_mode(1.0, DoorMode.LOCKDOWN)) == [False]
    assert relays(d.set_mode(2.0, DoorMode.EMERGENCY_OPEN)) == [True]
    assert d.set_mode(3.0, DoorMode.EMERGENCY_OPEN) == []
    assert relays(d.set_mode(4.0, DoorMode.UNLOCKED)) == []  # unlocked either way: no event


def test_a_door_open_when_lockdown_starts_keeps_its_held_time() -> None:
    d = door(held_open_s=30)
    d.grant(0.0)
    d.contact(1.0, OPEN)
    d.set_mode(2.0, DoorMode.LOCKDOWN)
    assert d.next_deadline() == 31.0
    assert types(d.tick(31.0)) == [HELD_EV]


# -- wiring and contacts --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wiring", "unlocked_level", "locked_level"),
    [(Wiring.FAIL_SECURE, True, False), (Wiring.FAIL_SAFE, False, True)],
)
def test_wiring_sets_the_electrical_level(
    wiring: Wiring, unlocked_level: bool, locked_level: bool
) -> None:
    d = door(wiring=wiring)
    assert d.status().relay_energised is locked_level
    assert relays(d.grant(1.0)) == [unlocked_level]
    assert d.status().relay_energised is unlocked_level
    assert relays(d.tick(6.0)) == [locked_level]
    assert relays(d.set_mode(7.0, DoorMode.EMERGENCY_OPEN)) == [unlocked_level]
    assert relays(d.set_mode(8.0, DoorMode.LOCKDOWN)) == [locked_level]


@pytest.mark.parametrize(
    ("contact", "open_level", "closed_level"),
    [(ContactType.NORMALLY_CLOSED, 1, 0), (ContactType.NORMALLY_OPEN, 0, 1)],
)
def test_contact_type_maps_raw_levels(
    contact: ContactType, open_level: int, closed_level: int
) -> None:
    d = door(contact=contact)
    assert d.status().door_open is False
    assert types(d.contact(1.0, open_level)) == [OPENED_EV, FORCED_EV]
    assert d.status().door_open is True
    assert types(d.contact(2.0, closed_level)) == [CLOSED_EV, FORCED_EV]
    assert d.status().door_open is False


def test_any_non_zero_contact_level_counts_as_high() -> None:
    d = door()
    assert types(d.contact(1.0, 255)) == [OPENED_EV, FORCED_EV]


def test_a_door_without_contact_raises_no_alarm() -> None:
    d = door(has_contact=False)
    assert d.status().door_open is None
    assert d.contact(1.0, OPEN) == []
    d.grant(2.0)
    assert d.contact(3.0, CLOSED) == []  # no relock on close either
    assert types(d.tick(7.0)) == [LOCKED_EV]
    assert d.contact(8.0, OPEN) == []
    assert d.tick(10_000.0) == []
    assert not d.status().forced_open_alarm
    assert not d.status().held_open_alarm
    assert d.next_deadline() is None
    assert types(d.recover(20_000.0, relay_energised=False, contact_level=OPEN, tamper=False)) == []


# -- recover --------------------------------------------------------------------------------------


@pytest.mark.parametrize("wiring", list(Wiring))
@pytest.mark.parametrize(
    ("energised", "contact_level", "tamper"),
    list(itertools.product([False, True], [0, 1, None], [False, True])),
)
def test_recover_a_fresh_door_from_every_reported_combination(
    wiring: Wiring, energised: bool, contact_level: int | None, tamper: bool
) -> None:
    d = DoorStateMachine(DOOR, DoorSettings(wiring=wiring))
    out = d.recover(100.0, relay_energised=energised, contact_level=contact_level, tamper=tamper)
    found_locked = energised is (wiring is Wiring.FAIL_SAFE)
    locked_level = wiring is Wiring.FAIL_SAFE
    # A door found locked at the first recovery is not news; one found unlocked is.
    expected: list[Action] = (
        []
        if found_locked
        else [Emit(UNLOCKED_EV, {"door": DOOR, "by": "recover", "found": True, "mode": "normal"})]
    )
    if contact_level == OPEN:  # found closed is not news either
        expected.append(Emit(OPENED_EV, {"door": DOOR, "by": "recover", "mode": "normal"}))
    if not found_locked:  # NORMAL mode and no grant: the relay is put back to locked
        expected += [
            SetRelay(locked_level),
            Emit(LOCKED_EV, {"door": DOOR, "by": "recover", "mode": "normal"}),
        ]
    if tamper:
        expected.append(Emit(TAMPER_EV, {"door": DOOR, "active": True, "by": "recover"}))
    assert out == expected
    assert d.status().phase is DoorPhase.LOCKED
    assert d.status().locked is True
    assert d.status().relay_energised is locked_level
    assert d.status().door_open is (None if contact_level is None else contact_level == OPEN)
    assert d.status().tamper_active is tamper
    assert not d.status().forced_open_alarm  # found open: reported, never as forced
    assert d.next_deadline() == (220.0 if contact_level == OPEN else None)


@pytest.mark.parametrize("mode", list(DoorMode))
@pytest.mark.parametrize("energised", [False, True])
def test_recover_drives_the_relay_to_the_mode(mode: DoorMode, energised: bool) -> None:
    d = DoorStateMachine(DOOR, mode=mode)
    out = d.recover(0.0, relay_energised=energised, contact_level=CLOSED, tamper=False)
    want = mode in (DoorMode.UNLOCKED, DoorMode.EMERGENCY_OPEN)
    assert d.status().relay_energised is want
    assert relays(out) == ([] if energised is want else [want])


def test_recover_after_a_board_restart_keeps_a_running_grant() -> None:
    d = door()
    d.grant(10.0)
    out = d.recover(11.0, relay_energised=False, contact_level=CLOSED, tamper=False)
    assert out == [
        Emit(LOCKED_EV, {"door": DOOR, "by": "recover", "found": True, "mode": "normal"}),
        SetRelay(True),
        Emit(UNLOCKED_EV, {"door": DOOR, "by": "recover", "mode": "normal"}),
    ]
    assert d.next_deadline() == 15.0


def test_recover_reporting_what_is_already_known_emits_nothing() -> None:
    d = door()
    assert d.recover(5.0, relay_energised=False, contact_level=CLOSED, tamper=False) == []
    assert d.recover(6.0, relay_energised=False, contact_level=None, tamper=False) == []
    assert d.status().door_open is False  # an unreported contact keeps what was known


def test_recover_finds_a_door_closed_and_clears_its_alarms() -> None:
    d = door(held_open_s=30)
    d.contact(1.0, OPEN)
    d.tick(31.0)
    d.tamper(32.0, active=True)
    out = d.recover(40.0, relay_energised=False, contact_level=CLOSED, tamper=False)
    assert out == [
        Emit(CLOSED_EV, {"door": DOOR, "open_s": 39.0, "by": "recover"}),
        Emit(FORCED_EV, {"door": DOOR, "cleared": True, "open_s": 39.0, "by": "recover"}),
        Emit(HELD_EV, {"door": DOOR, "cleared": True, "by": "recover", "held_s": 39.0}),
        Feedback(FeedbackKind.CLEAR),
        Emit(TAMPER_EV, {"door": DOOR, "active": False, "cleared": True, "by": "recover"}),
    ]


def test_recover_finds_a_locked_door_open_and_does_not_call_it_forced() -> None:
    d = door(held_open_s=30)
    out = d.recover(10.0, relay_energised=False, contact_level=OPEN, tamper=False)
    assert out == [Emit(OPENED_EV, {"door": DOOR, "by": "recover", "mode": "normal"})]
    assert not d.status().forced_open_alarm
    assert d.next_deadline() == 40.0  # held time counted from the recovery
    assert types(d.contact(12.0, CLOSED)) == [CLOSED_EV]


def test_recover_in_a_held_mode_starts_no_held_time() -> None:
    d = DoorStateMachine(DOOR, mode=DoorMode.UNLOCKED)
    d.recover(0.0, relay_energised=True, contact_level=OPEN, tamper=False)
    assert d.next_deadline() is None


def test_a_contact_report_before_recovery_is_judged_as_an_opening() -> None:
    d = DoorStateMachine(DOOR)
    assert types(d.contact(1.0, OPEN)) == [OPENED_EV, FORCED_EV]
    assert d.status().locked is None  # the relay is only commanded once a lock level is needed
    assert relays(d.grant(2.0)) == [True]


def test_status_snapshot() -> None:
    d = door()
    d.grant(1.0)
    s = d.status()
    assert (s.door_id, s.mode, s.phase, s.locked, s.door_open) == (
        DOOR,
        DoorMode.NORMAL,
        DoorPhase.UNLOCKED,
        False,
        False,
    )
    assert s.unlock_until == 6.0
    assert not s.forced_open_alarm
    assert not s.held_open_alarm
    assert not s.tamper_active


# -- properties over random input sequences -------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One input after ``dt`` seconds; ``arg`` is the input's own argument."""

    dt: float
    kind: str
    arg: Any = None


_DT = st.one_of(
    st.sampled_from([0.0, 0.5, 1.0, 5.0, 10.0, 30.0, 120.0, 121.0]),
    st.floats(min_value=0.0, max_value=700.0, allow_nan=False),
)
_STEP = st.one_of(
    st.builds(Step, _DT, st.just("grant")),
    st.builds(Step, _DT, st.just("rex"), st.booleans()),
    st.builds(Step, _DT, st.just("contact"), st.integers(0, 1)),
    st.builds(Step, _DT, st.just("tamper"), st.booleans()),
    st.builds(Step, _DT, st.just("mode"), st.sampled_from(list(DoorMode))),
    st.builds(Step, _DT, st.just("tick")),
    st.builds(Step, st.just(0.0), st.just("tick_deadline")),
    st.builds(
        Step,
        _DT,
        st.just("recover"),
        st.tuples(st.booleans(), st.sampled_from([0, 1, None]), st.booleans()),
    ),
)
_SETTINGS = st.builds(
    DoorSettings,
    unlock_s=st.sampled_from([0.5, 5.0, 30.0, 200.0]),
    relock_on_close=st.booleans(),
    held_open_s=st.sampled_from([30.0, 120.0]),
    rex_unlocks=st.booleans(),
    rex_grace_s=st.sampled_from([0.0, 10.0]),
    wiring=st.sampled_from(list(Wiring)),
    contact=st.sampled_from(list(ContactType)),
    has_contact=st.booleans(),
)


@settings(max_examples=1000, deadline=None)
@given(
    door_settings=_SETTINGS,
    first=st.tuples(st.booleans(), st.sampled_from([0, 1, None]), st.booleans()),
    steps=st.lists(_STEP, max_size=40),
)
def test_invariants_over_random_inputs(
    door_settings: DoorSettings,
    first: tuple[bool, int | None, bool],
    steps: list[Step],
) -> None:
    d = DoorStateMachine(DOOR, door_settings)
    locked_level = door_settings.relay_level(True)
    unlocked_level = door_settings.relay_level(False)
    now = 0.0
    actions = d.recover(now, *first)
    relay = (relays(actions) or [first[0]])[-1]
    lock_events = [t for t in types(actions) if t in (LOCKED_EV, UNLOCKED_EV)]
    signal = FeedbackKind.CLEAR  # what the reader was last told to show at rest
    grants: list[float] = []
    lockdowns: list[float] = []
    for step in steps:
        now += step.dt
        if step.kind == "tick_deadline":
            now = max(now, d.next_deadline() or now)
        if step.kind == "grant" and d.mode is not DoorMode.LOCKDOWN:
            grants.append(now)
        actions = run(d, step, now)  # (6) never raises
        if step.kind == "recover":
            relay = step.arg[0]  # what the board reported is the level before any correction
        relay = (relays(actions) or [relay])[-1]
        lock_events += [t for t in types(actions) if t in (LOCKED_EV, UNLOCKED_EV)]
        if d.mode is DoorMode.LOCKDOWN:  # (1)
            assert relay is locked_level
        if d.mode is DoorMode.EMERGENCY_OPEN:  # (2)
            assert relay is unlocked_level
        assert d.status().relay_energised is relay
        assert d.status().locked is (
            d.status().phase is DoorPhase.LOCKED
        )  # the relay always follows the phase
        if step.kind == "mode" and d.mode is DoorMode.LOCKDOWN:
            lockdowns.append(now)
        for event_type, data in events(actions):  # (4)
            if event_type is FORCED_EV and not data.get("cleared"):
                # Within the first moments of a grant an opening is never forced, unless a
                # lockdown began since (a used grant keeps only CLOSE_GRACE_S after its close).
                window = min(door_settings.unlock_s, CLOSE_GRACE_S)
                assert all(
                    any(g < t <= now for t in lockdowns) for g in grants if g <= now <= g + window
                )
        deadline = d.next_deadline()  # (5): every input runs the deadlines that passed
        assert deadline is None or deadline > now
        if not door_settings.has_contact:
            assert not d.status().forced_open_alarm
            assert not d.status().held_open_alarm
        for kind in feedback(actions):  # (7) the reader follows the alarms, one signal a change
            assert kind is not signal
            signal = kind
        status = d.status()
        assert signal is d.reader_signal
        assert d.reader_signal is (
            FeedbackKind.FORCED_OPEN_ALARM
            if status.forced_open_alarm
            else FeedbackKind.HELD_OPEN_WARNING
            if status.held_open_alarm
            else FeedbackKind.CLEAR
        )
    for a, b in itertools.pairwise(lock_events):  # (3)
        assert a is not b


def run(d: DoorStateMachine, step: Step, now: float) -> list[Action]:
    """Feed one step to the door."""
    if step.kind == "grant":
        return d.grant(now)
    if step.kind == "rex":
        return d.rex(now, step.arg)
    if step.kind == "contact":
        return d.contact(now, step.arg)
    if step.kind == "tamper":
        return d.tamper(now, step.arg)
    if step.kind == "mode":
        return d.set_mode(now, step.arg)
    if step.kind == "recover":
        energised, level, tamper = step.arg
        return d.recover(now, energised, level, tamper)
    return d.tick(now)


def test_a_long_unlock_relocked_on_close_alarms_on_a_later_reopening() -> None:
    d = door(unlock_s=3600)
    d.grant(10.0)
    d.contact(11.0, OPEN)
    d.contact(12.0, CLOSED)  # relocked on close: the grant is used
    assert types(d.contact(13.0, OPEN)) == [OPENED_EV]  # within the close grace
    d.contact(13.5, CLOSED)
    assert types(d.contact(1800.0, OPEN)) == [OPENED_EV, FORCED_EV]


def test_lockdown_ends_the_authorised_window_of_an_earlier_grant() -> None:
    d = door(unlock_s=3600)
    d.grant(1.0)
    d.set_mode(2.0, DoorMode.LOCKDOWN)
    assert types(d.contact(1800.0, OPEN)) == [OPENED_EV, FORCED_EV]
