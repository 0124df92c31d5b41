"""The store contract of flow control: parking, signals, debounce, cron schedules, rate
limits, concurrency limits, cascading cancellation and the trigger that wakes a job when the
job it waits for ends. Every backend must pass these tests (see ``stepstone._store.base``).

Time is a float each test chooses (``now=``), so nothing sleeps.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from stepstone._store import Store
from stepstone._store.base import JOB_EVENT_PREFIX, WAIT_FOREVER, ClaimedJob, JobState, NewJob
from stepstone.errors import JobCancelled, JobNotFound, LeaseLost

from ..backends import POSTGRES
from .support import (
    LEASE,
    NAMES,
    T0,
    claim_due,
    claim_one,
    complete,
    fail,
    insert,
    park,
    release,
    rescue,
    retry_later,
    running_job,
)

#: The job name the concurrency tests limit.
LIMITED = "ocr.run"
#: Makes this test's concurrency keys its own: PostgreSQL takes advisory locks on them,
#: which other tests' schemas on the same server would otherwise contend for.
_TEST_KEYS = {"suffix": ""}


@pytest.fixture(autouse=True)
def _own_keys() -> None:
    """A fresh suffix for this test's concurrency keys."""
    _TEST_KEYS["suffix"] = uuid.uuid4().hex[:8]


def flow_job(
    name: str = "mail.send",
    *,
    args: str = '{"to": "a@example.com"}',
    run_at: float = T0,
    priority: int = 0,
    queue: str = "default",
    key: str | None = None,
    parent_id: str | None = None,
    concurrency_key: str | None = None,
    concurrency_limit: int | None = None,
    debounce_key: str | None = None,
) -> NewJob:
    """A job to insert with the flow-control fields, and a fresh id."""
    return NewJob(
        id=uuid.uuid4().hex,
        name=name,
        queue=queue,
        key=key,
        args=args,
        priority=priority,
        run_at=run_at,
        parent_id=parent_id,
        concurrency_key=concurrency_key,
        concurrency_limit=concurrency_limit,
        debounce_key=debounce_key,
    )


def insert_flow(store: Store, *, now: float = T0, **fields: Any) -> str:
    """Insert a queued job built by ``flow_job(**fields)``; return its id."""
    job = flow_job(**fields)
    assert store.job_insert(job, now=now).created
    return job.id


def limited(store: Store, group: str = "a", *, limit: int = 1, **fields: Any) -> str:
    """Insert a queued job of ``LIMITED`` with concurrency key ``group`` and ``limit``."""
    return insert_flow(
        store,
        name=LIMITED,
        concurrency_key=f"{LIMITED}:{group}-{_TEST_KEYS['suffix']}",
        concurrency_limit=limit,
        **fields,
    )


def claim_limited(store: Store, *, now: float = T0, limit: int = 100, **kw: Any) -> list[str]:
    """Claim due jobs as a worker that knows ``LIMITED`` has a limit; return their ids."""
    claimed = store.job_claim_due(
        owner=kw.get("owner", "worker-a"),
        names=NAMES,
        queues=None,
        limit=limit,
        now=now,
        lease_until=now + kw.get("lease", LEASE),
        limited=(LIMITED,),
    )
    return [job.id for job in claimed]


def state_of(store: Store, job_id: str) -> JobState:
    record = store.job_get(job_id)
    assert record is not None
    return record.state


def parked(store: Store, *, until: float = T0 + 60, now: float = T0, **waits: Any) -> ClaimedJob:
    """A job that ran and parked itself with these ``Outcome.park`` arguments."""
    claimed = running_job(store, now=now)
    park(store, claimed.id, claimed.fence, until=until, now=now, **{"event": None, **waits})
    return claimed


# --- job_park ---------------------------------------------------------------------------------


def test_park_until_a_time_makes_the_job_wait(store: Store) -> None:
    """A parked job is waiting until ``until``, with no lease, and no claim takes it sooner."""
    claimed = parked(store, until=T0 + 60, now=T0 + 1)
    record = store.job_get(claimed.id)
    assert record is not None
    assert (record.state, record.run_at, record.wait_event) == (JobState.WAITING, T0 + 60, None)
    assert (record.lease_owner, record.lease_expires_at) == (None, None)
    assert record.updated_at == T0 + 1
    assert claim_due(store, now=T0 + 59) == []


def test_a_parked_job_is_claimed_at_its_time_as_a_replay(store: Store) -> None:
    """At ``until`` a claim takes the waiting job: a new fence, the same attempt."""
    claimed = parked(store, until=T0 + 60)
    [again] = claim_due(store, now=T0 + 60)
    assert (again.id, again.fence, again.attempt) == (claimed.id, 2, 1)
    assert again.started_at == T0
    record = store.job_get(claimed.id)
    assert record is not None
    assert (record.state, record.attempts, record.wait_event) == (JobState.RUNNING, 1, None)


def test_job_claim_takes_a_waiting_job_before_its_time(store: Store) -> None:
    """``job_claim`` takes a waiting job whatever its ``run_at`` (``app.run`` waits in place)."""
    claimed = parked(store, until=T0 + 3600)
    again = store.job_claim(claimed.id, owner="runner", now=T0 + 1, lease_until=T0 + 31)
    assert again is not None
    assert (again.fence, again.attempt) == (2, 1)


