"""Keeps the leases of this process's running jobs alive, and notices when one is lost."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

from ._clock import Clock
from ._frames import logger
from ._store.base import Store
from .errors import JobCancelled, LeaseLost, StoreError
from .types import ClaimedJob, JobState


class Leased(Protocol):
    """What the lease keeper sees of a run (or of a job claimed ahead and not started)."""

    @property
    def job_id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def fence(self) -> int: ...
    @property
    def attempt(self) -> int: ...
    @property
    def interrupt(self) -> BaseException | None: ...
    @property
    def outcome_written(self) -> bool: ...

    stopping: bool

    def interrupt_with(
        self, error: BaseException, *, logged: bool = False, cancel: bool = False
    ) -> None: ...


class HeldLease:
    """A job claimed ahead and not started yet: the lease keeper heartbeats it like a run."""

    def __init__(self, job: ClaimedJob) -> None:
        self.since = time.monotonic()
        self.job_id = job.id
        self.name = job.name
        self.fence = job.fence
        self.attempt = job.attempt
        self.interrupt: BaseException | None = None
        self.interrupt_logged = False
        self.outcome_written = False
        self.stopping = False

    def interrupt_with(
        self, error: BaseException, *, logged: bool = False, cancel: bool = False
    ) -> None:
        self.interrupt = error
        self.interrupt_logged = self.interrupt_logged or logged


class LeaseKeeper:
    """One daemon thread per runtime that heartbeats every running job of this process.

    A heartbeat extends each lease to ``now + lease``, conditional on the run's fencing
    token. A lease that could not be extended is lost: the run is told (sticky), so its
    next step call stops it without running the body.
    """

    def __init__(self, store: Callable[[], Store], clock: Clock, lease: float) -> None:
        self._store = store
        self.clock = clock
        self.lease = lease
        self.runs: dict[str, Leased] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def interval(self) -> float:
        return max(self.lease / 3, 0.01)

    def add(self, run: Leased) -> None:
        with self._lock:
            self.runs[run.job_id] = run
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._loop, name="stepstone-heartbeat", daemon=True
                )
                self._thread.start()

    def discard(self, run: Leased) -> None:
        with self._lock:
            if self.runs.get(run.job_id) is run:
                del self.runs[run.job_id]

    def active(self) -> list[Leased]:
        with self._lock:
            return list(self.runs.values())

    def _loop(self) -> None:
        while True:
            self._wake.wait(self.interval)
            self._wake.clear()
            with self._lock:
                if not self.runs:
                    self._thread = None
                    return
            self.beat()

    def beat(self) -> None:
        """Extend every lease once; mark the runs whose lease was lost."""
        runs = [run for run in self.active() if run.interrupt is None]
        if not runs:
            return
        now = self.clock.now()
        try:
            lost = self._store().job_heartbeat(
                [(run.job_id, run.fence) for run in runs], lease_until=now + self.lease
            )
        except StoreError:
            logger.exception(
                "heartbeat failed; retrying", extra={"action": "lease.heartbeat_failed"}
            )
            return
        for run in runs:
            if run.job_id in lost:
                self._mark_lost(run)

    def _mark_lost(self, run: Leased) -> None:
        try:
            record = self._store().job_get(run.job_id)
        except StoreError:
            record = None
        if run.outcome_written or (
            record is not None and record.fence == run.fence and record.state.finished
        ):
            return  # the run itself ended the job between this heartbeat's snapshot and write
        if record is not None and record.state == JobState.CANCELLED:
            run.interrupt_with(JobCancelled(f"job {run.job_id} was cancelled"), cancel=True)
            return
        now_token = record.fence if record is not None else "none (job deleted)"
        state = record.state.value if record is not None else "gone"
        lost = LeaseLost(
            f"job {run.job_id}: lease lost: this worker holds fencing token {run.fence}, the "
            f"job now has token {now_token} and state {state!r}; another worker owns it"
        )
        run.interrupt_with(lost, logged=True)
        logger.warning(
            "%s; this run stops at its next step and leaves the job to its new owner",
            lost,
            extra={
                "action": "job.lease_lost",
                "job_id": run.job_id,
                "job": run.name,
                "attempt": run.attempt,
                "fence": run.fence,
            },
        )


__all__ = ["HeldLease", "LeaseKeeper", "Leased"]
