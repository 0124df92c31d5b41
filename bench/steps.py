"""Step overhead and the cost of a 0-step job on SQLite, against raw floors of the same run.

Two ratios, each against a floor measured in the same run on the same disk with plain
``sqlite3``, the same schema and the same SQL (so only stepstone's own work is counted):

* **per step / one raw checkpoint write.** Per step = (time of a 100-step job - time of a
  0-step job) / 100. Floor: the same subtraction over raw jobs, where a raw 100-step job
  is its fsynced job insert, 100 autocommit fenced checkpoint inserts (WAL,
  ``synchronous=NORMAL``) and its fsynced outcome. The fsync that ends a job also flushes
  the WAL frames of its checkpoints, so a step's share of it is in both figures. Printed
  beside it: a plain stream of the same checkpoint inserts (no fsync share) and the
  former baseline (a 3-column insert into a rowid table).
* **0-step job / its durability floor.** A 0-step ``app.run`` makes two fsynced commits:
  its job row (inserted already claimed) and its outcome. Floor: the same ``INSERT`` and
  fenced ``UPDATE``, each its own ``synchronous=FULL`` transaction.

The kinds of work alternate in small rounds, in a rotating order, so that a burst of
outside load lands on all of them. Each run is a fresh database; figures are min and
median over ``--runs``; a ratio is the median (and range) of the per-run ratios.

    python bench/steps.py [--jobs 500] [--runs 5] [--rounds 10] [--mode run|worker]
                          [--dir FOLDER] [--clock wall|cpu]
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import stepstone

#: What times the work: wall time, or with ``--clock cpu`` this process's CPU time.
_clock = time.perf_counter

#: Targets of issue 10.
STEP_TARGET = 1.15
RUN_TARGET = 1.3
LONG = 100  # steps in a long job

CHECKPOINT_INSERT = """
INSERT INTO stepstone_checkpoints
    (job_id, seq, name, status, value, attempts, fence, created_at, memo)
SELECT ?, ?, ?, 'ok', ?, 1, ?, ?, NULL
WHERE EXISTS (
    SELECT 1 FROM stepstone_jobs WHERE id = ? AND fence = ? AND state = 'running')
"""
JOB_INSERT = """
INSERT INTO stepstone_jobs
    (id, name, queue, key, args, state, priority, run_at, fence, attempts,
     lease_owner, lease_expires_at, created_at, updated_at, started_at,
     parent_id, concurrency_key, concurrency_limit, debounce_key)
VALUES (?, ?, 'default', NULL, ?, 'running', 0, ?, 1, 1, ?, ?, ?, ?, ?, NULL, NULL, NULL, NULL)
ON CONFLICT (key) DO NOTHING
"""
JOB_COMPLETE = """
UPDATE stepstone_jobs
SET state = 'succeeded', result = ?, lease_owner = NULL, lease_expires_at = NULL,
    updated_at = ?, finished_at = ?
WHERE id = ? AND fence = ? AND state = 'running'
"""


class Floors:
    """Raw ``sqlite3`` writes on a database with stepstone's schema: the floors."""

    def __init__(self, path: Path) -> None:
        schema = stepstone.App(f"sqlite:///{path}")
        schema.store  # noqa: B018 - opening the store creates the tables
        schema.close()
        self.normal = self._connect(path, "NORMAL")
        self.full = self._connect(path, "FULL")
        self.job = str(uuid.uuid4())
        self.seq = 0
        self.old_seq = 0
        now = time.time()
        self.normal.execute(
            JOB_INSERT, (self.job, "raw", "[1]", now, "me", now + 30, now, now, now)
        )
        self.old = sqlite3.connect(path.with_name("old-raw.db"), isolation_level=None)
        self.old.execute("PRAGMA journal_mode=WAL")
        self.old.execute("PRAGMA synchronous=NORMAL")
        self.old.execute(
            "CREATE TABLE t (job TEXT, seq INTEGER, value TEXT, PRIMARY KEY (job, seq))"
        )

    @staticmethod
    def _connect(path: Path, synchronous: str) -> sqlite3.Connection:
        conn = sqlite3.connect(path, isolation_level=None, cached_statements=64)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        return conn

    def checkpoints(self, count: int) -> float:
        """Seconds for ``count`` fenced checkpoint inserts, one autocommit each (NORMAL)."""
        execute, job, seq = self.normal.execute, self.job, self.seq
        started = _clock()
        for i in range(seq, seq + count):
            now = time.time()
            execute(CHECKPOINT_INSERT, (job, i, "one#0", "2", 1, now, job, 1))
        elapsed = _clock() - started
        self.seq = seq + count
        return elapsed

    def old_writes(self, count: int) -> float:
        """Seconds for ``count`` inserts of the former baseline (a 3-column row, NORMAL)."""
        execute, seq = self.old.execute, self.old_seq
        started = _clock()
        for i in range(seq, seq + count):
            execute("INSERT INTO t VALUES (?, ?, ?)", ("job", i, '"value"'))
        elapsed = _clock() - started
        self.old_seq = seq + count
        return elapsed

    def long_jobs(self, count: int) -> float:
        """Seconds for ``count`` raw jobs of ``LONG`` checkpoints: an fsynced insert, the
        checkpoints (NORMAL), an fsynced outcome."""
        full, normal = self.full.execute, self.normal.execute
        started = _clock()
        for i in range(count):
            job, now = str(uuid.uuid4()), time.time()
            full(JOB_INSERT, (job, "raw", f"[{i}]", now, "me", now + 30, now, now, now))
            for seq in range(LONG):
                now = time.time()
                normal(CHECKPOINT_INSERT, (job, seq, "one#0", "2", 1, now, job, 1))
            now = time.time()
            if full(JOB_COMPLETE, (f'"{i}"', now, now, job, 1)).rowcount != 1:
                raise AssertionError("the raw outcome did not apply")
        return _clock() - started

    def job_pairs(self, count: int) -> float:
        """Seconds for ``count`` job inserts and outcomes, each one fsynced commit (FULL)."""
        execute = self.full.execute
        started = _clock()
        for i in range(count):
            job, now = str(uuid.uuid4()), time.time()
            execute(JOB_INSERT, (job, "raw", f"[{i}]", now, "me", now + 30, now, now, now))
            now = time.time()
            if execute(JOB_COMPLETE, (f'"{i}"', now, now, job, 1)).rowcount != 1:
                raise AssertionError("the raw outcome did not apply")
        return _clock() - started

    def close(self) -> None:
        for conn in (self.normal, self.full, self.old):
            conn.close()


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

    @app.job(name="bench.long")
    def long_job(x: int) -> int:
        for _ in range(LONG):
            x = one(x)
        return x

    return app, three_steps, no_steps, long_job


