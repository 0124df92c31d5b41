"""The ``stepstone`` command, run for real in subprocesses against a temporary SQLite file."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def cli(tmp_path: Path) -> Run:
    """Run ``python -m stepstone ARGS`` in tmp_path, with the test app importable and
    ``$STEPSTONE_DATABASE_URL`` pointing at a fresh file there."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "src"), str(HERE), *filter(None, [env.get("PYTHONPATH")])]
    )
    env["STEPSTONE_DATABASE_URL"] = f"sqlite:///{tmp_path / 'jobs.db'}"
    env["COLUMNS"] = "200"
    env["NO_COLOR"] = "1"

    def run(
        *args: str, cwd: Path = tmp_path, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "stepstone", *args],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    return run


def enqueue(cli: Run, *args: str) -> str:
    done = cli("enqueue", *args)
    assert done.returncode == 0, done.stderr
    found = UUID.search(done.stdout)
    assert found, done.stdout
    return found[0]


def run_worker(cli: Run) -> None:
    done = cli("worker", "cli_app:app", "--until-idle", "--log-level", "warning")
    assert done.returncode == 0, done.stderr


def test_enqueue_by_name_prints_the_id_and_jobs_lists_it(cli: Run) -> None:
    """`enqueue NAME --kwargs` without code writes a queued job and prints its id."""
    job_id = enqueue(cli, "add", "--kwargs", '{"a": 2, "b": 1}', "--key", "k1")
    listed = cli("jobs")
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if job_id in line)
    assert "add" in row
    assert "k1" in row
    assert "queued" in row


def test_enqueue_quiet_prints_only_the_id(cli: Run) -> None:
    """`enqueue -q` prints the job id alone, for scripts."""
    done = cli("enqueue", "add", "--kwargs", '{"a": 1}', "-q")
    assert done.returncode == 0, done.stderr
    assert UUID.fullmatch(done.stdout.strip())


def test_enqueue_same_key_and_arguments_returns_the_first_job(cli: Run) -> None:
    """A second enqueue with the same key and arguments creates nothing and names the first job."""
    first = enqueue(cli, "add", "--kwargs", '{"a": 2}', "--key", "same")
    again = cli("enqueue", "add", "--kwargs", '{"a": 2}', "--key", "same")
    assert again.returncode == 0, again.stderr
    assert first in again.stdout
    assert "nothing new was enqueued" in again.stdout


def test_enqueue_key_conflict_exits_1(cli: Run) -> None:
    """The same key with other arguments is a conflict: exit 1, both argument sets named."""
    enqueue(cli, "add", "--kwargs", '{"a": 2}', "--key", "taken")
    clash = cli("enqueue", "add", "--kwargs", '{"a": 3}', "--key", "taken")
    assert clash.returncode == 1
    assert "taken" in clash.stderr
    assert '{"a":2}' in clash.stderr
    assert '{"a":3}' in clash.stderr
    assert "Traceback" not in clash.stderr


def test_enqueue_args_without_app_is_refused(cli: Run) -> None:
    """Positional --args need the job's signature, so without --app they are a usage error."""
    done = cli("enqueue", "add", "--args", "[1, 2]")
    assert done.returncode == 2
    assert "--args needs --app" in done.stderr
    assert "--kwargs" in done.stderr


def test_enqueue_with_app_checks_the_signature(cli: Run) -> None:
    """With --app, arguments are bound to the job's signature: a bad call exits 1."""
    job_id = enqueue(cli, "add", "--app", "cli_app:app", "--args", "[3, 4]", "--key", "k")
    bad = cli("enqueue", "add", "--app", "cli_app:app", "--args", "[1, 2, 3]")
    assert bad.returncode == 1
    assert "too many positional arguments" in bad.stderr
    run_worker(cli)
    shown = cli("show", job_id)
    assert re.search(r"result\s+10\b", shown.stdout), shown.stdout


def test_worker_runs_a_job_and_show_prints_its_steps_and_result(cli: Run) -> None:
    """`worker --until-idle` runs an enqueued job; `jobs` says it succeeded; `show KEY` prints
    its arguments, its step history and its result."""
    job_id = enqueue(cli, "add", "--kwargs", '{"a": 2, "b": 1}', "--key", "k1")
    run_worker(cli)
    listed = cli("jobs", "--state", "succeeded")
    assert job_id in listed.stdout
    shown = cli("show", "k1")
    assert shown.returncode == 0, shown.stderr
    assert job_id in shown.stdout
    assert re.search(r"step history.*double#0\s+.\s*ok\s+.\s*1\s+.\s*4\b", shown.stdout, re.S)
    assert re.search(r"result\s+5\b", shown.stdout), shown.stdout
    assert "errors (0)" in shown.stdout


def test_worker_text_logs_carry_the_action_and_job_fields(cli: Run) -> None:
    """The worker's text log lines show the action, then key=value fields, then the message."""
    job_id = enqueue(cli, "add", "--kwargs", '{"a": 1}')
    done = cli("worker", "cli_app:app", "--until-idle")
    assert done.returncode == 0, done.stderr
    assert re.search(
        rf"INFO +job\.succeeded job_id={job_id} job=add attempt=1 job {job_id} succeeded",
        done.stderr,
    ), done.stderr


def test_worker_accepts_a_file_path(cli: Run) -> None:
    """APP may be path/to/file.py:attribute."""
    job_id = enqueue(cli, "add", "--kwargs", '{"a": 1}')
    done = cli("worker", f"{HERE / 'cli_app.py'}:app", "--until-idle", "--log-format", "json")
    assert done.returncode == 0, done.stderr
    assert '"action": "job.succeeded"' in done.stderr
    assert job_id in cli("jobs", "--state", "succeeded").stdout


