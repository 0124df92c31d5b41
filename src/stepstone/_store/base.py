"""The storage contract: one interface, one implementation per database.

The interface is internal and may change between releases. The rest of stepstone
never sees SQL or a driver exception: a backend translates them into the errors of
``stepstone.errors`` in one place. Every backend passes the conformance suite in
``tests/store``. Operations are named noun-then-verb (``job_claim_due``,
``checkpoint_insert``); times are float seconds since the epoch.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from ..errors import StepstoneError
from ..types import (
    FINISHED_STATES,
    JOB_EVENT_PREFIX,
    MAX_KEY_BYTES,
    WAIT_FOREVER,
    Checkpoint,
    ClaimedJob,
    ErrorRecord,
    ExpiredLease,
    IdleStatus,
    InsertResult,
    JobRecord,
    JobState,
    MemoClaim,
    MemoRecord,
    NewJob,
    Outcome,
    OutcomeKind,
    Rescue,
    RescueDecision,
)


class StepTransaction(abc.ABC):
    """An open database transaction for a transactional step, plus its checkpoint write."""

    #: The driver connection handed to the step function (inside the transaction).
    connection: Any

    @abc.abstractmethod
    def checkpoint(self, *, seq: int, name: str, value: str, attempts: int, now: float) -> None:
        """Write the step's ``ok`` checkpoint inside the transaction (fenced)."""


