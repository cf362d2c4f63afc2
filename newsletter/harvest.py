"""Harvest: the announcement feed names the papers of a day; the arXiv API gives their details.

Everything from the network is fetched and checked first; only then is one day (or several, when
missed days are caught up) written, in the caller's single transaction, so a failure leaves nothing
half-written.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Protocol, runtime_checkable
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

import arxiv
import requests
from defusedxml import ElementTree
from lxml import etree
from sqlalchemy import and_, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential
from tenacity.wait import wait_base

from newsletter.models import Announcement, AnnounceType, Paper, Run, utcnow
from newsletter.pacing import PacingUnavailable, RequestPacer
from newsletter.runs import mark_harvested

log = logging.getLogger(__name__)

_NS = {
    "arxiv": "http://arxiv.org/schemas/atom",
    "dc": "http://purl.org/dc/elements/1.1/",
}
_ATOM = "{http://www.w3.org/2005/Atom}"
_OPENSEARCH = "{http://a9.com/-/spec/opensearch/1.1/}"
# New-style (2501.00001v2) and old-style (astro-ph/9812133v1, math.GT/0309136) identifiers.
_ARXIV_ID = re.compile(
    r"^(?P<id>\d{4}\.\d{4,5}|[a-z][a-z-]*(?:\.[A-Z]{2})?/\d{7})(?:v(?P<version>\d+))?$"
)
_API_BATCH = 100
# The API serves at most this many results for one query.
_SEARCH_LIMIT = 30_000
_RETRY_STATUSES = {429, 500, 502, 503, 504}
_MAX_RETRY_AFTER = 300.0
EASTERN = ZoneInfo("America/New_York")
# arXiv's daily submission deadline, US Eastern.
_CUTOFF = dt.time(14, 0)
MAX_CATCH_UP_DAYS = 14


class HarvestError(Exception):
    """A feed or API reply that cannot be used; nothing is written for that day."""

    day: dt.date | None = None  # the announcement day that failed, when known


class ApiReplyError(HarvestError):
    """An arXiv API reply we refuse; `transient` ones are worth asking again."""

    def __init__(self, message: str, transient: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.transient = transient
        self.retry_after = retry_after


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
    """A parsed announcement feed: its day (from pubDate) and items (none on a no-announcement day)."""

    day: dt.date | None
    items: list[FeedItem] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def has_announcement(self) -> bool:
        return self.day is not None and bool(self.items)


@dataclass
class DayHarvest:
    """What one announcement day adds: its announcements and the paper records to store."""

    day: dt.date
    announcements: dict[str, AnnounceType] = field(default_factory=dict)
    records: list[PaperRecord] = field(default_factory=list)
    replaced: int = 0
    from_feed_only: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    source: str = "feed"

    def stats(self) -> dict:
        return {
            "announced": len(self.announcements),
            "replaced": self.replaced,
            "from_feed_only": len(self.from_feed_only),
            "skipped_items": len(self.skipped),
            "source": self.source,
        }


# ---------------------------------------------------------------------------------------------
# identifiers, text, announcement calendar
# ---------------------------------------------------------------------------------------------


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


# Control characters no title needs; PostgreSQL refuses NUL in text outright.
_CONTROL_CHARACTERS = re.compile("[\x00-\x08\x0e-\x1f\x7f]")


def clean_text(text: str | None) -> str:
    """Collapse runs of white space (arXiv hard-wraps abstracts), drop control characters; LaTeX is kept as written."""
    return " ".join(_CONTROL_CHARACTERS.sub("", text or "").split())


def _next_weekday(day: dt.date) -> dt.date:
    day += dt.timedelta(days=1)
    while day.weekday() >= 5:
        day += dt.timedelta(days=1)
    return day


def _previous_weekday(day: dt.date) -> dt.date:
    day -= dt.timedelta(days=1)
    while day.weekday() >= 5:
        day -= dt.timedelta(days=1)
    return day


def announcement_day_for(submitted: dt.datetime) -> dt.date:
    """The feed day that announces a paper submitted then (holidays aside).

    A submission before 14:00 US Eastern on a weekday is announced that evening at 20:00 and
    appears in the next weekday's feed; later ones wait for the next weekday's deadline.
    """
    local = submitted.astimezone(EASTERN)
    deadline_day = local.date()
    if deadline_day.weekday() >= 5 or local.time() >= _CUTOFF:
        deadline_day = _next_weekday(deadline_day)
    return _next_weekday(deadline_day)


def submission_window(feed_day: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """[start, end) in UTC of the submissions announced in the feed of `feed_day` (holidays aside)."""
    deadline_day = _previous_weekday(feed_day)
    start_day = _previous_weekday(deadline_day)
    start = dt.datetime.combine(start_day, _CUTOFF, tzinfo=EASTERN)
    end = dt.datetime.combine(deadline_day, _CUTOFF, tzinfo=EASTERN)
    return start.astimezone(dt.UTC), end.astimezone(dt.UTC)


def expected_feed_day(now: dt.datetime) -> dt.date:
    """The feed day of the latest announcement (20:00 US Eastern, Sunday to Thursday) before `now`."""
    local = now.astimezone(EASTERN)
    evening = local.date() if local.time() >= dt.time(20, 0) else local.date() - dt.timedelta(days=1)
    while evening.weekday() in (4, 5):  # no announcement on Friday or Saturday evenings
        evening -= dt.timedelta(days=1)
    return evening + dt.timedelta(days=1)


def feed_days_between(after: dt.date, before: dt.date) -> list[dt.date]:
    """Weekdays strictly between two feed days."""
    days, day = [], _next_weekday(after)
    while day < before:
        days.append(day)
        day = _next_weekday(day)
    return days


# ---------------------------------------------------------------------------------------------
# the announcement feed (pure parsing)
# ---------------------------------------------------------------------------------------------


def _looks_like_html(content: bytes) -> bool:
    head = content[:512].lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html")) or b"<html" in head


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _html_title(content: bytes) -> str:
    match = re.search(rb"<title[^>]*>(.*?)</title>", content[:4096], flags=re.IGNORECASE | re.DOTALL)
    return clean_text(match.group(1).decode("utf-8", "replace"))[:120] if match else "no title"


def parse_announcement_feed(content: bytes) -> AnnouncementFeed:
    """Parse an rss.arxiv.org feed; raises HarvestError for anything that is not one."""
    if not content.strip():
        raise HarvestError("announcement feed is empty (0 bytes)")
    if _looks_like_html(content):
        raise HarvestError(f"announcement feed URL answered with an HTML page ({_html_title(content)!r}), not RSS")
    try:
        root = ElementTree.fromstring(content)
    except ElementTree.ParseError as exc:
        raise HarvestError(f"announcement feed is not well-formed XML: {exc}") from exc
    except Exception as exc:  # defusedxml refuses entity tricks with its own errors
        raise HarvestError(f"announcement feed refused: {exc}") from exc
    channel = root.find("channel")
    if root.tag != "rss" or channel is None:
        raise HarvestError(f"announcement feed has no RSS channel (root element <{_local(root.tag)}>)")
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


def _channel_day(channel, required: bool) -> dt.date | None:  # type: ignore[no-untyped-def]
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


def _parse_feed_item(item) -> tuple[FeedItem | None, str]:  # type: ignore[no-untyped-def]
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


# ---------------------------------------------------------------------------------------------
# the arXiv API (pure reply checks, then the client)
# ---------------------------------------------------------------------------------------------


def check_api_reply(status: int, content_type: str, body: bytes, url: str) -> int:
    """The number of entries in a usable API page; ApiReplyError says why a reply is not usable.

    The `arxiv` package recovers what it can from broken XML and reads an empty first page as
    "no results", so a truncated or flaky page would silently lose papers; hence this check.
    """
    if status in _RETRY_STATUSES:
        raise ApiReplyError(f"arXiv API answered HTTP {status}", transient=True)
    if "html" in content_type.lower() or _looks_like_html(body):
        raise ApiReplyError(
            f"arXiv API answered HTTP {status} with an HTML page ({_html_title(body)!r}) instead of Atom",
            transient=True,
        )
    try:
        root = etree.fromstring(body, parser=etree.XMLParser(resolve_entities=False, no_network=True))
    except etree.XMLSyntaxError as exc:
        raise ApiReplyError(f"arXiv API reply is malformed XML ({len(body)} bytes): {exc}", transient=True) from exc
    if root.tag != f"{_ATOM}feed":
        raise ApiReplyError(f"arXiv API reply is not an Atom feed (root element <{_local(root.tag)}>)", transient=True)
    entries = root.findall(f"{_ATOM}entry")
    for entry in entries:
        if "/api/errors" in (entry.findtext(f"{_ATOM}id") or ""):
            message = clean_text(entry.findtext(f"{_ATOM}summary")) or "unspecified error"
            raise ApiReplyError(f"arXiv API refused the request (HTTP {status}): {message}", transient=False)
    if status != 200:
        raise ApiReplyError(f"arXiv API answered HTTP {status}", transient=False)
    query = parse_qs(urlsplit(url).query)
    start = int(query.get("start", ["0"])[0] or 0)
    asked = int(query.get("max_results", ["10"])[0] or 10)
    total = int((root.findtext(f"{_OPENSEARCH}totalResults") or "0").strip() or 0)
    expected = max(0, min(asked, total - start))
    if len(entries) < expected:
        raise ApiReplyError(
            f"arXiv API page is shorter than announced: {len(entries)} of {expected} entries "
            f"(start {start}, total {total})",
            transient=True,
        )
    return len(entries)


class ArxivApiSession(requests.Session):
    """The HTTP session under the `arxiv` client: paced across processes, with a timeout, and checked."""

    def __init__(self, pacer: RequestPacer | None, timeout: float) -> None:
        super().__init__()
        self.pacer = pacer
        self.timeout = timeout

    def request(self, method, url, *args, **kwargs):  # type: ignore[no-untyped-def, override]
        if self.pacer is not None:
            self.pacer.wait_turn()
        kwargs.setdefault("timeout", self.timeout)
        response = super().request(method, url, *args, **kwargs)
        try:
            check_api_reply(response.status_code, response.headers.get("Content-Type", ""), response.content, url)
        except ApiReplyError as exc:
            exc.retry_after = _retry_after_seconds(response.headers.get("Retry-After"))
            raise
        return response


def _retry_after_seconds(value: str | None) -> float | None:
    """Retry-After in seconds (only the delta-seconds form; capped so a bad header cannot stall a run)."""
    if value is None or not value.strip().isdigit():
        return None
    return min(float(value.strip()), _MAX_RETRY_AFTER)


class BackoffOrRetryAfter(wait_base):
    """Exponential backoff, but never sooner than the server's Retry-After."""

    def __init__(self, base_seconds: float) -> None:
        self.exponential = wait_exponential(multiplier=base_seconds, max=max(60.0, base_seconds))

    def __call__(self, retry_state: RetryCallState) -> float:
        wait = self.exponential(retry_state)
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(exc, ApiReplyError) and exc.retry_after is not None:
            wait = max(wait, exc.retry_after)
        return wait


