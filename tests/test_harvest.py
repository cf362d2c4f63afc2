"""Harvest against the local arXiv stand-in (feed + API), with the production client, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlmodel import Session

from newsletter.config import Settings
from newsletter.models import Announcement, Paper, Run, Translation, TranslationRejection
from newsletter.pipeline import EarlyStart, harvest_stage, production_transports, run_daily
from newsletter.status import status_lines
from tests.conftest import REFERENCE, make_settings
from tests.servers import ArxivServer, build_empty_feed, build_feed, make_paper
from tests.servers.arxiv import render_feed

CATEGORIES = ["cs.AI", "cs.LG"]
THURSDAY = dt.date(2026, 11, 19)
UTC = dt.UTC


def arxiv_settings(engine, tmp_path: Path, server: ArxivServer, **overrides: object) -> Settings:  # type: ignore[no-untyped-def]
    values: dict[str, object] = {
        "arxiv_feed_url": server.feed_base_url,
        "arxiv_api_url": server.api_url,
        "arxiv_delay_seconds": 0,
        "arxiv_retry_base_seconds": 0.001,
        "arxiv_max_retries": 2,
        "arxiv_timeout_seconds": 5,
        "categories": CATEGORIES,
    }
    values.update(overrides)
    return make_settings(engine.url.render_as_string(hide_password=False), tmp_path, **values)


@pytest.fixture
def arxiv(engine, tmp_path: Path, arxiv_server: ArxivServer):  # type: ignore[no-untyped-def]
    settings = arxiv_settings(engine, tmp_path, arxiv_server)
    return arxiv_server, settings, production_transports(settings)


def count(session: Session, model) -> int:  # type: ignore[no-untyped-def]
    return session.scalar(select(func.count()).select_from(model)) or 0


def announced(session: Session, day: dt.date) -> dict[str, str]:
    rows = session.execute(select(Announcement.arxiv_id, Announcement.announce_type).where(Announcement.day == day))
    return dict(rows.all())


def test_it_stores_new_and_cross_listed_papers_and_a_replacement_only_updates_the_stored_paper(
    session: Session, arxiv
) -> None:  # type: ignore[no-untyped-def]
    server, settings, transports = arxiv
    old = make_paper("2611.00003v1", title="Old title", categories=["cs.LG"])
    server.add_papers(old)
    server.set_feed(CATEGORIES, build_feed(THURSDAY - dt.timedelta(days=1), [old]))
    harvest_stage(session, transports, None, CATEGORIES)
    new = make_paper(
        "2611.00001",
        title="Scaling  laws\n  for $2.5\\times$ speed-ups",
        abstract="We show\n   a $\\rho(x)$ bound.\n",
        authors=["Ada Lovelace", "Zoë Ünal"],
        categories=["cs.LG", "stat.ML"],
        comment="12 pages",
        journal_ref="JMLR 1 (2026)",
        doi="10.1000/xyz",
    )
    cross = make_paper("2611.00002", categories=["math.OC", "cs.AI"])
    replaced = make_paper("2611.00003v2", title="New title", categories=["cs.LG"])
    server.add_papers(new, cross, replaced)
    server.set_feed(CATEGORIES, build_feed(THURSDAY, [(new, "new"), (cross, "cross"), (replaced, "replace")]))

    outcome = harvest_stage(session, transports, None, CATEGORIES)

    assert outcome.day == THURSDAY
    assert announced(session, THURSDAY) == {"2611.00001": "new", "2611.00002": "cross"}
    paper = session.get(Paper, "2611.00001", populate_existing=True)
    assert paper.title == "Scaling laws for $2.5\\times$ speed-ups"
    assert paper.abstract == "We show a $\\rho(x)$ bound."
    assert paper.authors == ["Ada Lovelace", "Zoë Ünal"]
    assert (paper.comment, paper.journal_ref, paper.doi) == ("12 pages", "JMLR 1 (2026)", "10.1000/xyz")
    assert paper.categories == ["cs.LG", "stat.ML"] and paper.details_source == "api"
    updated = session.get(Paper, "2611.00003", populate_existing=True)
    assert (updated.version, updated.title) == (2, "New title")
    assert outcome.counts["announced"] == 2 and outcome.counts["replaced"] == 1


def test_a_replacement_of_a_paper_never_stored_is_neither_fetched_nor_stored(session: Session, arxiv) -> None:  # type: ignore[no-untyped-def]
    server, settings, transports = arxiv
    new, stranger = make_paper("2611.00001"), make_paper("2511.00009v4")
    server.add_papers(new, stranger)
    server.set_feed(CATEGORIES, build_feed(THURSDAY, [(new, "new"), (stranger, "replace")]))

    harvest_stage(session, transports, None, CATEGORIES)

    assert session.get(Paper, "2511.00009") is None
    assert [r.query["id_list"] for r in server.api_requests] == ["2611.00001"]


def test_running_the_same_day_twice_fetches_nothing_twice_and_changes_nothing(session: Session, arxiv) -> None:  # type: ignore[no-untyped-def]
    server, settings, transports = arxiv
    papers = [make_paper(f"2611.{i:05d}") for i in range(1, 6)]
    server.add_papers(*papers)
    server.set_feed(CATEGORIES, build_feed(THURSDAY, papers))
    harvest_stage(session, transports, None, CATEGORIES)
    before = dict(session.execute(select(Paper.arxiv_id, Paper.harvested_at)).all())
    api_calls = len(server.api_requests)

    harvest_stage(session, transports, None, CATEGORIES)
    harvest_stage(session, transports, THURSDAY, CATEGORIES)

    assert len(server.api_requests) == api_calls == 1
    assert dict(session.execute(select(Paper.arxiv_id, Paper.harvested_at)).all()) == before
    assert count(session, Announcement) == 5 and count(session, Run) == 1


def test_details_are_asked_for_in_batches_of_at_most_100_ids(session: Session, arxiv) -> None:  # type: ignore[no-untyped-def]
    server, settings, transports = arxiv
    papers = [make_paper(f"2611.{i:05d}") for i in range(1, 251)]
    server.add_papers(*papers)
    server.set_feed(CATEGORIES, build_feed(THURSDAY, papers))

    harvest_stage(session, transports, None, CATEGORIES)

    assert [len(r.query["id_list"].split(",")) for r in server.api_requests] == [100, 100, 50]
    assert len(announced(session, THURSDAY)) == 250


def test_an_id_the_api_does_not_return_is_stored_from_the_feeds_own_fields(session: Session, arxiv) -> None:  # type: ignore[no-untyped-def]
    server, settings, transports = arxiv
    known = make_paper("2611.00001")
    missing = make_paper("2611.00002", title="Only in the feed", authors=["Grace Hopper", "Alan Turing"])
    server.add_papers(known)
    server.set_feed(CATEGORIES, build_feed(THURSDAY, [known, missing]))

    harvest_stage(session, transports, None, CATEGORIES)

    paper = session.get(Paper, "2611.00002")
    assert paper.details_source == "feed" and paper.title == "Only in the feed"
    assert paper.authors == ["Grace Hopper", "Alan Turing"]
    assert set(announced(session, THURSDAY)) == {"2611.00001", "2611.00002"}


def test_a_feed_item_with_an_unexpected_id_is_skipped_with_a_logged_reason(
    session: Session, arxiv, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    server, settings, transports = arxiv
    good = make_paper("2611.00001")
    body = build_feed(THURSDAY, [good, make_paper("2611.00002")]).replace(b"oai:arXiv.org:2611.00002v1", b"bogus-42")
    server.add_papers(good)
    server.set_feed(CATEGORIES, body)

    with caplog.at_level(logging.WARNING, logger="newsletter.harvest"):
        harvest_stage(session, transports, None, CATEGORIES)

    assert set(announced(session, THURSDAY)) == {"2611.00001"}
    assert "unexpected identifier 'bogus-42'" in caplog.text


def test_429_twice_then_success_is_retried_and_nothing_is_lost(session: Session, arxiv) -> None:  # type: ignore[no-untyped-def]
    server, settings, transports = arxiv
    papers = [make_paper("2611.00001"), make_paper("2611.00002")]
    server.add_papers(*papers)
    server.set_feed(CATEGORIES, build_feed(THURSDAY, papers))
    server.fail_next(2, 429, path_prefix="/api")

    harvest_stage(session, transports, None, CATEGORIES)

    assert len(server.api_requests) == 3
    assert session.get(Paper, "2611.00002").details_source == "api"


def test_a_feed_answering_503_once_is_asked_again_and_logged_as_a_feed_failure(
    session: Session, arxiv, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    server, settings, transports = arxiv
    paper = make_paper("2611.00001")
    server.add_papers(paper)
    server.set_feed(CATEGORIES, build_feed(THURSDAY, [paper]))
    server.fail_next(1, 503, path_prefix="/rss")

    with caplog.at_level(logging.WARNING, logger="newsletter"):
        day = harvest_stage(session, transports, None, CATEGORIES).day

    assert day == THURSDAY and len(server.feed_requests) == 2
    retries = [record.getMessage() for record in caplog.records if "attempt" in record.getMessage()]
    assert retries and all(line.startswith("announcement feed attempt 1 failed") for line in retries), retries
    assert set(announced(session, THURSDAY)) == {"2611.00001"}


def test_status_names_weekdays_with_no_run_at_all(session: Session, arxiv) -> None:  # type: ignore[no-untyped-def]
    server, settings, transports = arxiv
    monday, thursday = make_paper("2611.00001"), make_paper("2611.00002")
    server.add_papers(monday, thursday)
    server.set_feed(CATEGORIES, build_feed(dt.date(2026, 11, 16), [monday]))
    harvest_stage(session, transports, None)
    server.set_feed(CATEGORIES, build_feed(THURSDAY, [thursday]))
    harvest_stage(session, transports, None)  # no categories: nothing caught up

    lines = list(status_lines(session, settings))

    assert "2026-11-17: no run recorded - no digest (the service did not run; the next run catches up)" in lines
    assert "2026-11-18: no run recorded - no digest (the service did not run; the next run catches up)" in lines
    assert sum("no run recorded" in line for line in lines) == 2


def test_a_timed_out_api_request_is_retried(session: Session, engine, tmp_path: Path, arxiv_server) -> None:  # type: ignore[no-untyped-def]
    settings = arxiv_settings(engine, tmp_path, arxiv_server, arxiv_timeout_seconds=0.3)
    paper = make_paper("2611.00001")
    arxiv_server.add_papers(paper)
    arxiv_server.set_feed(CATEGORIES, build_feed(THURSDAY, [paper]))
    arxiv_server.delay_next(1, 3.0, path_prefix="/api")

    harvest_stage(session, production_transports(settings), None, CATEGORIES)

    assert len(arxiv_server.api_requests) == 2
    assert session.get(Paper, "2611.00001").details_source == "api"


def _short_page(server: ArxivServer) -> None:
    body = render_feed([(make_paper("2611.00001"), None)], id_list="2611.00001,2611.00002", max_results=2,
                       total_results=2)
    server.respond_next(body, 200, "application/atom+xml", n=10, path_prefix="/api")


def _feed_of_unreadable_ids() -> bytes:
    return build_feed(THURSDAY, [make_paper("2611.00001")]).replace(b"oai:arXiv.org", b"x")


BAD_REPLIES = {
    "feed malformed XML": (lambda s: s.set_feed(CATEGORIES, b"<rss><channel><item><title>cut"), "not well-formed XML"),
    "feed HTML error page": (
        lambda s: s.respond_next("<!DOCTYPE html><html><title>502 Bad Gateway</title></html>", 200,
                                 path_prefix="/rss"),
        "HTML page ('502 Bad Gateway')",
    ),
    "feed without one usable item": (
        lambda s: s.set_feed(CATEGORIES, _feed_of_unreadable_ids()),
        "1 items and none usable: unexpected identifier 'x:2611.00001v1'",
    ),
    "feed unreachable": (lambda s: s.fail_next(10, 503, path_prefix="/rss"), "announcement feed answered HTTP 503"),
    "API HTML page": (
        lambda s: s.respond_next("<html><title>Maintenance</title></html>", 200, n=10, path_prefix="/api"),
        "HTML page ('Maintenance') instead of Atom",
    ),
    "API truncated XML": (lambda s: s.truncate_next_page(10, fraction=0.6), "malformed XML"),
    "API empty first page": (lambda s: s.empty_next_page(10), "shorter than announced: 0 of 2 entries"),
    "API page shorter than announced": (_short_page, "shorter than announced: 1 of 2 entries"),
    "API error feed": (
        lambda s: s.respond_next(
            next((REFERENCE / "arxiv" / "api").glob("id_abc_*.xml")).read_bytes(), 400, "application/atom+xml",
            path_prefix="/api",
        ),
        "refused the request (HTTP 400): incorrect id format for abc",
    ),
    "API rate limit never lifts": (lambda s: s.fail_next(10, 429, path_prefix="/api"), "HTTP 429"),
}


@pytest.mark.parametrize("case", list(BAD_REPLIES))
def test_a_bad_reply_fails_the_day_with_its_reason_writes_nothing_and_the_next_run_retries(
    session: Session, arxiv, case: str
) -> None:  # type: ignore[no-untyped-def]
    server, settings, transports = arxiv
    papers = [make_paper("2611.00001"), make_paper("2611.00002")]
    server.add_papers(*papers)
    good_feed = build_feed(THURSDAY, papers)
    server.set_feed(CATEGORIES, good_feed)
    break_it, reason = BAD_REPLIES[case]
    break_it(server)

    summary = run_daily(session, settings, transports, THURSDAY)

    assert summary.status == "failed" and reason in summary.reason
    assert count(session, Paper) == 0 and count(session, Announcement) == 0
    run = session.scalars(select(Run).where(Run.day == THURSDAY)).one()
    assert run.status == "failed" and reason in run.reason and run.harvested_at is None
    assert any(line.startswith("2026-11-19: failed - no digest (failure: harvest failed") and reason in line
               for line in status_lines(session, settings))

    server.clear_faults()
    server.set_feed(CATEGORIES, good_feed)
    again = run_daily(session, settings, transports, THURSDAY)

    assert again.status == "completed"
    assert set(announced(session, THURSDAY)) == {"2611.00001", "2611.00002"}


def test_when_the_api_fails_on_the_latest_day_the_failure_is_recorded_on_the_feeds_day(
    session: Session, arxiv
) -> None:  # type: ignore[no-untyped-def]
    server, settings, transports = arxiv
    paper = make_paper("2611.00001")
    server.add_papers(paper)
    server.set_feed(CATEGORIES, build_feed(THURSDAY, [paper]))
    server.fail_next(10, 503, path_prefix="/api")

    summary = run_daily(session, settings, transports)

    assert summary.status == "failed" and "arXiv API answered HTTP 503" in summary.reason
    run = session.scalars(select(Run)).one()
    assert (run.day, run.status) == (THURSDAY, "failed")
    assert len(server.api_requests) == settings.arxiv_max_retries + 1


def test_a_weekend_feed_is_recorded_as_no_announcement_and_status_says_so(session: Session, arxiv) -> None:  # type: ignore[no-untyped-def]
    server, settings, transports = arxiv
    saturday = dt.date(2026, 11, 21)
    server.set_feed(CATEGORIES, build_empty_feed(saturday, CATEGORIES))

    summary = run_daily(session, settings, transports)

    assert summary.status == "no_announcement"
    run = session.scalars(select(Run).where(Run.day == saturday)).one()
    assert run.status == "no_announcement"
    assert "2026-11-21: no_announcement - no digest (no announcement: arXiv made no announcement" in "\n".join(
        status_lines(session, settings)
    )
    assert server.api_requests == []


def test_a_day_without_matches_shows_no_matches_in_status(session: Session, arxiv) -> None:  # type: ignore[no-untyped-def]
    server, settings, transports = arxiv
    paper = make_paper("2611.00001")
    server.add_papers(paper)
    server.set_feed(CATEGORIES, build_feed(THURSDAY, [paper]))

    run_daily(session, settings, transports)

    assert "2026-11-19: completed - no digest (no matches: no paper matched" in "\n".join(
        status_lines(session, settings)
    )


def _utc(year: int, month: int, day: int, hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, tzinfo=UTC)


def test_missed_days_are_caught_up_from_the_api_submission_windows_without_duplicates(
    session: Session, arxiv
) -> None:  # type: ignore[no-untyped-def]
    server, settings, transports = arxiv
    monday, tuesday, wednesday = dt.date(2026, 11, 16), dt.date(2026, 11, 17), dt.date(2026, 11, 18)
    # Monday's feed (submitted Thu 14:00 - Fri 14:00 EST), harvested normally.
    held = make_paper("2611.00010", categories=["cs.LG"], published=_utc(2026, 11, 17, 12))  # moderated, early
    monday_paper = make_paper("2611.00011", categories=["cs.AI"], published=_utc(2026, 11, 13, 15))
    server.add_papers(held, monday_paper)
    server.set_feed(CATEGORIES, build_feed(monday, [monday_paper, held]))
    harvest_stage(session, transports, None, CATEGORIES)
    # Tuesday's and Wednesday's feeds are missed (service down). Windows in UTC (EST = UTC-5):
    # Tuesday: Fri 13 19:00 - Mon 16 19:00; Wednesday: Mon 16 19:00 - Tue 17 19:00.
    tue_new = make_paper("2611.00020", categories=["cs.LG"], published=_utc(2026, 11, 16, 18, 59))
    wed_new = make_paper("2611.00030", categories=["cs.AI"], published=_utc(2026, 11, 16, 19, 0))
    wed_cross = make_paper("2611.00031", categories=["math.OC", "cs.LG"], published=_utc(2026, 11, 17, 9))
    elsewhere = make_paper("2611.00032", categories=["cs.CV"], published=_utc(2026, 11, 17, 9))
    thursday_paper = make_paper("2611.00040", categories=["cs.AI"], published=_utc(2026, 11, 18, 10))
    server.add_papers(tue_new, wed_new, wed_cross, elsewhere, thursday_paper)
    server.set_feed(CATEGORIES, build_feed(THURSDAY, [thursday_paper]))

    outcome = harvest_stage(session, transports, None, CATEGORIES)

    assert outcome.day == THURSDAY and outcome.caught_up == [dt.date(2026, 11, 17), dt.date(2026, 11, 18)]
    assert announced(session, tuesday) == {"2611.00020": "new"}
    assert announced(session, wednesday) == {"2611.00030": "new", "2611.00031": "cross"}
    assert announced(session, THURSDAY) == {"2611.00040": "new"}
    assert set(announced(session, monday)) == {"2611.00010", "2611.00011"}  # the held paper is not repeated
    searches = [r.query["search_query"] for r in server.api_requests if r.query.get("search_query")]
    assert searches == ["(cat:cs.AI OR cat:cs.LG) AND submittedDate:[202611131900 TO 202611171859]"]
    harvested = session.scalars(select(Run.day).where(Run.harvested_at.is_not(None)).order_by(Run.day)).all()
    assert harvested == [monday, tuesday, wednesday, THURSDAY]


def test_a_long_missed_day_is_paged_and_a_flaky_page_is_asked_again_from_where_it_stopped(
    session: Session, arxiv
) -> None:  # type: ignore[no-untyped-def]
    server, settings, transports = arxiv
    monday, tuesday = dt.date(2026, 11, 16), dt.date(2026, 11, 17)
    first = make_paper("2611.00001", published=_utc(2026, 11, 13, 15))
    server.add_papers(first)
    server.set_feed(CATEGORIES, build_feed(monday, [first]))
    harvest_stage(session, transports, None, CATEGORIES)
    missed = [
        make_paper(f"2611.{i:05d}", published=_utc(2026, 11, 14, 0) + dt.timedelta(minutes=i)) for i in range(100, 250)
    ]
    current = make_paper("2611.00900", published=_utc(2026, 11, 17, 9))
    server.add_papers(*missed, current)
    server.set_feed(CATEGORIES, build_feed(dt.date(2026, 11, 18), [current]))
    server.empty_next_page(1, after=1)  # the search's second page comes back empty once

    harvest_stage(session, transports, None, CATEGORIES)

    assert len(announced(session, tuesday)) == 150
    starts = [r.query["start"] for r in server.api_requests if r.query.get("search_query")]
    assert starts == ["0", "100", "100"]


def test_the_api_client_backs_off_exponentially_and_honours_retry_after(arxiv_server: ArxivServer) -> None:
    from newsletter.harvest import ArxivApiSource

    arxiv_server.add_papers(make_paper("2611.00001"))
    waits: list[float] = []
    source = ArxivApiSource(arxiv_server.api_url, 0, timeout=5, retries=4, backoff_seconds=1.0, sleep=waits.append)
    arxiv_server.fail_next(3, 503, path_prefix="/api")
    arxiv_server.fail_next(1, 429, path_prefix="/api", headers={"Retry-After": "30"})

    records = source.fetch_details(["2611.00001"])

    assert [r.arxiv_id for r in records] == ["2611.00001"]
    assert waits == [1.0, 2.0, 4.0, 30.0]  # doubling, then the server's own 30 s beat our 8 s


def test_an_unreachable_feed_fails_the_expected_day_with_a_one_line_reason(
    session: Session, engine, tmp_path: Path, arxiv_server: ArxivServer
) -> None:  # type: ignore[no-untyped-def]
    settings = arxiv_settings(engine, tmp_path, arxiv_server, arxiv_feed_url="http://127.0.0.1:1/rss/")

    summary = run_daily(session, settings, production_transports(settings), THURSDAY)

    assert summary.reason == (
        "harvest failed: announcement feed unreachable at http://127.0.0.1:1/rss/cs.AI+cs.LG: "
        "[Errno 111] Connection refused"
    )
    assert session.scalars(select(Run.status).where(Run.day == THURSDAY)).one() == "failed"


def test_after_a_missed_day_the_next_run_mails_its_papers_too(session: Session, arxiv) -> None:  # type: ignore[no-untyped-def]
    from newsletter.subscribers import subscribe

    server, settings, transports = arxiv
    subscribe(session, "ada@example.org", ["reinforcement learning"], confirmed=True)
    session.commit()
    monday = make_paper("2611.00001", title="Reinforcement learning on Monday", published=_utc(2026, 11, 13, 15))
    server.add_papers(monday)
    server.set_feed(CATEGORIES, build_feed(dt.date(2026, 11, 16), [monday]))
    run_daily(session, settings, transports)
    # Tuesday's run never happened; Wednesday's run finds Tuesday's paper through the API.
    tuesday = make_paper("2611.00002", title="Reinforcement learning on Tuesday", published=_utc(2026, 11, 16, 15))
    wednesday = make_paper("2611.00003", title="Reinforcement learning on Wednesday", published=_utc(2026, 11, 17, 9))
    server.add_papers(tuesday, wednesday)
    server.set_feed(CATEGORIES, build_feed(dt.date(2026, 11, 18), [wednesday]))

    summary = run_daily(session, settings, transports)

    assert summary.day == dt.date(2026, 11, 18)
    outbox = Path(settings.outbox_dir)
    mailed = {folder.name: [p.name for p in folder.glob("*.eml")] for folder in sorted(outbox.iterdir())}
    assert mailed == {
        "2026-11-16": ["ada@example.org.eml"],
        "2026-11-17": ["ada@example.org.eml"],
        "2026-11-18": ["ada@example.org.eml"],
    }
    assert "2611.00002" in (outbox / "2026-11-17" / "ada@example.org.eml").read_text()


def test_an_api_entry_with_an_unexpected_id_is_skipped_with_a_reason_and_the_feed_stands_in(
    session: Session, arxiv, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    server, settings, transports = arxiv
    papers = [make_paper("2611.00001"), make_paper("2611.00002", title="Feed title")]
    server.add_papers(*papers)
    server.set_feed(CATEGORIES, build_feed(THURSDAY, papers))
    body = render_feed([(p, None) for p in papers], id_list="2611.00001,2611.00002", max_results=2)
    server.respond_next(body.replace(b"abs/2611.00002v1</id>", b"abs/weird~id</id>"), 200, "application/atom+xml",
                        path_prefix="/api")

    with caplog.at_level(logging.WARNING, logger="newsletter.harvest"):
        harvest_stage(session, transports, None, CATEGORIES)

    assert "unexpected identifier 'http://arxiv.org/abs/weird~id'" in caplog.text
    assert session.get(Paper, "2611.00001").details_source == "api"
    paper = session.get(Paper, "2611.00002")
    assert (paper.details_source, paper.title) == ("feed", "Feed title")
    assert set(announced(session, THURSDAY)) == {"2611.00001", "2611.00002"}


def test_an_early_start_commits_the_feeds_text_first_and_a_translation_of_words_the_api_changed_goes(
    session: Session, engine, arxiv
) -> None:  # type: ignore[no-untyped-def]
    server, settings, transports = arxiv
    feed_paper = make_paper("2611.00001", title="A feed title", abstract="The feed's words.", categories=["cs.LG"])
    server.set_feed(CATEGORIES, build_feed(THURSDAY, [feed_paper]))
    server.add_papers(make_paper("2611.00001", title="A feed title", abstract="The API's words.",
                                 categories=["cs.LG"], comment="9 pages"))
    seen: list[tuple[dt.date, list[tuple[str, str]], int, object]] = []
    events: list[str] = []

    def text_ready(day: dt.date) -> None:
        # Read from another connection: the feed's text must be committed, the day not yet harvested.
        with Session(engine) as other:
            papers = [tuple(row) for row in other.execute(select(Paper.abstract, Paper.details_source))]
            harvested = other.scalars(select(Run.harvested_at).where(Run.day == day)).first()
            seen.append((day, papers, len(server.api_requests), harvested))
            # What the translate stage does meanwhile, from the feed's words: a translation, a refusal.
            other.add(Translation(arxiv_id="2611.00001", language="ZH-HANS", title="标题", abstract="饲料的话。"))
            other.add(TranslationRejection(arxiv_id="2611.00001", language="DE", reason="r", fallback="f"))
            other.commit()

    @contextmanager
    def storing() -> Iterator[None]:
        events.append(f"storing after {len(server.api_requests)} API request(s)")
        yield
        events.append("stored")

    outcome = harvest_stage(session, transports, None, CATEGORIES, early=EarlyStart(text_ready, storing))

    assert outcome.day == THURSDAY
    assert seen == [(THURSDAY, [("The feed's words.", "feed")], 0, None)]
    assert events == ["storing after 1 API request(s)", "stored"]
    paper = session.get(Paper, "2611.00001", populate_existing=True)
    assert paper is not None
    assert (paper.abstract, paper.comment, paper.details_source) == ("The API's words.", "9 pages", "api")
    assert announced(session, THURSDAY) == {"2611.00001": "new"}
    # Made from words the digest no longer shows: both go, and the harvest says which paper to translate again.
    assert outcome.retranslate == ["2611.00001"]
    assert count(session, Translation) == 0 and count(session, TranslationRejection) == 0
