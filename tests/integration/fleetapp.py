"""The app of the fleet and fault tests: a job of three trivial steps (``fleetapp:app``).

Every step body appends one line ``<pid> <job id> <step> <fence> <start time>`` to the file
that ``STEPSTONE_TEST_BODY_LOG`` names (one ``write`` on an ``O_APPEND`` descriptor, so
lines from many processes and threads never interleave). The fencing token of the run tells the
body whose checkpoint was kept (the checkpoint stores it) from those whose run lost its
job. The job returns the pid of the process that completed it.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from stepstone import App, Retry
from stepstone._context import current_run

#: The steps of ``fleetapp.three_steps``, in the order it calls them.
STEPS = ("fleet_one", "fleet_two", "fleet_three")
JOB = "fleetapp.three_steps"

_log_lock = threading.Lock()
_log_fds: dict[str, int] = {}


def record(log: str, step: str) -> None:
    """Append one line saying that this process starts the body of ``step`` now."""
    with _log_lock:
        fd = _log_fds.get(log)
        if fd is None:
            fd = _log_fds[log] = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    run = current_run.get()  # the run's fencing token is not public: read it from the run
    assert run is not None
    line = f"{os.getpid()} {run.job_id} {step} {run.fence} {time.time():.6f}\n"
    os.write(fd, line.encode())


def body_log() -> str:
    """The file step bodies append to (``STEPSTONE_TEST_BODY_LOG``)."""
    return os.environ.get("STEPSTONE_TEST_BODY_LOG") or os.devnull


@dataclass(frozen=True)
class BodyRun:
    """One execution of a step body: where, of which job and step, under which fence, when."""

    pid: int
    job_id: str
    step: str
    fence: int
    started: float


def read_body_log(path: Path) -> list[BodyRun]:
    """The step body executions recorded in ``path``, in the order they started."""
    if not path.exists():
        return []
    runs = []
    for line in path.read_text().splitlines():
        pid, job_id, step, fence, started = line.split()
        runs.append(BodyRun(int(pid), job_id, step, int(fence), float(started)))
    return runs


def build_app(url: str | None, *, lease: float = 2.0, step_seconds: float = 0.0) -> App:
    """An App declaring ``fleetapp.three_steps``; each step body sleeps ``step_seconds``."""
    app = App(url, lease=lease, shutdown_grace=5.0)

    def body(step: str, value: int) -> int:
        record(body_log(), step)
        if step_seconds:
            time.sleep(step_seconds)
        return value + 1

    @app.step(name="fleet_one")
    def fleet_one(n: int) -> int:
        return body("fleet_one", n)

    @app.step(name="fleet_two")
    def fleet_two(n: int) -> int:
        return body("fleet_two", n)

    @app.step(name="fleet_three")
    def fleet_three(n: int) -> int:
        return body("fleet_three", n)

    @app.job(name=JOB, retry=Retry(max_attempts=1))
    def three_steps(n: int) -> int:
        assert fleet_three(fleet_two(fleet_one(n))) == n + 3
        return os.getpid()

    return app


app = build_app(
    os.environ.get("STEPSTONE_DATABASE_URL"),
    lease=float(os.environ.get("STEPSTONE_TEST_LEASE", "2.0")),
    step_seconds=float(os.environ.get("STEPSTONE_TEST_STEP_SECONDS", "0")),
)
