"""What only the PostgreSQL store promises: its schema, migrations under concurrency, its own
schema beside the user's tables, an index-driven claim, clear connection errors, and
LISTEN/NOTIFY.

The schema the migrations build must equal the one declared here, read back from
``information_schema`` and ``pg_catalog``: a new migration updates the declaration, so
every schema change is reviewed as a change of this file. Definitions read from the
catalogue name the store's schema as ``{schema}``.

The multi-process tests fork (the children inherit this module), meet at a barrier so that
they really act at the same moment, and report back through a queue.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg import sql

from stepstone import App
from stepstone._store import open_store
from stepstone._store.postgres import PostgresStore, split_url
from stepstone._store.queries import load_migrations
from stepstone.errors import StoreError

from ..backends import POSTGRES, postgres_base_url, postgres_url_with_schema
from ..conftest import SRC
from .support import NAMES, T0, insert

pytestmark = pytest.mark.postgres

_fork = multiprocessing.get_context("fork")


# --- fixtures and catalogue readers -------------------------------------------------------------


@pytest.fixture
def pg_url(tmp_path: Path) -> Iterator[str]:
    """The URL of a fresh, empty schema of its own (``?schema=``), dropped after the test."""
    with POSTGRES.fresh_url(tmp_path) as url:
        yield url


def schema_of(url: str) -> str:
    """The stepstone schema a ``postgresql://...?schema=`` URL names."""
    return split_url(url)[1] or "stepstone"


