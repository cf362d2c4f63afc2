"""Translate: each selected paper once per language, through DeepL, cached in SQL, within a daily budget."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Protocol, TypeVar, runtime_checkable

import deepl
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from newsletter.config import Settings
from newsletter.latex import PROTECT_TAG, LatexLost, normalize_whitespace, protect_latex, restore_latex
from newsletter.models import (
    DeepLGlossary,
    DeepLUsage,
    Paper,
    Selection,
    Subscriber,
    SubscriberStatus,
    Translation,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

# DeepL takes at most 50 texts and 128 KiB per request body; stay under both.
MAX_TEXTS_PER_REQUEST = 50
MAX_REQUEST_BYTES = 100_000
# Papers selected this many days back that are still untranslated are retried after today's.
BACKLOG_DAYS = 7
BUNDLED_GLOSSARIES = {"zh": Path(__file__).resolve().parent / "glossary" / "ml_en_zh.tsv"}
# A Simplified Chinese glossary must not be applied to Traditional Chinese.
_GLOSSARY_TARGETS = {"ZH": "zh", "ZH-HANS": "zh"}


class TranslationUnavailable(Exception):
    """DeepL cannot translate now (bad key, quota, unreachable, failing); digests go out in English."""


class GlossaryError(ValueError):
    """The glossary file cannot be read as `english<TAB>translation` lines."""


@dataclass
class TranslatedBatch:
    # None where the translation lost protected LaTeX and was rejected.
    texts: list[str | None]
    billed_characters: int


class Translator(Protocol):
    def translate(self, texts: Sequence[str], target_language: str) -> TranslatedBatch: ...


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
    """The DeepL API through the `deepl` package: math protected by placeholders in an ignored tag."""

    def __init__(
        self, auth_key: str, server_url: str | None = None, glossary_files: dict[str, Path] | None = None
    ) -> None:
        self.client = deepl.DeepLClient(auth_key, server_url=server_url)
        self.glossary_files = BUNDLED_GLOSSARIES if glossary_files is None else glossary_files
        self._glossary_ids: dict[str, str | None] = {}

    def translate(self, texts: Sequence[str], target_language: str) -> TranslatedBatch:
        """Translate in one request; texts whose LaTeX placeholders came back wrong are None."""
        protected = [protect_latex(text) for text in texts]
        language = target_language.upper()
        xml = [text for text, _ in protected]
        try:
            results = _call(lambda: self._send(xml, target_language, self._glossary_ids.get(language)))
        except TranslationUnavailable as exc:
            # A glossary DeepL no longer accepts must not cost the day's translations: go on without it.
            if not self._glossary_ids.get(language) or not _refuses_glossary(exc.__cause__):
                raise
            log.warning("DeepL refused the glossary (%s); translating without it", exc.__cause__)
            self._glossary_ids[language] = None
            results = _call(lambda: self._send(xml, target_language, None))
        if not isinstance(results, list):
            results = [results]
        if len(results) != len(texts):
            raise TranslationUnavailable(f"DeepL answered {len(results)} texts for {len(texts)} sent")
        translated: list[str | None] = []
        for (_, spans), result in zip(protected, results, strict=True):
            try:
                translated.append(restore_latex(result.text, spans))
            except LatexLost as exc:
                log.warning("rejected a translation that lost its LaTeX: %s", exc)
                translated.append(None)
            except Exception as exc:  # noqa: BLE001 - one unreadable reply never costs the batch
                log.warning("rejected a translation that could not be read: %s: %s", type(exc).__name__, exc)
                translated.append(None)
        return TranslatedBatch(texts=translated, billed_characters=sum(r.billed_characters or 0 for r in results))

    def _send(self, xml: list[str], target_language: str, glossary_id: str | None):  # type: ignore[no-untyped-def]
        return self.client.translate_text(
            xml,
            source_lang="EN",
            target_lang=target_language,
            tag_handling="xml",
            ignore_tags=[PROTECT_TAG],
            glossary=glossary_id,
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
        result = session.execute(
            update(DeepLGlossary)
            .where(DeepLGlossary.target_language == row.target_language, DeepLGlossary.glossary_id == replaces)
            .values(glossary_id=row.glossary_id, entries_sha256=row.entries_sha256, entry_count=row.entry_count,
                    created_at=row.created_at)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            session.commit()
            return False
    session.commit()
    return True


def _call(request: Callable[[], T]) -> T:
    """Run a DeepL request, turning every failure into TranslationUnavailable with a short reason."""
    try:
        return request()
    except deepl.DeepLException as exc:
        raise _unavailable(exc) from exc
    except (TypeError, ValueError, KeyError) as exc:  # a malformed reply (e.g. without billed_characters)
        raise TranslationUnavailable(f"DeepL sent an unexpected reply: {exc}") from exc


def _unavailable(exc: deepl.DeepLException) -> TranslationUnavailable:
    if isinstance(exc, deepl.QuotaExceededException):
        return TranslationUnavailable("DeepL quota exceeded")
    if isinstance(exc, deepl.AuthorizationException):
        return TranslationUnavailable("DeepL refused the key")
    if isinstance(exc, deepl.ConnectionException):
        return TranslationUnavailable(f"DeepL unreachable: {exc}")
    if isinstance(exc, deepl.TooManyRequestsException):
        return TranslationUnavailable("DeepL kept answering 'too many requests'")
    return TranslationUnavailable(f"DeepL failed: {exc}")


def make_translator(settings: Settings) -> DeepLTranslator | None:
    """The configured DeepL translator, or None without a key (digests then go out in English)."""
    if not settings.deepl_auth_key:
        return None
    glossaries = dict(BUNDLED_GLOSSARIES)
    if settings.deepl_glossary_file is not None:
        glossaries["zh"] = settings.deepl_glossary_file
    return DeepLTranslator(settings.deepl_auth_key, settings.deepl_server_url, glossaries)


def needs_translation(language: str) -> bool:
    """English readers get the original only."""
    return not language.upper().startswith("EN")


@dataclass
class TranslateResult:
    translated: int = 0
    billed_characters: int = 0
    requests: int = 0
    rejected: int = 0
    missing: dict[str, int] = field(default_factory=dict)
    error: str | None = None


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
    result = session.execute(
        update(DeepLUsage)
        .where(DeepLUsage.day == day, DeepLUsage.committed + characters <= budget)
        .values(committed=DeepLUsage.committed + characters)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return result.rowcount == 1  # type: ignore[attr-defined]


def settle_characters(session: Session, day: dt.date, reserved: int, billed: int) -> None:
    """Replace a reservation by what DeepL billed (0 when the request failed)."""
    session.execute(
        update(DeepLUsage)
        .where(DeepLUsage.day == day)
        .values(committed=DeepLUsage.committed - reserved + billed, billed=DeepLUsage.billed + billed)
        .execution_options(synchronize_session=False)
    )
    session.commit()


def characters_left(session: Session, day: dt.date, budget: int) -> int:
    """What the day's budget still allows."""
    committed = session.scalar(select(DeepLUsage.committed).where(DeepLUsage.day == day)) or 0
    return max(budget - committed, 0)


