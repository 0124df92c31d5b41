"""The runtime: what the engine runs on, handed to every engine piece.

``App`` is the registry and the public face; it builds one ``Runtime`` and hands it to the
job runs, workers, steps, handles and schedules. The runtime holds the store (opened on
first use), the clock, the lease settings, this process's owner id, the lease keeper, the
outcome writer (group commit), the in-process wake-ups, and a read-only view of the
registered jobs. An engine piece can be built in a test from a runtime alone.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from ._clock import Clock, SystemClock
from ._completion import GroupCommit
from ._lease import LeaseKeeper
from ._store.base import Store
from .errors import JobCancelled
from .types import JobState

if TYPE_CHECKING:
    from ._job import JobDefinition

T = TypeVar("T")


class Wakeable(Protocol):
    """A worker of this process: told to look for due jobs now."""

    def wake(self) -> None: ...


class RuntimeOwner(Protocol):
    """What builds and holds a runtime (the ``App``)."""

    @property
    def runtime(self) -> Runtime: ...


def runtime_of(owner: RuntimeOwner | Runtime) -> Runtime:
    """The runtime itself, or the one its owner (an ``App``) holds."""
    return owner if isinstance(owner, Runtime) else owner.runtime


def new_owner() -> str:
    """This process's owner id: host, pid and a random tail."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class Runtime:
    """The store, clock and settings the engine runs on, and its in-process services."""

    def __init__(
        self,
        store: Store | Callable[[], Store],
        *,
        jobs: Mapping[str, JobDefinition[Any, Any]] | None = None,
        clock: Clock | None = None,
        lease: float = 30.0,
        poll_interval: float = 1.0,
        shutdown_grace: float = 30.0,
        owner: str | None = None,
    ) -> None:
        if isinstance(store, Store):
            self._store: Store | None = store
            self._open: Callable[[], Store] | None = None
        else:
            self._store = None
            self._open = store
        self._store_lock = threading.Lock()
        #: The registered jobs by name (the App's own mapping: jobs declared later show up).
        self.jobs: Mapping[str, JobDefinition[Any, Any]] = jobs if jobs is not None else {}
        self.clock: Clock = clock or SystemClock()
        self.lease = lease
        self.poll_interval = poll_interval
        self.shutdown_grace = shutdown_grace
        self.owner = owner or new_owner()
        self.lease_keeper = LeaseKeeper(lambda: self.store, self.clock, lease)
        self.outcomes = GroupCommit(lambda: self.store, self.clock)
        self.workers: set[Wakeable] = set()
        self._finished = threading.Condition()

    def set_lease(self, seconds: float) -> None:
        """Change how long a claim lasts without a heartbeat (for the runs started later)."""
        if seconds <= 0:
            raise ValueError("lease must be positive")
        self.lease = seconds
        self.lease_keeper.lease = seconds

    # the store --------------------------------------------------------------------------
    @property
    def store(self) -> Store:
        """The store, opened (and migrated) on first use."""
        store = self._store
        if store is None:
            with self._store_lock:
                if self._store is None:
                    assert self._open is not None
                    self._store = self._open()
                store = self._store
        return store

    @property
    def store_opened(self) -> bool:
        return self._store is not None

    def close(self) -> None:
        """Close the store's connections (if it was opened)."""
        if self._store is not None:
            self._store.close()

    async def call_store(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call a blocking store operation (or engine code that makes one) from async code."""
        if self.store.inline_calls:
            return fn(*args, **kwargs)
        return await asyncio.to_thread(fn, *args, **kwargs)

    # the registry -----------------------------------------------------------------------
    def definition(self, name: str) -> JobDefinition[Any, Any] | None:
        """The job registered under ``name``, if any."""
        return self.jobs.get(name)

    # in-process notifications -----------------------------------------------------------
    def job_finished(self, job_id: str) -> None:
        """A run in this process ended: wake whoever waits for a finish."""
        with self._finished:
            self._finished.notify_all()

    def wait_for_finish(self, seconds: float) -> None:
        """Wait (at most ``seconds``) until a run in this process ends."""
        with self._finished:
            self._finished.wait(max(seconds, 0))

    def wake_workers(self) -> None:
        """Tell this process's workers to look for due jobs now."""
        for worker in list(self.workers):
            worker.wake()

    # operations shared by the App and the handles ----------------------------------------
    def cancel(self, job_id: str) -> bool:
        """Cancel a job and its unfinished children; this process's runs of them stop."""
        store = self.store
        cancelled = store.job_cancel(job_id, now=self.clock.now())
        if cancelled:
            active = {run.job_id: run for run in self.lease_keeper.active()}
            if active:
                for record in store.job_get_many(ids=list(active)):
                    if record.state == JobState.CANCELLED:
                        active[record.id].interrupt_with(
                            JobCancelled(f"job {record.id} was cancelled"), cancel=True
                        )
            self.job_finished(job_id)
        return cancelled


__all__ = ["Runtime", "RuntimeOwner", "Wakeable", "new_owner", "runtime_of"]