def _record_or_none(result: arxiv.Result) -> PaperRecord | None:
    try:
        return record_from_result(result)
    except ValueError:
        # The ID is then "not returned": the feed's own fields stand in for it.
        log.warning("arXiv API entry skipped: unexpected identifier %r", result.entry_id)
        return None


def network_reason(exc: requests.RequestException) -> str:
    """A one-line reason for a network failure (requests' own messages nest several layers deep)."""
    if isinstance(exc, requests.Timeout):
        return f"no answer in time ({type(exc).__name__})"
    match = re.search(r"\[Errno -?\d+\] [^'\")\]]+", str(exc))
    return match.group(0).strip() if match else type(exc).__name__


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, ApiReplyError):
        return exc.transient
    return isinstance(
        exc,
        requests.ConnectionError | requests.Timeout | requests.exceptions.ChunkedEncodingError
        | arxiv.UnexpectedEmptyPageError,
    )


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    log.warning("arXiv API attempt %d failed (%s); retrying", state.attempt_number, exc)


class FeedSource(Protocol):
    def fetch_feed(self) -> bytes: ...


class DetailsSource(Protocol):
    def fetch_details(self, arxiv_ids: Sequence[str]) -> list[PaperRecord]: ...


@runtime_checkable
class SubmissionSearch(Protocol):
    """A details source that can also list the papers submitted in a time window (catch-up)."""

    def search_submitted(
        self, categories: Sequence[str], start: dt.datetime, end: dt.datetime
    ) -> list[PaperRecord]: ...


