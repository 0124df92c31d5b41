"""Reads a test database behind the store's back: what the fleet and fault tests check."""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from stepstone._store.postgres import split_url


@dataclass(frozen=True)
class StoredCheckpoint:
    """One row of the checkpoints table: its step identity and the fence that wrote it."""

    name: str
    fence: int


def postgres_schema(db_url: str) -> tuple[str, str]:
    """The libpq URL and the stepstone schema of a ``postgresql://...?schema=`` URL."""
    conninfo, schema = split_url(db_url)
    return conninfo, schema or "stepstone"


def query(db_url: str, sql_text: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Run one read-only query; ``{schema}`` names the store's tables on either backend
    (``{schema}.jobs`` becomes ``stepstone_jobs`` on SQLite). Placeholders are the
    backend's own (``?`` or ``%s``). On PostgreSQL the connection is named
    ``stepstone-test-check``, whatever ``application_name`` the URL gives."""
    if db_url.startswith("sqlite"):
        conn = sqlite3.connect(db_url.removeprefix("sqlite:///"))
        try:
            return conn.execute(sql_text.replace("{schema}.", "stepstone_"), params).fetchall()
        finally:
            conn.close()
    import psycopg
    from psycopg import sql

    conninfo, schema = postgres_schema(db_url)
    with psycopg.connect(conninfo, application_name="stepstone-test-check") as conn:
        statement = sql.SQL(sql_text.replace("{schema}", "{}")).format(sql.Identifier(schema))
        return conn.execute(statement, params).fetchall()


def checkpoints(db_url: str) -> dict[str, list[StoredCheckpoint]]:
    """Every job's step history (in position order), straight from the checkpoints table."""
    history: dict[str, list[StoredCheckpoint]] = defaultdict(list)
    rows = query(
        db_url, "SELECT job_id, name, fence FROM {schema}.checkpoints ORDER BY job_id, seq"
    )
    for job_id, name, fence in rows:
        history[job_id].append(StoredCheckpoint(name, fence))
    return dict(history)


__all__ = ["StoredCheckpoint", "checkpoints", "postgres_schema", "query"]
