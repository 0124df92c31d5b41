"""Durable sleep and signals: a job parks (state ``waiting``, worker slot free) until its
time comes or its signal arrives, then replays from the top with its earlier steps taken
from their checkpoints; across worker processes killed while it runs or while it waits."""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import flowapp
import pytest
from waiting import body_runs, wait_for

import stepstone
from stepstone import App, JobFailed, Retry, StepstoneError, WaitTimeout
from stepstone.testing import EPOCH, FakeClock


def counted_steps(app: App, calls: Counter[str]) -> tuple[object, object]:
    """Two sync steps, ``before`` and ``after``, that count their body runs."""

    @app.step
    def before() -> str:
        calls["before"] += 1
        return "b"

    @app.step
    def after() -> str:
        calls["after"] += 1
        return "a"

    return before, after


# --- durable sleep ----------------------------------------------------------------------------


def test_a_sync_job_sleeps_durably_and_resumes_after_the_time(app: App, clock: FakeClock) -> None:
    """sleep() parks the job (waiting, worker idle); after the time only the later step runs."""
    calls: Counter[str] = Counter()
    before, after = counted_steps(app, calls)

    @app.job(name="nap")
    def nap() -> list[str]:
        head = before()  # type: ignore[operator]
        slept = stepstone.sleep(30)
        return [head, repr(slept), after()]  # type: ignore[operator]

    handle = app.enqueue(nap)
    app.run_worker(until_idle=True)  # returns: nothing is due while the job sleeps
    record = handle.record()
    assert record.state == "waiting"
    assert record.run_at == pytest.approx(EPOCH + 30)
    assert record.lease_owner is None
    assert calls == {"before": 1}

    clock.advance(29)
    app.run_worker(until_idle=True)
    assert handle.state == "waiting"
    assert calls == {"before": 1}

    clock.advance(1)
    app.run_worker(until_idle=True)
    assert handle.result(timeout=5) == ["b", "None", "a"]
    assert calls == {"before": 1, "after": 1}
    assert [s.name for s in handle.steps()] == ["before#0", "stepstone.sleep#0", "after#0"]
    assert handle.attempts == 1  # a wake is a replay, not a new attempt


def test_two_sleeps_in_one_job_park_twice(app: App, clock: FakeClock) -> None:
    """Two sleeps (seconds, then a timedelta) park twice; each step body runs once."""
    calls: Counter[str] = Counter()
    before, after = counted_steps(app, calls)

    @app.step
    def middle() -> str:
        calls["middle"] += 1
        return "m"

    @app.job(name="two_naps")
    def two_naps() -> str:
        head = before()  # type: ignore[operator]
        stepstone.sleep(10)
        mid = middle()
        stepstone.sleep(timedelta(minutes=5))
        return head + mid + after()  # type: ignore[operator]

    handle = app.enqueue(two_naps)
    app.run_worker(until_idle=True)
    assert handle.record().run_at == pytest.approx(EPOCH + 10)
    clock.advance(10)
    app.run_worker(until_idle=True)
    assert handle.state == "waiting"
    assert handle.record().run_at == pytest.approx(EPOCH + 10 + 300)
    assert calls == {"before": 1, "middle": 1}
    clock.advance(300)
    app.run_worker(until_idle=True)
    assert handle.result(timeout=5) == "bma"
    assert calls == {"before": 1, "middle": 1, "after": 1}
    assert [s.name for s in handle.steps()] == [
        "before#0",
        "stepstone.sleep#0",
        "middle#0",
        "stepstone.sleep#1",
        "after#0",
    ]


