"""Helpers shared by the store tests: a fixed clock origin and job builders."""

from __future__ import annotations

import uuid
from typing import Any

from stepstone._maintenance import rescue_expired
from stepstone._store.base import ClaimedJob, NewJob, Outcome, Rescue, Store
from stepstone.errors import JobCancelled, LeaseLost

#: The origin of every test's clock. Offsets are binary fractions, exact in any backend.
T0 = 1_700_000_000.0
#: The lease every claim takes unless a test says otherwise.
LEASE = 30.0
#: The job names a worker in these tests can run.
NAMES = ("mail.send", "ocr.run")


def new_job(
    name: str = "mail.send",
    *,
    queue: str = "default",
    key: str | None = None,
    args: str = '{"to": "a@example.com"}',
    priority: int = 0,
    run_at: float = T0,
    job_id: str | None = None,
) -> NewJob:
    """A job to insert, with a fresh id unless one is given."""
    return NewJob(
        id=job_id or uuid.uuid4().hex,
        name=name,
        queue=queue,
        key=key,
        args=args,
        priority=priority,
        run_at=run_at,
    )


def insert(store: Store, *, now: float = T0, **fields: Any) -> str:
    """Insert a queued job built by ``new_job(**fields)``; return its id."""
    job = new_job(**fields)
    assert store.job_insert(job, now=now).created
    return job.id


def claim_due(
    store: Store,
    *,
    now: float = T0,
    limit: int = 100,
    owner: str = "worker-a",
    names: tuple[str, ...] = NAMES,
    queues: tuple[str, ...] | None = None,
    lease: float = LEASE,
) -> list[ClaimedJob]:
    """Claim due jobs as a worker would, with a lease of ``lease`` seconds from ``now``."""
    return store.job_claim_due(
        owner=owner, names=names, queues=queues, limit=limit, now=now, lease_until=now + lease
    )


def claim_one(store: Store, job_id: str, *, now: float = T0, owner: str = "worker-a") -> ClaimedJob:
    """Claim this queued job (whatever its ``run_at``); fail the test if it cannot be claimed."""
    claimed = store.job_claim(job_id, owner=owner, now=now, lease_until=now + LEASE)
    assert claimed is not None, f"job {job_id} could not be claimed"
    return claimed


def running_job(store: Store, *, now: float = T0, **fields: Any) -> ClaimedJob:
    """Insert a job and claim it: a job some worker is running, with fence 1."""
    return claim_one(store, insert(store, now=now, **fields), now=now)


# --- outcomes, as the engine writes them (one fenced transition each) ----------------------
def complete(store: Store, job_id: str, fence: int, *, result: str, now: float) -> None:
    """Record a run's success; raises the refusal if ``fence`` no longer owns the job."""
    store.job_transition(Outcome.complete(job_id, fence, result), now=now)


def fail(store: Store, job_id: str, fence: int, *, error: str, attempt: int, now: float) -> None:
    """Record a run's final failure; raises the refusal if refused."""
    store.job_transition(Outcome.fail(job_id, fence, error=error, attempt=attempt), now=now)


def retry_later(
    store: Store, job_id: str, fence: int, *, error: str, attempt: int, run_at: float, now: float
) -> None:
    """Queue a new attempt at ``run_at``; raises the refusal if refused."""
    outcome = Outcome.retry_later(job_id, fence, error=error, attempt=attempt, run_at=run_at)
    store.job_transition(outcome, now=now)


def release(store: Store, job_id: str, fence: int, *, now: float) -> bool:
    """Give the job back as a replay; False if ``fence`` did not own the running job."""
    try:
        store.job_transition(Outcome.release(job_id, fence), now=now)
    except (LeaseLost, JobCancelled):
        return False
    return True


def park(
    store: Store,
    job_id: str,
    fence: int,
    *,
    until: float,
    event: str | None,
    signal_after: int = 0,
    child: str | None = None,
    now: float,
) -> None:
    """Park the running job; raises the refusal if refused."""
    outcome = Outcome.park(
        job_id, fence, until=until, event=event, signal_after=signal_after, child=child
    )
    store.job_transition(outcome, now=now)


def rescue(store: Store, *, now: float, limit: int = 100) -> Rescue:
    """One pass of the rescuer, as a worker runs it."""
    return rescue_expired(store, now=now, limit=limit)
