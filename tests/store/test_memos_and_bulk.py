"""The store contract for memo keys, bulk and caller-transaction enqueues, and transactional
steps: every backend must pass these tests (see ``stepstone._store.base``).

Time is a float each test chooses (``now=``), so nothing sleeps: a lease "expires" when a
later ``now`` is passed.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from stepstone._store import Store
from stepstone._store.base import (
    ClaimedJob,
    JobState,
    MemoClaim,
    MemoRecord,
    StepTransaction,
)
from stepstone._store.sqlite import SQLiteStore
from stepstone.errors import JobCancelled, LeaseLost, StepstoneError, StoreError

from .support import (
    LEASE,
    T0,
    claim_due,
    claim_one,
    complete,
    fail,
    insert,
    new_job,
    release,
    running_job,
)

KEY = "ocr:page-1"


def _acquire(store: Store, run: ClaimedJob, *, key: str = KEY, now: float = T0) -> MemoClaim:
    return store.memo_acquire(key, run.id, run.fence, step="ocr", now=now)


def _complete(
    store: Store,
    run: ClaimedJob,
    value: str,
    *,
    key: str = KEY,
    seq: int = 0,
    expires_at: float | None = None,
    now: float = T0,
) -> str:
    return store.memo_complete(
        key,
        run.id,
        run.fence,
        seq=seq,
        name="ocr",
        step="ocr",
        value=value,
        attempts=1,
        expires_at=expires_at,
        now=now,
    )


def _stored(store: Store, key: str = KEY, *, now: float = T0) -> MemoRecord:
    record = store.memo_get(key, now=now)
    assert record is not None, f"no memo stored under {key!r}"
    return record


def _done(store: Store, key: str, value: str, *, expires_at: float | None = None) -> None:
    """Store ``value`` under ``key`` as a fresh job's run would."""
    _complete(store, running_job(store), value, key=key, expires_at=expires_at)


def _stale_run(store: Store) -> tuple[ClaimedJob, ClaimedJob]:
    """A job claimed twice: (its first run, now stale; its current run)."""
    first = running_job(store)
    assert release(store, first.id, first.fence, now=T0)
    return first, claim_one(store, first.id, now=T0, owner="worker-b")


# --- memo_acquire ------------------------------------------------------------------------------


def test_memo_acquire_claims_a_free_key(store: Store) -> None:
    """A key nobody holds is acquired: stored as ``computing`` by this run, with no value."""
    run = running_job(store)
    assert _acquire(store, run) == MemoClaim("acquired")
    assert _stored(store) == MemoRecord(
        key=KEY,
        state="computing",
        step="ocr",
        value=None,
        owner_job=run.id,
        owner_fence=run.fence,
        expires_at=None,
        created_at=T0,
        updated_at=T0,
        owner_alive=True,
    )


def test_memo_acquire_while_the_owner_lives_is_busy(store: Store) -> None:
    """Another run asking for a key whose owner still holds its lease is told busy, by whom."""
    owner, other = running_job(store), running_job(store)
    _acquire(store, owner)
    before = _stored(store, now=T0 + 1)
    assert _acquire(store, other, now=T0 + 1) == MemoClaim("busy", other_job=owner.id)
    assert _acquire(store, other, now=T0 + LEASE) == MemoClaim("busy", other_job=owner.id)
    assert _stored(store, now=T0 + 1) == before


def test_memo_acquire_takes_over_once_the_owner_lease_expired(store: Store) -> None:
    """After the owner's lease ran out, another run acquires the key, naming the old owner."""
    owner, other = running_job(store), running_job(store)
    _acquire(store, owner)
    later = T0 + LEASE + 1
    assert not _stored(store, now=later).owner_alive
    assert _acquire(store, other, now=later) == MemoClaim("acquired", other_job=owner.id)
    record = _stored(store, now=later)
    assert (record.state, record.owner_job, record.owner_fence) == (
        "computing",
        other.id,
        other.fence,
    )
    assert (record.created_at, record.updated_at) == (T0, later)


