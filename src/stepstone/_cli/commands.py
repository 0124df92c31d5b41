"""The operator commands, which need no user code: ``jobs``, ``show``, ``retry``, ``cancel``,
``signal``, ``migrate``, ``prune``, ``forget`` and ``memos`` open the database that ``--db``
names; ``demo`` runs the seed's story.

(``enqueue`` has its own module; ``worker`` and ``backfill``, which load the user's code, too.)
"""

from __future__ import annotations

import argparse
import json
import time
from typing import TYPE_CHECKING, Any

from .._store.base import JOB_EVENT_PREFIX, WAIT_FOREVER
from ..errors import JobNotFound
from .exits import EXIT_OK, UsageError
from .loading import open_app
from .render import (
    absolute_time,
    console,
    error_summary,
    json_view,
    relative_time,
    say,
    span,
    state_text,
    truncate,
)

if TYPE_CHECKING:
    from .._app import App
    from .._store.base import JobRecord


def find_job(app: App, ref: str) -> JobRecord:
    """The job whose id, else whose key, is ``ref``."""
    record = app.store.job_get(ref) or app.store.job_get_by_key(ref)
    if record is None:
        raise JobNotFound(f"no job with id or key {ref!r} in {app.store.url}")
    return record


def waits_for(record: JobRecord) -> str:
    """What a waiting job waits for: ``signal EVENT``, ``job ID`` (a job it awaits) or
    ``time`` (a durable sleep); empty for a job in any other state."""
    if record.state != "waiting":
        return ""
    event = record.wait_event
    if not event:
        return "time"
    if event.startswith(JOB_EVENT_PREFIX):
        return f"job {event[len(JOB_EVENT_PREFIX) :]}"
    return f"signal {event}"


def _when(record: JobRecord, now: float) -> str:
    """The ``when`` column: when a queued job is due, when a waiting job wakes on its own
    (``-`` if only its signal or job can wake it), when a finished job finished, else when
    a running job last changed."""
    if record.state == "queued":
        return relative_time(record.run_at, now)
    if record.state == "waiting":
        return relative_time(record.run_at, now) if record.run_at < WAIT_FOREVER else "-"
    if record.state.finished:
        return relative_time(record.finished_at, now)
    return relative_time(record.updated_at, now)


#: A schedule whose next tick is older than this was not kept by any worker meanwhile.
SCHEDULE_SLACK = 10.0


def _tick_time(when: float) -> str:
    """A cron tick as local time with its zone: ``2025-01-01 12:05:00 CET``."""
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(when))


def schedules_table(app: App, name: str | None, now: float) -> Any:
    """The cron schedules (of job ``name`` only, if given) and their next tick; None if
    there are none."""
    from rich.table import Table
    from rich.text import Text

    schedules = [(job, tick) for job, tick in app.store.schedule_list() if name in (None, job)]
    if not schedules:
        return None
    table = Table(title="cron schedules", title_justify="left")
    for column in ("job", "next run", "when"):
        table.add_column(column, no_wrap=column != "job")
    for job, tick in schedules:
        when = Text(relative_time(tick, now))
        if tick < now - SCHEDULE_SLACK:
            when = Text(f"{when}, overdue: no worker serving it is running", style="yellow")
        table.add_row(job, _tick_time(tick), when)
    return table


