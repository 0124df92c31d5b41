"""Fake external services for the attachment indexer: a customer database, a flaky OCR
service and a flaky search index that deduplicates requests by idempotency key.

They keep their state in one SQLite file, named by ``$STEPSTONE_DEMO_SERVICES``, so that
several worker processes share them the way they would share real services. Every call
opens its own connection (WAL, with a busy timeout). This is example code: it fails on
purpose, and it counts every call so the demo can show what stepstone saved.

- ``find_customer(channel_id)``: about one channel in five belongs to a customer who does
  not pay for search.
- ``run_ocr(attachment_id)``: 50-150 ms per call; about 30% of calls raise ConnectionError.
- ``update_search_index(channel_id, attachment_id, text, idempotency_key)``: stores the
  document in an FTS5 table. About 20% of calls fail with ConnectionError: half of them
  before doing anything (the service is down), half after indexing (the response is lost
  on the way back). Like a payment API with an ``Idempotency-Key`` header, a repeated key
  returns the first answer without indexing again, and counts the duplicate.
"""

from __future__ import annotations

import hashlib
import os
import random
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

ENV = "STEPSTONE_DEMO_SERVICES"
OCR_FAILURE_RATE = 0.3
INDEX_FAILURE_RATE = 0.2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ocr_calls (
    id INTEGER PRIMARY KEY, attachment_id TEXT NOT NULL, outcome TEXT NOT NULL, pid INTEGER,
    started_at REAL NOT NULL, ended_at REAL);
