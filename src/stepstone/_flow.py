"""Durable time and events inside a job: sleep, wait for a signal, enqueue child jobs and
wait for them.

Each of these takes positions in the job's history, like a step, and is decided once: the
first run that reaches it writes its checkpoint, every replay reads it. When the job has
to wait, the run raises ``Suspend`` (a ``BaseException``, so ``except Exception`` does not
catch it); the runner parks the job (state ``waiting``, lease given up, worker slot free),
and a worker claims it again when its time comes, its signal arrives or its child ends.
The job function then runs again from the top, replaying what it had done.

In a sync job these functions return their value. In an async job they return an
awaitable of it (``await stepstone.wait_for(...)``), as steps do; they are decided when
called, so a forgotten ``await`` loses nothing but the value.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Generator
from datetime import datetime, timedelta
from typing import Any, Protocol

from ._frames import current_step
from ._runner import JobRun, current_run
from ._serialization import dumps, error_from_record, loads
from .errors import JobCancelled, JobFailed, StepstoneError, Suspend, WaitTimeout
from .types import JOB_EVENT_PREFIX, WAIT_FOREVER, JobRecord, JobState


class JobHandleLike(Protocol):
    """What ``gather`` needs of a ``JobHandle``."""

    @property
    def id(self) -> str: ...

    def result(self, timeout: float | None = None) -> Any: ...


class Ready:
    """An awaitable that is already done: what the flow functions return in async jobs."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __await__(self) -> Generator[Any, None, Any]:
        return self.value
        yield  # pragma: no cover - makes this a generator


def _seconds(value: float | timedelta) -> float:
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if math.isnan(seconds) or seconds < 0:
        raise ValueError(f"a duration must be zero or more seconds, not {value!r}")
    return seconds


def _job_run(what: str) -> JobRun | None:
    """The run this call belongs to; None outside any job. Inside a step body: an error,
    since a step cannot park its job halfway."""
    run = current_run.get()
    if run is None:
        return None
    frame = current_step.get()
    if frame is not None:
        raise StepstoneError(
            f"stepstone.{what}() was called inside step {frame.ident} of job {run.name}; "
            "call it from the job's own code: a step cannot park its job halfway"
        )
    run.check()
    return run


def _park(run: JobRun, suspend: Suspend) -> Suspend:
    """Record that the job parks (later step calls raise it again) and return it."""
    run.parking = suspend
    return suspend


def _result(run: JobRun, value: Any) -> Any:
    return Ready(value) if run.definition.is_async else value


def _start(run: JobRun, name: str, record: dict[str, Any]) -> tuple[dict[str, Any], int, str]:
    """Two positions: one that records when the wait started (and so when it times out),
    one for its outcome. Returns the start record and the outcome's position."""
    seq, ident = run.assign(f"stepstone.{name}.start")
    stored = run.history.get(seq)
    if stored is None:
        run.checkpoint(seq, ident, "ok", json.dumps(record, sort_keys=True), 1)
        run.executed -= 1  # bookkeeping, not a step
    else:
        record = json.loads(stored.value)
    outcome_seq, outcome_ident = run.assign(f"stepstone.{name}")
    return record, outcome_seq, outcome_ident


# sleeping -----------------------------------------------------------------------------------
def sleep(duration: float | timedelta) -> Any:
    """Park the job for ``duration`` (seconds or a ``timedelta``), durably: its worker slot
    is freed, and it resumes after the time even if every worker restarts meanwhile.

    Outside a job this is ``time.sleep``. Inside a step it is an error.
    """
    seconds = _seconds(duration)
    run = _job_run("sleep")
    if run is None:
        time.sleep(seconds)
        return None
    return _sleep_until(run, run.clock.now() + seconds)


def sleep_until(moment: datetime | float) -> Any:
    """Park the job until ``moment`` (an aware ``datetime``, or epoch seconds)."""
    if isinstance(moment, datetime):
        if moment.tzinfo is None:
            raise ValueError(
                "sleep_until() needs an aware datetime (with tzinfo), such as "
                "datetime(2025, 1, 1, tzinfo=timezone.utc); a naive one is ambiguous"
            )
        until = moment.timestamp()
    else:
        until = float(moment)
    run = _job_run("sleep_until")
    if run is None:
        time.sleep(max(0.0, until - time.time()))
        return None
    return _sleep_until(run, until)


