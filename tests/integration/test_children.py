"""Child jobs, cancellation and timeouts: a job enqueues children from its own code (once
per position of its history), parks until they finish (``handle.result()``, ``gather``),
is cancelled with its unfinished descendants, and fails with ``JobTimeout`` past its
deadline; step timeouts abandon or cancel the step's attempt."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import flowapp
import pytest
from waiting import body_runs, wait_for

import stepstone
from stepstone import (
    App,
    JobCancelled,
    JobFailed,
    JobNotFound,
    JobTimeout,
    Retry,
    Worker,
)
from stepstone.testing import EPOCH, FakeClock


@contextmanager
def background_worker(
    app: App, *, concurrency: int = 2, until_idle: bool = True
) -> Iterator[tuple[Worker, threading.Thread]]:
    """A worker running in a thread; on exit it must have stopped (until idle) within 10 s,
    else it is stopped at once and the test fails."""
    worker = Worker(app, concurrency=concurrency, until_idle=until_idle)
    thread = threading.Thread(target=worker.run, name="test-worker", daemon=True)
    thread.start()
    try:
        yield worker, thread
    finally:
        if not until_idle:
            worker.stop()
        thread.join(10)
        if thread.is_alive():
            worker.stop(now=True)
            thread.join(10)
            raise AssertionError("the background worker did not stop")


def children_of(app: App, parent_id: str, name: str) -> list[stepstone.JobHandle]:
    """The jobs named ``name`` whose parent is ``parent_id``, in the order the parent
    enqueued them (its history positions; ids of one millisecond are in no order)."""
    records = [r for r in app.store.job_list(name=name, limit=1000) if r.parent_id == parent_id]

    def position(record: object) -> tuple[float, int, str]:
        key = getattr(record, "key", None) or ""
        tail = key.rpartition("#")[2]
        return (record.created_at, int(tail) if tail.isdigit() else 0, record.id)  # type: ignore[attr-defined]

    return [app.get_job(r.id) for r in sorted(records, key=position)]


def run_until_finished(app: App, clock: FakeClock, handle: stepstone.JobHandle) -> None:
    """Run the worker until idle, moving the fake clock 10 s at a time, until ``handle``
    finished (at most 20 rounds)."""
    for _ in range(20):
        app.run_worker(until_idle=True)
        if handle.state.finished:
            return
        clock.advance(10)
    raise AssertionError(f"job {handle.id} did not finish: {handle.state}")


# --- enqueueing children ----------------------------------------------------------------------


def test_children_are_enqueued_once_per_position_across_replays(app: App, clock: FakeClock) -> None:
    """A replay gets the same children back; each has parent_id and key '<parent>/...enqueue#k'."""
    calls: Counter[str] = Counter()

    @app.job(name="kid")
    def kid(n: int) -> int:
        calls[f"kid-{n}"] += 1
        return n * n

    @app.job(name="family")
    def family() -> list[int]:
        first = [app.enqueue(kid, 1), app.enqueue(kid, 2)]
        stepstone.sleep(10)
        third = app.enqueue(kid, 3)
        return stepstone.gather(*first, third)

    parent = app.enqueue(family)
    run_until_finished(app, clock, parent)
    assert parent.result(timeout=5) == [1, 4, 9]
    kids = children_of(app, parent.id, "kid")
    assert [k.record().key for k in kids] == [
        f"{parent.id}/stepstone.enqueue#{k}" for k in range(3)
    ]
    assert len(app.store.job_list(name="kid", limit=1000)) == 3
    assert calls == {"kid-1": 1, "kid-2": 1, "kid-3": 1}
    assert [s.name for s in parent.steps()][:3] == [
        "stepstone.enqueue#0",
        "stepstone.enqueue#1",
        "stepstone.sleep#0",
    ]


def test_a_child_enqueued_with_a_key_keeps_the_users_key(app: App) -> None:
    """A child enqueued with key= is stored under that key, with the parent as parent_id."""

    @app.job(name="invoice")
    def invoice(number: int) -> str:
        return f"invoice {number}"

    @app.job(name="billing")
    def billing() -> list[str]:
        first = app.enqueue(invoice, 7, key="invoice:7")
        again = app.enqueue(invoice, 7, key="invoice:7")
        return [first.id, again.id, str(first.key), first.result()]

    parent = app.enqueue(billing)
    app.run_worker(until_idle=True)
    first_id, again_id, handle_key, value = parent.result(timeout=5)
    child = app.get_job_by_key("invoice:7")
    assert first_id == again_id == child.id
    assert (handle_key, value) == ("invoice:7", "invoice 7")
    assert child.record().parent_id == parent.id


def test_the_handle_of_a_child_carries_its_deterministic_key(app: App) -> None:
    """The handle enqueue() returns in a job carries the child's deterministic key."""

    @app.job(name="leaf")
    def leaf() -> int:
        return 1

    @app.job(name="root")
    def root() -> list[str | None]:
        handle = app.enqueue(leaf)
        return [handle.id, handle.key]

    parent = app.enqueue(root)
    app.run_worker(until_idle=True)
    child_id, handle_key = parent.result(timeout=5)
    assert app.get_job(child_id).record().key == f"{parent.id}/stepstone.enqueue#0"
    assert handle_key == f"{parent.id}/stepstone.enqueue#0"


