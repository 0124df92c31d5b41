"""The store contract: every backend must pass these tests (see ``stepstone._store.base``).

Time is a float each test chooses (``now=``), so nothing sleeps: a lease "expires" when a
later ``now`` is passed.
"""

from __future__ import annotations

import itertools
import re
import threading
import time
from collections.abc import Callable

import pytest

from stepstone._maintenance import POISON_RECLAIMS
from stepstone._store import Store
from stepstone._store.base import JobRecord, JobState
from stepstone.errors import JobCancelled, JobNotFound, LeaseLost, StepstoneError, StoreError

from .support import (
    LEASE,
    NAMES,
    T0,
    claim_due,
    claim_one,
    complete,
    fail,
    insert,
    new_job,
    release,
    rescue,
    retry_later,
    running_job,
)

# --- job_insert, job_get, job_get_by_key, job_list ------------------------------------------


def test_insert_stores_a_queued_job(store: Store) -> None:
    """A new job is queued, unclaimed, with every field as given."""
    job = new_job("ocr.run", queue="ocr", key="ocr:1", args='["a1"]', priority=3, run_at=T0 + 5)
    inserted = store.job_insert(job, now=T0)
    assert inserted.created
    record = store.job_get(job.id)
    assert record == inserted.job
    assert record == JobRecord(
        id=job.id,
        name="ocr.run",
        queue="ocr",
        key="ocr:1",
        args='["a1"]',
        state=JobState.QUEUED,
        priority=3,
        run_at=T0 + 5,
        attempts=0,
        fence=0,
        reclaims=0,
        lease_owner=None,
        lease_expires_at=None,
        result=None,
        error=None,
        created_at=T0,
        updated_at=T0,
        started_at=None,
        finished_at=None,
    )


def test_insert_with_a_taken_key_returns_the_first_job(store: Store) -> None:
    """A second insert with the same key creates nothing and returns the first job."""
    first = new_job(key="index:a1", args='["first"]')
    second = new_job(key="index:a1", args='["second"]')
    assert store.job_insert(first, now=T0).created
    again = store.job_insert(second, now=T0 + 1)
    assert not again.created
    assert again.job == store.job_get(first.id)
    assert again.job.args == '["first"]'
    assert store.job_get(second.id) is None


def test_insert_without_a_key_never_conflicts(store: Store) -> None:
    """Jobs without a key are all created, however many."""
    ids = [insert(store) for _ in range(3)]
    assert {record.id for record in store.job_list()} == set(ids)


def test_insert_with_an_owner_gives_a_running_job(store: Store) -> None:
    """Inserting with ``owner`` gives a job running under that owner with fence 1, attempt 1."""
    job = new_job()
    inserted = store.job_insert(job, now=T0, owner="runner", lease_until=T0 + LEASE)
    assert inserted.created
    record = store.job_get(job.id)
    assert record == inserted.job
    assert record is not None
    assert record.state == JobState.RUNNING
    assert (record.fence, record.attempts) == (1, 1)
    assert record.lease_owner == "runner"
    assert record.lease_expires_at == T0 + LEASE
    assert record.started_at == T0
    assert claim_due(store) == []
    assert store.job_claim(job.id, owner="other", now=T0, lease_until=T0 + LEASE) is None
    store.checkpoint_insert(
        job.id, 1, seq=0, name="find_customer", status="ok", value="1", attempts=1, now=T0
    )
    complete(store, job.id, 1, result="null", now=T0 + 1)


def test_insert_with_an_owner_and_a_taken_key_claims_nothing(store: Store) -> None:
    """With a taken key, inserting with ``owner`` returns the first job and leaves it as it was."""
    first = new_job(key="index:a1")
    store.job_insert(first, now=T0)
    again = store.job_insert(
        new_job(key="index:a1"), now=T0 + 1, owner="runner", lease_until=T0 + 9
    )
    assert not again.created
    record = store.job_get(first.id)
    assert again.job == record
    assert record is not None
    assert (record.state, record.fence, record.attempts, record.lease_owner) == (
        JobState.QUEUED,
        0,
        0,
        None,
    )


def test_insert_with_a_taken_id_raises_store_error(store: Store) -> None:
    """A clash of ids is a StoreError, never a driver exception."""
    job = new_job()
    store.job_insert(job, now=T0)
    with pytest.raises(StoreError):
        store.job_insert(new_job(job_id=job.id, key="other"), now=T0)


def test_get_unknown_returns_none(store: Store) -> None:
    """An unknown id or key finds nothing."""
    assert store.job_get("no-such-job") is None
    assert store.job_get_by_key("no-such-key") is None


def test_get_by_key(store: Store) -> None:
    """A job is found by its key."""
    insert(store, key="a")
    job_id = insert(store, key="b")
    record = store.job_get_by_key("b")
    assert record is not None
    assert record.id == job_id


def test_list_is_newest_first_and_limited(store: Store) -> None:
    """``job_list`` returns the most recently created jobs first, at most ``limit``."""
    ids = [insert(store, now=T0 + i) for i in range(5)]
    assert [record.id for record in store.job_list()] == ids[::-1]
    assert [record.id for record in store.job_list(limit=2)] == [ids[4], ids[3]]


def test_list_defaults_to_fifty_jobs(store: Store) -> None:
    """Without a limit, ``job_list`` returns 50 jobs."""
    for i in range(55):
        insert(store, now=T0 + i)
    assert len(store.job_list()) == 50


def test_list_filters_by_state(store: Store) -> None:
    """``states`` keeps only jobs in one of those states."""
    queued = insert(store, now=T0)
    running = running_job(store, now=T0 + 1).id
    done = running_job(store, now=T0 + 2)
    complete(store, done.id, done.fence, result="1", now=T0 + 3)
    assert [r.id for r in store.job_list(states=["running"])] == [running]
    assert [r.id for r in store.job_list(states=["queued", "succeeded"])] == [done.id, queued]
    assert store.job_list(states=["failed"]) == []