def _sleep_until(run: JobRun, until: float) -> Any:
    seq, ident = run.assign("stepstone.sleep")
    stored = run.history.get(seq)
    if stored is not None:
        until = float(json.loads(stored.value)["until"])
    else:
        run.checkpoint(seq, ident, "ok", json.dumps({"until": until}), 1)
    if run.clock.now() >= until:
        return _result(run, None)
    raise _park(run, Suspend(f"sleeping until {until}", until=until))


# events -------------------------------------------------------------------------------------
def wait_for(event: str, timeout: float | timedelta | None = None) -> Any:
    """Park the job until ``app.signal(event, payload)``; return the payload.

    A signal sent after the job was enqueued and before it waits is kept and delivered.
    Each call takes the next signal of the event that this job has not received yet, so
    several jobs waiting for one event each get it. With ``timeout`` (counted from the
    first time the job reached this call), raises ``WaitTimeout`` (a ``TimeoutError``)
    when no signal came in time; the job may catch it.
    """
    if not isinstance(event, str) or not event:
        raise ValueError("wait_for() needs an event name (a non-empty str)")
    if event.startswith(JOB_EVENT_PREFIX):
        raise ValueError(
            f"event names starting with {JOB_EVENT_PREFIX!r} are reserved; to wait for a "
            "job, call handle.result() in the job's own code"
        )
    run = _job_run("wait_for")
    if run is None:
        raise StepstoneError(
            "stepstone.wait_for() was called outside a running job; only a job can wait "
            "for a signal"
        )
    now = run.clock.now()
    deadline = now + _seconds(timeout) if timeout is not None else None
    start, seq, ident = _start(run, "wait_for", {"event": event, "deadline": deadline})
    deadline = start["deadline"]
    stored = run.history.get(seq)
    if stored is not None:
        outcome = json.loads(stored.value)
        return _signal_outcome(run, event, outcome)
    cursor = run.signal_cursors.get(event, 0)
    found = run.store.signal_next(event, after=cursor, since=run.created_at)
    if found is not None:
        outcome = {"event": event, "signal": found[0], "payload": json.loads(found[1])}
    elif deadline is not None and now >= deadline:
        outcome = {"event": event, "timeout": True}
    else:
        raise _park(
            run,
            Suspend(
                f"waiting for event {event!r}",
                until=deadline if deadline is not None else WAIT_FOREVER,
                event=event,
                signal_after=cursor,
            ),
        )
    run.checkpoint(seq, ident, "ok", json.dumps(outcome, sort_keys=True), 1)
    return _signal_outcome(run, event, outcome)


def _signal_outcome(run: JobRun, event: str, outcome: dict[str, Any]) -> Any:
    if outcome.get("timeout"):
        raise WaitTimeout(f"job {run.job_id}: no signal {event!r} arrived before the timeout")
    run.signal_cursors[event] = max(run.signal_cursors.get(event, 0), int(outcome["signal"]))
    return _result(run, outcome["payload"])


# child jobs ---------------------------------------------------------------------------------
def checkpointed_enqueue(run: JobRun, insert: Any, key: str | None) -> tuple[str, str]:
    """Enqueue a child job once per position of the parent's history: a replay gets the
    same child back. ``insert(key)`` writes the job and returns its id. Returns the child's
    id and key (the caller's, else one derived from the parent and the position)."""
    seq, ident = run.assign("stepstone.enqueue")
    child_key = key if key is not None else f"{run.job_id}/{ident}"
    stored = run.history.get(seq)
    if stored is not None:
        return str(json.loads(stored.value)["id"]), child_key
    child_id = str(insert(child_key))
    run.checkpoint(seq, ident, "ok", json.dumps({"id": child_id}), 1)
    run.executed -= 1
    return child_id, child_key


def _stored(outcomes: list[dict[str, Any]], value: dict[str, Any]) -> tuple[str, str]:
    """The status and text of a wait's checkpoint. A wait that saw a job fail is stored as
    an error (with a type and message, as step errors are): a retry of the waiting job
    drops it and looks at the job again (``app.retry`` the failed one first)."""
    failed = [o for o in outcomes if not o.get("timeout") and o["state"] != JobState.SUCCEEDED]
    if not failed:
        return "ok", dumps(value)
    first = failed[0]
    kind = "JobCancelled" if first["state"] == JobState.CANCELLED else "JobFailed"
    message = f"job {first['job']} ({first['name']}) {first['state']}"
    return "error", dumps({**value, "type": f"stepstone.errors.{kind}", "message": message})


