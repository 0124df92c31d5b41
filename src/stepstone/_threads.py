"""A fixed pool of daemon threads for sync jobs: a step stuck in C code cannot keep a
stopping process alive (``ThreadPoolExecutor`` threads are joined at exit)."""

from __future__ import annotations

import concurrent.futures
import queue
import threading
from collections.abc import Callable
from typing import Any


class DaemonThreads:
    """A fixed pool of daemon threads (``ThreadPoolExecutor`` threads are joined at exit)."""

    def __init__(self, size: int) -> None:
        self._tasks: queue.SimpleQueue[
            tuple[Callable[[], Any], concurrent.futures.Future[Any]] | None
        ] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._serve, name=f"stepstone-job-{i}", daemon=True)
            for i in range(size)
        ]
        for thread in self._threads:
            thread.start()

    def submit(
        self, fn: Callable[[], Any], future: concurrent.futures.Future[Any]
    ) -> concurrent.futures.Future[Any]:
        self._tasks.put((fn, future))
        return future

    def _serve(self) -> None:
        while (item := self._tasks.get()) is not None:
            fn, future = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:  # reported through the future
                future.set_exception(exc)

    def shutdown(self) -> None:
        for _ in self._threads:
            self._tasks.put(None)


__all__ = ["DaemonThreads"]
