"""Flow control declared on jobs and steps: concurrency limits and rate limits.

Both are enforced through the database, so they hold across every worker process on every
machine that shares it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from ._keys import KeyTemplate


@dataclass(frozen=True)
class Limit:
    """At most ``n`` jobs of this name run at once (with a live lease) per ``key``.

    ``key`` is a ``str.format`` template over the job's arguments (``"{customer_id}"``) or
    a callable taking them; None limits the job as a whole. Jobs over the limit stay
    queued: no worker slot waits for them. Waiting and sleeping jobs hold no slot.
    """

    n: int
    key: str | Callable[..., str] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"Limit(n) must be an integer of at least 1, not {self.n!r}")


@dataclass(frozen=True)
class Rate:
    """At most ``n`` calls of a step in any ``per`` seconds, per ``key``, across all workers.

    ``key`` is a fixed name (``"ocr"``: every step using it shares the budget), a
    ``str.format`` template over the step's arguments, or a callable; None uses the step's
    name. The window slides: up to ``n`` calls may go at once, and never more than ``n``
    within any ``per`` seconds. A call over the limit waits, outside any database
    transaction, until it may go.
    """

    n: int
    per: float | timedelta = 1.0
    key: str | Callable[..., str] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"Rate(n) must be an integer of at least 1, not {self.n!r}")
        if self.seconds <= 0:
            raise ValueError("Rate(per=) must be positive")

    @property
    def seconds(self) -> float:
        return self.per.total_seconds() if isinstance(self.per, timedelta) else float(self.per)


def limit_key(limit: Limit, fn: Callable[..., Any], job_name: str) -> KeyTemplate | None:
    """The template that names a job's concurrency key (None: the job as a whole)."""
    if limit.key is None:
        return None
    return KeyTemplate(limit.key, fn, what=f"concurrency key of job {job_name}")


def rate_key(rate: Rate, fn: Callable[..., Any], step_name: str) -> KeyTemplate | str:
    """The template or fixed name of a step's rate-limit key."""
    if rate.key is None:
        return f"step:{step_name}"
    if isinstance(rate.key, str) and "{" not in rate.key:
        return rate.key
    return KeyTemplate(rate.key, fn, what=f"rate key of step {step_name}")


__all__ = ["Limit", "Rate", "limit_key", "rate_key"]
