"""``App`` configuration: database URLs, the environment default, lease values."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from stepstone import App


def _roundtrip(app: App) -> str:
    @app.job(name="app.echo")
    def echo(text: str) -> str:
        return text

    try:
        return app.run(echo, "hello")
    finally:
        app.close()


def test_relative_sqlite_url_is_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sqlite:///relative/path.db creates the file under the working directory."""
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    assert _roundtrip(App("sqlite:///data/jobs.db")) == "hello"
    assert (tmp_path / "data" / "jobs.db").exists()


def test_absolute_sqlite_url(tmp_path: Path) -> None:
    """sqlite:////absolute/path.db uses that absolute path."""
    path = tmp_path / "abs.db"
    assert _roundtrip(App(f"sqlite:///{path}")) == "hello"
    assert path.exists()


def test_memory_sqlite_url() -> None:
    """sqlite:///:memory: runs jobs without a file."""
    assert _roundtrip(App("sqlite:///:memory:")) == "hello"


def test_url_defaults_to_the_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """App() reads STEPSTONE_DATABASE_URL."""
    path = tmp_path / "from-env.db"
    monkeypatch.setenv("STEPSTONE_DATABASE_URL", f"sqlite:///{path}")
    monkeypatch.chdir(tmp_path)
    assert _roundtrip(App()) == "hello"
    assert path.exists()
    assert not (tmp_path / "stepstone.db").exists()


def test_url_defaults_to_stepstone_db_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a URL or STEPSTONE_DATABASE_URL, App() uses ./stepstone.db."""
    monkeypatch.delenv("STEPSTONE_DATABASE_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    assert _roundtrip(App()) == "hello"
    assert (tmp_path / "stepstone.db").exists()


def test_lease_accepts_seconds_or_a_timedelta(tmp_path: Path) -> None:
    """App(lease=) takes seconds or a timedelta."""
    assert App(f"sqlite:///{tmp_path / 'a.db'}", lease=timedelta(seconds=90)).lease == 90.0
    assert App(f"sqlite:///{tmp_path / 'b.db'}", lease=2.5).lease == 2.5
