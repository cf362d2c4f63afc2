"""The daily run: harvest -> match -> translate -> render and deliver, once per announcement day."""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from newsletter.config import Settings
from newsletter.delivery import DeliveryResult, MailBackend, deliver_day, make_backend, recipients_for_day
from newsletter.harvest import (
    ArxivApiSource,
    DetailsSource,
    FeedSource,
    HarvestError,
    HttpFeedSource,
    harvest,
    parse_announcement_feed,
)
from newsletter.matching import MatchResult, select_papers_for_day
from newsletter.models import (
    Announcement,
    Delivery,
    DeliveryStatus,
    Run,
    RunStatus,
    Selection,
    Subscriber,
    SubscriberStatus,
    utcnow,
)
from newsletter.render import DigestRenderer
from newsletter.tokens import LinkSigner, signing_key
from newsletter.translate import DeepLTranslator, TranslateResult, Translator, translate_selected

log = logging.getLogger(__name__)


@dataclass
class Transports:
    """The outside world a run talks to; tests and the demo point these at local stand-ins."""

    feed: FeedSource
    details: DetailsSource
    translator: Translator | None
    mail: MailBackend


def production_transports(settings: Settings) -> Transports:
    """arXiv, DeepL and mail as configured by Settings."""
    translator = (
        DeepLTranslator(settings.deepl_auth_key, settings.deepl_server_url) if settings.deepl_auth_key else None
    )
    return Transports(
        feed=HttpFeedSource(settings.feed_url, timeout=settings.arxiv_timeout_seconds),
        details=ArxivApiSource(
            settings.arxiv_api_url,
            settings.arxiv_delay_seconds,
            settings.arxiv_timeout_seconds,
            settings.arxiv_max_retries,
        ),
        translator=translator,
        mail=make_backend(settings),
    )


@dataclass
class RunSummary:
    day: dt.date | None
    status: str
    reason: str | None = None
    stats: dict[str, Any] = field(default_factory=dict)


def day_is_harvested(session: Session, day: dt.date) -> bool:
    """Whether the day's announcements are stored already."""
    return bool(session.scalar(select(func.count()).select_from(Announcement).where(Announcement.day == day)))


def harvest_stage(session: Session, transports: Transports, day: dt.date | None) -> tuple[dt.date | None, dict]:
    """Harvest unless the day is stored already; returns the announcement day and stage stats."""
    if day is not None and day_is_harvested(session, day):
        return day, {"skipped": "already harvested"}
    result = harvest(session, transports.feed, transports.details)
    if result.day is None:
        return None, {"announced": 0}
    if day is not None and result.day != day:
        session.rollback()
        raise HarvestError(
            f"the announcement feed shows {result.day.isoformat()}, not {day.isoformat()}; "
            "that day cannot be harvested from the feed"
        )
    session.commit()
    return result.day, {
        "announced": result.announced,
        "replaced": result.replaced,
        "from_feed_only": len(result.from_feed_only),
    }


def claim_run(session: Session, day: dt.date) -> Run:
    """The day's run row, created once (unique on the day)."""
    run = session.scalars(select(Run).where(Run.day == day)).first()
    if run is not None:
        return run
    run = Run(day=day)
    try:
        with session.begin_nested():
            session.add(run)
        session.commit()
    except IntegrityError:
        session.rollback()
        run = session.scalars(select(Run).where(Run.day == day)).one()
    return run


# A run left "running" this long lost its tasks (a broker wiped, say); a new trigger may restart it.
STALE_RUN = dt.timedelta(hours=6)


