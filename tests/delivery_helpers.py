"""Shared by the delivery tests: a day with papers selected for N subscribers, and a sender to run as a process.

Run as `python -m tests.delivery_helpers DATABASE_URL SMTP_PORT DAY RETRY_BASE_SECONDS OUTBOX_DIR`: it
delivers the day to the SMTP server on 127.0.0.1:SMTP_PORT with the production code (the crash tests kill it).
"""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

from sqlalchemy.engine import Engine
from sqlmodel import Session

from newsletter.config import Settings
from newsletter.delivery import DeliveryResult, deliver_day
from newsletter.mail import make_backend
from newsletter.models import Paper, Selection
from newsletter.render import DigestRenderer
from newsletter.subscribers import subscribe
from newsletter.tokens import LinkSigner
from tests.servers.smtp import SmtpSink

DAY = dt.date(2026, 11, 24)
SECRET = "test-secret-key-0123456789"


def seed_day(session: Session, count: int, day: dt.date = DAY, prefix: str = "reader") -> list[str]:
    """`count` confirmed subscribers, each with the same paper selected for `day`; their addresses."""
    arxiv_id = f"2611.{day.toordinal() % 100000:05d}"
    if session.get(Paper, arxiv_id) is None:
        session.add(
            Paper(
                arxiv_id=arxiv_id,
                title="Attention Is Still All You Need",
                abstract="We revisit transformers for $x^2$ scaling.",
                authors=["Ada Lovelace", "Alan Turing"],
                categories=["cs.LG", "cs.AI"],
                primary_category="cs.LG",
            )
        )
    addresses = []
    for number in range(count):
        address = f"{prefix}{number:03d}@example.org"
        subscriber = subscribe(session, address, ["transformers"], confirmed=True)
        session.flush()
        selection = Selection(day=day, subscriber_id=subscriber.id, arxiv_id=arxiv_id, keyword_position=0)
        selection.terms = ["transformers"]
        session.add(selection)
        addresses.append(address)
    session.commit()
    return addresses


def smtp_settings_for(engine: Engine, tmp_path: Path, sink: SmtpSink, **overrides: object) -> Settings:
    """Test Settings that mail through `sink` with near-instant retries and no real throttle."""
    from tests.conftest import make_settings

    values: dict[str, object] = {
        "mail_backend": "smtp",
        "smtp_host": "127.0.0.1",
        "smtp_port": sink.port,
        "smtp_max_per_second": 1000,
        "smtp_retry_base_seconds": 0.001,
    }
    values.update(overrides)
    return make_settings(engine.url.render_as_string(hide_password=False), tmp_path, **values)


def deliver(session: Session, settings: Settings, day: dt.date = DAY, **kwargs: object) -> DeliveryResult:
    """deliver_day with the configured backend, closed afterwards."""
    backend = make_backend(settings)
    try:
        return deliver_day(
            session, day, settings, backend, LinkSigner(SECRET), DigestRenderer(), **kwargs  # type: ignore[arg-type]
        )
    finally:
        backend.close()


def main(argv: list[str]) -> None:
    database_url, port, day, retry_base, outbox = argv
    from newsletter.db import make_engine

    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=database_url,
        environment="test",
        secret_key=SECRET,
        mail_backend="smtp",
        smtp_host="127.0.0.1",
        smtp_port=int(port),
        smtp_retry_base_seconds=float(retry_base),
        outbox_dir=Path(outbox),
    )
    engine = make_engine(database_url)
    with Session(engine, expire_on_commit=False) as session:
        result = deliver(session, settings, dt.date.fromisoformat(day))
    print(f"sent {result.sent} failed {result.failed} skipped {result.skipped}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