def test_park_with_a_stale_fence_raises_lease_lost(store: Store) -> None:
    """Only the run holding the current fence may park the job."""
    claimed = running_job(store)
    release(store, claimed.id, claimed.fence, now=T0)
    claim_one(store, claimed.id, now=T0 + 1)
    with pytest.raises(LeaseLost):
        park(store, claimed.id, claimed.fence, until=T0 + 60, event=None, now=T0 + 2)
    assert state_of(store, claimed.id) == JobState.RUNNING


def test_park_a_cancelled_job_raises_job_cancelled(store: Store) -> None:
    """A run parking a job that was cancelled meanwhile learns it was cancelled."""
    claimed = running_job(store)
    assert store.job_cancel(claimed.id, now=T0 + 1)
    with pytest.raises(JobCancelled):
        park(store, claimed.id, claimed.fence, until=T0 + 60, event=None, now=T0 + 2)
    assert state_of(store, claimed.id) == JobState.CANCELLED


def test_park_for_an_event_records_what_the_job_waits_for(store: Store) -> None:
    """Parking for an event with no signal yet: waiting for that event until ``until``."""
    claimed = parked(store, until=WAIT_FOREVER, event="order.paid")
    record = store.job_get(claimed.id)
    assert record is not None
    assert (record.state, record.wait_event, record.run_at) == (
        JobState.WAITING,
        "order.paid",
        WAIT_FOREVER,
    )


def test_park_for_an_event_already_signalled_is_due_at_once(store: Store) -> None:
    """A signal newer than the job (and than ``signal_after``) makes the park a requeue."""
    claimed = running_job(store, now=T0)
    store.signal_send("order.paid", '{"n": 1}', now=T0 + 1)
    park(store, claimed.id, claimed.fence, until=WAIT_FOREVER, event="order.paid", now=T0 + 2)
    record = store.job_get(claimed.id)
    assert record is not None
    assert (record.state, record.run_at) == (JobState.QUEUED, T0 + 2)
    [again] = claim_due(store, now=T0 + 2)
    assert (again.id, again.attempt) == (claimed.id, 1)


def test_park_ignores_signals_older_than_the_job(store: Store) -> None:
    """A signal sent before the job was created does not count for it."""
    store.signal_send("order.paid", "1", now=T0 - 5)
    claimed = parked(store, until=WAIT_FOREVER, event="order.paid")
    assert state_of(store, claimed.id) == JobState.WAITING


def test_park_ignores_signals_the_job_already_received(store: Store) -> None:
    """Signals up to ``signal_after`` were taken already: only a newer one wakes the job."""
    claimed = running_job(store, now=T0)
    store.signal_send("order.paid", "1", now=T0 + 1)
    found = store.signal_next("order.paid", after=0, since=T0)
    assert found is not None
    park(
        store,
        claimed.id,
        claimed.fence,
        until=WAIT_FOREVER,
        event="order.paid",
        signal_after=found[0],
        now=T0 + 2,
    )
    assert state_of(store, claimed.id) == JobState.WAITING
    assert store.signal_send("order.paid", "2", now=T0 + 3) == 1
    assert state_of(store, claimed.id) == JobState.QUEUED


def test_park_for_an_unfinished_child_waits_for_it(store: Store) -> None:
    """Parking on a child that is not finished: waiting on ``stepstone.job:<child>``."""
    child = insert(store, name="ocr.run", run_at=T0 + 100)
    claimed = parked(store, until=WAIT_FOREVER, child=child)
    record = store.job_get(claimed.id)
    assert record is not None
    assert (record.state, record.wait_event) == (JobState.WAITING, f"{JOB_EVENT_PREFIX}{child}")


@pytest.mark.parametrize("outcome", ["succeeded", "failed", "cancelled"])
def test_park_for_a_finished_child_is_due_at_once(store: Store, outcome: str) -> None:
    """A child that already ended (in any way) makes the park a requeue, due now."""
    child = running_job(store, name="ocr.run")
    if outcome == "succeeded":
        complete(store, child.id, child.fence, result="1", now=T0)
    elif outcome == "failed":
        fail(store, child.id, child.fence, error='"x"', attempt=1, now=T0)
    else:
        store.job_cancel(child.id, now=T0)
    claimed = running_job(store, now=T0 + 1)
    park(
        store, claimed.id, claimed.fence, until=WAIT_FOREVER, event=None, child=child.id, now=T0 + 2
    )
    record = store.job_get(claimed.id)
    assert record is not None
    assert (record.state, record.run_at) == (JobState.QUEUED, T0 + 2)


# --- the wake trigger -------------------------------------------------------------------------


def _end(store: Store, job: ClaimedJob, how: str, now: float) -> None:
    if how == "succeeded":
        complete(store, job.id, job.fence, result='"ok"', now=now)
    elif how == "failed":
        fail(store, job.id, job.fence, error='"bad"', attempt=1, now=now)
    else:
        assert store.job_cancel(job.id, now=now)


