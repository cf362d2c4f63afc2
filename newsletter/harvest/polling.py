"""Polling the announcement feed cheaply: conditional requests with the validators of the last full answer."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Protocol

from sqlmodel import Session

from newsletter.harvest.feed import FeedReply, parse_announcement_feed
from newsletter.models import FeedValidator, utcnow


class ConditionalFeedSource(Protocol):
    url: str

    def fetch_if_changed(self, etag: str | None, last_modified: str | None) -> FeedReply: ...


@dataclass(frozen=True)
class FeedPoll:
    """What one poll found: the announcement day the feed shows (None: none) and whether it changed."""

    day: dt.date | None
    changed: bool
    polled_at: dt.datetime


# The feed_validator columns' sizes.
MAX_ETAG, MAX_LAST_MODIFIED = 500, 64


def usable_validator(value: str | None, limit: int) -> str | None:
    """A validator worth sending back: printable ASCII within `limit`, else None (the next poll is a full GET)."""
    if value is None or not value.strip() or len(value) > limit:
        return None
    if not value.isascii() or not value.isprintable():
        return None  # a header carrying line breaks or controls would not be sent back as it came
    return value.strip()


def poll_feed(session: Session, source: ConditionalFeedSource) -> FeedPoll:
    """Ask for the feed with the stored validators; parse and store new ones only when it changed (commits)."""
    held = session.get(FeedValidator, source.url, populate_existing=True)
    polled_at = utcnow()
    reply = source.fetch_if_changed(held.etag if held else None, held.last_modified if held else None)
    if reply.content is None and held is not None:
        held.fetched_at = polled_at
        session.add(held)
        session.commit()
        return FeedPoll(held.day, False, polled_at)
    feed = parse_announcement_feed(reply.content or b"")
    day = feed.day if feed.has_announcement else None
    held = held or FeedValidator(url=source.url)
    held.etag = usable_validator(reply.etag, MAX_ETAG)
    held.last_modified = usable_validator(reply.last_modified, MAX_LAST_MODIFIED)
    held.day = day
    held.fetched_at = held.changed_at = polled_at
    session.add(held)
    session.commit()
    return FeedPoll(day, True, polled_at)
