"""The embedded store: one SQLite file in WAL mode, safe for many processes on one machine.

Writes go through one connection per process behind a lock, so the threads of a process
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
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from ..errors import JobNotFound, StepstoneError, StoreError
from . import rows
from .base import (
    JOB_EVENT_PREFIX,
    POISON_RECLAIMS,
    Checkpoint,
    ClaimedJob,
    Completion,
    ErrorRecord,
    IdleStatus,
    InsertResult,
    JobRecord,
    MemoClaim,
    MemoRecord,
    NewJob,
    Rescue,
    StepTransaction,
    Store,
    poison_error,
)
from .queries import load_migrations, load_queries

Q = load_queries("sqlite")
_LOCKED_RETRY_SECONDS = 30.0
#: How many due jobs beyond the claim's limit a claim looks at, to find some whose
#: concurrency key is under its limit.
CLAIM_SCAN = 100


class StepConnection(sqlite3.Connection):
    """The connection type of the store: while a transactional step runs on it, its
    transaction belongs to stepstone, so ``commit()`` and ``rollback()`` are refused."""

    in_step = False

    def commit(self) -> None:
        if self.in_step:
            raise StepstoneError(_OWN_TRANSACTION)
        super().commit()

    def rollback(self) -> None:
        if self.in_step:
            raise StepstoneError(_OWN_TRANSACTION)
        super().rollback()


_OWN_TRANSACTION = (
    "a transactional step must not commit or roll back its connection: stepstone commits "
    "the step's writes together with its checkpoint when the function returns, and rolls "
    "them back if it raises"
)


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
        params = rows.checkpoint_params(
            self.job_id,
            self.fence,
            seq=seq,
            name=name,
            status="ok",
            value=value,
            attempts=attempts,
            now=now,
        )
        self.store._insert_checkpoint(self.connection, params)


class SQLiteStore(Store):
    """A store in one SQLite file (or in memory, for tests of one process)."""

    inline_calls = True

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
        self._write: StepConnection = self._connect()
        if migrate:
            self.migrate()

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
            conn = self._write
            switch = durable and not self.full
            if switch:
                conn.execute("PRAGMA synchronous=FULL")
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            finally:
                if switch:
                    conn.execute("PRAGMA synchronous=NORMAL")

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
            for conn in [self._write, *self._readers]:
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

    # jobs -------------------------------------------------------------------------------
    def job_insert(
        self, job: NewJob, *, now: float, owner: str | None = None, lease_until: float = 0.0
    ) -> InsertResult:
        params = rows.insert_params(job, now=now, owner=owner, lease_until=lease_until)
        with self._writing(durable=True) as conn:
            if conn.execute(Q["job_insert"], params).rowcount == 1:
                return InsertResult(rows.inserted_record(params), created=True)
            row = conn.execute(Q["job_get_by_key"], {"key": job.key}).fetchone()
        if row is None:  # pragma: no cover - the conflict was on the id, a uuid
            raise StoreError(f"job id {job.id} is already taken")
        return InsertResult(rows.job_record(row), created=False)

    def job_get(self, job_id: str) -> JobRecord | None:
        found = self._read(Q["job_get"], {"id": job_id})
        return rows.job_record(found[0]) if found else None

    def job_get_by_key(self, key: str) -> JobRecord | None:
        found = self._read(Q["job_get_by_key"], {"key": key})
        return rows.job_record(found[0]) if found else None

    def job_get_many(self, *, ids: Sequence[str] = (), keys: Sequence[str] = ()) -> list[JobRecord]:
        params = {"ids": json.dumps(list(ids)), "keys": json.dumps(list(keys))}
        return [rows.job_record(row) for row in self._read(Q["job_get_many"], params)]

    def job_list(
        self, *, states: Sequence[str] | None = None, name: str | None = None, limit: int = 50
    ) -> list[JobRecord]:
        params = {
            "states": json.dumps(list(states)) if states is not None else None,
            "name": name,
            "limit": limit,
        }
        return [rows.job_record(row) for row in self._read(Q["job_list"], params)]

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
            "owner": owner,
            "names": json.dumps(list(names)),
            "queues": json.dumps(list(queues)) if queues is not None else None,
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

    def job_claim(
        self, job_id: str, *, owner: str, now: float, lease_until: float
    ) -> ClaimedJob | None:
        params = {"id": job_id, "owner": owner, "now": now, "lease_until": lease_until}
        with self._writing(durable=False) as conn:
            found = conn.execute(Q["job_claim"], params).fetchall()
        claimed = rows.claimed_jobs(found)
        return claimed[0] if claimed else None

    def job_idle_status(
        self, *, names: Sequence[str], queues: Sequence[str] | None, now: float
    ) -> IdleStatus:
        params = {
            "names": json.dumps(list(names)),
            "queues": json.dumps(list(queues)) if queues is not None else None,
            "now": now,
        }
        row = self._read(Q["job_idle_status"], params)[0]
        return IdleStatus(
            due=bool(row["due"]), running=int(row["running"]), next_run_at=row["next_run_at"]
        )

    def job_heartbeat(self, leases: Sequence[tuple[str, int]], *, lease_until: float) -> set[str]:
        lost: set[str] = set()
        if not leases:
            return lost
        with self._writing(durable=False) as conn:
            for job_id, fence in leases:
                params = {"id": job_id, "fence": fence, "lease_until": lease_until}
                if conn.execute(Q["job_heartbeat"], params).rowcount != 1:
                    lost.add(job_id)
        return lost

    def job_rescue_expired(self, *, now: float, limit: int = 100) -> Rescue:
        expired = self._read(Q["job_expired_leases"], {"now": now, "limit": limit})
        if not expired:
            return Rescue(requeued=(), poisoned=())
        requeued: list[str] = []
        poisoned: list[str] = []
        with self._writing(durable=True) as conn:
            for row in expired:
                # A reclaim counts toward poison only if the run it ends wrote nothing.
                reclaims = 0 if row["progressed"] else row["reclaims"] + 1
                params = {
                    "id": row["id"],
                    "fence": row["fence"],
                    "now": now,
                    "reclaims": reclaims,
                }
                if reclaims >= POISON_RECLAIMS:
                    error = poison_error(row["id"], reclaims)
                    if conn.execute(Q["job_fail_poison"], {**params, "error": error}).rowcount:
                        conn.execute(
                            Q["error_insert_unfenced"],
                            {
                                "job_id": row["id"],
                                "attempt": row["attempts"],
                                "fence": row["fence"],
                                "error": error,
                                "now": now,
                            },
                        )
                        poisoned.append(row["id"])
                elif conn.execute(Q["job_requeue_expired"], params).rowcount:
                    requeued.append(row["id"])
        return Rescue(requeued=requeued, poisoned=poisoned)

    def _refuse(self, conn: sqlite3.Connection, job_id: str, fence: int) -> StepstoneError:
        cursor = conn.cursor()
        cursor.row_factory = sqlite3.Row  # the step connection returns plain tuples
        try:
            return rows.refusal(
                job_id, fence, cursor.execute(Q["job_owner"], {"id": job_id}).fetchone()
            )
        finally:
            cursor.close()

    def job_complete(self, job_id: str, fence: int, *, result: str, now: float) -> None:
        params = {"id": job_id, "fence": fence, "result": result, "now": now}
        with self._writing(durable=True) as conn:
            if conn.execute(Q["job_complete"], params).rowcount != 1:
                raise self._refuse(conn, job_id, fence)

    def job_complete_many(
        self, completions: Sequence[Completion], *, now: float
    ) -> dict[str, StepstoneError]:
        refused: dict[str, StepstoneError] = {}
        with self._writing(durable=True) as conn:  # one fsync for the group
            for done in completions:
                params = {"id": done.job_id, "fence": done.fence, "result": done.result, "now": now}
                if conn.execute(Q["job_complete"], params).rowcount != 1:
                    refused[done.job_id] = self._refuse(conn, done.job_id, done.fence)
        return refused

    def job_fail(self, job_id: str, fence: int, *, error: str, attempt: int, now: float) -> None:
        params = {"id": job_id, "fence": fence, "error": error, "now": now}
        with self._writing(durable=True) as conn:
            if conn.execute(Q["job_fail"], params).rowcount != 1:
                raise self._refuse(conn, job_id, fence)
            conn.execute(
                Q["error_insert_unfenced"],
                {"job_id": job_id, "attempt": attempt, "fence": fence, "error": error, "now": now},
            )

    def job_retry_later(
        self, job_id: str, fence: int, *, error: str, attempt: int, run_at: float, now: float
    ) -> None:
        params = {"id": job_id, "fence": fence, "error": error, "run_at": run_at, "now": now}
        with self._writing(durable=True) as conn:
            if conn.execute(Q["job_retry_later"], params).rowcount != 1:
                raise self._refuse(conn, job_id, fence)
            conn.execute(Q["checkpoint_drop_from_first_error"], {"job_id": job_id})
            conn.execute(
                Q["error_insert_unfenced"],
                {"job_id": job_id, "attempt": attempt, "fence": fence, "error": error, "now": now},
            )

    def job_release(self, job_id: str, fence: int, *, now: float) -> bool:
        with self._writing(durable=True) as conn:
            params = {"id": job_id, "fence": fence, "now": now}
            return bool(conn.execute(Q["job_release"], params).rowcount)

    def job_cancel(self, job_id: str, *, now: float) -> bool:
        with self._writing(durable=True) as conn:
            cancelled = {
                row[0] for row in conn.execute(Q["job_cancel"], {"id": job_id, "now": now})
            }
            if job_id in cancelled:
                return True
            if conn.execute(Q["job_owner"], {"id": job_id}).fetchone() is None:
                raise JobNotFound(f"no job with id {job_id!r}")
            return False

    def job_requeue(self, job_id: str, *, now: float) -> bool:
        with self._writing(durable=True) as conn:
            if conn.execute(Q["job_requeue"], {"id": job_id, "now": now}).rowcount:
                conn.execute(Q["checkpoint_drop_from_first_error"], {"job_id": job_id})
                return True
            if conn.execute(Q["job_owner"], {"id": job_id}).fetchone() is None:
                raise JobNotFound(f"no job with id {job_id!r}")
            return False

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

    # parking, signals, schedules, rates ----------------------------------------------------
    def job_park(
        self,
        job_id: str,
        fence: int,
        *,
        until: float,
        event: str | None,
        signal_after: int = 0,
        child: str | None = None,
        now: float,
    ) -> None:
        with self._writing(durable=False) as conn:
            ready = False
            if child is not None:
                ready = bool(conn.execute(Q["park_child_ready"], {"child": child}).fetchone()[0])
            elif event is not None:
                params = {"event": event, "after": signal_after, "id": job_id}
                ready = bool(conn.execute(Q["park_signal_ready"], params).fetchone()[0])
            params = {
                "id": job_id,
                "fence": fence,
                "ready": ready,
                "until": until,
                "event": f"{JOB_EVENT_PREFIX}{child}" if child is not None else event,
                "now": now,
            }
            if conn.execute(Q["job_park"], params).rowcount != 1:
                raise self._refuse(conn, job_id, fence)

    def signal_send(self, event: str, payload: str, *, now: float) -> int:
        params = {"event": event, "payload": payload, "now": now}
        with self._writing(durable=True) as conn:
            conn.execute(Q["signal_insert"], params)
            return int(conn.execute(Q["signal_wake"], params).rowcount)

    def signal_next(self, event: str, *, after: int, since: float) -> tuple[int, str] | None:
        found = self._read(Q["signal_next"], {"event": event, "after": after, "since": since})
        return (int(found[0]["id"]), str(found[0]["payload"])) if found else None

    def signal_prune(self, *, before: float) -> int:
        with self._writing(durable=False) as conn:
            return int(conn.execute(Q["signal_prune"], {"before": before}).rowcount)

    def job_debounce(self, job: NewJob, *, now: float) -> InsertResult:
        params = rows.insert_params(job, now=now, owner=None, lease_until=0.0)
        with self._writing(durable=True) as conn:
            row = conn.execute(Q["job_debounce"], params).fetchone()
            if row is not None:
                return InsertResult(rows.job_record(row), created=False)
            conn.execute(Q["job_insert"], params)
        return InsertResult(rows.inserted_record(params), created=True)

    def schedule_next(self, name: str) -> float | None:
        found = self._read(Q["schedule_next"], {"name": name})
        return float(found[0]["next_tick"]) if found else None

    def schedule_advance(
        self, name: str, *, expected: float | None, tick: float, now: float
    ) -> bool:
        params = {"name": name, "expected": expected, "tick": tick, "now": now}
        with self._writing(durable=True) as conn:
            query = Q["schedule_insert"] if expected is None else Q["schedule_update"]
            return conn.execute(query, params).rowcount == 1

    def schedule_list(self) -> list[tuple[str, float]]:
        return [
            (row["name"], float(row["next_tick"])) for row in self._read(Q["schedule_list"], {})
        ]

    def rate_acquire(self, key: str, *, limit: int, per: float, now: float) -> float:
        with self._writing(durable=False) as conn:
            row = conn.execute(Q["rate_get"], {"key": key}).fetchone()
            calls = json.loads(row["calls"]) if row else []
            wait, kept = rows.rate_window(calls, limit=limit, per=per, now=now)
            if kept is not None:
                conn.execute(Q["rate_set"], {"key": key, "calls": json.dumps(kept)})
        return wait

    # checkpoints and errors -------------------------------------------------------------
    def checkpoint_list(self, job_id: str) -> list[Checkpoint]:
        return [
            rows.checkpoint(row) for row in self._read(Q["checkpoint_list"], {"job_id": job_id})
        ]

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
        params = rows.checkpoint_params(
            job_id,
            fence,
            seq=seq,
            name=name,
            status=status,
            value=value,
            attempts=attempts,
            now=now,
            memo=memo,
        )
        with self._lock, self._translate():
            self._insert_checkpoint(self._write, params)

    def _insert_checkpoint(self, conn: sqlite3.Connection, params: dict[str, Any]) -> None:
        job_id, fence, seq, name = params["job_id"], params["fence"], params["seq"], params["name"]
        with self._translate():
            try:
                inserted = conn.execute(Q["checkpoint_insert"], params).rowcount
            except sqlite3.IntegrityError as exc:
                if "UNIQUE" not in str(exc) and "PRIMARY KEY" not in str(exc):
                    raise StoreError(
                        f"checkpoint #{seq} ({name}) of job {job_id} was refused: {exc}"
                    ) from exc
                raise rows.duplicate_checkpoint(job_id, fence, seq, name) from exc
            if inserted != 1:
                raise self._refuse(conn, job_id, fence)

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
                f"ROLLBACK); its writes are not tied to its checkpoint. {_OWN_TRANSACTION}"
            )
        with self._translate():
            try:
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    # bulk and caller-transaction enqueues -------------------------------------------------
    def job_insert_many(self, jobs: Sequence[NewJob], *, now: float) -> list[InsertResult]:
        results: list[InsertResult] = []
        with self._writing(durable=True) as conn:
            for job in jobs:
                params = rows.insert_params(job, now=now, owner=None, lease_until=0.0)
                if conn.execute(Q["job_insert"], params).rowcount == 1:
                    results.append(InsertResult(rows.inserted_record(params), created=True))
                    continue
                row = conn.execute(Q["job_get_by_key"], {"key": job.key}).fetchone()
                if row is None:  # pragma: no cover - the conflict was on the id, a uuid
                    raise StoreError(f"job id {job.id} is already taken")
                results.append(InsertResult(rows.job_record(row), created=False))
        return results

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
                if cursor.execute(Q["job_insert"], params).rowcount == 1:
                    return InsertResult(rows.inserted_record(params), created=True)
                row = cursor.execute(Q["job_get_by_key"], {"key": job.key}).fetchone()
            finally:
                cursor.close()
        if row is None:  # pragma: no cover - the conflict was on the id, a uuid
            raise StoreError(f"job id {job.id} is already taken")
        return InsertResult(rows.job_record(row), created=False)

    # memo keys --------------------------------------------------------------------------
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
            params = rows.checkpoint_params(
                job_id,
                fence,
                seq=seq,
                name=name,
                status="ok",
                value=value,
                attempts=attempts,
                now=now,
                memo=key,
            )
            self._insert_checkpoint(conn, params)
        return value

    def memo_release(self, key: str, job_id: str, fence: int) -> None:
        with self._writing(durable=False) as conn:
            conn.execute(Q["memo_release"], {"key": key, "job_id": job_id, "fence": fence})

    def memo_get(self, key: str, *, now: float) -> MemoRecord | None:
        found = self._read(Q["memo_get"], {"key": key, "now": now})
        return rows.memo_record(found[0]) if found else None

    def memo_list(self, prefix: str = "", *, limit: int = 100) -> list[MemoRecord]:
        found = self._read(Q["memo_list"], {"prefix": prefix, "limit": limit})
        return [rows.memo_record(row) for row in found]

    def memo_forget(self, key: str, *, prefix: bool = False) -> int:
        with self._writing(durable=True) as conn:
            if prefix:
                return int(conn.execute(Q["memo_forget_prefix"], {"prefix": key}).rowcount)
            return int(conn.execute(Q["memo_forget"], {"key": key}).rowcount)

    def memo_prune(self, *, now: float) -> int:
        with self._writing(durable=False) as conn:
            return int(conn.execute(Q["memo_prune"], {"now": now}).rowcount)

    def error_insert(
        self,
        job_id: str,
        fence: int,
        *,
        attempt: int,
        seq: int | None,
        step: str | None,
        error: str,
        now: float,
    ) -> None:
        params = rows.error_params(
            job_id, fence, attempt=attempt, seq=seq, step=step, error=error, now=now
        )
        with self._lock, self._translate():
            self._write.execute(Q["error_insert"], params)

    def error_list(self, job_id: str) -> list[ErrorRecord]:
        return [rows.error_record(row) for row in self._read(Q["error_list"], {"job_id": job_id})]


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


__all__ = ["SQLiteStore"]
