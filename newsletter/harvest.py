"""Harvest: the announcement feed names the papers of a day; the arXiv API gives their details."""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Protocol

import arxiv
import requests
from defusedxml import ElementTree
from sqlalchemy import select
from sqlmodel import Session

from newsletter.models import Announcement, AnnounceType, Paper

log = logging.getLogger(__name__)

_NS = {
    "arxiv": "http://arxiv.org/schemas/atom",
    "dc": "http://purl.org/dc/elements/1.1/",
}
# New-style (2501.00001v2) and old-style (astro-ph/9812133v1, math.GT/0309136) identifiers.
_ARXIV_ID = re.compile(
    r"^(?P<id>\d{4}\.\d{4,5}|[a-z][a-z-]*(?:\.[A-Z]{2})?/\d{7})(?:v(?P<version>\d+))?$"
)
_API_BATCH = 100


class HarvestError(Exception):
    """A feed or API reply that cannot be used; nothing is written for that day."""


@dataclass(frozen=True)
class PaperRecord:
    """Everything we keep about a paper, from the API or, failing that, from the feed."""

    arxiv_id: str
    version: int
    title: str
    abstract: str
    authors: tuple[str, ...]
    categories: tuple[str, ...]
    primary_category: str
    comment: str | None = None
    journal_ref: str | None = None
    doi: str | None = None
    published: dt.datetime | None = None
    updated: dt.datetime | None = None
    details_source: str = "api"


@dataclass(frozen=True)
class FeedItem:
    """One item of the announcement feed."""

    announce_type: AnnounceType
    record: PaperRecord


@dataclass
class AnnouncementFeed:
    """A parsed announcement feed: the day and its items (none on a no-announcement day)."""

    day: dt.date | None
    items: list[FeedItem] = field(default_factory=list)


@dataclass
class HarvestResult:
    """What a harvest stored for a day."""

    day: dt.date | None
    announced: int = 0
    replaced: int = 0
    from_feed_only: list[str] = field(default_factory=list)

    @property
    def has_announcement(self) -> bool:
        return self.day is not None and self.announced > 0


def split_arxiv_id(raw: str) -> tuple[str, int]:
    """('2501.00001', 2) from '2501.00001v2', an abs URL or an OAI guid; ValueError otherwise."""
    text = raw.strip()
    for prefix in ("oai:arXiv.org:", "http://arxiv.org/abs/", "https://arxiv.org/abs/", "arXiv:"):
        if text.startswith(prefix):
            text = text[len(prefix):]
    match = _ARXIV_ID.match(text)
    if not match:
        raise ValueError(f"{raw!r} is not an arXiv identifier")
    return match["id"], int(match["version"] or 1)


def clean_text(text: str | None) -> str:
    """Collapse runs of white space (arXiv hard-wraps abstracts); LaTeX is kept as written."""
    return re.sub(r"\s+", " ", text or "").strip()


def parse_announcement_feed(content: bytes) -> AnnouncementFeed:
    """Parse an rss.arxiv.org feed; raises HarvestError for anything that is not one."""
    try:
        root = ElementTree.fromstring(content)
    except ElementTree.ParseError as exc:
        raise HarvestError(f"announcement feed is not well-formed XML: {exc}") from exc
    except Exception as exc:  # defusedxml refuses entity tricks with its own errors
        raise HarvestError(f"announcement feed refused: {exc}") from exc
    channel = root.find("channel")
    if root.tag != "rss" or channel is None:
        raise HarvestError(f"announcement feed has no RSS channel (root element <{root.tag}>)")
    items = [_parse_feed_item(item) for item in channel.findall("item")]
    day = _channel_day(channel) if items else None
    return AnnouncementFeed(day=day, items=[item for item in items if item is not None])


