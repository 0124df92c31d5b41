"""Group commit for job successes: the runs that finish while one completion write is in
flight have theirs written together in the next one.

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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .errors import JobCancelled, LeaseLost, StepstoneError
from .store.base import Completion

if TYPE_CHECKING:
    from .app import App

#: The most successes one write records.
MAX_GROUP = 500


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
