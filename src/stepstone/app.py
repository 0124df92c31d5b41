"""``App``: the registry of jobs and steps, plus the store they run against."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta, tzinfo
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar, overload

from .clock import Clock, SystemClock
from .completion import GroupCommit
from .context import current_run, current_step
from .errors import JobNotFound, KeyConflict, StepstoneError, UnknownJob
from .handle import Enqueued, JobHandle
from .job import DEFAULT_QUEUE, JobDefinition
from .keys import KeyTemplate, check_key
from .lease import LeaseKeeper
from .limits import Limit, Rate
from .retry import DEFAULT_JOB_RETRY, DEFAULT_STEP_RETRY, Retry
from .schedule import Schedule
from .serialization import dumps
from .step import StepDefinition, TransactionStep
from .store import Store, open_store
from .store.base import JOB_EVENT_PREFIX, InsertResult, JobRecord, JobState, MemoRecord, NewJob
from .store.urls import mask_password

if TYPE_CHECKING:
    from .worker import Worker

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

DEFAULT_URL = "sqlite:///stepstone.db"
#: How many jobs ``enqueue_many`` writes per transaction.
BATCH_SIZE = 1000
_OPTIONS = {
    "clock",
    "poll_interval",
    "shutdown_grace",
    "busy_timeout",
    "schema",
    "pool_size",
    "store",
}


def _seconds(value: float | timedelta) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def _declaring_scope() -> dict[str, Any] | None:
    """The local names of the user code that applies a decorator, for resolving its type
    hints later (a class declared in a function body). None at module level."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__", "").startswith("stepstone."):
        frame = frame.f_back  # type: ignore[assignment]
    if frame is None or frame.f_locals is frame.f_globals:
        return None
    return dict(frame.f_locals)


def new_job_id() -> str:
    """A UUID (version 7 layout): time-ordered, so new rows land at the end of the index."""
    millis = time.time_ns() // 1_000_000
    value = (millis << 80) | secrets.randbits(80)
    value = (value & ~(0xF << 76)) | (0x7 << 76)
    value = (value & ~(0x3 << 62)) | (0x2 << 62)
    text = f"{value:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


