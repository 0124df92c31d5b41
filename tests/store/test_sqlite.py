"""What only the SQLite store promises: WAL, clear errors for bad files and URLs, many processes.

The multi-process tests fork (the children inherit this module), meet at a barrier so
that they really act at the same moment, and report back through a queue.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stepstone._store import open_store
from stepstone._store.base import JobState
from stepstone._store.queries import load_migrations
from stepstone._store.sqlite import SQLiteStore  # noqa: F401 - imported before forks drop root
from stepstone.errors import StoreError

from .support import NAMES, claim_due, insert

_fork = multiprocessing.get_context("fork")
_NOBODY = 65534


def _url(path: Path) -> str:
    return f"sqlite:///{path}"


# --- files --------------------------------------------------------------------------------------


def test_a_file_database_is_in_wal_mode(tmp_path: Path) -> None:
    """A file store switches the database to WAL, so readers never wait for writers."""
    path = tmp_path / "jobs.db"
    open_store(_url(path)).close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


def test_the_url_is_kept(tmp_path: Path) -> None:
    """``store.url`` is the URL the store was opened with."""
    url = _url(tmp_path / "jobs.db")
    store = open_store(url)
    try:
        assert store.url == url
    finally:
        store.close()


def test_a_relative_url_is_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``sqlite:///jobs.db`` is a file in the working directory, ``sqlite:////abs`` absolute."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    open_store("sqlite:///sub/jobs.db").close()
    assert (tmp_path / "sub" / "jobs.db").is_file()
    absolute = tmp_path / "absolute.db"
    open_store(f"sqlite:///{absolute}").close()
    assert absolute.is_file()


def test_a_file_that_is_not_a_database_is_a_store_error(tmp_path: Path) -> None:
    """Opening a file that is not SQLite raises StoreError naming it, and leaves it alone."""
    path = tmp_path / "notes.txt"
    content = b"these are my notes, not a database\n" * 200
    path.write_bytes(content)
    with pytest.raises(StoreError) as caught:
        open_store(_url(path))
    assert str(path) in str(caught.value)
    assert path.read_bytes() == content


def test_a_folder_that_does_not_exist_is_a_store_error(tmp_path: Path) -> None:
    """A path in a missing folder raises StoreError naming the file."""
    path = tmp_path / "missing" / "jobs.db"
    with pytest.raises(StoreError) as caught:
        open_store(_url(path))
    assert str(path) in str(caught.value)


def _open_and_report(url: str, results: Any) -> None:
    try:
        if os.geteuid() == 0:
            os.setgroups([])
            os.setgid(_NOBODY)
            os.setuid(_NOBODY)
        open_store(url).close()
        results.put("opened")
    except StoreError as exc:
        results.put(f"StoreError: {exc}")
    except BaseException as exc:
        results.put(f"a driver exception escaped: {type(exc).__module__}.{exc!r}")


def _open_as_unprivileged_user(path: Path) -> str:
    """Open a store on ``path`` in a process that cannot bypass permissions (not root)."""
    results = _fork.Queue()
    child = _fork.Process(target=_open_and_report, args=(_url(path), results))
    child.start()
    try:
        return str(results.get(timeout=60))
    finally:
        child.join(timeout=30)


@pytest.fixture
def user_dir(tmp_path: Path) -> Iterator[Path]:
    """A folder the unprivileged user of ``_open_as_unprivileged_user`` may write to."""
    if os.geteuid() == 0:
        # Root ignores permissions: the store is opened as nobody, who must reach the folder.
        folder = Path(tempfile.mkdtemp(prefix="stepstone-perm-"))
        folder.chmod(0o755)
        os.chown(folder, _NOBODY, _NOBODY)
    else:
        folder = tmp_path / "perm"
        folder.mkdir()
    try:
        yield folder
    finally:
        folder.chmod(0o755)
        shutil.rmtree(folder)


def _assert_names_the_file(outcome: str, path: Path) -> None:
    assert outcome.startswith("StoreError:"), f"expected a StoreError on open, got: {outcome}"
    assert str(path) in outcome, outcome
    assert "corrupt" not in outcome, f"a permission problem reported as corruption: {outcome}"


def test_a_read_only_file_is_a_store_error(user_dir: Path) -> None:
    """A database file the user may not write raises StoreError naming the file."""
    path = user_dir / "jobs.db"
    open_store(_url(path)).close()
    path.chmod(0o444)
    _assert_names_the_file(_open_as_unprivileged_user(path), path)


def test_a_new_file_in_a_read_only_folder_is_a_store_error(user_dir: Path) -> None:
    """A fresh database in a folder the user may not write raises StoreError naming the file."""
    path = user_dir / "jobs.db"
    user_dir.chmod(0o555)
    _assert_names_the_file(_open_as_unprivileged_user(path), path)


def test_a_database_in_a_read_only_folder_is_a_store_error(user_dir: Path) -> None:
    """A writable database whose folder is read-only (no room for -wal, -shm) is a StoreError."""
    path = user_dir / "jobs.db"
    open_store(_url(path)).close()
    for leftover in user_dir.glob("jobs.db-*"):
        leftover.unlink()
    if os.geteuid() == 0:
        os.chown(path, _NOBODY, _NOBODY)
    user_dir.chmod(0o555)
    _assert_names_the_file(_open_as_unprivileged_user(path), path)


# --- URLs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["mysql://user@host/db", "jobs.db", "sqlite3:///jobs.db", "file:///tmp/jobs.db"]
)
def test_an_unknown_url_scheme_is_a_store_error(url: str) -> None:
    """A URL that names no backend raises StoreError quoting it and showing what works."""
    with pytest.raises(StoreError) as caught:
        open_store(url)
    message = str(caught.value)
    assert url in message
    assert "sqlite:///" in message
    assert "postgresql://" in message


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///", "sqlite://jobs.db", "sqlite://host/x"])
def test_a_malformed_sqlite_url_is_a_store_error(url: str) -> None:
    """A sqlite URL without a path raises StoreError quoting it and showing the right forms."""
    with pytest.raises(StoreError) as caught:
        open_store(url)
    message = str(caught.value)
    assert url in message
    assert "sqlite:///:memory:" in message


# --- many processes -----------------------------------------------------------------------------


def _open_in_rounds(urls: list[str], start: Any, results: Any) -> None:
    for url in urls:
        try:
            start.wait(timeout=30)
            open_store(url).close()
            results.put((url, "ok"))
        except Exception as exc:
            results.put((url, f"{type(exc).__name__}: {exc}"))


def test_processes_opening_a_fresh_file_at_once_all_succeed(tmp_path: Path) -> None:
    """Processes that create and migrate one new file at the same moment all succeed."""
    processes, rounds = 6, 30
    urls = [_url(tmp_path / f"round-{i}.db") for i in range(rounds)]
    start = _fork.Barrier(processes)
    results = _fork.Queue()
    children = [
        _fork.Process(target=_open_in_rounds, args=(urls, start, results)) for _ in range(processes)
    ]
    for child in children:
        child.start()
    outcomes = [results.get(timeout=60) for _ in range(processes * rounds)]
    for child in children:
        child.join(timeout=30)
    failures = [outcome for outcome in outcomes if outcome[1] != "ok"]
    assert failures == []
    for url in urls:
        conn = sqlite3.connect(url[len("sqlite:///") :])
        try:
            assert conn.execute("SELECT count(*) FROM stepstone_migrations").fetchone()[0] == len(
                load_migrations("sqlite")
            )
        finally:
            conn.close()


def _claim_until_empty(url: str, owner: str, start: Any, results: Any) -> None:
    try:
        store = open_store(url)
        try:
            start.wait(timeout=30)
            claimed: list[tuple[str, int]] = []
            while batch := claim_due(store, owner=owner, limit=5):
                claimed += [(job.id, job.fence) for job in batch]
        finally:
            store.close()
        results.put((owner, claimed))
    except Exception as exc:
        results.put((owner, f"{type(exc).__name__}: {exc}"))


def test_processes_claiming_from_one_file_never_claim_a_job_twice(tmp_path: Path) -> None:
    """Four processes claiming 400 jobs concurrently claim every job exactly once."""
    url = _url(tmp_path / "jobs.db")
    store = open_store(url)
    try:
        ids = {insert(store, name=NAMES[i % 2], run_at=i) for i in range(400)}
    finally:
        store.close()
    processes = 4
    start = _fork.Barrier(processes)
    results = _fork.Queue()
    children = [
        _fork.Process(target=_claim_until_empty, args=(url, f"proc-{i}", start, results))
        for i in range(processes)
    ]
    for child in children:
        child.start()
    outcomes = dict(results.get(timeout=60) for _ in range(processes))
    for child in children:
        child.join(timeout=30)
    errors = {owner: got for owner, got in outcomes.items() if isinstance(got, str)}
    assert errors == {}
    every = [job_id for claimed in outcomes.values() for job_id, _ in claimed]
    assert len(every) == len(ids)
    assert set(every) == ids
    assert {fence for claimed in outcomes.values() for _, fence in claimed} == {1}
    store = open_store(url)
    try:
        for owner, claimed in outcomes.items():
            for job_id, _ in claimed:
                record = store.job_get(job_id)
                assert record is not None
                assert (record.state, record.lease_owner) == (JobState.RUNNING, owner)
    finally:
        store.close()
