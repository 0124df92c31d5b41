"""The fenced writes of how runs end and of the rescuer's decisions: which statements run,
in which order, inside the transaction the SQL store opened for them. Written once for
every dialect (the statements are the dialect's, by name)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from ..errors import StepstoneError
from ..types import JOB_EVENT_PREFIX, JobState, Outcome, OutcomeKind, Rescue, RescueDecision
from . import rows


class _Dialect(Protocol):
    """What the fenced writes need of the SQL store they write for."""

    #: The dialect's statements, by name.
    Q: dict[str, str]

    def _array(self, values: Sequence[Any]) -> Any: ...

    def _lock_park(self, conn: Any, outcome: Outcome) -> None: ...


#: The state a job is left in by each outcome: a retried write that finds its job there,
#: with its own fence, had committed before its connection broke.
_WRITTEN_STATE: dict[OutcomeKind, tuple[str, ...]] = {
    OutcomeKind.COMPLETE: (JobState.SUCCEEDED,),
    OutcomeKind.FAIL: (JobState.FAILED,),
    OutcomeKind.RETRY: (JobState.QUEUED,),
    OutcomeKind.RELEASE: (JobState.QUEUED,),
    OutcomeKind.PARK: (JobState.WAITING, JobState.QUEUED),
}


def write_outcomes(
    store: _Dialect, conn: Any, outcomes: Sequence[Outcome], now: float, retried: bool
) -> dict[str, StepstoneError]:
    """Write every outcome whose fence owns its running job; the others' refusals."""
    written: set[str] = set()
    completes = [outcome for outcome in outcomes if outcome.kind is OutcomeKind.COMPLETE]
    if len(completes) == 1:  # alone: the one-row statement, a primary-key update
        done = completes[0]
        params = {"id": done.job_id, "fence": done.fence, "result": done.result, "now": now}
        if conn.execute(store.Q["job_complete"], params).rowcount == 1:
            written.add(done.job_id)
    elif completes:
        params = {
            "ids": store._array([outcome.job_id for outcome in completes]),
            "fences": store._array([outcome.fence for outcome in completes]),
            "results": store._array([outcome.result for outcome in completes]),
            "now": now,
        }
        written.update(row["id"] for row in conn.execute(store.Q["job_complete_many"], params))
    for outcome in outcomes:
        if outcome.kind is not OutcomeKind.COMPLETE and _write_one(store, conn, outcome, now):
            written.add(outcome.job_id)
    missed = [outcome for outcome in outcomes if outcome.job_id not in written]
    if not missed:
        return {}
    ids = store._array([outcome.job_id for outcome in missed])
    owners = {row["id"]: row for row in conn.execute(store.Q["job_owners"], {"ids": ids})}
    refused: dict[str, StepstoneError] = {}
    for outcome in missed:
        row = owners.get(outcome.job_id)
        if (
            retried
            and row is not None
            and row["fence"] == outcome.fence
            and row["state"] in _WRITTEN_STATE[outcome.kind]
        ):
            continue  # the earlier try committed before its connection broke
        refused[outcome.job_id] = rows.refusal(outcome.job_id, outcome.fence, row)
    return refused


def _write_one(store: _Dialect, conn: Any, outcome: Outcome, now: float) -> bool:
    """Write one outcome other than a success; whether its fence owned the job."""
    job_id, fence, kind = outcome.job_id, outcome.fence, outcome.kind
    params: dict[str, Any] = {"id": job_id, "fence": fence, "now": now}
    if kind is OutcomeKind.RELEASE:
        return bool(conn.execute(store.Q["job_release"], params).rowcount == 1)
    if kind is OutcomeKind.PARK:
        child = outcome.child
        store._lock_park(conn, outcome)
        params["until"] = outcome.run_at
        params["event"] = f"{JOB_EVENT_PREFIX}{child}" if child is not None else outcome.event
        params["signal_event"] = outcome.event if child is None else None
        params["after"] = outcome.signal_after
        params["child"] = child
        return bool(conn.execute(store.Q["job_park"], params).rowcount == 1)
    params["error"] = outcome.error
    if kind is OutcomeKind.FAIL:
        if conn.execute(store.Q["job_fail"], params).rowcount != 1:
            return False
    else:  # RETRY: a new attempt drops the run's first step error and what follows it
        params["run_at"] = outcome.run_at
        if conn.execute(store.Q["job_retry_later"], params).rowcount != 1:
            return False
        conn.execute(store.Q["checkpoint_drop_from_first_error"], {"job_id": job_id})
    record = {
        "job_id": job_id,
        "attempt": outcome.attempt,
        "fence": fence,
        "error": outcome.error,
        "now": now,
    }
    conn.execute(store.Q["error_insert_unfenced"], record)
    return True


def write_rescues(
    store: _Dialect, conn: Any, decisions: Sequence[RescueDecision], now: float
) -> Rescue:
    """Write each decision while its lease is still expired under its fence; the ones
    written (requeued, poisoned)."""
    requeued: list[str] = []
    poisoned: list[str] = []
    for decision in decisions:
        params = {
            "id": decision.job_id,
            "fence": decision.fence,
            "reclaims": decision.reclaims,
            "now": now,
        }
        if decision.poison_error is None:
            if conn.execute(store.Q["job_requeue_expired"], params).rowcount == 1:
                requeued.append(decision.job_id)
            continue
        params["error"] = decision.poison_error
        if conn.execute(store.Q["job_fail_poison"], params).rowcount == 1:
            record = {
                "job_id": decision.job_id,
                "attempt": decision.attempt,
                "fence": decision.fence,
                "error": decision.poison_error,
                "now": now,
            }
            conn.execute(store.Q["error_insert_unfenced"], record)
            poisoned.append(decision.job_id)
    return Rescue(requeued=requeued, poisoned=poisoned)


__all__ = ["write_outcomes", "write_rescues"]
