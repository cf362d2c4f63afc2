"""`newsletter status`: the last runs, why a day has no digest, deliveries and translation use."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

from sqlalchemy import func, select
from sqlmodel import Session, col

from newsletter.config import Settings
from newsletter.delivery import bounced_subscribers, owed_digests
from newsletter.models import Delivery, DeliveryStatus, Run, RunStatus, Stage, Subscriber, utcnow
from newsletter.operator import completeness
from newsletter.runs import STALE_RUN, delivery_counts, stage_rows, stage_seconds
from newsletter.translate import deepl_status_lines


def no_digest_reason(run: Run, sent: int, selections: int | None) -> str | None:
    """Why the run's day has no digest (None when digests went out or are still on their way)."""
    if run.status == RunStatus.NO_ANNOUNCEMENT:
        return "no announcement: " + (run.reason or "arXiv made no announcement")
    if run.status == RunStatus.FAILED:
        return "failure: " + (run.reason or "unknown reason") + " (retried on the next run)"
    if run.status == RunStatus.RUNNING and run.started_at < utcnow() - STALE_RUN:
        # A process killed outright records nothing; say so rather than show it running for ever.
        since = f"{run.started_at:%Y-%m-%d %H:%M} UTC"
        return f"stalled: running since {since}, its process probably died; the next run restarts it"
    if run.status == RunStatus.COMPLETED and sent == 0:
        if not selections:
            return "no matches: no paper matched any subscriber's keywords"
        return "no digest sent: " + (run.reason or "every delivery failed or was sent before")
    return None


def _missing_days(days: list[dt.date]) -> list[dt.date]:
    """Weekdays between recorded runs that have no run at all (the service was down)."""
    recorded = set(days)
    missing = []
    if days:
        day = min(days)
        while day < max(days):
            day += dt.timedelta(days=1)
            if day.weekday() < 5 and day not in recorded:
                missing.append(day)
    return missing


def status_lines(session: Session, settings: Settings, runs: int = 10) -> Iterator[str]:
    """Human-readable status, newest run first."""
    counts = dict(
        session.execute(select(col(Subscriber.status), func.count()).group_by(col(Subscriber.status))).all()
    )
    yield "subscribers: " + (", ".join(f"{count} {status}" for status, count in sorted(counts.items())) or "none")
    for address, error in bounced_subscribers(session):
        yield f"bounced: {address} ({error or 'no reply recorded'}), no longer mailed"
    latest = session.scalars(select(Run).order_by(col(Run.day).desc()).limit(runs)).all()
    if not latest:
        yield "runs: none yet"
    lease = dt.timedelta(seconds=settings.delivery_claim_lease_seconds)
    lines = [(run.day, run_line(session, run, lease)) for run in latest]
    for day in _missing_days([run.day for run in latest]):
        lines.append((day, f"{day}: no run recorded - no digest (the service did not run; the next run catches up)"))
    for _, line in sorted(lines, reverse=True):
        yield line
    yield from deepl_status_lines(session, settings)


def run_line(session: Session, run: Run, lease: dt.timedelta = dt.timedelta(minutes=10)) -> str:
    """One run: its outcome, why there is no digest, counts per stage, delivery outcome, seconds per stage."""
    deliveries = delivery_counts(session, run.day)
    stages = stage_rows(session, run)
    harvest, match = stages.get(Stage.HARVEST), stages.get(Stage.MATCH)
    announced = harvest.announced if harvest is not None else None
    selections = match.selections if match is not None else None
    sent = deliveries[DeliveryStatus.SENT]
    reason = no_digest_reason(run, sent, selections)
    tally = completeness(session, run.day)
    harvested = tally.summary() if tally is not None else f"announced {_count(announced)}"
    line = (
        f"{run.day}: {run.status}"
        + (" (caught up)" if run.caught_up else "")
        + (f" - no digest ({reason})" if reason else (f" - {run.reason}" if run.reason else ""))
        + f" | {harvested}, selections {_count(selections)}"
        + f", sent {sent}, failed {deliveries[DeliveryStatus.FAILED]}"
        + f", pending {deliveries[DeliveryStatus.CLAIMED]}, DeepL characters {run.billed_characters}"
    )
    if tally is not None and tally.gaps():
        line += " | " + "; ".join(tally.gaps())
    if run.status != RunStatus.RUNNING:
        line += " | delivery: " + delivery_outcome(session, run.day, lease)
    seconds = stage_seconds(session, run)
    if seconds:
        line += " | seconds: " + ", ".join(f"{stage} {value:.1f}" for stage, value in seconds.items())
    if run.feed_seen_at is not None and run.last_accepted_at is not None:
        latency = (run.last_accepted_at - run.feed_seen_at).total_seconds()
        line += f" | feed seen to last digest accepted: {latency:.0f} s"
    if run.last_harvest_failure is not None and run.last_harvest_failure_at is not None:
        line += (
            f" | last harvest attempt failed at {run.last_harvest_failure_at:%Y-%m-%dT%H:%M}:"
            f" {run.last_harvest_failure}"
        )
    return line


def delivery_outcome(session: Session, day: dt.date, lease: dt.timedelta) -> str:
    """The day's delivery in words: sent, owed (why, or whose claim lease it waits for), or failed (last reply)."""
    owed = owed_digests(session, day, lease)
    if owed.total:
        return "owed: " + (owed.describe() or "")
    refused = session.scalars(
        select(col(Delivery.error))
        .where(col(Delivery.day) == day, col(Delivery.status) == DeliveryStatus.FAILED)
        .order_by(col(Delivery.claimed_at).desc())
    ).all()
    if refused:
        return f"failed: {len(refused)} refused, last reply: {refused[0]}"
    return "sent"


def _count(value: int | None) -> str:
    return "-" if value is None else str(value)