def test_result_parks_the_parent_and_frees_its_worker_slot(app: App) -> None:
    """handle.result() parks the parent (its slot runs the child) and returns the child's value."""
    calls: Counter[str] = Counter()
    seen: list[tuple[str, str | None]] = []

    @app.step
    def prepare() -> int:
        calls["prepare"] += 1
        return 2

    @app.job(name="worker_child")
    def worker_child(parent_id: str) -> int:
        record = app.store.job_get(parent_id)
        assert record is not None
        seen.append((record.state.value, record.lease_owner))
        return 40

    @app.job(name="waiting_parent")
    def waiting_parent() -> int:
        base = prepare()
        child = app.enqueue(worker_child, stepstone.current().job_id)
        return base + child.result()

    parent = app.enqueue(waiting_parent)
    app.run_worker(concurrency=1, until_idle=True)
    assert parent.result(timeout=5) == 42
    assert seen == [("waiting", None)]
    assert calls == {"prepare": 1}
    assert [s.name for s in parent.steps()] == [
        "prepare#0",
        "stepstone.enqueue#0",
        "stepstone.result.start#0",
        "stepstone.result#0",
    ]


def test_a_failed_child_raises_job_failed_in_the_parent(app: App) -> None:
    """A failed child raises JobFailed (caused by its error) in the parent, which catches it."""

    @app.job(name="fragile", retry=Retry(max_attempts=1))
    def fragile(text: str) -> int:
        return int(text)

    @app.job(name="guardian")
    def guardian() -> str:
        try:
            return f"got {app.enqueue(fragile, 'x').result()}"
        except JobFailed as exc:
            return f"caught {type(exc.__cause__).__name__}: {exc.__cause__}"

    parent = app.enqueue(guardian)
    app.run_worker(until_idle=True)
    assert parent.result(timeout=5) == (
        "caught ValueError: invalid literal for int() with base 10: 'x'"
    )


def test_result_with_a_timeout_raises_wait_timeout_in_the_parent(
    app: App, clock: FakeClock
) -> None:
    """handle.result(timeout=) in a job raises WaitTimeout past the timeout while the child runs."""

    @app.job(name="slowpoke")
    def slowpoke() -> str:
        stepstone.sleep(120)
        return "finally"

    @app.job(name="impatient")
    def impatient() -> str:
        child = app.enqueue(slowpoke)
        try:
            return child.result(timeout=30)
        except stepstone.WaitTimeout:
            return "gave up"

    parent = app.enqueue(impatient)
    app.run_worker(until_idle=True)
    assert parent.record().run_at == pytest.approx(EPOCH + 30)
    clock.advance(30)
    app.run_worker(until_idle=True)
    assert parent.result(timeout=5) == "gave up"
    (child,) = children_of(app, parent.id, "slowpoke")
    assert child.state == "waiting"