class App:
    """Jobs and steps, and the database that checkpoints them.

    ``url`` is ``sqlite:///path.db``, ``sqlite:///:memory:`` or ``postgresql://...``; None
    reads ``$STEPSTONE_DATABASE_URL``, else ``sqlite:///stepstone.db``. ``lease`` is how
    long (seconds or a ``timedelta``) a worker's claim lasts without a heartbeat.
    ``durability="full"`` fsyncs every checkpoint too. Options: ``clock`` (tests),
    ``poll_interval`` (default 1 s: the longest an idle worker waits before looking for
    due jobs again; it notices new jobs through the store's change marker within
    milliseconds), ``shutdown_grace`` (default 30 s: how long a stopping worker lets
    running steps finish), ``busy_timeout`` (SQLite, default 30 s), ``schema`` (PostgreSQL,
    default ``stepstone``; also ``?schema=`` in the URL), ``pool_size`` (PostgreSQL
    connections per process, default 10).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        lease: float | timedelta = 30.0,
        durability: str = "normal",
        **options: Any,
    ) -> None:
        unknown = set(options) - _OPTIONS
        if unknown:
            raise TypeError(
                f"App() got unknown options {sorted(unknown)}; known: {sorted(_OPTIONS)}"
            )
        if durability not in ("normal", "full"):
            raise ValueError(f"durability must be 'normal' or 'full', not {durability!r}")
        self.url = url or os.environ.get("STEPSTONE_DATABASE_URL") or DEFAULT_URL
        self.lease = _seconds(lease)
        if self.lease <= 0:
            raise ValueError("lease must be positive")
        self.durability = durability
        self.clock: Clock = options.get("clock") or SystemClock()
        self.poll_interval = float(options.get("poll_interval", 1.0))
        self.shutdown_grace = float(options.get("shutdown_grace", 30.0))
        self._store_options: dict[str, Any] = {"durability": durability}
        for name in ("busy_timeout", "schema", "pool_size"):
            if name in options:
                self._store_options[name] = options[name]
        self._store: Store | None = options.get("store")
        self._store_lock = threading.Lock()
        self.jobs: dict[str, JobDefinition[Any, Any]] = {}
        self.steps: dict[str, StepDefinition[Any, Any]] = {}
        self._functions: dict[Callable[..., Any], JobDefinition[Any, Any]] = {}
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self._lease_keeper = LeaseKeeper(self)
        self._group_commit = GroupCommit(self)
        self._finished = threading.Condition()
        self._workers: set[Worker] = set()

    def __repr__(self) -> str:
        return f"<stepstone.App {mask_password(self.url)} jobs={len(self.jobs)}>"

    # the store --------------------------------------------------------------------------
    @property
    def store(self) -> Store:
        """The store, opened (and migrated) on first use."""
        store = self._store
        if store is None:
            with self._store_lock:
                if self._store is None:
                    self._store = open_store(self.url, **self._store_options)
                store = self._store
        return store

    def close(self) -> None:
        """Close the store's connections."""
        if self._store is not None:
            self._store.close()

    async def _call_store(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call a blocking store operation from async code."""
        if self.store.inline_calls:
            return fn(*args, **kwargs)
        return await asyncio.to_thread(fn, *args, **kwargs)

    # declaring jobs and steps -----------------------------------------------------------
    @overload
    def job(self, fn: Callable[P, R], /) -> JobDefinition[P, R]: ...

    @overload
    def job(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        queue: str = DEFAULT_QUEUE,
        retry: Retry | None = None,
        timeout: float | timedelta | None = None,
        priority: int = 0,
        concurrency: Limit | int | None = None,
        cron: str | None = None,
        timezone: str | tzinfo | None = None,
        missed: str = "latest",
    ) -> Callable[[Callable[P, R]], JobDefinition[P, R]]: ...

    def job(
        self,
        fn: Callable[P, R] | None = None,
        /,
        *,
        name: str | None = None,
        queue: str = DEFAULT_QUEUE,
        retry: Retry | None = None,
        timeout: float | timedelta | None = None,
        priority: int = 0,
        concurrency: Limit | int | None = None,
        cron: str | None = None,
        timezone: str | tzinfo | None = None,
        missed: str = "latest",
    ) -> JobDefinition[P, R] | Callable[[Callable[P, R]], JobDefinition[P, R]]:
        """Declare a job: ``@app.job`` or ``@app.job(name=, queue=, retry=, priority=,
        timeout=, concurrency=, cron=, timezone=, missed=)``.

        ``timeout`` (seconds or a ``timedelta``) is a deadline counted from the job's first
        start, across attempts, replays and restarts: past it the job fails with
        ``JobTimeout``. ``concurrency`` (``Limit(n, key=)``, or ``n``) caps how many run at
        once across all workers. ``cron`` (a five-field cron expression, in ``timezone``,
        default UTC) enqueues the job once per tick; ``missed`` says what happens to ticks
        that passed while no worker ran: ``"latest"`` runs the most recent one once,
        ``"all"`` runs each of them, ``"skip"`` runs none of them (the tick that was already
        queued when the workers stopped runs late in every case).
        """
        if isinstance(concurrency, int) and not isinstance(concurrency, bool):
            concurrency = Limit(concurrency)
        if concurrency is not None and not isinstance(concurrency, Limit):
            raise TypeError(f"concurrency= takes Limit(n, key=) or an int, not {concurrency!r}")
        if timeout is not None and _seconds(timeout) <= 0:
            raise ValueError("timeout must be positive")

        def register(function: Callable[P, R]) -> JobDefinition[P, R]:
            job_name = name or f"{function.__module__}.{function.__qualname__}"
            if name is None and function.__module__ == "__main__":
                warnings.warn(
                    f"job {function.__qualname__} is defined in __main__ without name=; a "
                    "worker that imports your module will know it by another name. Pass "
                    "@app.job(name=...).",
                    stacklevel=3,
                )
            definition = JobDefinition(
                self,
                function,
                localns=_declaring_scope(),
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
            self.jobs[job_name] = definition
            self._functions[function] = definition
            return definition

        return register(fn) if fn is not None else register

    @overload
    def step(self, fn: Callable[P, R], /) -> StepDefinition[P, R]: ...

    @overload
    def step(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        retry: Retry | None = None,
        key: str | Callable[..., str] | None = None,
        ttl: float | timedelta | None = None,
        timeout: float | timedelta | None = None,
        rate: Rate | None = None,
    ) -> Callable[[Callable[P, R]], StepDefinition[P, R]]: ...

    def step(
        self,
        fn: Callable[P, R] | None = None,
        /,
        *,
        name: str | None = None,
        retry: Retry | None = None,
        key: str | Callable[..., str] | None = None,
        ttl: float | timedelta | None = None,
        timeout: float | timedelta | None = None,
        rate: Rate | None = None,
    ) -> StepDefinition[P, R] | Callable[[Callable[P, R]], StepDefinition[P, R]]:
        """Declare a step. ``@app.step`` or ``@app.step(name=, retry=, key=, ttl=)``.

        ``key`` (a ``str.format`` template over the step's arguments, or a callable taking
        them) stores the step's result under that key for every job: any later call with
        the same key returns it without running the body, until ``app.forget(key)`` or,
        with ``ttl`` (seconds or a ``timedelta``), until it expires. ``timeout`` bounds each
        attempt: an async step is cancelled (``TimeoutError``, retried per ``retry``); a sync
        step cannot be interrupted, so its attempt is abandoned and the job attempt fails
        with ``StepTimeout``, releasing its lease. ``rate`` (``Rate(n, per=, key=)``) limits
        how often the body runs across all workers.
        """
        if timeout is not None and _seconds(timeout) <= 0:
            raise ValueError("timeout must be positive")
        if rate is not None and not isinstance(rate, Rate):
            raise TypeError(f"rate= takes Rate(n, per=, key=), not {rate!r}")

        def register(function: Callable[P, R]) -> StepDefinition[P, R]:
            step_name = name or function.__name__
            definition = StepDefinition(
                self,
                function,
                name=step_name,
                retry=retry.with_defaults(DEFAULT_STEP_RETRY) if retry else DEFAULT_STEP_RETRY,
                localns=_declaring_scope(),
                key=key,
                ttl=ttl,
                timeout=_seconds(timeout) if timeout is not None else None,
                rate=rate,
            )
            self.steps[step_name] = definition
            return definition

        return register(fn) if fn is not None else register

    @overload
    def transaction(self, fn: Callable[Concatenate[Any, P], R], /) -> TransactionStep[P, R]: ...

    @overload
    def transaction(
        self, fn: None = None, /, *, name: str | None = None, retry: Retry | None = None
    ) -> Callable[[Callable[Concatenate[Any, P], R]], TransactionStep[P, R]]: ...

    def transaction(
        self,
        fn: Callable[Concatenate[Any, P], R] | None = None,
        /,
        *,
        name: str | None = None,
        retry: Retry | None = None,
    ) -> (
        TransactionStep[P, R] | Callable[[Callable[Concatenate[Any, P], R]], TransactionStep[P, R]]
    ):
        """Declare a transactional step: ``@app.transaction`` or ``@app.transaction(name=,
        retry=)``. Its first parameter receives a connection to stepstone's database
        (``sqlite3.Connection``, or a psycopg ``Connection``) inside the transaction that
        also writes the step's checkpoint: its writes happen exactly once."""

        def register(function: Callable[Concatenate[Any, P], R]) -> TransactionStep[P, R]:
            step_name = name or function.__name__
            definition: TransactionStep[P, R] = TransactionStep(
                self,
                function,
                name=step_name,
                retry=retry.with_defaults(DEFAULT_STEP_RETRY) if retry else DEFAULT_STEP_RETRY,
                localns=_declaring_scope(),
            )
            self.steps[step_name] = definition
            return definition

        return register(fn) if fn is not None else register

    def _definition(self, job: Any) -> JobDefinition[Any, Any]:
        if isinstance(job, JobDefinition):
            found = self.jobs.get(job.name)
            if found is None:
                raise UnknownJob(
                    f"job {job.name} is declared on another App, not on this one ({self.url})"
                )
            return found
        if isinstance(job, str):
            found = self.jobs.get(job)
            if found is None:
                raise UnknownJob(
                    f"no job named {job!r} is registered in this process; known jobs: "
                    f"{sorted(self.jobs) or 'none'}. Import the module that declares it."
                )
            return found
        if callable(job) and job in self._functions:
            return self._functions[job]
        label = getattr(job, "__qualname__", repr(job))
        raise UnknownJob(
            f"{label} is not a job of this App: decorate it with @app.job before enqueueing it"
        )

    # enqueueing -------------------------------------------------------------------------
    def enqueue(
        self,
        job: Any,
        *args: Any,
        key: str | None = None,
        delay: float | timedelta | None = None,
        run_at: datetime | float | None = None,
        queue: str | None = None,
        priority: int | None = None,
        connection: Any = None,
        debounce: float | timedelta | None = None,
        **kwargs: Any,
    ) -> JobHandle:
        """Durably enqueue a job; with ``key``, at most one job per key ever exists.

        A second enqueue with the same key and the same arguments returns the first job;
        with other arguments (or another job) it raises ``KeyConflict``. With
        ``connection`` (your own ``sqlite3``/psycopg connection to this app's database),
        the job is written inside your open transaction: it exists if and only if your
        transaction commits. With ``debounce`` (seconds), ``key`` names a debounce group
        instead: a job of the group still queued is replaced (new arguments) and delayed to
        ``debounce`` from now, so a burst of enqueues runs the job once. Called in a job's
        own code (not in a step), the enqueue is part of the job's history: a replay gets
        the same child job back.
        """
        definition = self._definition(job)
        if debounce is not None:
            if delay is not None or run_at is not None or connection is not None:
                raise ValueError(
                    "enqueue(debounce=...) sets the due time itself and writes on its own: "
                    "it takes no delay=, run_at= or connection="
                )
            return self._debounce(
                definition,
                args,
                kwargs,
                key=key,
                wait=_seconds(debounce),
                queue=queue,
                priority=priority,
            )
        run = current_run.get()
        if run is not None and current_step.get() is None and connection is None:
            from .flow import checkpointed_enqueue

            run.check()
            due = self._due(delay, run_at)

            def insert(child_key: str) -> str:
                return self._insert(
                    definition,
                    args,
                    kwargs,
                    key=child_key,
                    run_at=due,
                    queue=queue,
                    priority=priority,
                    parent_id=run.job_id,
                ).id

            child_id, child_key = checkpointed_enqueue(run, insert, key)
            self._wake_workers()
            return JobHandle(self, child_id, child_key)
        record = self._insert(
            definition,
            args,
            kwargs,
            key=key,
            run_at=self._due(delay, run_at),
            queue=queue,
            priority=priority,
            connection=connection,
        )
        if connection is None:
            self._wake_workers()
        return JobHandle(self, record.id, record.key)

    def enqueue_many(
        self,
        job: Any,
        items: Iterable[tuple[Any, ...] | list[Any] | Mapping[str, Any]],
        key: str | Callable[..., str] | None = None,
        *,
        queue: str | None = None,
        priority: int | None = None,
        delay: float | timedelta | None = None,
        run_at: datetime | float | None = None,
        batch_size: int = BATCH_SIZE,
    ) -> Enqueued:
        """Enqueue one job per item, in batches: the bulk enqueue of a backfill.

        Each item is a tuple (or list) of positional arguments or a dict of keyword
        arguments. ``key`` is a ``str.format`` template over the job's bound arguments (or
        a callable taking them); an item whose key is taken by a job with the same
        arguments is skipped and counted in ``.existing``, one with other arguments raises
        ``KeyConflict`` with the item's position as ``.index``: that item is not written,
        but the batches before it and the other new items of its batch are (enqueueing
        the same items again skips them).
        Returns the handles, new and existing, in item order, with ``.new`` and
        ``.existing`` counts.
        """
        definition = self._definition(job)
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        template = (
            KeyTemplate(key, definition.fn, what=f"key of job {definition.name}")
            if key is not None
            else None
        )
        due = self._due(delay, run_at)
        result = Enqueued()
        batch: list[NewJob] = []
        for index, item in enumerate(items):
            args, kwargs = _item_arguments(item, index)
            job_key = template.render(args, kwargs) if template is not None else None
            batch.append(
                self._new_job(
                    definition,
                    args,
                    kwargs,
                    key=job_key,
                    run_at=due,
                    queue=queue,
                    priority=priority,
                )
            )
            if len(batch) >= batch_size:
                self._insert_batch(batch, result, first_index=len(result))
                batch = []
        if batch:
            self._insert_batch(batch, result, first_index=len(result))
        if result.new:
            self._wake_workers()
        return result

    def _insert_batch(self, batch: list[NewJob], result: Enqueued, *, first_index: int) -> None:
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
                self.store.job_insert_many(unique, now=self.clock.now()),
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
                self._check_same(outcome.job, new, index=first_index + position)
            handles.append(JobHandle(self, outcome.job.id, outcome.job.key))
            if outcome.created:
                new_count += 1
            else:
                existing_count += 1
        result._extend(handles, new=new_count, existing=existing_count)

    def _due(self, delay: float | timedelta | None, run_at: datetime | float | None) -> float:
        now = self.clock.now()
        if delay is not None and run_at is not None:
            raise ValueError("pass delay= or run_at=, not both")
        if delay is not None:
            return now + _seconds(delay)
        if isinstance(run_at, datetime):
            return run_at.timestamp()
        if run_at is not None:
            return float(run_at)
        return now

    def _insert(
        self,
        definition: JobDefinition[Any, Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        key: str | None,
        run_at: float,
        queue: str | None,
        priority: int | None,
        owner: str | None = None,
        connection: Any = None,
        parent_id: str | None = None,
    ) -> JobRecord:
        new = self._new_job(
            definition,
            args,
            kwargs,
            key=key,
            run_at=run_at,
            queue=queue,
            priority=priority,
            parent_id=parent_id,
        )
        now = self.clock.now()
        if connection is not None:
            if owner is not None:
                raise StepstoneError("app.run does not take a connection")
            inserted = self.store.job_insert_on(connection, new, now=now)
        else:
            inserted = self.store.job_insert(
                new, now=now, owner=owner, lease_until=now + self.lease
            )
        if not inserted.created:
            self._check_same(inserted.job, new)
        return inserted.job

    def _new_job(
        self,
        definition: JobDefinition[Any, Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        key: str | None,
        run_at: float,
        queue: str | None,
        priority: int | None,
        parent_id: str | None = None,
        debounce_key: str | None = None,
    ) -> NewJob:
        if key is not None:
            check_key(key, what="job key")
        concurrency_key, concurrency_limit = definition.concurrency_key(args, kwargs)
        return NewJob(
            id=new_job_id(),
            name=definition.name,
            queue=queue or definition.queue,
            key=key,
            args=definition.codec.encode(args, kwargs),
            priority=definition.priority if priority is None else priority,
            run_at=run_at,
            parent_id=parent_id,
            concurrency_key=concurrency_key,
            concurrency_limit=concurrency_limit,
            debounce_key=debounce_key,
        )

    def _debounce(
        self,
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
        new = self._new_job(
            definition,
            args,
            kwargs,
            key=None,
            run_at=self.clock.now() + wait,
            queue=queue,
            priority=priority,
            debounce_key=f"{definition.name}:{key}",
        )
        record = self.store.job_debounce(new, now=self.clock.now()).job
        self._wake_workers()
        return JobHandle(self, record.id, None)

    def signal(self, event: str, payload: Any = None) -> int:
        """Send ``event`` with a JSON-able ``payload`` to the jobs waiting for it (all of
        them), and keep it for jobs that wait later (until ``prune``). Returns how many
        waiting jobs were woken."""
        if not isinstance(event, str) or not event:
            raise ValueError("signal() needs an event name (a non-empty str)")
        if event.startswith(JOB_EVENT_PREFIX):
            raise ValueError(f"event names starting with {JOB_EVENT_PREFIX!r} are reserved")
        check_key(event, what="event name")
        woken = self.store.signal_send(event, dumps(payload), now=self.clock.now())
        if woken:
            self._wake_workers()
        return woken

    @staticmethod
    def _check_same(existing: JobRecord, new: NewJob, *, index: int | None = None) -> None:
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

    # running jobs -----------------------------------------------------------------------
    def run(self, job: Any, *args: Any, key: str | None = None, **kwargs: Any) -> Any:
        """Run a job now in this process, durably, and return its result.

        Checkpoints and retries (with their backoff) as a worker would. With a key whose job
        already finished, returns (or raises) its stored outcome; with a key whose job is
        running elsewhere, waits for it, and takes it over if that worker's lease expires.
        Raises ``JobFailed`` when the job fails for good.
        """
        from .runner import execute_sync

        definition = self._definition(job)
        if definition.is_async:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                pass
            else:
                raise StepstoneError(
                    f"app.run({definition.name}) was called inside a running event loop; "
                    "enqueue the job and `await handle.result_async()` instead"
                )
        limited = definition.concurrency is not None  # claimed through the limit below
        record = self._insert(
            definition,
            args,
            kwargs,
            key=key,
            run_at=self.clock.now(),
            queue=None,
            priority=None,
            owner=None if limited else self.owner,
        )
        handle = JobHandle(self, record.id, record.key)
        claimed = None
        if record.lease_owner == self.owner and record.state == JobState.RUNNING:
            claimed = self._claimed_from(record)
        while True:
            if claimed is not None:
                if definition.is_async:
                    from .runner import execute_async

                    run = asyncio.run(execute_async(self, claimed))
                else:
                    run = execute_sync(self, claimed)
                claimed = None
                if run is not None and run.succeeded:
                    return run.result  # stored, durably: no need to read it back
            record = handle.record()
            now = self.clock.now()
            if record.state.finished:
                return handle._outcome(record)
            parked = record.state in (JobState.QUEUED, JobState.WAITING)
            if parked and record.run_at <= now:
                claimed = self.store.job_claim(
                    record.id, owner=self.owner, now=now, lease_until=now + self.lease
                )
                if claimed is None:  # at its concurrency limit: wait for a slot
                    self._wait_for_finish(min(0.05, self.poll_interval))
                continue
            if parked:
                self.clock.sleep(min(record.run_at - now, self.poll_interval))
                continue
            if (
                record.state == JobState.RUNNING
                and record.lease_expires_at is not None
                and record.lease_expires_at < now
            ):
                self.store.job_rescue_expired(now=now)
                continue
            self._wait_for_finish(min(0.05, self.lease / 4))

    def _claimed_from(self, record: JobRecord) -> Any:
        from .store.base import ClaimedJob

        return ClaimedJob(
            id=record.id,
            name=record.name,
            queue=record.queue,
            key=record.key,
            args=record.args,
            fence=record.fence,
            attempt=record.attempts,
            priority=record.priority,
        )

    def run_worker(
        self,
        concurrency: int = 8,
        queues: list[str] | str | None = None,
        until_idle: bool = False,
        prefetch: int = 0,
    ) -> None:
        """Run a worker in this thread until it is stopped (SIGTERM/SIGINT in the main
        thread) or, with ``until_idle=True``, until no job runs and none is due."""
        from .worker import Worker

        Worker(
            self, concurrency=concurrency, queues=queues, until_idle=until_idle, prefetch=prefetch
        ).run()

    # operations -------------------------------------------------------------------------
    def get_job(self, job_id: str) -> JobHandle:
        """The job with this id; ``JobNotFound`` if there is none."""
        record = self.store.job_get(job_id)
        if record is None:
            raise JobNotFound(f"no job with id {job_id!r}")
        return JobHandle(self, record.id, record.key)

    def get_job_by_key(self, key: str) -> JobHandle:
        """The job with this key; ``JobNotFound`` if there is none."""
        record = self.store.job_get_by_key(key)
        if record is None:
            raise JobNotFound(f"no job with key {key!r}")
        return JobHandle(self, record.id, record.key)

    def cancel(self, job_id: str) -> bool:
        """Cancel a job at once, and the unfinished jobs it enqueued. A queued or waiting job
        never runs; a running job stops at its next step boundary (its running step's
        checkpoint is refused), an async one at once (its task is cancelled). False if it
        had already finished."""
        cancelled = self.store.job_cancel(job_id, now=self.clock.now())
        if cancelled:
            # This process's runs of the job or of its children (cancelled with it).
            active = {run.job_id: run for run in self._lease_keeper.active()}
            if active:
                from .errors import JobCancelled

                for record in self.store.job_get_many(ids=list(active)):
                    if record.state == JobState.CANCELLED:
                        active[record.id].interrupt_with(
                            JobCancelled(f"job {record.id} was cancelled")
                        )
            self._job_finished(job_id)
        return cancelled

    def retry(self, job_id: str) -> bool:
        """Queue a failed or cancelled job again, due now, with a fresh attempt budget.

        Its checkpoints up to its first stored step error are kept. False if the job is
        not failed or cancelled.
        """
        requeued = self.store.job_requeue(job_id, now=self.clock.now())
        if requeued:
            self._wake_workers()
        return requeued

    def forget(self, memo_key: str, *, prefix: bool = False) -> int:
        """Drop the value stored under a memo key (or, with ``prefix=True``, under every key
        that starts with it): the next call computes it afresh. Returns how many were
        dropped. Jobs that already took the value keep it in their own history."""
        if not prefix:
            check_key(memo_key, what="memo key")
        return self.store.memo_forget(memo_key, prefix=prefix)

    def memo(self, memo_key: str) -> MemoRecord | None:
        """The memo stored under a key (its state, value as JSON text, expiry), if any."""
        return self.store.memo_get(memo_key, now=self.clock.now())

    def prune(self, older_than: float | timedelta) -> int:
        """Delete jobs that finished more than ``older_than`` ago, with their history, and
        memos whose time to live ran out."""
        now = self.clock.now()
        before = now - _seconds(older_than)
        self.store.memo_prune(now=now)
        self.store.signal_prune(before=before)
        total = 0
        while True:
            deleted = self.store.job_prune(finished_before=before)
            total += deleted
            if deleted == 0:
                return total

    # in-process notifications -----------------------------------------------------------
    def _job_finished(self, job_id: str) -> None:
        with self._finished:
            self._finished.notify_all()

    def _wait_for_finish(self, seconds: float) -> None:
        with self._finished:
            self._finished.wait(max(seconds, 0))

    def _wake_workers(self) -> None:
        for worker in list(self._workers):
            worker.wake()


def _item_arguments(item: Any, index: int) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The positional and keyword arguments an ``enqueue_many`` item stands for."""
    if isinstance(item, Mapping):
        return (), dict(item)
    if isinstance(item, tuple | list):
        return tuple(item), {}
    raise TypeError(
        f"enqueue_many item {index} is a {type(item).__name__}; give a tuple of positional "
        "arguments or a dict of keyword arguments (for one argument: (value,))"
    )


__all__ = ["App", "new_job_id"]
