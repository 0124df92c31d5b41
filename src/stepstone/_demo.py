"""``stepstone demo``: the seed's story end to end, on SQLite, with no server to set up.

It enqueues ~30 "add this attachment to the search index" jobs (``examples/
attachment_indexer.py``) against flaky fake services (``examples/fake_services.py``),
starts worker A as a real process, kills it with SIGKILL in the middle of the work,
starts worker B, which takes over A's jobs once their leases expire and resumes them from
their checkpoints, and then shows what happened: what was retried, what was replayed
instead of being run again, and that every premium attachment is in the search index
exactly once. It follows the workers through their JSON log lines on stderr.

Run it from the stepstone repository root; it works in a temporary directory.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

CHANNELS = ["general", "random", "design", "sales", "support", "engineering", "marketing", "legal"]
STEPS = ["find_customer", "run_ocr", "update_search_index"]
LEASE_SECONDS = 2.0
CONCURRENCY = 4
DEADLINE_SECONDS = 55.0
APP = "examples.attachment_indexer:app"


@dataclass
class JobTrail:
    """What the workers' logs said about one job."""

    attachment: str
    channel: str
    workers: list[str] = field(default_factory=list)
    checkpointed: list[str] = field(default_factory=list)
    replayed_after_kill: int = 0
    step_retries: int = 0
    job_retries: int = 0
    finished: str | None = None
    rescued: bool = False


class Watch:
    """Follows the JSON log lines of the workers; knows when to kill worker A."""

    def __init__(
        self, trails: dict[str, JobTrail], premium: set[str], console: Console, total: int
    ) -> None:
        self.trails = trails
        self.premium = premium
        self.console = console
        self.total = total
        self.lock = threading.Lock()
        self.succeeded = 0
        self.killed = False
        self.third_done_at: float | None = None
        self.kill_now = threading.Event()
        self.other_lines: dict[str, list[str]] = {}

    def follow(self, worker: str, process: subprocess.Popen[str]) -> threading.Thread:
        """Read one worker's stderr to its end in a thread."""
        stream = process.stderr
        if stream is None:
            raise ValueError("the worker's stderr is not a pipe")
        self.other_lines[worker] = []
        thread = threading.Thread(target=self._read, args=(worker, stream), daemon=True)
        thread.start()
        return thread

    def _read(self, worker: str, stream: IO[str]) -> None:
        for line in stream:
            try:
                entry = json.loads(line)
            except ValueError:
                self.other_lines[worker].append(line.rstrip())
                continue
            if isinstance(entry, dict):
                with self.lock:
                    self._event(worker, entry)

    def _event(self, worker: str, entry: dict[str, Any]) -> None:
        action = entry.get("action")
        trail = self.trails.get(str(entry.get("job_id")))
        if trail is None:
            return
        step = str(entry.get("step") or "")
        if action == "job.claimed":
            trail.workers.append(worker)
        elif action == "step.succeeded":
            trail.checkpointed.append(step)
        elif action == "step.retrying":
            trail.step_retries += 1
        elif action == "job.retrying":
            trail.job_retries += 1
        elif action == "step.replayed" and worker != "A":
            trail.replayed_after_kill += 1
            self._say(
                f"   ↻ {trail.attachment}: {step} replayed from its checkpoint, not run again"
            )
        elif action == "job.rescued":
            trail.rescued = True
            self._say(
                f"   ↻ worker {worker} reclaimed {trail.attachment}: worker A's lease on it "
                "expired; it resumes from its last checkpoint",
                "cyan",
            )
        elif action in ("job.succeeded", "job.failed"):
            trail.finished = "succeeded" if action == "job.succeeded" else "failed"
            self.succeeded += action == "job.succeeded"
            if self.succeeded % 5 == 0 and action == "job.succeeded":
                self._say(f"   worker {worker}: {self.succeeded}/{self.total} jobs succeeded")
        if not self.killed and worker == "A" and self.succeeded >= self.total // 3:
            self._maybe_kill()

    def _maybe_kill(self) -> None:
        """Kill A when a job is inside its last step (two checkpoints that B must not redo),
        or, failing that within a second, when any job is in the middle of its steps."""
        now = time.monotonic()
        if self.third_done_at is None:
            self.third_done_at = now
        flying = self.in_flight()
        if any(len(trail.checkpointed) >= 2 for trail in flying) or (
            flying and now - self.third_done_at > 1.0
        ):
            self.kill_now.set()

    def in_flight(self) -> list[JobTrail]:
        """Premium jobs worker A is in the middle of, with at least one step checkpointed."""
        return [
            trail
            for trail in self.trails.values()
            if trail.workers
            and trail.finished is None
            and trail.checkpointed
            and trail.channel in self.premium
        ]

    def _say(self, text: str, style: str = "") -> None:
        from rich.text import Text

        self.console.print(Text(text, style=style))


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the duration, then restore them."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _spawn(root: Path) -> subprocess.Popen[str]:
    """A worker as a real process, logging JSON lines at debug level to a pipe."""
    env = dict(os.environ)
    package_parent = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(
        [package_parent, str(root), *filter(None, [env.get("PYTHONPATH")])]
    )
    command = [
        *(sys.executable, "-m", "stepstone", "worker", APP),
        *("--concurrency", str(CONCURRENCY), "--log-format", "json", "--log-level", "debug"),
    ]
    return subprocess.Popen(
        command,
        cwd=root,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
    )


