"""Render: the digest template is compiled (MJML) and inlined (premailer) once, then filled per subscriber.

A subscriber's render never calls MJML or premailer: `compile_email_template` turns digest.mjml into an
autoescaping Jinja template once per process, and cuts the per-paper card out of it. Cards are rendered
once per (paper, matched terms, language) and reused for every subscriber of the run who gets that paper.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from urllib.parse import quote, unquote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from icu4py.breakers import LineBreaker
from jinja2 import Environment, FileSystemLoader, StrictUndefined, Template
from markupsafe import Markup
from mjml import mjml2html
from premailer import Premailer

from newsletter.config import TEMPLATES_DIR
from newsletter.keywords import highlight_spans
from newsletter.latex import latex_to_unicode
from newsletter.taxonomy import subject_label

if TYPE_CHECKING:
    # Rendering reads what it is handed (PaperFields) and never queries the database.
    from newsletter.tokens import SubscriberLinks
    from newsletter.updates import PaperUpdate

log = logging.getLogger(__name__)

# Gmail clips an HTML part above 102 KB (102,400 bytes). The renderer measures the exact bytes it sends,
# so the margin only covers a client's own counting (line endings): about 1%.
HTML_SIZE_LIMIT = 101_400
# Every author up to this many is named; a longer list ends in "et al. (N authors)".
AUTHORS_SHOWN = 20
EASTERN = ZoneInfo("America/New_York")
DEFAULT_TIMEZONE = "Asia/Shanghai"
# Announcements go out at 20:00 US Eastern on the evening before the announcement day's date.
ANNOUNCEMENT_TIME = dt.time(20, 0)
# Clients fill the inbox preview line with body text after the preheader; these keep it blank.
PREHEADER_PADDING = Markup("&zwnj;&nbsp;" * 60)
# A section's "more papers" paragraph and list around the titles, for the size estimate (bytes).
OVERFLOW_BLOCK_BYTES = 900
FRAGMENT_CACHE_LIMIT = 50_000
PAGE_BACKGROUND = "#f6f8fa"
# How much the frame (header, keyword headings, footer) may differ in size between two digests.
FRAME_SIZE_SLACK = 4_000
# Cards are rendered once for every subscriber; their feedback links (feedback.html, feedback.txt) start
# with this mark, which each subscriber's render replaces by their own signed links.links.feedback. It
# holds a control character, which visible() strips from every paper text, so no text can forge it.
FEEDBACK_MARK = "\x02feedback\x02"
FEEDBACK_LINKS_PER_CARD = 2
_FEEDBACK_LINES = {
    True: re.compile(f' · <a href="{re.escape(FEEDBACK_MARK)}[^"]*">[^<]*</a>'),  # HTML: each link and its separator
    False: re.compile(f"^.*{re.escape(FEEDBACK_MARK)}.*\n?", re.MULTILINE),  # the text part
}

LABELS = {
    "en": {
        "heading": "arXiv digest · {day}", "day_format": "{weekday}, {day} {month} {year}",
        "announced": "Announced {eastern} US Eastern ({eastern_abbr})",
        "local": "That is {local} in your time zone ({tz}, UTC{offset})",
        "generated": "Generated {local} in your time zone ({tz}, UTC{offset})",
        "count": "{count} new papers for you today", "count_one": "1 new paper for you today",
        "count_zero": "No new papers for you today",
        "subject": "arXiv digest {day}: {count} new papers", "subject_one": "arXiv digest {day}: 1 new paper",
        "keyword": "Keyword", "papers": "{count} papers", "papers_one": "1 paper",
        "no_result": "No new paper matched this keyword today.", "authors": "Authors",
        "et_al_count": "et al. ({count} authors)",
        "subjects": "Subjects", "comment": "Comment", "journal_ref": "Journal reference", "abstract": "Abstract",
        "abstract_translated": "Abstract (translated)", "et_al": "et al.",
        "manage": "Manage preferences", "unsubscribe": "Unsubscribe", "view_in_browser": "View in browser",
        "more_papers": "More papers, by title (the email would be too long to show them in full):",
        "full_digest": "Full digest on the web", "more_hidden": "…and {count} more on the web",
        "why": "You receive this because you subscribed to the arXiv digest with these keywords:",
        "translation_note": (
            "Translation was not available for some papers today; they are shown in English only."
        ),
        "translation_missing": "Translation not available for this paper yet.",
        "preheader": "{count} new papers · {keywords}", "preheader_one": "1 new paper · {keywords}",
        "more_like_this": "More like this", "not_for_me": "Not for me",
    },
    "zh": {
        "heading": "arXiv 每日速递 · {day}", "day_format": "{year}年{month_number}月{day}日 {weekday}",
        "announced": "arXiv 发布时间: {eastern} 美东时间 ({eastern_abbr})",
        "local": "您的时区: {local} ({tz}, UTC{offset})",
        "generated": "生成时间: {local} ({tz}, UTC{offset})",
        "count": "今天共有 {count} 篇相关文章", "count_one": "今天共有 1 篇相关文章",
        "count_zero": "今天没有相关的新文章",
        "subject": "arXiv 每日速递 {day}: {count} 篇新论文", "subject_one": "arXiv 每日速递 {day}: 1 篇新论文",
        "keyword": "关键词", "papers": "{count} 篇", "papers_one": "1 篇",
        "no_result": "今天没有与此关键词匹配的新论文。", "authors": "作者", "et_al_count": "等 (共 {count} 位作者)",
        "subjects": "学科", "comment": "备注",
        "journal_ref": "期刊引用", "abstract": "英文摘要", "abstract_translated": "中文摘要", "et_al": "等",
        "manage": "管理订阅", "unsubscribe": "退订", "view_in_browser": "在浏览器中查看",
        "more_papers": "更多论文(邮件篇幅有限,仅列标题):", "full_digest": "网页版完整内容",
        "more_hidden": "……另有 {count} 篇,见网页版",
        "why": "您收到此邮件,是因为您用以下关键词订阅了 arXiv 每日速递:",
        "translation_note": "今天部分论文暂时无法翻译,仅显示英文,翻译将在之后补上。",
        "translation_missing": "本文的中文翻译暂不可用。",
        "preheader": "{count} 篇新论文 · {keywords}", "preheader_one": "1 篇新论文 · {keywords}",
        "more_like_this": "多推荐类似的", "not_for_me": "不感兴趣",
    },
}
WEEKDAYS = {
    "en": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"],
    "zh": ["星期一", "星期二", "星期三", "星期四", "星期五", "星期六", "星期日"],
}
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]


def language_group(language: str) -> str:
    """'zh' for every Chinese variant (ZH, ZH-HANS, ZH-HANT), else 'en'."""
    return "zh" if language.upper().startswith("ZH") else "en"


def labels_for(language: str) -> dict[str, str]:
    """Interface strings in the subscriber's language (Chinese variants share one set)."""
    return LABELS[language_group(language)]


