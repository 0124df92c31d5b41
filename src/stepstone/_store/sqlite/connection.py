"""Reaching the SQLite file: connections (one writer per process behind a lock, one reader
per thread), write transactions (``BEGIN IMMEDIATE``, fsynced when durable), the retry of
"database is locked", migrations, and the translation of driver errors into stepstone's."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from ...errors import StepstoneError, StoreError
from ..queries import load_migrations

_LOCKED_RETRY_SECONDS = 30.0


class StepConnection(sqlite3.Connection):
    """The connection type of the store: while a transactional step runs on it, its
    transaction belongs to stepstone, so ``commit()`` and ``rollback()`` are refused."""

    in_step = False

    def commit(self) -> None:
        if self.in_step:
            raise StepstoneError(OWN_TRANSACTION)
        super().commit()

    def rollback(self) -> None:
        if self.in_step:
            raise StepstoneError(OWN_TRANSACTION)
        super().rollback()


OWN_TRANSACTION = (
    "a transactional step must not commit or roll back its connection: stepstone commits "
    "the step's writes together with its checkpoint when the function returns, and rolls "
    "them back if it raises"
)


class Connected:
    """The connections of a SQLite store and the transactions its operations run in."""

    path: str
    memory: bool
    full: bool
    busy_timeout: float
    _lock: threading.RLock
    _local: threading.local
    _readers: list[sqlite3.Connection]
    _closed: bool
    _write: StepConnection
    #: The write connection of durable writes: ``synchronous=FULL`` for good, so a durable
    #: commit needs no ``PRAGMA`` switch before and after it. The same connection as
    #: ``_write`` in memory (one connection holds the database) and with
    #: ``durability="full"`` (every commit is fsynced anyway). Both are used under ``_lock``.
    _durable: StepConnection

    def _open_writers(self) -> None:
        self._write = self._connect()
        self._durable = self._write
        if not self.memory and not self.full:
            self._durable = self._connect()
            with self._translate():
                self._durable.execute("PRAGMA synchronous=FULL")

    # connections ------------------------------------------------------------------------
    def _connect(self) -> StepConnection:
        with self._translate():
            conn = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout,
                isolation_level=None,
                check_same_thread=False,
                cached_statements=256,
                factory=StepConnection,
            )
            conn.row_factory = sqlite3.Row
            if not self.memory:
                # Switching to WAL can answer "database is locked" at once (no busy wait)
                # while another process creates the file; retry it.
                self._retry_locked(lambda: conn.execute("PRAGMA journal_mode=WAL").fetchone())
            conn.execute(f"PRAGMA synchronous={'FULL' if self.full else 'NORMAL'}")
            conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
            # Checks that the file really is a database now, not on first use.
            conn.execute("SELECT count(*) FROM sqlite_schema").fetchone()
            assert isinstance(conn, StepConnection)
            return conn

    def _check_writable(self) -> None:
        """SQLite opens a file it cannot write read-only, silently: refuse that up front."""
        path = os.path.abspath(self.path)
        folder = os.path.dirname(path)
        if os.path.exists(path) and not os.access(path, os.W_OK):
            raise StoreError(
                f"SQLite database {self.path!r} is read-only for this user; stepstone needs "
                "to write to it (check its owner and permissions)"
            )
        if os.path.isdir(folder) and not os.access(folder, os.W_OK | os.X_OK):
            raise StoreError(
                f"the folder of SQLite database {self.path!r} is not writable for this user; "
                "SQLite needs to create the -wal and -shm files beside the database"
            )

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
            with self._lock:
                self._readers.append(conn)
        return conn

    def _retry_locked(self, operation: Any) -> Any:
        deadline = time.monotonic() + _LOCKED_RETRY_SECONDS
        delay = 0.005
        while True:
            try:
                return operation()
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.2)

    @contextmanager
    def _translate(self) -> Iterator[None]:
        try:
            yield
        except StepstoneError:
            raise
        except sqlite3.Error as exc:
            raise self._store_error(exc) from exc

    def _store_error(self, exc: sqlite3.Error) -> StoreError:
        text = str(exc)
        where = f"SQLite database {self.path!r}"
        if "not a database" in text or "malformed" in text or "corrupt" in text:
            return StoreError(
                f"{where} is not a stepstone database or is corrupt ({text}); "
                "use another database URL, or restore this file from a backup"
            )
        if "unable to open" in text:
            return StoreError(
                f"cannot open {where} ({text}); check that its folder exists and that "
                "this user may write there"
            )
        if "readonly" in text or "read-only" in text:
            return StoreError(
                f"{where} is read-only ({text}); stepstone needs to write to the file and to "
                "its folder (for the -wal and -shm files)"
            )
        if "locked" in text or "busy" in text:
            return StoreError(
                f"{where} stayed locked by another connection for {self.busy_timeout:g}s "
                f"({text}); a process may be holding a long write transaction"
            )
        return StoreError(f"{where}: {type(exc).__name__}: {text}")

    @contextmanager
    def _writing(self, *, durable: bool) -> Iterator[sqlite3.Connection]:
        """One write transaction; ``durable`` ones are fsynced on commit."""
        with self._lock, self._translate():
            conn = self._durable if durable else self._write
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _read(self, sql: str, params: Mapping[str, Any]) -> list[sqlite3.Row]:
        if self.memory:
            with self._lock, self._translate():
                return self._write.execute(sql, params).fetchall()
        with self._translate():
            return self._reader().execute(sql, params).fetchall()

    def change_marker(self) -> int | None:
        """SQLite's data version: it changes when any other connection commits."""
        if self.memory:
            return None  # one connection only; in-process wake-ups cover it
        with self._translate():
            return int(self._reader().execute("PRAGMA data_version").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for conn in {self._write, self._durable, *self._readers}:
                conn.close()
            self._readers.clear()

    # migrations -------------------------------------------------------------------------
    def migrate(self) -> list[str]:
        applied: list[str] = []
        with self._writing(durable=True) as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS stepstone_migrations "
                "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
            )
            done = {row[0] for row in conn.execute("SELECT version FROM stepstone_migrations")}
            for migration in load_migrations("sqlite"):
                if migration.version in done:
                    continue
                for statement in _statements(migration.sql):
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO stepstone_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (migration.version, migration.name, time.time()),
                )
                applied.append(f"{migration.version:04d}_{migration.name}")
        return applied


def _statements(script: str) -> Iterator[str]:
    """Split a migration into statements (``executescript`` would commit on its own)."""
    buffer = ""
    for line in script.splitlines(keepends=True):
        if not buffer and (not line.strip() or line.lstrip().startswith("--")):
            continue
        buffer += line
        if sqlite3.complete_statement(buffer):
            yield buffer.strip()
            buffer = ""
    if buffer.strip():
        yield buffer.strip()


__all__ = ["OWN_TRANSACTION", "Connected", "StepConnection"]