@pytest.mark.parametrize("how", ["succeeded", "failed", "cancelled"])
def test_a_child_ending_wakes_the_jobs_waiting_for_it(store: Store, how: str) -> None:
    """When a child ends, every job parked on it is queued, due when the child ended."""
    child = running_job(store, name="ocr.run", now=T0)
    first = parked(store, until=WAIT_FOREVER, child=child.id, now=T0 + 1)
    second = parked(store, until=WAIT_FOREVER, child=child.id, now=T0 + 2)
    _end(store, child, how, now=T0 + 10)
    for waiter in (first, second):
        record = store.job_get(waiter.id)
        assert record is not None
        assert (record.state, record.run_at, record.updated_at) == (
            JobState.QUEUED,
            T0 + 10,
            T0 + 10,
        )
    assert sorted(job.id for job in claim_due(store, now=T0 + 10)) == sorted([first.id, second.id])


def test_the_wake_trigger_leaves_other_waiting_jobs_alone(store: Store) -> None:
    """Jobs waiting for another child, for an event or for a time stay waiting."""
    child = running_job(store, name="ocr.run")
    other_child = insert(store, name="ocr.run", run_at=T0 + 500)
    on_other = parked(store, until=WAIT_FOREVER, child=other_child)
    on_event = parked(store, until=WAIT_FOREVER, event=f"{JOB_EVENT_PREFIX}x")
    on_time = parked(store, until=T0 + 60)
    complete(store, child.id, child.fence, result="1", now=T0 + 5)
    for job in (on_other, on_event, on_time):
        assert state_of(store, job.id) == JobState.WAITING


def test_a_child_retried_or_released_wakes_nobody(store: Store) -> None:
    """Only a finished child wakes its waiters, not one requeued for another attempt."""
    child = running_job(store, name="ocr.run")
    waiter = parked(store, until=WAIT_FOREVER, child=child.id)
    retry_later(store, child.id, child.fence, error='"e"', attempt=1, run_at=T0 + 9, now=T0)
    again = claim_one(store, child.id, now=T0 + 9)
    release(store, child.id, again.fence, now=T0 + 10)
    assert state_of(store, waiter.id) == JobState.WAITING


def test_a_poisoned_child_wakes_its_waiter(store: Store) -> None:
    """A child failed by the rescuer as poison ends too: its waiter is woken."""
    child = running_job(store, name="ocr.run", now=T0)
    waiter = parked(store, until=WAIT_FOREVER, child=child.id, now=T0)
    now = T0
    for _ in range(10):
        now += LEASE + 1
        rescue(store, now=now)
        if state_of(store, child.id) == JobState.FAILED:
            break
        claim_one(store, child.id, now=now)
    assert state_of(store, child.id) == JobState.FAILED
    assert state_of(store, waiter.id) == JobState.QUEUED


# --- signals ----------------------------------------------------------------------------------


def test_signal_send_wakes_only_the_jobs_waiting_for_its_event(store: Store) -> None:
    """Every job waiting for the event is queued, due now; others keep waiting."""
    paid = [parked(store, until=WAIT_FOREVER, event="order.paid") for _ in range(3)]
    shipped = parked(store, until=WAIT_FOREVER, event="order.shipped")
    assert store.signal_send("order.paid", '{"order": 7}', now=T0 + 5) == 3
    for job in paid:
        record = store.job_get(job.id)
        assert record is not None
        assert (record.state, record.run_at) == (JobState.QUEUED, T0 + 5)
    assert state_of(store, shipped.id) == JobState.WAITING


def test_signal_send_with_nobody_waiting_keeps_the_signal(store: Store) -> None:
    """A signal nobody waits for wakes none, and is kept for later waiters."""
    assert store.signal_send("order.paid", '{"order": 7}', now=T0) == 0
    found = store.signal_next("order.paid", after=0, since=T0)
    assert found is not None
    assert found[1] == '{"order": 7}'


def test_signal_send_does_not_touch_a_running_or_queued_job(store: Store) -> None:
    """Only waiting jobs are woken: a running job waiting for nothing stays as it was."""
    running = running_job(store)
    queued = insert(store)
    assert store.signal_send("order.paid", "1", now=T0 + 1) == 0
    assert state_of(store, running.id) == JobState.RUNNING
    assert state_of(store, queued) == JobState.QUEUED


def test_signal_next_returns_the_oldest_newer_signal_of_the_event(store: Store) -> None:
    """Signals come back one at a time in send order, per event, above ``after``."""
    store.signal_send("e", '"one"', now=T0)
    store.signal_send("other", '"x"', now=T0)
    store.signal_send("e", '"two"', now=T0 + 1)
    first = store.signal_next("e", after=0, since=T0)
    assert first is not None
    assert first[1] == '"one"'
    second = store.signal_next("e", after=first[0], since=T0)
    assert second is not None
    assert second[1] == '"two"'
    assert second[0] > first[0]
    assert store.signal_next("e", after=second[0], since=T0) is None
    assert store.signal_next("nothing", after=0, since=T0) is None


def test_signal_next_skips_signals_sent_before_since(store: Store) -> None:
    """``since`` (the job's creation) hides older signals; one sent exactly then counts."""
    store.signal_send("e", '"old"', now=T0 - 1)
    store.signal_send("e", '"exact"', now=T0)
    found = store.signal_next("e", after=0, since=T0)
    assert found is not None
    assert found[1] == '"exact"'
    assert store.signal_next("e", after=found[0], since=T0 + 1) is None


