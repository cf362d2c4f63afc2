"""What leaves the machine: the raw bytes the SMTP server received (and the outbox wrote), read as bytes.

A parsed message hides what matters here: parsing decodes RFC 2047 encoded words and unfolds lines,
so a List-Unsubscribe header that providers cannot read looks fine once parsed back.
"""

from __future__ import annotations

import email
import email.policy
import logging
import re
from email.message import EmailMessage
from pathlib import Path

import dkim
import pytest
from hypothesis import given
from hypothesis import strategies as st
from lxml import etree
from lxml import html as lxml_html
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import Session

from newsletter.mail.message import (
    MAX_LINE_OCTETS,
    MESSAGE_POLICY,
    WIRE_POLICY,
    InvalidHeaderValue,
    Sender,
    build_message,
    header_text,
    message_bytes,
    part_boundary,
)
from newsletter.models import (
    Delivery,
    DeliveryStatus,
    Paper,
    Selection,
    Subscriber,
    SubscriberStatus,
    Translation,
)
from newsletter.render import RenderedDigest
from newsletter.subscribers import subscribe
from newsletter.tokens import SubscriberLinks
from tests.conftest import make_settings
from tests.delivery_helpers import DAY, deliver, seed_day, smtp_settings_for
from tests.real_text import reference_day
from tests.servers.smtp import SmtpSink
from tests.test_delivery import rsa_key_pair

BASE_URL = "https://digest.example.org"
# A deployment under a deep path: the unsubscribe URL alone is then far over the 78-octet fold width.
LONG_BASE_URL = f"{BASE_URL}/{'p' * 300}"
LITERAL_HEADER_NAMES = [b"Message-ID", b"List-Id", b"List-Unsubscribe", b"List-Unsubscribe-Post", b"Feedback-ID"]
# A token from tokens.LinkSigner: URL-safe base64 and dots.
TOKEN = rb"[A-Za-z0-9_.-]+"


def header_block(raw: bytes) -> bytes:
    """The raw header block, each line still ending in its CRLF."""
    head, separator, _ = raw.partition(b"\r\n\r\n")
    assert separator, "no blank line ends the header block"
    return head + b"\r\n"


def raw_field(block: bytes, name: bytes) -> bytes:
    """One header field as it is on the wire: its first line and any folded continuation lines."""
    found = re.search(rb"^" + re.escape(name) + rb":.*\r\n(?:[ \t].*\r\n)*", block, re.MULTILINE | re.IGNORECASE)
    assert found is not None, f"no {name!r} header"
    return found.group(0)


def assert_smtp_line_format(raw: bytes) -> None:
    """CRLF line endings only and no line over SMTP's 998 octets (RFC 5322 2.1.1, 2.3)."""
    lines = raw.split(b"\r\n")
    assert not any(b"\r" in line or b"\n" in line for line in lines), "a bare CR or LF"
    assert max(len(line) for line in lines) <= MAX_LINE_OCTETS


def assert_literal_list_headers(raw: bytes, base_url: str) -> None:
    """The list headers RFC 2369 / RFC 8058 readers look for, written literally."""
    block = header_block(raw)
    url = re.escape(base_url.encode("ascii"))
    assert re.search(rb"^List-Unsubscribe: <" + url + rb"/unsubscribe/" + TOKEN + rb">\r\n", block, re.MULTILINE)
    assert re.search(rb"^List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n", block, re.MULTILINE)
    assert re.search(rb"^List-Id: arXiv digest <arxiv-digest\.localhost>\r\n", block, re.MULTILINE)
    assert re.search(rb"^Message-ID: <digest\.20261124\.[0-9a-f]{32}@localhost>\r\n", block, re.MULTILINE)
    assert re.search(rb"^Feedback-ID: digest:arxiv-digest\.localhost\r\n", block, re.MULTILINE)
    for name in LITERAL_HEADER_NAMES:
        assert b"=?" not in raw_field(block, name)
    # The Chinese subject is the one header that must be encoded (RFC 2047), and it is.
    assert re.search(rb"^Subject: arXiv =\?utf-8\?[bq]\?", block, re.MULTILINE)
    block.decode("ascii")
    assert_smtp_line_format(raw)


