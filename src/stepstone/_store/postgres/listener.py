"""News of queued jobs: one thread LISTENing on the store's channel, reconnecting when
the connection drops, counting notifications and calling the subscribed callbacks."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg

from .connection import quote_identifier

logger = logging.getLogger("stepstone")


class Listener:
    """Counts the notifications on ``channel``; starts its thread on first use."""

    def __init__(
        self, conninfo: str, channel: str, *, connect_timeout: float, kwargs: dict[str, Any]
    ) -> None:
        self.conninfo = conninfo
        self.channel = channel
        self.connect_timeout = connect_timeout
        self.kwargs = kwargs
        self.closed = False
        self.changes = 0
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []
        self._thread: threading.Thread | None = None

    def marker(self) -> int:
        """How many notifications arrived (a number that changes when a job is queued)."""
        self.ensure_started()
        return self.changes

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` (from the listening thread) on every notification."""
        with self._lock:
            self._callbacks.append(callback)
        self.ensure_started()

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._callbacks:
                    self._callbacks.remove(callback)

        return unsubscribe

    def ensure_started(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._listen, name="stepstone-listen", daemon=True
                )
                self._thread.start()

    def close(self) -> None:
        self.closed = True

    def _changed(self) -> None:
        with self._lock:
            self.changes += 1
            callbacks = list(self._callbacks)
        for callback in callbacks:
            try:
                callback()
            except Exception:
                logger.exception("a change callback failed", extra={"action": "store.listen"})

    def _listen(self) -> None:
        delay = 0.1
        listen = f"LISTEN {quote_identifier(self.channel)}"
        while not self.closed:
            try:
                with psycopg.connect(
                    self.conninfo,
                    autocommit=True,
                    connect_timeout=int(self.connect_timeout),
                    **self.kwargs,
                ) as conn:
                    conn.execute(listen)
                    self._changed()  # notifications may have been missed while away
                    delay = 0.1
                    while not self.closed:
                        for _notify in conn.notifies(timeout=1.0):
                            self._changed()
            except psycopg.Error as exc:
                if self.closed:
                    return
                logger.warning(
                    "LISTEN connection lost (%s); reconnecting in %.1fs",
                    str(exc).strip(),
                    delay,
                    extra={"action": "store.listen"},
                )
                time.sleep(delay)
                delay = min(delay * 2, 5.0)


__all__ = ["Listener"]