def test_signal_payloads_round_trip_as_json_text(store: Store) -> None:
    """The payload comes back as the JSON text that was sent."""
    payload = '{"items":[1,2.5,"x",null,true],"nested":{"a":"\\u00e9"}}'
    store.signal_send("e", payload, now=T0)
    found = store.signal_next("e", after=0, since=T0)
    assert found is not None
    assert found[1] == payload


def test_signal_prune_deletes_signals_sent_before(store: Store) -> None:
    """``signal_prune`` deletes the older signals only, and says how many."""
    store.signal_send("e", '"a"', now=T0)
    store.signal_send("e", '"b"', now=T0 + 10)
    store.signal_send("f", '"c"', now=T0 + 5)
    assert store.signal_prune(before=T0 + 10) == 2
    found = store.signal_next("e", after=0, since=T0)
    assert found is not None
    assert found[1] == '"b"'
    assert store.signal_next("f", after=0, since=T0) is None
    assert store.signal_prune(before=T0 + 10) == 0


# --- job_debounce -----------------------------------------------------------------------------


def test_debounce_inserts_a_job_when_none_is_queued(store: Store) -> None:
    """With no queued job of the key, the job is inserted as it is (no job key)."""
    job = flow_job(args='["v1"]', run_at=T0 + 5, debounce_key="mail.send:user-7")
    inserted = store.job_debounce(job, now=T0)
    assert inserted.created
    record = store.job_get(job.id)
    assert record == inserted.job
    assert record is not None
    assert (record.state, record.key, record.args, record.run_at) == (
        JobState.QUEUED,
        None,
        '["v1"]',
        T0 + 5,
    )


def test_debounce_replaces_the_queued_job_of_its_key(store: Store) -> None:
    """A second debounce takes over the queued job: its args, due time, queue, priority."""
    first = flow_job(args='["v1"]', run_at=T0 + 5, debounce_key="k")
    store.job_debounce(first, now=T0)
    second = flow_job(args='["v2"]', run_at=T0 + 8, priority=4, queue="mail", debounce_key="k")
    replaced = store.job_debounce(second, now=T0 + 3)
    assert not replaced.created
    assert replaced.job.id == first.id
    record = store.job_get(first.id)
    assert record == replaced.job
    assert record is not None
    assert (record.args, record.run_at, record.priority, record.queue) == (
        '["v2"]',
        T0 + 8,
        4,
        "mail",
    )
    assert (record.created_at, record.updated_at, record.state) == (T0, T0 + 3, JobState.QUEUED)
    assert store.job_get(second.id) is None
    assert len(store.job_list()) == 1


def test_debounce_keys_are_separate(store: Store) -> None:
    """Jobs of other debounce keys are neither replaced nor replacing."""
    a = store.job_debounce(flow_job(args='["a"]', debounce_key="a"), now=T0).job
    b = store.job_debounce(flow_job(args='["b"]', debounce_key="b"), now=T0).job
    store.job_debounce(flow_job(args='["a2"]', debounce_key="a"), now=T0 + 1)
    assert a.id != b.id
    assert {r.id: r.args for r in store.job_list()} == {a.id: '["a2"]', b.id: '["b"]'}


def test_debounce_never_replaces_a_running_or_finished_job(store: Store) -> None:
    """Once claimed, a debounced job is left alone: the next debounce inserts a new one."""
    first = store.job_debounce(flow_job(args='["v1"]', debounce_key="k"), now=T0).job
    [claimed] = claim_due(store, now=T0)
    second = store.job_debounce(flow_job(args='["v2"]', debounce_key="k"), now=T0 + 1)
    assert second.created
    assert second.job.id != first.id
    running = store.job_get(first.id)
    assert running is not None
    assert (running.state, running.args) == (JobState.RUNNING, '["v1"]')
    complete(store, claimed.id, claimed.fence, result="1", now=T0 + 2)
    third = store.job_debounce(flow_job(args='["v3"]', debounce_key="k"), now=T0 + 3)
    assert (third.created, third.job.id) == (False, second.job.id)
    done = store.job_get(first.id)
    assert done is not None
    assert (done.state, done.args) == (JobState.SUCCEEDED, '["v1"]')


@pytest.mark.parametrize("how", ["retry_later", "release", "rescue"])
def test_debounce_never_replaces_a_job_that_started_and_was_requeued(
    store: Store, how: str
) -> None:
    """A debounced job requeued after it started (retry, release, rescue) is not replaced."""
    first = store.job_debounce(flow_job(args='["v1"]', debounce_key="k"), now=T0).job
    [claimed] = claim_due(store, now=T0)
    if how == "retry_later":
        retry_later(store, first.id, 1, error='"e"', attempt=1, run_at=T0 + 9, now=T0 + 1)
    elif how == "release":
        release(store, first.id, 1, now=T0 + 1)
    else:
        rescue(store, now=T0 + LEASE + 1)
    assert state_of(store, claimed.id) == JobState.QUEUED
    again = store.job_debounce(flow_job(args='["v2"]', debounce_key="k"), now=T0 + 40)
    assert again.created
    record = store.job_get(first.id)
    assert record is not None
    assert record.args == '["v1"]'
    third = store.job_debounce(flow_job(args='["v3"]', debounce_key="k"), now=T0 + 41)
    assert (third.created, third.job.id) == (False, again.job.id)


