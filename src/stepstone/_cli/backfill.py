"""``stepstone backfill JOB --from FILE``: enqueue one job per row of a CSV or JSON Lines
file, and with ``--wait`` follow the jobs until they finish.

The file is read twice. The first pass checks every row (it parses, binds to the job's
signature, converts to the parameters' types, renders and checks the key, encodes the
arguments) and enqueues nothing if any row is bad. The second pass reads the file again and
enqueues it in chunks through ``app.enqueue_many``, so only a chunk of rows is in memory.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import KeyConflict, StepstoneError
from .exits import EXIT_ERROR, EXIT_OK, UsageError
from .loading import _import, _import_file
from .render import console, error, error_summary, say
from .rowfile import (
    BadRow,
    Header,
    RowChecker,
    RowProblem,
    check_file,
    detect_format,
    read_rows,
)

if TYPE_CHECKING:
    from rich.progress import Progress

    from .._app import App
    from .._job import JobDefinition
    from .._store.base import JobRecord

#: The shortest time between two reads of the jobs' states (``--wait``).
POLL_INTERVAL = 0.5
#: How many jobs one read of their states covers (``--wait``).
LOOKUP_CHUNK = 500
#: Failed or cancelled jobs named after ``--wait``; any more are counted.
SHOWN_FAILURES = 10


# loading the job ------------------------------------------------------------------------
def load_job(spec: str) -> JobDefinition[Any, Any]:
    """The job that ``module:attribute`` or ``path/to/file.py:attribute`` names."""
    from .._app import App
    from .._job import JobDefinition

    target, _, attribute = spec.rpartition(":")
    if not target or not attribute:
        raise UsageError(
            "JOB must be module:attribute or path/to/file.py:attribute naming a job declared "
            f"with @app.job (for example myproject.jobs:index_attachment), not {spec!r}"
        )
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        if target.endswith(".py") or "/" in target or os.sep in target:
            module = _import_file(Path(target))
        else:
            module = _import(target)
    except UsageError as exc:
        message = str(exc).replace("cannot load APP", "cannot load JOB", 1)
        raise UsageError(message, exc.detail) from exc
    found: Any = module
    for part in attribute.split("."):
        if not hasattr(found, part):
            jobs = sorted(k for k, v in vars(module).items() if isinstance(v, JobDefinition))
            hint = f"; jobs it defines: {', '.join(jobs)}" if jobs else ""
            raise UsageError(
                f"cannot load JOB: module {module.__name__!r} has no attribute {attribute!r}{hint}"
            )
        found = getattr(found, part)
    if isinstance(found, App):
        raise UsageError(
            f"cannot load JOB: {spec} is an App; name one of its jobs instead (module:function)"
        )
    if not isinstance(found, JobDefinition):
        raise UsageError(
            f"cannot load JOB: {spec} is a {type(found).__name__}, not a job declared with @app.job"
        )
    return found


def _progress() -> Progress:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console(stderr=True),
    )


@dataclass
class Written:
    """What the second pass wrote."""

    new: int = 0
    existing: int = 0
    ids: dict[str, None] = field(default_factory=dict)


def enqueue_file(
    app: App, path: Path, fmt: str, checker: RowChecker, *, args: argparse.Namespace, total: int
) -> Written:
    """Read the file again and enqueue it, chunk by chunk, at most ``--rate`` jobs a second."""
    chunk = max(1, min(args.batch, int(args.rate))) if args.rate else args.batch
    written = Written()
    started = time.monotonic()
    items: list[tuple[Any, ...] | dict[str, Any]] = []
    lines: list[int] = []

    def flush() -> None:
        if args.rate:
            time.sleep(
                max(0.0, started + (written.new + written.existing) / args.rate - time.monotonic())
            )
        try:
            done = app.enqueue_many(
                checker.job,
                items,
                key=args.key,
                queue=args.queue,
                priority=args.priority,
                batch_size=len(items),
            )
        except KeyConflict as exc:
            where = f"row {lines[exc.index]}" if exc.index is not None else "a row"
            message = str(exc).split(": ", 1)[1] if exc.index is not None else str(exc)
            raise StepstoneError(
                f"{where}: {message}\nstopped there: the batches before it "
                f"were written ({written.new} new, {written.existing} already existed), and so "
                "were the other new rows of its batch; fix the row and run the same backfill "
                "again: what was written is skipped"
            ) from exc
        written.new += done.new
        written.existing += done.existing
        if args.wait:
            written.ids.update(dict.fromkeys(handle.id for handle in done))
        progress.update(
            task, advance=len(items), detail=f"{written.new} new, {written.existing} skipped"
        )
        items.clear()
        lines.clear()

    with _progress() as progress:
        task = progress.add_task("enqueueing", total=total, detail="0 new, 0 skipped")
        for entry in read_rows(path, fmt):
            if isinstance(entry, Header):
                continue
            try:
                if isinstance(entry, BadRow):
                    raise RowProblem(entry.reason)
                row = checker.check(entry)
            except RowProblem as exc:
                if items:
                    flush()
                raise StepstoneError(
                    f"row {entry.line}: {exc}\nstopped there: the file changed after it was "
                    f"checked; {written.new} new job(s) were enqueued before it"
                ) from exc
            items.append(row.item)
            lines.append(row.line)
            if len(items) >= chunk:
                flush()
        if items:
            flush()
    return written


def wait_for_jobs(app: App, ids: list[str]) -> int:
    """Follow the jobs until each has finished; 0 if all succeeded, else 1."""
    counts = {"succeeded": 0, "failed": 0, "cancelled": 0, "gone": 0}
    failures: list[JobRecord] = []
    pending = ids

    def detail() -> str:
        waiting = len(ids) - sum(counts.values())
        return (
            f"{counts['succeeded']} succeeded, {counts['failed']} failed, "
            f"{counts['cancelled']} cancelled, {waiting} pending"
        )

    with _progress() as progress:
        task = progress.add_task("running", total=len(ids), detail=detail())
        while pending:
            started = time.monotonic()
            unfinished = []
            for start in range(0, len(pending), LOOKUP_CHUNK):
                chunk = pending[start : start + LOOKUP_CHUNK]
                found = {record.id: record for record in app.store.job_get_many(ids=chunk)}
                for job_id in chunk:
                    record = found.get(job_id)
                    if record is None:  # pruned after it finished
                        counts["gone"] += 1
                    elif record.state.finished:
                        counts[record.state.value] += 1
                        if record.state != "succeeded" and len(failures) < SHOWN_FAILURES:
                            failures.append(record)
                    else:
                        unfinished.append(job_id)
                progress.update(task, completed=sum(counts.values()), detail=detail())
            pending = unfinished
            progress.update(task, completed=sum(counts.values()), detail=detail())
            if pending:
                time.sleep(max(0.0, POLL_INTERVAL - (time.monotonic() - started)))
    gone = f", {counts['gone']} no longer exist (pruned)" if counts["gone"] else ""
    say(
        f"finished: {counts['succeeded']} succeeded, {counts['failed']} failed, "
        f"{counts['cancelled']} cancelled{gone}"
    )
    unsuccessful = counts["failed"] + counts["cancelled"]
    if not unsuccessful:
        return EXIT_OK
    err = console(stderr=True)
    for record in failures:
        key = f", key {record.key!r}" if record.key else ""
        reason = f": {error_summary(record.error, 200)}" if record.error else ""
        err.print(f"{record.state} job {record.id}{key}{reason}", markup=False)
    if unsuccessful > len(failures):
        err.print(f"... and {unsuccessful - len(failures)} more", markup=False)
    error(f"{unsuccessful} job(s) did not succeed; `stepstone show JOB` says why")
    return EXIT_ERROR


# the command ------------------------------------------------------------------------------
@contextmanager
def _source(name: str) -> Iterator[tuple[Path, str]]:
    """The file to read (stdin copied to a temporary file, as it is read twice)."""
    if name != "-":
        path = Path(name)
        if not path.is_file():
            raise UsageError(f"--from {name}: no such file")
        yield path, name
        return
    with tempfile.TemporaryDirectory(prefix="stepstone-backfill-") as folder:
        path = Path(folder) / "stdin"
        with path.open("wb") as copy:
            shutil.copyfileobj(sys.stdin.buffer, copy)
        yield path, "stdin"


def _app_for(job: JobDefinition[Any, Any], db: str | None) -> App:
    """The job's own App, or with ``--db`` an App over that database that knows the job."""
    from .._app import App

    if not db:
        module = sys.modules.get(job.fn.__module__)
        for value in vars(module).values() if module is not None else ():
            if isinstance(value, App) and value.jobs.get(job.name) is job:
                return value
        raise UsageError(
            f"job {job.name} is declared on an App that its module "
            f"{job.fn.__module__} does not name at top level; pass --db URL"
        )

    app = App(db)
    app.jobs[job.name] = job
    return app


