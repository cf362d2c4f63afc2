"""Digest periods: when a subscriber's digest is due, and which period "once" is counted over.

A daily subscriber's period is the announcement day. A weekly subscriber's period starts on the weekday
they chose; their digest is due on the first announcement day on or after it (the first daily run of the
period) and holds every paper matched since their previous digest. The delivery row is unique per
subscriber and period, so a period is mailed once whatever runs again.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from sqlalchemy import Date, and_, case, exists, literal, or_, select
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import col

from newsletter.subscriber_tables import DigestFrequency, Subscriber

WEEKDAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
# How far back a matched paper that was never mailed is still carried into a digest: a week and the
# longest arXiv break (its end-of-year holidays), so a weekly digest or a switch of schedule loses nothing.
CARRY_DAYS = 21


def parse_frequency(value: str) -> DigestFrequency:
    """'daily' or 'weekly' (any case, spaces ignored); ValueError otherwise."""
    try:
        return DigestFrequency(value.strip().lower())
    except ValueError:
        raise ValueError(f"{value!r} is not a frequency: use daily or weekly") from None


def parse_weekday(value: str) -> int:
    """mon..sun (or the full English name, any case) as 0 (Monday) .. 6 (Sunday); ValueError otherwise."""
    text = value.strip().lower()
    for number, name in enumerate(WEEKDAY_NAMES):
        if len(text) >= 3 and (text == name or _FULL_NAMES[number].startswith(text)):
            return number
    raise ValueError(f"{value!r} is not a weekday: use mon, tue, wed, thu, fri, sat or sun")


_FULL_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def weekday_name(weekday: int) -> str:
    """0 -> 'mon' .. 6 -> 'sun'."""
    return WEEKDAY_NAMES[weekday % 7]


def period_start(day: dt.date, frequency: DigestFrequency, weekday: int) -> dt.date:
    """The period a digest sent on `day` counts for: the day itself, or the latest chosen weekday on or before it."""
    if frequency == DigestFrequency.WEEKLY:
        return day - dt.timedelta(days=(day.weekday() - weekday) % 7)
    return day


def is_due(day: dt.date, frequency: DigestFrequency, weekday: int, announcement_days: Iterable[dt.date]) -> bool:
    """Whether the run of `day` sends the digest: always for daily; for weekly, when no earlier
    announcement day of the period (in `announcement_days`) had a run that could have sent it."""
    if frequency != DigestFrequency.WEEKLY:
        return True
    start = period_start(day, frequency, weekday)
    return not any(start <= other < day for other in announcement_days)


# The same two rules as SQL over the subscriber row, so recipients are chosen in one query.


def period_column(day: dt.date) -> ColumnElement[dt.date]:
    """The subscriber's period for a digest sent on `day`, as a SQL expression over Subscriber."""
    starts = {weekday: literal(day - dt.timedelta(days=(day.weekday() - weekday) % 7), Date) for weekday in range(7)}
    weekly = case(starts, value=col(Subscriber.weekday), else_=literal(day, Date))
    return case((col(Subscriber.frequency) == DigestFrequency.WEEKLY, weekly), else_=literal(day, Date))


def due_clause(day: dt.date) -> ColumnElement[bool]:
    """SQL: the subscriber's digest is due on `day` (see is_due; a harvested run is an announcement day)."""
    # Here, not at the top: the subscriber service parses frequencies and weekdays with this module,
    # and a `newsletter subscribe` builds only the subscriber tables.
    from newsletter.models import Run

    earlier_in_period = exists(
        select(col(Run.day)).where(
            col(Run.harvested_at).is_not(None), col(Run.day) >= period_column(day), col(Run.day) < day
        )
    )
    return or_(col(Subscriber.frequency) != DigestFrequency.WEEKLY, and_(~earlier_in_period))


def carried_since(day: dt.date) -> dt.date:
    """The oldest selection day a digest sent on `day` may still hold."""
    return day - dt.timedelta(days=CARRY_DAYS)
