"""Tests for gateway.schedule: DST, overnight windows, holidays, exceptions, and two properties."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gateway import codec
from gateway.model import Reason
from gateway.schedule import CompiledSchedule
from tests.gateway.sitebuilder import JSON, at, exception, holiday_window, site, utc, window

ROME = "Europe/Rome"
NEW_YORK = "America/New_York"
WEEKDAYS = ["mon", "tue", "wed", "thu", "fri"]
DAY_NAMES = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
SECOND = timedelta(seconds=1)


class Sched:
    """A compiled schedule and its site's timezone, asked the way ``access.decide`` asks it."""

    def __init__(self, compiled: CompiledSchedule, tz: ZoneInfo) -> None:
        self.compiled = compiled
        self.tz = tz

    def reason(self, now: datetime) -> Reason | None:
        """None when open at the aware instant ``now``, else why it is closed."""
        return self.compiled.closed_reason(now, now.astimezone(self.tz))

    def is_open(self, now: datetime) -> bool:
        """True when open at the aware instant ``now``."""
        return self.compiled.is_open(now, now.astimezone(self.tz))


def schedule(
    *windows: JSON,
    tz: str = ROME,
    holidays: Iterable[date] = (),
    holiday_windows: Iterable[JSON] = (),
    exceptions: Iterable[JSON] = (),
) -> Sched:
    """Compile one schedule through the snapshot JSON path."""
    dates = list(holidays)
    builder = site(tz).schedule(
        "s",
        windows,
        holiday_calendars=["cal"] if dates else None,
        holiday_windows=list(holiday_windows),
        exceptions=list(exceptions),
    )
    if dates:
        builder.calendar("cal", dates)
    view = builder.view()
    return Sched(view.compiled["s"], view.tz)


def every_minute(start: datetime, hours: int) -> Iterator[datetime]:
    """Each minute from ``start`` for ``hours`` hours."""
    for minute in range(hours * 60):
        yield start + timedelta(minutes=minute)


# --- DST ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tz", "night", "week_before"),
    [
        (ROME, utc(2026, 3, 28, 22), utc(2026, 3, 22, 1, 15)),  # 02:00 -> 03:00 on 2026-03-29
        (NEW_YORK, utc(2026, 3, 8, 4), utc(2026, 3, 1, 7, 15)),  # 02:00 -> 03:00 on 2026-03-08
    ],
)
def test_window_in_the_skipped_hour_never_opens(
    tz: str, night: datetime, week_before: datetime
) -> None:
    sched = schedule(window("sun", "02:00", "02:30"), tz=tz)
    assert sched.is_open(week_before)  # 02:15 local the Sunday before: the window is real
    opened = [t for t in every_minute(night, 8) if sched.is_open(t)]
    assert opened == []
    assert sched.reason(night + timedelta(hours=3)) is Reason.OUTSIDE_SCHEDULE


def test_repeated_hour_in_new_york_is_open_during_both_passes() -> None:
    tz = ZoneInfo(NEW_YORK)
    sched = schedule(window("sun", "01:00", "02:00"), tz=NEW_YORK)
    first, second = utc(2026, 11, 1, 5), utc(2026, 11, 1, 6)  # 01:00 EDT, then 01:00 EST
    assert (first.astimezone(tz).fold, first.astimezone(tz).hour) == (0, 1)
    assert (second.astimezone(tz).fold, second.astimezone(tz).hour) == (1, 1)
    for now in (
        first,
        first + timedelta(minutes=59, seconds=59),
        second,
        second + timedelta(minutes=59, seconds=59),
    ):
        assert sched.is_open(now), now
    assert not sched.is_open(first - SECOND)  # 00:59:59 EDT
    assert not sched.is_open(utc(2026, 11, 1, 7))  # 02:00 EST
    assert sum(sched.is_open(t) for t in every_minute(utc(2026, 11, 1, 3), 6)) == 120


