"""Loads the named SQL queries and the migrations of a backend from their ``.sql`` files."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)
_MIGRATION = re.compile(r"^(\d{4})_(\w+)\.sql$")


def load_queries(backend: str) -> dict[str, str]:
    """Every query of ``sql/<backend>.sql``, by the name in its ``-- name:`` line."""
    text = resources.files(__package__).joinpath("sql", f"{backend}.sql").read_text("utf-8")
    parts = _NAME.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        queries[name] = body.strip().rstrip(";").strip()
    return queries


@dataclass(frozen=True)
class Migration:
    """One versioned schema change."""

    version: int
    name: str
    sql: str


def load_migrations(backend: str) -> list[Migration]:
    """The migrations of ``migrations/<backend>/``, in version order."""
    folder = resources.files(__package__).joinpath("migrations", backend)
    found = []
    for entry in folder.iterdir():
        match = _MIGRATION.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text("utf-8")))
    found.sort(key=lambda migration: migration.version)
    return found


__all__ = ["Migration", "load_migrations", "load_queries"]
