"""The daily run: harvest -> match -> translate -> render and deliver, once per announcement day."""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from newsletter.config import Settings
from newsletter.db import engine_for
from newsletter.delivery import DeliveryResult, MailBackend, deliver_day, make_backend, recipients_for_day
from newsletter.harvest import (
    MAX_CATCH_UP_DAYS,
    AnnouncementFeed,
    ArxivApiSource,
    DayHarvest,
    DetailsSource,
    FeedSource,
    HarvestError,
    HttpFeedSource,
    SubmissionSearch,
    collect_feed_day,
    collect_missed_days,
    expected_feed_day,
    feed_days_between,
    is_harvested,
    last_harvested_before,
    parse_announcement_feed,
    read_feed,
    store_day,
)
from newsletter.matching import MatchResult, select_papers_for_day
from newsletter.models import (
    Delivery,
    DeliveryStatus,
    Run,
    RunStatus,
    Selection,
    Subscriber,
    SubscriberStatus,
    utcnow,
)
from newsletter.pacing import RequestPacer, shared_request_slots
from newsletter.render import DigestRenderer
from newsletter.tokens import LinkSigner, signing_key
from newsletter.translate import TranslateResult, Translator, make_translator, translate_selected

log = logging.getLogger(__name__)

NO_ANNOUNCEMENT_REASON = "arXiv made no announcement (weekend or holiday)"


@dataclass
class Transports:
    """The outside world a run talks to; tests and the demo point these at local stand-ins."""

    feed: FeedSource
    details: DetailsSource
    translator: Translator | None
    mail: MailBackend


def production_transports(settings: Settings) -> Transports:
    """arXiv, DeepL and mail as configured by Settings."""
    translator = make_translator(settings)
    return Transports(
        feed=HttpFeedSource(
            settings.feed_url,
            settings.arxiv_timeout_seconds,
            settings.arxiv_max_retries,
            settings.arxiv_retry_base_seconds,
        ),
        details=shared_arxiv_source(
            settings.arxiv_api_url,
            settings.arxiv_delay_seconds,
            settings.arxiv_timeout_seconds,
            settings.arxiv_max_retries,
            settings.arxiv_retry_base_seconds,
            settings.redis_url,
            settings.database_url,
        ),
        translator=translator,
        mail=make_backend(settings),
    )


@lru_cache(maxsize=4)
def shared_arxiv_source(
    api_url: str,
    delay_seconds: float,
    timeout: float,
    retries: int,
    backoff_seconds: float,
    redis_url: str,
    database_url: str,
) -> ArxivApiSource:
    """The process's one arXiv client, paced with every other process through Redis or the database."""
    slots = shared_request_slots(redis_url, engine_for(database_url), delay_seconds)
    return ArxivApiSource(api_url, delay_seconds, timeout, retries, RequestPacer(slots), backoff_seconds)


@dataclass
class RunSummary:
    day: dt.date | None
    status: str
    reason: str | None = None
    stats: dict[str, Any] = field(default_factory=dict)


def harvest_stage(
    session: Session,
    transports: Transports,
    day: dt.date | None = None,
    categories: Sequence[str] = (),
) -> tuple[dt.date | None, dict]:
    """Store the papers announced on `day` (default: the feed's day) and on missed days before it.

    Everything is fetched first and written in one transaction; a day stored already is never fetched
    again. Missed days are rebuilt from the API when `categories` are given. Returns the day (None when
    arXiv made no announcement) and stage stats, with "caught_up" listing the missed days now stored.
    """
    if day is not None and is_harvested(session, day):
        return day, {"skipped": "already harvested"}
    session.commit()  # nothing of ours stays pending while we wait on the network
    feed = read_feed(transports.feed)
    current = feed.day if feed.has_announcement else None
    target = day or current
    try:
        collected = _collect_days(session, transports, feed, target, categories)
    except HarvestError as exc:
        exc.day = exc.day or target
        raise
    for day_harvest in collected:
        store_day(session, day_harvest)
    if target is None:
        _record_no_announcement(session, feed.day or expected_feed_day(utcnow()))
    else:
        _forget_failure_note(session, target)
    try:
        session.commit()
    except IntegrityError as exc:
        # Another run stored the same day between our checks and our commit: its rows stand.
        session.rollback()
        if target is not None and is_harvested(session, target):
            return target, {"skipped": "harvested by a concurrent run"}
        raise HarvestError("another run was storing the same days at the same time; try again") from exc
    caught_up = [d.day.isoformat() for d in collected if d.day != target]
    mine = next((d for d in collected if d.day == target), None)
    stats = mine.stats() if mine else {"skipped": "already harvested"} if target else {"announced": 0}
    if caught_up:
        stats["caught_up"] = caught_up
    return target, stats


