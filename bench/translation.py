"""Benchmark: DeepL characters billed for one announcement day, against the floor and the naive way.

    python bench/translation.py [--papers 2000] [--subscribers 10000]

A day of --papers papers (the real arXiv entries in tests/fixtures/reference/arxiv, with their LaTeX,
re-keyed and sentence-shuffled to reach the count) and --subscribers subscribers (85% Simplified
Chinese, 10% English, 3% German, 2% Japanese), each selecting 3-40 papers with Zipf popularity.
The production stage (translate_selected, the real `deepl` client) runs against the local DeepL
stand-in on a SQLite database, twice for the same day. Printed: characters billed versus the floor
(the characters of the unique selected papers' titles and abstracts, per target language; ratio 1.00)
and versus the naive way (every subscriber's papers translated for that subscriber), then the second
run (floor 0).

Then a slow DeepL (the stand-in taking 0.1 ms per character, billing every request it processes
even after the client gave up, as DeepL does), --slow-papers papers read by one Chinese reader,
times scaled down tenfold (a 1 s timeout): the production stage against the naive way, which is
today's behaviour before this change (requests of up to 50 texts, deepl-python's 5 automatic resends).
Printed: characters billed by the stand-in / the floor, papers translated, and the ratio.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import re
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a plain script from anywhere

import deepl  # noqa: E402
from sqlalchemy import insert, select  # noqa: E402
from sqlmodel import Session  # noqa: E402

from newsletter.config import Settings  # noqa: E402
from newsletter.db import make_engine  # noqa: E402
from newsletter.latex import protect_latex  # noqa: E402
from newsletter.models import Paper, Selection, Subscriber, SubscriberStatus  # noqa: E402
from newsletter.schema import upgrade_schema  # noqa: E402
from newsletter.translate import (  # noqa: E402
    make_translator,
    needs_translation,
    paper_texts,
    translate_selected,
)
from tests.servers.deepl import DeepLServer  # noqa: E402

REFERENCE = ROOT / "tests" / "fixtures" / "reference" / "arxiv"
ATOM = {"a": "http://www.w3.org/2005/Atom"}
DAY = dt.date(2026, 11, 24)
LANGUAGES = [("ZH-HANS", 0.85), ("EN-US", 0.10), ("DE", 0.03), ("JA", 0.02)]
KEY = "bench-key:fx"
SLOW_SECONDS_PER_CHARACTER = 0.0001
SLOW_TIMEOUT_SECONDS = 1.0  # deepl-python's default 10 s, scaled like the stand-in's speed


def real_entries() -> list[tuple[str, str]]:
    """(title, abstract) of every distinct real entry in the reference Atom and RSS files."""
    entries: dict[str, tuple[str, str]] = {}
    for path in sorted(REFERENCE.glob("api/**/*.xml")):
        for entry in ET.parse(path).getroot().findall("a:entry", ATOM):
            title = entry.findtext("a:title", "", ATOM) or ""
            if title and title != "Error":
                abstract = entry.findtext("a:summary", "", ATOM) or ""
                entries[entry.findtext("a:id", "", ATOM) or title] = (title, abstract)
    for path in sorted(REFERENCE.glob("feed/*.xml")):
        for item in ET.parse(path).getroot().iter("item"):
            description = item.findtext("description") or ""
            entries[item.findtext("link") or ""] = (
                item.findtext("title") or "",
                description.split("Abstract:", 1)[-1].strip(),
            )
    return [entry for entry in entries.values() if entry[0] and entry[1]]


def make_papers(count: int, rng: random.Random) -> list[dict]:
    """`count` papers: the real ones, then copies with new ids and shuffled sentences."""
    real = real_entries()
    papers = []
    for number in range(count):
        title, abstract = real[number % len(real)]
        if number >= len(real):
            sentences = re.split(r"(?<=\.)\s+", abstract.strip())
            rng.shuffle(sentences)
            abstract = " ".join(sentences)
        papers.append({"arxiv_id": f"2611.{number:05d}", "title": title, "abstract": abstract,
                       "authors": [], "categories": ["cs.LG"], "primary_category": "cs.LG"})
    return papers


def make_day(session: Session, papers: list[dict], subscribers: int, rng: random.Random) -> dict[int, list[str]]:
    """Store papers, subscribers and their selections; returns each subscriber's selected paper ids."""
    session.execute(insert(Paper), papers)
    languages = rng.choices([lang for lang, _ in LANGUAGES], [w for _, w in LANGUAGES], k=subscribers)
    session.execute(
        insert(Subscriber),
        [{"id": n + 1, "email": f"s{n}@example.org", "language": languages[n], "timezone": "Asia/Shanghai",
          "status": SubscriberStatus.ACTIVE, "consecutive_hard_failures": 0} for n in range(subscribers)],
    )
    popularity = [1 / (rank + 1) ** 0.9 for rank in range(len(papers))]
    chosen: dict[int, list[str]] = {}
    rows = []
    for subscriber in range(1, subscribers + 1):
        picks = {papers[i]["arxiv_id"] for i in rng.choices(range(len(papers)), popularity, k=rng.randint(3, 40))}
        chosen[subscriber] = sorted(picks)
        rows.extend({"day": DAY, "subscriber_id": subscriber, "arxiv_id": arxiv_id, "keyword_position": 0,
                     "terms": []} for arxiv_id in picks)
    session.execute(insert(Selection), rows)
    session.commit()
    return chosen


