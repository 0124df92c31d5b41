"""Procrastinate (PostgreSQL task queue) under the benchmark harness.

``python -m bench.systems.procrastinate_sys <scenario> --store postgres --url URL ...``; see
``bench/systems/common.py`` for the command line and the one JSON line it prints.

How each scenario maps onto Procrastinate (it has jobs but no steps):

- ``overhead``: a worker runs in-process (``App.run_worker_async(concurrency=1)``, as when
  embedded in an application); each no-op job is deferred with ``Task.defer_async`` and the
  caller polls ``procrastinate_jobs.status`` every 0.5 ms until it reads ``succeeded`` before
  deferring the next. There are no steps: ``three_step_jobs_per_s`` and ``per_step_us`` are
  null. About 0.5 % of these jobs wait 5 s (``stalled_jobs``): a job deferred while the
  worker's "anything else?" fetch is in flight sets the new-job event, which the worker then
  clears when that fetch returns empty (``Worker._fetch_and_process_jobs``), so the job
  waits for the 5 s poll. ``job_ms`` gives the per-job times without that average.
- ``throughput``: ``Task.batch_defer_async`` enqueues the jobs (one ``INSERT ... unnest``
  per 1,000) and the tables are ANALYZEd, then one worker subprocess (what ``procrastinate
  worker --concurrency C`` runs) drains them; done once no job is ``todo`` or ``doing``.
  Steps 3 are skipped.
- ``latency``: an idle worker subprocess; each sample defers a job whose body first writes
  ``time.time()`` to a file; latency is that minus the time just before ``defer_async``.
- ``scale``: ``rows`` finished jobs (status ``succeeded``, three ``procrastinate_events``
  each: deferred, started, succeeded) are inserted with SQL; claim latency is one
  ``JobManager.fetch_job`` (the ``procrastinate_fetch_job_v2`` call the worker makes),
  median of 200; then ``jobs`` no-op jobs are drained at ``concurrency``.
- ``memory``: the worker subprocess's peak RSS (``VmHWM``) after draining ``jobs`` jobs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.systems import common
from bench.systems.procrastinate_app import build_app

SYSTEM = "procrastinate"
MODULE = "bench.systems.procrastinate_sys"
LOG_ENV = "BENCH_PROCRASTINATE_LOG"  # where the worker subprocess writes its log
LOG_LEVEL_ENV = "BENCH_PROCRASTINATE_LOG_LEVEL"  # override the CLI default (INFO)
CHUNK = 1000  # jobs per batch_defer_async call
POLL_S = 0.0005  # completion polling interval of the in-process overhead loop
WARMUP = 10  # unmeasured jobs/samples before measuring
CLAIMS = 200  # claims timed in the scale scenario
PG_ONLY = {"skipped": "PostgreSQL only"}

PENDING_SQL = "SELECT EXISTS (SELECT 1 FROM procrastinate_jobs WHERE status IN ('todo', 'doing'))"

SETTINGS = {
    "version": "procrastinate 3.10.0, psycopg 3",
    "tasks": "async def no-op (awaited on the worker's event loop)",
    "connector": "PsycopgConnector defaults (psycopg_pool, 4 connections)",
    "worker": "run_worker_async(concurrency=C) = `procrastinate worker --concurrency C`, "
    "other options default (listen_notify, delete_jobs never, 5 s polling)",
    "logging": "worker subprocess: CLI default INFO (2 lines per job) to a file",
    "enqueue": "Task.batch_defer_async, 1,000 jobs per call",
    "analyze": "ANALYZE after enqueueing, untimed (as autovacuum would on a live table); "
    "without it the fetch query plans on empty statistics, sorts every todo job, and "
    "10,000 jobs drain at ~140-160 instead of ~400 jobs/s",
}


async def _install(url: str, jobs: int = 0) -> None:
    """Apply the schema (``procrastinate schema --apply``) and defer ``jobs`` no-op jobs."""
    app = build_app(url)
    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        await _defer_noops(app, jobs)


async def _defer_noops(app: Any, jobs: int) -> None:
    """Defer ``jobs`` no-op jobs, then ANALYZE (see ``SETTINGS["analyze"]``)."""
    noop = app.tasks["noop"]
    for start in range(0, jobs, CHUNK):
        await noop.batch_defer_async(*({} for _ in range(min(CHUNK, jobs - start))))
    if jobs:
        await app.connector.execute_query_async("ANALYZE")


@contextlib.contextmanager
def _scratch() -> Iterator[Path]:
    """A temporary folder for the worker's log (and latency stamps), removed after."""
    folder = Path(tempfile.mkdtemp(prefix="bench_procrastinate_"))
    log = folder / "worker.log"
    os.environ[LOG_ENV] = str(log)
    try:
        yield folder
    except BaseException:
        if log.exists():  # the worker's last words, before the folder goes
            tail = log.read_text(errors="replace").splitlines()[-20:]
            print("worker log:", *tail, sep="\n", file=sys.stderr)
        raise
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _worker_cmd(url: str, concurrency: int) -> list[str]:
    return common.python_cmd(MODULE, "_worker", "--url", url, "--concurrency", str(concurrency))


