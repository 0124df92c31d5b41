"""The app of the memo-key and transactional-step process tests (``idemapp``).

Step bodies append ``<what> <role> <pid> <idempotency key>`` to the job's log file, so
tests count body executions across processes. Only a subprocess (``STEPSTONE_TEST_ROLE``
other than ``test``) blocks or waits to be killed, and only when the test asks for it
with a flag file next to the log: ``<log>.block-ocr`` (block in ``ocr`` until
``<log>.release``), ``<log>.kill-in-save`` (hang after the transactional write, before
its commit), ``<log>.block-after`` (hang in the step after the transactional one).
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import stepstone
from stepstone import App, Retry


def role() -> str:
    return os.environ.get("STEPSTONE_TEST_ROLE", "test")


def record(log: str, what: str) -> None:
    key = stepstone.current().idempotency_key
    with open(log, "a") as file:
        file.write(f"{what} {role()} {os.getpid()} {key}\n")


def hang(flag: Path) -> None:
    """Announce that this subprocess reached the point, then wait to be killed."""
    flag.touch()
    time.sleep(120)


def docs_table(app: App) -> str:
    """The test's own table, in the database of the app (in its schema on PostgreSQL)."""
    schema = getattr(app.store, "schema", None)
    return f'"{schema}".docs' if schema else "docs"


def _placeholder(conn: Any) -> str:
    return "?" if isinstance(conn, sqlite3.Connection) else "%s"


def create_docs(app: App) -> None:
    with app.store.step_transaction(None, None) as transaction:
        transaction.connection.execute(
            f"CREATE TABLE IF NOT EXISTS {docs_table(app)} (attachment_id TEXT, text TEXT)"
        )


def docs(app: App) -> list[tuple[str, str]]:
    with app.store.step_transaction(None, None) as transaction:
        rows = transaction.connection.execute(
            f"SELECT attachment_id, text FROM {docs_table(app)} ORDER BY attachment_id"
        ).fetchall()
    return [(str(a), str(t)) for a, t in rows]


def build_app(url: str | None, *, lease: float = 1.0, grace: float = 30.0) -> App:
    app = App(url, lease=lease, shutdown_grace=grace)
    table = docs_table(app)

    @app.step(name="ocr", key="ocr:{attachment_id}")
    def ocr(attachment_id: str, log: str) -> str:
        record(log, f"ocr:{attachment_id}")
        if role() != "test" and Path(f"{log}.block-ocr").exists():
            Path(f"{log}.ocr-blocked.{os.getpid()}").touch()
            release = Path(f"{log}.release")
            deadline = time.monotonic() + 60
            while not release.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
        return f"text of {attachment_id}"

    @app.job(name="idemapp.index", retry=Retry(max_attempts=3, initial=0.01))
    def index(attachment_id: str, log: str) -> str:
        return ocr(attachment_id, log)

    @app.transaction(name="save")
    def save(conn: Any, attachment_id: str, text: str, log: str) -> str:
        record(log, "save")
        ph = _placeholder(conn)
        conn.execute(f"INSERT INTO {table} VALUES ({ph}, {ph})", (attachment_id, text))
        if role() != "test" and Path(f"{log}.kill-in-save").exists():
            hang(Path(f"{log}.written"))  # killed here: written, not committed
        return "saved"

    @app.step(name="after_save")
    def after_save(log: str) -> str:
        record(log, "after")
        if role() != "test" and Path(f"{log}.block-after").exists():
            hang(Path(f"{log}.after-blocked"))  # killed here: the save committed
        return f"after by {role()}"

    @app.job(name="idemapp.index_and_save", retry=Retry(max_attempts=1))
    def index_and_save(attachment_id: str, log: str) -> str:
        text = ocr(attachment_id, log)
        save(attachment_id, text, log)
        return after_save(log)

    return app
