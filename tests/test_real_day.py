"""A day of real papers through `newsletter run-daily`, as an operator runs it: the reference digest's
24 papers plus the hostile table, served by the local arXiv API and feed, translated by the DeepL
stand-in, mailed to the aiosmtpd sink, on PostgreSQL."""

from __future__ import annotations

import email
import email.policy
import re
from pathlib import Path

from sqlalchemy.engine import Engine

from tests.real_text import REFERENCE_DAY, hostile_papers, reference_day
from tests.servers import ArxivServer, DeepLServer, SmtpSink, build_feed
from tests.servers.pytest_plugin import DEEPL_TEST_KEY
from tests.test_cli import run

CATEGORIES = "cs.AI,cs.LG,cs.CL,cs.CV,cs.RO,stat.ML"


def day_papers():  # type: ignore[no-untyped-def]
    # XML 1.0 cannot carry control characters, so no arXiv reply can hold the table's row of them.
    hostile = [paper for paper in hostile_papers() if not any(ord(char) < 0x20 for char in paper.abstract)]
    return [reference.paper for reference in reference_day()] + hostile


def test_a_real_day_with_hostile_abstracts_mails_every_subscriber_every_matching_paper(
    tmp_path: Path, pg_engine: Engine, arxiv_server: ArxivServer, deepl_server: DeepLServer, smtp_sink: SmtpSink
) -> None:
    # pg_engine empties the run's schema first: an earlier test's subscribers and deliveries stay out.
    pg_database_url = pg_engine.url.render_as_string(hide_password=False)
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
