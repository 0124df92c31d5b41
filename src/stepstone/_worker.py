"""The worker: claims due jobs, runs them with bounded concurrency, keeps their leases,
rescues jobs whose worker died, and shuts down gracefully.

Async jobs run as tasks on the worker's event loop; sync jobs run on daemon threads (so
that a step stuck in C code cannot keep a stopping process alive). The loop itself never
runs user code.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import signal
import threading
from typing import TYPE_CHECKING, Any

from ._claim_ahead import ClaimAhead
from ._enqueue import keep_schedule
from ._execute import execute_async, execute_sync
from ._frames import logger
from ._maintenance import rescue_expired
from ._runtime import Runtime, RuntimeOwner, runtime_of
from ._threads import DaemonThreads
from .errors import JobCancelled, LeaseLost, StoreError
from .types import ClaimedJob, IdleStatus, Outcome

#: How often an idle worker asks the store whether anything changed.
_CHANGE_CHECK_SECONDS = 0.005
#: How soon a worker looks again at due jobs it could not claim (at their concurrency limit).
BLOCKED_RETRY_SECONDS = 0.25
#: The most jobs a claim takes beyond its free slots.
PREFETCH_MAX = 64
#: How long a stopping worker waits for the successes it handed to the flusher.
FLUSH_TIMEOUT = 30.0

if TYPE_CHECKING:
    from ._job import JobDefinition


class Worker:
    """Runs jobs of one App (or of a bare runtime) until stopped (or, with ``until_idle``,
    until idle).

    Claiming ahead (opt-in, ``prefetch=``; off by default because, around a PostgreSQL
    restart, held jobs started after the restart could be rescued and run twice more often
    than in-flight jobs): while the jobs it runs are short (under ``PREFETCH_MAX_SECONDS`` on
    average), a claim takes up to ``prefetch`` jobs more than it has free slots for (no
    more than ``PREFETCH_HOLD_SECONDS`` of work at the recent average), and starts them as
    slots free up, so that one claim serves many short jobs. Their leases
    are heartbeated like running jobs', and they are released at shutdown. Long jobs, and
    apps with concurrency limits, never claim ahead, so no job waits behind another in
    this worker while other workers are idle.
    """

    def __init__(
        self,
        app: RuntimeOwner | Runtime,
        *,
        concurrency: int = 8,
        queues: list[str] | str | None = None,
        until_idle: bool = False,
        shutdown_grace: float | None = None,
        prefetch: int | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if isinstance(queues, str):
            queues = [name.strip() for name in queues.split(",") if name.strip()]
        #: What the worker was built from (an App, or a bare runtime).
        self.app = app
        runtime = self.runtime = runtime_of(app)
        self.concurrency = concurrency
        self.queues = list(queues) if queues else None
        self.until_idle = until_idle
        self.shutdown_grace = runtime.shutdown_grace if shutdown_grace is None else shutdown_grace
        self.owner = f"{runtime.owner}:w{id(self) % 10000:04d}"
        #: The runs in flight, by (job id, fencing token): an abandoned attempt whose thread
        #: is still busy keeps its slot beside the job's next attempt.
        self.running: dict[tuple[str, int], asyncio.Future[Any]] = {}
        self._stop = threading.Event()
        self._hard_stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self.claimed_total = 0
        #: The names of the jobs with a concurrency limit (claimed under it).
        self._limited = sorted(
            name for name, definition in runtime.jobs.items() if definition.concurrency is not None
        )
        #: At most how many jobs a claim may take beyond the free slots, while jobs are short.
        self.prefetch = 0 if prefetch is None else prefetch
        #: The jobs claimed ahead of the free slots.
        self.claim_ahead = ClaimAhead(
            runtime, self.owner, self.prefetch, limited=bool(self._limited)
        )

    # control ----------------------------------------------------------------------------
    def stop(self, *, now: bool = False) -> None:
        """Stop claiming; let running steps finish (up to the grace period), then release.

        With ``now=True`` (or a second call), release running jobs at once.
        """
        if self._stop.is_set() or now:
            self._hard_stop.set()
        self._stop.set()
        self._mark_stopping()
        self.wake()

    def _mark_stopping(self) -> None:
        """Tell this worker's runs to stop at their next step boundary."""
        for run in self.runtime.lease_keeper.active():
            if (run.job_id, run.fence) in self.running:
                run.stopping = True

    def wake(self) -> None:
        """Look for due jobs now rather than at the next poll."""
        loop, event = self._loop, self._wake
        if loop is not None and event is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(event.set)

    def run(self) -> None:
        """Run in this thread until stopped; handles SIGTERM/SIGINT in the main thread."""
        asyncio.run(self._main())

    # the loop ---------------------------------------------------------------------------
    async def _open_store(self) -> bool:
        """Open the store, waiting out a database that is not up yet; False if stopped."""
        delay = 0.5
        while not self._stop.is_set():
            try:
                await asyncio.to_thread(lambda: self.runtime.store)
                return True
            except StoreError as exc:
                if not exc.transient:
                    raise
                logger.warning(
                    "%s; the worker waits for the database (retrying in %.1fs)",
                    exc,
                    delay,
                    extra={"action": "worker.waiting_for_database"},
                )
                await self._wait(delay, None)
                delay = min(delay * 2, 10.0)
        return False

    async def _main(self) -> None:
        runtime = self.runtime
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        installed = self._install_signals()
        opened = False
        try:
            opened = await self._open_store()
        finally:
            if not opened:
                for sig in installed:
                    self._loop.remove_signal_handler(sig)
        if not opened:
            return
        threads = DaemonThreads(self.concurrency)
        runtime.workers.add(self)
        names = sorted(runtime.jobs)
        if not names:
            logger.warning(
                "this App declares no jobs; the worker has nothing to run",
                extra={"action": "worker.no_jobs"},
            )
        logger.info(
            "worker %s started: %d job(s), concurrency %d, queues %s, %s",
            self.owner,
            len(names),
            self.concurrency,
            ",".join(self.queues) if self.queues else "all",
            runtime.store.url,
            extra={"action": "worker.started"},
        )
        store = runtime.store
        unsubscribe = store.on_change(self.wake)
        rescue_every = min(max(runtime.lease / 4, 0.05), 5.0)
        next_rescue = 0.0
        jobs = runtime.jobs
        scheduled = [
            jobs[name]
            for name in names
            if jobs[name].schedule is not None
            and (self.queues is None or jobs[name].queue in self.queues)
        ]
        schedule_every = min(runtime.poll_interval, 1.0)
        next_schedule = 0.0
        try:
            while not self._stop.is_set():
                loop_now = self._loop.time()
                if loop_now >= next_rescue:
                    next_rescue = loop_now + rescue_every
                    await self._rescue()
                if scheduled and loop_now >= next_schedule:
                    next_schedule = loop_now + schedule_every
                    await self._keep_schedules(scheduled)
                marker = (
                    None if store.pushes_changes else await runtime.call_store(store.change_marker)
                )
                claimed = await self._claim(names)
                for job in claimed:
                    self._start(job, threads)
                if claimed and len(self.running) < self.concurrency:
                    continue
                timeout = min(runtime.poll_interval, max(next_rescue - self._loop.time(), 0.0))
                if not claimed and len(self.running) < self.concurrency:
                    status = await self._idle_status(names)
                    if self.until_idle and not self.running and not status.due:
                        # A job made due by a write that committed after this look's clock
                        # reading (a finished child waking its parent) counts as due.
                        woken = (
                            status.next_run_at is not None
                            and status.next_run_at <= runtime.clock.now()
                        )
                        if status.running == 0 and not woken:
                            break
                        if woken:
                            timeout = 0.0
                    elif status.due:
                        # Due jobs this claim could not take: held at their concurrency
                        # limit, or locked by another claimer. Look again soon, not at once.
                        timeout = min(timeout, BLOCKED_RETRY_SECONDS)
                    elif status.next_run_at is not None:
                        timeout = min(timeout, max(status.next_run_at - runtime.clock.now(), 0.0))
                full = len(self.running) >= self.concurrency
                watch = not full and not store.pushes_changes
                await self._wait(timeout, marker if watch else None)
            await self._drain()
        finally:
            unsubscribe()
            runtime.workers.discard(self)
            threads.shutdown()
            for sig in installed:
                self._loop.remove_signal_handler(sig)
            logger.info("worker %s stopped", self.owner, extra={"action": "worker.stopped"})

    def _install_signals(self) -> list[int]:
        if threading.current_thread() is not threading.main_thread():
            return []
        assert self._loop is not None
        installed: list[int] = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._loop.add_signal_handler(sig, self._on_signal, sig)
                installed.append(sig)
            except (NotImplementedError, RuntimeError):  # pragma: no cover - not on POSIX
                pass
        return installed

    def _on_signal(self, sig: int) -> None:
        hard = self._stop.is_set()
        logger.warning(
            "%s received: %s",
            signal.Signals(sig).name,
            "releasing running jobs now"
            if hard
            else f"stopping; running steps get {self.shutdown_grace:g}s to finish (again to force)",
            extra={"action": "worker.stopping"},
        )
        self.stop(now=hard)

    async def _wait(self, seconds: float, marker: int | None) -> None:
        """Wait until a job finishes, a wake-up, a change in the store, or ``seconds`` pass.

        A store that can tell cheaply whether anything changed (SQLite's data version) is
        asked every few milliseconds, so a job enqueued by another process starts within
        milliseconds without the worker taking a write lock to look for it.
        """
        assert self._wake is not None
        assert self._loop is not None
        runtime = self.runtime
        waiters: list[asyncio.Future[Any]] = [asyncio.ensure_future(self._wake.wait())]
        waiters.extend(self.running.values())
        deadline = self._loop.time() + seconds
        try:
            while True:
                remaining = deadline - self._loop.time()
                if remaining <= 0:
                    return
                step = remaining if marker is None else min(remaining, _CHANGE_CHECK_SECONDS)
                done, _ = await asyncio.wait(
                    waiters, timeout=step, return_when=asyncio.FIRST_COMPLETED
                )
                if done:
                    return
                if (
                    marker is not None
                    and await runtime.call_store(runtime.store.change_marker) != marker
                ):
                    return
        finally:
            waiters[0].cancel()
            self._wake.clear()

    async def _claim(self, names: list[str]) -> list[ClaimedJob]:
        free = self.concurrency - len(self.running)
        if free <= 0 or not names or self._stop.is_set():
            return []
        held = await self.claim_ahead.take(free)
        if held:
            return held
        runtime = self.runtime
        now = runtime.clock.now()
        ahead = self.claim_ahead.how_many(self.concurrency)
        try:
            claimed = await runtime.call_store(
                lambda: runtime.store.job_claim_due(
                    owner=self.owner,
                    names=names,
                    queues=self.queues,
                    limit=free + ahead,
                    now=now,
                    lease_until=now + runtime.lease,
                    limited=self._limited,
                )
            )
        except StoreError:
            logger.exception(
                "claiming jobs failed; retrying", extra={"action": "worker.claim_failed"}
            )
            await asyncio.sleep(min(1.0, runtime.lease / 4))
            return []
        self.claimed_total += len(claimed)
        if self._stop.is_set():
            # Stopped while this claim ran: it may hold a job that one of this worker's own
            # runs released at its step boundary a moment ago. Give them all back.
            for job in claimed:
                await self._release(job.id, job.fence)
            return []
        self.claim_ahead.hold(claimed[free:])
        return claimed[:free]

    async def _release(self, job_id: str, fence: int) -> bool:
        """Give a job this worker holds back, due now (fenced); False if it was not ours
        any more (or could not be written: its lease then expires and it is rescued)."""
        runtime = self.runtime
        try:
            await runtime.call_store(
                runtime.store.job_transition,
                Outcome.release(job_id, fence),
                now=runtime.clock.now(),
            )
        except (LeaseLost, JobCancelled):
            return False
        except StoreError:
            logger.exception(
                "could not release job %s; another worker takes it over when its lease expires",
                job_id,
                extra={"action": "store.error", "job_id": job_id},
            )
            return False
        return True

    async def _keep_schedules(self, scheduled: list[JobDefinition[Any, Any]]) -> None:
        """Enqueue the next tick of every cron job this worker serves."""
        runtime = self.runtime
        for definition in scheduled:
            try:
                await runtime.call_store(keep_schedule, runtime, definition, runtime.clock.now())
            except Exception:  # a schedule must not stop the worker; it is tried again
                logger.exception(
                    "keeping the schedule of %s failed; retrying",
                    definition.name,
                    extra={"action": "worker.schedule_failed", "job": definition.name},
                )

    async def _rescue(self) -> None:
        runtime = self.runtime
        try:
            rescue = await runtime.call_store(
                lambda: rescue_expired(runtime.store, now=runtime.clock.now())
            )
        except StoreError:
            logger.exception(
                "rescuing expired leases failed", extra={"action": "worker.rescue_failed"}
            )
            return
        for job_id in rescue.requeued:
            logger.warning(
                "job %s: its worker's lease expired; requeued to resume from its last checkpoint",
                job_id,
                extra={"action": "job.rescued", "job_id": job_id},
            )
        for job_id in rescue.poisoned:
            logger.error(
                "job %s failed as a poison job (reclaimed too often without progress)",
                job_id,
                extra={"action": "job.poisoned", "job_id": job_id},
            )

    async def _idle_status(self, names: list[str]) -> IdleStatus:
        runtime = self.runtime
        try:
            return await runtime.call_store(
                lambda: runtime.store.job_idle_status(
                    names=names, queues=self.queues, now=runtime.clock.now()
                )
            )
        except StoreError:
            logger.exception("reading the queue failed", extra={"action": "worker.poll_failed"})
            return IdleStatus(due=True, running=1, next_run_at=None)

    def _start(self, job: ClaimedJob, threads: DaemonThreads) -> None:
        definition = self.runtime.jobs[job.name]
        logger.debug(
            "claimed job %s (%s), attempt %d, fence %d",
            job.id,
            job.name,
            job.attempt,
            job.fence,
            extra={
                "action": "job.claimed",
                "job_id": job.id,
                "job": job.name,
                "attempt": job.attempt,
            },
        )
        future: asyncio.Future[Any]
        if definition.is_async:
            future = asyncio.ensure_future(execute_async(self.runtime, job, defer=True))
            self.running[(job.id, job.fence)] = future
        else:
            # Counted as running before its thread can start it (a stop sees it at once).
            started: concurrent.futures.Future[Any] = concurrent.futures.Future()
            future = asyncio.wrap_future(started)
            self.running[(job.id, job.fence)] = future
            threads.submit(lambda: execute_sync(self.runtime, job, defer=True), started)
        assert self._loop is not None
        self.claim_ahead.started((job.id, job.fence), self._loop.time())
        future.add_done_callback(functools.partial(self._done, job.id, job.fence))

    def _done(self, job_id: str, fence: int, future: asyncio.Future[Any]) -> None:
        self.running.pop((job_id, fence), None)
        if self._loop is not None:
            self.claim_ahead.finished((job_id, fence), self._loop.time())
        if not future.cancelled() and future.exception() is not None:
            logger.error(
                "job %s crashed the runner",
                job_id,
                exc_info=future.exception(),
                extra={"action": "worker.runner_crashed", "job_id": job_id},
            )
        if self._wake is not None:
            self._wake.set()

    async def _drain(self) -> None:
        """Shutdown: give back jobs claimed ahead, wait for running steps up to the grace
        period, then release the rest."""
        await self.claim_ahead.give_back(self._release)
        if not self.running:
            await self._flush_successes()
            return
        assert self._loop is not None
        deadline = self._loop.time() + self.shutdown_grace
        while self.running and not self._hard_stop.is_set():
            # Again each time: a run started just before the stop registers its lease (and
            # so can be told to stop) only once its thread or task begins.
            self._mark_stopping()
            remaining = deadline - self._loop.time()
            if remaining <= 0:
                break
            await asyncio.wait(list(self.running.values()), timeout=min(remaining, 0.01))
        if self.running:
            await self._release_all()
        await self._flush_successes()

    async def _flush_successes(self) -> None:
        """Before the worker returns: the successes handed to the flusher are written."""
        if not await asyncio.to_thread(self.runtime.outcomes.wait_flushed, FLUSH_TIMEOUT):
            logger.warning(
                "some job successes were not written before the worker stopped; those jobs "
                "are replayed once their leases expire",
                extra={"action": "worker.flush_timeout"},
            )

    async def _release_all(self) -> None:
        runs = [
            run
            for run in self.runtime.lease_keeper.active()
            if (run.job_id, run.fence) in self.running
        ]
        for run in runs:
            if await self._release(run.job_id, run.fence):
                run.interrupt_with(
                    LeaseLost(
                        f"job {run.job_id} was released by its stopping worker (fencing token "
                        f"{run.fence}); another worker resumes it"
                    )
                )
                logger.warning(
                    "job %s released unfinished; another worker resumes it from its last "
                    "checkpoint",
                    run.job_id,
                    extra={"action": "job.released", "job_id": run.job_id},
                )
        for future in self.running.values():
            if isinstance(future, asyncio.Task):
                future.cancel()


__all__ = ["Worker"]
