"""Helpers for testing code that uses stepstone.

``FakeClock`` makes retry backoff and leases instant and exact::

    from stepstone import App
    from stepstone.testing import FakeClock

    clock = FakeClock()
    app = App("sqlite:///:memory:", clock=clock)
    ...
    app.run_worker(until_idle=True)
    assert clock.sleeps == [1.0, 2.0]      # with Retry(jitter=False)

An in-memory SQLite App (``sqlite:///:memory:``) needs no file and no server; run jobs in
the test's own thread with ``app.run(job, ...)`` or ``app.run_worker(until_idle=True)``.
"""

from __future__ import annotations

import asyncio
import threading

#: 2023-11-14T22:13:20Z: far from the epoch, so that "now" and "0" never mix up.
EPOCH = 1_700_000_000.0


class FakeClock:
    """A clock that only moves when told to; ``sleep`` moves it and returns at once.

    Every sleep is recorded in ``sleeps`` so tests can assert exact backoff delays.
    Thread-safe: workers call it from their loop, job threads and the heartbeat thread.
    """

    def __init__(self, start: float = EPOCH) -> None:
        self._now = start
        self._lock = threading.Lock()
        self.sleeps: list[float] = []

    def now(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock forward without recording a sleep."""
        with self._lock:
            self._now += seconds

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            self._now += max(seconds, 0.0)

    async def sleep_async(self, seconds: float) -> None:
        self.sleep(seconds)
        await asyncio.sleep(0)


__all__ = ["EPOCH", "FakeClock"]
