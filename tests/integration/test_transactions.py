"""Transactional steps and enqueues in the caller's transaction: the user's writes and
stepstone's rows commit together or not at all."""

from __future__ import annotations

import signal
import sqlite3
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import idemapp
import pytest
from waiting import wait_for

from stepstone import App, JobFailed, JobNotFound, Retry, StepstoneError, StoreError


def body_runs(log: Path) -> Counter[str]:
    if not log.exists():
        return Counter()
    return Counter(line.split()[0] for line in log.read_text().splitlines())


def ph(conn: Any) -> str:
    return "?" if isinstance(conn, sqlite3.Connection) else "%s"


def own_connection(app: App) -> Any:
    """A connection of the user's own to the app's database (not one of stepstone's)."""
    if app.url.startswith("sqlite"):
        return sqlite3.connect(app.store.path)  # type: ignore[attr-defined]
    import psycopg

    return psycopg.connect(app.store.conninfo)  # type: ignore[attr-defined]


# --- @app.transaction ----------------------------------------------------------------------


def test_the_writes_and_the_checkpoint_commit_together(app: App) -> None:
    """A transactional step's insert is committed with its checkpoint; a replay of the job
    returns the checkpoint and does not run the step again."""
    idemapp.create_docs(app)
    table = idemapp.docs_table(app)
    calls: list[str] = []

    @app.transaction
    def save(conn: Any, doc: str) -> int:
        calls.append(doc)
        conn.execute(f"INSERT INTO {table} VALUES ({ph(conn)}, {ph(conn)})", (doc, "t"))
        return len(calls)

    @app.step
    def fail_once(doc: str) -> None:
        if calls == [doc]:
            calls.append("failed")
            raise ConnectionError("after the save")

    @app.job(name="store", retry=Retry(max_attempts=2, initial=0.0))
    def store(doc: str) -> int:
        number = save(doc)
        fail_once(doc)
        return number

    handle = app.enqueue(store, "d1", key="store:d1")
    app.run_worker(until_idle=True)
    assert handle.result(timeout=5) == 1
    assert calls == ["d1", "failed"]  # the job's second attempt replayed the save
    assert idemapp.docs(app) == [("d1", "t")]
    assert [s.name for s in handle.steps()] == ["save#0", "fail_once#0"]


def test_an_error_rolls_the_writes_back_and_each_attempt_gets_a_fresh_transaction(
    app: App,
) -> None:
    """A transactional step that raises leaves none of its writes; its retry starts a new
    transaction, and the successful attempt's writes are the only ones kept."""
    idemapp.create_docs(app)
    table = idemapp.docs_table(app)
    attempts: list[int] = []

    @app.transaction(retry=Retry(max_attempts=3, initial=0.0))
    def save(conn: Any, doc: str) -> str:
        attempts.append(len(attempts) + 1)
        conn.execute(
            f"INSERT INTO {table} VALUES ({ph(conn)}, {ph(conn)})", (doc, f"try {len(attempts)}")
        )
        if len(attempts) < 3:
            raise ConnectionError("the search service is down")
        return "ok"

    @app.job(name="store")
    def store(doc: str) -> str:
        return save(doc)

    assert app.run(store, "d1") == "ok"
    assert idemapp.docs(app) == [("d1", "try 3")]


def test_commit_or_rollback_inside_the_step_is_refused(app: App) -> None:
    """The transaction belongs to stepstone: commit() or rollback() raise StepstoneError,
    and the step's writes are rolled back."""
    idemapp.create_docs(app)
    table = idemapp.docs_table(app)

    @app.transaction(retry=Retry(max_attempts=1))
    def save(conn: Any, doc: str, how: str) -> None:
        conn.execute(f"INSERT INTO {table} VALUES ({ph(conn)}, {ph(conn)})", (doc, how))
        getattr(conn, how)()

    @app.job(name="store", retry=Retry(max_attempts=1))
    def store(doc: str, how: str) -> None:
        save(doc, how)

    for how in ("commit", "rollback"):
        with pytest.raises(JobFailed) as failed:
            app.run(store, "d1", how)
        assert "must not commit or roll back" in str(failed.value)
    assert idemapp.docs(app) == []


