"""Local stand-in for the arXiv export API (Atom) and rss.arxiv.org announcement feeds."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from email.utils import format_datetime, parsedate_to_datetime
from pathlib import Path
from typing import NamedTuple
from urllib.parse import unquote
from xml.etree import ElementTree as ET
from xml.sax.saxutils import escape

from ._http import FakeHTTPServer, IncomingRequest, Response, _Fault

ATOM_NS = "http://www.w3.org/2005/Atom"
ARXIV_NS = "http://arxiv.org/schemas/atom"
OPENSEARCH_NS = "http://a9.com/-/spec/opensearch/1.1/"
ATOM_CONTENT_TYPE = "application/atom+xml; charset=UTF-8"
RSS_CONTENT_TYPE = "application/rss+xml; charset=utf-8"
DEFAULT_LICENSE = "http://creativecommons.org/licenses/by/4.0/"
DEFAULT_PUBLISHED = datetime(2025, 1, 6, 18, 0, 0, tzinfo=UTC)

_NEW_ID = re.compile(r"^\d{4}\.\d{4,5}$")
_OLD_ID = re.compile(r"^[a-z]+(?:-[a-z]+)*(?:\.[A-Z]{2})?/\d{7}$")
_VERSION = re.compile(r"^(?P<base>.+?)(?:v(?P<version>\d+))?$")
_DATE_FIELDS = {"submitteddate": "published", "lastupdateddate": "updated"}
_ARXIV_DECL = "<?xml version='1.0' encoding='UTF-8'?>\n"


# ---------------------------------------------------------------------------
# papers
# ---------------------------------------------------------------------------


@dataclass
class Paper:
    """One arXiv article (latest version) as the fake API serves it."""

    arxiv_id: str
    title: str
    abstract: str
    authors: list[str]
    categories: list[str]
    published: datetime
    updated: datetime
    version: int = 1
    comment: str | None = None
    journal_ref: str | None = None
    doi: str | None = None
    primary_category: str = ""
    affiliations: dict[str, list[str]] = field(default_factory=dict)
    license: str = DEFAULT_LICENSE

    def __post_init__(self) -> None:
        """Default the primary category to the first category."""
        if not self.primary_category and self.categories:
            self.primary_category = self.categories[0]

    @property
    def versioned_id(self) -> str:
        """The id with its version suffix, e.g. 2501.00001v2."""
        return f"{self.arxiv_id}v{self.version}"


def split_version(arxiv_id: str) -> tuple[str, int | None]:
    """Split '2501.00001v2' into ('2501.00001', 2); no suffix gives None."""
    match = _VERSION.match(arxiv_id.strip())
    if match is None:
        return arxiv_id, None
    version = match.group("version")
    return match.group("base"), int(version) if version else None


def is_valid_arxiv_id(arxiv_id: str) -> bool:
    """Tell whether arXiv would accept the id's format (new or old style, optional vN)."""
    base, _ = split_version(arxiv_id)
    return bool(_NEW_ID.match(base) or _OLD_ID.match(base))


def make_paper(
    arxiv_id: str,
    title: str | None = None,
    abstract: str | None = None,
    authors: Sequence[str] = ("Ada Lovelace", "Alan Turing"),
    categories: Sequence[str] = ("cs.AI",),
    published: datetime = DEFAULT_PUBLISHED,
    updated: datetime | None = None,
    version: int | None = None,
    comment: str | None = None,
    journal_ref: str | None = None,
    doi: str | None = None,
    primary_category: str | None = None,
    affiliations: dict[str, list[str]] | None = None,
    license: str = DEFAULT_LICENSE,
) -> Paper:
    """Build a Paper with deterministic defaults; a 'vN' suffix on the id sets the version."""
    base, id_version = split_version(arxiv_id)
    if published.tzinfo is None:
        published = published.replace(tzinfo=UTC)
    if updated is not None and updated.tzinfo is None:
        updated = updated.replace(tzinfo=UTC)
    return Paper(
        arxiv_id=base,
        title=title if title is not None else f"A study of {base}",
        abstract=abstract if abstract is not None else f"We study the problem posed by {base}.",
        authors=list(authors),
        categories=list(categories),
        published=published,
        updated=updated or published,
        version=version or id_version or 1,
        comment=comment,
        journal_ref=journal_ref,
        doi=doi,
        primary_category=primary_category or "",
        affiliations=dict(affiliations or {}),
        license=license,
    )


