"""The embedded store: one SQLite file in WAL mode, safe for many processes on one machine.

Split by concern: ``connection`` (connections, write transactions, locked retries,
migrations, error translation) and ``store`` (the dialect the shared SQL store runs over:
SQL text, the claim statement, checkpoints, transactional steps).
"""

from __future__ import annotations

from .store import SQLiteStore

__all__ = ["SQLiteStore"]