def _cancel(store: Store, run: ClaimedJob) -> None:
    assert store.job_cancel(run.id, now=T0 + 1)


def _succeed(store: Store, run: ClaimedJob) -> None:
    complete(store, run.id, run.fence, result="null", now=T0 + 1)


def _fail(store: Store, run: ClaimedJob) -> None:
    fail(store, run.id, run.fence, error='"bad"', attempt=1, now=T0 + 1)


@pytest.mark.parametrize(
    "end",
    [
        pytest.param(_cancel, id="cancelled"),
        pytest.param(_succeed, id="succeeded"),
        pytest.param(_fail, id="failed"),
    ],
)
def test_memo_acquire_takes_over_from_an_owner_that_stopped_running(
    store: Store, end: Callable[[Store, ClaimedJob], None]
) -> None:
    """An owner whose job was cancelled or finished holds nothing, lease or not."""
    owner, other = running_job(store), running_job(store)
    _acquire(store, owner)
    end(store, owner)
    assert _acquire(store, other, now=T0 + 2) == MemoClaim("acquired", other_job=owner.id)
    assert _stored(store, now=T0 + 2).owner_job == other.id


def test_memo_acquire_takes_over_from_a_reclaimed_owner(store: Store) -> None:
    """An owner whose job was claimed again (another fence) no longer holds the key."""
    owner = running_job(store)
    _acquire(store, owner)
    assert release(store, owner.id, owner.fence, now=T0)
    again = claim_one(store, owner.id, now=T0, owner="worker-b")
    assert again.fence != owner.fence
    assert _acquire(store, again, now=T0 + 1) == MemoClaim("acquired", other_job=owner.id)
    assert _stored(store, now=T0 + 1).owner_fence == again.fence


def test_memo_acquire_of_a_done_value_is_a_hit(store: Store) -> None:
    """A stored, unexpired value is a hit with that value, and the memo is left as it was."""
    _done(store, KEY, '"text"', expires_at=T0 + 10)
    before = _stored(store)
    other = running_job(store)
    assert _acquire(store, other, now=T0 + 9.5) == MemoClaim("hit", value='"text"')
    assert _stored(store) == before


def test_memo_acquire_of_a_value_without_expiry_always_hits(store: Store) -> None:
    """A value stored without ``expires_at`` is a hit however late it is asked for."""
    _done(store, KEY, "42")
    assert _acquire(store, running_job(store), now=T0 + 10**6) == MemoClaim("hit", value="42")


def test_memo_acquire_of_an_expired_value_claims_the_key(store: Store) -> None:
    """Once ``expires_at <= now`` the stored value is ignored and the key is claimed afresh."""
    _done(store, KEY, '"old"', expires_at=T0 + 10)
    other = running_job(store)
    assert _acquire(store, other, now=T0 + 10) == MemoClaim("acquired")
    record = _stored(store, now=T0 + 10)
    assert (record.state, record.value, record.owner_job, record.expires_at) == (
        "computing",
        None,
        other.id,
        None,
    )


# --- memo_complete -----------------------------------------------------------------------------


def test_memo_complete_stores_the_memo_and_the_checkpoint(store: Store) -> None:
    """Completing stores the value as ``done`` and as the job's checkpoint naming the key."""
    run = running_job(store)
    _acquire(store, run)
    assert _complete(store, run, '{"pages": 3}', seq=2, expires_at=T0 + 60, now=T0 + 1) == (
        '{"pages": 3}'
    )
    assert _stored(store, now=T0 + 1) == MemoRecord(
        key=KEY,
        state="done",
        step="ocr",
        value='{"pages": 3}',
        owner_job=run.id,
        owner_fence=run.fence,
        expires_at=T0 + 60,
        created_at=T0,
        updated_at=T0 + 1,
        owner_alive=True,
    )
    [checkpoint] = store.checkpoint_list(run.id)
    assert (
        checkpoint.seq,
        checkpoint.name,
        checkpoint.status,
        checkpoint.value,
        checkpoint.attempts,
        checkpoint.created_at,
        checkpoint.memo,
    ) == (2, "ocr", "ok", '{"pages": 3}', 1, T0 + 1, KEY)