def open_run(session: Session, day: dt.date, reopen_finished: bool) -> bool:
    """Start the day's run: True for the one caller that created or reopened its row (commits)."""
    if session.scalars(select(Run.id).where(Run.day == day)).first() is None:
        try:
            with session.begin_nested():
                session.add(Run(day=day))
            session.commit()
            return True
        except IntegrityError:
            session.rollback()
    run = _locked_run(session, day)
    assert run is not None
    reopenable = {RunStatus.FAILED, RunStatus.NO_ANNOUNCEMENT} | ({RunStatus.COMPLETED} if reopen_finished else set())
    stale = run.status == RunStatus.RUNNING and run.started_at < utcnow() - STALE_RUN
    if run.status not in reopenable and not stale:
        session.commit()
        return False
    # The harvest is not redone, so its figures stay; every later stage records itself again.
    kept = {key: value for key, value in (run.stats or {}).items() if key == "harvest"}
    if "harvest" in kept:
        kept["seconds"] = {"harvest": (run.stats or {}).get("seconds", {}).get("harvest")}
    run.status, run.reason, run.finished_at, run.started_at, run.stats = RunStatus.RUNNING, None, None, utcnow(), kept
    session.add(run)
    session.commit()
    return True


def _locked_run(session: Session, day: dt.date) -> Run | None:
    # Stage tasks on several workers write into the same row: serialize them on it.
    return session.scalars(
        select(Run).where(Run.day == day).with_for_update().execution_options(populate_existing=True)
    ).first()


def record_stage(session: Session, day: dt.date, stage: str, stats: dict[str, Any], seconds: float) -> None:
    """Store one stage's counts and duration in the day's run row (commits)."""
    run = _locked_run(session, day)
    if run is None:
        session.commit()
        return
    merged = dict(run.stats or {})
    merged[stage] = stats
    merged["seconds"] = {**merged.get("seconds", {}), stage: round(seconds, 3)}
    run.stats = merged
    session.add(run)
    session.commit()


def end_run(session: Session, day: dt.date, status: RunStatus, reason: str | None) -> None:
    """Mark the day's run as ended with `status` (commits)."""
    run = _locked_run(session, day)
    if run is not None:
        run.status, run.reason, run.finished_at = status, reason, utcnow()
        session.add(run)
    session.commit()


def run_is_open(session: Session, day: dt.date) -> bool:
    """Whether the day's run is still in progress (later stages skip a run that ended)."""
    status = session.scalar(select(Run.status).where(Run.day == day).execution_options(populate_existing=True))
    return status == RunStatus.RUNNING


def stage_recorded(session: Session, day: dt.date, stage: str) -> bool:
    """Whether the day's open run has recorded `stage` already (a redelivered task then skips it)."""
    stats = session.scalar(select(Run.stats).where(Run.day == day).execution_options(populate_existing=True))
    return stage in (stats or {})


def harvest_day(session: Session, transports: Transports, day: dt.date | None) -> tuple[dt.date | None, dict]:
    """Harvest the day (or the latest) and record it in the day's run; None when nothing was announced."""
    started = time.perf_counter()
    announced_day, stats = harvest_stage(session, transports, day)
    if announced_day is None:
        return None, stats
    claim_run(session, announced_day)
    # A rerun that skipped the harvest keeps the first run's harvest figures.
    if "skipped" not in stats:
        record_stage(session, announced_day, "harvest", stats, time.perf_counter() - started)
    return announced_day, stats


def match_day(session: Session, day: dt.date) -> MatchResult:
    """Select every subscriber's papers for the day and record the counts."""
    started = time.perf_counter()
    match = select_papers_for_day(session, day)
    session.commit()
    record_stage(session, day, "match", vars(match), time.perf_counter() - started)
    return match


def translate_day(session: Session, settings: Settings, translator: Translator | None, day: dt.date) -> TranslateResult:
    """Translate the day's selected papers and record the counts and billed characters."""
    started = time.perf_counter()
    translation = translate_selected(session, day, translator, settings.deepl_daily_character_budget)
    session.commit()
    run = _locked_run(session, day)
    if run is not None:
        run.billed_characters += translation.billed_characters
        session.add(run)
    session.commit()
    record_stage(session, day, "translate", vars(translation), time.perf_counter() - started)
    return translation


@dataclass
class PreparedDay:
    """A day harvested, matched and translated, ready to be delivered."""

    day: dt.date | None
    stats: dict[str, Any] = field(default_factory=dict)


