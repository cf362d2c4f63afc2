"""The daily run: harvest -> match -> translate -> render and deliver, once per announcement day."""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col

from newsletter import runs
from newsletter.config import Settings
from newsletter.db import engine_for
from newsletter.delivery import DeliveryResult, deliver_day, owed_digests, recipients_for_day, recipients_query
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
    store_feed_text,
)
from newsletter.harvest.records import PaperRecord
from newsletter.harvest.store import Interest
from newsletter.keywords import PaperText
from newsletter.mail import MailBackend, make_backend
from newsletter.matching import MatchResult, keys_anyone_matches, select_papers_for_day
from newsletter.models import (
    Delivery,
    DeliveryStatus,
    Run,
    RunStatus,
    Stage,
    utcnow,
)
from newsletter.pacing import RequestPacer, shared_request_slots
from newsletter.render import DigestRenderer
from newsletter.tokens import LinkSigner, signing_key
from newsletter.translate import (
    TranslateResult,
    Translator,
    make_translator,
    papers_to_translate,
    translate_selected,
)

log = logging.getLogger(__name__)

NO_ANNOUNCEMENT_REASON = "arXiv made no announcement (weekend or holiday)"


@dataclass
class Transports:
    """The outside world a run talks to; tests and the demo point these at local stand-ins."""

    feed: FeedSource
    details: DetailsSource
    translator: Translator | None
    mail: MailBackend


def production_feed(settings: Settings) -> HttpFeedSource:
    """The announcement feed of the configured categories, over HTTP."""
    return HttpFeedSource(
        settings.feed_url, settings.arxiv_timeout_seconds, settings.arxiv_max_retries, settings.arxiv_retry_base_seconds
    )


