"""Enqueueing (keys, delays, errors), ``app.run``, handles, cancel and retry."""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

import stepstone
from stepstone import (
    App,
    JobCancelled,
    JobFailed,
    JobHandle,
    JobNotFound,
    KeyConflict,
    Retry,
    SerializationError,
    StepstoneError,
    UnknownJob,
)

NO_RETRY = Retry(max_attempts=1)


class Opaque:
    """A value stepstone cannot store."""


class ServiceDown(Exception):
    """A transient error."""


# handles and lookups -----------------------------------------------------------------------


def test_handle_id_and_state_are_strings(app: App) -> None:
    """JobHandle.id is a str and .state a str that compares equal to the state's name."""

    @app.job
    def job() -> None:
        pass

    handle = app.enqueue(job)
    assert isinstance(handle.id, str)
    assert isinstance(handle.state, str)
    assert handle.state == "queued"
    app.run_worker(until_idle=True)
    assert handle.state == "succeeded"


def test_get_job_and_get_job_by_key_return_handles(app: App) -> None:
    """get_job takes the str id and get_job_by_key the key; both give a handle to the job."""

    @app.job
    def job(x: int) -> int:
        return x + 1

    handle = app.enqueue(job, 1, key="plus-one")
    by_id = app.get_job(handle.id)
    by_key = app.get_job_by_key("plus-one")
    assert isinstance(by_id, JobHandle)
    assert isinstance(by_key, JobHandle)
    assert by_id.id == by_key.id == handle.id
    assert by_key.key == "plus-one"
    app.run_worker(until_idle=True)
    assert by_key.result(timeout=5) == 2


def test_get_job_and_get_job_by_key_raise_jobnotfound(app: App) -> None:
    """Looking up nothing raises JobNotFound, a LookupError and a StepstoneError."""
    with pytest.raises(JobNotFound) as by_id:
        app.get_job("no-such-id")
    with pytest.raises(LookupError):
        app.get_job_by_key("no-such-key")
    assert isinstance(by_id.value, StepstoneError)


def test_result_times_out_with_timeouterror(app: App) -> None:
    """result(timeout=) raises TimeoutError when the job has not finished in time."""

    @app.job
    def job() -> None:
        pass

    handle = app.enqueue(job)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        handle.result(timeout=0.1)
    assert time.monotonic() - started < 2.0


# keys --------------------------------------------------------------------------------------


def test_same_key_and_same_arguments_return_the_first_job(app: App) -> None:
    """Positional, keyword and default-filled calls with one key are one job."""
    runs: list[tuple[str, int]] = []

    @app.job
    def index(attachment: str, pages: int = 1) -> None:
        runs.append((attachment, pages))

    first = app.enqueue(index, "a1", key="index:a1")
    again = [
        app.enqueue(index, "a1", key="index:a1"),
        app.enqueue(index, attachment="a1", key="index:a1"),
        app.enqueue(index, "a1", 1, key="index:a1"),
        app.enqueue(index, attachment="a1", pages=1, key="index:a1"),
    ]
    assert [handle.id for handle in again] == [first.id] * 4
    app.run_worker(until_idle=True)
    assert runs == [("a1", 1)]


def test_same_key_with_other_arguments_is_a_keyconflict_naming_both(app: App) -> None:
    """Same key and different arguments raises KeyConflict naming both argument sets."""

    @app.job
    def index(attachment: str, pages: int = 1) -> None:
        pass

    first = app.enqueue(index, "first-attachment", key="index")
    with pytest.raises(KeyConflict) as conflict:
        app.enqueue(index, "second-attachment", key="index")
    message = str(conflict.value)
    assert "first-attachment" in message
    assert "second-attachment" in message
    with pytest.raises(KeyConflict):
        app.enqueue(index, "first-attachment", pages=2, key="index")
    assert app.get_job_by_key("index").id == first.id


def test_same_key_under_another_job_is_a_keyconflict(app: App) -> None:
    """A key names one job: the same key with another job's name is a KeyConflict."""

    @app.job
    def index(x: int) -> None:
        pass

    @app.job
    def reindex(x: int) -> None:
        pass

    app.enqueue(index, 1, key="shared")
    with pytest.raises(KeyConflict):
        app.enqueue(reindex, 1, key="shared")


def test_finished_job_key_stays_taken(app: App) -> None:
    """After a job finished, its key still returns that job and does not run it again."""
    runs: list[int] = []

    @app.job
    def job(x: int) -> int:
        runs.append(x)
        return x

    first = app.enqueue(job, 7, key="seven")
    app.run_worker(until_idle=True)
    assert first.state == "succeeded"
    again = app.enqueue(job, 7, key="seven")
    assert again.id == first.id
    app.run_worker(until_idle=True)
    assert runs == [7]
    with pytest.raises(KeyConflict):
        app.enqueue(job, 8, key="seven")


