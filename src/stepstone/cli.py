"""The ``stepstone`` command (also ``python -m stepstone``).

``stepstone worker APP`` runs a worker for the App that ``APP`` (``module:attribute`` or
``path/to/file.py:attribute``) names. The operator commands (``jobs``, ``show``, ``retry``,
``cancel``, ``enqueue``, ``migrate``, ``prune``) need no user code: they open the database
that ``--db`` names (default: ``$STEPSTONE_DATABASE_URL``, else ``sqlite:///stepstone.db``,
as ``App()`` does). ``stepstone demo`` runs the seed's story end to end.

Exit codes: 0 done (also when an operation had nothing to do, which is said), 1 an error
(an unknown job, a key conflict, a database that cannot be used), 2 a command line that
cannot work (bad arguments, an APP that cannot be loaded). rich is imported only here, by
the commands, so ``import stepstone`` stays light.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import JobNotFound, KeyConflict, StepstoneError
from .logs import FORMATS, LEVELS, configure_logging
from .store.base import JobState

if TYPE_CHECKING:
    from rich.console import Console

    from .app import App
    from .store.base import JobRecord

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2

_STATES = tuple(state.value for state in JobState)
_STATE_STYLES = {
    "queued": "cyan",
    "running": "yellow",
    "waiting": "blue",
    "succeeded": "green",
    "failed": "red",
    "cancelled": "magenta",
}
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


class UsageError(Exception):
    """A command line that cannot work; printed as one line, exit code 2."""

    def __init__(self, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.detail = detail


# output -------------------------------------------------------------------------------------
def _console(*, stderr: bool = False) -> Console:
    """A rich console; wide when writing to a pipe, so tables are not squeezed to 80 columns."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    width = None if "COLUMNS" in os.environ or stream.isatty() else 160
    return Console(stderr=stderr, width=width, highlight=False)


def _say(text: str, style: str | None = None) -> None:
    from rich.text import Text

    _console().print(Text(text, style=style or ""))


def _error(message: str, detail: str | None = None) -> None:
    from rich.text import Text

    console = _console(stderr=True)
    if detail:
        console.print(Text(detail.rstrip(), style="dim"))
    console.print(Text(f"error: {message}", style="bold red"))


def _truncate(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _span(seconds: float) -> str:
    """``12s``, ``3m05s``, ``1h30m``, ``7d``: the largest unit, and the next one if not zero."""
    total = round(seconds)
    for unit, size, smaller, small_size in (
        ("d", 86400, "h", 3600),
        ("h", 3600, "m", 60),
        ("m", 60, "s", 1),
    ):
        if total >= size:
            rest = total % size // small_size
            return f"{total // size}{unit}" + (f"{rest:02d}{smaller}" if rest else "")
    return f"{total}s"


def relative_time(when: float | None, now: float) -> str:
    """``in 3s``, ``12s ago``, ``now``, or ``-`` for no time."""
    if when is None:
        return "-"
    delta = when - now
    if abs(delta) < 0.5:
        return "now"
    return f"in {_span(delta)}" if delta > 0 else f"{_span(-delta)} ago"


def _absolute(when: float | None, now: float) -> str:
    if when is None:
        return "-"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when))
    return f"{stamp} ({relative_time(when, now)})"


def _error_summary(text: str | None, limit: int = 60) -> str:
    """``Type: message`` of a stored error record, truncated."""
    if not text:
        return ""
    try:
        record = json.loads(text)
    except ValueError:
        return _truncate(text, limit)
    if not isinstance(record, dict):
        return _truncate(text, limit)
    kind = str(record.get("type") or "Error").rsplit(".", 1)[-1]
    message = str(record.get("message") or "")
    return _truncate(f"{kind}: {message}" if message else kind, limit)


def _state_text(state: str) -> Any:
    from rich.text import Text

    return Text(state, style=_STATE_STYLES.get(state, ""))