def test_debounce_of_a_waiting_job_inserts_a_new_one(store: Store) -> None:
    """A debounced job that started and parked itself is not replaced either."""
    store.job_debounce(flow_job(args='["v1"]', debounce_key="k"), now=T0)
    [claimed] = claim_due(store, now=T0)
    park(store, claimed.id, claimed.fence, until=T0 + 60, event=None, now=T0)
    again = store.job_debounce(flow_job(args='["v2"]', debounce_key="k"), now=T0 + 1)
    assert again.created
    waiting = store.job_get(claimed.id)
    assert waiting is not None
    assert (waiting.state, waiting.args) == (JobState.WAITING, '["v1"]')


def test_concurrent_debounces_leave_one_queued_job(
    shared_url: str, open_stores: Callable[[str], Store]
) -> None:
    """Two stores debouncing one key at once end with exactly one queued job."""
    stores = [open_stores(shared_url), open_stores(shared_url)]
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def work(index: int) -> None:
        store = stores[index % 2]
        start.wait()
        try:
            for i in range(10):
                job = flow_job(args=f'["{index}-{i}"]', debounce_key="k")
                store.job_debounce(job, now=T0 + i)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    queued = stores[0].job_list(states=["queued"])
    assert len(queued) == 1


# --- schedules --------------------------------------------------------------------------------


def test_schedule_next_of_an_unknown_job_is_none(store: Store) -> None:
    """No tick is recorded until one is advanced to."""
    assert store.schedule_next("report") is None
    assert store.schedule_list() == []


def test_schedule_advance_records_the_first_tick_once(store: Store) -> None:
    """``expected=None`` records the first tick; a second such call finds one and fails."""
    assert store.schedule_advance("report", expected=None, tick=T0 + 60, now=T0)
    assert not store.schedule_advance("report", expected=None, tick=T0 + 120, now=T0 + 1)
    assert store.schedule_next("report") == T0 + 60


def test_schedule_advance_moves_only_from_the_expected_tick(store: Store) -> None:
    """A conditional move from the recorded tick wins once; a stale one changes nothing."""
    store.schedule_advance("report", expected=None, tick=T0 + 60, now=T0)
    assert store.schedule_advance("report", expected=T0 + 60, tick=T0 + 120, now=T0 + 60)
    assert not store.schedule_advance("report", expected=T0 + 60, tick=T0 + 180, now=T0 + 61)
    assert store.schedule_next("report") == T0 + 120


def test_schedule_list_gives_every_next_tick_by_name(store: Store) -> None:
    """``schedule_list`` lists (name, next tick) sorted by name."""
    store.schedule_advance("zeta", expected=None, tick=T0 + 1, now=T0)
    store.schedule_advance("alpha", expected=None, tick=T0 + 2, now=T0)
    store.schedule_advance("alpha", expected=T0 + 2, tick=T0 + 3, now=T0)
    assert store.schedule_list() == [("alpha", T0 + 3), ("zeta", T0 + 1)]


def test_two_stores_advancing_a_schedule_at_once_move_it_once(
    shared_url: str, open_stores: Callable[[str], Store]
) -> None:
    """Racing first records and racing moves: exactly one of each succeeds."""
    stores = [open_stores(shared_url) for _ in range(4)]
    results: list[bool] = []
    lock = threading.Lock()

    def race(expected: float | None, tick: float) -> None:
        start = threading.Barrier(4)

        def work(store: Store) -> None:
            start.wait()
            won = store.schedule_advance("report", expected=expected, tick=tick, now=T0)
            with lock:
                results.append(won)

        threads = [threading.Thread(target=work, args=(store,)) for store in stores]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)

    race(None, T0 + 60)
    assert sorted(results) == [False, False, False, True]
    results.clear()
    race(T0 + 60, T0 + 120)
    assert sorted(results) == [False, False, False, True]
    assert stores[0].schedule_next("report") == T0 + 120


# --- rate_acquire -----------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [3, 4, 5, 6, 10])
def test_rate_allows_a_burst_of_limit_calls(store: Store, limit: int) -> None:
    """``limit`` calls at one instant are all allowed at once; the next one must wait."""
    waits = [store.rate_acquire("ocr", limit=limit, per=1.0, now=T0) for _ in range(limit)]
    assert waits == [0.0] * limit
    wait = store.rate_acquire("ocr", limit=limit, per=1.0, now=T0)
    assert 0 < wait <= 1.0


def test_a_refused_call_takes_nothing(store: Store) -> None:
    """Asking again at the same instant gets the same wait: a refusal takes no token."""
    store.rate_acquire("ocr", limit=1, per=2.0, now=T0)
    first = store.rate_acquire("ocr", limit=1, per=2.0, now=T0 + 0.5)
    second = store.rate_acquire("ocr", limit=1, per=2.0, now=T0 + 0.5)
    assert first == second == 1.5


def test_a_call_after_its_wait_is_allowed(store: Store) -> None:
    """Waiting the returned time is enough: the call then goes through."""
    now = T0
    for _ in range(3):
        store.rate_acquire("ocr", limit=2, per=1.0, now=now)
    wait = store.rate_acquire("ocr", limit=2, per=1.0, now=now)
    assert wait > 0
    assert store.rate_acquire("ocr", limit=2, per=1.0, now=now + wait) == 0.0