def test_list_filters_by_name(store: Store) -> None:
    """``name`` keeps only jobs of that name, combined with ``states``."""
    mail = insert(store, name="mail.send", now=T0)
    ocr = insert(store, name="ocr.run", now=T0 + 1)
    assert [r.id for r in store.job_list(name="mail.send")] == [mail]
    assert [r.id for r in store.job_list(name="ocr.run", states=["queued"])] == [ocr]
    assert store.job_list(name="ocr.run", states=["running"]) == []


# --- job_claim_due ----------------------------------------------------------------------------


def test_claim_due_takes_only_due_jobs(store: Store) -> None:
    """Only jobs with ``run_at <= now`` are claimed."""
    past = insert(store, run_at=T0 - 1)
    now = insert(store, run_at=T0)
    later = insert(store, run_at=T0 + 1)
    assert {job.id for job in claim_due(store, now=T0)} == {past, now}
    assert [job.id for job in claim_due(store, now=T0 + 1)] == [later]


def test_claim_due_takes_only_listed_names(store: Store) -> None:
    """Jobs whose name the worker does not know stay queued."""
    mail = insert(store, name="mail.send")
    ocr = insert(store, name="ocr.run")
    assert [job.id for job in claim_due(store, names=("mail.send",))] == [mail]
    assert claim_due(store, names=("unknown.job",)) == []
    record = store.job_get(ocr)
    assert record is not None
    assert record.state == JobState.QUEUED


def test_claim_due_takes_only_listed_queues(store: Store) -> None:
    """Jobs in other queues stay queued; ``queues=None`` means every queue."""
    default = insert(store, queue="default")
    ocr = insert(store, queue="ocr")
    bulk = insert(store, queue="bulk")
    assert [job.id for job in claim_due(store, queues=("ocr",))] == [ocr]
    assert claim_due(store, queues=("ocr", "nothing")) == []
    assert {job.id for job in claim_due(store, queues=None)} == {default, bulk}


def test_claim_due_orders_by_priority_then_run_at(store: Store) -> None:
    """Higher priority first, then older ``run_at``; the claims come back in that order."""
    low_old = insert(store, priority=0, run_at=T0 - 30)
    high_new = insert(store, priority=5, run_at=T0 - 1)
    high_old = insert(store, priority=5, run_at=T0 - 20)
    mid = insert(store, priority=1, run_at=T0 - 2)
    low_new = insert(store, priority=0, run_at=T0 - 10)
    first = claim_due(store, limit=3)
    assert [job.id for job in first] == [high_old, high_new, mid]
    assert [job.id for job in claim_due(store, limit=3)] == [low_old, low_new]


def test_claim_due_respects_the_limit(store: Store) -> None:
    """At most ``limit`` jobs per claim; the rest stay queued for the next."""
    for i in range(7):
        insert(store, run_at=T0 - i)
    assert len(claim_due(store, limit=3)) == 3
    assert len(claim_due(store, limit=3)) == 3
    assert len(claim_due(store, limit=3)) == 1
    assert claim_due(store, limit=3) == []


def test_claim_due_marks_jobs_running_under_the_lease(store: Store) -> None:
    """A claimed job is running, owned by the claimer until ``lease_until``, fence 1, attempt 1."""
    job_id = insert(store, key="k", args='["x"]', priority=2, queue="q", name="ocr.run")
    [claimed] = store.job_claim_due(
        owner="w1", names=NAMES, queues=None, limit=10, now=T0 + 1, lease_until=T0 + 61
    )
    assert (claimed.id, claimed.name, claimed.queue, claimed.key) == (job_id, "ocr.run", "q", "k")
    assert (claimed.args, claimed.priority) == ('["x"]', 2)
    assert (claimed.fence, claimed.attempt) == (1, 1)
    record = store.job_get(job_id)
    assert record is not None
    assert record.state == JobState.RUNNING
    assert record.lease_owner == "w1"
    assert record.lease_expires_at == T0 + 61
    assert (record.fence, record.attempts) == (1, 1)
    assert record.started_at == T0 + 1
    assert record.updated_at == T0 + 1


def test_claims_never_return_the_same_job_twice(store: Store) -> None:
    """Successive claims return disjoint sets of jobs."""
    ids = {insert(store, run_at=T0 - i) for i in range(10)}
    seen: list[str] = []
    for owner in ("a", "b", "c", "d"):
        seen += [job.id for job in claim_due(store, limit=3, owner=owner)]
    assert sorted(seen) == sorted(ids)
    assert store.job_claim(seen[0], owner="e", now=T0, lease_until=T0 + LEASE) is None


def test_threads_claiming_through_one_store_never_share_a_job(store: Store) -> None:
    """Worker threads sharing one store object claim every job exactly once."""
    ids = {insert(store, run_at=T0 - i) for i in range(120)}
    claimed: list[list[str]] = [[] for _ in range(4)]
    start = threading.Barrier(4)

    def work(index: int) -> None:
        start.wait()
        while batch := claim_due(store, limit=3, owner=f"thread-{index}"):
            claimed[index] += [job.id for job in batch]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    every = [job_id for batch in claimed for job_id in batch]
    assert sorted(every) == sorted(ids)


def test_two_stores_on_one_database_never_claim_the_same_job(
    shared_url: str, open_stores: Callable[[str], Store]
) -> None:
    """Two workers with their own store on one database claim disjoint jobs."""
    first, second = open_stores(shared_url), open_stores(shared_url)
    ids = {insert(first, run_at=T0 - i) for i in range(9)}
    seen: list[str] = []
    for turn in range(6):
        worker = (first, second)[turn % 2]
        seen += [job.id for job in claim_due(worker, limit=2, owner=f"w{turn % 2}")]
    assert sorted(seen) == sorted(ids)


