"""The `newsletter` command as a user runs it: the demo, and one clear line for bad input."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import os
import re
import subprocess
import sys
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import select, update
from sqlalchemy.engine import Engine
from sqlmodel import Session

from newsletter.db import make_engine
from newsletter.models import Run, RunStatus, SubscriberKeyword, SubscriberStatus, utcnow
from newsletter.schema import alembic_config
from newsletter.subscribers import confirm_by_link
from newsletter.tokens import LinkSigner
from tests.conftest import inserts_refused, make_settings, pg_schema
from tests.servers import ArxivServer, SmtpSink, build_feed, make_paper

# `newsletter` as its console script runs it, from this checkout (not wherever the package is installed).
NEWSLETTER = [sys.executable, "-m", "newsletter.cli"]
REPOSITORY = Path(__file__).resolve().parents[1]


def run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    clean["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPOSITORY), clean.get("PYTHONPATH")]))
    return subprocess.run(
        [*NEWSLETTER, *args], cwd=cwd, env={**clean, **env}, capture_output=True, text=True, timeout=120
    )


def test_demo_writes_bilingual_digests_and_a_second_run_adds_nothing(tmp_path: Path) -> None:
    first = run(["demo"], tmp_path)
    assert first.returncode == 0, first.stderr
    outbox = tmp_path / "outbox" / "2026-11-24"
    emls = sorted(outbox.glob("*.eml"))
    assert [p.name for p in emls] == ["ada@example.org.eml", "alan@example.org.eml", "grace@example.org.eml"]
    assert f"file://{outbox.resolve() / 'ada@example.org.html'}" in first.stdout
    message = email.message_from_bytes(emls[0].read_bytes(), policy=email.policy.default)
    html = message.get_body(("html",)).get_content()
    assert "强化学习" in html and "reinforcement learning" in html.lower()
    before = {p.name: p.stat().st_mtime_ns for p in emls}

    second = run(["demo"], tmp_path)

    assert second.returncode == 0, second.stderr
    assert "0 new digest(s)" in second.stdout
    assert {p.name: p.stat().st_mtime_ns for p in sorted(outbox.glob("*.eml"))} == before


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["status"], {"NEWSLETTER_SMTP_PORT": "not-a-port"}, "NEWSLETTER_SMTP_PORT"),
        (["status"], {"NEWSLETTER_LOG_LEVEL": "bogus"}, "NEWSLETTER_LOG_LEVEL: Input should be 'DEBUG', 'INFO'"),
        (["--verbose", "status"], {"NEWSLETTER_LOG_LEVEL": "bogus"}, "NEWSLETTER_LOG_LEVEL"),
        (["status"], {"NEWSLETTER_DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:1/none"}, "database error"),
        (["run-daily", "--frobnicate"], {}, "No such option"),
        (["subscribe", "not-an-address", "-k", "rl"], {}, "not valid"),
        (["subscribe", "a@example.org", "-k", "(unbalanced"], {}, "position"),
        (["harvest", "--from", "2026-13-01"], {}, "YYYY-MM-DD"),
    ],
)
def test_bad_input_gives_one_clear_line_and_a_failing_exit(
    tmp_path: Path, args: list[str], env: dict[str, str], expected: str
) -> None:
    result = run(["db", "upgrade"], tmp_path)
    assert result.returncode == 0, result.stderr

    result = run(args, tmp_path, **env)

    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]


def test_a_subscriber_added_by_the_cli_gets_a_preview(tmp_path: Path) -> None:
    assert run(["demo"], tmp_path).returncode == 0
    added = run(["subscribe", "Ada@Example.org", "-k", "deep learning", "--confirmed"], tmp_path)
    assert added.returncode == 0, added.stderr
    out = tmp_path / "preview.html"

    preview = run(["preview", "ada@example.org", "--out", str(out)], tmp_path)

    assert preview.returncode == 0, preview.stderr
    assert "arXiv" in out.read_text(encoding="utf-8")


DAY = dt.date(2026, 11, 24)
DISK_FULL = "could not extend file: No space left on device"


def selections_refused(engine: Engine) -> AbstractContextManager[None]:
    """The database refuses the match stage's writes, as it does when its disk is full."""
    return inserts_refused(engine, "selection", DISK_FULL, pg_errcode="disk_full")