def _pending(conn: Any) -> bool:
    return bool(conn.execute(PENDING_SQL).fetchone()[0])


def _drain(url: str, concurrency: int) -> common.Drain:
    with common.pg_connect(url) as conn:
        return common.drain(_worker_cmd(url, concurrency), lambda: not _pending(conn))


# the worker subprocess ---------------------------------------------------------------------------
def worker(args: argparse.Namespace) -> None:
    """What ``procrastinate --app=... worker --concurrency C`` does, plus the READY line."""
    level = os.environ.get(LOG_LEVEL_ENV, "INFO").upper()
    logging.basicConfig(
        level=getattr(logging, level),
        format=logging.BASIC_FORMAT,
        filename=os.environ.get(LOG_ENV, os.devnull),
    )
    app = build_app(args.url)

    async def run() -> None:
        async with app.open_async():
            common.signal_ready()
            await app.run_worker_async(concurrency=args.concurrency)

    asyncio.run(run())


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
        durations = asyncio.run(_overhead(url, args.jobs))
    return {
        "zero_step_jobs_per_s": round(args.jobs / sum(durations), 1),
        "three_step_jobs_per_s": None,
        "per_step_us": None,
        **job_times(durations),
        "note": "no steps; defer then poll until succeeded, in-process worker; stalled "
        "jobs waited for the 5 s poll (a lost new-job wake-up in the worker)",
        "settings": SETTINGS,
    }


async def _overhead(url: str, jobs: int) -> list[float]:
    import psycopg

    app = build_app(url)
    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        noop = app.tasks["noop"]
        runner = asyncio.create_task(
            app.run_worker_async(concurrency=1, install_signal_handlers=False)
        )
        try:
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:

                async def run_one() -> None:
                    job_id = await noop.defer_async()
                    while True:
                        cursor = await conn.execute(
                            "SELECT status FROM procrastinate_jobs WHERE id = %s", (job_id,)
                        )
                        row = await cursor.fetchone()
                        if row is not None and row[0] == "succeeded":
                            return
                        if not runner.done():
                            await asyncio.sleep(POLL_S)
                        else:
                            runner.result()  # the worker died: raise its error
                            raise RuntimeError("the in-process worker stopped")

                for _ in range(WARMUP):
                    await run_one()
                durations = []
                for _ in range(jobs):
                    started = time.perf_counter()
                    await run_one()
                    durations.append(time.perf_counter() - started)
                return durations
        finally:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner


def throughput(args: argparse.Namespace) -> dict[str, Any]:
    if args.store != "postgres":
        return PG_ONLY
    if args.steps:
        return {"skipped": "no steps"}
    with common.fresh_postgres(SYSTEM, args.url) as url, _scratch():
        asyncio.run(_install(url, args.jobs))
        drained = _drain(url, args.concurrency)
    return {
        "jobs_per_s": round(args.jobs / drained.seconds, 1),
        "seconds": round(drained.seconds, 3),
        "settings": SETTINGS,
    }


def latency(args: argparse.Namespace) -> dict[str, Any]:
    if args.store != "postgres":
        return PG_ONLY
    with common.fresh_postgres(SYSTEM, args.url) as url, _scratch() as folder:
        asyncio.run(_install(url))
        stamps = folder / "stamps.txt"
        stamps.touch()
        with common.Worker(_worker_cmd(url, 1)) as proc:
            seconds, calls = asyncio.run(_latency(url, args.samples, stamps, proc))
    return {
        **common.latency_fields(seconds),
        "enqueue_call_ms": round(statistics.median(calls) * 1000, 3),
        "settings": SETTINGS,
    }


