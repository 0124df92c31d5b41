"""Flow control through the public API: concurrency limits, rate limits, debounce, queues
and priority, in one process (a fake clock) and across real worker processes."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import limitsapp
import pytest
from tests.conftest import INTEGRATION, SRC
from waiting import wait_for

import stepstone
from stepstone import App, JobState, Limit, Rate
from stepstone.testing import EPOCH, FakeClock


def unique(prefix: str) -> str:
    """A name of this test's own (PostgreSQL's advisory locks are server-wide)."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def intervals(log: Path, prefix: str) -> dict[str, tuple[float, float]]:
    """(start, end) wall times of each body whose tag starts with ``prefix``, by tag."""
    starts: dict[str, float] = {}
    found: dict[str, tuple[float, float]] = {}
    for event, tag, _role, _pid, when in limitsapp.events(log):
        if not tag.startswith(prefix):
            continue
        if event == "start":
            starts[tag] = when
        elif event == "end":
            found[tag] = (starts[tag], when)
    return found


def over_the_bound(
    times: list[float], n: int, per: float, slack: float = 0.0
) -> list[tuple[int, float]]:
    """The windows that break ``Rate(n, per)``: no ``per`` seconds may hold more than ``n``
    calls (``slack`` seconds are taken off each window, for calls whose time was written a
    moment after their token was taken). Returns (calls, start) of each offending window."""
    ordered = sorted(times)
    found = []
    for first in ordered:
        inside = [t for t in ordered if first <= t < first + per - slack - 1e-6]
        if len(inside) > n:
            found.append((len(inside), first))
    return found


# === concurrency limits ========================================================================


def test_two_workers_run_one_job_per_channel_at_a_time(
    db_url: str, tmp_path: Path, spawn_worker
) -> None:
    """Limit(1, key="{channel}") over two processes: channels in parallel, each one at a time."""
    log = tmp_path / "channels.log"
    app = limitsapp.build_app(db_url)
    channels = [unique("c0"), unique("c1")]
    handles = [
        app.enqueue("limits.channel", channel, index, str(log), 0.12)
        for index in range(5)
        for channel in channels
    ]
    workers = [spawn_worker(module="limitsapp", concurrency=4, until_idle=True) for _ in range(2)]
    for worker in workers:
        assert worker.wait(timeout=60) == 0, worker.stderr()
    assert [handle.state for handle in handles] == [JobState.SUCCEEDED] * 10
    by_channel = {
        channel: sorted(intervals(log, channel).values(), key=lambda span: span[0])
        for channel in channels
    }
    for channel, spans in by_channel.items():
        assert len(spans) == 5, channel
        for earlier, later in itertools.pairwise(spans):
            assert later[0] >= earlier[1], f"{channel}: {earlier} overlaps {later}"
    assert any(
        max(a[0], b[0]) < min(a[1], b[1])
        for a in by_channel[channels[0]]
        for b in by_channel[channels[1]]
    ), "the two channels never ran at the same time"


