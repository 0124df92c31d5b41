"""PostgreSQL connection faults: workers log them, back off, reconnect and carry on.

The store names its connections ``stepstone:<schema>`` (``application_name``), so a test
can terminate exactly its own workers' backends while other tests run beside it. The
test's own checks read the database on connections named otherwise.

The ``pgrestart`` test restarts the whole server. It runs only when selected with
``-m pgrestart`` (``make test`` runs it alone): it cuts every connection of every test
running at the same time.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import dbcheck
import psycopg
import pytest
import workerapp
from tests.backends import POSTGRES
from tests.conftest import WorkerProcess

from stepstone import App, StoreError, Worker
from stepstone._context import idempotency_key

STEPS = ("first_step", "second_step", "third_step")
#: How many jobs of three steps each run while connections are being cut.
JOBS = 500
#: How often all of the workers' connections are terminated: each connection lives at
#: most this long, ample time for hundreds of queries.
KILL_EVERY = 0.15
#: A test fails when no job finishes for this long while the workers should be running.
STALL = 15.0


@pytest.fixture
def db_url(tmp_path: Path) -> Iterator[str]:
    """A fresh PostgreSQL schema (these tests are about PostgreSQL only)."""
    with POSTGRES.fresh_url(tmp_path) as url:
        yield url


def application_name(db_url: str) -> str:
    """The ``application_name`` of the store's connections on this URL's schema."""
    return f"stepstone:{dbcheck.postgres_schema(db_url)[1]}"[:63]


class BackendKiller:
    """A thread that terminates every backend of the test's stores each ``every`` seconds,
    from a connection of its own, until stopped."""

    def __init__(self, db_url: str, every: float) -> None:
        self.conninfo = dbcheck.postgres_schema(db_url)[0]
        self.application = application_name(db_url)
        self.every = every
        self.terminated = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="backend-killer", daemon=True)

    def __enter__(self) -> BackendKiller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        with psycopg.connect(
            self.conninfo, autocommit=True, application_name="stepstone-test-killer"
        ) as conn:
            while not self._stop.wait(self.every):
                row = conn.execute(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) "
                    "FROM pg_stat_activity WHERE application_name = %s",
                    (self.application,),
                ).fetchone()
                self.terminated += row[0] if row else 0


def enqueue_jobs(app: App, log: Path, count: int) -> list[str]:
    """``count`` jobs of three steps whose bodies append to ``log``; none of them blocks."""
    Path(f"{log}.release").touch()  # second_step waits for this file in a subprocess
    return [app.enqueue("workerapp.three_steps", str(log)).id for _ in range(count)]


def unfinished(db_url: str) -> int:
    """How many jobs are not finished, read on a connection of the test's own."""
    rows = dbcheck.query(
        db_url,
        "SELECT count(*) FROM {schema}.jobs "
        "WHERE state NOT IN ('succeeded', 'failed', 'cancelled')",
    )
    return int(rows[0][0])


def wait_until_finished(db_url: str, done: Callable[[], bool] | None = None) -> None:
    """Wait until every job has finished (and ``done()``), failing if none finishes for
    ``STALL`` seconds on end: the workers are stuck."""
    last, changed = -1, time.monotonic()
    while True:
        left = unfinished(db_url)
        if left == 0 and (done is None or done()):
            return
        if left != last:
            last, changed = left, time.monotonic()
        elif time.monotonic() - changed > STALL:
            raise AssertionError(
                f"the workers are stuck: {left} job(s) unfinished and none finished for {STALL:g}s"
            )
        time.sleep(0.1)


def body_runs(log: Path) -> Counter[str]:
    """How many times a step body ran, by idempotency key (one per step of one job)."""
    return Counter(line.split()[3] for line in log.read_text().splitlines())


def check_outcome(db_url: str, job_ids: list[str], log: Path, logged: str) -> None:
    """Every job succeeded and none stays running; every step has exactly one checkpoint,
    and every step body that ran belongs to a checkpointed step. A step body ran more than
    once only in a job whose lease the worker says (in ``logged``) it lost."""
    states = dbcheck.query(db_url, "SELECT state, count(*) FROM {schema}.jobs GROUP BY state")
    assert dict(states) == {"succeeded": len(job_ids)}
    history = dbcheck.checkpoints(db_url)
    expected = [f"{step}#0" for step in STEPS]
    assert {
        job_id: names
        for job_id in job_ids
        if (names := [c.name for c in history.get(job_id, [])]) != expected
    } == {}
    runs = body_runs(log)
    jobs_by_key = {
        idempotency_key(job_id, f"{step}#0"): job_id for job_id in job_ids for step in STEPS
    }
    assert set(runs) == set(jobs_by_key)
    lost = "\n".join(line for line in logged.splitlines() if "lease lost" in line)
    repeated = {jobs_by_key[key] for key, n in runs.items() if n > 1}
    assert {job_id for job_id in repeated if job_id not in lost} == set()


