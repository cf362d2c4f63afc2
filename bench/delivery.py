"""Benchmark: delivering a day's digests, batched claims and records against today's per-message commits.

    python bench/delivery.py [--subscribers 2000] [--papers 10] [--rounds 2] [--base REV] [--pool 2]

Both ways run the production `deliver_day` on the same PostgreSQL day (--subscribers bilingual
subscribers, each with --papers selected papers and their Chinese translations) to the same local
aiosmtpd server (its own process; it offers PIPELINING, as most servers do, and counts what it
accepts): this checkout, and --base (default: main before the batched delivery), unpacked with
`git archive` and run with the same interpreter. Each delivery runs in a fresh process, so its CPU
time (user + system, every thread) is the sender's alone; the ways alternate for --rounds rounds,
with the day's delivery rows cleared in between. The throttle is set out of the way
(NEWSLETTER_SMTP_MAX_PER_SECOND=1e6) so the figures show what the sender can do.

Printed per way: messages per second (wall), sender CPU per message, and the ratio.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a plain script from anywhere

from sqlalchemy import create_engine, insert, select, text  # noqa: E402

from bench.cli import unpack  # noqa: E402
from newsletter.db import make_engine  # noqa: E402
from newsletter.models import Paper, Selection, Subscriber, SubscriberKeyword, Translation  # noqa: E402
from newsletter.schema import upgrade_schema  # noqa: E402

DAY = dt.date(2026, 11, 24)
# main as it was before claims and records were batched (issue 20).
BASE = "7162a96"
PG_URL = os.environ.get("NEWSLETTER_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("NEWSLETTER_BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
ABSTRACT = (
    "We study policy optimisation for robot manipulation with diffusion models. Our method couples a "
    "transformer backbone with a learned value function and improves sample efficiency by $2.5\\times$ "
    "on six benchmarks, while keeping inference under 10 ms on a single GPU. "
) * 3
ABSTRACT_ZH = "我们研究基于扩散模型的机器人操作策略优化，在六个基准上将样本效率提高了2.5倍。" * 4

# One delivery of the day, in its own process, by the code on PYTHONPATH; prints its figures as JSON.
DRIVER = """
import json, resource, sys, time, datetime as dt
from sqlmodel import Session
from newsletter.config import Settings
from newsletter.db import make_engine
from newsletter.delivery import deliver_day
from newsletter.mail import make_backend
from newsletter.render import DigestRenderer
from newsletter.tokens import LinkSigner
settings = Settings(_env_file=None)
engine = make_engine(settings.database_url)
backend = make_backend(settings)
with Session(engine, expire_on_commit=False) as session:
    before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    result = deliver_day(session, dt.date.fromisoformat(sys.argv[1]), settings, backend,
                         LinkSigner("bench-secret-key-0123456789"), DigestRenderer())
    wall, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF)
