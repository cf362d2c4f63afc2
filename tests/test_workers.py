"""The service on real workers: `celery -A workers.celery_app worker` processes started by the test,
the real Redis and PostgreSQL, local arXiv and DeepL servers and an aiosmtpd sink."""

from __future__ import annotations

import subprocess
import threading
from collections import Counter
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlmodel import Session

from newsletter.models import DeliveryStatus, Run, RunStatus, Stage
from newsletter.runs import stage_finished, stage_rows, stage_seconds
from tests.conftest import inserts_refused
from tests.servers import ArxivServer, DeepLServer, SmtpSink, make_paper
from tests.workers_support import (  # noqa: F401 - the fixtures are used by name
    BIN,
    DAY,
    SUBSCRIBERS,
    Workers,
    announced_day_fixture,
    deliveries,
    digests_per_address,
    finish,
    newsletter,
    redis_url_fixture,
    service_env_fixture,
    subscribers_fixture,
    wait_until,
    workers_fixture,
)


def test_a_day_run_through_the_workers_mails_every_subscriber_once(
    workers: Workers,
    service_env: dict[str, str],
    tmp_path: Path,
    pg_engine: Engine,
    subscribers: list[str],
    announced_day: list[str],
    smtp_sink: SmtpSink,
    deepl_server: DeepLServer,
) -> None:
    workers.start("worker-a")

    run = newsletter(service_env, tmp_path, "run-daily", "--via-celery", "--date", "2026-11-24")
    code, stdout, stderr = finish(run)

    assert code == 0, stderr
    assert "2026-11-24: completed" in stdout
    # The progress display ends with every recipient accounted for.
    assert f"{SUBSCRIBERS}/{SUBSCRIBERS} sent {SUBSCRIBERS}, failed 0" in stderr
    assert "seconds: harvest" in stdout
    assert digests_per_address(smtp_sink) == Counter({email: 1 for email in subscribers})
    digest = smtp_sink.messages_to("reader001@example.org")[0].message
    html = digest.get_body(("html",)).get_content()
    assert "2026-11-24" in digest["Subject"]
    # The matched words are highlighted inside the title.
    assert "diffusion model</b> for problem 1" in html
    # The title came back from the DeepL server in the subscriber's language.
    assert deepl_server.prefix_for("ZH-HANS") in html
    assert deliveries(pg_engine) == {DeliveryStatus.SENT: SUBSCRIBERS}
    with Session(pg_engine) as session:
        run = session.scalars(select(Run).where(Run.day == DAY)).one()
        stages, seconds = stage_rows(session, run), stage_seconds(session, run)
    assert run.status == "completed"
    assert stages[Stage.HARVEST].announced == 20
    assert stages[Stage.DELIVER].sent == SUBSCRIBERS and stages[Stage.DELIVER].recipients == SUBSCRIBERS
    assert list(seconds) == [*Stage, "total"]

    status = subprocess.run(
        [str(BIN / "newsletter"), "status"], env=service_env, cwd=tmp_path, capture_output=True, text=True
    )
    assert status.returncode == 0, status.stderr
    assert f"sent {SUBSCRIBERS}, failed 0" in status.stdout
    assert "seconds: harvest" in status.stdout and "deliver" in status.stdout