def test_a_limit_without_a_key_caps_the_job_as_a_whole(make_app: Callable[..., App]) -> None:
    """Limit(2) without key: two workers of concurrency 4 run two of the job at once, never more."""
    lock = threading.Lock()
    seen = {"active": 0, "max": 0}

    def declare(app: App) -> Any:
        @app.job(name=unique_name, concurrency=Limit(2))
        def pooled(index: int) -> int:
            with lock:
                seen["active"] += 1
                seen["max"] = max(seen["max"], seen["active"])
            time.sleep(0.08)
            with lock:
                seen["active"] -= 1
            return index

        return pooled

    unique_name = unique("pooled")
    apps = [make_app(poll_interval=0.05), make_app(poll_interval=0.05)]
    jobs = [declare(app) for app in apps]
    handles = [apps[0].enqueue(jobs[0], index) for index in range(8)]
    threads = [
        threading.Thread(target=app.run_worker, kwargs={"concurrency": 4, "until_idle": True})
        for app in apps
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert [handle.result(timeout=5) for handle in handles] == list(range(8))
    assert seen["max"] == 2


def test_jobs_over_the_limit_stay_queued_while_the_slot_is_taken(app: App) -> None:
    """Jobs of a key over its limit stay queued (unclaimed, unfailed) while the slot is taken."""
    snapshots: list[dict[str, tuple[str, JobState, int]]] = []

    @app.job(name="sync_customer", concurrency=Limit(1, key="{customer}"))
    def sync_customer(customer: str, batch: int) -> str:
        snapshots.append(
            {
                r.id: (r.args, r.state, r.attempts)
                for r in app.store.job_list(name="sync_customer", limit=100)
            }
        )
        return f"{customer}/{batch}"

    acme = [app.enqueue(sync_customer, "acme", batch) for batch in range(3)]
    bolt = app.enqueue(sync_customer, "bolt", 0)
    app.run_worker(concurrency=4, until_idle=True)
    assert [h.result(timeout=5) for h in acme] == ["acme/0", "acme/1", "acme/2"]
    assert bolt.result(timeout=5) == "bolt/0"
    assert len(snapshots) == 4
    acme_ids = {h.id for h in acme}
    for snapshot in snapshots:
        states = [snapshot[job_id][1] for job_id in acme_ids]
        assert states.count(JobState.RUNNING) <= 1
        for job_id in acme_ids:
            _args, state, attempts = snapshot[job_id]
            if state == JobState.QUEUED:
                assert attempts == 0
            assert state in (JobState.QUEUED, JobState.RUNNING, JobState.SUCCEEDED)
    for handle in [*acme, bolt]:
        assert handle.attempts == 1
        assert handle.errors() == []


def test_a_sleeping_job_holds_no_slot(app: App, clock: FakeClock) -> None:
    """Under Limit(1), a durably sleeping job frees its slot: the next job starts meanwhile."""
    order: list[str] = []

    @app.job(name="nap", concurrency=Limit(1))
    def nap(tag: str) -> str:
        order.append(f"before {tag}")
        stepstone.sleep(60)
        order.append(f"after {tag}")
        return tag

    first, second = app.enqueue(nap, "one"), app.enqueue(nap, "two")
    app.run_worker(concurrency=4, until_idle=True)
    assert (first.state, second.state) == (JobState.WAITING, JobState.WAITING)
    assert order == ["before one", "before two"]
    assert first.record().run_at == second.record().run_at == EPOCH + 60
    clock.advance(60)
    app.run_worker(concurrency=4, until_idle=True)
    assert (first.result(timeout=5), second.result(timeout=5)) == ("one", "two")
    assert order[2:] in (
        ["before one", "after one", "before two", "after two"],
        ["before two", "after two", "before one", "after one"],
    )


def test_app_run_obeys_the_limit(make_app: Callable[..., App], clock: FakeClock) -> None:
    """A second app.run of a Limit(1) job (another thread and App) waits queued for the first."""
    events: list[str] = []
    started, release = threading.Event(), threading.Event()
    name = unique("exclusive")

    def declare(app: App) -> Any:
        @app.job(name=name, concurrency=Limit(1))
        def exclusive(tag: str) -> str:
            events.append(f"start {tag}")
            if tag == "first":
                started.set()
                release.wait(10)
            events.append(f"end {tag}")
            return tag

        return exclusive

    apps = [make_app(clock=clock), make_app(clock=clock)]
    jobs = [declare(app) for app in apps]
    results: dict[str, Any] = {}

    def run(index: int, tag: str) -> None:
        results[tag] = apps[index].run(jobs[index], tag)

    first = threading.Thread(target=run, args=(0, "first"))
    first.start()
    assert started.wait(10)
    second = threading.Thread(target=run, args=(1, "second"))
    second.start()
    wait_for(lambda: len(apps[0].store.job_list(name=name)) == 2, what="the second job")
    time.sleep(0.3)
    queued = [r for r in apps[0].store.job_list(name=name) if r.args == '{"tag":"second"}']
    assert [r.state for r in queued] == [JobState.QUEUED]
    assert events == ["start first"]
    release.set()
    first.join(10)
    second.join(10)
    assert results == {"first": "first", "second": "second"}
    assert events == ["start first", "end first", "start second", "end second"]


def test_a_killed_holder_gives_its_slot_back_when_its_lease_expires(
    db_url: str, tmp_path: Path, spawn_worker
) -> None:
    """A SIGKILLed holder keeps its slot until its lease expires; then both jobs run elsewhere."""
    log = tmp_path / "hold.log"
    group = unique("group")
    app = limitsapp.build_app(db_url, lease=3.0)
    first = app.enqueue("limits.hold", group, "first", str(log))
    second = app.enqueue("limits.hold", group, "second", str(log))
    worker = spawn_worker(module="limitsapp", lease=3.0, concurrency=2)
    wait_for(Path(f"{log}.holding").exists, what="the subprocess to hold the slot")
    time.sleep(0.3)  # the worker has a free slot: it must leave the second job alone
    assert (first.state, second.state) == (JobState.RUNNING, JobState.QUEUED)
    assert second.attempts == 0
    worker.signal(signal.SIGKILL)
    assert worker.wait() == -signal.SIGKILL

    now = time.time()
    assert (
        app.store.job_claim_due(
            owner="probe",
            names=["limits.hold"],
            queues=None,
            limit=5,
            now=now,
            lease_until=now + 3,
            limited=["limits.hold"],
        )
        == []
    ), "a dead worker's live lease still holds the slot"

    later = limitsapp.build_app(db_url, lease=3.0, clock=FakeClock(time.time() + 4))
    later.run_worker(concurrency=2, until_idle=True)
    assert first.result(timeout=5) == "first by test"
    assert second.result(timeout=5) == "second by test"
    assert first.attempts == 1  # resumed as a replay of the killed attempt
    spans = intervals(log, "")
    assert set(spans) == {"first", "second"}  # each ended once, in this process


def test_a_worker_held_back_by_a_limit_waits_instead_of_spinning(
    make_app: Callable[..., App], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An idle worker whose due job is held at its limit waits rather than claiming in a loop."""
    name = unique("held")
    started, release = threading.Event(), threading.Event()

    def declare(app: App) -> Any:
        @app.job(name=name, concurrency=Limit(1))
        def held(tag: str) -> str:
            if tag == "holder":
                started.set()
                release.wait(10)
            return tag

        return held

    holder_app, worker_app = make_app(), make_app(poll_interval=0.2)
    holder_job, worker_job = declare(holder_app), declare(worker_app)
    holder = threading.Thread(target=holder_app.run, args=(holder_job, "holder"))
    holder.start()
    assert started.wait(10)
    waiting = worker_app.enqueue(worker_job, "waiting")
    claims: list[float] = []
    original = worker_app.store.job_claim_due

    def counting(**kwargs: Any) -> Any:
        claims.append(time.monotonic())
        return original(**kwargs)

    monkeypatch.setattr(worker_app.store, "job_claim_due", counting)
    worker = stepstone.Worker(worker_app, concurrency=2)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        time.sleep(0.6)
        spun = len(claims)
        release.set()
        holder.join(10)
        assert waiting.result(timeout=10) == "waiting"
    finally:
        release.set()
        worker.stop(now=True)
        thread.join(10)
    assert spun <= 20, f"the idle worker claimed {spun} times in 0.6 s"


def test_jobs_queued_under_a_limit_still_run_once_the_code_drops_it(
    make_app: Callable[..., App],
) -> None:
    """Jobs queued under a limit still run on workers of a release that dropped concurrency=."""
    name = unique("relimited")
    before = make_app()
    before.job(name=name, concurrency=Limit(1, key="{customer}"))(lambda customer: customer)
    handles = [before.enqueue(name, f"c{i}") for i in range(2)]
    after = make_app(poll_interval=0.05)
    after.job(name=name)(lambda customer: customer)
    worker = stepstone.Worker(after, concurrency=2)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        assert [handle.result(timeout=3) for handle in handles] == ["c0", "c1"]
    finally:
        worker.stop(now=True)
        thread.join(10)


def test_limit_declarations_are_checked() -> None:
    """Limit(0), Limit(1.5) and a concurrency= of another type are refused at once."""
    app = App("sqlite:///:memory:")
    with pytest.raises(ValueError, match="at least 1"):
        Limit(0)
    with pytest.raises(ValueError):
        Limit(1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="concurrency="):
        app.job(name="bad", concurrency="2")(lambda: None)  # type: ignore[call-overload]


def test_an_int_concurrency_is_a_limit_on_the_whole_job(app: App) -> None:
    """concurrency=1 limits the job as a whole, like Limit(1)."""
    running: list[int] = []

    @app.job(name="single", concurrency=1)
    def single(index: int) -> int:
        running.append(len(app.store.job_list(states=["running"])))
        return index

    handles = [app.enqueue(single, index) for index in range(3)]
    app.run_worker(concurrency=4, until_idle=True)
    assert [h.result(timeout=5) for h in handles] == [0, 1, 2]
    assert running == [1, 1, 1]


# === rate limits ===============================================================================


def test_a_rate_limit_holds_across_two_worker_processes(
    db_url: str, tmp_path: Path, spawn_worker
) -> None:
    """Rate(10/s) over two worker processes: a burst of 10, then 10/s (at most 10 + 10*T in T)."""
    log = tmp_path / "ocr.log"
    app = limitsapp.build_app(db_url)
    handles = [app.enqueue("limits.scan", page, str(log)) for page in range(25)]
    workers = [spawn_worker(module="limitsapp", concurrency=4, until_idle=True) for _ in range(2)]
    for worker in workers:
        assert worker.wait(timeout=60) == 0, worker.stderr()
    assert [handle.state for handle in handles] == [JobState.SUCCEEDED] * 25
    times = sorted(when for event, *_rest, when in limitsapp.events(log) if event == "ocr")
    assert len(times) == 25
    assert times[-1] - times[0] >= 1.5 - 0.05
    broken = over_the_bound(times, 10, 1.0, slack=0.1)
    assert broken == [], f"{broken[:3]} with calls at {[round(t - times[0], 3) for t in times]}"


def test_rate_waits_are_exact_on_the_fake_clock(app: App, clock: FakeClock) -> None:
    """Rate(1, per=2.5): each further call waits exactly 2.5 s on the clock, in naps of <= 1 s."""
    calls: list[float] = []

    @app.step(rate=Rate(1, per=2.5, key="exact"))
    def call(index: int) -> int:
        calls.append(clock.now())
        return index

    @app.job(name="three_calls")
    def three_calls() -> list[int]:
        return [call(i) for i in range(3)]

    assert app.run(three_calls) == [0, 1, 2]
    assert calls == [EPOCH, EPOCH + 2.5, EPOCH + 5.0]
    assert clock.sleeps == [1.0, 1.0, 0.5, 1.0, 1.0, 0.5]


def test_a_rate_limit_never_lets_more_than_n_calls_into_a_window(
    app: App, clock: FakeClock
) -> None:
    """Rate(2, per=1.0): two calls at once, then two more a second later, and so on; no
    second ever holds more than two calls."""
    calls: list[float] = []

    @app.step(rate=Rate(2, per=1.0, key="window"))
    def call(index: int) -> int:
        calls.append(clock.now())
        return index

    @app.job(name="six_calls")
    def six_calls() -> int:
        return sum(call(i) for i in range(6))

    assert app.run(six_calls) == 15
    assert [round(t - EPOCH, 3) for t in calls] == [0.0, 0.0, 1.0, 1.0, 2.0, 2.0]
    assert [round(s, 3) for s in clock.sleeps] == [1.0, 1.0]
    assert over_the_bound(calls, 2, 1.0) == []


def test_steps_sharing_a_rate_key_share_its_budget(app: App, clock: FakeClock) -> None:
    """Two steps with key "shared" draw on one budget; a step with another key does not."""
    calls: list[tuple[str, float]] = []

    @app.step(rate=Rate(1, per=1.0, key="shared"))
    def first(x: int) -> int:
        calls.append(("first", clock.now()))
        return x

    @app.step(rate=Rate(1, per=1.0, key="shared"))
    def second(x: int) -> int:
        calls.append(("second", clock.now()))
        return x

    @app.step(rate=Rate(1, per=1.0, key="elsewhere"))
    def other(x: int) -> int:
        calls.append(("other", clock.now()))
        return x

    @app.job(name="mixed")
    def mixed() -> int:
        return first(1) + other(2) + second(3)

    assert app.run(mixed) == 6
    assert calls == [("first", EPOCH), ("other", EPOCH), ("second", EPOCH + 1.0)]
    assert clock.sleeps == [1.0]


def test_a_templated_rate_key_keeps_tenants_apart(app: App, clock: FakeClock) -> None:
    """key="{tenant}": each tenant has its own budget; one tenant's second call waits."""
    calls: list[tuple[str, float]] = []

    @app.step(rate=Rate(1, per=1.0, key="tenant:{tenant}"))
    def call_api(tenant: str, n: int) -> str:
        calls.append((f"{tenant}{n}", clock.now()))
        return tenant

    @app.job(name="tenants")
    def tenants() -> list[str]:
        return [call_api("acme", 1), call_api("bolt", 1), call_api("acme", 2)]

    assert app.run(tenants) == ["acme", "bolt", "acme"]
    assert calls == [("acme1", EPOCH), ("bolt1", EPOCH), ("acme2", EPOCH + 1.0)]
    assert clock.sleeps == [1.0]


def test_a_rate_without_key_is_per_step(app: App, clock: FakeClock) -> None:
    """Rate(1) with no key: each step has its own budget, named after the step."""

    @app.step(rate=Rate(1, per=1.0))
    def left() -> str:
        return "l"

    @app.step(rate=Rate(1, per=1.0))
    def right() -> str:
        return "r"

    @app.job(name="sides")
    def sides() -> str:
        return left() + right() + left()

    assert app.run(sides) == "lrl"
    assert clock.sleeps == [1.0]


def test_replayed_steps_take_no_token(app: App, clock: FakeClock) -> None:
    """A step replayed after a durable sleep takes no token, so the next call does not wait."""
    calls: list[str] = []

    @app.step(rate=Rate(1, per=1.0, key="replay"))
    def fetch(what: str) -> str:
        calls.append(what)
        return what

    @app.job(name="fetch_twice")
    def fetch_twice() -> str:
        one = fetch("one")
        stepstone.sleep(10)
        return one + fetch("two")

    handle = app.enqueue(fetch_twice)
    app.run_worker(until_idle=True)
    assert handle.state == JobState.WAITING
    clock.advance(10)
    app.run_worker(until_idle=True)
    assert handle.result(timeout=5) == "onetwo"
    assert calls == ["one", "two"]
    assert clock.sleeps == []


def test_memo_hits_take_no_token(app: App, clock: FakeClock) -> None:
    """A memo hit of a rate-limited step neither runs nor waits; a new memo key waits its turn."""
    calls: list[str] = []

    @app.step(key="ocr:{doc}", rate=Rate(1, per=4.0, key="memo-ocr"))
    def ocr(doc: str) -> str:
        calls.append(doc)
        return f"text of {doc}"

    @app.job(name="index")
    def index(doc: str) -> str:
        return ocr(doc)

    assert app.run(index, "d1") == "text of d1"
    assert app.run(index, "d1") == "text of d1"
    assert calls == ["d1"]
    assert clock.sleeps == []
    assert app.run(index, "d2") == "text of d2"
    assert calls == ["d1", "d2"]
    assert clock.sleeps == [1.0, 1.0, 1.0, 1.0]


def test_async_steps_wait_for_their_token(app: App, clock: FakeClock) -> None:
    """An async step's rate wait sleeps on the clock's async sleep, in naps of at most 1 s."""
    calls: list[float] = []

    @app.step(rate=Rate(1, per=1.5, key="async"))
    async def ping(n: int) -> int:
        calls.append(clock.now())
        await asyncio.sleep(0)
        return n

    @app.job(name="pings")
    async def pings() -> int:
        return await ping(1) + await ping(2)

    handle = app.enqueue(pings)
    app.run_worker(until_idle=True)
    assert handle.result(timeout=5) == 3
    assert calls == [EPOCH, EPOCH + 1.5]
    assert clock.sleeps == [1.0, 0.5]


def test_rate_declarations_are_checked() -> None:
    """Rate(0), a non-positive period and a rate= of another type are refused at once."""
    app = App("sqlite:///:memory:")
    with pytest.raises(ValueError, match="at least 1"):
        Rate(0)
    with pytest.raises(ValueError, match="positive"):
        Rate(1, per=0)
    with pytest.raises(TypeError, match="rate="):
        app.step(rate=5)  # type: ignore[call-overload]


def test_a_worker_killed_while_waiting_for_its_token_loses_nothing(
    db_url: str, tmp_path: Path, spawn_worker
) -> None:
    """A worker SIGKILLed while waiting for a rate token loses nothing: the job resumes later."""
    log = tmp_path / "slow.log"
    app = limitsapp.build_app(db_url)
    rate = limitsapp.SLOW_RATE
    assert app.store.rate_acquire("slow", limit=rate.n, per=rate.seconds, now=time.time()) == 0.0
    handle = app.enqueue("limits.slow", "t1", str(log))
    worker = spawn_worker(module="limitsapp")
    wait_for(lambda: handle.state == JobState.RUNNING, what="the subprocess to claim the job")
    time.sleep(0.5)  # it asks for its token, and sleeps for it
    assert limitsapp.events(log) == []
    worker.signal(signal.SIGKILL)
    assert worker.wait() == -signal.SIGKILL
    assert handle.state == JobState.RUNNING

    later = limitsapp.build_app(db_url, clock=FakeClock(time.time() + rate.seconds + 2))
    later.run_worker(until_idle=True)
    assert handle.result(timeout=5) == "t1 by test"
    assert handle.attempts == 1
    assert [(event, tag, who) for event, tag, who, _pid, _t in limitsapp.events(log)] == [
        ("call", "t1", "test")
    ]


# === debounce ==================================================================================


def declare_notify(app: App, runs: list[str]) -> Any:
    @app.job(name="notify")
    def notify(user: str, version: int) -> str:
        runs.append(f"{user} v{version}")
        return f"{user} v{version}"

    return notify


def test_a_burst_of_enqueues_makes_one_job_with_the_last_arguments(
    app: App, clock: FakeClock
) -> None:
    """Ten enqueues with debounce=5 make one job with the last arguments, due 5 s after the last."""
    runs: list[str] = []
    notify = declare_notify(app, runs)
    handles = []
    for version in range(10):
        handles.append(app.enqueue(notify, "u7", version, key="user-7", debounce=5))
        clock.advance(0.5)
    last_enqueue = EPOCH + 4.5
    assert len({handle.id for handle in handles}) == 1
    [record] = app.store.job_list(name="notify")
    assert (record.state, record.args, record.run_at) == (
        JobState.QUEUED,
        '{"user":"u7","version":9}',
        last_enqueue + 5,
    )
    assert record.key is None
    app.run_worker(until_idle=True)
    assert runs == []
    clock.advance(last_enqueue + 5 - clock.now())
    app.run_worker(until_idle=True)
    assert handles[0].result(timeout=5) == "u7 v9"
    assert runs == ["u7 v9"]


def test_after_the_debounced_job_ran_a_new_burst_makes_a_new_job(
    app: App, clock: FakeClock
) -> None:
    """Once the debounced job ran, the next enqueues with the key make (and replace) a new job."""
    runs: list[str] = []
    notify = declare_notify(app, runs)
    first = app.enqueue(notify, "u7", 1, key="user-7", debounce=5)
    clock.advance(5)
    app.run_worker(until_idle=True)
    again = [app.enqueue(notify, "u7", v, key="user-7", debounce=5) for v in (2, 3)]
    assert again[0].id == again[1].id != first.id
    assert first.result(timeout=5) == "u7 v1"
    assert again[0].state == JobState.QUEUED
    clock.advance(5)
    app.run_worker(until_idle=True)
    assert runs == ["u7 v1", "u7 v3"]


def test_different_debounce_keys_are_separate_jobs(app: App, clock: FakeClock) -> None:
    """Each key debounces on its own: interleaved bursts make one job per key."""
    runs: list[str] = []
    notify = declare_notify(app, runs)
    for version in range(3):
        app.enqueue(notify, "a", version, key="user-a", debounce=5)
        app.enqueue(notify, "b", version, key="user-b", debounce=5)
    app.enqueue(notify, "a", 9, key="user-a", debounce=5)
    assert len(app.store.job_list(name="notify")) == 2
    clock.advance(5)
    app.run_worker(until_idle=True)
    assert sorted(runs) == ["a v9", "b v2"]


def test_debounce_without_a_key_is_a_value_error(app: App) -> None:
    """debounce= needs key= to name the group; nothing is enqueued without it."""
    notify = declare_notify(app, [])
    with pytest.raises(ValueError, match="key="):
        app.enqueue(notify, "u", 1, debounce=5)
    assert app.store.job_list() == []


def test_a_running_debounced_job_is_not_replaced(app: App, clock: FakeClock) -> None:
    """An enqueue while the debounced job runs makes a new job; the running one is untouched."""
    runs: list[str] = []
    notify = declare_notify(app, runs)
    first = app.enqueue(notify, "u7", 1, key="user-7", debounce=5)
    clock.advance(5)
    now = clock.now()
    [claimed] = app.store.job_claim_due(
        owner="another-worker",
        names=["notify"],
        queues=None,
        limit=1,
        now=now,
        lease_until=now + 30,
    )
    assert claimed.id == first.id
    second = app.enqueue(notify, "u7", 2, key="user-7", debounce=5)
    third = app.enqueue(notify, "u7", 3, key="user-7", debounce=5)
    assert second.id == third.id != first.id
    assert first.record().args == '{"user":"u7","version":1}'
    assert first.state == JobState.RUNNING
    assert third.record().args == '{"user":"u7","version":3}'


def test_debounce_replaces_queue_and_priority_too(app: App, clock: FakeClock) -> None:
    """The replacing enqueue's queue and priority win, like its arguments."""
    notify = declare_notify(app, [])
    app.enqueue(notify, "u", 1, key="k", debounce=5, priority=1)
    handle = app.enqueue(notify, "u", 2, key="k", debounce=5, priority=7, queue="urgent")
    record = handle.record()
    assert (record.queue, record.priority) == ("urgent", 7)


def test_debounce_with_a_callers_connection_writes_inside_its_transaction(
    make_app: Callable[..., App], clock: FakeClock, db_url: str
) -> None:
    """enqueue(debounce=, connection=) is refused or transactional: no job outlives a rollback."""
    app = make_app(clock=clock, busy_timeout=1.0)
    notify = declare_notify(app, [])
    assert app.store is not None  # creates the tables
    if db_url.startswith("sqlite"):
        conn: Any = sqlite3.connect(db_url.removeprefix("sqlite:///"), isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        rollback = lambda: conn.execute("ROLLBACK")  # noqa: E731
    else:
        import psycopg

        from stepstone._store.postgres import split_url

        conn = psycopg.connect(split_url(db_url)[0])
        rollback = conn.rollback
    try:
        with contextlib.suppress(ValueError, TypeError):  # refused at once: fine
            app.enqueue(notify, "u", 1, key="k", debounce=5, connection=conn)
        rollback()
    finally:
        conn.close()
    assert app.store.job_list() == [], "the job outlived the caller's rolled-back transaction"


def test_debounce_with_delay_or_run_at_is_refused(app: App) -> None:
    """delay= or run_at= beside debounce= is a ValueError, not silently dropped."""
    notify = declare_notify(app, [])
    with pytest.raises(ValueError):
        app.enqueue(notify, "u", 1, key="k", debounce=5, delay=3600)
    with pytest.raises(ValueError):
        app.enqueue(notify, "u", 1, key="k2", debounce=5, run_at=EPOCH + 3600)


# === queues and priority =======================================================================


def test_a_worker_runs_only_its_queues(app: App) -> None:
    """A worker with queues=["a"] runs the jobs of queue a only; the rest wait for theirs."""

    @app.job(name="in_a", queue="a")
    def in_a(n: int) -> str:
        return f"a{n}"

    @app.job(name="in_b", queue="b")
    def in_b(n: int) -> str:
        return f"b{n}"

    a = app.enqueue(in_a, 1)
    b = app.enqueue(in_b, 1)
    moved = app.enqueue(in_a, 2, queue="b")
    app.run_worker(queues=["a"], until_idle=True)
    assert a.result(timeout=5) == "a1"
    assert (b.state, moved.state) == (JobState.QUEUED, JobState.QUEUED)
    app.run_worker(queues="b", until_idle=True)
    assert (b.result(timeout=5), moved.result(timeout=5)) == ("b1", "a2")


def test_higher_priority_runs_first(app: App, clock: FakeClock) -> None:
    """One slot: the highest priority (job default or enqueue's) first, then the oldest."""
    order: list[str] = []

    @app.job(name="plain")
    def plain(tag: str) -> None:
        order.append(tag)

    @app.job(name="important", priority=5)
    def important(tag: str) -> None:
        order.append(tag)

    for tag, job, priority in [
        ("low-old", plain, None),
        ("mid", important, None),
        ("low-new", plain, None),
        ("urgent", plain, 10),
        ("demoted", important, -1),
    ]:
        app.enqueue(job, tag, priority=priority)
        clock.advance(1)
    app.run_worker(concurrency=1, until_idle=True)
    assert order == ["urgent", "mid", "low-old", "low-new", "demoted"]


def test_the_worker_command_serves_the_queues_it_is_given(db_url: str, tmp_path: Path) -> None:
    """`stepstone worker APP --queues a,b` runs the jobs of queues a and b and leaves c alone."""
    app = limitsapp.build_app(db_url)
    a = app.enqueue("limits.in_queue_a", "x")
    b = app.enqueue("limits.in_queue_b", "y")
    c = app.enqueue("limits.in_queue_c", "z")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(SRC), str(INTEGRATION), *filter(None, [env.get("PYTHONPATH")])]
    )
    env["STEPSTONE_DATABASE_URL"] = db_url
    done = subprocess.run(
        [
            *(sys.executable, "-m", "stepstone", "worker", "limitsapp:app"),
            *("--queues", "a,b", "--until-idle", "--log-level", "warning"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert (a.result(timeout=5), b.result(timeout=5)) == ("a:x", "b:y")
    assert c.state == JobState.QUEUED
    assert c.attempts == 0
