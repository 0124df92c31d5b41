"""The app of the durable-sleep, signal and child-job process tests (``flowapp``).

Step bodies append ``<what> <role> <pid> <idempotency key>`` to the job's log file, so
tests count body executions across processes. Only the first worker subprocess (role
``subprocess``) hangs to be killed, and only when the test asks for it with a flag file
next to the log: ``<log>.hang-before-park`` (hang in the job's own code after its steps
were checkpointed, right before it parks; touches ``<log>.before-park`` first).
Resuming workers get another role (``resumer``) and the test process has role ``test``.
"""

from __future__ import annotations

import os
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


def maybe_hang_before_park(log: str) -> None:
    """In the first subprocess, with the flag file present: announce, then wait to be killed."""
    if role() == "subprocess" and Path(f"{log}.hang-before-park").exists():
        Path(f"{log}.before-park").touch()
        time.sleep(120)


def build_app(url: str | None, *, lease: float = 1.0, grace: float = 30.0) -> App:
    """An App declaring the flow process tests' jobs."""
    app = App(url, lease=lease, shutdown_grace=grace)

    @app.step(name="flow_first")
    def first(log: str) -> str:
        record(log, "first")
        return "first"

    @app.step(name="flow_last")
    def last(log: str, detail: str) -> str:
        record(log, "last")
        return f"last({detail}) by {role()}"

    @app.job(name="flowapp.sleeper", retry=Retry(max_attempts=1))
    def sleeper(log: str, seconds: float) -> str:
        """first, a durable sleep of ``seconds`` (real time), then last."""
        head = first(log)
        maybe_hang_before_park(log)
        stepstone.sleep(seconds)
        return f"{head} then {last(log, 'slept')}"

    @app.job(name="flowapp.waiter", retry=Retry(max_attempts=1))
    def waiter(log: str, event: str) -> str:
        """first, a wait for ``event``, then last with its payload."""
        head = first(log)
        maybe_hang_before_park(log)
        payload = stepstone.wait_for(event)
        return f"{head} then {last(log, str(payload))}"

    @app.step(name="flow_child_work")
    def child_work(log: str, n: int) -> int:
        record(log, f"child-{n}")
        return n * 10

    @app.job(name="flowapp.child", retry=Retry(max_attempts=1))
    def child(log: str, n: int) -> int:
        return child_work(log, n)

    @app.job(name="flowapp.parent", retry=Retry(max_attempts=1))
    def parent(log: str, count: int) -> list[int]:
        """Enqueue ``count`` children from the job's own code, then gather their results."""
        head = first(log)
        handles = [app.enqueue(child, log, n) for n in range(count)]
        maybe_hang_before_park(log)
        results = stepstone.gather(*handles)
        return [len(head), *results]

    return app