def test_unserialisable_argument_raises_and_writes_nothing(app: App) -> None:
    """An argument stepstone cannot store fails enqueue with SerializationError naming its
    type, and no job is written."""

    @app.job
    def job(payload: object) -> None:
        pass

    with pytest.raises(SerializationError, match="Opaque"):
        app.enqueue(job, Opaque(), key="opaque")
    with pytest.raises(JobNotFound):
        app.get_job_by_key("opaque")
    with pytest.raises(SerializationError, match="Opaque"):
        app.run(job, Opaque(), key="opaque-run")
    with pytest.raises(JobNotFound):
        app.get_job_by_key("opaque-run")


def test_enqueue_of_an_undeclared_function_raises_unknownjob(app: App) -> None:
    """Enqueueing a function that is not a job raises UnknownJob that says what to do."""

    def plain_function() -> None:
        pass

    with pytest.raises(UnknownJob) as unknown:
        app.enqueue(plain_function)
    assert "plain_function" in str(unknown.value)
    assert "@app.job" in str(unknown.value)
    with pytest.raises(UnknownJob, match=r"no\.such\.job"):
        app.enqueue("no.such.job")


def test_enqueue_of_a_job_of_another_app_raises_unknownjob(app: App, make_app) -> None:
    """A job declared on another App is not a job of this one."""
    other = make_app()

    @other.job
    def elsewhere() -> None:
        pass

    with pytest.raises(UnknownJob):
        app.enqueue(elsewhere)


# delays ------------------------------------------------------------------------------------


def test_delay_keeps_the_job_queued_until_due(app: App, clock) -> None:
    """enqueue(delay=) keeps the job queued; until_idle does not wait for it."""
    runs: list[int] = []

    @app.job
    def job() -> None:
        runs.append(1)

    handle = app.enqueue(job, delay=60)
    started = time.monotonic()
    app.run_worker(until_idle=True)
    assert time.monotonic() - started < 5.0
    assert (handle.state, runs) == ("queued", [])
    clock.advance(59.5)
    app.run_worker(until_idle=True)
    assert (handle.state, runs) == ("queued", [])
    clock.advance(0.5)
    app.run_worker(until_idle=True)
    assert (handle.state, runs) == ("succeeded", [1])


def test_delay_accepts_a_timedelta(app: App, clock) -> None:
    """delay= may be a timedelta."""

    @app.job
    def job() -> None:
        pass

    handle = app.enqueue(job, delay=timedelta(minutes=2))
    app.run_worker(until_idle=True)
    assert handle.state == "queued"
    clock.advance(120)
    app.run_worker(until_idle=True)
    assert handle.state == "succeeded"


def test_run_at_keeps_the_job_queued_until_due(app: App, clock) -> None:
    """enqueue(run_at=datetime) runs the job at that time, not before."""

    @app.job
    def job() -> str:
        return "ran"

    due = datetime.fromtimestamp(clock.now() + 3600, UTC)
    handle = app.enqueue(job, run_at=due)
    app.run_worker(until_idle=True)
    assert handle.state == "queued"
    clock.advance(3599.5)
    app.run_worker(until_idle=True)
    assert handle.state == "queued"
    clock.advance(0.5)
    app.run_worker(until_idle=True)
    assert handle.result(timeout=5) == "ran"


# app.run -----------------------------------------------------------------------------------


def test_run_returns_the_result(app: App) -> None:
    """app.run runs the job in this process and returns its result."""

    @app.step
    def double(x: int) -> int:
        return x * 2

    @app.job
    def job(x: int) -> int:
        return double(x) + 1

    assert app.run(job, 20) == 41


def test_run_of_an_async_job_returns_the_result(app: App) -> None:
    """app.run runs an async def job too."""

    @app.step
    async def double(x: int) -> int:
        return x * 2

    @app.job
    async def job(x: int) -> int:
        return await double(x) + 1

    assert app.run(job, 20) == 41


def test_run_with_a_finished_key_returns_the_stored_result(app: App) -> None:
    """app.run with the key of a succeeded job returns its result without running."""
    runs: Counter[str] = Counter()

    @app.step
    def fetch(x: int) -> int:
        runs["step"] += 1
        return x * 3

    @app.job
    def job(x: int) -> int:
        runs["job"] += 1
        return fetch(x)

    assert app.run(job, 5, key="triple:5") == 15
    assert app.run(job, 5, key="triple:5") == 15
    assert runs == {"job": 1, "step": 1}


