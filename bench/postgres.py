"""Throughput, step overhead and start latency on PostgreSQL, with same-run baselines.

Scenarios (each drain and each latency series gets a fresh schema, dropped afterwards):

1. no-op jobs: enqueue ``--jobs`` jobs, then time one worker process (a subprocess running
   ``app.run_worker(concurrency=C, until_idle=True)``) draining them, C = 1 and 16;
2. three-step jobs drained the same way, and the per-step overhead: jobs of 3 and of 0
   trivial steps run one after another with ``app.run``, (t3 - t0) / 3 per job (the two
   kinds alternate in chunks of 25 and the median chunk pair counts);
3. enqueue-to-start latency: an idle worker process; one job at a time, from the call to
   ``app.enqueue`` to the ``time.time()`` the job body records as its result;
4. baselines on the same server in the same run: one autocommit ``INSERT`` (a round trip
   that commits; with ``synchronous_commit`` on and off), one ``SELECT 1`` round trip, and
   ``pgbench -N -c 1`` (simple-update) when ``pgbench`` is installed.

    PYTHONPATH=src python bench/postgres.py [--jobs 10000] [--runs 3] [--quick]
        [--url postgresql://postgres@127.0.0.1:5432/postgres]

Benchmarks print; they never assert. Per-run figures go to stderr, medians to stdout; a
scenario that fails (the server restarted, say) is reported and left out of the medians.
``--prepare KIND N`` and ``--drain C`` run the two halves of a drain by hand, for a
profiler (see bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import sql

import stepstone

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"

#: Published figures of other tools on a 2-core machine (context only, not measured here).
REFERENCE_QUEUE_JOBS_PER_S = 4000  # a Postgres-backed Python queue without checkpoints
REFERENCE_QUEUE_LATENCY_MS = "3-4"  # its enqueue-to-start latency
REFERENCE_DURABLE_WORKFLOWS_PER_S = 65  # a durable-execution library, 3-step workflows


# the jobs -------------------------------------------------------------------------------
def build_app(url: str) -> tuple[stepstone.App, dict[str, Any]]:
    """The benchmark's App; the worker subprocess builds the same one."""
    app = stepstone.App(url)

    @app.step
    def one(x: int) -> int:
        return x + 1

    @app.step
    def two(x: int) -> int:
        return x * 2

    @app.step
    def three(x: int) -> str:
        return str(x)

    @app.job(name="bench.no_steps")
    def no_steps(x: int) -> None:
        return None

    @app.job(name="bench.three_steps")
    def three_steps(x: int) -> str:
        return three(two(one(x)))

    @app.job(name="bench.started_at")
    def started_at(x: int) -> float:
        return time.time()

    return app, {"no_steps": no_steps, "three_steps": three_steps, "started_at": started_at}