def test_rate_one_per_period_waits_exactly_the_period(store: Store) -> None:
    """With a limit of 1, calls are spaced exactly ``per`` apart."""
    assert store.rate_acquire("k", limit=1, per=4.0, now=T0) == 0.0
    assert store.rate_acquire("k", limit=1, per=4.0, now=T0) == 4.0
    assert store.rate_acquire("k", limit=1, per=4.0, now=T0 + 1) == 3.0
    assert store.rate_acquire("k", limit=1, per=4.0, now=T0 + 4) == 0.0
    assert store.rate_acquire("k", limit=1, per=4.0, now=T0 + 4) == 4.0


def test_rate_recovers_its_burst_after_an_idle_period(store: Store) -> None:
    """After ``per`` seconds without calls, a full burst is allowed again."""
    for _ in range(3):
        assert store.rate_acquire("ocr", limit=3, per=1.0, now=T0) == 0.0
    assert store.rate_acquire("ocr", limit=3, per=1.0, now=T0) > 0
    later = T0 + 2
    assert [store.rate_acquire("ocr", limit=3, per=1.0, now=later) for _ in range(3)] == [0.0] * 3


def test_rate_keys_are_independent(store: Store) -> None:
    """Calls under one key use none of another key's budget."""
    assert store.rate_acquire("a", limit=1, per=10.0, now=T0) == 0.0
    assert store.rate_acquire("b", limit=1, per=10.0, now=T0) == 0.0
    assert store.rate_acquire("a", limit=1, per=10.0, now=T0) > 0
    assert store.rate_acquire("b", limit=1, per=10.0, now=T0) > 0


def test_rate_keeps_every_window_within_its_limit(store: Store) -> None:
    """Waiting as told gives bursts of ``limit`` calls one window apart, and no window of
    ``per`` seconds ever holds more than ``limit`` calls."""
    now = T0
    allowed: list[float] = []
    for _ in range(200):
        if len(allowed) == 12:
            break
        wait = store.rate_acquire("ocr", limit=4, per=1.0, now=now)
        if wait == 0.0:
            allowed.append(now)
        else:
            now += wait
    assert [round(t - T0, 3) for t in allowed] == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    for first in allowed:
        assert len([t for t in allowed if first <= t < first + 1.0 - 1e-5]) <= 4


def test_rate_concurrent_callers_get_exactly_limit_calls(
    shared_url: str, open_stores: Callable[[str], Store]
) -> None:
    """Threads on two stores asking at one instant: exactly ``limit`` calls are allowed."""
    stores = [open_stores(shared_url), open_stores(shared_url)]
    start = threading.Barrier(6)
    waits: list[float] = []
    lock = threading.Lock()

    def work(index: int) -> None:
        start.wait()
        for _ in range(4):
            wait = stores[index % 2].rate_acquire("ocr", limit=4, per=1.0, now=T0)
            with lock:
                waits.append(wait)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(waits) == 24
    assert waits.count(0.0) == 4


# --- concurrency limits: job_claim_due --------------------------------------------------------


def test_claim_due_keeps_a_key_under_its_limit(store: Store) -> None:
    """Of three due jobs with limit 1, one claim takes one; the others stay queued."""
    ids = [limited(store, "a", run_at=T0 - 3 + i) for i in range(3)]
    assert claim_limited(store) == [ids[0]]
    assert claim_limited(store) == []
    for job_id in ids[1:]:
        record = store.job_get(job_id)
        assert record is not None
        assert (record.state, record.attempts, record.fence) == (JobState.QUEUED, 0, 0)


def test_claim_due_takes_up_to_the_limit_in_one_claim(store: Store) -> None:
    """With limit 2 and five due jobs, one claim takes two (oldest first), then none."""
    ids = [limited(store, "a", limit=2, run_at=T0 - 5 + i) for i in range(5)]
    assert claim_limited(store) == ids[:2]
    assert claim_limited(store) == []


def test_claim_due_limits_each_key_separately(store: Store) -> None:
    """Every key gets its own slots; jobs without a key are claimed alongside."""
    a = [limited(store, "a", run_at=T0 - 6 + i) for i in range(2)]
    b = [limited(store, "b", run_at=T0 - 4 + i) for i in range(2)]
    free = [insert(store, run_at=T0 - 2 + i) for i in range(2)]
    assert sorted(claim_limited(store)) == sorted([a[0], b[0], *free])
    assert claim_limited(store) == []


def test_claim_due_frees_the_slot_when_the_holder_ends(store: Store) -> None:
    """When the running job of a key finishes, the next one can be claimed."""
    first = limited(store, "a", run_at=T0 - 2)
    second = limited(store, "a", run_at=T0 - 1)
    assert claim_limited(store) == [first]
    complete(store, first, 1, result="1", now=T0 + 1)
    assert claim_limited(store, now=T0 + 1) == [second]