def cmd_jobs(args: argparse.Namespace) -> int:
    """A table of the most recent jobs, filtered by state and name; then, unless ``--state``
    filters the jobs, a table of the cron schedules and their next run."""
    from rich.table import Table

    app = open_app(args)
    states = [state for group in args.state or [] for state in group]
    records = app.store.job_list(states=states or None, name=args.name, limit=args.limit)
    now = time.time()
    waits = [waits_for(record) for record in records]
    waiting = any(waits)
    table = Table(title=f"jobs in {app.store.url}", title_justify="left")
    for column in ("id", "name", "key", "state", "attempts", "when"):
        table.add_column(column, no_wrap=column in ("id", "state", "when"))
    if waiting:
        table.add_column("waiting for", overflow="fold")
    table.add_column("last error")
    for record, wait in zip(records, waits, strict=True):
        cells = [
            record.id,
            record.name,
            record.key or "",
            state_text(record.state.value),
            str(record.attempts),
            _when(record, now),
        ]
        if waiting:
            cells.append(wait)
        table.add_row(*cells, error_summary(record.error))
    out = console()
    if records:
        out.print(table)
    else:
        out.print("no jobs match", style="dim")
    if not states:
        schedules = schedules_table(app, args.name, now)
        if schedules is not None:
            out.print(schedules)
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    """Everything about one job: its facts, arguments, result, step history and errors."""
    from rich.table import Table
    from rich.text import Text

    from .._serialization import dumps

    app = open_app(args)
    record = find_job(app, args.job)
    handle = app.get_job(record.id)
    now = time.time()
    out = console()
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    lease = "-"
    waiting = waits_for(record)
    run_at = absolute_time(record.run_at, now)
    if record.run_at >= WAIT_FOREVER:
        run_at = "- (no timer: only what it waits for wakes it)"
    if record.lease_owner:
        lease = f"{record.lease_owner}, expires {relative_time(record.lease_expires_at, now)}"
    for label, value in (
        ("id", record.id),
        ("name", record.name),
        ("queue", record.queue),
        ("key", record.key or "-"),
        ("state", state_text(record.state.value)),
        *([("waiting for", waiting)] if waiting else []),
        *([("parent", record.parent_id)] if record.parent_id else []),
        ("attempts", str(record.attempts)),
        ("fence", str(record.fence)),
        ("lease", lease),
        ("run at", run_at),
        ("created", absolute_time(record.created_at, now)),
        ("started", absolute_time(record.started_at, now)),
        ("finished", absolute_time(record.finished_at, now)),
    ):
        facts.add_row(label, value if isinstance(value, Text) else Text(value))
    out.print(facts)
    out.print(Text("arguments", style="bold"))
    out.print(json_view(record.args))
    if record.state == "succeeded":
        out.print(Text("result", style="bold"))
        out.print(json_view(record.result or "null"))
    elif record.error:
        out.print(Text("final error: ", style="bold red") + Text(error_summary(record.error, 500)))

    steps = handle.steps()
    history = Table(title="step history", title_justify="left")
    for column in ("#", "step", "status", "attempts", "value or error"):
        history.add_column(column, no_wrap=column != "value or error")
    for step in steps:
        if step.status == "ok":
            shown = truncate(dumps(step.value), 100)
        else:
            shown = error_summary(json.dumps(step.error), 100)
        if step.memo is not None:
            how = "taken from" if step.attempts == 0 else "stored as"
            shown = f"{shown}  ({how} memo {step.memo!r})"
        history.add_row(
            str(step.position), step.name, state_text(step.status), str(step.attempts), shown
        )
    out.print(history if steps else Text("no steps recorded", style="dim"))

    errors = handle.errors()
    out.print(Text(f"errors ({len(errors)})", style="bold"))
    for error in errors:
        where = f"step {error.step}" if error.step else "job"
        header = f"attempt {error.attempt}, {where}, {absolute_time(error.created_at, now)}: "
        out.print(Text(header, style="bold") + Text(f"{error.type}: {error.message}"))
        if error.traceback:
            out.print(Text(error.traceback.rstrip(), style="dim"))
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace) -> int:
    """Cancel a job that has not finished, and the unfinished jobs it enqueued; say so if
    there was nothing to do."""
    app = open_app(args)
    record = find_job(app, args.job)
    if app.cancel(record.id):
        note = ""
        if record.state == "running":
            note = (
                "; its worker stops it at its next step boundary (the running step's "
                "checkpoint is refused), an async job at once, within a heartbeat if it runs "
                "in another process"
            )
        say(
            f"cancelled job {record.id} ({record.name}), which was {record.state}, with any "
            f"unfinished jobs it enqueued{note}",
            "green",
        )
    else:
        state = app.store.job_get(record.id) or record
        say(
            f"nothing done: job {record.id} ({record.name}) is already {state.state}; only "
            "queued, running or waiting jobs can be cancelled",
            "yellow",
        )
    return EXIT_OK


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_payload(text: str | None) -> Any:
    """The JSON value of ``--payload`` (None without it); bad JSON is a UsageError."""
    if text is None:
        return None
    try:
        return json.loads(text, parse_constant=_no_constant)
    except ValueError as exc:
        raise UsageError(
            "--payload must be a JSON value (for example '{\"amount\": 5}', '\"text\"' or "
            f"42): {exc}"
        ) from exc


