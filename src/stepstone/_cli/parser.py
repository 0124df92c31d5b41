"""The ``stepstone`` command line: its argument types, its parser, and ``main``, which runs
the command it names and turns what goes wrong into a message and an exit code."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from typing import Any

from .._logs import FORMATS, LEVELS
from .._store.base import JobState
from ..errors import StepstoneError
from .backfill import cmd_backfill
from .commands import (
    cmd_cancel,
    cmd_demo,
    cmd_forget,
    cmd_jobs,
    cmd_memos,
    cmd_migrate,
    cmd_prune,
    cmd_retry,
    cmd_show,
    cmd_signal,
)
from .enqueue import cmd_enqueue
from .exits import EXIT_ERROR, EXIT_USAGE, UsageError
from .render import error
from .rowfile import FILE_FORMATS
from .worker import cmd_worker

_STATES = tuple(state.value for state in JobState)
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_RATE = re.compile(r"(\d+(?:\.\d+)?|\.\d+)(?:/([smh]))?")


def parse_duration(text: str) -> float:
    """Seconds in ``30s``, ``15m``, ``12h``, ``7d``, ``2w``, ``1h30m`` or a bare number."""
    value = text.strip().lower()
    try:
        return float(value)
    except ValueError:
        pass
    parts = list(_DURATION_PART.finditer(value))
    if not parts or "".join(part[0] for part in parts) != value:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration; write for example 30s, 15m, 12h or 7d"
        )
    return sum(float(part[1]) * _UNITS[part[2]] for part in parts)


def parse_rate(text: str) -> float:
    """Jobs per second in ``100/s``, ``600/m``, ``3600/h`` or a bare number (per second)."""
    found = _RATE.fullmatch(text.strip().lower())
    rate = float(found[1]) if found else 0.0
    if not found or rate <= 0:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a rate; write a positive number of jobs per second (50 or "
            "50/s), per minute (600/m) or per hour (3600/h)"
        )
    return rate / _UNITS[found[2] or "s"]


def _states(text: str) -> list[str]:
    """Job states, comma-separated; an unknown one is an argument error."""
    states = [state.strip() for state in text.split(",") if state.strip()]
    for state in states:
        if state not in _STATES:
            raise argparse.ArgumentTypeError(
                f"unknown state {state!r}; states are {', '.join(_STATES)}"
            )
    return states


def _positive(text: str) -> int:
    """An integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``stepstone`` argument parser."""
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="stepstone", description="Background jobs that are safe to retry."
    )
    parser.add_argument("--version", action="version", version=f"stepstone {__version__}")
    db = argparse.ArgumentParser(add_help=False)
    db.add_argument(
        "--db",
        metavar="URL",
        help="database URL (default: $STEPSTONE_DATABASE_URL, else sqlite:///stepstone.db)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(
        name: str,
        handler: Callable[[argparse.Namespace], int],
        text: str,
        *parents: Any,
        description: str | None = None,
    ) -> Any:
        found = sub.add_parser(
            name, help=text, description=description or text, parents=list(parents)
        )
        found.set_defaults(handler=handler)
        return found

    worker = command("worker", cmd_worker, "run a worker for an App")
    worker.add_argument("app", metavar="APP", help="module:attribute or path/to/file.py:attribute")
    worker.add_argument("--concurrency", type=_positive, default=8, help="jobs at once (8)")
    worker.add_argument("--queues", default="", help="comma-separated queues (default: all)")
    worker.add_argument("--until-idle", action="store_true", help="exit when nothing is due")
    worker.add_argument("--log-level", choices=LEVELS, default="info")
    worker.add_argument("--log-format", choices=FORMATS, default="text")

    jobs = command("jobs", cmd_jobs, "list the most recent jobs", db)
    jobs.add_argument("--state", type=_states, action="append", help="repeat, or a,b")
    jobs.add_argument("--name", help="only jobs with this name")
    jobs.add_argument("--limit", type=_positive, default=50)

    show = command("show", cmd_show, "everything about one job", db)
    show.add_argument("job", metavar="JOB", help="job id or key")
    retry = command("retry", cmd_retry, "queue a failed or cancelled job again", db)
    retry.add_argument("job", metavar="JOB", help="job id or key")
    cancel = command(
        "cancel",
        cmd_cancel,
        "cancel a job that has not finished, and its children",
        db,
        description="cancel a job that has not finished, and, recursively, the unfinished "
        "jobs it enqueued from its own code (its children): a queued or waiting job never "
        "runs; a running one stops at its next step boundary, an async one at once",
    )
    cancel.add_argument("job", metavar="JOB", help="job id or key")
    signal = command(
        "signal",
        cmd_signal,
        "send a signal to the jobs waiting for an event",
        db,
        description="send a signal: wake every job waiting for EVENT in stepstone.wait_for(), "
        "and keep the signal (until prune) for jobs created before it that wait for it later",
    )
    signal.add_argument("event", metavar="EVENT", help="the event name, e.g. paid:o1")
    signal.add_argument(
        "--payload", metavar="JSON", help="the value wait_for() returns, as JSON (default null)"
    )

    enqueue = command("enqueue", cmd_enqueue, "enqueue a job by name", db)
    enqueue.add_argument("name", metavar="NAME", help="the job's name")
    enqueue.add_argument("--args", help="positional arguments, a JSON array (needs --app)")
    enqueue.add_argument("--kwargs", help="arguments by name, a JSON object")
    enqueue.add_argument("--key", help="idempotency key: at most one job per key")
    enqueue.add_argument("--delay", type=parse_duration, help="seconds (or 30s, 5m) from now")
    enqueue.add_argument("--queue", help="queue (default: the job's, else 'default')")
    enqueue.add_argument("--priority", type=int, help="higher runs first (default: the job's)")
    enqueue.add_argument("--app", help="module:attribute: check the arguments against the job")
    enqueue.add_argument("-q", "--quiet", action="store_true", help="print only the job id")

    backfill = command("backfill", cmd_backfill, "enqueue one job per row of a file")
    backfill.add_argument(
        "job", metavar="JOB", help="module:attribute naming a job declared with @app.job"
    )
    backfill.add_argument(
        "--from",
        dest="source",
        required=True,
        metavar="FILE",
        help="CSV with a header row, or JSON Lines (a JSON object or array per line); - is stdin",
    )
    backfill.add_argument(
        "--format",
        choices=FILE_FORMATS,
        help="the file's format (default: by its extension, else "
        "jsonl if it starts with { or [, else csv)",
    )
    backfill.add_argument("--key", metavar="TEMPLATE", help="job key, e.g. 'index:{item_id}'")
    backfill.add_argument(
        "--rate", type=parse_rate, metavar="N/s", help="at most N jobs a second (or N/m, N/h)"
    )
    backfill.add_argument(
        "--batch", type=_positive, default=1000, metavar="N", help="jobs per transaction (1000)"
    )
    backfill.add_argument("--queue", help="queue (default: the job's)")
    backfill.add_argument("--priority", type=int, help="higher runs first (default: the job's)")
    backfill.add_argument(
        "--dry-run", action="store_true", help="check the file and count new rows; write nothing"
    )
    backfill.add_argument(
        "--wait", action="store_true", help="then follow the jobs until all have finished"
    )
    backfill.add_argument("--db", metavar="URL", help="database URL (default: the job's App's)")

    forget = command("forget", cmd_forget, "drop a memo key, so its step runs afresh", db)
    forget.add_argument("key", metavar="KEY", help="the memo key (with --prefix, its start)")
    forget.add_argument("--prefix", action="store_true", help="every memo whose key starts so")
    memos = command("memos", cmd_memos, "list memo keys and their values", db)
    memos.add_argument("prefix", metavar="PREFIX", nargs="?", default="", help="key prefix")
    memos.add_argument("--limit", type=_positive, default=50)

    command("migrate", cmd_migrate, "apply the database migrations", db)
    prune = command("prune", cmd_prune, "delete finished jobs with their history", db)
    prune.add_argument("--older-than", type=parse_duration, required=True, metavar="DURATION")
    demo = command("demo", cmd_demo, "run the attachment indexer demo (from the repo root)")
    demo.add_argument("demo_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``stepstone`` command; return its exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or argparse's own usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.handler(args))
    except UsageError as exc:
        error(str(exc), exc.detail)
        return EXIT_USAGE
    except StepstoneError as exc:
        error(str(exc))
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


__all__ = ["build_parser", "main", "parse_duration", "parse_rate"]