def test_an_async_job_sleeps_with_and_without_await(app: App, clock: FakeClock) -> None:
    """An async job parks on `await sleep()` and on sleep() without await alike."""
    calls: Counter[str] = Counter()

    @app.step
    async def fetch() -> str:
        calls["fetch"] += 1
        return "f"

    @app.step
    async def store(value: str) -> str:
        calls["store"] += 1
        return value + "s"

    @app.job(name="async_nap")
    async def async_nap() -> str:
        value = await fetch()
        slept = await stepstone.sleep(20)
        stepstone.sleep(timedelta(seconds=40))  # no await: still decided (and parks)
        return await store(value) + repr(slept)

    handle = app.enqueue(async_nap)
    app.run_worker(until_idle=True)
    assert (handle.state, handle.record().run_at) == ("waiting", pytest.approx(EPOCH + 20))
    clock.advance(20)
    app.run_worker(until_idle=True)
    assert (handle.state, handle.record().run_at) == ("waiting", pytest.approx(EPOCH + 60))
    assert calls == {"fetch": 1}
    clock.advance(40)
    app.run_worker(until_idle=True)
    assert handle.result(timeout=5) == "fsNone"
    assert calls == {"fetch": 1, "store": 1}


def test_sleep_until_an_aware_datetime_or_epoch_seconds(app: App, clock: FakeClock) -> None:
    """sleep_until() parks until an aware datetime (any zone) or epoch seconds."""
    calls: Counter[str] = Counter()
    before, after = counted_steps(app, calls)
    plus_two = timezone(timedelta(hours=2))
    first_wake = datetime.fromtimestamp(EPOCH + 3600, tz=plus_two)

    @app.job(name="alarm")
    def alarm() -> str:
        head = before()  # type: ignore[operator]
        stepstone.sleep_until(first_wake)
        stepstone.sleep_until(EPOCH + 7200.0)
        stepstone.sleep_until(datetime.fromtimestamp(EPOCH + 60, tz=UTC))  # in the past
        return head + after()  # type: ignore[operator]

    handle = app.enqueue(alarm)
    app.run_worker(until_idle=True)
    assert handle.record().run_at == pytest.approx(EPOCH + 3600)
    clock.advance(3600)
    app.run_worker(until_idle=True)
    assert handle.record().run_at == pytest.approx(EPOCH + 7200)
    clock.advance(3600)
    app.run_worker(until_idle=True)
    assert handle.result(timeout=5) == "ba"
    assert calls == {"before": 1, "after": 1}


def test_sleep_until_a_naive_datetime_is_a_value_error(app: App) -> None:
    """sleep_until() with a naive datetime is a ValueError, outside and inside a job."""
    naive = datetime(2030, 1, 1)
    with pytest.raises(ValueError, match="aware datetime"):
        stepstone.sleep_until(naive)

    @app.job(name="naive")
    def naive_job() -> str:
        try:
            stepstone.sleep_until(naive)
        except ValueError as exc:
            return f"refused: {exc}"
        return "slept"

    handle = app.enqueue(naive_job)
    app.run_worker(until_idle=True)
    assert "aware datetime" in handle.result(timeout=5)


def test_a_negative_duration_is_refused_and_zero_does_not_park(app: App) -> None:
    """sleep(-1) is a ValueError; sleep(0) takes its position but does not park."""
    with pytest.raises(ValueError, match="zero or more"):
        stepstone.sleep(-1)

    @app.job(name="zero")
    def zero() -> str:
        stepstone.sleep(0)
        try:
            stepstone.sleep(-1)
        except ValueError:
            return "refused"
        return "slept"

    handle = app.enqueue(zero)
    app.run_worker(until_idle=True)
    assert handle.result(timeout=5) == "refused"
    assert [s.name for s in handle.steps()] == ["stepstone.sleep#0"]


def test_except_exception_around_sleep_does_not_swallow_the_park(
    app: App, clock: FakeClock
) -> None:
    """`except Exception` around sleep() does not catch the park: the job still parks."""
    caught: list[str] = []

    @app.job(name="careful")
    def careful() -> str:
        try:
            stepstone.sleep(60)
        except Exception as exc:
            caught.append(repr(exc))
            return "swallowed"
        return "woke"

    handle = app.enqueue(careful)
    app.run_worker(until_idle=True)
    assert handle.state == "waiting"
    clock.advance(60)
    app.run_worker(until_idle=True)
    assert handle.result(timeout=5) == "woke"
    assert caught == []


