"""The databases the suites run against: each test gets a fresh one, once per backend.

SQLite needs nothing. PostgreSQL runs when ``STEPSTONE_TEST_POSTGRES_URL`` is set: each
test gets a schema of its own in that database (``?schema=`` in the URL), dropped after.
With ``STEPSTONE_REQUIRE_POSTGRES`` set (CI), a missing URL fails instead of skipping.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import pytest


@dataclass(frozen=True)
class Backend:
    """A kind of store the suites run against."""

    id: str
    #: Yields the URL of a fresh, empty database (given the test's tmp_path); cleans up after.
    fresh_url: Callable[[Path], AbstractContextManager[str]]
    #: Whether two ``open_store`` calls on one URL see the same data.
    shared: bool
    marks: tuple[pytest.MarkDecorator, ...] = field(default=())


@contextmanager
def sqlite_file(tmp_path: Path) -> Iterator[str]:
    yield f"sqlite:///{tmp_path / 'stepstone.db'}"


@contextmanager
def sqlite_memory(tmp_path: Path) -> Iterator[str]:
    yield "sqlite:///:memory:"


def postgres_url_with_schema(url: str, schema: str) -> str:
    """``url`` with stepstone's ``schema`` parameter: the store keeps its tables there."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query["schema"] = schema
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))


def postgres_base_url() -> str:
    """The server the PostgreSQL tests use; skips (or fails, in CI) when there is none."""
    base = os.environ.get("STEPSTONE_TEST_POSTGRES_URL")
    if not base:
        if os.environ.get("STEPSTONE_REQUIRE_POSTGRES"):
            pytest.fail("STEPSTONE_REQUIRE_POSTGRES is set but STEPSTONE_TEST_POSTGRES_URL is not")
        pytest.skip("set STEPSTONE_TEST_POSTGRES_URL to run the PostgreSQL tests")
    return base


@contextmanager
def postgres(tmp_path: Path) -> Iterator[str]:
    """A schema of its own in the database of ``STEPSTONE_TEST_POSTGRES_URL``, dropped after."""
    base = postgres_base_url()
    import psycopg
    from psycopg import sql

    schema = f"stepstone_test_{uuid.uuid4().hex[:12]}"
    try:
        yield postgres_url_with_schema(base, schema)
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


SQLITE_FILE = Backend("sqlite", sqlite_file, shared=True)
SQLITE_MEMORY = Backend("sqlite-memory", sqlite_memory, shared=False)
POSTGRES = Backend("postgres", postgres, shared=True, marks=(pytest.mark.postgres,))


def params(backends: list[Backend]) -> list[object]:
    """``pytest.param`` for each backend, with its id and marks."""
    return [pytest.param(backend, id=backend.id, marks=backend.marks) for backend in backends]