def naive_slow_run(server: DeepLServer, papers: list[dict]) -> int:
    """Today's behaviour before the change: 50-text requests, the client's own resends; papers translated."""
    deepl.http_client.max_network_retries = 5
    deepl.http_client.min_connection_timeout = SLOW_TIMEOUT_SECONDS
    deepl.http_client._BackoffTimer.BACKOFF_INITIAL = 0.1  # its 1 s backoff, scaled like the timeout
    client = deepl.DeepLClient(KEY, server_url=server.url)
    texts = [protect_latex(text)[0] for paper in papers for text in paper_texts(_as_paper(paper))]
    translated = 0
    for start in range(0, len(texts), 50):
        try:
            client.translate_text(texts[start:start + 50], source_lang="EN", target_lang="ZH-HANS",
                                  tag_handling="xml", ignore_tags=["x"])
        except deepl.DeepLException:
            break  # the old stage stopped the day's translation at the first failure
        translated += len(texts[start:start + 50]) // 2
    return translated


def _as_paper(row: dict) -> Paper:
    return Paper(arxiv_id=row["arxiv_id"], title=row["title"], abstract=row["abstract"])


def production_slow_run(server: DeepLServer, papers: list[dict], folder: str) -> int:
    """The production stage against the same slow DeepL; papers translated."""
    engine = make_engine(f"sqlite:///{folder}/slow.db")
    upgrade_schema(engine)
    settings = Settings(_env_file=None, database_url=str(engine.url), deepl_auth_key=KEY,  # type: ignore[call-arg]
                        deepl_server_url=server.url, deepl_daily_character_budget=10**12, environment="test",
                        deepl_timeout_seconds=SLOW_TIMEOUT_SECONDS)
    with Session(engine, expire_on_commit=False) as session:
        session.execute(insert(Paper), papers)
        session.add(Subscriber(id=1, email="s@example.org", language="ZH-HANS", status=SubscriberStatus.ACTIVE))
        session.execute(insert(Selection), [{"day": DAY, "subscriber_id": 1, "arxiv_id": p["arxiv_id"],
                                             "keyword_position": 0, "terms": []} for p in papers])
        session.commit()
        result = translate_selected(session, DAY, make_translator(settings), settings.deepl_daily_character_budget)
    engine.dispose()
    return result.translated