def test_memo_complete_of_an_unclaimed_key_stores_it(store: Store) -> None:
    """A run may store a key it never acquired (the key was free)."""
    run = running_job(store)
    assert _complete(store, run, '"v"') == '"v"'
    assert (_stored(store).state, _stored(store).value) == ("done", '"v"')
    assert [c.memo for c in store.checkpoint_list(run.id)] == [KEY]


def test_memo_complete_after_another_run_stored_keeps_the_first_value(store: Store) -> None:
    """A run that lost the key stores nothing new: the value stored first is checkpointed
    and returned."""
    slow, fast = running_job(store), running_job(store)
    _acquire(store, slow)
    later = T0 + LEASE + 1
    assert _acquire(store, fast, now=later).outcome == "acquired"
    assert _complete(store, fast, '"fast"', now=later) == '"fast"'
    assert _complete(store, slow, '"slow"', now=later + 1) == '"fast"'
    record = _stored(store, now=later + 1)
    assert (record.value, record.owner_job, record.updated_at) == ('"fast"', fast.id, later)
    [checkpoint] = store.checkpoint_list(slow.id)
    assert (checkpoint.value, checkpoint.memo) == ('"fast"', KEY)


def test_memo_complete_replaces_an_expired_value(store: Store) -> None:
    """A value whose time to live ran out does not win: the new value is stored."""
    _done(store, KEY, '"old"', expires_at=T0 + 10)
    run = running_job(store)
    assert _complete(store, run, '"new"', expires_at=T0 + 30, now=T0 + 20) == '"new"'
    record = _stored(store, now=T0 + 20)
    assert (record.value, record.owner_job, record.expires_at) == ('"new"', run.id, T0 + 30)
    assert [c.value for c in store.checkpoint_list(run.id)] == ['"new"']


def test_memo_complete_with_a_stale_fence_writes_nothing(store: Store) -> None:
    """A run that lost its job gets LeaseLost; neither the memo nor the checkpoint is written."""
    stale, _current = _stale_run(store)
    _acquire(store, stale)
    with pytest.raises(LeaseLost):
        _complete(store, stale, '"v"', now=T0 + 1)
    record = _stored(store, now=T0 + 1)
    assert (record.state, record.value) == ("computing", None)
    assert store.checkpoint_list(stale.id) == []


def test_memo_complete_with_a_stale_fence_on_a_free_key_leaves_it_free(store: Store) -> None:
    """A refused completion of a key nobody held leaves no memo behind."""
    stale, _current = _stale_run(store)
    with pytest.raises(LeaseLost):
        _complete(store, stale, '"v"', now=T0 + 1)
    assert store.memo_get(KEY, now=T0 + 1) is None
    assert store.checkpoint_list(stale.id) == []


def test_memo_complete_for_a_cancelled_job_raises_job_cancelled(store: Store) -> None:
    """The run of a job cancelled under it gets JobCancelled and stores nothing."""
    run = running_job(store)
    _acquire(store, run)
    assert store.job_cancel(run.id, now=T0 + 1)
    with pytest.raises(JobCancelled):
        _complete(store, run, '"v"', now=T0 + 2)
    assert _stored(store, now=T0 + 2).state == "computing"
    assert store.checkpoint_list(run.id) == []


def test_memo_complete_at_a_taken_position_stores_no_memo(store: Store) -> None:
    """When the checkpoint cannot be written (its position is taken), the memo is not stored."""
    run = running_job(store)
    store.checkpoint_insert(
        run.id, run.fence, seq=0, name="first", status="ok", value="1", attempts=1, now=T0
    )
    with pytest.raises(StepstoneError):
        _complete(store, run, '"v"', seq=0, now=T0 + 1)
    assert store.memo_get(KEY, now=T0 + 1) is None
    assert [c.value for c in store.checkpoint_list(run.id)] == ["1"]


