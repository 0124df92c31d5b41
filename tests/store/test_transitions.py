"""The one fenced transition of a run's outcome, and the rescuer's read, decision and write.

``job_transition_many`` writes a group of outcomes (complete, fail, retry later, release,
park) in one transaction, each only while its fence owns the running job, and names the
refused ones with why. The rescuer reads expired leases, decides in ``_maintenance`` and
has the store write each decision only while that lease is still expired and unrenewed.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from stepstone._maintenance import POISON_RECLAIMS, decide, rescue_expired
from stepstone._store import Store
from stepstone._store.base import ExpiredLease, JobState, Outcome, OutcomeKind, RescueDecision
from stepstone.errors import JobCancelled, LeaseLost

from .support import LEASE, T0, claim_due, claim_one, insert, release, running_job

#: One outcome of each kind for a job and fence.
OUTCOMES: dict[OutcomeKind, Callable[[str, int], Outcome]] = {
    OutcomeKind.COMPLETE: lambda job_id, fence: Outcome.complete(job_id, fence, '"done"'),
    OutcomeKind.FAIL: lambda job_id, fence: Outcome.fail(job_id, fence, error='"bad"', attempt=1),
    OutcomeKind.RETRY: lambda job_id, fence: Outcome.retry_later(
        job_id, fence, error='"again"', attempt=1, run_at=T0 + 60
    ),
    OutcomeKind.RELEASE: Outcome.release,
    OutcomeKind.PARK: lambda job_id, fence: Outcome.park(job_id, fence, until=T0 + 90),
}
#: The state each kind leaves its job in.
WRITTEN_STATE = {
    OutcomeKind.COMPLETE: JobState.SUCCEEDED,
    OutcomeKind.FAIL: JobState.FAILED,
    OutcomeKind.RETRY: JobState.QUEUED,
    OutcomeKind.RELEASE: JobState.QUEUED,
    OutcomeKind.PARK: JobState.WAITING,
}
KINDS = [pytest.param(kind, id=kind.value) for kind in OutcomeKind]


def _state(store: Store, job_id: str) -> JobState:
    record = store.job_get(job_id)
    assert record is not None
    return record.state


# --- job_transition_many --------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_moves_the_job_out_of_running(store: Store, kind: OutcomeKind) -> None:
    """Each outcome, written by its owner, leaves the job in its state with no lease."""
    job = running_job(store)
    assert store.job_transition_many([OUTCOMES[kind](job.id, job.fence)], now=T0 + 1) == {}
    record = store.job_get(job.id)
    assert record is not None
    assert (record.state, record.lease_owner, record.lease_expires_at) == (
        WRITTEN_STATE[kind],
        None,
        None,
    )


def test_fail_and_retry_record_their_error_in_the_history(store: Store) -> None:
    """A failure and a retry each add their attempt's error to the error history."""
    failed, retried = running_job(store), running_job(store)
    refused = store.job_transition_many(
        [OUTCOMES[OutcomeKind.FAIL](failed.id, 1), OUTCOMES[OutcomeKind.RETRY](retried.id, 1)],
        now=T0 + 1,
    )
    assert refused == {}
    assert [(e.attempt, e.error) for e in store.error_list(failed.id)] == [(1, '"bad"')]
    assert [(e.attempt, e.error) for e in store.error_list(retried.id)] == [(1, '"again"')]
    record = store.job_get(retried.id)
    assert record is not None
    assert record.run_at == T0 + 60


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_is_refused_with_a_stale_fence(store: Store, kind: OutcomeKind) -> None:
    """A run that lost its job to a newer claim writes nothing and learns LeaseLost."""
    job = running_job(store)
    assert release(store, job.id, job.fence, now=T0)
    claim_one(store, job.id, now=T0 + 1, owner="worker-b")
    before = store.job_get(job.id)
    refused = store.job_transition_many([OUTCOMES[kind](job.id, job.fence)], now=T0 + 2)
    assert isinstance(refused[job.id], LeaseLost)
    assert store.job_get(job.id) == before
    assert store.error_list(job.id) == []


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_is_refused_after_cancel(store: Store, kind: OutcomeKind) -> None:
    """A run whose job was cancelled writes nothing and learns JobCancelled."""
    job = running_job(store)
    assert store.job_cancel(job.id, now=T0 + 1)
    refused = store.job_transition_many([OUTCOMES[kind](job.id, job.fence)], now=T0 + 2)
    assert isinstance(refused[job.id], JobCancelled)
    assert _state(store, job.id) == JobState.CANCELLED
    assert store.error_list(job.id) == []