def catalogue(url: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    """Rows of a catalogue query on the URL's database, on a connection of the test's own."""
    with psycopg.connect(split_url(url)[0], application_name="stepstone-test-catalogue") as conn:
        return conn.execute(query, params).fetchall()


@pytest.fixture
def migrated(pg_url: str) -> str:
    """The URL of a schema that the store created and migrated, then closed."""
    open_store(pg_url).close()
    return pg_url


@dataclass(frozen=True)
class Column:
    """A column as ``information_schema.columns`` reports it."""

    name: str
    type: str
    nullable: bool = False
    default: str | None = None


def _null(name: str, type_: str) -> Column:
    return Column(name, type_, nullable=True)


TIMESTAMP = "timestamp with time zone"

TABLES: dict[str, tuple[Column, ...]] = {
    "migrations": (
        Column("version", "integer"),
        Column("name", "text"),
        Column("applied_at", TIMESTAMP, default="now()"),
    ),
    "jobs": (
        Column("id", "text"),
        Column("name", "text"),
        Column("queue", "text"),
        _null("key", "text"),
        Column("args", "json"),
        Column("state", "text"),
        Column("priority", "integer", default="0"),
        Column("run_at", TIMESTAMP),
        Column("attempts", "integer", default="0"),
        Column("replay", "boolean", default="false"),
        Column("fence", "bigint", default="0"),
        Column("reclaims", "integer", default="0"),
        _null("lease_owner", "text"),
        _null("lease_expires_at", TIMESTAMP),
        _null("result", "json"),
        _null("error", "json"),
        Column("created_at", TIMESTAMP),
        Column("updated_at", TIMESTAMP),
        _null("started_at", TIMESTAMP),
        _null("finished_at", TIMESTAMP),
        _null("parent_id", "text"),
        _null("wait_event", "text"),
        _null("concurrency_key", "text"),
        _null("concurrency_limit", "integer"),
        _null("debounce_key", "text"),
    ),
    "checkpoints": (
        Column("job_id", "text"),
        Column("seq", "integer"),
        Column("name", "text"),
        Column("status", "text"),
        Column("value", "json"),
        Column("attempts", "integer"),
        Column("fence", "bigint"),
        Column("created_at", TIMESTAMP),
        _null("memo", "text"),
    ),
    "memos": (
        Column("key", "text"),
        Column("state", "text"),
        Column("step", "text"),
        _null("value", "json"),
        _null("owner_job", "text"),
        _null("owner_fence", "bigint"),
        _null("expires_at", TIMESTAMP),
        Column("created_at", TIMESTAMP),
        Column("updated_at", TIMESTAMP),
    ),
    "errors": (
        Column("id", "bigint", default="nextval('{schema}.errors_id_seq'::regclass)"),
        Column("job_id", "text"),
        Column("attempt", "integer"),
        _null("seq", "integer"),
        _null("step", "text"),
        Column("fence", "bigint"),
        Column("error", "json"),
        Column("created_at", TIMESTAMP),
    ),
    "signals": (
        Column("id", "bigint", default="nextval('{schema}.signals_id_seq'::regclass)"),
        Column("event", "text"),
        Column("payload", "json"),
        Column("created_at", TIMESTAMP),
    ),
    "schedules": (
        Column("name", "text"),
        Column("next_tick", TIMESTAMP),
        Column("updated_at", TIMESTAMP),
    ),
    "rates": (
        Column("key", "text"),
        Column("calls", "json"),
    ),
}

#: The view operators read jobs through: times as epoch seconds, JSON as text.
VIEWS: dict[str, tuple[Column, ...]] = {
    "job_records": tuple(
        _null(name, type_)
        for name, type_ in (
            ("id", "text"),
            ("name", "text"),
            ("queue", "text"),
            ("key", "text"),
            ("args", "text"),
            ("state", "text"),
            ("priority", "integer"),
            ("run_at", "double precision"),
            ("attempts", "integer"),
            ("fence", "bigint"),
            ("reclaims", "integer"),
            ("lease_owner", "text"),
            ("lease_expires_at", "double precision"),
            ("result", "text"),
            ("error", "text"),
            ("created_at", "double precision"),
            ("updated_at", "double precision"),
            ("started_at", "double precision"),
            ("finished_at", "double precision"),
            ("parent_id", "text"),
            ("wait_event", "text"),
            ("concurrency_key", "text"),
            ("concurrency_limit", "integer"),
            ("debounce_key", "text"),
        )
    ),
}

#: (table, kind, columns) of every primary key and unique constraint.
KEYS = {
    ("migrations", "PRIMARY KEY", ("version",)),
    ("jobs", "PRIMARY KEY", ("id",)),
    ("jobs", "UNIQUE", ("key",)),
    ("checkpoints", "PRIMARY KEY", ("job_id", "seq")),
    ("errors", "PRIMARY KEY", ("id",)),
    ("memos", "PRIMARY KEY", ("key",)),
    ("signals", "PRIMARY KEY", ("id",)),
    ("schedules", "PRIMARY KEY", ("name",)),
    ("rates", "PRIMARY KEY", ("key",)),
}

CHECKS = {
    "jobs": "CHECK ((state = ANY (ARRAY['queued'::text, 'running'::text, 'waiting'::text, "
    "'succeeded'::text, 'failed'::text, 'cancelled'::text])))",
    "checkpoints": "CHECK ((status = ANY (ARRAY['ok'::text, 'error'::text])))",
    "memos": "CHECK ((state = ANY (ARRAY['computing'::text, 'done'::text])))",
}

#: Every index, as ``pg_indexes.indexdef`` prints it (with the keys' own indexes).
INDEXES = {
    "migrations_pkey": "CREATE UNIQUE INDEX migrations_pkey ON {schema}.migrations "
    "USING btree (version)",
    "jobs_pkey": "CREATE UNIQUE INDEX jobs_pkey ON {schema}.jobs USING btree (id)",
    "jobs_key_key": "CREATE UNIQUE INDEX jobs_key_key ON {schema}.jobs USING btree (key)",
    "jobs_due": "CREATE INDEX jobs_due ON {schema}.jobs USING btree (priority DESC, run_at) "
    "WHERE (state = ANY (ARRAY['queued'::text, 'waiting'::text]))",
    "jobs_leases": "CREATE INDEX jobs_leases ON {schema}.jobs USING btree (lease_expires_at) "
    "WHERE (state = 'running'::text)",
    "jobs_finished": "CREATE INDEX jobs_finished ON {schema}.jobs USING btree (finished_at) "
    "WHERE (finished_at IS NOT NULL)",
    "jobs_created": "CREATE INDEX jobs_created ON {schema}.jobs USING btree (created_at)",
    "jobs_waiting": "CREATE INDEX jobs_waiting ON {schema}.jobs USING btree (wait_event) "
    "WHERE (state = 'waiting'::text)",
    "jobs_children": "CREATE INDEX jobs_children ON {schema}.jobs USING btree (parent_id) "
    "WHERE (parent_id IS NOT NULL)",
    "jobs_limited": "CREATE INDEX jobs_limited ON {schema}.jobs USING btree (concurrency_key) "
    "WHERE ((state = 'running'::text) AND (concurrency_key IS NOT NULL))",
    "jobs_debounce": "CREATE UNIQUE INDEX jobs_debounce ON {schema}.jobs "
    "USING btree (debounce_key) WHERE ((state = 'queued'::text) AND (debounce_key IS NOT NULL))",
    "checkpoints_pkey": "CREATE UNIQUE INDEX checkpoints_pkey ON {schema}.checkpoints "
    "USING btree (job_id, seq)",
    "errors_pkey": "CREATE UNIQUE INDEX errors_pkey ON {schema}.errors USING btree (id)",
    "errors_job": "CREATE INDEX errors_job ON {schema}.errors USING btree (job_id, id)",
    "memos_pkey": "CREATE UNIQUE INDEX memos_pkey ON {schema}.memos USING btree (key)",
    "memos_expiry": "CREATE INDEX memos_expiry ON {schema}.memos USING btree (expires_at) "
    "WHERE (expires_at IS NOT NULL)",
    "signals_pkey": "CREATE UNIQUE INDEX signals_pkey ON {schema}.signals USING btree (id)",
    "signals_event": "CREATE INDEX signals_event ON {schema}.signals USING btree (event, id)",
    "schedules_pkey": "CREATE UNIQUE INDEX schedules_pkey ON {schema}.schedules USING btree (name)",
    "rates_pkey": "CREATE UNIQUE INDEX rates_pkey ON {schema}.rates USING btree (key)",
}

#: The trigger that wakes idle workers, the one that wakes the jobs waiting for a job that
#: ended, and the functions they run.
TRIGGERS = {
    "jobs_notify_queued": "CREATE TRIGGER jobs_notify_queued AFTER INSERT OR UPDATE OF state "
    "ON {schema}.jobs FOR EACH ROW WHEN ((new.state = 'queued'::text)) "
    "EXECUTE FUNCTION {schema}.notify_queued()",
    "jobs_wake_waiters": "CREATE TRIGGER jobs_wake_waiters AFTER UPDATE OF state "
    "ON {schema}.jobs FOR EACH ROW WHEN (((new.state = ANY (ARRAY['succeeded'::text, "
    "'failed'::text, 'cancelled'::text])) AND (old.state IS DISTINCT FROM new.state))) "
    "EXECUTE FUNCTION {schema}.wake_waiters()",
}
FUNCTIONS = {"notify_queued": "trigger", "wake_waiters": "trigger"}
SEQUENCES = {"errors_id_seq", "signals_id_seq"}


def _named(url: str, text: str | None) -> str | None:
    """A catalogue definition with the store's schema written ``{schema}``."""
    return None if text is None else text.replace(schema_of(url), "{schema}")


def read_columns(url: str, table_type: str) -> dict[str, tuple[Column, ...]]:
    """The tables (or views) of the store's schema with their columns, in order."""
    rows = catalogue(
        url,
        "SELECT c.table_name, c.column_name, c.data_type, c.is_nullable, c.column_default "
        "FROM information_schema.columns AS c JOIN information_schema.tables AS t "
        "USING (table_schema, table_name) "
        "WHERE c.table_schema = %s AND t.table_type = %s "
        "ORDER BY c.table_name, c.ordinal_position",
        schema_of(url),
        table_type,
    )
    tables: dict[str, list[Column]] = {}
    for table, name, type_, nullable, default in rows:
        tables.setdefault(table, []).append(
            Column(name, type_, nullable == "YES", _named(url, default))
        )
    return {table: tuple(columns) for table, columns in tables.items()}


# --- the schema ---------------------------------------------------------------------------------


def test_tables_and_columns_are_as_declared(migrated: str) -> None:
    """The migrations create exactly the declared tables, with the declared columns (name,
    type, nullability, default) in order."""
    assert read_columns(migrated, "BASE TABLE") == TABLES


def test_keys_and_checks_are_as_declared(migrated: str) -> None:
    """Primary keys, the unique job key and the CHECKs on states and statuses are as
    declared."""
    keys = catalogue(
        migrated,
        "SELECT tc.table_name, tc.constraint_type, "
        "array_agg(k.column_name::text ORDER BY k.ordinal_position) "
        "FROM information_schema.table_constraints AS tc "
        "JOIN information_schema.key_column_usage AS k "
        "USING (constraint_schema, constraint_name, table_name) "
        "WHERE tc.table_schema = %s AND tc.constraint_type IN ('PRIMARY KEY', 'UNIQUE') "
        "GROUP BY tc.table_name, tc.constraint_type, tc.constraint_name",
        schema_of(migrated),
    )
    assert {(table, kind, tuple(columns)) for table, kind, columns in keys} == KEYS
    checks = catalogue(
        migrated,
        "SELECT conrelid::regclass::text, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE connamespace = %s::regnamespace AND contype = 'c'",
        schema_of(migrated),
    )
    assert {table.split(".")[-1]: text for table, text in checks} == CHECKS


def test_indexes_are_as_declared(migrated: str) -> None:
    """The migrations create exactly the declared indexes, partial ones with their WHERE."""
    rows = catalogue(
        migrated,
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = %s",
        schema_of(migrated),
    )
    assert {name: _named(migrated, text) for name, text in rows} == INDEXES


def test_trigger_view_function_and_sequence_are_as_declared(migrated: str) -> None:
    """The notify and wake triggers, their functions, the job_records view (its columns) and
    the error and signal ids' sequences are as declared, and nothing else lives in the
    schema."""
    schema = schema_of(migrated)
    triggers = catalogue(
        migrated,
        "SELECT t.tgname, pg_get_triggerdef(t.oid) FROM pg_trigger AS t "
        "JOIN pg_class AS c ON c.oid = t.tgrelid "
        "WHERE c.relnamespace = %s::regnamespace AND NOT t.tgisinternal",
        schema,
    )
    assert {name: _named(migrated, text) for name, text in triggers} == TRIGGERS
    functions = catalogue(
        migrated,
        "SELECT proname, prorettype::regtype::text FROM pg_proc "
        "WHERE pronamespace = %s::regnamespace",
        schema,
    )
    assert dict(functions) == FUNCTIONS
    assert read_columns(migrated, "VIEW") == VIEWS
    sequences = catalogue(
        migrated,
        "SELECT sequence_name FROM information_schema.sequences WHERE sequence_schema = %s",
        schema,
    )
    assert {name for (name,) in sequences} == SEQUENCES


def test_every_migration_is_recorded_once(migrated: str) -> None:
    """Each migration file is recorded once, by version and name."""
    recorded = catalogue(
        migrated,
        sql.SQL("SELECT version, name FROM {}.migrations ORDER BY version").format(
            sql.Identifier(schema_of(migrated))
        ),
    )
    expected = [(migration.version, migration.name) for migration in load_migrations("postgres")]
    assert recorded == expected
    assert expected[0] == (1, "initial")


def test_migrating_again_changes_nothing(migrated: str) -> None:
    """Reopening a migrated schema applies nothing and leaves the schema as it was."""
    store = open_store(migrated)
    try:
        assert store.migrate() == []
    finally:
        store.close()
    assert read_columns(migrated, "BASE TABLE") == TABLES
    assert read_columns(migrated, "VIEW") == VIEWS


# --- many processes at once ---------------------------------------------------------------------


def _migrate_at_once(urls: list[str], start: Any, results: Any) -> None:
    """For each URL: connect, wait for the others, migrate, then enqueue one job."""
    for url in urls:
        try:
            store = open_store(url, migrate=False)
            try:
                start.wait(timeout=30)
                applied = store.migrate()
                insert(store)
            finally:
                store.close()
            results.put((url, applied))
        except Exception as exc:
            results.put((url, f"{type(exc).__name__}: {exc}"))


def _open_at_once(urls: list[str], start: Any, results: Any) -> None:
    """For each URL: wait for the others, open the store (which migrates), enqueue a job."""
    for url in urls:
        try:
            start.wait(timeout=30)
            store = open_store(url)
            try:
                insert(store)
            finally:
                store.close()
            results.put((url, "ok"))
        except Exception as exc:
            results.put((url, f"{type(exc).__name__}: {exc}"))


@pytest.fixture
def fresh_schemas(pg_url: str) -> Iterator[Callable[[int], list[str]]]:
    """``fresh_schemas(n)``: the URLs of n fresh schemas, dropped after the test."""
    made: list[str] = []

    def make(count: int) -> list[str]:
        names = [f"{schema_of(pg_url)}_{len(made) + i}" for i in range(count)]
        made.extend(names)
        return [postgres_url_with_schema(postgres_base_url(), name) for name in names]

    yield make
    with psycopg.connect(postgres_base_url(), autocommit=True) as conn:
        for name in made:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


def _run_at_once(
    target: Callable[[list[str], Any, Any], None], urls: list[str], processes: int
) -> list[tuple[str, Any]]:
    start = _fork.Barrier(processes)
    results = _fork.Queue()
    children = [_fork.Process(target=target, args=(urls, start, results)) for _ in range(processes)]
    for child in children:
        child.start()
    try:
        return [results.get(timeout=60) for _ in range(processes * len(urls))]
    finally:
        for child in children:
            child.join(timeout=30)


def test_processes_migrating_a_fresh_schema_at_once_apply_each_migration_once(
    fresh_schemas: Callable[[int], list[str]],
) -> None:
    """Six processes migrating one fresh schema at the same moment all succeed: exactly
    one applies each migration, the others find it applied; each is recorded once."""
    processes, urls = 6, fresh_schemas(3)
    outcomes = _run_at_once(_migrate_at_once, urls, processes)
    failures = [outcome for outcome in outcomes if not isinstance(outcome[1], list)]
    assert failures == []
    names = [f"{m.version:04d}_{m.name}" for m in load_migrations("postgres")]
    for url in urls:
        applied = sorted(applied for each, applied in outcomes if each == url)
        assert applied == [[]] * (processes - 1) + [names], url
        recorded = catalogue(
            url,
            sql.SQL("SELECT version, count(*) FROM {}.migrations GROUP BY version").format(
                sql.Identifier(schema_of(url))
            ),
        )
        assert dict(recorded) == {m.version: 1 for m in load_migrations("postgres")}
        jobs = catalogue(
            url, sql.SQL("SELECT count(*) FROM {}.jobs").format(sql.Identifier(schema_of(url)))
        )
        assert jobs == [(processes,)]


def test_processes_opening_a_fresh_schema_at_once_all_succeed(
    fresh_schemas: Callable[[int], list[str]],
) -> None:
    """Six processes opening one fresh schema at the same moment (connect, create the
    schema, migrate) all succeed, and each migration is recorded once."""
    processes, urls = 6, fresh_schemas(2)
    outcomes = _run_at_once(_open_at_once, urls, processes)
    assert [outcome for outcome in outcomes if outcome[1] != "ok"] == []
    for url in urls:
        recorded = catalogue(
            url,
            sql.SQL("SELECT version, count(*) FROM {}.migrations GROUP BY version").format(
                sql.Identifier(schema_of(url))
            ),
        )
        assert dict(recorded) == {m.version: 1 for m in load_migrations("postgres")}


# --- the store's own schema beside the user's tables --------------------------------------------


@pytest.fixture(scope="module")
def scratch_database() -> Iterator[str]:
    """A database of its own whose ``public`` schema holds a user's tables named like the
    store's (``jobs``, ``migrations``, ``checkpoints``, ``errors``); dropped after."""
    base = postgres_base_url()
    name = f"stepstone_test_db_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = base.split("?")[0].rsplit("/", 1)[0] + "/" + name
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE public.jobs (id serial PRIMARY KEY, title text NOT NULL)")
            conn.execute("INSERT INTO public.jobs (title) VALUES ('plumber'), ('baker')")
            conn.execute("CREATE TABLE public.migrations (version int PRIMARY KEY, name text)")
            conn.execute("INSERT INTO public.migrations VALUES (1, 'users'), (2, 'orders')")
            conn.execute("CREATE TABLE public.checkpoints (km int)")
            conn.execute("CREATE TABLE public.errors (message text)")
        yield url
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def _user_tables(url: str) -> dict[str, Any]:
    """The user's tables in ``public``: their columns and rows."""
    with psycopg.connect(url) as conn:
        tables = [
            name
            for (name,) in conn.execute(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = 'public' ORDER BY table_name"
            )
        ]
        return {
            name: (
                conn.execute(
                    "SELECT column_name, data_type FROM information_schema.columns "
                    "WHERE table_schema = 'public' AND table_name = %s ORDER BY ordinal_position",
                    (name,),
                ).fetchall(),
                conn.execute(
                    sql.SQL("SELECT * FROM public.{} ORDER BY 1").format(sql.Identifier(name))
                ).fetchall(),
            )
            for name in tables
        }


def _run_a_job(app: App) -> None:
    """Declare a job, run it through a worker, and check its outcome and history."""

    @app.step(name="schema.double")
    def double(n: int) -> int:
        return 2 * n

    @app.job(name="schema.twice")
    def twice(n: int) -> int:
        return double(double(n))

    handle = app.enqueue(twice, 5)
    app.run_worker(until_idle=True)
    assert handle.result(timeout=10) == 20
    assert [step.name for step in handle.steps()] == ["schema.double#0", "schema.double#1"]


def _store_tables(url: str, schema: str) -> dict[str, int]:
    """The store's tables in ``schema`` with their row counts."""
    with psycopg.connect(url) as conn:
        names = [
            name
            for (name,) in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
                (schema,),
            )
        ]
        return {
            name: conn.execute(
                sql.SQL("SELECT count(*) FROM {}.{}").format(
                    sql.Identifier(schema), sql.Identifier(name)
                )
            ).fetchone()[0]
            for name in names
        }


