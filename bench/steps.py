"""Step overhead on SQLite: sequential jobs of 0 and of 3 trivial steps.

Per-step overhead = (time of a 3-step job - time of a 0-step job) / 3, so the cost of
enqueueing and finishing a job (two fsynced commits) cancels out. The baseline, measured
in the same run on the same disk, is one raw ``sqlite3`` write transaction in WAL mode with
``synchronous=NORMAL``: the floor a checkpoint cannot go below.

    python bench/steps.py [--jobs 1000] [--runs 5] [--mode run|worker]
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import stepstone


def raw_write_us(folder: Path, count: int) -> float:
    """Microseconds per raw WAL write transaction (synchronous=NORMAL), one row each."""
    conn = sqlite3.connect(folder / "raw.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE t (job TEXT, seq INTEGER, value TEXT, PRIMARY KEY (job, seq))")
    started = time.perf_counter()
    for i in range(count):
        conn.execute("INSERT INTO t VALUES (?, ?, ?)", ("job", i, '"value"'))
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed / count * 1e6


def build_app(path: Path) -> tuple[stepstone.App, object, object, object]:
    app = stepstone.App(f"sqlite:///{path}")

    @app.step
    def one(x: int) -> int:
        return x + 1

    @app.step
    def two(x: int) -> int:
        return x * 2

    @app.step
    def three(x: int) -> str:
        return str(x)

    @app.job(name="bench.three_steps")
    def three_steps(x: int) -> str:
        return three(two(one(x)))

    @app.job(name="bench.no_steps")
    def no_steps(x: int) -> str:
        return str(x)

    @app.job(name="bench.hundred_steps")
    def hundred_steps(x: int) -> int:
        for _ in range(100):
            x = one(x)
        return x

    return app, three_steps, no_steps, hundred_steps


def time_jobs(app: stepstone.App, job: object, count: int, mode: str) -> float:
    """Seconds to run ``count`` jobs one after another."""
    started = time.perf_counter()
    if mode == "run":
        for i in range(count):
            app.run(job, i)
    else:
        for i in range(count):
            app.enqueue(job, i)
        app.run_worker(concurrency=1, until_idle=True)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--mode", choices=["run", "worker"], default="run")
    args = parser.parse_args(argv)

    overheads, rates, raws, long_steps = [], [], [], []
    for run in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            raws.append(raw_write_us(folder, args.jobs * 3))
            app, three_steps, no_steps, hundred_steps = build_app(folder / "bench.db")
            time_jobs(app, three_steps, 50, args.mode)  # warm up
            t0 = time_jobs(app, no_steps, args.jobs, args.mode)
            t3 = time_jobs(app, three_steps, args.jobs, args.mode)
            # Steadier: the fsynced enqueue and outcome of a job weigh little beside 100 steps.
            t100 = time_jobs(app, hundred_steps, args.jobs // 10, args.mode)
            t0_small = time_jobs(app, no_steps, args.jobs // 10, args.mode)
            long_steps.append((t100 - t0_small) / (100 * (args.jobs // 10)) * 1e6)
            app.close()
        per_step = (t3 - t0) / (3 * args.jobs) * 1e6
        overheads.append(per_step)
        rates.append(args.jobs / t3)
        print(
            f"run {run + 1}: 3-step jobs {args.jobs / t3:8.0f} jobs/s   0-step jobs "
            f"{args.jobs / t0:8.0f} jobs/s   per-step overhead {per_step:6.1f} us   "
            f"raw WAL write {raws[-1]:5.1f} us",
            file=sys.stderr,
        )

    step = statistics.median(overheads)
    raw = statistics.median(raws)
    print(f"\nstepstone {stepstone.__version__}, SQLite {sqlite3.sqlite_version}, mode={args.mode}")
    print(f"  3-step jobs/s (median of {args.runs}):  {statistics.median(rates):8.0f}")
    print(f"  per-step overhead (median):        {step:8.1f} us   (target <= 50 us)")
    print(f"  per step, from 100-step jobs:      {statistics.median(long_steps):8.1f} us")
    print(f"  raw sqlite3 WAL write (baseline):  {raw:8.1f} us")
    print(f"  ratio per-step / raw write:        {step / raw:8.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
