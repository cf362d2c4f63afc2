"""Benchmark: one whole announcement day through Celery, end to end, against local servers.

    python bench/daily_run.py [--subscribers 10000] [--papers 2000] [--workers 2] [--naive-sample 300]

A local arXiv server announces --papers papers (the arXiv API pages go through the production
client with the production 3 s politeness delay unless --arxiv-delay says otherwise), a local
DeepL server translates, and a counting aiosmtpd sink receives the mail. --subscribers
confirmed subscribers follow one or two of 200 topics. `celery -A workers.celery_app worker`
runs with --workers pool processes on the machine's PostgreSQL and Redis (database 12), and
`newsletter run-daily --via-celery` runs the day (its trigger polls the feed as beat's tick does).
Match and translate start on the feed's text while the harvest still fetches the API's details;
the stage lines say so. Printed: wall time per stage (from the run row) and in total, messages per second, that every
subscriber got exactly one digest, and the latency from the feed showing the day to the last
digest accepted by the SMTP server (run row: feed_seen_at to last_accepted_at) plus beat's poll
interval, beside today's 30-minute poll and the arXiv politeness floor for the API requests made.

The naive way, for comparison: the embedded default, `run_daily`'s in-process delivery in one
process, measured on --naive-sample subscribers of the same day (their deliveries are reset
first) and given as messages per second.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a plain script from anywhere

import redis  # noqa: E402
from aiosmtpd.controller import Controller  # noqa: E402
from sqlalchemy import create_engine, delete, insert, select, text  # noqa: E402
from sqlmodel import Session  # noqa: E402

from newsletter.config import Settings  # noqa: E402
from newsletter.db import make_engine  # noqa: E402
from newsletter.mail.smtp import SmtpBackend  # noqa: E402
from newsletter.models import Delivery, Run, SentPaper, Stage, Subscriber, SubscriberKeyword  # noqa: E402
from newsletter.pipeline import deliver_chunk  # noqa: E402
from newsletter.render import DigestRenderer  # noqa: E402
from newsletter.runs import stage_rows, stage_seconds  # noqa: E402
from newsletter.schema import upgrade_schema  # noqa: E402
from tests.servers import ArxivServer, DeepLServer, build_feed, make_paper  # noqa: E402
from tests.servers.smtp import offering_pipelining  # noqa: E402

DAY = dt.date(2026, 11, 24)
CATEGORIES = ["cs.AI", "cs.LG"]
PG_URL = os.environ.get("NEWSLETTER_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("NEWSLETTER_BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
DEEPL_KEY = "bench-key:fx"
BIN = Path(sys.executable).parent
ADJECTIVES = (
    "sparse robust causal federated adversarial bayesian contrastive hierarchical multimodal quantum "
    "efficient scalable implicit equivariant probabilistic recurrent generative neural symbolic spectral"
).split()
NOUNS = "transformer autoencoder planner retriever policy tokenizer optimizer kernel segmenter detector".split()
TOPICS = [f"{adjective} {noun}" for adjective in ADJECTIVES for noun in NOUNS]


class CountingSink:
    """An SMTP server that only counts digests per recipient (10,000 parsed messages would not fit)."""

    def __init__(self) -> None:
        self.per_recipient: Counter[str] = Counter()
        self.bytes = 0
        self.lock = threading.Lock()
        with socket.socket() as probe:  # aiosmtpd wants a concrete port
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port, ready_timeout=10)

    async def handle_EHLO(self, server, session, envelope, hostname, responses):  # type: ignore[no-untyped-def]
        # As most real mail servers do.
        session.host_name = hostname
        return offering_pipelining(responses)

    async def handle_DATA(self, server, session, envelope) -> str:  # type: ignore[no-untyped-def]
        with self.lock:
            self.per_recipient.update(envelope.rcpt_tos)
            self.bytes += len(envelope.content or b"")
        return "250 OK"

    def __enter__(self) -> CountingSink:
        self.controller.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.controller.stop()


def make_papers(count: int, rng: random.Random) -> list:
    """Papers whose titles each carry one topic, spread evenly."""
    return [
        make_paper(
            f"2611.{index:05d}",
            title=f"A {TOPICS[index % len(TOPICS)]} for problem {index}",
            abstract=f"We study problem {index} with a {TOPICS[index % len(TOPICS)]}; it improves 2.5$\\times$ "
            + " ".join(rng.choice(NOUNS) for _ in range(80)),
            categories=CATEGORIES,
        )
        for index in range(1, count + 1)
    ]


def add_subscribers(engine, count: int, rng: random.Random) -> None:  # type: ignore[no-untyped-def]
    """Confirmed subscribers with one or two topics each, inserted in bulk."""
    with engine.begin() as conn:
        conn.execute(
            insert(Subscriber),
            [
                {"email": f"reader{index:05d}@example.org", "language": "ZH-HANS", "timezone": "Asia/Shanghai",
                 "status": "active", "created_at": dt.datetime.now(dt.UTC), "consecutive_hard_failures": 0}
                for index in range(count)
            ],
        )
        ids = list(conn.scalars(select(Subscriber.id).order_by(Subscriber.id)))
        keywords = []
        for subscriber_id in ids:
            for position, topic in enumerate(rng.sample(TOPICS, rng.choice((1, 2)))):
                keywords.append({"subscriber_id": subscriber_id, "position": position, "expression": topic})
        conn.execute(insert(SubscriberKeyword), keywords)


def wait_for_workers(url: str, timeout: float = 120) -> None:
    from celery import Celery

    probe = Celery(broker=url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe.control.ping(timeout=1.0):
            return
    raise SystemExit("the Celery worker did not start")


def naive_messages_per_second(database_url: str, settings: Settings, sample: int) -> tuple[int, float]:
    """In-process delivery, one process, to `sample` subscribers of the day (deliveries reset first)."""
    engine = make_engine(database_url)
    with Session(engine, expire_on_commit=False) as session:
        ids = list(session.scalars(select(Delivery.subscriber_id).where(Delivery.day == DAY).limit(sample)))
        session.execute(delete(Delivery).where(Delivery.day == DAY, Delivery.subscriber_id.in_(ids)))
        session.execute(delete(SentPaper).where(SentPaper.day == DAY, SentPaper.subscriber_id.in_(ids)))
        session.commit()
        backend = SmtpBackend(settings)
        started = time.perf_counter()
        result = deliver_chunk(session, settings, backend, DAY, ids, DigestRenderer())
        elapsed = time.perf_counter() - started
        backend.close()
    engine.dispose()
    return result.sent, elapsed


def print_latency(run_row: Run, settings: Settings, api_requests: int, delay: float) -> None:
    """Feed showing the day -> last digest accepted, with the poll interval, beside today's and arXiv's floor."""
    if run_row.feed_seen_at is None or run_row.last_accepted_at is None:
        print("  latency: not recorded (feed_seen_at or last_accepted_at missing)")
        return
    pipeline = (run_row.last_accepted_at - run_row.feed_seen_at).total_seconds()
    poll = settings.beat_poll_every_minutes * 60
    ours, today = pipeline + poll, pipeline + 30 * 60
    floor = api_requests * 3.0
    print(f"  feed seen -> last digest accepted by the SMTP server: {pipeline:8.1f} s (run row)")
    print(f"  with the poll interval, worst case: ours (every {poll // 60} min, conditional) {ours:8.1f} s;"
          f" today's (every 30 min) {today:8.1f} s; ratio {today / ours:.1f}x")
    print(f"  arXiv politeness floor: {api_requests} API requests x 3 s = {floor:.0f} s"
          f" (this run's delay: {delay} s per request)")
    print(f"  target: under 300 s, poll interval included: {'met' if ours < 300 else 'missed'} ({ours:.0f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subscribers", type=int, default=10_000)
    parser.add_argument("--papers", type=int, default=2_000)
    parser.add_argument("--workers", type=int, default=2, help="worker pool processes")
    parser.add_argument("--arxiv-delay", type=float, default=3.0, help="seconds between arXiv API pages")
    parser.add_argument("--naive-sample", type=int, default=300)
    parser.add_argument("--pool", type=int, help="NEWSLETTER_SMTP_POOL_SIZE (default: the production default)")
    args = parser.parse_args()
    rng = random.Random(7)

    admin = create_engine(PG_URL)
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    database_url = f"{PG_URL}{'&' if '?' in PG_URL else '?'}options=-csearch_path%3D{schema}"
    engine = make_engine(database_url)
    upgrade_schema(engine)
    broker = redis.Redis.from_url(REDIS_URL)
    broker.flushdb()
    workers: subprocess.Popen | None = None
    try:
        deepl = DeepLServer(auth_key=DEEPL_KEY, character_limit=10**10)
        with ArxivServer() as arxiv_server, deepl as deepl_server, CountingSink() as sink:
            papers = make_papers(args.papers, rng)
            arxiv_server.add_papers(*papers)
            arxiv_server.set_feed(CATEGORIES, build_feed(DAY, papers, categories=CATEGORIES))
            add_subscribers(engine, args.subscribers, rng)
            env = {key: value for key, value in os.environ.items() if not key.startswith("NEWSLETTER_")}
            env.update(
                NEWSLETTER_ENVIRONMENT="test",
                NEWSLETTER_DATABASE_URL=database_url,
                NEWSLETTER_REDIS_URL=REDIS_URL,
                NEWSLETTER_ARXIV_FEED_URL=arxiv_server.feed_base_url,
                NEWSLETTER_ARXIV_API_URL=arxiv_server.api_url,
                NEWSLETTER_ARXIV_DELAY_SECONDS=str(args.arxiv_delay),
                NEWSLETTER_CATEGORIES=",".join(CATEGORIES),
                NEWSLETTER_DEEPL_AUTH_KEY=DEEPL_KEY,
                NEWSLETTER_DEEPL_SERVER_URL=deepl_server.server_url,
                NEWSLETTER_DEEPL_DAILY_CHARACTER_BUDGET="100000000",
                NEWSLETTER_MAIL_BACKEND="smtp",
                NEWSLETTER_SMTP_HOST="127.0.0.1",
                NEWSLETTER_SMTP_PORT=str(sink.port),
                NEWSLETTER_SMTP_MAX_PER_SECOND="100000",
                NEWSLETTER_SECRET_KEY="bench-secret-key-0123456789",
            )
            if args.pool:
                env["NEWSLETTER_SMTP_POOL_SIZE"] = str(args.pool)
            workers = subprocess.Popen(
                [str(BIN / "celery"), "-A", "workers.celery_app", "worker", "-l", "WARNING",
                 "--pool=prefork", f"--concurrency={args.workers}", "-n", "bench@%h"],
                env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            )
            wait_for_workers(REDIS_URL)

            started = time.perf_counter()
            with subprocess.Popen(
                # No --date: the trigger finds the day with a (conditional) poll of the feed, as beat does.
                [str(BIN / "newsletter"), "run-daily", "--via-celery"],
                env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            ) as run:
                try:
                    _, errors = run.communicate()
                finally:
                    run.kill()
            wall = time.perf_counter() - started
            if run.returncode != 0:
                raise SystemExit(f"run-daily failed: {errors.strip()}")
            with Session(engine) as session:
                run_row = session.scalars(select(Run).where(Run.day == DAY)).one()
                stages, seconds = stage_rows(session, run_row), stage_seconds(session, run_row)
            api_requests = len(arxiv_server.api_requests)
            os.killpg(workers.pid, signal.SIGTERM)
            workers.wait(timeout=60)
            workers = None

            sent = stages[Stage.DELIVER].sent or 0
            recipients = stages[Stage.DELIVER].recipients or 0
            processes = stages[Stage.MATCH].details.get("processes", 1)
            once = sum(1 for count in sink.per_recipient.values() if count == 1)
            settings = Settings(_env_file=None, **{  # type: ignore[call-arg]
                key.removeprefix("NEWSLETTER_").lower(): value for key, value in env.items()
                if key.startswith("NEWSLETTER_")
            })
            naive_sent, naive_seconds = naive_messages_per_second(database_url, settings, args.naive_sample)

        print(f"daily run through Celery, {args.workers} worker processes: {args.subscribers} subscribers, "
              f"{args.papers} announced papers, arXiv delay {args.arxiv_delay} s")
        for stage in Stage:
            note = f" (papers scanned in {processes} processes)" if stage == Stage.MATCH else ""
            row = stages.get(stage)
            if stage in (Stage.MATCH, Stage.TRANSLATE) and row and run_row.harvested_at and row.finished_at:
                if row.finished_at <= run_row.harvested_at:
                    note += ", beside the harvest's API requests"
            print(f"  {stage:<10} {seconds.get(stage, 0):8.1f} s{note}")
        print(f"  {'run total':<10} {seconds.get('total', 0):8.1f} s (run row: first stage to last digest)")
        print(f"  {'wall':<10} {wall:8.1f} s (`newsletter run-daily --via-celery`, enqueue to exit)")
        print(f"  digests: {sent} sent to {recipients} recipients; {once} addresses got exactly one, "
              f"{len(sink.per_recipient) - once} got more; {sink.bytes / sent / 1024:.0f} KiB each")
        celery_rate = sent / seconds["deliver"]
        naive_rate = naive_sent / naive_seconds
        print(f"  messages per second, Celery ({args.workers} processes): {celery_rate:8.1f}")
        print(f"  messages per second, naive in-process (1 process, {naive_sent} digests): {naive_rate:8.1f}")
        print(f"  ratio: {celery_rate / naive_rate:.2f}x")
        # Other programs on the machine take CPU from the workers; say how busy it was.
        print(f"  machine load average (1, 5, 15 min) at the end: {', '.join(f'{v:.1f}' for v in os.getloadavg())}"
              f" on {os.cpu_count()} cores")
        if args.subscribers < 10_000 or args.papers < 2_000:
            print("  note: a scaled-down run; the target is stated for 10,000 subscribers and 2,000 papers")
        deliver = seconds["deliver"]
        print(f"  target: delivery of the digests under 60 s: {'met' if deliver < 60 else 'missed'} ({deliver:.0f} s;"
              " before batched delivery: 260 s)")
        print(f"  target: whole day under 150 s: {'met' if wall < 150 else 'missed'} ({wall:.0f} s;"
              " before batched delivery: 342 s)")
        print_latency(run_row, settings, api_requests, args.arxiv_delay)
    finally:
        if workers is not None:
            os.killpg(workers.pid, signal.SIGKILL)
            workers.wait()
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()
        broker.flushdb()


if __name__ == "__main__":
    main()