def test_job_transition_raises_the_refusal(store: Store) -> None:
    """The one-outcome form raises what the group form returns."""
    job = running_job(store)
    with pytest.raises(LeaseLost, match="token"):
        store.job_transition(Outcome.complete(job.id, job.fence + 1, "1"), now=T0 + 1)
    with pytest.raises(LeaseLost):
        store.job_transition(Outcome.release("no-such-job", 1), now=T0 + 1)


def test_a_mixed_group_writes_the_owned_outcomes_and_names_the_refused(store: Store) -> None:
    """One call with every kind, some owned and some not: the owned ones are written, the
    others are returned with why, and writing them changed nothing."""
    owned = {kind: running_job(store) for kind in OutcomeKind}
    stale = running_job(store)
    cancelled = running_job(store)
    assert store.job_cancel(cancelled.id, now=T0)
    outcomes = [OUTCOMES[kind](job.id, job.fence) for kind, job in owned.items()]
    outcomes += [
        OUTCOMES[OutcomeKind.FAIL](stale.id, stale.fence + 1),
        OUTCOMES[OutcomeKind.RETRY](cancelled.id, cancelled.fence),
    ]
    refused = store.job_transition_many(outcomes, now=T0 + 1)
    assert {job_id: type(error) for job_id, error in refused.items()} == {
        stale.id: LeaseLost,
        cancelled.id: JobCancelled,
    }
    for kind, job in owned.items():
        assert _state(store, job.id) == WRITTEN_STATE[kind]
    assert _state(store, stale.id) == JobState.RUNNING
    assert store.error_list(stale.id) == store.error_list(cancelled.id) == []


def test_a_group_of_parks_alone_is_written(store: Store) -> None:
    """Parks alone (the one group that may skip the fsync) are written like any other."""
    jobs = [running_job(store) for _ in range(3)]
    outcomes = [OUTCOMES[OutcomeKind.PARK](job.id, job.fence) for job in jobs]
    assert store.job_transition_many(outcomes, now=T0 + 1) == {}
    assert {_state(store, job.id) for job in jobs} == {JobState.WAITING}


def test_an_empty_group_writes_nothing(store: Store) -> None:
    """No outcomes: nothing to write, nothing refused."""
    assert store.job_transition_many([], now=T0) == {}


def test_a_released_job_is_claimed_again_as_a_replay(store: Store) -> None:
    """A release keeps the attempt number; a retry counts a new attempt."""
    released, retried = running_job(store), running_job(store)
    store.job_transition_many(
        [
            Outcome.release(released.id, released.fence),
            Outcome.retry_later(retried.id, retried.fence, error='"e"', attempt=1, run_at=T0),
        ],
        now=T0 + 1,
    )
    again = {job.id: job.attempt for job in claim_due(store, now=T0 + 2)}
    assert again == {released.id: 1, retried.id: 2}


# --- rescue: read, decide, write ------------------------------------------------------------


def test_job_get_expired_reads_the_expired_leases_oldest_first(store: Store) -> None:
    """The bounded read: running jobs whose lease expired, the longest expired first, with
    their fence, attempts, reclaims and whether the run wrote a checkpoint."""
    older = running_job(store, now=T0)
    newer = running_job(store, now=T0 + 1)
    running_job(store, now=T0 + 100)  # a live lease
    store.checkpoint_insert(
        newer.id, newer.fence, seq=0, name="s", status="ok", value="1", attempts=1, now=T0 + 2
    )
    expired = store.job_get_expired(now=T0 + LEASE + 2)
    assert expired == [
        ExpiredLease(job_id=older.id, fence=1, attempts=1, reclaims=0, progressed=False),
        ExpiredLease(job_id=newer.id, fence=1, attempts=1, reclaims=0, progressed=True),
    ]
    assert [lease.job_id for lease in store.job_get_expired(now=T0 + LEASE + 2, limit=1)] == [
        older.id
    ]


