"""The `newsletter` command: every stage and chore, one line of reason on failure."""

from __future__ import annotations

import datetime as dt
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from newsletter.config import Settings, get_settings
from newsletter.db import engine_for, session_scope
from newsletter.harvest import HarvestError
from newsletter.models import RunStatus

app = typer.Typer(add_completion=False, no_args_is_help=True)
db_app = typer.Typer(no_args_is_help=True, help="Database schema.")
app.add_typer(db_app, name="db")


log = logging.getLogger(__name__)

# What an operator's logging level covers: our own modules. Libraries (arxiv, urllib3, celery)
# speak from WARNING up, or everything at DEBUG.
OWN_LOGGERS = ("newsletter", "workers")


class CommandError(Exception):
    """A failure to report as one line on stderr."""


@app.callback()
def options(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Log at DEBUG; an unexpected error also prints its traceback.")
    ] = False,
) -> None:
    """arXiv digest newsletter."""
    configure_logging("DEBUG" if verbose else _settings().log_level)


def configure_logging(level: str) -> None:
    """Send log records to stderr from `level` (NEWSLETTER_LOG_LEVEL or --verbose), once per process."""
    numeric = logging.getLevelName(level)
    libraries = logging.DEBUG if numeric == logging.DEBUG else max(numeric, logging.WARNING)
    logging.basicConfig(level=libraries, format="newsletter: %(levelname)s %(message)s")
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(numeric)


def _settings() -> Settings:
    return get_settings()


def _engine() -> Engine:
    return engine_for(_settings().database_url)


def _parse_day(value: str | None, option: str) -> dt.date | None:
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError as exc:
        raise CommandError(f"{option} {value!r} is not a date of the form YYYY-MM-DD") from exc


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the schema."""
    from newsletter.schema import upgrade_schema

    upgrade_schema(_engine())
    typer.echo("database schema is up to date")


@app.command()
def subscribe(
    email: str,
    keyword: Annotated[list[str], typer.Option("--keyword", "-k", help="A keyword; repeat for more.")],
    lang: Annotated[
        str | None, typer.Option("--lang", help="DeepL target language [default: NEWSLETTER_DEFAULT_LANGUAGE].")
    ] = None,
    timezone: Annotated[
        str | None, typer.Option("--timezone", help="IANA time zone [default: NEWSLETTER_DEFAULT_TIMEZONE].")
    ] = None,
    confirmed: Annotated[bool, typer.Option("--confirmed", help="Skip the email confirmation.")] = False,
) -> None:
    """Add or update a subscriber."""
    from newsletter.subscribers import subscribe as add_subscriber

    with session_scope(_engine()) as session:
        subscriber = add_subscriber(session, email, keyword, lang, timezone, confirmed)
        typer.echo(f"{subscriber.email}: {subscriber.status}, {len(keyword)} keyword(s), {subscriber.language}")


@app.command()
def unsubscribe(email: str) -> None:
    """Unsubscribe an address."""
    from newsletter.subscribers import find_subscriber, normalize_email
    from newsletter.subscribers import unsubscribe as stop_mail

    with session_scope(_engine()) as session:
        subscriber = find_subscriber(session, normalize_email(email))
        if subscriber is None:
            raise CommandError(f"no subscriber {email}")
        stop_mail(subscriber)
        typer.echo(f"{subscriber.email}: unsubscribed")


@app.command()
def harvest(
    from_: Annotated[str | None, typer.Option("--from", help="First announcement day, YYYY-MM-DD.")] = None,
    to: Annotated[str | None, typer.Option("--to", help="Last announcement day, YYYY-MM-DD.")] = None,
) -> None:
    """Harvest the announced papers into the database."""
    from newsletter.harvest import harvest_range
    from newsletter.pipeline import production_transports

    settings = _settings()
    transports = production_transports(settings)
    with session_scope(_engine()) as session:
        for line in harvest_range(
            session,
            transports.feed,
            transports.details,
            _parse_day(from_, "--from"),
            _parse_day(to, "--to"),
            categories=settings.categories,
        ):
            typer.echo(line)


@app.command("run-daily")
def run_daily(
    date: Annotated[str | None, typer.Option("--date", help="Announcement day, default the latest.")] = None,
    via_celery: Annotated[bool, typer.Option("--via-celery", help="Enqueue to the workers and wait.")] = False,
) -> None:
    """Run the whole day: harvest, match, translate, render, deliver."""
    day = _parse_day(date, "--date")
    if via_celery:
        from redis.exceptions import RedisError

        from workers.progress import RunTimeout, run_via_celery

        try:
            summary = run_via_celery(_settings(), day)
        except RedisError as exc:
            raise CommandError(f"Redis at {_settings().redis_url} cannot be used: {exc}") from exc
        except RunTimeout as exc:
            raise CommandError(str(exc)) from exc
    else:
        from newsletter.alerts import alert_now
        from newsletter.pipeline import production_transports
        from newsletter.pipeline import run_daily as run

        settings = _settings()
        with session_scope(_engine()) as session:
            try:
                summary = run(session, settings, production_transports(settings), day)
            finally:
                session.rollback()  # a stage that failed left its transaction behind
                alert_now(session, settings)
    for day_summary in [*summary.earlier, summary]:
        reason = f" ({day_summary.reason})" if day_summary.reason else ""
        typer.echo(f"{day_summary.day}: {day_summary.status}{reason}")
    if summary.seconds:
        typer.echo("seconds: " + ", ".join(f"{stage} {value}" for stage, value in summary.seconds.items()))
    unfinished = [s for s in [*summary.earlier, summary] if s.status in (RunStatus.FAILED, RunStatus.INCOMPLETE)]
    if unfinished:
        # A day is done when its digests are: owed digests make the command fail, with the server's reply.
        if unfinished == [summary]:
            raise CommandError(summary.reason or f"the run is {summary.status}")
        raise CommandError("; ".join(f"{s.day}: {s.reason or s.status}" for s in unfinished))


@app.command()
def preview(
    email: str,
    out: Annotated[Path | None, typer.Option("--out", help="Write the HTML here.")] = None,
    date: Annotated[str | None, typer.Option("--date", help="Announcement day, default the latest.")] = None,
) -> None:
    """Render a subscriber's digest as HTML."""
    from newsletter.digests import render_preview

    with session_scope(_engine()) as session:
        html = render_preview(session, _settings(), email, _parse_day(date, "--date"))
    if out is None:
        sys.stdout.write(html)
    else:
        out.write_text(html, encoding="utf-8")
        typer.echo(f"wrote {out}")


