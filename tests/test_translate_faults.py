"""DeepL faults against the stand-in: slow replies, lost placeholders, quota; what is billed and what status says."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlmodel import Session

from newsletter.matching import select_papers_for_day
from newsletter.models import DeepLUsage, Paper, Translation, TranslationRejection
from newsletter.pipeline import run_daily
from newsletter.status import status_lines
from newsletter.subscribers import subscribe
from newsletter.translate import BUDGET_REACHED, make_translator, request_size, translate_selected
from tests.servers.deepl import DeepLServer
from tests.test_translate import CHINESE_NOTE, DAY, NEXT_DAY, PAPERS, add_day, announce, mailed, settings_for
from tests.test_translate import transports_for as transports_with

POSTGRESQL_ONLY = pytest.mark.parametrize("engine", ["postgresql"], indirect=True)
SENTENCES = [
    "We study reinforcement learning agents that plan with learned world models.",
    "Our method trains a policy and a value function from the same replay buffer.",
    "It reaches the reported scores with far fewer environment steps than the baselines.",
    "We also release code, checkpoints and the evaluation protocol for every task.",
]


def long_papers(count: int) -> list[Paper]:
    """Papers of about 1,300 characters each, all matching "reinforcement learning"."""
    return [
        Paper(arxiv_id=f"2611.{number:05d}", title=f"Reinforcement learning with world models, part {number}",
              abstract=" ".join(SENTENCES[(number + shift) % 4] for shift in range(16)))
        for number in range(100, 100 + count)
    ]


def one_reader_day(session: Session, papers: list[Paper]) -> int:
    """The day's papers, one Chinese reader choosing them all; returns the floor: their titles and abstracts."""
    announce(session, papers, DAY)
    subscribe(session, "ada@example.org", ["reinforcement learning"], confirmed=True)
    session.commit()
    select_papers_for_day(session, DAY)
    session.commit()
    return sum(len(paper.title) + len(paper.abstract) for paper in papers)


def usage_today(session: Session) -> DeepLUsage:
    usage = session.get(DeepLUsage, dt.datetime.now(dt.UTC).date(), populate_existing=True)
    assert usage is not None
    return usage


SLOWNESS = {
    # DeepL holds the first request past the client's timeout, then bills it anyway.
    "one request stalls": lambda server: server.stall_next(1, 4.0),
    # DeepL takes 0.2 ms per character: a 50-text batch would time out, one paper does not.
    "slow per character": lambda server: setattr(server, "seconds_per_character", 0.0002),
}


@POSTGRESQL_ONLY
@pytest.mark.parametrize("slowness", list(SLOWNESS))
def test_a_slow_deepl_bills_at_most_the_selected_text_and_a_rerun_bills_nothing(
    slowness: str, engine, session: Session, deepl_server: DeepLServer, tmp_path: Path
) -> None:
    papers = long_papers(12)
    floor = one_reader_day(session, papers)
    settings = settings_for(engine, tmp_path, deepl_server, deepl_timeout_seconds=1.0)
    SLOWNESS[slowness](deepl_server)

    first = translate_selected(session, DAY, make_translator(settings), settings.deepl_daily_character_budget)
    assert deepl_server.wait_idle()  # a stalled request is billed when DeepL finishes it
    billed = deepl_server.character_count
    again = translate_selected(session, DAY, make_translator(settings), settings.deepl_daily_character_budget)
    assert deepl_server.wait_idle()

    assert first.translated == 12 and first.error is None and first.outcome == "translated"
    assert billed <= 1.15 * floor
    assert usage_today(session).billed == billed  # our ledger holds DeepL's own count
    assert again.requests == 0 and deepl_server.character_count == billed


@POSTGRESQL_ONLY
def test_the_budget_holds_in_deepls_own_count_when_replies_never_arrive(
    engine, session: Session, deepl_server: DeepLServer, tmp_path: Path
) -> None:
    papers = long_papers(4)
    one_reader_day(session, papers)
    budget = request_size(papers[0]) + 10
    settings = settings_for(engine, tmp_path, deepl_server, deepl_timeout_seconds=1.0,
                            deepl_daily_character_budget=budget)
    deepl_server.stall_next(100, 3.0)  # no reply ever arrives in time; DeepL bills every request

    result = translate_selected(session, DAY, make_translator(settings), budget)
    assert deepl_server.wait_idle()

    assert 0 < deepl_server.character_count <= budget
    assert usage_today(session).committed == deepl_server.character_count
    assert result.translated == 0 and result.error == BUDGET_REACHED
    # The paper's request timed out; its smaller retry did not fit what DeepL may already have billed.
    assert result.timeouts == 1 and len(deepl_server.translate_requests) == 1