def _collect_days(
    session: Session,
    transports: Transports,
    feed: AnnouncementFeed,
    target: dt.date | None,
    categories: Sequence[str],
) -> list[DayHarvest]:
    """Fetch (without writing) the target day and the missed days before it."""
    current = feed.day if feed.has_announcement else None
    if target is not None and current is not None and target > current:
        raise HarvestError(f"{target} is not announced yet: the announcement feed shows {current}")
    if target is not None and target != current and not isinstance(transports.details, SubmissionSearch):
        shown = current.isoformat() if current else "no announcement"
        raise HarvestError(f"the announcement feed shows {shown}, not {target}; that day cannot be harvested here")
    until = target or feed.day or expected_feed_day(utcnow())
    also = target if target is not None and target != current else None
    collected = _collect_missed(session, transports, until, also, categories, feed)
    if target is not None and target == current and not is_harvested(session, target):
        collected.append(collect_feed_day(session, feed, transports.details))
    return collected


def _collect_missed(
    session: Session,
    transports: Transports,
    until: dt.date,
    also: dt.date | None,
    categories: Sequence[str],
    feed: AnnouncementFeed,
) -> list[DayHarvest]:
    """Days between the last harvested one and `until` (plus `also`, a requested past day), from the API."""
    if not categories or not isinstance(transports.details, SubmissionSearch):
        return []
    last = last_harvested_before(session, until)
    days = feed_days_between(last, until) if last else []
    if len(days) > MAX_CATCH_UP_DAYS:
        log.warning("%d feed days missed; catching up the last %d (use `newsletter harvest --from`)",
                    len(days), MAX_CATCH_UP_DAYS)
        days = days[-MAX_CATCH_UP_DAYS:]
    if also is not None:
        days.append(also)
    days = sorted({d for d in days if not is_harvested(session, d)})
    exclude = [item.record.arxiv_id for item in feed.items]
    return collect_missed_days(session, transports.details, categories, days, exclude)


def _forget_failure_note(session: Session, day: dt.date) -> None:
    run = session.scalars(select(Run).where(Run.day == day)).first()
    if run is not None and "last_harvest_failure" in (run.stats or {}):
        run.stats = {k: v for k, v in run.stats.items() if k != "last_harvest_failure"}
        session.add(run)


def _record_no_announcement(session: Session, day: dt.date) -> None:
    run = session.scalars(select(Run).where(Run.day == day)).first()
    if run is not None and run.harvested_at is not None:
        return
    run = run or Run(day=day)
    run.status, run.reason, run.finished_at = RunStatus.NO_ANNOUNCEMENT, NO_ANNOUNCEMENT_REASON, utcnow()
    session.add(run)


def record_harvest_failure(session: Session, day: dt.date, reason: str) -> None:
    """Note on the day's run why its harvest failed; the next run tries again."""
    run = session.scalars(select(Run).where(Run.day == day)).first()
    if run is not None and run.harvested_at is not None:
        # The day itself is stored (the failure was a later or missed day's): keep its outcome, note the failure.
        run.stats = {**(run.stats or {}), "last_harvest_failure": {"at": utcnow().isoformat(), "reason": reason}}
        session.add(run)
        session.commit()
        return
    run = run or Run(day=day)
    failures = int((run.stats or {}).get("harvest_failures", 0)) + 1
    run.status, run.reason, run.finished_at = RunStatus.FAILED, f"harvest failed: {reason}", utcnow()
    run.stats = {**(run.stats or {}), "harvest_failures": failures}
    session.add(run)
    session.commit()


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


# The reason column is Text, but a status line and a log line should stay readable.
MAX_REASON = 2000


class StageFailed(Exception):
    """A stage of the day's run raised unexpectedly; the run is recorded as failed (the cause is chained)."""

    def __init__(self, day: dt.date, reason: str) -> None:
        super().__init__(f"{day}: {reason}")
        self.day, self.reason = day, reason


def failure_reason(stage: str, exc: BaseException) -> str:
    """One line naming the stage and the error, as the run row and the command show it."""
    # A database error's own text carries the SQL and its parameters; its driver's error says what happened.
    cause = getattr(exc, "orig", None) or exc
    lines = str(cause).strip().splitlines()
    return f"{stage} failed: {type(cause).__name__}" + (f": {lines[0].strip()}" if lines else "")


def fail_run(session: Session, day: dt.date, reason: str) -> None:
    """Record the day's run as failed with `reason`, creating its row if need be; the next run retries it.

    Give it a session of its own: the one the stage used may hold a transaction the error has
    aborted, and a rollback there must not take the failure with it.
    """
    claim_run(session, day)
    end_run(session, day, RunStatus.FAILED, reason[:MAX_REASON])


@contextmanager
def failing_run_on_error(
    session: Session, day: dt.date, stage: str, expected: type[Exception] | tuple[type[Exception], ...] = ()
) -> Iterator[None]:
    """Run a stage; if it raises, record the day's run as failed in a fresh session and raise StageFailed.

    `expected` errors pass through untouched: their caller records them its own way.
    """
    try:
        yield
    except expected:
        raise
    except Exception as exc:
        raise StageFailed(day, _record_failure(session, day, stage, exc)) from exc
    except KeyboardInterrupt as exc:
        # An operator's Ctrl-C: the day is retried, not left "running"; the interrupt goes on as it is.
        _record_failure(session, day, stage, exc)
        raise


