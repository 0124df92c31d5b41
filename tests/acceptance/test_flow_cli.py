"""``stepstone signal``, and what ``jobs``, ``show`` and ``cancel`` say about parked jobs and
cron schedules, run for real in subprocesses against a fresh database (a SQLite file; the
signal command on PostgreSQL too)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stepstone import App
from stepstone._schedule import Schedule
from stepstone._store.base import JobRecord

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


class Cli:
    """The ``stepstone`` command in tmp_path, with ``flow_cli_app`` importable,
    ``$STEPSTONE_DATABASE_URL`` set to this test's database and times shown in UTC."""

    def __init__(self, url: str, tmp_path: Path) -> None:
        self.url = url
        self.tmp_path = tmp_path
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT / "src"), str(HERE), *filter(None, [self.env.get("PYTHONPATH")])]
        )
        self.env["STEPSTONE_DATABASE_URL"] = url
        self.env["COLUMNS"] = "250"
        self.env["NO_COLOR"] = "1"
        self.env["TZ"] = "UTC"

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "stepstone", *args],
            cwd=self.tmp_path,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def ok(self, *args: str) -> str:
        done = self(*args)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def run_worker(self, app: str = "flow_cli_app:app") -> None:
        """Run a worker until nothing is due: parked jobs stay waiting."""
        self.ok("worker", app, "--until-idle", "--log-level", "warning")

    def start_worker(self, app: str = "flow_cli_app:app") -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "stepstone", "worker", app, "--log-level", "warning"],
            cwd=self.tmp_path,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def record(self, key: str) -> JobRecord:
        """The job with this key, read through the API."""
        app = App(self.url)
        try:
            found = app.store.job_get_by_key(key)
        finally:
            app.close()
        assert found is not None, key
        return found

    def wait_for_state(self, key: str, state: str, timeout: float = 20.0) -> JobRecord:
        deadline = time.monotonic() + timeout
        while True:
            record = self.record(key)
            if record.state == state:
                return record
            assert time.monotonic() < deadline, f"job {key} is still {record.state}"
            time.sleep(0.05)


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    """The command on a fresh SQLite file."""
    return Cli(f"sqlite:///{tmp_path / 'jobs.db'}", tmp_path)


@pytest.fixture
def any_cli(db_url: str, tmp_path: Path) -> Cli:
    """The command on a fresh database of each backend (SQLite, PostgreSQL)."""
    return Cli(db_url, tmp_path)


@pytest.fixture
def worker() -> Iterator[Callable[[Cli], None]]:
    """Start ``stepstone worker flow_cli_app:app`` in the background; stopped at teardown."""
    started: list[subprocess.Popen[bytes]] = []

    def start(cli: Cli) -> None:
        started.append(cli.start_worker())

    yield start
    for process in started:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def row_of(listing: str, text: str) -> str:
    """The line of a table that contains ``text``."""
    found = [line for line in listing.splitlines() if text in line]
    assert found, f"{text!r} not in\n{listing}"
    return found[0]


# stepstone signal ---------------------------------------------------------------------------
def test_signal_wakes_a_waiting_job_which_a_running_worker_finishes(
    any_cli: Cli, worker: Callable[[Cli], None]
) -> None:
    """A job parked in wait_for() is woken by `stepstone signal`, and a worker already
    running finishes it with the payload; the CLI says how many jobs it woke."""
    any_cli.ok("enqueue", "wait_payment", "--kwargs", '{"order": "o1"}', "--key", "pay:o1")
    worker(any_cli)
    waiting = any_cli.wait_for_state("pay:o1", "waiting")
    assert waiting.wait_event == "paid:o1"
    assert waiting.lease_owner is None  # parked: no worker slot held

    sent = any_cli.ok("signal", "paid:o1", "--payload", '{"amount": 5}')
    assert "sent signal 'paid:o1'; woke 1 waiting job(s)" in sent

    any_cli.wait_for_state("pay:o1", "succeeded")
    shown = any_cli.ok("show", "pay:o1")
    assert re.search(r'"amount":\s*5', shown), shown
    assert re.search(r'"total":\s*200', shown), shown
    assert "stepstone.wait_for#0" in shown  # the outcome is part of the history


