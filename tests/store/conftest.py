"""One fresh store per test, for every backend.

A backend is a way to get the URL of an empty database (and to clean it up). The
``store`` fixture runs each test once per backend; tests that need two stores on one
database (two workers) use ``shared_url``, which only the backends whose URL can be
opened twice provide. Adding a backend is adding one entry to ``BACKENDS``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from stepstone._store import Store, open_store

from ..backends import POSTGRES, SQLITE_FILE, SQLITE_MEMORY, Backend, params

BACKENDS: list[Backend] = [SQLITE_FILE, SQLITE_MEMORY, POSTGRES]


def _params(*, shared_only: bool = False) -> list[Any]:
    return params([backend for backend in BACKENDS if backend.shared or not shared_only])


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