@pytest.mark.parametrize("how", ["retry_later", "release", "park", "fail", "cancel"])
def test_a_holder_that_stops_running_frees_its_slot(store: Store, how: str) -> None:
    """Retried, released, parked (sleeping), failed or cancelled: only running jobs count."""
    first = limited(store, "a", run_at=T0 - 2)
    second = limited(store, "a", run_at=T0 - 1)
    assert claim_limited(store) == [first]
    if how == "retry_later":
        retry_later(store, first, 1, error='"e"', attempt=1, run_at=T0 + 100, now=T0)
    elif how == "release":
        release(store, first, 1, now=T0)  # due again, but younger than second
    elif how == "park":
        park(store, first, 1, until=T0 + 100, event=None, now=T0)
    elif how == "fail":
        fail(store, first, 1, error='"e"', attempt=1, now=T0)
    else:
        store.job_cancel(first, now=T0)
    assert second in claim_limited(store, now=T0 + 1)


def test_a_holder_with_an_expired_lease_holds_no_slot(store: Store) -> None:
    """Only a live lease counts: once it expires (even before the rescue) the slot is free."""
    first = limited(store, "a", run_at=T0 - 2)
    second = limited(store, "a", run_at=T0 - 1)
    assert claim_limited(store, lease=10.0) == [first]
    assert claim_limited(store, now=T0 + 10) == []
    assert claim_limited(store, now=T0 + 10.5) == [second]


def test_claim_due_orders_a_keys_jobs_by_priority(store: Store) -> None:
    """Within a key the highest priority job wins the slot, then the oldest."""
    old = limited(store, "a", run_at=T0 - 10)
    urgent = limited(store, "a", run_at=T0 - 1, priority=9)
    assert claim_limited(store) == [urgent]
    complete(store, urgent, 1, result="1", now=T0)
    assert claim_limited(store) == [old]


def test_a_key_at_its_limit_does_not_block_other_jobs(store: Store) -> None:
    """Many due jobs of a full key (older, higher priority) leave room for other jobs."""
    holder = limited(store, "a", run_at=T0 - 500, priority=5)
    assert claim_limited(store) == [holder]
    for i in range(150):
        limited(store, "a", run_at=T0 - 400 + i, priority=5)
    free = insert(store, run_at=T0)
    other = limited(store, "b", run_at=T0)
    assert sorted(claim_limited(store, limit=2)) == sorted([free, other])


def test_claim_due_ignores_the_limit_of_a_job_that_limited_does_not_name(store: Store) -> None:
    """The limit follows the worker's code: a job queued under a limit whose name the
    claim's ``limited`` does not list (the code dropped ``concurrency=``) runs freely."""
    first = limited(store, "a", run_at=T0 - 2)
    second = limited(store, "a", run_at=T0 - 1)
    assert sorted(job.id for job in claim_due(store)) == sorted([first, second])


def test_claims_from_two_stores_at_once_never_exceed_the_limit(
    shared_url: str, open_stores: Callable[[str], Store]
) -> None:
    """Threads claiming on two stores concurrently take exactly ``limit`` jobs of a key."""
    stores = [open_stores(shared_url), open_stores(shared_url)]
    for i in range(20):
        limited(stores[0], "a", limit=3, run_at=T0 - 20 + i)
    for i in range(20):
        limited(stores[0], "b", limit=2, run_at=T0 - 20 + i)
    start = threading.Barrier(6)
    claimed: list[str] = []
    lock = threading.Lock()

    def work(index: int) -> None:
        start.wait()
        for _ in range(5):
            ids = claim_limited(stores[index % 2], limit=2, owner=f"w{index}")
            with lock:
                claimed.extend(ids)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    claimed += claim_limited(stores[0], owner="last")  # whatever the races left free
    running = stores[0].job_list(states=["running"], limit=100)
    assert len(claimed) == len(set(claimed)) == len(running) == 5


