"""The seed's story end to end, with real worker processes running the example app
(``examples/attachment_indexer.py``) against its fake services: backfills over 500
attachments, half of them already processed, and a worker SIGKILLed in the middle."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stepstone import App

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
sys.path.insert(0, str(ROOT))

from examples import fake_services  # noqa: E402

ATTACHMENTS = [f"att-{n:03d}" for n in range(500)]
CHANNELS = [
    channel for channel in (f"ch-{n}" for n in range(40)) if fake_services.is_premium(channel)
]

BACKFILL = """
import json, sys
from examples.attachment_indexer import app, add_attachment_to_search_index
items = [{"channel_id": c, "attachment_id": a} for c, a in json.load(sys.stdin)]
done = app.enqueue_many(add_attachment_to_search_index, items, key=sys.argv[1], batch_size=100)
print(json.dumps({"new": done.new, "existing": done.existing}))
"""


def items(count: int) -> list[tuple[str, str]]:
    return [(CHANNELS[n % len(CHANNELS)], ATTACHMENTS[n]) for n in range(count)]


@pytest.fixture
def env(db_url: str, tmp_path: Path) -> dict[str, str]:
    services = tmp_path / "services.db"
    values = dict(
        os.environ,
        STEPSTONE_DATABASE_URL=db_url,
        STEPSTONE_DEMO_SERVICES=str(services),
        STEPSTONE_DEMO_LEASE="1.5",
        PYTHONPATH=os.pathsep.join([str(ROOT), str(SRC)]),
    )
    os.environ[fake_services.ENV] = str(services)
    fake_services.create()
    return values


@pytest.fixture
def workers(env: dict[str, str], tmp_path: Path) -> Iterator[Callable[[], subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        stderr = (tmp_path / f"worker-{len(started)}.log").open("wb")
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "stepstone",
                "worker",
                "examples.attachment_indexer:app",
                "--concurrency",
                "8",
            ],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        started.append(worker)
        return worker

    yield start
    for worker in started:
        if worker.poll() is None:
            worker.kill()
        worker.wait(10)
    os.environ.pop(fake_services.ENV, None)


def backfill(env: dict[str, str], count: int, key: str) -> dict[str, int]:
    done = subprocess.run(
        [sys.executable, "-c", BACKFILL, key],
        input=json.dumps(items(count)).encode(),
        env=env,
        cwd=ROOT,
        capture_output=True,
        timeout=60,
        check=True,
    )
    return json.loads(done.stdout)


def count(app: App, state: str) -> int:
    return len(app.store.job_list(states=[state], limit=100_000))


def wait_until(predicate: Callable[[], bool], *, timeout: float = 90.0, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_backfills_over_500_attachments_with_a_worker_killed(
    db_url: str, env: dict[str, str], workers: Callable[[], subprocess.Popen[bytes]]
) -> None:
    """Half the attachments are processed first; a backfill over all 500 runs OCR only
    for the other half, survives a SIGKILLed worker, and indexes every attachment once;
    an identical backfill enqueues nothing; a backfill under new job keys runs 500 jobs
    that call neither OCR nor the index (their memo keys answer)."""
    app = App(db_url)
    first = workers()
    assert backfill(env, 250, "index:{attachment_id}") == {"new": 250, "existing": 0}
    wait_until(lambda: count(app, "succeeded") == 250, what="the first half")
    before = fake_services.report()
    assert sorted(before) == ATTACHMENTS[:250]

    second = workers()
    assert backfill(env, 500, "index:{attachment_id}") == {"new": 250, "existing": 250}
    wait_until(lambda: count(app, "succeeded") >= 300, what="some of the second half")
    first.send_signal(signal.SIGKILL)
    assert first.wait(10) == -signal.SIGKILL
    workers()
    wait_until(lambda: count(app, "succeeded") == 500, what="every job")
    assert count(app, "failed") == 0

    after = fake_services.report()
    assert sorted(after) == ATTACHMENTS
    for attachment in ATTACHMENTS[:250]:  # already processed: not touched again
        assert after[attachment] == before[attachment], attachment
    ocr_runs = 0
    for attachment in ATTACHMENTS[250:]:
        report = after[attachment]
        assert report.documents == 1, (attachment, report)
        assert report.ocr_ok >= 1, (attachment, report)
        ocr_runs += report.ocr_ok
    # OCR ran once per new attachment, plus at most one per job the killed worker held.
    assert 250 <= ocr_runs <= 250 + 8
    assert all(report.documents == 1 for report in after.values())

    assert backfill(env, 500, "index:{attachment_id}") == {"new": 0, "existing": 500}
    assert backfill(env, 500, "reindex:{attachment_id}") == {"new": 500, "existing": 0}
    wait_until(lambda: count(app, "succeeded") == 1000, what="the reindex jobs")
    assert fake_services.report() == after  # every step answered from its memo key
    second.send_signal(signal.SIGTERM)
    assert second.wait(20) == 0