def billed_on(session: Session, day: dt.date) -> int:
    """Characters DeepL billed on the UTC calendar day `day`."""
    return int(session.scalar(select(DeepLUsage.billed).where(DeepLUsage.day == day)) or 0)


def billed_in_month(session: Session, day: dt.date) -> int:
    """Characters DeepL billed in the calendar month of `day`."""
    first = day.replace(day=1)
    total = session.scalar(
        select(func.coalesce(func.sum(DeepLUsage.billed), 0)).where(DeepLUsage.day >= first, DeepLUsage.day <= day)
    )
    return int(total or 0)


# -- what to translate --------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceText:
    """What DeepL is sent of a paper: plain values, so commits between requests reload nothing."""

    arxiv_id: str
    title: str
    abstract: str

    @cached_property
    def size(self) -> int:
        """request_size, worked out once: batching, reserving and storing each need it."""
        return request_size(self)


def papers_to_translate(session: Session, day: dt.date, backlog_days: int = 0) -> dict[str, list[SourceText]]:
    """Per target language, selected papers without a translation: the day's first, most-read first."""
    # Grouped on the narrow keys first: grouping the joined papers' abstracts as well made
    # PostgreSQL sort a row per selection, hundreds of MB on a large day.
    wanted = (
        select(
            Subscriber.language.label("language"),
            Selection.arxiv_id.label("arxiv_id"),
            func.max(Selection.day).label("latest"),
            func.count(func.distinct(Selection.subscriber_id)).label("readers"),
        )
        .join(Selection, Selection.subscriber_id == Subscriber.id)
        .outerjoin(
            Translation,
            (Translation.arxiv_id == Selection.arxiv_id) & (Translation.language == Subscriber.language),
        )
        .where(
            Subscriber.status == SubscriberStatus.ACTIVE,  # only papers someone is mailed
            Selection.day <= day,
            Selection.day >= day - dt.timedelta(days=backlog_days),
            Translation.arxiv_id.is_(None),
        )
        .group_by(Subscriber.language, Selection.arxiv_id)
        .subquery()
    )
    rows = session.execute(
        select(wanted.c.language, Paper.arxiv_id, Paper.title, Paper.abstract, wanted.c.latest, wanted.c.readers)
        .join(Paper, Paper.arxiv_id == wanted.c.arxiv_id)
    ).all()
    language_readers: dict[str, int] = {}
    for row in rows:
        language_readers[row.language] = language_readers.get(row.language, 0) + row.readers
    rows.sort(key=lambda row: (-language_readers[row.language], row.language, row.latest != day, -row.readers,
                               row.arxiv_id))
    texts: dict[str, list[SourceText]] = {}
    for row in rows:
        if needs_translation(row.language):
            texts.setdefault(row.language, []).append(SourceText(row.arxiv_id, row.title, row.abstract))
    return texts


