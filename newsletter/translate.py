"""Translate: each selected paper once per language, through DeepL, cached in SQL, within a daily budget."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast, runtime_checkable

import deepl
import requests
from sqlalchemy import CursorResult, Row, func, label, select, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col

from newsletter.config import Settings
from newsletter.latex import (
    PLACEHOLDER,
    PROTECT_TAG,
    LatexLost,
    fill_placeholders,
    latex_to_unicode,
    normalize_whitespace,
    protect_latex,
    resolve_accents,
    restore_latex,
)
from newsletter.models import (
    DeepLGlossary,
    DeepLUsage,
    Paper,
    Run,
    RunStage,
    Selection,
    Stage,
    Subscriber,
    SubscriberStatus,
    Translation,
    TranslationRejection,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

# DeepL takes at most 50 texts per request (its 128 KiB body limit is far above our character cap).
MAX_TEXTS_PER_REQUEST = 50
# Papers selected this many days back that are still untranslated are retried after today's.
BACKLOG_DAYS = 7
BUNDLED_GLOSSARIES = {"zh": Path(__file__).resolve().parent / "glossary" / "ml_en_zh.tsv"}
# A Simplified Chinese glossary must not be applied to Traditional Chinese.
_GLOSSARY_TARGETS = {"ZH": "zh", "ZH-HANS": "zh"}


class TranslationUnavailable(Exception):
    """DeepL cannot translate now (bad key, quota, unreachable, failing); digests go out in English."""

    def __init__(
        self, reason: str, *, maybe_billed: bool = False, retryable: bool = False, timed_out: bool = False
    ) -> None:
        super().__init__(reason)
        # DeepL may have processed (and billed) the request: its characters stay counted.
        self.maybe_billed = maybe_billed
        # Refused without billing and likely to pass (429, 5xx, unreachable): worth resending.
        self.retryable = retryable
        # Sent, but no reply came in time: retried once, smaller.
        self.timed_out = timed_out


class GlossaryError(ValueError):
    """The glossary file cannot be read as `english<TAB>translation` lines."""


@dataclass
class TranslatedBatch:
    # The translated XML, one per text sent, placeholders as DeepL returned them.
    texts: list[str]
    billed_characters: int


@dataclass(frozen=True)
class RequestPolicy:
    """How the stage sizes DeepL requests and resends refused ones."""

    request_characters: int = 5_000
    max_retries: int = 3
    retry_base_seconds: float = 1.0


class Translator(Protocol):
    policy: RequestPolicy

    def translate(
        self, texts: Sequence[str], target_language: str, context: str | None = None
    ) -> TranslatedBatch: ...


@runtime_checkable
class GlossaryTranslator(Protocol):
    def prepare(self, session: Session, target_language: str) -> None: ...


def load_glossary(path: Path) -> dict[str, str]:
    """Glossary entries from a TSV file (`english<TAB>translation`, `#` comments); GlossaryError if malformed."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise GlossaryError(f"cannot read glossary {path}: {exc}") from exc
    entries: dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = [part.strip() for part in line.split("\t")]
        if len(parts) != 2 or not all(parts):
            raise GlossaryError(f"{path}:{number}: expected 'english<TAB>translation', got {line!r}")
        if parts[0] in entries:
            raise GlossaryError(f"{path}:{number}: {parts[0]!r} is listed twice")
        entries[parts[0]] = parts[1]
    if not entries:
        raise GlossaryError(f"{path}: no entries")
    return entries


def glossary_checksum(entries: dict[str, str]) -> str:
    """A stable fingerprint of the entries: a changed file means a new DeepL glossary."""
    tsv = "\n".join(f"{source}\t{target}" for source, target in sorted(entries.items()))
    return hashlib.sha256(tsv.encode("utf-8")).hexdigest()


