"""One fresh store per test, for every backend.

A backend is a way to get the URL of an empty database (and to clean it up). The
``store`` fixture runs each test once per backend; tests that need two stores on one
database (two workers) use ``shared_url``, which only the backends whose URL can be
opened twice provide. Adding a backend is adding one entry to ``BACKENDS``.
"""

from __future__ import annotations

import importlib.util
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import pytest

from stepstone.store import Store, open_store


@dataclass(frozen=True)
class Backend:
    """A kind of store the suite runs against."""

    id: str
    #: Yields the URL of a fresh, empty database (given the test's tmp_path); cleans up after.
    fresh_url: Callable[[Path], AbstractContextManager[str]]
    #: Whether two ``open_store`` calls on one URL see the same data.
    shared: bool
    marks: tuple[pytest.MarkDecorator, ...] = field(default=())


@contextmanager
def _sqlite_file(tmp_path: Path) -> Iterator[str]:
    yield f"sqlite:///{tmp_path / 'stepstone.db'}"


@contextmanager
def _sqlite_memory(tmp_path: Path) -> Iterator[str]:
    yield "sqlite:///:memory:"


def postgres_url_with_schema(url: str, schema: str) -> str:
    """``url`` with stepstone's ``schema`` parameter: the store keeps its tables there."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query["schema"] = schema
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))


@contextmanager
def _postgres(tmp_path: Path) -> Iterator[str]:
    """A schema of its own in the database of ``STEPSTONE_TEST_POSTGRES_URL``, dropped after."""
    base = os.environ.get("STEPSTONE_TEST_POSTGRES_URL")
    if not base:
        if os.environ.get("STEPSTONE_REQUIRE_POSTGRES"):
            pytest.fail("STEPSTONE_REQUIRE_POSTGRES is set but STEPSTONE_TEST_POSTGRES_URL is not")
        pytest.skip("set STEPSTONE_TEST_POSTGRES_URL to run the PostgreSQL store tests")
    import psycopg
    from psycopg import sql

    schema = f"stepstone_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        yield postgres_url_with_schema(base, schema)
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


def _has_postgres_store() -> bool:
    return importlib.util.find_spec("stepstone.store.postgres") is not None


BACKENDS: list[Backend] = [
    Backend("sqlite-file", _sqlite_file, shared=True),
    Backend("sqlite-memory", _sqlite_memory, shared=False),
]
# PostgreSQL joins the suite as soon as its store exists (src/stepstone/store/postgres.py).
if _has_postgres_store():
    BACKENDS.append(Backend("postgres", _postgres, shared=True, marks=(pytest.mark.postgres,)))


def _params(*, shared_only: bool = False) -> list[Any]:
    return [
        pytest.param(backend, id=backend.id, marks=backend.marks)
        for backend in BACKENDS
        if backend.shared or not shared_only
    ]


@pytest.fixture(params=_params())
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a fresh database, once per backend."""
    with request.param.fresh_url(tmp_path) as url:
        yield url


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    """A fresh, migrated store, once per backend."""
    opened = open_store(store_url)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture(params=_params(shared_only=True))
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a fresh database that several stores (workers) can open at once."""
    with request.param.fresh_url(tmp_path) as url:
        yield url


@pytest.fixture
def open_stores() -> Iterator[Callable[[str], Store]]:
    """Opens stores by URL; closes them all after the test."""
    opened: list[Store] = []

    def open_one(url: str) -> Store:
        opened.append(open_store(url))
        return opened[-1]

    yield open_one
    for each in reversed(opened):
        each.close()
