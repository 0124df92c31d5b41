"""The raw floors a durable step cannot go below, measured on the same disk and server.

    python -m bench.systems.floors floor --store sqlite|postgres [--url SERVER] [--jobs N]

- SQLite: one ``sqlite3`` write transaction (an autocommit ``INSERT`` of a checkpoint-shaped
  row) in WAL mode with ``synchronous=NORMAL``: ``wal_write_us``.
- PostgreSQL: one psycopg autocommit ``INSERT`` + ``COMMIT`` of the same row, with
  ``synchronous_commit`` on and off (``insert_commit_sync_on_us``,
  ``insert_commit_sync_off_us``), one ``SELECT 1`` round trip (``select_1_us``), and
  ``pgbench -N -c 1 -T 3`` (simple-update, one client) on a scratch database initialised by
  ``pgbench -i`` (``pgbench_tps``; null with ``pgbench_skipped`` when it is not on PATH).

``--jobs`` is the number of timed writes (default 3,000), after 100 to warm up.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Callable
from typing import Any

from bench.systems import common

SYSTEM = "floors"
PGBENCH_SECONDS = 3


def timed_us(action: Callable[[int], object], count: int) -> float:
    for i in range(100):  # warm up (and let psycopg prepare the statement)
        action(-1 - i)
    started = time.perf_counter()
    for i in range(count):
        action(i)
    return (time.perf_counter() - started) / count * 1e6


def sqlite_floor(count: int) -> dict[str, Any]:
    with common.fresh_sqlite(SYSTEM) as path:
        conn = sqlite3.connect(path, isolation_level=None)
        with contextlib.closing(conn):
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(
                "CREATE TABLE t (job TEXT, seq INTEGER, value TEXT, PRIMARY KEY (job, seq))"
            )
            wal = timed_us(
                lambda i: conn.execute("INSERT INTO t VALUES (?, ?, ?)", ("job", i, '"v"')), count
            )
    return {"wal_write_us": round(wal, 1), "sqlite_version": sqlite3.sqlite_version}


def pgbench_tps(server_url: str) -> dict[str, Any]:
    pgbench = shutil.which("pgbench")
    if pgbench is None:
        return {"pgbench_tps": None, "pgbench_skipped": "pgbench is not on PATH"}
    with common.fresh_postgres("pgbench", server_url) as url, tempfile.TemporaryDirectory() as cwd:
        subprocess.run([pgbench, "-i", "-q", url], check=True, capture_output=True, cwd=cwd)
        done = subprocess.run(
            [pgbench, "-N", "-c", "1", "-T", str(PGBENCH_SECONDS), url],
            check=True,
            capture_output=True,
            text=True,
            cwd=cwd,
        )
    found = re.search(r"tps = ([0-9.]+)", done.stdout)
    return {"pgbench_tps": round(float(found.group(1)), 1) if found else None}


def postgres_floor(server_url: str, count: int) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    with common.fresh_postgres(SYSTEM, server_url) as url, common.pg_connect(url) as conn:
        figures["server_version"] = conn.execute("SHOW server_version").fetchone()[0]
        conn.execute("CREATE TABLE t (job text, seq integer, value json, PRIMARY KEY (job, seq))")
        for mode in ("on", "off"):
            conn.execute(f"SET synchronous_commit = {mode}")
            conn.execute("TRUNCATE t")
            figures[f"insert_commit_sync_{mode}_us"] = round(
                timed_us(
                    lambda i, mode=mode: conn.execute(
                        "INSERT INTO t VALUES (%s, %s, %s)", (mode, i, '"v"')
                    ),
                    count,
                ),
                1,
            )
        figures["select_1_us"] = round(
            timed_us(lambda _i: conn.execute("SELECT 1").fetchone(), count), 1
        )
    figures.update(pgbench_tps(server_url))
    return figures


def floor(args: argparse.Namespace) -> dict[str, Any]:
    count = args.jobs
    if args.store == "sqlite":
        return sqlite_floor(count)
    return postgres_floor(args.url, count)


if __name__ == "__main__":
    raise SystemExit(common.main(SYSTEM, {"floor": floor}))