def test_signal_sent_before_the_job_waits_is_kept_and_delivered(cli: Cli) -> None:
    """A signal that woke no job is kept: a job enqueued before it receives it when it
    reaches wait_for(), without parking."""
    cli.ok("enqueue", "wait_payment", "--kwargs", '{"order": "o2"}', "--key", "pay:o2")
    sent = cli.ok("signal", "paid:o2", "--payload", '"cash"')
    assert "sent signal 'paid:o2'; woke 0 waiting job(s); it is kept until pruned" in sent
    cli.run_worker()
    record = cli.record("pay:o2")
    assert record.state == "succeeded"
    assert record.result == '{"payload":"cash","total":200}'


def test_signal_without_payload_delivers_null(cli: Cli) -> None:
    """With no --payload, wait_for() returns None."""
    cli.ok("enqueue", "wait_payment", "--kwargs", '{"order": "o3"}', "--key", "pay:o3")
    cli.run_worker()
    assert cli.record("pay:o3").state == "waiting"
    assert "woke 1 waiting job(s)" in cli.ok("signal", "paid:o3")
    cli.run_worker()
    assert cli.record("pay:o3").result == '{"payload":null,"total":200}'


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["paid:o4", "--payload", "{amount: 5}"], "--payload must be a JSON value"),
        (["paid:o4", "--payload", "[1, 2"], "--payload must be a JSON value"),
        (["paid:o4", "--payload", "NaN"], "NaN is not JSON"),
        (["stepstone.job:x"], "reserved"),
        ([""], "needs an event name"),
        ([], "the following arguments are required: EVENT"),
    ],
)
def test_a_signal_that_cannot_be_sent_exits_2_and_wakes_nothing(
    cli: Cli, args: list[str], message: str
) -> None:
    """Bad JSON in --payload, a reserved or empty event name, or no event at all: a usage
    error (exit 2) naming the problem, and no job is woken."""
    cli.ok("enqueue", "wait_payment", "--kwargs", '{"order": "o4"}', "--key", "pay:o4")
    cli.run_worker()
    done = cli("signal", *args)
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert cli.record("pay:o4").state == "waiting"


# stepstone jobs, show and cancel --------------------------------------------------------------
def test_jobs_and_show_say_what_a_waiting_job_waits_for(cli: Cli) -> None:
    """`jobs` gets a "waiting for" column when a listed job waits: a signal, a child job, or
    time (a durable sleep, with its wake-up in "when"); `show` says it too."""
    cli.ok("enqueue", "parent", "--kwargs", '{"order": "o5"}', "--key", "parent:o5")
    cli.ok("enqueue", "nap", "--key", "nap")
    cli.run_worker()
    parent = cli.record("parent:o5")
    child = cli.record(f"{parent.id}/stepstone.enqueue#0")
    assert (parent.state, child.state) == ("waiting", "waiting")

    listing = cli.ok("jobs")
    assert re.search(r"┃ when\s+┃ waiting for\s+┃ last error", listing), listing
    assert re.search(rf"waiting .*│ -\s+│ job {child.id}", row_of(listing, "parent:o5"))
    assert re.search(r"waiting .*│ -\s+│ signal paid:o5", row_of(listing, child.id))
    assert re.search(r"waiting .*│ in (59m\d\ds|1h)\s+│ time", row_of(listing, "nap"))

    shown = cli.ok("show", "parent:o5")
    assert re.search(rf"waiting for\s+job {child.id}", shown), shown
    assert "no timer" in shown
    child_shown = cli.ok("show", child.id)
    assert re.search(r"waiting for\s+signal paid:o5", child_shown), child_shown
    assert re.search(rf"parent\s+{parent.id}", child_shown), child_shown