class HttpFeedSource:
    """The live announcement feed over HTTP, asked again with backoff on network errors and 5xx."""

    def __init__(self, url: str, timeout: float = 30.0, retries: int = 2, backoff_seconds: float = 2.0) -> None:
        self.url = url
        self.timeout = timeout
        self.retries = retries
        self.backoff_seconds = backoff_seconds

    def _get(self) -> requests.Response:
        response = requests.get(self.url, timeout=self.timeout)
        if response.status_code in _RETRY_STATUSES:
            raise ApiReplyError(f"announcement feed answered HTTP {response.status_code} at {self.url}", True)
        return response

    def fetch_feed(self) -> bytes:
        retrying = Retrying(
            retry=retry_if_exception(_is_transient),
            stop=stop_after_attempt(self.retries + 1),
            wait=wait_exponential(multiplier=self.backoff_seconds, max=max(60.0, self.backoff_seconds)),
            before_sleep=_log_retry,
            reraise=True,
        )
        try:
            response = retrying(self._get)
        except ApiReplyError:
            raise
        except requests.RequestException as exc:
            raise HarvestError(f"announcement feed unreachable at {self.url}: {network_reason(exc)}") from exc
        if response.status_code != 200:
            raise HarvestError(f"announcement feed answered HTTP {response.status_code} at {self.url}")
        return response.content


