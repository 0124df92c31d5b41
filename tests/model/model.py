"""A plain Python model of what a store does with jobs, checkpoints, claims and outcomes.

One ``Model`` follows one store: it knows the ids that store gave its jobs (job ``i`` is the
``i``-th job created, whatever its id) and predicts every record, checkpoint, error and
claim. The rules written here are the contract of ``stepstone._store.base.Store`` as the
docs and the conformance suite state it, written without SQL.

A claim may legitimately choose between jobs that tie (same priority and due time, or the
same concurrency key with one free slot). The model does not guess: ``check_claim`` accepts
any choice the contract allows, and ``apply_claim`` records the choice the store made. So
two stores stay comparable through their models even after such a choice.
"""

from __future__ import annotations

import copy
import itertools
import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from stepstone.errors import JobCancelled, LeaseLost
from stepstone.types import (
    FINISHED_STATES,
    JOB_EVENT_PREFIX,
    Checkpoint,
    ClaimedJob,
    ErrorRecord,
    JobRecord,
    JobState,
)

#: A job reclaimed this many times in a row without a new checkpoint is failed as poison.
POISON_RECLAIMS = 5


@dataclass
class ModelJob:
    """What the model knows of one job (its id is the store's, by creation order)."""

    index: int
    id: str
    name: str
    queue: str
    key: str | None
    args: str
    priority: int
    run_at: float
    created_at: float
    concurrency_key: str | None = None
    concurrency_limit: int | None = None
    debounce_key: str | None = None
    state: JobState = JobState.QUEUED
    attempts: int = 0
    fence: int = 0
    reclaims: int = 0
    replay: bool = False
    lease_owner: str | None = None
    lease_expires_at: float | None = None
    result: str | None = None
    error: str | None = None
    updated_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    wait_event: str | None = None
    #: seq -> (name, status, value, attempts, fence, created_at)
    checkpoints: dict[int, tuple[str, str, str, int, int, float]] = field(default_factory=dict)
    errors: list[ErrorRecord] = field(default_factory=list)

    def record(self) -> JobRecord:
        return JobRecord(
            id=self.id,
            name=self.name,
            queue=self.queue,
            key=self.key,
            args=self.args,
            state=self.state,
            priority=self.priority,
            run_at=self.run_at,
            attempts=self.attempts,
            fence=self.fence,
            reclaims=self.reclaims,
            lease_owner=self.lease_owner,
            lease_expires_at=self.lease_expires_at,
            result=self.result,
            error=self.error,
            created_at=self.created_at,
            updated_at=self.updated_at,
            started_at=self.started_at,
            finished_at=self.finished_at,
            parent_id=None,
            wait_event=self.wait_event,
            concurrency_key=self.concurrency_key,
            concurrency_limit=self.concurrency_limit,
            debounce_key=self.debounce_key,
        )

    def checkpoint_list(self) -> list[Checkpoint]:
        return [
            Checkpoint(seq, name, status, value, attempts, created_at, None)
            for seq, (name, status, value, attempts, _fence, created_at) in sorted(
                self.checkpoints.items()
            )
        ]

    def claimed(self) -> ClaimedJob:
        assert self.started_at is not None
        return ClaimedJob(
            id=self.id,
            name=self.name,
            queue=self.queue,
            key=self.key,
            args=self.args,
            fence=self.fence,
            attempt=self.attempts,
            priority=self.priority,
            created_at=self.created_at,
            started_at=self.started_at,
        )

    def limited_by(self, limited: Sequence[str]) -> bool:
        return self.concurrency_key is not None and self.name in limited

    def drop_from_first_error(self) -> None:
        errors = [seq for seq, entry in self.checkpoints.items() if entry[1] == "error"]
        if errors:
            first = min(errors)
            self.checkpoints = {s: e for s, e in self.checkpoints.items() if s < first}


@dataclass(frozen=True)
class Refused:
    """A fenced write the model expects to be refused, and with which error."""

    error: type[Exception] | tuple[type[Exception], ...]