def test_sleep_inside_a_step_is_an_error(app: App) -> None:
    """sleep(), sleep_until() and wait_for() inside a step body raise StepstoneError."""
    messages: list[str] = []

    @app.step
    def inner() -> str:
        for call in (
            lambda: stepstone.sleep(1),
            lambda: stepstone.sleep_until(EPOCH + 10),
            lambda: stepstone.wait_for("event"),
        ):
            try:
                call()
            except StepstoneError as exc:
                messages.append(str(exc))
        return "done"

    @app.job(name="sleepy_step")
    def sleepy_step() -> str:
        return inner()

    handle = app.enqueue(sleepy_step)
    app.run_worker(until_idle=True)
    assert handle.result(timeout=5) == "done"
    assert len(messages) == 3
    assert all("inside step inner#0" in message for message in messages), messages


def test_sleep_outside_a_job_blocks(app: App) -> None:
    """Outside a job sleep() and sleep_until() are plain blocking sleeps."""
    started = time.monotonic()
    assert stepstone.sleep(0.05) is None
    assert stepstone.sleep(timedelta(milliseconds=50)) is None
    assert stepstone.sleep_until(datetime.now(UTC) + timedelta(milliseconds=50)) is None
    assert time.monotonic() - started >= 0.14


# --- signals ----------------------------------------------------------------------------------


def test_a_signal_delivers_its_payload_to_the_waiting_job(app: App) -> None:
    """signal() wakes the job waiting in wait_for() (returns 1) and delivers the payload."""
    calls: Counter[str] = Counter()
    before, after = counted_steps(app, calls)

    @app.job(name="approval")
    def approval(order: int) -> dict[str, object]:
        before()  # type: ignore[operator]
        payload = stepstone.wait_for(f"approved:{order}")
        after()  # type: ignore[operator]
        return payload

    handle = app.enqueue(approval, 7)
    app.run_worker(until_idle=True)
    record = handle.record()
    assert (record.state, record.wait_event) == ("waiting", "approved:7")
    assert record.run_at > EPOCH + 10 * 365 * 86400  # no timeout: it waits for ever

    assert app.signal("approved:7", {"by": "ann", "amount": 12.5}) == 1
    assert handle.state == "queued"
    app.run_worker(until_idle=True)
    assert handle.result(timeout=5) == {"by": "ann", "amount": 12.5}
    assert calls == {"before": 1, "after": 1}
    assert [s.name for s in handle.steps()] == [
        "before#0",
        "stepstone.wait_for.start#0",
        "stepstone.wait_for#0",
        "after#0",
    ]


def test_every_job_waiting_for_an_event_gets_the_signal(app: App) -> None:
    """One signal wakes every job waiting for its event, returns their count, skips others."""

    @app.job(name="listener")
    def listener(event: str, n: int) -> str:
        return f"{n}:{stepstone.wait_for(event)}"

    handles = [app.enqueue(listener, "deploy", n) for n in range(3)]
    other = app.enqueue(listener, "rollback", 9)
    app.run_worker(until_idle=True)
    assert {h.state for h in [*handles, other]} == {"waiting"}

    assert app.signal("nobody-waits") == 0
    assert app.signal("deploy", "v2") == 3
    app.run_worker(until_idle=True)
    assert [h.result(timeout=5) for h in handles] == ["0:v2", "1:v2", "2:v2"]
    assert other.state == "waiting"
    assert app.signal("deploy", "v3") == 0  # nobody is waiting any more


