"""Retry policies for jobs and steps: how many attempts, how long to wait, which errors."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from .errors import NonDeterminism, Permanent, SerializationError

ExceptionTypes = type[BaseException] | tuple[type[BaseException], ...]

#: Errors no retry can mend: the code or the data must change first.
NEVER_RETRIED: tuple[type[BaseException], ...] = (Permanent, SerializationError, NonDeterminism)


def _seconds(value: float | timedelta) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


@dataclass(frozen=True)
class Retry:
    """A retry policy.

    ``max_attempts`` counts every run including the first. The delay before attempt
    ``n + 1`` is ``initial * factor ** (n - 1)`` capped at ``max_delay``; with ``jitter``
    it is drawn uniformly from ``[d / 2, d]``. ``retry_on`` limits retries to those
    exception types; ``give_up_on`` names types that are never retried. ``Permanent``
    is never retried.
    """

    max_attempts: int = 3
    initial: float | timedelta = 1.0
    factor: float = 2.0
    max_delay: float | timedelta = 60.0
    jitter: bool = True
    retry_on: ExceptionTypes | None = None
    give_up_on: ExceptionTypes | None = None
    random: Callable[[], float] = field(default=random.random, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"Retry(max_attempts={self.max_attempts}) must be at least 1")
        if _seconds(self.initial) < 0 or _seconds(self.max_delay) < 0 or self.factor < 1:
            raise ValueError("Retry delays must be >= 0 and factor >= 1")

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        exponent = max(attempt - 1, 0)
        cap = _seconds(self.max_delay)
        try:
            base = min(_seconds(self.initial) * self.factor**exponent, cap)
        except OverflowError:
            base = cap
        if self.jitter:
            return base / 2 + self.random() * base / 2
        return base

    def should_retry(self, error: BaseException, attempt: int) -> bool:
        """Whether failed attempt number ``attempt`` (1-based) is followed by another."""
        if attempt >= self.max_attempts or isinstance(error, NEVER_RETRIED):
            return False
        if self.give_up_on is not None and isinstance(error, self.give_up_on):
            return False
        return self.retry_on is None or isinstance(error, self.retry_on)


DEFAULT_STEP_RETRY = Retry(max_attempts=3, initial=1.0, factor=2.0, max_delay=60.0)
DEFAULT_JOB_RETRY = Retry(max_attempts=5, initial=1.0, factor=2.0, max_delay=300.0)

__all__ = ["DEFAULT_JOB_RETRY", "DEFAULT_STEP_RETRY", "NEVER_RETRIED", "Retry"]
