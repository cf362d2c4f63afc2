"""Translate: each selected paper once per language, through DeepL, cached in SQL."""

from __future__ import annotations

import datetime as dt
import html
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import deepl
from sqlalchemy import func, select
from sqlmodel import Session

from newsletter.latex import PROTECT_TAG, latex_spans, protect_latex
from newsletter.models import Paper, Run, Selection, Subscriber, Translation

log = logging.getLogger(__name__)

# DeepL takes at most 50 texts and 128 KiB per request; stay under both.
_MAX_TEXTS_PER_REQUEST = 50
_MAX_REQUEST_CHARACTERS = 100_000


class TranslationUnavailable(Exception):
    """DeepL cannot translate now (no key, bad key, quota, unreachable); digests go out in English."""


@dataclass
class TranslatedBatch:
    texts: list[str]
    billed_characters: int


class Translator(Protocol):
    def translate(self, texts: Sequence[str], target_language: str) -> TranslatedBatch: ...


class DeepLTranslator:
    """The DeepL API through the `deepl` package, math protected by an ignored XML tag."""

    def __init__(self, auth_key: str, server_url: str | None = None) -> None:
        self.client = deepl.DeepLClient(auth_key, server_url=server_url)

    def translate(self, texts: Sequence[str], target_language: str) -> TranslatedBatch:
        try:
            results = self.client.translate_text(
                [protect_latex(text) for text in texts],
                source_lang="EN",
                target_lang=target_language,
                tag_handling="xml",
                ignore_tags=[PROTECT_TAG],
            )
        except (deepl.AuthorizationException, deepl.QuotaExceededException) as exc:
            raise TranslationUnavailable(f"DeepL refused: {exc}") from exc
        except deepl.DeepLException as exc:
            raise TranslationUnavailable(f"DeepL failed: {exc}") from exc
        if not isinstance(results, list):
            results = [results]
        translated = [unprotect_latex(result.text) for result in results]
        for source, target in zip(texts, translated, strict=True):
            if latex_spans(source) != latex_spans(target):
                log.warning("translation changed LaTeX spans; keeping it with the original math")
        return TranslatedBatch(
            texts=translated,
            billed_characters=sum(result.billed_characters or 0 for result in results),
        )


def unprotect_latex(text: str) -> str:
    """The translated text with the protecting tags removed and XML entities decoded."""
    return html.unescape(re.sub(rf"</?{PROTECT_TAG}>", "", text))


def needs_translation(language: str) -> bool:
    """English readers get the original only."""
    return not language.upper().startswith("EN")


@dataclass
class TranslateResult:
    translated: int = 0
    billed_characters: int = 0
    missing: dict[str, int] = field(default_factory=dict)
    error: str | None = None


def billed_on(session: Session, day: dt.date) -> int:
    """Characters billed by runs started on the calendar day `day` (UTC)."""
    start = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
    total = session.scalar(
        select(func.coalesce(func.sum(Run.billed_characters), 0)).where(
            Run.started_at >= start, Run.started_at < start + dt.timedelta(days=1)
        )
    )
    return int(total or 0)


def papers_to_translate(session: Session, day: dt.date) -> dict[str, list[Paper]]:
    """Per target language, the day's selected papers that have no translation yet."""
    rows = session.execute(
        select(Subscriber.language, Paper)
        .join(Selection, Selection.subscriber_id == Subscriber.id)
        .join(Paper, Paper.arxiv_id == Selection.arxiv_id)
        .outerjoin(
            Translation,
            (Translation.arxiv_id == Paper.arxiv_id) & (Translation.language == Subscriber.language),
        )
        .where(Selection.day == day, Translation.arxiv_id.is_(None))
        .distinct()
        .order_by(Subscriber.language, Paper.arxiv_id)
    )
    wanted: dict[str, list[Paper]] = {}
    for language, paper in rows:
        if needs_translation(language):
            wanted.setdefault(language, []).append(paper)
    return wanted


def translate_selected(
    session: Session, day: dt.date, translator: Translator | None, character_budget: int
) -> TranslateResult:
    """Translate the day's selected, untranslated papers within the budget (caller commits)."""
    result = TranslateResult()
    wanted = papers_to_translate(session, day)
    if translator is None:
        result.missing = {language: len(papers) for language, papers in wanted.items()}
        if wanted:
            result.error = "no DeepL key configured"
        return result
    budget_left = character_budget - billed_on(session, dt.datetime.now(dt.UTC).date())
    for language, papers in wanted.items():
        for chunk in _chunks(papers):
            cost = sum(len(p.title) + len(p.abstract) for p in chunk)
            if cost > budget_left:
                result.error = "daily DeepL character budget reached"
                break
            try:
                batch = translator.translate(
                    [text for paper in chunk for text in (paper.title, paper.abstract)], language
                )
            except TranslationUnavailable as exc:
                result.error = str(exc)
                break
            budget_left -= batch.billed_characters
            result.billed_characters += batch.billed_characters
            for index, paper in enumerate(chunk):
                session.add(
                    Translation(
                        arxiv_id=paper.arxiv_id,
                        language=language,
                        title=batch.texts[2 * index],
                        abstract=batch.texts[2 * index + 1],
                        billed_characters=len(paper.title) + len(paper.abstract),
                    )
                )
            result.translated += len(chunk)
            # Each chunk is committed on its own so billed work survives a later failure.
            session.commit()
        if result.error:
            break
    remaining = papers_to_translate(session, day)
    result.missing = {language: len(papers) for language, papers in remaining.items()}
    return result


def _chunks(papers: list[Paper]) -> list[list[Paper]]:
    chunks: list[list[Paper]] = [[]]
    size = 0
    for paper in papers:
        cost = len(paper.title) + len(paper.abstract)
        if chunks[-1] and (
            len(chunks[-1]) * 2 + 2 > _MAX_TEXTS_PER_REQUEST or size + cost > _MAX_REQUEST_CHARACTERS
        ):
            chunks.append([])
            size = 0
        chunks[-1].append(paper)
        size += cost
    return [chunk for chunk in chunks if chunk]


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
