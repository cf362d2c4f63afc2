"""arXiv's announcement calendar: which feed day announces a submission, and the days between."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from zoneinfo import ZoneInfo

EASTERN = ZoneInfo("America/New_York")
# arXiv's daily submission deadline, US Eastern.
_CUTOFF = dt.time(14, 0)
MAX_CATCH_UP_DAYS = 14


def _next_weekday(day: dt.date) -> dt.date:
    day += dt.timedelta(days=1)
    while day.weekday() >= 5:
        day += dt.timedelta(days=1)
    return day


def _previous_weekday(day: dt.date) -> dt.date:
    day -= dt.timedelta(days=1)
    while day.weekday() >= 5:
        day -= dt.timedelta(days=1)
    return day


def announcement_day_for(submitted: dt.datetime) -> dt.date:
    """The feed day that announces a paper submitted then (holidays aside).

    A submission before 14:00 US Eastern on a weekday is announced that evening at 20:00 and
    appears in the next weekday's feed; later ones wait for the next weekday's deadline.
    """
    local = submitted.astimezone(EASTERN)
    deadline_day = local.date()
    if deadline_day.weekday() >= 5 or local.time() >= _CUTOFF:
        deadline_day = _next_weekday(deadline_day)
    return _next_weekday(deadline_day)


def submission_window(feed_day: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """[start, end) in UTC of the submissions announced in the feed of `feed_day` (holidays aside)."""
    deadline_day = _previous_weekday(feed_day)
    start_day = _previous_weekday(deadline_day)
    start = dt.datetime.combine(start_day, _CUTOFF, tzinfo=EASTERN)
    end = dt.datetime.combine(deadline_day, _CUTOFF, tzinfo=EASTERN)
    return start.astimezone(dt.UTC), end.astimezone(dt.UTC)


def expected_feed_day(now: dt.datetime) -> dt.date:
    """The feed day of the latest announcement (20:00 US Eastern, Sunday to Thursday) before `now`."""
    local = now.astimezone(EASTERN)
    evening = local.date() if local.time() >= dt.time(20, 0) else local.date() - dt.timedelta(days=1)
    while evening.weekday() in (4, 5):  # no announcement on Friday or Saturday evenings
        evening -= dt.timedelta(days=1)
    return evening + dt.timedelta(days=1)


def announcement_expected(feed_day: dt.date, holidays: Iterable[dt.date] = ()) -> bool:
    """Whether arXiv announces the feed day (the evening before, Sun-Thu); `holidays` are feed days it skips."""
    return feed_day.weekday() < 5 and feed_day not in set(holidays)


def announcement_evening(feed_day: dt.date, at: dt.time, zone: ZoneInfo = EASTERN) -> dt.datetime:
    """The moment `at` on the evening that announces `feed_day` (the day before it), in UTC."""
    return dt.datetime.combine(feed_day - dt.timedelta(days=1), at, tzinfo=zone).astimezone(dt.UTC)


def feed_days_between(after: dt.date, before: dt.date) -> list[dt.date]:
    """Weekdays strictly between two feed days."""
    days, day = [], _next_weekday(after)
    while day < before:
        days.append(day)
        day = _next_weekday(day)
    return days
