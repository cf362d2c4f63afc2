"""Delivery over real SMTP (aiosmtpd): one digest per subscriber and day, the headers, TLS, DKIM, injection."""

from __future__ import annotations

import base64
import email
import email.policy
import threading
import time
from pathlib import Path

import dkim
import pytest
from alembic import command
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import func, inspect, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from newsletter.config import Settings
from newsletter.db import make_engine
from newsletter.mail import DeliveryConfigError, make_backend
from newsletter.mail.message import Sender, build_message
from newsletter.mail.smtp import SmtpBackend, Throttle
from newsletter.models import Delivery, DeliveryStatus, Subscriber, SubscriberStatus
from newsletter.render import RenderedDigest
from newsletter.schema import alembic_config
from newsletter.tokens import SubscriberLinks
from tests.conftest import REDIS_URL, inserts_refused, make_settings, reachable_redis_or_skip
from tests.delivery_helpers import deliver, seed_day, smtp_settings_for
from tests.servers.smtp import SmtpSink

# The sink accepts AUTH on plain connections too (the refused-login test uses that); aiosmtpd warns.
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")


@pytest.fixture
def smtp_settings(engine: Engine, tmp_path: Path, smtp_sink: SmtpSink) -> Settings:
    return smtp_settings_for(engine, tmp_path, smtp_sink)


def recipients(sink: SmtpSink) -> list[str]:
    return sorted(r for message in sink.messages for r in message.rcpt_tos)


def test_it_sends_one_digest_per_subscriber_over_reused_connections_no_more_than_the_pool(
    session: Session, smtp_settings: Settings, smtp_sink: SmtpSink
) -> None:
    addresses = seed_day(session, 5)

    result = deliver(session, smtp_settings)

    assert result.sent == 5 and result.failed == 0
    assert recipients(smtp_sink) == addresses
    assert 1 <= smtp_sink.connections <= smtp_settings.smtp_pool_size < 5
    for received in smtp_sink.messages:
        message = received.message
        assert message["To"] == received.rcpt_tos[0]
        assert message["Date"]
        assert message["List-Unsubscribe"].startswith("<http://localhost:8000/unsubscribe/")
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert message["List-Id"] == "arXiv digest <arxiv-digest.localhost>"
        assert message["Feedback-ID"] == "digest:arxiv-digest.localhost"
        assert "Attention Is Still All You Need" in message.get_body(("html",)).get_content()
        assert "Attention Is Still All You Need" in message.get_body(("plain",)).get_content()
    message_ids = {received.message["Message-ID"] for received in smtp_sink.messages}
    assert len(message_ids) == 5
    rows = session.scalars(select(Delivery)).all()
    assert {row.status for row in rows} == {DeliveryStatus.SENT}
    assert {row.message_id for row in rows} == message_ids


def test_running_the_day_again_sends_nothing_twice(
    session: Session, smtp_settings: Settings, smtp_sink: SmtpSink
) -> None:
    addresses = seed_day(session, 4)

    first = deliver(session, smtp_settings)
    second = deliver(session, smtp_settings)

    assert (first.sent, second.sent, second.skipped) == (4, 0, 4)
    assert recipients(smtp_sink) == addresses


def test_a_chunk_of_subscriber_ids_gets_only_its_digests(
    session: Session, smtp_settings: Settings, smtp_sink: SmtpSink
) -> None:
    addresses = seed_day(session, 4)
    ids = session.scalars(select(Subscriber.id).order_by(Subscriber.email)).all()

    result = deliver(session, smtp_settings, subscriber_ids=ids[:2])

    assert result.sent == 2
    assert recipients(smtp_sink) == addresses[:2]


@pytest.mark.parametrize("security,tls", [("starttls", "starttls"), ("ssl", "implicit")])
def test_it_logs_in_over_tls(session: Session, engine: Engine, tmp_path: Path, security: str, tls: str) -> None:
    addresses = seed_day(session, 2)
    with SmtpSink(tls=tls, auth=("mailer", "s3cret"), auth_required=True, require_starttls=tls == "starttls") as sink:
        settings = smtp_settings_for(
            engine, tmp_path, sink, smtp_security=security, smtp_user="mailer", smtp_password="s3cret",
            smtp_ca_file=sink.ca_file,
        )  # fmt: skip
        result = deliver(session, settings)
        assert result.sent == 2
        assert recipients(sink) == addresses
        assert {received.auth_user for received in sink.messages} == {"mailer"}


def test_a_refused_login_stops_the_day_without_blaming_subscribers(
    session: Session, engine: Engine, tmp_path: Path
) -> None:
    addresses = seed_day(session, 3)
    with SmtpSink(auth=("mailer", "s3cret"), auth_required=True) as sink:
        wrong = smtp_settings_for(engine, tmp_path, sink, smtp_user="mailer", smtp_password="typo", smtp_max_attempts=2)
        stopped = deliver(session, wrong)

        assert stopped.sent == 0 and "login refused" in (stopped.aborted or "")
        assert sink.messages == []
        assert all(s.status == SubscriberStatus.ACTIVE and s.consecutive_hard_failures == 0
                   for s in session.scalars(select(Subscriber).execution_options(populate_existing=True)))

        fixed = smtp_settings_for(engine, tmp_path, sink, smtp_user="mailer", smtp_password="s3cret")
        resumed = deliver(session, fixed)
        assert resumed.sent == 3
        assert recipients(sink) == addresses