def _stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait()


def _describe(trail: JobTrail) -> str:
    done = [step.split("#")[0] for step in trail.checkpointed]
    running = next((step for step in STEPS if step not in done), "its last step")
    return f"{trail.attachment} (inside {running}; {', '.join(done)} checkpointed)"


def main(argv: list[str] | None = None) -> int:
    """Run the demo; 0 if every job succeeded and every premium attachment is indexed once."""
    from rich.console import Console

    parser = argparse.ArgumentParser(
        prog="stepstone demo", description="the seed's attachment indexer, end to end"
    )
    parser.add_argument("--jobs", type=int, default=30, help="attachments to index (30)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    options = parser.parse_args(argv)
    # In a terminal, its width; in a pipe or a CI log, wide enough for the tables.
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
    root = Path.cwd()
    if not (root / "examples" / "attachment_indexer.py").is_file():
        console.print(
            "[bold red]error:[/] run `stepstone demo` from the stepstone repository root "
            f"(no examples/attachment_indexer.py in {root})"
        )
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="stepstone-demo-"))
    variables = {
        "STEPSTONE_DATABASE_URL": f"sqlite:///{workdir / 'jobs.db'}",
        "STEPSTONE_DEMO_SERVICES": str(workdir / "services.db"),
        "STEPSTONE_DEMO_LEASE": str(LEASE_SECONDS),
    }
    try:
        with _environment(variables):
            return _run(root, workdir, max(options.jobs, 3), console)
    finally:
        if options.keep:
            console.print(f"kept {workdir}", style="dim")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _run(root: Path, workdir: Path, total: int, console: Console) -> int:
    from rich.markup import escape

    started = time.monotonic()
    deadline = started + DEADLINE_SECONDS
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        name = "examples.attachment_indexer"
        loaded = sys.modules.get(name)
        # The module reads the environment set above when it runs, so run it afresh.
        indexer = importlib.reload(loaded) if loaded else importlib.import_module(name)
    except Exception as exc:
        console.print(f"[bold red]error:[/] cannot import examples.attachment_indexer: {exc!r}")
        return 1
    services, app = indexer.services, indexer.app
    services.create()
    console.print(
        f"[bold]stepstone demo[/]: the seed's attachment indexer, in {escape(str(workdir))}"
    )

    trails: dict[str, JobTrail] = {}
    for number in range(1, total + 1):
        attachment, channel = f"a-{number:02d}", CHANNELS[(number - 1) % len(CHANNELS)]
        handle = app.enqueue(
            indexer.add_attachment_to_search_index, channel, attachment, key=f"index:{attachment}"
        )
        trails[handle.id] = JobTrail(attachment, channel)
    premium = {channel for channel in CHANNELS if services.is_premium(channel)}
    console.print(
        f"▸ enqueued {total} jobs (keys index:a-01 … index:a-{total:02d}) over "
        f"{len(CHANNELS)} channels, {len(premium)} of them premium; OCR fails ~30% of calls, the "
        "search index ~20%"
    )
    watch = Watch(trails, premium, console, total)
    worker_a = _spawn(root)
    readers = [watch.follow("A", worker_a)]
    console.print(f"▸ worker A started (pid {worker_a.pid}, concurrency {CONCURRENCY})")
    worker_b: subprocess.Popen[str] | None = None
    try:
        while not watch.kill_now.wait(0.02):
            if worker_a.poll() is not None or time.monotonic() > deadline:
                return _broken(console, watch, "A", worker_a, readers)
            if _unfinished(app) == 0:
                break
        with watch.lock:
            flying = watch.in_flight()
            worker_a.kill()
            watch.killed = True
        worker_a.wait()
        if flying:
            console.print(
                f"[bold red]✗ killed worker A[/] (SIGKILL, pid {worker_a.pid}) after "
                f"{watch.succeeded} jobs succeeded, in the middle of "
                + escape("; ".join(_describe(trail) for trail in flying))
            )
        else:
            console.print("worker A finished every job before the kill", style="yellow")

        worker_b = _spawn(root)
        readers.append(watch.follow("B", worker_b))
        console.print(
            f"▸ worker B started (pid {worker_b.pid}); it takes over A's jobs when their "
            f"{LEASE_SECONDS:g}s leases expire"
        )
        while _unfinished(app):
            if worker_b.poll() is not None or time.monotonic() > deadline:
                return _broken(console, watch, "B", worker_b, readers)
            time.sleep(0.05)
        console.print(
            f"▸ all {total} jobs finished after {time.monotonic() - started:.1f}s; "
            "stopping worker B with SIGTERM"
        )
        worker_b.terminate()
        try:
            worker_b.wait(timeout=15)
        except subprocess.TimeoutExpired:
            worker_b.kill()
    finally:
        for process in (worker_a, worker_b):
            if process is not None:
                _stop(process)
        for reader in readers:
            reader.join(timeout=5)
    try:
        ok = _report(console, app, services, watch)
        ok = _backfill(console, app, indexer, services, trails) and ok
    finally:
        app.close()
    console.print("[bold green]demo passed[/]" if ok else "[bold red]demo failed[/]")
    return 0 if ok else 1


