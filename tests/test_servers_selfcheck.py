"""Self-checks: the stand-in servers speak the protocols the real client libraries expect."""

from __future__ import annotations

import smtplib
import sys
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime
from email.message import EmailMessage
from pathlib import Path
from xml.etree import ElementTree as ET

import arxiv
import deepl
import pytest
import requests

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.conftest import REFERENCE as FIXTURE_REFERENCE  # noqa: E402
from tests.servers.arxiv import (  # noqa: E402
    ArxivServer,
    build_empty_feed,
    build_feed,
    load_entries_from_atom,
    make_paper,
)
from tests.servers.deepl import DeepLServer  # noqa: E402
from tests.servers.smtp import SmtpSink  # noqa: E402

REFERENCE = FIXTURE_REFERENCE / "arxiv"
needs_reference = pytest.mark.skipif(
    not REFERENCE.is_dir(), reason="shared arXiv reference files not present"
)


@pytest.fixture
def arxiv_server() -> Iterator[ArxivServer]:
    """A running ArxivServer with three known papers."""
    papers = [
        make_paper(
            "2501.00001",
            title="Alpha",
            categories=["cs.AI"],
            published=datetime(2025, 1, 2, 10, 0, tzinfo=UTC),
        ),
        make_paper(
            "2501.00002v2",
            title="Beta",
            categories=["cs.LG", "stat.ML"],
            published=datetime(2025, 1, 3, 10, 0, tzinfo=UTC),
            doi="10.1000/xyz",
            comment="12 pages",
            journal_ref="J. Test 1 (2025)",
        ),
        make_paper(
            "2501.00003",
            title="Gamma",
            categories=["cs.CL"],
            published=datetime(2025, 1, 4, 10, 0, tzinfo=UTC),
        ),
    ]
    with ArxivServer(papers) as server:
        yield server


def _client(server: ArxivServer, **kwargs: float) -> arxiv.Client:
    """An arxiv.Client pointed at the fake, without politeness delay."""
    client = arxiv.Client(delay_seconds=0, **kwargs)  # type: ignore[arg-type]
    client.query_url_format = server.query_url_format
    return client


def test_arxiv_client_fetches_id_list(arxiv_server: ArxivServer) -> None:
    """arxiv.Client gets the three papers by id_list, unknown ids are simply absent."""
    search = arxiv.Search(
        id_list=["2501.00001", "2501.00002", "2501.00003", "2501.09999"], max_results=10
    )
    results = list(_client(arxiv_server).results(search))
    assert [r.get_short_id() for r in results] == ["2501.00001v1", "2501.00002v2", "2501.00003v1"]
    beta = results[1]
    assert beta.title == "Beta" and beta.categories == ["cs.LG", "stat.ML"]
    assert beta.primary_category == "cs.LG" and beta.doi == "10.1000/xyz"
    assert beta.comment == "12 pages" and beta.journal_ref == "J. Test 1 (2025)"
    assert beta.pdf_url == "https://arxiv.org/pdf/2501.00002v2"
    method, path, query, *_ = arxiv_server.requests[0]
    assert (method, path) == ("GET", "/api/query")
    assert query["id_list"].split(",")[0] == "2501.00001" and query["start"] == "0"


def test_arxiv_paging_and_date_search(arxiv_server: ArxivServer) -> None:
    """Paging by max_results and a submittedDate+cat catch-up query with sorting."""
    query = "submittedDate:[202501020000 TO 202501032359] AND (cat:cs.AI OR cat:cs.LG)"
    search = arxiv.Search(
        query=query,
        max_results=10,
        sort_by=arxiv.SortCriterion.SubmittedDate,
        sort_order=arxiv.SortOrder.Ascending,
    )
    results = list(_client(arxiv_server, page_size=1).results(search))
    assert [r.title for r in results] == ["Alpha", "Beta"]
    assert [r.query["start"] for r in arxiv_server.api_requests] == ["0", "1"]


