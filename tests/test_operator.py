"""The operator's view: /admin, /admin/status.json and /metrics behind the admin token, and the alert mails."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import Session

from newsletter.alerts import due_causes, raise_alerts
from newsletter.config import Settings
from newsletter.harvest.calendar import EASTERN
from newsletter.mail import make_backend
from newsletter.models import AdminAlert, AlertCause, Run, RunStatus
from newsletter.pipeline import production_transports, run_daily
from newsletter.status import status_lines
from newsletter.subscribers import subscribe
from newsletter.web.app import create_app
from tests.conftest import make_settings
from tests.servers import ArxivServer, SmtpSink, build_feed, make_paper
from tests.web_helpers import Visitor

CATEGORIES = ["cs.AI"]
WEDNESDAY, THURSDAY = dt.date(2026, 11, 18), dt.date(2026, 11, 19)
TOKEN = "operator-token-0123456789"
ADMIN = "ops@example.org"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
KEYS = {"day", "status", "announced", "stored", "missing", "owed", "feed_seen_at", "last_accepted_at"}


def operator_settings(engine: Engine, tmp_path: Path, arxiv: ArxivServer, sink: SmtpSink, **more: object) -> Settings:
    values: dict[str, object] = {
        "arxiv_feed_url": arxiv.feed_base_url, "arxiv_api_url": arxiv.api_url, "arxiv_delay_seconds": 0,
        "arxiv_retry_base_seconds": 0.001, "arxiv_max_retries": 1, "arxiv_timeout_seconds": 5,
        "categories": CATEGORIES, "mail_backend": "smtp", "smtp_host": "127.0.0.1", "smtp_port": sink.port,
        "smtp_max_attempts": 1, "admin_email": ADMIN, "admin_token": TOKEN,
    }
    values.update(more)
    return make_settings(engine.url.render_as_string(hide_password=False), tmp_path, **values)


@pytest.fixture
def settings(engine: Engine, tmp_path: Path, arxiv_server: ArxivServer, smtp_sink: SmtpSink) -> Settings:
    return operator_settings(engine, tmp_path, arxiv_server, smtp_sink)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def run_day(session: Session, settings: Settings, server: ArxivServer, day: dt.date, lacking: int = 0) -> None:
    """Announce two matching papers on `day` (the API lacking the last `lacking`) and run the day."""
    papers = [make_paper(f"2611.{day.day:03d}{i:02d}", title=f"Graph learning {i}") for i in (1, 2)]
    server.add_papers(*papers[: len(papers) - lacking])
    server.set_feed(CATEGORIES, build_feed(day, papers, categories=CATEGORIES))
    run_daily(session, settings, production_transports(settings), day)


@pytest.fixture
def two_days(session: Session, settings: Settings, arxiv_server: ArxivServer) -> None:
    subscribe(session, "ada@example.org", ["graph learning"], confirmed=True)
    session.commit()
    run_day(session, settings, arxiv_server, WEDNESDAY)
    run_day(session, settings, arxiv_server, THURSDAY, lacking=1)


def parse_time(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


@pytest.mark.usefixtures("two_days")
def test_status_json_answers_the_contract_newest_first(client: TestClient, smtp_sink: SmtpSink) -> None:
    answer = client.get("/admin/status.json", headers=BEARER)

    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    days = answer.json()["days"]
    assert [day["day"] for day in days] == ["2026-11-19", "2026-11-18"]
    assert all(set(day) == KEYS for day in days)
    thursday = days[0]
    assert thursday["status"] == "completed"
    assert thursday["announced"] == {"new": 2, "cross": 0, "replace": 0}
    assert (thursday["stored"], thursday["missing"], thursday["owed"]) == (1, ["2611.01902"], 0)
    seen, accepted = parse_time(thursday["feed_seen_at"]), parse_time(thursday["last_accepted_at"])
    assert seen.tzinfo is not None and seen < accepted
    assert len(smtp_sink.messages_to("ada@example.org")) == 2
    assert days[1]["missing"] == [] and days[1]["stored"] == 2


@pytest.mark.usefixtures("two_days")
def test_status_prints_each_days_completeness_and_its_latency(session: Session, settings: Settings) -> None:
    lines = {line[:10]: line for line in status_lines(session, settings) if line[:4] == "2026"}

    assert "announced 2 (new 2, cross 0, replace 0), stored 1" in lines["2026-11-19"]
    assert "missing (the API did not return them): 2611.01902" in lines["2026-11-19"]
    assert "announced 2 (new 2, cross 0, replace 0), stored 2" in lines["2026-11-18"]
    assert "missing" not in lines["2026-11-18"]
    assert all("feed seen to last digest accepted: " in line for line in lines.values())


@pytest.mark.usefixtures("two_days")
def test_the_admin_routes_refuse_without_the_token(client: TestClient) -> None:
    for path in ("/admin/status.json", "/metrics"):
        assert client.get(path).status_code == 401
        assert client.get(path, headers={"Authorization": "Bearer wrong-token-0123456789"}).status_code == 401
        assert client.get(path, headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
        assert client.get(path).headers["www-authenticate"].startswith("Bearer")
    page = client.get("/admin")
    assert page.status_code == 401 and 'name="token"' in page.text and "2026-11-19" not in page.text


def test_without_an_admin_token_the_admin_routes_do_not_exist(
    engine: Engine, tmp_path: Path, arxiv_server: ArxivServer, smtp_sink: SmtpSink
) -> None:
    settings = operator_settings(engine, tmp_path, arxiv_server, smtp_sink, admin_token=None)
    with TestClient(create_app(settings)) as client:
        for path in ("/admin", "/admin/status.json", "/metrics"):
            assert client.get(path, headers=BEARER).status_code == 404


@pytest.mark.usefixtures("two_days")
def test_the_login_form_lets_a_browser_see_the_operator_page(settings: Settings) -> None:
    visitor = Visitor(settings)

    refused = visitor.submit("/admin", "/admin/login", {"token": "not-the-token-at-all"})
    assert refused.status_code == 401 and "not the admin token" in refused.text
    page = visitor.submit("/admin", "/admin/login", {"token": TOKEN})

    assert page.status_code == 200 and str(page.url).endswith("/admin")
    assert visitor.client.cookies.get("admin") not in (None, TOKEN)
    assert "announced 2 (new 2, cross 0, replace 0), stored 1" in page.text
    assert "missing (the API did not return them): 2611.01902" in page.text
    assert visitor.get("/admin/status.json").status_code == 200


@pytest.mark.usefixtures("two_days")
def test_metrics_carry_the_newest_days_counts_and_latency(client: TestClient) -> None:
    answer = client.get("/metrics", headers=BEARER)

    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    families = {family.name: family for family in text_string_to_metric_families(answer.text)}
    announced = {s.labels["type"]: s.value for s in families["newsletter_day_announced_papers"].samples}
    assert announced == {"new": 2.0, "cross": 0.0, "replace": 0.0}
    assert [s.labels["day"] for s in families["newsletter_day_announced_papers"].samples] == ["2026-11-19"] * 3
    assert families["newsletter_day_stored_papers"].samples[0].value == 1.0
    assert families["newsletter_day_missing_papers"].samples[0].value == 1.0
    assert families["newsletter_day_digests_sent"].samples[0].value == 1.0
    assert families["newsletter_day_latency_seconds"].samples[0].value > 0
    stages = {s.labels["stage"] for s in families["newsletter_day_stage_seconds"].samples}
    assert {"harvest", "match", "deliver"} <= stages


def alert_mails(sink: SmtpSink) -> list[str]:
    return [str(m.message["Subject"]) for m in sink.messages_to(ADMIN)]


@pytest.mark.usefixtures("two_days")
def test_an_incomplete_harvest_is_mailed_to_the_operator_once(
    session: Session, settings: Settings, smtp_sink: SmtpSink, client: TestClient
) -> None:
    now = dt.datetime(2026, 11, 19, 12, 0, tzinfo=dt.UTC)
    backend = make_backend(settings)
    first = raise_alerts(session, settings, backend, now)
    again = raise_alerts(session, settings, backend, now)
    backend.close()

    assert [(a.day, a.cause) for a in first] == [(THURSDAY, AlertCause.HARVEST_INCOMPLETE)] and again == []
    assert alert_mails(smtp_sink) == ["[arXiv digest] 2026-11-19: harvest incomplete"]
    body = smtp_sink.messages_to(ADMIN)[0].message.get_body(("plain",)).get_content()
    assert "2611.01902" in body and "/admin" in body
    page = client.get("/admin", headers=BEARER)
    assert "harvest_incomplete" in page.text and "(mailed)" in page.text


def test_a_failed_run_and_owed_digests_are_each_mailed_once(
    session: Session, settings: Settings, smtp_sink: SmtpSink, arxiv_server: ArxivServer
) -> None:
    subscribe(session, "ada@example.org", ["graph learning"], confirmed=True)
    session.commit()
    arxiv_server.fail_next(10, 503, path_prefix="/api")
    run_day(session, settings, arxiv_server, WEDNESDAY)
    arxiv_server.clear_faults()
    smtp_sink.refuse("MAIL", "421 4.3.2 Service shutting down")
    run_day(session, settings, arxiv_server, THURSDAY)
    smtp_sink.accept_all()
    statuses = dict(session.execute(select(Run.day, Run.status)).all())
    assert statuses == {WEDNESDAY: RunStatus.FAILED, THURSDAY: RunStatus.INCOMPLETE}

    backend = make_backend(settings)
    now = dt.datetime(2026, 11, 19, 12, 0, tzinfo=dt.UTC)
    raise_alerts(session, settings, backend, now)
    raise_alerts(session, settings, backend, now)
    backend.close()

    assert sorted(alert_mails(smtp_sink)) == [
        "[arXiv digest] 2026-11-18: run failed",
        "[arXiv digest] 2026-11-19: digests owed",
    ]


def test_an_alert_whose_mail_was_refused_is_mailed_on_the_next_check(
    session: Session, settings: Settings, smtp_sink: SmtpSink
) -> None:
    session.add(Run(day=THURSDAY, status=RunStatus.FAILED, reason="harvest failed: arXiv API answered HTTP 503"))
    session.commit()
    now = dt.datetime(2026, 11, 19, 12, 0, tzinfo=dt.UTC)
    backend = make_backend(settings)
    smtp_sink.refuse("DATA", "554 5.7.1 Not now")
    raise_alerts(session, settings, backend, now)
    alert = session.scalars(select(AdminAlert).where(AdminAlert.cause == AlertCause.RUN_FAILED)).one()
    assert alert.mailed_at is None and "554" in (alert.mail_error or "")

    smtp_sink.accept_all()
    raise_alerts(session, settings, backend, now)
    backend.close()

    assert alert_mails(smtp_sink).count("[arXiv digest] 2026-11-19: run failed") == 1
    session.refresh(alert)
    assert alert.mailed_at is not None and alert.mail_attempts == 2


def eastern(day: dt.date, hour: int, minute: int) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, hour, minute, tzinfo=EASTERN).astimezone(dt.UTC)


@pytest.mark.parametrize(
    ("now", "late"),
    [
        (eastern(WEDNESDAY, 21, 29), False),  # Thursday's feed: usually by 20:30 Eastern, an hour's grace
        (eastern(WEDNESDAY, 21, 31), True),
        (eastern(dt.date(2026, 11, 19), 3, 0), True),  # the small hours still wait for Thursday's feed
        (eastern(dt.date(2026, 11, 26), 23, 0), False),  # Thanksgiving: no feed on Friday 27 November
    ],
)
def test_a_feed_still_empty_an_hour_after_the_usual_time_on_an_announcement_day_is_late(
    session: Session, settings: Settings, now: dt.datetime, late: bool
) -> None:
    causes = [cause for cause in due_causes(session, settings, now) if cause.cause == AlertCause.FEED_LATE]
    assert bool(causes) is late


def test_a_feed_seen_in_time_raises_no_late_alert(session: Session, settings: Settings) -> None:
    session.add(Run(day=THURSDAY, feed_seen_at=eastern(WEDNESDAY, 20, 40)))
    session.commit()
    assert due_causes(session, settings, eastern(WEDNESDAY, 23, 0)) == []