def cmd_backfill(args: argparse.Namespace) -> int:
    """Check every row of the file, then enqueue one job per row (or, dry, count them)."""
    from ..errors import InvalidKey

    if args.dry_run and args.wait:
        raise UsageError("pass --dry-run or --wait, not both: a dry run enqueues nothing")
    job = load_job(args.job)
    try:
        checker = RowChecker(job, args.key)
    except InvalidKey as exc:
        raise UsageError(f"--key: {exc}") from exc
    app = _app_for(job, args.db)
    try:
        with _source(args.source) as (path, name):
            fmt = detect_format(path, args.format)
            checked = check_file(path, fmt, checker, app if args.dry_run else None)
            if checked.bad_count:
                err = console(stderr=True)
                for bad in checked.bad:
                    err.print(f"row {bad.line}: {bad.reason}", markup=False, soft_wrap=True)
                if checked.bad_count > len(checked.bad):
                    err.print(f"... and {checked.bad_count - len(checked.bad)} more bad row(s)")
                error(f"{checked.bad_count} bad row(s) in {name}; nothing was enqueued")
                return EXIT_ERROR
            if args.dry_run:
                say(
                    f"dry run: {checked.rows} row(s) checked; {checked.new} would be new, "
                    f"{checked.existing} already exist; nothing was written"
                )
                return EXIT_OK
            if not checked.rows:
                say(f"nothing to enqueue: {name} has no rows")
                return EXIT_OK
            written = enqueue_file(app, path, fmt, checker, args=args, total=checked.rows)
        say(f"enqueued {written.new} new, {written.existing} already existed")
        if args.wait:
            return wait_for_jobs(app, list(written.ids))
        return EXIT_OK
    finally:
        app.close()


__all__ = ["cmd_backfill", "enqueue_file", "load_job", "wait_for_jobs"]
