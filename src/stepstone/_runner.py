"""Runs one attempt of one job: replays its history, checkpoints its steps, classifies the end.

The job function runs again from the top on every attempt and every resume. Each step
call takes the next position in the run's history (assigned at call time, so that
``asyncio.gather`` over steps is deterministic); a position with a stored checkpoint
returns the stored value (or raises the stored error) without running the body.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast

from ._frames import JobLogger, logger
from ._serialization import describe_error, dumps_result, error_from_record, error_to_record, loads
from .errors import (
    JobCancelled,
    JobTimeout,
    LeaseLost,
    NonDeterminism,
    SerializationError,
    StepTimeout,
    StoreError,
    Suspend,
)
from .types import Checkpoint, ClaimedJob, Outcome

if TYPE_CHECKING:
    from ._job import JobDefinition
    from ._limits import Rate
    from ._retry import Retry
    from ._runtime import Runtime

T = TypeVar("T")

#: Interruptions that end a run without an outcome of its own.
Interruption = LeaseLost | JobCancelled | StoreError

#: The job run this code executes in, if any.
current_run: ContextVar[JobRun | None] = ContextVar("stepstone_run", default=None)


class Released(BaseException):
    """Control flow: the worker is shutting down; the job gives its lease back at this step."""


class JobRun:
    """The state of one attempt of one job in this process."""

    def __init__(
        self,
        runtime: Runtime,
        claimed: ClaimedJob,
        definition: JobDefinition[Any, Any],
        history: list[Checkpoint],
    ) -> None:
        self.runtime = runtime
        self.store = runtime.store
        self.clock = runtime.clock
        self.definition = definition
        self.job_id = claimed.id
        self.name = claimed.name
        self.key = claimed.key
        self.fence = claimed.fence
        self.attempt = claimed.attempt
        self.created_at = claimed.created_at
        timeout = definition.timeout
        #: When the job times out: its timeout counted from its first start.
        self.deadline: float | None = (
            (claimed.started_at or self.clock.now()) + timeout if timeout is not None else None
        )
        #: Per event, the newest signal this run has taken (wait_for).
        self.signal_cursors: dict[str, int] = {}
        #: Set when the job decided to park: later step calls (in a ``finally``, or after
        #: an ``except BaseException``) raise it again, and the run parks however it ends.
        self.parking: Suspend | None = None
        #: The task running an async job, cancelled at once when the job is cancelled.
        self.task: asyncio.Task[Any] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._finish_lock = threading.Lock()
        self.history = {checkpoint.seq: checkpoint for checkpoint in history}
        self.position = 0
        self.occurrences: dict[str, int] = {}
        self.called: list[str] = []
        #: Why this run stops at its next step boundary (written by ``interrupt_with`` only).
        self.interrupt: Interruption | None = None
        #: Whether the interruption was already logged (by the lease keeper).
        self.interrupt_logged = False
        #: Set once this run has written how it ended (success, retry, failure, release).
        self.outcome_written = False
        #: Whether this run stored the job's success, and the value it stored.
        self.succeeded = False
        #: A worker's run hands its success to the flusher instead of waiting for it.
        self.defer_completion = False
        #: Set while a deferred success is not written yet (the lease stays watched).
        self.outcome_pending = False
        self.result: Any = None
        self.stopping = False
        self.replayed = 0
        self.executed = 0
        self.logger = JobLogger(
            logger, {"job_id": self.job_id, "job": self.name, "attempt": self.attempt}
        )

    # step boundaries --------------------------------------------------------------------
    def check(self) -> None:
        """At a step boundary: stop here if the run lost its lease, the job was cancelled or
        timed out, or the worker stops."""
        if self.interrupt is not None:
            raise type(self.interrupt)(str(self.interrupt))
        if self.parking is not None:
            raise self.parking  # the job is parking: no step may run on the way out
        if self.deadline is not None and self.clock.now() >= self.deadline:
            raise self.timed_out()
        if self.stopping:
            raise Released

    def timed_out(self) -> JobTimeout:
        return JobTimeout(
            f"job {self.job_id} ({self.name}) ran past its timeout of "
            f"{self.definition.timeout:g}s, counted from its first start across attempts and "
            "restarts"
        )

    def interrupt_with(
        self, error: BaseException, *, logged: bool = False, cancel: bool = False
    ) -> None:
        """The one writer of this run's interruption: the run stops at its next step
        boundary. ``logged``: already reported (no second log line). ``cancel``: an async
        job's task is cancelled now too (the job was cancelled)."""
        self.interrupt = cast(Interruption, error)
        if logged:
            self.interrupt_logged = True
        task, loop = self.task, self.loop
        if cancel and task is not None and loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(task.cancel)

    def assign(self, step_name: str) -> tuple[int, str]:
        """Give a step call its position and identity, checking it against the history."""
        occurrences = self.occurrences
        occurrence = occurrences.get(step_name, 0)
        occurrences[step_name] = occurrence + 1
        ident = f"{step_name}#{occurrence}"
        seq = self.position
        self.position = seq + 1
        stored = self.history.get(seq)
        if stored is not None and stored.name != ident:
            history = [self.history[i].name for i in sorted(self.history)]
            raise NonDeterminism(
                f"job {self.job_id} ({self.name}) called {ident} at position {seq}, but its "
                f"stored history has {stored.name} there.\n  stored history: {history}\n  "
                f"this run:       {[*self.called, ident]}\nThe job's code changed while the "
                "job was in flight, or it chooses its steps from something other than its "
                "arguments and step results (time, randomness, a global)."
            )
        self.called.append(ident)
        return seq, ident

    def replay(self, stored: Checkpoint, return_type: object) -> Any:
        """The stored outcome of a step: its value, or its error raised again."""
        self.replayed += 1
        if logger.isEnabledFor(logging.DEBUG):
            self.logger.debug(
                "step %s replayed from its checkpoint",
                stored.name,
                extra={"action": "step.replayed", "step": stored.name},
            )
        try:
            if stored.status == "ok":
                return loads(stored.value, return_type)
            record = json.loads(stored.value)
        except (SerializationError, ValueError) as exc:
            raise SerializationError(
                f"the checkpoint of step {stored.name} of job {self.job_id} cannot be decoded "
                f"({exc}); the step's return type changed or the row was edited. Drop the "
                "job's history from this step on or fix the row, then retry the job."
            ) from exc
        raise error_from_record(record)

    # writes -----------------------------------------------------------------------------
    def checkpoint(
        self,
        seq: int,
        ident: str,
        status: str,
        value: str,
        attempts: int,
        *,
        memo: str | None = None,
    ) -> None:
        """Write a step's checkpoint; a refusal makes the run's interruption sticky."""
        try:
            self.store.checkpoint_insert(
                self.job_id,
                self.fence,
                seq=seq,
                name=ident,
                status=status,
                value=value,
                attempts=attempts,
                now=self.clock.now(),
                memo=memo,
            )
        except (LeaseLost, JobCancelled, StoreError) as exc:
            self.interrupt_with(exc)
            raise
        self.executed += 1

    # rate limits and step timeouts -------------------------------------------------------
    def rate_acquire(self, key: str, rate: Rate) -> float:
        """Seconds to wait before the rate limit lets a call through (0: go now)."""
        try:
            return self.store.rate_acquire(
                key, limit=rate.n, per=rate.seconds, now=self.clock.now()
            )
        except StoreError as exc:
            self.interrupt_with(exc)
            raise

    def abandoned(self) -> LeaseLost:
        return LeaseLost(
            f"job {self.job_id}: this run was abandoned when a step ran past its timeout; "
            "its job attempt already failed and the job is someone else's now"
        )

    def abandon_step(self, timeout: float, seq: int, ident: str, attempt: int) -> None:
        """From the watchdog's thread: the step ran past its timeout. A sync step cannot be
        interrupted, so the attempt is given up: its error is recorded, the job attempt
        fails (and is retried per the job's policy, which releases the lease), and the run
        is interrupted so that the step's eventual value is never checkpointed."""
        error = StepTimeout(
            f"step {ident} of job {self.job_id} ran past its timeout of {timeout:g}s (attempt "
            f"{attempt}); a sync step cannot be interrupted, so the attempt was abandoned and "
            "its thread left to finish on its own"
        )
        self.record_step_error(seq, ident, attempt, error)
        self.logger.error("%s", error, extra={"action": "step.timed_out", "step": ident})
        self.finish(error=error)
        if self.interrupt is None:
            self.interrupt_with(self.abandoned(), logged=True)

    def record_step_error(self, seq: int, ident: str, attempt: int, error: BaseException) -> str:
        """Keep the error of one failed step attempt; return its stored form."""
        text = json.dumps(error_to_record(error))
        try:
            self.store.error_insert(
                self.job_id,
                self.fence,
                attempt=self.attempt,
                seq=seq,
                step=f"{ident} attempt {attempt}",
                error=text,
                now=self.clock.now(),
            )
        except StoreError:
            self.logger.exception(
                "could not record the error of step %s", ident, extra={"action": "store.error"}
            )
        return text

    def step_failed(
        self, retry: Retry, seq: int, ident: str, attempt: int, error: Exception
    ) -> float | None:
        """After a failed step attempt: the delay before the next, or None when final.

        When final, the error is checkpointed so that a replay raises it again.
        """
        text = self.record_step_error(seq, ident, attempt, error)
        if retry.should_retry(error, attempt):
            delay = retry.delay(attempt)
            self.logger.warning(
                "step %s attempt %d failed (%s); retrying in %.2fs",
                ident,
                attempt,
                describe_error(error),
                delay,
                extra={"action": "step.retrying", "step": ident},
            )
            return delay
        self.checkpoint(seq, ident, "error", text, attempt)
        self.logger.warning(
            "step %s failed after %d attempt(s): %s",
            ident,
            attempt,
            describe_error(error),
            extra={"action": "step.failed", "step": ident},
        )
        return None

    def encode_step_value(self, return_type: object, ident: str, value: Any) -> str:
        """Encode a step's value; a value that cannot be stored fails the step for good."""
        try:
            return dumps_result(value, return_type)
        except SerializationError as exc:
            raise SerializationError(f"step {ident} of job {self.name}: {exc}") from exc

    # outcomes ---------------------------------------------------------------------------
    def finish(self, value: Any = None, error: BaseException | None = None) -> None:
        """Record how this attempt ended: success, retry, failure, park or release."""
        with self._finish_lock:
            if self.outcome_written:
                return  # already ended (an abandoned step's timer wrote it)
            self._finish_locked(value, error)

    def _finish_locked(self, value: Any, error: BaseException | None) -> None:
        try:
            self._finish(value, error)
            self.outcome_written = True
        except (LeaseLost, JobCancelled) as exc:
            self.interrupt_with(exc)
            self._report_interrupt()
        except StoreError:
            self.logger.exception(
                "could not record the outcome of job %s; it stays claimed until its lease "
                "expires, then another worker replays it",
                self.job_id,
                extra={"action": "store.error"},
            )
        finally:
            self.runtime.job_finished(self.job_id)

    def outcome_of(self, value: Any, error: BaseException | None) -> _Ending | None:
        """How this attempt ended: the fenced transition that records it, with what the log
        says about it; None when there is nothing to write (the run was interrupted)."""
        if isinstance(error, Released):
            if self.interrupt is not None:
                return None
            return _Ending(Outcome.release(self.job_id, self.fence), "job.released")
        if self.interrupt is not None:
            return None
        if self.parking is not None and not isinstance(error, Exception | Released):
            error = self.parking  # parks even if the job swallowed its Suspend
        elif isinstance(error, BaseExceptionGroup):
            error = suspend_in(error) or error
        if isinstance(error, Suspend):
            until = error.until
            if self.deadline is not None:
                until = min(until, self.deadline)  # wake up to time out
            outcome = Outcome.park(
                self.job_id,
                self.fence,
                until=until,
                event=error.event,
                signal_after=error.signal_after,
                child=error.child,
            )
            return _Ending(outcome, "job.parked", error)
        if error is None:
            try:
                text = dumps_result(value, self.definition.return_type)
            except SerializationError as exc:
                error = SerializationError(f"the result of job {self.name}: {exc}")
            else:
                return _Ending(Outcome.complete(self.job_id, self.fence, text), "job.succeeded")
        record = json.dumps(error_to_record(error))
        retry = self.definition.retry
        if retry.should_retry(error, self.attempt):
            delay = retry.delay(self.attempt)
            outcome = Outcome.retry_later(
                self.job_id,
                self.fence,
                error=record,
                attempt=self.attempt,
                run_at=self.clock.now() + delay,
            )
            return _Ending(outcome, "job.retrying", error, delay)
        outcome = Outcome.fail(self.job_id, self.fence, error=record, attempt=self.attempt)
        return _Ending(outcome, "job.failed", error)

    def _finish(self, value: Any, error: BaseException | None) -> None:
        ending = self.outcome_of(value, error)
        if ending is None:
            if not isinstance(error, Released):
                self._report_interrupt()
            return
        if ending.action == "job.succeeded":
            self.succeeded = True
            self.result = value
            if self.defer_completion:
                # The worker's slot takes the next job while the success is written;
                # the lease watch and the log wait for the write (see _completed).
                self.outcome_pending = True
                self.runtime.outcomes.write_later(ending.outcome, self._completed)
                return
        try:
            self.runtime.outcomes.write(ending.outcome)
        except BaseException:
            self.succeeded = False
            raise
        self._log_ending(ending)

    def _log_ending(self, ending: _Ending) -> None:
        action, cause = ending.action, ending.cause
        if action == "job.succeeded":
            if self.logger.isEnabledFor(logging.INFO):
                self.logger.info(
                    "job %s succeeded (%d step(s) run, %d replayed)",
                    self.job_id,
                    self.executed,
                    self.replayed,
                    extra={"action": action},
                )
        elif action == "job.released":
            self.logger.info(
                "job %s released at a step boundary for shutdown",
                self.job_id,
                extra={"action": action},
            )
        elif isinstance(cause, Suspend):
            self.logger.info(
                "job %s parked: %s", self.job_id, cause.reason, extra={"action": action}
            )
        elif action == "job.retrying":
            assert cause is not None
            self.logger.warning(
                "job %s attempt %d failed (%s); retrying in %.2fs",
                self.job_id,
                self.attempt,
                describe_error(cause),
                ending.delay,
                extra={"action": action},
            )
        else:
            assert cause is not None
            self.logger.error(
                "job %s failed after %d attempt(s): %s",
                self.job_id,
                self.attempt,
                describe_error(cause),
                extra={"action": action},
            )

    def _completed(self, error: BaseException | None) -> None:
        """The flusher wrote (or could not write) this run's deferred success."""
        try:
            if error is None:
                self.logger.info(
                    "job %s succeeded (%d step(s) run, %d replayed)",
                    self.job_id,
                    self.executed,
                    self.replayed,
                    extra={"action": "job.succeeded"},
                )
            elif isinstance(error, LeaseLost | JobCancelled):
                self.succeeded = False
                self.interrupt_with(error)
                self._report_interrupt()
            else:
                self.succeeded = False
                self.logger.error(
                    "could not record the success of job %s (%s); it stays claimed until "
                    "its lease expires, then another worker replays it",
                    self.job_id,
                    error,
                    extra={"action": "store.error"},
                )
        finally:
            self.outcome_pending = False
            self.runtime.lease_keeper.discard(self)
            self.runtime.job_finished(self.job_id)

    def _report_interrupt(self) -> None:
        if isinstance(self.interrupt, LeaseLost) and self.interrupt_logged:
            return
        if isinstance(self.interrupt, LeaseLost):
            self.logger.warning(
                "%s; this run stops and leaves the job to its new owner",
                self.interrupt,
                extra={"action": "job.lease_lost", "fence": self.fence},
            )
        elif isinstance(self.interrupt, JobCancelled):
            self.logger.info(
                "job %s was cancelled; this run stops",
                self.job_id,
                extra={"action": "job.cancelled"},
            )
        else:
            released = False
            with contextlib.suppress(StoreError, LeaseLost, JobCancelled):
                self.store.job_transition(
                    Outcome.release(self.job_id, self.fence), now=self.clock.now()
                )
                released = True
            self.logger.error(
                "job %s stopped: %s; %s",
                self.job_id,
                self.interrupt,
                "it was released and resumes from its last checkpoint"
                if released
                else "another worker replays it from its last checkpoint once its lease expires",
                extra={"action": "store.error"},
            )


@dataclass(frozen=True, slots=True)
class _Ending:
    """How a run ended: its transition, the log action, the error or park, a retry delay."""

    outcome: Outcome
    action: str
    cause: BaseException | None = None
    delay: float = 0.0


def suspend_in(group: BaseExceptionGroup[BaseException]) -> Suspend | None:
    """The earliest park in an exception group (``asyncio.TaskGroup`` wraps what its tasks
    raise); the other waits are met again when the job replays."""
    matched, _rest = group.split(Suspend)
    if matched is None:
        return None
    found = [exc for exc in _leaves(matched) if isinstance(exc, Suspend)]
    return min(found, key=lambda suspend: suspend.until) if found else None


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    leaves: list[BaseException] = []
    for exc in group.exceptions:
        leaves.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return leaves


__all__ = ["Interruption", "JobRun", "Released", "current_run", "suspend_in"]
