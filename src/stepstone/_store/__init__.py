"""Stores: where jobs, checkpoints and errors live. Chosen by URL."""

from __future__ import annotations

from typing import Any

from ..errors import StoreError
from .base import Store


def open_store(url: str, **options: Any) -> Store:
    """Open the store a URL names: ``sqlite:///path``, ``sqlite:///:memory:``, ``postgresql://``.

    ``sqlite:///relative/path.db`` is relative to the working directory,
    ``sqlite:////absolute/path.db`` absolute.
    """
    if url.startswith("sqlite://"):
        from .sqlite import SQLiteStore

        rest = url[len("sqlite://") :]
        if not rest.startswith("/") or rest == "/":
            raise StoreError(
                f"bad SQLite URL {url!r}: write sqlite:///relative.db, sqlite:////abs/path.db "
                "or sqlite:///:memory:"
            )
        path = rest[1:].split("?", 1)[0]
        for postgres_only in ("schema", "pool_size"):
            options.pop(postgres_only, None)
        return SQLiteStore(path, **options)
    if url.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresStore

        options.pop("busy_timeout", None)
        return PostgresStore(url, **options)
    raise StoreError(
        f"unknown database URL {url!r}: stepstone takes sqlite:///path.db, sqlite:///:memory: "
        "or postgresql://user@host/db"
    )


__all__ = ["Store", "open_store"]
