"""The Procrastinate app the benchmark defers to and runs workers for.

It lives in its own module because Procrastinate warns when an ``App`` is built in
``__main__`` (task names would depend on how the program was started).
"""

from __future__ import annotations

import time
from typing import Any


def build_app(url: str) -> Any:
    """An ``App`` on ``url`` with two tasks: ``noop`` and ``stamp`` (records its start)."""
    from procrastinate import App, PsycopgConnector

    app = App(connector=PsycopgConnector(conninfo=url))

    @app.task(name="noop")
    async def noop() -> None:
        return None

    @app.task(name="stamp")
    async def stamp(i: int, path: str) -> None:
        started = time.time()
        with open(path, "a") as out:
            out.write(f"{i} {started!r}\n")

    return app
