"""Claiming ahead (a worker's opt-in ``prefetch``): jobs claimed beyond the free slots are
held, their leases heartbeated, re-checked before they start if held long, and given back
at shutdown. Whether to claim ahead at all follows the recent average run time."""

from __future__ import annotations

import collections
import time
from collections.abc import Awaitable, Callable

from ._lease import HeldLease
from ._runtime import Runtime
from .errors import StoreError
from .types import ClaimedJob, JobState

#: Jobs claimed ahead only while this worker's jobs take at most this long on average.
PREFETCH_MAX_SECONDS = 0.05
#: At most this much work (by the recent average run time) is held claimed ahead.
PREFETCH_HOLD_SECONDS = 0.25


class ClaimAhead:
    """The jobs one worker claimed ahead of its free slots, and the run times that decide
    how far it claims ahead."""

    def __init__(self, runtime: Runtime, owner: str, prefetch: int, *, limited: bool) -> None:
        self.runtime = runtime
        self.owner = owner
        #: At most how many jobs a claim may take beyond the free slots, while jobs are short.
        self.prefetch = prefetch
        #: Jobs under a concurrency limit are never claimed ahead.
        self.limited = limited
        self._buffer: collections.deque[ClaimedJob] = collections.deque()
        self._held: dict[str, HeldLease] = {}
        self._started_at: dict[tuple[str, int], float] = {}
        #: The average run time of this worker's recent jobs (None before the first).
        self.average_seconds: float | None = None

    @property
    def holding(self) -> int:
        """How many jobs are held claimed ahead now."""
        return len(self._buffer)

    def how_many(self, concurrency: int) -> int:
        """How many jobs the next claim may take beyond its free slots."""
        average = self.average_seconds
        if self.limited or average is None or average > PREFETCH_MAX_SECONDS:
            return 0
        # Hold no more than PREFETCH_HOLD_SECONDS of this worker's work, so that jobs it
        # claimed ahead never wait long while other workers could have run them.
        fits = int(PREFETCH_HOLD_SECONDS * concurrency / max(average, 1e-6))
        return max(0, min(self.prefetch, fits))

    def hold(self, jobs: list[ClaimedJob]) -> None:
        """Keep jobs claimed beyond the free slots; their leases are heartbeated."""
        for job in jobs:
            lease = HeldLease(job)
            self._held[job.id] = lease
            self._buffer.append(job)
            self.runtime.lease_keeper.add(lease)

    async def take(self, free: int) -> list[ClaimedJob]:
        """Up to ``free`` held jobs that are still this worker's, to start now."""
        held: list[ClaimedJob] = []
        stale: list[ClaimedJob] = []
        while self._buffer and len(held) + len(stale) < free:
            job = self._buffer.popleft()
            lease = self._held.pop(job.id, None)
            if lease is None:
                continue
            self.runtime.lease_keeper.discard(lease)
            if lease.interrupt is not None:  # cancelled, or its lease was lost
                continue
            # Held for longer than a heartbeat interval (this process may have been frozen
            # past its lease): make sure the job is still ours before running it.
            old = time.monotonic() - lease.since > self.runtime.lease / 3
            (stale if old else held).append(job)
        if stale:
            held += await self._still_ours(stale)
        return held

    async def _still_ours(self, jobs: list[ClaimedJob]) -> list[ClaimedJob]:
        runtime = self.runtime
        try:
            records = await runtime.call_store(
                lambda: runtime.store.job_get_many(ids=[job.id for job in jobs])
            )
        except StoreError:
            return []
        now = runtime.clock.now()
        found = {record.id: record for record in records}
        kept = []
        for job in jobs:
            record = found.get(job.id)
            if (
                record is not None
                and record.state == JobState.RUNNING
                and record.fence == job.fence
                and record.lease_owner == self.owner
                and (record.lease_expires_at or 0) > now
            ):
                kept.append(job)
        return kept

    async def give_back(self, release: Callable[[str, int], Awaitable[bool]]) -> None:
        """Release every held job (shutdown)."""
        while self._buffer:
            job = self._buffer.popleft()
            lease = self._held.pop(job.id, None)
            if lease is not None:
                self.runtime.lease_keeper.discard(lease)
            await release(job.id, job.fence)

    def started(self, key: tuple[str, int], now: float) -> None:
        """A run began (its time only decides how far to claim ahead)."""
        if self.prefetch:
            self._started_at[key] = now

    def finished(self, key: tuple[str, int], now: float) -> None:
        """A run ended: fold its run time into the recent average."""
        started = self._started_at.pop(key, None)
        if started is not None:
            took = now - started
            average = self.average_seconds
            self.average_seconds = took if average is None else 0.8 * average + 0.2 * took


__all__ = ["PREFETCH_HOLD_SECONDS", "PREFETCH_MAX_SECONDS", "ClaimAhead"]