@app.command()
def demo() -> None:
    """Offline: the bundled sample through the real pipeline into the outbox."""
    from newsletter.demo import run_demo

    for line in run_demo(_settings(), _engine()):
        typer.echo(line)


@app.command()
def web(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
) -> None:
    """Serve the web app."""
    import uvicorn

    uvicorn.run("newsletter.web.app:create_app", factory=True, host=host, port=port)


@app.command()
def status() -> None:
    """Last runs, counts per stage and translation characters used."""
    from newsletter.status import status_lines

    with session_scope(_engine()) as session:
        for line in status_lines(session, _settings()):
            typer.echo(line)


def main() -> None:
    """Entry point: run the command, turning every failure into one line on stderr (last)."""
    from newsletter.subscribers import SubscriptionError

    try:
        app(standalone_mode=False)
    except (typer.Exit, SystemExit) as exc:
        code = getattr(exc, "exit_code", getattr(exc, "code", 0))
        sys.exit(code or 0)
    except (typer.Abort, KeyboardInterrupt):
        _fail("aborted")
    except ValidationError as exc:
        problems = "; ".join(
            f"NEWSLETTER_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}" for err in exc.errors()
        )
        _fail(f"configuration error: {problems}")
    except SQLAlchemyError as exc:
        # DBAPIError carries the driver's own error in `orig`, which reads better than SQLAlchemy's wrapper.
        cause = getattr(exc, "orig", None) or exc
        _fail(f"database error: {str(cause).strip().splitlines()[0]}")
    except (CommandError, SubscriptionError, HarvestError) as exc:
        _fail(str(exc))
    except Exception as exc:  # click usage errors and anything unexpected: still one line
        import click

        if isinstance(exc, click.ClickException):
            _fail(exc.format_message(), code=exc.exit_code)
        _fail_unexpectedly(exc)


def _fail_unexpectedly(exc: Exception) -> None:
    # Logged at DEBUG, so --verbose or NEWSLETTER_LOG_LEVEL=DEBUG shows where it came from.
    log.debug("the command failed unexpectedly; the traceback:", exc_info=exc)
    # Only a loaded pipeline raises StageFailed (importing it here would slow every command's start);
    # its message names the day, the stage and the error already.
    pipeline = sys.modules.get("newsletter.pipeline")
    if pipeline is not None and isinstance(exc, pipeline.StageFailed):
        _fail(str(exc))
    _fail(f"{type(exc).__name__}: {exc}")


def _fail(message: str, code: int = 1) -> None:
    # One line, whatever the message holds: scripts and operators read the last line.
    sys.stderr.write(f"newsletter: {' '.join(message.split())}\n")
    sys.exit(code)


if __name__ == "__main__":
    main()
