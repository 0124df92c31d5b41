"""The schema the migrations build equals the schema declared here.

A new migration must update the declaration, so every schema change is reviewed as a
change of this file. Each backend declares its own schema and reads the real one from
its catalogue (SQLite: ``sqlite_schema`` and the ``table_xinfo`` / ``index_*`` pragmas;
PostgreSQL: ``information_schema`` and ``pg_catalog``, in ``test_postgres.py``).
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import pytest

from stepstone._store import open_store
from stepstone._store.queries import load_migrations


@dataclass(frozen=True)
class Column:
    """A column: its declared type, whether it is NOT NULL, its default, its place in the key."""

    name: str
    type: str
    not_null: bool = False
    default: str | None = None
    primary_key: int = 0


@dataclass(frozen=True)
class Index:
    """A secondary index: its table, its columns (with ``DESC``), uniqueness, partial clause."""

    table: str
    columns: tuple[str, ...]
    unique: bool = False
    where: str | None = None


@dataclass(frozen=True)
class Trigger:
    """A trigger: its table and its definition, with runs of whitespace made single spaces."""

    table: str
    sql: str


@dataclass(frozen=True)
class Schema:
    """Tables with their columns, named indexes, the unique constraints on columns, the
    tables without rowid, triggers, and every other named object (views...) by type."""

    tables: dict[str, tuple[Column, ...]]
    indexes: dict[str, Index]
    unique: frozenset[tuple[str, tuple[str, ...]]]
    without_rowid: frozenset[str]
    triggers: dict[str, Trigger]
    others: frozenset[tuple[str, str]]


def _required(name: str, type_: str, default: str | None = None) -> Column:
    return Column(name, type_, not_null=True, default=default)


SQLITE_SCHEMA = Schema(
    tables={
        "stepstone_migrations": (
            Column("version", "INTEGER", primary_key=1),
            _required("name", "TEXT"),
            _required("applied_at", "REAL"),
        ),
        "stepstone_jobs": (
            Column("id", "TEXT", primary_key=1),
            _required("name", "TEXT"),
            _required("queue", "TEXT"),
            Column("key", "TEXT"),
            _required("args", "TEXT"),
            _required("state", "TEXT"),
            _required("priority", "INTEGER", "0"),
            _required("run_at", "REAL"),
            _required("attempts", "INTEGER", "0"),
            _required("replay", "INTEGER", "0"),
            _required("fence", "INTEGER", "0"),
            _required("reclaims", "INTEGER", "0"),
            Column("lease_owner", "TEXT"),
            Column("lease_expires_at", "REAL"),
            Column("result", "TEXT"),
            Column("error", "TEXT"),
            _required("created_at", "REAL"),
            _required("updated_at", "REAL"),
            Column("started_at", "REAL"),
            Column("finished_at", "REAL"),
            Column("parent_id", "TEXT"),
            Column("wait_event", "TEXT"),
            Column("concurrency_key", "TEXT"),
            Column("concurrency_limit", "INTEGER"),
            Column("debounce_key", "TEXT"),
        ),
        "stepstone_checkpoints": (
            Column("job_id", "TEXT", not_null=True, primary_key=1),
            Column("seq", "INTEGER", not_null=True, primary_key=2),
            _required("name", "TEXT"),
            _required("status", "TEXT"),
            _required("value", "TEXT"),
            _required("attempts", "INTEGER"),
            _required("fence", "INTEGER"),
            _required("created_at", "REAL"),
            Column("memo", "TEXT"),
        ),
        "stepstone_memos": (
            Column("key", "TEXT", not_null=True, primary_key=1),
            _required("state", "TEXT"),
            _required("step", "TEXT"),
            Column("value", "TEXT"),
            Column("owner_job", "TEXT"),
            Column("owner_fence", "INTEGER"),
            Column("expires_at", "REAL"),
            _required("created_at", "REAL"),
            _required("updated_at", "REAL"),
        ),
        "stepstone_errors": (
            Column("id", "INTEGER", primary_key=1),
            _required("job_id", "TEXT"),
            _required("attempt", "INTEGER"),
            Column("seq", "INTEGER"),
            Column("step", "TEXT"),
            _required("fence", "INTEGER"),
            _required("error", "TEXT"),
            _required("created_at", "REAL"),
        ),
        "stepstone_signals": (
            Column("id", "INTEGER", primary_key=1),
            _required("event", "TEXT"),
            _required("payload", "TEXT"),
            _required("created_at", "REAL"),
        ),
        "stepstone_schedules": (
            Column("name", "TEXT", not_null=True, primary_key=1),
            _required("next_tick", "REAL"),
            _required("updated_at", "REAL"),
        ),
        "stepstone_rates": (
            Column("key", "TEXT", not_null=True, primary_key=1),
            _required("calls", "TEXT"),
        ),
    },
    indexes={
        "stepstone_jobs_due": Index(
            "stepstone_jobs", ("priority DESC", "run_at"), where="state IN ('queued', 'waiting')"
        ),
        "stepstone_jobs_leases": Index(
            "stepstone_jobs", ("lease_expires_at",), where="state = 'running'"
        ),
        "stepstone_jobs_finished": Index(
            "stepstone_jobs", ("finished_at",), where="finished_at IS NOT NULL"
        ),
        "stepstone_jobs_created": Index("stepstone_jobs", ("created_at",)),
        "stepstone_jobs_waiting": Index(
            "stepstone_jobs", ("wait_event",), where="state = 'waiting'"
        ),
        "stepstone_jobs_children": Index(
            "stepstone_jobs", ("parent_id",), where="parent_id IS NOT NULL"
        ),
        "stepstone_jobs_limited": Index(
            "stepstone_jobs",
            ("concurrency_key",),
            where="state = 'running' AND concurrency_key IS NOT NULL",
        ),
        "stepstone_jobs_debounce": Index(
            "stepstone_jobs",
            ("debounce_key",),
            unique=True,
            where="state = 'queued' AND debounce_key IS NOT NULL",
        ),
        "stepstone_errors_job": Index("stepstone_errors", ("job_id", "id")),
        "stepstone_memos_expiry": Index(
            "stepstone_memos", ("expires_at",), where="expires_at IS NOT NULL"
        ),
        "stepstone_signals_event": Index("stepstone_signals", ("event", "id")),
    },
    unique=frozenset({("stepstone_jobs", ("key",))}),
    without_rowid=frozenset(
        {"stepstone_checkpoints", "stepstone_memos", "stepstone_schedules", "stepstone_rates"}
    ),
    triggers={
        "stepstone_jobs_wake_waiters": Trigger(
            "stepstone_jobs",
            "CREATE TRIGGER stepstone_jobs_wake_waiters "
            "AFTER UPDATE OF state ON stepstone_jobs "
            "WHEN NEW.state IN ('succeeded', 'failed', 'cancelled') AND OLD.state <> NEW.state "
            "BEGIN UPDATE stepstone_jobs "
            "SET state = 'queued', run_at = NEW.updated_at, updated_at = NEW.updated_at "
            "WHERE state = 'waiting' AND wait_event = 'stepstone.job:' || NEW.id; END",
        ),
    },
    # AUTOINCREMENT on stepstone_signals.id keeps its counter in sqlite_sequence.
    others=frozenset({("table", "sqlite_sequence")}),
)


def read_sqlite_schema(path: Path) -> Schema:
    """The schema of the SQLite database at ``path``, as the catalogue reports it."""
    conn = sqlite3.connect(path)
    try:
        tables: dict[str, tuple[Column, ...]] = {}
        indexes: dict[str, Index] = {}
        unique: set[tuple[str, tuple[str, ...]]] = set()
        without_rowid: set[str] = set()
        triggers = {
            name: Trigger(table, " ".join(sql.split()))
            for name, table, sql in conn.execute(
                "SELECT name, tbl_name, sql FROM sqlite_schema WHERE type = 'trigger'"
            )
        }
        others = frozenset(
            conn.execute(
                "SELECT type, name FROM sqlite_schema WHERE NOT (type = 'trigger' "
                "OR (type = 'table' AND name LIKE 'stepstone\\_%' ESCAPE '\\') "
                "OR (type = 'index' AND tbl_name LIKE 'stepstone\\_%' ESCAPE '\\'))"
            ).fetchall()
        )
        rows = conn.execute(
            "SELECT name, sql FROM sqlite_schema WHERE type = 'table' "
            "AND name NOT LIKE 'sqlite_%' ORDER BY name"
        ).fetchall()
        for table, sql in rows:
            if re.search(r"\)\s*WITHOUT\s+ROWID\s*$", sql, re.IGNORECASE):
                without_rowid.add(table)
            tables[table] = tuple(
                Column(name, type_, bool(not_null), default, pk)
                for _, name, type_, not_null, default, pk, _ in conn.execute(
                    f"PRAGMA table_xinfo({table})"
                )
            )
            for _, index, is_unique, origin, _ in conn.execute(f"PRAGMA index_list({table})"):
                columns = tuple(
                    name + (" DESC" if desc else "")
                    for _, _, name, desc, _, key in conn.execute(f"PRAGMA index_xinfo({index})")
                    if key
                )
                if origin == "u":
                    unique.add((table, columns))
                elif origin == "c":
                    [sql_text] = conn.execute(
                        "SELECT sql FROM sqlite_schema WHERE name = ?", (index,)
                    ).fetchone()
                    where = re.search(r"\bWHERE\b(.*)$", sql_text, re.IGNORECASE | re.DOTALL)
                    indexes[index] = Index(
                        table,
                        columns,
                        bool(is_unique),
                        " ".join(where[1].split()) if where else None,
                    )
        return Schema(
            tables, indexes, frozenset(unique), frozenset(without_rowid), triggers, others
        )
    finally:
        conn.close()


@pytest.fixture
def sqlite_path(tmp_path: Path) -> Path:
    """A SQLite file that the store created and migrated, then closed."""
    path = tmp_path / "schema.db"
    open_store(f"sqlite:///{path}").close()
    return path


def test_sqlite_tables_and_columns_are_as_declared(sqlite_path: Path) -> None:
    """The migrations create exactly the declared tables, with the declared columns in order."""
    assert read_sqlite_schema(sqlite_path).tables == SQLITE_SCHEMA.tables


def test_sqlite_indexes_are_as_declared(sqlite_path: Path) -> None:
    """The migrations create exactly the declared indexes and unique constraints."""
    schema = read_sqlite_schema(sqlite_path)
    assert schema.indexes == SQLITE_SCHEMA.indexes
    assert schema.unique == SQLITE_SCHEMA.unique
    assert schema.without_rowid == SQLITE_SCHEMA.without_rowid


def test_sqlite_triggers_and_other_objects_are_as_declared(sqlite_path: Path) -> None:
    """The migrations create exactly the declared triggers (the one that wakes the jobs
    waiting for a job that ended), and no other objects (views, foreign tables...)."""
    schema = read_sqlite_schema(sqlite_path)
    assert schema.triggers == SQLITE_SCHEMA.triggers
    assert schema.others == SQLITE_SCHEMA.others


def test_sqlite_every_migration_is_recorded(sqlite_path: Path) -> None:
    """Each migration file is recorded once, by version and name."""
    conn = sqlite3.connect(sqlite_path)
    try:
        recorded = conn.execute(
            "SELECT version, name FROM stepstone_migrations ORDER BY version"
        ).fetchall()
    finally:
        conn.close()
    expected = [(migration.version, migration.name) for migration in load_migrations("sqlite")]
    assert recorded == expected
    assert expected[0] == (1, "initial")


def test_sqlite_migrating_again_changes_nothing(sqlite_path: Path) -> None:
    """Reopening a migrated database applies nothing and leaves the schema as it was."""
    store = open_store(f"sqlite:///{sqlite_path}")
    try:
        assert store.migrate() == []
    finally:
        store.close()
    assert read_sqlite_schema(sqlite_path) == SQLITE_SCHEMA


@pytest.mark.parametrize(
    ("sql", "params"),
    [
        pytest.param(
            "INSERT INTO stepstone_jobs (id, name, queue, args, state, run_at, created_at, "
            "updated_at) VALUES ('j', 'n', 'q', '[]', ?, 0, 0, 0)",
            ("sleeping",),
            id="job-state",
        ),
        pytest.param(
            "INSERT INTO stepstone_checkpoints (job_id, seq, name, status, value, attempts, "
            "fence, created_at) VALUES ('j', 0, 'n', ?, '1', 1, 1, 0)",
            ("maybe",),
            id="checkpoint-status",
        ),
    ],
)
def test_sqlite_states_and_statuses_are_checked(sqlite_path: Path, sql: str, params: tuple) -> None:
    """The schema itself refuses a job state or checkpoint status outside the known ones."""
    conn = sqlite3.connect(sqlite_path)
    try:
        with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
            conn.execute(sql, params)
    finally:
        conn.close()
