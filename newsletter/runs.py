"""The day's run ledger: open the run, record a stage, fail, finish, and read where it is.

Every write to `run` and `run_stage` goes through here, and what decides the next step is a typed
column: the run's status, its failed stage, the stage rows' finish times and counts. Functions that
say "commits" end their transaction; the others add to the caller's (a harvest stores its papers and
marks the day harvested in one commit).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col

from newsletter.models import Delivery, DeliveryStatus, Run, RunStage, RunStatus, Stage, utcnow

# A run left "running" this long lost its tasks (a broker wiped, say); a new trigger may restart it.
STALE_RUN = dt.timedelta(hours=6)

# The reason column is Text, but a status line and a log line should stay readable.
MAX_REASON = 2000

# The typed count columns of run_stage a stage may set.
COUNT_COLUMNS = frozenset(
    {"announced", "selections", "translated", "recipients", "queued", "sent", "failed", "pending"}
)


def find_run(session: Session, day: dt.date) -> Run | None:
    """The day's run as the database has it now (not a stale copy from the session)."""
    return session.scalars(select(Run).where(col(Run.day) == day).execution_options(populate_existing=True)).first()


def locked_run(session: Session, day: dt.date) -> Run | None:
    """The day's run, locked until the caller commits."""
    # Stage tasks on several workers write into the same row: serialize them on it.
    return session.scalars(
        select(Run).where(col(Run.day) == day).with_for_update().execution_options(populate_existing=True)
    ).first()


def _create_run(session: Session, day: dt.date) -> bool:
    """Insert the day's run row; False when another caller has (the row is unique on the day). Commits."""
    try:
        with session.begin_nested():
            session.add(Run(day=day))
        session.commit()
        return True
    except IntegrityError:
        session.rollback()
        return False


def claim_run(session: Session, day: dt.date) -> Run:
    """The day's run row, created once (unique on the day); commits."""
    run = find_run(session, day)
    if run is None:
        _create_run(session, day)
        run = session.scalars(select(Run).where(col(Run.day) == day)).one()
    return run


def open_run(session: Session, day: dt.date, reopen_finished: bool) -> bool:
    """Start the day's run: True for the one caller that created or reopened its row (commits)."""
    if find_run(session, day) is None and _create_run(session, day):
        return True
    run = locked_run(session, day)
    assert run is not None
    reopenable = {RunStatus.FAILED, RunStatus.NO_ANNOUNCEMENT, RunStatus.INCOMPLETE} | (
        {RunStatus.COMPLETED} if reopen_finished else set()
    )
    stale = run.status == RunStatus.RUNNING and run.started_at < utcnow() - STALE_RUN
    if run.status not in reopenable and not stale:
        session.commit()
        return False
    # The harvest is not redone, so its row stays; every later stage records itself again.
    session.execute(delete(RunStage).where(col(RunStage.run_id) == run.id, col(RunStage.stage) != Stage.HARVEST))
    run.status, run.reason, run.failed_stage = RunStatus.RUNNING, None, None
    run.started_at, run.finished_at = utcnow(), None
    session.add(run)
    session.commit()
    return True


def _stage_row(session: Session, run: Run, stage: Stage) -> RunStage:
    """The run's row for `stage`, created (started now) if it has none."""
    if run.id is None:
        session.flush()
    row = session.scalars(
        select(RunStage).where(col(RunStage.run_id) == run.id, col(RunStage.stage) == stage).execution_options(
            populate_existing=True
        )
    ).first()
    if row is None:
        assert run.id is not None
        row = RunStage(run_id=run.id, stage=stage)
        session.add(row)
    return row


def _set_counts(row: RunStage, counts: dict[str, int]) -> None:
    unknown = set(counts) - COUNT_COLUMNS
    if unknown:
        raise ValueError(f"run_stage has no count column {sorted(unknown)}")
    for name, value in counts.items():
        setattr(row, name, int(value))