def production_transports(settings: Settings) -> Transports:
    """arXiv, DeepL and mail as configured by Settings."""
    translator = make_translator(settings)
    return Transports(
        feed=production_feed(settings),
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
    """What a run of a day did: its outcome, the stages' results as shown, and seconds per stage."""

    day: dt.date | None
    status: str
    reason: str | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    # Earlier days this run delivered first (caught up, or resumed with digests owed), oldest first.
    earlier: list[RunSummary] = field(default_factory=list)


@dataclass
class HarvestOutcome:
    """What a harvest call did for its day and for the missed days before it."""

    day: dt.date | None  # None: arXiv made no announcement
    counts: dict[str, Any] = field(default_factory=dict)  # the day's figures (empty when skipped)
    caught_up: list[dt.date] = field(default_factory=list)  # missed days stored now, oldest first
    skipped: str | None = None  # why the day was not harvested again
    # Papers whose translation of the feed's words was dropped: the API's text differs (store_day).
    retranslate: list[str] = field(default_factory=list)


@dataclass
class EarlyStart:
    """How a harvest lets match and translate start before the API's details are in (the workers' way)."""

    # Called once the day's announcements and the feed's text are committed.
    text_ready: Callable[[dt.date], None]
    # Held while the details are written, so that no stage reads the day's papers while they change.
    storing: Callable[[], AbstractContextManager[object]]


def harvest_stage(
    session: Session,
    transports: Transports,
    day: dt.date | None = None,
    categories: Sequence[str] = (),
    interest: Interest | None = None,
    early: EarlyStart | None = None,
) -> HarvestOutcome:
    """Store the papers announced on `day` (default: the feed's day) and on missed days before it.

    Everything is fetched first and written in one transaction; a day stored already is never fetched
    again. Missed days are rebuilt from the API when `categories` are given; the outcome lists them.
    With `early`, the feed's day is first stored with the feed's own text (committed) and
    `early.text_ready(day)` called, so later stages can start while the API's details are fetched.
    """
    if day is not None and is_harvested(session, day):
        return HarvestOutcome(day, skipped="already harvested")
    session.commit()  # nothing of ours stays pending while we wait on the network
    read_at = utcnow()
    feed = read_feed(transports.feed)
    current = feed.day if feed.has_announcement else None
    target = day or current
    if early is not None and target is not None and target == current and not is_harvested(session, target):
        store_feed_text(session, feed, categories)
        session.commit()
        early.text_ready(target)
    try:
        collected = _collect_days(session, transports, feed, target, categories, interest)
    except HarvestError as exc:
        exc.day = exc.day or target
        raise
    with early.storing() if early is not None else nullcontext():
        return _store_days(session, collected, target, feed, read_at)


def _store_days(
    session: Session, collected: list[DayHarvest], target: dt.date | None, feed: AnnouncementFeed, read_at: dt.datetime
) -> HarvestOutcome:
    """Write the collected days in one transaction and say what was done."""
    current = feed.day if feed.has_announcement else None
    # A run that failed in a later stage beside this harvest stays failed; a missed day's run starts afresh.
    dropped = [arxiv_id for day_harvest in collected
               for arxiv_id in store_day(session, day_harvest, reopen_failed=day_harvest.day != target)]  # fmt: skip
    caught_up = sorted(d.day for d in collected if d.day != target)
    runs.mark_caught_up(session, caught_up)
    if target is not None and target == current:
        runs.note_feed_seen(session, target, read_at)
    if target is None:
        runs.record_no_announcement(session, feed.day or expected_feed_day(utcnow()), NO_ANNOUNCEMENT_REASON)
    else:
        runs.clear_harvest_failure(session, target)
    try:
        session.commit()
    except IntegrityError as exc:
        # Another run stored the same day between our checks and our commit: its rows stand.
        session.rollback()
        if target is not None and is_harvested(session, target):
            return HarvestOutcome(target, skipped="harvested by a concurrent run")
        raise HarvestError("another run was storing the same days at the same time; try again") from exc
    mine = next((d for d in collected if d.day == target), None)
    if mine is not None:
        return HarvestOutcome(target, mine.stats(), caught_up, retranslate=dropped)
    if target is None:
        return HarvestOutcome(None, {"announced": 0}, caught_up)
    return HarvestOutcome(target, caught_up=caught_up, skipped="already harvested")


def _collect_days(
    session: Session,
    transports: Transports,
    feed: AnnouncementFeed,
    target: dt.date | None,
    categories: Sequence[str],
    interest: Interest | None = None,
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
        collected.append(collect_feed_day(session, feed, transports.details, categories, interest))
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


@contextmanager
def failing_run_on_error(
    session: Session,
    day: dt.date,
    stage: Stage | None,
    expected: type[Exception] | tuple[type[Exception], ...] = (),
) -> Iterator[None]:
    """Run a stage (None: opening the run); if it raises, record the run failed in a fresh session, raise StageFailed.

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


def _record_failure(session: Session, day: dt.date, stage: Stage | None, exc: BaseException) -> str:
    reason = failure_reason(str(stage) if stage else "start", exc)
    session.rollback()
    try:
        with Session(session.get_bind(), expire_on_commit=False) as fresh:
            runs.fail_run(fresh, day, reason, stage)
    except Exception:  # the database may be what failed; the log and the command keep the reason
        log.exception("could not record the failed run of %s", day)
    return reason


def details_interest(session: Session, settings: Settings) -> Interest | None:
    """With NEWSLETTER_ARXIV_DETAILS=selected: which feed records some subscriber's keywords match."""
    if settings.arxiv_details != "selected":
        return None

    def wanted(records: Sequence[PaperRecord]) -> set[str]:
        texts = (PaperText(r.arxiv_id, r.title, r.abstract, r.authors, r.categories) for r in records)
        return keys_anyone_matches(session, texts)

    return wanted


def harvest_day(
    session: Session,
    transports: Transports,
    day: dt.date | None,
    categories: Sequence[str] = (),
    interest: Interest | None = None,
    early: EarlyStart | None = None,
) -> HarvestOutcome:
    """Harvest the day (or the latest) and record it in its run; outcome.day is None when nothing was announced."""
    started = time.perf_counter()
    outcome = harvest_stage(session, transports, day, categories, interest, early)
    if outcome.day is None:
        return outcome
    runs.claim_run(session, outcome.day)
    # A rerun that skipped the harvest keeps the first run's harvest figures.
    if outcome.skipped is None:
        announced = int(outcome.counts.get("announced", 0))
        details = {key: value for key, value in outcome.counts.items() if key != "announced"}
        runs.record_stage(
            session, outcome.day, Stage.HARVEST, time.perf_counter() - started, details, announced=announced
        )
    return outcome


def match_day(session: Session, settings: Settings, day: dt.date) -> MatchResult:
    """Select every subscriber's papers for the day and record the counts."""
    started = time.perf_counter()
    match = select_papers_for_day(session, day, settings.match_processes, settings.feedback_closeness)
    session.commit()
    details = {key: value for key, value in vars(match).items() if key != "selections"}
    runs.record_stage(session, day, Stage.MATCH, time.perf_counter() - started, details, selections=match.selections)
    return match


def translate_day(session: Session, settings: Settings, translator: Translator | None, day: dt.date) -> TranslateResult:
    """Translate the day's selected papers and record the counts and billed characters."""
    started = time.perf_counter()
    translation = translate_selected(session, day, translator, settings.deepl_daily_character_budget)
    session.commit()
    runs.add_billed_characters(session, day, translation.billed_characters)
    details = {key: value for key, value in vars(translation).items() if key != "translated"}
    runs.record_stage(
        session, day, Stage.TRANSLATE, time.perf_counter() - started, details, translated=translation.translated
    )
    return translation


def translate_missing(session: Session, settings: Settings, translator: Translator | None, day: dt.date) -> None:
    """Translate the day's selected papers that still lack a translation, before the fan-out.

    A translation made from the feed's text is dropped when the API's text differs (store_day); when
    the translate stage had already ended beside the harvest, this makes it again (otherwise the stage
    reads the API's text itself). A paper the stage could not translate (DeepL down) gets a second try.
    """
    if translator is None or not runs.stage_finished(session, day, Stage.TRANSLATE):
        return
    if not papers_to_translate(session, day):
        return
    translation = translate_selected(session, day, translator, settings.deepl_daily_character_budget)
    session.commit()
    runs.add_billed_characters(session, day, translation.billed_characters)


def _unfinished(day: dt.date, *statuses: DeliveryStatus) -> Select[int]:
    """Recipients of the day whose delivery row is missing or in one of `statuses`."""
    recipients = recipients_query(day).subquery()
    # Keyed by period: a weekly digest is owed once per week, whichever day's run sends it.
    delivery = (col(Delivery.subscriber_id) == recipients.c.id) & (col(Delivery.period) == recipients.c.period)
    pending = col(Delivery.id).is_(None) | col(Delivery.status).in_(statuses)
    return select(recipients.c.id).outerjoin(Delivery, delivery).where(pending)


def delivery_chunks(session: Session, day: dt.date, chunk_size: int) -> list[list[int]]:
    """Split the recipients still owed a digest into chunks and record the fan-out (commits)."""
    retryable = _unfinished(day, DeliveryStatus.CLAIMED).union(
        select(col(Delivery.subscriber_id)).where(
            col(Delivery.day) == day, col(Delivery.status) == DeliveryStatus.FAILED, col(Delivery.retryable)
        )
    )
    recipients = recipients_for_day(session, day)
    owed = sorted(set(session.scalars(retryable)) & set(recipients))
    chunks = [owed[start:start + chunk_size] for start in range(0, len(owed), chunk_size)]
    runs.start_delivery(session, day, recipients=len(recipients), queued=len(owed), chunks=len(chunks))
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
            select(col(Delivery.subscriber_id)).where(
                col(Delivery.day) == day,
                col(Delivery.subscriber_id).in_(subscriber_ids),
                col(Delivery.status) == DeliveryStatus.CLAIMED,
            )
        )
    )


