"""`newsletter run-daily --via-celery`: enqueue the day and wait for it."""

from __future__ import annotations

import datetime as dt

from newsletter.config import Settings
from newsletter.pipeline import RunSummary


def run_via_celery(settings: Settings, day: dt.date | None, timeout: float = 3600) -> RunSummary:
    """Enqueue the daily run on the workers and wait for its outcome."""
    from workers.tasks import run_daily_task

    result = run_daily_task.delay(day.isoformat() if day else None).get(timeout=timeout)
    return RunSummary(
        day=dt.date.fromisoformat(result["day"]) if result["day"] else day,
        status=result["status"],
        reason=result["reason"],
    )
