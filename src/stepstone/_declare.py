"""Declaring jobs and steps: the decorators' options checked, and the definitions built
from them. ``App.job``, ``App.step`` and ``App.transaction`` are the public faces."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from datetime import timedelta, tzinfo
from typing import Any, Concatenate, ParamSpec, TypeVar

from ._enqueue import seconds
from ._job import JobDefinition
from ._limits import Limit, Rate
from ._retry import DEFAULT_JOB_RETRY, DEFAULT_STEP_RETRY, Retry
from ._runtime import Runtime
from ._schedule import Schedule
from ._step import StepDefinition, TransactionStep
from .errors import UnknownJob

P = ParamSpec("P")
R = TypeVar("R")


def declaring_scope() -> dict[str, Any] | None:
    """The local names of the user code that applies a decorator, for resolving its type
    hints later (a class declared in a function body). None at module level."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__", "").startswith("stepstone."):
        frame = frame.f_back  # type: ignore[assignment]
    if frame is None or frame.f_locals is frame.f_globals:
        return None
    return dict(frame.f_locals)


def _positive_seconds(value: float | timedelta | None) -> float | None:
    if value is None:
        return None
    if seconds(value) <= 0:
        raise ValueError("timeout must be positive")
    return seconds(value)


def check_job_options(
    concurrency: Limit | int | None, timeout: float | timedelta | None
) -> tuple[Limit | None, float | None]:
    """``@app.job``'s ``concurrency`` as a ``Limit`` and ``timeout`` in seconds, checked when
    the decorator is called (before it is applied)."""
    if isinstance(concurrency, int) and not isinstance(concurrency, bool):
        concurrency = Limit(concurrency)
    if concurrency is not None and not isinstance(concurrency, Limit):
        raise TypeError(f"concurrency= takes Limit(n, key=) or an int, not {concurrency!r}")
    return concurrency, _positive_seconds(timeout)


def check_step_options(
    timeout: float | timedelta | None, rate: Rate | None
) -> tuple[float | None, Rate | None]:
    """``@app.step``'s ``timeout`` in seconds and its ``rate``, checked when the decorator
    is called (before it is applied)."""
    timeout_seconds = _positive_seconds(timeout)
    if rate is not None and not isinstance(rate, Rate):
        raise TypeError(f"rate= takes Rate(n, per=, key=), not {rate!r}")
    return timeout_seconds, rate


def define_job(
    function: Callable[P, R],
    *,
    name: str | None,
    queue: str,
    retry: Retry | None,
    timeout: float | None,
    priority: int,
    concurrency: Limit | None,
    cron: str | None,
    timezone: str | tzinfo | None,
    missed: str,
) -> JobDefinition[P, R]:
    """The definition of a job (options already checked by ``check_job_options``)."""
    job_name = name or f"{function.__module__}.{function.__qualname__}"
    if name is None and function.__module__ == "__main__":
        warnings.warn(
            f"job {function.__qualname__} is defined in __main__ without name=; a "
            "worker that imports your module will know it by another name. Pass "
            "@app.job(name=...).",
            stacklevel=4,
        )
    return JobDefinition(
        function,
        localns=declaring_scope(),
        name=job_name,
        queue=queue,
        retry=retry.with_defaults(DEFAULT_JOB_RETRY) if retry else DEFAULT_JOB_RETRY,
        priority=priority,
        timeout=timeout,
        concurrency=concurrency,
        schedule=(
            Schedule(cron, timezone=timezone, missed=missed, fn=function, name=job_name)
            if cron is not None
            else None
        ),
    )


def define_step(
    runtime: Runtime,
    function: Callable[P, R],
    *,
    name: str | None,
    retry: Retry | None,
    key: str | Callable[..., str] | None,
    ttl: float | timedelta | None,
    timeout: float | None,
    rate: Rate | None,
) -> StepDefinition[P, R]:
    """The definition of a step (options already checked by ``check_step_options``)."""
    return StepDefinition(
        runtime,
        function,
        name=name or function.__name__,
        retry=retry.with_defaults(DEFAULT_STEP_RETRY) if retry else DEFAULT_STEP_RETRY,
        localns=declaring_scope(),
        key=key,
        ttl=seconds(ttl) if ttl is not None else None,
        timeout=timeout,
        rate=rate,
    )


def define_transaction(
    runtime: Runtime,
    function: Callable[Concatenate[Any, P], R],
    *,
    name: str | None,
    retry: Retry | None,
) -> TransactionStep[P, R]:
    """The definition of a transactional step."""
    return TransactionStep(
        runtime,
        function,
        name=name or function.__name__,
        retry=retry.with_defaults(DEFAULT_STEP_RETRY) if retry else DEFAULT_STEP_RETRY,
        localns=declaring_scope(),
    )


def resolve_job(
    job: Any,
    jobs: dict[str, JobDefinition[Any, Any]],
    functions: dict[Callable[..., Any], JobDefinition[Any, Any]],
    url: str,
) -> JobDefinition[Any, Any]:
    """The definition a job reference names (a definition, a job name, or the decorated
    function), among one App's jobs; ``UnknownJob`` saying what to do otherwise."""
    if isinstance(job, JobDefinition):
        found = jobs.get(job.name)
        if found is None:
            raise UnknownJob(f"job {job.name} is declared on another App, not on this one ({url})")
        return found
    if isinstance(job, str):
        found = jobs.get(job)
        if found is None:
            raise UnknownJob(
                f"no job named {job!r} is registered in this process; known jobs: "
                f"{sorted(jobs) or 'none'}. Import the module that declares it."
            )
        return found
    if callable(job) and job in functions:
        return functions[job]
    label = getattr(job, "__qualname__", repr(job))
    raise UnknownJob(
        f"{label} is not a job of this App: decorate it with @app.job before enqueueing it"
    )


__all__ = [
    "check_job_options",
    "check_step_options",
    "declaring_scope",
    "define_job",
    "define_step",
    "define_transaction",
    "resolve_job",
]