def mark_harvested(
    session: Session, day: dt.date, announced: int, details: dict[str, Any], reopen_failed: bool = True
) -> None:
    """Mark the day's papers stored and record its harvest counts, in the caller's transaction.

    A run that is not running starts afresh, its later stages to be done again, unless `reopen_failed`
    is False and it failed in a later stage: then match or translate failed beside this harvest.
    """
    locked = select(Run).where(col(Run.day) == day).with_for_update().execution_options(populate_existing=True)
    run = session.scalars(locked).first() or Run(day=day)
    now = utcnow()
    run.harvested_at = now
    failed_beside = run.status == RunStatus.FAILED and run.failed_stage not in (None, Stage.HARVEST)
    reopen = reopen_failed or not failed_beside
    if reopen and run.id is not None and run.status != RunStatus.RUNNING:
        # Stages done in an earlier attempt read papers and selections that this harvest may have changed.
        session.execute(delete(RunStage).where(col(RunStage.run_id) == run.id, col(RunStage.stage) != Stage.HARVEST))
    if reopen:
        run.status, run.reason, run.failed_stage, run.finished_at = RunStatus.RUNNING, None, None, None
    session.add(run)
    session.flush()
    row = _stage_row(session, run, Stage.HARVEST)
    row.started_at, row.finished_at, row.announced, row.details = now, now, announced, details
    session.flush()


def note_feed_seen(session: Session, day: dt.date, at: dt.datetime) -> None:
    """Record when the announcement feed was first found showing the day, keeping the earliest (caller commits)."""
    run = session.scalars(select(Run).where(col(Run.day) == day)).first()
    if run is not None and (run.feed_seen_at is None or at < run.feed_seen_at):
        run.feed_seen_at = at
        session.add(run)


def last_accepted(session: Session, day: dt.date) -> dt.datetime | None:
    """When the mail server accepted the day's last digest so far."""
    return session.scalar(select(func.max(col(Delivery.sent_at))).where(col(Delivery.day) == day))


def mark_caught_up(session: Session, days: Iterable[dt.date]) -> None:
    """Note that these days were stored as missed days by a later harvest, in the caller's transaction."""
    days = list(days)
    if not days:
        return
    for run in session.scalars(select(Run).where(col(Run.day).in_(days))):
        run.caught_up = True
        session.add(run)


def record_no_announcement(session: Session, day: dt.date, reason: str) -> None:
    """End the day's run as a day arXiv announced nothing, unless its papers are stored (caller commits)."""
    run = session.scalars(select(Run).where(col(Run.day) == day)).first()
    if run is not None and run.harvested_at is not None:
        return
    run = run or Run(day=day)
    run.status, run.reason, run.finished_at = RunStatus.NO_ANNOUNCEMENT, reason, utcnow()
    session.add(run)


def clear_harvest_failure(session: Session, day: dt.date) -> None:
    """Forget the note of an earlier failed harvest attempt once the harvest succeeded (caller commits)."""
    run = session.scalars(select(Run).where(col(Run.day) == day)).first()
    if run is not None and run.last_harvest_failure is not None:
        run.last_harvest_failure, run.last_harvest_failure_at = None, None
        session.add(run)


def record_harvest_failure(session: Session, day: dt.date, reason: str) -> None:
    """Note on the day's run why its harvest failed; the next run tries again (commits)."""
    run = session.scalars(select(Run).where(col(Run.day) == day)).first()
    if run is not None and run.harvested_at is not None:
        # The day itself is stored (the failure was a later or missed day's): keep its outcome, note the failure.
        run.last_harvest_failure, run.last_harvest_failure_at = reason[:MAX_REASON], utcnow()
        session.add(run)
        session.commit()
        return
    run = run or Run(day=day)
    run.status, run.reason, run.finished_at = RunStatus.FAILED, f"harvest failed: {reason}"[:MAX_REASON], utcnow()
    run.failed_stage = Stage.HARVEST
    run.harvest_failures += 1
    session.add(run)
    session.commit()


def record_stage(
    session: Session, day: dt.date, stage: Stage, seconds: float, details: dict[str, Any] | None = None, **counts: int
) -> None:
    """Record that `stage` finished just now after `seconds`, with its counts (commits)."""
    run = locked_run(session, day)
    if run is None:
        session.commit()
        return
    row = _stage_row(session, run, stage)
    now = utcnow()
    row.started_at, row.finished_at, row.seconds = now - dt.timedelta(seconds=seconds), now, round(seconds, 3)
    _set_counts(row, counts)
    if details is not None:
        row.details = details
    session.commit()