def test_repeated_hour_in_rome_is_open_during_both_passes() -> None:
    sched = schedule(window("sun", "02:00", "03:00"))
    assert sched.is_open(utc(2026, 10, 25, 0))  # 02:00 CEST
    assert sched.is_open(utc(2026, 10, 25, 1))  # 02:00 CET
    assert sched.is_open(utc(2026, 10, 25, 1, 59, second=59))
    assert not sched.is_open(utc(2026, 10, 25, 2))  # 03:00 CET
    assert not sched.is_open(utc(2026, 10, 24, 23, 59, second=59))  # 01:59:59 CEST
    assert sum(sched.is_open(t) for t in every_minute(utc(2026, 10, 24, 22), 6)) == 120


@pytest.mark.parametrize(
    ("tz", "opens_utc"),
    [
        (ROME, utc(2026, 3, 30, 6)),  # 08:00 CEST
        (ROME, utc(2026, 10, 26, 7)),  # 08:00 CET
        (NEW_YORK, utc(2026, 3, 9, 12)),  # 08:00 EDT
        (NEW_YORK, utc(2026, 11, 2, 13)),  # 08:00 EST
    ],
)
def test_office_hours_the_day_after_a_dst_change(tz: str, opens_utc: datetime) -> None:
    sched = schedule(window(WEEKDAYS, "08:00", "18:00"), tz=tz)
    closes_utc = opens_utc + timedelta(hours=10)
    assert not sched.is_open(opens_utc - SECOND)
    assert sched.is_open(opens_utc)
    assert sched.is_open(closes_utc - SECOND)
    assert not sched.is_open(closes_utc)


# --- overnight windows ----------------------------------------------------------------------

FRIDAY_NIGHT = window("fri", "22:00", "02:00", overnight=True)


@pytest.mark.parametrize(
    ("local", "is_open"),
    [
        (at(ROME, "2026-06-12 21:59"), False),
        (at(ROME, "2026-06-12 22:00"), True),  # start inclusive
        (at(ROME, "2026-06-12 23:59"), True),
        (at(ROME, "2026-06-13 00:00"), True),
        (at(ROME, "2026-06-13 01:00"), True),
        (at(ROME, "2026-06-13 01:59"), True),
        (at(ROME, "2026-06-13 02:00"), False),  # end exclusive
        (at(ROME, "2026-06-13 22:00"), False),  # Saturday night is not Friday night
        (at(ROME, "2026-06-12 01:00"), False),  # nor is Thursday's
    ],
)
def test_friday_overnight_window(local: datetime, is_open: bool) -> None:
    assert schedule(FRIDAY_NIGHT).is_open(local) is is_open


@pytest.mark.parametrize(
    ("local", "is_open"),
    [
        (at(ROME, "2026-06-14 23:00"), True),  # Sunday
        (at(ROME, "2026-06-15 00:00"), True),  # Monday
        (at(ROME, "2026-06-15 05:59"), True),
        (at(ROME, "2026-06-15 06:00"), False),
        (at(ROME, "2026-06-15 22:00"), False),
        (at(ROME, "2026-06-13 23:00"), False),  # Saturday
        (at(ROME, "2026-06-14 05:00"), False),  # Sunday morning is Saturday night's
    ],
)
def test_sunday_overnight_window_wraps_to_monday(local: datetime, is_open: bool) -> None:
    assert schedule(window("sun", "22:00", "06:00", overnight=True)).is_open(local) is is_open


def test_window_ending_at_24_00() -> None:
    sched = schedule(window("mon", "20:00", "24:00"))
    assert sched.is_open(at(ROME, "2026-06-15 23:59") + timedelta(seconds=59))
    assert not sched.is_open(at(ROME, "2026-06-16 00:00"))
    assert not sched.is_open(at(ROME, "2026-06-15 19:59"))


def test_whole_day_windows_on_consecutive_days_join() -> None:
    sched = schedule(window(["sat", "sun"], "00:00", "24:00"))
    assert all(sched.is_open(t) for t in every_minute(at(ROME, "2026-06-13 00:00"), 48))
    assert not sched.is_open(at(ROME, "2026-06-15 00:00"))


# --- holidays -------------------------------------------------------------------------------

SATURDAY = date(2026, 6, 13)
FRIDAY = date(2026, 6, 12)


def test_holiday_on_saturday_keeps_fridays_overnight_window() -> None:
    sched = schedule(FRIDAY_NIGHT, holidays=[SATURDAY])
    assert sched.reason(at(ROME, "2026-06-13 01:00")) is None
    assert sched.reason(at(ROME, "2026-06-12 23:00")) is None