def test_a_signal_sent_after_enqueue_but_before_the_wait_is_delivered(app: App) -> None:
    """A signal sent after enqueue, before the wait, is kept and taken without parking."""

    @app.job(name="late_waiter")
    def late_waiter() -> str:
        return stepstone.wait_for("ready")

    handle = app.enqueue(late_waiter)
    assert app.signal("ready", "early bird") == 0  # nobody waits yet
    app.run_worker(until_idle=True)
    assert handle.result(timeout=5) == "early bird"


def test_a_signal_sent_before_the_job_was_enqueued_is_not_delivered(
    app: App, clock: FakeClock
) -> None:
    """A signal older than the job is not delivered; the job waits for the next one."""

    @app.job(name="newcomer")
    def newcomer() -> str:
        return stepstone.wait_for("ready")

    assert app.signal("ready", "too old") == 0
    clock.advance(1)
    handle = app.enqueue(newcomer)
    app.run_worker(until_idle=True)
    assert handle.state == "waiting"
    clock.advance(1)
    assert app.signal("ready", "fresh") == 1
    app.run_worker(until_idle=True)
    assert handle.result(timeout=5) == "fresh"


def test_two_waits_on_one_event_take_two_successive_signals(app: App) -> None:
    """Two wait_for() calls on one event take two successive signals, up front or apart."""

    @app.job(name="pair")
    def pair(event: str) -> list[object]:
        return [stepstone.wait_for(event), stepstone.wait_for(event)]

    both = app.enqueue(pair, "up-front")
    app.signal("up-front", 1)
    app.signal("up-front", 2)
    one_by_one = app.enqueue(pair, "one-by-one")
    app.run_worker(until_idle=True)
    assert both.result(timeout=5) == [1, 2]
    assert one_by_one.state == "waiting"

    assert app.signal("one-by-one", "a") == 1
    app.run_worker(until_idle=True)
    assert one_by_one.state == "waiting"  # took "a", waits for a second signal
    assert app.signal("one-by-one", "b") == 1
    app.run_worker(until_idle=True)
    assert one_by_one.result(timeout=5) == ["a", "b"]


def test_a_wait_timeout_is_a_catchable_wait_timeout(app: App, clock: FakeClock) -> None:
    """No signal in time: wait_for() raises WaitTimeout (a TimeoutError) the job catches."""
    calls: Counter[str] = Counter()
    before, after = counted_steps(app, calls)

    @app.job(name="patient")
    def patient() -> str:
        before()  # type: ignore[operator]
        try:
            outcome = f"got {stepstone.wait_for('reply', timeout=timedelta(minutes=1))}"
        except WaitTimeout as exc:
            outcome = f"timeout (TimeoutError: {isinstance(exc, TimeoutError)})"
        return f"{outcome} then {after()}"  # type: ignore[operator]

    handle = app.enqueue(patient)
    app.run_worker(until_idle=True)
    assert handle.record().run_at == pytest.approx(EPOCH + 60)
    clock.advance(59)
    app.run_worker(until_idle=True)
    assert handle.state == "waiting"
    clock.advance(1)
    app.run_worker(until_idle=True)
    assert handle.result(timeout=5) == "timeout (TimeoutError: True) then a"
    assert calls == {"before": 1, "after": 1}
    assert handle.steps()[2].value == {"event": "reply", "timeout": True}


def test_a_signal_before_the_timeout_wins(app: App, clock: FakeClock) -> None:
    """A wait with a timeout that gets its signal in time returns the payload."""

    @app.job(name="quick_reply")
    def quick_reply() -> object:
        return stepstone.wait_for("reply", timeout=60)

    handle = app.enqueue(quick_reply)
    app.run_worker(until_idle=True)
    clock.advance(59)
    assert app.signal("reply", [1, 2]) == 1
    app.run_worker(until_idle=True)
    assert handle.result(timeout=5) == [1, 2]


