"""`newsletter status`: the last runs, why a day has no digest, deliveries and translation use."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

from sqlalchemy import func, select
from sqlmodel import Session

from newsletter.config import Settings
from newsletter.models import Delivery, Run, Subscriber
from newsletter.translate import billed_on


def status_lines(session: Session, settings: Settings, runs: int = 10) -> Iterator[str]:
    """Human-readable status, newest run first."""
    counts = dict(session.execute(select(Subscriber.status, func.count()).group_by(Subscriber.status)).all())
    yield "subscribers: " + (", ".join(f"{count} {status}" for status, count in sorted(counts.items())) or "none")
    latest = session.scalars(select(Run).order_by(Run.day.desc()).limit(runs)).all()
    if not latest:
        yield "runs: none yet"
    for run in latest:
        deliveries = dict(
            session.execute(
                select(Delivery.status, func.count()).where(Delivery.day == run.day).group_by(Delivery.status)
            ).all()
        )
        stats = run.stats or {}
        harvest = stats.get("harvest", {})
        match = stats.get("match", {})
        line = (
            f"{run.day}: {run.status}"
            + (f" - {run.reason}" if run.reason else "")
            + f" | announced {harvest.get('announced', '-')}, selections {match.get('selections', '-')}"
            + f", sent {deliveries.get('sent', 0)}, failed {deliveries.get('failed', 0)}"
            + f", pending {deliveries.get('claimed', 0)}, DeepL characters {run.billed_characters}"
        )
        seconds = stats.get("seconds", {})
        if seconds:
            line += " | seconds: " + ", ".join(
                f"{stage} {seconds[stage]:.1f}"
                for stage in ("harvest", "match", "translate", "deliver", "total")
                if isinstance(seconds.get(stage), int | float)
            )
        yield line
    today = dt.datetime.now(dt.UTC).date()
    month_start = dt.datetime.combine(today.replace(day=1), dt.time(), tzinfo=dt.UTC)
    month = session.scalar(
        select(func.coalesce(func.sum(Run.billed_characters), 0)).where(Run.started_at >= month_start)
    )
    yield f"DeepL characters billed: today {billed_on(session, today)}, this month {month}"