def test_jobs_has_no_waiting_column_when_nothing_waits(cli: Cli) -> None:
    """Without a waiting job in the listing, the table keeps its usual columns."""
    cli.ok("enqueue", "nap", "--key", "nap", "--delay", "1h")
    listing = cli.ok("jobs")
    assert "waiting for" not in listing
    assert "cron schedules" not in listing


def test_child_job_wakes_its_parent_when_it_ends(cli: Cli) -> None:
    """Signalling the child's event finishes the child, whose end wakes the parent: both
    succeed, the parent with the child's result."""
    cli.ok("enqueue", "parent", "--kwargs", '{"order": "o6"}', "--key", "parent:o6")
    cli.run_worker()
    assert "woke 1 waiting job(s)" in cli.ok("signal", "paid:o6", "--payload", "7")
    cli.run_worker()
    parent = cli.record("parent:o6")
    assert parent.state == "succeeded"
    assert parent.result == '{"payload":7,"total":200}'


def test_cancel_says_children_are_cancelled_too(cli: Cli) -> None:
    """`cancel` of a parent waiting for its child cancels the child as well, and says so;
    `cancel --help` says it too."""
    cli.ok("enqueue", "parent", "--kwargs", '{"order": "o7"}', "--key", "parent:o7")
    cli.run_worker()
    parent = cli.record("parent:o7")
    child = cli.record(f"{parent.id}/stepstone.enqueue#0")
    done = cli.ok("cancel", "parent:o7")
    assert f"cancelled job {parent.id} (parent), which was waiting" in done
    assert "with any unfinished jobs it enqueued" in done
    assert cli.record(f"{parent.id}/stepstone.enqueue#0").state == "cancelled"
    cancelled = cli.ok("jobs", "--state", "cancelled")
    assert parent.id in cancelled
    assert child.id in cancelled
    assert "its children" in cli.ok("--help")
    assert "the unfinished jobs it enqueued" in " ".join(cli.ok("cancel", "--help").split())


# cron schedules -------------------------------------------------------------------------------
def test_jobs_lists_cron_schedules_with_their_next_run(cli: Cli) -> None:
    """Once a worker serving a cron job has kept its schedule, `jobs` prints a "cron
    schedules" table with the next tick (absolute and relative), and the tick's job is listed
    as queued under its key; `--state` leaves the schedules out, `--name` keeps only its own."""
    before = time.time()
    cli.run_worker("flow_cli_app:cron_app")
    schedule = Schedule(
        "0 3 * * *", timezone="Europe/Berlin", missed="latest", fn=lambda: None, name="x"
    )
    tick = schedule.next_after(before)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(tick))
    key = schedule.key(tick).replace("cron:x:", "cron:nightly_report:")

    listing = cli.ok("jobs")
    assert "cron schedules" in listing
    row = row_of(listing, f"│ nightly_report │ {stamp} UTC")
    assert re.search(r"│ in \d+(h|m|d)", row), row
    assert re.search(r"queued\s+│ 0\s+│ in \d+", row_of(listing, key)), listing

    assert "cron schedules" not in cli.ok("jobs", "--state", "queued")
    assert "cron schedules" in cli.ok("jobs", "--name", "nightly_report")
    other = cli.ok("jobs", "--name", "nap")
    assert "no jobs match" in other
    assert "cron schedules" not in other


def test_jobs_marks_an_overdue_schedule(cli: Cli) -> None:
    """A schedule whose next tick passed without a worker keeping it is marked overdue."""
    app = App(cli.url)
    try:
        app.store.schedule_advance("stale_report", expected=None, tick=time.time() - 3600, now=0)
    finally:
        app.close()
    row = row_of(cli.ok("jobs"), "stale_report")
    assert re.search(r"1h ago, overdue: no worker serving it is running", row), row