def test_arxiv_malformed_id_and_faults(arxiv_server: ArxivServer) -> None:
    """Malformed id -> 400 error feed; fail_next answers n errors then recovers."""
    response = requests.get(f"{arxiv_server.api_url}?id_list=abc&start=0&max_results=10", timeout=5)
    assert response.status_code == 400
    assert b"incorrect id format for abc" in response.content
    arxiv_server.fail_next(2, 503, path_prefix="/api")
    search = arxiv.Search(id_list=["2501.00001"], max_results=1)
    with pytest.raises(arxiv.HTTPError):
        list(_client(arxiv_server, num_retries=1).results(search))
    assert len(list(_client(arxiv_server, num_retries=0).results(search))) == 1
    arxiv_server.delay_next(1, 0.3)
    started = time.monotonic()
    requests.get(f"{arxiv_server.api_url}?id_list=2501.00001", timeout=5)
    assert time.monotonic() - started >= 0.3
    arxiv_server.empty_next_page(1, after=1)
    paged = arxiv.Search(id_list=["2501.00001", "2501.00002"], max_results=2)
    with pytest.raises(arxiv.UnexpectedEmptyPageError):
        list(_client(arxiv_server, page_size=1, num_retries=0).results(paged))


@needs_reference
def test_arxiv_serves_reference_entries() -> None:
    """Entries loaded from a real API response round-trip through arxiv.Client."""
    papers = load_entries_from_atom(next((REFERENCE / "api").glob("q_testing_s0_m10_*.xml")))
    assert len(papers) == 10
    with ArxivServer(papers) as server:
        ids = [p.arxiv_id for p in papers[:3]]
        results = list(_client(server).results(arxiv.Search(id_list=ids, max_results=3)))
    assert [r.get_short_id().rsplit("v", 1)[0] for r in results] == ids
    assert results[0].summary == papers[0].abstract


def test_arxiv_rss_feeds(arxiv_server: ArxivServer) -> None:
    """Configured and default (empty) announcement feeds parse as RSS."""
    day = date(2025, 1, 6)
    paper = make_paper("2501.00001", categories=["cs.AI", "cs.LG"], authors=["A B", "C D"])
    arxiv_server.feeds["cs.AI+cs.LG"] = build_feed(day, [(paper, "new")])
    body = requests.get(arxiv_server.feed_base_url + "cs.AI+cs.LG", timeout=5).content
    channel = ET.fromstring(body).find("channel")
    assert channel is not None
    assert channel.findtext("pubDate") == "Mon, 06 Jan 2025 00:00:00 -0500"
    item = channel.find("item")
    assert item is not None and item.findtext("guid") == "oai:arXiv.org:2501.00001v1"
    assert item.findtext("description", "").startswith("arXiv:2501.00001v1 Announce Type: new \n")
    assert item.findtext("{http://purl.org/dc/elements/1.1/}creator") == "A B, C D"
    empty = requests.get(arxiv_server.feed_base_url + "cs.CL", timeout=5).content
    assert ET.fromstring(empty).find("channel/item") is None
    assert build_empty_feed(date(2025, 7, 4)).count(b"-0400") == 1


@pytest.fixture
def deepl_server() -> Iterator[DeepLServer]:
    """A running DeepLServer."""
    with DeepLServer(auth_key="secret-key") as server:
        yield server


def test_deepl_translate_xml(deepl_server: DeepLServer) -> None:
    """Ignored-tag content survives, a bare '$' becomes 美元, billing and usage add up."""
    client = deepl.DeepLClient("secret-key", server_url=deepl_server.server_url)
    text = "Costs $5 for <x>$E=mc^2$</x> energy"
    result = client.translate_text(
        [text], source_lang="EN", target_lang="ZH-HANS", tag_handling="xml", ignore_tags=["x"]
    )
    assert result[0].text == "[ZH] Costs 美元5 for <x>$E=mc^2$</x> energy"
    assert result[0].billed_characters == len(text)
    assert result[0].detected_source_lang == "EN"
    logged = deepl_server.translate_requests[0]
    assert logged.texts == [text] and logged.ignore_tags == ["x"]
    assert logged.tag_handling == "xml" and logged.target_lang == "ZH-HANS"
    assert client.get_usage().character.count == len(text)


