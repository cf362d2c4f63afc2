"""Pytest fixtures for the stand-in servers (load as the plugin tests.servers.pytest_plugin)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .arxiv import ArxivServer
from .deepl import DeepLServer
from .smtp import SmtpSink

DEEPL_TEST_KEY = "test-key:fx"


@pytest.fixture
def arxiv_server() -> Iterator[ArxivServer]:
    """A running, empty ArxivServer (add papers / feeds in the test)."""
    with ArxivServer() as server:
        yield server


@pytest.fixture
def deepl_server() -> Iterator[DeepLServer]:
    """A running DeepLServer accepting DEEPL_TEST_KEY."""
    with DeepLServer(auth_key=DEEPL_TEST_KEY) as server:
        yield server


@pytest.fixture
def deepl_fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the resends of refused DeepL requests near-instant and bounded (2 retries)."""
    import deepl.http_client as http_client

    # The translate stage resends refused requests itself (Settings), the client's own knobs are off.
    monkeypatch.setenv("NEWSLETTER_DEEPL_RETRY_BASE_SECONDS", "0.01")
    monkeypatch.setenv("NEWSLETTER_DEEPL_MAX_RETRIES", "2")

    monkeypatch.setattr(http_client, "max_network_retries", 2)
    monkeypatch.setattr(http_client._BackoffTimer, "BACKOFF_INITIAL", 0.01)
    monkeypatch.setattr(http_client._BackoffTimer, "BACKOFF_MAX", 0.05)


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    """A running plain SmtpSink without AUTH or TLS."""
    with SmtpSink() as sink:
        yield sink
