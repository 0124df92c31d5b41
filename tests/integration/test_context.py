"""``stepstone.current()``: the running job's id, attempt, step, idempotency key and logger."""

from __future__ import annotations

import logging
from collections import defaultdict

import pytest

import stepstone
from stepstone import App, Retry, StepstoneError


class ServiceDown(Exception):
    """A transient error."""


def test_current_outside_a_job_raises() -> None:
    """stepstone.current() outside any job raises StepstoneError."""
    with pytest.raises(StepstoneError, match="outside"):
        stepstone.current()


def test_current_in_a_step_called_outside_a_job_raises(app: App) -> None:
    """A step called as plain Python outside a job has no job context."""

    @app.step
    def lonely() -> str:
        return stepstone.current().job_id

    with pytest.raises(StepstoneError):
        lonely()


def test_current_names_the_job_attempt_and_step(app: App) -> None:
    """Inside a step, current() gives the job id, the job attempt and the step name."""
    seen: list[tuple[str, int, str | None]] = []
    runs: list[int] = []

    @app.step
    def inspect_me() -> None:
        here = stepstone.current()
        seen.append((here.job_id, here.attempt, here.step_name))

    @app.job(retry=Retry(max_attempts=2, jitter=False))
    def job() -> None:
        runs.append(1)
        inspect_me()
        if len(runs) == 1:
            raise ServiceDown("retry the job")

    handle = app.enqueue(job)
    app.run_worker(until_idle=True)
    app.clock.advance(1.0)
    app.run_worker(until_idle=True)
    handle.result(timeout=5)
    assert seen == [(handle.id, 1, "inspect_me")]
    assert handle.attempts == 2


def test_current_attempt_counts_job_attempts(app: App) -> None:
    """current().attempt is 1 on the first run of a job and 2 on its retry."""
    attempts: list[int] = []

    @app.job(retry=Retry(max_attempts=2, jitter=False))
    def job() -> int:
        attempts.append(stepstone.current().attempt)
        if len(attempts) == 1:
            raise ServiceDown("again")
        return len(attempts)

    assert app.run(job) == 2
    assert attempts == [1, 2]


def test_idempotency_key_is_stable_per_step_and_distinct_between_steps(app: App) -> None:
    """The idempotency key is the same on every attempt of one step of one job (through
    a step retry and a job retry) and differs between steps, occurrences and jobs."""
    keys: defaultdict[str, list[str]] = defaultdict(list)
    attempts: defaultdict[str, list[int]] = defaultdict(list)

    @app.step(retry=Retry(max_attempts=2, jitter=False))
    def charge(order: str) -> str:
        here = stepstone.current()
        keys[order].append(here.idempotency_key)
        attempts[order].append(here.attempt)
        if order == "o1" and len(keys[order]) < 3:
            raise ServiceDown("payment API down")
        return here.idempotency_key

    @app.step
    def refund(order: str) -> str:
        return stepstone.current().idempotency_key

    @app.job(retry=Retry(max_attempts=2, jitter=False))
    def job(order: str) -> list[str]:
        return [charge(order), refund(order), charge(order + "-again")]

    first = app.run(job, "o1")
    assert attempts["o1"] == [1, 1, 2]  # two step attempts, then the job's retry
    assert len(set(keys["o1"])) == 1
    charge_key, refund_key, second_charge_key = first
    assert charge_key == keys["o1"][0]
    assert len({charge_key, refund_key, second_charge_key}) == 3

    other = app.run(job, "o2")
    assert set(other).isdisjoint(first)


def test_job_logger_records_carry_job_step_and_attempt(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    """Records logged through current().logger carry job_id, step and attempt."""
    caplog.set_level(logging.INFO, logger="stepstone")

    @app.step
    def charge(amount: int) -> int:
        stepstone.current().logger.info("charging %d", amount)
        return amount

    @app.job
    def job() -> int:
        stepstone.current().logger.info("job body")
        return charge(5)

    handle = app.enqueue(job)
    app.run_worker(until_idle=True)
    assert handle.result(timeout=5) == 5
    [record] = [r for r in caplog.records if r.getMessage() == "charging 5"]
    assert record.job_id == handle.id
    assert record.step in ("charge", "charge#0")
    assert record.attempt == 1
    [body] = [r for r in caplog.records if r.getMessage() == "job body"]
    assert body.job_id == handle.id
    assert body.attempt == 1


def test_stepstone_records_of_a_job_carry_an_action_and_the_job_id(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    """Every record stepstone logs carries an action; those about the job carry its id."""
    caplog.set_level(logging.DEBUG, logger="stepstone")
    calls: list[int] = []
    job_failed = {"yet": False}

    @app.step(retry=Retry(max_attempts=2, jitter=False))
    def flaky() -> int:
        calls.append(1)
        if len(calls) == 1:
            raise ServiceDown("once")
        return 1

    @app.job(retry=Retry(max_attempts=2, jitter=False))
    def job() -> int:
        value = flaky()
        if not job_failed["yet"]:
            job_failed["yet"] = True
            raise ServiceDown("job fails once")
        return value

    handle = app.enqueue(job)
    app.run_worker(until_idle=True)
    app.clock.advance(1.0)
    app.run_worker(until_idle=True)
    assert handle.result(timeout=5) == 1
    records = [r for r in caplog.records if r.name.startswith("stepstone")]
    assert records
    assert all(getattr(r, "action", None) for r in records), [
        r.getMessage() for r in records if not getattr(r, "action", None)
    ]
    about_the_job = [r for r in records if handle.id in r.getMessage()]
    assert about_the_job
    assert all(getattr(r, "job_id", None) == handle.id for r in about_the_job)
    retrying = [r for r in records if getattr(r, "action", "") == "step.retrying"]
    assert retrying
    assert all(getattr(r, "step", None) == "flaky#0" for r in retrying)