# --- memo_release ------------------------------------------------------------------------------


def test_memo_release_frees_this_runs_claim(store: Store) -> None:
    """Releasing drops the run's ``computing`` claim: the next run acquires a free key."""
    run, other = running_job(store), running_job(store)
    _acquire(store, run)
    store.memo_release(KEY, run.id, run.fence)
    assert store.memo_get(KEY, now=T0) is None
    assert _acquire(store, other, now=T0 + 1) == MemoClaim("acquired")


def test_memo_release_leaves_another_runs_claim(store: Store) -> None:
    """Releasing a claim this run does not hold (other job, or other fence) changes nothing."""
    stale, current = _stale_run(store)
    other = running_job(store)
    _acquire(store, current)
    before = _stored(store)
    store.memo_release(KEY, other.id, other.fence)
    store.memo_release(KEY, stale.id, stale.fence)
    assert _stored(store) == before


def test_memo_release_leaves_a_done_value(store: Store) -> None:
    """Releasing after the value was stored keeps the value."""
    run = running_job(store)
    _acquire(store, run)
    _complete(store, run, '"v"')
    store.memo_release(KEY, run.id, run.fence)
    assert (_stored(store).state, _stored(store).value) == ("done", '"v"')


def test_memo_release_of_an_unknown_key_does_nothing(store: Store) -> None:
    """Releasing a key nobody stored raises nothing."""
    run = running_job(store)
    store.memo_release("no-such-key", run.id, run.fence)
    assert store.memo_list() == []


# --- memo_get, memo_list, memo_forget, memo_prune ----------------------------------------------


def test_memo_list_filters_by_prefix_in_key_order(store: Store) -> None:
    """``memo_list`` returns the keys starting with ``prefix`` (taken literally), by key."""
    for key in ("img:b", "doc:a", "img:a", "img_x", "im%g", "img:c"):
        _done(store, key, '"v"')
    assert [m.key for m in store.memo_list()] == [
        "doc:a",
        "im%g",
        "img:a",
        "img:b",
        "img:c",
        "img_x",
    ]
    assert [m.key for m in store.memo_list("img:")] == ["img:a", "img:b", "img:c"]
    assert [m.key for m in store.memo_list("img_")] == ["img_x"]
    assert [m.key for m in store.memo_list("im%")] == ["im%g"]
    assert store.memo_list("nothing") == []


def test_memo_list_respects_the_limit(store: Store) -> None:
    """At most ``limit`` memos come back, the first by key; the default is 100."""
    for i in range(5):
        _done(store, f"k{i}", str(i))
    assert [m.key for m in store.memo_list(limit=2)] == ["k0", "k1"]
    assert [m.value for m in store.memo_list("k", limit=3)] == ["0", "1", "2"]


def test_memo_forget_drops_one_key(store: Store) -> None:
    """Forgetting a key drops it alone (``memo_get`` finds nothing) and returns 1; an unknown
    key returns 0."""
    for key in ("img:a", "img:ab"):
        _done(store, key, '"v"')
    assert store.memo_forget("img:a") == 1
    assert store.memo_get("img:a", now=T0) is None
    assert [m.key for m in store.memo_list()] == ["img:ab"]
    assert store.memo_forget("img:a") == 0
    assert store.memo_forget("img:") == 0


def test_memo_forget_a_prefix_drops_every_key_starting_with_it(store: Store) -> None:
    """``prefix=True`` drops the keys starting with the text (taken literally) and counts them."""
    for key in ("img:a", "img:b", "img_c", "doc:a"):
        _done(store, key, '"v"')
    run = running_job(store)
    _acquire(store, run, key="img:computing")
    assert store.memo_forget("img:", prefix=True) == 3
    assert [m.key for m in store.memo_list()] == ["doc:a", "img_c"]
    assert store.memo_forget("img%", prefix=True) == 0
    assert store.memo_forget("", prefix=True) == 2
    assert store.memo_list() == []


