"""The records stepstone stores and returns: job states, jobs, checkpoints, memos, errors,
and the outcomes a run writes. Plain frozen dataclasses, shared by every layer (the store
imports nothing above this module and ``errors``)."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal


class JobState(enum.StrEnum):
    """Where a job is in its life. ``str`` values, stored as they are."""

    QUEUED = "queued"
    RUNNING = "running"
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in FINISHED_STATES


FINISHED_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})

#: The longest job key or memo key, in UTF-8 bytes (PostgreSQL's unique index holds keys
#: of up to about 2,700 bytes; one limit keeps both stores alike).
MAX_KEY_BYTES = 1000

#: The run_at of a job that waits with no time limit (the year 3000).
WAIT_FOREVER = 32_503_680_000.0
#: The wait event of a job waiting for another job to finish.
JOB_EVENT_PREFIX = "stepstone.job:"


@dataclass(frozen=True, slots=True)
class NewJob:
    """A job to insert."""

    id: str
    name: str
    queue: str
    key: str | None
    args: str
    priority: int
    run_at: float
    #: The job that enqueued this one from its own code (a child job).
    parent_id: str | None = None
    #: At most ``concurrency_limit`` jobs with this key run at once (with a live lease).
    concurrency_key: str | None = None
    concurrency_limit: int | None = None
    #: A later enqueue with this key replaces this job while it is queued.
    debounce_key: str | None = None


@dataclass(frozen=True, slots=True)
class JobRecord:
    """A job as stored."""

    id: str
    name: str
    queue: str
    key: str | None
    args: str
    state: JobState
    priority: int
    run_at: float
    attempts: int
    fence: int
    reclaims: int
    lease_owner: str | None
    lease_expires_at: float | None
    result: str | None
    error: str | None
    created_at: float
    updated_at: float
    started_at: float | None
    finished_at: float | None
    parent_id: str | None = None
    #: What a waiting job waits for (an event, or ``stepstone.job:<id>``).
    wait_event: str | None = None
    #: At most ``concurrency_limit`` jobs with this key run at once.
    concurrency_key: str | None = None
    concurrency_limit: int | None = None
    #: While queued, a later enqueue with this key replaces the job (cleared by a claim).
    debounce_key: str | None = None


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    """A job this worker now owns, with the fencing token of its claim."""

    id: str
    name: str
    queue: str
    key: str | None
    args: str
    fence: int
    attempt: int
    priority: int
    created_at: float = 0.0
    #: When the job first started (its timeout counts from here).
    started_at: float = 0.0


#: A checkpoint's status: a step's result (``ok``) or its final error (``error``).
CheckpointStatus = Literal["ok", "error"]
#: What ``memo_acquire`` found: a stored value, the key now the caller's, or a live owner.
MemoOutcome = Literal["hit", "acquired", "busy"]


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """One entry of a job's step history: a result (``ok``) or a final error (``error``)."""

    seq: int
    name: str
    status: CheckpointStatus
    value: str
    attempts: int
    created_at: float
    #: The memo key the value was stored under or taken from (``attempts == 0``: a hit).
    memo: str | None = None


@dataclass(frozen=True, slots=True)
class MemoRecord:
    """A memo key as stored: ``computing`` while a run owns it, then ``done``."""

    key: str
    state: str
    step: str
    value: str | None
    owner_job: str | None
    owner_fence: int | None
    expires_at: float | None
    created_at: float
    updated_at: float
    #: Whether the owning run still holds its job's lease (read with the record).
    owner_alive: bool


@dataclass(frozen=True, slots=True)
class MemoClaim:
    """What ``memo_acquire`` found: a stored value (hit), the key now ours, or a live owner."""

    outcome: MemoOutcome
    value: str | None = None
    #: When busy: the job computing the key. When acquired: the job whose claim was taken over.
    other_job: str | None = None


@dataclass(frozen=True, slots=True)
class ErrorRecord:
    """The error of one failed attempt of a job or of one of its steps."""

    attempt: int
    seq: int | None
    step: str | None
    error: str
    created_at: float


@dataclass(frozen=True, slots=True)
class InsertResult:
    """The job a key names, and whether this insert created it."""

    job: JobRecord
    created: bool


@dataclass(frozen=True, slots=True)
class IdleStatus:
    """What a worker needs to know to decide whether it is idle."""

    due: bool
    running: int
    next_run_at: float | None


@dataclass(frozen=True, slots=True)
class Rescue:
    """What one pass of the rescuer did."""

    requeued: Sequence[str]
    poisoned: Sequence[str]