@pytest.fixture
def two_schemas(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """Two fresh PostgreSQL schemas in one database: two stepstone deployments side by side."""
    with POSTGRES.fresh_url(tmp_path) as first, POSTGRES.fresh_url(tmp_path) as second:
        yield first, second


@pytest.mark.postgres
def test_a_claim_in_another_schema_does_not_block_this_schemas_limited_jobs(
    two_schemas: tuple[str, str], open_stores: Callable[[str], Store]
) -> None:
    """A claimer in another schema holding a key's lock does not stop claims of that key here."""
    import psycopg

    here_url, there_url = two_schemas
    here, there = open_stores(here_url), open_stores(there_url)
    job_id = limited(here, "shared")
    limited(there, "shared")
    key = f"{LIMITED}:shared-{_TEST_KEYS['suffix']}"
    base = here_url.split("?")[0]
    # What a claim in the other schema holds while it counts and claims that key's jobs.
    with psycopg.connect(base) as other_claimer, other_claimer.transaction():
        other_claimer.execute(
            "SELECT pg_advisory_xact_lock(hashtext('stepstone-limit:' || %s))", (key,)
        )
        assert claim_limited(here) == [job_id]


# --- concurrency limits: job_claim ------------------------------------------------------------


def test_job_claim_refuses_a_job_whose_key_is_full(store: Store) -> None:
    """``job_claim`` (``app.run``) takes a limited job only while its key has a free slot."""
    first = limited(store, "a")
    second = limited(store, "a")
    assert store.job_claim(first, owner="r", now=T0, lease_until=T0 + 10) is not None
    assert store.job_claim(second, owner="r", now=T0 + 1, lease_until=T0 + 11) is None
    assert state_of(store, second) == JobState.QUEUED
    assert store.job_claim(second, owner="r", now=T0 + 10.5, lease_until=T0 + 20) is not None


def test_job_claim_takes_a_limited_job_when_a_slot_is_free(store: Store) -> None:
    """Under the limit, ``job_claim`` takes the job; other keys never count."""
    limited(store, "b")
    claim_limited(store)
    first = limited(store, "a", limit=2)
    second = limited(store, "a", limit=2)
    assert store.job_claim(first, owner="r", now=T0, lease_until=T0 + 10) is not None
    claimed = store.job_claim(second, owner="r", now=T0, lease_until=T0 + 10)
    assert claimed is not None
    assert (claimed.fence, claimed.attempt) == (1, 1)


# --- cascading job_cancel ---------------------------------------------------------------------


def test_cancel_cascades_to_every_unfinished_descendant(store: Store) -> None:
    """Children and grandchildren, queued, running or waiting, are cancelled with the job."""
    parent = running_job(store)
    queued = insert_flow(store, parent_id=parent.id, run_at=T0 + 100)
    running = claim_one(store, insert_flow(store, parent_id=parent.id))
    waiting = claim_one(store, insert_flow(store, parent_id=parent.id))
    park(store, waiting.id, waiting.fence, until=T0 + 100, event=None, now=T0)
    grandchild = insert_flow(store, parent_id=queued, run_at=T0 + 100)
    done = claim_one(store, insert_flow(store, parent_id=parent.id))
    complete(store, done.id, done.fence, result="1", now=T0)
    unrelated = insert(store, run_at=T0 + 100)
    unrelated_running = running_job(store)
    assert store.job_cancel(parent.id, now=T0 + 5)
    for job_id in (parent.id, queued, running.id, waiting.id, grandchild):
        record = store.job_get(job_id)
        assert record is not None
        assert (record.state, record.finished_at) == (JobState.CANCELLED, T0 + 5)
        assert (record.lease_owner, record.lease_expires_at) == (None, None)
    assert state_of(store, done.id) == JobState.SUCCEEDED
    assert state_of(store, unrelated) == JobState.QUEUED
    assert state_of(store, unrelated_running.id) == JobState.RUNNING


def test_cancel_leaves_finished_children_as_they_are(store: Store) -> None:
    """A child that already ended keeps its outcome when its parent is cancelled."""
    parent = running_job(store)
    child_id = insert_flow(store, parent_id=parent.id)
    child = claim_one(store, child_id)
    complete(store, child.id, child.fence, result='"kept"', now=T0 + 1)
    assert store.job_cancel(parent.id, now=T0 + 2)
    record = store.job_get(child_id)
    assert record is not None
    assert (record.state, record.result, record.finished_at) == (
        JobState.SUCCEEDED,
        '"kept"',
        T0 + 1,
    )


def test_cancel_a_running_child_refuses_its_writes(store: Store) -> None:
    """A running child cancelled through its parent loses its lease like a cancelled job."""
    parent = running_job(store)
    child = claim_one(store, insert_flow(store, parent_id=parent.id))
    assert store.job_cancel(parent.id, now=T0 + 1)
    with pytest.raises(JobCancelled):
        complete(store, child.id, child.fence, result="1", now=T0 + 2)


def test_cancel_a_waiting_parent_and_its_child_leaves_both_cancelled(store: Store) -> None:
    """Cancelling a parent parked on its child: the child's end does not requeue the parent."""
    parent = running_job(store)
    child = insert_flow(store, parent_id=parent.id)
    park(store, parent.id, parent.fence, until=WAIT_FOREVER, event=None, child=child, now=T0)
    assert store.job_cancel(parent.id, now=T0 + 1)
    assert state_of(store, parent.id) == JobState.CANCELLED
    assert state_of(store, child) == JobState.CANCELLED
    assert claim_due(store, now=T0 + 2) == []


def test_cancel_a_child_wakes_its_waiting_parent(store: Store) -> None:
    """Cancelling only the child ends it: the parent waiting for it is queued."""
    parent = running_job(store)
    child = insert_flow(store, parent_id=parent.id)
    park(store, parent.id, parent.fence, until=WAIT_FOREVER, event=None, child=child, now=T0)
    assert store.job_cancel(child, now=T0 + 1)
    record = store.job_get(parent.id)
    assert record is not None
    assert (record.state, record.run_at) == (JobState.QUEUED, T0 + 1)


def test_cancel_a_finished_job_touches_none_of_its_children(store: Store) -> None:
    """Cancelling a finished job returns False and leaves its unfinished children alone."""
    parent = running_job(store)
    child = insert_flow(store, parent_id=parent.id, run_at=T0 + 100)
    complete(store, parent.id, parent.fence, result="1", now=T0 + 1)
    assert not store.job_cancel(parent.id, now=T0 + 2)
    assert state_of(store, child) == JobState.QUEUED


def test_cancel_an_unknown_job_raises_job_not_found_after_the_cascade(store: Store) -> None:
    """An unknown id is JobNotFound (the cascading query finds nothing to cancel)."""
    with pytest.raises(JobNotFound):
        store.job_cancel("no-such-job", now=T0)
