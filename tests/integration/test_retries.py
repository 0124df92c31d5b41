"""Retries of steps (in place) and of jobs (from the top), and what each keeps or drops."""

from __future__ import annotations

import threading
from collections import Counter

import pytest

import stepstone
from stepstone import App, JobFailed, Permanent, Retry
from stepstone._worker import Worker

NO_RETRY = Retry(max_attempts=1)
EXACT = Retry(max_attempts=3, jitter=False)


class ServiceDown(Exception):
    """A transient error from an external service."""


class CardDeclined(Exception):
    """An error a job catches and handles."""


class InvalidInput(Permanent):
    """A user's permanent error."""


def test_step_failing_twice_is_retried_in_place_with_exact_delays(app: App, clock) -> None:
    """A step failing twice then succeeding is retried in place after 1.0 s then 2.0 s."""
    calls: list[int] = []

    @app.step(retry=EXACT)
    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ServiceDown(f"down {len(calls)}")
        return "up"

    @app.job
    def job() -> str:
        return flaky()

    assert app.run(job, key="flaky") == "up"
    assert len(calls) == 3
    assert clock.sleeps == [1.0, 2.0]
    handle = app.get_job_by_key("flaky")
    assert handle.attempts == 1
    [step] = handle.steps()
    assert (step.name, step.status, step.attempts, step.value) == ("flaky#0", "ok", 3, "up")


def test_step_retry_delays_use_the_injected_jitter(app: App, clock) -> None:
    """With jitter the step's delays are d/2 + draw * d/2 for the policy's random draw."""
    calls: list[int] = []

    @app.step(retry=Retry(max_attempts=3, random=lambda: 0.5))
    def flaky() -> int:
        calls.append(1)
        if len(calls) < 3:
            raise ServiceDown("down")
        return len(calls)

    @app.job
    def job() -> int:
        return flaky()

    assert app.run(job) == 3
    assert clock.sleeps == [0.75, 1.5]


def test_every_failed_step_attempt_keeps_its_error_and_traceback(app: App) -> None:
    """handle.errors() lists each failed step attempt with its type, message and traceback."""
    calls: list[int] = []

    @app.step(retry=EXACT)
    def call_service() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ServiceDown(f"down {len(calls)}")
        return "ok"

    @app.job
    def job() -> str:
        return call_service()

    handle = app.enqueue(job)
    app.run_worker(until_idle=True)
    assert handle.result(timeout=5) == "ok"
    errors = handle.errors()
    assert [e.message for e in errors] == ["down 1", "down 2"]
    for error in errors:
        assert error.type.endswith("ServiceDown")
        assert error.step is not None
        assert "call_service" in error.step
        assert error.attempt == 1
        assert error.traceback is not None
        assert "Traceback" in error.traceback
        assert "call_service" in error.traceback
        assert "ServiceDown" in error.traceback


def test_default_step_retry_is_three_attempts_with_jittered_backoff(app: App, clock) -> None:
    """A step declared without retry= runs 3 times, waiting in [0.5, 1] then [1, 2] s."""
    calls: list[int] = []

    @app.step
    def always_down() -> None:
        calls.append(1)
        raise ServiceDown("down")

    @app.job(retry=NO_RETRY)
    def job() -> None:
        always_down()

    with pytest.raises(JobFailed):
        app.run(job)
    assert len(calls) == 3
    first, second = clock.sleeps
    assert 0.5 <= first <= 1.0
    assert 1.0 <= second <= 2.0


def test_default_job_retry_is_five_attempts(app: App, clock) -> None:
    """A job declared without retry= runs 5 times, with backoff 1, 2, 4, 8 s jittered."""
    calls: list[int] = []

    @app.job
    def job() -> None:
        calls.append(1)
        raise ServiceDown(f"down {len(calls)}")

    with pytest.raises(JobFailed, match="down 5"):
        app.run(job, key="five")
    assert len(calls) == 5
    assert app.get_job_by_key("five").attempts == 5
    assert 7.5 <= sum(clock.sleeps) <= 15.0


def test_job_max_attempts_counts_every_run(app: App) -> None:
    """Retry(max_attempts=3) on a job means three runs in all, each error kept."""
    calls: list[int] = []

    @app.job(retry=Retry(max_attempts=3, jitter=False))
    def job() -> None:
        calls.append(1)
        raise ServiceDown(f"down {len(calls)}")

    with pytest.raises(JobFailed):
        app.run(job, key="three")
    handle = app.get_job_by_key("three")
    assert len(calls) == 3
    assert handle.attempts == 3
    assert handle.state == "failed"
    job_errors = [e for e in handle.errors() if e.step is None]
    assert [e.message for e in job_errors] == ["down 1", "down 2", "down 3"]
    assert [e.attempt for e in job_errors] == [1, 2, 3]
    assert all(e.traceback and "ServiceDown" in e.traceback for e in job_errors)


