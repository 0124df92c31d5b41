"""Real worker processes killed, stopped and resumed: at-least-once, poison jobs, fencing."""

from __future__ import annotations

import re
import signal
import sqlite3
import time
from pathlib import Path

import pytest
import workerapp
from waiting import body_runs, wait_for

from stepstone import JobFailed


def idempotency_keys(log: Path) -> dict[str, set[str]]:
    """The idempotency keys each step's bodies saw, by step."""
    keys: dict[str, set[str]] = {}
    for line in log.read_text().splitlines():
        what, _role, _pid, key = line.split()
        keys.setdefault(what, set()).add(key)
    return keys


def stop_outside_a_write(worker, db_url: str, db_path: Path) -> None:
    """SIGSTOP the worker at a moment it holds no SQLite write lock (so we can write).

    PostgreSQL has no database-wide write lock: the worker is blocked in a step, which
    holds no transaction, so stopping it anywhere is fine."""
    if not db_url.startswith("sqlite"):
        worker.signal(signal.SIGSTOP)
        return
    for _ in range(200):
        worker.signal(signal.SIGSTOP)
        conn = sqlite3.connect(db_path, timeout=0)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
            return
        except sqlite3.OperationalError:
            worker.signal(signal.SIGCONT)
            time.sleep(0.005)
        finally:
            conn.close()
    raise AssertionError("the worker never let go of the database")


def test_killed_worker_job_resumes_from_its_last_checkpoint(
    db_url: str, tmp_path: Path, spawn_worker
) -> None:
    """SIGKILL a worker in the middle of a job's second step: another worker resumes the
    job; the first step's body ran once, the second's twice with the same idempotency
    key, and it is the same attempt."""
    log = tmp_path / "progress.log"
    app = workerapp.build_app(db_url, lease=1.0)
    try:
        handle = app.enqueue("workerapp.two_steps", str(log))
        worker = spawn_worker()
        wait_for(Path(f"{log}.blocked").exists, what="the subprocess to block in step two")
        worker.signal(signal.SIGKILL)
        assert worker.wait() == -signal.SIGKILL
        assert handle.state == "running"

        app.run_worker(until_idle=True)

        assert handle.result(timeout=5) == "first then second by test"
        runs = body_runs(log)
        assert runs == {
            ("first", "subprocess"): 1,
            ("second", "subprocess"): 1,
            ("second", "test"): 1,
        }
        assert handle.attempts == 1
        assert [(s.name, s.value) for s in handle.steps()] == [
            ("first_step#0", "first"),
            ("second_step#0", "second by test"),
        ]
        keys = idempotency_keys(log)
        assert len(keys["second"]) == 1  # the same key in the killed process and here
        assert keys["first"].isdisjoint(keys["second"])
    finally:
        app.close()


def test_job_killing_its_worker_five_times_fails_as_poison(
    db_url: str, tmp_path: Path, spawn_worker
) -> None:
    """A job whose worker dies 5 times in a row without a new checkpoint fails as a poison
    job, with an error saying so, and is not run again."""
    log = tmp_path / "progress.log"
    app = workerapp.build_app(db_url, lease=0.5)
    try:
        handle = app.enqueue("workerapp.poison", str(log))
        exits = []
        for _ in range(8):
            worker = spawn_worker(lease=0.5, until_idle=True)
            exits.append(worker.wait(timeout=30))
            if handle.state != "running" and handle.state != "queued":
                break
        assert exits == [-signal.SIGKILL] * 5 + [0]
        assert body_runs(log) == {("kill", "subprocess"): 5}
        assert handle.state == "failed"
        with pytest.raises(JobFailed, match="poison"):
            handle.result(timeout=5)
        assert any("poison" in error.message for error in handle.errors())
    finally:
        app.close()