def test_a_forgotten_key_is_computed_again(store: Store) -> None:
    """After forgetting a stored value, the next run acquires the key instead of hitting."""
    _done(store, KEY, '"v"')
    assert store.memo_forget(KEY) == 1
    assert _acquire(store, running_job(store), now=T0 + 1) == MemoClaim("acquired")


def test_memo_prune_drops_only_expired_values(store: Store) -> None:
    """Pruning drops done memos with ``expires_at <= now``; live, unexpiring and computing
    ones stay."""
    _done(store, "expired", "1", expires_at=T0 + 5)
    _done(store, "expires-now", "2", expires_at=T0 + 10)
    _done(store, "live", "3", expires_at=T0 + 11)
    _done(store, "forever", "4")
    _acquire(store, running_job(store), key="computing")
    assert store.memo_prune(now=T0 + 10) == 2
    assert [m.key for m in store.memo_list()] == ["computing", "forever", "live"]
    assert store.memo_prune(now=T0 + 10) == 0


# --- checkpoint_insert with a memo key ---------------------------------------------------------


def test_checkpoint_insert_stores_the_memo_key(store: Store) -> None:
    """A checkpoint names the memo key it was written with, or none."""
    run = running_job(store)
    store.checkpoint_insert(
        run.id, run.fence, seq=0, name="a", status="ok", value="1", attempts=0, now=T0, memo=KEY
    )
    store.checkpoint_insert(
        run.id, run.fence, seq=1, name="b", status="ok", value="2", attempts=1, now=T0
    )
    assert [(c.seq, c.memo) for c in store.checkpoint_list(run.id)] == [(0, KEY), (1, None)]


# --- job_insert_many ---------------------------------------------------------------------------


def test_insert_many_creates_queued_jobs_in_order(store: Store) -> None:
    """Every job is created, queued and claimable; results follow the order given."""
    jobs = [
        new_job("ocr.run", key="bulk:1", args='["a"]', priority=2, run_at=T0 + 1),
        new_job(args='["b"]'),
        new_job(key="bulk:0", queue="bulk", run_at=T0 - 1),
    ]
    results = store.job_insert_many(jobs, now=T0)
    assert [r.job.id for r in results] == [job.id for job in jobs]
    assert all(r.created for r in results)
    for job, result in zip(jobs, results, strict=True):
        assert store.job_get(job.id) == result.job
        assert (result.job.key, result.job.args, result.job.queue) == (job.key, job.args, job.queue)
        assert (result.job.priority, result.job.run_at) == (job.priority, job.run_at)
        assert (result.job.state, result.job.fence, result.job.created_at) == (
            JobState.QUEUED,
            0,
            T0,
        )
    assert {job.id for job in claim_due(store, now=T0 + 1)} == {job.id for job in jobs}


def test_insert_many_with_a_taken_key_returns_the_existing_job(store: Store) -> None:
    """A key already taken yields its job with created=False; the other jobs are created."""
    first = insert(store, key="bulk:taken", args='["first"]')
    jobs = [new_job(key="bulk:new"), new_job(key="bulk:taken", args='["second"]'), new_job()]
    results = store.job_insert_many(jobs, now=T0 + 1)
    assert [r.created for r in results] == [True, False, True]
    assert results[1].job == store.job_get(first)
    assert results[1].job.args == '["first"]'
    assert store.job_get(jobs[1].id) is None
    assert [r.job.id for r in results] == [jobs[0].id, first, jobs[2].id]


def test_insert_many_without_keys_creates_every_job(store: Store) -> None:
    """Jobs without a key never conflict with each other."""
    jobs = [new_job() for _ in range(4)]
    results = store.job_insert_many(jobs, now=T0)
    assert [(r.job.id, r.created) for r in results] == [(job.id, True) for job in jobs]
    assert {record.id for record in store.job_list()} == {job.id for job in jobs}


