"""``JobHandle``: a job's id and key, its live state, its history and its outcome."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, overload

from ._flow import Ready, child_result
from ._frames import current_step
from ._runner import JobRun, current_run
from ._serialization import describe_error, error_from_record, loads
from .errors import JobCancelled, JobFailed, JobNotFound
from .types import JobRecord, JobState

if TYPE_CHECKING:
    from ._runtime import Runtime

_FIRST_POLL = 0.002
_MAX_POLL = 0.1


def _parking_run() -> JobRun | None:
    """The job run whose own code (not a step) is calling, which waits by parking."""
    run = current_run.get()
    if run is None or current_step.get() is not None:
        return None
    run.check()
    return run


@dataclass(frozen=True)
class StepRecord:
    """One entry of a job's step history, as ``JobHandle.steps()`` returns it."""

    position: int
    name: str
    status: str
    attempts: int
    value: Any
    error: dict[str, Any] | None
    created_at: float
    #: The memo key the value was stored under (computed here) or taken from (``attempts``
    #: is 0: the body did not run in this job).
    memo: str | None = None


@dataclass(frozen=True)
class AttemptError:
    """The error of one failed attempt of a job or of one of its steps."""

    attempt: int
    step: str | None
    type: str
    message: str
    traceback: str | None
    created_at: float


class JobHandle:
    """A job accepted by the store. ``state`` and ``attempts`` are read afresh on access."""

    def __init__(self, runtime: Runtime, job_id: str, key: str | None = None) -> None:
        self._runtime = runtime
        self.id = job_id
        self.key = key

    def __repr__(self) -> str:
        return f"<JobHandle {self.id}{f' key={self.key!r}' if self.key else ''}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, JobHandle) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def record(self) -> JobRecord:
        """The job's row as stored now."""
        record = self._runtime.store.job_get(self.id)
        if record is None:
            raise JobNotFound(f"no job with id {self.id!r} (pruned?)")
        return record

    @property
    def state(self) -> JobState:
        return self.record().state

    @property
    def attempts(self) -> int:
        return self.record().attempts

    @property
    def name(self) -> str:
        return self.record().name

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the job to finish and return its result.

        Raises ``TimeoutError`` when ``timeout`` seconds pass first, ``JobFailed`` (with the
        job's final error as ``__cause__``) if it failed, ``JobCancelled`` if cancelled.
        Called in a job's own code, it parks that job until this one finishes (its worker
        slot is free meanwhile), and the outcome becomes part of its history.
        """
        run = _parking_run()
        if run is not None:
            return child_result(run, self.id, timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        poll = _FIRST_POLL
        while True:
            record = self.record()
            if record.state.finished:
                return self._outcome(record)
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"job {self.id} is still {record.state.value} after {timeout}s")
            wait = poll if remaining is None else min(poll, remaining)
            self._runtime.wait_for_finish(wait)
            poll = min(poll * 2, _MAX_POLL)

    def result_async(self, timeout: float | None = None) -> Awaitable[Any]:
        """``result()`` for ``async`` code: waits without blocking the event loop. In an async
        job's own code it parks the job, like ``result()``."""
        run = _parking_run()
        if run is not None:
            return Ready(child_result(run, self.id, timeout))
        return self._result_async(timeout)

    async def _result_async(self, timeout: float | None) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        poll = _FIRST_POLL
        while True:
            record = await self._runtime.call_store(self.record)
            if record.state.finished:
                return self._outcome(record)
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"job {self.id} is still {record.state.value} after {timeout}s")
            await asyncio.sleep(poll if remaining is None else min(poll, remaining))
            poll = min(poll * 2, _MAX_POLL)

    def _outcome(self, record: JobRecord) -> Any:
        return finished_outcome(self._runtime, record)

    def steps(self) -> list[StepRecord]:
        """The job's step history in position order: what a replay would return."""
        steps = []
        for checkpoint in self._runtime.store.checkpoint_list(self.id):
            ok = checkpoint.status == "ok"
            steps.append(
                StepRecord(
                    position=checkpoint.seq,
                    name=checkpoint.name,
                    status=checkpoint.status,
                    attempts=checkpoint.attempts,
                    value=loads(checkpoint.value) if ok else None,
                    error=None if ok else json.loads(checkpoint.value),
                    created_at=checkpoint.created_at,
                    memo=checkpoint.memo,
                )
            )
        return steps

    def errors(self) -> list[AttemptError]:
        """Every recorded error of the job's attempts and of its steps' attempts, oldest first."""
        found = []
        for row in self._runtime.store.error_list(self.id):
            error = json.loads(row.error)
            found.append(
                AttemptError(
                    attempt=row.attempt,
                    step=row.step,
                    type=error.get("type", "?"),
                    message=error.get("message", ""),
                    traceback=error.get("traceback"),
                    created_at=row.created_at,
                )
            )
        return found

    def cancel(self) -> bool:
        """``app.cancel(self.id)``."""
        return self._runtime.cancel(self.id)


def finished_outcome(runtime: Runtime, record: JobRecord) -> Any:
    """A finished job's result, or its failure raised (``JobFailed``, ``JobCancelled``)."""
    if record.state == JobState.SUCCEEDED:
        definition = runtime.definition(record.name)
        return loads(record.result or "null", definition.return_type if definition else Any)
    if record.state == JobState.CANCELLED:
        raise JobCancelled(f"job {record.id} ({record.name}) was cancelled")
    cause = error_from_record(json.loads(record.error)) if record.error else None
    detail = describe_error(cause) if cause is not None else "no error was recorded"
    raise JobFailed(
        f"job {record.id} ({record.name}) failed after {record.attempts} attempt(s): {detail}"
    ) from cause


class Enqueued(Sequence[JobHandle]):
    """What ``app.enqueue_many`` did: the handles in item order, and how many of the jobs
    are new and how many already existed (their key was taken by the same work)."""

    def __init__(self) -> None:
        self._handles: list[JobHandle] = []
        self.new = 0
        self.existing = 0

    def _extend(self, handles: list[JobHandle], *, new: int, existing: int) -> None:
        self._handles.extend(handles)
        self.new += new
        self.existing += existing

    @overload
    def __getitem__(self, index: int) -> JobHandle: ...

    @overload
    def __getitem__(self, index: slice) -> list[JobHandle]: ...

    def __getitem__(self, index: int | slice) -> JobHandle | list[JobHandle]:
        return self._handles[index]

    def __len__(self) -> int:
        return len(self._handles)

    def __repr__(self) -> str:
        return f"<Enqueued new={self.new} existing={self.existing}>"


__all__ = ["AttemptError", "Enqueued", "JobHandle", "StepRecord", "finished_outcome"]
