"""The scale-out store: one PostgreSQL database shared by any number of workers on any
number of machines, with no broker.

Split by concern: ``connection`` (URL, pool, retry loop, error translation), ``listener``
(LISTEN/NOTIFY wake-ups), ``migrations`` (the schema) and ``store`` (the dialect the
shared SQL store runs over: SQL text, claims, locks, checkpoints).
"""

from __future__ import annotations

from .connection import quote_identifier, split_url
from .store import PostgresStore

__all__ = ["PostgresStore", "quote_identifier", "split_url"]
