"""Pure parsing and checks on the real arXiv feed and API files, and the announcement calendar."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from newsletter.harvest import (
    ApiReplyError,
    HarvestError,
    announcement_day_for,
    check_api_reply,
    expected_feed_day,
    parse_announcement_feed,
    submission_window,
)
from newsletter.models import AnnounceType
from tests.conftest import REFERENCE

FEEDS = REFERENCE / "arxiv" / "feed"
API = REFERENCE / "arxiv" / "api"
ATOM = "application/atom+xml; charset=UTF-8"
EST = dt.timezone(dt.timedelta(hours=-5))


def api_file(pattern: str) -> Path:
    return next(API.glob(pattern))


def test_the_real_combined_feed_gives_its_day_types_and_feed_fields() -> None:
    feed = parse_announcement_feed((FEEDS / "combined_cs_lg_ai_cl_stat_ml.xml").read_bytes())

    assert feed.day == dt.date(2026, 9, 24)
    kinds = {item.record.arxiv_id: item.announce_type for item in feed.items}
    assert kinds == {
        "2609.26811": AnnounceType.NEW,
        "2609.26820": AnnounceType.NEW,
        "2205.06398": AnnounceType.CROSS,
        "2009.13987": AnnounceType.REPLACE,
    }
    cross = next(item.record for item in feed.items if item.record.arxiv_id == "2205.06398")
    assert cross.version == 2 and cross.doi == "10.1093/bioinformatics/btac431"
    assert cross.authors == ("Pritam Dey", "Zhengwu Zhang", "David B. Dunson")
    assert cross.abstract.startswith("It has become routine in neuroscience")


@pytest.mark.parametrize("name", ["arxiv_cs_ai.xml", "arxiv_cs_cl.xml", "arxiv_cs_lg.xml"])
def test_every_real_single_category_feed_parses_to_dated_items(name: str) -> None:
    feed = parse_announcement_feed((FEEDS / name).read_bytes())

    assert feed.day is not None and feed.items and not feed.skipped
    assert all(item.record.title and item.record.abstract for item in feed.items)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "empty"),
        (b"<!DOCTYPE html><html><head><title>Service Unavailable</title>", "HTML page ('Service Unavailable')"),
        (b"<rss><channel><item>", "not well-formed XML"),
        (b"<feed xmlns='http://www.w3.org/2005/Atom'/>", "no RSS channel (root element <feed>)"),
    ],
)
def test_a_feed_that_is_not_rss_is_refused_with_its_reason(body: bytes, reason: str) -> None:
    with pytest.raises(HarvestError) as caught:
        parse_announcement_feed(body)
    assert reason in str(caught.value)


def test_the_real_error_feed_is_refused_for_good_with_arxivs_message() -> None:
    with pytest.raises(ApiReplyError) as caught:
        check_api_reply(400, ATOM, api_file("id_abc_*.xml").read_bytes(), "http://x/api/query?id_list=abc")
    assert "incorrect id format for abc" in str(caught.value) and not caught.value.transient


def test_a_real_page_that_found_one_of_two_ids_is_usable() -> None:
    body = api_file("id_0808.05394_1707.08567_*.xml").read_bytes()
    url = "http://x/api/query?id_list=0808.05394,1707.08567&start=0&max_results=100"

    assert check_api_reply(200, ATOM, body, url) == 1


def test_a_real_full_page_is_usable_and_the_same_page_cut_short_is_not() -> None:
    body = api_file("q_testing_s0_m100_*.xml").read_bytes()
    url = "http://x/api/query?search_query=all:testing&start=0&max_results=100"

    assert check_api_reply(200, ATOM, body, url) == 100
    with pytest.raises(ApiReplyError) as caught:
        check_api_reply(200, ATOM, body[: len(body) // 2], url)
    assert "malformed XML" in str(caught.value) and caught.value.transient


def test_a_real_page_missing_entries_it_announces_is_refused() -> None:
    body = api_file("q_testing_s0_m100_*.xml").read_bytes()
    text = body.decode()
    cut = text[: text.rindex("<entry>")] + "</feed>\n"  # drop the last entry, keep the header
    url = "http://x/api/query?search_query=all:testing&start=0&max_results=100"

    with pytest.raises(ApiReplyError, match="shorter than announced: 99 of 100 entries"):
        check_api_reply(200, ATOM, cut.encode(), url)


@pytest.mark.parametrize(
    ("submitted_est", "feed_day"),
    [
        (dt.datetime(2026, 11, 16, 13, 59), dt.date(2026, 11, 17)),  # Monday before the deadline -> Tuesday
        (dt.datetime(2026, 11, 16, 14, 0), dt.date(2026, 11, 18)),  # Monday at the deadline -> Wednesday
        (dt.datetime(2026, 11, 20, 15, 0), dt.date(2026, 11, 24)),  # Friday afternoon -> Tuesday
        (dt.datetime(2026, 11, 21, 9, 0), dt.date(2026, 11, 24)),  # Saturday -> Tuesday
        (dt.datetime(2026, 11, 20, 9, 0), dt.date(2026, 11, 23)),  # Friday morning -> Monday
    ],
)
def test_a_submission_is_placed_on_the_feed_day_that_announces_it(
    submitted_est: dt.datetime, feed_day: dt.date
) -> None:
    submitted = submitted_est.replace(tzinfo=EST)

    assert announcement_day_for(submitted) == feed_day
    start, end = submission_window(feed_day)
    assert start <= submitted < end


@pytest.mark.parametrize(
    ("now_est", "feed_day"),
    [
        (dt.datetime(2026, 11, 24, 19, 59), dt.date(2026, 11, 24)),  # Tuesday before the announcement
        (dt.datetime(2026, 11, 24, 20, 0), dt.date(2026, 11, 25)),  # Tuesday after it
        (dt.datetime(2026, 11, 28, 12, 0), dt.date(2026, 11, 27)),  # Saturday: Friday's feed is the latest
        (dt.datetime(2026, 11, 29, 21, 0), dt.date(2026, 11, 30)),  # Sunday evening announces Monday's
    ],
)
def test_the_expected_feed_day_follows_the_announcement_schedule(now_est: dt.datetime, feed_day: dt.date) -> None:
    assert expected_feed_day(now_est.replace(tzinfo=EST)) == feed_day
