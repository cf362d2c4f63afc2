"""The digest as a mail client receives it: parsed back with the standard library `email` package."""

from __future__ import annotations

import email
import email.policy
import os
import re
import shutil
import subprocess
import sys
from email.message import EmailMessage
from pathlib import Path

from sqlmodel import Session

from newsletter.digests import load_digest
from newsletter.mail.message import Sender, build_message
from newsletter.models import Paper, Selection, Translation
from newsletter.render import DigestRenderer, RenderedDigest
from newsletter.subscribers import subscribe
from newsletter.tokens import LinkSigner, subscriber_links
from tests.test_render import DAY, many_papers, paper_by_id, sample_papers, sample_translations, visible

BASE_URL = "https://digest.example.org"
NEWSLETTER = shutil.which("newsletter") or str(Path(sys.executable).with_name("newsletter"))


def store_day(session: Session, email_address: str, language: str, papers_by_keyword: dict[str, list[Paper]]) -> int:
    """A subscriber with keywords, and the papers the match stage selected for them on DAY."""
    subscriber = subscribe(session, email_address, list(papers_by_keyword), language=language, confirmed=True)
    assert subscriber.id is not None
    for position, (keyword, papers) in enumerate(papers_by_keyword.items()):
        for paper in papers:
            session.merge(Paper(**paper.model_dump()))
            translation = sample_translations().get(paper.arxiv_id)
            if translation is not None and language.startswith("ZH"):
                session.merge(Translation(**{**translation.model_dump(), "language": language}))
            session.add(Selection(day=DAY, subscriber_id=subscriber.id, arxiv_id=paper.arxiv_id,
                                  keyword_position=position, terms=[keyword]))
    session.commit()
    return subscriber.id


def mailed(session: Session, subscriber_id: int, sender: Sender) -> tuple[EmailMessage, RenderedDigest]:
    """The message as the SMTP server receives it, parsed back, and what was rendered for it."""
    from newsletter.models import Subscriber

    subscriber = session.get(Subscriber, subscriber_id)
    assert subscriber is not None
    links = subscriber_links(LinkSigner("test-secret-key-0123456789"), BASE_URL, subscriber.public_id, DAY.isoformat())
    rendered = DigestRenderer().render(load_digest(session, subscriber, DAY, links))
    wire = build_message(rendered, subscriber.email, sender, links).as_bytes(policy=email.policy.SMTP)
    parsed = email.message_from_bytes(wire, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed, rendered


def test_a_chinese_digest_is_text_and_html_alternatives_with_encoded_subject_and_sender(session: Session) -> None:
    rl = [paper_by_id("2206.10210"), paper_by_id("2301.05651")]
    subscriber_id = store_day(session, "ada@example.org", "ZH-HANS",
                              {"reinforcement learning": rl, "diffusion policy": []})
    sender = Sender("digest@example.org", "arXiv 每日速递", "arxiv-digest.example.org")

    message, rendered = mailed(session, subscriber_id, sender)

    assert message.get_content_type() == "multipart/alternative"
    plain, html = list(message.iter_parts())
    assert (plain.get_content_type(), html.get_content_type()) == ("text/plain", "text/html")
    assert plain.get_content_charset() == html.get_content_charset() == "utf-8"
    assert str(message["Subject"]) == "arXiv 每日速递 2026-11-24: 2 篇新论文"
    assert message["From"].addresses[0].display_name == "arXiv 每日速递"
    assert message["From"].addresses[0].addr_spec == "digest@example.org"
    raw_headers = message.as_bytes(policy=email.policy.SMTP).split(b"\r\n\r\n", 1)[0]
    raw_headers.decode("ascii")  # non-ASCII travels RFC 2047-encoded
    assert re.search(rb"Subject: arXiv =\?utf-8\?b\?", raw_headers)
    html_text, hrefs = visible(html.get_content())
    assert "关键词: reinforcement learning (2 篇)" in html_text and "今天没有与此关键词匹配的新论文。" in html_text
    assert sample_translations()["2301.05651"].title in html_text
    assert rendered.preheader in html_text
    for paper in rl:
        assert f"https://arxiv.org/abs/{paper.arxiv_id}" in hrefs
        assert f"https://arxiv.org/pdf/{paper.arxiv_id}" in plain.get_content()
    unsubscribe = message["List-Unsubscribe"].strip("<>")
    assert unsubscribe in hrefs and unsubscribe in plain.get_content()
    assert any(h.startswith(f"{BASE_URL}/manage/") for h in hrefs)
    assert any(h.startswith(f"{BASE_URL}/archive/2026-11-24/") for h in hrefs)


def test_an_english_digest_has_an_english_subject_and_no_translation(session: Session) -> None:
    subscriber_id = store_day(session, "alan@example.org", "EN-US", {"testing": list(sample_papers()[:3])})
    sender = Sender("digest@example.org", "arXiv Digest", "arxiv-digest.example.org")

    message, _ = mailed(session, subscriber_id, sender)

    assert str(message["Subject"]) == "arXiv digest 2026-11-24: 3 new papers"
    text = message.get_body(("plain",)).get_content()
    assert "Abstract:" in text and "中文摘要" not in text and "Translation" not in text
    assert "==== Keyword: testing (3 papers) ====" in text


def test_a_60_paper_day_is_mailed_with_the_html_part_under_gmails_clipping_size(session: Session) -> None:
    papers = [Paper(**{**sample_papers()[0].model_dump(), "arxiv_id": v.arxiv_id, "title": v.raw_title,
                       "abstract": v.raw_abstract, "authors": list(v.authors)}) for v in many_papers(60)]
    subscriber_id = store_day(session, "grace@example.org", "ZH-HANS", {"learning": papers})
    sender = Sender("digest@example.org", "arXiv Digest", "arxiv-digest.example.org")

    message, rendered = mailed(session, subscriber_id, sender)

    html = message.get_body(("html",)).get_content()
    assert len(html.encode("utf-8")) < 102 * 1024
    assert rendered.papers_in_full + rendered.papers_by_title == 60 and rendered.papers_by_title > 0
    _, hrefs = visible(html)
    assert {p.arxiv_id for p in papers} == {h.rsplit("/", 1)[1] for h in hrefs if "/abs/" in h}
    text = message.get_body(("plain",)).get_content()
    assert all(f"https://arxiv.org/pdf/{p.arxiv_id}" in text for p in papers)


def test_preview_writes_that_subscribers_digest_as_html(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    demo = subprocess.run([NEWSLETTER, "demo"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert demo.returncode == 0, demo.stderr
    out = tmp_path / "ada.html"

    preview = subprocess.run([NEWSLETTER, "preview", "ada@example.org", "--out", str(out)], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=120)

    assert preview.returncode == 0, preview.stderr
    text, hrefs = visible(out.read_text(encoding="utf-8"))
    assert "关键词: reinforcement learning (2 篇)" in text and "关键词: diffusion policy (0 篇)" in text
    assert "large language model" not in text  # another subscriber's keyword
    assert "https://arxiv.org/abs/2301.05651" in hrefs
    mailed_copy = (tmp_path / "outbox" / "2026-11-24" / "ada@example.org.html").read_text(encoding="utf-8")
    # The preview is what was mailed, but for the minute it was made (the two may straddle a minute).
    made = re.compile(r"生成时间: [^(]*")
    assert made.search(text) and made.sub("", visible(mailed_copy)[0]) == made.sub("", text)
