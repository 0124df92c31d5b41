"""What parking costs: jobs that wait for a signal, and a parent that fans out to children
and gathers them, against the same number of plain jobs drained by the same worker.

Each figure is the time from the moment the work can proceed until every job finished,
on one worker (concurrency 8) in this process; the baseline is a drain of plain jobs of the
same count, measured in the same run on the same database.

    python bench/flow.py [--jobs 500] [--postgres URL]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import stepstone
from stepstone import App


def build(url: str) -> tuple[App, Any, Any, Any, Any]:
    app = App(url)

    @app.job(name="bench.plain")
    def plain(n: int) -> int:
        return n

    @app.job(name="bench.waiter")
    def waiter(n: int) -> int:
        return int(stepstone.wait_for(f"go:{n}"))

    @app.job(name="bench.child")
    def child(n: int) -> int:
        return n

    @app.job(name="bench.parent")
    def parent(count: int) -> int:
        return sum(stepstone.gather(*[app.enqueue(child, n) for n in range(count)]))

    return app, plain, waiter, child, parent


def drain(app: App) -> float:
    started = time.perf_counter()
    app.run_worker(concurrency=8, until_idle=True)
    return time.perf_counter() - started


def measure(label: str, url: str, jobs: int) -> None:
    app, plain, waiter, _child, parent = build(url)
    app.store  # noqa: B018 - open and migrate before timing

    app.enqueue_many(plain, [(n,) for n in range(jobs)])
    baseline = drain(app)

    app.enqueue_many(waiter, [(n,) for n in range(jobs)])
    drain(app)  # every job runs once and parks
    started = time.perf_counter()
    for n in range(jobs):
        app.signal(f"go:{n}", n)
    signalled = time.perf_counter() - started
    woken = drain(app) + signalled

    app.enqueue(parent, jobs)
    fan = drain(app)

    print(f"\n{label}, {jobs} jobs, one worker (concurrency 8)")
    print(f"  plain jobs drained (baseline)       {jobs / baseline:8,.0f} jobs/s")
    print(
        f"  parked jobs woken by a signal each  {jobs / woken:8,.0f} jobs/s"
        f"   {baseline / woken:5.2f}x the baseline (signals sent at {jobs / signalled:,.0f}/s)"
    )
    print(
        f"  one parent gathering {jobs} children   {jobs / fan:8,.0f} children/s"
        f"   {baseline / fan:5.2f}x the baseline"
    )
    app.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--postgres", default=os.environ.get("STEPSTONE_BENCH_POSTGRES_URL"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        measure("SQLite (file, WAL)", f"sqlite:///{Path(folder) / 'bench.db'}", args.jobs)
    if args.postgres:
        schema = f"bench_{uuid.uuid4().hex[:8]}"
        separator = "&" if "?" in args.postgres else "?"
        try:
            measure("PostgreSQL", f"{args.postgres}{separator}schema={schema}", args.jobs)
        finally:
            import psycopg

            with psycopg.connect(args.postgres, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


if __name__ == "__main__":
    main()