def text_segments(text: str, terms: Iterable[str]) -> list[tuple[str, bool]]:
    """`text` cut into (piece, matched) pairs, the matched words as their own pieces."""
    pieces: list[tuple[str, bool]] = []
    last = 0
    for start, end in highlight_spans(text, terms):
        if start > last:
            pieces.append((text[last:start], False))
        pieces.append((text[start:end], True))
        last = end
    if last < len(text) or not pieces:
        pieces.append((text[last:], False))
    return pieces


def marked(text: str, terms: Iterable[str]) -> str:
    """Plain text with the matched words marked *like this*."""
    return "".join(f"*{piece}*" if hit else piece for piece, hit in text_segments(text, terms))


def subjects_line(categories: Sequence[str], primary: str) -> str:
    """'Machine Learning (cs.LG); Artificial Intelligence (cs.AI)', the primary category first."""
    return "; ".join(_subject_names(categories, primary))


def _subject_names(categories: Sequence[str], primary: str) -> list[str]:
    ordered = [primary, *[c for c in categories if c != primary]] if primary else list(categories)
    return [subject_label(c) for c in dict.fromkeys(ordered) if c]


# Control characters (NUL is not allowed in mail at all), the byte-order mark, and the bidi
# overrides that can make a title display reversed ("Trojan Source").
_INVISIBLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufeff\u202a-\u202e\u2066-\u2069]")


def visible(text: str) -> str:
    """`text` without the characters that must not reach a reader (controls, bidi overrides)."""
    return _INVISIBLE.sub("", text)


@lru_cache(maxsize=8192)
def readable(text: str) -> str:
    """Title or abstract as a reader should see it: LaTeX math and markup turned into plain Unicode."""
    # Cached: a paper is shown to many subscribers (with different highlights), converted once.
    return visible(latex_to_unicode(text))