def test_run_with_a_failed_key_raises_the_stored_failure(app: App) -> None:
    """app.run with the key of a failed job raises JobFailed again without running."""
    runs: list[int] = []

    @app.job(retry=NO_RETRY)
    def job() -> None:
        runs.append(1)
        raise ServiceDown("gone")

    with pytest.raises(JobFailed, match="gone"):
        app.run(job, key="fails")
    with pytest.raises(JobFailed, match="gone"):
        app.run(job, key="fails")
    assert runs == [1]


def test_run_with_a_cancelled_key_raises_jobcancelled(app: App) -> None:
    """app.run with the key of a cancelled job raises JobCancelled without running it."""
    runs: list[int] = []

    @app.job
    def job() -> None:
        runs.append(1)

    handle = app.enqueue(job, key="cancelled")
    app.cancel(handle.id)
    with pytest.raises(JobCancelled):
        app.run(job, key="cancelled")
    assert runs == []


def test_run_with_a_queued_key_runs_that_job_here(app: App) -> None:
    """app.run with the key of a queued job runs that job and returns its result."""
    runs: list[int] = []

    @app.job
    def job(x: int) -> int:
        runs.append(x)
        return x

    handle = app.enqueue(job, 3, key="queued")
    assert app.run(job, 3, key="queued") == 3
    assert handle.state == "succeeded"
    assert runs == [3]


def test_run_raises_jobfailed_after_its_retries(app: App, clock) -> None:
    """app.run retries per the job's Retry, with its backoff, then raises JobFailed."""
    runs: list[int] = []

    @app.job(retry=Retry(max_attempts=3, jitter=False))
    def job() -> None:
        runs.append(1)
        raise ServiceDown(f"attempt {len(runs)}")

    with pytest.raises(JobFailed, match="attempt 3") as failed:
        app.run(job)
    assert isinstance(failed.value.__cause__, ServiceDown)
    assert len(runs) == 3
    assert sum(clock.sleeps) == pytest.approx(1.0 + 2.0)


def test_step_returning_an_unserialisable_value_fails_with_serializationerror(app: App) -> None:
    """A step whose return value cannot be stored fails with SerializationError naming the
    type; it is not retried in place."""
    runs: list[int] = []

    @app.step(retry=Retry(max_attempts=5))
    def make() -> Opaque:
        runs.append(1)
        return Opaque()

    @app.job
    def job() -> None:
        make()

    with pytest.raises(JobFailed) as failed:
        app.run(job, key="opaque-step")
    assert "SerializationError" in str(failed.value)
    assert "Opaque" in str(failed.value)
    assert isinstance(failed.value.__cause__, SerializationError)
    handle = app.get_job_by_key("opaque-step")
    assert len(runs) == handle.attempts
    [step] = handle.steps()
    assert (step.name, step.status, step.attempts) == ("make#0", "error", 1)


def test_job_returning_an_unserialisable_value_fails(app: App) -> None:
    """A job whose result cannot be stored fails with SerializationError naming the type."""

    @app.job
    def job() -> Opaque:
        return Opaque()

    with pytest.raises(JobFailed, match="Opaque") as failed:
        app.run(job)
    assert isinstance(failed.value.__cause__, SerializationError)


# cancel and retry --------------------------------------------------------------------------


def test_cancel_a_queued_job(app: App) -> None:
    """Cancelling a queued job returns True; it is cancelled and never runs."""
    runs: list[int] = []

    @app.job
    def job() -> None:
        runs.append(1)

    handle = app.enqueue(job)
    assert app.cancel(handle.id) is True
    assert handle.state == "cancelled"
    app.run_worker(until_idle=True)
    assert runs == []
    with pytest.raises(JobCancelled):
        handle.result(timeout=5)


def test_cancel_a_finished_job_returns_false(app: App) -> None:
    """Cancelling a finished job does nothing and returns False."""

    @app.job
    def job() -> int:
        return 1

    handle = app.enqueue(job)
    app.run_worker(until_idle=True)
    assert app.cancel(handle.id) is False
    assert handle.state == "succeeded"
    assert handle.result(timeout=5) == 1


def test_cancel_an_unknown_job_raises_jobnotfound(app: App) -> None:
    """Cancelling an id no job has raises JobNotFound."""
    with pytest.raises(JobNotFound):
        app.cancel("no-such-job")


