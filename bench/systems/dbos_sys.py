"""DBOS (``dbos`` 3.4.0) under the shared benchmark scenarios, on SQLite and PostgreSQL.

How each scenario maps to DBOS:

- ``overhead``: ``DBOS.launch()`` in this process, then call a ``@DBOS.workflow()`` function
  directly (DBOS's synchronous "start and wait" path: the workflow runs in the calling thread
  and every step is checkpointed before the next starts), ``--jobs`` times with 0 steps and
  ``--jobs`` times with 3 trivial ``@DBOS.step()`` calls.
- ``throughput`` / ``memory``: a ``DBOSClient`` (DBOS's producer API, no executor) registers
  queue ``q`` with ``worker_concurrency=--concurrency`` and enqueues ``--jobs`` workflows in
  batches of ``ENQUEUE_BATCH`` per transaction (``DBOSClient.enqueue_in_transaction``; DBOS has
  no bulk enqueue), then one worker subprocess (``DBOS.launch()``; its queue thread drains
  ``q``) runs them; timed from the worker's READY until no workflow of ``q`` is ENQUEUED or
  PENDING.
- ``latency``: an idle worker subprocess; each sample enqueues one workflow with the client;
  the workflow writes ``time.time()`` to a file as its body starts.
- ``scale``: ``--rows`` finished (SUCCESS) workflows of queue ``q`` inserted with SQL into
  ``workflow_status``; claim latency is one ``SystemDatabase.start_queued_workflows`` call
  (DBOS's dequeue transaction, claiming one workflow) in this process; then a worker
  subprocess drains ``--jobs`` no-op workflows at ``--concurrency``.

DBOS's defaults are kept except the queue polling interval (``POLL_INTERVAL``): DBOS finds
queued work only by polling (default every 1 s, and a worker at its concurrency limit waits
for the next poll before taking more), which would cap concurrency 1 at about one workflow a
second. ``BENCH_DBOS_POLL`` overrides it for experiments.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.systems import common
from dbos import DBOS, DBOSClient

SYSTEM = "dbos"
APP = "bench"
QUEUE = "q"
POLL_INTERVAL = float(os.environ.get("BENCH_DBOS_POLL", "0.01"))
ENQUEUE_BATCH = 500
CLAIM_SAMPLES = 200
INSERT_BATCH = 50_000


# the workflows (registered at import, so the worker subprocess has them too) -------------------
@DBOS.step(name="bench_noop_step")
def noop_step(i: int) -> int:
    return i


@DBOS.workflow(name="bench_job")
def bench_job(steps: int) -> int:
    for i in range(steps):
        noop_step(i)
    return steps


@DBOS.workflow(name="bench_latency_job")
def latency_job(path: str) -> None:
    started = time.time()
    tmp = path + ".tmp"
    with open(tmp, "w") as out:
        out.write(repr(started))
    os.replace(tmp, path)


# stores ---------------------------------------------------------------------------------------
@contextmanager
def fresh_store(args: argparse.Namespace) -> Iterator[str]:
    """Yield a DBOS ``system_database_url`` for a new, empty database."""
    if args.store == "sqlite":
        with common.fresh_sqlite(SYSTEM) as path:
            yield f"sqlite:///{path}"
    else:
        with common.fresh_postgres(SYSTEM, args.url) as url:
            yield url


def config(url: str) -> dict[str, Any]:
    return {
        "name": APP,
        "system_database_url": url,
        "application_version": APP,
        "log_level": "WARNING",
    }


def settings(args: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    found: dict[str, Any] = {
        "dbos": _version(),
        "queue_polling_interval_sec": POLL_INTERVAL,
        "worker_concurrency": args.concurrency,
        "sqlite": "DBOS default (rollback journal, synchronous=FULL)"
        if args.store == "sqlite"
        else None,
        "other": "DBOS defaults (pool size, LISTEN/NOTIFY on, no OTLP)",
    }
    found.update(extra)
    return {k: v for k, v in found.items() if v is not None}


def _version() -> str:
    from importlib.metadata import version

    return version("dbos")


class Store:
    """Plain SQL on the system database: the benchmark's own reads and inserts."""

    def __init__(self, url: str) -> None:
        self.sqlite = url.startswith("sqlite")
        self.table = "workflow_status" if self.sqlite else "dbos.workflow_status"
        if self.sqlite:
            import sqlite3

            self.conn: Any = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
            self.conn.execute("PRAGMA busy_timeout=30000")
        else:
            self.conn = common.pg_connect(url)

    def close(self) -> None:
        self.conn.close()

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        if self.sqlite:
            sql = sql.replace("%s", "?")
        return self.conn.execute(sql, params)

    def scalar(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        row = self.execute(sql, params).fetchone()
        return None if row is None else row[0]

    def in_flight(self) -> bool:
        """Whether any workflow of the queue is still ENQUEUED or PENDING."""
        return bool(
            self.scalar(
                f"SELECT 1 FROM {self.table} WHERE queue_name = %s"
                " AND status IN ('ENQUEUED', 'PENDING') LIMIT 1",
                (QUEUE,),
            )
        )

    def count(self, status: str) -> int:
        return int(
            self.scalar(
                f"SELECT count(*) FROM {self.table} WHERE queue_name = %s AND status = %s",
                (QUEUE, status),
            )
        )


def client_for(url: str) -> DBOSClient:
    """Create the system database (DBOS's migrations) and a producer client for it."""
    DBOS.migrate(url)
    return DBOSClient(system_database_url=url, application_name=APP)


def register_queue(client: DBOSClient, concurrency: int) -> None:
    client.register_queue(QUEUE, worker_concurrency=concurrency, polling_interval_sec=POLL_INTERVAL)


def enqueue_many(client: DBOSClient, url: str, jobs: int, steps: int) -> float:
    """Enqueue ``jobs`` workflows, ``ENQUEUE_BATCH`` per transaction; return the seconds."""
    import sqlalchemy as sa

    engine = sa.create_engine(_sa_url(url))
    options: Any = {"queue_name": QUEUE, "workflow_name": "bench_job"}
    started = time.perf_counter()
    try:
        done = 0
        while done < jobs:
            batch = min(ENQUEUE_BATCH, jobs - done)
            with engine.begin() as conn:
                for _ in range(batch):
                    client.enqueue_in_transaction(conn, options, steps)
            done += batch
    finally:
        engine.dispose()
    return time.perf_counter() - started


def _sa_url(url: str) -> str:
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return url


def worker_cmd(args: argparse.Namespace, url: str) -> list[str]:
    return common.python_cmd(
        "bench.systems.dbos_sys", "_worker", "--store", args.store, "--url", url
    )


# scenarios ------------------------------------------------------------------------------------
def overhead(args: argparse.Namespace) -> dict[str, Any]:
    with fresh_store(args) as url:
        DBOS(config=config(url))  # type: ignore[arg-type]
        DBOS.launch()
        try:
            for _ in range(20):  # warm up: connections, prepared statements
                bench_job(3)
            seconds = {}
            for steps in (0, 3):
                started = time.perf_counter()
                for _ in range(args.jobs):
                    bench_job(steps)
                seconds[steps] = time.perf_counter() - started
        finally:
            DBOS.destroy()
    return {
        "zero_step_jobs_per_s": round(args.jobs / seconds[0], 1),
        "three_step_jobs_per_s": round(args.jobs / seconds[3], 1),
        "per_step_us": round((seconds[3] - seconds[0]) / args.jobs / 3 * 1e6, 1),
        "settings": settings(
            args,
            worker_concurrency=None,
            queue_polling_interval_sec=None,
            path="direct call of the @DBOS.workflow function (runs in this thread)",
        ),
    }


def _drain(args: argparse.Namespace, steps: int) -> tuple[common.Drain, float]:
    with fresh_store(args) as url:
        client = client_for(url)
        try:
            register_queue(client, args.concurrency)
            enqueue_s = enqueue_many(client, url, args.jobs, steps)
        finally:
            client.destroy()
        store = Store(url)
        try:
            result = common.drain(worker_cmd(args, url), lambda: not store.in_flight())
            succeeded = store.count("SUCCESS")
        finally:
            store.close()
    if succeeded != args.jobs:
        raise RuntimeError(f"{succeeded} of {args.jobs} workflows succeeded")
    return result, enqueue_s


def throughput(args: argparse.Namespace) -> dict[str, Any]:
    result, enqueue_s = _drain(args, args.steps)
    return {
        "jobs_per_s": round(args.jobs / result.seconds, 1),
        "seconds": round(result.seconds, 3),
        "enqueue_jobs_per_s": round(args.jobs / enqueue_s, 1),
        "peak_rss_mb": round(result.peak_rss_mb, 1),
        "settings": settings(args, enqueue=f"enqueue_in_transaction, {ENQUEUE_BATCH} a txn"),
    }


def memory(args: argparse.Namespace) -> dict[str, Any]:
    result, _ = _drain(args, 0)
    return {
        "peak_rss_mb": round(result.peak_rss_mb, 1),
        "jobs_per_s": round(args.jobs / result.seconds, 1),
        "settings": settings(args),
    }


def latency(args: argparse.Namespace) -> dict[str, Any]:
    warmup = 5
    with fresh_store(args) as url, tempfile.TemporaryDirectory(prefix="bench_dbos_") as tmp:
        client = client_for(url)
        try:
            register_queue(client, args.concurrency)
            options: Any = {"queue_name": QUEUE, "workflow_name": "bench_latency_job"}
            latencies = []
            with common.Worker(worker_cmd(args, url)) as worker:
                for i in range(warmup + args.samples):
                    path = Path(tmp) / f"{i}"
                    enqueued = time.time()
                    handle = client.enqueue(options, str(path))
                    common.wait_until(path.exists, timeout=60, poll=0.0005)
                    if not worker.alive():
                        raise RuntimeError("the worker died")
                    if i >= warmup:
                        latencies.append(float(path.read_text()) - enqueued)
                    handle.get_result(polling_interval_sec=0.005)
                    # de-phase the next enqueue from the worker's polling clock
                    time.sleep(random.uniform(0.005, 0.005 + 2 * POLL_INTERVAL))
        finally:
            client.destroy()
    return {**common.latency_fields(latencies), "settings": settings(args)}


def scale(args: argparse.Namespace) -> dict[str, Any]:
    with fresh_store(args) as url:
        client = client_for(url)
        store = Store(url)
        try:
            register_queue(client, 1)
            started = time.perf_counter()
            insert_finished(store, args.rows)
            insert_s = time.perf_counter() - started
            # claim latency: one dequeue transaction, in a DBOS that does not poll ``q``
            enqueue_many(client, url, CLAIM_SAMPLES, 0)
            claim_ms = measure_claims(url)
            # the claimed ones join the history (finished), so no worker recovers them
            store.execute(
                f"UPDATE {store.table} SET status = 'SUCCESS'"
                " WHERE queue_name = 'q' AND status IN ('PENDING', 'ENQUEUED')"
            )
            register_queue(client, args.concurrency)
            enqueue_many(client, url, args.jobs, 0)
            result = common.drain(worker_cmd(args, url), lambda: not store.in_flight())
            succeeded = store.count("SUCCESS")
        finally:
            store.close()
            client.destroy()
    expected = args.rows + CLAIM_SAMPLES + args.jobs
    if succeeded != expected:
        raise RuntimeError(f"{succeeded} finished workflows, expected {expected}")
    return {
        "claim_ms": round(claim_ms, 3),
        "jobs_per_s": round(args.jobs / result.seconds, 1),
        "insert_s": round(insert_s, 2),
        "settings": settings(
            args,
            claim="SystemDatabase.start_queued_workflows claiming 1 (median of 200)",
            history="status, input and output rows inserted with SQL"
            + ("" if args.store == "sqlite" else ", then VACUUM ANALYZE"),
        ),
    }


def insert_finished(store: Store, rows: int) -> None:
    """Insert ``rows`` finished no-op workflows of queue ``q`` with SQL, as DBOS leaves them:
    a ``workflow_status`` row (SUCCESS) plus its ``workflow_input`` and ``workflow_output``."""
    inputs, output = _payloads()
    now = int(time.time() * 1000)
    at = now - rows - 1000  # older than anything enqueued later
    schema = "" if store.sqlite else "dbos."
    inserts = [
        (
            f"INSERT INTO {schema}workflow_status (workflow_uuid, status, name, queue_name,"
            " executor_id, application_version, application_name, created_at, updated_at,"
            " started_at_epoch_ms, completed_at, recovery_attempts, priority, serialization,"
            " creator_xid)"
            " SELECT 'hist-' || x, 'SUCCESS', 'bench_job', 'q', 'local', 'bench', 'bench',"
            " %s + x, %s + x, %s + x, %s + x, 1, 0, 'py_pickle', 'hist-' || x",
            (at, at, at, at),
        ),
        (
            f"INSERT INTO {schema}workflow_input (workflow_uuid, inputs, retention_timestamp)"
            " SELECT 'hist-' || x, %s, %s + x",
            (inputs, at),
        ),
        (
            f"INSERT INTO {schema}workflow_output (workflow_uuid, output, retention_timestamp)"
            " SELECT 'hist-' || x, %s, %s + x",
            (output, at),
        ),
    ]
    if store.sqlite:
        numbers = (
            " FROM (WITH RECURSIVE s(x) AS (SELECT %s UNION ALL SELECT x + 1 FROM s"
            " WHERE x < %s) SELECT x FROM s)"
        )
        store.conn.execute("BEGIN IMMEDIATE")
    else:
        numbers = " FROM generate_series(%s::bigint, %s::bigint) AS x"
    for first in range(0, rows, INSERT_BATCH):
        last = min(first + INSERT_BATCH, rows) - 1
        for sql, params in inserts:
            store.execute(sql + numbers, (*params, first, last))
    if store.sqlite:
        store.conn.execute("COMMIT")
    else:
        for table in ("workflow_status", "workflow_input", "workflow_output"):
            store.conn.execute(f"VACUUM ANALYZE dbos.{table}")


def _payloads() -> tuple[str, str]:
    """The serialized inputs and output DBOS stores for ``bench_job(0)``."""
    from dbos._serialization import DefaultSerializer

    serializer = DefaultSerializer()
    return serializer.serialize({"args": (0,), "kwargs": {}}), serializer.serialize(0)


def measure_claims(url: str) -> float:
    """Median milliseconds of one DBOS dequeue transaction claiming one workflow."""
    from dbos._dbos import _get_dbos_instance
    from dbos._utils import GlobalParams, generate_uuid

    DBOS(config=config(url))  # type: ignore[arg-type]
    DBOS.listen_queues([])  # this process claims by hand; its queue thread leaves q alone
    DBOS.launch()
    try:
        dbos = _get_dbos_instance()
        sys_db = dbos._sys_db
        queue = sys_db.get_queue(QUEUE)
        assert queue is not None
        times = []
        for _ in range(CLAIM_SAMPLES):
            started = time.perf_counter()
            claimed, _ = sys_db.start_queued_workflows(
                queue,
                GlobalParams.executor_id,
                GlobalParams.app_version,
                None,
                0,
                owner_xid=generate_uuid(),
            )
            times.append(time.perf_counter() - started)
            if len(claimed) != 1:
                raise RuntimeError(f"a claim took {len(claimed)} workflows, expected 1")
    finally:
        DBOS.destroy()
    return statistics.median(times) * 1000


# the worker subprocess -------------------------------------------------------------------------
def worker(args: argparse.Namespace) -> None:
    """Run a DBOS executor on ``--url`` (a system database URL) until terminated."""
    DBOS(config=config(args.url))  # type: ignore[arg-type]
    DBOS.launch()
    common.signal_ready()
    threading.Event().wait()


if __name__ == "__main__":
    sys.exit(
        common.main(
            SYSTEM,
            {
                "overhead": overhead,
                "throughput": throughput,
                "latency": latency,
                "scale": scale,
                "memory": memory,
                "_worker": worker,
            },
        )
    )
