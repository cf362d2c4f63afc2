"""Shared threaded HTTP stand-in server with per-test fault injection."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Generic, Self, TypeVar
from urllib.parse import parse_qs, urlsplit

RecordT = TypeVar("RecordT")

_CLIENT_GONE = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)


@dataclass(frozen=True)
class IncomingRequest:
    """One parsed HTTP request as the fake server saw it."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    timestamp: float


@dataclass
class Response:
    """What a handler answers; `truncate_to`/`drop_connection` model broken transfers."""

    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)
    truncate_to: int | None = None
    drop_connection: bool = False


@dataclass
class _Fault:
    """A pending programmed fault, consumed once per matching request."""

    kind: str
    remaining: int
    path_prefix: str | None
    seconds: float = 0.0
    response: Response | None = None
    fraction: float = 0.5
    drop_connection: bool = False
    skip: int = 0
    gate: threading.Event | None = None  # a delay that ends early once the test sets it

    def matches(self, path: str) -> bool:
        """Tell whether this fault applies to a request path."""
        if self.remaining <= 0:
            return False
        return self.path_prefix is None or path.startswith(self.path_prefix)


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer that knows its fake and stays quiet on client hang-ups."""

    daemon_threads = True
    allow_reuse_address = True
    fake: FakeHTTPServer[Any]

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Ignore errors caused by clients that went away (timeouts, resets)."""
        return None