# loading an App -----------------------------------------------------------------------------
def _import(name: str) -> Any:
    """Import a module by dotted name; a missing module or a failing import is a UsageError."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
            raise UsageError(
                f"cannot load APP: no module named {name!r} (looked in the current "
                f"directory {os.getcwd()} and on sys.path)"
            ) from exc
        raise UsageError(
            f"cannot load APP: importing {name!r} failed: {type(exc).__name__}: {exc}",
            traceback.format_exc(),
        ) from exc
    except Exception as exc:
        raise UsageError(
            f"cannot load APP: importing {name!r} failed: {type(exc).__name__}: {exc}",
            traceback.format_exc(),
        ) from exc


def _import_file(path: Path) -> Any:
    """Import ``path/to/file.py``: under the current directory by its dotted name (so job
    names match those of code that imports it), elsewhere with its folder on sys.path."""
    full = path if path.is_absolute() else Path.cwd() / path
    if not full.is_file():
        raise UsageError(f"cannot load APP: no such file {str(path)!r}")
    try:
        relative = full.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        relative = None
    if relative is not None:
        parts = [*relative.parent.parts, relative.stem]
        if all(part.isidentifier() for part in parts):
            dotted = ".".join(parts)
            try:
                return importlib.import_module(dotted)
            except ModuleNotFoundError as exc:
                if not (exc.name and dotted.startswith(exc.name)):
                    raise UsageError(
                        f"cannot load APP: importing {str(path)!r} failed: {exc}",
                        traceback.format_exc(),
                    ) from exc
    sys.path.insert(0, str(full.parent))
    return _import(full.stem)


def load_app(spec: str) -> App:
    """The App that ``module:attribute`` or ``path/to/file.py:attribute`` names.

    The current directory is put on ``sys.path`` first. Anything wrong is a UsageError
    saying what: no such module or file, no such attribute, not an App.
    """
    from .app import App

    target, _, attribute = spec.rpartition(":")
    if not target or not attribute:
        raise UsageError(
            f"APP must be module:attribute or path/to/file.py:attribute (for example "
            f"myproject.jobs:app), not {spec!r}"
        )
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    is_file = target.endswith(".py") or "/" in target or os.sep in target
    module = _import_file(Path(target)) if is_file else _import(target)
    found: Any = module
    for part in attribute.split("."):
        if not hasattr(found, part):
            apps = sorted(name for name, value in vars(module).items() if isinstance(value, App))
            hint = f"; Apps it defines: {', '.join(apps)}" if apps else ""
            raise UsageError(
                f"cannot load APP: module {module.__name__!r} has no attribute {attribute!r}{hint}"
            )
        found = getattr(found, part)
    if not isinstance(found, App):
        raise UsageError(
            f"cannot load APP: {spec} is a {type(found).__name__}, not a stepstone.App"
        )
    return found


def _open(args: argparse.Namespace) -> App:
    """An App with no jobs over the database the command names."""
    from .app import App

    return App(args.db)


def _find(app: App, ref: str) -> JobRecord:
    """The job whose id, else whose key, is ``ref``."""
    record = app.store.job_get(ref) or app.store.job_get_by_key(ref)
    if record is None:
        raise JobNotFound(f"no job with id or key {ref!r} in {app.store.url}")
    return record


# commands -----------------------------------------------------------------------------------
def cmd_worker(args: argparse.Namespace) -> int:
    from .worker import Worker

    configure_logging(args.log_level, args.log_format)
    app = load_app(args.app)
    queues = [name.strip() for name in args.queues.split(",") if name.strip()] or None
    try:
        Worker(app, concurrency=args.concurrency, queues=queues, until_idle=args.until_idle).run()
    finally:
        app.close()
    return EXIT_OK


def cmd_jobs(args: argparse.Namespace) -> int:
    from rich.table import Table

    app = _open(args)
    states = [state for group in args.state or [] for state in group]
    records = app.store.job_list(states=states or None, name=args.name, limit=args.limit)
    now = time.time()
    table = Table(title=f"jobs in {app.store.url}", title_justify="left")
    for column in ("id", "name", "key", "state", "attempts", "when", "last error"):
        table.add_column(column, no_wrap=column in ("id", "state", "when"))
    for record in records:
        if record.state == "queued":
            when = relative_time(record.run_at, now)
        elif record.state.finished:
            when = relative_time(record.finished_at, now)
        else:
            when = relative_time(record.updated_at, now)
        table.add_row(
            record.id,
            record.name,
            record.key or "",
            _state_text(record.state.value),
            str(record.attempts),
            when,
            _error_summary(record.error),
        )
    console = _console()
    if records:
        console.print(table)
    else:
        console.print("no jobs match", style="dim")
    return EXIT_OK


def _json_view(text: str) -> Any:
    """Stored JSON, pretty-printed (as it is, if it does not parse)."""
    from rich.json import JSON
    from rich.text import Text

    try:
        return JSON(text)
    except ValueError:
        return Text(text)


def cmd_show(args: argparse.Namespace) -> int:
    from rich.table import Table
    from rich.text import Text

    from .handle import JobHandle
    from .serialization import dumps

    app = _open(args)
    record = _find(app, args.job)
    handle = JobHandle(app, record.id, record.key)
    now = time.time()
    console = _console()
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    lease = "-"
    if record.lease_owner:
        lease = f"{record.lease_owner}, expires {relative_time(record.lease_expires_at, now)}"
    for label, value in (
        ("id", record.id),
        ("name", record.name),
        ("queue", record.queue),
        ("key", record.key or "-"),
        ("state", _state_text(record.state.value)),
        ("attempts", str(record.attempts)),
        ("fence", str(record.fence)),
        ("lease", lease),
        ("run at", _absolute(record.run_at, now)),
        ("created", _absolute(record.created_at, now)),
        ("started", _absolute(record.started_at, now)),
        ("finished", _absolute(record.finished_at, now)),
    ):
        facts.add_row(label, value if isinstance(value, Text) else Text(value))
    console.print(facts)
    console.print(Text("arguments", style="bold"))
    console.print(_json_view(record.args))
    if record.state == "succeeded":
        console.print(Text("result", style="bold"))
        console.print(_json_view(record.result or "null"))
    elif record.error:
        console.print(
            Text("final error: ", style="bold red") + Text(_error_summary(record.error, 500))
        )

    steps = handle.steps()
    history = Table(title="step history", title_justify="left")
    for column in ("#", "step", "status", "attempts", "value or error"):
        history.add_column(column, no_wrap=column != "value or error")
    for step in steps:
        if step.status == "ok":
            shown = _truncate(dumps(step.value), 100)
        else:
            shown = _error_summary(json.dumps(step.error), 100)
        history.add_row(
            str(step.position), step.name, _state_text(step.status), str(step.attempts), shown
        )
    console.print(history if steps else Text("no steps recorded", style="dim"))

    errors = handle.errors()
    console.print(Text(f"errors ({len(errors)})", style="bold"))
    for error in errors:
        where = f"step {error.step}" if error.step else "job"
        header = f"attempt {error.attempt}, {where}, {_absolute(error.created_at, now)}: "
        console.print(Text(header, style="bold") + Text(f"{error.type}: {error.message}"))
        if error.traceback:
            console.print(Text(error.traceback.rstrip(), style="dim"))
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace) -> int:
    app = _open(args)
    record = _find(app, args.job)
    if app.cancel(record.id):
        note = ""
        if record.state == "running":
            note = (
                "; its worker stops it at the next step boundary (the running step's "
                "checkpoint is refused)"
            )
        _say(f"cancelled job {record.id} ({record.name}), which was {record.state}{note}", "green")
    else:
        state = app.store.job_get(record.id) or record
        _say(
            f"nothing done: job {record.id} ({record.name}) is already {state.state}; only "
            "queued, running or waiting jobs can be cancelled",
            "yellow",
        )
    return EXIT_OK


def cmd_retry(args: argparse.Namespace) -> int:
    app = _open(args)
    record = _find(app, args.job)
    if app.retry(record.id):
        _say(
            f"job {record.id} ({record.name}), which was {record.state}, is queued again with a "
            "fresh attempt budget; checkpoints before its first step error are kept",
            "green",
        )
    else:
        state = app.store.job_get(record.id) or record
        _say(
            f"nothing done: job {record.id} ({record.name}) is {state.state}; only failed or "
            "cancelled jobs can be retried",
            "yellow",
        )
    return EXIT_OK


def _json_arg(text: str | None, kind: type, option: str, what: str) -> Any:
    if text is None:
        return kind()
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{option} must be {what}: {exc}") from exc
    if not isinstance(value, kind):
        raise UsageError(f"{option} must be {what}, not {type(value).__name__} {text!r}")
    return value


def cmd_enqueue(args: argparse.Namespace) -> int:
    positional = _json_arg(args.args, list, "--args", "a JSON array")
    named = _json_arg(args.kwargs, dict, "--kwargs", "a JSON object")
    if args.app and args.db:
        raise UsageError("pass --app or --db, not both: with --app, the App's own URL is used")
    if args.app:
        app = load_app(args.app)
        before = app.store.job_get_by_key(args.key) if args.key else None
        try:
            handle = app.enqueue(
                _job_name(app, args.name),
                *positional,
                key=args.key,
                delay=args.delay,
                queue=args.queue,
                priority=args.priority,
                **named,
            )
        except TypeError as exc:
            raise StepstoneError(str(exc)) from exc
        record = handle.record()
        created = before is None or before.id != record.id
    else:
        if args.args is not None:
            raise UsageError(
                "--args needs --app: arguments are stored by parameter name, and without the "
                "job's code stepstone cannot know the names of positional ones; pass "
                "--kwargs '{\"name\": value}' instead, or --app module:attribute"
            )
        record, created = _insert_by_name(_open(args), args, named)
    if args.quiet:
        sys.stdout.write(record.id + "\n")
        return EXIT_OK
    if not created:
        _say(
            f"key {args.key!r} already names job {record.id} ({record.name}, {record.state}) "
            "with the same arguments; nothing new was enqueued",
            "yellow",
        )
        return EXIT_OK
    due = relative_time(record.run_at, time.time())
    key = f", key {record.key!r}" if record.key else ""
    _say(f"enqueued job {record.id} ({record.name}{key}, queue {record.queue}, due {due})")
    return EXIT_OK


def _job_name(app: App, name: str) -> str:
    """``name``, or the one registered job whose name ends with ``.name``."""
    if name in app.jobs:
        return name
    matches = [job for job in app.jobs if job.rsplit(".", 1)[-1] == name]
    return matches[0] if len(matches) == 1 else name


def _insert_by_name(
    app: App, args: argparse.Namespace, named: dict[str, Any]
) -> tuple[JobRecord, bool]:
    """Write a job row without its code: arguments by parameter name, as given."""
    from .app import new_job_id
    from .job import DEFAULT_QUEUE
    from .serialization import dumps
    from .store.base import NewJob

    now = time.time()
    new = NewJob(
        id=new_job_id(),
        name=args.name,
        queue=args.queue or DEFAULT_QUEUE,
        key=args.key,
        args=dumps(named),
        priority=args.priority or 0,
        run_at=now + (args.delay or 0.0),
    )
    inserted = app.store.job_insert(new, now=now)
    existing = inserted.job
    if not inserted.created and (existing.name != new.name or existing.args != new.args):
        raise KeyConflict(
            f"key {args.key!r} is taken by job {existing.id} ({existing.name}) with arguments "
            f"{existing.args}; this call passed {new.name} with arguments {new.args}"
        )
    return existing, inserted.created


def cmd_migrate(args: argparse.Namespace) -> int:
    from .store import open_store

    app = _open(args)
    store = open_store(app.url, migrate=False)
    applied = store.migrate()
    store.close()
    if applied:
        _say(f"applied {len(applied)} migration(s) to {store.url}: {', '.join(applied)}")
    else:
        _say(f"{store.url} is up to date")
    return EXIT_OK


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


def cmd_prune(args: argparse.Namespace) -> int:
    app = _open(args)
    deleted = app.prune(args.older_than)
    _say(
        f"deleted {deleted} job(s) that finished more than {_span(args.older_than)} ago, "
        "with their steps and errors"
    )
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import main as demo_main

    return demo_main(args.demo_args)


# the parser ---------------------------------------------------------------------------------
def _states(text: str) -> list[str]:
    states = [state.strip() for state in text.split(",") if state.strip()]
    for state in states:
        if state not in _STATES:
            raise argparse.ArgumentTypeError(
                f"unknown state {state!r}; states are {', '.join(_STATES)}"
            )
    return states


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``stepstone`` argument parser."""
    from . import __version__

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
        name: str, handler: Callable[[argparse.Namespace], int], text: str, *parents: Any
    ) -> Any:
        found = sub.add_parser(name, help=text, description=text, parents=list(parents))
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
    cancel = command("cancel", cmd_cancel, "cancel a job that has not finished", db)
    cancel.add_argument("job", metavar="JOB", help="job id or key")

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
        _error(str(exc), exc.detail)
        return EXIT_USAGE
    except StepstoneError as exc:
        _error(str(exc))
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


__all__ = ["build_parser", "load_app", "main", "parse_duration", "relative_time"]
