"""The per-step context and the job logger: what every engine layer below the run uses.

One ``ContextVar`` per piece of context (the run's own lives with ``JobRun`` in
``runner``); reset by token.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger("stepstone")


@dataclass(slots=True)  # not frozen: built once per step attempt, frozen costs a setattr a field
class StepFrame:
    """The step being executed: its identity in the job's history (never changed)."""

    name: str
    ident: str
    seq: int
    attempt: int
    #: The step's memo key, if it has one: its idempotency key derives from it.
    memo: str | None = None


#: The step whose body this code executes in, if any.
current_step: ContextVar[StepFrame | None] = ContextVar("stepstone_step", default=None)


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


__all__ = ["JobLogger", "StepFrame", "current_step", "logger"]
