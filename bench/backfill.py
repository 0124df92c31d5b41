"""Backfill throughput: ``app.enqueue_many`` against a loop of ``app.enqueue``.

Both enqueue the same number of keyed jobs into a fresh database; the loop is the
baseline, measured in the same run on the same database server or disk. A second
``enqueue_many`` over the same items (every key taken) measures a re-run after an
interruption, which must write nothing. Memo-key lookups are measured too: a job whose
one step hits a stored memo key, against a job whose step runs (and stores it).

    python bench/backfill.py [--jobs 20000] [--loop 2000] [--postgres URL]

Without ``--postgres``, ``$STEPSTONE_BENCH_POSTGRES_URL`` is used if set; otherwise only
SQLite is measured.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import stepstone


def build(url: str) -> tuple[stepstone.App, Any, Any]:
    app = stepstone.App(url)

    @app.step(key="ocr:{attachment_id}")
    def run_ocr(attachment_id: str) -> str:
        return f"text of {attachment_id}"

    @app.job(name="bench.index")
    def index(channel_id: str, attachment_id: str) -> str:
        return run_ocr(attachment_id)

    @app.job(name="bench.index_again")
    def index_again(channel_id: str, attachment_id: str) -> str:
        return run_ocr(attachment_id)

    return app, index, index_again


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def measure(label: str, url: str, jobs: int, loop: int) -> None:
    app, index, index_again = build(url)
    items = [{"channel_id": f"c{n % 50}", "attachment_id": f"a{n}"} for n in range(jobs)]
    app.store  # noqa: B018 - open and migrate before timing

    loop_seconds, _ = timed(
        lambda: [app.enqueue(index, key=f"loop:{n}", **items[n]) for n in range(loop)]
    )
    loop_rate = loop / loop_seconds
    bulk_seconds, first = timed(lambda: app.enqueue_many(index, items, key="index:{attachment_id}"))
    bulk_rate = jobs / bulk_seconds
    again_seconds, second = timed(
        lambda: app.enqueue_many(index, items, key="index:{attachment_id}")
    )
    again_rate = jobs / again_seconds
    assert first.new == jobs  # type: ignore[attr-defined]
    assert second.existing == jobs  # type: ignore[attr-defined]

    # Memo hits against fresh computations, through app.run (one process, sequential).
    sample = items[:500]
    fresh_seconds, _ = timed(lambda: [app.run(index_again, **item) for item in sample])
    hit_seconds, _ = timed(lambda: [app.run(index_again, **item) for item in sample])
    print(f"\n{label}")
    print(f"  enqueue loop (baseline)      {loop_rate:10,.0f} jobs/s  ({loop} jobs)")
    print(
        f"  enqueue_many                 {bulk_rate:10,.0f} jobs/s  ({jobs} jobs)"
        f"  {bulk_rate / loop_rate:5.1f}x the loop"
    )
    print(
        f"  enqueue_many, all existing   {again_rate:10,.0f} jobs/s  ({jobs} jobs)"
        f"  {again_rate / loop_rate:5.1f}x the loop"
    )
    print(
        f"  app.run, step computes+memo  {len(sample) / fresh_seconds:10,.0f} jobs/s"
        f"\n  app.run, step is a memo hit  {len(sample) / hit_seconds:10,.0f} jobs/s"
        f"  {fresh_seconds / hit_seconds:5.2f}x"
    )
    app.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--loop", type=int, default=2_000)
    parser.add_argument("--postgres", default=os.environ.get("STEPSTONE_BENCH_POSTGRES_URL"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        measure(
            "SQLite (file, WAL)", f"sqlite:///{Path(folder) / 'bench.db'}", args.jobs, args.loop
        )
    if args.postgres:
        schema = f"bench_{uuid.uuid4().hex[:8]}"
        separator = "&" if "?" in args.postgres else "?"
        url = f"{args.postgres}{separator}schema={schema}"
        try:
            measure(f"PostgreSQL (schema {schema})", url, args.jobs, args.loop)
        finally:
            import psycopg

            with psycopg.connect(args.postgres, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


if __name__ == "__main__":
    main()