def _parse_atom_time(text: str | None) -> datetime:
    """Parse an Atom timestamp ('2022-02-24T15:05:19Z' or with offset) as aware UTC."""
    if not text:
        return DEFAULT_PUBLISHED
    parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def parse_atom_entries(data: bytes) -> list[Paper]:
    """Parse the entries of an arXiv API Atom document into Papers (error entries skipped)."""
    ns = {"a": ATOM_NS, "arxiv": ARXIV_NS}
    root = ET.fromstring(data)
    papers: list[Paper] = []
    for entry in root.iterfind("a:entry", ns):
        raw_id = entry.findtext("a:id", default="", namespaces=ns).strip()
        if "/api/errors" in raw_id or "/abs/" not in raw_id:
            continue
        base, version = split_version(raw_id.split("/abs/", 1)[1])
        authors: list[str] = []
        affiliations: dict[str, list[str]] = {}
        for author in entry.iterfind("a:author", ns):
            name = author.findtext("a:name", default="", namespaces=ns)
            authors.append(name)
            affs = [a.text for a in author.iterfind("arxiv:affiliation", ns) if a.text]
            if affs:
                affiliations[name] = affs
        categories = [c.get("term", "") for c in entry.iterfind("a:category", ns)]
        primary = entry.find("arxiv:primary_category", ns)
        papers.append(
            Paper(
                arxiv_id=base,
                title=entry.findtext("a:title", default="", namespaces=ns),
                abstract=entry.findtext("a:summary", default="", namespaces=ns),
                authors=authors,
                categories=[c for c in categories if c],
                published=_parse_atom_time(entry.findtext("a:published", namespaces=ns)),
                updated=_parse_atom_time(entry.findtext("a:updated", namespaces=ns)),
                version=version or 1,
                comment=entry.findtext("arxiv:comment", namespaces=ns),
                journal_ref=entry.findtext("arxiv:journal_ref", namespaces=ns),
                doi=entry.findtext("arxiv:doi", namespaces=ns),
                primary_category=primary.get("term", "") if primary is not None else "",
                affiliations=affiliations,
            )
        )
    return papers


def load_entries_from_atom(path: str | Path) -> list[Paper]:
    """Load the entries of a saved arXiv API response file (e.g. reference q_testing_*.xml)."""
    return parse_atom_entries(Path(path).read_bytes())


# ---------------------------------------------------------------------------
# Atom rendering (export.arxiv.org/api/query)
# ---------------------------------------------------------------------------


def _attr(value: str) -> str:
    """Escape a value for a double-quoted XML attribute."""
    return escape(value, {'"': "&quot;"})