class ArxivApiSource:
    """Paper details from the arXiv API through the `arxiv` package, 100 IDs a request.

    One request at a time per `pacer` slot (shared by every process), an HTTP timeout, and
    exponential backoff on 429/5xx, network errors and unusable pages.
    """

    def __init__(
        self,
        api_url: str,
        delay_seconds: float = 3.0,
        timeout: float = 30.0,
        retries: int = 4,
        pacer: RequestPacer | None = None,
        backoff_seconds: float = 2.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        # The client's own delay and retries hold only inside one object: the pacer and tenacity replace them.
        self.client = arxiv.Client(page_size=_API_BATCH, delay_seconds=0 if pacer else delay_seconds, num_retries=0)
        self.client.query_url_format = f"{api_url}?{{}}"
        self.client._session = ArxivApiSession(pacer, timeout)
        self.retries = retries
        self.backoff_seconds = backoff_seconds
        self.sleep = sleep

    def _retrying(self) -> Retrying:
        return Retrying(
            retry=retry_if_exception(_is_transient),
            stop=stop_after_attempt(self.retries + 1),
            wait=BackoffOrRetryAfter(self.backoff_seconds),
            sleep=self.sleep,
            before_sleep=_log_retry,
            reraise=True,
        )

    def _collect(self, search: arxiv.Search, what: str) -> list[PaperRecord]:
        records: list[PaperRecord] = []
        seen = 0
        try:
            for attempt in self._retrying():
                with attempt:
                    # On a retry, continue after the results already seen.
                    for result in self.client.results(search, offset=seen):
                        seen += 1
                        record = _record_or_none(result)
                        if record is not None:
                            records.append(record)
        except (ApiReplyError, PacingUnavailable) as exc:
            raise HarvestError(f"arXiv API failed for {what}: {exc}") from exc
        except requests.RequestException as exc:
            raise HarvestError(f"arXiv API unreachable for {what}: {network_reason(exc)}") from exc
        except arxiv.ArxivError as exc:
            raise HarvestError(f"arXiv API failed for {what}: {exc}") from exc
        return records

    def fetch_details(self, arxiv_ids: Sequence[str]) -> list[PaperRecord]:
        records: list[PaperRecord] = []
        for start in range(0, len(arxiv_ids), _API_BATCH):
            batch = list(arxiv_ids[start:start + _API_BATCH])
            search = arxiv.Search(id_list=batch, max_results=len(batch))
            records.extend(self._collect(search, f"{len(batch)} IDs ({batch[0]}...)"))
        return records

    def search_submitted(
        self, categories: Sequence[str], start: dt.datetime, end: dt.datetime
    ) -> list[PaperRecord]:
        """Papers in the categories first submitted in [start, end)."""
        last_minute = end.astimezone(dt.UTC) - dt.timedelta(minutes=1)
        window = f"submittedDate:[{start.astimezone(dt.UTC):%Y%m%d%H%M} TO {last_minute:%Y%m%d%H%M}]"
        query = "(" + " OR ".join(f"cat:{c}" for c in categories) + f") AND {window}"
        search = arxiv.Search(
            query=query,
            max_results=_SEARCH_LIMIT,
            sort_by=arxiv.SortCriterion.SubmittedDate,
            sort_order=arxiv.SortOrder.Ascending,
        )
        return self._collect(search, f"submissions {start:%Y-%m-%d %H:%M}-{end:%Y-%m-%d %H:%M} UTC")


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


# ---------------------------------------------------------------------------------------------
# one day: network first (collect_*), then writing (store_day)
# ---------------------------------------------------------------------------------------------


def read_feed(feed_source: FeedSource) -> AnnouncementFeed:
    """Fetch and parse the announcement feed."""
    return parse_announcement_feed(feed_source.fetch_feed())


def _stored_versions(session: Session, ids: Iterable[str]) -> dict[str, tuple[int, str]]:
    wanted = list(ids)
    found: dict[str, tuple[int, str]] = {}
    for start in range(0, len(wanted), 1000):
        rows = session.execute(
            select(Paper.arxiv_id, Paper.version, Paper.details_source).where(
                Paper.arxiv_id.in_(wanted[start:start + 1000])  # type: ignore[attr-defined]
            )
        )
        found.update({arxiv_id: (version, source) for arxiv_id, version, source in rows})
    return found


def collect_feed_day(session: Session, feed: AnnouncementFeed, details_source: DetailsSource) -> DayHarvest:
    """The day's announcements and fresh details for what is not stored yet (reads the DB, writes nothing)."""
    assert feed.day is not None
    harvest = DayHarvest(day=feed.day, skipped=list(feed.skipped))
    latest: dict[str, FeedItem] = {}
    for item in feed.items:
        if item.announce_type is not AnnounceType.REPLACE:
            harvest.announcements.setdefault(item.record.arxiv_id, item.announce_type)
        latest.setdefault(item.record.arxiv_id, item)
    stored = _stored_versions(session, latest)
    wanted: list[str] = []
    for arxiv_id, item in latest.items():
        version, source = stored.get(arxiv_id, (0, ""))
        if item.announce_type is AnnounceType.REPLACE and arxiv_id not in harvest.announcements:
            if not version:
                continue  # a replacement of a paper we never stored: nobody here has seen it
            harvest.replaced += 1
        if version < item.record.version or source != "api":
            wanted.append(arxiv_id)
    details = {record.arxiv_id: record for record in details_source.fetch_details(wanted)} if wanted else {}
    for arxiv_id in wanted:
        record = details.get(arxiv_id)
        if record is None:
            harvest.from_feed_only.append(arxiv_id)
            record = latest[arxiv_id].record
        harvest.records.append(record)
    if harvest.from_feed_only:
        log.warning("arXiv API did not return %s; storing the feed's own fields", harvest.from_feed_only)
    return harvest


def collect_missed_days(
    session: Session,
    search: SubmissionSearch,
    categories: Sequence[str],
    days: Sequence[dt.date],
    exclude: Iterable[str] = (),
) -> list[DayHarvest]:
    """Missed feed days rebuilt from the API's submission windows, minus papers already announced."""
    if not days:
        return []
    start, _ = submission_window(days[0])
    _, end = submission_window(days[-1])
    records = search.search_submitted(categories, start, end)
    skip = set(exclude)
    ids = [r.arxiv_id for r in records if r.arxiv_id not in skip]
    already = set()
    for first in range(0, len(ids), 1000):
        already.update(
            session.scalars(
                select(Announcement.arxiv_id).where(
                    Announcement.arxiv_id.in_(ids[first:first + 1000])  # type: ignore[attr-defined]
                )
            )
        )
    by_day = {day: DayHarvest(day=day, source="api-window") for day in days}
    ours = set(categories)
    for record in records:
        if record.arxiv_id in skip or record.arxiv_id in already or record.published is None:
            continue
        harvest = by_day.get(announcement_day_for(record.published))
        if harvest is None or record.arxiv_id in harvest.announcements:
            continue
        new = record.primary_category in ours
        harvest.announcements[record.arxiv_id] = AnnounceType.NEW if new else AnnounceType.CROSS
        harvest.records.append(record)
    return [by_day[day] for day in days]


def _insert_for(session: Session):  # type: ignore[no-untyped-def]
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


def _paper_row(record: PaperRecord, now: dt.datetime) -> dict:
    return {
        "arxiv_id": record.arxiv_id,
        "version": record.version,
        "title": record.title,
        "abstract": record.abstract,
        "authors": list(record.authors),
        "categories": list(record.categories),
        "primary_category": record.primary_category,
        "comment": record.comment,
        "journal_ref": record.journal_ref,
        "doi": record.doi,
        "published": record.published,
        "updated": record.updated,
        "details_source": record.details_source,
        "harvested_at": now,
    }


def _rank(record: PaperRecord) -> tuple[int, bool]:
    return record.version, record.details_source == "api"


def upsert_papers(session: Session, records: Iterable[PaperRecord]) -> None:
    """Insert or update papers by versionless ID in bulk; an older version or feed-only data never wins."""
    best: dict[str, PaperRecord] = {}
    for record in records:
        held = best.get(record.arxiv_id)
        if held is None or _rank(record) > _rank(held):
            best[record.arxiv_id] = record
    if not best:
        return
    table = Paper.__table__
    statement = _insert_for(session)(table)
    new = statement.excluded
    wins = or_(
        table.c.version < new.version,
        and_(table.c.version == new.version, or_(table.c.details_source != "api", new.details_source == "api")),
    )
    columns = [c for c in _paper_row(next(iter(best.values())), utcnow()) if c != "arxiv_id"]
    statement = statement.on_conflict_do_update(
        index_elements=[table.c.arxiv_id], set_={c: new[c] for c in columns}, where=wins
    )
    now = utcnow()
    rows = [_paper_row(record, now) for record in best.values()]
    for start in range(0, len(rows), 1000):
        session.execute(statement, rows[start:start + 1000])


def upsert_paper(session: Session, record: PaperRecord) -> Paper:
    """Insert or update one paper (see upsert_papers)."""
    upsert_papers(session, [record])
    paper = session.get(Paper, record.arxiv_id, populate_existing=True)
    assert paper is not None
    return paper


def store_day(session: Session, harvest: DayHarvest) -> None:
    """Write a collected day: papers, announcements and the day's run row marked harvested (caller commits)."""
    upsert_papers(session, harvest.records)
    if harvest.announcements:
        rows = [
            {"day": harvest.day, "arxiv_id": arxiv_id, "announce_type": str(kind)}
            for arxiv_id, kind in harvest.announcements.items()
        ]
        statement = _insert_for(session)(Announcement.__table__).on_conflict_do_nothing()
        session.execute(statement, rows)
    details = {key: value for key, value in harvest.stats().items() if key != "announced"}
    mark_harvested(session, harvest.day, len(harvest.announcements), details)


def is_harvested(session: Session, day: dt.date) -> bool:
    """Whether the day's papers are stored already."""
    return bool(session.scalar(select(Run.harvested_at).where(Run.day == day)))


def last_harvested_before(session: Session, day: dt.date) -> dt.date | None:
    """The latest harvested day before `day`."""
    return session.scalar(
        select(Run.day).where(Run.harvested_at.is_not(None), Run.day < day).order_by(Run.day.desc()).limit(1)  # type: ignore[union-attr]
    )


def harvest_range(
    session: Session,
    feed_source: FeedSource,
    details_source: DetailsSource,
    first: dt.date | None = None,
    last: dt.date | None = None,
    categories: Sequence[str] = (),
) -> Iterator[str]:
    """Harvest the feed days in [first, last]: the current one from the feed, earlier ones from the API.

    Days stored already are left alone; everything is committed at once at the end.
    """
    if first and last and first > last:
        raise HarvestError(f"--from {first} is after --to {last}")
    feed = read_feed(feed_source)
    current = feed.day if feed.has_announcement else None
    last = last or current or first
    first = first or last
    if first is None or last is None:
        yield "no announcement in the feed (weekend or holiday); nothing to harvest"
        return
    days = [first] if first.weekday() < 5 else []
    days += feed_days_between(first, last + dt.timedelta(days=1))
    if not days:
        yield f"no feed day between {first} and {last}; nothing to harvest"
        return
    collected: list[DayHarvest] = []
    past = [d for d in days if d != current and not is_harvested(session, d) and (current is None or d < current)]
    for day in days:
        if is_harvested(session, day):
            yield f"{day}: already harvested; nothing fetched"
        elif current is not None and day > current:
            yield f"{day}: not announced yet (the feed shows {current})"
    if past:
        if not isinstance(details_source, SubmissionSearch) or not categories:
            raise HarvestError("past days need the arXiv API and NEWSLETTER_CATEGORIES to search submission windows")
        exclude = [i.record.arxiv_id for i in feed.items] if current in days else []
        collected += collect_missed_days(session, details_source, categories, past, exclude)
    if current in days and not is_harvested(session, current):
        collected.append(collect_feed_day(session, feed, details_source))
    for day_harvest in collected:
        store_day(session, day_harvest)
    session.commit()
    for day_harvest in collected:
        stats = day_harvest.stats()
        yield (
            f"{day_harvest.day}: {stats['announced']} announced, {stats['replaced']} replaced, "
            f"{stats['from_feed_only']} from the feed only (from {day_harvest.source})"
        )
