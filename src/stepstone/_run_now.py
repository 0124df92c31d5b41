"""``app.run``: run a job now in this process, durably, through the worker's own path.

The job is inserted already claimed by this process (unless it has a concurrency limit,
whose slot it claims like any other), run by the same job-run functions a worker uses,
and, while it waits (parked, at its limit, or running elsewhere), claimed again with the
worker's claim operation or rescued by the maintenance module when its lease expired.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ._enqueue import build_job, insert
from ._execute import execute_async, execute_sync
from ._handle import finished_outcome
from ._job import JobDefinition
from ._maintenance import rescue_expired
from ._runner import JobRun
from ._runtime import Runtime
from .errors import JobNotFound
from .types import ClaimedJob, JobRecord, JobState


def claimed_from(record: JobRecord) -> ClaimedJob:
    """The claim a row inserted already claimed stands for."""
    return ClaimedJob(
        id=record.id,
        name=record.name,
        queue=record.queue,
        key=record.key,
        args=record.args,
        fence=record.fence,
        attempt=record.attempts,
        priority=record.priority,
    )


def run_now(
    runtime: Runtime,
    definition: JobDefinition[Any, Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    key: str | None,
) -> Any:
    """Insert (or find, by key) the job, run it here until it ends, and return its value."""
    clock, store = runtime.clock, runtime.store
    now = clock.now()
    limited = definition.concurrency is not None  # claimed through the limit below
    new = build_job(definition, args, kwargs, key=key, run_at=now)
    record = insert(runtime, new, now=now, owner=None if limited else runtime.owner).job
    claimed = None
    if record.lease_owner == runtime.owner and record.state == JobState.RUNNING:
        claimed = claimed_from(record)
    while True:
        if claimed is not None:
            run: JobRun | None
            if definition.is_async:
                run = asyncio.run(execute_async(runtime, claimed))
            else:
                run = execute_sync(runtime, claimed)
            claimed = None
            if run is not None and run.succeeded:
                return run.result  # stored, durably: no need to read it back
        found = store.job_get(record.id)
        if found is None:
            raise JobNotFound(f"no job with id {record.id!r} (pruned?)")
        record = found
        now = clock.now()
        if record.state.finished:
            return finished_outcome(runtime, record)
        parked = record.state in (JobState.QUEUED, JobState.WAITING)
        if parked and record.run_at <= now:
            claimed = store.job_claim(
                record.id, owner=runtime.owner, now=now, lease_until=now + runtime.lease
            )
            if claimed is None:  # at its concurrency limit: wait for a slot
                runtime.wait_for_finish(min(0.05, runtime.poll_interval))
            continue
        if parked:
            clock.sleep(min(record.run_at - now, runtime.poll_interval))
            continue
        if (
            record.state == JobState.RUNNING
            and record.lease_expires_at is not None
            and record.lease_expires_at < now
        ):
            rescue_expired(store, now=now)
            continue
        runtime.wait_for_finish(min(0.05, runtime.lease / 4))


__all__ = ["claimed_from", "run_now"]
