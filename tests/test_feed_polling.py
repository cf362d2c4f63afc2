"""Polling the announcement feed: an unchanged feed costs one conditional request answered 304."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.engine import Engine
from sqlmodel import Session

from newsletter.harvest.polling import MAX_ETAG, poll_feed, usable_validator
from newsletter.models import FeedValidator
from newsletter.pipeline import production_feed
from tests.conftest import make_settings
from tests.servers import ArxivServer, build_empty_feed, build_feed, make_paper

CATEGORIES = ["cs.AI"]
WEDNESDAY, THURSDAY = dt.date(2026, 11, 18), dt.date(2026, 11, 19)


@pytest.fixture
def feed(engine: Engine, tmp_path: Path, arxiv_server: ArxivServer):  # type: ignore[no-untyped-def]
    settings = make_settings(engine.url.render_as_string(hide_password=False), tmp_path,
                             arxiv_feed_url=arxiv_server.feed_base_url, categories=CATEGORIES,
                             arxiv_retry_base_seconds=0.001)
    return production_feed(settings)


def test_an_unchanged_feed_is_asked_with_its_validators_and_answers_304(
    session: Session, arxiv_server: ArxivServer, feed  # type: ignore[no-untyped-def]
) -> None:
    arxiv_server.set_feed(CATEGORIES, build_feed(THURSDAY, [make_paper("2611.00001")], categories=CATEGORIES))

    first = poll_feed(session, feed)
    second = poll_feed(session, feed)
    third = poll_feed(session, feed)

    assert (first.day, first.changed) == (THURSDAY, True)
    assert (second.day, second.changed) == (third.day, third.changed) == (THURSDAY, False)
    assert arxiv_server.feed_statuses == [200, 304, 304]
    sent = [request.headers for request in arxiv_server.feed_requests]
    assert "if-none-match" not in sent[0]
    etag = session.get(FeedValidator, feed.url).etag
    assert etag and sent[1]["if-none-match"] == sent[2]["if-none-match"] == etag
    assert sent[1]["if-modified-since"].endswith(" GMT")


def test_a_changed_feed_is_fetched_in_full_and_its_new_day_seen(
    session: Session, arxiv_server: ArxivServer, feed  # type: ignore[no-untyped-def]
) -> None:
    arxiv_server.set_feed(CATEGORIES, build_empty_feed(WEDNESDAY, categories=CATEGORIES))
    quiet = poll_feed(session, feed)
    arxiv_server.set_feed(CATEGORIES, build_feed(THURSDAY, [make_paper("2611.00001")], categories=CATEGORIES))

    announced = poll_feed(session, feed)

    assert (quiet.day, announced.day, announced.changed) == (None, THURSDAY, True)
    assert arxiv_server.feed_statuses == [200, 200]


def test_a_validator_too_long_to_keep_means_a_full_request_next_time_not_a_failure(
    session: Session, arxiv_server: ArxivServer, feed  # type: ignore[no-untyped-def]
) -> None:
    body = build_feed(THURSDAY, [make_paper("2611.00001")], categories=CATEGORIES)
    arxiv_server.set_feed(CATEGORIES, body)
    arxiv_server.respond_next(body, content_type="application/rss+xml", path_prefix="/rss",
                              headers={"ETag": '"' + "x" * 600 + '"'})

    assert poll_feed(session, feed).day == THURSDAY
    assert session.get(FeedValidator, feed.url).etag is None
    assert poll_feed(session, feed).day == THURSDAY
    assert "if-none-match" not in arxiv_server.feed_requests[1].headers


@pytest.mark.parametrize(
    ("header", "kept"),
    [
        ('"5d8c72a5edda8"', '"5d8c72a5edda8"'),
        ('W/"0815"', 'W/"0815"'),
        ("Wed, 02 Dec 2026 01:02:03 GMT", "Wed, 02 Dec 2026 01:02:03 GMT"),
        ('"a"\r\nSet-Cookie: x=1', None),
        ('"ünïcode"', None),
        ("", None),
        ("   ", None),
        ('"' + "x" * MAX_ETAG + '"', None),
    ],
)
def test_hostile_validators_are_not_kept(header: str, kept: str | None) -> None:
    assert usable_validator(header, MAX_ETAG) == kept


@given(st.text(max_size=700))
def test_a_kept_validator_is_printable_ascii_within_its_column(header: str) -> None:
    kept = usable_validator(header, MAX_ETAG)
    assert kept is None or (kept.isascii() and kept.isprintable() and 0 < len(kept) <= MAX_ETAG)