def test_holiday_on_friday_cancels_its_overnight_window() -> None:
    sched = schedule(FRIDAY_NIGHT, holidays=[FRIDAY])
    assert sched.reason(at(ROME, "2026-06-12 23:00")) is Reason.HOLIDAY
    assert sched.reason(at(ROME, "2026-06-13 01:00")) is Reason.HOLIDAY
    assert sched.reason(at(ROME, "2026-06-13 03:00")) is Reason.OUTSIDE_SCHEDULE
    assert sched.reason(at(ROME, "2026-06-19 23:00")) is None  # the next Friday is no holiday


@pytest.mark.parametrize(
    ("local", "reason"),
    [
        (at(ROME, "2026-06-10 09:00"), Reason.HOLIDAY),  # a weekly window, replaced
        (at(ROME, "2026-06-10 10:00"), None),  # the holiday window
        (at(ROME, "2026-06-10 11:59"), None),
        (at(ROME, "2026-06-10 12:00"), Reason.HOLIDAY),
        (at(ROME, "2026-06-10 19:00"), Reason.OUTSIDE_SCHEDULE),  # no window at all
        (at(ROME, "2026-06-11 09:00"), None),  # the next day is no holiday
        (at(ROME, "2026-06-11 19:00"), Reason.OUTSIDE_SCHEDULE),
        (at(ROME, "2026-06-13 11:00"), None),  # holiday windows apply on any weekday
        (at(ROME, "2026-06-14 11:00"), Reason.OUTSIDE_SCHEDULE),  # but only on holidays
    ],
)
def test_holiday_windows_apply_on_holidays(local: datetime, reason: Reason | None) -> None:
    sched = schedule(
        window(WEEKDAYS, "08:00", "18:00"),
        holidays=[date(2026, 6, 10), SATURDAY],
        holiday_windows=[holiday_window("10:00", "12:00")],
    )
    assert sched.reason(local) is reason


def test_overnight_holiday_window_belongs_to_the_holiday() -> None:
    sched = schedule(
        holidays=[FRIDAY], holiday_windows=[holiday_window("22:00", "02:00", overnight=True)]
    )
    assert sched.is_open(at(ROME, "2026-06-12 22:00"))
    assert sched.is_open(at(ROME, "2026-06-13 01:59"))  # Saturday is no holiday
    assert not sched.is_open(at(ROME, "2026-06-13 22:00"))
    assert not sched.is_open(at(ROME, "2026-06-12 01:00"))  # Thursday night is not the holiday's


def test_holidays_are_site_local_dates() -> None:
    # 23:30 UTC on 9 June is already 10 June in Rome, and still 9 June in New York.
    now = utc(2026, 6, 9, 23, 30)
    windows = window(["tue", "wed"], "00:00", "24:00")
    assert schedule(windows, tz=ROME, holidays=[date(2026, 6, 10)]).reason(now) is Reason.HOLIDAY
    assert schedule(windows, tz=NEW_YORK, holidays=[date(2026, 6, 10)]).reason(now) is None


# --- exceptions -----------------------------------------------------------------------------

NOON = at(ROME, "2026-06-10 12:00")  # a Wednesday


def test_opening_exception_opens_outside_windows() -> None:
    sched = schedule(
        window("mon", "08:00", "09:00"),
        exceptions=[exception(NOON, NOON + timedelta(hours=1), opens=True)],
    )
    assert sched.reason(NOON - SECOND) is Reason.OUTSIDE_SCHEDULE
    assert sched.reason(NOON) is None  # start inclusive
    assert sched.reason(NOON + timedelta(minutes=59, seconds=59)) is None
    assert sched.reason(NOON + timedelta(hours=1)) is Reason.OUTSIDE_SCHEDULE  # end exclusive


def test_closing_exception_closes_inside_windows() -> None:
    sched = schedule(
        window(WEEKDAYS, "08:00", "18:00"),
        exceptions=[exception(NOON, NOON + timedelta(hours=1), opens=False)],
    )
    assert sched.reason(NOON - SECOND) is None
    assert sched.reason(NOON) is Reason.CLOSED_BY_EXCEPTION
    assert sched.reason(NOON + timedelta(hours=1)) is None