class DeepLTranslator:
    """The DeepL API through the `deepl` package: one HTTP request per call, XML with ignored <x> tags."""

    def __init__(
        self,
        auth_key: str,
        server_url: str | None = None,
        glossary_files: dict[str, Path] | None = None,
        *,
        timeout_seconds: float = 30.0,
        policy: RequestPolicy | None = None,
    ) -> None:
        configure_deepl_client(timeout_seconds)
        self.client = deepl.DeepLClient(auth_key, server_url=server_url)
        self.glossary_files = BUNDLED_GLOSSARIES if glossary_files is None else glossary_files
        self.timeout_seconds = timeout_seconds
        self.policy = policy or RequestPolicy()
        self._glossary_ids: dict[str, str | None] = {}

    def translate(self, texts: Sequence[str], target_language: str, context: str | None = None) -> TranslatedBatch:
        """Send the XML texts in one request (no resend: the stage counts every attempt); TranslationUnavailable."""
        language = target_language.upper()
        xml = list(texts)
        try:
            results = _call(lambda: self._send(xml, target_language, self._glossary_ids.get(language), context))
        except TranslationUnavailable as exc:
            # A glossary DeepL no longer accepts must not cost the day's translations: go on without it.
            # The refused request was not billed, so the stage's one reservation covers the resend.
            if not self._glossary_ids.get(language) or not _refuses_glossary(exc.__cause__):
                raise
            log.warning("DeepL refused the glossary (%s); translating without it", exc.__cause__)
            self._glossary_ids[language] = None
            results = _call(lambda: self._send(xml, target_language, None, context))
        if not isinstance(results, list):
            results = [results]
        if len(results) != len(xml):
            raise TranslationUnavailable(f"DeepL answered {len(results)} texts for {len(xml)} sent", maybe_billed=True)
        return TranslatedBatch(
            texts=[result.text for result in results],
            billed_characters=sum(result.billed_characters or 0 for result in results),
        )

    def _send(
        self, xml: list[str], target_language: str, glossary_id: str | None, context: str | None
    ) -> deepl.TextResult | list[deepl.TextResult]:
        return self.client.translate_text(
            xml,
            source_lang="EN",
            target_lang=target_language,
            tag_handling="xml",
            ignore_tags=[PROTECT_TAG],
            glossary=glossary_id,
            context=context,
        )

    def prepare(self, session: Session, target_language: str) -> None:
        """Make sure the language's glossary exists at DeepL (uploaded once, re-created when changed or gone)."""
        # Checked on every run: a long-lived worker must notice a glossary deleted at DeepL or a changed file.
        language = target_language.upper()
        self._glossary_ids[language] = None
        glossary_target = _GLOSSARY_TARGETS.get(language)
        path = self.glossary_files.get(glossary_target or "")
        if path is None:
            return
        try:
            entries = load_glossary(path)
        except GlossaryError as exc:
            # A broken glossary must not stop the digest: translate without it.
            log.warning("%s; translating without a glossary", exc)
            return
        self._glossary_ids[language] = self._glossary_id(session, glossary_target or "", entries)

    def _glossary_id(self, session: Session, target: str, entries: dict[str, str]) -> str | None:
        checksum = glossary_checksum(entries)
        stored = session.get(DeepLGlossary, target)
        if stored is not None and stored.entries_sha256 == checksum and self._glossary_exists(stored.glossary_id):
            return stored.glossary_id
        try:
            name = f"arxiv-digest EN-{target.upper()}"
            created = _call(lambda: self.client.create_glossary(name, "EN", target, entries)).glossary_id
        except TranslationUnavailable as exc:
            log.warning("could not upload the glossary (%s); translating without it", exc)
            return None
        row = DeepLGlossary(
            target_language=target, glossary_id=created, entries_sha256=checksum, entry_count=len(entries)
        )
        if _record_glossary(session, row, stored.glossary_id if stored else None):
            if stored is not None:
                self._delete_quietly(stored.glossary_id)
            return created
        # Another process uploaded the same file at the same moment: use its glossary, drop ours.
        self._delete_quietly(created)
        winner = session.get(DeepLGlossary, target, populate_existing=True)
        return winner.glossary_id if winner is not None else None

    def _glossary_exists(self, glossary_id: str) -> bool:
        try:
            self.client.get_glossary(glossary_id)
        except deepl.GlossaryNotFoundException:
            return False
        except deepl.DeepLException as exc:
            raise _unavailable(exc) from exc
        return True

    def _delete_quietly(self, glossary_id: str) -> None:
        try:
            self.client.delete_glossary(glossary_id)
        except deepl.DeepLException as exc:  # an old glossary left behind costs nothing
            log.info("could not delete old glossary %s: %s", glossary_id, exc)

    def usage(self) -> tuple[int | None, int | None]:
        """Characters used and the limit in DeepL's current billing period."""
        usage = _call(self.client.get_usage)
        return usage.character.count, usage.character.limit


def _refuses_glossary(exc: BaseException | None) -> bool:
    """A 400 or 404 answer: what DeepL says about a glossary id it does not (or no longer) accept."""
    return isinstance(exc, deepl.DeepLException) and exc.http_status_code in (400, 404)


