"""The scale-out store: one PostgreSQL database shared by any number of workers on any
number of machines, with no broker.

Claims take due jobs with ``FOR UPDATE SKIP LOCKED`` in batches; idle workers are woken by
``LISTEN/NOTIFY`` (a trigger notifies when a job becomes queued) with a slow poll as the
fallback. Every checkpoint and outcome write is conditional on the job's fencing token,
and a checkpoint share-locks the job row so that no claim can slip in between the check
and the insert. Checkpoints commit with ``synchronous_commit = off``: a crash of a worker
loses none, a crash of the database server may lose the last few (those steps then run
again, which at-least-once allows); enqueues and outcomes commit with it on.

A dropped connection or a restarting server is retried with backoff for a while
(``retry_seconds``); writes are made safe to repeat (a retried write that had in fact
committed is recognised by its fencing token). Tables live in their own schema
(``stepstone`` by default; ``?schema=`` in the URL or ``App(schema=...)``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar, cast
from urllib.parse import unquote, urlsplit, urlunsplit

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
    JobState,
    MemoClaim,
    MemoRecord,
    NewJob,
    Rescue,
    StepTransaction,
    Store,
    poison_error,
)
from .queries import load_migrations, load_queries
from .urls import mask_password

try:
    import psycopg
    from psycopg.conninfo import conninfo_to_dict
    from psycopg.pq import TransactionStatus
    from psycopg.rows import dict_row, tuple_row
    from psycopg_pool import ConnectionPool, PoolTimeout
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise StoreError(
        "the PostgreSQL store needs psycopg 3 and psycopg_pool: pip install 'stepstone[postgres]'"
    ) from exc

T = TypeVar("T")
Row = dict[str, Any]
logger = logging.getLogger("stepstone")

_QUERIES = load_queries("postgres")
_DEFAULT_SCHEMA = "stepstone"
#: How many due limited jobs beyond the claim's limit a claim locks and looks at.
LIMIT_SCAN = 100
#: What libpq says when the server is away for now rather than the URL being wrong.
_SERVER_AWAY = ("Connection refused", "starting up", "shutting down", "in recovery")


def split_url(url: str) -> tuple[str, str | None]:
    """The libpq URL without stepstone's own ``schema`` parameter, and that parameter.

    The other parameters are kept exactly as written (percent-encoding included).
    """
    parts = urlsplit(url)
    kept: list[str] = []
    schema = None
    for pair in parts.query.split("&") if parts.query else []:
        name, _, value = pair.partition("=")
        if name == "schema":
            schema = unquote(value)
        else:
            kept.append(pair)
    return urlunsplit(parts._replace(query="&".join(kept))), schema


def quote_identifier(name: str) -> str:
    """``name`` as a quoted SQL identifier."""
    if not name or "\x00" in name:
        raise StoreError(f"invalid PostgreSQL schema name {name!r}")
    return '"' + name.replace('"', '""') + '"'


class StepConnection(psycopg.Connection[Any]):
    """The pool's connection type: while a transactional step runs on it, its transaction
    belongs to stepstone, so ``commit()`` and ``rollback()`` are refused."""

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


def _filters(names: Sequence[str], queues: Sequence[str] | None) -> dict[str, Any]:
    return {
        "names": list(names),
        "any_queue": queues is None,
        "queues": list(queues) if queues is not None else [],
    }


class PostgresStore(Store):
    """A store in a PostgreSQL database, shared by workers on many machines."""

    inline_calls = False
    pushes_changes = True

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
        self._lock = threading.Lock()
        self._changes = 0
        self._callbacks: list[Callable[[], None]] = []
        self._listener: threading.Thread | None = None
        #: Shown in pg_stat_activity, unless the URL names its own application_name.
        self.application_name = f"stepstone:{self.schema}"[:63]
        self._connect_kwargs: dict[str, Any] = {}
        if "application_name" not in conninfo:
            self._connect_kwargs["application_name"] = self.application_name
        # A worker frozen inside one of the store's short transactions (SIGSTOP, a VM
        # pause) would hold its row locks for as long as it is frozen: the server ends
        # such a session instead, and the frozen worker's fenced writes fail on resume.
        given = str(conninfo_to_dict(conninfo).get("options") or "")
        if "idle_in_transaction_session_timeout" not in given:
            timeout_ms = int(idle_transaction_timeout * 1000)
            own = f"-c idle_in_transaction_session_timeout={timeout_ms}"
            self._connect_kwargs["options"] = f"{given} {own}".strip()
        self._check_connection()
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

    # connections ------------------------------------------------------------------------
    def _check_connection(self) -> None:
        """Connect once up front, so that a wrong URL fails now with the server's reason.

        A server that is down, starting or shutting down gives a *transient* StoreError,
        which a starting worker waits out; a wrong URL, database or role does not.
        """
        try:
            with psycopg.connect(
                self.conninfo,
                connect_timeout=int(self.connect_timeout),
                **self._connect_kwargs,
            ):
                return
        except psycopg.Error as exc:
            reason = str(exc).strip()
            error = StoreError(f"cannot connect to PostgreSQL at {self.url}: {reason}")
            error.transient = any(sign in reason for sign in _SERVER_AWAY)
            raise error from exc

    def _run(self, operation: Callable[[psycopg.Connection[Row], bool], T]) -> T:
        """Run ``operation(conn, retried)`` on a pooled connection, retrying lost connections.

        ``retried`` tells a write that an earlier try may have committed before its
        connection broke, so that it can recognise its own work.
        """
        deadline = time.monotonic() + self.retry_seconds
        delay = 0.05
        retried = False
        while True:
            try:
                with self._pool.connection() as conn:
                    return operation(conn, retried)
            except StepstoneError:
                raise
            except (psycopg.OperationalError, PoolTimeout) as exc:
                if self._closed or time.monotonic() + delay > deadline:
                    raise StoreError(
                        f"PostgreSQL at {self.url} is unreachable: {str(exc).strip()}"
                    ) from exc
                logger.warning(
                    "database connection failed (%s); retrying in %.2fs",
                    str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
                    delay,
                    extra={"action": "store.reconnecting"},
                )
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
                retried = True
                # Connections cut in the same event wait idle in the pool: drop them now,
                # or each retry would draw another dead one.
                self._pool.check()
            except psycopg.Error as exc:
                raise StoreError(f"PostgreSQL error: {str(exc).strip()}") from exc

    def _fetch(self, name: str, params: dict[str, Any]) -> list[Row]:
        query = self.Q[name]
        return self._run(lambda conn, _retried: conn.execute(query, params).fetchall())

    def close(self) -> None:
        self._closed = True
        self._pool.close()

    # changes ----------------------------------------------------------------------------
    def change_marker(self) -> int | None:
        """Counts the notifications of newly queued jobs (the listener starts on first use)."""
        self._ensure_listener()
        return self._changes

    def on_change(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` (from another thread) whenever a job becomes queued."""
        with self._lock:
            self._callbacks.append(callback)
        self._ensure_listener()

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._callbacks:
                    self._callbacks.remove(callback)

        return unsubscribe

    def _ensure_listener(self) -> None:
        with self._lock:
            if self._listener is None or not self._listener.is_alive():
                self._listener = threading.Thread(
                    target=self._listen, name="stepstone-listen", daemon=True
                )
                self._listener.start()

    def _changed(self) -> None:
        with self._lock:
            self._changes += 1
            callbacks = list(self._callbacks)
        for callback in callbacks:
            try:
                callback()
            except Exception:
                logger.exception("a change callback failed", extra={"action": "store.listen"})

    def _listen(self) -> None:
        delay = 0.1
        listen = f"LISTEN {quote_identifier(self.channel)}"
        while not self._closed:
            try:
                with psycopg.connect(
                    self.conninfo,
                    autocommit=True,
                    connect_timeout=int(self.connect_timeout),
                    **self._connect_kwargs,
                ) as conn:
                    conn.execute(listen)
                    self._changed()  # notifications may have been missed while away
                    delay = 0.1
                    while not self._closed:
                        for _notify in conn.notifies(timeout=1.0):
                            self._changed()
            except psycopg.Error as exc:
                if self._closed:
                    return
                logger.warning(
                    "LISTEN connection lost (%s); reconnecting in %.1fs",
                    str(exc).strip(),
                    delay,
                    extra={"action": "store.listen"},
                )
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    # migrations -------------------------------------------------------------------------
    def migrate(self) -> list[str]:
        quoted = self._quoted

        def applied_versions(conn: psycopg.Connection[Row], _retried: bool) -> set[int]:
            table = conn.execute(
                "SELECT to_regclass(%s) AS oid", (f"{quoted}.migrations",)
            ).fetchone()
            if table is None or table["oid"] is None:
                return set()
            return {
                row["version"] for row in conn.execute(f"SELECT version FROM {quoted}.migrations")
            }

        def apply(conn: psycopg.Connection[Row], _retried: bool) -> list[str]:
            applied: list[str] = []
            with conn.transaction():
                # Many workers starting at once: one applies, the others wait, then see it.
                conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self.channel,))
                conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quoted}")
                conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {quoted}.migrations (version integer PRIMARY "
                    "KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
                )
                done = {
                    row["version"]
                    for row in conn.execute(f"SELECT version FROM {quoted}.migrations")
                }
                for migration in load_migrations("postgres"):
                    if migration.version in done:
                        continue
                    conn.execute(migration.sql.replace("{schema}", quoted).encode())
                    conn.execute(
                        f"INSERT INTO {quoted}.migrations (version, name) VALUES (%s, %s)",
                        (migration.version, migration.name),
                    )
                    applied.append(f"{migration.version:04d}_{migration.name}")
            return applied

        # Up to date (every start but the first): nothing to lock, and no CREATE privilege
        # is needed on the database.
        wanted = {migration.version for migration in load_migrations("postgres")}
        if wanted <= self._run(applied_versions):
            return []
        return self._run(apply)

    # jobs -------------------------------------------------------------------------------
    def job_insert(
        self, job: NewJob, *, now: float, owner: str | None = None, lease_until: float = 0.0
    ) -> InsertResult:
        params = rows.insert_params(job, now=now, owner=owner, lease_until=lease_until)

        def insert(conn: psycopg.Connection[Row], retried: bool) -> InsertResult:
            try:
                inserted = conn.execute(self.Q["job_insert"], params).rowcount
            except psycopg.errors.UniqueViolation as exc:
                row = conn.execute(self.Q["job_get"], {"id": job.id}).fetchone()
                if retried and row is not None and row["args"] == job.args:
                    return InsertResult(rows.job_record(row), created=True)  # our own earlier try
                raise StoreError(f"job id {job.id} is already taken") from exc
            if inserted == 1:  # what was written is known: no need to read it back
                return InsertResult(rows.inserted_record(params), created=True)
            row = conn.execute(self.Q["job_get_by_key"], {"key": job.key}).fetchone()
            if row is None:  # the job holding the key was pruned meanwhile: insert again
                return insert(conn, retried)
            created = retried and row["id"] == job.id
            return InsertResult(rows.job_record(row), created=created)

        return self._run(insert)

    def job_get(self, job_id: str) -> JobRecord | None:
        found = self._fetch("job_get", {"id": job_id})
        return rows.job_record(found[0]) if found else None

    def job_get_by_key(self, key: str) -> JobRecord | None:
        found = self._fetch("job_get_by_key", {"key": key})
        return rows.job_record(found[0]) if found else None

    def job_get_many(self, *, ids: Sequence[str] = (), keys: Sequence[str] = ()) -> list[JobRecord]:
        params = {"ids": list(ids), "keys": list(keys)}
        return [rows.job_record(row) for row in self._fetch("job_get_many", params)]

    def job_list(
        self, *, states: Sequence[str] | None = None, name: str | None = None, limit: int = 50
    ) -> list[JobRecord]:
        params = {
            "any_state": states is None,
            "states": list(states) if states is not None else [],
            "name": name,
            "limit": limit,
        }
        return [rows.job_record(row) for row in self._fetch("job_list", params)]

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
            **_filters(names, queues),
            "owner": owner,
            "limit": limit,
            "now": now,
            "lease_until": lease_until,
            "limited": list(limited),
        }
        claimed = rows.claimed_jobs(self._fetch("job_claim_due", params))
        if limited and len(claimed) < limit:
            params = {**params, "limit": limit - len(claimed)}
            claimed += self._claim_limited(params)
        return claimed

    def _claim_limited(self, params: dict[str, Any]) -> list[ClaimedJob]:
        """Claim jobs with concurrency limits: lock the keys (a transaction-level advisory
        lock each, skipping keys another claimer holds), then count and claim in a new
        statement, which sees every claim committed before the locks were taken."""

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
                found = {**params, "keys": locked, "scan": params["limit"] + LIMIT_SCAN}
                return conn.execute(self.Q["job_claim_limited"], found).fetchall()

        return rows.claimed_jobs(self._run(claim))

    def job_claim(
        self, job_id: str, *, owner: str, now: float, lease_until: float
    ) -> ClaimedJob | None:
        params = {"id": job_id, "owner": owner, "now": now, "lease_until": lease_until}

        def claim(conn: psycopg.Connection[Row], _retried: bool) -> list[Row]:
            with conn.transaction():
                row = conn.execute(self.Q["job_limit_key"], params).fetchone()
                if row is not None and row["concurrency_key"] is not None:
                    conn.execute(self.Q["limit_lock"], {"key": row["concurrency_key"]})
                return conn.execute(self.Q["job_claim"], params).fetchall()

        claimed = rows.claimed_jobs(self._run(claim))
        return claimed[0] if claimed else None

    def job_idle_status(
        self, *, names: Sequence[str], queues: Sequence[str] | None, now: float
    ) -> IdleStatus:
        row = self._fetch("job_idle_status", {**_filters(names, queues), "now": now})[0]
        return IdleStatus(
            due=bool(row["due"]), running=int(row["running"]), next_run_at=row["next_run_at"]
        )

    def job_heartbeat(self, leases: Sequence[tuple[str, int]], *, lease_until: float) -> set[str]:
        if not leases:
            return set()
        params = {
            "ids": [job_id for job_id, _ in leases],
            "fences": [fence for _, fence in leases],
            "lease_until": lease_until,
        }
        kept = {row["id"] for row in self._fetch("job_heartbeat", params)}
        return {job_id for job_id, _ in leases if job_id not in kept}

    def job_rescue_expired(self, *, now: float, limit: int = 100) -> Rescue:
        def rescue(conn: psycopg.Connection[Row], _retried: bool) -> Rescue:
            requeued: list[str] = []
            poisoned: list[str] = []
            with conn.transaction():
                expired = conn.execute(
                    self.Q["job_expired_leases"], {"now": now, "limit": limit}
                ).fetchall()
                for row in expired:
                    # A reclaim counts toward poison only if the run it ends wrote nothing.
                    reclaims = 0 if row["progressed"] else row["reclaims"] + 1
                    params = {"id": row["id"], "fence": row["fence"], "now": now}
                    if reclaims >= POISON_RECLAIMS:
                        error = poison_error(row["id"], reclaims)
                        conn.execute(
                            self.Q["job_fail_poison"],
                            {**params, "reclaims": reclaims, "error": error},
                        )
                        conn.execute(
                            self.Q["error_insert_unfenced"],
                            {
                                "job_id": row["id"],
                                "attempt": row["attempts"],
                                "fence": row["fence"],
                                "error": error,
                                "now": now,
                            },
                        )
                        poisoned.append(row["id"])
                    else:
                        conn.execute(
                            self.Q["job_requeue_expired"],
                            {**params, "reclaims": reclaims},
                        )
                        requeued.append(row["id"])
            return Rescue(requeued=requeued, poisoned=poisoned)

        return self._run(rescue)

    def _refuse(
        self,
        conn: psycopg.Connection[Row],
        job_id: str,
        fence: int,
        *,
        retried: bool = False,
        done_state: JobState | None = None,
    ) -> StepstoneError | None:
        """Why a fenced write changed nothing; None when it was this writer's own retry."""
        row = conn.execute(self.Q["job_owner"], {"id": job_id}).fetchone()
        if retried and row is not None and row["fence"] == fence and row["state"] == done_state:
            return None  # the earlier try committed before its connection broke
        return rows.refusal(job_id, fence, row)

    def _outcome(
        self,
        name: str,
        params: dict[str, Any],
        done_state: JobState,
        after: Callable[[psycopg.Connection[Row]], object] | None = None,
    ) -> None:
        job_id, fence = params["id"], params["fence"]

        def write(conn: psycopg.Connection[Row], retried: bool) -> None:
            if after is None:  # one statement: its own transaction, one round trip
                if conn.execute(self.Q[name], params).rowcount == 1:
                    return
                refusal = self._refuse(conn, job_id, fence, retried=retried, done_state=done_state)
            else:
                with conn.transaction():
                    if conn.execute(self.Q[name], params).rowcount == 1:
                        after(conn)
                        return
                    refusal = self._refuse(
                        conn, job_id, fence, retried=retried, done_state=done_state
                    )
            if refusal is not None:
                raise refusal

        self._run(write)

    def job_complete(self, job_id: str, fence: int, *, result: str, now: float) -> None:
        params = {"id": job_id, "fence": fence, "result": result, "now": now}
        self._outcome("job_complete", params, JobState.SUCCEEDED)

    def job_complete_many(
        self, completions: Sequence[Completion], *, now: float
    ) -> dict[str, StepstoneError]:
        params = {
            "ids": [done.job_id for done in completions],
            "fences": [done.fence for done in completions],
            "results": [done.result for done in completions],
            "now": now,
        }

        def complete(conn: psycopg.Connection[Row], retried: bool) -> dict[str, StepstoneError]:
            written = {row["id"] for row in conn.execute(self.Q["job_complete_many"], params)}
            missed = [done for done in completions if done.job_id not in written]
            if not missed:
                return {}
            owners = {
                row["id"]: row
                for row in conn.execute(
                    self.Q["job_owners"], {"ids": [done.job_id for done in missed]}
                )
            }
            refused: dict[str, StepstoneError] = {}
            for done in missed:
                row = owners.get(done.job_id)
                if (
                    retried
                    and row is not None
                    and row["fence"] == done.fence
                    and row["state"] == JobState.SUCCEEDED
                ):
                    continue  # the earlier try committed before its connection broke
                refused[done.job_id] = rows.refusal(done.job_id, done.fence, row)
            return refused

        return self._run(complete)

    def job_fail(self, job_id: str, fence: int, *, error: str, attempt: int, now: float) -> None:
        params = {"id": job_id, "fence": fence, "error": error, "now": now}
        record = {"job_id": job_id, "attempt": attempt, "fence": fence, "error": error, "now": now}
        self._outcome(
            "job_fail",
            params,
            JobState.FAILED,
            lambda conn: conn.execute(self.Q["error_insert_unfenced"], record),
        )

    def job_retry_later(
        self, job_id: str, fence: int, *, error: str, attempt: int, run_at: float, now: float
    ) -> None:
        params = {"id": job_id, "fence": fence, "error": error, "run_at": run_at, "now": now}
        record = {"job_id": job_id, "attempt": attempt, "fence": fence, "error": error, "now": now}

        def after(conn: psycopg.Connection[Row]) -> None:
            conn.execute(self.Q["checkpoint_drop_from_first_error"], {"job_id": job_id})
            conn.execute(self.Q["error_insert_unfenced"], record)

        self._outcome("job_retry_later", params, JobState.QUEUED, after)

    def job_release(self, job_id: str, fence: int, *, now: float) -> bool:
        params = {"id": job_id, "fence": fence, "now": now}
        return bool(
            self._run(lambda conn, _r: conn.execute(self.Q["job_release"], params).rowcount)
        )

    def job_cancel(self, job_id: str, *, now: float) -> bool:
        def cancel(conn: psycopg.Connection[Row], _retried: bool) -> bool:
            found = conn.execute(self.Q["job_cancel"], {"id": job_id, "now": now}).fetchall()
            if any(row["id"] == job_id for row in found):
                return True
            if conn.execute(self.Q["job_owner"], {"id": job_id}).fetchone() is None:
                raise JobNotFound(f"no job with id {job_id!r}")
            return False

        return self._run(cancel)

    def job_requeue(self, job_id: str, *, now: float) -> bool:
        def requeue(conn: psycopg.Connection[Row], _retried: bool) -> bool:
            with conn.transaction():
                if conn.execute(self.Q["job_requeue"], {"id": job_id, "now": now}).rowcount:
                    conn.execute(self.Q["checkpoint_drop_from_first_error"], {"job_id": job_id})
                    return True
                missing = conn.execute(self.Q["job_owner"], {"id": job_id}).fetchone() is None
            if missing:
                raise JobNotFound(f"no job with id {job_id!r}")
            return False

        return self._run(requeue)

    def job_prune(self, *, finished_before: float, limit: int = 10_000) -> int:
        params = {"before": finished_before, "limit": limit}
        return int(self._run(lambda conn, _r: conn.execute(self.Q["job_prune"], params).rowcount))

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
        params = {
            "id": job_id,
            "fence": fence,
            "until": until,
            "event": f"{JOB_EVENT_PREFIX}{child}" if child is not None else event,
            "signal_event": event if child is None else None,
            "after": signal_after,
            "child": child,
            "now": now,
        }

        def park(conn: psycopg.Connection[Row], retried: bool) -> None:
            with conn.transaction():
                # Serialise with the signal or the child's end, so that neither is missed:
                # the park statement (a new snapshot) then sees whichever came first.
                if child is not None:
                    conn.execute(self.Q["child_lock"], params)
                elif event is not None:
                    conn.execute(self.Q["event_lock"], {"event": event})
                if conn.execute(self.Q["job_park"], params).rowcount == 1:
                    return
                row = conn.execute(self.Q["job_owner"], {"id": job_id}).fetchone()
            parked = ("waiting", "queued")
            if retried and row is not None and row["fence"] == fence and row["state"] in parked:
                return  # the earlier try parked it before its connection broke
            raise rows.refusal(job_id, fence, row)

        self._run(park)

    def signal_send(self, event: str, payload: str, *, now: float) -> int:
        params = {"event": event, "payload": payload, "now": now}

        def send(conn: psycopg.Connection[Row], _retried: bool) -> int:
            with conn.transaction():
                conn.execute(self.Q["event_lock"], params)
                conn.execute(self.Q["signal_insert"], params)
                return int(conn.execute(self.Q["signal_wake"], params).rowcount)

        return self._run(send)

    def signal_next(self, event: str, *, after: int, since: float) -> tuple[int, str] | None:
        found = self._fetch("signal_next", {"event": event, "after": after, "since": since})
        return (int(found[0]["id"]), str(found[0]["payload"])) if found else None

    def signal_prune(self, *, before: float) -> int:
        params = {"before": before}
        return int(
            self._run(lambda conn, _r: conn.execute(self.Q["signal_prune"], params).rowcount)
        )

    def job_debounce(self, job: NewJob, *, now: float) -> InsertResult:
        params = rows.insert_params(job, now=now, owner=None, lease_until=0.0)

        def debounce(conn: psycopg.Connection[Row], _retried: bool) -> InsertResult:
            while True:
                with conn.transaction():
                    row = conn.execute(self.Q["job_debounce"], params).fetchone()
                    if row is not None:
                        record = conn.execute(self.Q["job_get"], {"id": row["id"]}).fetchone()
                        assert record is not None
                        return InsertResult(rows.job_record(record), created=False)
                    if conn.execute(self.Q["job_debounce_insert"], params).rowcount == 1:
                        return InsertResult(rows.inserted_record(params), created=True)
                # another enqueue inserted the key's job meanwhile: replace that one

        return self._run(debounce)

    def schedule_next(self, name: str) -> float | None:
        found = self._fetch("schedule_next", {"name": name})
        return float(found[0]["next_tick"]) if found else None

    def schedule_advance(
        self, name: str, *, expected: float | None, tick: float, now: float
    ) -> bool:
        query = "schedule_insert" if expected is None else "schedule_update"
        params = {"name": name, "expected": expected, "tick": tick, "now": now}
        return bool(self._run(lambda conn, _r: conn.execute(self.Q[query], params).rowcount) == 1)

    def schedule_list(self) -> list[tuple[str, float]]:
        return [(row["name"], float(row["next_tick"])) for row in self._fetch("schedule_list", {})]

    def rate_acquire(self, key: str, *, limit: int, per: float, now: float) -> float:
        def acquire(conn: psycopg.Connection[Row], _retried: bool) -> float:
            with conn.transaction():
                conn.execute(self.Q["rate_lock"], {"key": key})
                row = conn.execute(self.Q["rate_get"], {"key": key}).fetchone()
                calls = json.loads(row["calls"]) if row else []
                wait, kept = rows.rate_window(calls, limit=limit, per=per, now=now)
                if kept is not None:
                    conn.execute(self.Q["rate_set"], {"key": key, "calls": json.dumps(kept)})
                return wait

        return self._run(acquire)

    # checkpoints and errors -------------------------------------------------------------
    def checkpoint_list(self, job_id: str) -> list[Checkpoint]:
        return [rows.checkpoint(row) for row in self._fetch("checkpoint_list", {"job_id": job_id})]

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
            refusal = self._refuse(conn, job_id, fence)
            assert refusal is not None
            raise refusal

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

    # bulk and caller-transaction enqueues -------------------------------------------------
    def job_insert_many(self, jobs: Sequence[NewJob], *, now: float) -> list[InsertResult]:
        if not jobs:
            return []

        def insert(conn: psycopg.Connection[Row], retried: bool) -> list[InsertResult]:
            with conn.transaction():
                landed: set[str] = set()
                if retried:  # an earlier try may have committed before its connection broke
                    landed = {
                        row["id"]
                        for row in conn.execute(
                            f"SELECT id FROM {self._quoted}.jobs WHERE id = ANY(%s)",
                            ([job.id for job in jobs],),
                        )
                    }
                fresh = [job for job in jobs if job.id not in landed]
                params = {
                    "ids": [job.id for job in fresh],
                    "names": [job.name for job in fresh],
                    "queues": [job.queue for job in fresh],
                    "keys": [job.key for job in fresh],
                    "args": [job.args for job in fresh],
                    "priorities": [job.priority for job in fresh],
                    "run_ats": [job.run_at for job in fresh],
                    "now": now,
                }
                inserted = landed | {
                    row["id"] for row in conn.execute(self.Q["job_insert_many"], params)
                }
                taken = [job.key for job in jobs if job.id not in inserted and job.key]
                existing = (
                    {
                        row["key"]: rows.job_record(row)
                        for row in conn.execute(self.Q["job_get_by_keys"], {"keys": taken})
                    }
                    if taken
                    else {}
                )
            results = []
            for job in jobs:
                if job.id in inserted:
                    params = rows.insert_params(job, now=now, owner=None, lease_until=0.0)
                    results.append(InsertResult(rows.inserted_record(params), created=True))
                elif job.key in existing:
                    results.append(InsertResult(existing[job.key], created=False))
                else:  # the job holding the key was pruned meanwhile
                    raise psycopg.OperationalError("a key's job vanished during the insert")
            return results

        return self._run(insert)

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
                if cursor.execute(self.Q["job_insert"], params).rowcount == 1:
                    return InsertResult(rows.inserted_record(params), created=True)
                row = cursor.execute(self.Q["job_get_by_key"], {"key": job.key}).fetchone()
        except psycopg.Error as exc:
            raise StoreError(f"enqueue on the caller's connection failed: {exc}") from exc
        if row is None:  # pragma: no cover - the key's job was pruned meanwhile
            raise StoreError(f"the job holding key {job.key!r} vanished; enqueue again")
        return InsertResult(rows.job_record(row), created=False)

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

    def memo_release(self, key: str, job_id: str, fence: int) -> None:
        params = {"key": key, "job_id": job_id, "fence": fence}
        self._run(lambda conn, _r: conn.execute(self.Q["memo_release"], params))

    def memo_get(self, key: str, *, now: float) -> MemoRecord | None:
        found = self._fetch("memo_get", {"key": key, "now": now})
        return rows.memo_record(found[0]) if found else None

    def memo_list(self, prefix: str = "", *, limit: int = 100) -> list[MemoRecord]:
        found = self._fetch("memo_list", {"prefix": prefix, "limit": limit})
        return [rows.memo_record(row) for row in found]

    def memo_forget(self, key: str, *, prefix: bool = False) -> int:
        name, params = (
            ("memo_forget_prefix", {"prefix": key}) if prefix else ("memo_forget", {"key": key})
        )
        return int(self._run(lambda conn, _r: conn.execute(self.Q[name], params).rowcount))

    def memo_prune(self, *, now: float) -> int:
        params = {"now": now}
        return int(self._run(lambda conn, _r: conn.execute(self.Q["memo_prune"], params).rowcount))

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
        self._run(lambda conn, _r: conn.execute(self.Q["error_insert"], params))

    def error_list(self, job_id: str) -> list[ErrorRecord]:
        return [rows.error_record(row) for row in self._fetch("error_list", {"job_id": job_id})]


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


__all__ = ["PostgresStore", "quote_identifier", "split_url"]