def run_worker_thread(app: App, failures: list[BaseException]) -> threading.Thread:
    """``app.run_worker(until_idle=True)`` on a thread of its own; exceptions go to
    ``failures``."""

    def run() -> None:
        try:
            app.run_worker(concurrency=4, until_idle=True)
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=run, name="in-process-worker", daemon=True)
    thread.start()
    return thread


def stop_worker_thread(app: App, thread: threading.Thread) -> None:
    """Stop an in-process worker that is still running (a failed test): stop it, close its
    store so that calls stuck retrying give up, and wait for it."""
    if thread.is_alive():
        for worker in list(app.runtime.workers):
            worker.stop(now=True)
        app.close()
    thread.join(15)


@pytest.mark.postgres
def test_worker_process_rides_out_terminated_connections(
    db_url: str, tmp_path: Path, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    """A worker process whose database connections are terminated again and again runs
    every job to success with one checkpoint per step (a step body runs again only where
    the worker logs a lost lease), and logs each reconnect as a WARNING."""
    log = tmp_path / "bodies.log"
    app = workerapp.build_app(db_url)
    job_ids = enqueue_jobs(app, log, JOBS)
    worker = spawn_worker(concurrency=4)
    with BackendKiller(db_url, every=KILL_EVERY) as killer:
        wait_until_finished(db_url)
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=20) == 0, worker.stderr()
    assert killer.terminated > 0

    stderr = worker.stderr()
    check_outcome(db_url, job_ids, log, stderr)
    assert "WARNING:stepstone:database connection failed" in stderr
    assert "WARNING:stepstone:LISTEN connection lost" in stderr


@pytest.mark.postgres
def test_in_process_worker_rides_out_terminated_connections(
    db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``app.run_worker`` on a thread, its connections terminated again and again, runs
    every job to success with one checkpoint per step (a step body runs again only where
    the worker logs a lost lease), and logs each reconnect as a WARNING with the action
    ``store.reconnecting``."""
    caplog.set_level(logging.INFO, logger="stepstone")
    log = tmp_path / "bodies.log"
    app = workerapp.build_app(db_url)
    job_ids = enqueue_jobs(app, log, JOBS)
    failures: list[BaseException] = []
    with BackendKiller(db_url, every=KILL_EVERY) as killer:
        thread = run_worker_thread(app, failures)
        try:
            wait_until_finished(db_url, done=lambda: not thread.is_alive())
        finally:
            stop_worker_thread(app, thread)
    assert failures == []
    assert killer.terminated > 0

    check_outcome(db_url, job_ids, log, caplog.text)
    reconnects = [r for r in caplog.records if getattr(r, "action", None) == "store.reconnecting"]
    assert reconnects
    assert {r.levelno for r in reconnects} == {logging.WARNING}


@pytest.mark.postgres
def test_an_outcome_write_held_up_by_a_lock_is_no_lost_lease(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A job whose success is written while a heartbeat of its lease waits behind it on the
    same row lock succeeds, and the worker logs no ``lease lost``: its own outcome is no
    lost lease."""
    caplog.set_level(logging.INFO, logger="stepstone")
    app = App(db_url, lease=3.0)  # the first heartbeat comes a second after the job starts
    finish = threading.Event()

    @app.job(name="faults.wait_then_finish")
    def wait_then_finish() -> str:
        finish.wait(30)
        return "done"

    handle = app.enqueue(wait_then_finish)
    failures: list[BaseException] = []
    thread = run_worker_thread(app, failures)
    conninfo, schema = dbcheck.postgres_schema(db_url)

    def waiting_since(fragment: str) -> float | None:
        """When the store's statement containing ``fragment`` began waiting for a lock."""
        rows = dbcheck.query(
            db_url,
            "SELECT extract(epoch FROM query_start)::float8 FROM pg_stat_activity "
            "WHERE wait_event_type = 'Lock' AND application_name = %s "
            "AND strpos(query, %s) > 0",
            (application_name(db_url), fragment),
        )
        return rows[0][0] if rows else None

    try:
        deadline = time.monotonic() + 30
        while handle.state != "running":
            assert time.monotonic() < deadline, "the job never started"
            time.sleep(0.005)
        with psycopg.connect(conninfo, application_name="stepstone-test-locker") as locker:
            locker.execute(f'SELECT 1 FROM "{schema}".jobs WHERE id = %s FOR UPDATE', (handle.id,))
            finish.set()  # the job returns; the write of its success waits for the lock
            deadline = time.monotonic() + 30
            while (outcome := waiting_since("'succeeded'")) is None or (
                heartbeat := waiting_since("unnest")
            ) is None:
                assert time.monotonic() < deadline, "the outcome and a heartbeat never waited"
                time.sleep(0.01)
            assert outcome <= heartbeat, "the heartbeat queued first: the test proves nothing"
            locker.commit()  # the success goes first, then the heartbeat finds the job done
        assert handle.result(timeout=30) == "done"
        thread.join(30)
    finally:
        stop_worker_thread(app, thread)
    assert failures == []
    lost = [r.getMessage() for r in caplog.records if "lease lost" in r.getMessage()]
    assert lost == []


def restart_server() -> None:
    """Restart the local PostgreSQL cluster (fast shutdown: every session is cut)."""
    version = sorted(p.name for p in Path("/etc/postgresql").iterdir())[0]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"],
        check=True,
        capture_output=True,
        timeout=60,
    )


