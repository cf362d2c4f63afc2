"""The daily digest end to end on the embedded transports, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import json
from pathlib import Path

from sqlalchemy import func, select
from sqlmodel import Session

from newsletter.demo import SAMPLE_DIR, sample_transports
from newsletter.models import Delivery, Run, SentPaper
from newsletter.pipeline import harvest_stage, run_daily
from newsletter.subscribers import subscribe
from newsletter.translate import store_cached_translations

SAMPLE_DAY = dt.date(2026, 11, 24)


def load_sample_day(session: Session, settings) -> None:  # type: ignore[no-untyped-def]
    transports = sample_transports(settings.outbox_dir)
    harvest_stage(session, transports, None)
    cache = json.loads((SAMPLE_DIR / "translations.json").read_text(encoding="utf-8"))
    store_cached_translations(session, "ZH-HANS", cache["ZH-HANS"])
    session.commit()


def outbox_messages(settings) -> dict[str, email.message.EmailMessage]:  # type: ignore[no-untyped-def]
    folder = Path(settings.outbox_dir) / SAMPLE_DAY.isoformat()
    return {
        path.stem: email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        for path in sorted(folder.glob("*.eml"))
    }


def test_it_mails_each_matching_subscriber_one_bilingual_digest(session: Session, settings) -> None:  # type: ignore[no-untyped-def]
    subscribe(session, "ada@example.org", ["reinforcement learning", "diffusion policy"], confirmed=True)
    subscribe(session, "bob@example.org", ["quantum chromodynamics"], confirmed=True)
    subscribe(session, "pending@example.org", ["deep learning"])  # never confirmed
    session.commit()
    load_sample_day(session, settings)

    summary = run_daily(session, settings, sample_transports(settings.outbox_dir), SAMPLE_DAY)

    assert summary.status == "completed"
    messages = outbox_messages(settings)
    assert list(messages) == ["ada@example.org"]
    message = messages["ada@example.org"]
    assert message.get_content_type() == "multipart/alternative"
    assert [part.get_content_type() for part in message.iter_parts()] == ["text/plain", "text/html"]
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message["List-Unsubscribe"].startswith("<http://localhost:8000/unsubscribe/")
    assert message["Message-ID"] and message["Date"]
    assert "2026-11-24" in message["Subject"]
    html = message.get_body(("html",)).get_content()
    text = message.get_body(("plain",)).get_content()
    # The sample's two reinforcement-learning papers, English and Chinese, and the empty keyword.
    assert "2301.05651" in html and "2206.10210" in html
    assert "强化学习" in html and "强化学习" in text
    assert "diffusion policy" in html and "今天没有与此关键词匹配的新论文" in html
    assert "https://arxiv.org/pdf/2301.05651" in text


def test_running_the_same_day_again_sends_nothing_twice(session: Session, settings) -> None:  # type: ignore[no-untyped-def]
    subscribe(session, "ada@example.org", ["deep learning"], confirmed=True)
    session.commit()
    load_sample_day(session, settings)
    transports = sample_transports(settings.outbox_dir)

    first = run_daily(session, settings, transports, SAMPLE_DAY)
    second = run_daily(session, settings, transports, SAMPLE_DAY)

    assert first.stats["deliver"]["sent"] == 1
    assert second.stats["deliver"]["sent"] == 0
    assert session.scalar(select(func.count()).select_from(Delivery)) == 1
    assert session.scalar(select(func.count()).select_from(Run)) == 1
    sent = session.scalar(select(func.count()).select_from(SentPaper))
    assert sent == 3  # the sample has three deep-learning papers
