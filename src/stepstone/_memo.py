"""Memo keys inside a run: take a key (or its stored value), store the computed value with
the run's checkpoint, give the key up. The step protocol (``step``) calls these."""

from __future__ import annotations

import logging

from ._frames import StepFrame, logger
from ._runner import JobRun
from .errors import JobCancelled, LeaseLost, StoreError
from .types import MemoClaim


def memo_acquire(run: JobRun, step_name: str, seq: int, ident: str, key: str) -> MemoClaim:
    """Look a memo key up for a step call: a hit is checkpointed into this run's history
    (with no attempt of its own); ``acquired`` means this run computes the key."""
    try:
        claim = run.store.memo_acquire(
            key, run.job_id, run.fence, step=step_name, now=run.clock.now()
        )
    except StoreError as exc:
        run.interrupt_with(exc)
        raise
    if claim.outcome == "hit":
        assert claim.value is not None
        run.checkpoint(seq, ident, "ok", claim.value, 0, memo=key)
        run.executed -= 1
        run.replayed += 1
        run.logger.info(
            "step %s took its value from memo key %r",
            ident,
            key,
            extra={"action": "step.memo_hit", "step": ident, "memo": key},
        )
    elif claim.outcome == "acquired" and claim.other_job is not None:
        run.logger.warning(
            "step %s takes memo key %r over from job %s, whose run stopped computing it",
            ident,
            key,
            claim.other_job,
            extra={"action": "step.memo_takeover", "step": ident, "memo": key},
        )
    elif claim.outcome == "busy" and logger.isEnabledFor(logging.DEBUG):
        run.logger.debug(
            "step %s waits for memo key %r, which job %s computes",
            ident,
            key,
            claim.other_job,
            extra={"action": "step.memo_wait", "step": ident, "memo": key},
        )
    return claim


def memo_complete(run: JobRun, frame: StepFrame, text: str, ttl: float | None) -> str:
    """Store a computed value under its memo key and as this run's checkpoint, together;
    returns the value stored (another run's, if it stored the key first)."""
    key = frame.memo
    assert key is not None
    now = run.clock.now()
    try:
        stored = run.store.memo_complete(
            key,
            run.job_id,
            run.fence,
            seq=frame.seq,
            name=frame.ident,
            step=frame.name,
            value=text,
            attempts=frame.attempt,
            expires_at=now + ttl if ttl is not None else None,
            now=now,
        )
    except (LeaseLost, JobCancelled, StoreError) as exc:
        run.interrupt_with(exc)
        raise
    run.executed += 1
    return stored


def memo_release(run: JobRun, key: str) -> None:
    """Give up this run's claim on a memo key (its step failed or the run stops)."""
    try:
        run.store.memo_release(key, run.job_id, run.fence)
    except StoreError:
        run.logger.warning(
            "could not release memo key %r; runs waiting for it take it over once this "
            "job's lease expires",
            key,
            extra={"action": "store.error", "memo": key},
        )


__all__ = ["memo_acquire", "memo_complete", "memo_release"]
