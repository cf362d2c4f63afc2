"""`newsletter demo`: the bundled sample through the real pipeline, offline, into the outbox."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy.engine import Engine

from newsletter.config import Settings
from newsletter.db import session_scope
from newsletter.harvest import AtomFilesSource, FileFeedSource
from newsletter.mail.outbox import OutboxBackend, outbox_name
from newsletter.pipeline import Transports, harvest_stage, run_daily
from newsletter.resources import SAMPLE_DIR
from newsletter.schema import upgrade_schema
from newsletter.subscribers import find_subscriber, subscribe
from newsletter.translate import store_cached_translations

DEMO_SUBSCRIBERS = [
    ("ada@example.org", ["reinforcement learning", "diffusion policy"], "ZH-HANS"),
    ("grace@example.org", ["large language model", "deep learning"], "ZH-HANS"),
    ("alan@example.org", ["deep learning", 'ti:testing OR abs:"test case"'], "EN-US"),
]


def sample_transports(outbox: Path) -> Transports:
    """The bundled feed and API replies, no translator, the outbox."""
    return Transports(
        feed=FileFeedSource(SAMPLE_DIR / "feed.xml"),
        details=AtomFilesSource(SAMPLE_DIR / "api"),
        translator=None,
        mail=OutboxBackend(outbox),
    )


def run_demo(settings: Settings, engine: Engine) -> Iterator[str]:
    """Create the schema, add sample subscribers, run the sample day; yields what to tell the user."""
    upgrade_schema(engine)
    transports = sample_transports(settings.outbox_dir)
    with session_scope(engine) as session:
        for email, keywords, language in DEMO_SUBSCRIBERS:
            if find_subscriber(session, email) is None:
                subscribe(session, email, keywords, language=language, confirmed=True)
        session.commit()
        day = harvest_stage(session, transports, None).day
        cache = json.loads((SAMPLE_DIR / "translations.json").read_text(encoding="utf-8"))
        for language, entries in cache.items():
            store_cached_translations(session, language, entries)
        session.commit()
        summary = run_daily(session, settings, transports, day)
    folder = (settings.outbox_dir / str(summary.day)).resolve()
    sent = summary.stats.get("deliver", {}).get("sent", 0)
    yield f"announcement day {summary.day}: {summary.status}; {sent} new digest(s) written"
    yield f"outbox: {folder}"
    first = folder / f"{outbox_name(DEMO_SUBSCRIBERS[0][0])}.html"
    yield f"open one in a browser: file://{first}"
    yield f"or inspect the raw email: {first.with_suffix('.eml')}"