def ensure_server_running(base_url: str) -> None:
    """Start the local cluster if it is down, and wait until it takes connections."""
    deadline = time.monotonic() + 60
    while True:
        try:
            psycopg.connect(base_url, connect_timeout=2).close()
            return
        except psycopg.OperationalError:
            status = subprocess.run(
                ["pg_lsclusters", "--no-header"], check=False, capture_output=True
            )
            if b"online" not in status.stdout:
                version = sorted(p.name for p in Path("/etc/postgresql").iterdir())[0]
                subprocess.run(
                    ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"],
                    check=False,
                    capture_output=True,
                    timeout=60,
                )
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@pytest.mark.pgrestart
def test_workers_ride_out_a_server_restart(
    request: pytest.FixtureRequest,
    db_url: str,
    tmp_path: Path,
    spawn_worker: Callable[..., WorkerProcess],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The server restarts in the middle of a run: a worker process and an in-process
    worker both log the lost connections, reconnect, and run every job to success with
    one checkpoint per step; no job stays running, and the only step bodies that ran twice
    were in flight when the server went down (at most the two workers' concurrency)."""
    if "pgrestart" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("restarts the PostgreSQL server: run it alone with -m pgrestart")
    caplog.set_level(logging.INFO, logger="stepstone")
    base_url = dbcheck.postgres_schema(db_url)[0]
    log = tmp_path / "bodies.log"
    app = workerapp.build_app(db_url)
    job_ids = enqueue_jobs(app, log, 4 * JOBS)
    worker = spawn_worker(concurrency=4)
    failures: list[BaseException] = []
    thread = run_worker_thread(app, failures)
    try:
        deadline = time.monotonic() + 30
        while not log.exists() or not {"subprocess", "test"} <= {
            line.split()[1] for line in log.read_text().splitlines()
        }:  # both workers are at work
            assert time.monotonic() < deadline, "the workers never started"
            time.sleep(0.01)
        try:
            restart_server()
        finally:
            ensure_server_running(base_url)
        wait_until_finished(db_url, done=lambda: not thread.is_alive())
    finally:
        stop_worker_thread(app, thread)
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0, worker.stderr()
    assert failures == []

    check_outcome(db_url, job_ids, log, worker.stderr() + caplog.text)
    assert sum(n - 1 for n in body_runs(log).values()) <= 4 + 4  # in flight at the restart
    assert "WARNING:stepstone:database connection failed" in worker.stderr()
    assert any(getattr(r, "action", None) == "store.reconnecting" for r in caplog.records)


def test_a_worker_started_before_its_database_waits_for_it(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker whose PostgreSQL server refuses connections keeps waiting (and says so)
    instead of exiting, and still stops cleanly when asked; a wrong database name is not
    waited for."""
    app = App("postgresql://postgres@127.0.0.1:1/postgres")  # nothing listens on port 1

    @app.job(name="waits")
    def waits() -> None:
        """Never runs."""

    worker = Worker(app)
    caplog.set_level(logging.WARNING, logger="stepstone")
    thread = threading.Thread(target=worker.run)
    thread.start()
    deadline = time.monotonic() + 10
    while "waits for the database" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.05)
    assert thread.is_alive()
    worker.stop()
    thread.join(10)
    assert not thread.is_alive()
    assert "waits for the database" in caplog.text
    wrong_database = db_url.split("?", 1)[0].rsplit("/", 1)[0] + "/stepstone_no_such_database"
    with pytest.raises(StoreError, match="does not exist") as raised:
        _ = App(wrong_database).store
    assert raised.value.transient is False
