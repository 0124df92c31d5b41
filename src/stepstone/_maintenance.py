"""Maintenance: the decisions taken about jobs nobody is running any more.

The rescuer finds running jobs whose lease expired (their worker died, froze or lost its
network), decides for each whether it is requeued as a replay or failed as a poison job,
and has the store write those decisions. The policy lives here, once, for every store.
"""

from __future__ import annotations

from .store.base import Store
from .types import Rescue


def rescue_expired(store: Store, *, now: float, limit: int = 100) -> Rescue:
    """Requeue the running jobs whose lease expired (as replays) and fail the poison ones."""
    return store.job_rescue_expired(now=now, limit=limit)


__all__ = ["rescue_expired"]