def _record_glossary(session: Session, row: DeepLGlossary, replaces: str | None) -> bool:
    """Store the new glossary id unless another process changed the row first; True if stored."""
    if replaces is None:
        try:
            with session.begin_nested():
                session.add(row)
        except IntegrityError:
            session.commit()
            return False
    else:
        # SQLModel's Session.execute says Result; an UPDATE gives SQLAlchemy's CursorResult, which has rowcount.
        result = cast(
            "CursorResult[Any]",
            session.execute(
                update(DeepLGlossary)
                .where(
                    col(DeepLGlossary.target_language) == row.target_language,
                    col(DeepLGlossary.glossary_id) == replaces,
                )
                .values(glossary_id=row.glossary_id, entries_sha256=row.entries_sha256, entry_count=row.entry_count,
                        created_at=row.created_at)
                .execution_options(synchronize_session=False)
            ),
        )
        if result.rowcount != 1:
            session.commit()
            return False
    session.commit()
    return True


def configure_deepl_client(timeout_seconds: float) -> None:
    """Set the `deepl` package's module-wide timeout and turn its automatic resends off."""
    # These knobs are module globals of deepl.http_client. Its own resend of a timed-out request
    # would be processed and billed by DeepL again, unseen by our budget: every attempt is the stage's.
    deepl.http_client.max_network_retries = 0
    deepl.http_client.min_connection_timeout = timeout_seconds


def _call(request: Callable[[], T]) -> T:
    """Run a DeepL request, turning every failure into TranslationUnavailable with a short reason."""
    try:
        return request()
    except deepl.DeepLException as exc:
        raise _unavailable(exc) from exc
    except (TypeError, ValueError, KeyError) as exc:  # a malformed reply (e.g. without billed_characters)
        raise TranslationUnavailable(f"DeepL sent an unexpected reply: {exc}", maybe_billed=True) from exc


def _unavailable(exc: deepl.DeepLException) -> TranslationUnavailable:
    if isinstance(exc, deepl.QuotaExceededException):
        return TranslationUnavailable("DeepL 456 quota exceeded")
    if isinstance(exc, deepl.AuthorizationException):
        return TranslationUnavailable("DeepL 403 refused the key")
    if isinstance(exc, deepl.TooManyRequestsException):
        return TranslationUnavailable("DeepL 429 too many requests", retryable=True)
    if isinstance(exc, deepl.ConnectionException):
        return _connection_failure(exc)
    status = exc.http_status_code
    if status is not None:
        return TranslationUnavailable(f"DeepL {status} failed: {exc}", retryable=status >= 500)
    return TranslationUnavailable(f"DeepL failed: {exc}")


def _connection_failure(exc: deepl.ConnectionException) -> TranslationUnavailable:
    """Never connected: unbilled, worth a resend. Sent but no reply: DeepL may have billed it."""
    cause = exc.__cause__
    if isinstance(cause, requests.exceptions.ConnectTimeout) or "Failed to establish a new connection" in str(exc):
        return TranslationUnavailable(f"DeepL unreachable: {exc}", retryable=True)
    if isinstance(cause, requests.exceptions.Timeout):
        return TranslationUnavailable("DeepL timed out", maybe_billed=True, timed_out=True)
    return TranslationUnavailable(f"DeepL reply lost: {exc}", maybe_billed=True, timed_out=True)


def make_translator(settings: Settings) -> DeepLTranslator | None:
    """The configured DeepL translator, or None without a key (digests then go out in English)."""
    if not settings.deepl_auth_key:
        return None
    glossaries = dict(BUNDLED_GLOSSARIES)
    if settings.deepl_glossary_file is not None:
        glossaries["zh"] = settings.deepl_glossary_file
    policy = RequestPolicy(settings.deepl_request_characters, settings.deepl_max_retries,
                           settings.deepl_retry_base_seconds)
    return DeepLTranslator(settings.deepl_auth_key, settings.deepl_server_url, glossaries,
                           timeout_seconds=settings.deepl_timeout_seconds, policy=policy)


def needs_translation(language: str) -> bool:
    """English readers get the original only."""
    return not language.upper().startswith("EN")


BUDGET_REACHED = "daily DeepL character budget reached"


@dataclass
class TranslateResult:
    """What the translate stage did: counts, the day's outcome and the papers its digests show in English."""

    translated: int = 0
    billed_characters: int = 0
    requests: int = 0
    rejected: int = 0
    retries: int = 0
    timeouts: int = 0
    missing: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    # "translated", "nothing to translate", "English-only (DeepL 456 quota exceeded)", ...
    outcome: str = "nothing to translate"
    # Per language, the arXiv IDs of the day's papers shown in English only.
    shown_in_english: dict[str, list[str]] = field(default_factory=dict)
    # "2611.00001 ZH-HANS: <why>; <what the different request gave>"
    rejections: list[str] = field(default_factory=list)