def test_show_prints_the_error_and_traceback_of_a_failed_job(cli: Run) -> None:
    """`show` of a failed job prints its final error and every recorded traceback."""
    enqueue(cli, "explode", "--kwargs", '{"message": "kaboom"}', "--key", "boom")
    run_worker(cli)
    shown = cli("show", "boom")
    assert shown.returncode == 0, shown.stderr
    assert "final error: ValueError: kaboom" in shown.stdout
    assert "errors (1)" in shown.stdout
    assert "Traceback (most recent call last)" in shown.stdout


def test_show_unknown_job_exits_1(cli: Run) -> None:
    """`show` of an id or key that names no job is an error, exit 1, no traceback."""
    done = cli("show", "no-such-job")
    assert done.returncode == 1
    assert "no job with id or key 'no-such-job'" in done.stderr
    assert "Traceback" not in done.stderr


def test_cancel_queued_job_then_again_then_unknown(cli: Run) -> None:
    """`cancel` cancels a queued job (exit 0), says nothing was done the second time (exit 0),
    and exits 1 for an unknown id."""
    job_id = enqueue(cli, "add", "--kwargs", '{"a": 1}', "--delay", "1h")
    first = cli("cancel", job_id)
    assert first.returncode == 0, first.stderr
    assert f"cancelled job {job_id}" in first.stdout
    assert job_id in cli("jobs", "--state", "cancelled").stdout
    second = cli("cancel", job_id)
    assert second.returncode == 0
    assert "nothing done" in second.stdout
    assert "already cancelled" in second.stdout
    unknown = cli("cancel", "no-such-job")
    assert unknown.returncode == 1
    assert "no-such-job" in unknown.stderr


def test_retry_failed_job_then_again_then_unknown(cli: Run) -> None:
    """`retry` queues a failed job again (exit 0), refuses a queued one saying why (exit 0),
    and exits 1 for an unknown id."""
    job_id = enqueue(cli, "explode", "--kwargs", '{"message": "kaboom"}')
    run_worker(cli)
    assert job_id in cli("jobs", "--state", "failed").stdout
    first = cli("retry", job_id)
    assert first.returncode == 0, first.stderr
    assert "queued again" in first.stdout
    assert job_id in cli("jobs", "--state", "queued").stdout
    second = cli("retry", job_id)
    assert second.returncode == 0
    assert "nothing done" in second.stdout
    assert "only failed or cancelled jobs can be retried" in second.stdout
    assert cli("retry", "no-such-job").returncode == 1


def test_prune_deletes_only_jobs_finished_long_enough_ago(cli: Run) -> None:
    """`prune --older-than` deletes finished jobs older than the duration, and says how many."""
    job_id = enqueue(cli, "add", "--kwargs", '{"a": 1}')
    run_worker(cli)
    kept = cli("prune", "--older-than", "7d")
    assert kept.returncode == 0, kept.stderr
    assert "deleted 0 job(s)" in kept.stdout
    pruned = cli("prune", "--older-than", "0s")
    assert "deleted 1 job(s)" in pruned.stdout
    assert cli("show", job_id).returncode == 1


def test_prune_rejects_a_bad_duration(cli: Run) -> None:
    """A duration that is not like 30s/15m/12h/7d is a usage error."""
    done = cli("prune", "--older-than", "5 fortnights")
    assert done.returncode == 2
    assert "not a duration" in done.stderr


def test_migrate_creates_the_schema_and_is_idempotent(cli: Run, tmp_path: Path) -> None:
    """`migrate --db` brings a new database up to date; a second run has nothing to do."""
    url = f"sqlite:///{tmp_path / 'other.db'}"
    first = cli("migrate", "--db", url)
    assert first.returncode == 0, first.stderr
    assert (tmp_path / "other.db").exists()
    second = cli("migrate", "--db", url)
    assert second.returncode == 0
    assert "up to date" in second.stdout


@pytest.mark.parametrize(
    ("app", "message"),
    [
        ("no_such_module_here:app", "no module named 'no_such_module_here'"),
        ("cli_app:missing", "has no attribute 'missing'"),
        ("cli_app:not_an_app", "is a str, not a stepstone.App"),
        ("cli_app", "APP must be module:attribute"),
        ("missing/file.py:app", "no such file"),
    ],
)
def test_bad_app_exits_2_with_one_line(cli: Run, app: str, message: str) -> None:
    """A worker APP that cannot be loaded gives one error line saying what is wrong, exit 2."""
    done = cli("worker", app, "--until-idle")
    assert done.returncode == 2
    assert message in done.stderr
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert done.stderr.startswith("error: ")


def test_bad_db_exits_1_naming_the_file(cli: Run, tmp_path: Path) -> None:
    """--db pointing at a file that is not a database: one error line naming it, exit 1."""
    (tmp_path / "notes.txt").write_text("these are my notes, not a database\n" * 100)
    done = cli("jobs", "--db", f"sqlite:///{tmp_path / 'notes.txt'}")
    assert done.returncode == 1
    assert "notes.txt" in done.stderr
    assert "not a stepstone database" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.demo
@pytest.mark.timeout(150)
def test_demo_runs_end_to_end(cli: Run) -> None:
    """`stepstone demo` kills a worker mid-job, finishes every job on another, and proves each
    premium attachment is indexed exactly once (exit 0)."""
    done = cli("demo", cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "killed worker A" in done.stdout
    assert "reclaimed" in done.stdout
    assert "replayed from its checkpoint" in done.stdout
    assert "jobs succeeded: 30/30" in done.stdout
    assert re.search(r"every premium attachment indexed exactly once: yes", done.stdout)
    assert "same job keys: 0 new, 30 already existed" in done.stdout
    assert re.search(r"30 new jobs, 30 succeeded; OCR calls 0, search index calls 0", done.stdout)
