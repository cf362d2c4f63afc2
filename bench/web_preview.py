"""Benchmark: the subscribe page's keyword preview over a week of papers, prefiltered vs. the engine alone.

    python bench/web_preview.py [--papers 10000]

Papers are the real arXiv entries in tests/fixtures/reference/arxiv/api, re-keyed and with their
abstract sentences shuffled to reach --papers (about seven announcement days of the default
categories). For each keyword the preview answers as someone types, the figure is the time
to count its matches with no count cached: the web app's way (squashed text prepared once per
set of days, substring prefilter, engine on the candidates) and the naive way (the matching
engine over every paper). Both counts are checked to agree.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import feedparser

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a plain script from anywhere

from newsletter.keywords import KeywordIndex, PaperText  # noqa: E402
from newsletter.web import preview  # noqa: E402

REFERENCE = ROOT / "tests" / "fixtures" / "reference" / "arxiv" / "api"
KEYWORDS = [
    "reinforcement learning", "diffusion policy", "swarm robotics", "large language models", "graph neural network",
    "cat:cs.RO", "ti:transformer* AND cat:cs.LG", '"neural network" ANDNOT survey', "au:Sergey Levine", "learning",
]


def load_papers(count: int) -> list[PaperText]:
    feeds = [feedparser.parse(path.read_bytes()) for path in sorted(REFERENCE.glob("*.xml"))]
    entries = [entry for feed in feeds for entry in feed.entries]
    rng = random.Random(7)
    papers = []
    for number in range(count):
        entry = entries[number % len(entries)]
        sentences = entry.summary.split(". ")
        rng.shuffle(sentences)
        categories = tuple(tag["term"] for tag in entry.get("tags", [])) or ("cs.LG",)
        authors = tuple(author.get("name", "") for author in entry.get("authors", []))
        papers.append(PaperText(key=str(number), title=entry.title, abstract=". ".join(sentences), authors=authors,
                                categories=categories))
    return papers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--papers", type=int, default=10_000)
    args = parser.parse_args()
    papers = load_papers(args.papers)

    started = time.perf_counter()
    corpus = preview._Corpus(("bench",), 7, papers, [preview._squash(p) for p in papers],
                             [tuple(c.lower() for c in p.categories) for p in papers])
    prepare = time.perf_counter() - started

    ours, naive = [], []
    for keyword in KEYWORDS:
        recent = preview.RecentPapers()
        recent._corpus = corpus
        started = time.perf_counter()
        fast_count = recent._count(corpus, keyword)
        ours.append(time.perf_counter() - started)
        started = time.perf_counter()
        full_count = len(KeywordIndex.build([(0, [keyword])]).select(papers)[0][0])
        naive.append(time.perf_counter() - started)
        assert fast_count == full_count, (keyword, fast_count, full_count)
        print(f"  {keyword!r}: {full_count} papers, prefiltered {ours[-1] * 1000:.0f} ms, engine alone "
              f"{naive[-1] * 1000:.0f} ms")

    print(f"papers: {len(papers)}; squashed text prepared once per set of days in {prepare:.2f} s")
    print(f"median per keyword, prefiltered (web app): {statistics.median(ours) * 1000:.0f} ms")
    print(f"median per keyword, engine over every paper (naive): {statistics.median(naive) * 1000:.0f} ms")
    print(f"ratio naive / web app: {statistics.median(naive) / statistics.median(ours):.1f}x")


if __name__ == "__main__":
    main()
