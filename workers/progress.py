"""`newsletter run-daily --via-celery`: enqueue the day on the workers and show its progress until it ends."""

from __future__ import annotations

import datetime as dt
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from sqlalchemy.engine import Engine

from newsletter.config import Settings
from newsletter.db import engine_for, session_scope
from newsletter.models import RunStatus
from newsletter.pipeline import RunSummary
from newsletter.runs import RunProgress, run_progress

POLL_SECONDS = 0.5


class RunTimeout(Exception):
    """The day did not end within the time the command waits."""


def run_via_celery(
    settings: Settings, day: dt.date | None, timeout: float = 4 * 3600, console: Console | None = None
) -> RunSummary:
    """Start the day on the workers (or join the run already under way) and wait until it ends."""
    from workers.tasks import app, enqueue_day
    from workers.trigger import start_day

    console = console or Console(stderr=True)
    engine = engine_for(settings.database_url)
    with session_scope(engine) as session:
        started = start_day(session, settings, day, reopen_finished=True, enqueue=enqueue_day)
    if started.day is None:
        return RunSummary(day=day, status=RunStatus.NO_ANNOUNCEMENT, reason=started.reason)
    if not app.control.ping(timeout=1.0):
        console.print("no Celery worker answered; the day waits in Redis until one starts "
                      "(celery -A workers.celery_app worker)")
    return wait_for_day(engine, started.day, timeout, console)


def wait_for_day(engine: Engine, day: dt.date, timeout: float, console: Console) -> RunSummary:
    """Show the stage and the digests sent or failed out of the recipients until the run ends."""
    deadline = time.monotonic() + timeout
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task(f"{day}: waiting for a worker", total=None, detail="")
        while True:
            with session_scope(engine) as session:
                view = run_progress(session, day)
            if view is not None:
                _show(progress, bar, day, view)
                if view.status != RunStatus.RUNNING:
                    return RunSummary(day=day, status=view.status, reason=view.reason, seconds=view.seconds)
            if time.monotonic() > deadline:
                raise RunTimeout(f"{day} did not finish within {timeout:.0f} s; is a worker running?")
            time.sleep(POLL_SECONDS)


def _show(display: Progress, bar: TaskID, day: dt.date, view: RunProgress) -> None:
    done = view.sent + view.failed
    display.update(
        bar,
        description=f"{day}: {view.stage}",
        completed=done,
        total=view.recipients or None,
        detail=f"sent {view.sent}, failed {view.failed}",
    )
