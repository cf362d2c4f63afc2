"""Celery tasks: thin wrappers that open a session and call one stage function."""

from __future__ import annotations

import datetime as dt

from newsletter.config import get_settings
from newsletter.db import engine_for, session_scope
from newsletter.pipeline import production_transports, run_daily
from workers.celery_app import app


@app.task(name="newsletter.run_daily", bind=True, max_retries=5, soft_time_limit=3600, time_limit=3900)
def run_daily_task(self, day: str | None = None) -> dict:  # type: ignore[no-untyped-def]
    """The whole daily run for `day` (ISO date) or the latest announcement."""
    settings = get_settings()
    with session_scope(engine_for(settings.database_url)) as session:
        summary = run_daily(
            session, settings, production_transports(settings), dt.date.fromisoformat(day) if day else None
        )
    return {"day": summary.day.isoformat() if summary.day else None, "status": summary.status, "reason": summary.reason}