def _channel_day(channel) -> dt.date:  # type: ignore[no-untyped-def]
    raw = channel.findtext("pubDate") or channel.findtext("lastBuildDate")
    if not raw:
        raise HarvestError("announcement feed has items but no pubDate")
    try:
        return parsedate_to_datetime(raw).date()
    except (TypeError, ValueError) as exc:
        raise HarvestError(f"announcement feed pubDate {raw!r} is not a date") from exc


def _parse_feed_item(item) -> FeedItem | None:  # type: ignore[no-untyped-def]
    guid = item.findtext("guid") or item.findtext("link") or ""
    try:
        arxiv_id, version = split_arxiv_id(guid)
    except ValueError:
        log.warning("skipping feed item with unexpected identifier %r", guid)
        return None
    raw_type = (item.findtext("arxiv:announce_type", namespaces=_NS) or "new").strip()
    # "replace-cross" is a replacement of a cross-listed paper: a replacement for our purposes.
    announce_type = AnnounceType.REPLACE if raw_type.startswith("replace") else AnnounceType(
        raw_type if raw_type in {"new", "cross"} else "new"
    )
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
        details_source="feed",
    )
    return FeedItem(announce_type=announce_type, record=record)


def record_from_result(result: arxiv.Result) -> PaperRecord:
    """Our record from an `arxiv` package Result."""
    arxiv_id, version = split_arxiv_id(result.get_short_id())
    categories = list(result.categories)
    if result.primary_category in categories:
        categories.remove(result.primary_category)
    return PaperRecord(
        arxiv_id=arxiv_id,
        version=version,
        title=clean_text(result.title),
        abstract=clean_text(result.summary),
        authors=tuple(author.name for author in result.authors),
        categories=tuple([result.primary_category, *categories] if result.primary_category else categories),
        primary_category=result.primary_category or (categories[0] if categories else ""),
        comment=clean_text(result.comment) or None,
        journal_ref=clean_text(result.journal_ref) or None,
        doi=result.doi,
        published=result.published,
        updated=result.updated,
    )


class FeedSource(Protocol):
    def fetch_feed(self) -> bytes: ...


class DetailsSource(Protocol):
    def fetch_details(self, arxiv_ids: Sequence[str]) -> list[PaperRecord]: ...


class HttpFeedSource:
    """The live announcement feed over HTTP."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.url = url
        self.timeout = timeout

    def fetch_feed(self) -> bytes:
        try:
            response = requests.get(self.url, timeout=self.timeout)
        except requests.RequestException as exc:
            raise HarvestError(f"announcement feed unreachable at {self.url}: {exc}") from exc
        if response.status_code != 200:
            raise HarvestError(f"announcement feed answered HTTP {response.status_code}")
        return response.content


class _TimeoutSession(requests.Session):
    """A requests session with a default timeout (the arxiv package sets none)."""

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self.default_timeout = timeout

    def request(self, *args, **kwargs):  # type: ignore[no-untyped-def, override]
        kwargs.setdefault("timeout", self.default_timeout)
        return super().request(*args, **kwargs)


class ArxivApiSource:
    """Paper details from the arXiv API through the `arxiv` package, 100 IDs a request."""

    def __init__(self, api_url: str, delay_seconds: float, timeout: float, retries: int) -> None:
        self.client = arxiv.Client(page_size=_API_BATCH, delay_seconds=delay_seconds, num_retries=retries)
        self.client.query_url_format = f"{api_url}?{{}}"
        self.client._session = _TimeoutSession(timeout)

    def fetch_details(self, arxiv_ids: Sequence[str]) -> list[PaperRecord]:
        records: list[PaperRecord] = []
        for start in range(0, len(arxiv_ids), _API_BATCH):
            batch = list(arxiv_ids[start:start + _API_BATCH])
            search = arxiv.Search(id_list=batch, max_results=len(batch))
            try:
                records.extend(record_from_result(r) for r in self.client.results(search))
            except (arxiv.ArxivError, requests.RequestException) as exc:
                raise HarvestError(f"arXiv API failed for {len(batch)} IDs: {exc}") from exc
        return records


class AtomFilesSource:
    """Paper details from stored arXiv API responses (the bundled offline sample)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def fetch_details(self, arxiv_ids: Sequence[str]) -> list[PaperRecord]:
        from arxiv import _feed  # the package's own Atom parser, as used on live replies

        wanted = set(arxiv_ids)
        records = []
        for path in sorted(self.directory.glob("*.xml")):
            for result in _feed.parse(path.read_bytes()).results:
                record = record_from_result(result)
                if record.arxiv_id in wanted:
                    records.append(record)
        return records