def _unfinished(app: Any) -> int:
    return len(app.store.job_list(states=["queued", "running", "waiting"], limit=1000))


def _broken(
    console: Console,
    watch: Watch,
    name: str,
    process: subprocess.Popen[str],
    readers: list[threading.Thread],
) -> int:
    """Say why the demo cannot go on, with what the worker printed that was not a log line."""
    from rich.text import Text

    code = process.poll()
    reason = "the demo ran out of time" if code is None else f"worker {name} exited ({code})"
    _stop(process)
    for reader in readers:
        reader.join(timeout=2)
    for line in watch.other_lines.get(name, [])[-30:]:
        console.print(Text(line, style="dim"))
    console.print(Text(f"error: {reason}", style="bold red"))
    return 1


def _report(console: Console, app: Any, services: Any, watch: Watch) -> bool:
    from rich.markup import escape
    from rich.table import Table

    seen = services.report()
    table = Table(title="what happened to each attachment", title_justify="left")
    for column in (
        "attachment", "channel", "premium", "OCR ok/failed", "index calls", "deduped",
        "replayed", "retries", "state",
    ):  # fmt: skip
        table.add_column(column, justify="left" if column in ("attachment", "channel") else "right")
    succeeded = exactly_once = 0
    ocr_ok = ocr_failed = ocr_cut = index_calls = duplicates = replayed = retries = 0
    premium_total = 0
    for job_id, trail in sorted(watch.trails.items(), key=lambda item: item[1].attachment):
        record = app.store.job_get(job_id)
        state = record.state.value if record is not None else "gone"
        premium = bool(services.is_premium(trail.channel))
        entry = seen.get(trail.attachment) or services.AttachmentReport()
        succeeded += state == "succeeded"
        premium_total += premium
        exactly_once += entry.documents == (1 if premium else 0)
        ocr_ok, ocr_failed, ocr_cut = (
            ocr_ok + entry.ocr_ok,
            ocr_failed + entry.ocr_failed,
            ocr_cut + entry.ocr_cut_off,
        )
        index_calls, duplicates = index_calls + entry.index_calls, duplicates + entry.duplicates
        replayed, retries = replayed + trail.replayed_after_kill, retries + trail.step_retries
        cut = f" +{entry.ocr_cut_off} cut off" if entry.ocr_cut_off else ""
        table.add_row(
            trail.attachment,
            trail.channel,
            "yes" if premium else "no",
            f"{entry.ocr_ok}/{entry.ocr_failed}{cut}" if premium else "-",
            str(entry.index_calls) if premium else "-",
            str(entry.duplicates or ""),
            str(trail.replayed_after_kill or ""),
            str(trail.step_retries or ""),
            f"[green]{state}[/]" if state == "succeeded" else f"[red]{state}[/]",
        )
    console.print(table)
    console.print(
        "  deduped: repeated index calls answered from the idempotency key; replayed: steps "
        "that worker B returned from their checkpoints instead of running them again",
        style="dim",
    )

    total = len(watch.trails)
    once = exactly_once == total
    wasted = ocr_ok - premium_total
    console.print("[bold]summary[/]")
    console.print(f"  jobs succeeded: {succeeded}/{total}")
    console.print(
        f"  OCR calls: {ocr_ok + ocr_failed + ocr_cut} made ({ocr_ok} ok, {ocr_failed} failed "
        f"and retried, {ocr_cut} cut off by the kill) for {premium_total} premium attachments "
        f"that each needed one; "
        + (
            "no OCR result was ever thrown away"
            if wasted <= 0
            else f"{wasted} OCR result(s) died with worker A before their checkpoint "
            "(at least once: the step ran again)"
        )
    )
    console.print(
        f"  search index calls: {index_calls}, of which {duplicates} were repeats that the "
        "index deduplicated by the step's idempotency key"
    )
    console.print(
        f"  steps replayed from checkpoints after the kill: {replayed} (not run again); "
        f"step retries after service errors: {retries}"
    )
    verdict = "[bold green]yes[/]" if once else "[bold red]no[/]"
    console.print(f"  every premium attachment indexed exactly once: {verdict}")
    hits = services.search("invoice")
    search = Table(title='search the index for "invoice"', title_justify="left")
    for column in ("channel", "attachment", "text"):
        search.add_column(column)
    for channel, attachment, snippet in hits:
        search.add_row(channel, attachment, escape(snippet))
    console.print(search if hits else '  no document matches "invoice"')
    return succeeded == total and once