CREATE TABLE IF NOT EXISTS index_calls (
    id INTEGER PRIMARY KEY, attachment_id TEXT NOT NULL, idempotency_key TEXT NOT NULL,
    outcome TEXT NOT NULL, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS idempotency (key TEXT PRIMARY KEY, response TEXT NOT NULL);
CREATE VIRTUAL TABLE IF NOT EXISTS documents USING fts5(
    text, channel_id UNINDEXED, attachment_id UNINDEXED);
"""

_KINDS = ["invoice", "contract", "receipt", "meeting notes", "design review", "expense report"]
_COMPANIES = ["Acme", "Globex", "Initech", "Umbrella", "Hooli", "Stark Industries"]
_WORDS = [
    "quarterly", "budget", "signature", "delivery", "renewal", "roadmap", "payment", "audit",
    "launch", "shipping", "warranty", "forecast", "hiring", "security", "migration", "pricing",
]  # fmt: skip


def path() -> str:
    """The services' SQLite file: ``$STEPSTONE_DEMO_SERVICES``, else one in the temp dir."""
    return os.environ.get(ENV) or os.path.join(tempfile.gettempdir(), "stepstone-services.db")


@contextmanager
def _connect() -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(path(), timeout=30, isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout = 30000")
        yield conn
    finally:
        conn.close()


def create() -> None:
    """Create the services' tables (call it once, before the workers start)."""
    with _connect() as conn:
        for attempt in range(50):  # switching to WAL can report "locked" without waiting
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                break
            except sqlite3.OperationalError:
                if attempt == 49:
                    raise
                time.sleep(0.05)
        conn.executescript(_SCHEMA)


def is_premium(channel_id: str) -> bool:
    """Whether the channel's customer pays for search (about four channels in five do)."""
    return int(hashlib.sha256(channel_id.encode()).hexdigest(), 16) % 5 != 0


def find_customer(channel_id: str) -> dict[str, Any]:
    """The customer that owns a channel."""
    time.sleep(0.005)
    customer_id = "cus_" + hashlib.sha256(channel_id.encode()).hexdigest()[:8]
    return {"id": customer_id, "channel_id": channel_id, "premium": is_premium(channel_id)}


def ocr_text(attachment_id: str) -> str:
    """The text that OCR finds in an attachment (the same every time)."""
    rng = random.Random(attachment_id)
    kind, company = rng.choice(_KINDS), rng.choice(_COMPANIES)
    words = " ".join(rng.sample(_WORDS, 4))
    return f"{kind} {attachment_id} from {company}: {words}"


def run_ocr(attachment_id: str) -> str:
    """Read the text of an attachment. Slow, and down about 30% of the time."""
    with _connect() as conn:
        call = conn.execute(
            "INSERT INTO ocr_calls (attachment_id, outcome, pid, started_at) "
            "VALUES (?, 'cut off', ?, ?)",
            (attachment_id, os.getpid(), time.time()),
        ).lastrowid
        time.sleep(random.uniform(0.05, 0.15))
        failed = random.random() < OCR_FAILURE_RATE
        conn.execute(
            "UPDATE ocr_calls SET outcome = ?, ended_at = ? WHERE id = ?",
            ("failed" if failed else "ok", time.time(), call),
        )
    if failed:
        raise ConnectionError(f"OCR service unavailable while reading {attachment_id}")
    return ocr_text(attachment_id)


def update_search_index(
    channel_id: str, attachment_id: str, text: str, idempotency_key: str
) -> str:
    """Index a document for a channel; a repeated ``idempotency_key`` returns the first answer."""
    time.sleep(random.uniform(0.01, 0.03))
    roll = random.random()
    with _connect() as conn:
        conn.execute("BEGIN IMMEDIATE")
        try:
            if roll < INDEX_FAILURE_RATE / 2:
                outcome, response = "failed", None
            else:
                row = conn.execute(
                    "SELECT response FROM idempotency WHERE key = ?", (idempotency_key,)
                ).fetchone()
                if row is not None:
                    outcome, response = "duplicate", row[0]
                else:
                    doc = conn.execute(
                        "INSERT INTO documents (text, channel_id, attachment_id) VALUES (?, ?, ?)",
                        (text, channel_id, attachment_id),
                    ).lastrowid
                    outcome, response = "indexed", f"doc-{doc}"
                    conn.execute(
                        "INSERT INTO idempotency (key, response) VALUES (?, ?)",
                        (idempotency_key, response),
                    )
                    if roll < INDEX_FAILURE_RATE:
                        outcome = "indexed, response lost"
            conn.execute(
                "INSERT INTO index_calls (attachment_id, idempotency_key, outcome, at) "
                "VALUES (?, ?, ?, ?)",
                (attachment_id, idempotency_key, outcome, time.time()),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    if response is None:
        raise ConnectionError("search index unavailable (503)")
    if outcome == "indexed, response lost":
        raise ConnectionError("connection reset while reading the search index's response")
    return response


@dataclass
class AttachmentReport:
    """What the services saw of one attachment."""

    ocr_ok: int = 0
    ocr_failed: int = 0
    ocr_cut_off: int = 0
    index_calls: int = 0
    duplicates: int = 0
    documents: int = 0


def report() -> dict[str, AttachmentReport]:
    """Per attachment: OCR calls by outcome, index calls, duplicates, documents indexed."""
    found: dict[str, AttachmentReport] = {}
    with _connect() as conn:
        for attachment, outcome, count in conn.execute(
            "SELECT attachment_id, outcome, count(*) FROM ocr_calls GROUP BY 1, 2"
        ):
            entry = found.setdefault(attachment, AttachmentReport())
            if outcome == "ok":
                entry.ocr_ok += count
            elif outcome == "failed":
                entry.ocr_failed += count
            else:
                entry.ocr_cut_off += count
        for attachment, calls, duplicates in conn.execute(
            "SELECT attachment_id, count(*), sum(outcome = 'duplicate') FROM index_calls GROUP BY 1"
        ):
            entry = found.setdefault(attachment, AttachmentReport())
            entry.index_calls, entry.duplicates = calls, duplicates
        for attachment, count in conn.execute(
            "SELECT attachment_id, count(*) FROM documents GROUP BY 1"
        ):
            found.setdefault(attachment, AttachmentReport()).documents = count
    return found


def search(query: str, limit: int = 5) -> list[tuple[str, str, str]]:
    """Full-text search over the index: (channel, attachment, snippet), best first."""
    with _connect() as conn:
        rows = conn.execute(
            "SELECT channel_id, attachment_id, snippet(documents, 0, '[', ']', '…', 8) "
            "FROM documents WHERE documents MATCH ? ORDER BY rank LIMIT ?",
            (query, limit),
        ).fetchall()
    return [(str(channel), str(attachment), str(text)) for channel, attachment, text in rows]
