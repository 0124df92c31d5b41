"""The app of the flow-control process tests (``limitsapp``): concurrency limits, rate
limits, queues and cron schedules across real worker processes.

Job bodies append one line per event to the log file they are given:
``<event> <tag> <role> <pid> <wall time>``, so tests can reconstruct which bodies ran
where and when, across processes. Only a subprocess (``STEPSTONE_TEST_ROLE`` other than
``test``) hangs in ``limits.hold`` (after touching ``<log>.holding``), to be killed there.

``LIMITSAPP_CRON=1`` in the environment also declares a yearly cron job
(``limits.yearly``), so only the tests that ask for it have a schedule. The module-level
``app`` (``stepstone worker limitsapp:app``) is built on ``$STEPSTONE_DATABASE_URL``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import stepstone
from stepstone import App, Limit, Rate, Retry
from stepstone._clock import Clock

#: The key of the rate-limited OCR step, shared by every process.
OCR_RATE = Rate(10, per=1.0, key="ocr")
#: The rate of the step a killed worker waits on: one call per hour, so a worker that
#: wants a second call sleeps for its token (in 1 s naps) until the test kills it.
SLOW_RATE = Rate(1, per=3600.0, key="slow")


def role() -> str:
    """Who runs this code: ``test`` in the pytest process, else the subprocess's role."""
    return os.environ.get("STEPSTONE_TEST_ROLE", "test")


def record(log: str, event: str, tag: object) -> None:
    """Append ``<event> <tag> <role> <pid> <time>``; O_APPEND keeps lines whole."""
    with open(log, "a") as file:
        file.write(f"{event} {tag} {role()} {os.getpid()} {time.time():.6f}\n")


def events(log: str | Path) -> list[tuple[str, str, str, int, float]]:
    """The log's lines as (event, tag, role, pid, time), in file order."""
    path = Path(log)
    if not path.exists():
        return []
    found = []
    for line in path.read_text().splitlines():
        event, tag, who, pid, when = line.split()
        found.append((event, tag, who, int(pid), float(when)))
    return found


def build_app(
    url: str | None, *, lease: float = 1.0, grace: float = 30.0, clock: Clock | None = None
) -> App:
    """An App declaring the flow-control jobs (``clock`` lets a test run it in the future)."""
    options: dict[str, Any] = {"poll_interval": 0.1}
    if clock is not None:
        options["clock"] = clock
    app = App(url, lease=lease, shutdown_grace=grace, **options)

    @app.job(name="limits.channel", concurrency=Limit(1, key="{channel}"))
    def channel_work(channel: str, index: int, log: str, hold: float) -> str:
        record(log, "start", f"{channel}/{index}")
        time.sleep(hold)
        record(log, "end", f"{channel}/{index}")
        return f"{channel}/{index}"

    @app.job(name="limits.hold", concurrency=Limit(1, key="{group}"), retry=Retry(max_attempts=1))
    def hold(group: str, tag: str, log: str) -> str:
        record(log, "start", tag)
        if role() != "test":
            Path(f"{log}.holding").touch()
            time.sleep(120)  # killed here, holding the group's slot
        record(log, "end", tag)
        return f"{tag} by {role()}"

    @app.step(name="limits.ocr", rate=OCR_RATE)
    def ocr(page: int, log: str) -> str:
        record(log, "ocr", page)
        return f"text of page {page}"

    @app.job(name="limits.scan")
    def scan(page: int, log: str) -> str:
        return ocr(page, log)

    @app.step(name="limits.slow_call", rate=SLOW_RATE)
    def slow_call(tag: str, log: str) -> str:
        record(log, "call", tag)
        return f"{tag} by {role()}"

    @app.job(name="limits.slow", retry=Retry(max_attempts=1))
    def slow(tag: str, log: str) -> str:
        return slow_call(tag, log)

    @app.job(name="limits.in_queue_a", queue="a")
    def in_queue_a(tag: str) -> str:
        return f"a:{tag}"

    @app.job(name="limits.in_queue_b", queue="b")
    def in_queue_b(tag: str) -> str:
        return f"b:{tag}"

    @app.job(name="limits.in_queue_c", queue="c")
    def in_queue_c(tag: str) -> str:
        return f"c:{tag}"

    if os.environ.get("LIMITSAPP_CRON") == "1":

        @app.job(name="limits.yearly", cron="0 0 1 1 *")
        def yearly() -> str:
            return str(stepstone.current().key)

    return app


_cli_app: App | None = None


def __getattr__(name: str) -> Any:
    """``limitsapp:app`` for the ``stepstone worker`` command, built on first use."""
    global _cli_app
    if name != "app":
        raise AttributeError(name)
    if _cli_app is None:
        _cli_app = build_app(os.environ["STEPSTONE_DATABASE_URL"])
    return _cli_app
