"""``App``: the registry of jobs and steps, plus the store they run against."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta, tzinfo
from typing import Any, Concatenate, ParamSpec, TypeVar, overload

from . import _enqueue
from ._clock import Clock, SystemClock
from ._declare import (
    check_job_options,
    check_step_options,
    define_job,
    define_step,
    define_transaction,
    resolve_job,
)
from ._enqueue import BATCH_SIZE, new_job_id
from ._enqueue import seconds as _seconds
from ._handle import Enqueued, JobHandle
from ._job import DEFAULT_QUEUE, JobDefinition
from ._keys import check_key
from ._limits import Limit, Rate
from ._retry import Retry
from ._run_now import run_now
from ._runtime import Runtime
from ._serialization import dumps
from ._step import StepDefinition, TransactionStep
from ._store import Store, open_store
from ._store.urls import mask_password
from .errors import JobNotFound, StepstoneError
from .types import JOB_EVENT_PREFIX, MemoRecord

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

DEFAULT_URL = "sqlite:///stepstone.db"
_OPTIONS = {
    "clock",
    "poll_interval",
    "shutdown_grace",
    "busy_timeout",
    "schema",
    "pool_size",
    "store",
}


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
        lease_seconds = _seconds(lease)
        if lease_seconds <= 0:
            raise ValueError("lease must be positive")
        self.durability = durability
        self._store_options: dict[str, Any] = {"durability": durability}
        for name in ("busy_timeout", "schema", "pool_size"):
            if name in options:
                self._store_options[name] = options[name]
        self.jobs: dict[str, JobDefinition[Any, Any]] = {}
        self.steps: dict[str, StepDefinition[Any, Any]] = {}
        self._functions: dict[Callable[..., Any], JobDefinition[Any, Any]] = {}
        given: Store | None = options.get("store")
        self._runtime = Runtime(
            given if given is not None else self._open_store,
            jobs=self.jobs,
            clock=options.get("clock") or SystemClock(),
            lease=lease_seconds,
            poll_interval=float(options.get("poll_interval", 1.0)),
            shutdown_grace=float(options.get("shutdown_grace", 30.0)),
        )
        self.owner = self._runtime.owner

    # settings, kept by the runtime -------------------------------------------------------
    @property
    def clock(self) -> Clock:
        return self._runtime.clock

    @property
    def lease(self) -> float:
        return self._runtime.lease

    @lease.setter
    def lease(self, seconds: float) -> None:
        self._runtime.set_lease(seconds)

    @property
    def poll_interval(self) -> float:
        return self._runtime.poll_interval

    @poll_interval.setter
    def poll_interval(self, seconds: float) -> None:
        self._runtime.poll_interval = seconds

    @property
    def shutdown_grace(self) -> float:
        return self._runtime.shutdown_grace

    @shutdown_grace.setter
    def shutdown_grace(self, seconds: float) -> None:
        self._runtime.shutdown_grace = seconds

    def __repr__(self) -> str:
        return f"<stepstone.App {mask_password(self.url)} jobs={len(self.jobs)}>"

    # the store --------------------------------------------------------------------------
    def _open_store(self) -> Store:
        return open_store(self.url, **self._store_options)

    @property
    def store(self) -> Store:
        """The store, opened (and migrated) on first use."""
        return self._runtime.store

    @property
    def runtime(self) -> Runtime:
        """The engine's runtime (internal): what workers and job runs of this App use."""
        return self._runtime

    def close(self) -> None:
        """Close the store's connections."""
        self._runtime.close()

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
        limit, timeout_seconds = check_job_options(concurrency, timeout)

        def register(function: Callable[P, R]) -> JobDefinition[P, R]:
            definition = define_job(
                function,
                name=name,
                queue=queue,
                retry=retry,
                timeout=timeout_seconds,
                priority=priority,
                concurrency=limit,
                cron=cron,
                timezone=timezone,
                missed=missed,
            )
            self.jobs[definition.name] = definition
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
        timeout_seconds, rate = check_step_options(timeout, rate)

        def register(function: Callable[P, R]) -> StepDefinition[P, R]:
            definition = define_step(
                self._runtime,
                function,
                name=name,
                retry=retry,
                key=key,
                ttl=ttl,
                timeout=timeout_seconds,
                rate=rate,
            )
            self.steps[definition.name] = definition
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
            definition = define_transaction(self._runtime, function, name=name, retry=retry)
            self.steps[definition.name] = definition
            return definition

        return register(fn) if fn is not None else register

    def _definition(self, job: Any) -> JobDefinition[Any, Any]:
        return resolve_job(job, self.jobs, self._functions, self.url)

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
        return _enqueue.enqueue(
            self._runtime,
            self._definition(job),
            args,
            kwargs,
            key=key,
            delay=delay,
            run_at=run_at,
            queue=queue,
            priority=priority,
            connection=connection,
            debounce=debounce,
        )

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
        return _enqueue.enqueue_many(
            self._runtime,
            self._definition(job),
            items,
            key,
            queue=queue,
            priority=priority,
            delay=delay,
            run_at=run_at,
            batch_size=batch_size,
        )

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
            self._runtime.wake_workers()
        return woken

    # running jobs -----------------------------------------------------------------------
    def run(self, job: Any, *args: Any, key: str | None = None, **kwargs: Any) -> Any:
        """Run a job now in this process, durably, and return its result.

        Checkpoints and retries (with their backoff) as a worker would. With a key whose job
        already finished, returns (or raises) its stored outcome; with a key whose job is
        running elsewhere, waits for it, and takes it over if that worker's lease expires.
        Raises ``JobFailed`` when the job fails for good.
        """
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
        return run_now(self._runtime, definition, args, kwargs, key=key)

    def run_worker(
        self,
        concurrency: int = 8,
        queues: list[str] | str | None = None,
        until_idle: bool = False,
        prefetch: int = 0,
    ) -> None:
        """Run a worker in this thread until it is stopped (SIGTERM/SIGINT in the main
        thread) or, with ``until_idle=True``, until no job runs and none is due."""
        from ._worker import Worker

        Worker(
            self, concurrency=concurrency, queues=queues, until_idle=until_idle, prefetch=prefetch
        ).run()

    # operations -------------------------------------------------------------------------
    def get_job(self, job_id: str) -> JobHandle:
        """The job with this id; ``JobNotFound`` if there is none."""
        record = self.store.job_get(job_id)
        if record is None:
            raise JobNotFound(f"no job with id {job_id!r}")
        return JobHandle(self._runtime, record.id, record.key)

    def get_job_by_key(self, key: str) -> JobHandle:
        """The job with this key; ``JobNotFound`` if there is none."""
        record = self.store.job_get_by_key(key)
        if record is None:
            raise JobNotFound(f"no job with key {key!r}")
        return JobHandle(self._runtime, record.id, record.key)

    def cancel(self, job_id: str) -> bool:
        """Cancel a job at once, and the unfinished jobs it enqueued. A queued or waiting job
        never runs; a running job stops at its next step boundary (its running step's
        checkpoint is refused), an async one at once (its task is cancelled). False if it
        had already finished."""
        return self._runtime.cancel(job_id)

    def retry(self, job_id: str) -> bool:
        """Queue a failed or cancelled job again, due now, with a fresh attempt budget.

        Its checkpoints up to its first stored step error are kept. False if the job is
        not failed or cancelled.
        """
        requeued = self.store.job_requeue(job_id, now=self.clock.now())
        if requeued:
            self._runtime.wake_workers()
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


__all__ = ["BATCH_SIZE", "App", "new_job_id"]
