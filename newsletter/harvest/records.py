"""What a harvested paper is, and the identifier, text and reply checks the feed and the API share."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

# New-style (2501.00001v2) and old-style (astro-ph/9812133v1, math.GT/0309136) identifiers.
_ARXIV_ID = re.compile(
    r"^(?P<id>\d{4}\.\d{4,5}|[a-z][a-z-]*(?:\.[A-Z]{2})?/\d{7})(?:v(?P<version>\d+))?$"
)

# Control characters no title needs; PostgreSQL refuses NUL in text outright.
_CONTROL_CHARACTERS = re.compile("[\x00-\x08\x0e-\x1f\x7f]")


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
    """Collapse runs of white space (arXiv hard-wraps abstracts), drop control characters; LaTeX is kept as written."""
    return " ".join(_CONTROL_CHARACTERS.sub("", text or "").split())


def looks_like_html(content: bytes) -> bool:
    """Whether a reply is an HTML page (an error or login page) rather than the XML asked for."""
    head = content[:512].lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html")) or b"<html" in head


def local_name(tag: str) -> str:
    """An XML tag without its namespace."""
    return tag.rsplit("}", 1)[-1]


def html_title(content: bytes) -> str:
    """The <title> of an HTML page, cleaned and cut short, to name it in an error."""
    match = re.search(rb"<title[^>]*>(.*?)</title>", content[:4096], flags=re.IGNORECASE | re.DOTALL)
    return clean_text(match.group(1).decode("utf-8", "replace"))[:120] if match else "no title"