def test_a_cancelled_job_commits_none_of_the_writes(app: App) -> None:
    """If the job is cancelled while its transactional step runs, the checkpoint is refused
    and the step's writes roll back with it."""
    if app.url.startswith("sqlite"):
        pytest.skip("SQLite: the step holds the database's write lock, a cancel waits for it")
    idemapp.create_docs(app)
    table = idemapp.docs_table(app)

    @app.transaction
    def save(conn: Any, doc: str) -> None:
        conn.execute(f"INSERT INTO {table} VALUES (%s, %s)", (doc, "t"))
        other = App(app.url)
        try:
            other.cancel(app.get_job_by_key("store:d1").id)
        finally:
            other.close()

    @app.job(name="store")
    def store(doc: str) -> None:
        save(doc)

    handle = app.enqueue(store, "d1", key="store:d1")
    app.run_worker(until_idle=True)
    assert handle.state == "cancelled"
    assert idemapp.docs(app) == []
    assert handle.steps() == []


def test_outside_a_job_the_step_runs_in_its_own_transaction(app: App) -> None:
    """Called outside a job, a transactional step gets a connection and commits."""
    idemapp.create_docs(app)
    table = idemapp.docs_table(app)

    @app.transaction
    def save(conn: Any, doc: str) -> str:
        conn.execute(f"INSERT INTO {table} VALUES ({ph(conn)}, {ph(conn)})", (doc, "t"))
        return doc

    assert save("d9") == "d9"
    assert idemapp.docs(app) == [("d9", "t")]


def test_an_async_transactional_step_is_refused_at_declaration(app: App) -> None:
    """A transactional step gets a blocking connection: async def is refused up front."""
    with pytest.raises(StepstoneError, match="declare it with def"):

        @app.transaction
        async def save(conn: Any) -> None:
            return None


def test_an_async_job_may_call_a_transactional_step(app: App) -> None:
    """From an async job the (sync) transactional step runs inline."""
    idemapp.create_docs(app)
    table = idemapp.docs_table(app)

    @app.transaction
    def save(conn: Any, doc: str) -> str:
        conn.execute(f"INSERT INTO {table} VALUES ({ph(conn)}, {ph(conn)})", (doc, "a"))
        return doc

    @app.job(name="store_async")
    async def store(doc: str) -> str:
        return save(doc)

    handle = app.enqueue(store, "d2")
    app.run_worker(until_idle=True)
    assert handle.result(timeout=5) == "d2"
    assert idemapp.docs(app) == [("d2", "a")]


# --- real processes killed -------------------------------------------------------------------


def test_killed_before_commit_leaves_neither_the_write_nor_the_checkpoint(
    db_url: str, tmp_path: Path, spawn_worker
) -> None:
    """SIGKILL a worker after the transactional step wrote its row, before the commit:
    neither the row nor the checkpoint exists; the job resumes elsewhere and the row is
    then written exactly once."""
    log = tmp_path / "save.log"
    Path(f"{log}.kill-in-save").touch()
    app = idemapp.build_app(db_url, lease=1.0)
    idemapp.create_docs(app)
    handle = app.enqueue("idemapp.index_and_save", "a1", str(log))
    worker = spawn_worker(module="idemapp", concurrency=1)
    wait_for(Path(f"{log}.written").exists, what="the uncommitted write")
    worker.signal(signal.SIGKILL)
    assert worker.wait() == -signal.SIGKILL
    assert idemapp.docs(app) == []
    assert [s.name for s in handle.steps()] == ["ocr#0"]
    app.run_worker(until_idle=True)
    assert handle.result(timeout=5) == "after by test"
    assert idemapp.docs(app) == [("a1", "text of a1")]
    assert body_runs(log) == {"ocr:a1": 1, "save": 2, "after": 1}


def test_killed_after_commit_the_step_never_runs_again(
    db_url: str, tmp_path: Path, spawn_worker
) -> None:
    """SIGKILL a worker after the transactional step committed (in the next step): the
    replay takes the checkpoint; the write exists once and the step body ran once."""
    log = tmp_path / "save.log"
    Path(f"{log}.block-after").touch()
    app = idemapp.build_app(db_url, lease=1.0)
    idemapp.create_docs(app)
    handle = app.enqueue("idemapp.index_and_save", "a1", str(log))
    worker = spawn_worker(module="idemapp", concurrency=1)
    wait_for(Path(f"{log}.after-blocked").exists, what="the step after the save")
    worker.signal(signal.SIGKILL)
    assert worker.wait() == -signal.SIGKILL
    assert idemapp.docs(app) == [("a1", "text of a1")]
    app.run_worker(until_idle=True)
    assert handle.result(timeout=5) == "after by test"
    assert idemapp.docs(app) == [("a1", "text of a1")]
    assert body_runs(log) == {"ocr:a1": 1, "save": 1, "after": 2}