def test_gather_returns_the_results_in_the_order_of_the_handles(app: App, clock: FakeClock) -> None:
    """gather() parks until all children finished (in reverse) and returns results in order."""

    @app.job(name="napper")
    def napper(n: int) -> int:
        stepstone.sleep(10 * (3 - n))
        return n * 10

    @app.job(name="fan")
    def fan() -> list[int]:
        return stepstone.gather(*[app.enqueue(napper, n) for n in range(3)])

    parent = app.enqueue(fan)
    app.run_worker(until_idle=True)
    assert parent.state == "waiting"
    run_until_finished(app, clock, parent)
    assert parent.result(timeout=5) == [0, 10, 20]
    kids = children_of(app, parent.id, "napper")
    assert sorted(k.result(timeout=5) for k in kids) == [0, 10, 20]


def test_gather_with_a_failing_child_raises_once_all_finished(app: App, clock: FakeClock) -> None:
    """gather() raises JobFailed for a failed child only after every child finished."""

    @app.job(name="maybe", retry=Retry(max_attempts=1))
    def maybe(n: int) -> int:
        if n == 1:
            raise RuntimeError(f"child {n} broke")
        if n == 2:
            stepstone.sleep(30)
        return n

    @app.job(name="gatherer")
    def gatherer() -> str:
        handles = [app.enqueue(maybe, n) for n in range(3)]
        try:
            stepstone.gather(*handles)
        except JobFailed as exc:
            slow = handles[2].state.value
            return f"{exc} / slow child {slow}"
        return "no failure"

    parent = app.enqueue(gatherer)
    app.run_worker(until_idle=True)
    kids = children_of(app, parent.id, "maybe")
    assert [k.state for k in kids] == ["succeeded", "failed", "waiting"]
    assert parent.state == "waiting"  # a child failed, but one still runs
    run_until_finished(app, clock, parent)
    message = parent.result(timeout=5)
    assert "child 1 broke" in message
    assert kids[1].id in message
    assert message.endswith("/ slow child succeeded")


def test_gather_outside_a_job_blocks_until_the_jobs_finished(app: App) -> None:
    """Outside a job gather() blocks until the jobs finished and returns results in order."""

    @app.job(name="square")
    def square(n: int) -> int:
        return n * n

    handles = [app.enqueue(square, n) for n in (3, 1, 2)]
    with background_worker(app):
        assert stepstone.gather(*handles) == [9, 1, 4]


def test_an_async_parent_awaits_its_children(app: App) -> None:
    """An async parent awaits handle.result_async() and stepstone.gather() by parking."""
    calls: Counter[str] = Counter()

    @app.step
    async def setup() -> int:
        calls["setup"] += 1
        return 100

    @app.job(name="async_kid")
    async def async_kid(n: int) -> int:
        await asyncio.sleep(0)
        return n + 1

    @app.job(name="async_parent")
    async def async_parent() -> list[int]:
        base = await setup()
        one = await app.enqueue(async_kid, 0).result_async()
        rest = await stepstone.gather(app.enqueue(async_kid, 1), app.enqueue(async_kid, 2))
        return [base, one, *rest]

    parent = app.enqueue(async_parent)
    app.run_worker(concurrency=1, until_idle=True)
    assert parent.result(timeout=5) == [100, 1, 2, 3]
    assert calls == {"setup": 1}
    assert len(children_of(app, parent.id, "async_kid")) == 3


def test_enqueue_inside_a_step_is_a_plain_enqueue(app: App) -> None:
    """enqueue() inside a step body is unchecked: every attempt enqueues, no parent, no key."""
    attempts: list[str] = []

    @app.job(name="side_job")
    def side_job() -> str:
        return "side"

    @app.step(retry=Retry(max_attempts=2, initial=0.0))
    def spawn() -> str:
        handle = app.enqueue(side_job)
        attempts.append(handle.id)
        if len(attempts) == 1:
            raise ConnectionError("after the enqueue")
        return handle.id

    @app.job(name="spawner")
    def spawner() -> str:
        return spawn()

    parent = app.enqueue(spawner)
    app.run_worker(until_idle=True)
    assert parent.result(timeout=5) == attempts[1]
    records = app.store.job_list(name="side_job", limit=100)
    assert sorted(r.id for r in records) == sorted(attempts)
    assert {(r.parent_id, r.key, r.state.value) for r in records} == {(None, None, "succeeded")}