@pytest.fixture
def day_env(engine: Engine, arxiv_server: ArxivServer, tmp_path: Path) -> dict[str, str]:
    """A deployment pointed at the arXiv stand-in announcing DAY, with one subscriber whose keyword matches."""
    paper = make_paper("2611.00042", title="A graph neural network for molecules", categories=["cs.LG"])
    arxiv_server.add_papers(paper)
    arxiv_server.set_feed(["cs.AI", "cs.LG"], build_feed(DAY, [paper]))
    env = {
        "NEWSLETTER_DATABASE_URL": engine.url.render_as_string(hide_password=False),
        "NEWSLETTER_ARXIV_FEED_URL": arxiv_server.feed_base_url,
        "NEWSLETTER_ARXIV_API_URL": arxiv_server.api_url,
        "NEWSLETTER_ARXIV_DELAY_SECONDS": "0",
        "NEWSLETTER_CATEGORIES": "cs.AI,cs.LG",
        "NEWSLETTER_REDIS_URL": "redis://127.0.0.1:1/0",  # no Redis: the database row paces the requests
        "NEWSLETTER_SECRET_KEY": "test-secret-key-0123456789",
    }
    added = run(["subscribe", "ada@example.org", "-k", "graph neural network", "--confirmed"], tmp_path, **env)
    assert added.returncode == 0, added.stderr
    return env


def test_a_day_that_dies_in_a_stage_says_so_in_one_line_and_status_shows_it_failed(
    tmp_path: Path, day_env: dict[str, str], engine: Engine
) -> None:
    with selections_refused(engine):
        failed = run(["run-daily", "--date", DAY.isoformat()], tmp_path, **day_env)

    assert failed.returncode != 0
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith(f"newsletter: {DAY}: match failed: ") and DISK_FULL in last, failed.stderr
    assert "Traceback" not in failed.stderr
    status = run(["status"], tmp_path, **day_env)
    assert status.returncode == 0, status.stderr
    line = next(line for line in status.stdout.splitlines() if line.startswith(str(DAY)))
    assert line.startswith(f"{DAY}: failed - no digest (failure: match failed: ") and DISK_FULL in line
    with Session(engine) as session:
        assert session.scalars(select(Run.status).where(Run.day == DAY)).one() == RunStatus.FAILED


def test_a_failed_day_is_mailed_to_the_operator_once_however_often_it_is_run(
    tmp_path: Path, day_env: dict[str, str], engine: Engine
) -> None:
    env = {**day_env, "NEWSLETTER_ADMIN_EMAIL": "ops@example.org"}
    with selections_refused(engine):
        first = run(["run-daily", "--date", DAY.isoformat()], tmp_path, **env)
        second = run(["run-daily", "--date", DAY.isoformat()], tmp_path, **env)

    assert first.returncode != 0 and second.returncode != 0
    # Other causes have mails of their own (cs.AI's feed is empty here; today's feed may be late by the clock).
    mails = sorted((tmp_path / "outbox").glob(f"alert-{DAY}-run_failed/*.eml"))
    assert [path.name for path in mails] == ["ops@example.org.eml"]
    alert = email.message_from_bytes(mails[0].read_bytes(), policy=email.policy.default)
    assert alert["Subject"] == f"[arXiv digest] {DAY}: run failed"
    assert DISK_FULL in alert.get_body(("plain",)).get_content()


@pytest.mark.parametrize(
    ("options", "env"),
    [(["--verbose"], {}), (["-v"], {}), ([], {"NEWSLETTER_LOG_LEVEL": "debug"})],
    ids=["--verbose", "-v", "NEWSLETTER_LOG_LEVEL=debug"],
)
def test_verbose_or_debug_level_prints_the_traceback_and_keeps_the_one_line_reason_last(
    tmp_path: Path, day_env: dict[str, str], engine: Engine, options: list[str], env: dict[str, str]
) -> None:
    with selections_refused(engine):
        failed = run([*options, "run-daily", "--date", DAY.isoformat()], tmp_path, **day_env, **env)

    assert failed.returncode != 0
    assert "Traceback (most recent call last)" in failed.stderr
    assert "in match_day" in failed.stderr  # where it happened, not only what
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith(f"newsletter: {DAY}: match failed: ") and DISK_FULL in last


def test_a_failed_day_is_done_by_the_next_run_once_the_cause_is_gone(
    tmp_path: Path, day_env: dict[str, str], engine: Engine
) -> None:
    with selections_refused(engine):
        assert run(["run-daily", "--date", DAY.isoformat()], tmp_path, **day_env).returncode != 0

    again = run(["run-daily", "--date", DAY.isoformat()], tmp_path, **day_env)

    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[0] == f"{DAY}: completed"
    assert (tmp_path / "outbox" / DAY.isoformat() / "ada@example.org.eml").exists()
    status = run(["status"], tmp_path, **day_env)
    harvested = "announced 1 (new 1, cross 0, replace 0), stored 1"
    assert f"{DAY}: completed | {harvested}, selections 1, sent 1" in status.stdout


