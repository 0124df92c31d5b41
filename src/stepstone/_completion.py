"""Group commit for how runs end: the outcomes (success, failure, retry, park, release) of
the runs that finish while one write is in flight are written together in the next one.

Workers go one step further (``write_later``): a run hands its success to a flusher
thread and returns, so its worker slot takes the next job while the write is in flight.
The job stays ``running`` with its lease heartbeated until the write lands; then the run's
callback ends it (logs, releases the lease watch, notifies waiters in this process). A
crash before the write means the job is rescued and replayed, as for any run that died
before its outcome. ``app.run`` keeps the waiting form.

There is no background thread and no added wait for the waiting form. The first run to
finish while no write is in flight becomes the writer: it writes its own outcome, then
what was queued meanwhile, until the queue is empty; runs that finish meanwhile
queue theirs and wait for the write that includes it. One run alone writes its outcome
with one fenced transition; sixteen runs finishing together share one round trip
(PostgreSQL) or one fsync (SQLite). Each run still returns only once its outcome is
durable, so a caller told "succeeded" can rely on it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ._clock import Clock
from ._frames import logger
from ._store.base import Store
from .errors import StepstoneError
from .types import Outcome

#: The most outcomes one write records.
MAX_GROUP = 500
#: How long the flusher thread waits for work before it ends (a new one starts on demand).
FLUSHER_IDLE_SECONDS = 5.0


@dataclass
class _Pending:
    outcome: Outcome
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


class GroupCommit:
    """Writes outcomes through ``Store.job_transition_many``, grouping those that arrive
    while a write is in flight."""

    def __init__(self, store: Callable[[], Store], clock: Clock) -> None:
        self._store = store
        self.clock = clock
        self._lock = threading.Lock()
        self._queue: list[_Pending] = []
        self._writing = False
        self._later: list[tuple[Outcome, Callable[[BaseException | None], None]]] = []
        self._later_ready = threading.Condition()
        self._flushing = False
        self._flusher: threading.Thread | None = None

    def write_later(
        self, outcome: Outcome, callback: Callable[[BaseException | None], None]
    ) -> None:
        """Queue an outcome for the flusher; ``callback(error)`` runs (on the flusher
        thread) once it is written (``None``) or refused or failed (the error)."""
        with self._later_ready:
            self._later.append((outcome, callback))
            if self._flusher is None or not self._flusher.is_alive():
                self._flusher = threading.Thread(
                    target=self._flush_forever, name="stepstone-complete", daemon=True
                )
                self._flusher.start()
            self._later_ready.notify_all()

    def wait_flushed(self, timeout: float) -> bool:
        """Wait until every queued outcome is written; False if ``timeout`` passed first."""
        deadline = time.monotonic() + timeout
        with self._later_ready:
            while self._later or self._flushing:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._later_ready.wait(remaining)
        return True

    def _flush_forever(self) -> None:
        while True:
            with self._later_ready:
                while not self._later:
                    if not self._later_ready.wait(FLUSHER_IDLE_SECONDS) and not self._later:
                        self._flusher = None
                        return
                group = self._later[:MAX_GROUP]
                del self._later[:MAX_GROUP]
                self._flushing = True
            try:
                refused: dict[str, BaseException] = dict(
                    self._write([outcome for outcome, _ in group])
                )
            except Exception as exc:  # the store gave up (its own retries are done)
                refused = {outcome.job_id: exc for outcome, _ in group}
            for outcome, callback in group:
                try:
                    callback(refused.get(outcome.job_id))
                except Exception:  # a callback must not stop the flusher
                    logger.exception(
                        "a completion callback failed", extra={"action": "worker.error"}
                    )
            with self._later_ready:
                self._flushing = False
                self._later_ready.notify_all()

    def write(self, outcome: Outcome) -> None:
        """Record how a run ended, durably; raises ``LeaseLost`` or ``JobCancelled`` when
        the transition is refused, or the ``StoreError`` that failed the write."""
        with self._lock:
            pending = _Pending(outcome) if self._writing else None
            if pending is not None:
                self._queue.append(pending)
            else:
                self._writing = True
        if pending is None:
            # The writer: its own outcome alone first, then whatever queued meanwhile.
            try:
                refused = self._write([outcome])
            finally:
                self._write_all()
            error = refused.get(outcome.job_id)
            if error is not None:
                raise error
            return
        pending.done.wait()
        if pending.error is not None:
            raise pending.error

    def _write_all(self) -> None:
        while True:
            with self._lock:
                group = self._queue[:MAX_GROUP]
                del self._queue[:MAX_GROUP]
                if not group:
                    self._writing = False
                    return
            try:
                refused = self._write([pending.outcome for pending in group])
            except BaseException as exc:  # a StoreError (or worse) fails the whole group
                for pending in group:
                    pending.error = exc
                    pending.done.set()
                if not isinstance(exc, Exception):
                    with self._lock:
                        self._writing = False
                    raise
                continue
            for pending in group:
                pending.error = refused.get(pending.outcome.job_id)
                pending.done.set()

    def _write(self, outcomes: list[Outcome]) -> dict[str, StepstoneError]:
        return self._store().job_transition_many(outcomes, now=self.clock.now())


__all__ = ["MAX_GROUP", "GroupCommit"]
