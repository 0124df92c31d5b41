"""PgQueuer (PostgreSQL job queue on asyncpg) under the benchmark harness.

``python -m bench.systems.pgqueuer_sys <scenario> --store postgres --url URL ...``; see
``bench/systems/common.py`` for the command line and the one JSON line it prints.

PgQueuer deletes a job from its queue table (``pgqueuer``) when the worker logs its end
status, and keeps history only in ``pgqueuer_log`` (one row per queued / picked /
successful transition), which a background task folds into ``pgqueuer_statistics``.
A worker logs end statuses through a buffer flushed every ``batch_size`` jobs or 0.1 s.

How each scenario maps onto PgQueuer (it has entrypoints but no steps):

- ``overhead``: a ``QueueManager`` runs in-process with ``batch_size=1`` (with the default
  10 a lone job's end is only written by the 0.1 s timer, so one-at-a-time would measure
  that timer); each no-op job is enqueued with ``Queries.enqueue`` and the caller polls
  every 0.5 ms until its row has left ``pgqueuer``. No steps: ``per_step_us`` is null.
- ``throughput``: one ``Queries.enqueue`` call per 1,000 jobs (then ANALYZE), then one
  worker subprocess (what ``pgq run`` does: ``pgqueuer.run`` on uvloop) drains them; done
  once ``pgqueuer`` is empty. PgQueuer has no per-worker "run C jobs at a time" setting that
  matches the others' ``--concurrency``: ``jobs_per_s`` is ``pgq run`` with its defaults
  (batch 10, no limit: up to 10 claimed jobs run at once) whatever ``--concurrency`` is, as
  the issue's target quotes it; ``capped_jobs_per_s`` repeats the drain on a fresh database
  with the worker held to ``--concurrency`` jobs at a time (see ``worker_options``).
  Steps 3 are skipped.
- ``latency``: an idle worker subprocess with ``pgq run``'s defaults; each sample enqueues
  a job whose body first writes ``time.time()`` to a file; latency is that minus the time
  just before ``enqueue``.
- ``scale``: ``rows`` finished jobs are inserted with SQL as the three ``pgqueuer_log`` rows
  each leaves (already aggregated); claim latency is one ``Queries.dequeue`` of one due job
  (``batch_size=1``, the worker's own query), median of 200; then ``jobs`` no-op jobs are
  drained by a worker with ``pgq run``'s defaults.
- ``memory``: the peak RSS (``VmHWM``) of a worker with ``pgq run``'s defaults after
  draining ``jobs`` jobs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

from bench.systems import common
from bench.systems.pgqueuer_app import STAMPS_ENV, manager

SYSTEM = "pgqueuer"
MODULE = "bench.systems.pgqueuer_sys"
DEFAULT_BATCH = 10  # pgq run --batch-size default
CHUNK = 1000  # jobs per Queries.enqueue call
POLL_S = 0.0005  # completion polling interval of the in-process overhead loop
WARMUP = 10  # unmeasured jobs/samples before measuring
CLAIMS = 200  # claims timed in the scale scenario
PG_ONLY = {"skipped": "PostgreSQL only"}

PENDING_SQL = "SELECT EXISTS (SELECT 1 FROM pgqueuer)"

DEFAULTS = {"batch_size": DEFAULT_BATCH, "max_concurrent_tasks": None, "concurrency_limit": 0}


def worker_options(concurrency: int | None) -> dict[str, Any]:
    """``batch_size``, ``max_concurrent_tasks`` and the entrypoints' ``concurrency_limit``.

    ``None``: PgQueuer's defaults (batch 10, no limit: each claimed job starts at once as
    an asyncio task). 1: ``concurrency_limit=1`` ("serialised dispatch", enforced in SQL;
    ``max_concurrent_tasks`` cannot be 1) with ``batch_size=1``, because a finished job
    holds its slot until its status is written, which with batch 10 waits for the 0.1 s
    flush timer (about 10 jobs/s). C > 1: ``max_concurrent_tasks=C`` (the worker's cap)
    with ``batch_size=min(10, C // 2)``, since PgQueuer requires C >= 2 * batch_size.
    """
    if concurrency is None:
        return dict(DEFAULTS)
    if concurrency == 1:
        return {"batch_size": 1, "max_concurrent_tasks": None, "concurrency_limit": 1}
    return {
        "batch_size": max(1, min(DEFAULT_BATCH, concurrency // 2)),
        "max_concurrent_tasks": concurrency,
        "concurrency_limit": 0,
    }


def settings(worker: Any = None) -> dict[str, Any]:
    """What the JSON line's ``settings`` says; ``worker`` defaults to ``pgq run``'s."""
    return {
        "version": "pgqueuer 1.6.0, asyncpg 0.32.0, uvloop (pgq run's event loop)",
        "consumer": "PgQueuer(AsyncpgDriver(one connection)), async def no-op entrypoints; "
        "run() options default unless listed (dequeue_timeout 30 s, heartbeat 30 s)",
        "enqueue": "Queries.enqueue with lists, 1,000 jobs per call, then ANALYZE (untimed, "
        "as autovacuum would on a live table)",
        "worker": worker or {"pgq run defaults": DEFAULTS},
    }


@contextlib.contextmanager
def _scratch() -> Iterator[Path]:
    """A temporary folder (latency stamps), removed after."""
    folder = Path(tempfile.mkdtemp(prefix="bench_pgqueuer_"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def _connect(url: str) -> Any:
    import asyncpg

    return await asyncpg.connect(url)


def _queries(connection: Any) -> Any:
    from pgqueuer.db import AsyncpgDriver
    from pgqueuer.queries import Queries

    return Queries(AsyncpgDriver(connection))


async def _install(url: str, jobs: int = 0) -> None:
    """Install the schema (``pgq install``) and enqueue ``jobs`` no-op jobs."""
    connection = await _connect(url)
    try:
        queries = _queries(connection)
        await queries.install()
        await _enqueue_noops(queries, jobs)
    finally:
        await connection.close()


async def _enqueue_noops(queries: Any, jobs: int) -> None:
    """Enqueue ``jobs`` no-op jobs, then ANALYZE (as autovacuum would have on a live table)."""
    for start in range(0, jobs, CHUNK):
        size = min(CHUNK, jobs - start)
        await queries.enqueue(["noop"] * size, [None] * size, [0] * size)
    if jobs:
        await queries.driver.execute("ANALYZE")


def _worker_cmd(url: str, concurrency: int | None) -> list[str]:
    """The worker subprocess; ``concurrency`` None: PgQueuer's defaults."""
    if concurrency is None:
        return common.python_cmd(MODULE, "_worker_defaults", "--url", url)
    return common.python_cmd(MODULE, "_worker", "--url", url, "--concurrency", str(concurrency))


def _drain(url: str, concurrency: int | None) -> common.Drain:
    with common.pg_connect(url) as conn:
        return common.drain(
            _worker_cmd(url, concurrency),
            lambda: not conn.execute(PENDING_SQL).fetchone()[0],
        )


def _run_loop(coro: Any) -> Any:
    """Run ``coro`` on the loop ``pgq run`` uses (uvloop where installed)."""
    from pgqueuer.adapters.cli.cli import asyncio_run

    return asyncio_run(coro)


# the worker subprocess ---------------------------------------------------------------------------
def worker(args: argparse.Namespace) -> None:
    """What ``pgq run bench.systems.pgqueuer_app:manager`` does, plus the READY line."""
    import pgqueuer
    from pgqueuer.core import logconfig

    options = worker_options(None if args.scenario == "_worker_defaults" else args.concurrency)
    logconfig.setup_fancy_logger(logconfig.LogLevel.INFO)  # pgq run's default --log-level

    def factory() -> Any:
        return manager(
            args.url,
            concurrency_limit=options["concurrency_limit"],
            on_ready=common.signal_ready,
        )

    _run_loop(
        pgqueuer.run(
            factory,
            batch_size=options["batch_size"],
            max_concurrent_tasks=options["max_concurrent_tasks"],
        )
    )


# scenarios ---------------------------------------------------------------------------------------
def job_times(durations: list[float]) -> dict[str, Any]:
    """Per-job enqueue-to-finished times of the overhead loop, and how many stalled (> 1 s)."""
    return {
        "job_ms": {
            "p50": round(common.percentile(durations, 0.5) * 1000, 3),
            "p99": round(common.percentile(durations, 0.99) * 1000, 3),
            "max": round(max(durations) * 1000, 3),
        },
        "stalled_jobs": sum(d > 1 for d in durations),
    }


def overhead(args: argparse.Namespace) -> dict[str, Any]:
    if args.store != "postgres":
        return PG_ONLY
    with common.fresh_postgres(SYSTEM, args.url) as url:
        _run_loop(_install(url))
        durations = _run_loop(_overhead(url, args.jobs, batch_size=1))
    found = settings(worker="in-process QueueManager.run(batch_size=1), no limits")
    return {
        "zero_step_jobs_per_s": round(args.jobs / sum(durations), 1),
        "three_step_jobs_per_s": None,
        "per_step_us": None,
        **job_times(durations),
        "note": "no steps; enqueue then poll until the job has left the queue table, "
        "in-process worker with batch_size=1",
        "settings": found,
    }


async def _overhead(url: str, jobs: int, batch_size: int) -> list[float]:
    connection = await _connect(url)
    try:
        queries = _queries(connection)
        async with manager(url) as pgq:
            runner = asyncio.create_task(pgq.qm.run(batch_size=batch_size))
            try:

                async def run_one() -> None:
                    (job_id,) = await queries.enqueue("noop", None)
                    while await connection.fetchval(
                        "SELECT EXISTS (SELECT 1 FROM pgqueuer WHERE id = $1)", job_id
                    ):
                        if runner.done():
                            runner.result()  # the worker died: raise its error
                            raise RuntimeError("the in-process worker stopped")
                        await asyncio.sleep(POLL_S)

                for _ in range(WARMUP):
                    await run_one()
                durations = []
                for _ in range(jobs):
                    started = time.perf_counter()
                    await run_one()
                    durations.append(time.perf_counter() - started)
                return durations
            finally:
                pgq.qm.shutdown.set()
                await runner
    finally:
        await connection.close()


def throughput(args: argparse.Namespace) -> dict[str, Any]:
    if args.store != "postgres":
        return PG_ONLY
    if args.steps:
        return {"skipped": "no steps"}
    with common.fresh_postgres(SYSTEM, args.url) as url:
        _run_loop(_install(url, args.jobs))
        drained = _drain(url, None)
    # the same drain with the worker held to --concurrency jobs at a time
    with common.fresh_postgres(SYSTEM, args.url) as url:
        _run_loop(_install(url, args.jobs))
        capped = _drain(url, args.concurrency)
    found = settings()
    found["capped_worker"] = {"concurrency": args.concurrency, **worker_options(args.concurrency)}
    return {
        "jobs_per_s": round(args.jobs / drained.seconds, 1),
        "seconds": round(drained.seconds, 3),
        "capped_jobs_per_s": round(args.jobs / capped.seconds, 1),
        "capped_seconds": round(capped.seconds, 3),
        "settings": found,
    }


def latency(args: argparse.Namespace) -> dict[str, Any]:
    if args.store != "postgres":
        return PG_ONLY
    with common.fresh_postgres(SYSTEM, args.url) as url, _scratch() as folder:
        _run_loop(_install(url))
        stamps = folder / "stamps.txt"
        stamps.touch()
        os.environ[STAMPS_ENV] = str(stamps)
        with common.Worker(_worker_cmd(url, None)) as proc:
            seconds, calls = _run_loop(_latency(url, args.samples, stamps, proc))
    found = settings()
    return {
        **common.latency_fields(seconds),
        "enqueue_call_ms": round(statistics.median(calls) * 1000, 3),
        "settings": found,
    }


async def _latency(
    url: str, samples: int, stamps: Path, proc: common.Worker
) -> tuple[list[float], list[float]]:
    results: list[float] = []
    calls: list[float] = []
    connection = await _connect(url)
    try:
        queries = _queries(connection)
        with stamps.open() as reader:
            for i in range(-WARMUP, samples):
                enqueued = time.time()
                await queries.enqueue("stamp", str(i).encode())
                returned = time.time()
                line = ""
                while not line.endswith("\n"):
                    if not proc.alive():
                        raise RuntimeError("the worker exited")
                    await asyncio.sleep(0.0002)
                    line += reader.readline()
                index, started = line.split()
                assert int(index) == i, line
                if i >= 0:
                    results.append(float(started) - enqueued)
                    calls.append(returned - enqueued)
                # let the worker record the job and go idle before the next sample
                while await connection.fetchval(PENDING_SQL):
                    await asyncio.sleep(0.001)
                await asyncio.sleep(0.02)
    finally:
        await connection.close()
    return results, calls


def scale(args: argparse.Namespace) -> dict[str, Any]:
    if args.store != "postgres":
        return PG_ONLY
    with common.fresh_postgres(SYSTEM, args.url) as url:
        _run_loop(_install(url))
        started = time.perf_counter()
        with common.pg_connect(url) as conn:
            _insert_history(conn, args.rows)
        insert_seconds = time.perf_counter() - started
        claim_seconds = _run_loop(_claims(url, CLAIMS))
        _run_loop(_enqueue(url, args.jobs))
        drained = _drain(url, None)
    return {
        "claim_ms": round(statistics.median(claim_seconds) * 1000, 3),
        "jobs_per_s": round(args.jobs / drained.seconds, 1),
        "insert_s": round(insert_seconds, 1),
        "history": "rows jobs as 3 pgqueuer_log rows each (queued, picked, successful), "
        "aggregated; finished jobs never stay in the queue table",
        "settings": settings(),
    }


def _insert_history(conn: Any, rows: int) -> None:
    """The log rows ``rows`` finished jobs leave behind (nothing prunes pgqueuer_log)."""
    if rows:
        conn.execute(
            "INSERT INTO pgqueuer_log (job_id, status, entrypoint, priority, aggregated)"
            " SELECT j, s, 'noop', 0, true FROM generate_series(1, %s) j,"
            " unnest('{queued,picked,successful}'::pgqueuer_status[]) s ORDER BY j",
            (rows,),
        )
        conn.execute("SELECT setval('pgqueuer_id_seq', %s)", (rows,))
    conn.execute("VACUUM ANALYZE")  # as autovacuum would have by then


async def _enqueue(url: str, jobs: int) -> None:
    connection = await _connect(url)
    try:
        await _enqueue_noops(_queries(connection), jobs)
    finally:
        await connection.close()


async def _claims(url: str, count: int) -> list[float]:
    from pgqueuer.ports.repository import EntrypointExecutionParameter
    from pgqueuer.types import QueueEntrypoint, QueueManagerId

    seconds: list[float] = []
    connection = await _connect(url)
    try:
        queries = _queries(connection)
        await _enqueue_noops(queries, count + WARMUP)
        entrypoints = {QueueEntrypoint("noop"): EntrypointExecutionParameter(0)}
        queue_manager_id = QueueManagerId(uuid.uuid4())
        for i in range(count + WARMUP):
            started = time.perf_counter()
            (job,) = await queries.dequeue(
                batch_size=1,
                entrypoints=entrypoints,
                queue_manager_id=queue_manager_id,
                global_concurrency_limit=None,
                heartbeat_timeout=timedelta(seconds=30),
            )
            elapsed = time.perf_counter() - started
            if i >= WARMUP:
                seconds.append(elapsed)
            await queries.log_jobs([(job, "successful", None)])
    finally:
        await connection.close()
    return seconds


def memory(args: argparse.Namespace) -> dict[str, Any]:
    if args.store != "postgres":
        return PG_ONLY
    with common.fresh_postgres(SYSTEM, args.url) as url:
        _run_loop(_install(url, args.jobs))
        drained = _drain(url, None)
    return {
        "peak_rss_mb": round(drained.peak_rss_mb, 1),
        "jobs_per_s": round(args.jobs / drained.seconds, 1),
        "settings": settings(),
    }


HANDLERS = {
    "overhead": overhead,
    "throughput": throughput,
    "latency": latency,
    "scale": scale,
    "memory": memory,
    "_worker": worker,
    "_worker_defaults": worker,
}

if __name__ == "__main__":
    raise SystemExit(common.main(SYSTEM, HANDLERS))