class Store(abc.ABC):
    """Durable state of jobs, checkpoints and errors."""

    #: The URL the store was opened with, without a password.
    url: str
    #: Whether a call costs so little that an event loop may make it inline.
    inline_calls: bool = False
    #: Whether ``on_change`` pushes news of queued jobs (then nobody polls the marker).
    pushes_changes: bool = False

    @abc.abstractmethod
    def migrate(self) -> list[str]:
        """Apply the migrations this database lacks; return their names."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections."""

    def change_marker(self) -> int | None:
        """A number that changes whenever another connection commits, if cheap to know.

        Idle workers poll it to notice new work without querying for it. None means the
        store cannot tell, and workers fall back to claiming every poll interval.
        """
        return None

    def on_change(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` from another thread whenever a job becomes queued, if the store
        can push such news (PostgreSQL's LISTEN/NOTIFY). Returns the unsubscribe function."""
        return lambda: None

    # jobs -------------------------------------------------------------------------------
    @abc.abstractmethod
    def job_insert(
        self, job: NewJob, *, now: float, owner: str | None = None, lease_until: float = 0.0
    ) -> InsertResult:
        """Insert a job, durably. With a key already taken, return that job, created=False.

        With ``owner``, the job is inserted already claimed (``running``, fence 1) by it.
        """

    @abc.abstractmethod
    def job_get(self, job_id: str) -> JobRecord | None:
        """The job with this id."""

    @abc.abstractmethod
    def job_get_by_key(self, key: str) -> JobRecord | None:
        """The job with this key."""

    @abc.abstractmethod
    def job_get_many(self, *, ids: Sequence[str] = (), keys: Sequence[str] = ()) -> list[JobRecord]:
        """The jobs with these ids or these keys (in no order; unknown ones are left out)."""

    @abc.abstractmethod
    def job_list(
        self, *, states: Sequence[str] | None = None, name: str | None = None, limit: int = 50
    ) -> list[JobRecord]:
        """The most recently created jobs, newest first."""

    @abc.abstractmethod
    def job_claim_due(
        self,
        *,
        owner: str,
        names: Sequence[str],
        queues: Sequence[str] | None,
        limit: int,
        now: float,
        lease_until: float,
        limited: Sequence[str] = (),
    ) -> list[ClaimedJob]:
        """Claim up to ``limit`` due jobs (queued, or waiting whose time came), highest
        priority then oldest first, keeping every concurrency key under its limit.

        Each claim bumps the job's fence. A job that is not a replay counts a new attempt.
        ``limited`` names the jobs that have a concurrency limit (a hint: a store may claim
        them in a slower, locked way).
        """

    @abc.abstractmethod
    def job_claim(
        self, job_id: str, *, owner: str, now: float, lease_until: float
    ) -> ClaimedJob | None:
        """Claim this one job if it is queued or waiting (whatever its ``run_at``) and its
        concurrency key is under its limit; else None."""

    @abc.abstractmethod
    def job_idle_status(
        self, *, names: Sequence[str], queues: Sequence[str] | None, now: float
    ) -> IdleStatus:
        """For the jobs these names and queues select: whether one is due now, how many are
        running (in any process), and when the next queued one is due."""

    @abc.abstractmethod
    def job_heartbeat(self, leases: Sequence[tuple[str, int]], *, lease_until: float) -> set[str]:
        """Extend the leases of (job id, fence) pairs; return the ids whose lease was lost."""

    @abc.abstractmethod
    def job_get_expired(self, *, now: float, limit: int = 100) -> list[ExpiredLease]:
        """Up to ``limit`` running jobs whose lease expired before ``now``, the longest
        expired first (the rescuer's bounded read)."""

    @abc.abstractmethod
    def job_rescue_many(self, decisions: Sequence[RescueDecision], *, now: float) -> Rescue:
        """Write the rescuer's decisions in one durable transaction: requeue as a replay, or
        fail as poison with its error recorded. Each is written only while the job still
        runs under the decision's fence with a lease expired before ``now`` (a heartbeat or
        a claim since the read wins); returns the ones written."""

    @abc.abstractmethod
    def job_transition_many(
        self, outcomes: Sequence[Outcome], *, now: float
    ) -> dict[str, StepstoneError]:
        """Write how several runs ended, each only while its fence owns the running job,
        in one transaction (group commit): durable, unless every outcome is a park.

        Returns, for each job whose transition was refused, why (``LeaseLost`` or
        ``JobCancelled``); the others are written. A store error fails the whole group.
        Per kind: COMPLETE records the result; FAIL the final error (also in the error
        history); RETRY queues a new attempt at ``run_at``, recording the error and dropping
        the run's first stored step error and every checkpoint after it; RELEASE queues the
        job due now as a replay; PARK makes it ``waiting`` until ``run_at``, a signal of
        ``event`` newer than ``signal_after`` and than the job, or ``child``'s end (due at
        once if that already happened), as a replay.
        """

    def job_transition(self, outcome: Outcome, *, now: float) -> None:
        """Write how one run ended; raises ``LeaseLost`` or ``JobCancelled`` if refused."""
        refused = self.job_transition_many((outcome,), now=now)
        if refused:
            raise refused[outcome.job_id]

    @abc.abstractmethod
    def job_cancel(self, job_id: str, *, now: float) -> bool:
        """Cancel an unfinished job and, recursively, the unfinished jobs it enqueued; False
        if it had finished. ``JobNotFound`` if unknown."""

    @abc.abstractmethod
    def job_requeue(self, job_id: str, *, now: float) -> bool:
        """Queue a failed or cancelled job again with a fresh attempt budget."""

    @abc.abstractmethod
    def job_prune(self, *, finished_before: float, limit: int = 10_000) -> int:
        """Delete finished jobs (with their history) older than ``finished_before``."""

    # parking, signals, schedules, rates ----------------------------------------------------
    @abc.abstractmethod
    def signal_send(self, event: str, payload: str, *, now: float) -> int:
        """Store a signal and wake the jobs waiting for its event; return how many woke."""

    @abc.abstractmethod
    def signal_next(self, event: str, *, after: int, since: float) -> tuple[int, str] | None:
        """The oldest signal of ``event`` with an id above ``after``, sent at or after
        ``since``: (id, payload)."""

    @abc.abstractmethod
    def signal_prune(self, *, before: float) -> int:
        """Delete signals sent before ``before``."""

    @abc.abstractmethod
    def job_debounce(self, job: NewJob, *, now: float) -> InsertResult:
        """Replace the queued job with ``job.debounce_key`` (its arguments, due time,
        queue, priority), or insert ``job`` if there is none."""

    @abc.abstractmethod
    def schedule_next(self, name: str) -> float | None:
        """The next tick recorded for a cron job."""

    @abc.abstractmethod
    def schedule_advance(
        self, name: str, *, expected: float | None, tick: float, now: float
    ) -> bool:
        """Record ``tick`` as the cron job's next tick if the recorded one is still
        ``expected`` (None: none recorded); False if another worker moved it first."""

    @abc.abstractmethod
    def schedule_list(self) -> list[tuple[str, float]]:
        """Every cron job's next tick, by name."""

    @abc.abstractmethod
    def rate_acquire(self, key: str, *, limit: int, per: float, now: float) -> float:
        """Take one call of ``limit`` per ``per`` seconds under ``key``: 0.0 if taken, else
        the seconds to wait before asking again (nothing is taken)."""

    # checkpoints and errors -------------------------------------------------------------
    @abc.abstractmethod
    def checkpoint_list(self, job_id: str) -> list[Checkpoint]:
        """A job's step history in position order."""

    @abc.abstractmethod
    def checkpoint_insert(
        self,
        job_id: str,
        fence: int,
        *,
        seq: int,
        name: str,
        status: str,
        value: str,
        attempts: int,
        now: float,
        memo: str | None = None,
    ) -> None:
        """Write one checkpoint, at most once, only while ``fence`` owns the running job.

        Raises ``LeaseLost`` or ``JobCancelled`` when it does not.
        """

    @abc.abstractmethod
    def step_transaction(
        self, job_id: str | None, fence: int | None
    ) -> AbstractContextManager[StepTransaction]:
        """A transaction for a transactional step: commits on exit, rolls back on error.

        Without a job (a call outside a running job), the transaction writes no checkpoint.
        The connection refuses ``commit()`` and ``rollback()`` while the step runs.
        """

    # bulk and caller-transaction enqueues -------------------------------------------------
    @abc.abstractmethod
    def job_insert_many(self, jobs: Sequence[NewJob], *, now: float) -> list[InsertResult]:
        """Insert queued jobs in one durable transaction; a taken key yields its job.

        Keys must be distinct within one call. Results are in the order of ``jobs``.
        """

    @abc.abstractmethod
    def job_insert_on(self, connection: Any, job: NewJob, *, now: float) -> InsertResult:
        """Insert a queued job through the caller's own connection, inside whatever
        transaction it has open: the job exists if and only if that transaction commits."""

    # memo keys ----------------------------------------------------------------------------
    @abc.abstractmethod
    def memo_acquire(
        self, key: str, job_id: str, fence: int, *, step: str, now: float
    ) -> MemoClaim:
        """A stored unexpired value (``hit``); else the key claimed for this run
        (``acquired``: free, expired, or its owner's lease is gone); else ``busy``."""

    @abc.abstractmethod
    def memo_complete(
        self,
        key: str,
        job_id: str,
        fence: int,
        *,
        seq: int,
        name: str,
        step: str,
        value: str,
        attempts: int,
        expires_at: float | None,
        now: float,
    ) -> str:
        """Store a computed value under ``key`` and as the job's checkpoint, atomically.

        If another run stored an unexpired value first, that value wins: it is the one
        checkpointed and returned. Fenced like ``checkpoint_insert``.
        """

    @abc.abstractmethod
    def memo_release(self, key: str, job_id: str, fence: int) -> None:
        """Give up this run's claim on ``key`` (its step failed): a waiter takes it over."""

    @abc.abstractmethod
    def memo_get(self, key: str, *, now: float) -> MemoRecord | None:
        """The memo stored under ``key``."""

    @abc.abstractmethod
    def memo_list(self, prefix: str = "", *, limit: int = 100) -> list[MemoRecord]:
        """Memos whose key starts with ``prefix``, by key."""

    @abc.abstractmethod
    def memo_forget(self, key: str, *, prefix: bool = False) -> int:
        """Drop the memo ``key`` (or every memo whose key starts with it); return how many."""

    @abc.abstractmethod
    def memo_prune(self, *, now: float) -> int:
        """Drop memos whose time to live has run out."""

    @abc.abstractmethod
    def error_insert(
        self,
        job_id: str,
        fence: int,
        *,
        attempt: int,
        seq: int | None,
        step: str | None,
        error: str,
        now: float,
    ) -> None:
        """Record the error of one failed step attempt (ignored if not the owner)."""

    @abc.abstractmethod
    def error_list(self, job_id: str) -> list[ErrorRecord]:
        """Every recorded error of a job, oldest first."""


__all__ = [
    "FINISHED_STATES",
    "JOB_EVENT_PREFIX",
    "MAX_KEY_BYTES",
    "WAIT_FOREVER",
    "Checkpoint",
    "ClaimedJob",
    "ErrorRecord",
    "ExpiredLease",
    "IdleStatus",
    "InsertResult",
    "JobRecord",
    "JobState",
    "MemoClaim",
    "MemoRecord",
    "NewJob",
    "Outcome",
    "OutcomeKind",
    "Rescue",
    "RescueDecision",
    "StepTransaction",
    "Store",
]
