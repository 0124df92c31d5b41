"""What the running job knows about itself: one ``ContextVar`` per piece, reset by token."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

from ._frames import JobLogger, StepFrame, current_step, logger
from ._runner import current_run
from .errors import StepstoneError


def idempotency_key(job_id: str, ident: str) -> str:
    """Stable for every attempt of one step of one job, different between steps and jobs."""
    digest = hashlib.sha256(f"{job_id}/{ident}".encode()).hexdigest()[:32]
    return f"stepstone-{digest}"


def memo_idempotency_key(memo: str) -> str:
    """For a step with a memo key: stable for every run of any job that computes the key."""
    digest = hashlib.sha256(f"memo/{memo}".encode()).hexdigest()[:32]
    return f"stepstone-{digest}"


@dataclass(frozen=True)
class Current:
    """The running job's context, as ``stepstone.current()`` returns it."""

    job_id: str
    job_name: str
    key: str | None
    attempt: int
    step_name: str | None
    step_attempt: int | None
    idempotency_key: str
    logger: logging.LoggerAdapter[logging.Logger]


def current() -> Current:
    """The context of the job (and step) this code runs in.

    ``idempotency_key`` is the same on every attempt of one step of one job, and differs
    between steps: pass it to an external API that deduplicates requests. Outside a step
    it names the job run's next step position. Raises ``StepstoneError`` outside a job.
    """
    run = current_run.get()
    if run is None:
        raise StepstoneError(
            "stepstone.current() was called outside a running job; call it from a job or step"
        )
    frame = current_step.get()
    if frame is not None:
        step_name: str | None = frame.name
        if frame.memo is not None:
            key = memo_idempotency_key(frame.memo)
        else:
            key = idempotency_key(run.job_id, frame.ident)
    else:
        step_name = None
        key = idempotency_key(run.job_id, f"@{run.position}")
    return Current(
        job_id=run.job_id,
        job_name=run.name,
        key=run.key,
        attempt=run.attempt,
        step_name=step_name,
        step_attempt=frame.attempt if frame is not None else None,
        idempotency_key=key,
        logger=run.logger,
    )


__all__ = [
    "Current",
    "JobLogger",
    "StepFrame",
    "current",
    "current_run",
    "current_step",
    "idempotency_key",
    "logger",
    "memo_idempotency_key",
]