@pytest.mark.parametrize(
    "how",
    ["url", "app-option", "default"],
    ids=["schema-in-url", "App-schema-option", "default-schema"],
)
def test_the_store_keeps_to_its_schema_beside_user_tables_of_the_same_names(
    scratch_database: str, how: str
) -> None:
    """With ``?schema=`` in the URL, ``App(url, schema=...)`` or neither (``stepstone``),
    the store creates its tables in that schema and runs jobs there, and leaves the user's
    own ``public.jobs``, ``public.migrations`` etc. as they were."""
    before = _user_tables(scratch_database)
    schema = "stepstone" if how == "default" else f"tenant_{uuid.uuid4().hex[:8]}"
    if how == "url":
        app = App(postgres_url_with_schema(scratch_database, schema))
    elif how == "app-option":
        app = App(scratch_database, schema=schema)
    else:
        app = App(scratch_database)
    try:
        _run_a_job(app)
    finally:
        app.close()
    counts = _store_tables(scratch_database, schema)
    assert counts == {
        "migrations": len(load_migrations("postgres")),
        "jobs": 1,
        "checkpoints": 2,
        "errors": 0,
        "memos": 0,
        "signals": 0,
        "schedules": 0,
        "rates": 0,
        "job_records": 1,
    }
    assert _user_tables(scratch_database) == before