def time_jobs(app: stepstone.App, job: object, count: int, mode: str) -> float:
    """Seconds to run ``count`` jobs one after another."""
    started = _clock()
    if mode == "run":
        for i in range(count):
            app.run(job, i)
    else:
        for i in range(count):
            app.enqueue(job, i)
        app.run_worker(concurrency=1, until_idle=True)
    return _clock() - started


@dataclass
class Totals:
    """Seconds and counts of one run, summed over its rounds."""

    seconds: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, kind: str, seconds: float, count: int) -> None:
        self.seconds[kind] = self.seconds.get(kind, 0.0) + seconds
        self.counts[kind] = self.counts.get(kind, 0) + count

    def us(self, kind: str) -> float:
        return self.seconds[kind] / self.counts[kind] * 1e6


def one_run(
    jobs: int, rounds: int, mode: str, folder: str | None
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """One fresh database; the kinds of work alternate in ``rounds`` rounds. Returns the
    run's figures (from its totals) and the two ratios of each round."""
    zero = max(jobs // rounds, 1)  # 0-step and 3-step jobs per round
    long = max(jobs // (10 * rounds), 1)  # 100-step jobs per round
    writes = long * LONG  # raw checkpoint writes per round
    totals = Totals()
    per_round: dict[str, list[float]] = {"step_ratio": [], "run_ratio": []}
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        folder = Path(tmp)
        floors = Floors(folder / "raw.db")
        app, three_steps, no_steps, long_job = build_app(folder / "bench.db")
        try:
            time_jobs(app, three_steps, 20, mode)  # warm up
            time_jobs(app, long_job, 1, mode)
            floors.checkpoints(200)
            floors.job_pairs(20)
            work: list[tuple[str, Callable[[], float], int]] = [
                ("raw_long", lambda: floors.long_jobs(long), long),
                ("raw_checkpoint", lambda: floors.checkpoints(writes), writes),
                ("old_raw", lambda: floors.old_writes(writes), writes),
                ("long", lambda: time_jobs(app, long_job, long, mode), long),
                ("zero", lambda: time_jobs(app, no_steps, zero, mode), zero),
                ("three", lambda: time_jobs(app, three_steps, zero, mode), zero),
                ("raw_pair", lambda: floors.job_pairs(zero), zero),
            ]
            for index in range(rounds):
                # Rotate the order so that no kind always follows the same other kind.
                took: dict[str, float] = {}
                for kind, measure, count in work[index % len(work) :] + work[: index % len(work)]:
                    took[kind] = measure()
                    totals.add(kind, took[kind], count)
                step = (took["long"] / long - took["zero"] / zero) / LONG
                raw_step = (took["raw_long"] / long - took["raw_pair"] / zero) / LONG
                if raw_step > 0:
                    per_round["step_ratio"].append(step / raw_step)
                per_round["run_ratio"].append(took["zero"] / took["raw_pair"])
        finally:
            app.close()
            floors.close()
    figures = {kind: totals.us(kind) for kind in totals.seconds}
    figures["step"] = (figures["long"] - figures["zero"]) / LONG
    figures["step3"] = (figures["three"] - figures["zero"]) / 3
    figures["raw_step"] = (figures["raw_long"] - figures["raw_pair"]) / LONG
    figures["step_ratio"] = figures["step"] / figures["raw_step"]
    figures["stream_ratio"] = figures["step"] / figures["raw_checkpoint"]
    figures["old_ratio"] = figures["step"] / figures["old_raw"]
    figures["run_ratio"] = figures["zero"] / figures["raw_pair"]
    return figures, per_round


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500, help="0-step jobs per run")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="alternations per run (default 10; 2 with --mode worker, where each drain "
        "pays the worker's start and its wait for idleness)",
    )
    parser.add_argument("--mode", choices=["run", "worker"], default="run")
    parser.add_argument(
        "--dir",
        default=None,
        help="where the databases go (default: the system's temporary folder); on a tmpfs "
        "such as /dev/shm an fsync costs nothing, which isolates stepstone's CPU time",
    )
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu: time this process's CPU time (user + system) instead of wall time; with "
        "--dir on a tmpfs it measures stepstone's own cost even on a busy machine",
    )
    args = parser.parse_args(argv)
    if args.rounds is None:
        args.rounds = 10 if args.mode == "run" else 2
    global _clock
    _clock = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.jobs < 1 or args.runs < 1 or args.rounds < 1:
        parser.error("--jobs, --runs and --rounds must be at least 1")

    runs: list[dict[str, float]] = []
    rounds: dict[str, list[float]] = {"step_ratio": [], "run_ratio": []}
    for number in range(args.runs):
        figures, per_round = one_run(args.jobs, args.rounds, args.mode, args.dir)
        runs.append(figures)
        for kind, values in per_round.items():
            rounds[kind].extend(values)
        print(
            f"run {number + 1}: per step {figures['step']:5.1f} us / raw step "
            f"{figures['raw_step']:5.1f} us = {figures['step_ratio']:4.2f}x   "
            f"0-step job {figures['zero']:6.1f} us / raw fsynced pair "
            f"{figures['raw_pair']:6.1f} us = {figures['run_ratio']:4.2f}x",
            file=sys.stderr,
        )

    def row(label: str, kind: str, unit: str = "us") -> None:
        values = [figures[kind] for figures in runs]
        print(
            f"  {label:<44} min {min(values):8.1f} {unit}   median "
            f"{statistics.median(values):8.1f} {unit}"
        )

    def ratio(label: str, kind: str, target: float | None = None) -> None:
        """A ratio: the median of the per-run ratios and its range; for a target, also
        the median of the per-round ratios and their quartiles, which a burst of outside
        load in one round moves least, and the verdict on that median."""
        values = [figures[kind] for figures in runs]
        text = (
            f"  {label:<44} per run: median {statistics.median(values):5.2f}x "
            f"({min(values):4.2f}x to {max(values):4.2f}x)"
        )
        if target is not None and len(rounds[kind]) >= 4:
            low, median, high = statistics.quantiles(rounds[kind], n=4)
            verdict = "met" if median <= target else "missed"
            text += (
                f"\n  {'':<44} per round: median {median:5.2f}x (quartiles {low:4.2f}x to "
                f"{high:4.2f}x, {len(rounds[kind])} rounds)   target <= {target}: {verdict}"
            )
        print(text)

    what = "app.run" if args.mode == "run" else "enqueue + worker (concurrency 1)"
    print(
        f"\nstepstone {stepstone.__version__}, SQLite {sqlite3.sqlite_version}, "
        f"mode={args.mode} ({what}), {args.runs} runs of {args.rounds} rounds, "
        f"{args.clock} clock" + (f", databases in {args.dir}" if args.dir else "")
    )
    row("per step, from 100-step jobs", "step")
    row("per step, from 3-step jobs (noisier)", "step3")
    row("raw step, from raw 100-checkpoint jobs", "raw_step")
    row("raw checkpoint insert, a plain stream", "raw_checkpoint")
    row("former baseline: raw 3-column insert", "old_raw")
    row("0-step job", "zero")
    row("raw job insert + outcome (2 x FULL)", "raw_pair")
    print(f"  3-step jobs/s (median): {statistics.median(1e6 / f['three'] for f in runs):8.0f}")
    ratio("per step / raw step", "step_ratio", STEP_TARGET)
    ratio("  (per step / raw checkpoint stream)", "stream_ratio")
    ratio("  (per step / former 3-column baseline)", "old_ratio")
    if args.mode == "run":
        ratio("0-step app.run / its two fsynced commits", "run_ratio", RUN_TARGET)
    else:
        # A worker's job also pays its claim and the wait for the outcome's flusher.
        values = [figures["run_ratio"] for figures in runs]
        print(
            f"  {'0-step job / two fsynced commits':<44} median "
            f"{statistics.median(values):5.2f}x  (the target applies to --mode run)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