# schemas and subprocesses ---------------------------------------------------------------
def split_url(url: str) -> tuple[str, str | None]:
    """The libpq URL without stepstone's ``schema`` parameter, and that parameter."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = next((value for name, value in query if name == "schema"), None)
    kept = urlencode([(name, value) for name, value in query if name != "schema"])
    return urlunsplit(parts._replace(query=kept)), schema


def with_schema(url: str, schema: str) -> str:
    conninfo = split_url(url)[0]
    return f"{conninfo}{'&' if '?' in conninfo else '?'}schema={schema}"


@contextmanager
def scratch_schema(url: str, tag: str) -> Iterator[str]:
    """A stepstone URL on a fresh schema, dropped on exit."""
    schema = f"bench_{tag}_{os.getpid()}_{secrets.token_hex(3)}"
    try:
        yield with_schema(url, schema)
    finally:
        try:
            with psycopg.connect(split_url(url)[0], autocommit=True) as conn:
                drop = sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE")
                conn.execute(drop.format(sql.Identifier(schema)))
        except psycopg.Error as exc:
            print(f"could not drop schema {schema}: {str(exc).strip()}", file=sys.stderr)


def worker_command(url: str, concurrency: int, *, serve: bool) -> list[str]:
    command = [sys.executable, str(Path(__file__).resolve()), "--url", url]
    return [*command, "--serve" if serve else "--drain", str(concurrency)]


def child_main(url: str, concurrency: int, *, serve: bool) -> int:
    """In the worker subprocess: open the store, then run one worker and report its time."""
    if serve:  # the parent stops it with SIGTERM: that is no news
        logging.getLogger("stepstone").setLevel(logging.ERROR)
    app, _ = build_app(url)
    app.store  # noqa: B018 - connect and migrate before the clock starts
    print("ready", flush=True)
    started = time.perf_counter()
    app.run_worker(concurrency=concurrency, until_idle=not serve)
    print(json.dumps({"seconds": time.perf_counter() - started}), flush=True)
    app.close()
    return 0


# scenarios 1 and 2: one worker process draining a queue ---------------------------------
def enqueue_jobs(app: stepstone.App, job: Any, count: int) -> float:
    """Enqueue ``count`` jobs (``enqueue_many`` when the App has it); the seconds it took."""
    started = time.perf_counter()
    many = getattr(app, "enqueue_many", None)
    if many is not None:
        many(job, [(i,) for i in range(count)])
    else:
        for i in range(count):
            app.enqueue(job, i)
    return time.perf_counter() - started


def drain(url: str, kind: str, count: int, concurrency: int) -> tuple[float, float, int]:
    """Enqueue ``count`` jobs of ``kind`` on a fresh schema, drain them with one worker
    process; (enqueue jobs/s, drain jobs/s, jobs that succeeded)."""
    with scratch_schema(url, kind[:5]) as scratch:
        app, jobs = build_app(scratch)
        enqueue_s = enqueue_jobs(app, jobs[kind], count)
        store_schema = split_url(scratch)[1] or ""
        with psycopg.connect(split_url(url)[0], autocommit=True) as conn:
            # Fresh statistics, as autovacuum would have in a long-lived database.
            conn.execute(sql.SQL("ANALYZE {}.jobs").format(sql.Identifier(store_schema)))
        child = subprocess.Popen(
            worker_command(scratch, concurrency, serve=False), stdout=subprocess.PIPE, text=True
        )
        assert child.stdout is not None
        out = child.stdout.read()
        if child.wait() != 0 or not out.strip().endswith("}"):
            raise RuntimeError(f"the worker process failed (exit status {child.returncode})")
        seconds = json.loads(out.splitlines()[-1])["seconds"]
        with psycopg.connect(split_url(url)[0], autocommit=True) as conn:
            query = sql.SQL("SELECT count(*) FROM {}.jobs WHERE state = 'succeeded'")
            row = conn.execute(query.format(sql.Identifier(store_schema))).fetchone()
            done = int(row[0]) if row else 0
        app.close()
    return count / enqueue_s, count / seconds, done


# scenario 2: per-step overhead with app.run ----------------------------------------------
def step_overhead(url: str, count: int, chunk: int = 25) -> tuple[float, float, float]:
    """(per-step us, 0-step jobs/s, 3-step jobs/s), jobs run one after another with app.run.

    0-step and 3-step jobs alternate in chunks of ``chunk`` jobs, and the per-step figure
    is the median over chunk pairs of (t3 - t0) / (3 * chunk): a burst of load from other
    processes spoils a few pairs, not the whole difference.
    """
    with scratch_schema(url, "steps") as scratch:
        app, jobs = build_app(scratch)
        for i in range(min(50, count)):  # warm up: connections, codecs, plans
            app.run(jobs["three_steps"], i)
            app.run(jobs["no_steps"], i)

        def timed(job: Any) -> float:
            started = time.perf_counter()
            for i in range(chunk):
                app.run(job, i)
            return time.perf_counter() - started

        pairs = [
            (timed(jobs["no_steps"]), timed(jobs["three_steps"]))
            for _ in range(max(1, count // chunk))
        ]
        app.close()
    per_step = statistics.median((t3 - t0) / (3 * chunk) * 1e6 for t0, t3 in pairs)
    total = len(pairs) * chunk
    return per_step, total / sum(p[0] for p in pairs), total / sum(p[1] for p in pairs)


# scenario 3: enqueue-to-start latency ----------------------------------------------------
def start_latency(url: str, samples: int) -> tuple[list[float], list[float]]:
    """(enqueue-call-to-start ms, enqueue call ms) per sample, with an idle worker process."""
    latencies: list[float] = []
    enqueue_calls: list[float] = []
    pause = random.Random(7)
    with scratch_schema(url, "latency") as scratch:
        app, jobs = build_app(scratch)
        app.store  # noqa: B018 - migrate before the worker starts
        child = subprocess.Popen(
            worker_command(scratch, 1, serve=True), stdout=subprocess.PIPE, text=True
        )
        try:
            assert child.stdout is not None
            child.stdout.readline()  # "ready"
            for i in range(samples + 10):  # the first 10 warm the worker up
                time.sleep(pause.uniform(0.01, 0.03))  # let the worker go idle
                called = time.time()
                handle = app.enqueue(jobs["started_at"], i)
                returned = time.time()
                started = handle.result(timeout=30)
                if i >= 10:
                    latencies.append((started - called) * 1e3)
                    enqueue_calls.append((returned - called) * 1e3)
        finally:
            child.terminate()
            child.wait(timeout=60)
            app.close()
    return latencies, enqueue_calls


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


# scenario 4: baselines -------------------------------------------------------------------
def round_trips_us(url: str, count: int) -> dict[str, float]:
    """Microseconds per autocommit INSERT (sync commit on, off) and per ``SELECT 1``."""
    figures: dict[str, float] = {}
    with scratch_schema(url, "raw") as scratch:
        schema = sql.Identifier(split_url(scratch)[1] or "")
        with psycopg.connect(split_url(url)[0], autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(schema))
            conn.execute(
                sql.SQL(
                    "CREATE TABLE {}.raw (job text, seq integer, value json, "
                    "PRIMARY KEY (job, seq))"
                ).format(schema)
            )
            insert = sql.SQL("INSERT INTO {}.raw VALUES (%s, %s, %s)").format(schema)

            def timed(action: Callable[[int], object]) -> float:
                for i in range(min(100, count)):  # warm up, and prepare the statement
                    action(-1 - i)
                started = time.perf_counter()
                for i in range(count):
                    action(i)
                return (time.perf_counter() - started) / count * 1e6

            for mode in ("on", "off"):
                conn.execute(sql.SQL("SET synchronous_commit = {}").format(sql.SQL(mode)))
                conn.execute(sql.SQL("TRUNCATE {}.raw").format(schema))
                figures[f"insert_{mode}"] = timed(
                    lambda i, mode=mode: conn.execute(insert, (mode, i, '"value"'))
                )
            figures["select"] = timed(lambda _i: conn.execute("SELECT 1").fetchone())
    return figures


@contextmanager
def pgbench_database(url: str) -> Iterator[tuple[str | None, str]]:
    """A scratch database initialised by ``pgbench -i``, dropped on exit: (its URL, "") or
    (None, why not)."""
    pgbench = shutil.which("pgbench")
    if pgbench is None:
        yield None, "pgbench is not installed (it comes with the PostgreSQL client packages)"
        return
    conninfo = split_url(url)[0]
    name = f"stepstone_pgbench_{os.getpid()}"
    try:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        target = psycopg.conninfo.make_conninfo(conninfo, dbname=name)
        subprocess.run([pgbench, "-i", "-q", target], check=True, capture_output=True, text=True)
    except (psycopg.Error, subprocess.CalledProcessError) as exc:
        yield None, f"could not prepare its database: {str(exc).strip().splitlines()[0]}"
    else:
        yield target, ""
    finally:
        try:
            with psycopg.connect(conninfo, autocommit=True) as conn:
                drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                conn.execute(drop.format(sql.Identifier(name)))
        except psycopg.Error as exc:
            print(f"could not drop database {name}: {str(exc).strip()}", file=sys.stderr)


def pgbench_tps(target: str, seconds: int) -> float:
    """Transactions/s of ``pgbench -N -c 1 -T seconds`` (simple-update)."""
    pgbench = shutil.which("pgbench") or "pgbench"
    with tempfile.TemporaryDirectory() as cwd:  # pgbench may write log files
        done = subprocess.run(
            [pgbench, "-N", "-c", "1", "-T", str(seconds), target],
            check=True,
            capture_output=True,
            text=True,
            cwd=cwd,
        )
    found = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", done.stdout)
    return float(found.group(1)) if found else float("nan")


# the report ------------------------------------------------------------------------------
Figures = dict[str, list[float]]


def server_version(url: str) -> str:
    try:
        with psycopg.connect(split_url(url)[0], autocommit=True) as conn:
            row = conn.execute("SHOW server_version").fetchone()
    except psycopg.Error:
        return "?"
    return str(row[0]) if row else "?"


def measure(figures: Figures, run: int, label: str, action: Callable[[], dict[str, float]]) -> None:
    """Run one scenario; a failure (the server restarted under us, say) skips it, loudly."""
    try:
        values = action()
    except (psycopg.Error, stepstone.StepstoneError, RuntimeError, OSError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"run {run}: {label} FAILED, skipped: {reason}", file=sys.stderr)
        return
    for name, value in values.items():
        figures.setdefault(name, []).append(value)


def one_run(
    figures: Figures, run: int, url: str, sizes: dict[str, int], pgbench_target: str | None
) -> None:
    """Every scenario once, appending to ``figures``; progress to stderr."""
    log = sys.stderr
    for kind in ("no_steps", "three_steps"):
        for concurrency in (1, 16):

            def drained(kind: str = kind, concurrency: int = concurrency) -> dict[str, float]:
                enqueued, rate, done = drain(url, kind, sizes["jobs"], concurrency)
                note = "" if done == sizes["jobs"] else f"   ONLY {done} SUCCEEDED"
                print(
                    f"run {run}: {kind:11} c={concurrency:<2} drain {rate:7.0f} jobs/s   "
                    f"(enqueue {enqueued:6.0f} jobs/s){note}",
                    file=log,
                )
                return {f"drain {kind} {concurrency}": rate, "enqueue": enqueued}

            measure(figures, run, f"drain {kind} c={concurrency}", drained)

    def overhead() -> dict[str, float]:
        per_step, rate0, rate3 = step_overhead(url, sizes["sequential"])
        print(
            f"run {run}: app.run 0-step {rate0:6.0f} jobs/s, 3-step {rate3:6.0f} jobs/s, "
            f"per-step overhead {per_step:7.1f} us",
            file=log,
        )
        return {"per_step": per_step, "run0": rate0, "run3": rate3}

    def latency() -> dict[str, float]:
        latencies, calls = start_latency(url, sizes["samples"])
        found = {name: percentile(latencies, q) for name, q in (("p50", 0.5), ("p95", 0.95))}
        found["p99"] = percentile(latencies, 0.99)
        found["enqueue_ms"] = statistics.median(calls)
        print(
            f"run {run}: enqueue-to-start p50 {found['p50']:5.2f} ms, p95 {found['p95']:5.2f} "
            f"ms, p99 {found['p99']:5.2f} ms (enqueue call p50 {found['enqueue_ms']:.2f} ms)",
            file=log,
        )
        return found

    def baselines() -> dict[str, float]:
        found = round_trips_us(url, sizes["round_trips"])
        if pgbench_target is not None:
            found["pgbench"] = pgbench_tps(pgbench_target, sizes["pgbench_seconds"])
        print(
            f"run {run}: INSERT+COMMIT {found['insert_on']:6.0f} us (sync on), "
            f"{found['insert_off']:6.0f} us (sync off), SELECT 1 {found['select']:5.0f} us"
            + (f", pgbench -N -c 1 {found['pgbench']:6.0f} tps" if "pgbench" in found else ""),
            file=log,
        )
        return found

    measure(figures, run, "per-step overhead", overhead)
    measure(figures, run, "enqueue-to-start latency", latency)
    measure(figures, run, "baselines", baselines)


def report(figures: Figures, url: str, sizes: dict[str, int], runs: int, no_pgbench: str) -> None:
    def med(name: str) -> float:
        values = figures.get(name)
        return statistics.median(values) if values else float("nan")

    def spread(name: str) -> str:
        values = figures.get(name, [])
        if len(values) < 2:
            return f"  (n={len(values)})"
        return f"  (min {min(values):.0f}, max {max(values):.0f}, n={len(values)})"

    print(
        f"\nstepstone {stepstone.__version__} ({Path(stepstone.__file__).parent}), PostgreSQL "
        f"{server_version(url)}, psycopg {psycopg.__version__} ({psycopg.pq.__impl__}), "
        f"{os.cpu_count()} CPUs; medians of {runs} run(s), {sizes['jobs']} jobs per drain"
    )
    for number, kind, title in ((1, "no_steps", "no-op"), (2, "three_steps", "three-step")):
        print(f"{number}. {title} jobs drained by one worker process")
        for concurrency in (1, 16):
            name = f"drain {kind} {concurrency}"
            print(f"   concurrency {concurrency:2}: {med(name):8.0f} jobs/s{spread(name)}")
    print(
        f"   app.run one after another: 0-step {med('run0'):6.0f} jobs/s, "
        f"3-step {med('run3'):6.0f} jobs/s"
    )
    print(f"   per-step overhead:         {med('per_step'):8.1f} us{spread('per_step')}")
    print(f"   (enqueue, one call per job: {med('enqueue'):6.0f} jobs/s)")
    print(f"3. enqueue-to-start latency, idle worker, {sizes['samples']} samples per run")
    print(
        f"   p50 {med('p50'):6.2f} ms   p95 {med('p95'):6.2f} ms   p99 {med('p99'):6.2f} ms   "
        f"(the enqueue call itself: {med('enqueue_ms'):.2f} ms)"
    )
    print("4. baselines, same server, same run")
    print(f"   INSERT + COMMIT, synchronous_commit on:  {med('insert_on'):8.1f} us")
    print(f"   INSERT + COMMIT, synchronous_commit off: {med('insert_off'):8.1f} us")
    print(f"   SELECT 1 round trip:                     {med('select'):8.1f} us")
    seconds = sizes["pgbench_seconds"]
    pgbench = "pgbench" in figures
    if pgbench:
        print(f"   pgbench -N -c 1 -T {seconds}:                  {med('pgbench'):8.0f} tps")
    else:
        print(f"   pgbench: skipped: {no_pgbench or 'every run failed'}")
    step = med("per_step")
    print("   ratios")
    print(f"     per-step overhead / INSERT+COMMIT (sync off): {step / med('insert_off'):6.2f}x")
    print(f"     per-step overhead / INSERT+COMMIT (sync on):  {step / med('insert_on'):6.2f}x")
    if pgbench:
        for kind in ("no_steps", "three_steps"):
            for concurrency in (1, 16):
                ratio = med(f"drain {kind} {concurrency}") / med("pgbench")
                print(f"     {kind:11} c={concurrency:<2} jobs/s / pgbench tps:   {ratio:6.2f}")
    print("   other tools' figures on a 2-core machine (context only, not measured here)")
    noop = med("drain no_steps 1") / REFERENCE_QUEUE_JOBS_PER_S
    print(
        f"     a Postgres queue without checkpoints: ~{REFERENCE_QUEUE_JOBS_PER_S} no-op jobs/s "
        f"with one worker (stepstone c=1: {noop:.2f}x), starts a job "
        f"{REFERENCE_QUEUE_LATENCY_MS} ms after enqueue"
    )
    three = med("drain three_steps 16") / REFERENCE_DURABLE_WORKFLOWS_PER_S
    print(
        f"     a durable-execution library: ~{REFERENCE_DURABLE_WORKFLOWS_PER_S} three-step "
        f"workflows/s (stepstone c=16: {three:.1f}x)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("STEPSTONE_BENCH_URL", DEFAULT_URL))
    parser.add_argument("--jobs", type=int, default=None, help="jobs per drain (10000)")
    parser.add_argument("--runs", type=int, default=None, help="repetitions (3)")
    parser.add_argument("--samples", type=int, default=None, help="latency samples (200)")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    profiling = parser.add_argument_group(
        "profiling", "run one step by hand, e.g. under py-spy; --url should name a ?schema="
    )
    profiling.add_argument(
        "--prepare",
        nargs=2,
        metavar=("KIND", "N"),
        help="enqueue N jobs of KIND (no_steps, three_steps) and exit",
    )
    profiling.add_argument(
        "--drain", type=int, metavar="C", help="run one worker (concurrency C) until idle"
    )
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.drain is not None or args.serve is not None:
        serve = args.serve is not None
        return child_main(args.url, args.serve if serve else args.drain, serve=serve)
    if args.prepare:
        kind, count = args.prepare[0], int(args.prepare[1])
        app, jobs = build_app(args.url)
        seconds = enqueue_jobs(app, jobs[kind], count)
        app.close()
        print(f"enqueued {count} {kind} jobs ({count / seconds:.0f} jobs/s)")
        return 0

    quick = args.quick
    sizes = {
        "jobs": args.jobs or (200 if quick else 10_000),
        "samples": args.samples or (20 if quick else 200),
        "sequential": 50 if quick else 1000,
        "round_trips": 300 if quick else 3000,
        "pgbench_seconds": 1 if quick else 5,
    }
    runs = args.runs or (1 if quick else 3)
    figures: Figures = {}
    with pgbench_database(args.url) as (pgbench_target, no_pgbench):
        for run in range(1, runs + 1):
            one_run(figures, run, args.url, sizes, pgbench_target)
    if not figures:
        print("every scenario failed; nothing to report", file=sys.stderr)
        return 1
    report(figures, args.url, sizes, runs, no_pgbench)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