# --- claims stay on the index -------------------------------------------------------------------


def _plan_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _plan_nodes(child)


def test_the_claim_reads_the_due_index_among_many_finished_jobs(pg_url: str) -> None:
    """With 50,000 finished jobs beside a few queued ones, the plan of the claim query reads
    the partial ``jobs_due`` index, never a sequential scan of the jobs table."""
    store = open_store(pg_url)
    try:
        assert isinstance(store, PostgresStore)
        for n in range(20):
            insert(store, name=NAMES[n % 2], run_at=T0 + n)
        table = sql.SQL("{}.jobs").format(sql.Identifier(schema_of(pg_url)))
        with psycopg.connect(split_url(pg_url)[0], autocommit=True) as conn:
            conn.execute(
                sql.SQL(
                    "INSERT INTO {} (id, name, queue, args, state, run_at, created_at, "
                    "updated_at, started_at, finished_at, result, attempts, fence) "
                    "SELECT 'done-' || i, 'mail.send', 'default', '[]', 'succeeded', "
                    "now() - interval '1 day', now() - interval '1 day', now(), now(), now(), "
                    "'null', 1, 1 FROM generate_series(1, 50000) AS i"
                ).format(table)
            )
            conn.execute(sql.SQL("ANALYZE {}").format(table))
            params = {
                "names": list(NAMES),
                "any_queue": True,
                "queues": [],
                "owner": "worker-a",
                "limit": 10,
                "now": T0 + 100,
                "lease_until": T0 + 130,
                "limited": [],
            }
            [(explained,)] = conn.execute(
                "EXPLAIN (FORMAT JSON) " + store.Q["job_claim_due"], params
            ).fetchall()
        nodes = list(_plan_nodes(explained[0]["Plan"]))
        scans = [(node["Node Type"], node.get("Relation Name")) for node in nodes]
        assert ("Seq Scan", "jobs") not in scans, json.dumps(explained, indent=1)
        assert "jobs_due" in {node.get("Index Name") for node in nodes}, scans
        # and the claim itself takes the queued jobs, none of the finished ones
        claimed = store.job_claim_due(
            owner="worker-a",
            names=NAMES,
            queues=None,
            limit=50,
            now=T0 + 100,
            lease_until=T0 + 130,
        )
        assert len(claimed) == 20
    finally:
        store.close()