def test_cancelled_job_key_stays_taken(app: App) -> None:
    """A cancelled job's key still names it: enqueue returns it, other arguments conflict."""
    runs: list[int] = []

    @app.job
    def job(x: int) -> None:
        runs.append(x)

    handle = app.enqueue(job, 1, key="cancel-me")
    app.cancel(handle.id)
    again = app.enqueue(job, 1, key="cancel-me")
    assert again.id == handle.id
    assert again.state == "cancelled"
    with pytest.raises(KeyConflict):
        app.enqueue(job, 2, key="cancel-me")
    app.run_worker(until_idle=True)
    assert runs == []


def test_cancel_a_running_job_refuses_its_running_step_checkpoint(app: App) -> None:
    """Cancelling a running job makes it cancelled at once; its running step's checkpoint
    is refused and no later step runs."""
    entered, gate = threading.Event(), threading.Event()
    runs: Counter[str] = Counter()

    @app.step
    def slow() -> str:
        runs["slow"] += 1
        entered.set()
        assert gate.wait(10)
        return "slow"

    @app.step
    def after() -> str:
        runs["after"] += 1
        return "after"

    @app.job
    def job() -> str:
        return slow() + after()

    handle = app.enqueue(job)
    thread = threading.Thread(target=app.run_worker, kwargs={"until_idle": True})
    thread.start()
    assert entered.wait(10)
    assert app.cancel(handle.id) is True
    assert handle.state == "cancelled"
    gate.set()
    thread.join(10)
    assert not thread.is_alive()
    assert handle.state == "cancelled"
    assert handle.steps() == []
    assert runs == {"slow": 1}
    with pytest.raises(JobCancelled):
        handle.result(timeout=5)


def test_retry_requeues_a_failed_job(app: App) -> None:
    """app.retry queues a failed job again; it runs and keeps the steps that had succeeded."""
    runs: Counter[str] = Counter()
    broken = {"yes": True}

    @app.step
    def prepare() -> str:
        runs["prepare"] += 1
        return "prepared"

    @app.job(retry=NO_RETRY)
    def job() -> str:
        runs["job"] += 1
        value = prepare()
        if broken["yes"]:
            raise ServiceDown("broken")
        return value

    handle = app.enqueue(job)
    app.run_worker(until_idle=True)
    assert handle.state == "failed"
    broken["yes"] = False
    assert app.retry(handle.id) is True
    assert handle.state == "queued"
    app.run_worker(until_idle=True)
    assert handle.result(timeout=5) == "prepared"
    assert runs == {"job": 2, "prepare": 1}


def test_retry_of_a_succeeded_job_returns_false(app: App) -> None:
    """app.retry does nothing to a job that succeeded."""

    @app.job
    def job() -> None:
        pass

    handle = app.enqueue(job)
    app.run_worker(until_idle=True)
    assert app.retry(handle.id) is False
    assert handle.state == "succeeded"


def test_run_with_the_key_of_a_job_running_elsewhere_waits_for_it(app: App, make_app) -> None:
    """app.run with the key of a job another worker runs waits and returns its result."""
    entered, gate = threading.Event(), threading.Event()
    runs: list[str] = []

    @app.job(name="jobs.slow")
    def slow(x: int) -> str:
        runs.append("worker")
        entered.set()
        assert gate.wait(10)
        return f"done {x}"

    other = make_app(clock=app.clock)

    @other.job(name="jobs.slow")
    def slow_elsewhere(x: int) -> str:
        runs.append("run")
        return "ran again"

    app.enqueue(slow, 1, key="slow:1")
    worker = threading.Thread(target=app.run_worker, kwargs={"until_idle": True})
    worker.start()
    assert entered.wait(10)
    result: list[str] = []
    waiter = threading.Thread(
        target=lambda: result.append(other.run(slow_elsewhere, 1, key="slow:1"))
    )
    waiter.start()
    waiter.join(0.3)
    assert waiter.is_alive()  # still waiting for the worker's run
    gate.set()
    waiter.join(10)
    worker.join(10)
    assert result == ["done 1"]
    assert runs == ["worker"]


def test_higher_priority_jobs_run_first(app: App) -> None:
    """With one slot, a job enqueued with a higher priority runs before older lower ones."""
    order: list[str] = []

    @app.job
    def job(label: str) -> None:
        order.append(label)

    app.enqueue(job, "low-1")
    app.enqueue(job, "low-2")
    app.enqueue(job, "high", priority=10)
    app.run_worker(concurrency=1, until_idle=True)
    assert order == ["high", "low-1", "low-2"]


def test_default_job_name_is_module_and_qualname(app: App) -> None:
    """A job's default name is f"{module}.{qualname}", and enqueue accepts that name."""

    @app.job
    def job() -> str:
        return "by name"

    name = f"{__name__}.{job.__qualname__}"
    assert job.name == name
    handle = app.enqueue(name)
    app.run_worker(until_idle=True)
    assert handle.result(timeout=5) == "by name"