def test_status_shows_a_day_whose_process_died_unrecorded_as_stalled_not_running(
    tmp_path: Path, engine: Engine
) -> None:
    hours_ago = utcnow() - dt.timedelta(hours=7)
    with Session(engine) as session:
        session.add(Run(day=DAY, status=RunStatus.RUNNING, started_at=hours_ago))
        session.commit()

    status = run(["status"], tmp_path, NEWSLETTER_DATABASE_URL=engine.url.render_as_string(hide_password=False))

    assert status.returncode == 0, status.stderr
    assert f"{DAY}: running - no digest (stalled: running since {hours_ago:%Y-%m-%d %H:%M} UTC" in status.stdout


def test_a_day_whose_mail_could_not_go_out_exits_non_zero_and_says_what_is_owed(
    tmp_path: Path, day_env: dict[str, str]
) -> None:
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the outbox should be")

    stopped = run(["run-daily", "--date", DAY.isoformat()], tmp_path, **day_env, NEWSLETTER_OUTBOX_DIR=str(blocked))

    assert stopped.returncode != 0
    assert "owed" in stopped.stderr.strip().splitlines()[-1], stopped.stderr
    status = run(["status"], tmp_path, **day_env)
    assert "owed" in next(line for line in status.stdout.splitlines() if line.startswith(str(DAY)))

    resumed = run(["run-daily", "--date", DAY.isoformat()], tmp_path, **day_env)

    assert resumed.returncode == 0, resumed.stderr
    assert (tmp_path / "outbox" / DAY.isoformat() / "ada@example.org.eml").exists()


# --- a database without the schema --------------------------------------------------------------

NO_SCHEMA_COMMANDS = [
    ["status"],
    ["subscribe", "ada@example.org", "-k", "deep learning", "--confirmed"],
    ["unsubscribe", "ada@example.org"],
    ["preview", "ada@example.org"],
    ["run-daily"],
    ["subscribers", "export"],
    ["web", "--port", "1"],
]


@pytest.mark.parametrize("args", NO_SCHEMA_COMMANDS, ids=lambda args: " ".join(args[:2]))
def test_every_command_refuses_a_missing_sqlite_database_without_creating_it(tmp_path: Path, args: list[str]) -> None:
    refused = run(args, tmp_path)

    assert refused.returncode != 0
    assert refused.stderr.strip().splitlines() == [
        "newsletter: no database at newsletter.db: run `newsletter db upgrade` first"
    ]
    assert not (tmp_path / "newsletter.db").exists()


@pytest.mark.parametrize("args", NO_SCHEMA_COMMANDS, ids=lambda args: " ".join(args[:2]))
def test_every_command_refuses_a_postgresql_database_without_the_schema(tmp_path: Path, args: list[str]) -> None:
    with pg_schema("noschema") as url:
        refused = run(args, tmp_path, NEWSLETTER_DATABASE_URL=url)

    assert refused.returncode != 0
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "no schema yet: run `newsletter db upgrade`" in lines[0], refused.stderr
    assert "Traceback" not in refused.stderr


def test_a_database_behind_the_newest_migration_is_refused_and_db_upgrade_brings_it_up(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'newsletter.db'}")
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
    engine.dispose()

    refused = run(["status"], tmp_path)

    assert refused.returncode != 0
    assert "schema is at revision 0001, not " in refused.stderr and "newsletter db upgrade" in refused.stderr
    assert run(["db", "upgrade"], tmp_path).returncode == 0
    assert run(["status"], tmp_path).returncode == 0


def test_the_quick_look_at_the_migration_files_finds_the_heads_alembic_finds() -> None:
    from alembic.script import ScriptDirectory

    from newsletter.schema import head_revisions_in_files

    assert head_revisions_in_files() == set(ScriptDirectory.from_config(alembic_config()).get_heads())


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ('"""doc\n\nRevision ID: x\n"""\nimport sqlalchemy as sa\nrevision = "b"\ndown_revision = "a"\n\n\n'
         "def upgrade() -> None:\n    revision = 'not this'\n",
         {"revision": "b", "down_revision": "a"}),
        ('revision: str = "m"\ndown_revision: tuple[str, str] = (\n    "a",\n    "b",\n)\n\n'
         "@decorated\ndef upgrade() -> None: ...\n",
         {"revision": "m", "down_revision": ("a", "b")}),
        # Named below the first function: read from the whole file.
        ('def upgrade() -> None: ...\n\nrevision = "late"\ndown_revision = None\n',
         {"revision": "late", "down_revision": None}),
        # A header that does not parse alone (a string left open until after the first def).
        ('x = """\ndef not_code():\n"""\nrevision = "r"\ndown_revision = "q"\n\ndef upgrade(): ...\n',
         {"revision": "r", "down_revision": "q"}),
    ],
    ids=["plain", "merge", "after-def", "open-string"],
)
def test_a_migrations_revision_and_parents_are_read_from_its_header_or_else_the_whole_file(
    tmp_path: Path, source: str, expected: dict[str, object]
) -> None:
    from newsletter.schema import _assignments

    path = tmp_path / "0099_x.py"
    path.write_text(source, encoding="utf-8")
    assert _assignments(path) == expected


