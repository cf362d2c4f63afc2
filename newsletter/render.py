"""Render: the digest template is compiled (MJML) and inlined (premailer) once, then filled per subscriber."""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from urllib.parse import unquote
from zoneinfo import ZoneInfo

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from markupsafe import Markup, escape
from mjml import mjml2html
from premailer import Premailer
from sqlalchemy import select
from sqlmodel import Session

from newsletter.config import TEMPLATES_DIR
from newsletter.keywords import highlight_spans
from newsletter.latex import latex_to_unicode
from newsletter.models import Paper, Selection, Subscriber, SubscriberKeyword, Translation
from newsletter.tokens import SubscriberLinks

# Gmail clips an HTML part above 102 KB; keep a margin for headers and transfer encoding.
HTML_SIZE_LIMIT = 100_000
AUTHORS_SHOWN = 8
EASTERN = ZoneInfo("America/New_York")

CATEGORY_NAMES = {
    "cs.AI": "Artificial Intelligence", "cs.CL": "Computation and Language",
    "cs.CV": "Computer Vision and Pattern Recognition", "cs.LG": "Machine Learning",
    "cs.RO": "Robotics", "stat.ML": "Machine Learning (stat)", "cs.NE": "Neural and Evolutionary Computing",
    "cs.IR": "Information Retrieval", "cs.SE": "Software Engineering", "cs.CR": "Cryptography and Security",
    "cs.HC": "Human-Computer Interaction", "cs.MA": "Multiagent Systems", "cs.SY": "Systems and Control",
    "eess.SY": "Systems and Control", "cs.DC": "Distributed, Parallel, and Cluster Computing",
    "cs.DS": "Data Structures and Algorithms", "cs.GT": "Computer Science and Game Theory",
    "cs.IT": "Information Theory", "cs.PL": "Programming Languages", "cs.LO": "Logic in Computer Science",
    "cs.NI": "Networking and Internet Architecture", "cs.SD": "Sound", "eess.AS": "Audio and Speech Processing",
    "eess.IV": "Image and Video Processing", "eess.SP": "Signal Processing", "math.OC": "Optimization and Control",
    "stat.ME": "Methodology", "stat.TH": "Statistics Theory", "q-bio.NC": "Neurons and Cognition",
}

LABELS = {
    "en": {
        "heading": "arXiv digest for {day}", "announced": "Announced {eastern} (US Eastern), {local} ({tz})",
        "count": "{count} new papers for you today", "count_one": "1 new paper for you today",
        "subject": "arXiv digest {day}: {count} papers", "keyword": "Keyword", "papers": "{count} papers",
        "no_result": "No new paper matched this keyword today.", "authors": "Authors",
        "subjects": "Subjects", "comment": "Comment", "abstract": "Abstract",
        "abstract_translated": "Abstract (translated)", "et_al": "et al.",
        "manage": "Manage preferences", "unsubscribe": "Unsubscribe", "view_in_browser": "View in browser",
        "more_papers": "More papers, by title (the email would be too long to show them in full):",
        "full_digest": "Full digest on the web",
        "why": "You receive this because you subscribed to the arXiv digest with these keywords.",
        "translation_note": (
            "Translation was not available today; the papers are shown in English "
            "and will be translated in a later digest."
        ),
        "preheader": "{count} new papers: {keywords}",
    },
    "zh": {
        "heading": "arXiv 每日速递 {day}", "announced": "arXiv 发布时间: {eastern} (美东), {local} ({tz})",
        "count": "今天共有 {count} 篇相关文章", "count_one": "今天共有 1 篇相关文章",
        "subject": "arXiv 每日速递 {day}: {count} 篇新论文", "keyword": "关键词", "papers": "{count} 篇",
        "no_result": "今天没有与此关键词匹配的新论文。", "authors": "作者", "subjects": "学科",
        "comment": "备注", "abstract": "英文摘要", "abstract_translated": "中文摘要", "et_al": "等",
        "manage": "管理订阅", "unsubscribe": "退订", "view_in_browser": "在浏览器中查看",
        "more_papers": "更多论文(邮件篇幅有限,仅列标题):", "full_digest": "网页版完整内容",
        "why": "您收到此邮件,是因为您用这些关键词订阅了 arXiv 每日速递。",
        "translation_note": "今天暂时无法翻译,论文以英文显示,翻译将在之后的邮件中补上。",
        "preheader": "{count} 篇新论文: {keywords}",
    },
}


def labels_for(language: str) -> dict[str, str]:
    """Interface strings in the subscriber's language (Chinese variants share one set)."""
    return LABELS["zh"] if language.upper().startswith("ZH") else LABELS["en"]


@dataclass
class PaperView:
    arxiv_id: str
    version: int
    title: str
    title_html: Markup
    title_text: str
    title_translated: str | None
    authors_text: str
    authors_more: bool
    subjects: str
    comment: str | None
    abstract_html: Markup
    abstract_text: str
    abstract_translated: str | None

    @property
    def abs_url(self) -> str:
        return f"https://arxiv.org/abs/{self.arxiv_id}"

    @property
    def pdf_url(self) -> str:
        return f"https://arxiv.org/pdf/{self.arxiv_id}"

    @property
    def html_url(self) -> str:
        return f"https://arxiv.org/html/{self.arxiv_id}v{self.version}"


