"""The operator's view of the last days: completeness, stage times, owed digests, outcomes, alerts.

Plain functions over the database; `newsletter status`, the /admin pages, /admin/status.json and
/metrics all read these.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlmodel import Session, col

from newsletter.delivery import owed_digests
from newsletter.models import (
    AdminAlert,
    DeliveryStatus,
    GapKind,
    HarvestGap,
    HarvestTally,
    Run,
    RunStatus,
    Stage,
    utcnow,
)
from newsletter.runs import delivery_counts, last_accepted, stage_rows, stage_seconds

DAYS_SHOWN = 30


@dataclass(frozen=True)
class Completeness:
    """What the feed listed for a day, what was stored, and the named difference."""

    new: int
    cross: int
    replace: int
    stored: int
    replace_not_held: int = 0
    details_skipped: int = 0
    missing: list[str] = field(default_factory=list)  # IDs the API did not return
    unparsed: list[str] = field(default_factory=list)  # feed items that could not be read, and why
    empty_categories: list[str] = field(default_factory=list)

    @property
    def announced(self) -> int:
        return self.new + self.cross + self.replace

    @property
    def complete(self) -> bool:
        """Whether everything the feed listed is stored with its details (no gap named)."""
        return not (self.missing or self.unparsed or self.empty_categories)

    def summary(self) -> str:
        """`announced N (new a, cross b, replace c), stored M`."""
        return (
            f"announced {self.announced} (new {self.new}, cross {self.cross}, replace {self.replace}), "
            f"stored {self.stored}"
        )

    def gaps(self) -> list[str]:
        """The difference in words, one phrase per kind."""
        phrases = []
        if self.missing:
            phrases.append(f"missing (the API did not return them): {', '.join(self.missing)}")
        if self.unparsed:
            phrases.append(f"unparsed feed items: {'; '.join(self.unparsed)}")
        if self.empty_categories:
            phrases.append(f"categories with an empty feed: {', '.join(self.empty_categories)}")
        if self.replace_not_held:
            phrases.append(f"{self.replace_not_held} replacements of papers never harvested here (not fetched)")
        if self.details_skipped:
            phrases.append(f"{self.details_skipped} papers no keyword matched kept from the feed (not fetched)")
        return phrases


def completeness(session: Session, day: dt.date) -> Completeness | None:
    """The day's completeness as recorded by its harvest (None: harvested before it was recorded, or not yet)."""
    tally = session.get(HarvestTally, day, populate_existing=True)
    if tally is None:
        return None
    gaps: dict[str, list[str]] = {kind.value: [] for kind in GapKind}
    for kind, subject in session.execute(
        select(col(HarvestGap.kind), col(HarvestGap.subject)).where(col(HarvestGap.day) == day).order_by(
            col(HarvestGap.subject)
        )
    ):
        gaps[str(kind)].append(subject)
    return Completeness(
        new=tally.announced_new,
        cross=tally.announced_cross,
        replace=tally.announced_replace,
        stored=tally.stored,
        replace_not_held=tally.replace_not_held,
        details_skipped=tally.details_skipped,
        missing=gaps[GapKind.NOT_RETURNED],
        unparsed=gaps[GapKind.UNPARSED],
        empty_categories=gaps[GapKind.EMPTY_CATEGORY],
    )


@dataclass
class DayReport:
    """One day as the operator sees it."""

    day: dt.date
    status: str
    reason: str | None
    completeness: Completeness | None
    owed: int
    sent: int
    failed: int
    pending: int
    selections: int | None
    translated: int | None
    billed_characters: int
    translation_notes: dict[str, object]
    stage_seconds: dict[str, float]
    feed_seen_at: dt.datetime | None
    last_accepted_at: dt.datetime | None
    alerts: list[AdminAlert] = field(default_factory=list)

    @property
    def latency_seconds(self) -> float | None:
        """From the feed showing the day to the mail server accepting its last digest."""
        if self.feed_seen_at is None or self.last_accepted_at is None:
            return None
        return (self.last_accepted_at - self.feed_seen_at).total_seconds()


def day_report(session: Session, run: Run, lease: dt.timedelta, alerts: list[AdminAlert] | None = None) -> DayReport:
    """The run's day: completeness, stage figures, delivery outcome, latency stamps."""
    stages = stage_rows(session, run)
    match, translate = stages.get(Stage.MATCH), stages.get(Stage.TRANSLATE)
    counts = delivery_counts(session, run.day)
    owed = owed_digests(session, run.day, lease).total if run.status != RunStatus.NO_ANNOUNCEMENT else 0
    return DayReport(
        day=run.day,
        status=str(run.status),
        reason=run.reason,
        completeness=completeness(session, run.day),
        owed=owed,
        sent=counts[DeliveryStatus.SENT],
        failed=counts[DeliveryStatus.FAILED],
        pending=counts[DeliveryStatus.CLAIMED],
        selections=match.selections if match else None,
        translated=translate.translated if translate else None,
        billed_characters=run.billed_characters,
        translation_notes=dict(translate.details) if translate else {},
        stage_seconds=stage_seconds(session, run),
        feed_seen_at=run.feed_seen_at,
        last_accepted_at=run.last_accepted_at or last_accepted(session, run.day),
        alerts=alerts or [],
    )


def recent_days(
    session: Session, lease: dt.timedelta, days: int = DAYS_SHOWN, today: dt.date | None = None
) -> list[DayReport]:
    """The days of the last `days` with a run or an alert, newest first."""
    since = (today or utcnow().date()) - dt.timedelta(days=days)
    alerts: dict[dt.date, list[AdminAlert]] = {}
    for alert in session.scalars(
        select(AdminAlert).where(col(AdminAlert.day) >= since).order_by(col(AdminAlert.raised_at))
    ):
        alerts.setdefault(alert.day, []).append(alert)
    reports = {
        run.day: day_report(session, run, lease, alerts.get(run.day))
        for run in session.scalars(select(Run).where(col(Run.day) >= since))
    }
    for day, raised in alerts.items():
        if day not in reports:
            # An alert for a day that has no run (the feed never showed it).
            reports[day] = DayReport(
                day=day, status="no_run", reason=raised[0].detail, completeness=None, owed=0, sent=0, failed=0,
                pending=0, selections=None, translated=None, billed_characters=0, translation_notes={},
                stage_seconds={}, feed_seen_at=None, last_accepted_at=None, alerts=raised,
            )
    return [reports[day] for day in sorted(reports, reverse=True)]


def _iso(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)  # SQLite hands back naive UTC
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def status_document(reports: list[DayReport]) -> dict[str, list[dict[str, object]]]:
    """The JSON twin of the operator page (GET /admin/status.json), newest day first."""
    days = []
    for report in reports:
        tally = report.completeness
        days.append(
            {
                "day": report.day.isoformat(),
                "status": report.status,
                "announced": {
                    "new": tally.new if tally else 0,
                    "cross": tally.cross if tally else 0,
                    "replace": tally.replace if tally else 0,
                },
                "stored": tally.stored if tally else 0,
                "missing": list(tally.missing) if tally else [],
                "owed": report.owed,
                "feed_seen_at": _iso(report.feed_seen_at),
                "last_accepted_at": _iso(report.last_accepted_at),
            }
        )
    return {"days": days}
