"""Group commit for job successes: the runs that finish while one completion write is in
flight have theirs written together in the next one.

Workers go one step further (``complete_later``): a run hands its success to a flusher
thread and returns, so its worker slot takes the next job while the write is in flight.
The job stays ``running`` with its lease heartbeated until the write lands; then the run's
callback ends it (logs, releases the lease watch, notifies waiters in this process). A
crash before the write means the job is rescued and replayed, as for any run that died
before its outcome. ``app.run`` keeps the waiting form.

There is no background thread and no added wait. The first run to finish while no write
is in flight becomes the writer: it writes what is queued (its own success first) and
keeps writing until the queue is empty; runs that finish meanwhile queue theirs and wait
for the write that includes it. One run alone writes its success with one statement, as
before; sixteen runs finishing together share one round trip (PostgreSQL) or one fsync
(SQLite). Each run still returns only once its success is durable, so a caller told
"succeeded" can rely on it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .context import logger
from .errors import JobCancelled, LeaseLost, StepstoneError
from .store.base import Completion

if TYPE_CHECKING:
    from .app import App

#: The most successes one write records.
MAX_GROUP = 500
#: How long the flusher thread waits for work before it ends (a new one starts on demand).
FLUSHER_IDLE_SECONDS = 5.0


@dataclass
class _Pending:
    completion: Completion
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


class GroupCommit:
    """Writes job successes, grouping those that arrive while a write is in flight."""

    def __init__(self, app: App) -> None:
        self.app = app
        self._lock = threading.Lock()
        self._queue: list[_Pending] = []
        self._writing = False
        self._later: list[tuple[Completion, Callable[[BaseException | None], None]]] = []
        self._later_ready = threading.Condition()
        self._flushing = False
        self._flusher: threading.Thread | None = None

    def complete_later(
        self,
        job_id: str,
        fence: int,
        result: str,
        callback: Callable[[BaseException | None], None],
    ) -> None:
        """Queue a job's success for the flusher; ``callback(error)`` runs (on the flusher
        thread) once it is written (``None``) or refused or failed (the error)."""
        with self._later_ready:
            self._later.append((Completion(job_id, fence, result), callback))
            if self._flusher is None or not self._flusher.is_alive():
                self._flusher = threading.Thread(
                    target=self._flush_forever, name="stepstone-complete", daemon=True
                )
                self._flusher.start()
            self._later_ready.notify_all()

    def wait_flushed(self, timeout: float) -> bool:
        """Wait until every queued success is written; False if ``timeout`` passed first."""
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
                    self._write([_Pending(completion) for completion, _ in group])
                )
            except Exception as exc:  # the store gave up (its own retries are done)
                refused = {completion.job_id: exc for completion, _ in group}
            for completion, callback in group:
                try:
                    callback(refused.get(completion.job_id))
                except Exception:  # a callback must not stop the flusher
                    logger.exception(
                        "a completion callback failed", extra={"action": "worker.error"}
                    )
            with self._later_ready:
                self._flushing = False
                self._later_ready.notify_all()

    def complete(self, job_id: str, fence: int, result: str) -> None:
        """Record a job's success, durably; raises what ``Store.job_complete`` raises."""
        pending = _Pending(Completion(job_id, fence, result))
        with self._lock:
            self._queue.append(pending)
            lead = not self._writing
            self._writing = True
        if lead:
            self._write_all()
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
                refused = self._write(group)
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
                pending.error = refused.get(pending.completion.job_id)
                pending.done.set()

    def _write(self, group: list[_Pending]) -> dict[str, StepstoneError]:
        store, now = self.app.store, self.app.clock.now()
        if len(group) == 1:
            done = group[0].completion
            try:
                store.job_complete(done.job_id, done.fence, result=done.result, now=now)
            except (LeaseLost, JobCancelled) as exc:
                return {done.job_id: exc}
            return {}
        return store.job_complete_many([pending.completion for pending in group], now=now)


__all__ = ["MAX_GROUP", "GroupCommit"]
