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
from newsletter.delivery import MailBackend, deliver_day, make_backend
from newsletter.harvest import (
    ArxivApiSource,
    DetailsSource,
    FeedSource,
    HarvestError,
    HttpFeedSource,
    harvest,
)
from newsletter.matching import select_papers_for_day
from newsletter.models import Announcement, Run, RunStatus, utcnow
from newsletter.render import DigestRenderer
from newsletter.tokens import LinkSigner, signing_key
from newsletter.translate import Translator, make_translator, translate_selected

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
    translator = make_translator(settings)
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


def run_daily(
    session: Session,
    settings: Settings,
    transports: Transports,
    day: dt.date | None = None,
    renderer: DigestRenderer | None = None,
) -> RunSummary:
    """The whole day, idempotent: a rerun resumes and never sends a digest twice."""
    timings: dict[str, float] = {}
    started = time.perf_counter()
    try:
        announced_day, harvest_stats = harvest_stage(session, transports, day)
    except HarvestError as exc:
        session.rollback()
        if day is not None:
            run = claim_run(session, day)
            run.status, run.reason, run.finished_at = RunStatus.FAILED, str(exc), utcnow()
            session.add(run)
            session.commit()
        return RunSummary(day=day, status=RunStatus.FAILED, reason=str(exc))
    timings["harvest"] = time.perf_counter() - started
    if announced_day is None:
        reason = "arXiv made no announcement (weekend or holiday)"
        return RunSummary(day=day, status=RunStatus.NO_ANNOUNCEMENT, reason=reason)
    run = claim_run(session, announced_day)
    # A rerun that skipped the harvest keeps the first run's harvest figures.
    stats: dict[str, Any] = {} if "skipped" in harvest_stats else {"harvest": harvest_stats}

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