def test_job_retry_waits_exactly_its_backoff(app: App, clock) -> None:
    """A failed job attempt is queued again exactly initial * factor ** (n - 1) later."""
    calls: list[int] = []

    @app.job(retry=Retry(max_attempts=3, initial=10.0, factor=3.0, jitter=False))
    def job() -> None:
        calls.append(1)
        raise ServiceDown("down")

    handle = app.enqueue(job)
    app.run_worker(until_idle=True)
    assert (len(calls), handle.state) == (1, "queued")
    clock.advance(9.5)
    app.run_worker(until_idle=True)
    assert len(calls) == 1
    clock.advance(0.5)
    app.run_worker(until_idle=True)
    assert (len(calls), handle.state) == (2, "queued")
    clock.advance(29.5)
    app.run_worker(until_idle=True)
    assert len(calls) == 2
    clock.advance(0.5)
    app.run_worker(until_idle=True)
    assert (len(calls), handle.state) == (3, "failed")


def test_failed_job_raises_jobfailed_with_type_message_and_cause(app: App) -> None:
    """result() of a failed job raises JobFailed naming the error, caused by the original."""

    @app.job(retry=NO_RETRY)
    def job(order_id: str) -> None:
        raise CardDeclined(f"card declined for {order_id}")

    handle = app.enqueue(job, "o-17")
    app.run_worker(until_idle=True)
    with pytest.raises(JobFailed) as failed:
        handle.result(timeout=5)
    assert "CardDeclined" in str(failed.value)
    assert "card declined for o-17" in str(failed.value)
    cause = failed.value.__cause__
    assert isinstance(cause, CardDeclined)
    assert str(cause) == "card declined for o-17"


def test_failed_job_with_an_unimportable_error_class_gets_a_faithful_stand_in(app: App) -> None:
    """An error whose class cannot be rebuilt comes back as a cause naming its type and text."""

    class LocalError(Exception):
        pass

    @app.job(retry=NO_RETRY)
    def job() -> None:
        raise LocalError("only here")

    handle = app.enqueue(job)
    app.run_worker(until_idle=True)
    with pytest.raises(JobFailed) as failed:
        handle.result(timeout=5)
    assert "LocalError" in str(failed.value)
    assert "only here" in str(failed.value)
    cause = failed.value.__cause__
    assert cause is not None
    assert "LocalError" in f"{type(cause).__name__} {cause}"
    assert "only here" in str(cause)


def test_caught_step_error_is_replayed_without_running_the_step(app: App) -> None:
    """A step whose attempts ran out raises its stored error again on replay; the job
    takes the same path and the step body does not run again."""
    entered, gate = threading.Event(), threading.Event()
    runs: Counter[str] = Counter()
    paths: list[str] = []

    @app.step(retry=Retry(max_attempts=2, jitter=False))
    def charge() -> str:
        runs["charge"] += 1
        raise CardDeclined("insufficient funds")

    @app.step
    def wait_here() -> str:
        runs["wait_here"] += 1
        entered.set()
        assert gate.wait(10)
        return "waited"

    @app.step
    def notify(text: str) -> str:
        runs["notify"] += 1
        return text

    @app.job
    def job() -> str:
        try:
            charge()
            path = "charged"
        except CardDeclined as exc:
            path = f"declined: {exc}"
        paths.append(path)
        wait_here()
        return notify(path)

    handle = app.enqueue(job)
    worker = Worker(app)
    thread = threading.Thread(target=worker.run)
    thread.start()
    assert entered.wait(10)
    worker.stop()
    gate.set()
    thread.join(10)
    assert not thread.is_alive()
    assert handle.state == "queued"  # released at the step boundary after wait_here

    app.run_worker(until_idle=True)
    assert handle.result(timeout=5) == "declined: insufficient funds"
    assert paths == ["declined: insufficient funds"] * 2
    assert runs == {"charge": 2, "wait_here": 1, "notify": 1}
    assert [(s.name, s.status) for s in handle.steps()] == [
        ("charge#0", "error"),
        ("wait_here#0", "ok"),
        ("notify#0", "ok"),
    ]


