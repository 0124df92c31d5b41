"""Enqueueing, in one place: every job row is built by ``build_row`` and written here.

Every caller goes through this module: ``app.enqueue`` (with a key, a delay, on the
caller's connection, debounced, or as a child of the running job), ``app.enqueue_many``
(in batches), ``app.run`` (inserted already claimed), the cron ticks that workers keep,
and ``stepstone enqueue``. One builder fills every column (name, queue, key, arguments,
priority, due time, parent, concurrency key and limit, debounce key), so no write path
can drop one; one rule decides whether a taken key is the same work (Stripe's rule: the
same job with the same arguments) or a ``KeyConflict``.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from ._flow import checkpointed_enqueue
from ._frames import current_step
from ._handle import Enqueued, JobHandle
from ._job import DEFAULT_QUEUE, JobDefinition
from ._keys import KeyTemplate, check_key
from ._runner import current_run
from ._schedule import MAX_CATCH_UP
from ._serialization import dumps
from .errors import InvalidKey, KeyConflict, StepstoneError
from .types import InsertResult, JobRecord, NewJob

if TYPE_CHECKING:
    from ._runtime import Runtime

#: How many jobs ``enqueue_many`` writes per transaction.
BATCH_SIZE = 1000


def seconds(value: float | timedelta) -> float:
    """A duration in seconds (``timedelta`` or a number)."""
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def new_job_id() -> str:
    """A UUID (version 7 layout): time-ordered, so new rows land at the end of the index."""
    random = int.from_bytes(os.urandom(10)) & _RANDOM_BITS
    text = f"{(time.time_ns() // 1_000_000) << 80 | _UUID7_BITS | random:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


#: The 80 low bits of a version 7 UUID, less its version (4 bits) and variant (2 bits)...
_RANDOM_BITS = ((1 << 80) - 1) & ~(0xF << 76) & ~(0x3 << 62)
#: ...which are 7 and 0b10.
_UUID7_BITS = (0x7 << 76) | (0x2 << 62)


# building rows ---------------------------------------------------------------------------
def build_row(
    name: str,
    args: str,
    *,
    run_at: float,
    queue: str = DEFAULT_QUEUE,
    key: str | None = None,
    priority: int = 0,
    parent_id: str | None = None,
    concurrency_key: str | None = None,
    concurrency_limit: int | None = None,
    debounce_key: str | None = None,
) -> NewJob:
    """The row of one new job: every column, the key checked."""
    if key is not None:
        check_key(key, what="job key")
    if "\x00" in queue:
        raise ValueError(
            f"queue name {queue!r} holds a NUL character (\\x00), which no store can keep "
            "in text; choose a queue name without it"
        )
    if concurrency_key is not None and "\x00" in concurrency_key:
        raise InvalidKey(
            f"the concurrency key {concurrency_key!r} of job {name} holds a NUL character "
            "(\\x00), which no store can keep in text; render the Limit's key without it"
        )
    return NewJob(
        id=new_job_id(),
        name=name,
        queue=queue,
        key=key,
        args=args,
        priority=priority,
        run_at=run_at,
        parent_id=parent_id,
        concurrency_key=concurrency_key,
        concurrency_limit=concurrency_limit,
        debounce_key=debounce_key,
    )


def build_job(
    definition: JobDefinition[Any, Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    run_at: float,
    key: str | None = None,
    queue: str | None = None,
    priority: int | None = None,
    parent_id: str | None = None,
    debounce_key: str | None = None,
) -> NewJob:
    """The row of one call of a declared job (its defaults, its encoded arguments, its
    concurrency key)."""
    concurrency_key, concurrency_limit = definition.concurrency_key(args, kwargs)
    return build_row(
        definition.name,
        definition.codec.encode(args, kwargs),
        run_at=run_at,
        queue=queue or definition.queue,
        key=key,
        priority=definition.priority if priority is None else priority,
        parent_id=parent_id,
        concurrency_key=concurrency_key,
        concurrency_limit=concurrency_limit,
        debounce_key=debounce_key,
    )


def check_same(existing: JobRecord, new: NewJob, *, index: int | None = None) -> None:
    """A key names one piece of work: the same job with the same arguments."""
    if existing.name == new.name and existing.args == new.args:
        return
    where = f"item {index}: " if index is not None else ""
    conflict = KeyConflict(
        f"{where}key {new.key!r} is taken by job {existing.id} ({existing.name}) with "
        f"arguments {existing.args}; this call passed {new.name} with arguments "
        f"{new.args}. A key names one piece of work: use another key for other "
        "arguments."
    )
    conflict.index = index
    raise conflict


def due_time(now: float, delay: float | timedelta | None, run_at: datetime | float | None) -> float:
    """When a job enqueued ``now`` is due."""
    if delay is not None and run_at is not None:
        raise ValueError("pass delay= or run_at=, not both")
    if delay is not None:
        return now + seconds(delay)
    if isinstance(run_at, datetime):
        return run_at.timestamp()
    if run_at is not None:
        return float(run_at)
    return now


# writing rows ----------------------------------------------------------------------------
def insert(
    runtime: Runtime,
    new: NewJob,
    *,
    now: float,
    owner: str | None = None,
    connection: Any = None,
) -> InsertResult:
    """Write one row (claimed by ``owner``, or on the caller's ``connection``); a key taken
    by other work raises ``KeyConflict``."""
    if connection is not None:
        if owner is not None:
            raise StepstoneError("app.run does not take a connection")
        inserted = runtime.store.job_insert_on(connection, new, now=now)
    else:
        inserted = runtime.store.job_insert(
            new, now=now, owner=owner, lease_until=now + runtime.lease
        )
    if not inserted.created:
        check_same(inserted.job, new)
    return inserted


def enqueue(
    runtime: Runtime,
    definition: JobDefinition[Any, Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    key: str | None = None,
    delay: float | timedelta | None = None,
    run_at: datetime | float | None = None,
    queue: str | None = None,
    priority: int | None = None,
    connection: Any = None,
    debounce: float | timedelta | None = None,
) -> JobHandle:
    """``app.enqueue``: one job, written now (debounced, or as a child of the running job
    when called in a job's own code)."""
    if debounce is not None:
        if delay is not None or run_at is not None or connection is not None:
            raise ValueError(
                "enqueue(debounce=...) sets the due time itself and writes on its own: "
                "it takes no delay=, run_at= or connection="
            )
        return _debounce(
            runtime,
            definition,
            args,
            kwargs,
            key=key,
            wait=seconds(debounce),
            queue=queue,
            priority=priority,
        )
    run = current_run.get()
    if run is not None and connection is None and current_step.get() is None:
        run.check()
        due = due_time(runtime.clock.now(), delay, run_at)

        def insert_child(child_key: str) -> str:
            new = build_job(
                definition,
                args,
                kwargs,
                key=child_key,
                run_at=due,
                queue=queue,
                priority=priority,
                parent_id=run.job_id,
            )
            return insert(runtime, new, now=runtime.clock.now()).job.id

        child_id, child_key = checkpointed_enqueue(run, insert_child, key)
        runtime.wake_workers()
        return JobHandle(runtime, child_id, child_key)
    now = runtime.clock.now()
    new = build_job(
        definition,
        args,
        kwargs,
        key=key,
        run_at=due_time(now, delay, run_at),
        queue=queue,
        priority=priority,
    )
    record = insert(runtime, new, now=now, connection=connection).job
    if connection is None:
        runtime.wake_workers()
    return JobHandle(runtime, record.id, record.key)


def _debounce(
    runtime: Runtime,
    definition: JobDefinition[Any, Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    key: str | None,
    wait: float,
    queue: str | None,
    priority: int | None,
) -> JobHandle:
    if key is None:
        raise ValueError("enqueue(debounce=...) needs key= to name the debounce group")
    check_key(key, what="debounce key")
    now = runtime.clock.now()
    new = build_job(
        definition,
        args,
        kwargs,
        run_at=now + wait,
        queue=queue,
        priority=priority,
        debounce_key=f"{definition.name}:{key}",
    )
    record = runtime.store.job_debounce(new, now=now).job
    runtime.wake_workers()
    return JobHandle(runtime, record.id, None)


def enqueue_many(
    runtime: Runtime,
    definition: JobDefinition[Any, Any],
    items: Iterable[Any],
    key: str | Callable[..., str] | None = None,
    *,
    queue: str | None = None,
    priority: int | None = None,
    delay: float | timedelta | None = None,
    run_at: datetime | float | None = None,
    batch_size: int = BATCH_SIZE,
) -> Enqueued:
    """``app.enqueue_many``: one job per item, written in batches of ``batch_size``."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    template = (
        KeyTemplate(key, definition.fn, what=f"key of job {definition.name}")
        if key is not None
        else None
    )
    due = due_time(runtime.clock.now(), delay, run_at)
    result = Enqueued()
    batch: list[NewJob] = []
    for index, item in enumerate(items):
        args, kwargs = item_arguments(item, index)
        job_key = template.render(args, kwargs) if template is not None else None
        batch.append(
            build_job(
                definition, args, kwargs, key=job_key, run_at=due, queue=queue, priority=priority
            )
        )
        if len(batch) >= batch_size:
            _insert_batch(runtime, batch, result, first_index=len(result))
            batch = []
    if batch:
        _insert_batch(runtime, batch, result, first_index=len(result))
    if result.new:
        runtime.wake_workers()
    return result


def _insert_batch(
    runtime: Runtime, batch: list[NewJob], result: Enqueued, *, first_index: int
) -> None:
    """Write one batch; repeats of a key within it are answered from its first item."""
    first: dict[str, int] = {}
    unique: list[NewJob] = []
    for position, new in enumerate(batch):
        if new.key is not None and new.key in first:
            continue
        if new.key is not None:
            first[new.key] = position
        unique.append(new)
    inserted = dict(
        zip(
            (new.id for new in unique),
            runtime.store.job_insert_many(unique, now=runtime.clock.now()),
            strict=True,
        )
    )
    handles: list[JobHandle] = []
    new_count = existing_count = 0
    for position, new in enumerate(batch):
        outcome = inserted.get(new.id)
        if outcome is None:  # a repeat within the batch
            assert new.key is not None
            outcome = InsertResult(inserted[batch[first[new.key]].id].job, created=False)
        if not outcome.created:
            check_same(outcome.job, new, index=first_index + position)
        handles.append(JobHandle(runtime, outcome.job.id, outcome.job.key))
        if outcome.created:
            new_count += 1
        else:
            existing_count += 1
    result._extend(handles, new=new_count, existing=existing_count)


def item_arguments(item: Any, index: int) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The positional and keyword arguments an ``enqueue_many`` item stands for."""
    if isinstance(item, Mapping):
        return (), dict(item)
    if isinstance(item, tuple | list):
        return tuple(item), {}
    raise TypeError(
        f"enqueue_many item {index} is a {type(item).__name__}; give a tuple of positional "
        "arguments or a dict of keyword arguments (for one argument: (value,))"
    )


def insert_by_name(
    runtime: Runtime,
    name: str,
    named: dict[str, Any],
    *,
    key: str | None = None,
    queue: str | None = None,
    priority: int | None = None,
    delay: float | None = None,
) -> InsertResult:
    """``stepstone enqueue`` without the job's code: arguments by parameter name, as given."""
    now = runtime.clock.now()
    new = build_row(
        name,
        dumps(named),
        run_at=now + (delay or 0.0),
        queue=queue or DEFAULT_QUEUE,
        key=key,
        priority=priority or 0,
    )
    return insert(runtime, new, now=now)


# cron ticks -------------------------------------------------------------------------------
def keep_schedule(runtime: Runtime, definition: JobDefinition[Any, Any], now: float) -> None:
    """Make sure the job's next tick is enqueued; when a tick came due, move on to the next
    one, enqueueing the missed ticks per the schedule's policy."""
    schedule = definition.schedule
    assert schedule is not None
    store = runtime.store
    recorded = store.schedule_next(definition.name)
    if recorded is None:
        first = schedule.next_after(now)
        _enqueue_tick(runtime, definition, first, now)
        store.schedule_advance(definition.name, expected=None, tick=first, now=now)
        return
    if recorded > now:
        return
    _enqueue_tick(runtime, definition, recorded, now)  # normally enqueued already: a no-op
    tick = schedule.next_after(now)
    chosen: list[float] = []
    if schedule.missed == "all":
        chosen = schedule.ticks_between(recorded, now, MAX_CATCH_UP)
    elif schedule.missed == "latest":
        latest = schedule.latest_at_or_before(now)
        chosen = [latest] if latest > recorded else []
    for moment in chosen:
        _enqueue_tick(runtime, definition, moment, now)
    _enqueue_tick(runtime, definition, tick, now)
    store.schedule_advance(definition.name, expected=recorded, tick=tick, now=now)


def _enqueue_tick(
    runtime: Runtime, definition: JobDefinition[Any, Any], tick: float, now: float
) -> None:
    schedule = definition.schedule
    assert schedule is not None
    new = build_job(definition, (), {}, key=schedule.key(tick), run_at=tick)
    # A tick queued by an older release whose defaults differed is still this tick.
    with contextlib.suppress(KeyConflict):
        insert(runtime, new, now=now)


__all__ = [
    "BATCH_SIZE",
    "build_job",
    "build_row",
    "check_same",
    "due_time",
    "enqueue",
    "enqueue_many",
    "insert",
    "insert_by_name",
    "item_arguments",
    "keep_schedule",
    "new_job_id",
    "seconds",
]
