"""stepstone, on SQLite and on PostgreSQL: every scenario of the harness.

    python -m bench.systems.stepstone_sys SCENARIO --store sqlite|postgres [--url SERVER] ...

Jobs, in one App built the same way in the measuring process and in the worker subprocess
(``python -m bench.systems.stepstone_sys _worker --store ... --db URL --concurrency C``,
which opens the store, says READY and runs ``app.run_worker`` until stopped):
``bench.no_steps`` (returns its argument), ``bench.three_steps`` (three trivial steps)
and ``bench.started`` (returns ``time.time()`` taken when its body starts).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import sqlite3
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

from bench.systems import common

import stepstone

SYSTEM = "stepstone"
MODULE = "bench.systems.stepstone_sys"


def build(url: str) -> tuple[stepstone.App, dict[str, Any]]:
    app = stepstone.App(url)

    @app.step
    def one(x: int) -> int:
        return x + 1

    @app.step
    def two(x: int) -> int:
        return x * 2

    @app.step
    def three(x: int) -> int:
        return x - 1

    @app.job(name="bench.three_steps")
    def three_steps(x: int) -> int:
        return three(two(one(x)))

    @app.job(name="bench.no_steps")
    def no_steps(x: int) -> int:
        return x

    @app.job(name="bench.started")
    def started(x: int) -> float:
        return time.time()

    return app, {"no_steps": no_steps, "three_steps": three_steps, "started": started}


@contextlib.contextmanager
def fresh_url(args: argparse.Namespace) -> Iterator[str]:
    """A stepstone URL for a fresh database on the chosen store."""
    if args.store == "postgres":
        with common.fresh_postgres(SYSTEM, args.url) as url:
            yield url
    else:
        with common.fresh_sqlite(SYSTEM) as path:
            yield f"sqlite:///{path}"


def worker_cmd(url: str, concurrency: int) -> list[str]:
    return common.python_cmd(MODULE, "_worker", "--url", url, "--concurrency", str(concurrency))


def sqlite_connect(url: str) -> sqlite3.Connection:
    return sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)


def jobs_table(url: str) -> str:
    return "stepstone_jobs" if url.startswith("sqlite") else "stepstone.jobs"


@contextlib.contextmanager
def connect(url: str) -> Iterator[Any]:
    """An autocommit connection to the store's database (sqlite3 or psycopg)."""
    conn = sqlite_connect(url) if url.startswith("sqlite") else common.pg_connect(url)
    try:
        yield conn
    finally:
        conn.close()


def count(url: str, where: str) -> int:
    with connect(url) as conn:
        return int(
            conn.execute(f"SELECT count(*) FROM {jobs_table(url)} WHERE {where}").fetchone()[0]
        )


def enqueue_and_drain(url: str, kind: str, jobs: int, concurrency: int) -> common.Drain:
    """Enqueue ``jobs`` jobs in bulk, then time one worker subprocess draining them: done when
    none is queued, waiting or running. The probe's conditions are exactly those of the
    partial indexes ``jobs_due`` and ``jobs_leases`` (SQLite uses a partial index only then),
    so it stays cheap with a million finished rows in the table."""
    app, defs = build(url)
    try:
        app.enqueue_many(defs[kind], [(i,) for i in range(jobs)])
    finally:
        app.close()
    before = count(url, "state = 'succeeded'")
    table = jobs_table(url)
    probe = (
        f"SELECT EXISTS (SELECT 1 FROM {table} WHERE state IN ('queued', 'waiting'))"
        f" OR EXISTS (SELECT 1 FROM {table} WHERE state = 'running')"
    )
    with connect(url) as conn:
        drain = common.drain(
            worker_cmd(url, concurrency), lambda: not conn.execute(probe).fetchone()[0]
        )
    done = count(url, "state = 'succeeded'") - before
    if done != jobs:
        raise RuntimeError(f"only {done} of {jobs} jobs succeeded")
    return drain


# scenarios ------------------------------------------------------------------------------------
def overhead(args: argparse.Namespace) -> dict[str, Any]:
    """``args.jobs`` jobs of 0 steps and as many of 3, one after another with ``app.run``.

    They alternate in chunks of 25 (0-step chunk, 3-step chunk, ...) so that a burst of
    outside load lands on both kinds alike; t0 and t3 are the summed times of each kind and
    per_step_us = (t3 - t0) / jobs / 3. ``per_step_us_chunks`` is the median over the chunk
    pairs of the same difference, steadier still on a busy machine.
    """
    chunk = 25
    with fresh_url(args) as url:
        app, defs = build(url)
        try:
            for i in range(50):  # warm up: open and migrate the store, prepare statements
                app.run(defs["three_steps"], i)
                app.run(defs["no_steps"], i)

            def timed(job: Any, count: int) -> float:
                started = time.perf_counter()
                for i in range(count):
                    app.run(job, i)
                return time.perf_counter() - started

            t0 = t3 = 0.0
            pairs = []
            left = args.jobs
            while left > 0:
                count = min(chunk, left)
                zero = timed(defs["no_steps"], count)
                three = timed(defs["three_steps"], count)
                t0 += zero
                t3 += three
                pairs.append((three - zero) / count / 3)
                left -= count
        finally:
            app.close()
    return {
        "zero_step_jobs_per_s": round(args.jobs / t0, 1),
        "three_step_jobs_per_s": round(args.jobs / t3, 1),
        "per_step_us": round((t3 - t0) / args.jobs / 3 * 1e6, 1),
        "per_step_us_chunks": round(statistics.median(pairs) * 1e6, 1),
    }


