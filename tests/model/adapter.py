"""Every store-level call the model test makes, behind one small class.

The App's public API covers enqueue, cancel, retry, signal and reading jobs; what only a
worker does (claims, checkpoints, outcomes, heartbeats, rescue) goes through the store.
Store operations may still be renamed while the core is redesigned: adapt them here only.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from stepstone import App
from stepstone._maintenance import poison_error, rescue_expired
from stepstone.types import Checkpoint, ClaimedJob, ErrorRecord, JobRecord, Outcome, Rescue

__all__ = ["StoreDriver", "poison_error"]


class StoreDriver:
    """One App's store, driven as a worker would drive it."""

    def __init__(self, app: App, *, kind: str, caller_url: str) -> None:
        self.app = app
        #: ``sqlite`` or ``postgres``.
        self.kind = kind
        #: What the caller's own connection connects to (a file path, or a libpq URL).
        self.caller_url = caller_url

    @property
    def store(self) -> Any:
        return self.app.store

    def reset(self) -> None:
        """Empty every table, so that no state leaks from one example into the next."""
        store = self.store
        if self.kind == "sqlite":
            with store._writing(durable=False) as conn:
                tables = [
                    row[0]
                    for row in conn.execute(
                        "SELECT name FROM sqlite_schema WHERE type = 'table' "
                        "AND name LIKE 'stepstone_%' AND name != 'stepstone_migrations'"
                    )
                ]
                for table in tables:
                    conn.execute(f'DELETE FROM "{table}"')
        else:
            import psycopg

            with psycopg.connect(self.caller_url, autocommit=True) as conn:
                tables = [
                    row[0]
                    for row in conn.execute(
                        "SELECT table_name FROM information_schema.tables "
                        "WHERE table_schema = %s AND table_type = 'BASE TABLE' "
                        "AND table_name NOT LIKE '%%migration%%'",
                        (store.schema,),
                    )
                ]
                from psycopg import sql

                names = sql.SQL(", ").join(sql.Identifier(store.schema, t) for t in tables)
                conn.execute(sql.SQL("TRUNCATE {} RESTART IDENTITY").format(names))

    # reads -----------------------------------------------------------------------------------
    def all_job_ids(self) -> set[str]:
        return {job.id for job in self.store.job_list(limit=1_000_000)}

    def jobs(self, ids: Sequence[str]) -> list[JobRecord]:
        return self.store.job_get_many(ids=list(ids))  # type: ignore[no-any-return]

    def checkpoints(self, job_id: str) -> list[Checkpoint]:
        return self.store.checkpoint_list(job_id)  # type: ignore[no-any-return]

    def errors(self, job_id: str) -> list[ErrorRecord]:
        return self.store.error_list(job_id)  # type: ignore[no-any-return]

    # what a worker does --------------------------------------------------------------------
    def claim_due(
        self,
        *,
        owner: str,
        names: Sequence[str],
        queues: Sequence[str] | None,
        limit: int,
        limited: Sequence[str],
        now: float,
        lease_until: float,
    ) -> list[ClaimedJob]:
        return self.store.job_claim_due(  # type: ignore[no-any-return]
            owner=owner,
            names=names,
            queues=queues,
            limit=limit,
            now=now,
            lease_until=lease_until,
            limited=limited,
        )

    def heartbeat(self, leases: Sequence[tuple[str, int]], *, lease_until: float) -> set[str]:
        return self.store.job_heartbeat(leases, lease_until=lease_until)  # type: ignore[no-any-return]

    def rescue(self, *, now: float) -> Rescue:
        return rescue_expired(self.store, now=now)

    def checkpoint(
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
    ) -> None:
        self.store.checkpoint_insert(
            job_id,
            fence,
            seq=seq,
            name=name,
            status=status,
            value=value,
            attempts=attempts,
            now=now,
        )

    def transition(self, outcome: Outcome, *, now: float) -> None:
        self.store.job_transition(outcome, now=now)

    # the caller's own connection ------------------------------------------------------------
    @contextmanager
    def caller_connection(self) -> Iterator[Any]:
        """A connection of the caller's own to the app's database (not stepstone's)."""
        if self.kind == "sqlite":
            conn: Any = sqlite3.connect(self.caller_url, timeout=30)
        else:
            import psycopg

            conn = psycopg.connect(self.caller_url)
        try:
            yield conn
        finally:
            conn.close()
