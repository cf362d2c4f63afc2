"""The `newsletter` command: every stage and chore, one line of reason on failure."""

from __future__ import annotations

# Only the standard library and typer at the top: `newsletter --help` must not pay for the stages
# (SQLAlchemy, the models, arXiv, Celery...). Each command imports what it runs.
import atexit
import datetime as dt
import gc
import logging
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperArgument, TyperCommand
from typer.exceptions import TyperException

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from sqlalchemy.engine import Engine
    from sqlmodel import Session

    from newsletter.config import Settings
    from newsletter.models import Subscriber

# Plain click help (no rich panels): it reads naturally with a metavar on every parameter, instead of
# typer's type tags (<bool>, <list[str]>), and starts without importing rich.
class _NamedArgument(TyperArgument):
    """An argument shown by its metavar alone (EMAIL), without typer's `{email}` braces and `<str>` tag."""

    def display_type_rich(self, ctx: Any) -> str | None:
        return None if self.metavar else super().display_type_rich(ctx)

    def _usage_display_name(self) -> str:
        name = self.metavar or super()._usage_display_name()
        return name if self.required else f"[{name}]"


class Command(TyperCommand):
    """A command whose help reads naturally: every parameter by its metavar, no type tags."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if type(param) is TyperArgument and param.metavar:
                # typer builds its own parameter objects; only their display changes.
                param.__class__ = _NamedArgument


app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None)
db_app = typer.Typer(no_args_is_help=True, help="Database schema.", rich_markup_mode=None)
subscribers_app = typer.Typer(
    no_args_is_help=True, help="Subscribers in bulk: import and export CSV.", rich_markup_mode=None
)
app.add_typer(db_app, name="db")
app.add_typer(subscribers_app, name="subscribers")


log = logging.getLogger(__name__)

# What an operator's logging level covers: our own modules. Libraries (arxiv, urllib3, celery)
# speak from WARNING up, or everything at DEBUG.
OWN_LOGGERS = ("newsletter", "workers")
DAY = "YYYY-MM-DD"


class CommandError(Exception):
    """A failure to report as one line on stderr."""


@app.callback()
def options(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Log at DEBUG; an unexpected error also prints its traceback.")
    ] = False,
) -> None:
    """arXiv digest newsletter."""
    # Not reached by `newsletter --help` (answered before any callback), which so loads no settings.
    configure_logging("DEBUG" if verbose else _settings().log_level)


def configure_logging(level: str) -> None:
    """Send log records to stderr from `level` (NEWSLETTER_LOG_LEVEL or --verbose), once per process."""
    numeric = logging.getLevelName(level)
    libraries = logging.DEBUG if numeric == logging.DEBUG else max(numeric, logging.WARNING)
    logging.basicConfig(level=libraries, format="newsletter: %(levelname)s %(message)s")
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(numeric)


def _settings() -> Settings:
    from newsletter.config import get_settings

    return get_settings()


def _engine() -> Engine:
    """The configured database, refused (one line naming `newsletter db upgrade`) unless its schema is current."""
    engine = _any_engine()  # settings first: a configuration error is the one line, before any import logs
    from newsletter.schema import SchemaNotCurrent, require_current_schema

    try:
        require_current_schema(engine)
    except SchemaNotCurrent as exc:
        raise CommandError(str(exc)) from exc
    return engine


def _any_engine() -> Engine:
    from newsletter.db import engine_for

    engine = engine_for(_settings().database_url)
    # Its connections are closed when the command ends, so SQLite checkpoints and removes its WAL file:
    # the collector would not close them at exit, it never looks at what `_collect_from_now_on` froze.
    atexit.register(engine.dispose)
    _collect_from_now_on()
    return engine


def _collect_from_now_on() -> None:
    # Called once the command has imported what it runs (see `main`): what was loaded lives as long as
    # the process, so it is left out of every later collection, and the collector runs as usual.
    gc.freeze()
    gc.enable()


def _parse_day(value: str | None, option: str) -> dt.date | None:
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError as exc:
        raise CommandError(f"{option} {value!r} is not a date of the form YYYY-MM-DD") from exc


@db_app.command("upgrade", cls=Command)
def db_upgrade() -> None:
    """Create or migrate the schema."""
    from newsletter.schema import upgrade_schema

    upgrade_schema(_any_engine())
    typer.echo("database schema is up to date")


Email = Annotated[str, typer.Argument(metavar="EMAIL", help="The subscriber's address.", show_default=False)]


@app.command(cls=Command)
def subscribe(
    email: Email,
    keyword: Annotated[
        list[str], typer.Option("--keyword", "-k", metavar="KEYWORD", help="A keyword; repeat for more.")
    ],
    lang: Annotated[
        str | None,
        typer.Option("--lang", metavar="LANG", help="DeepL target language (default: NEWSLETTER_DEFAULT_LANGUAGE)."),
    ] = None,
    timezone: Annotated[
        str | None,
        typer.Option("--timezone", metavar="ZONE", help="IANA time zone (default: NEWSLETTER_DEFAULT_TIMEZONE)."),
    ] = None,
    confirmed: Annotated[
        bool, typer.Option("--confirmed", help="Active at once, without the confirmation mail.")
    ] = False,
    frequency: Annotated[
        str | None,
        typer.Option("--frequency", metavar="daily|weekly", help="How often [default: daily, or as stored]."),
    ] = None,
    weekday: Annotated[
        str | None,
        typer.Option("--weekday", metavar="mon..sun", help="The weekly digest's day [default: mon, or as stored]."),
    ] = None,
    empty_day_note: Annotated[
        bool | None,
        typer.Option("--empty-day-note/--no-empty-day-note", help="Mail a note on empty days [default: no]."),
    ] = None,
    updates: Annotated[
        bool | None,
        typer.Option("--updates/--no-updates", help="List new versions of papers sent before [default: yes]."),
    ] = None,
) -> None:
    """Add or update a subscriber; a new one is mailed a confirmation link unless --confirmed."""
    from newsletter.db import session_scope
    from newsletter.subscriber_tables import SubscriberStatus
    from newsletter.subscribers import DigestChoices
    from newsletter.subscribers import subscribe as add_subscriber

    settings = _settings()
    choices = DigestChoices(frequency, weekday, empty_day_note, updates)
    with session_scope(_engine()) as session:
        subscriber = add_subscriber(session, email, keyword, lang, timezone, confirmed, choices)
        line = f"{subscriber.email}: {subscriber.status}, {len(keyword)} keyword(s), {subscriber.language}"
        if subscriber.status == SubscriberStatus.PENDING:
            _mail_confirmation(session, settings, subscriber)
            line += "; confirmation mail sent"
        typer.echo(line)


def _mail_confirmation(session: Session, settings: Settings, subscriber: Subscriber) -> None:
    # The mail transports load only when a confirmation goes out.
    from newsletter.mail import make_backend
    from newsletter.subscribers import mail_confirmation
    from newsletter.tokens import LinkSigner, signing_key

    mail = make_backend(settings)
    try:
        mail_confirmation(session, settings, LinkSigner(signing_key(session, settings)), mail, subscriber)
    finally:
        mail.close()


@subscribers_app.command("show", cls=Command)
def subscribers_show(email: Email) -> None:
    """Print a subscriber's stored preferences, one `name: value` a line."""
    from newsletter.db import session_scope
    from newsletter.subscribers import find_subscriber, normalize_email, stored_preferences

    with session_scope(_engine()) as session:
        subscriber = find_subscriber(session, normalize_email(email))
        if subscriber is None:
            raise CommandError(f"no subscriber {email}")
        for name, value in stored_preferences(session, _settings(), subscriber):
            typer.echo(f"{name}: {value}")