def test_change_marker_moves_when_another_store_commits(
    shared_url: str, open_stores: Callable[[str], Store]
) -> None:
    """A store that offers a change marker sees it change soon after another connection
    inserts a job (at once on SQLite; on PostgreSQL when the notification arrives)."""
    watcher, writer = open_stores(shared_url), open_stores(shared_url)
    if watcher.change_marker() is None:
        insert(writer)
        assert watcher.change_marker() is None
        return
    time.sleep(0.3)  # let a listening store finish subscribing
    before = watcher.change_marker()
    insert(writer)
    deadline = time.monotonic() + 5
    while watcher.change_marker() == before and time.monotonic() < deadline:
        time.sleep(0.01)
    after = watcher.change_marker()
    assert after != before


def test_each_claim_bumps_the_fence(store: Store) -> None:
    """Claim, release, claim again: the fence goes 1, 2, 3."""
    job_id = insert(store)
    fences = []
    for i in range(3):
        claimed = claim_one(store, job_id, now=T0 + i)
        fences.append(claimed.fence)
        assert release(store, job_id, claimed.fence, now=T0 + i)
    assert fences == [1, 2, 3]


def test_a_fresh_claim_after_a_retry_counts_an_attempt(store: Store) -> None:
    """A claim after ``job_retry_later`` is a new attempt."""
    claimed = running_job(store)
    retry_later(
        store, claimed.id, claimed.fence, error='"boom"', attempt=1, run_at=T0 + 10, now=T0 + 1
    )
    [again] = claim_due(store, now=T0 + 10)
    assert (again.fence, again.attempt) == (2, 2)


def test_a_claim_after_release_is_a_replay(store: Store) -> None:
    """A claim after ``job_release`` keeps the attempt number."""
    claimed = running_job(store)
    assert release(store, claimed.id, claimed.fence, now=T0 + 1)
    [again] = claim_due(store, now=T0 + 1)
    assert (again.fence, again.attempt) == (2, 1)
    record = store.job_get(claimed.id)
    assert record is not None
    assert record.attempts == 1


def test_a_claim_after_rescue_is_a_replay(store: Store) -> None:
    """A claim after the rescuer requeued an expired lease keeps the attempt number."""
    claimed = running_job(store)
    rescue(store, now=T0 + LEASE + 1)
    [again] = claim_due(store, now=T0 + LEASE + 1)
    assert (again.id, again.fence, again.attempt) == (claimed.id, 2, 1)


def test_a_replay_then_a_fresh_claim(store: Store) -> None:
    """Only the claim right after a release is a replay; the next retry counts again."""
    claimed = running_job(store)
    release(store, claimed.id, claimed.fence, now=T0 + 1)
    replay = claim_one(store, claimed.id, now=T0 + 2)
    retry_later(store, claimed.id, replay.fence, error='"e"', attempt=1, run_at=T0, now=T0 + 3)
    fresh = claim_one(store, claimed.id, now=T0 + 4)
    assert [replay.attempt, fresh.attempt] == [1, 2]
    assert fresh.fence == 3


# --- job_claim --------------------------------------------------------------------------------


def test_claim_one_takes_a_queued_job_whatever_its_run_at(store: Store) -> None:
    """``job_claim`` claims a queued job even if it is not due yet."""
    job_id = insert(store, run_at=T0 + 3600)
    claimed = store.job_claim(job_id, owner="runner", now=T0, lease_until=T0 + 5)
    assert claimed is not None
    assert (claimed.id, claimed.fence, claimed.attempt) == (job_id, 1, 1)
    record = store.job_get(job_id)
    assert record is not None
    assert (record.state, record.lease_owner, record.lease_expires_at) == (
        JobState.RUNNING,
        "runner",
        T0 + 5,
    )


def test_claim_one_refuses_jobs_that_are_not_queued(store: Store) -> None:
    """``job_claim`` returns None for a running, finished or unknown job."""
    running = running_job(store)
    done = running_job(store)
    complete(store, done.id, done.fence, result="1", now=T0)
    for job_id in (running.id, done.id, "no-such-job"):
        assert store.job_claim(job_id, owner="x", now=T0, lease_until=T0 + LEASE) is None
    record = store.job_get(running.id)
    assert record is not None
    assert (record.fence, record.lease_owner) == (1, "worker-a")


# --- fencing ----------------------------------------------------------------------------------


def _checkpoint(store: Store, job_id: str, fence: int, now: float) -> None:
    store.checkpoint_insert(
        job_id, fence, seq=0, name="find_customer", status="ok", value="{}", attempts=1, now=now
    )


def _complete(store: Store, job_id: str, fence: int, now: float) -> None:
    complete(store, job_id, fence, result='"done"', now=now)


def _fail(store: Store, job_id: str, fence: int, now: float) -> None:
    fail(store, job_id, fence, error='"bad"', attempt=1, now=now)


def _retry_later(store: Store, job_id: str, fence: int, now: float) -> None:
    retry_later(store, job_id, fence, error='"bad"', attempt=1, run_at=now + 60, now=now)


FENCED_WRITES = [
    pytest.param(_checkpoint, id="checkpoint_insert"),
    pytest.param(_complete, id="job_complete"),
    pytest.param(_fail, id="job_fail"),
    pytest.param(_retry_later, id="job_retry_later"),
]


def _reclaimed_twice(store: Store) -> tuple[str, int, int]:
    """A job claimed three times: (id, a stale fence 2, the current fence 3)."""
    job_id = insert(store)
    for i in range(2):
        stale = claim_one(store, job_id, now=T0 + i)
        release(store, job_id, stale.fence, now=T0 + i)
    current = claim_one(store, job_id, now=T0 + 2, owner="worker-b")
    return job_id, stale.fence, current.fence


@pytest.mark.parametrize("write", FENCED_WRITES)
def test_a_stale_fence_raises_lease_lost_naming_both_tokens(
    store: Store, write: Callable[[Store, str, int, float], None]
) -> None:
    """A write with an old fencing token raises LeaseLost naming both tokens."""
    job_id, stale, current = _reclaimed_twice(store)
    assert (stale, current) == (2, 3)
    with pytest.raises(LeaseLost) as caught:
        write(store, job_id, stale, T0 + 3)
    message = str(caught.value)
    assert re.search(r"\b2\b", message), message
    assert re.search(r"\b3\b", message), message