class _Handler(BaseHTTPRequestHandler):
    """Request handler delegating every method to the owning fake server."""

    server: _Server
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output clean."""
        return None

    def _dispatch(self) -> None:
        """Parse the request, let the fake answer it, and write the response."""
        split = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        request = IncomingRequest(
            method=self.command,
            path=split.path,
            query=parse_qs(split.query, keep_blank_values=True),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
            timestamp=time.monotonic(),
        )
        response = self.server.fake._serve(request)
        if response is None:
            self.close_connection = True
            return
        try:
            self._write(response)
        except _CLIENT_GONE:
            self.close_connection = True

    def _write(self, response: Response) -> None:
        """Send status line, headers and (possibly truncated) body."""
        body = response.body
        sent = body if response.truncate_to is None else body[: response.truncate_to]
        declared = len(body) if response.drop_connection else len(sent)
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(declared))
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(sent)
        self.wfile.flush()
        if response.drop_connection:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _dispatch


class FakeHTTPServer(Generic[RecordT]):
    """Base for stand-in HTTP servers: lifecycle, request log and fault queue."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        """Prepare an unstarted server bound later to host and a free port."""
        self.host = host
        self.requests: list[RecordT] = []
        self._lock = threading.Lock()
        self._faults: list[_Fault] = []
        self._stopping = threading.Event()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    # lifecycle -----------------------------------------------------------------

    def start(self) -> Self:
        """Bind 127.0.0.1 on a free port and serve in a background thread."""
        if self._httpd is not None:
            raise RuntimeError("server already started")
        self._stopping.clear()
        httpd = _Server((self.host, 0), _Handler)
        httpd.fake = self
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"{type(self).__name__}-{httpd.server_address[1]}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, wake delayed handlers and release the port."""
        self._stopping.set()
        httpd, thread = self._httpd, self._thread
        self._httpd, self._thread = None, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> Self:
        """Start the server for a with-block."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the server at the end of a with-block."""
        self.stop()

    @property
    def port(self) -> int:
        """TCP port the server listens on."""
        if self._httpd is None:
            raise RuntimeError("server not started")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """Base URL without trailing slash, e.g. http://127.0.0.1:41234."""
        return f"http://{self.host}:{self.port}"

    # fault injection -----------------------------------------------------------

    def fail_next(
        self,
        n: int,
        status: int,
        *,
        path_prefix: str | None = None,
        after: int = 0,
        body: bytes | str | None = None,
        content_type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer n matching requests (after letting `after` pass) with `status`, then normally."""
        default_body, default_type = self._error_body(status)
        if isinstance(body, str):
            body = body.encode()
        response = Response(
            status=status,
            body=default_body if body is None else body,
            content_type=content_type or default_type,
            headers=dict(headers or {}),
        )
        self._add_fault(_Fault("respond", n, path_prefix, response=response, skip=after))

    def respond_next(
        self,
        body: bytes | str,
        status: int = 200,
        content_type: str = "text/html; charset=utf-8",
        *,
        n: int = 1,
        path_prefix: str | None = None,
        after: int = 0,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer n matching requests (after `after` pass) with this exact body/status/type."""
        data = body.encode() if isinstance(body, str) else body
        response = Response(status, data, content_type, dict(headers or {}))
        self._add_fault(_Fault("respond", n, path_prefix, response=response, skip=after))

    def delay_next(
        self, n: int, seconds: float, *, path_prefix: str | None = None, after: int = 0
    ) -> None:
        """Sleep `seconds` before answering n matching requests (after `after` pass)."""
        self._add_fault(_Fault("delay", n, path_prefix, seconds=seconds, skip=after))

    def hold_next(
        self, n: int, until: threading.Event, seconds: float = 60.0, *, path_prefix: str | None = None
    ) -> None:
        """Hold n matching requests unanswered until the test sets `until` (or `seconds` pass)."""
        self._add_fault(_Fault("delay", n, path_prefix, seconds=seconds, gate=until))

    def clear_faults(self) -> None:
        """Forget every pending programmed fault."""
        with self._lock:
            self._faults.clear()

    @property
    def pending_faults(self) -> int:
        """Number of programmed fault answers not yet consumed."""
        with self._lock:
            return sum(f.remaining for f in self._faults)

    def _add_fault(self, fault: _Fault) -> None:
        """Queue a fault if it has anything to consume."""
        if fault.remaining > 0:
            with self._lock:
                self._faults.append(fault)

    def _take_faults(self, path: str) -> tuple[float, _Fault | None, threading.Event]:
        """Consume the delay (and the event that may end it) and the first answer-changing fault matching path."""
        delay = 0.0
        gate = self._stopping
        answer: _Fault | None = None
        with self._lock:
            for fault in self._faults:
                if not fault.matches(path):
                    continue
                if fault.skip > 0:
                    fault.skip -= 1
                    continue
                if fault.kind == "delay":
                    if delay == 0.0:
                        delay, gate = fault.seconds, fault.gate or self._stopping
                        fault.remaining -= 1
                elif answer is None:
                    answer = fault
                    fault.remaining -= 1
            self._faults = [f for f in self._faults if f.remaining > 0]
        return delay, answer, gate

    # request flow --------------------------------------------------------------

    def _serve(self, request: IncomingRequest) -> Response | None:
        """Record, apply faults, then let the subclass answer; None closes silently."""
        record = self._record(request)
        with self._lock:
            self.requests.append(record)
        delay, fault, gate = self._take_faults(request.path)
        if delay > 0 and gate.wait(delay) and self._stopping.is_set():
            return None
        if fault is not None and fault.kind == "respond" and fault.response is not None:
            r = fault.response
            return Response(r.status, r.body, r.content_type, dict(r.headers))
        try:
            response = self.handle(request)
        except Exception as exc:  # noqa: BLE001 - a broken fake must answer, not hang
            return Response(500, f"fake server error: {exc!r}".encode())
        if fault is not None and fault.kind == "truncate":
            keep = int(len(response.body) * fault.fraction)
            response.truncate_to = keep
            response.drop_connection = fault.drop_connection
        elif fault is not None and fault.kind == "empty":
            response = self._empty_page(request, response)
        return response

    def _record(self, request: IncomingRequest) -> RecordT:
        """Turn an incoming request into the subclass's request-log entry."""
        raise NotImplementedError

    def handle(self, request: IncomingRequest) -> Response:
        """Answer a request that no fault intercepted."""
        raise NotImplementedError

    def _error_body(self, status: int) -> tuple[bytes, str]:
        """Default body and content type for `fail_next` answers."""
        phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
        return f"{status} {phrase}\n".encode(), "text/plain; charset=utf-8"

    def _empty_page(self, request: IncomingRequest, response: Response) -> Response:
        """Replace a response by an empty page (only meaningful for feeds)."""
        return response
