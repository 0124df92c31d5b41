"""``stepstone backfill``, ``forget`` and ``memos``, run for real in subprocesses against a
fresh database (a SQLite file; the main paths on PostgreSQL too)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from stepstone import App

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
KEY = "index:{attachment_id}"

Run = Callable[..., subprocess.CompletedProcess[str]]


class Cli:
    """The ``stepstone`` command in tmp_path, with ``backfill_app`` importable and
    ``$STEPSTONE_DATABASE_URL`` set to this test's database."""

    def __init__(self, url: str, tmp_path: Path) -> None:
        self.url = url
        self.tmp_path = tmp_path
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT / "src"), str(HERE), *filter(None, [self.env.get("PYTHONPATH")])]
        )
        self.env["STEPSTONE_DATABASE_URL"] = url
        self.env["COLUMNS"] = "200"
        self.env["NO_COLOR"] = "1"

    def __call__(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "stepstone", *args],
            cwd=self.tmp_path,
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    def backfill(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return self("backfill", *args, **kwargs)

    def start_worker(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "stepstone", "worker", "backfill_app:app"],
            cwd=self.tmp_path,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def write(self, name: str, text: str) -> str:
        (self.tmp_path / name).write_text(text)
        return name

    def jobs(self) -> dict[str, dict[str, Any]]:
        """Every job's arguments, by key (or id), read through the API."""
        app = App(self.url)
        return {
            record.key or record.id: json.loads(record.args)
            for record in app.store.job_list(limit=10_000)
        }


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    """The command on a fresh SQLite file."""
    return Cli(f"sqlite:///{tmp_path / 'jobs.db'}", tmp_path)


@pytest.fixture
def any_cli(db_url: str, tmp_path: Path) -> Cli:
    """The command on a fresh database of each backend (SQLite, PostgreSQL)."""
    return Cli(db_url, tmp_path)


@pytest.fixture
def worker(request: pytest.FixtureRequest) -> Iterator[Callable[[Cli], None]]:
    """Start ``stepstone worker backfill_app:app`` in the background; stopped at teardown."""
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


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_csv_rows_become_jobs_with_typed_arguments(any_cli: Cli) -> None:
    """Each CSV row is one job; its text cells are converted to the parameters' types, and an
    empty cell for a parameter with a default means that default."""
    any_cli.write(
        "rows.csv",
        "attachment_id,channel,premium,weight\n1,c1,true,\n2,c2,false,2.5\n3,c3,,\n",
    )
    out = ok(any_cli.backfill("backfill_app:index", "--from", "rows.csv", "--key", KEY))
    assert "enqueued 3 new, 0 already existed" in out
    assert any_cli.jobs() == {
        "index:1": {"attachment_id": 1, "channel": "c1", "premium": True, "weight": 1.0},
        "index:2": {"attachment_id": 2, "channel": "c2", "premium": False, "weight": 2.5},
        "index:3": {"attachment_id": 3, "channel": "c3", "premium": False, "weight": 1.0},
    }


def test_rerun_after_an_interruption_enqueues_only_the_missing_rows(any_cli: Cli) -> None:
    """A backfill stopped halfway and run again over the whole file enqueues only the rows
    whose keys are not taken yet."""
    rows = [f"{n},c{n}\n" for n in range(1, 7)]
    any_cli.write("half.csv", "attachment_id,channel\n" + "".join(rows[:3]))
    any_cli.write("all.csv", "attachment_id,channel\n" + "".join(rows))
    first = ok(any_cli.backfill("backfill_app:index", "--from", "half.csv", "--key", KEY))
    assert "enqueued 3 new, 0 already existed" in first
    again = ok(any_cli.backfill("backfill_app:index", "--from", "all.csv", "--key", KEY))
    assert "enqueued 3 new, 3 already existed" in again
    assert sorted(any_cli.jobs()) == [f"index:{n}" for n in range(1, 7)]


def test_wait_follows_the_jobs_until_a_worker_has_run_them_all(
    any_cli: Cli, worker: Callable[[Cli], None]
) -> None:
    """--wait returns once every job of the backfill (new and existing) has succeeded, exit 0."""
    any_cli.write("rows.jsonl", "".join(f'{{"number": {n}}}\n' for n in range(1, 5)))
    ok(any_cli.backfill("backfill_app:check", "--from", "rows.jsonl", "--key", "check:{number}"))
    any_cli.write("more.jsonl", "".join(f'{{"number": {n}}}\n' for n in range(1, 7)))
    worker(any_cli)
    done = any_cli.backfill(
        "backfill_app:check", "--from", "more.jsonl", "--key", "check:{number}", "--wait"
    )
    out = ok(done)
    assert "enqueued 2 new, 4 already existed" in out
    assert "finished: 6 succeeded, 0 failed, 0 cancelled" in out


def test_wait_exits_1_when_a_job_fails(cli: Cli, worker: Callable[[Cli], None]) -> None:
    """--wait exits 1 when a job of the backfill failed, and names it with its error."""
    cli.write("rows.csv", "number,fail\n1,\n2,true\n3,false\n")
    worker(cli)
    done = cli.backfill(
        "backfill_app:check", "--from", "rows.csv", "--key", "check:{number}", "--wait"
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "finished: 2 succeeded, 1 failed, 0 cancelled" in done.stdout
    assert "key 'check:2': ValueError: number 2 was asked to fail" in done.stderr
    assert "error: 1 job(s) did not succeed" in done.stderr


def test_json_lines_objects_and_arrays(cli: Cli) -> None:
    """A JSON Lines file gives arguments by name (an object) or by position (an array); values
    are converted to the parameters' types; blank lines are skipped."""
    cli.write(
        "rows.jsonl",
        '{"attachment_id": "10", "channel": "c1"}\n\n[11, "c2", true]\n'
        '{"attachment_id": 12, "channel": "c3", "weight": 3}\n',
    )
    out = ok(cli.backfill("backfill_app:index", "--from", "rows.jsonl", "--key", KEY))
    assert "enqueued 3 new, 0 already existed" in out
    assert cli.jobs() == {
        "index:10": {"attachment_id": 10, "channel": "c1", "premium": False, "weight": 1.0},
        "index:11": {"attachment_id": 11, "channel": "c2", "premium": True, "weight": 1.0},
        "index:12": {"attachment_id": 12, "channel": "c3", "premium": False, "weight": 3.0},
    }


def test_format_is_detected_and_stdin_is_read(cli: Cli) -> None:
    """A file without a known extension is JSON Lines if it starts with { or [, else CSV;
    .tsv is tab-separated; --from - reads stdin."""
    cli.write("export.txt", '{"attachment_id": 1, "channel": "c"}\n')
    ok(cli.backfill("backfill_app:index", "--from", "export.txt", "--key", KEY))
    cli.write("export.tsv", "attachment_id\tchannel\n3\tc, with a comma\n")
    ok(cli.backfill("backfill_app:index", "--from", "export.tsv", "--key", KEY))
    out = ok(
        cli.backfill(
            "backfill_app:index", "--from", "-", "--key", KEY, stdin="attachment_id,channel\n2,c\n"
        )
    )
    assert "enqueued 1 new, 0 already existed" in out
    jobs = cli.jobs()
    assert sorted(jobs) == ["index:1", "index:2", "index:3"]
    assert jobs["index:3"]["channel"] == "c, with a comma"


def test_malformed_rows_enqueue_nothing_and_are_named_by_line(cli: Cli) -> None:
    """If any row is bad, nothing is enqueued: each bad row is printed as `row N: reason`, N
    its line in the file (the header is line 1), and the command exits 1."""
    cli.write(
        "rows.csv",
        "attachment_id,channel,premium\n"
        "1,c1,true\n"
        "x,c1,false\n"  # line 3: not an int
        '2,"two\nlines",maybe\n'  # lines 4-5: not a bool
        "3\n"  # line 6: too few fields
        "4,c4,\n",
    )
    done = cli.backfill("backfill_app:index", "--from", "rows.csv", "--key", KEY)
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert lines[0] == "row 3: attachment_id='x' is not a valid int: Expected `int`, got `str`"
    assert lines[1] == "row 4: premium='maybe' is not a valid bool: Expected `bool`, got `str`"
    assert lines[2] == "row 6: 1 field(s), but the header has 3"
    assert lines[3] == "error: 3 bad row(s) in rows.csv; nothing was enqueued"
    assert cli.jobs() == {}


def test_malformed_json_lines_are_named_by_line(cli: Cli) -> None:
    """In JSON Lines, a line that is not JSON, not an object or array, or does not fit the job's
    signature is a bad row, named by its line (blank lines count)."""
    cli.write(
        "rows.jsonl",
        '{"attachment_id": 1, "channel": "c"}\n\n{"attachment_id": 2\n42\n'
        '{"attachment_id": 3, "channel": "c", "colour": "red"}\n[4]\n',
    )
    done = cli.backfill("backfill_app:index", "--from", "rows.jsonl")
    assert done.returncode == 1
    assert "row 3: not valid JSON" in done.stderr
    assert "row 4: a JSON int; each line must be a JSON object" in done.stderr
    assert "row 5: the arguments do not fit index(): got an unexpected keyword argument" in (
        done.stderr
    )
    assert "row 6: the arguments do not fit index(): missing a required argument: 'channel'" in (
        done.stderr
    )
    assert "4 bad row(s)" in done.stderr
    assert cli.jobs() == {}


def test_more_than_twenty_bad_rows_are_counted(cli: Cli) -> None:
    """The first 20 bad rows are printed; the rest are counted."""
    cli.write("rows.csv", "attachment_id,channel\n" + "oops,c\n" * 25)
    done = cli.backfill("backfill_app:index", "--from", "rows.csv")
    assert done.returncode == 1
    assert done.stderr.count("is not a valid int") == 20
    assert "row 21:" in done.stderr
    assert "row 22:" not in done.stderr
    assert "... and 5 more bad row(s)" in done.stderr
    assert "error: 25 bad row(s) in rows.csv; nothing was enqueued" in done.stderr


def test_a_bad_header_is_row_1(cli: Cli) -> None:
    """A header naming an unknown column or lacking a required parameter is reported once."""
    cli.write("rows.csv", "attachment_id,chanel\n1,c\n2,c\n")
    done = cli.backfill("backfill_app:index", "--from", "rows.csv")
    assert done.returncode == 1
    assert "row 1: the header names column(s) 'chanel'" in done.stderr
    assert "has no column for the required parameter(s) channel" in done.stderr
    assert "row 2" not in done.stderr


def test_repeated_keys_within_the_file(cli: Cli) -> None:
    """A key repeated with the same arguments counts as existing; with other arguments it is a
    bad row naming the row that used it first."""
    cli.write("same.csv", "attachment_id,channel\n1,c\n1,c\n")
    out = ok(cli.backfill("backfill_app:index", "--from", "same.csv", "--key", KEY))
    assert "enqueued 1 new, 1 already existed" in out
    cli.write("other.csv", "attachment_id,channel\n7,c\n7,d\n")
    done = cli.backfill("backfill_app:index", "--from", "other.csv", "--key", KEY)
    assert done.returncode == 1
    assert "row 3: key 'index:7' is also the key of row 2, with other arguments" in done.stderr
    assert "index:7" not in cli.jobs()


def test_dry_run_counts_new_and_existing_rows_and_writes_nothing(cli: Cli) -> None:
    """--dry-run checks the file, says how many rows would be new and how many keys already
    name their job, writes nothing, and exits 0."""
    cli.write("half.csv", "attachment_id,channel\n1,c\n2,c\n")
    cli.write("all.csv", "attachment_id,channel\n1,c\n2,c\n3,c\n4,c\n5,c\n")
    ok(cli.backfill("backfill_app:index", "--from", "half.csv", "--key", KEY))
    out = ok(cli.backfill("backfill_app:index", "--from", "all.csv", "--key", KEY, "--dry-run"))
    assert "dry run: 5 row(s) checked; 3 would be new, 2 already exist; nothing was written" in out
    assert sorted(cli.jobs()) == ["index:1", "index:2"]


def test_dry_run_reports_a_key_taken_by_other_arguments(cli: Cli) -> None:
    """--dry-run reports a row whose key is taken by a job with other arguments, exit 1."""
    ok(
        cli(
            "enqueue",
            "index",
            "--kwargs",
            '{"attachment_id": 9, "channel": "x"}',
            "--key",
            "index:2",
        )
    )
    cli.write("rows.csv", "attachment_id,channel\n1,c\n2,c\n")
    done = cli.backfill("backfill_app:index", "--from", "rows.csv", "--key", KEY, "--dry-run")
    assert done.returncode == 1
    assert "row 3: key 'index:2' is taken by job" in done.stderr
    assert list(cli.jobs()) == ["index:2"]


def test_key_conflict_while_writing_names_the_row_and_keeps_earlier_batches(cli: Cli) -> None:
    """A key taken by a job with other arguments stops the backfill with exit 1, naming the row;
    the batches before it stay written."""
    ok(
        cli(
            "enqueue",
            "index",
            "--kwargs",
            '{"attachment_id": 9, "channel": "x"}',
            "--key",
            "index:4",
        )
    )
    cli.write("rows.csv", "attachment_id,channel\n" + "".join(f"{n},c\n" for n in range(1, 7)))
    done = cli.backfill("backfill_app:index", "--from", "rows.csv", "--key", KEY, "--batch", "2")
    assert done.returncode == 1
    assert "error: row 5: key 'index:4' is taken by job" in done.stderr
    assert "the batches before it were written (2 new, 0 already existed)" in done.stderr
    jobs = cli.jobs()
    assert {"index:1", "index:2"} <= set(jobs)
    assert jobs["index:4"]["attachment_id"] == 9
    assert "index:5" not in jobs
    assert "index:6" not in jobs


def test_rate_limited_backfill_enqueues_every_row(cli: Cli) -> None:
    """--rate paces the writes and still enqueues every row (no timing is asserted); --queue
    and --priority apply to every job."""
    cli.write("rows.csv", "attachment_id,channel\n" + "".join(f"{n},c\n" for n in range(30)))
    done = cli.backfill(
        "backfill_app:index",
        "--from",
        "rows.csv",
        "--rate",
        "100/s",
        "--batch",
        "7",
        "--queue",
        "slow",
        "--priority",
        "3",
    )
    assert "enqueued 30 new, 0 already existed" in ok(done)
    records = App(cli.url).store.job_list(limit=100)
    assert len(records) == 30
    assert {(record.queue, record.priority) for record in records} == {("slow", 3)}


def test_db_option_writes_to_that_database(cli: Cli, tmp_path: Path) -> None:
    """--db sends the jobs to that database instead of the one the job's App names."""
    other = f"sqlite:///{tmp_path / 'other.db'}"
    cli.write("rows.csv", "attachment_id,channel\n1,c\n")
    ok(cli.backfill("backfill_app:index", "--from", "rows.csv", "--db", other))
    assert cli.jobs() == {}
    listed = ok(cli("jobs", "--db", other))
    assert "index" in listed


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["backfill_app:app"], "is an App; name one of its jobs"),
        (["backfill_app:nothing"], "has no attribute 'nothing'; jobs it defines: check, index"),
        (["backfill_app:index", "--key", "{attachment}"], "has no parameter 'attachment'"),
        (["backfill_app:index", "--rate", "fast"], "'fast' is not a rate"),
        (["backfill_app:index", "--dry-run", "--wait"], "pass --dry-run or --wait, not both"),
    ],
)
def test_a_command_line_that_cannot_work_exits_2(cli: Cli, args: list[str], message: str) -> None:
    """A JOB that is not a job, a key template naming no parameter, or a bad option: exit 2."""
    cli.write("rows.csv", "attachment_id,channel\n1,c\n")
    done = cli.backfill(*args, "--from", "rows.csv")
    assert done.returncode == 2
    assert message in done.stderr