def slow_deepl(papers: list[dict]) -> None:
    """Print what a slow DeepL bills for the production stage and for the naive way, measured now."""
    floor = sum(len(p["title"]) + len(p["abstract"]) for p in papers)
    figures = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, run in (("naive", naive_slow_run), ("ours", production_slow_run)):
            with DeepLServer(KEY, character_limit=10**12) as server:
                server.seconds_per_character = SLOW_SECONDS_PER_CHARACTER
                started = time.perf_counter()
                translated = run(server, papers) if name == "naive" else run(server, papers, folder)
                server.wait_idle(120)  # requests the client gave up on are billed when DeepL finishes them
                figures[name] = (server.character_count, translated, len(server.translate_requests),
                                 time.perf_counter() - started)
    print(f"slow DeepL ({SLOW_SECONDS_PER_CHARACTER * 1000:.1f} ms per character, {SLOW_TIMEOUT_SECONDS:.0f} s "
          f"timeout): {len(papers)} papers for one Chinese reader, floor {floor:,} characters")
    for name, label in (("naive", "naive (50-text requests, 5 client resends)"), ("ours", "ours (production)")):
        billed, translated, requests, seconds = figures[name]
        print(f"  {label:44s} billed {billed:>9,}  billed/floor = {billed / floor:.2f}  "
              f"translated {translated}/{len(papers)} papers in {requests} requests ({seconds:.1f} s)")
    naive_billed, naive_translated = figures["naive"][0], figures["naive"][1]
    ours_billed, ours_translated = figures["ours"][0], figures["ours"][1]
    print(f"  ratio naive/ours billed = {naive_billed / max(ours_billed, 1):.2f}; characters billed per paper "
          f"translated: naive {naive_billed / max(naive_translated, 1):,.0f}"
          f"{' (none translated)' if not naive_translated else ''}, ours {ours_billed / max(ours_translated, 1):,.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--papers", type=int, default=2000)
    parser.add_argument("--subscribers", type=int, default=10_000)
    parser.add_argument("--slow-papers", type=int, default=120)
    args = parser.parse_args()
    rng = random.Random(5)
    papers = make_papers(args.papers, rng)
    size = {p["arxiv_id"]: len(p["title"]) + len(p["abstract"]) for p in papers}

    with tempfile.TemporaryDirectory() as folder, DeepLServer(KEY, character_limit=10**12) as server:
        engine = make_engine(f"sqlite:///{folder}/bench.db")
        upgrade_schema(engine)
        settings = Settings(_env_file=None, database_url=str(engine.url), deepl_auth_key=KEY,  # type: ignore[call-arg]
                            deepl_server_url=server.url, deepl_daily_character_budget=10**12, environment="test")
        with Session(engine, expire_on_commit=False) as session:
            chosen = make_day(session, papers, args.subscribers, rng)
            language_of = dict(session.execute(select(Subscriber.id, Subscriber.language)).all())
            unique: dict[str, set[str]] = defaultdict(set)
            naive = 0
            for subscriber, ids in chosen.items():
                if needs_translation(language_of[subscriber]):
                    unique[language_of[subscriber]].update(ids)
                    naive += sum(size[arxiv_id] for arxiv_id in ids)
            floor = sum(size[arxiv_id] for ids in unique.values() for arxiv_id in ids)

            started = time.perf_counter()
            first = translate_selected(session, DAY, make_translator(settings), settings.deepl_daily_character_budget)
            first_seconds = time.perf_counter() - started
            requests_first = len(server.translate_requests)
            started = time.perf_counter()
            second = translate_selected(session, DAY, make_translator(settings), settings.deepl_daily_character_budget)
            second_seconds = time.perf_counter() - started
        engine.dispose()

    pairs = sum(len(ids) for ids in unique.values())
    print(f"day: {args.papers} papers, {args.subscribers} subscribers, "
          f"{sum(len(ids) for ids in chosen.values())} selections; "
          f"{pairs} (paper, language) pairs to translate in {len(unique)} languages")
    print(f"first run:  billed {first.billed_characters:,} characters in {requests_first} requests "
          f"({first.translated} papers, {first_seconds:.1f} s)")
    print(f"  floor (unique selected titles + abstracts per language): {floor:,}  "
          f"ratio billed/floor = {first.billed_characters / floor:.3f}")
    print(f"  naive (each subscriber's papers translated for them):    {naive:,}  "
          f"ratio naive/floor = {naive / floor:.2f}, billed is {naive / max(first.billed_characters, 1):.1f}x less")
    print(f"second run of the same day: billed {second.billed_characters:,} characters "
          f"(floor 0) in {len(server.translate_requests) - requests_first} requests ({second_seconds:.1f} s)")
    print("note: billed can fall under the floor: line breaks are collapsed and each LaTeX span is sent as a "
          f"short placeholder. DeepL's free tier (500,000 characters a month) covers "
          f"{500_000 / max(first.billed_characters, 1):.0%} of such a day; NEWSLETTER_DEEPL_DAILY_CHARACTER_BUDGET "
          "caps the spend (unlimited here)")
    slow_deepl(make_papers(args.slow_papers, random.Random(7)))


if __name__ == "__main__":
    main()