def test_escaping_step_error_drops_it_and_later_checkpoints_on_job_retry(app: App, clock) -> None:
    """A job retry keeps the checkpoints before the run's first stored error and drops
    that error and every checkpoint after it, so those steps run afresh."""
    runs: Counter[str] = Counter()
    attempt = {"n": 0}

    @app.step(retry=NO_RETRY)
    def reserve() -> str:
        runs["reserve"] += 1
        return "reserved"

    @app.step(retry=NO_RETRY)
    def charge() -> str:
        runs["charge"] += 1
        if attempt["n"] == 1:
            raise CardDeclined("declined")
        return "charged"

    @app.step(retry=NO_RETRY)
    def email(text: str) -> str:
        runs["email"] += 1
        return text

    @app.step(retry=NO_RETRY)
    def ship() -> str:
        runs["ship"] += 1
        if attempt["n"] == 1:
            raise ServiceDown("carrier down")
        return "shipped"

    @app.job(retry=Retry(max_attempts=2, jitter=False))
    def job() -> str:
        attempt["n"] += 1
        parts = [reserve()]
        try:
            parts.append(charge())
        except CardDeclined:
            parts.append("unpaid")
        parts.append(email(parts[-1]))
        parts.append(ship())
        return " ".join(parts)

    handle = app.enqueue(job)
    app.run_worker(until_idle=True)
    assert handle.state == "queued"
    assert [s.name for s in handle.steps()] == ["reserve#0"]

    clock.advance(1.0)
    app.run_worker(until_idle=True)
    assert handle.result(timeout=5) == "reserved charged charged shipped"
    assert runs == {"reserve": 1, "charge": 2, "email": 2, "ship": 2}
    assert [(s.name, s.status) for s in handle.steps()] == [
        ("reserve#0", "ok"),
        ("charge#0", "ok"),
        ("email#0", "ok"),
        ("ship#0", "ok"),
    ]
    kept = [(e.attempt, e.message) for e in handle.errors()]
    assert (1, "declined") in kept  # the dropped checkpoint's error is still shown
    assert kept.count((1, "carrier down")) == 2  # the step's error and the job's


def test_step_error_escaping_twice_reruns_only_the_failed_step(app: App) -> None:
    """Steps before an escaping step error are not run again by the job's retries."""
    runs: Counter[str] = Counter()

    @app.step
    def download() -> str:
        runs["download"] += 1
        return "bytes"

    @app.step(retry=Retry(max_attempts=2, jitter=False))
    def ocr(data: str) -> str:
        runs["ocr"] += 1
        if runs["ocr"] <= 4:
            raise ServiceDown("ocr down")
        return f"text of {data}"

    @app.job(retry=Retry(max_attempts=3, jitter=False))
    def job() -> str:
        return ocr(download())

    assert app.run(job) == "text of bytes"
    assert runs == {"download": 1, "ocr": 5}


def test_permanent_ends_step_and_job_retries_at_once(app: App, clock) -> None:
    """A Permanent error from a step is neither retried in place nor by the job."""
    calls: list[int] = []

    @app.step(retry=Retry(max_attempts=5))
    def validate() -> None:
        calls.append(1)
        raise InvalidInput("bad address")

    @app.job(retry=Retry(max_attempts=5))
    def job() -> None:
        validate()

    with pytest.raises(JobFailed, match="bad address") as failed:
        app.run(job, key="permanent")
    assert isinstance(failed.value.__cause__, InvalidInput)
    assert len(calls) == 1
    assert app.get_job_by_key("permanent").attempts == 1
    assert clock.sleeps == []


def test_permanent_raised_by_the_job_body_is_not_retried(app: App) -> None:
    """A job body raising Permanent fails on its first attempt."""
    calls: list[int] = []

    @app.job(retry=Retry(max_attempts=5))
    def job() -> None:
        calls.append(1)
        raise Permanent("give up")

    with pytest.raises(JobFailed, match="give up"):
        app.run(job)
    assert len(calls) == 1


def test_retry_on_limits_step_retries(app: App) -> None:
    """A step with retry_on=ServiceDown does not retry another error."""
    calls: list[str] = []

    @app.step(retry=Retry(max_attempts=5, retry_on=ServiceDown, jitter=False))
    def lookup(kind: str) -> str:
        calls.append(kind)
        if kind == "other":
            raise KeyError(kind)
        if calls.count(kind) < 3:
            raise ServiceDown(kind)
        return kind

    @app.job(retry=NO_RETRY)
    def job(kind: str) -> str:
        return lookup(kind)

    assert app.run(job, "down") == "down"
    with pytest.raises(JobFailed, match="KeyError"):
        app.run(job, "other")
    assert calls == ["down", "down", "down", "other"]


