"""Local stand-in for the DeepL API v2 as the `deepl` Python client (1.32) speaks it."""

from __future__ import annotations

import functools
import json
import re
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs

from ._http import FakeHTTPServer, IncomingRequest, Response

JSON_TYPE = "application/json; charset=utf-8"
DOLLAR_MISTRANSLATION = "美元"
GLOSSARY_PAIRS: tuple[tuple[str, str], ...] = (
    ("en", "de"),
    ("de", "en"),
    ("en", "fr"),
    ("fr", "en"),
    ("en", "ja"),
    ("ja", "en"),
    ("en", "zh"),
    ("zh", "en"),
    ("en", "es"),
    ("es", "en"),
)
_TAG = re.compile(r"<(/?)([A-Za-z_][\w.\-]*)((?:\s[^<>]*?)?)(/?)>")
_PLACEHOLDER = re.compile(r"<x>\d+</x>")
_ERROR_MESSAGES = {
    400: "Bad request",
    403: "Wrong endpoint. Use https://api.deepl.com",
    404: "Not found",
    413: "Request Entity Too Large",
    429: "Too many requests",
    456: "Quota exceeded",
    500: "Internal server error",
    503: "Service unavailable",
}


@dataclass(frozen=True)
class DeepLRequest:
    """One request as logged by DeepLServer; timestamp is time.monotonic()."""

    method: str
    path: str
    body: dict[str, Any]
    timestamp: float
    auth_key: str | None
    texts: list[str] = field(default_factory=list)
    target_lang: str | None = None
    source_lang: str | None = None
    tag_handling: str | None = None
    ignore_tags: list[str] = field(default_factory=list)
    glossary_id: str | None = None
    context: str | None = None


@dataclass
class Glossary:
    """A stored v2 glossary."""

    glossary_id: str
    name: str
    source_lang: str
    target_lang: str
    entries: dict[str, str]
    creation_time: datetime

    def info(self) -> dict[str, Any]:
        """JSON shape of /v2/glossaries responses."""
        stamp = self.creation_time.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        return {
            "glossary_id": self.glossary_id,
            "name": self.name,
            "ready": True,
            "source_lang": self.source_lang,
            "target_lang": self.target_lang,
            "creation_time": stamp,
            "entry_count": len(self.entries),
        }


def _parse_body(request: IncomingRequest) -> dict[str, Any]:
    """Merge query string and JSON or form body into one dict (form 'text' stays a list)."""
    merged: dict[str, Any] = {}
    ctype = request.headers.get("content-type", "")
    sources: list[dict[str, list[str]]] = [request.query]
    if request.body and "json" in ctype:
        loaded = json.loads(request.body.decode("utf-8"))
        if not isinstance(loaded, dict):
            raise ValueError("JSON body must be an object")
        sources_json: dict[str, Any] = loaded
    else:
        sources_json = {}
        if request.body:
            sources.append(parse_qs(request.body.decode("utf-8"), keep_blank_values=True))
    for source in sources:
        for key, values in source.items():
            merged[key] = values if key in ("text", "ignore_tags", "glossary_ids") else values[-1]
    merged.update(sources_json)
    return merged


def _as_list(value: Any) -> list[str]:
    """Normalise a list or comma-separated string parameter to a list of strings."""
    if value is None:
        return []
    items = [value] if isinstance(value, str) else list(value)
    return [part.strip() for item in items for part in str(item).split(",") if part.strip()]


def _auth_key(request: IncomingRequest) -> str | None:
    """Extract the key from 'Authorization: DeepL-Auth-Key KEY'."""
    header = request.headers.get("authorization", "")
    prefix = "DeepL-Auth-Key "
    return header[len(prefix) :].strip() if header.startswith(prefix) else None


def _json(status: int, payload: Any) -> Response:
    """A JSON response."""
    return Response(status, json.dumps(payload, ensure_ascii=False).encode("utf-8"), JSON_TYPE)