def test_the_wait_timeout_counts_from_the_first_wait_not_from_replays(
    app: App, clock: FakeClock, make_app: Callable[..., App]
) -> None:
    """A replay (woken by a stale signal) keeps the wait's first deadline, not now + timeout."""

    @app.job(name="deadline_waiter")
    def deadline_waiter() -> str:
        try:
            return f"got {stepstone.wait_for('e', timeout=60)}"
        except WaitTimeout:
            return "timed out"

    handle = app.enqueue(deadline_waiter)
    app.run_worker(until_idle=True)
    assert handle.record().run_at == pytest.approx(EPOCH + 60)

    clock.advance(40)
    lagging = make_app(clock=FakeClock(EPOCH - 100))
    assert lagging.signal("e", "stale") == 1  # wakes it, but is older than the job
    app.run_worker(until_idle=True)  # the replay parks again
    record = handle.record()
    assert record.state == "waiting"
    assert record.fence == 2  # it did run again
    assert record.run_at == pytest.approx(EPOCH + 60)  # not EPOCH + 100

    clock.advance(20)
    app.run_worker(until_idle=True)
    assert handle.result(timeout=5) == "timed out"


def test_an_async_job_awaits_signals(app: App, clock: FakeClock) -> None:
    """`await wait_for()` parks an async job; a timed-out await raises WaitTimeout."""

    @app.step
    async def shout(text: str) -> str:
        return text.upper()

    @app.job(name="async_listener")
    async def async_listener() -> str:
        payload = await stepstone.wait_for("go")
        try:
            extra = await stepstone.wait_for("more", timeout=30)
        except WaitTimeout:
            extra = "none"
        return await shout(f"{payload}/{extra}")

    handle = app.enqueue(async_listener)
    app.run_worker(until_idle=True)
    assert handle.state == "waiting"
    assert app.signal("go", "hello") == 1
    app.run_worker(until_idle=True)
    assert (handle.state, handle.record().wait_event) == ("waiting", "more")
    clock.advance(30)
    app.run_worker(until_idle=True)
    assert handle.result(timeout=5) == "HELLO/NONE"


def test_event_names_are_checked(app: App) -> None:
    """signal() refuses the reserved prefix and ''; wait_for() refuses '' and runs only in jobs."""
    with pytest.raises(ValueError, match="reserved"):
        app.signal("stepstone.job:0190f0c0-0000-7000-8000-000000000000")
    with pytest.raises(ValueError):
        app.signal("")
    with pytest.raises(StepstoneError, match="outside a running job"):
        stepstone.wait_for("anything")

    @app.job(name="nameless", retry=Retry(max_attempts=1))
    def nameless() -> object:
        return stepstone.wait_for("")

    handle = app.enqueue(nameless)
    app.run_worker(until_idle=True)
    with pytest.raises(JobFailed, match="event name"):
        handle.result(timeout=5)


def test_prune_deletes_old_signals(app: App, clock: FakeClock) -> None:
    """prune(older_than) deletes older signals, so a later wait no longer receives them."""

    @app.job(name="slow_starter")
    def slow_starter(event: str) -> str:
        return stepstone.wait_for(event)

    old = app.enqueue(slow_starter, "old", delay=200)
    recent = app.enqueue(slow_starter, "recent", delay=200)
    app.signal("old", "pruned away")
    clock.advance(150)
    app.signal("recent", "kept")
    clock.advance(50)
    app.prune(older_than=100)
    app.run_worker(until_idle=True)
    assert recent.result(timeout=5) == "kept"
    assert old.state == "waiting"


# --- across processes -------------------------------------------------------------------------


