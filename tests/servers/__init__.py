"""Local stand-in servers (arXiv API + RSS, DeepL API v2, SMTP) for the test suite."""

from .arxiv import (
    ArxivServer,
    Paper,
    build_empty_feed,
    build_feed,
    load_entries_from_atom,
    make_paper,
)
from .deepl import DeepLServer
from .smtp import SmtpSink

__all__ = [
    "ArxivServer",
    "DeepLServer",
    "Paper",
    "SmtpSink",
    "build_empty_feed",
    "build_feed",
    "load_entries_from_atom",
    "make_paper",
]