def prepare_day(session: Session, settings: Settings, transports: Transports, day: dt.date | None) -> PreparedDay:
    """Harvest, match and translate the day; raises HarvestError when the feed or API cannot be used."""
    announced_day, harvest_stats = harvest_day(session, transports, day)
    if announced_day is None:
        return PreparedDay(day=None)
    open_run(session, announced_day, reopen_finished=True)
    stats: dict[str, Any] = {} if "skipped" in harvest_stats else {"harvest": harvest_stats}
    stats["match"] = vars(match_day(session, announced_day))
    stats["translate"] = vars(translate_day(session, settings, transports.translator, announced_day))
    return PreparedDay(day=announced_day, stats=stats)


def _unfinished(day: dt.date, *statuses: DeliveryStatus):  # type: ignore[no-untyped-def]
    """Recipients of the day whose delivery row is missing or in one of `statuses`."""
    recipients = (
        select(Subscriber.id)
        .join(Selection, Selection.subscriber_id == Subscriber.id)
        .where(Selection.day == day, Subscriber.status == SubscriberStatus.ACTIVE)
        .distinct()
        .subquery()
    )
    delivery = (Delivery.subscriber_id == recipients.c.id) & (Delivery.day == day)
    pending = Delivery.id.is_(None) | Delivery.status.in_(statuses)
    return select(recipients.c.id).outerjoin(Delivery, delivery).where(pending)


def delivery_chunks(session: Session, day: dt.date, chunk_size: int) -> list[list[int]]:
    """Split the recipients still owed a digest into chunks and record the fan-out (commits)."""
    retryable = _unfinished(day, DeliveryStatus.CLAIMED).union(
        select(Delivery.subscriber_id).where(
            Delivery.day == day, Delivery.status == DeliveryStatus.FAILED, Delivery.retryable
        )
    )
    recipients = recipients_for_day(session, day)
    owed = sorted(set(session.scalars(retryable)) & set(recipients))
    chunks = [owed[start:start + chunk_size] for start in range(0, len(owed), chunk_size)]
    run = _locked_run(session, day)
    if run is not None:
        stats = dict(run.stats or {})
        stats["fanout"] = {
            "recipients": len(recipients),
            "queued": len(owed),
            "chunks": len(chunks),
            "started_at": utcnow().isoformat(),
        }
        run.stats = stats
        session.add(run)
    session.commit()
    return chunks


def deliver_chunk(
    session: Session,
    settings: Settings,
    backend: MailBackend,
    day: dt.date,
    subscriber_ids: list[int],
    renderer: DigestRenderer,
) -> DeliveryResult:
    """Send the day's digests to these subscribers (each claimed first, so never twice)."""
    signer = LinkSigner(signing_key(session, settings))
    session.commit()
    return deliver_day(session, day, settings, backend, signer, renderer, subscriber_ids=subscriber_ids)


def claimed_elsewhere(session: Session, day: dt.date, subscriber_ids: list[int]) -> list[int]:
    """Of these subscribers, those whose digest another sender has claimed and not finished."""
    return list(
        session.scalars(
            select(Delivery.subscriber_id).where(
                Delivery.day == day,
                Delivery.subscriber_id.in_(subscriber_ids),
                Delivery.status == DeliveryStatus.CLAIMED,
            )
        )
    )


def delivery_counts(session: Session, day: dt.date) -> dict[str, int]:
    """How many of the day's digests are sent, failed and still claimed."""
    rows = dict(
        session.execute(
            select(Delivery.status, func.count()).where(Delivery.day == day).group_by(Delivery.status)
        ).all()
    )
    return {status.value: int(rows.get(status, 0)) for status in DeliveryStatus}