@pytest.mark.parametrize("base_url", [BASE_URL, LONG_BASE_URL], ids=["short-url", "300-char-path"])
def test_the_unsubscribe_header_is_a_literal_url_on_the_wire(
    session: Session, engine: Engine, tmp_path: Path, smtp_sink: SmtpSink, base_url: str
) -> None:
    seed_day(session, 2)

    result = deliver(session, smtp_settings_for(engine, tmp_path, smtp_sink, base_url=base_url))

    assert result.sent == 2
    for received in smtp_sink.messages:
        assert_literal_list_headers(received.raw, base_url)
        assert "篇新论文" in str(received.message["Subject"])


@pytest.mark.parametrize("base_url", [BASE_URL, LONG_BASE_URL], ids=["short-url", "300-char-path"])
def test_the_outbox_writes_the_same_literal_headers(
    session: Session, engine: Engine, tmp_path: Path, base_url: str
) -> None:
    addresses = seed_day(session, 2)
    url = engine.url.render_as_string(hide_password=False)

    result = deliver(session, make_settings(url, tmp_path, outbox_dir=tmp_path / "outbox", base_url=base_url))

    assert result.sent == 2
    written = sorted((tmp_path / "outbox" / "2026-11-24").glob("*.eml"))
    assert [path.stem for path in written] == addresses
    for path in written:
        assert_literal_list_headers(path.read_bytes(), base_url)


def seed_reference_day(session: Session) -> str:
    """A Chinese reader of the reference digest's 24 papers, with the translations its readers got."""
    subscriber = subscribe(session, "li@example.org", ["reinforcement learning"], language="ZH-HANS", confirmed=True)
    for reference in reference_day():
        paper = reference.paper
        session.merge(Paper(arxiv_id=paper.arxiv_id, title=paper.title, abstract=paper.abstract,
                            authors=paper.authors, categories=paper.categories, primary_category=paper.categories[0]))
        session.merge(Translation(arxiv_id=paper.arxiv_id, language="ZH-HANS", title=reference.title_zh,
                                  abstract=reference.abstract_zh))
        session.add(Selection(day=DAY, subscriber_id=subscriber.id, arxiv_id=paper.arxiv_id, keyword_position=0,
                              terms=["reinforcement learning"]))
    session.commit()
    return subscriber.email