# --- subscribe: the confirmation mail -------------------------------------------------------------


@pytest.fixture
def mail_env(tmp_path: Path, smtp_sink: SmtpSink) -> dict[str, str]:
    assert run(["db", "upgrade"], tmp_path).returncode == 0
    return {
        "NEWSLETTER_MAIL_BACKEND": "smtp",
        "NEWSLETTER_SMTP_HOST": "127.0.0.1",
        "NEWSLETTER_SMTP_PORT": str(smtp_sink.port),
        "NEWSLETTER_BASE_URL": "https://digest.example.org",
        "NEWSLETTER_SECRET_KEY": "test-secret-key-0123456789",
    }


def test_subscribe_without_confirmed_mails_the_confirmation_link_to_the_address(
    tmp_path: Path, mail_env: dict[str, str], smtp_sink: SmtpSink
) -> None:
    added = run(["subscribe", "Ada@Example.org", "-k", "deep learning"], tmp_path, **mail_env)

    assert added.returncode == 0, added.stderr
    assert "pending" in added.stdout and "confirmation mail sent" in added.stdout
    assert [message.rcpt_tos for message in smtp_sink.messages] == [["ada@example.org"]]
    raw = smtp_sink.messages[0].raw.decode("ascii", "replace")
    assert "Subject: Confirm your arXiv digest subscription" in raw
    received = email.message_from_bytes(smtp_sink.messages[0].raw, policy=email.policy.default)
    body = received.get_body(("plain",)).get_content()
    token = re.search(r"https://digest\.example\.org/confirm/(\S+)", body)
    assert token is not None, body
    # The link is the web page's: it names this subscriber and confirms them.
    settings = make_settings(f"sqlite:///{tmp_path / 'newsletter.db'}", tmp_path)
    engine = make_engine(settings.database_url)
    with Session(engine) as session:
        subscriber, _ = confirm_by_link(session, LinkSigner(settings.secret_key or ""), token.group(1))
        assert (subscriber.email, subscriber.status) == ("ada@example.org", SubscriberStatus.ACTIVE)
    engine.dispose()


def test_subscribe_with_confirmed_mails_nothing(tmp_path: Path, mail_env: dict[str, str], smtp_sink: SmtpSink) -> None:
    added = run(["subscribe", "ada@example.org", "-k", "deep learning", "--confirmed"], tmp_path, **mail_env)

    assert added.returncode == 0, added.stderr
    assert "active" in added.stdout
    assert smtp_sink.messages == []


def test_subscribe_says_so_when_the_confirmation_cannot_be_sent(tmp_path: Path, mail_env: dict[str, str]) -> None:
    unreachable = {**mail_env, "NEWSLETTER_SMTP_PORT": "1", "NEWSLETTER_SMTP_MAX_ATTEMPTS": "1"}

    failed = run(["subscribe", "ada@example.org", "-k", "deep learning"], tmp_path, **unreachable)

    assert failed.returncode != 0
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith("newsletter: the confirmation mail to ada@example.org was not sent"), failed.stderr


# --- help and preview ----------------------------------------------------------------------------

COMMANDS = [[], ["subscribe"], ["unsubscribe"], ["harvest"], ["run-daily"], ["preview"], ["demo"], ["web"],
            ["status"], ["db"], ["db", "upgrade"], ["subscribers"], ["subscribers", "import"],
            ["subscribers", "export"]]


@pytest.mark.parametrize("command_", COMMANDS, ids=lambda args: " ".join(args) or "newsletter")
def test_help_reads_without_type_tags(tmp_path: Path, command_: list[str]) -> None:
    shown = run([*command_, "--help"], tmp_path)

    assert shown.returncode == 0, shown.stderr
    assert not re.search(r"<[a-z]+(\[[a-z]+\])?>|\{[A-Za-z]+\}", shown.stdout), shown.stdout
    assert "Usage: " in shown.stdout


