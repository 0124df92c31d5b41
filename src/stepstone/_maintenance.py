"""Maintenance: the decisions taken about jobs nobody is running any more.

The rescuer finds running jobs whose lease expired (their worker died, froze or lost its
network), decides for each whether it is requeued as a replay or failed as a poison job,
and has the store write those decisions. The policy lives here, once, for every store;
the store only reads the expired leases (a bounded batch) and writes the decisions, each
only while that lease is still expired and unrenewed, so a heartbeat or a claim that
slipped in between the read and the write wins.
"""

from __future__ import annotations

import json

from ._store.base import Store
from .types import ExpiredLease, Rescue, RescueDecision

#: A job reclaimed this many times in a row without a new checkpoint is failed as poison.
POISON_RECLAIMS = 5


def poison_error(job_id: str, reclaims: int) -> str:
    """The error record stored on a job failed as poison."""
    message = (
        f"job {job_id} was reclaimed {reclaims} times in a row without a new checkpoint: "
        "the workers running it keep dying (out of memory, a crash in native code, a kill); "
        "it is failed as a poison job. Fix the cause, then `stepstone retry` it."
    )
    return json.dumps(
        {
            "type": "stepstone.errors.StepstoneError",
            "message": message,
            "args": [message],
            "traceback": None,
            "permanent": True,
        }
    )


def decide(expired: ExpiredLease) -> RescueDecision:
    """Requeue an expired lease as a replay, or fail the job as poison when this is its
    ``POISON_RECLAIMS``-th reclaim in a row without a new checkpoint."""
    # A reclaim counts toward poison only if the run it ends wrote nothing.
    reclaims = 0 if expired.progressed else expired.reclaims + 1
    error = poison_error(expired.job_id, reclaims) if reclaims >= POISON_RECLAIMS else None
    return RescueDecision(
        job_id=expired.job_id,
        fence=expired.fence,
        reclaims=reclaims,
        attempt=expired.attempts,
        poison_error=error,
    )


def rescue_expired(store: Store, *, now: float, limit: int = 100) -> Rescue:
    """Requeue the running jobs whose lease expired (as replays) and fail the poison ones:
    one bounded batch of at most ``limit`` jobs."""
    expired = store.job_get_expired(now=now, limit=limit)
    if not expired:
        return Rescue(requeued=(), poisoned=())
    return store.job_rescue_many([decide(lease) for lease in expired], now=now)


__all__ = ["POISON_RECLAIMS", "decide", "poison_error", "rescue_expired"]