@pytest.mark.parametrize("write", FENCED_WRITES)
def test_a_stale_fence_changes_nothing(
    store: Store, write: Callable[[Store, str, int, float], None]
) -> None:
    """A refused write leaves the job, its checkpoints and its errors as they were."""
    job_id, stale, _ = _reclaimed_twice(store)
    before = store.job_get(job_id)
    with pytest.raises(LeaseLost):
        write(store, job_id, stale, T0 + 3)
    assert store.job_get(job_id) == before
    assert store.checkpoint_list(job_id) == []
    assert store.error_list(job_id) == []


@pytest.mark.parametrize("write", FENCED_WRITES)
def test_a_write_after_the_lease_was_rescued_raises_lease_lost(
    store: Store, write: Callable[[Store, str, int, float], None]
) -> None:
    """Once the rescuer requeued the job, its former owner's writes raise LeaseLost."""
    claimed = running_job(store)
    assert list(rescue(store, now=T0 + LEASE + 1).requeued) == [claimed.id]
    with pytest.raises(LeaseLost):
        write(store, claimed.id, claimed.fence, T0 + LEASE + 2)
    record = store.job_get(claimed.id)
    assert record is not None
    assert record.state == JobState.QUEUED


@pytest.mark.parametrize("write", FENCED_WRITES)
def test_a_write_to_a_cancelled_job_raises_job_cancelled(
    store: Store, write: Callable[[Store, str, int, float], None]
) -> None:
    """The owner of a job cancelled under it gets JobCancelled, and nothing is written."""
    claimed = running_job(store)
    assert store.job_cancel(claimed.id, now=T0 + 1)
    with pytest.raises(JobCancelled):
        write(store, claimed.id, claimed.fence, T0 + 2)
    record = store.job_get(claimed.id)
    assert record is not None
    assert record.state == JobState.CANCELLED
    assert store.checkpoint_list(claimed.id) == []


def test_a_write_to_an_unknown_job_raises_lease_lost(store: Store) -> None:
    """Writing for a job that no longer exists raises LeaseLost."""
    with pytest.raises(LeaseLost):
        _checkpoint(store, "no-such-job", 1, T0)
    with pytest.raises(LeaseLost):
        _complete(store, "no-such-job", 1, T0)


def test_a_checkpoint_is_never_written_twice(store: Store) -> None:
    """A second checkpoint at a taken position raises and the stored one is unchanged."""
    claimed = running_job(store)
    store.checkpoint_insert(
        claimed.id, claimed.fence, seq=0, name="ocr", status="ok", value='"v1"', attempts=1, now=T0
    )
    with pytest.raises(StepstoneError):
        store.checkpoint_insert(
            claimed.id,
            claimed.fence,
            seq=0,
            name="ocr2",
            status="error",
            value='"v2"',
            attempts=2,
            now=T0 + 1,
        )
    [stored] = store.checkpoint_list(claimed.id)
    assert (stored.seq, stored.name, stored.status, stored.value, stored.attempts) == (
        0,
        "ocr",
        "ok",
        '"v1"',
        1,
    )
    assert stored.created_at == T0


def test_a_new_owner_cannot_overwrite_a_checkpoint(store: Store) -> None:
    """After a reclaim, the stored checkpoints of the old owner cannot be written again."""
    first = running_job(store)
    _checkpoint(store, first.id, first.fence, T0)
    release(store, first.id, first.fence, now=T0 + 1)
    second = claim_one(store, first.id, now=T0 + 1)
    with pytest.raises(StepstoneError):
        store.checkpoint_insert(
            first.id, second.fence, seq=0, name="x", status="ok", value="2", attempts=1, now=T0
        )
    assert [c.value for c in store.checkpoint_list(first.id)] == ["{}"]


def test_no_checkpoint_lands_after_the_job_was_taken_away(
    shared_url: str, open_stores: Callable[[str], Store]
) -> None:
    """A worker writing checkpoints while its lease is rescued gets nothing in after the rescue."""
    worker, rescuer = open_stores(shared_url), open_stores(shared_url)
    for round_ in range(20):
        claimed = running_job(worker, now=T0)
        written = threading.Event()
        outcome: list[BaseException] = []

        def write_until_refused(job_id: str = claimed.id, fence: int = claimed.fence) -> None:
            deadline = time.monotonic() + 60
            try:
                for seq in itertools.count():  # until refused, however slow the machine
                    if time.monotonic() > deadline:
                        break
                    worker.checkpoint_insert(
                        job_id, fence, seq=seq, name="s", status="ok", value="1", attempts=1, now=T0
                    )
                    if seq == 2:
                        written.set()
            except BaseException as exc:
                outcome.append(exc)
            finally:
                written.set()

        thread = threading.Thread(target=write_until_refused)
        thread.start()
        assert written.wait(timeout=30)
        # A row busy with a write at this very moment is skipped and taken on a later pass.
        for _ in range(100):
            if list(rescue(rescuer, now=T0 + 10 * LEASE).requeued) == [claimed.id]:
                break
        else:
            raise AssertionError(f"round {round_}: the expired job was never rescued")
        at_rescue = len(rescuer.checkpoint_list(claimed.id))
        thread.join(timeout=30)
        assert [type(exc) for exc in outcome] == [LeaseLost], f"round {round_}: {outcome}"
        assert len(rescuer.checkpoint_list(claimed.id)) == at_rescue, f"round {round_}"


def test_heartbeat_extends_the_lease(store: Store) -> None:
    """A heartbeat with the current fence moves ``lease_expires_at`` and loses nothing."""
    claimed = running_job(store)
    assert store.job_heartbeat([(claimed.id, claimed.fence)], lease_until=T0 + 90) == set()
    record = store.job_get(claimed.id)
    assert record is not None
    assert record.lease_expires_at == T0 + 90
    assert list(rescue(store, now=T0 + 60).requeued) == []