def test_a_killed_parent_does_not_enqueue_its_children_again(
    db_url: str, tmp_path: Path, spawn_worker
) -> None:
    """SIGKILL after the parent enqueued children: its replay adds none; each child ran once."""
    log = tmp_path / "flow.log"
    Path(f"{log}.hang-before-park").touch()
    app = flowapp.build_app(db_url, lease=1.0)
    parent = app.enqueue("flowapp.parent", str(log), 3)
    worker = spawn_worker(module="flowapp", concurrency=1)
    wait_for(Path(f"{log}.before-park").exists, what="the parent to enqueue its children")
    assert [c.state for c in children_of(app, parent.id, "flowapp.child")] == ["queued"] * 3
    worker.signal(signal.SIGKILL)
    assert worker.wait() == -signal.SIGKILL

    app.run_worker(until_idle=True)  # rescues the parent once its lease expired
    assert parent.result(timeout=5) == [5, 0, 10, 20]
    children = children_of(app, parent.id, "flowapp.child")
    assert len(app.store.job_list(name="flowapp.child", limit=100)) == 3
    assert [c.record().key for c in children] == [
        f"{parent.id}/stepstone.enqueue#{k}" for k in range(3)
    ]
    assert body_runs(log) == {
        ("first", "subprocess"): 1,
        ("child-0", "test"): 1,
        ("child-1", "test"): 1,
        ("child-2", "test"): 1,
    }


# --- cancellation -----------------------------------------------------------------------------


def test_a_cancelled_queued_job_never_runs(app: App) -> None:
    """A cancelled queued job never runs; cancel again is False; an unknown id is JobNotFound."""
    calls: list[str] = []

    @app.job(name="doomed")
    def doomed() -> str:
        calls.append("ran")
        return "ran"

    handle = app.enqueue(doomed)
    assert app.cancel(handle.id) is True
    assert handle.state == "cancelled"
    app.run_worker(until_idle=True)
    assert calls == []
    with pytest.raises(JobCancelled):
        handle.result(timeout=5)
    assert app.cancel(handle.id) is False
    with pytest.raises(JobNotFound):
        app.cancel("no-such-job")


def test_a_cancelled_sleeping_job_never_resumes(app: App, clock: FakeClock) -> None:
    """A job cancelled while it sleeps never wakes: the step after the sleep never runs."""
    calls: Counter[str] = Counter()

    @app.step
    def step_before() -> None:
        calls["before"] += 1

    @app.step
    def step_after() -> None:
        calls["after"] += 1

    @app.job(name="sleeper")
    def sleeper() -> None:
        step_before()
        stepstone.sleep(60)
        step_after()

    handle = app.enqueue(sleeper)
    app.run_worker(until_idle=True)
    assert handle.state == "waiting"
    assert app.cancel(handle.id) is True
    clock.advance(120)
    app.run_worker(until_idle=True)
    assert handle.state == "cancelled"
    assert calls == {"before": 1}


def test_cancelling_a_parent_cancels_its_unfinished_descendants(app: App, clock: FakeClock) -> None:
    """cancel(parent) cancels unfinished children and grandchildren, not a finished child."""
    calls: Counter[str] = Counter()

    @app.job(name="quick")
    def quick() -> str:
        calls["quick"] += 1
        return "quick"

    @app.job(name="grandchild")
    def grandchild() -> str:
        calls["grandchild"] += 1
        stepstone.sleep(60)
        calls["grandchild woke"] += 1
        return "grandchild"

    @app.job(name="middle")
    def middle() -> str:
        calls["middle"] += 1
        return app.enqueue(grandchild).result()

    @app.job(name="elder")
    def elder() -> list[str]:
        calls["elder"] += 1
        return stepstone.gather(app.enqueue(quick), app.enqueue(middle))

    parent = app.enqueue(elder)
    app.run_worker(until_idle=True)
    (done,) = children_of(app, parent.id, "quick")
    (mid,) = children_of(app, parent.id, "middle")
    (grand,) = children_of(app, mid.id, "grandchild")
    assert [h.state for h in (parent, done, mid, grand)] == [
        "waiting",
        "succeeded",
        "waiting",
        "waiting",
    ]
    runs_before = Counter(calls)

    assert app.cancel(parent.id) is True
    assert [h.state for h in (parent, done, mid, grand)] == [
        "cancelled",
        "succeeded",
        "cancelled",
        "cancelled",
    ]
    assert app.cancel(done.id) is False
    clock.advance(120)
    app.run_worker(until_idle=True)
    assert calls == runs_before
    assert calls["grandchild woke"] == 0