def _outcome_record(record: JobRecord) -> dict[str, Any]:
    return {"job": record.id, "name": record.name, "state": record.state.value,
            "result": record.result, "error": record.error}  # fmt: skip


def _decode_outcome(run: JobRun, outcome: dict[str, Any]) -> Any:
    """A finished job's value, or its failure raised as JobFailed / JobCancelled."""
    state = outcome["state"]
    if state == JobState.SUCCEEDED:
        definition = run.runtime.definition(outcome["name"])
        kind = definition.return_type if definition is not None else Any
        return loads(outcome["result"] or "null", kind)
    if state == JobState.CANCELLED:
        raise JobCancelled(f"job {outcome['job']} ({outcome['name']}) was cancelled")
    record = json.loads(outcome["error"] or "{}")
    cause = error_from_record(record) if record else None
    message = f"{record.get('type', '?')}: {record.get('message', '')}" if record else "failed"
    raise JobFailed(f"job {outcome['job']} ({outcome['name']}) failed: {message}") from cause


def child_result(run: JobRun, job_id: str, timeout: float | None) -> Any:
    """``handle.result()`` inside a job: park until that job finishes, then its value."""
    now = run.clock.now()
    deadline = now + timeout if timeout is not None else None
    start, seq, ident = _start(run, "result", {"job": job_id, "deadline": deadline})
    deadline = start["deadline"]
    stored = run.history.get(seq)
    if stored is not None:
        outcome = json.loads(stored.value)
    else:
        record = run.store.job_get(job_id)
        if record is None:
            raise StepstoneError(f"job {job_id} does not exist (pruned?)")
        if record.state.finished:
            outcome = _outcome_record(record)
        elif deadline is not None and now >= deadline:
            outcome = {"job": job_id, "timeout": True}
        else:
            raise _park(
                run,
                Suspend(
                    f"waiting for job {job_id}",
                    until=deadline if deadline is not None else WAIT_FOREVER,
                    child=job_id,
                ),
            )
        run.checkpoint(seq, ident, *_stored([outcome], outcome), 1)
    if outcome.get("timeout"):
        raise WaitTimeout(f"job {outcome['job']} did not finish before the timeout")
    return _decode_outcome(run, outcome)


def gather(*handles: JobHandleLike) -> Any:
    """Wait for every job (fan-in) and return their results in order.

    Inside a job the job is parked until all have finished (its worker slot is free
    meanwhile); if one failed or was cancelled, ``JobFailed`` / ``JobCancelled`` is raised
    for the first such one in order, once all have finished. Outside a job it blocks.
    """
    run = _job_run("gather")
    if run is None:
        return [handle.result() for handle in handles]
    ids = [handle.id for handle in handles]
    _start_record, seq, ident = _start(run, "gather", {"jobs": ids})
    stored = run.history.get(seq)
    if stored is not None:
        outcomes = json.loads(stored.value)["outcomes"]
    else:
        found = {record.id: record for record in run.store.job_get_many(ids=ids)}
        missing = [job_id for job_id in ids if job_id not in found]
        if missing:
            raise StepstoneError(f"gather(): jobs {missing} do not exist (pruned?)")
        waiting = [job_id for job_id in ids if not found[job_id].state.finished]
        if waiting:
            raise _park(
                run,
                Suspend(
                    f"waiting for {len(waiting)} of {len(ids)} jobs",
                    until=WAIT_FOREVER,
                    child=waiting[0],
                ),
            )
        outcomes = [_outcome_record(found[job_id]) for job_id in ids]
        run.checkpoint(seq, ident, *_stored(outcomes, {"outcomes": outcomes}), 1)
    return _result(run, [_decode_outcome(run, outcome) for outcome in outcomes])


__all__ = [
    "Ready",
    "checkpointed_enqueue",
    "child_result",
    "gather",
    "sleep",
    "sleep_until",
    "wait_for",
]
