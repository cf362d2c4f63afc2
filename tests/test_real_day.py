"""A day of real papers through `newsletter run-daily`, as an operator runs it: the reference digest's
24 papers plus the hostile table, served by the local arXiv API and feed, translated by the DeepL
stand-in, mailed to the aiosmtpd sink, on PostgreSQL."""

from __future__ import annotations

import email
import email.policy
import re
from pathlib import Path

import pytest
from sqlmodel import Session, select

from newsletter.db import make_engine
from newsletter.models import Translation
from newsletter.render import readable
from newsletter.taxonomy import category_name
from tests.real_text import REFERENCE_DAY, hostile_papers, reference_day
from tests.servers import ArxivServer, DeepLServer, SmtpSink, build_feed
from tests.servers.pytest_plugin import DEEPL_TEST_KEY
from tests.test_cli import run
from tests.test_render import visible

CATEGORIES = "cs.AI,cs.LG,cs.CL,cs.CV,cs.RO,stat.ML"


def day_papers():  # type: ignore[no-untyped-def]
    # XML 1.0 cannot carry control characters, so no arXiv reply can hold the table's row of them.
    hostile = [paper for paper in hostile_papers() if not any(ord(char) < 0x20 for char in paper.abstract)]
    return [reference.paper for reference in reference_day()] + hostile


# pg_engine empties the run's schema first: an earlier test's subscriber with the same address and
# papers already sent that day would otherwise get no digest.
@pytest.mark.usefixtures("pg_engine")
def test_a_real_day_with_hostile_abstracts_mails_every_subscriber_every_matching_paper(
    tmp_path: Path, pg_database_url: str, arxiv_server: ArxivServer, deepl_server: DeepLServer, smtp_sink: SmtpSink
) -> None:
    papers = day_papers()
    arxiv_server.add_papers(*papers)
    arxiv_server.set_feed(CATEGORIES.split(","), build_feed(REFERENCE_DAY, papers, categories=CATEGORIES.split(",")))
    env = {
        "NEWSLETTER_ENVIRONMENT": "test",
        "NEWSLETTER_DATABASE_URL": pg_database_url,
        "NEWSLETTER_REDIS_URL": "redis://127.0.0.1:1/0",
        "NEWSLETTER_ARXIV_FEED_URL": arxiv_server.feed_base_url,
        "NEWSLETTER_ARXIV_API_URL": arxiv_server.api_url,
        "NEWSLETTER_ARXIV_DELAY_SECONDS": "0",
        "NEWSLETTER_CATEGORIES": CATEGORIES,
        "NEWSLETTER_DEEPL_AUTH_KEY": DEEPL_TEST_KEY,
        "NEWSLETTER_DEEPL_SERVER_URL": deepl_server.server_url,
        "NEWSLETTER_MAIL_BACKEND": "smtp",
        "NEWSLETTER_SMTP_HOST": "127.0.0.1",
        "NEWSLETTER_SMTP_PORT": str(smtp_sink.port),
        "NEWSLETTER_SECRET_KEY": "test-secret-key-0123456789",
        "NEWSLETTER_BASE_URL": "https://digest.example.org",
    }
    readers = {"ada@example.org": ["reinforcement learning", "diffusion policy"], "bob@example.org": ["RL"]}
    for address, keywords in readers.items():
        flags = [part for keyword in keywords for part in ("-k", keyword)]
        assert run(["subscribe", address, *flags, "--confirmed"], tmp_path, **env).returncode == 0

    result = run(["run-daily", "--date", REFERENCE_DAY.isoformat()], tmp_path, **env)

    assert result.returncode == 0, result.stderr
    assert sorted(r for m in smtp_sink.messages for r in m.rcpt_tos) == sorted(readers)
    (raw,) = [m.raw for m in smtp_sink.messages if m.rcpt_tos == ["ada@example.org"]]
    # What Gmail and Yahoo read: the literal URL on the raw header line, not an encoded word.
    assert re.search(rb"^List-Unsubscribe: <https://digest\.example\.org/unsubscribe/[^>\s]+>\r$", raw, re.M)
    assert b"\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n" in raw
    message = email.message_from_bytes(raw, policy=email.policy.default)
    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    # The naive check: every paper whose text says the phrase is in the digest, none is dropped.
    expected = [p.arxiv_id for p in papers if "reinforcement learning" in f"{p.title} {p.abstract}".lower()]
    assert len(expected) >= 35
    assert [arxiv_id for arxiv_id in expected if arxiv_id not in text] == []
    assert [arxiv_id for arxiv_id in expected if arxiv_id not in html] == []
    assert "Data: this url." in text and "‖∇f(𝐱)‖" in text and "[ZH]" in text
    status = run(["status"], tmp_path, **env)
    assert status.returncode == 0 and REFERENCE_DAY.isoformat() in status.stdout