@app.command(cls=Command)
def unsubscribe(email: Email) -> None:
    """Unsubscribe an address."""
    from newsletter.db import session_scope
    from newsletter.subscribers import find_subscriber, normalize_email
    from newsletter.subscribers import unsubscribe as stop_mail

    with session_scope(_engine()) as session:
        subscriber = find_subscriber(session, normalize_email(email))
        if subscriber is None:
            raise CommandError(f"no subscriber {email}")
        stop_mail(subscriber)
        typer.echo(f"{subscriber.email}: unsubscribed")


@subscribers_app.command("import", cls=Command)
def subscribers_import(
    file: Annotated[
        Path,
        typer.Argument(
            metavar="FILE",
            help="CSV with the header email,keywords,language,time_zone,confirmed (keywords separated by ';').",
            show_default=False,
        ),
    ],
) -> None:
    """Add or update subscribers from a CSV file; refused rows are listed with their line and reason."""
    from newsletter.db import session_scope
    from newsletter.subscriber_csv import CsvError, import_subscribers, read_csv

    settings = _settings()
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise CommandError(f"cannot read {file}: {exc.strerror or exc}") from exc
    try:
        rows = read_csv(data)
    except CsvError as exc:
        raise CommandError(f"{file}: {exc}") from exc
    with session_scope(_engine()) as session, _progress(len(rows)) as advance:
        report = import_subscribers(session, settings, rows, advance)
    for refusal in report.refused:
        typer.echo(f"line {refusal.line}: {refusal.email or '(no address)'}: {refusal.reason}")
    typer.echo(report.summary())
    if report.refused:
        raise CommandError(f"{len(report.refused)} of {report.total} row(s) refused (listed above); the rest is stored")


