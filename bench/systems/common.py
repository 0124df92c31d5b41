"""Helpers shared by every ``bench/systems/<system>.py`` module.

A system module is run as ``python -m bench.systems.<module> <scenario> --store sqlite|postgres
--url URL [--jobs N] [--concurrency C] [--steps S] [--samples K] [--rows R]`` (from the
repository root; ``compare.py`` does that) and prints exactly one JSON line as the last line
of its stdout. The smallest module is::

    from bench.systems import common

    def throughput(args):                      # args: the Namespace of parse_args()
        with common.fresh_postgres("mysys", args.url) as url:
            ...enqueue args.jobs jobs...
            with common.pg_connect(url) as conn:
                done = lambda: conn.execute("SELECT count(*) ...").fetchone()[0] >= args.jobs
                drain = common.drain(common.python_cmd("bench.systems.mysys", "_worker", ...),
                                     done)
        return {"jobs_per_s": args.jobs / drain.seconds}

    if __name__ == "__main__":
        common.main("mysys", {"throughput": throughput})

API (do not rename: several modules use it):

- ``DEFAULT_PG_URL``: the server, ``postgresql://postgres@127.0.0.1:5432/postgres``.
- ``SCENARIOS``: the scenario names ``compare.py`` runs.
- ``parse_args(argv=None)``: the common command line; ``--jobs`` defaults by scenario
  (overhead 1,000, throughput and memory 10,000, scale 2,000, floor 3,000), ``--concurrency``
  16 for scale and memory else 1, ``--steps`` 3, ``--samples`` 200, ``--rows`` 0, ``--url``
  ``DEFAULT_PG_URL``.
  Any scenario name is accepted (modules may have private ones such as ``_worker``).
- ``main(system, handlers, argv=None)``: parse the command line, call
  ``handlers[scenario](args)``, which returns a dict of fields (or ``{"skipped": why}``, or
  ``None`` to print nothing: a private worker mode), and print the JSON line. A scenario
  without a handler prints ``{"skipped": ...}``; an exception prints its traceback to
  stderr, ``{"error": "..."}`` on stdout, and exits 1.
- ``emit(system, args, **fields)``: print the one JSON line yourself (``main`` does it).
- ``fresh_postgres(system, server_url=DEFAULT_PG_URL)``: context manager; creates database
  ``bench_<system>_<random>``, yields its URL
  (``postgresql://postgres@127.0.0.1:5432/bench_...``), drops it (``WITH (FORCE)``) after.
- ``fresh_sqlite(system)``: context manager; yields a ``Path`` to a not-yet-existing
  ``<system>.db`` in a fresh temporary directory, removed after.
- ``pg_connect(url)``: an autocommit psycopg connection (use it in a ``with``).
- ``percentile(values, q)``: q in [0, 1], linear interpolation.
- ``latency_fields(seconds)``: ``{"p50_ms", "p95_ms", "p99_ms"}`` of latencies in seconds.
- ``python_cmd(module, *args)``: ``[sys.executable, "-m", module, *args]``: a subprocess on
  the interpreter the measurement itself runs on (``compare.py --python`` chooses it).
- ``signal_ready()``: called by a worker subprocess when it is about to take jobs (imports
  done, app built, connected): prints ``READY`` on stdout.
- ``Worker(cmd, ready_timeout=120)``: context manager running a worker subprocess (cwd the
  repository root, repository on ``PYTHONPATH``, stderr inherited). Entering waits for its
  ``READY`` line; ``.ready_at`` is ``time.perf_counter()`` then; ``.peak_rss_mb()`` reads its
  peak RSS (``VmHWM``) while it runs; leaving stops it (SIGTERM, then SIGKILL after 5 s).
- ``drain(cmd, is_done, timeout=900, poll=0.02)``: starts a ``Worker``, polls ``is_done()``
  until true, and returns ``Drain(seconds, peak_rss_mb)``: seconds from the worker's
  ``READY`` to ``is_done()`` first seen true (Python start-up and imports not counted), its
  peak RSS read just before it is stopped.
- ``wait_until(predicate, timeout, poll=0.01)``: poll until true; ``TimeoutError`` else.
- ``peak_rss_mb()``: this process's peak RSS in MB (``getrusage``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit, urlunsplit

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
SCENARIOS = ("overhead", "throughput", "latency", "scale", "memory", "floor")
REPO = Path(__file__).resolve().parents[2]
READY = "READY"

_DEFAULT_JOBS = {
    "overhead": 1000,
    "throughput": 10_000,
    "memory": 10_000,
    "scale": 2000,
    "floor": 3000,
}


# the command line and the one JSON line -------------------------------------------------------
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario")
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="postgres")
    parser.add_argument("--url", default=DEFAULT_PG_URL, help="the PostgreSQL server")
    parser.add_argument("--jobs", type=int, default=None)
    parser.add_argument("--concurrency", type=int, default=None)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--rows", type=int, default=0)
    args = parser.parse_args(argv)
    if args.jobs is None:
        args.jobs = _DEFAULT_JOBS.get(args.scenario, 1000)
    if args.concurrency is None:
        args.concurrency = 16 if args.scenario in ("scale", "memory") else 1
    return args


def emit(system: str, args: argparse.Namespace, **fields: Any) -> None:
    """Print the one JSON line: system, store, scenario, the sizes that apply, ``fields``."""
    line: dict[str, Any] = {"system": system, "store": args.store, "scenario": args.scenario}
    sizes = {
        "overhead": ("jobs",),
        "throughput": ("jobs", "concurrency", "steps"),
        "latency": ("samples",),
        "scale": ("rows", "jobs", "concurrency"),
        "memory": ("jobs",),
    }.get(args.scenario, ())
    for name in sizes:
        line[name] = getattr(args, name)
    line.update(fields)
    sys.stdout.flush()
    print(json.dumps(line), flush=True)


def main(
    system: str,
    handlers: dict[str, Callable[[argparse.Namespace], dict[str, Any] | None]],
    argv: Sequence[str] | None = None,
) -> int:
    args = parse_args(argv)
    handler = handlers.get(args.scenario)
    if handler is None:
        emit(system, args, skipped=f"{system} has no {args.scenario!r} scenario")
        return 0
    try:
        fields = handler(args)
    except BaseException as exc:
        traceback.print_exc()
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        emit(system, args, error=f"{type(exc).__name__}: {message}"[:300])
        return 1
    if fields is not None:
        emit(system, args, **fields)
    return 0


# fresh stores ---------------------------------------------------------------------------------
def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


def pg_connect(url: str) -> Any:
    """An autocommit psycopg connection to ``url``."""
    import psycopg

    return psycopg.connect(url, autocommit=True)


@contextmanager
def fresh_postgres(system: str, server_url: str = DEFAULT_PG_URL) -> Iterator[str]:
    """Create ``bench_<system>_<random>``, yield its URL, drop it afterwards."""
    safe = "".join(c if c.isalnum() else "_" for c in system.lower())
    name = f"bench_{safe}_{secrets.token_hex(4)}"
    with pg_connect(server_url) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _with_database(server_url, name)
    finally:
        try:
            with pg_connect(server_url) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except Exception as exc:
            print(f"could not drop database {name}: {exc}", file=sys.stderr)


@contextmanager
def fresh_sqlite(system: str) -> Iterator[Path]:
    """Yield a path for a new SQLite file in a fresh temporary directory, removed after."""
    folder = Path(tempfile.mkdtemp(prefix=f"bench_{system}_"))
    try:
        yield folder / f"{system}.db"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# figures -------------------------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float:
    """The q-quantile (0 <= q <= 1) of ``values``, interpolating linearly."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def latency_fields(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99 in milliseconds of latencies given in seconds."""
    return {
        f"p{int(q * 100)}_ms": round(percentile(seconds, q) * 1000, 3) for q in (0.5, 0.95, 0.99)
    }


