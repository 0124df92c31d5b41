"""Shared fixtures: a fresh database per test (SQLite and PostgreSQL), a fake clock,
subprocess workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import stepstone
from stepstone import App
from stepstone.testing import EPOCH as _EPOCH
from stepstone.testing import FakeClock

from .backends import POSTGRES, SQLITE_FILE, params

#: Where the stepstone under test lives, so subprocesses run the very same code.
SRC = Path(stepstone.__file__).resolve().parent.parent
INTEGRATION = Path(__file__).resolve().parent / "integration"

#: Where the fake clock starts (re-exported for tests that compare times).
EPOCH = _EPOCH


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """A path for a fresh SQLite database file, unique to this test."""
    return tmp_path / "stepstone.db"


@pytest.fixture(params=params([SQLITE_FILE, POSTGRES]))
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of this test's fresh database: every behaviour test runs on SQLite and on
    PostgreSQL (a schema of its own per test)."""
    with request.param.fresh_url(tmp_path) as url:
        yield url


@pytest.fixture(autouse=True)
def _close_apps(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every App a test opens is closed after it, so no test leaks connections."""
    opened: list[App] = []
    original = App.__init__

    def tracking_init(self: App, *args: object, **kwargs: object) -> None:
        original(self, *args, **kwargs)  # type: ignore[arg-type]
        opened.append(self)

    monkeypatch.setattr(App, "__init__", tracking_init)
    yield
    for each in opened:
        each.close()


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock starting at ``EPOCH``."""
    return FakeClock()


@pytest.fixture
def make_app(db_url: str) -> Iterator[Callable[..., App]]:
    """A factory of Apps on this test's database; each is closed at teardown."""
    apps: list[App] = []

    def make(**options: object) -> App:
        app = App(db_url, **options)  # type: ignore[arg-type]
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()


@pytest.fixture
def app(make_app: Callable[..., App], clock: FakeClock) -> App:
    """An App on this test's fresh database, driven by the fake clock."""
    return make_app(clock=clock)


WORKER_SCRIPT = """
import logging, os, sys
logging.basicConfig(
    level=logging.INFO, stream=sys.stderr, format="%(levelname)s:%(name)s:%(message)s"
)
import importlib
app = importlib.import_module(os.environ.get("STEPSTONE_TEST_MODULE", "workerapp")).build_app(
    os.environ["STEPSTONE_DATABASE_URL"],
    lease=float(os.environ["STEPSTONE_TEST_LEASE"]),
    grace=float(os.environ["STEPSTONE_TEST_GRACE"]),
)
app.run_worker(
    concurrency=int(os.environ["STEPSTONE_TEST_CONCURRENCY"]),
    until_idle=os.environ["STEPSTONE_TEST_UNTIL_IDLE"] == "1",
)
"""


class WorkerProcess:
    """A worker subprocess running ``tests/integration/workerapp.py``; stderr goes to a file."""

    def __init__(self, popen: subprocess.Popen[bytes], stderr_path: Path) -> None:
        self.popen = popen
        self.stderr_path = stderr_path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def signal(self, sig: int) -> None:
        self.popen.send_signal(sig)

    def wait(self, timeout: float = 15.0) -> int:
        return self.popen.wait(timeout)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


@pytest.fixture
def spawn_worker(db_url: str, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start worker subprocesses on this test's database (killed at teardown if still alive).

    ``spawn_worker(role=, lease=1.0, grace=30.0, concurrency=2, until_idle=False,
    module="workerapp", env_extra=None)``: the worker runs ``<module>.build_app(url, lease=,
    grace=)`` from ``tests/integration``; the role is passed as ``STEPSTONE_TEST_ROLE`` so
    the module's steps know they run in the subprocess.
    """
    started: list[WorkerProcess] = []

    def spawn(
        *,
        role: str = "subprocess",
        lease: float = 1.0,
        grace: float = 30.0,
        concurrency: int = 2,
        until_idle: bool = False,
        module: str = "workerapp",
        env_extra: dict[str, str] | None = None,
    ) -> WorkerProcess:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(SRC), str(INTEGRATION), *filter(None, [env.get("PYTHONPATH")])]
        )
        env.update(
            STEPSTONE_DATABASE_URL=db_url,
            STEPSTONE_TEST_ROLE=role,
            STEPSTONE_TEST_LEASE=str(lease),
            STEPSTONE_TEST_GRACE=str(grace),
            STEPSTONE_TEST_CONCURRENCY=str(concurrency),
            STEPSTONE_TEST_UNTIL_IDLE="1" if until_idle else "0",
            STEPSTONE_TEST_MODULE=module,
            **(env_extra or {}),
        )
        stderr_path = tmp_path / f"worker-{len(started)}.stderr"
        with stderr_path.open("wb") as stderr:
            popen = subprocess.Popen(
                [sys.executable, "-c", WORKER_SCRIPT],
                env=env,
                cwd=tmp_path,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        worker = WorkerProcess(popen, stderr_path)
        started.append(worker)
        return worker

    yield spawn
    for worker in started:
        if worker.popen.poll() is None:
            try:
                worker.popen.send_signal(signal.SIGCONT)
                worker.popen.kill()
            except ProcessLookupError:
                pass
            worker.popen.wait(10)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """With STEPSTONE_REQUIRE_POSTGRES set (CI), a skipped PostgreSQL test fails the run."""
    if not os.environ.get("STEPSTONE_REQUIRE_POSTGRES"):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    skipped = [
        report
        for report in reporter.stats.get("skipped", [])
        if "postgres" in getattr(report, "keywords", {})
    ]
    if skipped:
        reporter.write_line(
            f"error: {len(skipped)} PostgreSQL test(s) were skipped, but "
            "STEPSTONE_REQUIRE_POSTGRES is set",
            red=True,
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