def _atom_time(value: datetime) -> str:
    """Format as arXiv does: 2022-02-24T15:05:19Z."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def render_entry(paper: Paper, version: int | None = None) -> str:
    """Render one <entry> exactly in the element order of the real API."""
    vid = f"{paper.arxiv_id}v{version or paper.version}"
    lines = [
        "  <entry>",
        f"    <id>http://arxiv.org/abs/{vid}</id>",
        f"    <title>{escape(paper.title)}</title>",
        f"    <updated>{_atom_time(paper.updated)}</updated>",
        f'    <link href="https://arxiv.org/abs/{vid}" rel="alternate" type="text/html"/>',
        f'    <link href="https://arxiv.org/pdf/{vid}" rel="related" type="application/pdf"'
        ' title="pdf"/>',
        f"    <summary>{escape(paper.abstract)}</summary>",
    ]
    lines += [
        f'    <category term="{_attr(c)}" scheme="http://arxiv.org/schemas/atom"/>'
        for c in paper.categories
    ]
    lines.append(f"    <published>{_atom_time(paper.published)}</published>")
    if paper.comment is not None:
        lines.append(f"    <arxiv:comment>{escape(paper.comment)}</arxiv:comment>")
    lines.append(f'    <arxiv:primary_category term="{_attr(paper.primary_category)}"/>')
    if paper.journal_ref is not None:
        lines.append(f"    <arxiv:journal_ref>{escape(paper.journal_ref)}</arxiv:journal_ref>")
    for name in paper.authors:
        lines.append("    <author>")
        lines.append(f"      <name>{escape(name)}</name>")
        for aff in paper.affiliations.get(name, []):
            lines.append(f"      <arxiv:affiliation>{escape(aff)}</arxiv:affiliation>")
        lines.append("    </author>")
    if paper.doi is not None:
        lines.append(f"    <arxiv:doi>{escape(paper.doi)}</arxiv:doi>")
        lines.append(
            f'    <link rel="related" href="https://doi.org/{_attr(paper.doi)}" title="doi"/>'
        )
    lines.append("  </entry>")
    return "\n".join(lines) + "\n"


def _feed_open(feed_id: str, title: str, updated: str) -> str:
    """Opening of an API feed up to (excluding) the opensearch elements."""
    return (
        _ARXIV_DECL
        + f'<feed xmlns:opensearch="{OPENSEARCH_NS}" xmlns:arxiv="{ARXIV_NS}" xmlns="{ATOM_NS}">\n'
        f"  <id>{escape(feed_id)}</id>\n"
        f"  <title>{escape(title)}</title>\n"
        f"  <updated>{updated}</updated>\n"
    )


def render_feed(
    entries: Sequence[tuple[Paper, int | None]],
    *,
    search_query: str = "",
    id_list: str = "",
    start: int = 0,
    max_results: int = 10,
    total_results: int | None = None,
    now: datetime | None = None,
) -> bytes:
    """Render a full API results page (opensearch header + entries)."""
    query = f"search_query={search_query}&id_list={id_list}&start={start}&max_results={max_results}"
    digest = base64.b64encode(hashlib.sha1(query.encode()).digest()).decode().rstrip("=")
    link = (
        f"https://arxiv.org/api/query?search_query={search_query}&start={start}"
        f"&max_results={max_results}&id_list={id_list}"
    )
    total = len(entries) if total_results is None else total_results
    text = _feed_open(
        f"https://arxiv.org/api/{digest}", f"arXiv Query: {query}", _atom_time(now or _now())
    )
    text += (
        f'  <link href="{_attr(link)}" type="application/atom+xml"/>\n'
        f"  <opensearch:itemsPerPage>{max_results}</opensearch:itemsPerPage>\n"
        f"  <opensearch:totalResults>{total}</opensearch:totalResults>\n"
        f"  <opensearch:startIndex>{start}</opensearch:startIndex>\n"
    )
    text += "".join(render_entry(paper, version) for paper, version in entries)
    text += "</feed>\n"
    return text.encode("utf-8")


def render_error_feed(message: str, anchor: str, now: datetime | None = None) -> bytes:
    """Render arXiv's error feed (served with HTTP 400), as in reference id_abc_*.xml."""
    stamp = _atom_time(now or _now())
    href = f"https://arxiv.org/api/errors#{anchor}"
    text = _feed_open("https://arxiv.org/", "arXiv Search Results", stamp)
    text += (
        "  <opensearch:itemsPerPage>1</opensearch:itemsPerPage>\n"
        "  <opensearch:totalResults>1</opensearch:totalResults>\n"
        "  <opensearch:startIndex>0</opensearch:startIndex>\n"
        "  <entry>\n"
        f"    <id>{escape(href)}</id>\n"
        "    <title>Error</title>\n"
        f"    <updated>{stamp}</updated>\n"
        f'    <link href="{_attr(href)}" rel="alternate" type="text/html"/>\n'
        f"    <summary>{escape(message)}</summary>\n"
        "    <author>\n"
        "      <name>arXiv api core</name>\n"
        "    </author>\n"
        "  </entry>\n"
        "</feed>\n"
    )
    return text.encode("utf-8")


def _now() -> datetime:
    """Current UTC time (seconds precision)."""
    return datetime.now(UTC).replace(microsecond=0)


# ---------------------------------------------------------------------------
# search_query evaluation
# ---------------------------------------------------------------------------


class QueryError(ValueError):
    """A search_query the fake cannot parse (answered with an HTTP 400 error feed)."""