@contextmanager
def _progress(total: int) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr; yields the function that moves it on by n rows."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("importing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    # transient: the finished bar makes way for the report; nothing is drawn when stderr is not a terminal.
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("import", total=total)
        yield lambda rows: progress.advance(task, rows)


@subscribers_app.command("export", cls=Command)
def subscribers_export(
    file: Annotated[
        str,
        typer.Argument(metavar="FILE", help="Where to write the CSV; - (the default) for standard output."),
    ] = "-",
) -> None:
    """Write every subscriber who has not left as CSV, in the format `subscribers import` reads."""
    from newsletter.db import session_scope
    from newsletter.subscriber_csv import write_csv

    with session_scope(_engine()) as session:
        if file == "-":
            count = write_csv(session, sys.stdout)
        else:
            try:
                with open(file, "w", encoding="utf-8", newline="") as out:
                    count = write_csv(session, out)
            except OSError as exc:
                raise CommandError(f"cannot write {file}: {exc.strerror or exc}") from exc
    if file != "-":
        typer.echo(f"wrote {count} subscriber(s) to {file}")


@app.command(cls=Command)
def harvest(
    from_: Annotated[str | None, typer.Option("--from", metavar=DAY, help="First announcement day.")] = None,
    to: Annotated[str | None, typer.Option("--to", metavar=DAY, help="Last announcement day.")] = None,
) -> None:
    """Harvest the announced papers into the database."""
    from newsletter.db import session_scope
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


@app.command("run-daily", cls=Command)
def run_daily(
    date: Annotated[
        str | None, typer.Option("--date", metavar=DAY, help="Announcement day (default: the latest).")
    ] = None,
    via_celery: Annotated[bool, typer.Option("--via-celery", help="Enqueue to the workers and wait.")] = False,
) -> None:
    """Run the whole day: harvest, match, translate, render, deliver."""
    from newsletter.models import RunStatus

    day = _parse_day(date, "--date")
    if via_celery:
        from redis.exceptions import RedisError

        from workers.progress import RunTimeout, run_via_celery

        _engine()  # the workers need the current schema too
        try:
            summary = run_via_celery(_settings(), day)
        except RedisError as exc:
            raise CommandError(f"Redis at {_settings().redis_url} cannot be used: {exc}") from exc
        except RunTimeout as exc:
            raise CommandError(str(exc)) from exc
    else:
        from newsletter.alerts import alert_now
        from newsletter.db import session_scope
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


@app.command(cls=Command)
def preview(
    email: Email,
    out: Annotated[
        str | None,
        typer.Option(
            "--out", metavar="FILE", help="Write the HTML here; - for standard output (default: preview-EMAIL.html)."
        ),
    ] = None,
    date: Annotated[
        str | None, typer.Option("--date", metavar=DAY, help="Announcement day (default: the latest).")
    ] = None,
) -> None:
    """Render a subscriber's digest as HTML into a file (to open in a browser)."""
    from newsletter.db import session_scope
    from newsletter.digests import render_preview
    from newsletter.mail.outbox import outbox_name

    with session_scope(_engine()) as session:
        html = render_preview(session, _settings(), email, _parse_day(date, "--date"))
    if out == "-":
        sys.stdout.write(html)
        return
    # HTML on a terminal is a wall of markup: without --out it goes to a file named after the address.
    path = Path(out) if out else Path(f"preview-{outbox_name(email.strip().lower())}.html")
    try:
        path.write_text(html, encoding="utf-8")
    except OSError as exc:
        raise CommandError(f"cannot write {path}: {exc.strerror or exc}") from exc
    typer.echo(f"wrote {path} (open file://{path.resolve()} in a browser)")