def add_billed_characters(session: Session, day: dt.date, characters: int) -> None:
    """Add DeepL characters billed for the day's translations to its run (commits)."""
    run = locked_run(session, day)
    if run is not None:
        run.billed_characters += characters
        session.add(run)
    session.commit()


def start_delivery(session: Session, day: dt.date, recipients: int, queued: int, chunks: int) -> None:
    """Record the fan-out: the deliver stage starts now with this many recipients and chunks (commits)."""
    run = locked_run(session, day)
    if run is not None:
        row = _stage_row(session, run, Stage.DELIVER)
        row.started_at, row.finished_at, row.enqueued_at = utcnow(), None, None
        row.recipients, row.queued, row.details = recipients, queued, {"chunks": chunks}
    session.commit()


def mark_enqueued(session: Session, day: dt.date) -> None:
    """Record that every send chunk of the fan-out is on the queue (commits)."""
    run = locked_run(session, day)
    if run is not None:
        _stage_row(session, run, Stage.DELIVER).enqueued_at = utcnow()
    session.commit()


def end_run(
    session: Session, day: dt.date, status: RunStatus, reason: str | None, stage: Stage | None = None
) -> None:
    """Mark the day's run as ended with `status` (and the stage it failed in, if any); commits."""
    run = locked_run(session, day)
    if run is not None:
        run.status, run.reason, run.finished_at = status, reason, utcnow()
        run.failed_stage = stage if status == RunStatus.FAILED else None
        session.add(run)
    session.commit()


def fail_run(session: Session, day: dt.date, reason: str, stage: Stage | None = None) -> None:
    """Record the day's run as failed in `stage` with `reason`, creating its row if need be (commits).

    Give it a session of its own: the one the stage used may hold a transaction the error has
    aborted, and a rollback there must not take the failure with it.
    """
    claim_run(session, day)
    end_run(session, day, RunStatus.FAILED, reason[:MAX_REASON], stage)


def delivery_counts(session: Session, day: dt.date) -> dict[str, int]:
    """How many of the day's digests are sent, failed and still claimed."""
    rows = dict(
        session.execute(
            select(col(Delivery.status), func.count()).where(col(Delivery.day) == day).group_by(col(Delivery.status))
        ).all()
    )
    return {status.value: int(rows.get(status, 0)) for status in DeliveryStatus}


def finish_run(session: Session, run: Run, owed: str | None = None) -> Run:
    """End the locked, running `run`: completed, or incomplete when digests are `owed` (why); commits."""
    counts = delivery_counts(session, run.day)
    now = utcnow()
    deliver = _stage_row(session, run, Stage.DELIVER)
    deliver.recipients = deliver.recipients or 0
    deliver.sent, deliver.failed = counts[DeliveryStatus.SENT], counts[DeliveryStatus.FAILED]
    deliver.pending = counts[DeliveryStatus.CLAIMED]
    deliver.finished_at, deliver.seconds = now, round((now - deliver.started_at).total_seconds(), 3)
    match = stage_rows(session, run).get(Stage.MATCH)
    selections = match.selections if match is not None else None
    run.status, run.finished_at, run.failed_stage = RunStatus.COMPLETED, now, None
    run.last_accepted_at = last_accepted(session, run.day)
    if owed is not None:
        # A day is done when its digests are: the next run resumes this one.
        run.status, run.reason = RunStatus.INCOMPLETE, owed[:MAX_REASON]
    elif selections == 0 and not deliver.sent:
        run.reason = "no paper matched any subscriber's keywords"
    elif deliver.failed:
        run.reason = f"{deliver.failed} deliveries failed"
    else:
        run.reason = None
    session.add(run)
    session.commit()
    return run


def unfinished_days(session: Session, before: dt.date, since: dt.date) -> list[dt.date]:
    """Days from `since` until before `before` whose run ended with digests owed, oldest first."""
    return list(
        session.scalars(
            select(col(Run.day))
            .where(col(Run.status) == RunStatus.INCOMPLETE, col(Run.day) < before, col(Run.day) >= since)
            .order_by(col(Run.day))
        )
    )