def peak_rss_mb() -> float:
    """This process's peak resident set size in MB."""
    kilobytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kilobytes / 1024 if sys.platform != "darwin" else kilobytes / 1024 / 1024


# worker subprocesses -----------------------------------------------------------------------------
def python_cmd(module: str, *args: str) -> list[str]:
    """Run ``module`` on the interpreter this measurement runs on."""
    return [sys.executable, "-m", module, *args]


def subprocess_env() -> dict[str, str]:
    """The environment for a subprocess: the repository root on ``PYTHONPATH``."""
    env = dict(os.environ)
    paths = [str(REPO), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


def signal_ready() -> None:
    """In a worker subprocess: say that it is about to take jobs."""
    sys.stdout.flush()
    print(READY, flush=True)


def wait_until(predicate: Callable[[], bool], timeout: float, poll: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"still not done after {timeout:.0f} s")
        time.sleep(poll)


class Worker:
    """A worker subprocess (see the module docstring)."""

    def __init__(self, cmd: Sequence[str], ready_timeout: float = 120) -> None:
        self.cmd = list(cmd)
        self.ready_timeout = ready_timeout
        self.started_at = 0.0
        self.ready_at = 0.0
        self.proc: subprocess.Popen[str] | None = None
        self.output: list[str] = []

    def __enter__(self) -> Worker:
        self.started_at = time.perf_counter()
        self.proc = subprocess.Popen(
            self.cmd,
            cwd=REPO,
            env=subprocess_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        ready = threading.Event()
        proc = self.proc

        def read() -> None:  # keeps the pipe drained for the worker's whole life
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.strip() == READY and not ready.is_set():
                    self.ready_at = time.perf_counter()
                    ready.set()
                else:
                    self.output.append(line)
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(self.ready_timeout) or not self.ready_at:
            code = proc.poll()
            self.__exit__(None, None, None)
            tail = "".join(self.output[-5:]).strip()
            state = f"exited with code {code}" if code is not None else "never said READY"
            raise RuntimeError(f"worker {state}: {tail}")
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def peak_rss_mb(self) -> float:
        """The worker's peak RSS so far (Linux ``VmHWM``; psutil's current RSS elsewhere)."""
        assert self.proc is not None
        try:
            with open(f"/proc/{self.proc.pid}/status") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        try:
            import psutil

            return float(psutil.Process(self.proc.pid).memory_info().rss) / 1024 / 1024
        except Exception:
            return float("nan")

    def __exit__(self, *exc: object) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Drain(NamedTuple):
    seconds: float
    peak_rss_mb: float


def drain(
    cmd: Sequence[str], is_done: Callable[[], bool], timeout: float = 900, poll: float = 0.02
) -> Drain:
    """Start a worker, time it from READY until ``is_done()``; see the module docstring."""
    with Worker(cmd) as worker:
        deadline = worker.ready_at + timeout
        while not is_done():
            if not worker.alive():
                raise RuntimeError(f"worker exited with code {worker.proc.returncode}")  # type: ignore[union-attr]
            if time.perf_counter() > deadline:
                raise TimeoutError(f"the worker was not done after {timeout:.0f} s")
            time.sleep(poll)
        seconds = time.perf_counter() - worker.ready_at
        return Drain(seconds, worker.peak_rss_mb())