_TOKEN = re.compile(
    r"\s*(?:(?P<lp>\()|(?P<rp>\))|(?P<op>ANDNOT|AND|OR)(?=[\s(]|$)"
    r'|(?P<field>\w+):(?P<value>\[[^\]]*\]|"[^"]*"|[^\s()]+)|(?P<word>"[^"]*"|[^\s()]+))'
)

Predicate = Callable[[Paper], bool]


def _parse_stamp(text: str, upper: bool) -> datetime:
    """Parse YYYYMMDD[HHMM[SS]] in GMT; an upper bound covers its whole last unit."""
    digits = text.strip()
    formats = {
        8: ("%Y%m%d", timedelta(days=1)),
        12: ("%Y%m%d%H%M", timedelta(minutes=1)),
        14: ("%Y%m%d%H%M%S", timedelta(seconds=1)),
    }
    if len(digits) not in formats or not digits.isdigit():
        raise QueryError(f"bad date {text!r}")
    fmt, unit = formats[len(digits)]
    value = datetime.strptime(digits, fmt).replace(tzinfo=UTC)
    return value + unit - timedelta(microseconds=1) if upper else value


def _term(field_name: str, raw: str) -> Predicate:
    """Build the predicate of one field:value term."""
    key = field_name.lower()
    if key in _DATE_FIELDS:
        match = re.fullmatch(r"\[\s*(\d+)\s+TO\s+(\d+)\s*\]", raw, flags=re.IGNORECASE)
        if match is None:
            raise QueryError(f"bad date range {raw!r}")
        lo, hi = _parse_stamp(match.group(1), False), _parse_stamp(match.group(2), True)
        attr = _DATE_FIELDS[key]
        return lambda p: lo <= getattr(p, attr).astimezone(UTC) <= hi
    value = raw[1:-1] if raw.startswith('"') and raw.endswith('"') else raw
    needle = value.replace("_", " ").lower()
    if key == "cat":
        if value.endswith("*"):
            prefix = value[:-1]
            return lambda p: any(c.startswith(prefix) for c in p.categories)
        return lambda p: value in p.categories
    if key == "id":
        base = split_version(value)[0]
        return lambda p: p.arxiv_id == base
    texts: dict[str, Callable[[Paper], str]] = {
        "ti": lambda p: p.title,
        "abs": lambda p: p.abstract,
        "au": lambda p: " | ".join(p.authors),
        "co": lambda p: p.comment or "",
        "jr": lambda p: p.journal_ref or "",
        "rn": lambda p: "",
    }
    if key == "all":
        return lambda p: any(needle in get(p).lower() for get in texts.values())
    if key not in texts:
        raise QueryError(f"unknown field {field_name!r}")
    getter = texts[key]
    return lambda p: needle in getter(p).lower()


class _QueryParser:
    """Recursive-descent parser for arXiv's boolean search_query syntax."""

    def __init__(self, query: str) -> None:
        """Tokenize the query."""
        self.tokens: list[tuple[str, str, str]] = []
        pos = 0
        text = query.strip()
        while pos < len(text):
            match = _TOKEN.match(text, pos)
            if match is None or match.end() == pos:
                raise QueryError(f"cannot parse search_query at {text[pos:]!r}")
            pos = match.end()
            if match.group("lp"):
                self.tokens.append(("(", "", ""))
            elif match.group("rp"):
                self.tokens.append((")", "", ""))
            elif match.group("op"):
                self.tokens.append(("op", match.group("op"), ""))
            elif match.group("field"):
                self.tokens.append(("term", match.group("field"), match.group("value")))
            elif match.group("word"):
                self.tokens.append(("term", "all", match.group("word")))
        self.pos = 0

    def parse(self) -> Predicate:
        """Parse the whole query into one predicate."""
        if not self.tokens:
            return lambda p: True
        predicate = self._or()
        if self.pos != len(self.tokens):
            raise QueryError("unexpected trailing tokens in search_query")
        return predicate

    def _peek(self) -> tuple[str, str, str] | None:
        """Next token or None."""
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def _or(self) -> Predicate:
        """OR has the lowest precedence."""
        left = self._and()
        while (tok := self._peek()) is not None and tok[:2] == ("op", "OR"):
            self.pos += 1
            right = self._and()
            left = (lambda a, b: lambda p: a(p) or b(p))(left, right)
        return left

    def _and(self) -> Predicate:
        """AND / ANDNOT bind tighter than OR."""
        left = self._atom()
        while (tok := self._peek()) is not None and tok[0] == "op" and tok[1] != "OR":
            self.pos += 1
            right = self._atom()
            if tok[1] == "AND":
                left = (lambda a, b: lambda p: a(p) and b(p))(left, right)
            else:
                left = (lambda a, b: lambda p: a(p) and not b(p))(left, right)
        return left

    def _atom(self) -> Predicate:
        """A parenthesised group or a single term."""
        tok = self._peek()
        if tok is None:
            raise QueryError("search_query ends unexpectedly")
        self.pos += 1
        if tok[0] == "(":
            inner = self._or()
            if self._peek() != (")", "", ""):
                raise QueryError("unbalanced parentheses in search_query")
            self.pos += 1
            return inner
        if tok[0] == "term":
            return _term(tok[1], tok[2])
        raise QueryError(f"unexpected token {tok[1] or tok[0]!r}")