def test_insert_many_is_one_transaction(store: Store) -> None:
    """When one job cannot be inserted (its id is taken), none of the batch is: StoreError."""
    taken = insert(store)
    jobs = [new_job(key="bulk:1"), new_job(job_id=taken, key="bulk:2"), new_job()]
    with pytest.raises(StoreError):
        store.job_insert_many(jobs, now=T0 + 1)
    assert [record.id for record in store.job_list()] == [taken]
    assert store.job_get_by_key("bulk:1") is None


def test_insert_many_of_nothing(store: Store) -> None:
    """An empty list inserts nothing and returns an empty list."""
    assert store.job_insert_many([], now=T0) == []
    assert store.job_list() == []


# --- job_insert_on -----------------------------------------------------------------------------


@contextmanager
def _caller_connection(store: Store) -> Iterator[Any]:
    """The caller's own connection to the store's database (not autocommitting)."""
    if isinstance(store, SQLiteStore):
        if store.memory:
            pytest.skip("no other connection can open sqlite:///:memory: (see the test below)")
        connection: Any = sqlite3.connect(store.path)
    else:
        import psycopg

        connection = psycopg.connect(store.conninfo)  # type: ignore[attr-defined]
    try:
        yield connection
    finally:
        connection.close()


def test_insert_on_commits_with_the_callers_transaction(store: Store) -> None:
    """The job exists for the store only once the caller's transaction commits."""
    job = new_job(key="on:1")
    with _caller_connection(store) as connection:
        result = store.job_insert_on(connection, job, now=T0)
        assert result.created
        assert result.job.state == JobState.QUEUED
        assert store.job_get(job.id) is None
        assert store.job_get_by_key("on:1") is None
        connection.commit()
    assert store.job_get(job.id) == result.job
    assert [claimed.id for claimed in claim_due(store)] == [job.id]


def test_insert_on_then_rollback_leaves_no_job(store: Store) -> None:
    """A rolled-back caller transaction takes the job with it, and frees its key."""
    job = new_job(key="on:1")
    with _caller_connection(store) as connection:
        assert store.job_insert_on(connection, job, now=T0).created
        connection.rollback()
    assert store.job_get(job.id) is None
    assert claim_due(store) == []
    assert store.job_insert(new_job(key="on:1"), now=T0 + 1).created


def test_insert_on_with_a_taken_key_returns_the_existing_job(store: Store) -> None:
    """Through the caller's connection too, a taken key yields its job with created=False."""
    first = insert(store, key="on:1", args='["first"]')
    with _caller_connection(store) as connection:
        again = store.job_insert_on(connection, new_job(key="on:1"), now=T0 + 1)
        connection.commit()
    assert not again.created
    assert again.job == store.job_get(first)
    assert len(store.job_list()) == 1


def test_insert_on_something_not_a_connection_raises_type_error(store: Store) -> None:
    """A connection object of the wrong driver is a TypeError, on every backend."""
    with pytest.raises(TypeError):
        store.job_insert_on(object(), new_job(), now=T0)
    assert store.job_list() == []


def test_insert_on_a_connection_to_another_sqlite_file_raises_store_error(
    tmp_path: Path,
) -> None:
    """On SQLite, a connection to a different file cannot share the job's transaction."""
    store = SQLiteStore(str(tmp_path / "jobs.db"))
    connection = sqlite3.connect(tmp_path / "other.db")
    try:
        with pytest.raises(StoreError, match="same database file"):
            store.job_insert_on(connection, new_job(), now=T0)
        assert store.job_list() == []
    finally:
        connection.close()
        store.close()


def test_insert_on_the_memory_backend_raises_store_error() -> None:
    """An in-memory SQLite store cannot be reached through another connection."""
    store = SQLiteStore(":memory:")
    connection = sqlite3.connect(":memory:")
    try:
        with pytest.raises(StoreError, match="memory"):
            store.job_insert_on(connection, new_job(), now=T0)
        assert store.job_list() == []
    finally:
        connection.close()
        store.close()


# --- step_transaction --------------------------------------------------------------------------


class _StepFailed(Exception):
    pass