backend.close()
cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
print(json.dumps({"sent": result.sent, "failed": result.failed, "wall": wall, "cpu": cpu}))
"""


def serve(port: int) -> None:
    """Accept and count messages until SIGTERM, then print the count."""
    from aiosmtpd.controller import Controller

    from tests.servers.smtp import offering_pipelining

    class Counter:
        messages = 0

        async def handle_EHLO(self, server, session, envelope, hostname, responses):  # type: ignore[no-untyped-def]
            session.host_name = hostname
            return offering_pipelining(responses)

        async def handle_DATA(self, server, session, envelope) -> str:  # type: ignore[no-untyped-def]
            Counter.messages += 1
            return "250 OK"

    controller = Controller(Counter(), hostname="127.0.0.1", port=port)
    controller.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("ready", flush=True)
    stop.wait()
    controller.stop()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(Counter.messages, usage.ru_utime + usage.ru_stime, flush=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def seed(engine, subscribers: int, per_digest: int) -> None:  # type: ignore[no-untyped-def]
    """The day: a pool of papers with translations, and subscribers each with `per_digest` of them selected."""
    rng = random.Random(20)
    pool = [f"2611.{n:05d}" for n in range(max(200, per_digest))]
    now = dt.datetime.now(dt.UTC)
    with engine.begin() as conn:
        conn.execute(insert(Paper), [
            {"arxiv_id": arxiv_id, "version": 1, "title": f"Diffusion Policies for Dexterous Manipulation, {arxiv_id}",
             "abstract": ABSTRACT, "authors": [f"Author {k}" for k in range(6)], "categories": ["cs.RO", "cs.LG"],
             "primary_category": "cs.RO", "details_source": "api", "harvested_at": now}
            for arxiv_id in pool
        ])  # fmt: skip
        conn.execute(insert(Translation), [
            {"arxiv_id": arxiv_id, "language": "ZH-HANS", "title": f"灵巧操作的扩散策略 {arxiv_id}",
             "abstract": ABSTRACT_ZH, "source": "deepl", "billed_characters": 0, "created_at": now}
            for arxiv_id in pool
        ])  # fmt: skip
        conn.execute(insert(Subscriber), [
            {"email": f"reader{n:05d}@example.org", "public_id": uuid.uuid4().hex, "language": "ZH-HANS",
             "timezone": "Asia/Shanghai", "status": "active", "created_at": now, "consecutive_hard_failures": 0}
            for n in range(subscribers)
        ])  # fmt: skip
        ids = list(conn.scalars(select(Subscriber.id).order_by(Subscriber.id)))
        conn.execute(insert(SubscriberKeyword), [
            {"subscriber_id": subscriber_id, "position": 0, "expression": "diffusion policy"} for subscriber_id in ids
        ])  # fmt: skip
        conn.execute(insert(Selection), [
            {"day": DAY, "subscriber_id": subscriber_id, "arxiv_id": arxiv_id, "keyword_position": 0,
             "terms": ["diffusion policy"]}
            for subscriber_id in ids for arxiv_id in rng.sample(pool, per_digest)
        ])  # fmt: skip


def deliver_once(tree: Path, env: dict[str, str]) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, DAY.isoformat()], cwd=tree, env={**env, "PYTHONPATH": str(tree)},
        capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode != 0:
        sys.exit(f"delivery with {tree} failed:\n{done.stderr[-3000:]}")
    figures: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=2000)
    parser.add_argument("--papers", type=int, default=10, help="papers in each digest")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--base", default=BASE, help="the revision to compare with")
    parser.add_argument("--pool", type=int, default=2, help="NEWSLETTER_SMTP_POOL_SIZE for both ways")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return

    admin = create_engine(PG_URL)
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    database_url = f"{PG_URL}{'&' if '?' in PG_URL else '?'}options=-csearch_path%3D{schema}"
    port = free_port()
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port)], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        server.stdout.readline()
        engine = make_engine(database_url)
        upgrade_schema(engine)
        seed(engine, args.subscribers, args.papers)
        env = {key: value for key, value in os.environ.items() if not key.startswith("NEWSLETTER_")}
        env.update(
            NEWSLETTER_ENVIRONMENT="test", NEWSLETTER_DATABASE_URL=database_url, NEWSLETTER_REDIS_URL=REDIS_URL,
            NEWSLETTER_MAIL_BACKEND="smtp", NEWSLETTER_SMTP_HOST="127.0.0.1", NEWSLETTER_SMTP_PORT=str(port),
            NEWSLETTER_SMTP_MAX_PER_SECOND="1000000", NEWSLETTER_SMTP_POOL_SIZE=str(args.pool),
            NEWSLETTER_BASE_URL="https://digest.example.org", NEWSLETTER_SECRET_KEY="bench-secret-key-0123456789",
        )  # fmt: skip
        print(f"{args.subscribers} bilingual digests of {args.papers} papers to local aiosmtpd (offers PIPELINING),"
              f" PostgreSQL, pool of {args.pool} SMTP sessions, throttle off")  # fmt: skip
        print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        figures: dict[str, list[dict[str, float]]] = {"batched": [], "today": []}
        with tempfile.TemporaryDirectory() as temporary:
            trees = {"batched": ROOT, "today": unpack(args.base, Path(temporary))}
            for _ in range(args.rounds):
                for way, tree in trees.items():
                    with engine.begin() as conn:
                        conn.execute(text("DELETE FROM sent_paper"))
                        conn.execute(text("DELETE FROM delivery"))
                    figures[way].append(deliver_once(tree, env))
    finally:
        server.send_signal(signal.SIGTERM)
        out, _ = server.communicate(timeout=60)
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    count, server_cpu = out.strip().splitlines()[-1].split()
    received = int(count)
    rates = {}
    for way, runs in figures.items():
        sent = [run["sent"] for run in runs]
        rate = statistics.median(run["sent"] / run["wall"] for run in runs)
        cpu = statistics.median(1000 * run["cpu"] / run["sent"] for run in runs)
        rates[way] = (rate, cpu)
        label = "batched (this checkout)" if way == "batched" else f"today ({args.base}, per-message commits)"
        print(f"{label:42} {rate:7.1f} messages/s   sender CPU {cpu:5.2f} ms/message   (sent {sent})")
    (new_rate, new_cpu), (old_rate, old_cpu) = rates["batched"], rates["today"]
    print(f"ratio batched / today: {new_rate / old_rate:.2f}x messages/s, {old_cpu / new_cpu:.2f}x less CPU/message")
    total = sum(run["sent"] for runs in figures.values() for run in runs)
    print(f"server accepted {received} of {total:.0f} messages sent; the server's own CPU (aiosmtpd, both ways):"
          f" {1000 * float(server_cpu) / max(received, 1):.2f} ms/message")
    if received != total or any(run["failed"] for runs in figures.values() for run in runs):
        sys.exit("some messages did not arrive")


if __name__ == "__main__":
    main()