@dataclass(eq=False)
class PaperView:
    """A paper as one subscriber's digest shows it; the costly parts are computed on first use."""

    arxiv_id: str
    version: int
    raw_title: str
    raw_abstract: str
    authors: tuple[str, ...]
    categories: tuple[str, ...]
    primary_category: str
    comment: str | None
    terms: tuple[str, ...] = ()
    raw_title_translated: str | None = None
    raw_abstract_translated: str | None = None
    translation_missing: bool = False
    journal_ref: str | None = None
    doi: str | None = None
    # Shown as typed, without highlights: the fallback for a paper whose card could not be rendered.
    plain: bool = False

    @property
    def cache_key(self) -> tuple:
        """Everything a rendered card depends on, apart from the language of its labels."""
        return (
            self.arxiv_id, self.version, self.terms, self.raw_title_translated, self.raw_abstract_translated,
            self.translation_missing, self.plain,
        )

    def as_plain(self) -> PaperView:
        """This paper with its text as typed and nothing highlighted."""
        return dataclasses.replace(self, terms=(), plain=True)

    def _shown(self, raw: str) -> str:
        return visible(raw) if self.plain else readable(raw)

    @cached_property
    def title(self) -> str:
        return self._shown(self.raw_title)

    @cached_property
    def abstract(self) -> str:
        return self._shown(self.raw_abstract)

    @cached_property
    def title_translated(self) -> str | None:
        return self._shown(self.raw_title_translated) if self.raw_title_translated else None

    @cached_property
    def abstract_translated(self) -> str | None:
        return self._shown(self.raw_abstract_translated) if self.raw_abstract_translated else None

    @property
    def title_segments(self) -> list[tuple[str, bool]]:
        return text_segments(self.title, self.terms)

    @property
    def abstract_segments(self) -> list[tuple[str, bool]]:
        return text_segments(self.abstract, self.terms)

    @property
    def title_marked(self) -> str:
        return marked(self.title, self.terms)

    @property
    def abstract_marked(self) -> str:
        return marked(self.abstract, self.terms)

    @property
    def authors_total(self) -> int:
        return len(self.authors)

    @property
    def authors_hidden(self) -> int:
        """How many authors 'et al.' stands for: none up to AUTHORS_SHOWN names."""
        return max(len(self.authors) - AUTHORS_SHOWN, 0)

    # Names, comments and journal references carry LaTeX accents and stray controls too. Read on
    # first use, as the title is: a view is made per subscriber, its card rendered once per paper.
    @cached_property
    def authors_shown(self) -> str:
        return ", ".join(map(self._shown, self.authors[: len(self.authors) - self.authors_hidden]))

    @cached_property
    def comment_shown(self) -> str | None:
        return self._shown(self.comment) if self.comment else None

    @cached_property
    def journal_ref_shown(self) -> str | None:
        return self._shown(self.journal_ref) if self.journal_ref else None

    @property
    def primary_subject(self) -> str:
        names = _subject_names(self.categories, self.primary_category)
        return names[0] if names else ""

    @property
    def other_subjects(self) -> str:
        return "; ".join(_subject_names(self.categories, self.primary_category)[1:])

    @property
    def subjects(self) -> str:
        return subjects_line(self.categories, self.primary_category)

    @property
    def abs_url(self) -> str:
        return f"https://arxiv.org/abs/{self.arxiv_id}"

    @property
    def pdf_url(self) -> str:
        return f"https://arxiv.org/pdf/{self.arxiv_id}"

    @property
    def html_url(self) -> str:
        return f"https://arxiv.org/html/{self.arxiv_id}v{self.version}"

    @property
    def doi_url(self) -> str | None:
        return f"https://doi.org/{quote(self.doi, safe='/:;()._-')}" if self.doi else None


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
    # Papers sent in earlier digests that changed since: one line each in an "Updated" section.
    updates: list[PaperUpdate] = field(default_factory=list)

    @property
    def papers(self) -> list[PaperView]:
        return [p for s in self.sections for p in (*s.papers, *s.overflow)]
    # When the digest was made (aware); None means now, at render time.
    generated_at: dt.datetime | None = None

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
    papers_in_full: int = 0
    papers_by_title: int = 0


class PaperFields(Protocol):
    """What a card needs of a paper: a Paper row, or a result row with the same column names."""

    @property
    def arxiv_id(self) -> str: ...
    @property
    def version(self) -> int: ...
    @property
    def title(self) -> str: ...
    @property
    def abstract(self) -> str: ...
    @property
    def authors(self) -> list[str]: ...
    @property
    def categories(self) -> list[str]: ...
    @property
    def primary_category(self) -> str: ...
    @property
    def comment(self) -> str | None: ...
    @property
    def journal_ref(self) -> str | None: ...
    @property
    def doi(self) -> str | None: ...