async def _latency(url: str, samples: int, stamps: Path, proc: common.Worker) -> list[float]:
    import psycopg

    app = build_app(url)
    results: list[float] = []
    calls: list[float] = []
    async with (
        app.open_async(),
        await psycopg.AsyncConnection.connect(url, autocommit=True) as conn,
    ):
        stamp = app.tasks["stamp"]
        with stamps.open() as reader:
            for i in range(-WARMUP, samples):
                enqueued = time.time()
                await stamp.defer_async(i=i, path=str(stamps))
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
                while True:
                    cursor = await conn.execute(PENDING_SQL)
                    row = await cursor.fetchone()
                    if row is not None and not row[0]:
                        break
                    await asyncio.sleep(0.001)
                await asyncio.sleep(0.02)
    return results, calls


def scale(args: argparse.Namespace) -> dict[str, Any]:
    if args.store != "postgres":
        return PG_ONLY
    with common.fresh_postgres(SYSTEM, args.url) as url, _scratch():
        asyncio.run(_install(url))
        started = time.perf_counter()
        with common.pg_connect(url) as conn:
            _insert_history(conn, args.rows)
        insert_seconds = time.perf_counter() - started
        claim_seconds = asyncio.run(_claims(url, CLAIMS))
        asyncio.run(_enqueue(url, args.jobs))
        drained = _drain(url, args.concurrency)
    return {
        "claim_ms": round(statistics.median(claim_seconds) * 1000, 3),
        "jobs_per_s": round(args.jobs / drained.seconds, 1),
        "insert_s": round(insert_seconds, 1),
        "history": "rows succeeded jobs + 3 events each (deferred, started, succeeded)",
        "settings": SETTINGS,
    }


def _insert_history(conn: Any, rows: int) -> None:
    """``rows`` finished jobs as a worker leaves them (pruning off: delete_jobs never)."""
    if rows:
        # synthetic history: skip the per-row FK triggers of procrastinate_events
        conn.execute("SET session_replication_role = replica")
        conn.execute(
            "INSERT INTO procrastinate_jobs (queue_name, task_name, args, status, attempts)"
            " SELECT 'default', 'noop', '{}', 'succeeded', 1 FROM generate_series(1, %s)",
            (rows,),
        )
        conn.execute(
            "INSERT INTO procrastinate_events (job_id, type, at)"
            " SELECT j.id, e.type, now() FROM procrastinate_jobs j,"
            " unnest('{deferred,started,succeeded}'::procrastinate_job_event_type[]) e(type)"
            " ORDER BY j.id"
        )
        conn.execute("SET session_replication_role = DEFAULT")
    conn.execute("VACUUM ANALYZE")  # as autovacuum would have by then


async def _enqueue(url: str, jobs: int) -> None:
    app = build_app(url)
    async with app.open_async():
        await _defer_noops(app, jobs)


async def _claims(url: str, count: int) -> list[float]:
    from procrastinate import jobs

    app = build_app(url)
    seconds: list[float] = []
    async with app.open_async():
        manager = app.job_manager
        await _defer_noops(app, count + WARMUP)
        worker_id = await manager.register_worker()
        for i in range(count + WARMUP):
            started = time.perf_counter()
            job = await manager.fetch_job(queues=None, worker_id=worker_id)
            elapsed = time.perf_counter() - started
            assert job is not None
            if i >= WARMUP:
                seconds.append(elapsed)
            await manager.finish_job(job=job, status=jobs.Status.SUCCEEDED, delete_job=False)
        await manager.unregister_worker(worker_id)
    return seconds


def memory(args: argparse.Namespace) -> dict[str, Any]:
    if args.store != "postgres":
        return PG_ONLY
    with common.fresh_postgres(SYSTEM, args.url) as url, _scratch():
        asyncio.run(_install(url, args.jobs))
        drained = _drain(url, args.concurrency)
    return {
        "peak_rss_mb": round(drained.peak_rss_mb, 1),
        "concurrency": args.concurrency,
        "jobs_per_s": round(args.jobs / drained.seconds, 1),
        "settings": SETTINGS,
    }


HANDLERS = {
    "overhead": overhead,
    "throughput": throughput,
    "latency": latency,
    "scale": scale,
    "memory": memory,
    "_worker": worker,
}

if __name__ == "__main__":
    raise SystemExit(common.main(SYSTEM, HANDLERS))
