"""Flow control with real worker processes SIGKILLed: a job timeout, a cancellation, a
child job, a cron schedule and a debounced job each survive the death of a worker."""

from __future__ import annotations

import signal
import time
from collections import Counter
from pathlib import Path

import flowcrashapp
import pytest
from waiting import wait_for

from stepstone import JobFailed


def runs(log: Path) -> Counter[tuple[str, str]]:
    if not log.exists():
        return Counter()
    return Counter(tuple(line.split()[:2]) for line in log.read_text().splitlines())


def kill(worker) -> None:
    worker.signal(signal.SIGKILL)
    assert worker.wait() == -signal.SIGKILL


def test_a_job_timeout_counts_across_a_killed_worker(
    db_url: str, tmp_path: Path, spawn_worker
) -> None:
    """A job with timeout=2 s whose worker is SIGKILLed mid-step is not given a fresh two
    seconds by the worker that resumes it: past its deadline it fails with JobTimeout."""
    log = tmp_path / "timed.log"
    Path(f"{log}.block-two").touch()
    app = flowcrashapp.build_app(db_url, lease=0.5)
    handle = app.enqueue("flowcrash.timed", str(log))
    worker = spawn_worker(module="flowcrashapp", lease=0.5)
    wait_for(Path(f"{log}.blocked-two").exists, what="step two to block")
    kill(worker)
    started = handle.record().started_at
    assert started is not None
    time.sleep(max(0.0, started + 2.1 - time.time()))
    app.run_worker(until_idle=True)
    assert handle.state == "failed"
    with pytest.raises(JobFailed, match="JobTimeout"):
        handle.result(timeout=1)
    assert runs(log) == {("one", "subprocess"): 1, ("two", "subprocess"): 1}


def test_a_job_cancelled_after_its_worker_was_killed_never_runs_again(
    db_url: str, tmp_path: Path, spawn_worker
) -> None:
    """SIGKILL a worker mid-job, cancel the job: no worker resumes it, and its step never
    runs again."""
    log = tmp_path / "plain.log"
    Path(f"{log}.block-two").touch()
    app = flowcrashapp.build_app(db_url, lease=0.5)
    handle = app.enqueue("flowcrash.plain", str(log))
    worker = spawn_worker(module="flowcrashapp", lease=0.5)
    wait_for(Path(f"{log}.blocked-two").exists, what="step two to block")
    kill(worker)
    assert app.cancel(handle.id)
    time.sleep(0.6)  # past the dead worker's lease: a rescue would requeue it now
    app.run_worker(until_idle=True)
    assert handle.state == "cancelled"
    assert runs(log) == {("one", "subprocess"): 1, ("two", "subprocess"): 1}


def test_a_parent_gets_the_result_of_a_child_whose_worker_was_killed(
    db_url: str, tmp_path: Path, spawn_worker
) -> None:
    """The parent parks waiting for its child; the child's worker is SIGKILLed mid-step;
    the child is rescued and finishes elsewhere, which wakes the parent; the parent's own
    step ran once and it enqueued one child."""
    log = tmp_path / "family.log"
    Path(f"{log}.block-kid").touch()
    app = flowcrashapp.build_app(db_url, lease=0.5)
    parent = app.enqueue("flowcrash.parent", str(log))
    worker = spawn_worker(module="flowcrashapp", lease=0.5, concurrency=2)
    wait_for(Path(f"{log}.blocked-kid").exists, what="the child to block")
    wait_for(lambda: parent.state == "waiting", what="the parent to park")
    kill(worker)
    app.run_worker(until_idle=True)
    assert parent.result(timeout=5) == "parent got kid by test"
    assert runs(log) == {
        ("parent", "subprocess"): 1,
        ("kid", "subprocess"): 1,
        ("kid", "test"): 1,
    }
    kids = [job for job in app.store.job_list(limit=10) if job.name == "flowcrash.kid"]
    assert len(kids) == 1


def test_a_cron_schedule_survives_a_killed_worker(
    db_url: str, tmp_path: Path, spawn_worker
) -> None:
    """A worker that scheduled the next tick is SIGKILLed; the next worker keeps the same
    schedule: one schedule row, one queued job for the tick."""
    env = {"FLOWCRASH_CRON": "1"}
    app = flowcrashapp.build_app(db_url)
    worker = spawn_worker(module="flowcrashapp", env_extra=env)
    wait_for(lambda: app.store.schedule_list() != [], what="the schedule")
    kill(worker)
    [(name, tick)] = app.store.schedule_list()
    again = spawn_worker(module="flowcrashapp", env_extra=env)
    # Started (its signal handlers installed) before it is looked at and sent SIGTERM: a
    # process still importing under load would die of the SIGTERM.
    wait_for(lambda: " started: " in again.stderr(), what="the second worker to start")
    time.sleep(0.5)
    assert app.store.schedule_list() == [(name, tick)]
    ticks = [job for job in app.store.job_list(limit=10) if job.name == "flowcrash.tick"]
    assert [job.state for job in ticks] == ["queued"]
    assert ticks[0].run_at == tick
    again.signal(signal.SIGTERM)
    assert again.wait() == 0, again.stderr()


def test_a_debounced_job_killed_mid_run_resumes_and_a_new_burst_makes_a_new_job(
    db_url: str, tmp_path: Path, spawn_worker
) -> None:
    """A debounced job that started is no longer replaced: after its worker is SIGKILLed
    it resumes with its own arguments, and an enqueue meanwhile makes a second job."""
    log = tmp_path / "reindex.log"
    Path(f"{log}.block-reindex-1").touch()
    app = flowcrashapp.build_app(db_url, lease=0.5)
    first = app.enqueue("flowcrash.reindex", str(log), 1, key="channel-7", debounce=0.05)
    worker = spawn_worker(module="flowcrashapp", lease=0.5)
    wait_for(Path(f"{log}.blocked-reindex-1").exists, what="the first run to block")
    kill(worker)
    second = app.enqueue("flowcrash.reindex", str(log), 2, key="channel-7", debounce=0.05)
    assert second.id != first.id
    time.sleep(0.6)
    app.run_worker(until_idle=True)
    assert (first.result(timeout=5), second.result(timeout=5)) == (1, 2)
    assert runs(log) == {
        ("reindex-1", "subprocess"): 1,
        ("reindex-1", "test"): 1,
        ("reindex-2", "test"): 1,
    }