class TranslationFields(Protocol):
    @property
    def title(self) -> str: ...
    @property
    def abstract(self) -> str: ...


def paper_view(
    paper: PaperFields, translation: TranslationFields | None, terms: Sequence[str], translation_wanted: bool = False
) -> PaperView:
    """What the email shows of a paper (LaTeX is made readable only when a card is first rendered)."""
    return PaperView(
        arxiv_id=paper.arxiv_id,
        version=paper.version,
        raw_title=paper.title,
        raw_abstract=paper.abstract,
        authors=tuple(paper.authors),
        categories=tuple(paper.categories),
        primary_category=paper.primary_category,
        comment=paper.comment,
        terms=tuple(terms),
        raw_title_translated=translation.title if translation else None,
        raw_abstract_translated=translation.abstract if translation else None,
        translation_missing=translation_wanted and translation is None,
        journal_ref=paper.journal_ref,
        doi=paper.doi,
    )


def _zone(name: str, language: str) -> tuple[ZoneInfo, str]:
    # A zone name stored before validation existed (or mistyped in a config) must not stop a digest.
    try:
        return ZoneInfo(name), name
    except (ZoneInfoNotFoundError, ValueError):
        fallback = DEFAULT_TIMEZONE if language_group(language) == "zh" else "UTC"
        return ZoneInfo(fallback), fallback


