"""Schedule evaluation in site time: weekly windows, holidays and one-off exceptions.

Windows are wall-clock times in the site's timezone. Across a DST change a window covers the
wall-clock times that exist that day: a 02:00-03:00 window is skipped on a spring-forward night
and covers both passes of a repeated hour on a fall-back night. An overnight window belongs to
the day it starts on: Friday 22:00-02:00 still covers Saturday 01:00 when Saturday is a
holiday, and is replaced when Friday is one.

Order of precedence: a closing exception, then an opening exception, then the holiday
windows (on a holiday), then the weekly windows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import date, datetime, timedelta

from gateway.model import MINUTES_PER_DAY, HolidayCalendar, Reason, Schedule, TimeWindow

Piece = tuple[int, int, int]  # (start second, end second, days back to the window's own day)
_ONE_DAY = timedelta(days=1)


def _pieces_by_weekday(windows: Iterable[TimeWindow]) -> tuple[tuple[Piece, ...], ...]:
    days: list[list[Piece]] = [[] for _ in range(7)]
    for window in windows:
        for day in window.days:
            if window.overnight:
                days[day].append((window.start * 60, MINUTES_PER_DAY * 60, 0))
                days[(day + 1) % 7].append((0, window.end * 60, 1))
            else:
                days[day].append((window.start * 60, window.end * 60, 0))
    return tuple(tuple(sorted(pieces)) for pieces in days)


class CompiledSchedule:
    """A schedule prepared for evaluation in microseconds; immutable once built."""

    __slots__ = ("_exceptions", "_holiday", "_holidays", "_weekly", "id")

    def __init__(self, schedule: Schedule, calendars: Mapping[str, HolidayCalendar]) -> None:
        self.id = schedule.id
        self._weekly = _pieces_by_weekday(schedule.windows)
        self._holiday = _pieces_by_weekday(schedule.holiday_windows)
        holidays: set[date] = set()
        for calendar_id in schedule.holiday_calendars:
            calendar = calendars.get(calendar_id)
            if calendar is not None:
                holidays |= calendar.dates
        self._holidays = frozenset(holidays)
        # Closing exceptions first: when a closure and an opening overlap, the closure wins.
        self._exceptions = tuple(
            (e.start, e.end, e.open)
            for e in sorted(schedule.exceptions, key=lambda e: (e.open, e.start))
        )

    def closed_reason(self, now: datetime, local: datetime) -> Reason | None:
        """None when open at ``now``; else why it is closed. ``local`` is ``now`` in site time."""
        for start, end, opens in self._exceptions:
            if start <= now < end:
                return None if opens else Reason.CLOSED_BY_EXCEPTION
        weekday = local.weekday()
        second = local.hour * 3600 + local.minute * 60 + local.second
        holidays = self._holidays
        today = local.date() if holidays else None
        suppressed = False
        for start_s, end_s, back in self._weekly[weekday]:
            if start_s <= second < end_s:
                if today is None or (today - _ONE_DAY * back) not in holidays:
                    return None
                suppressed = True
        if today is not None:
            for start_s, end_s, back in self._holiday[weekday]:
                if start_s <= second < end_s and (today - _ONE_DAY * back) in holidays:
                    return None
        return Reason.HOLIDAY if suppressed else Reason.OUTSIDE_SCHEDULE

    def is_open(self, now: datetime, local: datetime) -> bool:
        """True when the schedule is open at ``now``."""
        return self.closed_reason(now, local) is None