def test_worker_that_lost_its_lease_cannot_overwrite_the_new_owner(
    db_url: str, db_path: Path, tmp_path: Path, spawn_worker
) -> None:
    """A worker stopped past its lease is replaced; when it resumes its step's checkpoint
    is refused, the stored outcome stays the new owner's, and it logs a WARNING saying
    "lease lost" with both fencing tokens."""
    log = tmp_path / "progress.log"
    app = workerapp.build_app(db_url, lease=1.0)
    try:
        handle = app.enqueue("workerapp.two_steps", str(log))
        worker = spawn_worker(concurrency=1, until_idle=True)
        wait_for(Path(f"{log}.blocked").exists, what="the subprocess to block in step two")
        stop_outside_a_write(worker, db_url, db_path)
        try:
            app.run_worker(until_idle=True)  # waits for the lease to expire, then resumes
            assert handle.result(timeout=5) == "first then second by test"
        finally:
            Path(f"{log}.release").touch()
            worker.signal(signal.SIGCONT)
        assert worker.wait(timeout=20) == 0

        assert handle.state == "succeeded"
        assert handle.result(timeout=5) == "first then second by test"
        assert [(s.name, s.value) for s in handle.steps()] == [
            ("first_step#0", "first"),
            ("second_step#0", "second by test"),
        ]
        assert body_runs(log) == {
            ("first", "subprocess"): 1,
            ("second", "subprocess"): 1,
            ("second", "test"): 1,
        }
        new_token = handle.record().fence
        stderr = worker.stderr()
        warnings = [
            line
            for line in stderr.splitlines()
            if line.startswith("WARNING") and "lease lost" in line.lower()
        ]
        assert warnings, stderr
        for line in warnings:
            assert handle.id in line
            tokens = {int(n) for n in re.findall(r"token (\d+)", line)}
            assert {new_token - 1, new_token} <= tokens, line
    finally:
        app.close()


def test_sigterm_lets_the_running_step_finish_then_releases_the_job(
    db_url: str, tmp_path: Path, spawn_worker
) -> None:
    """SIGTERM: the worker stops claiming, the running step finishes and is checkpointed,
    the job is released at the next step boundary (queued, same attempt), and another
    worker finishes it."""
    log = tmp_path / "progress.log"
    app = workerapp.build_app(db_url, lease=1.0)
    try:
        handle = app.enqueue("workerapp.three_steps", str(log))
        worker = spawn_worker()
        wait_for(Path(f"{log}.blocked").exists, what="the subprocess to block in step two")
        worker.signal(signal.SIGTERM)
        wait_for(lambda: "SIGTERM" in worker.stderr(), what="the worker to log the SIGTERM")
        later = app.enqueue("workerapp.two_steps", str(tmp_path / "later.log"))
        time.sleep(0.2)  # a worker still claiming would take the new job now
        Path(f"{log}.release").touch()
        assert worker.wait(timeout=20) == 0
        assert handle.state == "queued"
        assert (later.state, later.attempts) == ("queued", 0)  # it stopped claiming
        assert [s.name for s in handle.steps()] == ["first_step#0", "second_step#0"]

        app.run_worker(until_idle=True)
        assert handle.result(timeout=5) == ("first then second by subprocess then third by test")
        assert body_runs(log) == {
            ("first", "subprocess"): 1,
            ("second", "subprocess"): 1,
            ("third", "test"): 1,
        }
        assert handle.attempts == 1
    finally:
        app.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_signal_releases_a_job_whose_step_outlasts_the_grace_period(
    db_url: str, tmp_path: Path, spawn_worker, sig: signal.Signals
) -> None:
    """SIGTERM or SIGINT: when the running step outlasts the grace period the stopping
    worker releases the job: it is queued when the process exits, not left to its lease."""
    log = tmp_path / "progress.log"
    app = workerapp.build_app(db_url, lease=30.0)
    try:
        handle = app.enqueue("workerapp.two_steps", str(log))
        worker = spawn_worker(lease=30.0, grace=0.3)
        wait_for(Path(f"{log}.blocked").exists, what="the subprocess to block in step two")
        worker.signal(sig)
        assert worker.wait(timeout=20) == 0
        assert handle.state == "queued"

        started = time.monotonic()
        app.run_worker(until_idle=True)
        assert time.monotonic() - started < 10.0  # no 30 s lease to wait out
        assert handle.result(timeout=5) == "first then second by test"
        assert body_runs(log) == {
            ("first", "subprocess"): 1,
            ("second", "subprocess"): 1,
            ("second", "test"): 1,
        }
        assert handle.attempts == 1
    finally:
        app.close()


def test_job_that_checkpoints_between_crashes_is_not_poison(
    db_url: str, tmp_path: Path, spawn_worker
) -> None:
    """A job whose worker dies six times, each time after a new checkpoint, is resumed
    every time and succeeds: only reclaims without progress count toward poison."""
    log = tmp_path / "progress.log"
    app = workerapp.build_app(db_url, lease=0.5)
    try:
        handle = app.enqueue("workerapp.progress_then_die", str(log), 6)
        exits = []
        for _ in range(9):
            worker = spawn_worker(lease=0.5, until_idle=True)
            exits.append(worker.wait(timeout=30))
            if handle.state in ("succeeded", "failed", "cancelled"):
                break
        assert exits == [-signal.SIGKILL] * 6 + [0]
        assert handle.result(timeout=5) == sum(range(6))
        assert body_runs(log) == {(f"advance-{n}", "subprocess"): 1 for n in range(6)}
        assert handle.attempts == 1
    finally:
        app.close()