@dataclass(frozen=True, slots=True)
class ExpiredLease:
    """A running job whose lease expired, as the rescuer reads it."""

    job_id: str
    #: The fencing token of the run that lost its lease.
    fence: int
    attempts: int
    #: How many times in a row the job was reclaimed without a new checkpoint.
    reclaims: int
    #: Whether the run that lost its lease wrote a checkpoint.
    progressed: bool


@dataclass(frozen=True, slots=True)
class RescueDecision:
    """What the rescuer decided for one expired lease: requeue it as a replay, or (with a
    ``poison_error``) fail it as a poison job. Written only while the lease of ``fence`` is
    still expired and unrenewed."""

    job_id: str
    fence: int
    #: The job's reclaim count once this decision is written.
    reclaims: int
    #: The attempt the poison error belongs to.
    attempt: int
    #: The error record of a job failed as poison; None to requeue it.
    poison_error: str | None = None


class OutcomeKind(enum.StrEnum):
    """How a run of a job ended, as written by ``Store.job_transition_many``."""

    #: Success: the job is ``succeeded`` with its result (durable).
    COMPLETE = "complete"
    #: Final failure: the job is ``failed`` with the error of this attempt (durable).
    FAIL = "fail"
    #: The attempt failed and the job is queued again at ``run_at`` (a new attempt); the
    #: run's first stored step error and every checkpoint after it are dropped.
    RETRY = "retry"
    #: The job is given back, due now, as a replay (graceful shutdown, a store error).
    RELEASE = "release"
    #: The job waits (``waiting``) until ``run_at``, a signal of ``event`` or ``child``'s end.
    PARK = "park"


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one run of a job ended: one fenced transition out of ``running``.

    Build it with a constructor per kind (``Outcome.complete(...)``, ``Outcome.fail(...)``,
    ``Outcome.retry_later(...)``, ``Outcome.release(...)``, ``Outcome.park(...)``). Every
    outcome is written only while ``fence`` still owns the running job.
    """

    kind: OutcomeKind
    job_id: str
    fence: int
    #: COMPLETE: the encoded result.
    result: str | None = None
    #: FAIL, RETRY: the encoded error of this attempt (also kept in the error history).
    error: str | None = None
    #: FAIL, RETRY: the attempt the error belongs to.
    attempt: int = 0
    #: RETRY: when the next attempt is due. PARK: when the job wakes at the latest.
    run_at: float = 0.0
    #: PARK: the event waited for.
    event: str | None = None
    #: PARK: only signals newer than this id wake the job.
    signal_after: int = 0
    #: PARK: the job waited for.
    child: str | None = None

    @classmethod
    def complete(cls, job_id: str, fence: int, result: str) -> Outcome:
        return cls(OutcomeKind.COMPLETE, job_id, fence, result=result)

    @classmethod
    def fail(cls, job_id: str, fence: int, *, error: str, attempt: int) -> Outcome:
        return cls(OutcomeKind.FAIL, job_id, fence, error=error, attempt=attempt)

    @classmethod
    def retry_later(
        cls, job_id: str, fence: int, *, error: str, attempt: int, run_at: float
    ) -> Outcome:
        return cls(OutcomeKind.RETRY, job_id, fence, error=error, attempt=attempt, run_at=run_at)

    @classmethod
    def release(cls, job_id: str, fence: int) -> Outcome:
        return cls(OutcomeKind.RELEASE, job_id, fence)

    @classmethod
    def park(
        cls,
        job_id: str,
        fence: int,
        *,
        until: float,
        event: str | None = None,
        signal_after: int = 0,
        child: str | None = None,
    ) -> Outcome:
        return cls(
            OutcomeKind.PARK,
            job_id,
            fence,
            run_at=until,
            event=event,
            signal_after=signal_after,
            child=child,
        )


__all__ = [
    "FINISHED_STATES",
    "JOB_EVENT_PREFIX",
    "MAX_KEY_BYTES",
    "WAIT_FOREVER",
    "Checkpoint",
    "CheckpointStatus",
    "ClaimedJob",
    "ErrorRecord",
    "ExpiredLease",
    "IdleStatus",
    "InsertResult",
    "JobRecord",
    "JobState",
    "MemoClaim",
    "MemoOutcome",
    "MemoRecord",
    "NewJob",
    "Outcome",
    "OutcomeKind",
    "Rescue",
    "RescueDecision",
]