@dataclass
class KeywordSection:
    keyword: str
    papers: list[PaperView] = field(default_factory=list)
    overflow: list[PaperView] = field(default_factory=list)
    count_text: str = ""


@dataclass
class Digest:
    """Everything one subscriber's email for one day shows."""

    day: dt.date
    email: str
    language: str
    timezone: str
    sections: list[KeywordSection]
    links: SubscriberLinks
    translation_missing: bool = False

    @property
    def paper_count(self) -> int:
        return sum(len(s.papers) + len(s.overflow) for s in self.sections)

    @property
    def arxiv_ids(self) -> list[str]:
        return [p.arxiv_id for s in self.sections for p in (*s.papers, *s.overflow)]


@dataclass
class RenderedDigest:
    subject: str
    text: str
    html: str
    preheader: str


def subjects_line(categories: Sequence[str], primary: str) -> str:
    """'Machine Learning (cs.LG); Artificial Intelligence (cs.AI)', the primary category first."""
    ordered = [primary, *[c for c in categories if c != primary]] if primary else list(categories)
    return "; ".join(f"{CATEGORY_NAMES[c]} ({c})" if c in CATEGORY_NAMES else c for c in ordered if c)


def highlighted(text: str, terms: Iterable[str]) -> Markup:
    """Escaped text with the matched words wrapped in <mark>."""
    pieces: list[str] = []
    last = 0
    for start, end in highlight_spans(text, terms):
        pieces.append(escape(text[last:start]))
        pieces.append(Markup("<mark>") + escape(text[start:end]) + Markup("</mark>"))
        last = end
    pieces.append(escape(text[last:]))
    return Markup("").join(pieces)


def marked(text: str, terms: Iterable[str]) -> str:
    """Plain text with the matched words marked *like this*."""
    pieces: list[str] = []
    last = 0
    for start, end in highlight_spans(text, terms):
        pieces.extend((text[last:start], "*", text[start:end], "*"))
        last = end
    pieces.append(text[last:])
    return "".join(pieces)


def paper_view(paper: Paper, translation: Translation | None, terms: Sequence[str]) -> PaperView:
    """What the email shows of a paper, LaTeX made readable in both languages."""
    title = latex_to_unicode(paper.title)
    abstract = latex_to_unicode(paper.abstract)
    authors = list(paper.authors)
    return PaperView(
        arxiv_id=paper.arxiv_id,
        version=paper.version,
        title=title,
        title_html=highlighted(title, terms),
        title_text=marked(title, terms),
        title_translated=latex_to_unicode(translation.title) if translation else None,
        authors_text=", ".join(authors[:AUTHORS_SHOWN] if len(authors) > AUTHORS_SHOWN + 2 else authors),
        authors_more=len(authors) > AUTHORS_SHOWN + 2,
        subjects=subjects_line(paper.categories, paper.primary_category),
        comment=paper.comment,
        abstract_html=highlighted(abstract, terms),
        abstract_text=marked(abstract, terms),
        abstract_translated=latex_to_unicode(translation.abstract) if translation else None,
    )


def load_digest(session: Session, subscriber: Subscriber, day: dt.date, links: SubscriberLinks) -> Digest:
    """The subscriber's digest for `day` from the stored selections and translations."""
    assert subscriber.id is not None
    keywords = session.scalars(
        select(SubscriberKeyword.expression)
        .where(SubscriberKeyword.subscriber_id == subscriber.id)
        .order_by(SubscriberKeyword.position)
    ).all()
    sections = [KeywordSection(keyword=k) for k in keywords]
    rows = session.execute(
        select(Selection, Paper, Translation)
        .join(Paper, Paper.arxiv_id == Selection.arxiv_id)
        .outerjoin(
            Translation,
            (Translation.arxiv_id == Selection.arxiv_id) & (Translation.language == subscriber.language),
        )
        .where(Selection.day == day, Selection.subscriber_id == subscriber.id)
        .order_by(Selection.keyword_position, Paper.arxiv_id)
    )
    translation_missing = False
    translate_wanted = not subscriber.language.upper().startswith("EN")
    for selection, paper, translation in rows:
        if selection.keyword_position >= len(sections):
            continue  # the subscriber removed that keyword since the match
        if translate_wanted and translation is None:
            translation_missing = True
        sections[selection.keyword_position].papers.append(paper_view(paper, translation, selection.terms))
    return Digest(
        day=day,
        email=subscriber.email,
        language=subscriber.language,
        timezone=subscriber.timezone,
        sections=sections,
        links=links,
        translation_missing=translation_missing,
    )