def test_a_worker_killed_right_before_a_sleep_parks(
    db_url: str, tmp_path: Path, spawn_worker
) -> None:
    """SIGKILL just before the park: another worker replays and sleeps; steps run once."""
    log = tmp_path / "flow.log"
    Path(f"{log}.hang-before-park").touch()
    app = flowapp.build_app(db_url, lease=1.0)
    handle = app.enqueue("flowapp.sleeper", str(log), 1.0)
    worker = spawn_worker(module="flowapp", concurrency=1)
    wait_for(Path(f"{log}.before-park").exists, what="the job to reach its sleep")
    killed_at = time.time()
    worker.signal(signal.SIGKILL)
    assert worker.wait() == -signal.SIGKILL
    assert handle.state == "running"

    resumer = spawn_worker(module="flowapp", role="resumer", concurrency=1)
    assert handle.result(timeout=30) == "first then last(slept) by resumer"
    assert body_runs(log) == {("first", "subprocess"): 1, ("last", "resumer"): 1}
    steps = handle.steps()
    assert [s.name for s in steps] == ["flow_first#0", "stepstone.sleep#0", "flow_last#0"]
    assert steps[1].value["until"] >= killed_at + 1.0  # the sleep began in the resumer
    assert handle.record().finished_at >= steps[1].value["until"]
    resumer.signal(signal.SIGTERM)
    assert resumer.wait() == 0


def test_a_worker_killed_while_its_job_sleeps(db_url: str, tmp_path: Path, spawn_worker) -> None:
    """SIGKILL while the job sleeps: a new worker wakes it later; the early step runs once."""
    log = tmp_path / "flow.log"
    app = flowapp.build_app(db_url, lease=1.0)
    handle = app.enqueue("flowapp.sleeper", str(log), 1.5)
    worker = spawn_worker(module="flowapp", concurrency=1)
    wait_for(lambda: handle.state == "waiting", what="the job to park")
    wake_at = handle.record().run_at
    worker.signal(signal.SIGKILL)
    assert worker.wait() == -signal.SIGKILL
    assert handle.state == "waiting"

    resumer = spawn_worker(module="flowapp", role="resumer", concurrency=1)
    assert handle.result(timeout=30) == "first then last(slept) by resumer"
    assert handle.record().finished_at >= wake_at
    assert body_runs(log) == {("first", "subprocess"): 1, ("last", "resumer"): 1}
    assert handle.attempts == 1
    resumer.signal(signal.SIGTERM)
    assert resumer.wait() == 0


def test_a_worker_killed_while_its_job_waits_for_a_signal(
    db_url: str, tmp_path: Path, spawn_worker
) -> None:
    """SIGKILL while the job waits: the signal wakes it, this process finishes it once."""
    log = tmp_path / "flow.log"
    app = flowapp.build_app(db_url, lease=1.0)
    handle = app.enqueue("flowapp.waiter", str(log), "go:1")
    worker = spawn_worker(module="flowapp", concurrency=1)
    wait_for(lambda: handle.state == "waiting", what="the job to wait")
    worker.signal(signal.SIGKILL)
    assert worker.wait() == -signal.SIGKILL

    assert app.signal("go:1", "payload") == 1
    app.run_worker(until_idle=True)
    assert handle.result(timeout=5) == "first then last(payload) by test"
    assert body_runs(log) == {("first", "subprocess"): 1, ("last", "test"): 1}


def test_a_signal_sent_while_the_killed_job_awaits_its_rescue_is_kept(
    db_url: str, tmp_path: Path, spawn_worker
) -> None:
    """SIGKILL before the wait parks; a signal sent meanwhile is taken by the resumed job."""
    log = tmp_path / "flow.log"
    Path(f"{log}.hang-before-park").touch()
    app = flowapp.build_app(db_url, lease=1.0)
    handle = app.enqueue("flowapp.waiter", str(log), "go:2")
    worker = spawn_worker(module="flowapp", concurrency=1)
    wait_for(Path(f"{log}.before-park").exists, what="the job to reach its wait")
    worker.signal(signal.SIGKILL)
    assert worker.wait() == -signal.SIGKILL
    assert app.signal("go:2", "kept") == 0

    app.run_worker(until_idle=True)  # rescues the job once its lease expired
    assert handle.result(timeout=5) == "first then last(kept) by test"
    assert body_runs(log) == {("first", "subprocess"): 1, ("last", "test"): 1}
