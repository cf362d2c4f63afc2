"""Harvest: the announcement feed names the papers of a day; the arXiv API gives their details.

Everything from the network is fetched and checked first; only then is one day (or several, when
missed days are caught up) written, in the caller's single transaction, so a failure leaves nothing
half-written.

- `records`: PaperRecord, the harvest errors, identifiers and text cleaning
- `calendar`: announcement days (20:00 US Eastern, Sunday to Thursday) and submission windows
- `feed`: the announcement feed (RSS), parsed purely, and its sources
- `api`: the arXiv API through the `arxiv` package: reply checks, pacing, retries
- `store`: collect a day, then write it; harvest_range
"""

from newsletter.harvest.api import (
    ArxivApiSession,
    ArxivApiSource,
    AtomFilesSource,
    BackoffOrRetryAfter,
    DetailsSource,
    SubmissionSearch,
    check_api_reply,
    network_reason,
    record_from_result,
)
from newsletter.harvest.calendar import (
    EASTERN,
    MAX_CATCH_UP_DAYS,
    announcement_day_for,
    expected_feed_day,
    feed_days_between,
    submission_window,
)
from newsletter.harvest.feed import (
    AnnouncementFeed,
    FeedItem,
    FeedSource,
    FileFeedSource,
    HttpFeedSource,
    parse_announcement_feed,
    read_feed,
)
from newsletter.harvest.records import (
    ApiReplyError,
    HarvestError,
    PaperRecord,
    clean_text,
    split_arxiv_id,
)
from newsletter.harvest.store import (
    DayHarvest,
    collect_feed_day,
    collect_missed_days,
    harvest_range,
    is_harvested,
    last_harvested_before,
    store_day,
    store_feed_text,
    upsert_paper,
    upsert_papers,
)

__all__ = [
    "AnnouncementFeed",
    "ApiReplyError",
    "ArxivApiSession",
    "ArxivApiSource",
    "AtomFilesSource",
    "BackoffOrRetryAfter",
    "DayHarvest",
    "DetailsSource",
    "EASTERN",
    "FeedItem",
    "FeedSource",
    "FileFeedSource",
    "HarvestError",
    "HttpFeedSource",
    "MAX_CATCH_UP_DAYS",
    "PaperRecord",
    "SubmissionSearch",
    "announcement_day_for",
    "check_api_reply",
    "clean_text",
    "collect_feed_day",
    "collect_missed_days",
    "expected_feed_day",
    "feed_days_between",
    "harvest_range",
    "is_harvested",
    "last_harvested_before",
    "network_reason",
    "parse_announcement_feed",
    "read_feed",
    "record_from_result",
    "split_arxiv_id",
    "store_day",
    "store_feed_text",
    "submission_window",
    "upsert_paper",
    "upsert_papers",
]
