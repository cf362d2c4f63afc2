"""Benchmark: personalized digests per second, compiled-once template vs. MJML + premailer per subscriber.

    python bench/render.py [--subscribers 10000] [--papers-each 20] [--naive-sample 200]

Also the HTML bytes of the seed day (the reference digest's 24 bilingual papers and a keyword without
result), and both figures for the template as it was before the markup diet (bench/templates_before),
rendered by the same code in the same run.

Papers are the bundled sample's real arXiv entries and Chinese translations, re-keyed to make a
day of 300 papers. Each subscriber has two or three of twelve keywords and gets 20 papers drawn
from that day (so papers are shared between subscribers, as on a real list), half of them in
Chinese, half in English. A subscriber's render is the subject, the text part and the HTML part
with the Gmail size check. The process is pinned to one core. The naive way (fill the MJML with
Jinja, compile it with MJML, inline it with premailer, per subscriber) runs on a fixed sample of
subscribers and is reported as a rate; it skips the size check, which favours it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import html as htmllib
import json
import os
import random
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a plain script from anywhere

from arxiv import _feed  # noqa: E402
from mjml import mjml2html  # noqa: E402

from newsletter.config import TEMPLATES_DIR  # noqa: E402
from newsletter.demo import SAMPLE_DIR  # noqa: E402
from newsletter.harvest import record_from_result  # noqa: E402
from newsletter.models import Paper, Translation  # noqa: E402
from newsletter.render import (  # noqa: E402
    LABELS,
    Digest,
    DigestRenderer,
    KeywordSection,
    PaperView,
    SectionView,
    digest_context,
    language_group,
    make_email_safe,
    paper_view,
    template_environment,
)
from newsletter.tokens import SubscriberLinks  # noqa: E402
from tests.real_text import reference_day  # noqa: E402

TEMPLATES_BEFORE = ROOT / "bench" / "templates_before"

KEYWORDS = [
    "deep learning", "reinforcement learning", "large language model", "testing", "neural network",
    "robustness", "graph", "diffusion", "fault", "benchmark", "optimization", "transformer",
]
DAY_PAPERS = 300


def day_of_papers(count: int) -> list[tuple[Paper, Translation | None]]:
    """`count` papers (real sample entries, re-keyed) with their Chinese translations where the sample has one."""
    records = [
        record_from_result(result)
        for path in sorted((SAMPLE_DIR / "api").glob("*.xml"))
        for result in _feed.parse(path.read_bytes()).results
    ]
    cache = json.loads((SAMPLE_DIR / "translations.json").read_text(encoding="utf-8"))["ZH-HANS"]
    day = []
    for index in range(count):
        record = records[index % len(records)]
        arxiv_id = f"2611.{index:05d}"
        paper = Paper(
            arxiv_id=arxiv_id, version=record.version, title=record.title, abstract=record.abstract,
            authors=list(record.authors), categories=list(record.categories),
            primary_category=record.primary_category, comment=record.comment,
        )
        cached = cache.get(record.arxiv_id)
        translation = (
            Translation(arxiv_id=arxiv_id, language="ZH-HANS", title=cached["title"], abstract=cached["abstract"])
            if cached else None
        )
        day.append((paper, translation))
    return day


def make_digests(subscribers: int, papers_each: int, seed: int = 7) -> list[Digest]:
    """One digest per subscriber: 2-3 keywords, `papers_each` papers split between them."""
    rng = random.Random(seed)
    day = day_of_papers(DAY_PAPERS)
    # Popular papers are selected by many subscribers, as on a real list.
    weights = [1 / (rank + 1) ** 0.6 for rank in range(len(day))]
    digests = []
    for number in range(subscribers):
        language = "ZH-HANS" if number % 2 == 0 else "EN-US"
        keywords = rng.sample(KEYWORDS, rng.randint(2, 3))
        chosen: dict[int, None] = {}
        while len(chosen) < papers_each:
            chosen[rng.choices(range(len(day)), weights)[0]] = None
        sections = [KeywordSection(keyword=keyword) for keyword in keywords]
        wanted = language != "EN-US"
        for position, index in enumerate(chosen):
            paper, translation = day[index]
            keyword = keywords[position % len(keywords)]
            view = paper_view(paper, translation if wanted else None, [keyword.split()[0]], wanted)
            sections[position % len(keywords)].papers.append(view)
        token = f"{number:08d}" * 6
        links = SubscriberLinks(
            manage=f"https://digest.example.org/manage/{token}",
            unsubscribe=f"https://digest.example.org/unsubscribe/{token}",
            archive=f"https://digest.example.org/archive/2026-11-24/{token}",
        )
        digests.append(
            Digest(
                day=dt.date(2026, 11, 24), email=f"reader{number}@example.org",
                language=language, timezone="Asia/Shanghai" if wanted else "Europe/Berlin", sections=sections,
                links=links, translation_missing=any(p.translation_missing for s in sections for p in s.papers),
            )
        )
    return digests


class NaiveRenderer:
    """The way to avoid: fill the MJML source, then compile and inline it, for every subscriber."""

    def __init__(self) -> None:
        self.html_env = template_environment(TEMPLATES_DIR, autoescape=True)
        self.text_env = template_environment(TEMPLATES_DIR, autoescape=False)

    def render(self, digest: Digest) -> tuple[str, str, str]:
        import logging

        from premailer import Premailer

        context = digest_context(digest)
        labels = LABELS[language_group(digest.language)]
        sections = [
            SectionView(keyword=s.keyword, count_text=str(len(s.papers)), empty=not s.papers, papers=s.papers)
            for s in digest.sections
        ]
        mjml = self.html_env.get_template("digest.mjml").render(context, sections=sections)
        html = mjml2html(mjml).replace("<!doctype html>", "<!DOCTYPE html>")
        html = Premailer(
            html, allow_network=False, cssutils_logging_level=logging.CRITICAL, keep_style_tags=False,
            disable_validation=True,
        ).transform()
        html = make_email_safe(html)
        paper_template = self.text_env.get_template("paper.txt")
        text_sections = [
            SectionView(
                keyword=s.keyword, count_text=str(len(s.papers)), empty=not s.papers,
                papers=[_Text(paper_template.render(paper=p, labels=labels)) for p in s.papers],
            )
            for s in digest.sections
        ]
        text = self.text_env.get_template("digest.txt").render(context, sections=text_sections)
        return context["subject"], text, html


class _Text:
    def __init__(self, text: str) -> None:
        self.text = text


def fresh(digest: Digest) -> Digest:
    """The digest with new paper views, as load_digest makes them for each subscriber."""
    sections = [
        KeywordSection(keyword=s.keyword, papers=[PaperView(**{f: getattr(p, f) for f in _FIELDS}) for p in s.papers])
        for s in digest.sections
    ]
    return Digest(digest.day, digest.email, digest.language, digest.timezone, sections, digest.links,
                  digest.translation_missing)


_FIELDS = [
    "arxiv_id", "version", "raw_title", "raw_abstract", "authors", "categories", "primary_category", "comment",
    "terms", "raw_title_translated", "raw_abstract_translated", "translation_missing",
]


def seed_day() -> Digest:
    """The reference digest's day: 24 "reinforcement learning" papers in English and Chinese, and
    "diffusion policy" without result."""
    views = []
    for reference in reference_day():
        source = reference.paper
        paper = Paper(
            arxiv_id=source.arxiv_id, version=1, title=source.title, abstract=source.abstract,
            authors=list(source.authors), categories=list(source.categories),
            primary_category=source.primary_category, comment=source.comment,
        )
        translation = Translation(
            arxiv_id=source.arxiv_id, language="ZH-HANS", title=reference.title_zh, abstract=reference.abstract_zh
        )
        views.append(paper_view(paper, translation, ["reinforcement learning"], True))
    token = "0" * 48
    links = SubscriberLinks(
        manage=f"https://digest.example.org/manage/{token}",
        unsubscribe=f"https://digest.example.org/unsubscribe/{token}",
        archive=f"https://digest.example.org/archive/2026-11-24/{token}",
    )
    return Digest(
        day=dt.date(2026, 11, 24), email="ada@example.org", language="ZH-HANS", timezone="Asia/Shanghai",
        sections=[KeywordSection("reinforcement learning", views), KeywordSection("diffusion policy")], links=links,
    )


def markup_bytes(html: str) -> int:
    """Bytes of `html` that are not the text a reader sees (tags, attributes, entities beyond one character)."""
    text = htmllib.unescape(re.sub(r"<!--.*?-->|<style.*?</style>|<title>.*?</title>|<[^>]+>", "", html, flags=re.S))
    return len(html.encode()) - len(text.encode())


def seed_day_line(label: str, renderer: DigestRenderer) -> str:
    digest = fresh(seed_day())
    whole = renderer.render(digest, size_limit=10**9)
    sent = renderer.render(fresh(seed_day()))
    cards = [renderer.fragments(paper, digest.language).card for paper in digest.sections[0].papers]
    card_markup = sum(markup_bytes(card) for card in cards) / len(cards)
    frame = "".join(whole.html.split("".join(cards))) if "".join(cards) in whole.html else whole.html
    return (f"{label}: HTML part {len(sent.html.encode()):,} bytes as sent, {sent.papers_in_full} of 24 papers "
            f"in full ({len(whole.html.encode()):,} bytes with all 24 in full, of it "
            f"{markup_bytes(whole.html):,} bytes markup: {card_markup:,.0f} a paper card, "
            f"{markup_bytes(frame):,} the frame)")


def rate(renderer: DigestRenderer, inputs: list[Digest]) -> tuple[float, float, float, int, int]:
    """(digests per CPU second, CPU s, wall s, HTML bytes, digests shown partly by title) for `inputs`."""
    started, cpu_started = time.perf_counter(), time.process_time()
    html_bytes = 0
    clipped = 0
    for digest in inputs:  # includes the one MJML + premailer compile on first use
        rendered = renderer.render(digest)
        html_bytes += len(rendered.html.encode())
        clipped += rendered.papers_by_title > 0
    wall, seconds = time.perf_counter() - started, time.process_time() - cpu_started
    return len(inputs) / seconds, seconds, wall, html_bytes, clipped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=10_000)
    parser.add_argument("--papers-each", type=int, default=20)
    parser.add_argument("--naive-sample", type=int, default=200)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})

    digests = make_digests(args.subscribers, args.papers_each)
    # Paper views are rebuilt per subscriber, as load_digest does, so nothing computed is carried over.
    inputs = [fresh(d) for d in digests]

    before_rate, before_seconds, _, before_bytes, before_clipped = rate(
        DigestRenderer(TEMPLATES_BEFORE), [fresh(d) for d in digests]
    )
    fast_rate, fast_seconds, fast_wall, html_bytes, clipped = rate(DigestRenderer(), inputs)

    naive = NaiveRenderer()
    sample = [fresh(d) for d in random.Random(11).sample(digests, min(args.naive_sample, len(digests)))]
    started, cpu_started = time.perf_counter(), time.process_time()
    for digest in sample:
        naive.render(digest)
    naive_wall, naive_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    naive_rate = len(sample) / naive_seconds

    print(f"digests of {args.papers_each} papers for {len(inputs)} subscribers, on one core, "
          "per CPU second of this process (wall clock in brackets, other load on the machine inflates it)")
    print(f"compiled once, cards cached: {fast_rate:8.0f} digests/s  ({fast_seconds:.1f} s CPU, "
          f"{fast_wall:.1f} s wall for all; "
          f"mean HTML {html_bytes / len(inputs) / 1024:.0f} KiB; {clipped} digests over the Gmail limit "
          f"shown partly by title)")
    print(f"naive, MJML + premailer each: {naive_rate:8.1f} digests/s  ({naive_seconds:.1f} s CPU, "
          f"{naive_wall:.1f} s wall "
          f"for a sample of "
          f"{len(sample)}; would take {len(inputs) / naive_rate / 60:.1f} min for all)")
    print(f"template before the diet:     {before_rate:8.0f} digests/s  ({before_seconds:.1f} s CPU; mean HTML "
          f"{before_bytes / len(inputs) / 1024:.0f} KiB; {before_clipped} digests over the Gmail limit)")
    print(f"ratio: {fast_rate / naive_rate:.0f}x naive, {fast_rate / before_rate:.2f}x the template before "
          f"(target: 2,000 digests/s: {'met' if fast_rate >= 2000 else 'NOT met'})")
    print("seed day, Gmail clips an HTML part above 102,400 bytes:")
    print("  " + seed_day_line("leaner template", DigestRenderer()))
    print("  " + seed_day_line("template before", DigestRenderer(TEMPLATES_BEFORE)))


if __name__ == "__main__":
    main()
