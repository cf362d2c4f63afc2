"""Benchmark: the `newsletter` command's start, one `subscribe`, and a 10,000-row `subscribers import`.

    python bench/cli.py [--base REV] [--runs 5] [--rows 10000] [--sample 300]

Each figure is printed beside today's way, measured in the same run:

- `newsletter --help` and one `newsletter subscribe ... --confirmed`: wall and CPU time (user +
  system of the child process, median of --runs), for this checkout and for --base (default: the
  commit this branch left main at), unpacked with `git archive` into a temporary folder and run
  with the same interpreter. Each has its own migrated SQLite database in its own folder.
- adding --rows subscribers: `newsletter subscribers import FILE` (one command, wall time
  including its start) against the ways there were before: one `newsletter subscribe` command
  per address (the --base command's median, times --rows), and `subscribers.subscribe` called
  in-process once per address with a commit each (--sample of them timed, extrapolated).

Targets: 0.3 s for --help, 0.6 s for one subscribe, 5,000 rows/s for the import. On a shared,
loaded machine the wall times stretch with the load; the CPU times are the figures to compare.
"""

from __future__ import annotations

import argparse
import csv
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a plain script from anywhere

HELP_TARGET = 0.3
SUBSCRIBE_TARGET = 0.6
ROWS_TARGET = 5_000
TOPICS = ["graph neural network", "diffusion model", "reinforcement learning", "large language model"]


@dataclass(frozen=True)
class Timing:
    wall: float
    cpu: float


def timed(source: Path, args: list[str], cwd: Path) -> Timing:
    """Run `python -m newsletter.cli ARGS` from `source`; its wall and CPU seconds."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("NEWSLETTER_")}
    env["PYTHONPATH"] = str(source)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "newsletter.cli", *args], cwd=cwd, env=env, capture_output=True, text=True
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{source.name}: newsletter {' '.join(args)} failed: {done.stderr.strip()}")
    return Timing(wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime))


def median(source: Path, cwd: Path, runs: int, arguments: Callable[[int], list[str]]) -> Timing:
    """The median of `runs` runs of the arguments for run number n (a new address each time)."""
    timings = [timed(source, arguments(n), cwd) for n in range(runs)]
    return Timing(statistics.median(t.wall for t in timings), statistics.median(t.cpu for t in timings))


def unpack(rev: str, into: Path) -> Path:
    """The tree of `rev` in a folder of its own (`git archive`), to run today's code beside ours."""
    archive = into / "base.tar"
    with archive.open("wb") as out:
        subprocess.run(["git", "-C", str(ROOT), "archive", rev], stdout=out, check=True)
    tree = into / "base"
    with tarfile.open(archive) as tar:
        tar.extractall(tree, filter="data")
    return tree


def default_base() -> str:
    found = subprocess.run(["git", "-C", str(ROOT), "merge-base", "HEAD", "main"], capture_output=True, text=True)
    return found.stdout.strip() or "HEAD"


def write_rows(path: Path, rows: int) -> None:
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["email", "keywords", "language", "time_zone", "confirmed"])
        for n in range(rows):
            keywords = [TOPICS[n % 4]] + ([TOPICS[(n + 1) % 4]] if n % 3 == 0 else [])
            writer.writerow([f"reader{n:05d}@example.org", "; ".join(keywords), "ZH-HANS", "Asia/Shanghai", "yes"])


def in_process_subscribes(folder: Path, sample: int) -> float:
    """Seconds per address of today's in-process way: `subscribe` and a commit, once per address."""
    from newsletter.db import make_engine
    from newsletter.schema import upgrade_schema
    from newsletter.subscribers import subscribe

    engine = make_engine(f"sqlite:///{folder / 'in-process.db'}")
    upgrade_schema(engine)
    from sqlmodel import Session

    start = time.perf_counter()
    with Session(engine) as session:
        for n in range(sample):
            subscribe(session, f"reader{n:05d}@example.org", [TOPICS[n % 4]], confirmed=True)
            session.commit()
    seconds = (time.perf_counter() - start) / sample
    engine.dispose()
    return seconds


def line(what: str, ours: Timing, today: Timing, target: float) -> str:
    return (
        f"{what:<28} ours: wall {ours.wall:.2f} s, CPU {ours.cpu:.2f} s | today: wall {today.wall:.2f} s, "
        f"CPU {today.cpu:.2f} s | {today.cpu / max(ours.cpu, 1e-9):.1f}x less CPU | target {target} s: "
        f"{'met' if ours.wall <= target and ours.cpu <= target else 'NOT met'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default=None, help="the revision to compare with (default: merge-base with main)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--sample", type=int, default=300)
    options = parser.parse_args()
    base_rev = options.base or default_base()

    with tempfile.TemporaryDirectory(prefix="bench-cli-") as scratch:
        scratch_dir = Path(scratch)
        base = unpack(base_rev, scratch_dir)
        folders = {"ours": scratch_dir / "ours", "today": scratch_dir / "today"}
        for name, source in (("ours", ROOT), ("today", base)):
            folders[name].mkdir()
            timed(source, ["db", "upgrade"], folders[name])
        print(f"bench/cli.py: this checkout against {base_rev[:12]} ({options.runs} runs each, median)")

        sources = {"ours": ROOT, "today": base}
        helps = {name: median(src, folders[name], options.runs, lambda n: ["--help"]) for name, src in sources.items()}
        print(line("newsletter --help", helps["ours"], helps["today"], HELP_TARGET))

        def subscribe(n: int) -> list[str]:
            return ["subscribe", f"one{n}@example.org", "-k", "graph neural network", "--confirmed"]

        subscribes = {name: median(src, folders[name], options.runs, subscribe) for name, src in sources.items()}
        print(line("newsletter subscribe", subscribes["ours"], subscribes["today"], SUBSCRIBE_TARGET))

        rows_file = scratch_dir / "subscribers.csv"
        write_rows(rows_file, options.rows)
        imported = timed(ROOT, ["subscribers", "import", str(rows_file)], folders["ours"])
        rerun = timed(ROOT, ["subscribers", "import", str(rows_file)], folders["ours"])
        ours_rate = options.rows / imported.wall
        one_by_one = 1 / subscribes["today"].wall
        in_process = 1 / in_process_subscribes(scratch_dir, options.sample)
        met = "met" if ours_rate >= ROWS_TARGET else "NOT met"
        print(f"add {options.rows:,} subscribers:")
        print(
            f"  ours, `subscribers import` (one command, start included): {ours_rate:,.0f} rows/s "
            f"({imported.wall:.2f} s wall, {imported.cpu:.2f} s CPU: {options.rows / imported.cpu:,.0f} rows per "
            f"CPU second) | target {ROWS_TARGET:,} rows/s: {met}"
        )
        print(
            f"  ours, the same file again (all unchanged): {options.rows / rerun.wall:,.0f} rows/s "
            f"({rerun.wall:.2f} s wall, {rerun.cpu:.2f} s CPU)"
        )
        print(
            f"  today, one `newsletter subscribe` each: {one_by_one:.2f} rows/s "
            f"({options.rows / one_by_one / 60:.0f} min) | import is {ours_rate / one_by_one:,.0f}x faster"
        )
        print(
            f"  today, in-process `subscribe` + commit each ({options.sample} timed, extrapolated): "
            f"{in_process:,.0f} rows/s | import is {ours_rate / in_process:.1f}x faster"
        )

if __name__ == "__main__":
    main()
