"""The announcement feed (rss.arxiv.org): pure parsing, and the sources that fetch it."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Protocol
from xml.etree.ElementTree import Element

import requests
from defusedxml import ElementTree
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from newsletter.harvest.api import RETRY_STATUSES, is_transient, network_reason, retry_logger
from newsletter.harvest.records import (
    ApiReplyError,
    HarvestError,
    PaperRecord,
    clean_text,
    html_title,
    local_name,
    looks_like_html,
    split_arxiv_id,
)
from newsletter.models import AnnounceType

log = logging.getLogger(__name__)

_NS = {
    "arxiv": "http://arxiv.org/schemas/atom",
    "dc": "http://purl.org/dc/elements/1.1/",
}


@dataclass(frozen=True)
class FeedItem:
    """One item of the announcement feed."""

    announce_type: AnnounceType
    record: PaperRecord


@dataclass
class AnnouncementFeed:
    """A parsed announcement feed: its day (from pubDate) and items (none on a no-announcement day)."""

    day: dt.date | None
    items: list[FeedItem] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def has_announcement(self) -> bool:
        return self.day is not None and bool(self.items)


def parse_announcement_feed(content: bytes) -> AnnouncementFeed:
    """Parse an rss.arxiv.org feed; raises HarvestError for anything that is not one."""
    if not content.strip():
        raise HarvestError("announcement feed is empty (0 bytes)")
    if looks_like_html(content):
        raise HarvestError(f"announcement feed URL answered with an HTML page ({html_title(content)!r}), not RSS")
    try:
        root = ElementTree.fromstring(content)
    except ElementTree.ParseError as exc:
        raise HarvestError(f"announcement feed is not well-formed XML: {exc}") from exc
    except Exception as exc:  # defusedxml refuses entity tricks with its own errors
        raise HarvestError(f"announcement feed refused: {exc}") from exc
    channel = root.find("channel")
    if root.tag != "rss" or channel is None:
        raise HarvestError(f"announcement feed has no RSS channel (root element <{local_name(root.tag)}>)")
    feed = AnnouncementFeed(day=None)
    for element in channel.findall("item"):
        item, reason = _parse_feed_item(element)
        if item is None:
            log.warning("announcement feed: skipping an item: %s", reason)
            feed.skipped.append(reason)
        else:
            feed.items.append(item)
    if feed.skipped and not feed.items:
        raise HarvestError(f"announcement feed has {len(feed.skipped)} items and none usable: {feed.skipped[0]}")
    if feed.items or channel.findtext("pubDate"):
        feed.day = _channel_day(channel, required=bool(feed.items))
    return feed


def _channel_day(channel: Element, required: bool) -> dt.date | None:
    raw = channel.findtext("pubDate") or channel.findtext("lastBuildDate")
    if not raw:
        if required:
            raise HarvestError("announcement feed has items but no pubDate")
        return None
    try:
        return parsedate_to_datetime(raw).date()
    except (TypeError, ValueError) as exc:
        raise HarvestError(f"announcement feed pubDate {raw!r} is not a date") from exc


def _announce_type(raw: str) -> AnnounceType | None:
    # "replace-cross" is a replacement of a cross-listed paper: a replacement for our purposes.
    if raw.startswith("replace"):
        return AnnounceType.REPLACE
    return {"new": AnnounceType.NEW, "cross": AnnounceType.CROSS}.get(raw)


def _parse_feed_item(item: Element) -> tuple[FeedItem | None, str]:
    guid = item.findtext("guid") or item.findtext("link") or ""
    try:
        arxiv_id, version = split_arxiv_id(guid)
    except ValueError:
        return None, f"unexpected identifier {guid.strip()!r}"
    raw_type = (item.findtext("arxiv:announce_type", namespaces=_NS) or "new").strip()
    announce_type = _announce_type(raw_type)
    if announce_type is None:
        return None, f"{arxiv_id}: unknown announce type {raw_type!r}"
    description = item.findtext("description") or ""
    abstract = description.split("Abstract:", 1)[1] if "Abstract:" in description else ""
    categories = tuple(c.text.strip() for c in item.findall("category") if c.text)
    creators = item.findtext("dc:creator", namespaces=_NS) or ""
    record = PaperRecord(
        arxiv_id=arxiv_id,
        version=version,
        title=clean_text(item.findtext("title")),
        abstract=clean_text(abstract),
        authors=tuple(name.strip() for name in creators.split(",") if name.strip()),
        categories=categories,
        primary_category=categories[0] if categories else "",
        journal_ref=clean_text(item.findtext("arxiv:journal_reference", namespaces=_NS)) or None,
        doi=clean_text(item.findtext("arxiv:DOI", namespaces=_NS)) or None,
        details_source="feed",
    )
    return FeedItem(announce_type=announce_type, record=record), ""


class FeedSource(Protocol):
    def fetch_feed(self) -> bytes: ...


@dataclass(frozen=True)
class FeedReply:
    """A conditional fetch of the feed: its body, or None when the server said 304 Not Modified."""

    content: bytes | None
    etag: str | None = None
    last_modified: str | None = None


class HttpFeedSource:
    """The live announcement feed over HTTP, asked again with backoff on network errors and 5xx."""

    def __init__(self, url: str, timeout: float = 30.0, retries: int = 2, backoff_seconds: float = 2.0) -> None:
        self.url = url
        self.timeout = timeout
        self.retries = retries
        self.backoff_seconds = backoff_seconds

    def _get(self, headers: dict[str, str]) -> requests.Response:
        response = requests.get(self.url, timeout=self.timeout, headers=headers)
        if response.status_code in RETRY_STATUSES:
            raise ApiReplyError(f"announcement feed answered HTTP {response.status_code} at {self.url}", True)
        return response

    def _fetch(self, headers: dict[str, str]) -> requests.Response:
        retrying = Retrying(
            retry=retry_if_exception(is_transient),
            stop=stop_after_attempt(self.retries + 1),
            wait=wait_exponential(multiplier=self.backoff_seconds, max=max(60.0, self.backoff_seconds)),
            before_sleep=retry_logger("announcement feed"),
            reraise=True,
        )
        try:
            response = retrying(self._get, headers)
        except ApiReplyError:
            raise
        except requests.RequestException as exc:
            raise HarvestError(f"announcement feed unreachable at {self.url}: {network_reason(exc)}") from exc
        if response.status_code not in (200, 304) or (response.status_code == 304 and not headers):
            raise HarvestError(f"announcement feed answered HTTP {response.status_code} at {self.url}")
        return response

    def fetch_feed(self) -> bytes:
        return self._fetch({}).content

    def fetch_if_changed(self, etag: str | None, last_modified: str | None) -> FeedReply:
        """The feed unless it is unchanged since these validators (then one cheap 304 and no body)."""
        headers = {}
        if etag:
            headers["If-None-Match"] = etag
        if last_modified:
            headers["If-Modified-Since"] = last_modified
        response = self._fetch(headers)
        etag = response.headers.get("ETag") or etag
        last_modified = response.headers.get("Last-Modified") or last_modified
        if response.status_code == 304:
            return FeedReply(None, etag, last_modified)
        return FeedReply(response.content, response.headers.get("ETag"), response.headers.get("Last-Modified"))


class FileFeedSource:
    """An announcement feed stored on disk."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fetch_feed(self) -> bytes:
        return self.path.read_bytes()


def read_feed(feed_source: FeedSource) -> AnnouncementFeed:
    """Fetch and parse the announcement feed."""
    return parse_announcement_feed(feed_source.fetch_feed())
