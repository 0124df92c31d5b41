"""Keeps the leases of this process's running jobs alive, and notices when one is lost."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from .context import logger
from .errors import JobCancelled, LeaseLost, StoreError
from .store.base import JobState

if TYPE_CHECKING:
    from .app import App
    from .runner import JobRun


class LeaseKeeper:
    """One daemon thread per App that heartbeats every running job of this process.

    A heartbeat extends each lease to ``now + lease``, conditional on the run's fencing
    token. A lease that could not be extended is lost: the run is told (sticky), so its
    next step call stops it without running the body.
    """

    def __init__(self, app: App) -> None:
        self.app = app
        self.runs: dict[str, JobRun] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def interval(self) -> float:
        return max(self.app.lease / 3, 0.01)

    def add(self, run: JobRun) -> None:
        with self._lock:
            self.runs[run.job_id] = run
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._loop, name="stepstone-heartbeat", daemon=True
                )
                self._thread.start()

    def discard(self, run: JobRun) -> None:
        with self._lock:
            if self.runs.get(run.job_id) is run:
                del self.runs[run.job_id]

    def active(self) -> list[JobRun]:
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
        now = self.app.clock.now()
        try:
            lost = self.app.store.job_heartbeat(
                [(run.job_id, run.fence) for run in runs], lease_until=now + self.app.lease
            )
        except StoreError:
            logger.exception(
                "heartbeat failed; retrying", extra={"action": "lease.heartbeat_failed"}
            )
            return
        for run in runs:
            if run.job_id in lost:
                self._mark_lost(run)

    def _mark_lost(self, run: JobRun) -> None:
        try:
            record = self.app.store.job_get(run.job_id)
        except StoreError:
            record = None
        if run.outcome_written or (
            record is not None and record.fence == run.fence and record.state.finished
        ):
            return  # the run itself ended the job between this heartbeat's snapshot and write
        if record is not None and record.state == JobState.CANCELLED:
            run.interrupt_with(JobCancelled(f"job {run.job_id} was cancelled"))
            return
        now_token = record.fence if record is not None else "none (job deleted)"
        state = record.state.value if record is not None else "gone"
        run.interrupt = LeaseLost(
            f"job {run.job_id}: lease lost: this worker holds fencing token {run.fence}, the "
            f"job now has token {now_token} and state {state!r}; another worker owns it"
        )
        run.interrupt_logged = True
        logger.warning(
            "%s; this run stops at its next step and leaves the job to its new owner",
            run.interrupt,
            extra={
                "action": "job.lease_lost",
                "job_id": run.job_id,
                "job": run.name,
                "attempt": run.attempt,
                "fence": run.fence,
            },
        )


__all__ = ["LeaseKeeper"]