def test_deepl_glossary_auth_and_faults(deepl_server: DeepLServer) -> None:
    """Glossary terms apply; wrong key -> 403; fail_next(456) -> QuotaExceededException."""
    client = deepl.DeepLClient("secret-key", server_url=deepl_server.server_url)
    glossary = client.create_glossary("ml", "EN", "ZH-HANS", {"transformer": "变换器"})
    assert [g.glossary_id for g in client.list_glossaries()] == [glossary.glossary_id]
    out = client.translate_text(
        "A transformer model", source_lang="EN", target_lang="ZH-HANS", glossary=glossary
    )
    assert out.text == "[ZH] A 变换器 model"
    assert deepl_server.translate_requests[-1].glossary_id == glossary.glossary_id
    with pytest.raises(deepl.AuthorizationException):
        deepl.DeepLClient("wrong", server_url=deepl_server.server_url).get_usage()
    deepl_server.fail_next(1, 456)
    with pytest.raises(deepl.QuotaExceededException):
        client.translate_text("x", target_lang="ZH-HANS")
    client.delete_glossary(glossary)
    assert client.list_glossaries() == []


def _message(to: str) -> EmailMessage:
    """A tiny test email."""
    msg = EmailMessage()
    msg["From"] = "digest@example.org"
    msg["To"] = to
    msg["Subject"] = "Digest 今日"
    msg.set_content("hello")
    return msg


def test_smtp_sink_receives_and_temp_fails() -> None:
    """smtplib delivers to the sink; 451 on first DATA, 250 on retry; 550 for rejected rcpt."""
    with SmtpSink() as sink:
        sink.temp_fail_first(1)
        sink.reject_address("ghost@example.org")
        with smtplib.SMTP(sink.host, sink.port, timeout=5) as smtp:
            with pytest.raises(smtplib.SMTPDataError) as excinfo:
                smtp.send_message(_message("a@example.org"))
            assert excinfo.value.smtp_code == 451
            smtp.send_message(_message("a@example.org"))
            with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
                smtp.send_message(_message("ghost@example.org"))
            assert refused.value.recipients["ghost@example.org"][0] == 550
        received = sink.wait_for_messages(1)
        assert received[0].rcpt_tos == ["a@example.org"]
        assert received[0].message["Subject"] == "Digest 今日"
        assert sink.connections == 1


def test_smtp_drop_auth_and_tls() -> None:
    """drop_after aborts mid-session; AUTH and implicit TLS / STARTTLS work with smtplib."""
    with SmtpSink(auth=("user", "pw")) as sink:
        sink.drop_after(1)
        with pytest.raises(smtplib.SMTPServerDisconnected):
            with smtplib.SMTP(sink.host, sink.port, timeout=5) as smtp:
                smtp.login("user", "pw")
                smtp.send_message(_message("a@example.org"))
                smtp.send_message(_message("b@example.org"))
        with smtplib.SMTP(sink.host, sink.port, timeout=5) as smtp:
            with pytest.raises(smtplib.SMTPAuthenticationError):
                smtp.login("user", "bad")
            smtp.login("user", "pw")
            smtp.send_message(_message("b@example.org"))
        assert [m.rcpt_tos for m in sink.messages] == [["a@example.org"], ["b@example.org"]]
        assert sink.messages[1].auth_user == "user" and sink.connections == 2
    with SmtpSink(tls="implicit") as sink:
        with smtplib.SMTP_SSL(
            sink.host, sink.port, context=sink.client_ssl_context(), timeout=5
        ) as smtp:
            smtp.send_message(_message("c@example.org"))
        assert len(sink.wait_for_messages(1)) == 1
    with SmtpSink(tls="starttls", require_starttls=True) as sink:
        with smtplib.SMTP(sink.host, sink.port, timeout=5) as smtp:
            smtp.starttls(context=sink.client_ssl_context())
            smtp.send_message(_message("d@example.org"))
        assert len(sink.wait_for_messages(1)) == 1 and sink.connections == 1
