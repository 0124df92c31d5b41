"""The in-process worker: threads, concurrency, async jobs, unknown jobs, graceful stop."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter

from stepstone import App
from stepstone._app import new_job_id
from stepstone._store.base import NewJob
from stepstone._worker import Worker


def test_run_worker_until_idle_in_a_non_main_thread(app: App) -> None:
    """run_worker(until_idle=True) works from a non-main thread and returns when idle."""

    @app.step
    def square(x: int) -> int:
        return x * x

    @app.job
    def job(x: int) -> int:
        return square(x)

    handles = [app.enqueue(job, x) for x in range(5)]
    errors: list[BaseException] = []

    def work() -> None:
        try:
            app.run_worker(until_idle=True)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(20)
    assert not thread.is_alive()
    assert errors == []
    assert [h.result(timeout=5) for h in handles] == [0, 1, 4, 9, 16]


def test_default_concurrency_runs_eight_sync_jobs_at_once(app: App) -> None:
    """Eight sync jobs that each wait for all eight at a barrier all succeed together."""
    barrier = threading.Barrier(8, timeout=10)

    @app.job
    def meet(n: int) -> int:
        barrier.wait()
        return n

    handles = [app.enqueue(meet, n) for n in range(8)]
    app.run_worker(until_idle=True)
    assert [h.state for h in handles] == ["succeeded"] * 8
    assert not barrier.broken


def test_concurrency_bounds_running_sync_jobs(app: App) -> None:
    """With concurrency=2 no more than two sync jobs run at the same time."""
    lock = threading.Lock()
    running = [0]
    peak = [0]

    @app.job
    def busy(n: int) -> int:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        return n

    handles = [app.enqueue(busy, n) for n in range(6)]
    app.run_worker(concurrency=2, until_idle=True)
    assert [h.result(timeout=5) for h in handles] == list(range(6))
    assert peak[0] == 2


def test_async_jobs_run_concurrently_on_the_worker_loop(app: App) -> None:
    """Async jobs run as tasks on the event loop of the worker's own thread."""
    barrier = asyncio.Barrier(5)
    seen: list[tuple[int, int]] = []

    @app.step
    async def wait_for_all(n: int) -> int:
        async with asyncio.timeout(10):
            await barrier.wait()
        return n

    @app.job
    async def meet(n: int) -> int:
        seen.append((threading.get_ident(), id(asyncio.get_running_loop())))
        return await wait_for_all(n)

    handles = [app.enqueue(meet, n) for n in range(5)]
    worker_thread: list[int] = []

    def work() -> None:
        worker_thread.append(threading.get_ident())
        app.run_worker(concurrency=5, until_idle=True)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(20)
    assert not thread.is_alive()
    assert [h.result(timeout=5) for h in handles] == list(range(5))
    assert {ident for ident, _ in seen} == set(worker_thread)
    assert len({loop for _, loop in seen}) == 1


def test_queues_limit_what_a_worker_claims(app: App) -> None:
    """A worker with queues= runs only jobs of those queues."""

    @app.job(queue="emails")
    def send() -> str:
        return "sent"

    @app.job
    def other() -> str:
        return "other"

    email = app.enqueue(send)
    rerouted = app.enqueue(other, queue="emails")
    default = app.enqueue(other)
    app.run_worker(queues=["emails"], until_idle=True)
    assert (email.state, rerouted.state, default.state) == ("succeeded", "succeeded", "queued")


def test_unregistered_job_name_stays_queued_until_an_app_declares_it(
    app: App, make_app, clock
) -> None:
    """A worker leaves a job whose name no code registered queued (it does not claim it);
    a worker of an App that declares the name runs it."""

    @app.job
    def known() -> None:
        pass

    job_id = new_job_id()
    app.store.job_insert(
        NewJob(
            id=job_id,
            name="elsewhere.only_job",
            queue="default",
            key=None,
            args='{"x": 21}',
            priority=0,
            run_at=clock.now(),
        ),
        now=clock.now(),
    )
    started = time.monotonic()
    app.run_worker(until_idle=True)
    assert time.monotonic() - started < 5.0
    handle = app.get_job(job_id)
    assert handle.state == "queued"
    assert handle.attempts == 0

    other = make_app(clock=clock)

    @other.job(name="elsewhere.only_job")
    def only_job(x: int) -> int:
        return x * 2

    other.run_worker(until_idle=True)
    assert handle.state == "succeeded"
    assert other.get_job(job_id).result(timeout=5) == 42


def test_graceful_stop_releases_the_job_at_the_next_step_boundary(app: App) -> None:
    """Worker.stop() from another thread lets the running step finish, then releases the
    job (queued, not failed); another worker completes it without rerunning that step."""
    entered, gate = threading.Event(), threading.Event()
    runs: Counter[str] = Counter()

    @app.step
    def slow() -> str:
        runs["slow"] += 1
        entered.set()
        assert gate.wait(10)
        return "slow"

    @app.step
    def fast(text: str) -> str:
        runs["fast"] += 1
        return text + "+fast"

    @app.job
    def job() -> str:
        return fast(slow())

    handle = app.enqueue(job)
    worker = Worker(app)
    thread = threading.Thread(target=worker.run)
    thread.start()
    assert entered.wait(10)
    stopper = threading.Thread(target=worker.stop)
    stopper.start()
    stopper.join(5)
    gate.set()
    thread.join(10)
    assert not thread.is_alive()
    assert handle.state == "queued"
    assert runs == {"slow": 1}
    assert [s.name for s in handle.steps()] == ["slow#0"]

    app.run_worker(until_idle=True)
    assert handle.result(timeout=5) == "slow+fast"
    assert runs == {"slow": 1, "fast": 1}
    assert handle.attempts == 1


def test_two_workers_run_each_job_exactly_once(make_app, clock) -> None:
    """Two workers (two Apps on one database) share the jobs; each job runs once."""
    runs: Counter[int] = Counter()
    lock = threading.Lock()
    apps = [make_app(clock=clock), make_app(clock=clock)]
    for each in apps:

        @each.job(name="worker.shared")
        def shared(n: int) -> int:
            with lock:
                runs[n] += 1
            time.sleep(0.001)
            return n

    handles = [apps[0].enqueue("worker.shared", n) for n in range(40)]
    threads = [
        threading.Thread(target=each.run_worker, kwargs={"concurrency": 4, "until_idle": True})
        for each in apps
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert [h.result(timeout=5) for h in handles] == list(range(40))
    assert runs == dict.fromkeys(range(40), 1)


def test_graceful_stop_releases_an_async_job_at_the_next_step_boundary(app: App) -> None:
    """Worker.stop() while an async job awaits in a step: the step finishes, the job is
    released (queued), and another worker completes it without rerunning that step."""
    entered = threading.Event()
    gate = threading.Event()
    runs: Counter[str] = Counter()

    @app.step
    async def slow() -> str:
        runs["slow"] += 1
        entered.set()
        while not gate.is_set():
            await asyncio.sleep(0.005)
        return "slow"

    @app.step
    async def fast(text: str) -> str:
        runs["fast"] += 1
        return text + "+fast"

    @app.job
    async def job() -> str:
        return await fast(await slow())

    handle = app.enqueue(job)
    worker = Worker(app)
    thread = threading.Thread(target=worker.run)
    thread.start()
    assert entered.wait(10)
    worker.stop()
    gate.set()
    thread.join(10)
    assert not thread.is_alive()
    assert handle.state == "queued"
    assert runs == {"slow": 1}

    app.run_worker(until_idle=True)
    assert handle.result(timeout=5) == "slow+fast"
    assert runs == {"slow": 1, "fast": 1}