def _claimed_now(session: Session, day: dt.date, lease: dt.timedelta) -> bool:
    """Whether a sender holds a claim on a digest of the day within its lease (a stale one may have no sender)."""
    claimed = select(col(Delivery.id)).where(
        col(Delivery.day) == day,
        col(Delivery.status) == DeliveryStatus.CLAIMED,
        col(Delivery.claimed_at) > utcnow() - lease,
    )
    return session.scalars(claimed.limit(1)).first() is not None


def finish_day(
    session: Session, day: dt.date, force: bool = False, lease: dt.timedelta = dt.timedelta(minutes=10)
) -> Run | None:
    """End the day's run once every recipient's digest was tried (or at once if `force`): completed,
    or incomplete with what is owed and why (`lease`: how long a claim waits for its sender); commits."""
    run = runs.locked_run(session, day)
    if run is None or run.status != RunStatus.RUNNING:
        session.commit()
        return run
    if not force and _claimed_now(session, day, lease):
        # Another sender is still at work on the day and calls this again when it is done; checking
        # every recipient (a join over the day's selections) after each chunk cost the database more
        # CPU than the claims and records of the chunk.
        session.commit()
        return None
    owed = session.scalars(_unfinished(day, DeliveryStatus.CLAIMED).limit(1)).first()
    if owed is not None and not force:
        session.commit()
        return None
    return runs.finish_run(session, run, owed_digests(session, day, lease).describe())


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
        with failing_run_on_error(session, day or expected_feed_day(utcnow()), Stage.HARVEST, expected=HarvestError):
            harvest = harvest_day(session, transports, day, settings.categories, details_interest(session, settings))
    except HarvestError as exc:
        session.rollback()
        log.error("harvest failed: %s", exc)
        failed_day = exc.day or day or expected_feed_day(utcnow())
        runs.record_harvest_failure(session, failed_day, str(exc))
        return RunSummary(day=failed_day, status=RunStatus.FAILED, reason=f"harvest failed: {exc}")
    renderer = renderer or DigestRenderer()
    # Missed days caught up by this harvest, and earlier days still owing digests, go first, oldest first.
    earlier = [
        deliver_harvested_day(session, settings, transports, past, renderer)
        for past in days_to_resume(session, harvest.day or utcnow().date(), harvest.caught_up)
    ]
    if harvest.day is None:
        return RunSummary(day=day, status=RunStatus.NO_ANNOUNCEMENT, reason=NO_ANNOUNCEMENT_REASON, earlier=earlier)
    summary = deliver_harvested_day(session, settings, transports, harvest.day, renderer)
    summary.earlier = earlier
    if harvest.skipped is None:
        summary.stats[Stage.HARVEST] = harvest.counts
    return summary