def run_is_open(session: Session, day: dt.date) -> bool:
    """Whether the day's run is still in progress (later stages skip a run that ended)."""
    status = session.scalar(
        select(col(Run.status)).where(col(Run.day) == day).execution_options(populate_existing=True)
    )
    return status == RunStatus.RUNNING


def stage_rows(session: Session, run: Run) -> dict[Stage, RunStage]:
    """The run's recorded stages, in stage order."""
    rows = {
        row.stage: row
        for row in session.scalars(
            select(RunStage).where(col(RunStage.run_id) == run.id).execution_options(populate_existing=True)
        )
    }
    return {stage: rows[stage] for stage in Stage if stage in rows}


def stage_finished(session: Session, day: dt.date, stage: Stage) -> bool:
    """Whether the day's run has finished `stage` (a redelivered task then skips it)."""
    finished = session.scalar(
        select(col(RunStage.finished_at))
        .join(Run, col(Run.id) == col(RunStage.run_id))
        .where(col(Run.day) == day, col(RunStage.stage) == stage)
        .execution_options(populate_existing=True)
    )
    return finished is not None


def deliveries_enqueued(session: Session, day: dt.date) -> bool:
    """Whether this run's fan-out put every send chunk on the queue already."""
    enqueued = session.scalar(
        select(col(RunStage.enqueued_at))
        .join(Run, col(Run.id) == col(RunStage.run_id))
        .where(col(Run.day) == day, col(RunStage.stage) == Stage.DELIVER)
        .execution_options(populate_existing=True)
    )
    return enqueued is not None


def ready_for_delivery(session: Session, day: dt.date) -> bool:
    """Whether the open run has its papers stored with their details and translated, and no fan-out yet.

    The harvest's details and the match and translate stages run side by side; whichever ends
    last finds this true and queues the fan-out (both may: the fan-out runs once).
    """
    run = session.scalars(select(Run).where(col(Run.day) == day).execution_options(populate_existing=True)).first()
    if run is None or run.status != RunStatus.RUNNING or run.harvested_at is None:
        return False
    return stage_finished(session, day, Stage.TRANSLATE) and not deliveries_enqueued(session, day)


def stage_seconds(session: Session, run: Run) -> dict[str, float]:
    """Seconds per recorded stage, in stage order, and "total" for a completed run."""
    seconds = {str(stage): row.seconds for stage, row in stage_rows(session, run).items() if row.seconds is not None}
    if run.status == RunStatus.COMPLETED and run.finished_at is not None:
        seconds["total"] = round((run.finished_at - run.started_at).total_seconds(), 3)
    return seconds


def current_stage(run: Run, rows: dict[Stage, RunStage]) -> Stage:
    """The first stage the run has not finished (the last one when all are)."""
    for stage in Stage:
        row = rows.get(stage)
        done = (row is not None and row.finished_at is not None) or (stage == Stage.HARVEST and run.harvested_at)
        if not done:
            return stage
    return list(Stage)[-1]


@dataclass
class RunProgress:
    """Where the day's run is, for a progress display."""

    status: RunStatus
    reason: str | None
    stage: str  # the stage under way, or the status of a run that ended
    recipients: int
    sent: int
    failed: int
    claimed: int
    seconds: dict[str, float] = field(default_factory=dict)


def run_progress(session: Session, day: dt.date) -> RunProgress | None:
    """The day's run status, its current stage and its delivery counts; None before the run exists."""
    run = find_run(session, day)
    if run is None:
        return None
    rows = stage_rows(session, run)
    counts = delivery_counts(session, day)
    deliver = rows.get(Stage.DELIVER)
    return RunProgress(
        status=run.status,
        reason=run.reason,
        stage=str(current_stage(run, rows)) if run.status == RunStatus.RUNNING else str(run.status),
        recipients=(deliver.recipients or 0) if deliver else 0,
        sent=counts[DeliveryStatus.SENT],
        failed=counts[DeliveryStatus.FAILED],
        claimed=counts[DeliveryStatus.CLAIMED],
        seconds=stage_seconds(session, run),
    )
