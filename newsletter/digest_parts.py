"""Render: the small parts around a digest's papers, each from its own partial template in templates/email/.

The "Updated" section (papers sent earlier that got a new version, a journal reference or a DOI) goes
into the digest; the empty-day note is a message of its own, sent instead of a digest when a day matched
none of the subscriber's keywords. Neither touches the database: they render what they are handed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from markupsafe import Markup

from newsletter.config import TEMPLATES_DIR
from newsletter.render import RenderedDigest, language_group, readable, template_environment

if TYPE_CHECKING:
    from jinja2 import Environment

    from newsletter.tokens import SubscriberLinks
    from newsletter.updates import PaperUpdate

PART_LABELS = {
    "en": {
        "updated": "Updated",
        "updated_intro": "Papers you were sent before that changed since:",
        "new_version": "new version: v{old} -> v{new}",
        "journal_ref": "journal reference: {ref}",
        "doi": "DOI: {doi}",
        "note_subject": "arXiv digest {day}: no new paper matched your keywords",
        "note_subject_week": "arXiv digest {day}: no new paper matched your keywords this week",
        "note_heading": "arXiv digest · {day}",
        "note_text": "arXiv announced {count} papers in your categories today; none matched {keywords}.",
        "note_text_one": "arXiv announced 1 paper in your categories today; it did not match {keywords}.",
        "note_text_week": "arXiv announced {count} papers in your categories in the last 7 days; "
        "none matched {keywords}.",
        "note_why": "You asked for a word on days without matches. You can change your keywords or turn "
        "these notes off on the preferences page.",
        "manage": "Manage preferences",
        "unsubscribe": "Unsubscribe",
        "keyword_separator": ", ",
    },
    "zh": {
        "updated": "论文更新",
        "updated_intro": "之前发给您的论文有了以下变化:",
        "new_version": "新版本: v{old} -> v{new}",
        "journal_ref": "期刊引用: {ref}",
        "doi": "DOI: {doi}",
        "note_subject": "arXiv 每日速递 {day}: 今天没有与您的关键词匹配的新论文",
        "note_subject_week": "arXiv 每日速递 {day}: 本周没有与您的关键词匹配的新论文",
        "note_heading": "arXiv 每日速递 · {day}",
        "note_text": "arXiv 今天在您关注的分类中发布了 {count} 篇论文,没有一篇与以下关键词匹配: {keywords}。",
        "note_text_one": "arXiv 今天在您关注的分类中发布了 1 篇论文,它与以下关键词不匹配: {keywords}。",
        "note_text_week": "arXiv 最近 7 天在您关注的分类中发布了 {count} 篇论文,没有一篇与以下关键词匹配: {keywords}。",
        "note_why": "您选择了在没有匹配论文的日子收到提示。可以在订阅设置页面修改关键词或关闭此提示。",
        "manage": "管理订阅",
        "unsubscribe": "退订",
        "keyword_separator": "、",
    },
}


@dataclass(frozen=True)
class UpdateLine:
    """One "Updated" entry as shown: the title, what changed, its links."""

    title: str
    changes: list[str]
    abs_url: str
    pdf_url: str
    doi_url: str | None
    arxiv_id: str


def update_lines(updates: Sequence[PaperUpdate], language: str) -> list[UpdateLine]:
    """The updates in the subscriber's language: "new version: v1 -> v3", "journal reference: ..."."""
    labels = PART_LABELS[language_group(language)]
    lines = []
    for item in updates:
        changes = []
        if item.new_version:
            changes.append(labels["new_version"].format(old=item.version_sent, new=item.version))
        if item.journal_ref:
            changes.append(labels["journal_ref"].format(ref=readable(item.journal_ref)))
        if item.doi:
            changes.append(labels["doi"].format(doi=item.doi))
        lines.append(UpdateLine(readable(item.raw_title), changes, item.abs_url, item.pdf_url, item.doi_url,
                                item.arxiv_id))
    return lines


@lru_cache(maxsize=4)
def _environments(templates_dir: Path) -> tuple[Environment, Environment]:
    return template_environment(templates_dir, autoescape=True), template_environment(templates_dir, autoescape=False)


def updates_parts(
    updates: Sequence[PaperUpdate], language: str, templates_dir: Path = TEMPLATES_DIR
) -> dict[str, str | Markup]:
    """The digest's "Updated" section as `updates_html` and `updates_text` (both empty without updates)."""
    if not updates:
        return {"updates_html": Markup(""), "updates_text": ""}
    html_env, text_env = _environments(templates_dir)
    context = {"updates": update_lines(updates, language), "labels": PART_LABELS[language_group(language)]}
    return {
        "updates_html": Markup(html_env.get_template("_updates.html").render(context)),
        "updates_text": text_env.get_template("_updates.txt").render(context),
    }


@dataclass
class EmptyDayNote:
    """A day (or a weekly subscriber's week) that matched none of the keywords, and how many papers it had."""

    day: dt.date
    email: str
    language: str
    keywords: list[str]
    announced: int
    links: SubscriberLinks
    weekly: bool = False
    updates: list[PaperUpdate] = field(default_factory=list)


def render_empty_day_note(note: EmptyDayNote, templates_dir: Path = TEMPLATES_DIR) -> RenderedDigest:
    """Subject, text and HTML of the note, with the manage and unsubscribe links of a digest."""
    group = language_group(note.language)
    labels = PART_LABELS[group]
    keywords = labels["keyword_separator"].join(note.keywords)
    if note.weekly:
        line = labels["note_text_week"].format(count=note.announced, keywords=keywords)
    elif note.announced == 1:
        line = labels["note_text_one"].format(keywords=keywords)
    else:
        line = labels["note_text"].format(count=note.announced, keywords=keywords)
    subject = labels["note_subject_week" if note.weekly else "note_subject"].format(day=note.day.isoformat())
    context = {
        "lang_attr": "zh-Hans" if group == "zh" else "en",
        "subject": subject,
        "heading": labels["note_heading"].format(day=note.day.isoformat()),
        "line": line,
        "labels": labels,
        "links": note.links,
        **updates_parts(note.updates, note.language, templates_dir),
    }
    html_env, text_env = _environments(templates_dir)
    return RenderedDigest(
        subject=subject,
        text=text_env.get_template("empty_day.txt").render(context),
        html=html_env.get_template("empty_day.html").render(context),
        preheader=line,
    )