@app.command(cls=Command)
def demo() -> None:
    """Offline: the bundled sample through the real pipeline into the outbox."""
    from newsletter.demo import run_demo

    for line in run_demo(_settings(), _any_engine()):
        typer.echo(line)


@app.command(cls=Command)
def web(
    host: Annotated[str, typer.Option(metavar="HOST", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(metavar="PORT", help="Port.")] = 8000,
) -> None:
    """Serve the web app."""
    import uvicorn

    _engine()  # refuse a database without the schema before serving a single page
    # The app believes X-Forwarded-For only from NEWSLETTER_TRUSTED_PROXIES (create_app); uvicorn's own
    # handling would believe it from any local connection.
    uvicorn.run("newsletter.web.app:create_app", factory=True, host=host, port=port, proxy_headers=False)


@app.command(cls=Command)
def status() -> None:
    """Last runs, counts per stage and translation characters used."""
    from newsletter.db import session_scope
    from newsletter.status import status_lines

    with session_scope(_engine()) as session:
        for line in status_lines(session, _settings()):
            typer.echo(line)


def main() -> None:
    """Entry point: run the command, turning every failure into one line on stderr (last)."""
    # Start-up makes some 75,000 objects the collector tracks, nearly all living as long as the process
    # (modules, classes, tables): it would walk them over and over while they load, and once more at
    # exit, for a quarter of a `newsletter subscribe`'s CPU. It stays off until the command has loaded
    # them (`_any_engine`), which then leaves them out of every collection.
    gc.disable()
    try:
        app(standalone_mode=False)
    except (typer.Exit, SystemExit) as exc:
        code = getattr(exc, "exit_code", getattr(exc, "code", 0))
        sys.exit(code or 0)
    except (typer.Abort, KeyboardInterrupt):
        _fail("aborted")
    except TyperException as exc:  # usage errors (typer's own click)
        if type(exc).__name__ == "NoArgsIsHelpError":  # `newsletter` alone: the help, as it is laid out
            sys.stderr.write(exc.format_message() + "\n")
            sys.exit(exc.exit_code)
        _fail(exc.format_message(), code=exc.exit_code)
    except CommandError as exc:
        _fail(str(exc))
    except Exception as exc:  # noqa: BLE001 - whatever it is, still one line
        _fail(_known_reason(exc) or _unexpected(exc))
    finally:
        gc.enable()  # a command that stopped before `_any_engine` (or a caller that goes on) collects again


def _loaded(module: str, name: str) -> type[BaseException] | None:
    # An exception class of a module that was never imported cannot have been raised: looking it up
    # instead of importing keeps every command's start cheap.
    loaded = sys.modules.get(module)
    return getattr(loaded, name, None) if loaded is not None else None


def _is(exc: BaseException, module: str, name: str) -> bool:
    cls = _loaded(module, name)
    return cls is not None and isinstance(exc, cls)


def _known_reason(exc: Exception) -> str | None:
    """The one-line reason for a failure the user can act on; None for a surprise."""
    if _is(exc, "pydantic", "ValidationError"):
        problems = "; ".join(
            f"NEWSLETTER_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
            for err in exc.errors()  # type: ignore[attr-defined]
        )
        return f"configuration error: {problems}"
    if _is(exc, "sqlalchemy.exc", "SQLAlchemyError"):
        # DBAPIError carries the driver's own error in `orig`, which reads better than SQLAlchemy's wrapper.
        cause = getattr(exc, "orig", None) or exc
        return f"database error: {str(cause).strip().splitlines()[0]}"
    expected = [("newsletter.subscribers", "SubscriptionError"), ("newsletter.harvest.records", "HarvestError")]
    if any(_is(exc, module, name) for module, name in expected):
        return str(exc)
    return None


def _unexpected(exc: Exception) -> str:
    # Logged at DEBUG, so --verbose or NEWSLETTER_LOG_LEVEL=DEBUG shows where it came from.
    log.debug("the command failed unexpectedly; the traceback:", exc_info=exc)
    if _is(exc, "newsletter.pipeline", "StageFailed"):
        return str(exc)  # it names the day, the stage and the error already
    return f"{type(exc).__name__}: {exc}"


def _fail(message: str, code: int = 1) -> None:
    # One line, whatever the message holds: scripts and operators read the last line.
    sys.stderr.write(f"newsletter: {' '.join(message.split())}\n")
    sys.exit(code)


if __name__ == "__main__":
    main()