def test_give_up_on_stops_job_retries(app: App) -> None:
    """A job with give_up_on=CardDeclined fails at the first CardDeclined."""
    calls: list[int] = []

    @app.job(retry=Retry(max_attempts=5, give_up_on=CardDeclined, jitter=False))
    def job() -> None:
        calls.append(1)
        if len(calls) < 2:
            raise ServiceDown("transient")
        raise CardDeclined("final")

    with pytest.raises(JobFailed, match="final"):
        app.run(job)
    assert len(calls) == 2


def test_async_step_is_retried_in_place_with_exact_delays(app: App, clock) -> None:
    """An async step failing twice then succeeding waits 1.0 s then 2.0 s on the clock."""
    calls: list[int] = []

    @app.step(retry=EXACT)
    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ServiceDown("down")
        return "up"

    @app.job
    async def job() -> str:
        return await flaky()

    assert app.run(job) == "up"
    assert len(calls) == 3
    assert clock.sleeps == [1.0, 2.0]


class PaymentError(Exception):
    """A user error class whose constructor takes fields, not a message."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"payment failed with {code}: {reason}")
        self.code = code
        self.reason = reason


def test_caught_error_with_a_custom_constructor_is_replayed_as_its_class(app: App) -> None:
    """A stored step error of a class with its own __init__ is raised again as that class
    on replay, so `except PaymentError` takes the same path."""
    entered, gate = threading.Event(), threading.Event()
    runs: Counter[str] = Counter()
    paths: list[str] = []

    @app.step(retry=NO_RETRY)
    def pay() -> str:
        runs["pay"] += 1
        raise PaymentError(402, "insufficient funds")

    @app.step
    def wait_here() -> None:
        entered.set()
        assert gate.wait(10)

    @app.step
    def finish(path: str) -> str:
        return path

    @app.job(retry=NO_RETRY)
    def job() -> str:
        try:
            pay()
            path = "paid"
        except PaymentError as exc:
            path = f"unpaid ({exc.code})"
        paths.append(path)
        wait_here()
        return finish(path)

    handle = app.enqueue(job)
    worker = Worker(app)
    thread = threading.Thread(target=worker.run)
    thread.start()
    assert entered.wait(10)
    worker.stop()
    gate.set()
    thread.join(10)
    assert handle.state == "queued"

    app.run_worker(until_idle=True)
    assert paths == ["unpaid (402)", "unpaid (402)"]
    assert handle.result(timeout=5) == "unpaid (402)"
    assert runs == {"pay": 1}


def test_reclaim_after_an_expired_lease_is_not_a_new_attempt(make_app, clock) -> None:
    """A job taken over after its lease expired keeps its attempt number, so its
    max_attempts still allows the retries it promised."""
    stale: App = make_app(clock=clock, lease=30.0)
    fresh: App = make_app(clock=clock, lease=30.0)
    entered, gate = threading.Event(), threading.Event()
    attempts: list[int] = []

    @stale.job(name="retries.reclaimed", retry=Retry(max_attempts=2, jitter=False))
    def stale_job() -> str:
        entered.set()
        assert gate.wait(10)
        return "stale"

    @fresh.job(name="retries.reclaimed", retry=Retry(max_attempts=2, jitter=False))
    def fresh_job() -> str:
        attempts.append(stepstone.current().attempt)
        if len(attempts) == 1:
            raise ServiceDown("first fresh run fails")
        return "fresh"

    # app.run, not a worker: the stale side must not claim the job again meanwhile.
    thread = threading.Thread(target=lambda: stale.run(stale_job, key="reclaimed"), daemon=True)
    thread.start()
    try:
        assert entered.wait(10)
        handle = stale.get_job_by_key("reclaimed")
        clock.advance(31.0)
        fresh.run_worker(until_idle=True)  # reclaims: a replay of attempt 1, which fails
        assert handle.state == "queued"
        clock.advance(1.0)
        fresh.run_worker(until_idle=True)
    finally:
        gate.set()
        thread.join(10)
    assert attempts == [1, 2]
    assert handle.result(timeout=5) == "fresh"
    assert handle.attempts == 2


def test_step_delays_are_capped_at_max_delay(app: App, clock) -> None:
    """A step's in-place retry delays grow by factor and stop at max_delay."""
    calls: list[int] = []

    @app.step(retry=Retry(max_attempts=5, initial=1.0, factor=10.0, max_delay=5.0, jitter=False))
    def flaky() -> int:
        calls.append(1)
        if len(calls) < 5:
            raise ServiceDown("down")
        return len(calls)

    @app.job
    def job() -> int:
        return flaky()

    assert app.run(job) == 5
    assert clock.sleeps == [1.0, 5.0, 5.0, 5.0]