def test_heartbeat_reports_lost_leases(store: Store) -> None:
    """Stale, released, cancelled and unknown leases are reported lost; live ones extended."""
    live = running_job(store)
    job_id, stale, _ = _reclaimed_twice(store)
    released = running_job(store)
    release(store, released.id, released.fence, now=T0)
    cancelled = running_job(store)
    store.job_cancel(cancelled.id, now=T0)
    leases = [
        (live.id, live.fence),
        (job_id, stale),
        (released.id, released.fence),
        (cancelled.id, cancelled.fence),
        ("no-such-job", 1),
    ]
    lost = store.job_heartbeat(leases, lease_until=T0 + 100)
    assert lost == {job_id, released.id, cancelled.id, "no-such-job"}
    record = store.job_get(job_id)
    assert record is not None
    assert record.lease_expires_at == T0 + 2 + LEASE
    live_record = store.job_get(live.id)
    assert live_record is not None
    assert live_record.lease_expires_at == T0 + 100


def test_heartbeat_of_nothing(store: Store) -> None:
    """A heartbeat with no leases loses nothing."""
    assert store.job_heartbeat([], lease_until=T0) == set()


# --- job_rescue_expired -----------------------------------------------------------------------


def test_rescue_requeues_only_expired_leases(store: Store) -> None:
    """Running jobs whose lease expired are requeued, due at once; live leases are kept."""
    expired = running_job(store, now=T0)
    live = running_job(store, now=T0 + 40)
    queued = insert(store)
    rescued = rescue(store, now=T0 + 50)
    assert list(rescued.requeued) == [expired.id]
    assert list(rescued.poisoned) == []
    record = store.job_get(expired.id)
    assert record is not None
    assert record.state == JobState.QUEUED
    assert (record.lease_owner, record.lease_expires_at) == (None, None)
    live_record = store.job_get(live.id)
    assert live_record is not None
    assert (live_record.state, live_record.fence) == (JobState.RUNNING, 1)
    assert {job.id for job in claim_due(store, now=T0 + 50)} == {expired.id, queued}


def test_rescue_respects_the_limit(store: Store) -> None:
    """One pass requeues at most ``limit`` jobs; the next pass takes the rest."""
    ids = {running_job(store).id for _ in range(3)}
    first = rescue(store, now=T0 + LEASE + 1, limit=2)
    second = rescue(store, now=T0 + LEASE + 1, limit=2)
    assert len(first.requeued) == 2
    assert set(first.requeued) | set(second.requeued) == ids


def test_rescue_leaves_finished_and_queued_jobs_alone(store: Store) -> None:
    """Only running jobs are rescued."""
    done = running_job(store)
    complete(store, done.id, done.fence, result="1", now=T0)
    insert(store)
    rescued = rescue(store, now=T0 + 10 * LEASE)
    assert (list(rescued.requeued), list(rescued.poisoned)) == ([], [])


def _expire(store: Store, job_id: str, round_: int) -> tuple[list[str], list[str]]:
    """Claim the job, let its lease run out, run the rescuer: (requeued, poisoned)."""
    now = T0 + round_ * 1000
    claim_one(store, job_id, now=now)
    rescued = rescue(store, now=now + LEASE + 1)
    return list(rescued.requeued), list(rescued.poisoned)


def test_a_job_reclaimed_again_and_again_is_poison(store: Store) -> None:
    """The POISON_RECLAIMS-th expiry in a row without a new checkpoint fails the job."""
    job_id = insert(store)
    for round_ in range(POISON_RECLAIMS - 1):
        assert _expire(store, job_id, round_) == ([job_id], []), f"expiry {round_ + 1}"
    assert _expire(store, job_id, POISON_RECLAIMS - 1) == ([], [job_id])
    record = store.job_get(job_id)
    assert record is not None
    assert record.state == JobState.FAILED
    assert record.error is not None
    assert "poison" in record.error
    assert (record.lease_owner, record.lease_expires_at) == (None, None)
    assert record.finished_at is not None
    assert "poison" in store.error_list(job_id)[-1].error
    assert claim_due(store, now=T0 + 10**6) == []


def test_a_new_checkpoint_resets_the_poison_count(store: Store) -> None:
    """A run that writes a checkpoint starts the count of reclaims in a row again: it then
    takes POISON_RECLAIMS more reclaims without a checkpoint to fail the job."""
    job_id = insert(store)
    for round_ in range(POISON_RECLAIMS - 1):
        assert _expire(store, job_id, round_) == ([job_id], [])
    claimed = claim_one(store, job_id, now=T0 + 50_000)
    _checkpoint(store, job_id, claimed.fence, T0 + 50_000)
    assert list(rescue(store, now=T0 + 50_000 + LEASE + 1).requeued) == [job_id]
    for round_ in range(100, 100 + POISON_RECLAIMS - 1):
        assert _expire(store, job_id, round_) == ([job_id], []), f"expiry {round_}"
    assert _expire(store, job_id, 200) == ([], [job_id])


def test_a_requeued_poison_job_starts_counting_again(store: Store) -> None:
    """After ``job_requeue`` of a poisoned job, one more expiry only requeues it."""
    job_id = insert(store)
    for round_ in range(POISON_RECLAIMS):
        _expire(store, job_id, round_)
    assert store.job_requeue(job_id, now=T0 + 50_000)
    assert _expire(store, job_id, 100) == ([job_id], [])


def test_a_released_lease_is_not_rescued(store: Store) -> None:
    """A job given back by ``job_release`` is queued, not running, so there is nothing to rescue."""
    claimed = running_job(store)
    release(store, claimed.id, claimed.fence, now=T0 + 1)
    assert list(rescue(store, now=T0 + 10 * LEASE).requeued) == []


# --- outcomes ---------------------------------------------------------------------------------


def _history(store: Store, job_id: str, fence: int, statuses: str) -> None:
    """Write checkpoints 0.. with statuses from a string: 'o' for ok, 'e' for error."""
    for seq, letter in enumerate(statuses):
        store.checkpoint_insert(
            job_id,
            fence,
            seq=seq,
            name=f"step{seq}",
            status={"o": "ok", "e": "error"}[letter],
            value=f'"{seq}"',
            attempts=1,
            now=T0 + seq,
        )