class FileFeedSource:
    """An announcement feed stored on disk."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fetch_feed(self) -> bytes:
        return self.path.read_bytes()


def harvest(session: Session, feed_source: FeedSource, details_source: DetailsSource) -> HarvestResult:
    """Read the feed, fetch details, upsert papers and the day's announcements (caller commits)."""
    feed = parse_announcement_feed(feed_source.fetch_feed())
    if feed.day is None:
        return HarvestResult(day=None)
    ids = list(dict.fromkeys(item.record.arxiv_id for item in feed.items))
    details = {record.arxiv_id: record for record in details_source.fetch_details(ids)}
    result = HarvestResult(day=feed.day)
    already = set(
        session.scalars(select(Announcement.arxiv_id).where(Announcement.day == feed.day))
    )
    for item in feed.items:
        record = details.get(item.record.arxiv_id)
        if record is None:
            result.from_feed_only.append(item.record.arxiv_id)
            record = item.record
        upsert_paper(session, record)
        if item.announce_type is AnnounceType.REPLACE:
            result.replaced += 1
            continue
        if item.record.arxiv_id not in already:
            session.add(Announcement(day=feed.day, arxiv_id=record.arxiv_id, announce_type=item.announce_type))
            already.add(item.record.arxiv_id)
        result.announced += 1
    if result.from_feed_only:
        log.warning("arXiv API did not return %s; using the feed's own fields", result.from_feed_only)
    return result


def upsert_paper(session: Session, record: PaperRecord) -> Paper:
    """Insert or update a paper by its versionless ID; an older version never overwrites a newer."""
    paper = session.get(Paper, record.arxiv_id)
    if paper is None:
        paper = Paper(arxiv_id=record.arxiv_id)
        session.add(paper)
    elif paper.version > record.version or (
        paper.details_source == "api" and record.details_source == "feed" and paper.version == record.version
    ):
        return paper
    paper.version = record.version
    paper.title = record.title
    paper.abstract = record.abstract
    paper.authors = list(record.authors)
    paper.categories = list(record.categories)
    paper.primary_category = record.primary_category
    paper.comment = record.comment
    paper.journal_ref = record.journal_ref
    paper.doi = record.doi
    paper.published = record.published
    paper.updated = record.updated
    paper.details_source = record.details_source
    session.flush()
    return paper


def announced_ids(session: Session, day: dt.date) -> Iterable[str]:
    """IDs announced as new or cross-listed on `day`."""
    return session.scalars(select(Announcement.arxiv_id).where(Announcement.day == day))


def harvest_range(
    session: Session,
    feed_source: FeedSource,
    details_source: DetailsSource,
    first: dt.date | None = None,
    last: dt.date | None = None,
) -> Iterable[str]:
    """Harvest the current announcement if it lies in [first, last]; yields one line per outcome."""
    if first and last and first > last:
        raise HarvestError(f"--from {first} is after --to {last}")
    result = harvest(session, feed_source, details_source)
    if result.day is None:
        yield "no announcement in the feed (weekend or holiday)"
        return
    if (first and result.day < first) or (last and result.day > last):
        session.rollback()
        yield f"the feed shows {result.day}, outside the requested days; nothing stored"
        return
    session.commit()
    yield (
        f"{result.day}: {result.announced} announced, {result.replaced} replaced, "
        f"{len(result.from_feed_only)} from the feed only"
    )