def describe_translation(stats: Mapping[str, object]) -> str:
    """One line for a translate stage's result (a TranslateResult's fields, as stored with the run)."""
    line = str(stats.get("outcome") or ("English-only (" + str(stats["error"]) + ")" if stats.get("error") else "-"))
    english = stats.get("shown_in_english") or {}
    if isinstance(english, Mapping) and english:
        shown = "; ".join(f"{language} {', '.join(ids)}" for language, ids in sorted(english.items()))
        line += f"; shown in English: {shown}"
    return line


def _outcome(result: TranslateResult) -> str:
    english = sum(len(ids) for ids in result.shown_in_english.values())
    if result.error:
        return f"{'partly translated' if result.translated else 'English-only'} ({result.error})"
    if english:
        return f"translated, {english} shown in English (DeepL's translation rejected)"
    return "translated" if result.translated or result.requests else "nothing to translate"


# -- the daily character budget, shared by every process through the database ----------------------


def _usage_row(session: Session, day: dt.date) -> None:
    if session.get(DeepLUsage, day) is not None:
        return
    try:
        with session.begin_nested():
            session.add(DeepLUsage(day=day))
    except IntegrityError:
        pass  # another process created it first
    session.commit()


def reserve_characters(session: Session, day: dt.date, characters: int, budget: int) -> bool:
    """Count `characters` against the day's budget before sending; False (nothing reserved) if they don't fit."""
    _usage_row(session, day)
    # One conditional UPDATE: atomic on SQLite and PostgreSQL, so two runs cannot both take the last characters.
    # SQLModel's Session.execute says Result; an UPDATE gives SQLAlchemy's CursorResult, which has rowcount.
    result = cast(
        "CursorResult[Any]",
        session.execute(
            update(DeepLUsage)
            .where(col(DeepLUsage.day) == day, col(DeepLUsage.committed) + characters <= budget)
            .values(committed=col(DeepLUsage.committed) + characters)
            .execution_options(synchronize_session=False)
        ),
    )
    session.commit()
    return result.rowcount == 1


def settle_characters(session: Session, day: dt.date, reserved: int, billed: int) -> None:
    """Replace a reservation by what DeepL billed (0 when the request failed)."""
    session.execute(
        update(DeepLUsage)
        .where(col(DeepLUsage.day) == day)
        .values(committed=col(DeepLUsage.committed) - reserved + billed, billed=col(DeepLUsage.billed) + billed)
        .execution_options(synchronize_session=False)
    )
    session.commit()


def characters_left(session: Session, day: dt.date, budget: int) -> int:
    """What the day's budget still allows."""
    committed = session.scalar(select(col(DeepLUsage.committed)).where(col(DeepLUsage.day) == day)) or 0
    return max(budget - committed, 0)


def billed_on(session: Session, day: dt.date) -> int:
    """Characters DeepL billed on the UTC calendar day `day`."""
    return int(session.scalar(select(col(DeepLUsage.billed)).where(col(DeepLUsage.day) == day)) or 0)


def billed_in_month(session: Session, day: dt.date) -> int:
    """Characters DeepL billed in the calendar month of `day`."""
    first = day.replace(day=1)
    total = session.scalar(
        select(func.coalesce(func.sum(col(DeepLUsage.billed)), 0)).where(
            col(DeepLUsage.day) >= first, col(DeepLUsage.day) <= day
        )
    )
    return int(total or 0)


# -- what to translate --------------------------------------------------------------------------


@dataclass(frozen=True)
class ProtectedText:
    """A title or abstract as DeepL is sent it: XML with numbered <x> placeholders, and the LaTeX they hide."""

    xml: str
    spans: list[str]


@dataclass(frozen=True)
class SourceText:
    """What DeepL is sent of a paper: plain values, so commits between requests reload nothing."""

    arxiv_id: str
    title: str
    abstract: str

    @cached_property
    def protected(self) -> dict[str, ProtectedText]:
        """Title and abstract as sent, by field name."""
        title, abstract = paper_texts(self)
        return {"title": ProtectedText(*protect_latex(title)), "abstract": ProtectedText(*protect_latex(abstract))}

    @cached_property
    def context(self) -> str:
        """The title as readable text: DeepL's context for the abstract (context is not billed)."""
        return latex_to_unicode(normalize_whitespace(self.title))

    @cached_property
    def size(self) -> int:
        """The characters DeepL bills for the paper, worked out once: planning and reserving need it."""
        return sum(len(text.xml) for text in self.protected.values())


