"""``stepstone enqueue NAME``: enqueue a job by name.

With ``--app``, through the App, so the arguments are checked against the job's signature;
without it, by writing the job's row directly, with its arguments by parameter name.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TYPE_CHECKING, Any

from ..errors import StepstoneError
from .exits import EXIT_OK, UsageError
from .loading import load_app, open_app
from .render import relative_time, say

if TYPE_CHECKING:
    from .._app import App
    from .._store.base import JobRecord


def _json_arg(text: str | None, kind: type, option: str, what: str) -> Any:
    """The JSON value of ``option``, which must be a ``kind`` (empty if not given)."""
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
    """Enqueue a job, or say that its key already names the same job; ``-q`` prints the id."""
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
        record, created = _insert_by_name(open_app(args), args, named)
    if args.quiet:
        sys.stdout.write(record.id + "\n")
        return EXIT_OK
    if not created:
        say(
            f"key {args.key!r} already names job {record.id} ({record.name}, {record.state}) "
            "with the same arguments; nothing new was enqueued",
            "yellow",
        )
        return EXIT_OK
    due = relative_time(record.run_at, time.time())
    key = f", key {record.key!r}" if record.key else ""
    say(f"enqueued job {record.id} ({record.name}{key}, queue {record.queue}, due {due})")
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
    from .._enqueue import insert_by_name

    inserted = insert_by_name(
        app.runtime,
        args.name,
        named,
        key=args.key,
        queue=args.queue,
        priority=args.priority,
        delay=args.delay,
    )
    return inserted.job, inserted.created


__all__ = ["cmd_enqueue"]