def test_retry_later_requeues_at_run_at_with_the_error(store: Store) -> None:
    """``job_retry_later`` queues the job for ``run_at``, records its error, frees the lease."""
    claimed = running_job(store)
    retry_later(
        store,
        claimed.id,
        claimed.fence,
        error='{"type": "E"}',
        attempt=1,
        run_at=T0 + 60,
        now=T0 + 2,
    )
    record = store.job_get(claimed.id)
    assert record is not None
    assert (record.state, record.run_at, record.error) == (
        JobState.QUEUED,
        T0 + 60,
        '{"type": "E"}',
    )
    assert (record.lease_owner, record.lease_expires_at, record.finished_at) == (None, None, None)
    [error] = store.error_list(claimed.id)
    assert (error.attempt, error.error, error.created_at) == (1, '{"type": "E"}', T0 + 2)
    assert claim_due(store, now=T0 + 59) == []
    assert [job.id for job in claim_due(store, now=T0 + 60)] == [claimed.id]


def test_retry_later_drops_from_the_first_step_error(store: Store) -> None:
    """The first stored step error and every checkpoint after it go; earlier ones stay."""
    claimed = running_job(store)
    _history(store, claimed.id, claimed.fence, "ooeoe")
    _retry_later(store, claimed.id, claimed.fence, T0 + 10)
    kept = store.checkpoint_list(claimed.id)
    assert [(c.seq, c.status) for c in kept] == [(0, "ok"), (1, "ok")]


def test_retry_later_keeps_a_history_without_errors(store: Store) -> None:
    """Without a stored step error, every checkpoint is kept for the next attempt."""
    claimed = running_job(store)
    _history(store, claimed.id, claimed.fence, "ooo")
    _retry_later(store, claimed.id, claimed.fence, T0 + 10)
    assert [c.seq for c in store.checkpoint_list(claimed.id)] == [0, 1, 2]


def test_retry_later_after_an_error_at_the_first_step_drops_everything(store: Store) -> None:
    """A stored error at position 0 drops the whole history."""
    claimed = running_job(store)
    _history(store, claimed.id, claimed.fence, "eo")
    _retry_later(store, claimed.id, claimed.fence, T0 + 10)
    assert store.checkpoint_list(claimed.id) == []


def test_fail_records_the_final_error(store: Store) -> None:
    """``job_fail`` makes the job failed with its error, keeps its history, frees the lease."""
    claimed = running_job(store)
    _history(store, claimed.id, claimed.fence, "oe")
    fail(store, claimed.id, claimed.fence, error='{"type": "Boom"}', attempt=1, now=T0 + 5)
    record = store.job_get(claimed.id)
    assert record is not None
    assert (record.state, record.error, record.finished_at) == (
        JobState.FAILED,
        '{"type": "Boom"}',
        T0 + 5,
    )
    assert (record.lease_owner, record.lease_expires_at) == (None, None)
    assert [(e.attempt, e.error) for e in store.error_list(claimed.id)] == [(1, '{"type": "Boom"}')]
    assert len(store.checkpoint_list(claimed.id)) == 2
    assert claim_due(store, now=T0 + 10**6) == []


def test_complete_records_the_result(store: Store) -> None:
    """``job_complete`` makes the job succeeded with its result and frees the lease."""
    claimed = running_job(store)
    complete(store, claimed.id, claimed.fence, result='{"ok": true}', now=T0 + 5)
    record = store.job_get(claimed.id)
    assert record is not None
    assert (record.state, record.result, record.finished_at, record.updated_at) == (
        JobState.SUCCEEDED,
        '{"ok": true}',
        T0 + 5,
        T0 + 5,
    )
    assert (record.lease_owner, record.lease_expires_at, record.error) == (None, None, None)


@pytest.mark.parametrize("write", FENCED_WRITES)
@pytest.mark.parametrize("finish", [_complete, _fail], ids=["succeeded", "failed"])
def test_a_finished_job_takes_no_more_writes(
    store: Store,
    finish: Callable[[Store, str, int, float], None],
    write: Callable[[Store, str, int, float], None],
) -> None:
    """Once finished, even its last owner cannot complete, fail, retry or checkpoint the job."""
    claimed = running_job(store)
    finish(store, claimed.id, claimed.fence, T0 + 1)
    before = store.job_get(claimed.id)
    errors = store.error_list(claimed.id)
    with pytest.raises(LeaseLost):
        write(store, claimed.id, claimed.fence, T0 + 2)
    assert store.job_get(claimed.id) == before
    assert store.error_list(claimed.id) == errors
    assert store.checkpoint_list(claimed.id) == []


# --- job_release, job_cancel, job_requeue ------------------------------------------------------


def test_release_gives_the_job_back_due_now(store: Store) -> None:
    """A released job is queued, due at the release time, without owner."""
    claimed = running_job(store, run_at=T0 - 100)
    assert release(store, claimed.id, claimed.fence, now=T0 + 7)
    record = store.job_get(claimed.id)
    assert record is not None
    assert (record.state, record.lease_owner, record.lease_expires_at) == (
        JobState.QUEUED,
        None,
        None,
    )
    assert [job.id for job in claim_due(store, now=T0 + 7)] == [claimed.id]


def test_release_needs_the_current_fence(store: Store) -> None:
    """Releasing with a stale fence, or a job that is not running, changes nothing."""
    job_id, stale, current = _reclaimed_twice(store)
    before = store.job_get(job_id)
    assert not release(store, job_id, stale, now=T0 + 5)
    assert store.job_get(job_id) == before
    assert release(store, job_id, current, now=T0 + 5)
    assert not release(store, job_id, current, now=T0 + 6)
    assert not release(store, "no-such-job", 1, now=T0 + 6)