def test_a_cancelled_child_raises_job_cancelled_in_its_parent(app: App) -> None:
    """Cancelling a child wakes its waiting parent, which gets JobCancelled."""

    @app.job(name="hold")
    def hold() -> str:
        return stepstone.wait_for("never")

    @app.job(name="holder")
    def holder() -> str:
        child = app.enqueue(hold)
        try:
            return child.result()
        except JobCancelled:
            return f"child {child.id} cancelled"

    parent = app.enqueue(holder)
    app.run_worker(until_idle=True)
    (child,) = children_of(app, parent.id, "hold")
    assert (parent.state, child.state) == ("waiting", "waiting")
    assert app.cancel(child.id) is True
    assert parent.state == "queued"  # woken by the child's end
    app.run_worker(until_idle=True)
    assert parent.result(timeout=5) == f"child {child.id} cancelled"


def test_a_running_sync_job_stops_at_its_next_step_boundary(app: App) -> None:
    """A cancelled running sync job stops at its next step boundary; later steps never run."""
    started, release = threading.Event(), threading.Event()
    calls: list[str] = []

    @app.step
    def blocking() -> str:
        calls.append("blocking")
        started.set()
        release.wait(10)
        return "blocking done"

    @app.step
    def later() -> str:
        calls.append("later")
        return "later"

    @app.job(name="long_sync", retry=Retry(max_attempts=3, initial=0.0))
    def long_sync() -> str:
        try:
            blocking()
        except Exception as exc:
            calls.append(f"caught {type(exc).__name__}")
        return later()

    handle = app.enqueue(long_sync)
    with background_worker(app):
        try:
            assert started.wait(10)
            assert app.cancel(handle.id) is True
            assert handle.state == "cancelled"
        finally:
            release.set()
    assert calls == ["blocking", "caught JobCancelled"]
    assert handle.state == "cancelled"
    assert handle.steps() == []
    assert handle.attempts == 1


def test_a_running_async_job_is_cancelled_at_once(app: App) -> None:
    """A cancelled running async job is cancelled at once: its awaited sleep gets CancelledError."""
    started = threading.Event()
    seen: list[str] = []

    @app.step
    async def wait_long() -> str:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise
        return "slept"

    @app.step
    async def afterwards() -> str:
        seen.append("afterwards")
        return "afterwards"

    @app.job(name="long_async")
    async def long_async() -> str:
        return await wait_long() + await afterwards()

    handle = app.enqueue(long_async)
    with background_worker(app) as (_, thread):
        assert started.wait(10)
        cancelled_at = time.monotonic()
        assert app.cancel(handle.id) is True
        thread.join(5)
        assert not thread.is_alive()
        assert time.monotonic() - cancelled_at < 5
    assert seen == ["cancelled"]
    assert handle.state == "cancelled"
    assert handle.steps() == []


# --- timeouts ---------------------------------------------------------------------------------


def test_the_job_timeout_counts_from_the_first_start_across_a_park(
    app: App, clock: FakeClock
) -> None:
    """timeout= counts from the first start across a park: JobTimeout, failed, not retried."""
    calls: Counter[str] = Counter()

    @app.step
    def early() -> None:
        calls["early"] += 1

    @app.step
    def late() -> None:
        calls["late"] += 1

    @app.job(name="bounded", timeout=60, retry=Retry(max_attempts=5, initial=0.0))
    def bounded() -> str:
        early()
        stepstone.sleep(300)
        late()
        return "done"

    handle = app.enqueue(bounded, delay=30)
    clock.advance(30)
    app.run_worker(until_idle=True)
    record = handle.record()
    assert record.state == "waiting"
    assert record.run_at == pytest.approx(EPOCH + 30 + 60)  # wakes at its deadline

    clock.advance(61)
    app.run_worker(until_idle=True)
    assert handle.state == "failed"
    assert handle.attempts == 1
    with pytest.raises(JobFailed) as failed:
        handle.result(timeout=5)
    assert isinstance(failed.value.__cause__, JobTimeout)
    assert isinstance(failed.value.__cause__, TimeoutError)
    assert calls == {"early": 1}
    assert [e.type for e in handle.errors()] == ["stepstone.errors.JobTimeout"]


