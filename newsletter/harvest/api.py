"""The arXiv API through the `arxiv` package: pure reply checks, then the paced, retried client."""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import parse_qs, urlsplit

import arxiv
import requests
from lxml import etree
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential
from tenacity.wait import wait_base

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
from newsletter.pacing import PacingUnavailable, RequestPacer

log = logging.getLogger(__name__)

_ATOM = "{http://www.w3.org/2005/Atom}"
_OPENSEARCH = "{http://a9.com/-/spec/opensearch/1.1/}"
API_BATCH = 100
# The API serves at most this many results for one query.
_SEARCH_LIMIT = 30_000
RETRY_STATUSES = {429, 500, 502, 503, 504}
_MAX_RETRY_AFTER = 300.0


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


def check_api_reply(status: int, content_type: str, body: bytes, url: str) -> int:
    """The number of entries in a usable API page; ApiReplyError says why a reply is not usable.

    The `arxiv` package recovers what it can from broken XML and reads an empty first page as
    "no results", so a truncated or flaky page would silently lose papers; hence this check.
    """
    if status in RETRY_STATUSES:
        raise ApiReplyError(f"arXiv API answered HTTP {status}", transient=True)
    if "html" in content_type.lower() or looks_like_html(body):
        raise ApiReplyError(
            f"arXiv API answered HTTP {status} with an HTML page ({html_title(body)!r}) instead of Atom",
            transient=True,
        )
    try:
        root = etree.fromstring(body, parser=etree.XMLParser(resolve_entities=False, no_network=True))
    except etree.XMLSyntaxError as exc:
        raise ApiReplyError(f"arXiv API reply is malformed XML ({len(body)} bytes): {exc}", transient=True) from exc
    if root.tag != f"{_ATOM}feed":
        raise ApiReplyError(
            f"arXiv API reply is not an Atom feed (root element <{local_name(root.tag)}>)", transient=True
        )
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

    def request(self, method: str, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        if self.pacer is not None:
            self.pacer.wait_turn()
        kwargs.setdefault("timeout", self.timeout)
        response = super().request(method, url, *args, **kwargs)
        text_url = url.decode() if isinstance(url, bytes) else url  # requests allows bytes; `arxiv` passes str
        try:
            check_api_reply(
                response.status_code, response.headers.get("Content-Type", ""), response.content, text_url
            )
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


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, ApiReplyError):
        return exc.transient
    return isinstance(
        exc,
        requests.ConnectionError | requests.Timeout | requests.exceptions.ChunkedEncodingError
        | arxiv.UnexpectedEmptyPageError,
    )


def retry_logger(what: str) -> Callable[[RetryCallState], None]:
    """A tenacity `before_sleep` that logs a failed attempt of `what` ("arXiv API", "announcement feed")."""

    def log_retry(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning("%s attempt %d failed (%s); retrying", what, state.attempt_number, exc)

    return log_retry


class DetailsSource(Protocol):
    def fetch_details(self, arxiv_ids: Sequence[str]) -> list[PaperRecord]: ...


@runtime_checkable
class SubmissionSearch(Protocol):
    """A details source that can also list the papers submitted in a time window (catch-up)."""

    def search_submitted(
        self, categories: Sequence[str], start: dt.datetime, end: dt.datetime
    ) -> list[PaperRecord]: ...


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
        self.client = arxiv.Client(page_size=API_BATCH, delay_seconds=0 if pacer else delay_seconds, num_retries=0)
        self.client.query_url_format = f"{api_url}?{{}}"
        self.client._session = ArxivApiSession(pacer, timeout)
        self.retries = retries
        self.backoff_seconds = backoff_seconds
        self.sleep = sleep

    def _retrying(self) -> Retrying:
        return Retrying(
            retry=retry_if_exception(is_transient),
            stop=stop_after_attempt(self.retries + 1),
            wait=BackoffOrRetryAfter(self.backoff_seconds),
            sleep=self.sleep,
            before_sleep=retry_logger("arXiv API"),
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
        for start in range(0, len(arxiv_ids), API_BATCH):
            batch = list(arxiv_ids[start:start + API_BATCH])
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
