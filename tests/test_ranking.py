"""Ranked sections end to end: the local arXiv feed and API, the match stage, the SMTP sink's received
mails (card order), and feedback given through the links in those mails."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import inspect, select, text
from sqlalchemy.engine import Engine
from sqlmodel import Session

from newsletter.config import Settings
from newsletter.db import make_engine
from newsletter.keywords import KeywordIndex, PaperText
from newsletter.models import FeedbackVerdict, PaperFeedback, Selection
from newsletter.pipeline import production_transports, run_daily
from newsletter.ranking import Similarity, announcement_order
from newsletter.render import HTML_SIZE_LIMIT
from newsletter.schema import alembic_config
from newsletter.subscribers import subscribe
from tests.conftest import make_settings
from tests.servers import ArxivServer, SmtpSink, build_feed, make_paper
from tests.servers.arxiv import Paper as ServedPaper
from tests.web_helpers import Visitor, path_of

CATEGORIES = ["cs.AI", "cs.LG"]
MONDAY, TUESDAY = dt.date(2026, 11, 23), dt.date(2026, 11, 24)
ABS_LINK = re.compile(r"arXiv: https://arxiv\.org/abs/(\S+)")

# Abstracts as arXiv papers on these topics read: the TF-IDF closeness the ranking uses comes from them.
DIFFUSION = (
    "Diffusion policies have become a strong choice for visuomotor robot manipulation. We train a diffusion "
    "policy with reinforcement learning from sparse rewards, denoising action chunks conditioned on camera "
    "images, and show that the fine-tuned diffusion policy grasps and places unseen objects on a real robot arm."
)
DIFFUSION_TOO = (
    "We study offline-to-online fine-tuning of diffusion policies for dexterous robot manipulation. Our method "
    "denoises action chunks from camera images and uses reinforcement learning to adapt the diffusion policy, "
    "improving grasp success on a real robot arm with unseen objects."
)
LANGUAGE_MODELS = (
    "Large language models aligned with reinforcement learning from human feedback can exploit flaws of the "
    "reward model. We measure reward hacking in chat assistants, relate it to the preference data of the reward "
    "model, and propose a regularized objective that keeps the language model close to its reference policy."
)
LANGUAGE_MODELS_TOO = (
    "Reward models trained on human preference data are exploited by large language models during reinforcement "
    "learning from human feedback. We analyse reward hacking in chat assistants and propose an ensemble of reward "
    "models that keeps the language model close to the reference policy."
)
TRAFFIC = (
    "Traffic signal control at city scale is posed as a multi-agent problem. Each intersection is an agent "
    "trained with reinforcement learning on queue lengths and waiting times measured in a microscopic traffic "
    "simulator, and coordination emerges from sharing neighbouring observations."
)
WAREHOUSE = (
    "Scheduling orders in a warehouse with mobile robots is cast as reinforcement learning over a graph of "
    "storage locations; the learned dispatcher lowers the makespan in simulation against heuristic baselines."
)


@pytest.fixture
def day_settings(engine: Engine, tmp_path: Path, arxiv_server: ArxivServer, smtp_sink: SmtpSink) -> Settings:
    return make_settings(
        engine.url.render_as_string(hide_password=False), tmp_path,
        arxiv_feed_url=arxiv_server.feed_base_url, arxiv_api_url=arxiv_server.api_url, arxiv_delay_seconds=0,
        arxiv_retry_base_seconds=0.001, arxiv_max_retries=2, arxiv_timeout_seconds=5, categories=CATEGORIES,
        mail_backend="smtp", smtp_host="127.0.0.1", smtp_port=smtp_sink.port, smtp_max_per_second=1000,
        smtp_retry_base_seconds=0.001, base_url="http://digest.example.org",
    )


def announce(server: ArxivServer, day: dt.date, papers: list[ServedPaper]) -> None:
    server.add_papers(*papers)
    server.set_feed(CATEGORIES, build_feed(day, papers, categories=CATEGORIES))


def card_order(sink: SmtpSink, address: str) -> list[str]:
    """The arXiv IDs of the newest digest `address` received, in the order its text part shows them."""
    message = sink.messages_to(address)[-1].message
    body = message.get_body(("plain",))
    assert body is not None
    return ABS_LINK.findall(body.get_content())


def run_day(session: Session, settings: Settings, day: dt.date) -> None:
    summary = run_daily(session, settings, production_transports(settings), day)
    assert summary.status == "completed", summary.reason


def test_a_section_shows_title_hits_first_then_more_distinct_terms_then_the_announcement_order(
    session: Session, day_settings: Settings, arxiv_server: ArxivServer, smtp_sink: SmtpSink
) -> None:
    subscribe(session, "ada@example.org", ["reinforcement learning", "robot"], confirmed=True)
    session.commit()
    papers = [
        make_paper("2611.00001", title="Coordinated traffic signals at city scale", abstract=TRAFFIC),
        make_paper("2611.00002", title="Fine-tuning diffusion policies for manipulation", abstract=DIFFUSION),
        make_paper("2611.00003", title="Reinforcement learning from human feedback and reward hacking",
                   abstract=LANGUAGE_MODELS),
        make_paper("2611.00004", title="Dispatching warehouse orders", abstract=WAREHOUSE),
    ]
    announce(arxiv_server, MONDAY, papers)

    run_day(session, day_settings, MONDAY)

    # 00003 has the keyword in its title; 00002 and 00004 matched both keywords (robot, too) in the
    # abstract; 00001 one keyword in the abstract. Ties keep the feed's order (00002 before 00004).
    assert card_order(smtp_sink, "ada@example.org") == ["2611.00003", "2611.00002", "2611.00004", "2611.00001"]
    stored = {row.arxiv_id: row for row in session.scalars(select(Selection))}
    assert stored["2611.00003"].title_hit and not stored["2611.00002"].title_hit
    assert stored["2611.00002"].distinct_terms == 2 and stored["2611.00001"].distinct_terms == 1
    assert [stored[f"2611.0000{n}"].announce_position for n in (1, 2, 3, 4)] == [0, 1, 2, 3]


def give_feedback(visitor: Visitor, link: str) -> None:
    """Open a feedback link from a mail and press its one button, as a reader does."""
    page = visitor.get(path_of(link))
    assert page.status_code == 200
    answer = visitor.submit(path_of(link), path_of(link), {})
    assert answer.status_code == 200, answer.text


def feedback_link(sink: SmtpSink, address: str, verdict: str, arxiv_id: str) -> str:
    body = sink.messages_to(address)[-1].message.get_body(("plain",))
    assert body is not None
    found = re.search(rf"http://\S+/feedback/\S+/{verdict}/{re.escape(arxiv_id)}\b", body.get_content())
    assert found, f"no {verdict} link for {arxiv_id}"
    return found.group(0)


def test_feedback_from_the_mail_ranks_papers_close_to_a_liked_one_first_and_close_to_a_refused_one_last(
    session: Session, day_settings: Settings, arxiv_server: ArxivServer, smtp_sink: SmtpSink
) -> None:
    subscribe(session, "ada@example.org", ["reinforcement learning"], confirmed=True)
    subscribe(session, "bob@example.org", ["reinforcement learning"], confirmed=True)
    session.commit()
    announce(arxiv_server, MONDAY, [
        make_paper("2611.00001", title="Fine-tuning diffusion policies for manipulation", abstract=DIFFUSION),
        make_paper("2611.00002", title="Reward hacking in chat assistants", abstract=LANGUAGE_MODELS),
    ])
    run_day(session, day_settings, MONDAY)
    visitor = Visitor(day_settings)
    give_feedback(visitor, feedback_link(smtp_sink, "ada@example.org", "more", "2611.00001"))
    give_feedback(visitor, feedback_link(smtp_sink, "ada@example.org", "less", "2611.00002"))
    verdicts = {row.arxiv_id: row.verdict for row in session.scalars(select(PaperFeedback))}
    assert verdicts == {"2611.00001": FeedbackVerdict.MORE, "2611.00002": FeedbackVerdict.LESS}

    announce(arxiv_server, TUESDAY, [
        make_paper("2611.00011", title="Reinforcement learning against reward models", abstract=LANGUAGE_MODELS_TOO),
        make_paper("2611.00012", title="Coordinated traffic signals at city scale", abstract=TRAFFIC),
        make_paper("2611.00013", title="Dexterous grasping from camera images", abstract=DIFFUSION_TOO),
    ])
    run_day(session, day_settings, TUESDAY)

    # Without feedback (bob): the title hit first, then the feed's order.
    assert card_order(smtp_sink, "bob@example.org") == ["2611.00011", "2611.00012", "2611.00013"]
    # Ada liked the diffusion-policy paper and refused the reward-hacking one: the paper like the
    # first leads, the one like the second sinks below the unrelated one, title hit or not.
    assert card_order(smtp_sink, "ada@example.org") == ["2611.00013", "2611.00012", "2611.00011"]


def test_similarity_is_zero_for_papers_it_does_not_know_and_for_text_without_words() -> None:
    texts = {"a": DIFFUSION, "b": DIFFUSION_TOO, "c": TRAFFIC, "empty": "the of and"}
    similarity = Similarity(texts, ["b", "c", "missing"], ["a"])
    close, unrelated, unknown = similarity.closest(["b", "c", "missing"], ["a"], []).tolist()
    assert close > 0.3 > unrelated > 0 and unknown == 0
    refused_only = similarity.closest(["b", "c"], [], ["a"]).tolist()
    assert refused_only == [-close, -unrelated]
    assert Similarity({"x": "the of", "y": "and or"}, ["x"], ["y"]).closest(["x"], ["y"], []).tolist() == [0]


def test_the_announcement_order_lists_new_papers_by_id_then_cross_lists() -> None:
    rows = [("2611.00009", "cross"), ("2611.00005", "new"), ("2611.00001", "cross"), ("2611.00002", "new")]
    assert announcement_order(rows) == {"2611.00002": 0, "2611.00005": 1, "2611.00001": 2, "2611.00009": 3}


def test_a_title_hit_counts_title_and_ti_terms_with_their_plurals_but_never_abs_terms() -> None:
    index = KeywordIndex.build([(1, ["ti:diffusion policy", "abs:robot", "grasping", "au:Lovelace"])])
    paper = PaperText("x", "Diffusion Policies for robot grasping", "A robot grasps.", ("Ada Lovelace",))
    assert index.title_labels([paper]) == {"x": frozenset({"diffusion policy", "grasping"})}


def test_every_card_carries_the_subscribers_own_two_feedback_links_and_a_full_day_stays_under_the_clip() -> None:
    from tests.test_render import LINKS, make_digest, many_papers, render, visible

    feedback = "https://digest.example.org/feedback/AbCdEfGhIjKlMnOpQrStUv.axB6Eg.ishC7D7oJ6Ws32qKlpVX1aXVZLY"
    papers = many_papers(60)
    digest = make_digest([("learning", papers[:40]), ("robotics", papers[40:])])
    digest.links = dataclasses.replace(LINKS, feedback=feedback)

    rendered = render(digest)

    assert len(rendered.html.encode()) <= HTML_SIZE_LIMIT
    _, hrefs = visible(rendered.html)
    in_full = [paper for paper in papers if f'<a href="{paper.pdf_url}"' in rendered.html]
    assert 5 <= len(in_full) == rendered.papers_in_full < 60
    for paper in in_full:
        assert f"{feedback}/more/{paper.arxiv_id}" in hrefs and f"{feedback}/less/{paper.arxiv_id}" in hrefs
    assert [href for href in hrefs if "/feedback/" in href and not href.startswith(feedback)] == []
    assert "多推荐类似的" in rendered.html and "\x02" not in rendered.html + rendered.text
    assert all(f"不感兴趣: {feedback}/less/{paper.arxiv_id}" in rendered.text for paper in papers)
    # Without a feedback base (a preview built by hand), the cards carry no feedback line at all.
    plain = render(make_digest([("learning", papers[:3])]))
    assert "/feedback/" not in plain.html + plain.text and "多推荐类似的" not in plain.html + plain.text


def test_the_migration_keeps_existing_selections_in_their_old_order_and_downgrades(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0004_translation_rejections")
        connection.execute(text(
            "INSERT INTO subscriber (public_id, email, language, timezone, status, created_at, "
            "consecutive_hard_failures) VALUES ('p1', 'a@example.org', 'EN-US', 'UTC', 'active', CURRENT_TIMESTAMP, 0)"
        ))
        connection.execute(text(
            "INSERT INTO paper (arxiv_id, version, title, abstract, authors, categories, primary_category, "
            "details_source, harvested_at) VALUES ('2611.00001', 1, 't', 'a', '[]', '[]', '', 'api', CURRENT_TIMESTAMP)"
        ))
        connection.execute(text(
            "INSERT INTO selection (day, subscriber_id, arxiv_id, keyword_position, terms) "
            "VALUES ('2026-11-24', 1, '2611.00001', 0, '[]')"
        ))
        command.upgrade(config, "head")
        kept = connection.execute(text(
            "SELECT title_hit, distinct_terms, announce_position, feedback_score, feedback_band FROM selection"
        )).one()
        command.downgrade(config, "0004_translation_rejections")
        columns = {column["name"] for column in inspect(connection).get_columns("selection")}
        tables = inspect(connection).get_table_names()
    engine.dispose()
    assert tuple(kept) == (0, 0, 0, 0, 0)  # every signal equal: the old order (keyword, arXiv ID) holds
    assert "title_hit" not in columns and "paper_feedback" not in tables