def test_match_and_translate_run_while_the_api_is_slow_and_the_mail_waits_for_its_details(
    workers: Workers,
    service_env: dict[str, str],
    tmp_path: Path,
    pg_engine: Engine,
    subscribers: list[str],
    announced_day: list[str],
    arxiv_server: ArxivServer,
    smtp_sink: SmtpSink,
    deepl_server: DeepLServer,
) -> None:
    # The API's words for paper 1 differ from the feed's, and only the API knows its comment.
    api_abstract = "We revisit problem 1 with the words the API returns."
    arxiv_server.add_papers(make_paper(
        "2611.00001", title=announced_day[0], abstract=api_abstract, categories=["cs.AI", "cs.LG"],
        comment="12 pages, from the API",
    ))
    released = threading.Event()
    arxiv_server.hold_next(1, until=released, seconds=90, path_prefix="/api")
    workers.start("worker-a", NEWSLETTER_ARXIV_TIMEOUT_SECONDS="120")

    run = newsletter(service_env, tmp_path, "run-daily", "--via-celery", "--date", "2026-11-24")
    try:
        def translated() -> bool:
            with Session(pg_engine) as session:
                return stage_finished(session, DAY, Stage.TRANSLATE)

        wait_until(translated, 60, "the translate stage to end while the API's reply is held")
        # Nothing goes out before the details are in.
        assert smtp_sink.messages == []
        with Session(pg_engine) as session:
            assert session.scalars(select(Run.harvested_at).where(Run.day == DAY)).one() is None
    finally:
        released.set()
    code, stdout, stderr = finish(run)

    assert code == 0, stderr
    assert "2026-11-24: completed" in stdout
    assert digests_per_address(smtp_sink) == Counter({email: 1 for email in subscribers})
    html = smtp_sink.messages_to("reader001@example.org")[0].message.get_body(("html",)).get_content()
    assert api_abstract in html and "12 pages, from the API" in html
    assert "We study the problem posed by 2611.00001." not in html
    # Its translation was made again from the API's words, after the one from the feed's was dropped.
    sent_to_deepl = [text for request in deepl_server.requests for text in request.texts]
    assert any("We study the problem posed by 2611.00001." in text for text in sent_to_deepl)
    assert any("We revisit problem 1" in text for text in sent_to_deepl)
    assert html.count("revisit problem 1") == 2


def test_two_run_daily_commands_at_once_send_each_digest_once(
    workers: Workers,
    service_env: dict[str, str],
    tmp_path: Path,
    pg_engine: Engine,
    subscribers: list[str],
    announced_day: list[str],
    smtp_sink: SmtpSink,
) -> None:
    workers.start("worker-a")

    runs = [newsletter(service_env, tmp_path, "run-daily", "--via-celery", "--date", "2026-11-24") for _ in range(2)]
    outcomes = [finish(run) for run in runs]

    for code, stdout, stderr in outcomes:
        assert code == 0, stderr
        assert "2026-11-24: completed" in stdout
    assert digests_per_address(smtp_sink) == Counter({email: 1 for email in subscribers})
    with Session(pg_engine) as session:
        assert session.scalar(select(func.count()).select_from(Run)) == 1
    assert deliveries(pg_engine) == {DeliveryStatus.SENT: SUBSCRIBERS}


def test_a_day_whose_stage_task_fails_shows_failed_with_the_reason_and_the_next_run_sends_it(
    workers: Workers,
    service_env: dict[str, str],
    tmp_path: Path,
    pg_engine: Engine,
    subscribers: list[str],
    announced_day: list[str],
    smtp_sink: SmtpSink,
) -> None:
    workers.start("worker-a")
    refused = "the selection table is being restored; try again later"
    run_day = ("run-daily", "--via-celery", "--date", "2026-11-24")

    with inserts_refused(pg_engine, "selection", refused):
        code, stdout, stderr = finish(newsletter(service_env, tmp_path, *run_day))

    assert code != 0
    assert stderr.strip().splitlines()[-1] == f"newsletter: match failed: RaiseException: {refused}"
    with Session(pg_engine) as session:
        assert session.scalars(select(Run.status).where(Run.day == DAY)).one() == RunStatus.FAILED
    status = subprocess.run(
        [str(BIN / "newsletter"), "status"], env=service_env, cwd=tmp_path, capture_output=True, text=True
    )
    assert f"2026-11-24: failed - no digest (failure: match failed: RaiseException: {refused}" in status.stdout

    code, stdout, stderr = finish(newsletter(service_env, tmp_path, *run_day))

    assert code == 0, stderr
    assert "2026-11-24: completed" in stdout
    assert digests_per_address(smtp_sink) == Counter({email: 1 for email in subscribers})