@pytest.mark.parametrize("state", ["queued", "running"])
def test_cancel_an_unfinished_job(store: Store, state: str) -> None:
    """Cancelling a queued or running job makes it cancelled at once and unclaimable."""
    job_id = insert(store) if state == "queued" else running_job(store).id
    assert store.job_cancel(job_id, now=T0 + 3)
    record = store.job_get(job_id)
    assert record is not None
    assert (record.state, record.finished_at) == (JobState.CANCELLED, T0 + 3)
    assert (record.lease_owner, record.lease_expires_at) == (None, None)
    assert claim_due(store, now=T0 + 10) == []
    assert store.job_claim(job_id, owner="x", now=T0 + 10, lease_until=T0 + 99) is None


def test_cancel_a_finished_job_does_nothing(store: Store) -> None:
    """Cancelling a succeeded, failed or cancelled job returns False and changes nothing."""
    succeeded = running_job(store)
    complete(store, succeeded.id, succeeded.fence, result="1", now=T0)
    failed = running_job(store)
    fail(store, failed.id, failed.fence, error='"x"', attempt=1, now=T0)
    cancelled = insert(store)
    store.job_cancel(cancelled, now=T0)
    for job_id in (succeeded.id, failed.id, cancelled):
        before = store.job_get(job_id)
        assert store.job_cancel(job_id, now=T0 + 5) is False
        assert store.job_get(job_id) == before


def test_cancel_an_unknown_job_raises_job_not_found(store: Store) -> None:
    """Cancelling an unknown id raises JobNotFound."""
    with pytest.raises(JobNotFound):
        store.job_cancel("no-such-job", now=T0)


@pytest.mark.parametrize("outcome", ["succeeded", "failed", "cancelled"])
def test_a_finished_job_keeps_its_key(store: Store, outcome: str) -> None:
    """The key of a finished job stays taken (until the job is pruned)."""
    job_id = _finished(store, outcome, T0 + 1, key="index:a1")
    again = store.job_insert(new_job(key="index:a1"), now=T0 + 2)
    assert not again.created
    assert (again.job.id, again.job.state) == (job_id, JobState(outcome))


@pytest.mark.parametrize("finish", ["failed", "cancelled"])
def test_requeue_gives_a_fresh_attempt_budget(store: Store, finish: str) -> None:
    """A failed or cancelled job is queued again, due now, with its attempts reset."""
    claimed = running_job(store)
    retry_later(store, claimed.id, claimed.fence, error='"e"', attempt=1, run_at=T0, now=T0)
    second = claim_one(store, claimed.id, now=T0 + 1)
    assert second.attempt == 2
    if finish == "failed":
        fail(store, claimed.id, second.fence, error='"e"', attempt=2, now=T0 + 2)
    else:
        store.job_cancel(claimed.id, now=T0 + 2)
    assert store.job_requeue(claimed.id, now=T0 + 100)
    record = store.job_get(claimed.id)
    assert record is not None
    assert (record.state, record.attempts, record.finished_at) == (JobState.QUEUED, 0, None)
    [again] = claim_due(store, now=T0 + 100)
    assert (again.id, again.attempt, again.fence) == (claimed.id, 1, 3)


def test_requeue_of_a_failed_job_drops_from_the_first_step_error(store: Store) -> None:
    """A requeued failed job keeps the checkpoints before its first stored error, like a retry."""
    claimed = running_job(store)
    _history(store, claimed.id, claimed.fence, "oeo")
    fail(store, claimed.id, claimed.fence, error='"e"', attempt=1, now=T0 + 5)
    assert store.job_requeue(claimed.id, now=T0 + 6)
    assert [(c.seq, c.status) for c in store.checkpoint_list(claimed.id)] == [(0, "ok")]


def test_requeue_refuses_unfinished_and_succeeded_jobs(store: Store) -> None:
    """Requeueing a queued, running or succeeded job returns False and changes nothing."""
    queued = insert(store)
    running = running_job(store).id
    succeeded = running_job(store)
    complete(store, succeeded.id, succeeded.fence, result="1", now=T0)
    for job_id in (queued, running, succeeded.id):
        before = store.job_get(job_id)
        assert store.job_requeue(job_id, now=T0 + 5) is False
        assert store.job_get(job_id) == before


def test_requeue_an_unknown_job_raises_job_not_found(store: Store) -> None:
    """Requeueing an unknown id raises JobNotFound."""
    with pytest.raises(JobNotFound):
        store.job_requeue("no-such-job", now=T0)


# --- job_prune --------------------------------------------------------------------------------


def _finished(store: Store, outcome: str, at: float, key: str | None = None) -> str:
    """A job with one checkpoint and one error, finished as ``outcome`` at ``at``."""
    claimed = running_job(store, key=key)
    _checkpoint(store, claimed.id, claimed.fence, T0)
    store.error_insert(
        claimed.id, claimed.fence, attempt=1, seq=0, step="find_customer", error='"e"', now=T0
    )
    if outcome == "succeeded":
        complete(store, claimed.id, claimed.fence, result="1", now=at)
    elif outcome == "failed":
        fail(store, claimed.id, claimed.fence, error='"x"', attempt=1, now=at)
    else:
        store.job_cancel(claimed.id, now=at)
    return claimed.id


def test_prune_deletes_only_jobs_finished_before_the_cutoff(store: Store) -> None:
    """Finished jobs older than the cutoff go with their history; everything else stays."""
    old = [_finished(store, outcome, T0 + 10) for outcome in ("succeeded", "failed", "cancelled")]
    recent = _finished(store, "succeeded", T0 + 100)
    queued = insert(store, now=T0)
    running = running_job(store, now=T0).id
    assert store.job_prune(finished_before=T0 + 50) == 3
    for job_id in old:
        assert store.job_get(job_id) is None
        assert store.checkpoint_list(job_id) == []
        assert store.error_list(job_id) == []
    for job_id in (recent, queued, running):
        assert store.job_get(job_id) is not None
    assert len(store.checkpoint_list(recent)) == 1
    assert len(store.error_list(recent)) == 1