def _record_failure(session: Session, day: dt.date, stage: str, exc: BaseException) -> str:
    reason = failure_reason(stage, exc)
    session.rollback()
    try:
        with Session(session.get_bind(), expire_on_commit=False) as fresh:
            fail_run(fresh, day, reason)
    except Exception:  # the database may be what failed; the log and the command keep the reason
        log.exception("could not record the failed run of %s", day)
    return reason


def run_is_open(session: Session, day: dt.date) -> bool:
    """Whether the day's run is still in progress (later stages skip a run that ended)."""
    status = session.scalar(select(Run.status).where(Run.day == day).execution_options(populate_existing=True))
    return status == RunStatus.RUNNING


def stage_recorded(session: Session, day: dt.date, stage: str) -> bool:
    """Whether the day's open run has recorded `stage` already (a redelivered task then skips it)."""
    stats = session.scalar(select(Run.stats).where(Run.day == day).execution_options(populate_existing=True))
    return stage in (stats or {})


def harvest_day(
    session: Session, transports: Transports, day: dt.date | None, categories: Sequence[str] = ()
) -> tuple[dt.date | None, dict]:
    """Harvest the day (or the latest) and record it in the day's run; None when nothing was announced."""
    started = time.perf_counter()
    announced_day, stats = harvest_stage(session, transports, day, categories)
    if announced_day is None:
        return None, stats
    claim_run(session, announced_day)
    # A rerun that skipped the harvest keeps the first run's harvest figures.
    if "skipped" not in stats:
        record_stage(session, announced_day, "harvest", stats, time.perf_counter() - started)
    return announced_day, stats


def match_day(session: Session, settings: Settings, day: dt.date) -> MatchResult:
    """Select every subscriber's papers for the day and record the counts."""
    started = time.perf_counter()
    match = select_papers_for_day(session, day, settings.match_processes)
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
        # Before the feed is read the day may be unknown: the failure goes to the day arXiv should show.
        with failing_run_on_error(session, day or expected_feed_day(utcnow()), "harvest", expected=HarvestError):
            announced_day, harvest_stats = harvest_day(session, transports, day, settings.categories)
    except HarvestError as exc:
        session.rollback()
        log.error("harvest failed: %s", exc)
        failed_day = exc.day or day or expected_feed_day(utcnow())
        record_harvest_failure(session, failed_day, str(exc))
        return RunSummary(day=failed_day, status=RunStatus.FAILED, reason=f"harvest failed: {exc}")
    renderer = renderer or DigestRenderer()
    # Missed days caught up by this harvest get their own digests first, oldest first.
    for missed in harvest_stats.get("caught_up", []):
        deliver_harvested_day(session, settings, transports, dt.date.fromisoformat(missed), renderer)
    if announced_day is None:
        return RunSummary(day=day, status=RunStatus.NO_ANNOUNCEMENT, reason=NO_ANNOUNCEMENT_REASON)
    summary = deliver_harvested_day(session, settings, transports, announced_day, renderer)
    if "skipped" not in harvest_stats:
        summary.stats["harvest"] = harvest_stats
    return summary


def deliver_harvested_day(
    session: Session, settings: Settings, transports: Transports, day: dt.date, renderer: DigestRenderer
) -> RunSummary:
    """Match, translate and deliver a harvested day in this process, then complete its run.

    A stage that raises leaves the run failed with its reason (StageFailed), never "running".
    """
    with failing_run_on_error(session, day, "start"):
        open_run(session, day, reopen_finished=True)
    with failing_run_on_error(session, day, "match"):
        match = match_day(session, settings, day)
    with failing_run_on_error(session, day, "translate"):
        translation = translate_day(session, settings, transports.translator, day)
    with failing_run_on_error(session, day, "deliver"):
        delivery = _deliver_owed(session, settings, transports.mail, day, renderer)
        run = finish_day(session, day, force=True)
    assert run is not None
    stats: dict[str, Any] = {"match": vars(match), "translate": vars(translation)}
    stats["deliver"] = {k: v for k, v in vars(delivery).items() if k != "errors"}
    stats["seconds"] = dict((run.stats or {}).get("seconds", {}))
    return RunSummary(day=day, status=run.status, reason=run.reason, stats=stats)


def _deliver_owed(
    session: Session, settings: Settings, backend: MailBackend, day: dt.date, renderer: DigestRenderer
) -> DeliveryResult:
    """Send the day's digests still owed, chunk by chunk, and add up the outcomes."""
    delivery = DeliveryResult()
    for chunk in delivery_chunks(session, day, settings.delivery_chunk_size):
        done = deliver_chunk(session, settings, backend, day, chunk, renderer)
        delivery.sent, delivery.failed = delivery.sent + done.sent, delivery.failed + done.failed
        delivery.skipped += done.skipped
        delivery.bounced += done.bounced
    return delivery


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
    parsed = parse_announcement_feed(feed.fetch_feed())
    return parsed.day if parsed.has_announcement else None