def _utc_offset(moment: dt.datetime) -> str:
    offset = moment.utcoffset() or dt.timedelta(0)
    minutes = int(offset.total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    hours, rest = divmod(abs(minutes), 60)
    return f"{sign}{hours}" + (f":{rest:02d}" if rest else "")


def _long_day(day: dt.date, group: str) -> str:
    return LABELS[group]["day_format"].format(
        weekday=WEEKDAYS[group][day.weekday()], day=day.day, month=MONTHS[day.month - 1],
        month_number=day.month, year=day.year,
    )


def _count_text(labels: dict[str, str], count: int) -> str:
    return labels["papers_one"] if count == 1 else labels["papers"].format(count=count)


@lru_cache(maxsize=1024)
def _header_lines(day: dt.date, group: str, timezone: str, language: str) -> tuple[str, str, str]:
    # Shared by every subscriber with the same day, language and zone: computed once each.
    labels = LABELS[group]
    announced = dt.datetime.combine(day - dt.timedelta(days=1), ANNOUNCEMENT_TIME, tzinfo=EASTERN)
    zone, zone_name = _zone(timezone, language)
    local = announced.astimezone(zone)
    return (
        labels["heading"].format(day=_long_day(day, group)),
        labels["announced"].format(eastern=announced.strftime("%Y-%m-%d %H:%M"), eastern_abbr=announced.strftime("%Z")),
        labels["local"].format(local=local.strftime("%Y-%m-%d %H:%M"), tz=zone_name, offset=_utc_offset(local)),
    )


@lru_cache(maxsize=1024)
def _generated_line(minute: dt.datetime, group: str, timezone: str, language: str) -> str:
    zone, zone_name = _zone(timezone, language)
    local = minute.astimezone(zone)
    return LABELS[group]["generated"].format(
        local=local.strftime("%Y-%m-%d %H:%M"), tz=zone_name, offset=_utc_offset(local)
    )


def digest_context(digest: Digest) -> dict:
    """The per-subscriber values around the papers: header lines, subject, preheader, links, labels."""
    group = language_group(digest.language)
    labels = LABELS[group]
    count = digest.paper_count
    heading, announced_line, local_line = _header_lines(digest.day, group, digest.timezone, digest.language)
    counts = [(s.keyword, len(s.papers) + len(s.overflow)) for s in digest.sections]
    generated = digest.generated_at or dt.datetime.now(dt.UTC)
    if generated.tzinfo is None:
        generated = generated.replace(tzinfo=dt.UTC)  # a naive time from the database is UTC
    if count == 0:
        count_line = labels["count_zero"]
    else:
        count_line = labels["count_one"] if count == 1 else labels["count"].format(count=count)
    subject_key = "subject_one" if count == 1 else "subject"
    return {
        "lang_attr": "zh-Hans" if group == "zh" else "en",
        "subject": labels[subject_key].format(day=digest.day.isoformat(), count=count),
        "preheader": labels["preheader_one" if count == 1 else "preheader"].format(
            count=count, keywords=" · ".join(f"{keyword} ({n})" for keyword, n in counts) or "-"
        ),
        "preheader_padding": PREHEADER_PADDING,
        "heading": heading,
        "generated_line": _generated_line(generated.replace(second=0, microsecond=0), group, digest.timezone,
                                          digest.language),
        "announced_line": announced_line,
        "local_line": local_line,
        "count_line": count_line,
        "translation_note": labels["translation_note"] if digest.translation_missing else "",
        "keywords_line": "; ".join(keyword for keyword, _ in counts),
        "links": digest.links,
        "labels": labels,
        **_updates_parts(digest),
    }


def _updates_parts(digest: Digest) -> dict:
    # Imported here: digest_parts renders with this module's environment and helpers.
    from newsletter.digest_parts import updates_parts

    return updates_parts(digest.updates, digest.language)


@dataclass
class SectionView:
    """A keyword section as the template shows it: papers in full, then the rest by title."""

    keyword: str
    count_text: str
    empty: bool
    papers: list = field(default_factory=list)
    overflow: list = field(default_factory=list)
    overflow_hidden: int = 0
    overflow_hidden_text: str = ""

    @property
    def cards_html(self) -> Markup:
        return Markup("".join(fragment.card for fragment in self.papers))

    @property
    def more_html(self) -> Markup:
        return Markup("".join(fragment.more for fragment in self.overflow))


@dataclass(frozen=True)
class PaperFragments:
    """One paper's rendered card (HTML and text) and its one-line entry for the overflow list."""

    card: Markup
    card_size: int
    more: Markup
    more_size: int
    text: str


@dataclass(frozen=True)
class CompiledEmail:
    """digest.mjml compiled, inlined and cut in three Jinja sources: the frame, a card, an overflow line."""

    frame: str
    card: str
    more: str


# The loops around the card and the overflow line, as the compiled template has them.
_CARD_LOOP = re.compile(
    r"\{%\s*for paper in section\.papers\s*%\}\s*<!--card:start-->(.*?)<!--card:end-->\s*\{%\s*endfor\s*%\}",
    re.DOTALL,
)
_MORE_LOOP = re.compile(
    r"\{%\s*for paper in section\.overflow\s*%\}\s*<!--more:start-->(.*?)<!--more:end-->\s*\{%\s*endfor\s*%\}",
    re.DOTALL,
)


def compile_email_template(path: Path) -> str:
    """MJML -> HTML -> CSS inlined -> safe for the major clients, Jinja tags intact (once per process)."""
    html = mjml2html(path.read_text(encoding="utf-8"))
    # premailer drops the lowercase doctype MJML emits.
    html = html.replace("<!doctype html>", "<!DOCTYPE html>")
    inlined = Premailer(
        html,
        allow_network=False,
        cssutils_logging_level=logging.CRITICAL,
        keep_style_tags=False,
        # The dark-scheme rules are left in <head> (a media query cannot be inlined) and must still win
        # over the inline light colours.
        strip_important=False,
        disable_validation=True,
    ).transform()
    # lxml percent-encodes spaces in href values, which breaks "{{ link }}" placeholders.
    inlined = re.sub(r"\{\{(.*?)\}\}", lambda m: "{{" + unquote(m.group(1)) + "}}", inlined)
    inlined = re.sub(r"\{%(.*?)%\}", lambda m: "{%" + unquote(m.group(1)) + "%}", inlined)
    return slim(add_color_schemes(make_email_safe(inlined)))


# The dark block as premailer leaves it in <head>; MJML's own blocks are the other <style> elements.
_DARK_STYLE = re.compile(r"<style\b[^>]*>\s*(@media \(prefers-color-scheme: dark\).*?)</style>", re.DOTALL)
_STYLE = re.compile(r"<style\b[^>]*>.*?</style>", re.DOTALL)
COLOR_SCHEME_META = (
    '<meta name="color-scheme" content="light dark">\n<meta name="supported-color-schemes" content="light dark">\n'
)


def add_color_schemes(html: str) -> str:
    """Declare light and dark support (meta and :root) beside the dark block, which stays in <head>."""
    rules = ":root{color-scheme:light dark;supported-color-schemes:light dark}"
    return html.replace("</head>", f"{COLOR_SCHEME_META}<style>{rules}</style>\n</head>", 1)


def slim(html: str) -> str:
    """Drop what inlining left useless, so more papers fit under Gmail's clipping size."""
    used = set(re.findall(r"\.([a-z][\w-]*)", " ".join(_STYLE.findall(html))))
    # A class only the (inlined) light rules named has done its work; the dark block's classes stay.
    html = re.sub(r'\sclass="([^"]*)"', lambda m: _kept_classes(m.group(1), used), html)
    html = re.sub(r'(<p\b[^>]*style=")display:block;\s*', r"\1", html)  # a <p> is a block anyway
    html = re.sub(r'(<b\b[^>]*)\sbgcolor="[^"]*"', r"\1", html)  # the inline style says it already
    html = re.sub(r'\sstyle="([^"]*)"', lambda m: f' style="{_compact_style(m.group(1))}"', html)
    return re.sub(r"\n[ \t]+", "\n", html)  # indentation only; a newline stays a space


def _kept_classes(names: str, used: set[str]) -> str:
    kept = [name for name in names.split() if name in used]
    return f' class="{" ".join(kept)}"' if kept else ""


def _compact_style(style: str) -> str:
    return re.sub(r"\s*([:;,])\s*", r"\1", style.strip()).rstrip(";")


def make_email_safe(html: str) -> str:
    """Drop what Gmail (mobile web), Outlook (Windows, Windows Mail, apps) or Apple Mail refuse.

    Everything is inlined already, so MJML's <style> blocks only held its responsive rules (a single
    column needs none); the dark-scheme block is kept, compacted, for the clients that apply it.
    role/aria attributes, word-break/word-spacing and the <body> element are listed by caniemail.com
    as unsupported there (the wrapper div carries the background instead).
    """
    dark = _DARK_STYLE.search(html)
    html = re.sub(r"<!--\[if[^\]]*\]>\s*<style.*?</style>\s*<!\[endif\]-->", "", html, flags=re.DOTALL)
    html = _STYLE.sub("", html)
    if dark is not None:
        css = re.sub(r"\s*([{}:;,])\s*", r"\1", re.sub(r"\s+", " ", dark.group(1))).replace(";}", "}")
        html = html.replace("</head>", f"<style>{css}</style>\n</head>", 1)
    html = re.sub(r"<link\b[^>]*>", "", html)
    html = re.sub(r'\s(?:role|aria-[a-z]+)="[^"]*"', "", html)
    html = re.sub(r"\s*word-(?:break|spacing):\s*[^;\"]*;?", "", html)
    html = re.sub(r"<body\b[^>]*>|</body>", "", html)
    # Without <body>, a browser (the web archive copy) paints its margin with the root's background.
    return re.sub(r"<html\b", f'<html style="margin:0;padding:0;background-color:{PAGE_BACKGROUND};"', html, count=1)


@lru_cache(maxsize=8)
def _compiled_email(path: Path, modified_ns: int) -> CompiledEmail:
    # Keyed on the file's mtime so an edited template is picked up without a restart.
    html = compile_email_template(path)
    card, more = _CARD_LOOP.search(html), _MORE_LOOP.search(html)
    if card is None or more is None:
        raise ValueError(f"{path} lacks the card or overflow loop with its <!--card/more:start/end--> markers")
    # Per subscriber, the frame pastes each section's cards (rendered once per run) in one piece.
    frame = html[: card.start()] + "{{ section.cards_html }}" + html[card.end():]
    frame = _MORE_LOOP.sub("{{ section.more_html }}", frame)
    return CompiledEmail(frame=frame, card=card.group(1).strip(), more=more.group(1).strip())


def compiled_email(templates_dir: Path = TEMPLATES_DIR) -> CompiledEmail:
    """The compiled digest template (compiled on first use in this process)."""
    path = templates_dir / "email" / "digest.mjml"
    return _compiled_email(path, path.stat().st_mtime_ns)


_WIDE = "\u2e80-\u9fff\uf900-\ufaff\uff00-\uffef"
_HAS_WIDE = re.compile(f"[{_WIDE}]")
# Punctuation that closes or follows what is before it: a line never starts with one (kinsoku).
NO_LINE_START = frozenset("，。、：；！？）」』】〕〉》〗〙〛｝］｠〞…‥・ー々〃ゝゞヽヾ,.;:!?)]}%")


def _columns(text: str) -> int:
    """Terminal columns: two for a wide (CJK) character, one for the rest."""
    return sum(2 if unicodedata.east_asian_width(char) in "WF" else 1 for char in text)


def _cannot_start_line(char: str) -> bool:
    return char in NO_LINE_START or unicodedata.category(char) in ("Pe", "Pf")


def line_pieces(text: str) -> list[str]:
    """`text` cut where Unicode line breaking (UAX #14, ICU) allows a break, each piece with its trailing spaces."""
    pieces: list[str] = []
    for piece in LineBreaker(text, "zh" if _HAS_WIDE.search(text) else "en"):
        # ICU allows a break after a space even before "：" or "；" (UAX #14 rule LB18), which Chinese never
        # does; and after the hyphen of "reference-guided", which a reader then takes for a broken word.
        if pieces and (_cannot_start_line(piece[0]) or pieces[-1].endswith("-")):
            pieces[-1] += piece
        else:
            pieces.append(piece)
    return pieces


@lru_cache(maxsize=4096)
def wrap_paragraph(text: str, width: int = 74, indent: str = "    ") -> str:
    """Wrap for the text part by terminal columns, breaking where Chinese and English line-breaking rules allow."""
    # Cached: a translated abstract is the same for every subscriber who gets the paper.
    lines: list[str] = []
    line, used = "", 0
    for piece in line_pieces(" ".join(text.split())):
        if line and used + _columns(piece.rstrip()) > width:
            lines.append(line.rstrip())
            line, used = "", 0
        line += piece
        used += _columns(piece)
    if line.strip():
        lines.append(line.rstrip())
    return "\n".join(indent + line for line in lines)


def template_environment(templates_dir: Path, autoescape: bool) -> Environment:
    env = Environment(
        loader=FileSystemLoader(templates_dir / "email"),
        autoescape=autoescape,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=not autoescape,
    )
    env.filters["wrap_paragraph"] = wrap_paragraph
    return env


class DigestRenderer:
    """Fills the compiled digest per subscriber; paper cards are rendered once per run and reused."""

    def __init__(self, templates_dir: Path = TEMPLATES_DIR) -> None:
        self.templates_dir = templates_dir
        self._fragments: dict[tuple, PaperFragments] = {}
        self._frame_bytes: dict[tuple[str, int, int], int] = {}

    @cached_property
    def _html_templates(self) -> tuple[Template, Template, Template]:
        compiled = compiled_email(self.templates_dir)
        env = template_environment(self.templates_dir, autoescape=True)
        return env.from_string(compiled.frame), env.from_string(compiled.card), env.from_string(compiled.more)

    @cached_property
    def _text_templates(self) -> tuple[Template, Template]:
        env = template_environment(self.templates_dir, autoescape=False)
        return env.get_template("digest.txt"), env.get_template("paper.txt")

    def fragments(self, paper: PaperView, language: str) -> PaperFragments:
        """The paper's card and overflow line in `language`, rendered on first request."""
        group = language_group(language)
        key = (group, paper.cache_key)
        found = self._fragments.get(key)
        if found is None:
            if len(self._fragments) >= FRAGMENT_CACHE_LIMIT:
                self._fragments.clear()
            try:
                found = self._render_fragments(paper, group)
            except Exception as exc:  # noqa: BLE001 - one paper's card never stops the digest
                log.warning("%s: card shown as plain text (%s: %s)", paper.arxiv_id, type(exc).__name__, exc)
                found = self._render_fragments(paper.as_plain(), group)
            self._fragments[key] = found
        return found

    def _render_fragments(self, paper: PaperView, group: str) -> PaperFragments:
        _, card_template, more_template = self._html_templates
        labels = LABELS[group]
        card = Markup(card_template.render(paper=paper, labels=labels, feedback=FEEDBACK_MARK))
        more = Markup(more_template.render(paper=paper, labels=labels))
        text = self._text_templates[1].render(paper=paper, labels=labels, feedback=FEEDBACK_MARK)
        return PaperFragments(card, len(card.encode()), more, len(more.encode()), text)

    def render(self, digest: Digest, size_limit: int = HTML_SIZE_LIMIT) -> RenderedDigest:
        """Subject, text and HTML for one digest; papers beyond the size limit are listed by title."""
        context = digest_context(digest)
        labels = context["labels"]
        per_section = [[self.fragments(p, digest.language) for p in s.papers + s.overflow] for s in digest.sections]
        text = self._text_templates[0].render(context, sections=self._sections(digest, per_section, labels, None))
        text = with_feedback_links(text, digest.links.feedback, html=False)
        extra = FEEDBACK_LINKS_PER_CARD * (len(digest.links.feedback.encode()) - len(FEEDBACK_MARK))
        if digest.links.feedback and extra:  # sizes as this subscriber's cards will weigh
            per_section = [[dataclasses.replace(f, card_size=f.card_size + extra) for f in s] for s in per_section]
        html, shown = self._fit_html(digest, context, per_section, size_limit)
        total = digest.paper_count
        return RenderedDigest(
            subject=context["subject"], text=text, html=html, preheader=context["preheader"],
            papers_in_full=shown, papers_by_title=total - shown,
        )

    def _fit_html(
        self, digest: Digest, context: dict, per_section: list[list[PaperFragments]], size_limit: int
    ) -> tuple[str, int]:
        frame = self._html_templates[0]
        labels = context["labels"]
        total = digest.paper_count
        cards = sum(f.card_size for fragments in per_section for f in fragments)
        # The frame around the cards weighs about the same for every digest with as many sections (and
        # "Updated" lines), so a digest that clearly cannot fit skips the full render.
        shape = (context["lang_attr"], len(digest.sections), len(digest.updates))
        base = self._frame_bytes.get(shape)
        if base is None or base + cards <= size_limit + FRAME_SIZE_SLACK:
            html = frame.render(context, sections=self._sections(digest, per_section, labels, None))
            html = with_feedback_links(html, digest.links.feedback)
            size = len(html.encode())
            if size <= size_limit:
                self._frame_bytes[shape] = size - cards
                return html, total
            base = size - cards
        # Sizes are known per card, so one estimate plus (rarely) a step or two replaces a search. Cards
        # are taken round-robin over the keywords, so every keyword shows its first papers in full.
        order = _round_robin(per_section)
        overhead = OVERFLOW_BLOCK_BYTES * len(digest.sections) + 3 * len(digest.links.archive)
        budget = size_limit - base - overhead
        keep = _cards_that_fit([fragment for _, fragment in order], budget)
        while True:
            full = [0] * len(per_section)
            for index, _ in order[:keep]:
                full[index] += 1
            more_budget = budget - sum(fragment.card_size for _, fragment in order[:keep])
            rest = [f for count, fragments in zip(full, per_section, strict=True) for f in fragments[count:]]
            titles = _titles_that_fit(rest, more_budget)
            html = frame.render(context, sections=self._sections(digest, per_section, labels, (full, titles)))
            html = with_feedback_links(html, digest.links.feedback)
            if len(html.encode()) <= size_limit or (keep == 0 and titles == 0):
                return html, keep
            if keep > 0:
                keep -= 1
            else:
                budget -= OVERFLOW_BLOCK_BYTES

    @staticmethod
    def _sections(
        digest: Digest, per_section: list[list[PaperFragments]], labels: dict, cut: tuple[list[int], int] | None
    ) -> list[SectionView]:
        # cut = (papers shown in full per section, titles listed after them counted across sections in order).
        full_counts, titles = cut if cut is not None else ([len(f) for f in per_section], 0)
        views = []
        for section, fragments, keep in zip(digest.sections, per_section, full_counts, strict=True):
            full, rest = fragments[:keep], fragments[keep:]
            listed, titles = rest[:titles], titles - len(rest[:titles])
            hidden = len(rest) - len(listed)
            views.append(
                SectionView(
                    keyword=section.keyword,
                    count_text=_count_text(labels, len(fragments)),
                    empty=not fragments,
                    papers=full,
                    overflow=listed,
                    overflow_hidden=hidden,
                    overflow_hidden_text=labels["more_hidden"].format(count=hidden) if hidden else "",
                )
            )
        return views


def with_feedback_links(rendered: str, feedback: str, html: bool = True) -> str:
    """The rendered digest with the subscriber's feedback links in place (no such lines without them)."""
    if feedback:
        return rendered.replace(FEEDBACK_MARK, feedback)
    return _FEEDBACK_LINES[html].sub("", rendered) if FEEDBACK_MARK in rendered else rendered


def _round_robin(per_section: list[list[PaperFragments]]) -> list[tuple[int, PaperFragments]]:
    """(section index, fragment): the first paper of each section, then the second of each, and so on."""
    depth = max((len(fragments) for fragments in per_section), default=0)
    return [
        (index, fragments[level])
        for level in range(depth)
        for index, fragments in enumerate(per_section)
        if level < len(fragments)
    ]


def _cards_that_fit(flat: list[PaperFragments], budget: int) -> int:
    """The largest k with the first k cards and the titles of the rest within `budget` bytes."""
    remaining_titles = sum(f.more_size for f in flat)
    used = 0
    keep = 0
    for fragment in flat:
        remaining_titles -= fragment.more_size
        if used + fragment.card_size + remaining_titles > budget:
            break
        used += fragment.card_size
        keep += 1
    return keep


def _titles_that_fit(rest: list[PaperFragments], budget: int) -> int:
    used = 0
    for count, fragment in enumerate(rest):
        used += fragment.more_size
        if used > budget:
            return count
    return len(rest)