def test_memos_lists_memo_keys_and_forget_drops_them(cli: Cli) -> None:
    """`memos [PREFIX]` lists the memo keys the jobs stored; `forget KEY` drops one,
    `forget PREFIX --prefix` every key starting so; each says how many it dropped."""
    cli.write("rows.csv", "attachment_id,channel\n1,c\n2,c\n30,c\n")
    ok(cli.backfill("backfill_app:index", "--from", "rows.csv"))
    ok(cli("worker", "backfill_app:app", "--until-idle", "--log-level", "warning"))
    listed = ok(cli("memos"))
    for key in ("ocr:1", "ocr:2", "ocr:30"):
        assert f"│ {key} " in listed
    assert '"text of 30"' in listed
    assert "never" in listed
    prefixed = ok(cli("memos", "ocr:3"))
    assert "ocr:30" in prefixed
    assert "ocr:1 " not in prefixed
    assert "dropped 1 memo(s) with key 'ocr:1'" in ok(cli("forget", "ocr:1"))
    assert "nothing done: no memo with key 'ocr:1'" in ok(cli("forget", "ocr:1"))
    dropped = ok(cli("forget", "ocr:", "--prefix"))
    assert "dropped 2 memo(s) whose key starts with 'ocr:'" in dropped
    assert "no memos match" in ok(cli("memos"))
    assert cli("forget", "", "--prefix").returncode == 2
