"""The two stores of the model test: a SQLite file and a PostgreSQL schema, one App on each,
both driven by one fake clock and declaring the same jobs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from stepstone import App
from stepstone.testing import FakeClock

from ..backends import postgres, postgres_base_url
from .adapter import StoreDriver
from .machine import declare_jobs


@pytest.fixture
def shared_clock() -> FakeClock:
    """The one clock both apps read, so that their timestamps must match exactly."""
    return FakeClock()


@pytest.fixture
def drivers(tmp_path: Path, shared_clock: FakeClock) -> Iterator[list[StoreDriver]]:
    """A fresh SQLite database and a fresh PostgreSQL schema, each behind an App and a
    driver (skips without PostgreSQL, fails with STEPSTONE_REQUIRE_POSTGRES)."""
    with postgres(tmp_path) as pg_url:
        sqlite_path = tmp_path / "model.db"
        apps = [
            App(f"sqlite:///{sqlite_path}", clock=shared_clock),
            App(pg_url, clock=shared_clock),
        ]
        try:
            for app in apps:
                declare_jobs(app)
            yield [
                StoreDriver(apps[0], kind="sqlite", caller_url=str(sqlite_path)),
                StoreDriver(apps[1], kind="postgres", caller_url=postgres_base_url()),
            ]
        finally:
            for app in apps:
                app.close()