def papers_to_translate(
    session: Session, day: dt.date, backlog_days: int = 0, *, skip_rejected: bool = True
) -> dict[str, list[SourceText]]:
    """Per target language, selected papers without a translation: the day's first, most-read first."""
    # Grouped on the narrow keys first: grouping the joined papers' abstracts as well made
    # PostgreSQL sort a row per selection, hundreds of MB on a large day.
    query = (
        select(
            # label(), not .label(): SQLAlchemy types a mapped column's .label() as Label[Never].
            label("language", col(Subscriber.language)),
            label("arxiv_id", col(Selection.arxiv_id)),
            func.max(col(Selection.day)).label("latest"),
            func.count(func.distinct(col(Selection.subscriber_id))).label("readers"),
        )
        .join(Selection, col(Selection.subscriber_id) == col(Subscriber.id))
        .outerjoin(
            Translation,
            (col(Translation.arxiv_id) == col(Selection.arxiv_id))
            & (col(Translation.language) == col(Subscriber.language)),
        )
        .where(
            col(Subscriber.status) == SubscriberStatus.ACTIVE,  # only papers someone is mailed
            col(Selection.day) <= day,
            col(Selection.day) >= day - dt.timedelta(days=backlog_days),
            col(Translation.arxiv_id).is_(None),
        )
        .group_by(col(Subscriber.language), col(Selection.arxiv_id))
    )
    if skip_rejected:  # a translation DeepL got wrong once is not bought again
        rejected = (col(TranslationRejection.arxiv_id) == col(Selection.arxiv_id)) & (
            col(TranslationRejection.language) == col(Subscriber.language)
        )
        query = query.outerjoin(TranslationRejection, rejected).where(col(TranslationRejection.arxiv_id).is_(None))
    wanted = query.subquery()
    rows = session.execute(
        select(
            wanted.c.language,
            col(Paper.arxiv_id),
            col(Paper.title),
            col(Paper.abstract),
            wanted.c.latest,
            wanted.c.readers,
        ).join(Paper, col(Paper.arxiv_id) == wanted.c.arxiv_id)
    ).all()
    return _by_language(rows, day)


def _by_language(rows: Sequence[Row[*tuple[Any, ...]]], day: dt.date) -> dict[str, list[SourceText]]:
    language_readers: dict[str, int] = {}
    for row in rows:
        language_readers[row.language] = language_readers.get(row.language, 0) + row.readers
    ordered = sorted(rows, key=lambda row: (-language_readers[row.language], row.language, row.latest != day,
                                            -row.readers, row.arxiv_id))
    texts: dict[str, list[SourceText]] = {}
    for row in ordered:
        if needs_translation(row.language):
            texts.setdefault(row.language, []).append(SourceText(row.arxiv_id, row.title, row.abstract))
    return texts


def paper_texts(paper: SourceText | Paper) -> tuple[str, str]:
    """Title and abstract as sent to DeepL, before protection: one line each, accents as letters."""
    # Line breaks from the API are not worth paying for; an accent behind a placeholder cuts its word.
    return resolve_accents(normalize_whitespace(paper.title)), resolve_accents(normalize_whitespace(paper.abstract))


def request_size(paper: SourceText | Paper) -> int:
    """The characters DeepL bills for the paper's title and abstract as we send them."""
    source = paper if isinstance(paper, SourceText) else SourceText(paper.arxiv_id, paper.title, paper.abstract)
    return source.size


# -- planning requests: one paper each, sized in characters -------------------------------------------

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class Part:
    """One text of a request: a paper's title, or its abstract or a run of the abstract's sentences."""

    field: str
    xml: str


def sentences(xml: str) -> list[str]:
    """The sentences of a protected text (placeholders are tags without spaces, so never cut)."""
    return [sentence for sentence in _SENTENCE_END.split(xml) if sentence]


def paper_requests(paper: SourceText, limit: int) -> list[list[Part]]:
    """The paper's title and abstract in requests of at most `limit` characters (longer: cut at sentences)."""
    parts = [Part("title", paper.protected["title"].xml)]
    parts += [Part("abstract", chunk) for chunk in _chunks(paper.protected["abstract"].xml, limit)]
    return _pack(parts, limit)