def compile_query(search_query: str) -> Predicate:
    """Compile an arXiv search_query (ti/au/abs/co/jr/cat/id/all, date ranges, AND/OR/ANDNOT)."""
    return _QueryParser(search_query).parse()


# ---------------------------------------------------------------------------
# announcement RSS feeds (rss.arxiv.org/rss/<cats>)
# ---------------------------------------------------------------------------


def _nth_sunday(year: int, month: int, n: int) -> date:
    """The n-th Sunday of a month."""
    first = date(year, month, 1)
    return first + timedelta(days=(6 - first.weekday()) % 7 + 7 * (n - 1))


def eastern_midnight(day: date) -> datetime:
    """00:00 US Eastern time (EDT -0400 or EST -0500) on `day`, as an aware datetime."""
    dst = _nth_sunday(day.year, 3, 2) < day <= _nth_sunday(day.year, 11, 1)
    offset = timezone(timedelta(hours=-4 if dst else -5))
    return datetime(day.year, day.month, day.day, tzinfo=offset)


def _rfc822(value: datetime) -> str:
    """Format like 'Thu, 24 Sep 2026 00:00:00 -0400' (English names, no locale)."""
    days = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
    months = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
    offset = value.utcoffset() or timedelta(0)
    minutes = int(offset.total_seconds() // 60)
    sign = "-" if minutes < 0 else "+"
    hh, mm = divmod(abs(minutes), 60)
    return (
        f"{days[value.weekday()]}, {value.day:02d} {months[value.month - 1]} {value.year} "
        f"{value:%H:%M:%S} {sign}{hh:02d}{mm:02d}"
    )


def _channel_head(day: date, categories: Sequence[str]) -> str:
    """RSS prologue and channel metadata shared by full and empty feeds."""
    names = ", ".join(categories)
    joined = "+".join(categories)
    midnight = eastern_midnight(day)
    return (
        _ARXIV_DECL + '<rss xmlns:arxiv="http://arxiv.org/schemas/atom"'
        ' xmlns:dc="http://purl.org/dc/elements/1.1/"'
        ' xmlns:atom="http://www.w3.org/2005/Atom"'
        ' xmlns:content="http://purl.org/rss/1.0/modules/content/" version="2.0">\n'
        "  <channel>\n"
        f"    <title>{escape(names)} updates on arXiv.org</title>\n"
        f"    <link>http://rss.arxiv.org/rss/{escape(joined)}</link>\n"
        f"    <description>{escape(names)} updates on the arXiv.org e-print archive."
        "</description>\n"
        f'    <atom:link href="http://rss.arxiv.org/rss/{_attr(joined)}" rel="self"'
        ' type="application/rss+xml"/>\n'
        "    <docs>http://www.rssboard.org/rss-specification</docs>\n"
        "    <language>en-us</language>\n"
        f"    <lastBuildDate>{_rfc822(midnight.astimezone(UTC))}</lastBuildDate>\n"
        "    <managingEditor>rss-help@arxiv.org</managingEditor>\n"
        f"    <pubDate>{_rfc822(midnight)}</pubDate>\n"
        "    <skipDays>\n"
        "      <day>Saturday</day>\n"
        "      <day>Sunday</day>\n"
        "    </skipDays>\n"
    )


_CHANNEL_TAIL = "  </channel>\n</rss>\n"
DEFAULT_FEED_CATEGORIES = ("cs.AI", "cs.LG")


def render_item(paper: Paper, announce_type: str, day: date) -> str:
    """Render one announcement <item> in rss.arxiv.org's format."""
    abstract = " ".join(paper.abstract.split())
    title = " ".join(paper.title.split())
    lines = [
        "    <item>",
        f"      <title>{escape(title)}</title>",
        f"      <link>https://arxiv.org/abs/{paper.arxiv_id}</link>",
        f"      <description>arXiv:{paper.versioned_id} Announce Type: {escape(announce_type)} "
        f"\nAbstract: {escape(abstract)}</description>",
        f'      <guid isPermaLink="false">oai:arXiv.org:{paper.versioned_id}</guid>',
    ]
    lines += [f"      <category>{escape(c)}</category>" for c in paper.categories]
    lines += [
        f"      <pubDate>{_rfc822(eastern_midnight(day))}</pubDate>",
        f"      <arxiv:announce_type>{escape(announce_type)}</arxiv:announce_type>",
        f"      <dc:rights>{escape(paper.license)}</dc:rights>",
    ]
    if paper.journal_ref is not None:
        lines.append(
            f"      <arxiv:journal_reference>{escape(paper.journal_ref)}</arxiv:journal_reference>"
        )
    if paper.doi is not None:
        lines.append(f"      <arxiv:DOI>{escape(paper.doi)}</arxiv:DOI>")
    lines += [f"      <dc:creator>{escape(', '.join(paper.authors))}</dc:creator>", "    </item>"]
    return "\n".join(lines) + "\n"


def build_feed(
    day: date,
    items: Iterable[tuple[Paper, str] | Paper],
    categories: Sequence[str] = DEFAULT_FEED_CATEGORIES,
) -> bytes:
    """Build an announcement RSS feed for `day`; items are (paper, announce_type) or bare papers."""
    body = _channel_head(day, categories)
    for item in items:
        paper, announce_type = (item, "new") if isinstance(item, Paper) else item
        body += render_item(paper, announce_type, day)
    return (body + _CHANNEL_TAIL).encode("utf-8")


def build_empty_feed(day: date, categories: Sequence[str] = DEFAULT_FEED_CATEGORIES) -> bytes:
    """Build what rss.arxiv.org serves on a no-announcement day: channel, skipDays, no items."""
    return (_channel_head(day, categories) + _CHANNEL_TAIL).encode("utf-8")


# ---------------------------------------------------------------------------
# the server
# ---------------------------------------------------------------------------


class ArxivRequest(NamedTuple):
    """One request as logged by ArxivServer; timestamp is time.monotonic(); headers lower-cased."""

    method: str
    path: str
    query: dict[str, str]
    timestamp: float
    headers: dict[str, str] = {}


def _not_modified(headers: dict[str, str], etag: str, served: datetime) -> bool:
    """RFC 9110: If-None-Match decides when sent; otherwise If-Modified-Since at or after the last change."""
    if "if-none-match" in headers:
        tags = [tag.strip().removeprefix("W/") for tag in headers["if-none-match"].split(",")]
        return etag in tags or "*" in tags
    since = headers.get("if-modified-since")
    if since is None:
        return False
    try:
        return parsedate_to_datetime(since) >= served
    except (TypeError, ValueError):
        return False


def _feed_key(key: str) -> str:
    """Normalise a feeds-dict key: '/rss/cs.AI+cs.LG' and 'cs.AI+cs.LG' are the same."""
    key = unquote(key.strip())
    for prefix in ("/rss/", "rss/"):
        if key.startswith(prefix):
            key = key[len(prefix) :]
    return key.strip("/")


class ArxivServer(FakeHTTPServer[ArxivRequest]):
    """Fake export.arxiv.org API (/api/query) plus rss.arxiv.org feeds (/rss/<cats>)."""

    def __init__(self, papers: Iterable[Paper] = (), host: str = "127.0.0.1") -> None:
        """Create an unstarted server holding the given papers."""
        super().__init__(host)
        self.papers: dict[str, Paper] = {}
        self.feeds: dict[str, bytes | str] = {}
        self.default_feed: bytes | str | None = None
        # Feed answers in order (200 with a body, 304 Not Modified), and when each feed body was first served.
        self.feed_statuses: list[int] = []
        self._feed_first_served: dict[str, datetime] = {}
        self.add_papers(*papers)

    # configuration -------------------------------------------------------------

    def add_papers(self, *papers: Paper) -> None:
        """Add or replace papers (keyed by id without version)."""
        for paper in papers:
            self.papers[split_version(paper.arxiv_id)[0]] = paper

    def set_feed(self, categories: str | Sequence[str], body: bytes | str) -> None:
        """Serve `body` at /rss/<categories joined by +>."""
        key = categories if isinstance(categories, str) else "+".join(categories)
        self.feeds[key] = body

    @property
    def api_url(self) -> str:
        """The query endpoint: set arxiv.Client.query_url_format = f'{api_url}?{{}}'."""
        return f"{self.url}/api/query"

    @property
    def query_url_format(self) -> str:
        """Ready-made value for arxiv.Client.query_url_format."""
        return f"{self.api_url}?{{}}"

    @property
    def feed_base_url(self) -> str:
        """Value for NEWSLETTER_ARXIV_FEED_URL (ends with /rss/)."""
        return f"{self.url}/rss/"

    @property
    def api_requests(self) -> list[ArxivRequest]:
        """Logged requests to /api/."""
        return [r for r in self.requests if r.path.startswith("/api")]

    @property
    def feed_requests(self) -> list[ArxivRequest]:
        """Logged requests to /rss/."""
        return [r for r in self.requests if r.path.startswith("/rss")]

    # arXiv-specific faults -----------------------------------------------------

    def truncate_next_page(
        self,
        n: int = 1,
        *,
        fraction: float = 0.5,
        drop_connection: bool = False,
        path_prefix: str | None = "/api",
        after: int = 0,
    ) -> None:
        """Cut n bodies to `fraction`; drop_connection declares the full length, then hangs up."""
        self._add_fault(
            _Fault(
                "truncate",
                n,
                path_prefix,
                fraction=fraction,
                drop_connection=drop_connection,
                skip=after,
            )
        )

    def empty_next_page(
        self, n: int = 1, *, path_prefix: str | None = "/api", after: int = 0
    ) -> None:
        """Serve n API pages with their header but no entries (arXiv's flaky empty page)."""
        self._add_fault(_Fault("empty", n, path_prefix, skip=after))

    # request handling ----------------------------------------------------------

    def _record(self, request: IncomingRequest) -> ArxivRequest:
        """Log method, path, flattened query and monotonic time."""
        query = {k: v[0] for k, v in request.query.items()}
        return ArxivRequest(request.method, request.path, query, request.timestamp, dict(request.headers))

    def handle(self, request: IncomingRequest) -> Response:
        """Route to the API or the RSS feeds."""
        if request.path.rstrip("/") in ("/api/query", "/api"):
            return self._api(request)
        if request.path.startswith("/rss/"):
            response = self._feed(request)
            with self._lock:
                self.feed_statuses.append(response.status)
            return response
        return Response(404, b"Not Found\n")

    def _feed(self, request: IncomingRequest) -> Response:
        """Answer /rss/<cats> with the configured feed or an empty feed; 304 to validators that still match."""
        data = self._feed_body(request.path)
        etag = '"' + hashlib.sha1(data).hexdigest()[:20] + '"'
        with self._lock:
            served = self._feed_first_served.setdefault(etag, _now())
        validators = {"ETag": etag, "Last-Modified": format_datetime(served, usegmt=True)}
        if _not_modified(request.headers, etag, served):
            return Response(304, b"", RSS_CONTENT_TYPE, validators)
        return Response(200, data, RSS_CONTENT_TYPE, validators)

    def _feed_body(self, path: str) -> bytes:
        """The configured feed for the path's categories, or an empty feed."""
        key = _feed_key(path)
        body = self.feeds.get(key)
        if body is None:
            wanted = frozenset(key.split("+"))
            for k, v in self.feeds.items():
                if frozenset(_feed_key(k).split("+")) == wanted:
                    body = v
                    break
        if body is None:
            body = self.default_feed
        if body is None:
            today = datetime.now(UTC).astimezone(timezone(timedelta(hours=-5))).date()
            body = build_empty_feed(today, [c for c in key.split("+") if c])
        return body.encode("utf-8") if isinstance(body, str) else body

    def _select(self, query: dict[str, str]) -> list[tuple[Paper, int | None]]:
        """Resolve id_list / search_query / sorting into the ordered result list."""
        id_list = [i.strip() for i in query.get("id_list", "").split(",") if i.strip()]
        search = query.get("search_query", "").strip()
        predicate = compile_query(search) if search else None
        chosen: list[tuple[Paper, int | None]] = []
        if id_list:
            seen: set[str] = set()
            for raw in id_list:
                base, version = split_version(raw)
                paper = self.papers.get(base)
                if paper is None or base in seen or (version or 0) > paper.version:
                    continue
                seen.add(base)
                chosen.append((paper, version))
            if predicate is not None:
                chosen = [(p, v) for p, v in chosen if predicate(p)]
        elif predicate is not None:
            chosen = [(p, None) for p in self.papers.values() if predicate(p)]
        sort_by = query.get("sortBy", "relevance")
        descending = query.get("sortOrder", "descending") != "ascending"
        if sort_by in ("submittedDate", "lastUpdatedDate"):
            attr = "published" if sort_by == "submittedDate" else "updated"
            chosen.sort(key=lambda pv: getattr(pv[0], attr), reverse=descending)
        return chosen

    def _api(self, request: IncomingRequest) -> Response:
        """Answer /api/query like export.arxiv.org (200 results feed or 400 error feed)."""
        query = {k: v[0] for k, v in request.query.items()}
        for raw in [i for i in query.get("id_list", "").split(",") if i.strip()]:
            if not is_valid_arxiv_id(raw.strip()):
                ident = raw.strip()
                body = render_error_feed(
                    f"incorrect id format for {ident}", f"incorrect_id_format_for_{ident}"
                )
                return Response(400, body, ATOM_CONTENT_TYPE)
        try:
            start = int(query.get("start", "0") or 0)
            max_results = int(query.get("max_results", "10") or 10)
        except ValueError:
            body = render_error_feed("start and max_results must be integers", "bad_paging")
            return Response(400, body, ATOM_CONTENT_TYPE)
        if start < 0:
            body = render_error_feed("start must be non-negative", "start_must_be_non-negative")
            return Response(400, body, ATOM_CONTENT_TYPE)
        try:
            chosen = self._select(query)
        except QueryError as exc:
            body = render_error_feed(str(exc), "bad_search_query")
            return Response(400, body, ATOM_CONTENT_TYPE)
        page = chosen[start : start + max(max_results, 0)]
        body = render_feed(
            page,
            search_query=query.get("search_query", ""),
            id_list=query.get("id_list", ""),
            start=start,
            max_results=max_results,
            total_results=len(chosen),
        )
        return Response(200, body, ATOM_CONTENT_TYPE)

    def _empty_page(self, request: IncomingRequest, response: Response) -> Response:
        """Keep the header of an API page but drop all of its entries."""
        if response.status != 200 or not request.path.startswith("/api"):
            return response
        text = response.body.decode("utf-8")
        text = re.sub(r"  <entry>.*?</entry>\n", "", text, flags=re.DOTALL)
        return Response(200, text.encode("utf-8"), response.content_type, response.headers)


__all__ = [
    "ArxivRequest",
    "ArxivServer",
    "Paper",
    "QueryError",
    "build_empty_feed",
    "build_feed",
    "compile_query",
    "eastern_midnight",
    "is_valid_arxiv_id",
    "load_entries_from_atom",
    "make_paper",
    "parse_atom_entries",
    "render_entry",
    "render_error_feed",
    "render_feed",
    "split_version",
]
