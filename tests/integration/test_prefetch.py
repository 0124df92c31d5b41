"""Claiming ahead and group commit: a worker on short jobs claims more than its free slots,
never runs more than its concurrency, gives held jobs back when it stops, and does not
claim ahead for long jobs."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from waiting import wait_for

from stepstone import App, Worker
from stepstone._completion import GroupCommit
from stepstone.types import Outcome


def counting_claims(app: App) -> list[int]:
    """The limit of every claim the app's store is asked for (the store itself is real)."""
    limits: list[int] = []
    claim = app.store.job_claim_due

    def counted(**kwargs: object) -> object:
        limits.append(int(kwargs["limit"]))  # type: ignore[call-overload]
        return claim(**kwargs)  # type: ignore[arg-type]

    app.store.job_claim_due = counted  # type: ignore[method-assign]
    return limits


def test_short_jobs_are_claimed_ahead_and_all_run_once(make_app: Callable[..., App]) -> None:
    """After the first short jobs, claims ask for more than the free slots; every job
    runs exactly once and no more than `concurrency` run at the same time."""
    app = make_app(poll_interval=0.05)
    active, most, ran = [0], [0], []
    lock = threading.Lock()

    @app.job(name="quick")
    def quick(n: int) -> int:
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        time.sleep(0.001)
        with lock:
            active[0] -= 1
            ran.append(n)
        return n

    app.enqueue_many(quick, [(n,) for n in range(200)])
    limits = counting_claims(app)
    Worker(app, concurrency=2, until_idle=True, prefetch=64).run()
    assert sorted(ran) == list(range(200))
    assert most[0] <= 2
    assert max(limits) > 2  # claimed ahead once the jobs proved short
    assert len(limits) < 100  # far fewer claims than jobs


def test_long_jobs_are_not_claimed_ahead(make_app: Callable[..., App]) -> None:
    """Jobs slower than the prefetch threshold are claimed one slot at a time."""
    app = make_app(poll_interval=0.05)

    @app.job(name="slow")
    def slow(n: int) -> int:
        time.sleep(0.08)
        return n

    app.enqueue_many(slow, [(n,) for n in range(5)])
    limits = counting_claims(app)
    Worker(app, concurrency=1, until_idle=True, prefetch=64).run()
    assert set(limits) <= {1}


def test_a_stopping_worker_gives_back_the_jobs_it_claimed_ahead(
    make_app: Callable[..., App],
) -> None:
    """Jobs held by a worker that stops return to `queued` at once, with no attempt used."""
    app = make_app(poll_interval=0.05)
    gate = threading.Event()
    blocked = threading.Event()

    @app.job(name="warm")
    def warm(n: int) -> int:
        return n

    @app.job(name="gated")
    def gated(n: int) -> int:
        if n == 0:
            blocked.set()
            gate.wait(10)
        return n

    app.enqueue_many(warm, [(n,) for n in range(20)])
    worker = Worker(app, concurrency=1, prefetch=64)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        wait_for(lambda: all(j.state == "succeeded" for j in app.store.job_list(limit=50)))
        handles = app.enqueue_many(gated, [(n,) for n in range(10)])
        assert blocked.wait(10)
        wait_for(lambda: worker.claim_ahead.holding, what="jobs claimed ahead")
    finally:
        worker.stop()
        gate.set()
        thread.join(10)
    states = {handle.id: handle.record() for handle in handles}
    assert states[handles[0].id].state == "succeeded"
    held = [record for record in states.values() if record.state != "succeeded"]
    assert held
    assert all(record.state == "queued" for record in held)
    Worker(app, concurrency=2, until_idle=True).run()
    assert [handle.result(timeout=5) for handle in handles] == list(range(10))
    assert all(handle.attempts == 1 for handle in handles)


def test_group_commit_writes_successes_that_arrive_together_in_one_go(app: App) -> None:
    """Sixteen runs finishing at once: every success is stored, refused ones raise, and
    the writes are grouped (fewer store calls than successes)."""

    @app.job(name="noop")
    def noop(n: int) -> int:
        return n

    handles = app.enqueue_many(noop, [(n,) for n in range(16)])
    now = app.clock.now()
    claimed = app.store.job_claim_due(
        owner="w", names=["noop"], queues=None, limit=16, now=now, lease_until=now + 60
    )
    calls: list[int] = []
    many = app.store.job_transition_many

    def counted(outcomes: list[Outcome], *, now: float) -> object:
        calls.append(len(outcomes))
        time.sleep(0.05)  # a slow write: the others queue meanwhile
        return many(outcomes, now=now)

    app.store.job_transition_many = counted  # type: ignore[method-assign]
    group = GroupCommit(lambda: app.store, app.clock)
    errors: list[BaseException] = []

    def finish(job_id: str, fence: int) -> None:
        try:
            fence = fence if job_id != claimed[0].id else fence + 1
            group.write(Outcome.complete(job_id, fence, '"ok"'))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=finish, args=(job.id, job.fence)) for job in claimed]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sum(calls) == 16  # every outcome written once
    assert len(calls) < 15  # the first write went alone or in a group; the rest grouped
    assert [type(error).__name__ for error in errors] == ["LeaseLost"]
    states = [handle.record().state for handle in handles]
    assert states.count("succeeded") == 15


def test_a_stopping_worker_leaves_no_job_claimed(make_app: Callable[..., App]) -> None:
    """Stopped in the middle of a stream of short jobs, a worker leaves every job either
    succeeded (its handed-off success written) or queued (given back): none stays
    running under its lease."""
    app = make_app(poll_interval=0.05)

    @app.job(name="quick")
    def quick(n: int) -> int:
        return n

    app.enqueue_many(quick, [(n,) for n in range(400)])
    worker = Worker(app, concurrency=4, prefetch=64)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        wait_for(
            lambda: len(app.store.job_list(states=["succeeded"], limit=1000)) >= 50,
            what="some jobs to finish",
        )
    finally:
        worker.stop()
        thread.join(20)
    states = {job.state for job in app.store.job_list(limit=1000)}
    assert states <= {"succeeded", "queued"}
    Worker(app, concurrency=4, until_idle=True).run()
    assert {job.state for job in app.store.job_list(limit=1000)} == {"succeeded"}