def _pack(parts: list[Part], limit: int) -> list[list[Part]]:
    """Consecutive parts grouped into requests of at most `limit` characters and MAX_TEXTS_PER_REQUEST texts."""
    requests: list[list[Part]] = [[]]
    for part in parts:
        full = len(requests[-1]) == MAX_TEXTS_PER_REQUEST
        if requests[-1] and (full or sum(len(p.xml) for p in requests[-1]) + len(part.xml) > limit):
            requests.append([])
        requests[-1].append(part)
    return requests


def _chunks(xml: str, limit: int) -> list[str]:
    if len(xml) <= limit:
        return [xml]
    chunks: list[str] = []
    for sentence in sentences(xml):
        if chunks and len(chunks[-1]) + 1 + len(sentence) <= limit:
            chunks[-1] += " " + sentence
        else:
            chunks.append(sentence)
    return chunks


def _halves(parts: list[Part]) -> list[list[Part]] | None:
    """A request cut in two smaller ones (a single text at its middle sentence); None if it cannot be."""
    if len(parts) > 1:
        middle = len(parts) // 2
        return [parts[:middle], parts[middle:]]
    pieces = sentences(parts[0].xml)
    if len(pieces) < 2:
        return None
    middle = len(pieces) // 2
    return [[Part(parts[0].field, " ".join(pieces[:middle]))], [Part(parts[0].field, " ".join(pieces[middle:]))]]


def _join(pieces: Sequence[str], language: str) -> str:
    # Chinese and Japanese sentences follow each other without a space; English ones kept need one.
    joined = ""
    for piece in pieces:
        tight = language.upper().startswith(("ZH", "JA")) and not (joined[-1:].isascii() or piece[:1].isascii())
        joined += piece if not joined or tight else " " + piece
    return joined


# -- sending: every attempt counted against the day's budget before it goes --------------------------


class _BudgetReached(Exception):
    pass