@pytest.mark.parametrize("closing_first", [True, False])
def test_overlapping_closing_and_opening_exceptions_close(closing_first: bool) -> None:
    closing = exception(NOON, NOON + timedelta(hours=2), opens=False)
    opening = exception(NOON - timedelta(hours=1), NOON + timedelta(hours=1), opens=True)
    sched = schedule(exceptions=[closing, opening] if closing_first else [opening, closing])
    assert sched.reason(NOON - timedelta(minutes=30)) is None
    assert sched.reason(NOON) is Reason.CLOSED_BY_EXCEPTION
    assert sched.reason(NOON + timedelta(minutes=90)) is Reason.CLOSED_BY_EXCEPTION
    assert sched.reason(NOON + timedelta(hours=2)) is Reason.OUTSIDE_SCHEDULE


def test_opening_exception_beats_a_holiday() -> None:
    sched = schedule(
        window(WEEKDAYS, "08:00", "18:00"),
        holidays=[NOON.date()],
        exceptions=[exception(NOON, NOON + timedelta(hours=1), opens=True)],
    )
    assert sched.reason(NOON - SECOND) is Reason.HOLIDAY
    assert sched.reason(NOON) is None


def test_exceptions_are_instants_whatever_their_offset() -> None:
    start = NOON.astimezone(ZoneInfo("Asia/Tokyo"))
    sched = schedule(exceptions=[exception(start, start + timedelta(minutes=1), opens=True)])
    assert sched.is_open(NOON.astimezone(UTC))
    assert not sched.is_open(NOON.astimezone(UTC) - SECOND)


# --- properties -----------------------------------------------------------------------------


def minutes_of(hhmm: str) -> int:
    """``"HH:MM"`` as minutes after midnight."""
    hours, minutes = hhmm.split(":")
    return int(hours) * 60 + int(minutes)


def reference(
    windows: list[JSON], holiday_windows: list[JSON], holidays: set[date], local: datetime
) -> Reason | None:
    """The slow way, from the local wall clock: which window, owned by which day, covers now."""
    minute = local.hour * 60 + local.minute
    today = local.date()
    yesterday = today - timedelta(days=1)
    weekday = DAY_NAMES[local.weekday()]
    before = DAY_NAMES[(local.weekday() - 1) % 7]

    def owners(w: JSON) -> list[date]:
        """The days whose instance of window ``w`` covers now."""
        days = w.get("days", DAY_NAMES)
        start, end, overnight = (
            minutes_of(w["start"]),
            minutes_of(w["end"]),
            w.get("overnight", False),
        )
        out = []
        if weekday in days and start <= minute < (24 * 60 if overnight else end):
            out.append(today)
        if overnight and before in days and minute < end:
            out.append(yesterday)
        return out

    weekly = [day for w in windows for day in owners(w)]
    if any(day not in holidays for day in weekly):
        return None
    if any(day in holidays for w in holiday_windows for day in owners(w)):
        return None
    return Reason.HOLIDAY if weekly else Reason.OUTSIDE_SCHEDULE


@st.composite
def window_json(draw: st.DrawFn, *, weekly: bool = True) -> JSON:
    """One window as JSON, not necessarily compatible with others."""
    quarter = st.integers(0, 96).map(lambda q: q * 15)
    start = draw(st.one_of(quarter.filter(lambda m: m < 1440), st.integers(0, 1439)))
    overnight = start > 0 and draw(st.booleans())
    if overnight:
        end = draw(st.integers(0, start - 1))
    else:
        end = draw(st.one_of(st.just(1440), st.integers(start + 1, 1440)))
    out: JSON = {"start": codec.hhmm(start), "end": codec.hhmm(end), "overnight": overnight}
    if weekly:
        out["days"] = draw(
            st.lists(st.sampled_from(DAY_NAMES), min_size=1, max_size=7, unique=True)
        )
    return out