def _raise(tx: StepTransaction) -> None:
    raise _StepFailed


@dataclass(frozen=True)
class _Notes:
    """The user's own table, written by transactional steps."""

    store: Store
    table: str
    #: The driver's placeholder: ``?`` for sqlite3, ``%s`` for psycopg.
    mark: str

    def step(
        self,
        job_id: str | None,
        fence: int | None,
        *bodies: str,
        now: float = T0 + 1,
        then: Callable[[StepTransaction], None] | None = None,
    ) -> None:
        """One transactional step: insert ``bodies``, write checkpoint #0, then ``then(tx)``."""
        with self.store.step_transaction(job_id, fence) as tx:
            for body in bodies:
                tx.connection.execute(
                    f"INSERT INTO {self.table} (body) VALUES ({self.mark})", (body,)
                )
            tx.checkpoint(seq=0, name="save", value='"saved"', attempts=1, now=now)
            if then is not None:
                then(tx)

    def read(self) -> list[str]:
        """The committed rows, read in a transaction of their own."""
        with self.store.step_transaction(None, None) as tx:
            query = f"SELECT body FROM {self.table} ORDER BY body"
            return [row[0] for row in tx.connection.execute(query)]


@pytest.fixture
def notes(store: Store) -> _Notes:
    """The user's table in the store's database (in the store's schema on PostgreSQL)."""
    if isinstance(store, SQLiteStore):
        table, mark = "user_notes", "?"
    else:
        schema: str = store.schema  # type: ignore[attr-defined]
        table, mark = '"' + schema.replace('"', '""') + '".user_notes', "%s"
    with store.step_transaction(None, None) as tx:
        tx.connection.execute(f"CREATE TABLE IF NOT EXISTS {table} (body TEXT PRIMARY KEY)")
    return _Notes(store, table, mark)


def test_step_transaction_commits_writes_and_checkpoint_together(
    store: Store, notes: _Notes
) -> None:
    """On a normal exit, the step's own writes and its checkpoint are both committed."""
    run = running_job(store)
    notes.step(run.id, run.fence, "hello", "world")
    assert notes.read() == ["hello", "world"]
    [checkpoint] = store.checkpoint_list(run.id)
    assert (checkpoint.seq, checkpoint.name, checkpoint.status, checkpoint.value) == (
        0,
        "save",
        "ok",
        '"saved"',
    )
    assert (checkpoint.attempts, checkpoint.created_at, checkpoint.memo) == (1, T0 + 1, None)


def test_step_transaction_rolls_both_back_on_an_exception(store: Store, notes: _Notes) -> None:
    """An exception inside the block rolls back the step's writes and its checkpoint."""
    run = running_job(store)
    with pytest.raises(_StepFailed):
        notes.step(run.id, run.fence, "hello", then=_raise)
    assert notes.read() == []
    assert store.checkpoint_list(run.id) == []
    notes.step(run.id, run.fence, "again", now=T0 + 2)
    assert notes.read() == ["again"]
    assert [c.created_at for c in store.checkpoint_list(run.id)] == [T0 + 2]


@pytest.mark.parametrize("end", ["commit", "rollback"])
def test_step_transaction_refuses_commit_and_rollback(
    store: Store, notes: _Notes, end: str
) -> None:
    """The step may not end the transaction itself: StepstoneError, and nothing commits."""
    run = running_job(store)
    with pytest.raises(StepstoneError):
        notes.step(run.id, run.fence, "hello", then=lambda tx: getattr(tx.connection, end)())
    assert notes.read() == []
    assert store.checkpoint_list(run.id) == []


def test_step_transaction_with_a_stale_fence_commits_nothing(store: Store, notes: _Notes) -> None:
    """A run that lost its job gets LeaseLost from ``checkpoint``; its writes roll back."""
    stale, current = _stale_run(store)
    with pytest.raises(LeaseLost):
        notes.step(stale.id, stale.fence, "hello")
    assert notes.read() == []
    assert store.checkpoint_list(stale.id) == []
    record = store.job_get(current.id)
    assert record is not None
    assert (record.state, record.fence) == (JobState.RUNNING, current.fence)