def paper_texts(paper: SourceText | Paper) -> tuple[str, str]:
    """Title and abstract as sent to DeepL (line breaks from the API are not worth paying for)."""
    return normalize_whitespace(paper.title), normalize_whitespace(paper.abstract)


def protected_texts(paper: SourceText | Paper) -> list[str]:
    """Title and abstract exactly as the request carries them (LaTeX as placeholders, XML-escaped)."""
    return [protect_latex(text)[0] for text in paper_texts(paper)]


def request_size(paper: SourceText | Paper) -> int:
    """The bytes the paper adds to a JSON request body, and an upper bound of the characters DeepL bills for it."""
    # json.dumps as the client sends it: non-ASCII as \uXXXX, so never shorter than the text itself.
    return sum(len(json.dumps(text)) + 2 for text in protected_texts(paper))


def request_batches(papers: list[SourceText]) -> list[list[SourceText]]:
    """Papers grouped into requests of at most MAX_TEXTS_PER_REQUEST texts and MAX_REQUEST_BYTES."""
    batches: list[list[SourceText]] = []
    size = 0
    for paper in papers:
        cost = paper.size
        if not batches or len(batches[-1]) * 2 + 2 > MAX_TEXTS_PER_REQUEST or size + cost > MAX_REQUEST_BYTES:
            batches.append([])
            size = 0
        batches[-1].append(paper)
        size += cost
    return batches


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
    if not wanted:
        return result
    if translator is None:
        result.error = "no DeepL key configured"
    else:
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
    remaining = papers_to_translate(session, day)
    result.missing = {language: len(papers) for language, papers in remaining.items()}
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
    """Translate one language's papers batch by batch; False when the budget ran out."""
    for batch in request_batches(papers):
        reserved = sum(paper.size for paper in batch)
        while not reserve_characters(session, today, reserved, budget):
            left = characters_left(session, today, budget)
            batch = _prefix_within(batch, left)
            if not batch:
                result.error = "daily DeepL character budget reached"
                return False
            reserved = sum(paper.size for paper in batch)
        texts = [text for paper in batch for text in paper_texts(paper)]
        try:
            translated = translator.translate(texts, language)
        except Exception as exc:
            settle_characters(session, today, reserved, 0 if _surely_unbilled(exc) else reserved)
            raise
        settle_characters(session, today, reserved, translated.billed_characters)
        result.requests += 1
        result.billed_characters += translated.billed_characters
        _store(session, language, batch, translated, result)
    return True


def _surely_unbilled(exc: BaseException) -> bool:
    """DeepL refused the request or was never reached; after a timeout or a garbled reply, assume it billed."""
    cause = exc.__cause__
    if not isinstance(cause, deepl.DeepLException):
        return False
    return cause.http_status_code is not None or "Failed to establish a new connection" in str(cause)


def _prefix_within(batch: list[SourceText], characters: int) -> list[SourceText]:
    kept: list[SourceText] = []
    for paper in batch:
        characters -= paper.size
        if characters < 0:
            break
        kept.append(paper)
    return kept


def _store(
    session: Session, language: str, batch: list[SourceText], translated: TranslatedBatch, result: TranslateResult
) -> None:
    sizes = [paper.size for paper in batch]
    rows: list[dict] = []
    for index, paper in enumerate(batch):
        title, abstract = translated.texts[2 * index], translated.texts[2 * index + 1]
        if title is None or abstract is None:
            log.warning("%s: translation to %s rejected; the paper is shown in English", paper.arxiv_id, language)
            result.rejected += 1
            continue
        share = translated.billed_characters * sizes[index] // max(sum(sizes), 1)
        rows.append(dict(arxiv_id=paper.arxiv_id, language=language, title=title, abstract=abstract,
                         billed_characters=share))
    # Each request's translations are committed on their own, so billed work survives a later failure.
    try:
        session.add_all(Translation(**row) for row in rows)
        session.commit()
        result.translated += len(rows)
        return
    except IntegrityError:
        session.rollback()
    # A run of the same day in another process stored some of them first: keep the rest, one by one.
    for row in rows:
        try:
            with session.begin_nested():
                session.add(Translation(**row))
        except IntegrityError:
            continue
        result.translated += 1
    session.commit()


def store_cached_translations(session: Session, language: str, entries: dict[str, dict[str, str]]) -> int:
    """Load prepared translations (the bundled sample's cache) for stored papers; returns how many."""
    stored = 0
    for arxiv_id, entry in entries.items():
        if session.get(Paper, arxiv_id) is None or session.get(Translation, (arxiv_id, language)):
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