def rsa_key_pair(tmp_path: Path) -> tuple[Path, bytes]:
    """A private key file and the DNS TXT record that publishes its public key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_file = tmp_path / "dkim.pem"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return key_file, b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)


def test_a_dkim_signed_digest_verifies_against_the_published_key(
    session: Session, engine: Engine, tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    seed_day(session, 1)
    key_file, txt_record = rsa_key_pair(tmp_path)
    settings = smtp_settings_for(
        engine, tmp_path, smtp_sink, dkim_key_file=key_file, dkim_selector="mail2026", dkim_domain="example.org"
    )
    looked_up: list[bytes] = []

    def dns(name: bytes, timeout: int = 5) -> bytes:
        looked_up.append(name)
        return txt_record if name == b"mail2026._domainkey.example.org." else b""

    deliver(session, settings)

    (received,) = smtp_sink.messages
    assert dkim.verify(received.raw, dnsfunc=dns)
    assert looked_up == [b"mail2026._domainkey.example.org."]
    signed = received.message["DKIM-Signature"].replace(" ", "")
    assert "list-unsubscribe:list-unsubscribe-post" in signed
    # A relay that rewrites the unsubscribe link breaks the signature.
    head, separator, body = received.raw.partition(b"\r\n\r\n")
    tampered = head.replace(b"/unsubscribe/", b"/unsubscribe/x") + separator + body
    assert tampered != received.raw
    assert not dkim.verify(tampered, dnsfunc=dns)


def test_an_unreadable_dkim_key_is_a_clear_configuration_error(tmp_path: Path) -> None:
    settings = make_settings(
        "sqlite://", tmp_path, dkim_key_file=tmp_path / "missing.pem", dkim_selector="s", dkim_domain="example.org"
    )
    with pytest.raises(DeliveryConfigError, match="NEWSLETTER_DKIM_KEY_FILE .*missing.pem"):
        make_backend(settings)
    with pytest.raises(ValueError, match="NEWSLETTER_DKIM_SELECTOR"):
        make_settings("sqlite://", tmp_path, dkim_key_file=tmp_path / "k.pem")


def test_an_address_carrying_a_header_reaches_nobody_else(
    session: Session, smtp_settings: Settings, smtp_sink: SmtpSink
) -> None:
    addresses = seed_day(session, 2)
    # Written straight to the table, as a bug or an old import could: the sign-up form would refuse it.
    victim = session.scalars(select(Subscriber).where(Subscriber.email == addresses[0])).one()
    victim.email = "victim@example.org\r\nBcc: spy@evil.test"
    session.commit()

    result = deliver(session, smtp_settings)

    assert result.sent == 1 and result.failed == 1
    assert recipients(smtp_sink) == [addresses[1]]
    assert all(b"spy@evil.test" not in received.raw for received in smtp_sink.messages)


def test_a_subject_with_line_breaks_stays_one_header(tmp_path: Path) -> None:
    rendered = RenderedDigest(
        subject="arXiv digest\r\nBcc: spy@evil.test\r\n", text="papers\n", html="<p>papers</p>", preheader=""
    )
    links = SubscriberLinks(manage="http://x/m", unsubscribe="http://x/u\r\n", archive="http://x/a")
    sender = Sender("digest@example.org", "Digest\nReply-To: spy@evil.test", "list.example.org")

    message = build_message(rendered, "ada@example.org", sender, links)
    parsed = email.message_from_bytes(message.as_bytes(policy=email.policy.SMTP), policy=email.policy.default)

    assert parsed["Subject"] == "arXiv digest Bcc: spy@evil.test"
    assert parsed["Bcc"] is None and parsed["Reply-To"] is None
    assert parsed["List-Unsubscribe"] == "<http://x/u>"
    assert parsed.get_body(("html",)).get_content().strip() == "<p>papers</p>"


def test_the_throttle_spaces_sends_evenly() -> None:
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    throttle = Throttle(4, clock=lambda: now[0], sleep=sleep)
    for _ in range(5):
        throttle.wait()

    assert now[0] == pytest.approx(1.0)  # five sends at 4 per second: at 0, 0.25, 0.5, 0.75 and 1.0 s


def send_from_threads(backends: list[SmtpBackend], settings: Settings, per_backend: int) -> None:
    """Each backend sends `per_backend` digests from a thread of its own, all at once."""
    sender = Sender(settings.from_address, settings.from_name, settings.list_id)
    rendered = RenderedDigest(subject="digest", text="papers\n", html="<p>papers</p>", preheader="")
    links = SubscriberLinks(manage="http://x/m", unsubscribe="http://x/u", archive="http://x/a")

    def send(number: int, backend: SmtpBackend) -> None:
        for index in range(per_backend):
            backend.send(build_message(rendered, f"w{number}-{index}@example.org", sender, links))

    threads = [threading.Thread(target=send, args=(number, backend)) for number, backend in enumerate(backends)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for backend in set(backends):
        backend.close()


class RecordedWaits:
    """A sleep that only records what the pacer asked for, and a clock that those waits move on."""

    def __init__(self) -> None:
        self.now = 0.0
        self.waits: list[float] = []
        self._lock = threading.Lock()

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.waits.append(seconds)
            self.now += seconds


def test_the_send_rate_is_one_cap_for_all_workers_sharing_redis(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    client = reachable_redis_or_skip(REDIS_URL)
    settings = make_settings(
        "sqlite://", tmp_path, smtp_host="127.0.0.1", smtp_port=smtp_sink.port, smtp_max_per_second=10,
        redis_url=REDIS_URL,
    )  # fmt: skip
    client.delete(f"newsletter:smtp-send:127.0.0.1:{smtp_sink.port}")
    recorded = RecordedWaits()
    started = time.monotonic()

    # Two backends, as two worker processes have, 4 digests each: at 10 per second in all the 8th send's
    # slot is 0.7 s after the first; a cap per process would put it 0.3 s after.
    backends = [SmtpBackend(settings, sleep=recorded.sleep) for _ in range(2)]
    send_from_threads(backends, settings, per_backend=4)

    # Nobody slept, so the last slot Redis handed out lies within the time the sends took of the waits asked.
    elapsed = time.monotonic() - started
    assert len(smtp_sink.messages) == 8
    assert max(recorded.waits) + elapsed >= 0.7 - 0.001


def test_without_redis_each_process_keeps_the_send_rate_itself(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    settings = make_settings(
        "sqlite://", tmp_path, smtp_host="127.0.0.1", smtp_port=smtp_sink.port, smtp_max_per_second=10,
        redis_url="redis://127.0.0.1:1/0",
    )  # fmt: skip
    recorded = RecordedWaits()

    send_from_threads([SmtpBackend(settings, clock=recorded.clock, sleep=recorded.sleep)], settings, per_backend=4)

    assert len(smtp_sink.messages) == 4
    assert recorded.waits == pytest.approx([0.1, 0.1, 0.1])  # 4 sends at 10 per second: at 0, 0.1, 0.2, 0.3 s


def test_threads_share_a_small_pool_of_connections(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    settings = make_settings(
        "sqlite://", tmp_path, smtp_host="127.0.0.1", smtp_port=smtp_sink.port, smtp_pool_size=2,
        smtp_max_per_second=1000,
    )  # fmt: skip
    backend = SmtpBackend(settings)

    send_from_threads([backend] * 4, settings, per_backend=10)

    assert len(recipients(smtp_sink)) == len(set(recipients(smtp_sink))) == 40
    assert smtp_sink.connections <= 2


def test_an_outbox_that_cannot_be_written_stops_the_day_and_a_rerun_resumes(
    session: Session, engine: Engine, tmp_path: Path
) -> None:
    addresses = seed_day(session, 2)
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the outbox should be")
    url = engine.url.render_as_string(hide_password=False)

    stopped = deliver(session, make_settings(url, tmp_path, outbox_dir=blocked, smtp_max_attempts=1))

    assert stopped.sent == 0 and "cannot write to the outbox" in (stopped.aborted or "")
    assert session.scalars(select(Subscriber.status).distinct()).all() == [SubscriberStatus.ACTIVE]

    resumed = deliver(session, make_settings(url, tmp_path, outbox_dir=tmp_path / "outbox"))

    assert resumed.sent == 2
    written = sorted(path.stem for path in (tmp_path / "outbox" / "2026-11-24").glob("*.eml"))
    assert written == addresses


def test_a_claim_the_database_refuses_fails_the_day_instead_of_passing_for_someone_elses(
    session: Session, engine: Engine, settings: Settings
) -> None:
    seed_day(session, 2)
    session.rollback()  # no open transaction of ours may hold the table the trigger is added to
    refused = "delivery inserts are refused while the table is restored"

    with inserts_refused(engine, "delivery", refused, pg_errcode="integrity_constraint_violation"):
        with pytest.raises(IntegrityError, match="restored"):
            deliver(session, settings)
        session.rollback()
    assert session.scalar(select(func.count()).select_from(Delivery)) == 0

    resumed = deliver(session, settings)

    assert resumed.sent == 2


def test_the_selection_index_for_composing_batches_comes_with_its_migration_and_goes_with_its_downgrade(
    tmp_path: Path,
) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'index.db'}")
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
        upgraded = {index["name"]: index["column_names"] for index in inspect(connection).get_indexes("selection")}
        command.downgrade(config, "0008_harvest_completeness")
        downgraded = {index["name"] for index in inspect(connection).get_indexes("selection")}
    engine.dispose()
    assert upgraded["ix_selection_subscriber_day"] == ["subscriber_id", "day"]
    assert "ix_selection_subscriber_day" not in downgraded
