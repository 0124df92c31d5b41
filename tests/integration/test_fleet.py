"""Three worker processes (three machines) on one database; one killed, one paused.

The workers are the real CLI (``python -m stepstone worker fleetapp:app``) in processes of
their own. Every step body records its pid, job, step and fencing token in a shared file;
the checkpoints table stores the fencing token of the run that wrote each checkpoint, so
the test knows which body executions lost their job and on which worker they ran.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import dbcheck
import fleetapp
import pytest
from tests.conftest import INTEGRATION, SRC

from stepstone import App
from stepstone._store.base import JobRecord

#: How many jobs of three steps each the fleet runs, by backend (SQLite: a smaller fleet).
JOBS = {"postgres": 1000, "sqlite": 200}
#: How long each step body sleeps, by backend: long enough that work remains after the
#: faults, short enough to keep the test fast.
STEP_SECONDS = {"postgres": 0.005, "sqlite": 0.02}
CONCURRENCY = 4
LEASE = 2.0


class FleetWorker:
    """One ``stepstone worker`` process; its stderr goes to a file."""

    def __init__(self, popen: subprocess.Popen[bytes], stderr_path: Path) -> None:
        self.popen = popen
        self.stderr_path = stderr_path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def signal(self, sig: int) -> None:
        self.popen.send_signal(sig)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


@pytest.fixture
def spawn_fleet_worker(
    db_url: str, tmp_path: Path
) -> Iterator[Callable[[Path, float], FleetWorker]]:
    """Start ``stepstone worker fleetapp:app`` processes on this test's database; any still
    alive at teardown is resumed and killed."""
    started: list[FleetWorker] = []

    def spawn(body_log: Path, step_seconds: float) -> FleetWorker:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(SRC), str(INTEGRATION), *filter(None, [env.get("PYTHONPATH")])]
        )
        env.update(
            STEPSTONE_DATABASE_URL=db_url,
            STEPSTONE_TEST_LEASE=str(LEASE),
            STEPSTONE_TEST_BODY_LOG=str(body_log),
            STEPSTONE_TEST_STEP_SECONDS=str(step_seconds),
        )
        command = [sys.executable, "-m", "stepstone", "worker", "fleetapp:app"]
        stderr_path = tmp_path / f"fleet-{len(started)}.stderr"
        with stderr_path.open("wb") as stderr:
            popen = subprocess.Popen(
                [*command, "--concurrency", str(CONCURRENCY)],
                env=env,
                cwd=tmp_path,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        started.append(FleetWorker(popen, stderr_path))
        return started[-1]

    yield spawn
    for worker in started:
        if worker.popen.poll() is None:
            try:
                worker.popen.send_signal(signal.SIGCONT)
                worker.popen.kill()
            except ProcessLookupError:
                pass
            worker.popen.wait(10)


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Poll until predicate() is true, failing the test after timeout seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def all_jobs(app: App, count: int) -> list[JobRecord]:
    """Every job of the test (read through the store, so it works on both backends)."""
    return app.store.job_list(limit=count + 10)


def owned_by(app: App, count: int, pid: int) -> dict[str, int]:
    """The running jobs whose lease a worker process holds (its owner names its pid), with
    the fencing token of its claim."""
    return {
        job.id: job.fence
        for job in all_jobs(app, count)
        if job.state == "running" and job.lease_owner and job.lease_owner.split(":")[1] == str(pid)
    }


def wait_stopped(pid: int) -> None:
    """Wait until every thread of a process that was sent SIGSTOP has stopped (Linux)."""
    deadline = time.monotonic() + 10
    while True:
        states = []
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError):  # a thread that just ended
                states.append((task / "stat").read_text().rsplit(")", 1)[1].split()[0])
        if all(state in ("T", "t") for state in states):
            return
        assert time.monotonic() < deadline, f"process {pid} did not stop: {states}"
        time.sleep(0.001)


def stop(worker: FleetWorker, db_url: str) -> None:
    """SIGSTOP a worker. On SQLite, at a moment it holds no write lock (a stopped writer
    would stop the whole fleet); PostgreSQL has no database-wide lock."""
    if not db_url.startswith("sqlite"):
        worker.signal(signal.SIGSTOP)
        wait_stopped(worker.pid)
        return
    path = db_url.removeprefix("sqlite:///")
    for _ in range(500):
        worker.signal(signal.SIGSTOP)
        wait_stopped(worker.pid)
        conn = sqlite3.connect(path, timeout=0)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
            return
        except sqlite3.OperationalError:
            worker.signal(signal.SIGCONT)
            time.sleep(0.002)
        finally:
            conn.close()
    raise AssertionError("the worker never let go of the database")


def lease_lost_warnings(worker: FleetWorker) -> list[str]:
    """The WARNING lines of a worker's log that say a lease was lost."""
    return [
        line
        for line in worker.stderr().splitlines()
        if "WARNING" in line and "lease lost" in line.lower()
    ]