def days_to_resume(session: Session, day: dt.date, caught_up: Sequence[dt.date] = ()) -> list[dt.date]:
    """The days before `day` to deliver first: `caught_up` and those owing digests within the catch-up window."""
    # MAX_CATCH_UP_DAYS feed days (Sunday to Thursday) span this many calendar days.
    since = day - dt.timedelta(days=MAX_CATCH_UP_DAYS * 7 // 5 + 1)
    return sorted(set(caught_up) | set(runs.unfinished_days(session, before=day, since=since)))


def deliver_harvested_day(
    session: Session, settings: Settings, transports: Transports, day: dt.date, renderer: DigestRenderer
) -> RunSummary:
    """Match, translate and deliver a harvested day in this process, in stage order, then complete its run.

    A stage that raises leaves the run failed with its reason (StageFailed), never "running".
    """
    with failing_run_on_error(session, day, None):
        runs.open_run(session, day, reopen_finished=True)
    steps: dict[Stage, Callable[[], Any]] = {
        Stage.MATCH: lambda: match_day(session, settings, day),
        Stage.TRANSLATE: lambda: translate_day(session, settings, transports.translator, day),
        Stage.DELIVER: lambda: _deliver_owed(session, settings, transports.mail, day, renderer),
    }
    results: dict[str, Any] = {}
    for stage in Stage:
        if stage in steps:
            with failing_run_on_error(session, day, stage):
                results[stage] = steps[stage]()
    with failing_run_on_error(session, day, Stage.DELIVER):
        run = finish_day(session, day, force=True, lease=dt.timedelta(seconds=settings.delivery_claim_lease_seconds))
    assert run is not None
    stats: dict[str, Any] = {stage: vars(result) for stage, result in results.items()}
    stats[Stage.DELIVER] = {k: v for k, v in stats[Stage.DELIVER].items() if k != "errors"}
    return RunSummary(
        day=day, status=run.status, reason=run.reason, stats=stats, seconds=runs.stage_seconds(session, run)
    )


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

