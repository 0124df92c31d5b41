"""What every backend builds the same way: records from rows, parameters from arguments,
and the error that explains a refused (fenced) write."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import JobCancelled, LeaseLost, StepstoneError
from .base import (
    Checkpoint,
    ClaimedJob,
    ErrorRecord,
    JobRecord,
    JobState,
    MemoClaim,
    MemoRecord,
    NewJob,
)

#: A row by column name: ``sqlite3.Row`` or psycopg's ``dict_row``.
Row = Mapping[str, Any] | sqlite3.Row


def job_record(row: Row) -> JobRecord:
    """A stored job from its row (columns named as ``JobRecord``'s fields)."""
    return JobRecord(
        id=row["id"],
        name=row["name"],
        queue=row["queue"],
        key=row["key"],
        args=row["args"],
        state=JobState(row["state"]),
        priority=row["priority"],
        run_at=row["run_at"],
        attempts=row["attempts"],
        fence=row["fence"],
        reclaims=row["reclaims"],
        lease_owner=row["lease_owner"],
        lease_expires_at=row["lease_expires_at"],
        result=row["result"],
        error=row["error"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        parent_id=row["parent_id"],
        wait_event=row["wait_event"],
        concurrency_key=row["concurrency_key"],
        concurrency_limit=row["concurrency_limit"],
        debounce_key=row["debounce_key"],
    )


def claimed_jobs(rows: Iterable[Row]) -> list[ClaimedJob]:
    """Claimed jobs, highest priority then oldest first (``RETURNING`` has no order)."""
    ordered = sorted(rows, key=lambda row: (-row["priority"], row["run_at"]))
    return [
        ClaimedJob(
            id=row["id"],
            name=row["name"],
            queue=row["queue"],
            key=row["key"],
            args=row["args"],
            fence=row["fence"],
            attempt=row["attempts"],
            priority=row["priority"],
            created_at=row["created_at"],
            started_at=row["started_at"],
        )
        for row in ordered
    ]


def checkpoint(row: Row) -> Checkpoint:
    return Checkpoint(
        seq=row["seq"],
        name=row["name"],
        status=row["status"],
        value=row["value"],
        attempts=row["attempts"],
        created_at=row["created_at"],
        memo=row["memo"],
    )


def memo_record(row: Row) -> MemoRecord:
    return MemoRecord(
        key=row["key"],
        state=row["state"],
        step=row["step"],
        value=row["value"],
        owner_job=row["owner_job"],
        owner_fence=row["owner_fence"],
        expires_at=row["expires_at"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        owner_alive=bool(row["owner_alive"]),
    )


def rate_window(
    calls: list[float], *, limit: int, per: float, now: float
) -> tuple[float, list[float] | None]:
    """A sliding-window rate limit: at most ``limit`` calls in any ``per`` seconds.

    ``calls`` are the times of the recent calls. Returns (seconds to wait, calls to store):
    a wait of 0.0 means this call may go now and is recorded in the list to store.
    """
    recent = sorted(t for t in calls if t > now - per)
    if len(recent) < limit:
        return 0.0, [*recent, now]
    return max(recent[-limit] + per - now, 1e-6), None


def memo_decision(found: MemoRecord | None, job_id: str, fence: int, now: float) -> MemoClaim:
    """What ``memo_acquire`` does with the row it read (under the row's write lock):
    ``hit`` and ``busy`` are final; ``acquired`` means the caller now claims the key."""
    if found is None:
        return MemoClaim("acquired")
    expired = found.expires_at is not None and found.expires_at <= now
    if found.state == "done" and not expired:
        return MemoClaim("hit", value=found.value)
    if found.state == "computing" and (
        found.owner_alive or (found.owner_job == job_id and found.owner_fence == fence)
    ):
        return MemoClaim("busy", other_job=found.owner_job)
    taken_over = found.owner_job if found.state == "computing" else None
    return MemoClaim("acquired", other_job=taken_over)


def error_record(row: Row) -> ErrorRecord:
    return ErrorRecord(
        attempt=row["attempt"],
        seq=row["seq"],
        step=row["step"],
        error=row["error"],
        created_at=row["created_at"],
    )


def insert_params(
    job: NewJob, *, now: float, owner: str | None, lease_until: float
) -> dict[str, Any]:
    """The parameters of ``job_insert``: queued, or already claimed by ``owner`` (fence 1)."""
    claimed = owner is not None
    return {
        "id": job.id,
        "name": job.name,
        "queue": job.queue,
        "key": job.key,
        "args": job.args,
        "state": JobState.RUNNING.value if claimed else JobState.QUEUED.value,
        "priority": job.priority,
        "run_at": job.run_at,
        "fence": 1 if claimed else 0,
        "attempts": 1 if claimed else 0,
        "owner": owner,
        "lease_until": lease_until if claimed else None,
        "started_at": now if claimed else None,
        "now": now,
        "parent_id": job.parent_id,
        "concurrency_key": job.concurrency_key,
        "concurrency_limit": job.concurrency_limit,
        "debounce_key": job.debounce_key,
    }


def inserted_record(params: Mapping[str, Any]) -> JobRecord:
    """The record a successful ``job_insert`` with these parameters wrote."""
    return JobRecord(
        id=params["id"],
        name=params["name"],
        queue=params["queue"],
        key=params["key"],
        args=params["args"],
        state=JobState(params["state"]),
        priority=params["priority"],
        run_at=params["run_at"],
        attempts=params["attempts"],
        fence=params["fence"],
        reclaims=0,
        lease_owner=params["owner"],
        lease_expires_at=params["lease_until"],
        result=None,
        error=None,
        created_at=params["now"],
        updated_at=params["now"],
        started_at=params["started_at"],
        finished_at=None,
        parent_id=params["parent_id"],
        concurrency_key=params["concurrency_key"],
        concurrency_limit=params["concurrency_limit"],
        debounce_key=params["debounce_key"],
    )


def checkpoint_params(
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
) -> dict[str, Any]:
    """The parameters of ``checkpoint_insert``."""
    return {
        "memo": memo,
        "job_id": job_id,
        "fence": fence,
        "seq": seq,
        "name": name,
        "status": status,
        "value": value,
        "attempts": attempts,
        "now": now,
    }


def error_params(
    job_id: str,
    fence: int,
    *,
    attempt: int,
    seq: int | None,
    step: str | None,
    error: str,
    now: float,
) -> dict[str, Any]:
    """The parameters of ``error_insert``."""
    return {
        "job_id": job_id,
        "fence": fence,
        "attempt": attempt,
        "seq": seq,
        "step": step,
        "error": error,
        "now": now,
    }


def refusal(job_id: str, fence: int, owner: Row | None) -> StepstoneError:
    """Why a write fenced by ``fence`` changed nothing, given the job's (state, fence) now."""
    if owner is None:
        return LeaseLost(f"job {job_id} no longer exists (pruned?); fencing token {fence}")
    if owner["state"] == JobState.CANCELLED:
        return JobCancelled(f"job {job_id} was cancelled")
    return LeaseLost(
        f"job {job_id}: lease lost: this worker holds fencing token {fence}, the job now "
        f"has token {owner['fence']} and state {owner['state']!r}; another worker owns it"
    )


def duplicate_checkpoint(job_id: str, fence: int, seq: int, name: str) -> LeaseLost:
    """The error for a second checkpoint at one position (never written twice)."""
    return LeaseLost(
        f"job {job_id}: checkpoint #{seq} ({name}) already exists; a run with fencing "
        f"token {fence} cannot write it again"
    )


__all__ = [
    "Row",
    "checkpoint",
    "checkpoint_params",
    "claimed_jobs",
    "duplicate_checkpoint",
    "error_params",
    "error_record",
    "rate_window",
    "insert_params",
    "inserted_record",
    "job_record",
    "memo_decision",
    "memo_record",
    "refusal",
]
