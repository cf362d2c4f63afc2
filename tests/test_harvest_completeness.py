"""What the feed announced against what the harvest stored, per day, as `newsletter status` shows it."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel

from newsletter.harvest import DayHarvest
from newsletter.harvest.store import record_completeness
from newsletter.models import AnnounceType, FeedCategoryCount, GapKind, HarvestGap, HarvestTally, Paper
from newsletter.operator import completeness
from newsletter.pipeline import harvest_stage, production_transports, run_daily
from newsletter.status import status_lines
from newsletter.subscribers import subscribe
from tests.conftest import make_settings
from tests.servers import ArxivServer, build_feed, make_paper

CATEGORIES = ["cs.AI", "cs.LG", "cs.RO"]
THURSDAY = dt.date(2026, 11, 19)


def harvest_settings(engine: Engine, tmp_path: Path, server: ArxivServer):  # type: ignore[no-untyped-def]
    return make_settings(
        engine.url.render_as_string(hide_password=False), tmp_path, arxiv_feed_url=server.feed_base_url,
        arxiv_api_url=server.api_url, arxiv_delay_seconds=0, arxiv_retry_base_seconds=0.001, arxiv_max_retries=1,
        arxiv_timeout_seconds=5, categories=CATEGORIES,
    )


def announce_a_day_with_every_kind_of_gap(session: Session, server: ArxivServer, transports) -> None:  # type: ignore[no-untyped-def]
    """A day with 3 new (one the API lacks), 1 cross, 2 replacements (one never held), 1 unreadable item."""
    held = make_paper("2611.00010v1", categories=["cs.LG"])
    server.add_papers(held)
    server.set_feed(CATEGORIES, build_feed(THURSDAY - dt.timedelta(days=1), [held], categories=CATEGORIES))
    harvest_stage(session, transports, None, CATEGORIES)
    new = [make_paper(f"2611.0000{i}", categories=["cs.AI"]) for i in (1, 2, 3)]
    cross = make_paper("2611.00004", categories=["math.OC", "cs.LG"])
    replaced, stranger = make_paper("2611.00010v2", categories=["cs.LG"]), make_paper("2510.00099v3")
    unreadable = make_paper("2611.00005", categories=["cs.AI"])
    server.add_papers(new[0], new[1], cross, replaced, stranger)  # the API does not know 2611.00003
    items = [*((paper, "new") for paper in new), (cross, "cross"), (replaced, "replace"), (stranger, "replace"),
             (unreadable, "new")]
    body = build_feed(THURSDAY, items, categories=CATEGORIES)
    server.set_feed(CATEGORIES, body.replace(b"oai:arXiv.org:2611.00005v1", b"not-an-id"))
    harvest_stage(session, transports, None, CATEGORIES)


def test_status_prints_what_the_feed_announced_what_was_stored_and_names_the_difference(
    engine: Engine, session: Session, tmp_path: Path, arxiv_server: ArxivServer
) -> None:
    settings = harvest_settings(engine, tmp_path, arxiv_server)
    announce_a_day_with_every_kind_of_gap(session, arxiv_server, production_transports(settings))

    line = next(line for line in status_lines(session, settings) if line.startswith(f"{THURSDAY}:"))

    assert "announced 6 (new 3, cross 1, replace 2), stored 4," in line
    assert "missing (the API did not return them): 2611.00003" in line
    assert "unparsed feed items: unexpected identifier 'not-an-id'" in line
    assert "categories with an empty feed: cs.RO" in line
    assert "1 replacements of papers never harvested here (not fetched)" in line


def test_the_tallies_are_typed_rows_per_day_category_and_type(
    engine: Engine, session: Session, tmp_path: Path, arxiv_server: ArxivServer
) -> None:
    settings = harvest_settings(engine, tmp_path, arxiv_server)
    announce_a_day_with_every_kind_of_gap(session, arxiv_server, production_transports(settings))

    tally = session.get(HarvestTally, THURSDAY)
    assert tally is not None and (tally.announced_new, tally.announced_cross, tally.announced_replace) == (3, 1, 2)
    per_category = {
        (row.category, row.announce_type): row.count
        for row in session.scalars(select(FeedCategoryCount).where(FeedCategoryCount.day == THURSDAY))
    }
    assert per_category == {
        ("cs.AI", "new"): 3, ("math.OC", "cross"): 1, ("cs.LG", "cross"): 1, ("cs.LG", "replace"): 1,
        ("cs.AI", "replace"): 1,
    }
    gaps = {(gap.kind, gap.subject) for gap in session.scalars(select(HarvestGap).where(HarvestGap.day == THURSDAY))}
    assert gaps == {
        (GapKind.NOT_RETURNED, "2611.00003"),
        (GapKind.UNPARSED, "unexpected identifier 'not-an-id'"),
        (GapKind.EMPTY_CATEGORY, "cs.RO"),
    }


def test_a_day_the_api_answered_in_full_is_complete(
    engine: Engine, session: Session, tmp_path: Path, arxiv_server: ArxivServer
) -> None:
    settings = harvest_settings(engine, tmp_path, arxiv_server)
    papers = [make_paper("2611.00001", categories=["cs.AI", "cs.RO"]), make_paper("2611.00002", categories=["cs.LG"])]
    arxiv_server.add_papers(*papers)
    arxiv_server.set_feed(CATEGORIES, build_feed(THURSDAY, papers, categories=CATEGORIES))

    harvest_stage(session, production_transports(settings), None, CATEGORIES)

    tally = completeness(session, THURSDAY)
    assert tally is not None and tally.complete and tally.gaps() == []
    assert tally.summary() == "announced 2 (new 2, cross 0, replace 0), stored 2"


def test_the_models_and_the_migrations_describe_the_same_schema(pg_engine: Engine) -> None:
    with pg_engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), SQLModel.metadata)
    assert differences == []


HOSTILE_CATEGORIES = ["cs.AI", "x" * 40, "x" * 40 + "y", "  ", "数学.AG", "cs.AI\u200b", "<script>"]


@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(
    categories=st.lists(st.text(min_size=0, max_size=60), max_size=6),
    reasons=st.lists(st.text(max_size=300), max_size=4),
)
def test_any_category_or_unparsed_reason_from_the_feed_is_recorded_without_breaking_the_day(
    pg_engine: Engine, categories: list[str], reasons: list[str]
) -> None:
    harvest = DayHarvest(day=THURSDAY, skipped=[reason.replace("\x00", "") for reason in reasons])
    for category in [*categories, *HOSTILE_CATEGORIES]:
        harvest.listed[(category.replace("\x00", ""), AnnounceType.NEW)] += 1
    with Session(pg_engine) as session:
        record_completeness(session, harvest)
        recorded = sum(row.count for row in session.scalars(select(FeedCategoryCount)))
        session.rollback()
    assert recorded == sum(harvest.listed.values())


def test_with_details_for_selected_papers_only_the_api_is_asked_for_what_someone_will_be_sent(
    engine: Engine, session: Session, tmp_path: Path, arxiv_server: ArxivServer
) -> None:
    settings = harvest_settings(engine, tmp_path, arxiv_server).model_copy(update={"arxiv_details": "selected"})
    subscribe(session, "ada@example.org", ["diffusion policy"], confirmed=True)
    session.commit()
    papers = [
        make_paper(f"2611.{i:05d}", title=f"{'Diffusion policy' if i % 100 == 7 else 'Sparse kernels'} {i}")
        for i in range(1, 251)
    ]
    arxiv_server.add_papers(*papers)
    arxiv_server.set_feed(CATEGORIES, build_feed(THURSDAY, papers, categories=CATEGORIES))

    summary = run_daily(session, settings, production_transports(settings), THURSDAY)

    assert [r.query["id_list"] for r in arxiv_server.api_requests] == ["2611.00007,2611.00107,2611.00207"]
    sources = dict(session.execute(select(Paper.arxiv_id, Paper.details_source)).all())
    assert [arxiv_id for arxiv_id, source in sources.items() if source == "api"] == [
        "2611.00007", "2611.00107", "2611.00207"
    ]
    assert len(sources) == 250
    assert summary.stats["match"]["selections"] == 3
    tally = completeness(session, THURSDAY)
    assert tally is not None and (tally.missing, tally.stored) == ([], 250)
    assert "247 papers no keyword matched kept from the feed (not fetched)" in tally.gaps()


def test_with_details_for_selected_papers_a_day_everyone_wants_is_fetched_whole(
    engine: Engine, session: Session, tmp_path: Path, arxiv_server: ArxivServer
) -> None:
    settings = harvest_settings(engine, tmp_path, arxiv_server).model_copy(update={"arxiv_details": "selected"})
    subscribe(session, "ada@example.org", ["kernels"], confirmed=True)
    session.commit()
    papers = [make_paper(f"2611.{i:05d}", title=f"{'Sparse kernels' if i > 2 else 'Other'} {i}") for i in range(1, 151)]
    arxiv_server.add_papers(*papers)
    arxiv_server.set_feed(CATEGORIES, build_feed(THURSDAY, papers, categories=CATEGORIES))

    run_daily(session, settings, production_transports(settings), THURSDAY)

    # 148 wanted would take two requests as 150 do: nothing is saved, so nothing is left out.
    assert [len(r.query["id_list"].split(",")) for r in arxiv_server.api_requests] == [100, 50]