def _error(status: int, message: str | None = None) -> Response:
    """A DeepL-style JSON error response."""
    return _json(status, {"message": message or _ERROR_MESSAGES.get(status, "Error")})


@functools.lru_cache(maxsize=16)
def _glossary_pattern(sources: tuple[str, ...]) -> re.Pattern[str]:
    """One alternation over every glossary term, longest first, whole words (one pass per text)."""
    parts = []
    for source in sorted(sources, key=len, reverse=True):
        pattern = re.escape(source)
        if source[:1].isalnum():
            pattern = r"(?<!\w)" + pattern
        if source[-1:].isalnum():
            pattern += r"(?!\w)"
        parts.append(pattern)
    return re.compile("|".join(parts))


class DeepLServer(FakeHTTPServer[DeepLRequest]):
    """Fake api.deepl.com: translate, usage, v2 glossaries, languages, auth and faults."""

    def __init__(
        self,
        auth_key: str = "test-key:fx",
        *,
        character_limit: int = 500_000,
        host: str = "127.0.0.1",
    ) -> None:
        """Create an unstarted server accepting `auth_key`."""
        super().__init__(host)
        self.auth_key = auth_key
        self.character_count = 0
        self.character_limit = character_limit
        self.glossaries: dict[str, Glossary] = {}
        self.translate_segment: Callable[[str, str], str] | None = None
        # Slow mode: a translation takes this long per character it bills, and is billed when done,
        # whether or not the client is still waiting (as DeepL does).
        self.seconds_per_character = 0.0
        # Lossy mode: translations come back without their <x>N</x> placeholders.
        self.drop_placeholders = False
        self._in_flight = 0
        self._idle = threading.Condition()

    # public helpers ------------------------------------------------------------

    @property
    def server_url(self) -> str:
        """Value for deepl.DeepLClient(key, server_url=...)."""
        return self.url

    @property
    def translate_requests(self) -> list[DeepLRequest]:
        """Logged POST /v2/translate requests."""
        return [r for r in self.requests if r.path == "/v2/translate"]

    def stall_next(self, n: int, seconds: float) -> None:
        """Hold the next n translate requests `seconds` before processing (and billing) them."""
        self.delay_next(n, seconds, path_prefix="/v2/translate")

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Wait until no request is being processed (a slow one bills when it ends); False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout)

    @staticmethod
    def prefix_for(target_lang: str) -> str:
        """Marker put before every fake translation, e.g. '[ZH] ' for ZH-HANS."""
        return f"[{target_lang.split('-')[0].upper()}] "

    def fake_translate(
        self,
        text: str,
        target_lang: str,
        *,
        tag_handling: str | None = None,
        ignore_tags: Sequence[str] = (),
        glossary: dict[str, str] | None = None,
    ) -> str:
        """Deterministic fake: prefix, glossary terms, '$' -> 美元 outside ignored tags."""
        if tag_handling in ("xml", "html"):
            body = self._translate_markup(text, target_lang, set(ignore_tags), glossary or {})
        else:
            body = self._translate_plain(text, target_lang, glossary or {})
        return self.prefix_for(target_lang) + body

    def _translate_plain(self, text: str, target_lang: str, glossary: dict[str, str]) -> str:
        """Translate one stretch of translatable text."""
        if self.translate_segment is not None:
            return self.translate_segment(text, target_lang)
        if glossary:
            text = _glossary_pattern(tuple(sorted(glossary))).sub(lambda m: glossary[m.group(0)], text)
        return text.replace("$", DOLLAR_MISTRANSLATION)

    def _translate_markup(
        self, text: str, target_lang: str, ignore: set[str], glossary: dict[str, str]
    ) -> str:
        """Translate text between tags; copy tags and ignored-tag content verbatim."""
        out: list[str] = []
        depth = 0
        pos = 0
        for match in _TAG.finditer(text):
            chunk = text[pos : match.start()]
            out.append(chunk if depth else self._translate_plain(chunk, target_lang, glossary))
            closing, name, self_closing = match.group(1), match.group(2), match.group(4)
            if name in ignore and not self_closing:
                depth = max(depth - 1, 0) if closing else depth + 1
            out.append(match.group(0))
            pos = match.end()
        tail = text[pos:]
        out.append(tail if depth else self._translate_plain(tail, target_lang, glossary))
        return "".join(out)

    # request handling ----------------------------------------------------------

    def _record(self, request: IncomingRequest) -> DeepLRequest:
        """Log the request with its parsed translate parameters."""
        try:
            body = _parse_body(request)
        except ValueError:
            body = {"_raw": request.body.decode("utf-8", "replace")}
        texts = body.get("text", [])
        glossary_id = body.get("glossary_id")
        return DeepLRequest(
            method=request.method,
            path=request.path,
            body=body,
            timestamp=request.timestamp,
            auth_key=_auth_key(request),
            texts=[texts] if isinstance(texts, str) else list(texts),
            target_lang=body.get("target_lang"),
            source_lang=body.get("source_lang"),
            tag_handling=body.get("tag_handling"),
            ignore_tags=_as_list(body.get("ignore_tags")),
            glossary_id=str(glossary_id) if glossary_id else None,
            context=body.get("context"),
        )

    def _serve(self, request: IncomingRequest) -> Response | None:
        """Count the request as in flight while it is delayed and processed."""
        with self._idle:
            self._in_flight += 1
        try:
            return super()._serve(request)
        finally:
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()

    def _error_body(self, status: int) -> tuple[bytes, str]:
        """DeepL errors carry a JSON message."""
        response = _error(status)
        return response.body, response.content_type

    def handle(self, request: IncomingRequest) -> Response:
        """Authenticate, then route to the v2 endpoint."""
        if _auth_key(request) != self.auth_key:
            return _error(403, "Authorization failure, check auth_key")
        try:
            body = _parse_body(request)
        except (ValueError, UnicodeDecodeError):
            return _error(400, "Invalid request body")
        path = request.path.rstrip("/")
        method = request.method
        if path == "/v2/translate" and method == "POST":
            return self._translate(body)
        if path == "/v2/usage":
            return _json(
                200,
                {"character_count": self.character_count, "character_limit": self.character_limit},
            )
        if path == "/v2/languages":
            return self._languages(body)
        if path == "/v2/glossary-language-pairs":
            pairs = [{"source_lang": s, "target_lang": t} for s, t in GLOSSARY_PAIRS]
            return _json(200, {"supported_languages": pairs})
        if path == "/v2/glossaries":
            if method == "POST":
                return self._create_glossary(body)
            return _json(200, {"glossaries": [g.info() for g in self.glossaries.values()]})
        match = re.fullmatch(r"/v2/glossaries/([^/]+)(/entries)?", path)
        if match:
            return self._glossary(method, match.group(1), bool(match.group(2)))
        return _error(404, "Not found")

    def _translate(self, body: dict[str, Any]) -> Response:
        """POST /v2/translate."""
        raw = body.get("text")
        texts = [raw] if isinstance(raw, str) else list(raw or [])
        target = body.get("target_lang")
        if not texts:
            return _error(400, "Parameter 'text' not specified.")
        if not target:
            return _error(400, "Parameter 'target_lang' not specified.")
        target = str(target).upper()
        source = str(body["source_lang"]).upper() if body.get("source_lang") else None
        glossary: dict[str, str] | None = None
        if body.get("glossary_id"):
            if source is None:
                return _error(400, "Use of a glossary requires the source_lang parameter.")
            stored = self.glossaries.get(str(body["glossary_id"]))
            if stored is None:
                return _error(400, "Invalid glossary_id")
            if stored.source_lang != source.split("-")[0].lower() or stored.target_lang != (
                target.split("-")[0].lower()
            ):
                return _error(400, "Glossary languages do not match source_lang/target_lang")
            glossary = stored.entries
        billed = sum(len(t) for t in texts)
        if self.character_count + billed > self.character_limit:
            return _error(456, "Quota exceeded")
        tag_handling = body.get("tag_handling")
        ignore_tags = _as_list(body.get("ignore_tags"))
        if self.seconds_per_character and self._stopping.wait(billed * self.seconds_per_character):
            return _error(503, "Service unavailable")
        translations = []
        for text in texts:
            translated = self.fake_translate(
                str(text),
                target,
                tag_handling=tag_handling,
                ignore_tags=ignore_tags,
                glossary=glossary,
            )
            if self.drop_placeholders:
                translated = _PLACEHOLDER.sub("", translated)
            translations.append(
                {
                    "detected_source_language": source.split("-")[0] if source else "EN",
                    "text": translated,
                    "billed_characters": len(text),
                }
            )
        self.character_count += billed
        return _json(200, {"translations": translations})

    def _languages(self, body: dict[str, Any]) -> Response:
        """GET /v2/languages (source list, or target list with type=target)."""
        if body.get("type") == "target":
            return _json(
                200,
                [
                    {"language": "DE", "name": "German", "supports_formality": True},
                    {"language": "EN-GB", "name": "English (British)", "supports_formality": False},
                    {
                        "language": "EN-US",
                        "name": "English (American)",
                        "supports_formality": False,
                    },
                    {"language": "ZH", "name": "Chinese (simplified)", "supports_formality": False},
                    {
                        "language": "ZH-HANS",
                        "name": "Chinese (simplified)",
                        "supports_formality": False,
                    },
                    {
                        "language": "ZH-HANT",
                        "name": "Chinese (traditional)",
                        "supports_formality": False,
                    },
                ],
            )
        return _json(
            200,
            [
                {"language": "DE", "name": "German"},
                {"language": "EN", "name": "English"},
                {"language": "ZH", "name": "Chinese"},
            ],
        )

    def _create_glossary(self, body: dict[str, Any]) -> Response:
        """POST /v2/glossaries with tsv (or csv) entries."""
        name = body.get("name")
        source = str(body.get("source_lang", "")).lower()
        target = str(body.get("target_lang", "")).lower()
        if not name:
            return _error(400, "Parameter 'name' not specified.")
        if (source, target) not in GLOSSARY_PAIRS:
            return _error(400, "Unsupported glossary source and target language pair.")
        fmt = body.get("entries_format", "tsv")
        separator = "\t" if fmt == "tsv" else ","
        entries: dict[str, str] = {}
        for line in str(body.get("entries", "")).splitlines():
            if not line.strip():
                continue
            if separator not in line:
                return _error(400, f"Invalid glossary entries: {line!r}")
            src, tgt = line.split(separator, 1)
            entries[src.strip()] = tgt.split(separator)[0].strip()
        if not entries:
            return _error(400, "Glossary entries must not be empty.")
        glossary = Glossary(uuid.uuid4().hex, str(name), source, target, entries, datetime.now(UTC))
        self.glossaries[glossary.glossary_id] = glossary
        return _json(int(HTTPStatus.CREATED), glossary.info())

    def _glossary(self, method: str, glossary_id: str, entries: bool) -> Response:
        """GET/DELETE /v2/glossaries/{id} and GET /v2/glossaries/{id}/entries."""
        glossary = self.glossaries.get(glossary_id)
        if glossary is None:
            return _error(404, "Glossary not found")
        if entries:
            tsv = "\n".join(f"{s}\t{t}" for s, t in glossary.entries.items())
            return Response(200, tsv.encode("utf-8"), "text/tab-separated-values; charset=utf-8")
        if method == "DELETE":
            del self.glossaries[glossary_id]
            return Response(204, b"", JSON_TYPE)
        return _json(200, glossary.info())


__all__ = ["DOLLAR_MISTRANSLATION", "DeepLRequest", "DeepLServer", "Glossary"]