def test_the_html_part_of_a_real_day_goes_as_8bit_in_lines_smtp_allows_and_shows_every_chinese_abstract(
    session: Session, engine: Engine, tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    address = seed_reference_day(session)

    result = deliver(session, smtp_settings_for(engine, tmp_path, smtp_sink))

    assert result.sent == 1
    received = smtp_sink.messages_to(address)[0]
    assert_smtp_line_format(received.raw)
    # Not base64: a third fewer bytes, announced to the server as 8-bit data.
    assert b'Content-Type: text/html; charset="utf-8"\r\nContent-Transfer-Encoding: 8bit\r\n' in received.raw
    assert "BODY=8BITMIME" in received.mail_options
    html = received.message.get_body(("html",)).get_content()
    tree = lxml_html.document_fromstring(html)
    etree.strip_tags(tree, etree.Comment)  # the empty comments that break runs of Chinese
    shown = " ".join(tree.text_content().split())
    for reference in reference_day():
        # As the digest shows it: LaTeX turned to text, so only abstracts without any are compared whole.
        if "$" not in reference.abstract_zh and "\\" not in reference.abstract_zh:
            assert " ".join(reference.abstract_zh.split()) in shown, reference.paper.arxiv_id


def signed_header_names(raw: bytes) -> list[bytes]:
    """The h= tag of the raw DKIM-Signature header, unfolded."""
    field = re.sub(rb"\s+", b"", raw_field(header_block(raw), b"DKIM-Signature"))
    tag = re.search(rb"[;:]h=([^;]+)", field)
    assert tag is not None
    return [name.lower() for name in tag.group(1).split(b":")]


@pytest.mark.parametrize("base_url", [BASE_URL, LONG_BASE_URL], ids=["short-url", "300-char-path"])
def test_the_dkim_signature_covers_the_unsubscribe_headers_and_verifies_over_the_received_bytes(
    session: Session, engine: Engine, tmp_path: Path, smtp_sink: SmtpSink, base_url: str
) -> None:
    seed_day(session, 1)
    key_file, txt_record = rsa_key_pair(tmp_path)
    settings = smtp_settings_for(
        engine, tmp_path, smtp_sink, base_url=base_url,
        dkim_key_file=key_file, dkim_selector="mail2026", dkim_domain="example.org",
    )  # fmt: skip

    def dns(name: bytes, timeout: int = 5) -> bytes:
        return txt_record if name == b"mail2026._domainkey.example.org." else b""

    deliver(session, settings)

    (received,) = smtp_sink.messages
    assert dkim.verify(received.raw, dnsfunc=dns)
    assert {b"list-unsubscribe", b"list-unsubscribe-post", b"list-id", b"message-id"} <= set(
        signed_header_names(received.raw)
    )
    assert_literal_list_headers(received.raw, base_url)


def test_a_non_ascii_base_url_is_refused_when_the_settings_are_read(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="must be ASCII: the host in punycode"):
        make_settings("sqlite://", tmp_path, base_url="https://新闻.example.org")


@pytest.mark.parametrize(
    ("base_url", "reason"),
    [
        ("https://digest.example.org/a b", "must not contain spaces"),
        ("https://digest.example.org/a>b,<c", "must not contain spaces or any of < > ,"),
        ("https://digest.example.org/" + "a" * 1200, "longer than 500 characters"),
    ],
)
def test_a_base_url_that_would_break_the_unsubscribe_header_is_refused_when_the_settings_are_read(
    tmp_path: Path, base_url: str, reason: str
) -> None:
    # Accepted, it failed every delivery of every run, or split List-Unsubscribe into two URIs.
    with pytest.raises(ValidationError, match=reason):
        make_settings("sqlite://", tmp_path, base_url=base_url)


def digest_with_unsubscribe_url(url: str) -> EmailMessage:
    rendered = RenderedDigest(subject="digest", text="papers\n", html="<p>papers</p>", preheader="")
    links = SubscriberLinks(manage="http://x/m", unsubscribe=url, archive="http://x/a")
    return build_message(rendered, "ada@example.org", Sender("digest@example.org", "Digest", "list.example"), links)


def test_an_unsubscribe_url_that_cannot_be_written_literally_is_refused_while_building() -> None:
    with pytest.raises(InvalidHeaderValue, match="List-Unsubscribe must be printable ASCII.*'新'"):
        digest_with_unsubscribe_url("https://新闻.example.org/unsubscribe/t")
    with pytest.raises(InvalidHeaderValue, match="List-Unsubscribe holds a 1[0-9]{3}-octet line, over SMTP's 998"):
        digest_with_unsubscribe_url(f"{BASE_URL}/{'p' * 1000}")


def test_a_long_list_id_folds_at_spaces_and_never_into_encoded_words() -> None:
    message = EmailMessage(policy=MESSAGE_POLICY)
    message["List-Id"] = " ".join(["digest"] * 40) + " <list.example.org>"

    folded = raw_field(message.as_bytes(policy=WIRE_POLICY), b"List-Id")

    assert b"=?" not in folded
    assert all(len(line) <= 78 for line in folded.split(b"\r\n"))
    assert folded.count(b"\r\n ") >= 3


def test_a_url_longer_than_the_fold_width_keeps_its_one_line() -> None:
    # A token longer than the fold width keeps its line: RFC 5322 folds only at white space.
    url = f"{BASE_URL}/unsubscribe/{'t' * 200}"

    folded = raw_field(digest_with_unsubscribe_url(url).as_bytes(policy=WIRE_POLICY), b"List-Unsubscribe")

    assert folded == f"List-Unsubscribe: <{url}>\r\n".encode("ascii")


HEADER_WORDS = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=120)


@pytest.mark.parametrize("name", ["List-Unsubscribe", "List-Id", "Feedback-ID"])
@given(value=st.text() | st.lists(HEADER_WORDS, max_size=40).map(" ".join))
def test_a_literal_header_is_ascii_that_reads_back_the_same_or_a_clear_refusal(name: str, value: str) -> None:
    assert not {"\r", "\n"} & set(header_text(value))
    message = EmailMessage(policy=MESSAGE_POLICY)
    try:
        message[name] = value
    except InvalidHeaderValue as refusal:
        assert str(refusal).startswith(name)
        return

    raw = message.as_bytes(policy=WIRE_POLICY)

    assert raw.isascii()
    assert_smtp_line_format(raw)
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert str(parsed[name]) == header_text(value)


# What real digests hold that a plain sample does not: CRLF and lone CRs, Unicode line separators,
# a line over 998 octets (base64), a line that is only a dot, "From " at a line start, a MIME boundary look-alike.
BODY_TEXT = st.text(st.characters(blacklist_categories=("Cs",))) | st.lists(
    st.sampled_from(["\r\n", "\r", "\n", "\u2028", ".", "From here", "--=_digest_", "x" * 1200, "量子", "--"]),
    max_size=30,
).map("".join)