@POSTGRESQL_ONLY
def test_deepl_timing_out_on_smaller_requests_too_stops_the_day_in_english(
    engine, session: Session, deepl_server: DeepLServer, tmp_path: Path
) -> None:
    papers = long_papers(4)
    floor = one_reader_day(session, papers)
    settings = settings_for(engine, tmp_path, deepl_server, deepl_timeout_seconds=1.0)
    deepl_server.stall_next(100, 3.0)

    result = translate_selected(session, DAY, make_translator(settings), settings.deepl_daily_character_budget)
    assert deepl_server.wait_idle()

    assert result.error == "DeepL timed out twice, on smaller requests too"
    assert result.outcome == f"English-only ({result.error})"
    assert result.shown_in_english == {"ZH-HANS": [paper.arxiv_id for paper in papers]}
    assert deepl_server.character_count <= 2 * request_size(papers[0]) < 1.15 * floor
    assert usage_today(session).billed == deepl_server.character_count


MIXED = Paper(
    arxiv_id="2611.00004",
    title="Fast reinforcement learning for Schr\\\"odinger bridges",
    abstract="We bound $\\rho(E^s)$ for the agent. The method is simple. It scales to large problems.",
)


@POSTGRESQL_ONLY
def test_a_translation_that_lost_its_placeholders_is_bought_once_and_never_again(
    engine, session: Session, deepl_server: DeepLServer, tmp_path: Path
) -> None:
    settings = settings_for(engine, tmp_path, deepl_server)
    add_day(session, [PAPERS[0], MIXED])
    deepl_server.drop_placeholders = True

    summary = run_daily(session, settings, transports_with(settings), DAY)
    billed = deepl_server.character_count
    requests = len(deepl_server.translate_requests)
    rerun = translate_selected(session, DAY, make_translator(settings), 10**6)
    catch_up = translate_selected(session, NEXT_DAY, make_translator(settings), 10**6)

    assert rerun.requests == catch_up.requests == 0
    assert deepl_server.character_count == billed and len(deepl_server.translate_requests) == requests
    rejected = session.scalars(select(TranslationRejection).order_by(TranslationRejection.language)).all()
    assert {(row.arxiv_id, row.language) for row in rejected} == {(p, lang) for p in ("2611.00001", "2611.00004")
                                                                   for lang in ("DE", "ZH-HANS")}
    assert all("LaTeX placeholders lost or changed" in row.reason for row in rejected)
    # The mixed paper's sentences without math were sent alone and kept; the formula sentence stays English.
    mixed = session.get(Translation, ("2611.00004", "ZH-HANS"))
    kept, translated = "We bound $\\rho(E^s)$ for the agent.", "[ZH] The method is simple. It scales to large problems."
    assert mixed.abstract == f"{kept} {translated}"
    assert mixed.title == "[ZH] Fast 强化学习 for Schrödinger bridges" and mixed.source == "deepl-partial"
    stats = summary.stats["translate"]
    assert stats["shown_in_english"] == {"DE": ["2611.00001"], "ZH-HANS": ["2611.00001"]}
    assert any(line.startswith("2611.00001 ZH-HANS: title: LaTeX placeholders lost") for line in stats["rejections"])
    html, _ = mailed(settings, "ada@example.org")
    assert CHINESE_NOTE in html and "[ZH] The method is simple." in html


def test_the_abstract_goes_with_its_title_as_unbilled_context_and_accents_as_letters(
    engine, session: Session, deepl_server: DeepLServer, tmp_path: Path
) -> None:
    settings = settings_for(engine, tmp_path, deepl_server)
    add_day(session, [MIXED])
    select_papers_for_day(session, DAY)
    session.commit()

    translate_selected(session, DAY, make_translator(settings), 10**6)

    (request,) = [r for r in deepl_server.translate_requests if r.target_lang == "ZH-HANS"]
    assert request.texts[0] == "Fast reinforcement learning for Schrödinger bridges"
    assert request.context == "Fast reinforcement learning for Schrödinger bridges"
    assert deepl_server.character_count == sum(len(text) for r in deepl_server.translate_requests for text in r.texts)


@POSTGRESQL_ONLY
def test_status_names_the_deepl_error_and_the_papers_shown_in_english(
    engine, session: Session, deepl_server: DeepLServer, tmp_path: Path
) -> None:
    settings = settings_for(engine, tmp_path, deepl_server)
    add_day(session)
    deepl_server.fail_next(10, 456, path_prefix="/v2/translate")

    summary = run_daily(session, settings, transports_with(settings), DAY)
    lines = list(status_lines(session, settings))

    assert summary.stats["translate"]["outcome"] == "English-only (DeepL 456 quota exceeded)"
    assert (f"translation {DAY}: English-only (DeepL 456 quota exceeded); shown in English: "
            "DE 2611.00001, 2611.00003; ZH-HANS 2611.00001, 2611.00002, 2611.00003") in lines


@POSTGRESQL_ONLY
def test_status_names_a_budget_stop(engine, session: Session, deepl_server: DeepLServer, tmp_path: Path) -> None:
    budget = request_size(PAPERS[2]) + 10
    settings = settings_for(engine, tmp_path, deepl_server, deepl_daily_character_budget=budget)
    add_day(session)

    run_daily(session, settings, transports_with(settings), DAY)
    lines = list(status_lines(session, settings))

    assert (f"translation {DAY}: partly translated ({BUDGET_REACHED}); shown in English: "
            "DE 2611.00001, 2611.00003; ZH-HANS 2611.00001, 2611.00002") in lines
