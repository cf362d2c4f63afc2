"""Benchmark: digests per second over SMTP, pooled connections vs. a new connection per message.

    python bench/delivery.py [--messages 5000] [--papers 10] [--threads 2] [--tls]

A local aiosmtpd server (its own process, so it does not share the GIL with the sender) counts
what it accepts. Both ways send the same digest (rendered once from --papers synthetic papers
with the production template) to --messages distinct addresses through the production code:
`build_message` + `SmtpBackend.send` per recipient, from --threads sender threads (default 2,
the default pool size). The pooled way shares one SmtpBackend, whose pool reuses its sessions;
the naive way opens a backend, sends and QUITs for every message. The throttle is set out of
the way (NEWSLETTER_SMTP_MAX_PER_SECOND=1e6) so the figures show what the transport can do.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a plain script from anywhere

from newsletter.config import Settings  # noqa: E402
from newsletter.mail.message import Sender, build_message  # noqa: E402
from newsletter.mail.smtp import SmtpBackend  # noqa: E402
from newsletter.models import Paper, new_public_id  # noqa: E402
from newsletter.render import Digest, DigestRenderer, KeywordSection, RenderedDigest, paper_view  # noqa: E402
from newsletter.tokens import LinkSigner, subscriber_links  # noqa: E402

TARGET_PER_SECOND = 100
BENCH_PASSWORD = "bench-password"
ABSTRACT = (
    "We study policy optimisation for robot manipulation with diffusion models. Our method couples a "
    "transformer backbone with a learned value function and improves sample efficiency by $2.5\\times$ "
    "on six benchmarks, while keeping inference under 10 ms on a single GPU. "
) * 3


# ---------------------------------------------------------------------------------------
# The server: aiosmtpd in a child process, counting accepted messages
# ---------------------------------------------------------------------------------------


def serve(port: int, secure: bool) -> None:
    """Accept and count messages until SIGTERM, then print the count."""
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword

    from tests.servers.smtp import SelfSignedCert

    class Counter:
        messages = 0

        async def handle_DATA(self, server, session, envelope) -> str:  # type: ignore[no-untyped-def]
            Counter.messages += 1
            return "250 OK"

    def authenticate(server, session, envelope, mechanism, auth_data) -> AuthResult:  # type: ignore[no-untyped-def]
        ok = isinstance(auth_data, LoginPassword) and auth_data.password == BENCH_PASSWORD.encode()
        return AuthResult(success=ok, handled=False)

    cert = SelfSignedCert.generate()
    kwargs = (
        {"tls_context": cert.server_context(), "require_starttls": True, "authenticator": authenticate,
         "auth_required": True}
        if secure else {}
    )  # fmt: skip
    controller = Controller(Counter(), hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(cert.cert_path, flush=True)
    stop.wait()
    controller.stop()
    cert.cleanup()
    print(Counter.messages, flush=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ---------------------------------------------------------------------------------------
# The sender
# ---------------------------------------------------------------------------------------


def sample_digest(papers: int) -> tuple[RenderedDigest, LinkSigner]:
    """One digest rendered with the production template."""
    signer = LinkSigner("bench-secret-0123456789")
    links = subscriber_links(signer, "https://digest.example.org", new_public_id(), "2026-11-24")
    views = [
        paper_view(
            Paper(
                arxiv_id=f"2611.{n:05d}",
                title=f"Diffusion Policies for Dexterous Manipulation, part {n}",
                abstract=ABSTRACT,
                authors=[f"Author {k}" for k in range(6)],
                categories=["cs.RO", "cs.LG"],
                primary_category="cs.RO",
            ),
            None,
            ["diffusion policy"],
        )
        for n in range(papers)
    ]
    digest = Digest(
        day=dt.date(2026, 11, 24),
        email="reader@example.org",
        language="EN",
        timezone="Europe/Berlin",
        sections=[KeywordSection(keyword="diffusion policy", papers=views)],
        links=links,
    )
    return DigestRenderer().render(digest), signer


def send_all(
    settings: Settings,
    rendered: RenderedDigest,
    signer: LinkSigner,
    count: int,
    threads: int,
    pooled: bool,
    max_seconds: float,
) -> tuple[int, float, float]:
    """(messages, seconds, sender CPU seconds) for `threads` senders sharing `count` messages, up to `max_seconds`."""
    sender = Sender(settings.from_address, settings.from_name, settings.list_id)
    shared = SmtpBackend(settings) if pooled else None
    sent = [0] * threads

    def send_share(worker: int) -> None:
        for number in range(worker, count, threads):
            if time.perf_counter() > deadline:
                return
            links = subscriber_links(signer, settings.base_url, f"reader{number:05d}", "2026-11-24")
            message = build_message(rendered, f"reader{number:05d}@example.org", sender, links)
            if shared is not None:
                shared.send(message)
            else:
                one_off = SmtpBackend(settings)
                one_off.send(message)
                one_off.close()
            sent[worker] += 1

    workers = [threading.Thread(target=send_share, args=(n,)) for n in range(threads)]
    started, cpu_started = time.perf_counter(), time.process_time()
    deadline = started + max_seconds
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    if shared is not None:
        shared.close()
    return sum(sent), elapsed, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--papers", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2, help="sender threads (the pool holds as many sessions)")
    parser.add_argument("--max-seconds", type=float, default=75.0, help="stop each way after this long")
    parser.add_argument("--tls", action="store_true", help="STARTTLS + AUTH LOGIN, as a real relay wants")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, secure=args.tls)
        return

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(port), *(["--tls"] if args.tls else [])],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        ca_file = Path(server.stdout.readline().strip())
        secure: dict[str, object] = (
            {} if not args.tls
            else {"smtp_security": "starttls", "smtp_ca_file": ca_file, "smtp_user": "bench",
                  "smtp_password": BENCH_PASSWORD}
        )  # fmt: skip
        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            mail_backend="smtp",
            smtp_host="127.0.0.1",
            smtp_port=port,
            **secure,  # type: ignore[arg-type]
            smtp_max_per_second=1_000_000,
            smtp_pool_size=args.threads,
            base_url="https://digest.example.org",
        )
        rendered, signer = sample_digest(args.papers)
        size = len(build_message(rendered, "x@example.org", Sender("a@b.c", "n", "l"), subscriber_links(
            signer, settings.base_url, new_public_id(), "d")).as_bytes())  # fmt: skip
        how = "STARTTLS + AUTH LOGIN" if args.tls else "plain SMTP"
        print(f"{args.messages} digests of {size / 1024:.0f} KiB ({args.papers} papers) to local aiosmtpd, {how}")
        print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (other work slows both ways)")
        print(f"{args.threads} sender threads; throttle off for the measurement (NEWSLETTER_SMTP_MAX_PER_SECOND=1e6)")
        run = (settings, rendered, signer, args.messages, args.threads)
        pooled_sent, pooled, pooled_cpu = send_all(*run, pooled=True, max_seconds=args.max_seconds)
        naive_sent, naive, naive_cpu = send_all(*run, pooled=False, max_seconds=args.max_seconds)
    finally:
        server.send_signal(signal.SIGTERM)
        out, _ = server.communicate(timeout=30)
    received = int(out.strip().splitlines()[-1]) if out.strip() else -1
    pooled_rate, naive_rate = pooled_sent / pooled, naive_sent / naive
    print(
        f"pooled ({args.threads} sessions, reused): {pooled_rate:6.0f} messages/s ({pooled_sent} in {pooled:.1f} s, "
        f"sender CPU {1000 * pooled_cpu / pooled_sent:.1f} ms/message)"
    )
    print(
        f"new connection per message: {naive_rate:6.0f} messages/s ({naive_sent} in {naive:.1f} s, "
        f"sender CPU {1000 * naive_cpu / naive_sent:.1f} ms/message)"
    )
    if min(pooled_sent, naive_sent) < args.messages:
        print(f"note: a way still sending after {args.max_seconds:.0f} s was stopped; its rate is over what it sent")
    print(f"ratio pooled / naive:       {pooled_rate / naive_rate:6.2f}x")
    print(f"server accepted {received} of {pooled_sent + naive_sent} messages sent")
    verdict = "meets" if pooled_rate >= TARGET_PER_SECOND else "MISSES"
    print(f"target >= {TARGET_PER_SECOND}/s with the pool: {verdict}")
    if received != pooled_sent + naive_sent:
        sys.exit("some messages did not arrive")


if __name__ == "__main__":
    main()