def _backfill(console: Console, app: Any, indexer: Any, services: Any, trails: Any) -> bool:
    """The seed's last failure: a developer runs a backfill over every attachment again."""
    items = [(trail.channel, trail.attachment) for trail in trails.values()]
    job = indexer.add_attachment_to_search_index
    again = app.enqueue_many(job, items, key="index:{attachment_id}")
    console.print(
        f"▸ backfill over all {len(items)} attachments, same job keys: {again.new} new, "
        f"{again.existing} already existed (nothing to run)"
    )
    before = _service_calls(services)
    fresh = app.enqueue_many(job, items, key="reindex:{attachment_id}")
    app.run_worker(concurrency=CONCURRENCY, until_idle=True)
    after = _service_calls(services)
    succeeded = sum(handle.state == "succeeded" for handle in fresh)
    console.print(
        f"▸ backfill under new job keys (reindex:…): {fresh.new} new jobs, {succeeded} "
        f"succeeded; OCR calls {after[0] - before[0]}, search index calls "
        f"{after[1] - before[1]}: every step answered from its memo key "
        "(ocr:<attachment>, index:<channel>:<attachment>)"
    )
    return again.new == 0 and succeeded == len(items) and after == before


def _service_calls(services: Any) -> tuple[int, int]:
    reports = services.report().values()
    ocr = sum(r.ocr_ok + r.ocr_failed + r.ocr_cut_off for r in reports)
    return ocr, sum(r.index_calls for r in reports)


__all__ = ["main"]