@st.composite
def window_sets(draw: st.DrawFn, *, weekly: bool = True) -> list[JSON]:
    """Windows that the codec accepts together: each candidate is kept only if it overlaps none."""
    key = "windows" if weekly else "holiday_windows"
    kept: list[JSON] = []
    for candidate in draw(st.lists(window_json(weekly=weekly), max_size=5 if weekly else 2)):
        obj: dict[str, Any] = {"id": "s", "name": "s", "windows": [], key: [*kept, candidate]}
        try:
            codec.schedule_from_json(obj, "s")
        except codec.FormatError:
            continue
        kept.append(candidate)
    return kept


def compile_plain(
    windows: list[JSON], holiday_windows: list[JSON], holidays: set[date]
) -> CompiledSchedule:
    """Compile through the codec, with the holidays in one calendar."""
    builder = site("UTC").schedule(
        "s",
        windows,
        holiday_windows=holiday_windows,
        holiday_calendars=["cal"] if holidays else None,
    )
    if holidays:
        builder.calendar("cal", sorted(holidays))
    return builder.view().compiled["s"]


TIMEZONES = [ROME, NEW_YORK, "Australia/Lord_Howe", "UTC"]
EARLIEST, LATEST = datetime(2020, 1, 1), datetime(2035, 12, 31)


def boundary_instants(windows: list[JSON], tz: ZoneInfo) -> st.SearchStrategy[datetime]:
    """Instants whose local wall clock is at, or a second either side of, a window boundary."""
    minutes = sorted({minutes_of(w[k]) for w in windows for k in ("start", "end")}) or [0]
    return st.builds(
        lambda day, minute, nudge, fold: (
            (datetime.combine(day, datetime.min.time()) + timedelta(minutes=minute, seconds=nudge))
            .replace(tzinfo=tz, fold=fold)
            .astimezone(UTC)
        ),
        st.dates(EARLIEST.date(), LATEST.date()),
        st.sampled_from(minutes),
        st.sampled_from([-1, 0, 1]),
        st.integers(0, 1),
    )


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_is_open_matches_the_wall_clock_reference(data: st.DataObject) -> None:
    tz_name = data.draw(st.sampled_from(TIMEZONES), label="tz")
    tz = ZoneInfo(tz_name)
    windows = data.draw(window_sets(), label="windows")
    holiday_windows = data.draw(window_sets(weekly=False), label="holiday_windows")
    anywhere = st.datetimes(EARLIEST, LATEST, timezones=st.just(UTC))
    now = data.draw(
        st.one_of(anywhere, boundary_instants(windows + holiday_windows, tz)), label="now"
    )
    local = now.astimezone(tz)
    near = [local.date() + timedelta(days=d) for d in (-1, 0, 1)]
    holidays = set(data.draw(st.lists(st.sampled_from(near), unique=True), label="holidays"))

    compiled = compile_plain(windows, holiday_windows, holidays)
    expected = reference(windows, holiday_windows, holidays, local)
    assert compiled.closed_reason(now, local) is expected
    assert compiled.is_open(now, local) is (expected is None)


@settings(max_examples=300, deadline=None)
@given(
    windows=window_sets(),
    holiday_windows=window_sets(weekly=False),
    wall=st.builds(
        lambda t, fold: t.replace(fold=fold), st.datetimes(EARLIEST, LATEST), st.integers(0, 1)
    ),
    tz_name=st.sampled_from(TIMEZONES),
    holiday_offsets=st.lists(st.sampled_from([-1, 0, 1]), unique=True),
)
def test_result_depends_only_on_the_wall_clock(
    windows: list[JSON],
    holiday_windows: list[JSON],
    wall: datetime,
    tz_name: str,
    holiday_offsets: list[int],
) -> None:
    tz = ZoneInfo(tz_name)
    in_tz = wall.replace(tzinfo=tz)  # keeps the fold
    assume(in_tz.astimezone(UTC).astimezone(tz).replace(tzinfo=None) == wall)  # skip the gaps
    in_utc = wall.replace(tzinfo=UTC)
    holidays = {wall.date() + timedelta(days=d) for d in holiday_offsets}
    compiled = compile_plain(windows, holiday_windows, holidays)
    assert compiled.closed_reason(in_tz, in_tz.astimezone(tz)) is compiled.closed_reason(
        in_utc, in_utc
    )