def test_fleet_survives_a_killed_and_a_paused_worker(
    db_url: str, tmp_path: Path, spawn_fleet_worker: Callable[[Path, float], FleetWorker]
) -> None:
    """Three workers share one database; one is SIGKILLed midway, another SIGSTOPped past
    its lease then resumed: every job succeeds with one checkpoint per step, no step of a
    finished job runs again, the only step bodies that ran in vain were in flight on the
    killed or paused worker (at most its concurrency each), and the resumed worker logs
    ``lease lost`` for the jobs it lost."""
    backend = "sqlite" if db_url.startswith("sqlite") else "postgres"
    count = JOBS[backend]
    log = tmp_path / "bodies.log"
    app = fleetapp.build_app(db_url, lease=LEASE)
    for n in range(count):
        app.enqueue(fleetapp.JOB, n)
    killed, paused, healthy = (spawn_fleet_worker(log, STEP_SECONDS[backend]) for _ in range(3))

    def succeeded() -> int:
        return sum(job.state == "succeeded" for job in all_jobs(app, count))

    # A tenth of the way in, while both hold leases, kill one worker and pause another
    # until the healthy one has taken over the jobs they held; then resume it.
    wait_for(
        lambda: (
            succeeded() >= count // 10
            and owned_by(app, count, killed.pid)
            and owned_by(app, count, paused.pid)
        ),
        timeout=60,
        what="a tenth of the jobs to succeed",
    )
    stop(paused, db_url)
    try:
        killed.signal(signal.SIGKILL)
        assert killed.popen.wait(10) == -signal.SIGKILL
        held = owned_by(app, count, paused.pid)
        wait_for(
            lambda: not owned_by(app, count, killed.pid),
            timeout=10 * LEASE,
            what="the jobs of the killed worker to be taken over",
        )
        # A job whose row the paused worker had locked in a write (PostgreSQL) stays its
        # own until the server ends that session: wait a little, not for that.
        deadline = time.monotonic() + LEASE
        while held.keys() & owned_by(app, count, paused.pid).keys():
            if time.monotonic() > deadline:
                break
            time.sleep(0.02)
    finally:
        paused.signal(signal.SIGCONT)

    wait_for(lambda: succeeded() == count, timeout=60, what="every job to succeed")
    records = {job.id: job for job in all_jobs(app, count)}

    # The resumed worker says it lost every job another worker claimed since it stopped.
    lost = {job_id for job_id, fence in held.items() if records[job_id].fence > fence}
    assert lost, "the paused worker lost no lease: it was not paused long enough"
    wait_for(
        lambda: all(any(job_id in line for line in lease_lost_warnings(paused)) for job_id in lost),
        timeout=15,
        what="the resumed worker to log `lease lost` for every job it lost",
    )
    for worker in (paused, healthy):
        worker.signal(signal.SIGTERM)
    for worker in (paused, healthy):
        assert worker.popen.wait(20) == 0, worker.stderr()
    history = dbcheck.checkpoints(db_url)
    runs = fleetapp.read_body_log(log)
    kept = {(job_id, c.name.split("#")[0], c.fence) for job_id, cs in history.items() for c in cs}
    in_vain = [run for run in runs if (run.job_id, run.step, run.fence) not in kept]
    # ... and every job whose step bodies it ran in vain, naming both fencing tokens.
    warnings = lease_lost_warnings(paused)
    for job_id in {run.job_id for run in in_vain if run.pid == paused.pid}:
        assert any(job_id in line for line in warnings), job_id
    for line in warnings:
        assert len(re.findall(r"token \d+", line)) >= 2, line

    # Every job succeeded, with exactly one checkpoint per step.
    assert Counter(job.state for job in records.values()) == {"succeeded": count}
    results = {json.loads(job.result or "null") for job in records.values()}
    assert results <= {killed.pid, paused.pid, healthy.pid}
    expected = [f"{step}#0" for step in fleetapp.STEPS]
    assert {
        job_id: names
        for job_id in records
        if (names := [c.name for c in history.get(job_id, [])]) != expected
    } == {}

    # Each checkpoint was written by one body execution of its run; no body started after
    # its job had finished.
    writers = Counter((run.job_id, run.step, run.fence) for run in runs)
    assert {unit: n for unit, n in writers.items() if unit in kept and n != 1} == {}
    assert kept <= set(writers), "a checkpoint whose body never ran"
    late = [run for run in runs if run.started > (records[run.job_id].finished_at or 0.0)]
    assert late == [], "step bodies started after their job had finished"

    # The only bodies that ran in vain were in flight on the killed or the paused worker.
    assert [run for run in in_vain if run.pid not in (killed.pid, paused.pid)] == []
    for pid in (killed.pid, paused.pid):
        assert len([run for run in in_vain if run.pid == pid]) <= CONCURRENCY, in_vain