# --- connection errors --------------------------------------------------------------------------


def _server(port: int, database: str = "postgres", user: str = "postgres") -> str:
    """A URL on the test server's host, with a password that must never be shown."""
    host = urlsplit(postgres_base_url()).hostname or "localhost"
    return f"postgresql://{user}:hunter2@{host}:{port}/{database}"


def _port() -> int:
    """The test server's port."""
    return urlsplit(postgres_base_url()).port or 5432


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        pytest.param(lambda: _server(1), "Connection refused", id="nothing-listening"),
        pytest.param(
            lambda: _server(_port(), database="no_such_database_here"),
            'database "no_such_database_here" does not exist',
            id="no-such-database",
        ),
        pytest.param(
            lambda: _server(_port(), user="no_such_role_here"),
            'role "no_such_role_here" does not exist',
            id="no-such-role",
        ),
    ],
)
def test_a_server_that_cannot_be_used_is_a_store_error_naming_it(
    url: Callable[[], str], reason: str
) -> None:
    """Opening a store on an unreachable server, a missing database or an unknown role
    raises StoreError naming the server (password masked) and the server's reason, with no
    driver traceback in the message; the CLI prints it without a traceback."""
    target = url()
    with pytest.raises(StoreError) as caught:
        open_store(target)
    message = str(caught.value)
    assert target.replace(":hunter2@", ":***@") in message
    assert reason in message
    assert "hunter2" not in message
    assert "Traceback" not in message
    assert "psycopg" not in message
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    cli = subprocess.run(
        [sys.executable, "-m", "stepstone", "jobs", "--db", target],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert cli.returncode != 0
    assert "Traceback" not in cli.stderr
    assert "hunter2" not in cli.stderr
    assert "cannot connect to PostgreSQL" in cli.stderr


# --- connections --------------------------------------------------------------------------------


def test_connections_show_the_store_and_its_schema(pg_url: str) -> None:
    """The store's connections show as ``stepstone:<schema>`` in pg_stat_activity (what an
    operator, or a test, picks them out by)."""
    store = open_store(pg_url)
    try:
        rows = catalogue(
            pg_url,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
            f"stepstone:{schema_of(pg_url)}",
        )
        assert rows[0][0] >= 1
    finally:
        store.close()


def test_url_parameters_reach_the_connections_unaltered(pg_url: str) -> None:
    """A libpq parameter of the URL reaches the store's connections as written: a
    percent-encoded space in ``application_name`` stays a space."""
    store = open_store(f"{pg_url}&application_name=billing%20worker")
    try:
        insert(store)
        rows = catalogue(
            pg_url,
            "SELECT DISTINCT application_name FROM pg_stat_activity "
            "WHERE application_name LIKE 'billing%%'",
        )
        assert rows == [("billing worker",)]
    finally:
        store.close()


def test_options_in_the_url_are_kept_beside_the_stores_own(pg_url: str) -> None:
    """The user's ``options=-c statement_timeout=...`` in the URL is in force on the
    store's connections, beside the settings the store adds itself."""
    store = open_store(f"{pg_url}&options=-c%20statement_timeout%3D12345")
    try:
        assert isinstance(store, PostgresStore)
        # Read on the store's own connection (no public API shows a connection's settings).
        settings = store._run(
            lambda conn, _retried: conn.execute(
                "SELECT current_setting('statement_timeout') AS statement_timeout, "
                "current_setting('idle_in_transaction_session_timeout') AS idle_timeout"
            ).fetchone()
        )
        assert settings == {"statement_timeout": "12345ms", "idle_timeout": "30s"}
    finally:
        store.close()


# --- LISTEN/NOTIFY ------------------------------------------------------------------------------


def test_a_listening_store_hears_of_a_job_another_store_inserts(pg_url: str) -> None:
    """``on_change`` callbacks run, and ``change_marker()`` moves, soon after another store
    on the same schema inserts a job; after unsubscribing the callback is not called."""
    watcher, writer = open_store(pg_url), open_store(pg_url)
    try:
        heard = threading.Event()
        calls: list[float] = []

        def callback() -> None:
            calls.append(time.monotonic())
            heard.set()

        unsubscribe = watcher.on_change(callback)
        # The listener announces itself once subscribed (news may have been missed).
        assert heard.wait(10), "the listener never subscribed"
        heard.clear()
        before = watcher.change_marker()
        assert before is not None
        insert(writer)
        assert heard.wait(10), "no notification of the inserted job"
        assert watcher.change_marker() != before
        unsubscribe()
        count = len(calls)
        marker = watcher.change_marker()
        insert(writer)
        deadline = time.monotonic() + 10
        while watcher.change_marker() == marker and time.monotonic() < deadline:
            time.sleep(0.01)  # the notification arrives; the callback is no longer called
        assert watcher.change_marker() != marker
        assert len(calls) == count
    finally:
        watcher.close()
        writer.close()


def test_a_schema_name_too_long_for_the_channel_is_refused(pg_url: str) -> None:
    """A schema whose notification channel would not fit in 63 bytes is a clear StoreError
    at open, not a failure of every later enqueue."""
    long_url = postgres_url_with_schema(postgres_base_url(), "s" * 60)
    with pytest.raises(StoreError, match="too long"):
        open_store(long_url)


def test_an_up_to_date_schema_is_opened_without_create_rights(migrated: str) -> None:
    """Once migrated, a store opens with a role that may not CREATE in the database (the
    migrations are read, not applied again)."""
    role = f"stepstone_reader_{uuid.uuid4().hex[:8]}"
    base = postgres_base_url()
    schema = split_url(migrated)[1]
    assert schema is not None
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        conn.execute(
            sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(
                sql.Identifier(schema), sql.Identifier(role)
            )
        )
        conn.execute(
            sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}").format(
                sql.Identifier(schema), sql.Identifier(role)
            )
        )
    try:
        parts = urlsplit(migrated)
        as_role = parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port or 5432}").geturl()
        store = open_store(as_role)
        try:
            assert store.job_list() == []
        finally:
            store.close()
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_passwords_are_masked_in_shown_urls() -> None:
    """A password in the user part or as ``?password=`` never shows in a store's URL."""
    from stepstone._store.urls import mask_password

    assert mask_password("postgresql://u:pw@h/db") == "postgresql://u:***@h/db"
    shown = mask_password("postgresql://h/db?sslmode=require&password=secret")
    assert "secret" not in shown
    assert shown.endswith("password=***")
