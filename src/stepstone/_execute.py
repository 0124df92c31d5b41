"""Runs one attempt of one claimed job, sync (in this thread) or async (on the running
event loop): decode its arguments, run its function with the run as context, and let
``JobRun.finish`` record how it ended. One classifier says what an exception means."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from ._runner import JobRun, Released, current_run, suspend_in
from .errors import JobCancelled, SerializationError, Suspend
from .types import ClaimedJob

if TYPE_CHECKING:
    from ._runtime import Runtime


def _prepare(
    runtime: Runtime, claimed: ClaimedJob
) -> tuple[JobRun, tuple[Any, ...], dict[str, Any]] | None:
    """The run of a claimed job and its decoded arguments; None when they cannot be
    decoded (the run is then failed)."""
    definition = runtime.jobs[claimed.name]
    # Fence 1 is a job's first claim ever: no run can have written a checkpoint yet.
    history = [] if claimed.fence == 1 else runtime.store.checkpoint_list(claimed.id)
    run = JobRun(runtime, claimed, definition, history)
    try:
        args, kwargs = definition.codec.decode(claimed.args)
    except SerializationError as exc:
        error = SerializationError(
            f"the stored arguments of job {claimed.id} ({claimed.name}) cannot be decoded: {exc}; "
            "the row was written by other code or edited by hand"
        )
        run.finish(error=error)
        return None
    return run, args, kwargs


def classify_end(run: JobRun, exc: BaseException) -> tuple[BaseException | None, bool]:
    """What a job function's exception means for its run: the error ``finish`` records,
    and whether the exception goes on up (the process or the task is being stopped).

    Exceptions, a park and a shutdown release are the job's own ends. A group holding a
    park (``asyncio.TaskGroup``) parks. The cancellation of a job that was cancelled
    reports the cancellation. Anything else (``KeyboardInterrupt``, a task cancelled
    for shutdown) gives the job back and propagates.
    """
    if isinstance(exc, Exception | Released | Suspend):
        return exc, False
    if isinstance(exc, BaseExceptionGroup):
        suspend = suspend_in(exc)
        if suspend is not None:
            return suspend, False
    elif isinstance(exc, asyncio.CancelledError) and isinstance(run.interrupt, JobCancelled):
        return exc, False  # finish reports the cancellation
    return Released(), True


def execute_sync(runtime: Runtime, claimed: ClaimedJob, *, defer: bool = False) -> JobRun | None:
    """Run one attempt of a sync job in this thread."""
    prepared = _prepare(runtime, claimed)
    if prepared is None:
        return None
    run, args, kwargs = prepared
    run.defer_completion = defer
    runtime.lease_keeper.add(run)
    token = current_run.set(run)
    try:
        run.check()
        value = run.definition.fn(*args, **kwargs)
    except BaseException as exc:
        current_run.reset(token)
        error, propagate = classify_end(run, exc)
        run.finish(None, error)
        if propagate:
            raise
    else:
        current_run.reset(token)
        run.finish(value)
    finally:
        if not run.outcome_pending:
            runtime.lease_keeper.discard(run)
    return run


async def execute_async(
    runtime: Runtime, claimed: ClaimedJob, *, defer: bool = False
) -> JobRun | None:
    """Run one attempt of an ``async def`` job on the running event loop."""
    prepared = await runtime.call_store(_prepare, runtime, claimed)
    if prepared is None:
        return None
    run, args, kwargs = prepared
    run.defer_completion = defer
    run.task = asyncio.current_task()
    run.loop = asyncio.get_running_loop()
    runtime.lease_keeper.add(run)
    token = current_run.set(run)
    try:
        run.check()
        coroutine = run.definition.fn(*args, **kwargs)
        if run.deadline is None:
            value = await coroutine
        else:
            remaining = max(run.deadline - run.clock.now(), 0.0)
            try:
                value = await asyncio.wait_for(coroutine, remaining)
            except TimeoutError as exc:
                if run.clock.now() < run.deadline:
                    raise  # the job's own TimeoutError
                raise run.timed_out() from exc
    except BaseException as exc:
        current_run.reset(token)
        error, propagate = classify_end(run, exc)
        if propagate:
            await asyncio.shield(runtime.call_store(run.finish, None, error))
            raise
        await runtime.call_store(run.finish, None, error)
    else:
        current_run.reset(token)
        await runtime.call_store(run.finish, value)
    finally:
        if not run.outcome_pending:
            runtime.lease_keeper.discard(run)
    return run


__all__ = ["classify_end", "execute_async", "execute_sync"]
