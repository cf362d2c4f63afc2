"""Benchmark: harvest one announcement day of 2,000 papers from the local arXiv stand-in into PostgreSQL.

    python bench/harvest.py [--papers 2000]

The stand-in (tests/servers) serves the announcement feed and the API in the real formats, with
the real reference abstracts re-keyed to reach --papers; the API delay is 0 so the figure is our
own cost. "batched" is the production harvest (feed, id_list batches of 100 through the paced
`arxiv` client, one bulk upsert, one commit). "naive" asks the API once per paper and commits
each row, as simple harvesters do. Each runs in a fresh subprocess on its own PostgreSQL schema,
so peak memory figures do not mix.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a plain script from anywhere

PG_URL = os.environ.get("NEWSLETTER_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
CATEGORIES = ["cs.AI", "cs.LG"]
DAY = dt.date(2026, 11, 19)


def build_papers(count: int):  # type: ignore[no-untyped-def]
    from tests.conftest import REFERENCE
    from tests.servers.arxiv import load_entries_from_atom, make_paper

    real = load_entries_from_atom(next((REFERENCE / "arxiv" / "api").glob("q_testing_s0_m100_*.xml")))
    papers = []
    for index in range(count):
        source = real[index % len(real)]
        categories = ["cs.LG", *source.categories] if index % 5 else ["math.OC", "cs.AI"]
        papers.append(
            make_paper(
                f"2611.{index + 1:05d}",
                title=source.title,
                abstract=source.abstract,
                authors=source.authors,
                categories=list(dict.fromkeys(categories)),
                comment=source.comment,
                journal_ref=source.journal_ref,
                doi=source.doi,
            )
        )
    return papers


def _schema_url() -> tuple[str, str]:
    from sqlalchemy import create_engine, text

    schema = f"bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    admin.dispose()
    separator = "&" if "?" in PG_URL else "?"
    return schema, f"{PG_URL}{separator}options=-csearch_path%3D{schema}"


def _drop_schema(schema: str) -> None:
    from sqlalchemy import create_engine, text

    admin = create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


# --------------------------------------------------------------------------------------------
# the two ways, each run in a child process
# --------------------------------------------------------------------------------------------


def harvest_batched(session, feed_url: str, api_url: str, database_url: str) -> int:  # type: ignore[no-untyped-def]
    from newsletter.config import Settings
    from newsletter.pipeline import harvest_stage, production_transports

    base, categories = feed_url.rsplit("/", 1)
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        environment="test",
        database_url=database_url,
        arxiv_feed_url=base + "/",
        arxiv_api_url=api_url,
        arxiv_delay_seconds=0,
        categories=categories.split("+"),
    )
    outcome = harvest_stage(session, production_transports(settings), None, settings.categories)
    return outcome.counts["announced"]


def harvest_naive(session, feed_url: str, api_url: str, database_url: str) -> int:  # type: ignore[no-untyped-def]
    import arxiv
    import requests

    from newsletter.harvest import parse_announcement_feed, record_from_result
    from newsletter.models import Announcement, Paper

    feed = parse_announcement_feed(requests.get(feed_url, timeout=30).content)
    client = arxiv.Client(page_size=1, delay_seconds=0, num_retries=0)
    client.query_url_format = f"{api_url}?{{}}"
    for item in feed.items:
        result = next(client.results(arxiv.Search(id_list=[item.record.arxiv_id], max_results=1)))
        record = record_from_result(result)
        session.merge(
            Paper(
                arxiv_id=record.arxiv_id,
                version=record.version,
                title=record.title,
                abstract=record.abstract,
                authors=list(record.authors),
                categories=list(record.categories),
                primary_category=record.primary_category,
                comment=record.comment,
                journal_ref=record.journal_ref,
                doi=record.doi,
                published=record.published,
                updated=record.updated,
            )
        )
        session.merge(Announcement(day=feed.day, arxiv_id=record.arxiv_id, announce_type=str(item.announce_type)))
        session.commit()
    return len(feed.items)


def _max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(method: str, feed_url: str, api_url: str) -> None:
    from sqlalchemy import func, select
    from sqlmodel import Session

    import newsletter.pipeline  # noqa: F401 - imports are not part of the figure
    from newsletter.db import make_engine
    from newsletter.models import Announcement
    from newsletter.schema import upgrade_schema

    schema, database_url = _schema_url()
    engine = make_engine(database_url)
    try:
        upgrade_schema(engine)
        harvest = harvest_batched if method == "batched" else harvest_naive
        with Session(engine, expire_on_commit=False) as session:
            # Peak RSS growth, not tracemalloc: tracing would slow the code it measures several times over.
            rss_before = _max_rss_mib()
            started = time.perf_counter()
            announced = harvest(session, feed_url, api_url, database_url)
            seconds = time.perf_counter() - started
            stored = session.scalar(select(func.count()).select_from(Announcement))
    finally:
        engine.dispose()
        _drop_schema(schema)
    print(json.dumps({
        "seconds": seconds,
        "announced": announced,
        "stored": stored,
        "peak_growth_mib": _max_rss_mib() - rss_before,
        "max_rss_mib": _max_rss_mib(),
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--papers", type=int, default=2000)
    parser.add_argument("--naive-papers", type=int, default=500, help="the naive way runs on the day's first N")
    parser.add_argument("--child", nargs=3, metavar=("METHOD", "FEED_URL", "API_URL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return

    from tests.servers import ArxivServer, build_feed

    papers = build_papers(args.papers)
    items = [(paper, "new" if paper.primary_category in CATEGORIES else "cross") for paper in papers]
    figures = {}
    sizes = {"batched": args.papers, "naive": min(args.naive_papers, args.papers)}
    with ArxivServer(papers) as server:
        server.set_feed(CATEGORIES, build_feed(DAY, items, CATEGORIES))
        server.set_feed(["cs.AI", "cs.LG", "stat.ML"], build_feed(DAY, items[: sizes["naive"]], CATEGORIES))
        feeds = {"batched": server.feed_base_url + "cs.AI+cs.LG", "naive": server.feed_base_url + "cs.AI+cs.LG+stat.ML"}
        for method in ("batched", "naive"):
            before = len(server.api_requests)
            output = subprocess.run(
                [sys.executable, __file__, "--child", method, feeds[method], server.api_url],
                check=True, capture_output=True, text=True,
            ).stdout
            figures[method] = json.loads(output.strip().splitlines()[-1])
            figures[method]["api_requests"] = len(server.api_requests) - before
    print(f"harvest of {args.papers} announced papers from the local arXiv stand-in into PostgreSQL (delay 0)")
    if sizes["naive"] < args.papers:
        print(f"  (naive measured on the first {sizes['naive']} papers to keep the run short; rates compare directly)")
    rates = {}
    for method, figure in figures.items():
        assert figure["stored"] == sizes[method], f"{method} stored {figure['stored']} of {sizes[method]}"
        rates[method] = figure["announced"] / figure["seconds"]
        print(
            f"  {method:8s} {rates[method]:7.0f} papers/s  ({figure['announced']} papers in {figure['seconds']:.2f} s, "
            f"{figure['api_requests']} API requests, peak memory +{figure['peak_growth_mib']:.0f} MiB "
            f"over the loaded interpreter, max RSS {figure['max_rss_mib']:.0f} MiB)"
        )
    print(f"  batched is {rates['batched'] / rates['naive']:.1f}x faster than naive "
          "(one API request per paper, one commit per row)")


if __name__ == "__main__":
    main()
