"""The schema of a PostgreSQL store: applies the migrations it lacks, one worker at a time."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import psycopg

from ..queries import load_migrations
from .connection import Row

T = TypeVar("T")
Run = Callable[[Callable[[psycopg.Connection[Row], bool], T]], T]


def migrate(run: Run[Any], quoted: str, lock_name: str) -> list[str]:
    """Apply the migrations schema ``quoted`` lacks (through ``run``, the store's retry
    loop); return their names. ``lock_name`` serialises workers starting at once."""

    def applied_versions(conn: psycopg.Connection[Row], _retried: bool) -> set[int]:
        table = conn.execute("SELECT to_regclass(%s) AS oid", (f"{quoted}.migrations",)).fetchone()
        if table is None or table["oid"] is None:
            return set()
        return {row["version"] for row in conn.execute(f"SELECT version FROM {quoted}.migrations")}

    def apply(conn: psycopg.Connection[Row], _retried: bool) -> list[str]:
        applied: list[str] = []
        with conn.transaction():
            # Many workers starting at once: one applies, the others wait, then see it.
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (lock_name,))
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quoted}")
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {quoted}.migrations (version integer PRIMARY "
                "KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {
                row["version"] for row in conn.execute(f"SELECT version FROM {quoted}.migrations")
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

    # Up to date (every start but the first): nothing to lock, and no CREATE privilege is
    # needed on the database.
    wanted = {migration.version for migration in load_migrations("postgres")}
    if wanted <= run(applied_versions):
        return []
    result: list[str] = run(apply)
    return result


__all__ = ["migrate"]