def test_decide_fails_as_poison_at_the_poison_reclaim_without_progress() -> None:
    """The policy: a reclaim without a checkpoint counts; the POISON_RECLAIMS-th is poison;
    a run that wrote a checkpoint starts the count again."""
    lease = ExpiredLease(
        job_id="j", fence=4, attempts=2, reclaims=POISON_RECLAIMS - 2, progressed=False
    )
    assert decide(lease) == RescueDecision("j", 4, reclaims=POISON_RECLAIMS - 1, attempt=2)
    last = decide(ExpiredLease("j", 5, 2, reclaims=POISON_RECLAIMS - 1, progressed=False))
    assert last.reclaims == POISON_RECLAIMS
    assert last.poison_error is not None
    assert "poison" in last.poison_error
    progressed = decide(ExpiredLease("j", 5, 2, reclaims=POISON_RECLAIMS - 1, progressed=True))
    assert (progressed.reclaims, progressed.poison_error) == (0, None)


def test_rescue_requeues_an_expired_job_as_a_replay(store: Store) -> None:
    """The requeue decision: queued, due now, the same attempt on the next claim."""
    job = running_job(store)
    rescue = rescue_expired(store, now=T0 + LEASE + 1)
    assert (list(rescue.requeued), list(rescue.poisoned)) == ([job.id], [])
    record = store.job_get(job.id)
    assert record is not None
    assert (record.state, record.run_at, record.reclaims) == (
        JobState.QUEUED,
        T0 + LEASE + 1,
        1,
    )
    [again] = claim_due(store, now=T0 + LEASE + 2)
    assert (again.id, again.attempt) == (job.id, 1)


def test_a_job_reclaimed_without_progress_is_failed_as_poison(store: Store) -> None:
    """POISON_RECLAIMS expiries in a row without a checkpoint fail the job, with the poison
    error as its error and in its history."""
    job_id = insert(store)
    now = T0
    for _ in range(POISON_RECLAIMS):
        claim_one(store, job_id, now=now)
        now += LEASE + 1
        rescue = rescue_expired(store, now=now)
    assert list(rescue.poisoned) == [job_id]
    record = store.job_get(job_id)
    assert record is not None
    assert (record.state, record.reclaims) == (JobState.FAILED, POISON_RECLAIMS)
    assert record.error is not None
    assert "poison" in record.error
    assert [error.error for error in store.error_list(job_id)] == [record.error]


def test_a_lease_renewed_between_read_and_write_is_not_rescued(store: Store) -> None:
    """A heartbeat that lands after the rescuer read the lease wins over its decision."""
    job = running_job(store)
    now = T0 + LEASE + 1
    decisions = [decide(lease) for lease in store.job_get_expired(now=now)]
    assert [decision.job_id for decision in decisions] == [job.id]
    assert store.job_heartbeat([(job.id, job.fence)], lease_until=now + LEASE) == set()
    rescue = store.job_rescue_many(decisions, now=now)
    assert (list(rescue.requeued), list(rescue.poisoned)) == ([], [])
    record = store.job_get(job.id)
    assert record is not None
    assert (record.state, record.fence, record.lease_expires_at) == (
        JobState.RUNNING,
        job.fence,
        now + LEASE,
    )


def test_a_poison_decision_for_a_reclaimed_job_is_not_written(store: Store) -> None:
    """A decision read under an old fence writes nothing once another worker claimed the
    job: neither the failure nor its error record."""
    job = running_job(store)
    now = T0 + LEASE + 1
    [lease] = store.job_get_expired(now=now)
    assert list(rescue_expired(store, now=now).requeued) == [job.id]
    claim_one(store, job.id, now=now, owner="worker-b")
    poison = RescueDecision(
        job.id, lease.fence, reclaims=POISON_RECLAIMS, attempt=1, poison_error='"x"'
    )
    rescue = store.job_rescue_many([poison], now=now + 1)
    assert list(rescue.poisoned) == []
    assert _state(store, job.id) == JobState.RUNNING
    assert store.error_list(job.id) == []
