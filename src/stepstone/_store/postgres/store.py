"""The PostgreSQL dialect of the SQL store.

Claims take due jobs with ``FOR UPDATE SKIP LOCKED`` in batches (jobs with a concurrency
limit in a second pass under advisory locks); idle workers are woken by ``LISTEN/NOTIFY``
(a trigger notifies when a job becomes queued) with a slow poll as the fallback. Every
checkpoint and outcome write is conditional on the job's fencing token, and a checkpoint
share-locks the job row so that no claim can slip in between the check and the insert.
Checkpoints commit with ``synchronous_commit = off``: a crash of a worker loses none, a
crash of the database server may lose the last few (those steps then run again, which
at-least-once allows); enqueues and outcomes commit with it on. Tables live in their own
schema (``stepstone`` by default; ``?schema=`` in the URL or ``App(schema=...)``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, cast

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row, tuple_row
from psycopg_pool import ConnectionPool, PoolTimeout

from ...errors import StepstoneError, StoreError
from ...types import ClaimedJob, InsertResult, MemoClaim, NewJob, Outcome
from .. import rows
from .._sql import SQLStore, T, Work
from ..base import StepTransaction
from ..queries import load_queries
from ..urls import mask_password
from .connection import (
    Connected,
    Row,
    StepConnection,
    check_connection,
    connect_kwargs,
    quote_identifier,
    split_url,
)
from .listener import Listener
from .migrations import migrate

_QUERIES = load_queries("postgres")
_DEFAULT_SCHEMA = "stepstone"
#: How many due limited jobs beyond the claim's limit a claim locks and looks at.
LIMIT_SCAN = 100


class PostgresStore(Connected, SQLStore):
    """A store in a PostgreSQL database, shared by workers on many machines."""

    inline_calls = False
    pushes_changes = True
    unique_violation = psycopg.errors.UniqueViolation

    def __init__(
        self,
        url: str,
        *,
        schema: str | None = None,
        durability: str = "normal",
        pool_size: int = 10,
        migrate: bool = True,
        connect_timeout: float = 10.0,
        retry_seconds: float = 30.0,
        idle_transaction_timeout: float = 30.0,
    ) -> None:
        conninfo, url_schema = split_url(url)
        self.conninfo = conninfo
        self.schema = schema or url_schema or _DEFAULT_SCHEMA
        self.url = mask_password(url)
        self.durability = durability
        self.retry_seconds = retry_seconds
        self.connect_timeout = connect_timeout
        if len(f"stepstone:{self.schema}".encode()) > 63:
            raise StoreError(
                f"PostgreSQL schema name {self.schema!r} is too long: stepstone's notification "
                "channel 'stepstone:<schema>' must fit in 63 bytes (use at most 53)"
            )
        if "'" in self.schema:
            raise StoreError(f"PostgreSQL schema name {self.schema!r} may not contain a quote")
        self._quoted = quote_identifier(self.schema)
        self.Q = {name: text.replace("{schema}", self._quoted) for name, text in _QUERIES.items()}
        self.channel = f"stepstone:{self.schema}"
        self._closed = False
        #: Shown in pg_stat_activity, unless the URL names its own application_name.
        self.application_name = f"stepstone:{self.schema}"[:63]
        self._connect_kwargs = connect_kwargs(
            conninfo, self.application_name, idle_transaction_timeout
        )
        self._listener = Listener(
            conninfo, self.channel, connect_timeout=connect_timeout, kwargs=self._connect_kwargs
        )
        check_connection(self.url, conninfo, connect_timeout, self._connect_kwargs)
        self._pool: ConnectionPool[StepConnection] = ConnectionPool(
            conninfo,
            min_size=1,
            max_size=max(pool_size, 2),
            kwargs={"autocommit": True, "row_factory": dict_row, **self._connect_kwargs},
            name=f"stepstone:{self.schema}",
            timeout=connect_timeout,
            open=False,
            connection_class=StepConnection,
        )
        self._pool.open(wait=False)
        if migrate:
            self.migrate()

    def migrate(self) -> list[str]:
        return migrate(self._run, self._quoted, self.channel)

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        self._pool.close()

    def change_marker(self) -> int | None:
        """Counts the notifications of newly queued jobs (the listener starts on first use)."""
        return self._listener.marker()

    def on_change(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` (from another thread) whenever a job becomes queued."""
        return self._listener.subscribe(callback)

    # the dialect ----------------------------------------------------------------------------
    def _session(self, work: Work[T], *, durable: bool = True) -> T:
        return self._run(work)

    def _transact(self, work: Work[T], *, durable: bool = True) -> T:
        def transact(conn: psycopg.Connection[Row], retried: bool) -> T:
            with conn.transaction():
                return work(conn, retried)

        return self._run(transact)

    def _query(self, name: str, params: dict[str, Any]) -> list[Any]:
        query = self.Q[name]
        return self._run(lambda conn, _retried: conn.execute(query, params).fetchall())

    def _fetch(self, name: str, params: dict[str, Any]) -> list[Row]:
        return self._query(name, params)

    def _array(self, values: Sequence[Any]) -> Any:
        return list(values)

    def _savepoint(self, conn: Any) -> AbstractContextManager[object]:
        connection = getattr(conn, "connection", conn)  # a cursor's connection
        if connection.info.transaction_status == TransactionStatus.IDLE:
            return nullcontext()  # outside a transaction a failed statement spoils nothing
        return cast(AbstractContextManager[object], connection.transaction())

    def _insert_batch(self, conn: Any, batch: list[dict[str, Any]]) -> set[str]:
        if not batch:
            return set()
        columns = {name: [params[name] for params in batch] for name in batch[0]}
        return {row["id"] for row in conn.execute(self.Q["job_insert_many"], columns)}

    def _lock_claim(self, conn: Any, job_id: str) -> None:
        row = conn.execute(self.Q["job_limit_key"], {"id": job_id}).fetchone()
        if row is not None and row["concurrency_key"] is not None:
            conn.execute(self.Q["limit_lock"], {"key": row["concurrency_key"]})

    def _lock_park(self, conn: Any, outcome: Outcome) -> None:
        # The park statement (a new snapshot) then sees whichever came first.
        if outcome.child is not None:
            conn.execute(self.Q["child_lock"], {"child": outcome.child})
        elif outcome.event is not None:
            conn.execute(self.Q["event_lock"], {"event": outcome.event})

    def _lock_event(self, conn: Any, event: str) -> None:
        conn.execute(self.Q["event_lock"], {"event": event})

    def _lock_rate(self, conn: Any, key: str) -> None:
        conn.execute(self.Q["rate_lock"], {"key": key})

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
            "now": now,
            "lease_until": lease_until,
            "limited": list(limited),
        }
        if not limited:
            return rows.claimed_jobs(self._fetch("job_claim_due", params))
        # Priority orders both kinds together: the limited jobs that rank among the best
        # `limit` due jobs are claimed first (under their keys' locks), then the unlimited
        # jobs fill the remaining places, as the single SQLite statement does.
        taken = self._claim_limited(params)
        if len(taken) < limit:
            taken += self._fetch("job_claim_due", {**params, "limit": limit - len(taken)})
        return rows.claimed_jobs(taken)

    def _claim_limited(self, params: dict[str, Any]) -> list[Row]:
        """Claim jobs with concurrency limits: lock the keys (a transaction-level advisory
        lock each, skipping keys another claimer holds), then count and claim in a new
        statement, which sees every claim committed before the locks were taken. A limited
        job is taken only if it ranks among the best ``limit`` due jobs of both kinds."""

        def claim(conn: psycopg.Connection[Row], _retried: bool) -> list[Row]:
            with conn.transaction():
                keys = [row["key"] for row in conn.execute(self.Q["limited_due_keys"], params)]
                if not keys:
                    return []
                locked = [
                    row["key"]
                    for row in conn.execute(self.Q["limit_locks"], {"keys": sorted(keys)})
                ]
                if not locked:
                    return []
                ahead = conn.execute(self.Q["unlimited_due_ranks"], params).fetchall()
                found = {
                    **params,
                    "keys": locked,
                    "scan": params["limit"] + LIMIT_SCAN,
                    "ahead_priority": [row["priority"] for row in ahead],
                    "ahead_run_at": [row["run_at"] for row in ahead],
                }
                return conn.execute(self.Q["job_claim_limited"], found).fetchall()

        return self._run(claim)

    def job_prune(self, *, finished_before: float, limit: int = 10_000) -> int:
        return self._statement("job_prune", {"before": finished_before, "limit": limit})

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
        params["synchronous_commit"] = "on" if self.durability == "full" else "off"

        def insert(conn: psycopg.Connection[Row], retried: bool) -> None:
            try:
                if conn.execute(self.Q["checkpoint_insert"], params).rowcount == 1:
                    return
            except psycopg.errors.UniqueViolation as exc:
                existing = conn.execute(
                    self.Q["checkpoint_get"], {"job_id": job_id, "seq": seq}
                ).fetchone()
                if retried and existing is not None and existing["fence"] == fence:
                    return  # the earlier try committed before its connection broke
                raise rows.duplicate_checkpoint(job_id, fence, seq, name) from exc
            except psycopg.errors.IntegrityError as exc:
                raise StoreError(
                    f"checkpoint #{seq} ({name}) of job {job_id} was refused: {exc}"
                ) from exc
            raise self._refusal(conn, job_id, fence)

        self._run(insert)

    def _insert_checkpoint(
        self, conn: psycopg.Connection[Any], params: dict[str, Any], *, retried: bool = False
    ) -> str:
        """Insert a checkpoint on ``conn`` (inside the caller's transaction); returns the
        value stored, which differs from ``params`` only on a retried write that had landed."""
        job_id, fence, seq, name = params["job_id"], params["fence"], params["seq"], params["name"]
        with conn.cursor(row_factory=dict_row) as cursor:
            try:
                with conn.transaction():  # a savepoint: a refusal leaves the outer one usable
                    if cursor.execute(self.Q["checkpoint_insert"], params).rowcount == 1:
                        return str(params["value"])
            except psycopg.errors.UniqueViolation as exc:
                existing = cursor.execute(
                    self.Q["checkpoint_get"], {"job_id": job_id, "seq": seq}
                ).fetchone()
                if retried and existing is not None and existing["fence"] == fence:
                    return str(existing["value"])
                raise rows.duplicate_checkpoint(job_id, fence, seq, name) from exc
            except psycopg.errors.IntegrityError as exc:
                raise StoreError(
                    f"checkpoint #{seq} ({name}) of job {job_id} was refused: {exc}"
                ) from exc
            row = cursor.execute(self.Q["job_owner"], {"id": job_id}).fetchone()
        raise rows.refusal(job_id, fence, row)

    @contextlib.contextmanager
    def step_transaction(self, job_id: str | None, fence: int | None) -> Iterator[StepTransaction]:
        try:
            lease = self._pool.connection()
            conn = lease.__enter__()
        except (psycopg.Error, PoolTimeout) as exc:
            raise StoreError(f"PostgreSQL at {self.url} is unreachable: {exc}") from exc
        error: BaseException | None = None
        try:
            conn.row_factory = cast(Any, tuple_row)  # psycopg's default, as users expect
            transaction = conn.transaction()
            try:
                transaction.__enter__()
            except psycopg.Error as exc:
                raise StoreError(f"cannot begin a transaction: {exc}") from exc
            conn.in_step = True
            try:
                yield _PostgresStepTransaction(self, conn, job_id, fence)
            except BaseException as exc:
                conn.in_step = False
                with contextlib.suppress(psycopg.Error):
                    transaction.__exit__(type(exc), exc, exc.__traceback__)
                raise
            conn.in_step = False
            if conn.info.transaction_status != TransactionStatus.INTRANS:
                with contextlib.suppress(psycopg.Error):
                    transaction.__exit__(None, None, None)
                raise StepstoneError(
                    "the transactional step ended or broke its transaction itself (it ran "
                    "COMMIT or ROLLBACK, or a statement failed and the error was caught); "
                    "stepstone commits the step's writes with its checkpoint when the "
                    "function returns"
                )
            try:
                transaction.__exit__(None, None, None)
            except psycopg.Error as exc:
                raise StoreError(
                    f"the transaction of a transactional step did not commit: {exc}"
                ) from exc
        except BaseException as exc:
            error = exc
            raise
        finally:
            conn.in_step = False
            conn.row_factory = dict_row
            if error is None:
                lease.__exit__(None, None, None)
            else:
                with contextlib.suppress(Exception):
                    lease.__exit__(type(error), error, error.__traceback__)

    # enqueue inside the caller's transaction ------------------------------------------------
    def job_insert_on(self, connection: Any, job: NewJob, *, now: float) -> InsertResult:
        if not isinstance(connection, psycopg.Connection):
            raise TypeError(
                "enqueue(connection=...) on a PostgreSQL app takes a psycopg (3) Connection "
                f"to the same database, not {type(connection).__name__}"
                + (" (call it from sync code)" if "Async" in type(connection).__name__ else "")
            )
        params = rows.insert_params(job, now=now, owner=None, lease_until=0.0)
        try:
            with connection.cursor(row_factory=dict_row) as cursor:
                table = cursor.execute(
                    "SELECT to_regclass(%s) AS oid", (f"{self._quoted}.jobs",)
                ).fetchone()
                if table is None or table["oid"] is None:
                    raise StoreError(
                        f"enqueue(connection=...): this connection does not see stepstone's "
                        f"tables (schema {self.schema!r}); connect it to the database of the "
                        f"app ({self.url}) so that the job and your writes share a transaction"
                    )
                return self._insert(cursor, params, False)
        except psycopg.Error as exc:
            raise StoreError(f"enqueue on the caller's connection failed: {exc}") from exc

    # memo keys --------------------------------------------------------------------------
    def memo_acquire(
        self, key: str, job_id: str, fence: int, *, step: str, now: float
    ) -> MemoClaim:
        params = {"key": key, "step": step, "job_id": job_id, "fence": fence, "now": now}

        def acquire(conn: psycopg.Connection[Row], retried: bool) -> MemoClaim:
            row = conn.execute(self.Q["memo_get"], params).fetchone()
            if row is not None:
                decision = rows.memo_decision(rows.memo_record(row), job_id, fence, now)
                if decision.outcome == "hit":
                    return decision
            while True:
                with conn.transaction():
                    if conn.execute(self.Q["memo_insert_claim"], params).rowcount == 1:
                        return MemoClaim("acquired")
                    row = conn.execute(self.Q["memo_get_for_update"], params).fetchone()
                    if row is None:
                        continue  # forgotten meanwhile: claim it afresh
                    record = rows.memo_record(row)
                    if retried and record.owner_job == job_id and record.owner_fence == fence:
                        return MemoClaim("acquired")  # our earlier try claimed it
                    decision = rows.memo_decision(record, job_id, fence, now)
                    if decision.outcome == "acquired":
                        conn.execute(self.Q["memo_claim"], params)
                    return decision

        return self._run(acquire)

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

        def complete(conn: psycopg.Connection[Row], retried: bool) -> str:
            with conn.transaction():
                stored = value
                if conn.execute(self.Q["memo_store"], memo).rowcount != 1:
                    found = conn.execute(self.Q["memo_value"], {"key": key}).fetchone()
                    if found is not None:
                        stored = found["value"]
                params = rows.checkpoint_params(
                    job_id,
                    fence,
                    seq=seq,
                    name=name,
                    status="ok",
                    value=stored,
                    attempts=attempts,
                    now=now,
                    memo=key,
                )
                params["synchronous_commit"] = "on" if self.durability == "full" else "off"
                return self._insert_checkpoint(conn, params, retried=retried)

        return self._run(complete)


class _PostgresStepTransaction(StepTransaction):
    def __init__(
        self,
        store: PostgresStore,
        conn: psycopg.Connection[Any],
        job_id: str | None,
        fence: int | None,
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
        params["synchronous_commit"] = "on"  # the user's own data commits with it
        try:
            self.store._insert_checkpoint(self.connection, params)
        except psycopg.Error as exc:
            raise StoreError(f"the checkpoint of step {name} could not be written: {exc}") from exc


__all__ = ["PostgresStore"]
