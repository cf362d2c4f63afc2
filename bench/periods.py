"""Benchmark: choosing the day's recipients by digest period (weekly subscribers, carried papers, the
empty-day note) against the per-day query it replaced, on the same PostgreSQL data.

    python bench/periods.py [--subscribers 10000] [--days 5] [--per-day 3] [--weekly 0.2] [--repeat 5]

--subscribers confirmed subscribers, a --weekly share of them weekly on a random weekday, a tenth asking
for the empty-day note; --days announcement days with --per-day papers selected per subscriber and day,
every earlier day's papers of daily subscribers recorded as sent. Printed: milliseconds per call of
delivery.recipients_for_day for the last day (ours) and of the old query (selections of the day joined
to active subscribers), the ratio, and how many recipients each found.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a plain script from anywhere

from sqlalchemy import create_engine, insert, select, text  # noqa: E402
from sqlmodel import Session, col  # noqa: E402

from newsletter.db import make_engine  # noqa: E402
from newsletter.delivery import recipients_for_day  # noqa: E402
from newsletter.models import (  # noqa: E402
    Announcement,
    Paper,
    Run,
    Selection,
    SentPaper,
    Subscriber,
    SubscriberKeyword,
    SubscriberStatus,
    new_public_id,
    utcnow,
)
from newsletter.schema import upgrade_schema  # noqa: E402

PG_URL = os.environ.get("NEWSLETTER_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
FIRST_DAY = dt.date(2026, 11, 23)  # a Monday


def feed_days(count: int) -> list[dt.date]:
    days, day = [], FIRST_DAY
    while len(days) < count:
        if day.weekday() < 5:
            days.append(day)
        day += dt.timedelta(days=1)
    return days


def seed(session: Session, subscribers: int, days: list[dt.date], per_day: int, weekly: float) -> None:
    rng = random.Random(7)
    now = utcnow()
    session.execute(insert(Subscriber), [
        {"public_id": new_public_id(), "email": f"reader{n:06d}@example.org", "language": "EN-US", "timezone": "UTC",
         "status": SubscriberStatus.ACTIVE, "created_at": now, "consecutive_hard_failures": 0,
         "frequency": "weekly" if rng.random() < weekly else "daily", "weekday": rng.randrange(7),
         "empty_day_note": rng.random() < 0.1, "updates": True}
        for n in range(subscribers)
    ])
    ids = list(session.scalars(select(col(Subscriber.id))))
    session.execute(insert(SubscriberKeyword), [{"subscriber_id": i, "position": 0, "expression": "rl"} for i in ids])
    weekly_ids = set(session.scalars(select(col(Subscriber.id)).where(col(Subscriber.frequency) == "weekly")))
    papers = [f"2611.{n:05d}" for n in range(len(days) * 200)]
    session.execute(insert(Paper), [
        {"arxiv_id": a, "version": 1, "title": a, "abstract": a, "authors": [], "categories": ["cs.LG"],
         "primary_category": "cs.LG", "details_source": "api", "harvested_at": now}
        for a in papers
    ])
    for number, day in enumerate(days):
        todays = papers[number * 200:(number + 1) * 200]
        session.execute(insert(Announcement), [{"day": day, "arxiv_id": a, "announce_type": "new"} for a in todays])
        session.add(Run(day=day, harvested_at=now))
        rows = [
            {"day": day, "subscriber_id": i, "arxiv_id": a, "keyword_position": 0, "terms": ["rl"]}
            for i in ids for a in rng.sample(todays, per_day)
        ]
        for start in range(0, len(rows), 5000):
            session.execute(insert(Selection), rows[start:start + 5000])
        if day != days[-1]:
            sent = [{"subscriber_id": r["subscriber_id"], "arxiv_id": r["arxiv_id"], "day": day, "version": 1}
                    for r in rows if r["subscriber_id"] not in weekly_ids]
            for start in range(0, len(sent), 5000):
                session.execute(insert(SentPaper), sent[start:start + 5000])
    session.commit()
    session.execute(text("ANALYZE"))
    session.commit()


def old_recipients(session: Session, day: dt.date) -> list[int]:
    """Before periods: active subscribers with a paper selected for the day."""
    return list(session.scalars(
        select(col(Subscriber.id))
        .join(Selection, col(Selection.subscriber_id) == col(Subscriber.id))
        .where(col(Selection.day) == day, col(Subscriber.status) == SubscriberStatus.ACTIVE)
        .distinct()
        .order_by(col(Subscriber.id))
    ))


def timed(call, repeat: int) -> tuple[float, int]:  # type: ignore[no-untyped-def]
    found = call()
    started = time.perf_counter()
    for _ in range(repeat):
        call()
    return (time.perf_counter() - started) / repeat * 1000, len(found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subscribers", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=5)
    parser.add_argument("--per-day", type=int, default=3)
    parser.add_argument("--weekly", type=float, default=0.2)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    schema = f"bench_periods_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_URL)
    with admin.begin() as connection:
        connection.execute(text(f"CREATE SCHEMA {schema}"))
    separator = "&" if "?" in PG_URL else "?"
    engine = make_engine(f"{PG_URL}{separator}options=-csearch_path%3D{schema}")
    try:
        upgrade_schema(engine)
        days = feed_days(args.days)
        with Session(engine) as session:
            seed(session, args.subscribers, days, args.per_day, args.weekly)
            ours, ours_found = timed(lambda: recipients_for_day(session, days[-1]), args.repeat)
            old, old_found = timed(lambda: old_recipients(session, days[-1]), args.repeat)
        print(f"{args.subscribers} subscribers ({args.weekly:.0%} weekly), {args.days} days x {args.per_day} papers")
        print(f"recipients by period (ours):  {ours:8.1f} ms  {ours_found} recipients")
        print(f"recipients by day (before):   {old:8.1f} ms  {old_found} recipients")
        print(f"ratio ours/before: {ours / old:.2f}")
    finally:
        engine.dispose()
        with admin.begin() as connection:
            connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


if __name__ == "__main__":
    main()