class DigestRenderer:
    """Compiles the MJML template and inlines its CSS once; `render` only fills it."""

    def __init__(self, templates_dir: Path = TEMPLATES_DIR) -> None:
        self.templates_dir = templates_dir

    @cached_property
    def _environment(self) -> Environment:
        return Environment(
            loader=FileSystemLoader(self.templates_dir / "email"),
            autoescape=select_autoescape(default=True, default_for_string=True),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )

    @cached_property
    def html_template(self):  # type: ignore[no-untyped-def]
        return self._environment.from_string(compile_email_template(self.templates_dir / "email" / "digest.mjml"))

    @cached_property
    def text_template(self):  # type: ignore[no-untyped-def]
        env = Environment(
            loader=FileSystemLoader(self.templates_dir / "email"),
            autoescape=False,
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
        )
        return env.get_template("digest.txt")

    def render(self, digest: Digest, size_limit: int = HTML_SIZE_LIMIT) -> RenderedDigest:
        """Subject, text and HTML for one digest; papers beyond the size limit are listed by title."""
        context = self._context(digest)
        html = self.html_template.render(context)
        if len(html.encode()) > size_limit:
            html = self._fit(digest, context, size_limit)
        text = self.text_template.render(self._context(digest))
        return RenderedDigest(subject=context["subject"], text=text, html=html, preheader=context["preheader"])

    def _fit(self, digest: Digest, context: dict, size_limit: int) -> str:
        # Guess from the average paper size, then step down until the HTML fits.
        full = sum(len(s.papers) for s in digest.sections)
        html = self.html_template.render(context)
        keep = int(full * size_limit / len(html.encode()))
        while True:
            html = self.html_template.render({**context, "sections": _trim_sections(digest.sections, keep)})
            if len(html.encode()) <= size_limit or keep == 0:
                return html
            keep -= 1

    def _context(self, digest: Digest) -> dict:
        labels = labels_for(digest.language)
        count = digest.paper_count
        announced = dt.datetime.combine(digest.day - dt.timedelta(days=1), dt.time(20, 0), tzinfo=EASTERN)
        local_zone = ZoneInfo(digest.timezone)
        for section in digest.sections:
            section.count_text = labels["papers"].format(count=len(section.papers) + len(section.overflow))
        keywords = ", ".join(s.keyword for s in digest.sections if s.papers or s.overflow) or "-"
        return {
            "lang_attr": "zh-Hans" if digest.language.upper().startswith("ZH") else "en",
            "subject": labels["subject"].format(day=digest.day.isoformat(), count=count),
            "preheader": labels["preheader"].format(count=count, keywords=keywords),
            "heading": labels["heading"].format(day=digest.day.isoformat()),
            "announced_line": labels["announced"].format(
                eastern=announced.strftime("%Y-%m-%d %H:%M"),
                local=announced.astimezone(local_zone).strftime("%Y-%m-%d %H:%M"),
                tz=digest.timezone,
            ),
            "count_line": labels["count_one"] if count == 1 else labels["count"].format(count=count),
            "translation_note": labels["translation_note"] if digest.translation_missing else "",
            "sections": digest.sections,
            "links": digest.links,
            "labels": labels,
        }


def _trim_sections(sections: list[KeywordSection], keep: int) -> list[KeywordSection]:
    trimmed = []
    for section in sections:
        shown = section.papers[:keep]
        keep -= len(shown)
        trimmed.append(
            KeywordSection(
                keyword=section.keyword,
                papers=shown,
                overflow=section.papers[len(shown):] + section.overflow,
                count_text=section.count_text,
            )
        )
    return trimmed


def compile_email_template(path: Path) -> str:
    """MJML -> HTML -> CSS inlined, with the Jinja tags intact (run once per process)."""
    html = mjml2html(path.read_text(encoding="utf-8"))
    # premailer drops the lowercase doctype MJML emits.
    html = html.replace("<!doctype html>", "<!DOCTYPE html>")
    inlined = Premailer(
        html,
        allow_network=False,
        cssutils_logging_level=logging.CRITICAL,
        keep_style_tags=False,
        disable_validation=True,
    ).transform()
    # lxml percent-encodes spaces in href values, which breaks "{{ link }}" placeholders.
    return re.sub(r"\{\{(.*?)\}\}", lambda m: "{{" + unquote(m.group(1)) + "}}", inlined)


def latest_selection_day(session: Session, subscriber_id: int) -> dt.date | None:
    """The newest day with papers selected for the subscriber."""
    from sqlalchemy import func

    return session.scalar(select(func.max(Selection.day)).where(Selection.subscriber_id == subscriber_id))


def render_preview(session: Session, settings, email: str, day: dt.date | None) -> str:  # type: ignore[no-untyped-def]
    """The HTML of a subscriber's digest, as it would be mailed."""
    from newsletter.subscribers import SubscriptionError, find_subscriber, normalize_email
    from newsletter.tokens import LinkSigner, signing_key, subscriber_links

    subscriber = find_subscriber(session, normalize_email(email))
    if subscriber is None or subscriber.id is None:
        raise SubscriptionError(f"no subscriber {email}")
    day = day or latest_selection_day(session, subscriber.id)
    if day is None:
        raise SubscriptionError(f"{email} has no digest yet: no papers were selected for them")
    signer = LinkSigner(signing_key(session, settings))
    links = subscriber_links(signer, settings.base_url, subscriber.id, day.isoformat())
    return DigestRenderer().render(load_digest(session, subscriber, day, links)).html