@given(text=BODY_TEXT, html=BODY_TEXT)
def test_the_wire_bytes_are_the_email_packages_own_and_read_back_to_the_same_parts(text: str, html: str) -> None:
    rendered = RenderedDigest(subject="digest 量子", text=text, html=html, preheader="")
    links = SubscriberLinks(manage="http://x/m", unsubscribe="http://x/u", archive="http://x/a")
    message = build_message(rendered, "ada@example.org", Sender("digest@example.org", "Digest", "list.example"), links)

    raw = message_bytes(message, None)

    # Our generator writes a body in one piece; the stock one line by line: the bytes must not differ.
    assert raw == message.as_bytes(policy=WIRE_POLICY)
    assert_smtp_line_format(raw)
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    # Read off the wire, a part's lines end in CRLF, as SMTP wants; in the built message, in \n.
    parts = [part.get_content().replace("\r\n", "\n") for part in parsed.iter_parts()]
    assert parts == [part.get_content() for part in message.iter_parts()]


def test_a_part_holding_the_boundary_gets_another_and_the_message_still_splits_in_two() -> None:
    plain = RenderedDigest(subject="d", text="a\n", html="<p>a</p>", preheader="")
    boundary = part_boundary(plain)
    hostile = RenderedDigest(subject="d", text=f"--{boundary}\n--{boundary}--\n", html="<p>a</p>", preheader="")
    links = SubscriberLinks(manage="http://x/m", unsubscribe="http://x/u", archive="http://x/a")
    message = build_message(hostile, "ada@example.org", Sender("digest@example.org", "Digest", "l.example"), links)

    assert part_boundary(hostile) != boundary
    parsed = email.message_from_bytes(message_bytes(message, None), policy=email.policy.default)
    parts = [part.get_content().replace("\r\n", "\n") for part in parsed.iter_parts()]
    assert parts == [hostile.text, "<p>a</p>\n"]


def test_every_digest_of_a_day_has_the_same_from_and_list_id_and_its_own_to_and_message_id(
    smtp_sink: SmtpSink, session: Session, engine: Engine, tmp_path: Path
) -> None:
    seed_day(session, 3)
    deliver(session, smtp_settings_for(engine, tmp_path, smtp_sink))

    raws = [received.raw for received in smtp_sink.messages]
    blocks = [header_block(raw) for raw in raws]
    assert len({raw_field(block, b"From") for block in blocks}) == 1
    assert len({raw_field(block, b"List-Id") for block in blocks}) == 1
    assert len({raw_field(block, b"To") for block in blocks}) == 3
    assert len({raw_field(block, b"Message-ID") for block in blocks}) == 3


BAD_ADDRESSES = ["пример@example.org", 'rea"der@example.org', "victim@example.org\r\nBcc: spy@evil.test"]


@pytest.mark.parametrize("bad_address", BAD_ADDRESSES, ids=["non-ascii-local-part", "quote", "line-break"])
def test_an_address_the_mail_library_refuses_fails_alone_and_the_others_get_their_digest(
    session: Session,
    engine: Engine,
    tmp_path: Path,
    smtp_sink: SmtpSink,
    caplog: pytest.LogCaptureFixture,
    bad_address: str,
) -> None:
    first, middle, last = seed_day(session, 3)
    # Written straight to the table, as an old import could: the sign-up form refuses such addresses.
    bad = session.scalars(select(Subscriber).where(Subscriber.email == middle)).one()
    bad.email = bad_address
    session.commit()
    settings = smtp_settings_for(engine, tmp_path, smtp_sink)

    with caplog.at_level(logging.WARNING, logger="newsletter.delivery"):
        result = deliver(session, settings)

    assert (result.sent, result.failed) == (2, 1)
    assert sorted(r for message in smtp_sink.messages for r in message.rcpt_tos) == [first, last]
    row = session.scalars(select(Delivery).where(Delivery.subscriber_id == bad.id)).one()
    assert row.status == DeliveryStatus.FAILED and not row.retryable
    assert f"the address {bad_address!r} cannot be written in a To header" in (row.error or "")
    assert any(f"subscriber {bad.id} " in record.getMessage() for record in caplog.records)
    # Our refusal, not the mail server's: the subscriber is not on the way to being marked bounced.
    session.refresh(bad)
    assert bad.status == SubscriberStatus.ACTIVE and bad.consecutive_hard_failures == 0
