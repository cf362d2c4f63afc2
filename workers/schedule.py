"""The beat schedule: poll the announcement feed through the night after arXiv announces (20:00 Eastern)."""

from __future__ import annotations

import datetime as dt

from celery.schedules import crontab

from newsletter.config import Settings

POLL_TASK = "newsletter.poll_announcement"


def poll_hours(start: dt.time, end: dt.time) -> list[int]:
    """The clock hours a polling window touches; it may run past midnight (20:30 to 04:00)."""
    first, last = start.hour, end.hour
    if first <= last:
        return list(range(first, last + 1))
    return list(range(first, 24)) + list(range(0, last + 1))


def in_poll_window(now: dt.time, start: dt.time, end: dt.time) -> bool:
    """Whether `now` lies in [start, end], a window that may run past midnight."""
    if start <= end:
        return start <= now <= end
    return now >= start or now <= end


def poll_crontab(settings: Settings) -> crontab:
    """Every NEWSLETTER_BEAT_POLL_EVERY_MINUTES in the hours of the window (in the Celery time zone)."""
    return crontab(
        minute=f"*/{settings.beat_poll_every_minutes}",
        hour=",".join(str(hour) for hour in poll_hours(settings.beat_poll_start, settings.beat_poll_end)),
    )


def beat_schedule(settings: Settings) -> dict:
    """Celery's beat_schedule; the task itself drops the ticks that fall outside the exact window."""
    return {
        "poll-arxiv-announcement": {
            "task": POLL_TASK,
            "schedule": poll_crontab(settings),
            # A tick nobody picked up before the next one is worthless.
            "options": {"expires": settings.beat_poll_every_minutes * 60},
        }
    }