def throughput(args: argparse.Namespace) -> dict[str, Any]:
    kind = "no_steps" if args.steps == 0 else "three_steps"
    if args.steps not in (0, 3):
        return {"skipped": "steps must be 0 or 3"}
    with fresh_url(args) as url:
        drain = enqueue_and_drain(url, kind, args.jobs, args.concurrency)
    return {"jobs_per_s": round(args.jobs / drain.seconds, 1)}


def memory(args: argparse.Namespace) -> dict[str, Any]:
    with fresh_url(args) as url:
        drain = enqueue_and_drain(url, "no_steps", args.jobs, args.concurrency)
    return {
        "peak_rss_mb": round(drain.peak_rss_mb, 1),
        "jobs_per_s": round(args.jobs / drain.seconds, 1),
    }


def latency(args: argparse.Namespace) -> dict[str, Any]:
    pause = random.Random(7)
    latencies: list[float] = []
    calls: list[float] = []
    with fresh_url(args) as url:
        app, defs = build(url)
        try:
            app.store  # noqa: B018 - migrate before the worker starts
            with common.Worker(worker_cmd(url, 1)):
                for i in range(args.samples + 10):  # the first 10 warm the worker up
                    time.sleep(pause.uniform(0.01, 0.03))  # let the worker go idle
                    called = time.time()
                    handle = app.enqueue(defs["started"], i)
                    returned = time.time()
                    started = handle.result(timeout=30)
                    if i >= 10:
                        latencies.append(started - called)
                        calls.append(returned - called)
        finally:
            app.close()
    return {
        **common.latency_fields(latencies),
        "enqueue_call_ms": round(statistics.median(calls) * 1000, 3),
    }


def insert_finished(url: str, rows: int) -> None:
    """``rows`` succeeded jobs written straight into the jobs table (history, never pruned)."""
    if rows == 0:
        return
    now = time.time()
    if url.startswith("sqlite"):
        with connect(url) as conn:
            conn.execute("BEGIN")
            conn.executemany(
                "INSERT INTO stepstone_jobs (id, name, queue, args, state, run_at, attempts,"
                " fence, result, created_at, updated_at, started_at, finished_at)"
                " VALUES (?, 'bench.no_steps', 'default', ?, 'succeeded', ?, 1, 1, ?, ?, ?, ?, ?)",
                (
                    (
                        str(uuid.UUID(int=i + 1)),
                        json.dumps({"args": [i]}),
                        at,
                        str(i),
                        at,
                        at,
                        at,
                        at,
                    )
                    for i in range(rows)
                    for at in (now - 86_400 + i * 0.01,)
                ),
            )
            conn.execute("COMMIT")
            conn.execute("ANALYZE")
        return
    with common.pg_connect(url) as conn:
        conn.execute(
            "INSERT INTO stepstone.jobs (id, name, queue, args, state, run_at, attempts, fence,"
            " result, created_at, updated_at, started_at, finished_at)"
            " SELECT lpad(to_hex(i), 32, '0'), 'bench.no_steps', 'default',"
            " json_build_object('args', json_build_array(i)), 'succeeded', t, 1, 1,"
            " to_json(i), t, t, t, t"
            " FROM generate_series(1, %s) AS i,"
            " LATERAL (SELECT now() - interval '1 day' + i * interval '10 ms' AS t) AS at",
            (rows,),
        )
        conn.execute("VACUUM ANALYZE stepstone.jobs")


def scale(args: argparse.Namespace) -> dict[str, Any]:
    claims = 200
    with fresh_url(args) as url:
        app, defs = build(url)
        try:
            app.store  # noqa: B018 - create the tables
            insert_finished(url, args.rows)
            # Claim latency: 200 claims of one due job each, by the store operation a worker
            # calls, with 200 jobs due; then they are marked finished (history like the rest).
            app.enqueue_many(defs["no_steps"], [(i,) for i in range(claims)])
            store = app.store
            timings = []
            for _ in range(claims):
                now = time.time()
                started = time.perf_counter()
                found = store.job_claim_due(
                    owner="bench",
                    names=["bench.no_steps"],
                    queues=None,
                    limit=1,
                    now=now,
                    lease_until=now + 300,
                )
                timings.append(time.perf_counter() - started)
                if len(found) != 1:
                    raise RuntimeError(f"a claim found {len(found)} jobs")
            finish = (
                "UPDATE {t} SET state = 'succeeded', lease_owner = NULL, lease_expires_at = NULL,"
                " finished_at = updated_at WHERE state = 'running'"
            )
            with connect(url) as conn:
                conn.execute(finish.format(t=jobs_table(url)))
        finally:
            app.close()
        drain = enqueue_and_drain(url, "no_steps", args.jobs, args.concurrency)
    return {
        "claim_ms": round(statistics.median(timings) * 1000, 3),
        "jobs_per_s": round(args.jobs / drain.seconds, 1),
    }


def worker(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    args = parser.parse_args(argv)
    app, _ = build(args.url)
    app.store  # noqa: B018 - open (and migrate) before saying READY
    common.signal_ready()
    app.run_worker(
        concurrency=args.concurrency, prefetch=int(os.environ.get("BENCH_STEPSTONE_PREFETCH", "64"))
    )
    app.close()


if __name__ == "__main__":
    if sys.argv[1:2] == ["_worker"]:
        worker(sys.argv[2:])
        raise SystemExit(0)
    raise SystemExit(
        common.main(
            SYSTEM,
            {
                "overhead": overhead,
                "throughput": throughput,
                "latency": latency,
                "scale": scale,
                "memory": memory,
            },
        )
    )