def test_subscribe_help_names_each_value_and_its_default_variable(tmp_path: Path) -> None:
    shown = run(["subscribe", "--help"], tmp_path).stdout

    assert "subscribe [OPTIONS] EMAIL" in shown
    assert "-k, --keyword KEYWORD" in shown and "--lang LANG" in shown and "--timezone ZONE" in shown
    assert "NEWSLETTER_DEFAULT_LANGUAGE" in shown and "NEWSLETTER_DEFAULT_TIMEZONE" in shown


def test_preview_without_out_writes_a_file_in_the_current_folder_not_html_on_the_terminal(tmp_path: Path) -> None:
    assert run(["demo"], tmp_path).returncode == 0

    shown = run(["preview", "ada@example.org"], tmp_path)

    assert shown.returncode == 0, shown.stderr
    written = tmp_path / "preview-ada@example.org.html"
    assert "<html" not in shown.stdout.lower()
    assert shown.stdout.startswith(f"wrote {written.name}") and f"file://{written}" in shown.stdout
    assert "arXiv" in written.read_text(encoding="utf-8")
    piped = run(["preview", "ada@example.org", "--out", "-"], tmp_path)
    assert piped.returncode == 0 and piped.stdout.startswith("<!DOCTYPE html>")  # asked for by name: `--out -`


def test_a_stored_keyword_that_no_longer_parses_is_reported_counting_from_1(
    tmp_path: Path, day_env: dict[str, str], engine: Engine
) -> None:
    with Session(engine) as session:
        session.execute(update(SubscriberKeyword).values(expression="graph AND"))
        session.commit()

    done = run(["run-daily", "--date", DAY.isoformat()], tmp_path, **day_env)

    assert "keyword 1 skipped, it no longer parses: operator AND needs a term after it at character 7" in done.stderr


# --- what a command loads -------------------------------------------------------------------------

LOADED = """
import sys
from newsletter.cli import main
sys.argv = ["newsletter", *sys.argv[1:]]
try:
    main()
finally:
    sys.stdout.flush()
    sys.stderr.write("\\nLOADED " + " ".join(sorted(sys.modules)) + "\\n")
"""


def loaded_modules(args: list[str], cwd: Path) -> set[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    clean["PYTHONPATH"] = str(REPOSITORY)
    done = subprocess.run([sys.executable, "-c", LOADED, *args], cwd=cwd, env=clean, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return set(done.stderr.rsplit("LOADED ", 1)[1].split())


def test_help_loads_no_stage_nor_the_database_layer(tmp_path: Path) -> None:
    loaded = loaded_modules(["--help"], tmp_path)

    assert not {name for name in loaded if name.split(".")[0] in ("sqlalchemy", "sqlmodel", "arxiv", "celery")}
    assert not {name for name in loaded if name.startswith("newsletter.") and name != "newsletter.cli"}


def test_one_subscribe_loads_neither_the_harvest_nor_the_pipeline_nor_mail_nor_alembic(tmp_path: Path) -> None:
    assert run(["db", "upgrade"], tmp_path).returncode == 0

    loaded = loaded_modules(["subscribe", "ada@example.org", "-k", "deep learning", "--confirmed"], tmp_path)

    heavy = ("newsletter.harvest", "newsletter.pipeline", "newsletter.mail", "newsletter.render", "arxiv", "celery",
             "alembic", "rich.progress")
    assert not {name for name in loaded if name.startswith(heavy)}
    # Nor what a keyword check, a SQLite database, settings left at their defaults and no mail never
    # use: the matching engine and highlighter, unicodeit's LaTeX tables (no LaTeX in the keyword), the
    # PostgreSQL dialect, the rate-limit parser, the account mails, the tables beyond the subscriber ones.
    unused = ("newsletter.keywords.engine", "newsletter.keywords.parallel", "newsletter.keywords.highlight",
              "ahocorasick_rs", "unicodeit", "sqlalchemy.dialects.postgresql", "limits",
              "newsletter.account_mail", "newsletter.models")
    assert not {name for name in loaded if name.startswith(unused)}
    assert {"newsletter.subscribers", "newsletter.keywords.syntax"} <= loaded


def test_every_table_model_builds_its_pydantic_validator_only_when_first_used() -> None:
    from sqlmodel import SQLModel

    from newsletter.models import TableModel

    tables = [model for model in TableModel.__subclasses__() if model.model_config.get("table")]
    # Every table derives from TableModel, none from SQLModel directly.
    assert not [model for model in SQLModel.__subclasses__() if model.model_config.get("table")]
    assert len(tables) == len(SQLModel.metadata.tables)
    assert not [model.__name__ for model in tables if not model.model_config.get("defer_build")]
