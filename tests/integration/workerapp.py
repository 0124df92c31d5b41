"""A small app for the worker subprocesses of the crash tests (``workerapp:app``).

Each step body appends a line ``<what> <role> <pid> <idempotency key>`` to the job's log
file, so tests can count body executions across processes. ``STEPSTONE_TEST_ROLE`` tells
a subprocess from the test process (role ``test``): only a subprocess blocks in
``second_step`` (until a ``.release`` file appears), and only a subprocess may kill itself.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import stepstone
from stepstone import App, Retry


def role() -> str:
    """Who runs this code: ``test`` in the pytest process, else the subprocess's role."""
    return os.environ.get("STEPSTONE_TEST_ROLE", "test")


def record(log: str, what: str) -> None:
    """Append one line per step body execution, with the step's idempotency key."""
    key = stepstone.current().idempotency_key
    with open(log, "a") as file:
        file.write(f"{what} {role()} {os.getpid()} {key}\n")


def build_app(url: str | None, *, lease: float = 1.0, grace: float = 30.0) -> App:
    """An App declaring the crash tests' jobs; ``grace`` is its shutdown grace period."""
    app = App(url, lease=lease, shutdown_grace=grace)

    @app.step(name="first_step")
    def first_step(log: str) -> str:
        record(log, "first")
        return "first"

    @app.step(name="second_step")
    def second_step(log: str) -> str:
        record(log, "second")
        if role() != "test":
            Path(f"{log}.blocked").touch()
            release = Path(f"{log}.release")
            deadline = time.monotonic() + 60
            while not release.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
        return f"second by {role()}"

    @app.job(name="workerapp.two_steps", retry=Retry(max_attempts=1))
    def two_steps(log: str) -> str:
        return f"{first_step(log)} then {second_step(log)}"

    @app.step(name="third_step")
    def third_step(log: str) -> str:
        record(log, "third")
        return f"third by {role()}"

    @app.job(name="workerapp.three_steps", retry=Retry(max_attempts=1))
    def three_steps(log: str) -> str:
        return f"{first_step(log)} then {second_step(log)} then {third_step(log)}"

    @app.step(name="kill_self")
    def kill_self(log: str) -> None:
        if role() == "test":
            raise RuntimeError("kill_self must not run in the test process")
        record(log, "kill")
        os.kill(os.getpid(), signal.SIGKILL)

    @app.job(name="workerapp.poison")
    def poison(log: str) -> str:
        kill_self(log)
        return "unreachable"

    fresh_steps: list[int] = []

    @app.step(name="advance")
    def advance(log: str, n: int) -> int:
        record(log, f"advance-{n}")
        fresh_steps.append(n)
        return n

    @app.job(name="workerapp.progress_then_die")
    def progress_then_die(log: str, steps: int) -> int:
        """Each run in a subprocess checkpoints one new step, then its process dies."""
        total = 0
        for n in range(steps):
            total += advance(log, n)
            if fresh_steps and role() != "test":
                os.kill(os.getpid(), signal.SIGKILL)
        return total

    return app


app = build_app(
    os.environ.get("STEPSTONE_DATABASE_URL"),
    lease=float(os.environ.get("STEPSTONE_TEST_LEASE", "1.0")),
    grace=float(os.environ.get("STEPSTONE_TEST_GRACE", "30.0")),
)