def cmd_signal(args: argparse.Namespace) -> int:
    """Send a signal: wake the jobs waiting for its event, and keep it for jobs that wait
    for it later."""
    payload = parse_payload(args.payload)
    app = open_app(args)
    app.store  # noqa: B018 - open the database first: its errors are not usage errors
    try:
        woken = app.signal(args.event, payload)
    except ValueError as exc:  # an empty, reserved or too long event name
        raise UsageError(f"EVENT {args.event!r}: {exc}") from exc
    if woken:
        say(f"sent signal {args.event!r}; woke {woken} waiting job(s)", "green")
    else:
        say(
            f"sent signal {args.event!r}; woke 0 waiting job(s); it is kept until pruned, so "
            "a job created before it that waits for it later receives it"
        )
    return EXIT_OK


def cmd_retry(args: argparse.Namespace) -> int:
    """Queue a failed or cancelled job again; say so if there was nothing to do."""
    app = open_app(args)
    record = find_job(app, args.job)
    if app.retry(record.id):
        say(
            f"job {record.id} ({record.name}), which was {record.state}, is queued again with a "
            "fresh attempt budget; checkpoints before its first step error are kept",
            "green",
        )
    else:
        state = app.store.job_get(record.id) or record
        say(
            f"nothing done: job {record.id} ({record.name}) is {state.state}; only failed or "
            "cancelled jobs can be retried",
            "yellow",
        )
    return EXIT_OK


def cmd_migrate(args: argparse.Namespace) -> int:
    """Apply the migrations the database lacks, and say which (or that it is up to date)."""
    from .._store import open_store

    app = open_app(args)
    store = open_store(app.url, migrate=False)
    applied = store.migrate()
    store.close()
    if applied:
        say(f"applied {len(applied)} migration(s) to {store.url}: {', '.join(applied)}")
    else:
        say(f"{store.url} is up to date")
    return EXIT_OK


def cmd_prune(args: argparse.Namespace) -> int:
    """Delete jobs that finished more than ``--older-than`` ago, with their history."""
    app = open_app(args)
    deleted = app.prune(args.older_than)
    say(
        f"deleted {deleted} job(s) that finished more than {span(args.older_than)} ago, "
        "with their steps and errors"
    )
    return EXIT_OK


def cmd_forget(args: argparse.Namespace) -> int:
    """Drop a memo key (or, with ``--prefix``, every key that starts with it)."""
    if args.prefix and not args.key:
        raise UsageError(
            "an empty prefix would drop every memo; name the start of the keys to drop"
        )
    app = open_app(args)
    dropped = app.forget(args.key, prefix=args.prefix)
    which = f"whose key starts with {args.key!r}" if args.prefix else f"with key {args.key!r}"
    if dropped:
        say(f"dropped {dropped} memo(s) {which}; the next call computes the value afresh")
    else:
        say(f"nothing done: no memo {which}", "yellow")
    return EXIT_OK


def cmd_memos(args: argparse.Namespace) -> int:
    """A table of memo keys (those starting with PREFIX), by key."""
    from rich.table import Table

    app = open_app(args)
    memos = app.store.memo_list(args.prefix, limit=args.limit)
    now = time.time()
    title = f"memos in {app.store.url}" + (f" starting with {args.prefix!r}" if args.prefix else "")
    table = Table(title=title, title_justify="left")
    for column in ("key", "state", "step", "expires", "stored", "value"):
        table.add_column(column, no_wrap=column != "value")
    for memo in memos:
        table.add_row(
            memo.key,
            state_text(memo.state),
            memo.step,
            relative_time(memo.expires_at, now) if memo.expires_at is not None else "never",
            relative_time(memo.updated_at, now),
            truncate(memo.value or "", 60),
        )
    out = console()
    if not memos:
        out.print("no memos match", style="dim")
        return EXIT_OK
    out.print(table)
    if len(memos) == args.limit:
        out.print(f"showing the first {args.limit}; pass --limit to see more", style="dim")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the attachment indexer demo (``stepstone._demo``) with the remaining arguments."""
    from .._demo import main as demo_main

    return demo_main(args.demo_args)


__all__ = [
    "cmd_cancel",
    "cmd_demo",
    "cmd_forget",
    "cmd_jobs",
    "cmd_memos",
    "cmd_migrate",
    "cmd_prune",
    "cmd_retry",
    "cmd_show",
    "cmd_signal",
    "find_job",
    "parse_payload",
    "schedules_table",
    "waits_for",
]