def test_prune_frees_the_key(store: Store) -> None:
    """After pruning, a finished job's key can be used again."""
    _finished(store, "succeeded", T0 + 10, key="index:a1")
    store.job_prune(finished_before=T0 + 50)
    assert store.job_insert(new_job(key="index:a1"), now=T0 + 60).created


def test_prune_respects_the_limit(store: Store) -> None:
    """One prune deletes at most ``limit`` jobs."""
    for _ in range(3):
        _finished(store, "succeeded", T0 + 10)
    assert store.job_prune(finished_before=T0 + 50, limit=2) == 2
    assert store.job_prune(finished_before=T0 + 50, limit=2) == 1
    assert store.job_prune(finished_before=T0 + 50, limit=2) == 0


# --- job_idle_status --------------------------------------------------------------------------


def test_idle_status_of_an_empty_store(store: Store) -> None:
    """Nothing due, nothing running, nothing scheduled."""
    status = store.job_idle_status(names=NAMES, queues=None, now=T0)
    assert (status.due, status.running, status.next_run_at) == (False, 0, None)


def test_idle_status_sees_due_running_and_scheduled_jobs(store: Store) -> None:
    """``due`` says a claimable job is due, ``running`` counts, ``next_run_at`` is the soonest."""
    insert(store, run_at=T0 + 30)
    insert(store, run_at=T0 + 20)
    running_job(store)
    running_job(store)
    status = store.job_idle_status(names=NAMES, queues=None, now=T0)
    assert (status.due, status.running, status.next_run_at) == (False, 2, T0 + 20)
    status = store.job_idle_status(names=NAMES, queues=None, now=T0 + 20)
    assert (status.due, status.next_run_at) == (True, T0 + 20)


def test_idle_status_only_counts_claimable_names_and_queues(store: Store) -> None:
    """Jobs the worker could not claim (other names or queues) are neither due nor next."""
    insert(store, name="other.job", run_at=T0)
    insert(store, queue="ocr", run_at=T0 + 5)
    status = store.job_idle_status(names=NAMES, queues=("default",), now=T0 + 10)
    assert (status.due, status.next_run_at) == (False, None)
    status = store.job_idle_status(names=NAMES, queues=("ocr",), now=T0 + 10)
    assert (status.due, status.next_run_at) == (True, T0 + 5)
    status = store.job_idle_status(names=NAMES, queues=None, now=T0)
    assert (status.due, status.next_run_at) == (False, T0 + 5)


# --- checkpoints and errors -------------------------------------------------------------------


def test_checkpoint_list_is_in_position_order(store: Store) -> None:
    """Checkpoints come back by position, whatever order they were written in."""
    claimed = running_job(store)
    for seq in (2, 0, 3, 1):
        store.checkpoint_insert(
            claimed.id,
            claimed.fence,
            seq=seq,
            name=f"step{seq}",
            status="error" if seq == 3 else "ok",
            value=f'"{seq}"',
            attempts=seq + 1,
            now=T0 + seq,
        )
    history = store.checkpoint_list(claimed.id)
    assert [(c.seq, c.name, c.status, c.value, c.attempts, c.created_at) for c in history] == [
        (0, "step0", "ok", '"0"', 1, T0),
        (1, "step1", "ok", '"1"', 2, T0 + 1),
        (2, "step2", "ok", '"2"', 3, T0 + 2),
        (3, "step3", "error", '"3"', 4, T0 + 3),
    ]
    assert store.checkpoint_list("no-such-job") == []


def test_error_insert_records_a_step_error(store: Store) -> None:
    """``error_insert`` by the owner stores the attempt, position, step name and error."""
    claimed = running_job(store)
    store.error_insert(claimed.id, claimed.fence, attempt=1, seq=2, step="ocr", error='"x"', now=T0)
    [error] = store.error_list(claimed.id)
    assert (error.attempt, error.seq, error.step, error.error, error.created_at) == (
        1,
        2,
        "ocr",
        '"x"',
        T0,
    )


def test_error_insert_with_a_stale_fence_is_ignored(store: Store) -> None:
    """A step error reported by a worker that lost the job is dropped without raising."""
    job_id, stale, _ = _reclaimed_twice(store)
    store.error_insert(job_id, stale, attempt=1, seq=0, step="ocr", error='"x"', now=T0)
    store.error_insert("no-such-job", 1, attempt=1, seq=0, step="ocr", error='"x"', now=T0)
    assert store.error_list(job_id) == []
    assert store.error_list("no-such-job") == []


def test_error_list_is_oldest_first(store: Store) -> None:
    """Step errors and attempt errors come back in the order they were recorded."""
    claimed = running_job(store)
    store.error_insert(claimed.id, claimed.fence, attempt=1, seq=0, step="a", error='"1"', now=T0)
    store.error_insert(claimed.id, claimed.fence, attempt=1, seq=0, step="a", error='"2"', now=T0)
    _retry_later(store, claimed.id, claimed.fence, T0 + 1)
    second = claim_one(store, claimed.id, now=T0 + 100)
    store.error_insert(claimed.id, second.fence, attempt=2, seq=1, step="b", error='"4"', now=T0)
    fail(store, claimed.id, second.fence, error='"5"', attempt=2, now=T0 + 101)
    errors = store.error_list(claimed.id)
    assert [(e.attempt, e.error) for e in errors] == [
        (1, '"1"'),
        (1, '"2"'),
        (1, '"bad"'),
        (2, '"4"'),
        (2, '"5"'),
    ]


# --- migrations -------------------------------------------------------------------------------


def test_migrate_is_idempotent(store: Store) -> None:
    """An opened store is migrated: migrating again applies nothing, twice."""
    assert store.migrate() == []
    assert store.migrate() == []


def test_reopening_a_database_applies_nothing_and_keeps_the_data(
    shared_url: str, open_stores: Callable[[str], Store]
) -> None:
    """A second store on a migrated database sees its jobs and has no migration left to apply."""
    first = open_stores(shared_url)
    job_id = insert(first)
    second = open_stores(shared_url)
    assert second.migrate() == []
    assert second.job_get(job_id) == first.job_get(job_id)
