"""The daily run: harvest -> match -> translate -> render and deliver, once per announcement day."""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from newsletter.arxiv_rate_limit import RequestPacer, shared_request_slots
from newsletter.config import Settings
from newsletter.db import engine_for
from newsletter.delivery import MailBackend, deliver_day, make_backend
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
    read_feed,
    store_day,
)
from newsletter.matching import select_papers_for_day
from newsletter.models import Run, RunStatus, utcnow
from newsletter.render import DigestRenderer
from newsletter.tokens import LinkSigner, signing_key
from newsletter.translate import Translator, make_translator, translate_selected

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


def run_daily(
    session: Session,
    settings: Settings,
    transports: Transports,
    day: dt.date | None = None,
    renderer: DigestRenderer | None = None,
) -> RunSummary:
    """The whole day, idempotent: a rerun resumes and never sends a digest twice."""
    started = time.perf_counter()
    try:
        announced_day, harvest_stats = harvest_stage(session, transports, day, settings.categories)
    except HarvestError as exc:
        session.rollback()
        log.error("harvest failed: %s", exc)
        failed_day = exc.day or day or expected_feed_day(utcnow())
        record_harvest_failure(session, failed_day, str(exc))
        return RunSummary(day=failed_day, status=RunStatus.FAILED, reason=f"harvest failed: {exc}")
    harvest_seconds = time.perf_counter() - started
    # Missed days caught up by this harvest get their own digests first, oldest first.
    for missed in harvest_stats.get("caught_up", []):
        _process_day(session, settings, transports, dt.date.fromisoformat(missed), renderer, {})
    if announced_day is None:
        return RunSummary(day=day, status=RunStatus.NO_ANNOUNCEMENT, reason=NO_ANNOUNCEMENT_REASON)
    return _process_day(session, settings, transports, announced_day, renderer, {"harvest": harvest_seconds})


def _process_day(
    session: Session,
    settings: Settings,
    transports: Transports,
    announced_day: dt.date,
    renderer: DigestRenderer | None,
    timings: dict[str, float],
) -> RunSummary:
    """Match, translate and deliver one harvested day."""
    run = claim_run(session, announced_day)
    stats: dict[str, Any] = {"harvest": dict((run.stats or {}).get("harvest", {}))}

    stage_start = time.perf_counter()
    match = select_papers_for_day(session, announced_day)
    session.commit()
    timings["match"] = time.perf_counter() - stage_start
    stats["match"] = vars(match)

    stage_start = time.perf_counter()
    translation = translate_selected(
        session, announced_day, transports.translator, settings.deepl_daily_character_budget
    )
    session.commit()
    timings["translate"] = time.perf_counter() - stage_start
    stats["translate"] = vars(translation)

    stage_start = time.perf_counter()
    signer = LinkSigner(signing_key(session, settings))
    session.commit()
    delivery = deliver_day(session, announced_day, settings, transports.mail, signer, renderer or DigestRenderer())
    timings["deliver"] = time.perf_counter() - stage_start
    stats["deliver"] = {k: v for k, v in vars(delivery).items() if k != "errors"}
    stats["seconds"] = {k: round(v, 3) for k, v in timings.items()}

    run = session.get(Run, run.id) or run
    run.billed_characters += translation.billed_characters
    previous = dict(run.stats or {})
    previous.update(stats)
    run.stats = previous
    run.finished_at = utcnow()
    if match.selections == 0:
        run.status, run.reason = RunStatus.COMPLETED, "no paper matched any subscriber's keywords"
    elif delivery.failed:
        run.status, run.reason = RunStatus.COMPLETED, f"{delivery.failed} deliveries failed"
    else:
        run.status, run.reason = RunStatus.COMPLETED, None
    session.add(run)
    session.commit()
    return RunSummary(day=announced_day, status=run.status, reason=run.reason, stats=stats)
