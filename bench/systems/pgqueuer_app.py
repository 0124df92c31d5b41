"""The PgQueuer consumer the benchmark runs: two entrypoints, ``noop`` and ``stamp``.

``manager(url)`` is the factory ``pgq run`` expects (an async context manager yielding a
``PgQueuer``), opened on one asyncpg connection as in PgQueuer's README.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

STAMPS_ENV = "BENCH_PGQUEUER_STAMPS"  # the file ``stamp`` jobs append "<i> <start time>" to


@asynccontextmanager
async def manager(
    url: str, concurrency_limit: int = 0, on_ready: Callable[[], None] | None = None
) -> AsyncIterator[Any]:
    """A ``PgQueuer`` on its own asyncpg connection to ``url``.

    ``concurrency_limit`` is the entrypoints' limit (PgQueuer's default 0: unlimited).
    """
    import asyncpg
    from pgqueuer import PgQueuer
    from pgqueuer.db import AsyncpgDriver
    from pgqueuer.models import Job

    connection = await asyncpg.connect(url)
    try:
        pgq = PgQueuer(AsyncpgDriver(connection))
        stamps = os.environ.get(STAMPS_ENV, os.devnull)

        @pgq.entrypoint("noop", concurrency_limit=concurrency_limit)
        async def noop(job: Job) -> None:
            return None

        @pgq.entrypoint("stamp", concurrency_limit=concurrency_limit)
        async def stamp(job: Job) -> None:
            started = time.time()
            with open(stamps, "a") as out:
                out.write(f"{(job.payload or b'').decode()} {started!r}\n")

        if on_ready is not None:
            on_ready()
        yield pgq
    finally:
        await connection.close()