def finish_day(session: Session, day: dt.date, force: bool = False) -> Run | None:
    """Complete the day's run once no recipient is owed a digest (or at once if `force`); commits."""
    run = _locked_run(session, day)
    if run is None or run.status != RunStatus.RUNNING:
        session.commit()
        return run
    owed = session.scalars(_unfinished(day, DeliveryStatus.CLAIMED).limit(1)).first()
    if owed is not None and not force:
        session.commit()
        return None
    counts = delivery_counts(session, day)
    stats = dict(run.stats or {})
    fanout = stats.get("fanout", {})
    started = dt.datetime.fromisoformat(fanout["started_at"]) if "started_at" in fanout else utcnow()
    stats["deliver"] = {"recipients": fanout.get("recipients", 0), **counts}
    stats["seconds"] = {**stats.get("seconds", {}), "deliver": round((utcnow() - started).total_seconds(), 3)}
    stats["seconds"]["total"] = round((utcnow() - run.started_at).total_seconds(), 3)
    run.stats = stats
    run.status, run.finished_at = RunStatus.COMPLETED, utcnow()
    if not stats.get("match", {}).get("selections", 1) and not counts["sent"]:
        run.reason = "no paper matched any subscriber's keywords"
    elif counts["failed"]:
        run.reason = f"{counts['failed']} deliveries failed"
    elif counts["claimed"]:
        run.reason = f"{counts['claimed']} digests are still being sent by another worker"
    else:
        run.reason = None
    session.add(run)
    session.commit()
    return run


def run_daily(
    session: Session,
    settings: Settings,
    transports: Transports,
    day: dt.date | None = None,
    renderer: DigestRenderer | None = None,
) -> RunSummary:
    """The whole day in this process, idempotent: a rerun resumes and never sends a digest twice."""
    try:
        prepared = prepare_day(session, settings, transports, day)
    except HarvestError as exc:
        session.rollback()
        if day is not None:
            claim_run(session, day)
            end_run(session, day, RunStatus.FAILED, str(exc))
        return RunSummary(day=day, status=RunStatus.FAILED, reason=str(exc))
    if prepared.day is None:
        reason = "arXiv made no announcement (weekend or holiday)"
        return RunSummary(day=day, status=RunStatus.NO_ANNOUNCEMENT, reason=reason)
    renderer = renderer or DigestRenderer()
    delivery = DeliveryResult()
    for chunk in delivery_chunks(session, prepared.day, settings.delivery_chunk_size):
        done = deliver_chunk(session, settings, transports.mail, prepared.day, chunk, renderer)
        delivery.sent, delivery.failed = delivery.sent + done.sent, delivery.failed + done.failed
        delivery.skipped += done.skipped
        delivery.bounced += done.bounced
    run = finish_day(session, prepared.day, force=True)
    assert run is not None
    stats = {**prepared.stats, "deliver": {k: v for k, v in vars(delivery).items() if k != "errors"}}
    stats["seconds"] = dict((run.stats or {}).get("seconds", {}))
    return RunSummary(day=prepared.day, status=run.status, reason=run.reason, stats=stats)


@dataclass
class DayProgress:
    """Where the day's run is, for a progress display."""

    status: str
    reason: str | None
    stage: str
    recipients: int
    sent: int
    failed: int
    claimed: int
    stats: dict[str, Any]


def day_progress(session: Session, day: dt.date) -> DayProgress | None:
    """The day's run status, its current stage and its delivery counts; None before the run exists."""
    run = session.scalars(select(Run).where(Run.day == day).execution_options(populate_existing=True)).first()
    if run is None:
        return None
    stats = dict(run.stats or {})
    stage = next(
        (name for key, name in _NEXT_STAGE if key in stats),
        "harvest",
    )
    counts = delivery_counts(session, day)
    return DayProgress(
        status=run.status,
        reason=run.reason,
        stage=stage if run.status == RunStatus.RUNNING else str(run.status),
        recipients=int(stats.get("fanout", {}).get("recipients", 0)),
        sent=counts[DeliveryStatus.SENT],
        failed=counts[DeliveryStatus.FAILED],
        claimed=counts[DeliveryStatus.CLAIMED],
        stats=stats,
    )


# The stage that runs once the keyed one is recorded, latest first.
_NEXT_STAGE = (("fanout", "deliver"), ("translate", "fan-out"), ("match", "translate"), ("harvest", "match"))


def latest_announcement_day(feed: FeedSource) -> dt.date | None:
    """The day the announcement feed shows now, None on a day without announcement."""
    return parse_announcement_feed(feed.fetch_feed()).day
