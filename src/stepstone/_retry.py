"""Retry policies for jobs and steps: how many attempts, how long to wait, which errors."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import timedelta
from typing import Any

from .errors import (
    InvalidKey,
    JobCancelled,
    JobFailed,
    JobTimeout,
    NonDeterminism,
    Permanent,
    SerializationError,
)

ExceptionTypes = type[BaseException] | tuple[type[BaseException], ...]

#: Errors no retry can mend: the code or the data must change first.
NEVER_RETRIED: tuple[type[BaseException], ...] = (
    Permanent,
    SerializationError,
    NonDeterminism,
    InvalidKey,
    JobTimeout,
    JobFailed,
    JobCancelled,
)


def _seconds(value: float | timedelta) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


_UNSET: Any = object()


@dataclass(frozen=True, init=False)
class Retry:
    """A retry policy.

    ``max_attempts`` counts every run including the first. The delay before attempt
    ``n + 1`` is ``initial * factor ** (n - 1)`` capped at ``max_delay``; with ``jitter``
    it is drawn uniformly from ``[d / 2, d]``. ``retry_on`` limits retries to those
    exception types; ``give_up_on`` names types that are never retried. ``Permanent``
    is never retried.

    A field left out takes the default of where the policy is used: for a step
    3 attempts, 1 s, x2, at most 60 s; for a job 5 attempts, 1 s, x2, at most 300 s. So
    ``@app.job(retry=Retry(max_attempts=10))`` still waits up to 300 s between attempts.
    """

    max_attempts: int = 3
    initial: float | timedelta = 1.0
    factor: float = 2.0
    max_delay: float | timedelta = 60.0
    jitter: bool = True
    retry_on: ExceptionTypes | None = None
    give_up_on: ExceptionTypes | None = None
    random: Callable[[], float] = field(default=random.random, repr=False, compare=False)
    #: The fields the policy was given; the others fall back to where it is used.
    given: frozenset[str] = field(default=frozenset(), repr=False, compare=False)

    def __init__(
        self,
        max_attempts: int = _UNSET,
        *,
        initial: float | timedelta = _UNSET,
        factor: float = _UNSET,
        max_delay: float | timedelta = _UNSET,
        jitter: bool = _UNSET,
        retry_on: ExceptionTypes | None = _UNSET,
        give_up_on: ExceptionTypes | None = _UNSET,
        random: Callable[[], float] = _UNSET,
    ) -> None:
        passed = {
            "max_attempts": max_attempts,
            "initial": initial,
            "factor": factor,
            "max_delay": max_delay,
            "jitter": jitter,
            "retry_on": retry_on,
            "give_up_on": give_up_on,
            "random": random,
        }
        given = frozenset(name for name, value in passed.items() if value is not _UNSET)
        for name, value in passed.items():
            object.__setattr__(self, name, _CLASS_DEFAULTS[name] if value is _UNSET else value)
        object.__setattr__(self, "given", given)
        self.__post_init__()

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"Retry(max_attempts={self.max_attempts}) must be at least 1")
        if _seconds(self.initial) < 0 or _seconds(self.max_delay) < 0 or self.factor < 1:
            raise ValueError("Retry delays must be >= 0 and factor >= 1")

    def with_defaults(self, defaults: Retry) -> Retry:
        """This policy, with the fields it was not given taken from ``defaults``."""
        merged = {
            name: getattr(self if name in self.given else defaults, name)
            for name in _CLASS_DEFAULTS
        }
        return Retry(**merged)

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


#: The defaults declared on the fields above (the step defaults), by field name.
_CLASS_DEFAULTS: dict[str, Any] = {
    spec.name: spec.default for spec in fields(Retry) if spec.name != "given"
}

DEFAULT_STEP_RETRY = Retry(max_attempts=3, initial=1.0, factor=2.0, max_delay=60.0)
DEFAULT_JOB_RETRY = Retry(max_attempts=5, initial=1.0, factor=2.0, max_delay=300.0)

__all__ = ["DEFAULT_JOB_RETRY", "DEFAULT_STEP_RETRY", "NEVER_RETRIED", "Retry"]
