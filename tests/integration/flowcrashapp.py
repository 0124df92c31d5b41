"""The app of the flow crash tests (``flowcrashapp``): job timeouts, cancellation, child
jobs, cron and debounce with worker processes killed.

``mark(log, what)`` appends ``<what> <role> <pid>`` to the log; in a subprocess, when the
flag file ``<log>.block-<what>`` exists, it then announces ``<log>.blocked-<what>`` and
hangs until it is killed.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import stepstone
from stepstone import App, Retry


def role() -> str:
    return os.environ.get("STEPSTONE_TEST_ROLE", "test")


def build_app(url: str | None, *, lease: float = 1.0, grace: float = 30.0) -> App:
    app = App(url, lease=lease, shutdown_grace=grace)

    @app.step(name="mark")
    def mark(log: str, what: str) -> str:
        with open(log, "a") as file:
            file.write(f"{what} {role()} {os.getpid()}\n")
        if role() != "test" and Path(f"{log}.block-{what}").exists():
            Path(f"{log}.blocked-{what}").touch()
            time.sleep(120)
        return f"{what} by {role()}"

    @app.job(name="flowcrash.timed", timeout=2.0, retry=Retry(max_attempts=3, initial=0.01))
    def timed(log: str) -> str:
        mark(log, "one")
        return mark(log, "two")

    @app.job(name="flowcrash.plain", retry=Retry(max_attempts=1))
    def plain(log: str) -> str:
        mark(log, "one")
        return mark(log, "two")

    @app.job(name="flowcrash.kid", retry=Retry(max_attempts=1))
    def kid(log: str) -> str:
        return mark(log, "kid")

    @app.job(name="flowcrash.parent", retry=Retry(max_attempts=1))
    def parent(log: str) -> str:
        mark(log, "parent")
        child = app.enqueue(kid, log)
        return f"parent got {child.result()}"

    @app.job(name="flowcrash.reindex", retry=Retry(max_attempts=1))
    def reindex(log: str, version: int) -> int:
        mark(log, f"reindex-{version}")
        return version

    if os.environ.get("FLOWCRASH_CRON"):

        @app.job(name="flowcrash.tick", cron="0 0 1 1 *")
        def tick() -> str:
            return stepstone.current().key or ""

    return app