def test_a_job_woken_exactly_at_its_deadline_times_out(app: App, clock: FakeClock) -> None:
    """A job woken exactly at its deadline fails with JobTimeout instead of parking again."""

    @app.job(name="exact", timeout=60)
    def exact() -> str:
        stepstone.sleep(300)
        return "done"

    handle = app.enqueue(exact)
    app.run_worker(until_idle=True)
    assert handle.record().run_at == pytest.approx(EPOCH + 60)
    clock.advance(60)
    worker = Worker(app, until_idle=True)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    thread.join(3)
    if thread.is_alive():
        worker.stop(now=True)
        thread.join(10)
    record = handle.record()
    assert (record.state, record.fence) == ("failed", 2)


def test_the_job_timeout_is_checked_at_every_step_boundary(app: App, clock: FakeClock) -> None:
    """Past the job's deadline the next step call fails the job with JobTimeout."""
    calls: list[str] = []

    @app.step
    def long_step() -> str:
        calls.append("long")
        clock.advance(61)  # the step takes a minute
        return "long"

    @app.step
    def next_step() -> str:
        calls.append("next")
        return "next"

    @app.job(name="overrun", timeout=60)
    def overrun() -> str:
        return long_step() + next_step()

    handle = app.enqueue(overrun)
    app.run_worker(until_idle=True)
    assert (handle.state, handle.attempts) == ("failed", 1)
    assert calls == ["long"]
    assert [s.name for s in handle.steps()] == ["long_step#0"]
    with pytest.raises(JobFailed, match="JobTimeout"):
        handle.result(timeout=5)


def test_a_job_waiting_for_a_signal_wakes_at_its_deadline_to_fail(
    app: App, clock: FakeClock
) -> None:
    """A job waiting for a signal wakes at its job deadline and fails with JobTimeout."""

    @app.job(name="waits_too_long", timeout=60)
    def waits_too_long() -> object:
        return stepstone.wait_for("never-sent")

    handle = app.enqueue(waits_too_long)
    app.run_worker(until_idle=True)
    assert handle.record().run_at == pytest.approx(EPOCH + 60)
    clock.advance(61)
    app.run_worker(until_idle=True)
    assert handle.state == "failed"
    assert handle.errors()[-1].type == "stepstone.errors.JobTimeout"


def test_the_job_timeout_counts_across_attempts(app: App, clock: FakeClock) -> None:
    """An attempt retried after the deadline fails with JobTimeout at its start, not retried."""
    calls: list[str] = []

    @app.step(retry=Retry(max_attempts=1))
    def flaky() -> str:
        calls.append("flaky")
        raise ConnectionError("down")

    @app.job(
        name="retried_past_deadline",
        timeout=50,
        retry=Retry(max_attempts=5, initial=100, jitter=False),
    )
    def retried_past_deadline() -> str:
        return flaky()

    handle = app.enqueue(retried_past_deadline)
    app.run_worker(until_idle=True)
    assert (handle.state, handle.record().run_at) == ("queued", pytest.approx(EPOCH + 100))
    clock.advance(100)
    app.run_worker(until_idle=True)
    assert (handle.state, handle.attempts) == ("failed", 2)
    assert calls == ["flaky"]
    assert handle.errors()[-1].type == "stepstone.errors.JobTimeout"


def test_an_async_job_past_its_deadline_is_cancelled(make_app: Callable[..., App]) -> None:
    """An async job at its deadline is cancelled and fails with JobTimeout, not retried."""
    app = make_app()
    seen: list[str] = []

    @app.step
    async def forever() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    @app.job(name="async_bounded", timeout=0.3)
    async def async_bounded() -> str:
        await forever()
        return "done"

    handle = app.enqueue(async_bounded)
    started = time.monotonic()
    app.run_worker(until_idle=True)
    assert time.monotonic() - started < 5
    assert (handle.state, handle.attempts) == ("failed", 1)
    assert seen == ["cancelled"]
    with pytest.raises(JobFailed, match="JobTimeout"):
        handle.result(timeout=5)