# --- enqueue(connection=...) -----------------------------------------------------------------


def test_a_job_enqueued_in_the_callers_transaction_exists_iff_it_commits(app: App) -> None:
    """enqueue(connection=conn) writes the job in the caller's open transaction: invisible
    before the commit, gone with a rollback, there (with the business row) after a commit."""
    idemapp.create_docs(app)
    table = idemapp.docs_table(app)

    @app.job(name="notify")
    def notify(doc: str) -> str:
        return f"notified {doc}"

    conn = own_connection(app)
    try:
        p = ph(conn)
        conn.execute(f"INSERT INTO {table} VALUES ({p}, {p})", ("d1", "rolled back"))
        rolled_back = app.enqueue(notify, "d1", key="notify:d1", connection=conn)
        with pytest.raises(JobNotFound):
            app.get_job(rolled_back.id)
        conn.rollback()
        with pytest.raises(JobNotFound):
            app.get_job(rolled_back.id)

        conn.execute(f"INSERT INTO {table} VALUES ({p}, {p})", ("d1", "committed"))
        handle = app.enqueue(notify, "d1", key="notify:d1", connection=conn)
        again = app.enqueue(notify, "d1", key="notify:d1", connection=conn)
        assert again.id == handle.id  # the key is seen inside the open transaction
        conn.commit()
    finally:
        conn.close()
    assert app.get_job_by_key("notify:d1").id == handle.id
    assert idemapp.docs(app) == [("d1", "committed")]
    app.run_worker(until_idle=True)
    assert handle.result(timeout=5) == "notified d1"


def test_a_transactional_step_may_enqueue_in_its_own_transaction(app: App) -> None:
    """A transactional step passes its connection to enqueue: the child job exists only if
    the step commits."""

    @app.job(name="child")
    def child(n: int) -> int:
        return n * 2

    @app.transaction(retry=Retry(max_attempts=2, initial=0.0))
    def spawn(conn: Any, n: int, fail: bool) -> str:
        handle = app.enqueue(child, n, key=f"child:{n}", connection=conn)
        if fail:
            raise ConnectionError("rolled back")
        return handle.id

    @app.job(name="parent", retry=Retry(max_attempts=1))
    def parent(n: int, fail: bool) -> str:
        return spawn(n, fail)

    with pytest.raises(JobFailed):
        app.run(parent, 1, True)
    with pytest.raises(JobNotFound):
        app.get_job_by_key("child:1")
    child_id = app.run(parent, 2, False)
    assert app.get_job_by_key("child:2").id == child_id


def test_a_connection_to_another_database_is_refused(app: App, tmp_path: Path) -> None:
    """enqueue(connection=) with a connection elsewhere or of the wrong kind: a clear
    error, and no job."""

    @app.job(name="notify")
    def notify(doc: str) -> str:
        return doc

    with pytest.raises(TypeError, match="connection"):
        app.enqueue(notify, "d1", connection=object())
    if app.url.startswith("sqlite"):
        other = sqlite3.connect(tmp_path / "other.db")
        try:
            with pytest.raises(StoreError, match="same database file"):
                app.enqueue(notify, "d1", connection=other)
        finally:
            other.close()
    else:
        import psycopg
        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        conninfo = app.store.conninfo  # type: ignore[attr-defined]
        database = f"stepstone_other_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(conninfo, autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {database}")
        try:
            params = conninfo_to_dict(conninfo)
            params["dbname"] = database
            with (
                psycopg.connect(make_conninfo(**params)) as conn,
                pytest.raises(StoreError, match="does not see stepstone's tables"),
            ):
                app.enqueue(notify, "d1", connection=conn)
        finally:
            with psycopg.connect(conninfo, autocommit=True) as admin:
                admin.execute(f"DROP DATABASE {database}")
    assert app.store.job_list() == []
