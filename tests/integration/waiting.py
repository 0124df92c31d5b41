"""What the process tests share: waiting for a milestone of a worker subprocess, and
counting step body runs from the log files their apps write."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path


def wait_for(predicate: Callable[[], object], timeout: float = 20.0, what: str = "it") -> None:
    """Poll until ``predicate()`` is true, failing the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def body_runs(log: Path) -> Counter[tuple[str, str]]:
    """How many times each step body ran, by (what, role), from lines ``<what> <role> ...``."""
    if not log.exists():
        return Counter()
    return Counter(tuple(line.split()[:2]) for line in log.read_text().splitlines())