@dataclass
class _Sender:
    """One language's requests: each attempt reserved first, refused ones resent, timed-out ones once, smaller."""

    session: Session
    translator: Translator
    language: str
    budget: int
    today: dt.date
    result: TranslateResult
    request_characters: int

    def send(self, parts: list[Part], context: str) -> list[str]:
        """The parts' translated XML; a request that timed out is cut in halves and sent once more."""
        try:
            return self._attempts(parts, context)
        except TranslationUnavailable as exc:
            halves = _halves(parts) if exc.timed_out else None
            if halves is None:
                raise
        self.result.timeouts += 1
        # DeepL is slower than the requests were sized for: the rest of the run asks for less at a time.
        self.request_characters = max(self.request_characters // 2, 200)
        log.warning("DeepL timed out on %d characters; sending them once more in two requests",
                    sum(len(part.xml) for part in parts))
        try:
            return [text for half in halves for text in self._attempts(half, context)]
        except TranslationUnavailable as exc:
            if not exc.timed_out:
                raise
            raise TranslationUnavailable("DeepL timed out twice, on smaller requests too", maybe_billed=True) from exc

    def _attempts(self, parts: list[Part], context: str) -> list[str]:
        policy = self.translator.policy
        for attempt in range(policy.max_retries + 1):
            if attempt:
                self.result.retries += 1
                time.sleep(policy.retry_base_seconds * 2 ** (attempt - 1))
            try:
                return self._attempt(parts, context)
            except TranslationUnavailable as exc:
                if not exc.retryable or attempt == policy.max_retries:
                    raise
                log.info("resending a request DeepL refused: %s", exc)
        raise AssertionError("unreachable")

    def _attempt(self, parts: list[Part], context: str) -> list[str]:
        characters = sum(len(part.xml) for part in parts)
        if not reserve_characters(self.session, self.today, characters, self.budget):
            raise _BudgetReached
        try:
            batch = self.translator.translate([part.xml for part in parts], self.language, context)
        except TranslationUnavailable as exc:
            # After a timeout or a garbled reply DeepL may have billed it all: the reservation stands.
            self._settle(characters, characters if exc.maybe_billed else 0)
            raise
        except Exception:
            self._settle(characters, characters)
            raise
        self._settle(characters, batch.billed_characters)
        return batch.texts

    def _settle(self, reserved: int, billed: int) -> None:
        settle_characters(self.session, self.today, reserved, billed)
        self.result.billed_characters += billed
        self.result.requests += 1


# -- the stage ------------------------------------------------------------------------------------


def translate_selected(
    session: Session,
    day: dt.date,
    translator: Translator | None,
    character_budget: int,
    today: dt.date | None = None,
) -> TranslateResult:
    """Translate the day's selected, untranslated papers (then recent leftovers) within the daily budget."""
    result = TranslateResult()
    wanted = papers_to_translate(session, day, BACKLOG_DAYS)
    if translator is None:
        result.error = "no DeepL key configured" if wanted else None
    elif wanted:
        today = today or dt.datetime.now(dt.UTC).date()
        try:
            for language, papers in wanted.items():
                if isinstance(translator, GlossaryTranslator):
                    translator.prepare(session, language)
                if not _translate_language(session, translator, language, papers, character_budget, today, result):
                    break
        except TranslationUnavailable as exc:
            log.warning("translation stopped: %s", exc)
            result.error = str(exc)
        except Exception as exc:  # a fault in translation must never hold back the digests
            log.exception("translation failed")
            session.rollback()
            result.error = f"translation failed: {type(exc).__name__}: {exc}"
    english = papers_to_translate(session, day, skip_rejected=False)
    result.missing = {language: len(papers) for language, papers in english.items()}
    result.shown_in_english = {language: sorted(p.arxiv_id for p in papers) for language, papers in english.items()}
    result.outcome = _outcome(result)
    return result


def _translate_language(
    session: Session,
    translator: Translator,
    language: str,
    papers: list[SourceText],
    budget: int,
    today: dt.date,
    result: TranslateResult,
) -> bool:
    """Translate one language's papers, one request each; False when the budget ran out."""
    sender = _Sender(session, translator, language, budget, today, result, translator.policy.request_characters)
    for paper in papers:
        try:
            _translate_paper(sender, paper)
        except _BudgetReached:
            result.error = BUDGET_REACHED
            return False
    return True


def _translate_paper(sender: _Sender, paper: SourceText) -> None:
    billed_before = sender.result.billed_characters
    translated = [
        (part, text)
        for request in paper_requests(paper, sender.request_characters)
        for part, text in zip(request, sender.send(request, paper.context), strict=True)
    ]
    texts, reasons = _assemble(paper, translated, sender.language)
    if reasons:
        kept, fallback = _after_rejection(sender, paper, texts, reasons)
        billed = sender.result.billed_characters - billed_before
        _record_rejection(sender.session, paper, sender.language, "; ".join(reasons.values()), fallback, billed)
        sender.result.rejections.append(f"{paper.arxiv_id} {sender.language}: {'; '.join(reasons.values())}; "
                                        f"{fallback}")
        if kept is None:
            sender.result.rejected += 1
            return
        texts = kept
    billed = sender.result.billed_characters - billed_before
    source = "deepl-partial" if reasons else "deepl"
    _store_translation(sender.session, paper, sender.language, texts, billed, source, sender.result)


def _assemble(
    paper: SourceText, translated: list[tuple[Part, str]], language: str
) -> tuple[dict[str, str], dict[str, str]]:
    """The translated fields with their LaTeX put back, and why each unusable one was rejected."""
    texts: dict[str, str] = {}
    reasons: dict[str, str] = {}
    for name, protected in paper.protected.items():
        xml = _join([text for part, text in translated if part.field == name], language)
        try:
            texts[name] = restore_latex(xml, protected.spans)
        except LatexLost as exc:
            reasons[name] = f"{name}: LaTeX placeholders lost or changed ({exc})"
        except Exception as exc:  # noqa: BLE001 - one unreadable reply never costs the run
            reasons[name] = f"{name}: unreadable reply ({type(exc).__name__}: {exc})"
    return texts, reasons


def _after_rejection(
    sender: _Sender, paper: SourceText, texts: dict[str, str], reasons: dict[str, str]
) -> tuple[dict[str, str] | None, str]:
    """One different request: the sentences without math sent alone, the formula sentences kept in English."""
    log.warning("%s: translation to %s rejected (%s)", paper.arxiv_id, sender.language, "; ".join(reasons.values()))
    plan = {name: _runs_without_math(paper.protected[name].xml) for name in reasons}
    to_send = [Part(name, run) for name, runs in plan.items() for run in runs if not PLACEHOLDER.search(run)]
    if not to_send:
        return None, "nothing else to send: every sentence holds math; shown in English"
    try:
        replies = iter([text for request in _pack(to_send, sender.request_characters)
                        for text in sender.send(request, paper.context)])
    except _BudgetReached:
        return None, f"the different request was not sent ({BUDGET_REACHED}); shown in English"
    except TranslationUnavailable as exc:  # recorded all the same: the first reply was bought and unusable
        return None, f"the different request failed ({exc}); shown in English"
    kept = 0
    fixed = dict(texts)
    try:
        for name, runs in plan.items():
            out = []
            for run in runs:
                if PLACEHOLDER.search(run):
                    out.append(fill_placeholders(run, paper.protected[name].spans))
                    kept += 1
                else:
                    out.append(restore_latex(next(replies), []))
            fixed[name] = _join(out, sender.language)
    except LatexLost as exc:
        return None, f"the sentences without math came back unusable too ({exc}); shown in English"
    return fixed, f"sentences without math translated, {kept} with math kept in English"


def _runs_without_math(xml: str) -> list[str]:
    """The text's sentences, each with math alone, consecutive ones without math joined into one run."""
    runs: list[str] = []
    for sentence in sentences(xml):
        joinable = runs and not PLACEHOLDER.search(sentence) and not PLACEHOLDER.search(runs[-1])
        if joinable:
            runs[-1] += " " + sentence
        else:
            runs.append(sentence)
    return runs




def _store_translation(
    session: Session, paper: SourceText, language: str, texts: dict[str, str], billed: int, source: str,
    result: TranslateResult,
) -> None:
    # Each paper's translation is committed on its own, so billed work survives a later failure.
    row = Translation(arxiv_id=paper.arxiv_id, language=language, title=texts["title"], abstract=texts["abstract"],
                      billed_characters=billed, source=source)
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:  # a run of the same day in another process stored it first
        session.commit()
        return
    session.commit()
    result.translated += 1


def _record_rejection(
    session: Session, paper: SourceText, language: str, reason: str, fallback: str, billed: int
) -> None:
    row = TranslationRejection(arxiv_id=paper.arxiv_id, language=language, reason=reason, fallback=fallback,
                               billed_characters=billed)
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:  # another process recorded the same rejection first
        pass
    session.commit()


def store_cached_translations(session: Session, language: str, entries: dict[str, dict[str, str]]) -> int:
    """Load prepared translations (the bundled sample's cache) for stored papers; returns how many."""
    stored = 0
    for arxiv_id, entry in entries.items():
        if session.get(Paper, arxiv_id) is None or session.get(Translation, (arxiv_id, language)) is not None:
            continue
        session.add(
            Translation(
                arxiv_id=arxiv_id, language=language, title=entry["title"], abstract=entry["abstract"], source="cache"
            )
        )
        stored += 1
    session.flush()
    return stored


def deepl_status_lines(session: Session, settings: Settings, today: dt.date | None = None) -> list[str]:
    """`newsletter status` lines: characters billed today and this month, budget, and DeepL's own count."""
    today = today or dt.datetime.now(dt.UTC).date()
    budget = settings.deepl_daily_character_budget
    lines = [
        f"DeepL characters billed: today {billed_on(session, today)} (budget {budget}, "
        f"{characters_left(session, today, budget)} left), this month {billed_in_month(session, today)}"
    ]
    lines += translation_outcome_lines(session)
    translator = make_translator(settings)
    if translator is None:
        lines.append("DeepL account: no key configured (NEWSLETTER_DEEPL_AUTH_KEY); digests go out in English")
        return lines
    try:
        count, limit = translator.usage()
    except TranslationUnavailable as exc:
        lines.append(f"DeepL account: usage unavailable ({exc})")
    else:
        lines.append(f"DeepL account: {count} of {limit if limit is not None else 'unlimited'} characters this period")
    return lines


def translation_outcome_lines(session: Session, days: int = 3, rejections_shown: int = 5) -> list[str]:
    """Per recent run, the translate stage's outcome and the papers shown in English; then recorded rejections."""
    lines = []
    recorded = session.execute(
        select(col(Run.day), col(RunStage.details))
        .join(RunStage, col(RunStage.run_id) == col(Run.id))
        .where(col(RunStage.stage) == Stage.TRANSLATE)
        .order_by(col(Run.day).desc())
        .limit(days)
    )
    for day, details in recorded:
        if isinstance(details, Mapping):
            lines.append(f"translation {day}: {describe_translation(details)}")
    rejected = session.scalars(
        select(TranslationRejection).order_by(col(TranslationRejection.rejected_at).desc()).limit(rejections_shown)
    ).all()
    if rejected:
        total = session.scalar(select(func.count()).select_from(TranslationRejection))
        lines.append(f"DeepL translations rejected, not bought again: {total}; latest: " + " | ".join(
            f"{row.arxiv_id} {row.language} ({row.reason}; {row.fallback})" for row in rejected
        ))
    return lines