def test_step_transaction_for_a_cancelled_job_commits_nothing(store: Store, notes: _Notes) -> None:
    """The run of a job cancelled under it gets JobCancelled; its writes roll back."""
    run = running_job(store)
    assert store.job_cancel(run.id, now=T0 + 1)
    with pytest.raises(JobCancelled):
        notes.step(run.id, run.fence, "hello", now=T0 + 2)
    assert notes.read() == []
    assert store.checkpoint_list(run.id) == []


def test_step_transaction_without_a_job_writes_no_checkpoint(store: Store, notes: _Notes) -> None:
    """Outside a job, the block is a plain transaction: writes commit, ``checkpoint`` is a no-op."""
    run = running_job(store)
    notes.step(None, None, "hello")
    assert notes.read() == ["hello"]
    assert store.checkpoint_list(run.id) == []
    with pytest.raises(_StepFailed):
        notes.step(None, None, "again", then=_raise)
    assert notes.read() == ["hello"]


def test_step_transaction_leaves_the_store_usable(store: Store, notes: _Notes) -> None:
    """After committed and rolled-back steps, the store's own reads and writes still work."""
    run = running_job(store)
    with pytest.raises(_StepFailed):
        notes.step(run.id, run.fence, "lost", then=_raise)
    with pytest.raises(LeaseLost):
        notes.step(run.id, run.fence + 1, "refused")
    notes.step(run.id, run.fence, "kept")
    complete(store, run.id, run.fence, result="null", now=T0 + 3)
    record = store.job_get(run.id)
    assert record is not None
    assert record.state == JobState.SUCCEEDED
    [created] = store.job_insert_many([new_job()], now=T0)
    assert created.created
    assert notes.read() == ["kept"]


# --- job_get_many ------------------------------------------------------------------------------


def test_get_many_finds_jobs_by_id_and_by_key(store: Store) -> None:
    """job_get_many returns the jobs named by ids or by keys, once each, and leaves out
    unknown ones."""
    first = insert(store, key="many:1")
    second = insert(store, key="many:2")
    third = insert(store)
    by_ids = store.job_get_many(ids=[first, third, "no-such-id"])
    assert sorted(record.id for record in by_ids) == sorted([first, third])
    by_keys = store.job_get_many(keys=["many:2", "many:9"])
    assert [record.id for record in by_keys] == [second]
    both = store.job_get_many(ids=[first], keys=["many:1", "many:2"])
    assert sorted(record.id for record in both) == sorted([first, second])
    assert store.job_get_many() == []


# --- job_complete_many -------------------------------------------------------------------------


def test_complete_many_records_every_owned_success_and_explains_the_rest(store: Store) -> None:
    """job_transition_many writes the successes of the runs that own their jobs, and returns
    LeaseLost or JobCancelled for the others, writing nothing for them."""
    from stepstone._store.base import Outcome

    owned = [running_job(store) for _ in range(3)]
    stale = running_job(store)
    cancelled = running_job(store)
    assert store.job_cancel(cancelled.id, now=T0)
    refused = store.job_transition_many(
        [
            *(Outcome.complete(job.id, job.fence, f'"{n}"') for n, job in enumerate(owned)),
            Outcome.complete(stale.id, stale.fence + 1, '"stale"'),
            Outcome.complete(cancelled.id, cancelled.fence, '"late"'),
        ],
        now=T0 + 1,
    )
    assert {job_id: type(error).__name__ for job_id, error in refused.items()} == {
        stale.id: "LeaseLost",
        cancelled.id: "JobCancelled",
    }
    for n, job in enumerate(owned):
        record = store.job_get(job.id)
        assert record is not None
        assert (record.state, record.result, record.finished_at) == ("succeeded", f'"{n}"', T0 + 1)
    record = store.job_get(stale.id)
    assert record is not None
    assert record.state == "running"
