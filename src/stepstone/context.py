"""What the running job knows about itself: one ``ContextVar`` per piece, reset by token."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import MutableMapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import StepstoneError

if TYPE_CHECKING:
    from .runner import JobRun

#: The job run this code executes in, if any.
current_run: ContextVar[JobRun | None] = ContextVar("stepstone_run", default=None)
#: The step whose body this code executes in, if any.
current_step: ContextVar[StepFrame | None] = ContextVar("stepstone_step", default=None)

logger = logging.getLogger("stepstone")


@dataclass(frozen=True, slots=True)
class StepFrame:
    """The step being executed: its identity in the job's history."""

    name: str
    ident: str
    seq: int
    attempt: int
    #: The step's memo key, if it has one: its idempotency key derives from it.
    memo: str | None = None


def idempotency_key(job_id: str, ident: str) -> str:
    """Stable for every attempt of one step of one job, different between steps and jobs."""
    digest = hashlib.sha256(f"{job_id}/{ident}".encode()).hexdigest()[:32]
    return f"stepstone-{digest}"


def memo_idempotency_key(memo: str) -> str:
    """For a step with a memo key: stable for every run of any job that computes the key."""
    digest = hashlib.sha256(f"memo/{memo}".encode()).hexdigest()[:32]
    return f"stepstone-{digest}"


class JobLogger(logging.LoggerAdapter[logging.Logger]):
    """A logger whose records carry the job id, job name, step and attempt."""

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        extra = dict(self.extra or {})
        frame = current_step.get()
        if frame is not None:
            extra["step"] = frame.ident
        extra.setdefault("action", "job.log")
        extra.update(kwargs.get("extra") or {})
        kwargs["extra"] = extra
        return msg, kwargs


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


__all__ = ["Current", "JobLogger", "StepFrame", "current", "current_run", "current_step"]