def test_an_async_step_timeout_is_retried_per_the_steps_retry(app: App) -> None:
    """An async step over its timeout gets TimeoutError, is retried, and then succeeds."""
    attempts: list[int] = []

    @app.step(timeout=0.1, retry=Retry(max_attempts=3, initial=0.0))
    async def call_api() -> str:
        attempts.append(len(attempts) + 1)
        if len(attempts) == 1:
            await asyncio.sleep(30)
        return f"answered on attempt {len(attempts)}"

    @app.job(name="api_job", retry=Retry(max_attempts=1))
    async def api_job() -> str:
        return await call_api()

    handle = app.enqueue(api_job)
    started = time.monotonic()
    app.run_worker(until_idle=True)
    assert time.monotonic() - started < 5
    assert handle.result(timeout=5) == "answered on attempt 2"
    assert attempts == [1, 2]
    errors = handle.errors()
    assert [(e.step, e.type) for e in errors] == [("call_api#0 attempt 1", "builtins.TimeoutError")]
    assert handle.steps()[0].attempts == 2


def test_a_sync_step_timeout_abandons_the_attempt(make_app: Callable[..., App]) -> None:
    """A sync step over its timeout: StepTimeout, attempt retried, the late value never stored."""
    app = make_app()
    started, release, returned = threading.Event(), threading.Event(), threading.Event()
    calls: list[int] = []

    @app.step(timeout=0.2, retry=Retry(max_attempts=1))
    def stuck() -> str:
        calls.append(len(calls) + 1)
        if len(calls) == 1:
            started.set()
            release.wait(10)
            returned.set()
            return "late value"
        return "fresh value"

    @app.job(name="stuck_job", retry=Retry(max_attempts=3, initial=0.0))
    def stuck_job() -> str:
        return stuck()

    handle = app.enqueue(stuck_job)
    with background_worker(app, concurrency=1):
        try:
            assert started.wait(10)
            wait_for(lambda: handle.state == "queued", timeout=5, what="the step to time out")
            record = handle.record()
            assert (record.state, record.lease_owner) == ("queued", None)
            assert [(e.step, e.type) for e in handle.errors()] == [
                ("stuck#0 attempt 1", "stepstone.errors.StepTimeout"),  # the step's attempt
                (None, "stepstone.errors.StepTimeout"),  # the job's attempt
            ]
            assert handle.steps() == []
        finally:
            release.set()
        assert returned.wait(5)
    assert handle.result(timeout=5) == "fresh value"
    assert calls == [1, 2]
    assert handle.attempts == 2
    assert [(s.name, s.value, s.attempts) for s in handle.steps()] == [
        ("stuck#0", "fresh value", 1)
    ]


def test_an_abandoned_step_keeps_its_worker_slot_until_its_body_returns(
    make_app: Callable[..., App],
) -> None:
    """A thread still running an abandoned step body keeps its slot: no over-claiming."""
    app = make_app()
    started, release = threading.Event(), threading.Event()
    first_started, first_release = threading.Event(), threading.Event()
    calls: list[int] = []

    @app.step(timeout=0.2, retry=Retry(max_attempts=1))
    def stuck() -> str:
        calls.append(len(calls) + 1)
        if len(calls) == 1:
            started.set()
            release.wait(10)
        return "value"

    @app.job(name="stuck_job", retry=Retry(max_attempts=3, initial=0.0))
    def stuck_job() -> str:
        return stuck()

    ran: list[int] = []

    @app.job(name="next_job")
    def next_job(n: int) -> int:
        ran.append(n)
        if n == 0:
            first_started.set()
            first_release.wait(10)
        return n

    abandoned = app.enqueue(stuck_job)
    with background_worker(app, concurrency=2, until_idle=False):
        try:
            assert started.wait(10)
            wait_for(lambda: abandoned.state == "succeeded", timeout=5, what="the retry")
            first = app.enqueue(next_job, 0)
            second = app.enqueue(next_job, 1)
            assert first_started.wait(10)
            time.sleep(0.3)  # a worker with a free slot would start the second job now
            assert ran == [0]  # (it may be claimed ahead, but it does not run)
        finally:
            release.set()
            first_release.set()
        assert (first.result(timeout=10), second.result(timeout=10)) == (0, 1)
