"""The SQLite dialect of the SQL store: one SQLite file in WAL mode, safe for many
processes on one machine.

Writes go through one connection per process behind a lock (a second one, fsynced on every
commit, for the durable writes), so the threads of a process
queue in Python rather than in SQLite's busy handler; other processes wait on SQLite's
busy timeout. Reads use one connection per thread and never wait for writers (WAL).
Enqueues and outcomes commit with ``synchronous=FULL`` (they survive power loss);
checkpoints with ``NORMAL`` (they survive a process crash), unless ``durability="full"``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from ...errors import StepstoneError, StoreError
from .. import rows
from .._sql import SQLStore, T, Work
from ..base import ClaimedJob, InsertResult, MemoClaim, NewJob, StepTransaction
from ..queries import load_queries
from .connection import OWN_TRANSACTION, Connected, StepConnection

Q = load_queries("sqlite")
_CHECKPOINT_INSERT = Q["checkpoint_insert"]
#: How many due jobs beyond the claim's limit a claim looks at, to find some whose
#: concurrency key is under its limit.
CLAIM_SCAN = 100


class _SQLiteStepTransaction(StepTransaction):
    def __init__(
        self, store: SQLiteStore, conn: StepConnection, job_id: str | None, fence: int | None
    ) -> None:
        self.store = store
        self.connection = conn
        self.job_id = job_id
        self.fence = fence

    def checkpoint(self, *, seq: int, name: str, value: str, attempts: int, now: float) -> None:
        if self.job_id is None or self.fence is None:
            return
        params = (self.job_id, seq, name, "ok", value, attempts, self.fence, now, None)
        self.store._insert_checkpoint(self.connection, params)


class SQLiteStore(Connected, SQLStore):
    """A store in one SQLite file (or in memory, for tests of one process)."""

    inline_calls = True
    Q = Q
    unique_violation = sqlite3.IntegrityError

    def __init__(
        self,
        path: str,
        *,
        durability: str = "normal",
        busy_timeout: float = 30.0,
        migrate: bool = True,
    ) -> None:
        self.path = path
        self.url = f"sqlite:///{path}"
        self.memory = path == ":memory:" or path.startswith("file::memory:")
        self.full = durability == "full"
        self.busy_timeout = busy_timeout
        self._lock = threading.RLock()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._closed = False
        if not self.memory:
            self._check_writable()
        self._open_writers()
        if migrate:
            self.migrate()

    # the dialect ----------------------------------------------------------------------------
    def _transact(self, work: Work[T], *, durable: bool = True) -> T:
        with self._writing(durable=durable) as conn:
            return work(conn, False)

    def _session(self, work: Work[T], *, durable: bool = True) -> T:
        # Each statement commits on its own (autocommit): a session's work is one write
        # statement (then reads that classify it), so a transaction around it would only
        # add BEGIN IMMEDIATE and COMMIT. Durable ones run on the FULL connection: the
        # statement's own commit is fsynced.
        with self._lock:
            try:
                return work(self._durable if durable else self._write, False)
            except StepstoneError:
                raise
            except sqlite3.Error as exc:
                raise self._store_error(exc) from exc

    def _query(self, name: str, params: dict[str, Any]) -> list[Any]:
        return self._read(self.Q[name], params)

    def _array(self, values: Sequence[Any]) -> Any:
        return json.dumps(list(values))

    def _is_unique_violation(self, exc: Exception) -> bool:
        return "UNIQUE" in str(exc) or "PRIMARY KEY" in str(exc)  # not NOT NULL, CHECK

    def _savepoint(self, conn: Any) -> AbstractContextManager[object]:
        # A failed statement rolls back only itself; the transaction stays usable.
        return nullcontext()

    # claims -------------------------------------------------------------------------------
    def job_claim_due(
        self,
        *,
        owner: str,
        names: Sequence[str],
        queues: Sequence[str] | None,
        limit: int,
        now: float,
        lease_until: float,
        limited: Sequence[str] = (),
    ) -> list[ClaimedJob]:
        params = {
            **self._filters(names, queues),
            "owner": owner,
            "limit": limit,
            "limited": json.dumps(list(limited)),
            # Without limited jobs every candidate is taken: no need to look past them.
            "scan": limit + CLAIM_SCAN if limited else limit,
            "now": now,
            "lease_until": lease_until,
        }
        with self._writing(durable=False) as conn:
            found = conn.execute(Q["job_claim_due"], params).fetchall()
        return rows.claimed_jobs(found)

    def job_prune(self, *, finished_before: float, limit: int = 10_000) -> int:
        with self._writing(durable=False) as conn:
            ids = [
                row[0]
                for row in conn.execute(
                    Q["job_prune_select"], {"before": finished_before, "limit": limit}
                )
            ]
            for job_id in ids:
                conn.execute(Q["checkpoint_delete_job"], {"job_id": job_id})
                conn.execute(Q["error_delete_job"], {"job_id": job_id})
                conn.execute(Q["job_delete"], {"id": job_id})
        return len(ids)

    # checkpoints: the hot path --------------------------------------------------------------
    def checkpoint_insert(
        self,
        job_id: str,
        fence: int,
        *,
        seq: int,
        name: str,
        status: str,
        value: str,
        attempts: int,
        now: float,
        memo: str | None = None,
    ) -> None:
        # One fenced statement, committed on its own (synchronous=NORMAL): no transaction
        # to open, no parameter dict, no layer between the call and ``execute``.
        params = (job_id, seq, name, status, value, attempts, fence, now, memo)
        with self._lock:
            try:
                inserted = self._write.execute(_CHECKPOINT_INSERT, params).rowcount
            except sqlite3.Error as exc:
                raise self._checkpoint_error(exc, params) from exc
            if inserted != 1:
                raise self._checkpoint_refusal(self._write, job_id, fence)

    def _insert_checkpoint(self, conn: sqlite3.Connection, params: tuple[Any, ...]) -> None:
        """Insert a checkpoint (positional ``checkpoint_insert`` parameters) on ``conn``,
        inside whatever transaction it has open."""
        try:
            inserted = conn.execute(_CHECKPOINT_INSERT, params).rowcount
        except sqlite3.Error as exc:
            raise self._checkpoint_error(exc, params) from exc
        if inserted != 1:
            raise self._checkpoint_refusal(conn, params[0], params[6])

    def _checkpoint_error(self, exc: sqlite3.Error, params: tuple[Any, ...]) -> StepstoneError:
        job_id, seq, name, fence = params[0], params[1], params[2], params[6]
        if not isinstance(exc, sqlite3.IntegrityError):
            return self._store_error(exc)
        if "UNIQUE" not in str(exc) and "PRIMARY KEY" not in str(exc):
            return StoreError(f"checkpoint #{seq} ({name}) of job {job_id} was refused: {exc}")
        return rows.duplicate_checkpoint(job_id, fence, seq, name)

    def _checkpoint_refusal(
        self, conn: sqlite3.Connection, job_id: str, fence: int
    ) -> StepstoneError:
        with self._translate():
            cursor = conn.cursor()
            cursor.row_factory = sqlite3.Row  # the step connection returns plain tuples
            try:
                return rows.refusal(
                    job_id, fence, cursor.execute(Q["job_owner"], {"id": job_id}).fetchone()
                )
            finally:
                cursor.close()

    @contextmanager
    def step_transaction(self, job_id: str | None, fence: int | None) -> Iterator[StepTransaction]:
        if self.memory:  # one connection holds the whole database
            with self._lock:
                yield from self._step_transaction(self._write, job_id, fence)
            return
        conn: StepConnection | None = getattr(self._local, "step_conn", None)
        if conn is None:
            conn = self._connect()
            conn.row_factory = None
            with self._translate():
                conn.execute("PRAGMA synchronous=FULL")  # the user's own data: durable
            self._local.step_conn = conn
            with self._lock:
                self._readers.append(conn)
        yield from self._step_transaction(conn, job_id, fence)

    def _step_transaction(
        self, conn: StepConnection, job_id: str | None, fence: int | None
    ) -> Iterator[StepTransaction]:
        factory = conn.row_factory
        with self._translate():
            conn.execute("BEGIN IMMEDIATE")
        if not self.memory:  # the in-memory store's one connection keeps its own rows
            conn.row_factory = None
        conn.in_step = True
        try:
            yield _SQLiteStepTransaction(self, conn, job_id, fence)
        except BaseException:
            conn.in_step = False
            conn.row_factory = factory
            if conn.in_transaction:
                with self._translate():
                    conn.execute("ROLLBACK")
            raise
        conn.in_step = False
        conn.row_factory = factory
        if not conn.in_transaction:
            raise StepstoneError(
                "the transactional step ended its transaction itself (it ran COMMIT or "
                f"ROLLBACK); its writes are not tied to its checkpoint. {OWN_TRANSACTION}"
            )
        with self._translate():
            try:
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    # enqueue inside the caller's transaction ------------------------------------------------
    def job_insert_on(self, connection: Any, job: NewJob, *, now: float) -> InsertResult:
        if not isinstance(connection, sqlite3.Connection):
            raise TypeError(
                f"enqueue(connection=...) on a SQLite app takes a sqlite3.Connection to "
                f"{self.path!r}, not {type(connection).__name__}"
            )
        if self.memory:
            raise StoreError(
                "enqueue(connection=...) cannot be used with sqlite:///:memory:: another "
                "connection cannot see that database; use a database file"
            )
        with self._translate():
            listed = connection.execute("PRAGMA database_list").fetchall()
        main = next((row[2] for row in listed if row[1] == "main"), "")
        if not main or os.path.realpath(main) != os.path.realpath(self.path):
            raise StoreError(
                f"enqueue(connection=...) got a connection to {main or 'an in-memory database'!r}"
                f", but this app's jobs live in {os.path.realpath(self.path)!r}: the job and "
                "your writes can share a transaction only in the same database file"
            )
        params = rows.insert_params(job, now=now, owner=None, lease_until=0.0)
        cursor = connection.cursor()
        cursor.row_factory = sqlite3.Row
        with self._translate():
            try:
                return self._insert(cursor, params, False)
            finally:
                cursor.close()

    # memo keys ----------------------------------------------------------------------------
    def memo_acquire(
        self, key: str, job_id: str, fence: int, *, step: str, now: float
    ) -> MemoClaim:
        found = self.memo_get(key, now=now)  # a hit needs no write lock
        if found is not None and rows.memo_decision(found, job_id, fence, now).outcome == "hit":
            return MemoClaim("hit", value=found.value)
        with self._writing(durable=False) as conn:
            row = conn.execute(Q["memo_get"], {"key": key, "now": now}).fetchone()
            decision = rows.memo_decision(
                rows.memo_record(row) if row else None, job_id, fence, now
            )
            if decision.outcome == "acquired":
                params = {"key": key, "step": step, "job_id": job_id, "fence": fence, "now": now}
                conn.execute(Q["memo_claim"], params)
        return decision

    def memo_complete(
        self,
        key: str,
        job_id: str,
        fence: int,
        *,
        seq: int,
        name: str,
        step: str,
        value: str,
        attempts: int,
        expires_at: float | None,
        now: float,
    ) -> str:
        memo = {
            "key": key,
            "step": step,
            "value": value,
            "job_id": job_id,
            "fence": fence,
            "expires_at": expires_at,
            "now": now,
        }
        with self._writing(durable=False) as conn:
            if conn.execute(Q["memo_store"], memo).rowcount != 1:
                value = conn.execute(Q["memo_value"], {"key": key}).fetchone()["value"]
            self._insert_checkpoint(
                conn, (job_id, seq, name, "ok", value, attempts, fence, now, key)
            )
        return value


__all__ = ["SQLiteStore"]
