"""The SQL store: every operation's shape written once, over a thin dialect.

An operation here decides which named statements run, which of them share one
transaction, what is returned and the policy (fencing refusals, what retry-later drops).
A dialect (``sqlite.py``, ``postgres/``) supplies only the SQL text (``Q``, by name, from
its ``.sql`` file), how a piece of work runs on a connection (``_session``,
``_transact``), how a read runs (``_query``), how a list travels as a parameter
(``_array``), the locks its concurrency needs (``_lock_*``), its claim statements, and the
translation of driver errors. The connection a piece of work gets is the driver's own:
``conn.execute(sql, params)`` returns a cursor with ``rowcount``, ``fetchone`` and
``fetchall`` over rows read by column name, on both drivers.

The fenced writes of a run's end and of the rescuer live beside it, in ``_sql_writes``.

A piece of work is ``work(conn, retried)``: ``retried`` tells a write that an earlier try
may have committed before its connection broke (PostgreSQL), so it can recognise its own
work instead of reporting it refused.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, ClassVar, TypeVar

from ..errors import JobNotFound, StepstoneError, StoreError
from ..types import (
    Checkpoint,
    ClaimedJob,
    ErrorRecord,
    ExpiredLease,
    IdleStatus,
    InsertResult,
    JobRecord,
    MemoRecord,
    NewJob,
    Outcome,
    OutcomeKind,
    Rescue,
    RescueDecision,
)
from . import rows
from ._sql_writes import write_outcomes, write_rescues
from .base import Store

T = TypeVar("T")
#: A piece of work on a connection: ``work(conn, retried)``.
Work = Callable[[Any, bool], T]


class _DebounceTaken(StoreError):
    """A job row refused because a queued job already holds its debounce key."""


class SQLStore(Store):
    """A store over SQL: the operations, over the dialect hooks a backend defines."""

    #: The dialect's statements, by name.
    Q: dict[str, str]
    #: The driver's exception for a unique constraint violated.
    unique_violation: ClassVar[type[Exception]]

    # dialect ------------------------------------------------------------------------------
    def _is_unique_violation(self, exc: Exception) -> bool:
        """Whether ``exc`` (a ``unique_violation``) is about a unique constraint."""
        return True

    @abc.abstractmethod
    def _session(self, work: Work[T], *, durable: bool = True) -> T:
        """Run ``work`` on a connection: each statement commits on its own (PostgreSQL), or
        all of them in one write transaction (SQLite, which serialises writers anyway)."""

    @abc.abstractmethod
    def _transact(self, work: Work[T], *, durable: bool = True) -> T:
        """Run ``work`` in one transaction; ``durable`` ones survive power loss on commit."""

    @abc.abstractmethod
    def _query(self, name: str, params: dict[str, Any]) -> list[Any]:
        """The rows of a read-only statement, outside any write transaction."""

    @abc.abstractmethod
    def _array(self, values: Sequence[Any]) -> Any:
        """A list of values as one statement parameter."""

    @abc.abstractmethod
    def _savepoint(self, conn: Any) -> AbstractContextManager[object]:
        """A nested transaction: an error inside rolls back only what it wrote."""

    def _insert_batch(self, conn: Any, batch: list[dict[str, Any]]) -> set[str]:
        """Insert these rows (each built by ``rows.insert_params``) through ``job_insert``;
        the ids inserted (a row whose key is taken is left out)."""
        query = self.Q["job_insert"]
        return {params["id"] for params in batch if conn.execute(query, params).rowcount == 1}

    def _lock_claim(self, conn: Any, job_id: str) -> None:
        """Serialise a claim of this job with the claims of its concurrency key."""

    def _lock_park(self, conn: Any, outcome: Outcome) -> None:
        """Serialise a park with the signal or the child's end it waits for."""

    def _lock_event(self, conn: Any, event: str) -> None:
        """Serialise a signal with the parks waiting for its event."""

    def _lock_rate(self, conn: Any, key: str) -> None:
        """Make the rate window of ``key`` exist and lock it for this transaction."""

    def _filters(self, names: Sequence[str], queues: Sequence[str] | None) -> dict[str, Any]:
        return {
            "names": self._array(names),
            "any_queue": queues is None,
            "queues": self._array(queues if queues is not None else ()),
        }

    def _refusal(self, conn: Any, job_id: str, fence: int) -> StepstoneError:
        """Why a write fenced by ``fence`` changed nothing (read on ``conn``)."""
        return rows.refusal(
            job_id, fence, conn.execute(self.Q["job_owner"], {"id": job_id}).fetchone()
        )

    # jobs ---------------------------------------------------------------------------------
    def job_insert(
        self, job: NewJob, *, now: float, owner: str | None = None, lease_until: float = 0.0
    ) -> InsertResult:
        params = rows.insert_params(job, now=now, owner=owner, lease_until=lease_until)
        return self._session(lambda conn, retried: self._insert(conn, params, retried))

    def _insert(self, conn: Any, params: dict[str, Any], retried: bool) -> InsertResult:
        """Insert one job row; with its key taken, the job holding it (created=False)."""
        job_id, key = params["id"], params["key"]
        while True:
            try:
                with self._savepoint(conn):
                    inserted = conn.execute(self.Q["job_insert"], params).rowcount
            except self.unique_violation as exc:
                if not self._is_unique_violation(exc):
                    raise  # another constraint: the dialect translates it
                row = conn.execute(self.Q["job_get"], {"id": job_id}).fetchone()
                if row is None:  # not the id: a queued job holds the debounce key
                    raise _DebounceTaken(f"job {job_id}: its debounce key is taken") from exc
                if retried and row["args"] == params["args"]:
                    return InsertResult(rows.job_record(row), created=True)  # our earlier try
                raise StoreError(f"job id {job_id} is already taken") from exc
            if inserted == 1:  # what was written is known: no need to read it back
                return InsertResult(rows.inserted_record(params), created=True)
            row = conn.execute(self.Q["job_get_by_key"], {"key": key}).fetchone()
            if row is not None:
                created = retried and row["id"] == job_id
                return InsertResult(rows.job_record(row), created=created)
            # the job holding the key was pruned meanwhile: insert again

    def job_insert_many(self, jobs: Sequence[NewJob], *, now: float) -> list[InsertResult]:
        if not jobs:
            return []
        batch = [rows.insert_params(job, now=now, owner=None, lease_until=0.0) for job in jobs]

        def insert(conn: Any, retried: bool) -> list[InsertResult]:
            landed: set[str] = set()
            if retried:  # an earlier try may have committed before its connection broke
                ids = self._array([params["id"] for params in batch])
                landed = {row["id"] for row in conn.execute(self.Q["job_ids"], {"ids": ids})}
            fresh = [params for params in batch if params["id"] not in landed]
            inserted = landed | self._insert_batch(conn, fresh)
            taken = [params["key"] for params in batch if params["id"] not in inserted]
            existing = {}
            if taken:
                found = conn.execute(self.Q["job_get_by_keys"], {"keys": self._array(taken)})
                existing = {row["key"]: rows.job_record(row) for row in found}
            results = []
            for params in batch:
                if params["id"] in inserted:
                    results.append(InsertResult(rows.inserted_record(params), created=True))
                elif params["key"] in existing:
                    results.append(InsertResult(existing[params["key"]], created=False))
                else:  # the job holding the key was pruned meanwhile
                    raise StoreError(
                        f"the job holding key {params['key']!r} vanished during the insert; "
                        "enqueue again"
                    )
            return results

        return self._transact(insert)

    def job_get(self, job_id: str) -> JobRecord | None:
        found = self._query("job_get", {"id": job_id})
        return rows.job_record(found[0]) if found else None

    def job_get_by_key(self, key: str) -> JobRecord | None:
        found = self._query("job_get_by_key", {"key": key})
        return rows.job_record(found[0]) if found else None

    def job_get_many(self, *, ids: Sequence[str] = (), keys: Sequence[str] = ()) -> list[JobRecord]:
        params = {"ids": self._array(ids), "keys": self._array(keys)}
        return [rows.job_record(row) for row in self._query("job_get_many", params)]

    def job_list(
        self, *, states: Sequence[str] | None = None, name: str | None = None, limit: int = 50
    ) -> list[JobRecord]:
        params = {
            "any_state": states is None,
            "states": self._array(states if states is not None else ()),
            "name": name,
            "limit": limit,
        }
        return [rows.job_record(row) for row in self._query("job_list", params)]

    def job_claim(
        self, job_id: str, *, owner: str, now: float, lease_until: float
    ) -> ClaimedJob | None:
        params = {"id": job_id, "owner": owner, "now": now, "lease_until": lease_until}

        def claim(conn: Any, _retried: bool) -> list[Any]:
            self._lock_claim(conn, job_id)
            return list(conn.execute(self.Q["job_claim"], params).fetchall())

        claimed = rows.claimed_jobs(self._transact(claim, durable=False))
        return claimed[0] if claimed else None

    def job_idle_status(
        self, *, names: Sequence[str], queues: Sequence[str] | None, now: float
    ) -> IdleStatus:
        row = self._query("job_idle_status", {**self._filters(names, queues), "now": now})[0]
        return IdleStatus(
            due=bool(row["due"]), running=int(row["running"]), next_run_at=row["next_run_at"]
        )

    def job_heartbeat(self, leases: Sequence[tuple[str, int]], *, lease_until: float) -> set[str]:
        if not leases:
            return set()
        params = {
            "ids": self._array([job_id for job_id, _ in leases]),
            "fences": self._array([fence for _, fence in leases]),
            "lease_until": lease_until,
        }

        def beat(conn: Any, _retried: bool) -> set[str]:
            return {row["id"] for row in conn.execute(self.Q["job_heartbeat"], params)}

        kept = self._session(beat, durable=False)
        return {job_id for job_id, _ in leases if job_id not in kept}

    # outcomes -----------------------------------------------------------------------------
    def job_transition_many(
        self, outcomes: Sequence[Outcome], *, now: float
    ) -> dict[str, StepstoneError]:
        if not outcomes:
            return {}
        # Only a group of parks may skip the fsync (a lost park is replayed from the claim).
        durable = any(outcome.kind is not OutcomeKind.PARK for outcome in outcomes)
        # Successes alone are one statement: no explicit transaction (one round trip).
        only_successes = all(outcome.kind is OutcomeKind.COMPLETE for outcome in outcomes)
        run = self._session if only_successes else self._transact
        return run(
            lambda conn, retried: write_outcomes(self, conn, outcomes, now, retried),
            durable=durable,
        )

    # maintenance --------------------------------------------------------------------------
    def job_get_expired(self, *, now: float, limit: int = 100) -> list[ExpiredLease]:
        found = self._query("job_get_expired", {"now": now, "limit": limit})
        return [
            ExpiredLease(
                job_id=row["id"],
                fence=row["fence"],
                attempts=row["attempts"],
                reclaims=row["reclaims"],
                progressed=bool(row["progressed"]),
            )
            for row in found
        ]

    def job_rescue_many(self, decisions: Sequence[RescueDecision], *, now: float) -> Rescue:
        if not decisions:
            return Rescue(requeued=(), poisoned=())

        return self._transact(lambda conn, _retried: write_rescues(self, conn, decisions, now))

    # operators' writes --------------------------------------------------------------------
    def job_cancel(self, job_id: str, *, now: float) -> bool:
        def cancel(conn: Any, _retried: bool) -> bool:
            found = conn.execute(self.Q["job_cancel"], {"id": job_id, "now": now}).fetchall()
            if any(row["id"] == job_id for row in found):
                return True
            if conn.execute(self.Q["job_owner"], {"id": job_id}).fetchone() is None:
                raise JobNotFound(f"no job with id {job_id!r}")
            return False

        return self._session(cancel)

    def job_requeue(self, job_id: str, *, now: float) -> bool:
        def requeue(conn: Any, _retried: bool) -> bool | None:
            if conn.execute(self.Q["job_requeue"], {"id": job_id, "now": now}).rowcount:
                conn.execute(self.Q["checkpoint_drop_from_first_error"], {"job_id": job_id})
                return True
            return (
                None
                if conn.execute(self.Q["job_owner"], {"id": job_id}).fetchone() is None
                else False
            )

        requeued = self._transact(requeue)
        if requeued is None:
            raise JobNotFound(f"no job with id {job_id!r}")
        return requeued

    # signals, debounce, schedules, rates ------------------------------------------------------
    def signal_send(self, event: str, payload: str, *, now: float) -> int:
        params = {"event": event, "payload": payload, "now": now}

        def send(conn: Any, _retried: bool) -> int:
            self._lock_event(conn, event)
            conn.execute(self.Q["signal_insert"], params)
            return int(conn.execute(self.Q["signal_wake"], params).rowcount)

        return self._transact(send)

    def signal_next(self, event: str, *, after: int, since: float) -> tuple[int, str] | None:
        found = self._query("signal_next", {"event": event, "after": after, "since": since})
        return (int(found[0]["id"]), str(found[0]["payload"])) if found else None

    def signal_prune(self, *, before: float) -> int:
        return self._statement("signal_prune", {"before": before})

    def job_debounce(self, job: NewJob, *, now: float) -> InsertResult:
        params = rows.insert_params(job, now=now, owner=None, lease_until=0.0)

        def debounce(conn: Any, retried: bool) -> InsertResult | None:
            row = conn.execute(self.Q["job_debounce"], params).fetchone()
            if row is not None:
                record = conn.execute(self.Q["job_get"], {"id": row["id"]}).fetchone()
                return InsertResult(rows.job_record(record), created=False)
            try:
                return self._insert(conn, params, retried)
            except _DebounceTaken:
                return None  # another enqueue inserted the key's job: replace that one

        while True:
            result = self._transact(debounce)
            if result is not None:
                return result

    def schedule_next(self, name: str) -> float | None:
        found = self._query("schedule_next", {"name": name})
        return float(found[0]["next_tick"]) if found else None

    def schedule_advance(
        self, name: str, *, expected: float | None, tick: float, now: float
    ) -> bool:
        query = self.Q["schedule_insert" if expected is None else "schedule_update"]
        params = {"name": name, "expected": expected, "tick": tick, "now": now}
        return bool(self._session(lambda conn, _r: conn.execute(query, params).rowcount) == 1)

    def schedule_list(self) -> list[tuple[str, float]]:
        return [(row["name"], float(row["next_tick"])) for row in self._query("schedule_list", {})]

    def rate_acquire(self, key: str, *, limit: int, per: float, now: float) -> float:
        def acquire(conn: Any, _retried: bool) -> float:
            self._lock_rate(conn, key)
            row = conn.execute(self.Q["rate_get"], {"key": key}).fetchone()
            calls = json.loads(row["calls"]) if row else []
            wait, kept = rows.rate_window(calls, limit=limit, per=per, now=now)
            if kept is not None:
                conn.execute(self.Q["rate_set"], {"key": key, "calls": json.dumps(kept)})
            return wait

        return self._transact(acquire, durable=False)

    # checkpoints, memos and errors --------------------------------------------------------
    def checkpoint_list(self, job_id: str) -> list[Checkpoint]:
        return [rows.checkpoint(row) for row in self._query("checkpoint_list", {"job_id": job_id})]

    def memo_release(self, key: str, job_id: str, fence: int) -> None:
        self._statement("memo_release", {"key": key, "job_id": job_id, "fence": fence})

    def memo_get(self, key: str, *, now: float) -> MemoRecord | None:
        found = self._query("memo_get", {"key": key, "now": now})
        return rows.memo_record(found[0]) if found else None

    def memo_list(self, prefix: str = "", *, limit: int = 100) -> list[MemoRecord]:
        found = self._query("memo_list", {"prefix": prefix, "limit": limit})
        return [rows.memo_record(row) for row in found]

    def memo_forget(self, key: str, *, prefix: bool = False) -> int:
        name, params = (
            ("memo_forget_prefix", {"prefix": key}) if prefix else ("memo_forget", {"key": key})
        )
        return int(self._session(lambda conn, _r: conn.execute(self.Q[name], params).rowcount))

    def memo_prune(self, *, now: float) -> int:
        return self._statement("memo_prune", {"now": now})

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
        self._statement("error_insert", params)

    def _statement(self, name: str, params: dict[str, Any]) -> int:
        """Run one statement, committed on its own (not fsynced on SQLite); its rowcount."""
        query = self.Q[name]
        return int(
            self._session(lambda conn, _r: conn.execute(query, params).rowcount, durable=False)
        )

    def error_list(self, job_id: str) -> list[ErrorRecord]:
        return [rows.error_record(row) for row in self._query("error_list", {"job_id": job_id})]


__all__ = ["SQLStore", "Work"]