class Model:
    """The jobs and signals of one store, as the contract says they must be."""

    def __init__(self) -> None:
        self.jobs: list[ModelJob] = []
        self.by_id: dict[str, ModelJob] = {}
        #: (event, created_at) of every signal sent.
        self.signals: list[tuple[str, float]] = []

    def clone(self) -> Model:
        return copy.deepcopy(self)

    # lookups ---------------------------------------------------------------------------
    def by_key(self, key: str) -> ModelJob | None:
        return next((job for job in self.jobs if job.key == key), None)

    def queued_debounce(self, debounce_key: str) -> ModelJob | None:
        return next(
            (
                job
                for job in self.jobs
                if job.debounce_key == debounce_key and job.state is JobState.QUEUED
            ),
            None,
        )

    def running_on(self, key: str, now: float) -> int:
        return sum(
            1
            for job in self.jobs
            if job.state is JobState.RUNNING
            and job.concurrency_key == key
            and job.lease_expires_at is not None
            and job.lease_expires_at >= now
        )

    def refusal(self, job: ModelJob, fence: int) -> Refused | None:
        """None if ``fence`` owns the running job; else the error a fenced write raises."""
        if job.state is JobState.RUNNING and job.fence == fence:
            return None
        return Refused(JobCancelled if job.state is JobState.CANCELLED else LeaseLost)

    # enqueue ---------------------------------------------------------------------------
    def insert(
        self,
        job_id: str,
        *,
        name: str,
        queue: str,
        key: str | None,
        args: str,
        priority: int,
        run_at: float,
        now: float,
        concurrency: tuple[str | None, int | None] = (None, None),
        debounce_key: str | None = None,
    ) -> ModelJob:
        job = ModelJob(
            index=len(self.jobs),
            id=job_id,
            name=name,
            queue=queue,
            key=key,
            args=args,
            priority=priority,
            run_at=run_at,
            created_at=now,
            updated_at=now,
            concurrency_key=concurrency[0],
            concurrency_limit=concurrency[1],
            debounce_key=debounce_key,
        )
        self.jobs.append(job)
        self.by_id[job_id] = job
        return job

    def debounce(
        self,
        job: ModelJob,
        *,
        args: str,
        queue: str,
        priority: int,
        run_at: float,
        concurrency: tuple[str | None, int | None],
        now: float,
    ) -> None:
        job.args, job.queue, job.priority, job.run_at = args, queue, priority, run_at
        job.concurrency_key, job.concurrency_limit = concurrency
        job.updated_at = now

    # claims ----------------------------------------------------------------------------
    def candidates(
        self, *, names: Sequence[str], queues: Sequence[str] | None, now: float
    ) -> list[ModelJob]:
        return [
            job
            for job in self.jobs
            if job.state in (JobState.QUEUED, JobState.WAITING)
            and job.run_at <= now
            and job.name in names
            and (queues is None or job.queue in queues)
        ]

    def check_claim(
        self,
        chosen: set[int],
        *,
        names: Sequence[str],
        queues: Sequence[str] | None,
        limit: int,
        limited: Sequence[str],
        now: float,
    ) -> str | None:
        """Why claiming the jobs ``chosen`` breaks the contract (None if it does not).

        The contract: due jobs of these names and queues, highest priority then oldest
        first, up to ``limit``, each concurrency key staying under its limit (counting
        running jobs with a live lease). Among jobs that tie, any choice is allowed.
        """
        candidates = self.candidates(names=names, queues=queues, now=now)
        eligible = {job.index for job in candidates}
        if not chosen <= eligible:
            wrong = sorted(chosen - eligible)
            return f"claimed jobs {wrong}, which are not due or not of these names/queues"
        if len(chosen) > limit:
            return f"claimed {len(chosen)} jobs with limit={limit}"
        running: Counter[str] = Counter()
        for job in self.jobs:
            if job.concurrency_key is not None:
                running[job.concurrency_key] = self.running_on(job.concurrency_key, now)
        ordered = sorted(candidates, key=lambda job: (-job.priority, job.run_at))
        taken = 0
        for _, tie in itertools.groupby(ordered, key=lambda job: (-job.priority, job.run_at)):
            group = list(tie)
            picked = [job for job in group if job.index in chosen]
            if picked and taken >= limit:
                return f"claimed jobs {[j.index for j in picked]} past the limit of {limit}"
            for job in picked:
                if job.limited_by(limited):
                    assert job.concurrency_key is not None
                    assert job.concurrency_limit is not None
                    running[job.concurrency_key] += 1
                    if running[job.concurrency_key] > job.concurrency_limit:
                        return (
                            f"claimed job {job.index} although concurrency key "
                            f"{job.concurrency_key!r} already had {job.concurrency_limit} "
                            "running (its limit)"
                        )
            taken += len(picked)
            for job in group:
                if job.index in chosen:
                    continue
                blocked = job.limited_by(limited) and (
                    running[job.concurrency_key or ""] >= (job.concurrency_limit or 0)
                )
                if not blocked and taken < limit:
                    return (
                        f"left job {job.index} (priority {job.priority}, due {job.run_at}) "
                        f"unclaimed although it was due, under its limit, and the claim "
                        f"took only {taken} of {limit}"
                    )
        return None

    def apply_claim(
        self, chosen: Sequence[int], *, owner: str, now: float, lease_until: float
    ) -> list[ClaimedJob]:
        claimed = []
        for index in chosen:
            job = self.jobs[index]
            job.state = JobState.RUNNING
            job.fence += 1
            job.attempts += 0 if job.replay else 1
            job.replay = False
            job.lease_owner, job.lease_expires_at = owner, lease_until
            job.updated_at = now
            if job.started_at is None:
                job.started_at = now
            job.wait_event = None
            job.debounce_key = None
            claimed.append(job.claimed())
        return claimed

    def heartbeat(self, leases: Sequence[tuple[int, int]], *, lease_until: float) -> set[int]:
        lost = set()
        for index, fence in leases:
            job = self.jobs[index]
            if job.state is JobState.RUNNING and job.fence == fence:
                job.lease_expires_at = lease_until
            else:
                lost.add(index)
        return lost

    def rescue(
        self, *, now: float, poison_error: Callable[[str, int], str]
    ) -> tuple[set[int], set[int]]:
        requeued, poisoned = set(), set()
        for job in self.jobs:
            if job.state is not JobState.RUNNING or job.lease_expires_at is None:
                continue
            if job.lease_expires_at >= now:
                continue
            progressed = any(entry[4] == job.fence for entry in job.checkpoints.values())
            job.reclaims = 0 if progressed else job.reclaims + 1
            job.lease_owner = job.lease_expires_at = None
            job.updated_at = now
            if job.reclaims >= POISON_RECLAIMS:
                job.state = JobState.FAILED
                job.error = poison_error(job.id, job.reclaims)
                job.finished_at = now
                job.errors.append(ErrorRecord(job.attempts, None, None, job.error, now))
                self._wake_waiters(job, now=now)
                poisoned.add(job.index)
            else:
                job.state = JobState.QUEUED
                job.replay = True
                job.run_at = now
                requeued.add(job.index)
        return requeued, poisoned

    # checkpoints and outcomes ------------------------------------------------------------
    def checkpoint(
        self,
        job: ModelJob,
        fence: int,
        *,
        seq: int,
        name: str,
        status: str,
        value: str,
        attempts: int,
        now: float,
    ) -> Refused | None:
        refused = self.refusal(job, fence)
        if refused is not None:
            return refused
        if seq in job.checkpoints:
            return Refused(LeaseLost)  # never written twice
        job.checkpoints[seq] = (name, status, value, attempts, fence, now)
        return None

    def complete(self, job: ModelJob, fence: int, *, result: str, now: float) -> Refused | None:
        refused = self.refusal(job, fence)
        if refused is None:
            self._leave(job, JobState.SUCCEEDED, now=now, finished=True)
            job.result = result
        return refused

    def fail(
        self, job: ModelJob, fence: int, *, error: str, attempt: int, now: float
    ) -> Refused | None:
        refused = self.refusal(job, fence)
        if refused is None:
            self._leave(job, JobState.FAILED, now=now, finished=True)
            job.error = error
            job.errors.append(ErrorRecord(attempt, None, None, error, now))
        return refused

    def retry_later(
        self, job: ModelJob, fence: int, *, error: str, attempt: int, run_at: float, now: float
    ) -> Refused | None:
        refused = self.refusal(job, fence)
        if refused is None:
            self._leave(job, JobState.QUEUED, now=now)
            job.error, job.run_at, job.replay, job.reclaims = error, run_at, False, 0
            job.drop_from_first_error()
            job.errors.append(ErrorRecord(attempt, None, None, error, now))
        return refused

    def release(self, job: ModelJob, fence: int, *, now: float) -> Refused | None:
        refused = self.refusal(job, fence)
        if refused is None:
            self._leave(job, JobState.QUEUED, now=now)
            job.replay, job.run_at = True, now
            return None
        # A refused release is LeaseLost or JobCancelled (the interim transition over the
        # old job_release says LeaseLost even for a cancelled job); both stores must agree.
        return Refused((LeaseLost, JobCancelled))

    def park(
        self,
        job: ModelJob,
        fence: int,
        *,
        until: float,
        event: str | None,
        child: ModelJob | None,
        now: float,
    ) -> Refused | None:
        refused = self.refusal(job, fence)
        if refused is not None:
            return refused
        if child is not None:
            ready = child.state in FINISHED_STATES
            job.wait_event = f"{JOB_EVENT_PREFIX}{child.id}"
        else:
            ready = event is not None and any(
                sent == event and at >= job.created_at for sent, at in self.signals
            )
            job.wait_event = event
        self._leave(job, JobState.QUEUED if ready else JobState.WAITING, now=now)
        job.run_at = now if ready else until
        job.replay, job.reclaims = True, 0
        return None

    def _leave(self, job: ModelJob, state: JobState, *, now: float, finished: bool = False) -> None:
        job.state = state
        job.lease_owner = job.lease_expires_at = None
        job.updated_at = now
        if finished:
            job.finished_at = now
            self._wake_waiters(job, now=now)

    def _wake_waiters(self, child: ModelJob, *, now: float) -> None:
        """A job that finishes wakes the jobs waiting for it (at once, as replays)."""
        event = f"{JOB_EVENT_PREFIX}{child.id}"
        for job in self.jobs:
            if job.state is JobState.WAITING and job.wait_event == event:
                job.state, job.run_at, job.updated_at = JobState.QUEUED, now, now

    # operations --------------------------------------------------------------------------
    def cancel(self, job: ModelJob, *, now: float) -> bool:
        if job.state in FINISHED_STATES:
            return False
        self._leave(job, JobState.CANCELLED, now=now, finished=True)
        return True

    def requeue(self, job: ModelJob, *, now: float) -> bool:
        if job.state not in (JobState.FAILED, JobState.CANCELLED):
            return False
        self._leave(job, JobState.QUEUED, now=now)
        job.run_at, job.attempts, job.replay, job.reclaims = now, 0, False, 0
        job.finished_at = None
        job.drop_from_first_error()
        return True

    def signal(self, event: str, *, now: float) -> int:
        self.signals.append((event, now))
        woken = 0
        for job in self.jobs:
            if job.state is JobState.WAITING and job.wait_event == event:
                job.state, job.run_at, job.updated_at = JobState.QUEUED, now, now
                woken += 1
        return woken


def encoded(value: object) -> str:
    """A JSON value as a store keeps it (results, errors, checkpoint values)."""
    return json.dumps(value)


__all__ = ["Model", "ModelJob", "Refused", "encoded"]