def test_job_defined_in_main_without_a_name_warns(app: App) -> None:
    """Declaring a job from __main__ without name= warns that workers will not find it."""

    def job() -> None:
        pass

    job.__module__ = "__main__"
    with pytest.warns(Warning, match="name="):
        app.job(job)


def test_retry_of_a_job_failed_by_a_step_runs_that_step_again(app: App) -> None:
    """app.retry keeps the checkpoints before the first stored step error and runs the
    failed step afresh."""
    runs: Counter[str] = Counter()
    broken = {"yes": True}

    @app.step
    def prepare() -> str:
        runs["prepare"] += 1
        return "prepared"

    @app.step(retry=NO_RETRY)
    def upload(text: str) -> str:
        runs["upload"] += 1
        if broken["yes"]:
            raise ServiceDown("storage down")
        return f"{text} and uploaded"

    @app.job(retry=NO_RETRY)
    def job() -> str:
        return upload(prepare())

    handle = app.enqueue(job)
    app.run_worker(until_idle=True)
    assert handle.state == "failed"
    broken["yes"] = False
    assert app.retry(handle.id) is True
    app.run_worker(until_idle=True)
    assert handle.result(timeout=5) == "prepared and uploaded"
    assert runs == {"prepare": 1, "upload": 2}


def test_cancel_from_another_app_refuses_the_running_step_checkpoint(app: App, make_app) -> None:
    """A cancel issued elsewhere (an operator's App on the same database) stops the
    running job at its step boundary: the step's checkpoint is refused."""
    entered, gate = threading.Event(), threading.Event()
    runs: Counter[str] = Counter()

    @app.step
    def slow() -> str:
        runs["slow"] += 1
        entered.set()
        assert gate.wait(10)
        return "slow"

    @app.step
    def after(text: str) -> str:
        runs["after"] += 1
        return text

    @app.job
    def job() -> str:
        return after(slow())

    handle = app.enqueue(job)
    thread = threading.Thread(target=app.run_worker, kwargs={"until_idle": True})
    thread.start()
    assert entered.wait(10)
    operator = make_app()
    assert operator.cancel(handle.id) is True
    assert operator.get_job(handle.id).state == "cancelled"
    gate.set()
    thread.join(10)
    assert not thread.is_alive()
    assert handle.state == "cancelled"
    assert handle.steps() == []
    assert runs == {"slow": 1}


def test_cancel_a_running_async_job(app: App) -> None:
    """Cancelling a running async job refuses its step's checkpoint and runs no later step."""
    runs: Counter[str] = Counter()
    cancelled = threading.Event()

    @app.step
    async def slow() -> str:
        runs["slow"] += 1
        app.cancel(stepstone.current().job_id)
        cancelled.set()
        return "slow"

    @app.step
    async def after(text: str) -> str:
        runs["after"] += 1
        return text

    @app.job
    async def job() -> str:
        return await after(await slow())

    handle = app.enqueue(job)
    app.run_worker(until_idle=True)
    assert cancelled.is_set()
    assert handle.state == "cancelled"
    assert handle.steps() == []
    assert runs == {"slow": 1}


def test_pruned_job_frees_its_key(app: App, clock) -> None:
    """A finished job's key stays taken until the job is pruned; then it names a new job."""

    @app.job
    def job(x: int) -> int:
        return x

    first = app.enqueue(job, 1, key="k")
    app.run_worker(until_idle=True)
    clock.advance(100)
    assert app.prune(older_than=50) == 1
    with pytest.raises(JobNotFound):
        app.get_job(first.id)
    second = app.enqueue(job, 2, key="k")
    assert second.id != first.id
    app.run_worker(until_idle=True)
    assert second.result(timeout=5) == 2


def test_prune_keeps_recent_and_unfinished_jobs(app: App, clock) -> None:
    """prune deletes only jobs that finished more than older_than ago."""

    @app.job
    def job(x: int) -> int:
        return x

    old = app.enqueue(job, 1)
    app.run_worker(until_idle=True)
    clock.advance(100)
    recent = app.enqueue(job, 2)
    app.run_worker(until_idle=True)
    waiting = app.enqueue(job, 3, delay=1000)
    assert app.prune(older_than=timedelta(seconds=50)) == 1
    with pytest.raises(JobNotFound):
        app.get_job(old.id)
    assert app.get_job(recent.id).state == "succeeded"
    assert app.get_job(waiting.id).state == "queued"