def reference_translator(references):  # type: ignore[no-untyped-def]
    """A DeepL stand-in that answers with the reference digest's own Chinese, so the day weighs what it did.

    A stretch of an English abstract (the client sends sentences and math apart) is answered with the
    same share of the Chinese abstract, so the stretches of one abstract add up to all of it.
    """
    titles = {" ".join(r.paper.title.split()): r.title_zh for r in references}
    abstracts = [(" ".join(r.paper.abstract.split()), r.abstract_zh) for r in references]

    def translate(text: str, target_lang: str) -> str:
        key = " ".join(text.split())
        if not key or key in titles:
            return titles.get(key, text)
        for english, chinese in abstracts:
            start = english.find(key)
            if start >= 0:
                return chinese[len(chinese) * start // len(english):len(chinese) * (start + len(key)) // len(english)]
        return text

    return translate


@pytest.mark.usefixtures("pg_engine")
def test_the_reference_day_arrives_as_one_unclipped_message_holding_all_of_it(
    tmp_path: Path, pg_database_url: str, arxiv_server: ArxivServer, deepl_server: DeepLServer, smtp_sink: SmtpSink
) -> None:
    references = reference_day()
    papers = [reference.paper for reference in references]
    arxiv_server.add_papers(*papers)
    arxiv_server.set_feed(CATEGORIES.split(","), build_feed(REFERENCE_DAY, papers, categories=CATEGORIES.split(",")))
    deepl_server.translate_segment = reference_translator(references)
    env = day_environment(pg_database_url, arxiv_server, deepl_server, smtp_sink)
    subscribed = run(["subscribe", "ada@example.org", "-k", "reinforcement learning", "-k", "diffusion policy",
                      "--confirmed"], tmp_path, **env)
    assert subscribed.returncode == 0, subscribed.stderr

    result = run(["run-daily", "--date", REFERENCE_DAY.isoformat()], tmp_path, **env)

    assert result.returncode == 0, result.stderr
    (raw,) = [m.raw for m in smtp_sink.messages]
    message = email.message_from_bytes(raw, policy=email.policy.default)
    html = message.get_body(("html",)).get_content()
    assert len(html.encode("utf-8")) < 102_400  # what Gmail measures before it clips
    text, hrefs = visible(html)
    engine = make_engine(pg_database_url)
    with Session(engine) as session:
        stored = {t.arxiv_id: t for t in session.exec(select(Translation).where(Translation.language == "ZH-HANS"))}
    engine.dispose()
    assert len(stored) == 24
    for paper in papers:
        translation = stored[paper.arxiv_id]
        for shown in (paper.title, paper.abstract, translation.title, translation.abstract):
            assert " ".join(readable(shown).split()) in text, (paper.arxiv_id, shown[:60])
        assert len(translation.abstract) > 0.9 * len(next(r.abstract_zh for r in references if r.paper == paper))
        assert "作者: " + ", ".join(paper.authors[:20]) in text
        for code in paper.categories:
            assert f"{category_name(code)} ({code})" in text
        assert f"https://arxiv.org/pdf/{paper.arxiv_id}" in hrefs
    assert "关键词: diffusion policy (0 篇) 今天没有与此关键词匹配的新论文。" in text
    assert "更多论文" not in text and "等 (共" not in text  # nothing listed by title only, no author cut


def day_environment(
    pg_database_url: str, arxiv_server: ArxivServer, deepl_server: DeepLServer, smtp_sink: SmtpSink
) -> dict[str, str]:
    return {
        "NEWSLETTER_ENVIRONMENT": "test",
        "NEWSLETTER_DATABASE_URL": pg_database_url,
        "NEWSLETTER_REDIS_URL": "redis://127.0.0.1:1/0",
        "NEWSLETTER_ARXIV_FEED_URL": arxiv_server.feed_base_url,
        "NEWSLETTER_ARXIV_API_URL": arxiv_server.api_url,
        "NEWSLETTER_ARXIV_DELAY_SECONDS": "0",
        "NEWSLETTER_CATEGORIES": CATEGORIES,
        "NEWSLETTER_DEEPL_AUTH_KEY": DEEPL_TEST_KEY,
        "NEWSLETTER_DEEPL_SERVER_URL": deepl_server.server_url,
        "NEWSLETTER_MAIL_BACKEND": "smtp",
        "NEWSLETTER_SMTP_HOST": "127.0.0.1",
        "NEWSLETTER_SMTP_PORT": str(smtp_sink.port),
        "NEWSLETTER_SECRET_KEY": "test-secret-key-0123456789",
        "NEWSLETTER_BASE_URL": "https://digest.example.org",
    }
