"""The state machine that drives SQLite and PostgreSQL side by side against the model.

Each rule does one thing a user or a worker does, on both stores, and checks each store's
answer against its model (``model.Model``); after every rule the invariant compares every
job record, and the checkpoints and errors of the jobs the rule touched, with the model.
Job ids differ between the stores: a job is known by its creation order. All times come
from one shared ``FakeClock`` moved by binary fractions of a second, exact on both stores.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from stepstone import App, KeyConflict, Limit
from stepstone.errors import InvalidKey, JobNotFound, StepstoneError, StoreError
from stepstone.testing import FakeClock
from stepstone.types import MAX_KEY_BYTES, WAIT_FOREVER, JobState, Outcome

from .adapter import StoreDriver, poison_error
from .model import Model, ModelJob, encoded

#: The jobs both apps declare. Their bodies never run: the test plays the worker.
PLAIN = "model.plain"
LIMITED = "model.limited"  # Limit(1, key="{channel}")
WHOLE = "model.whole"  # Limit(2) over the job as a whole, queue "bulk", priority 3
JOB_NAMES = (PLAIN, LIMITED, WHOLE)
LIMITED_NAMES = (LIMITED, WHOLE)
DEFAULT_QUEUES = {PLAIN: "default", LIMITED: "default", WHOLE: "bulk"}
DEFAULT_PRIORITIES = {PLAIN: 0, LIMITED: 0, WHOLE: 3}
LIMITS = {LIMITED: 1, WHOLE: 2}
#: The lease a claim or heartbeat takes, in seconds.
LEASE = 30.0
OWNERS = ("worker-a", "worker-b")

#: Divergences between the stores that this test found and that are not fixed yet. While
#: one is listed here, the state machine steers around it (so that it can find others),
#: and its pinned test in ``test_divergences.py`` fails: once the stores agree, that test
#: says to remove the entry, which puts the inputs back into the state machine.
STEERED_AROUND: frozenset[str] = frozenset()


def declare_jobs(app: App) -> None:
    """The jobs of the model test, declared on ``app`` (the same on every store)."""

    @app.job(name=PLAIN)
    def plain(text: str, n: int = 0) -> None:
        """A job with no limit."""

    @app.job(name=LIMITED, concurrency=Limit(1, key="{channel}"))
    def limited(channel: str, n: int = 0) -> None:
        """At most one job per channel runs at once."""

    @app.job(name=WHOLE, concurrency=Limit(2), queue="bulk", priority=3)
    def whole(text: str, n: int = 0) -> None:
        """At most two of these run at once, whatever their arguments."""


def valid_key(key: str) -> bool:
    """Whether every store must accept ``key`` as a job, memo, debounce or limit key."""
    return bool(key) and "\x00" not in key and len(key.encode("utf-8")) <= MAX_KEY_BYTES


# strategies ----------------------------------------------------------------------------------
ODD = st.sampled_from(["", "\x00", "a\x00b", "é", "🦀", "k" * MAX_KEY_BYTES, "é" * 501, "x y"])
LONG = st.builds(lambda s, n: s * n, st.text(min_size=1, max_size=3), st.integers(200, 1100))
TEXT = st.one_of(st.text(max_size=8), ODD, LONG)
FEW = st.sampled_from(["a", "b", "c"])
ARG = st.one_of(FEW, TEXT)
KEYS = st.one_of(st.none(), st.sampled_from(["k1", "k2", "k3"]), TEXT)
PRIORITIES = st.one_of(st.none(), st.integers(-1, 2))
STEPS = st.sampled_from(["fetch", "ocr", "index"])
EVENTS = st.one_of(st.sampled_from(["paid", "shipped"]), st.text(max_size=6))
#: Offsets from now, binary fractions of a second (exact as microseconds on PostgreSQL).
OFFSETS = st.sampled_from([0.0, 0.5, 1.0, 5.0, 31.0, 120.0])
WHEN = st.one_of(
    st.just(("now", 0.0)),
    st.just(("now", 0.0)),
    st.tuples(st.just("delay"), OFFSETS),
    st.tuples(st.just("run_at"), st.sampled_from([-2.0, 0.0, 1.5, 60.0])),
)
PICK = st.integers(min_value=0, max_value=10_000)
FENCES = st.sampled_from(["current", "current", "current", "stale", "next"])


def queues_strategy() -> st.SearchStrategy[str | None]:
    text = st.text(max_size=6)
    if "queue-nul" in STEERED_AROUND:
        text = text.filter(lambda q: "\x00" not in q)
    return st.one_of(st.none(), st.sampled_from(["default", "bulk", "q"]), text)


def names_strategy() -> st.SearchStrategy[list[str]]:
    def subsets(names: Sequence[str]) -> st.SearchStrategy[list[str]]:
        return st.lists(st.sampled_from(names), min_size=1, unique=True)

    if "claim-limited-last" in STEERED_AROUND:
        return st.one_of(subsets([PLAIN]), subsets(LIMITED_NAMES))
    return subsets(JOB_NAMES)


QUEUES = queues_strategy()
CLAIM_NAMES = names_strategy()


# outcomes of calls ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Result:
    """What one call on one store did: its value, or the exception it raised."""

    value: Any = None
    error: BaseException | None = None


def attempt(call: Callable[[], Any]) -> Result:
    try:
        return Result(value=call())
    except (StepstoneError, ValueError, TypeError, LookupError) as exc:
        return Result(error=exc)


class ClearError(Exception):
    """Expected: a clear error, the same on every store (any type but a bare StoreError)."""


def describe(result: Result) -> str:
    if result.error is None:
        return f"returned {result.value!r}"[:300]
    return f"raised {type(result.error).__name__}: {result.error}"[:300]


@dataclass(frozen=True)
class Enqueue:
    """One enqueue as the model sees it: the job it should create or find."""

    name: str
    args: str
    key: str | None
    queue: str
    priority: int
    run_at: float
    concurrency: tuple[str | None, int | None]


def _has(*states: JobState) -> Callable[[StoresAgree], bool]:
    """A precondition: some job of the first store's model is in one of ``states``."""
    return lambda machine: any(job.state in states for job in machine.models[0].jobs)


def _has_jobs(machine: StoresAgree) -> bool:
    return bool(machine.models[0].jobs)


class StoresAgree(RuleBasedStateMachine):
    """SQLite and PostgreSQL, driven by the same operations, each matching the model."""

    def __init__(self, drivers: Sequence[StoreDriver], clock: FakeClock) -> None:
        super().__init__()
        self.drivers = list(drivers)
        self.clock = clock
        for driver in self.drivers:
            driver.reset()
        self.models = [Model() for _ in self.drivers]
        #: Jobs whose checkpoints and errors the invariant reads again.
        self.dirty: set[int] = set()

    # helpers ---------------------------------------------------------------------------------
    @property
    def pairs(self) -> list[tuple[str, StoreDriver, Model]]:
        return [(d.kind, d, m) for d, m in zip(self.drivers, self.models, strict=True)]

    def encode_args(self, name: str, *args: Any) -> str:
        return self.drivers[0].app.jobs[name].codec.encode(args, {})  # type: ignore[no-any-return]

    def concurrency(self, name: str, first: str) -> tuple[str | None, int | None] | None:
        """The job's concurrency key and limit for this first argument; None if invalid."""
        if name == LIMITED:
            return (f"{LIMITED}:{first}", 1) if valid_key(first) else None
        if name == WHOLE:
            return (WHOLE, 2)
        return (None, None)

    def expect(
        self,
        kind: str,
        what: str,
        result: Result,
        error: type[Exception] | tuple[type[Exception], ...] | None,
    ) -> None:
        """``result`` raised ``error`` (or, with None, returned normally)."""
        where = f"{kind}: {what}"
        if error is None:
            assert result.error is None, f"{where}: expected success, but it {describe(result)}"
            return
        names = (
            " or ".join(e.__name__ for e in error) if isinstance(error, tuple) else error.__name__
        )
        assert result.error is not None, f"{where}: expected {names}, but it succeeded"
        if error is ClearError:
            assert type(result.error) is not StoreError, (
                f"{where}: bad input must get a clear error, the same on every store; "
                f"it {describe(result)}"
            )
            return
        assert isinstance(result.error, error), (
            f"{where}: expected {names}, but it {describe(result)}"
        )

    def same_errors(self, what: str, results: Sequence[Result]) -> None:
        """The stores answered an input-checking call alike (each one's model already says
        what it must do; this also catches a store-only error such as a raw StoreError).
        Calls whose answer depends on which tied job a claim took are left out."""
        kinds = {type(r.error) for r in results}
        assert len(kinds) == 1, f"{what}: the stores disagree: " + "; ".join(
            f"{d.kind} {describe(r)}" for d, r in zip(self.drivers, results, strict=True)
        )

    def pick(self, model: Model, number: int, *, state: JobState | None = None) -> ModelJob | None:
        jobs = [j for j in model.jobs if state is None or j.state is state] or model.jobs
        return jobs[number % len(jobs)] if jobs else None

    def fence_of(self, job: ModelJob, which: str) -> int:
        return {"current": job.fence, "stale": job.fence - 1, "next": job.fence + 1}[which]

    def adopt_new_jobs(
        self, kind: str, driver: StoreDriver, model: Model, created: Sequence[Enqueue]
    ) -> None:
        """Give the model the ids of the jobs the store created, matched by what they are."""
        now = self.clock.now()
        new_ids = sorted(driver.all_job_ids() - set(model.by_id))
        records = {r.id: r for r in driver.jobs(new_ids)}
        assert len(new_ids) == len(created), (
            f"{kind}: expected {len(created)} new jobs, the store has {len(new_ids)}: "
            f"{[(records[i].key, records[i].args) for i in new_ids]}"
        )
        free = list(new_ids)
        for spec in created:
            found = next(
                (
                    i
                    for i in free
                    if (records[i].name, records[i].key, records[i].args)
                    == (spec.name, spec.key, spec.args)
                ),
                None,
            )
            assert found is not None, (
                f"{kind}: no new job matches {spec}; new jobs: "
                f"{[(records[i].name, records[i].key, records[i].args) for i in free]}"
            )
            free.remove(found)
            self.insert(model, found, spec, now=now)

    def insert(self, model: Model, job_id: str, spec: Enqueue, *, now: float) -> ModelJob:
        job = model.insert(
            job_id,
            name=spec.name,
            queue=spec.queue,
            key=spec.key,
            args=spec.args,
            priority=spec.priority,
            run_at=spec.run_at,
            now=now,
            concurrency=spec.concurrency,
        )
        self.dirty.add(job.index)
        return job

    def spec(
        self,
        name: str,
        text: str,
        n: int,
        *,
        key: str | None,
        queue: str | None,
        priority: int | None,
        run_at: float,
    ) -> tuple[Enqueue | None, type[Exception] | None]:
        """The job an enqueue describes, or the error its input must get."""
        if key is not None and not valid_key(key):
            return None, InvalidKey
        concurrency = self.concurrency(name, text)
        if concurrency is None:
            return None, InvalidKey
        if queue is not None and "\x00" in queue:
            return None, ClearError
        return (
            Enqueue(
                name=name,
                args=self.encode_args(name, text, n),
                key=key,
                queue=queue or DEFAULT_QUEUES[name],
                priority=DEFAULT_PRIORITIES[name] if priority is None else priority,
                run_at=run_at,
                concurrency=concurrency,
            ),
            None,
        )

    def due(self, when: tuple[str, float]) -> tuple[dict[str, float], float]:
        how, offset = when
        now = self.clock.now()
        if how == "delay":
            return {"delay": offset}, now + offset
        if how == "run_at":
            return {"run_at": now + offset}, now + offset
        return {}, now

    # enqueue -----------------------------------------------------------------------------------
    @rule(
        name=st.sampled_from(JOB_NAMES),
        text=ARG,
        n=st.integers(0, 2),
        key=KEYS,
        when=WHEN,
        queue=QUEUES,
        priority=PRIORITIES,
    )
    def enqueue(
        self,
        name: str,
        text: str,
        n: int,
        key: str | None,
        when: tuple[str, float],
        queue: str | None,
        priority: int | None,
    ) -> None:
        """app.enqueue with a key, a delay or due time, a queue and a priority."""
        options, run_at = self.due(when)
        spec, error = self.spec(
            name, text, n, key=key, queue=queue, priority=priority, run_at=run_at
        )
        results = []
        for kind, driver, model in self.pairs:
            app = driver.app
            result = attempt(
                lambda app=app: app.enqueue(
                    name, text, n, key=key, queue=queue, priority=priority, **options
                )
            )
            results.append(result)
            self.check_enqueue(kind, model, spec, error, result)
        self.same_errors("enqueue", results)

    def check_enqueue(
        self,
        kind: str,
        model: Model,
        spec: Enqueue | None,
        error: type[Exception] | None,
        result: Result,
        *,
        written: bool = True,
    ) -> None:
        """An enqueue's result against the model; a new job joins the model if written."""
        if spec is not None and spec.key is not None:
            existing = model.by_key(spec.key)
            if existing is not None:
                same = (existing.name, existing.args) == (spec.name, spec.args)
                self.expect(
                    kind,
                    f"enqueue on taken key {spec.key!r}",
                    result,
                    None if same else KeyConflict,
                )
                if same:
                    assert result.value.id == existing.id, (
                        f"{kind}: enqueue with taken key {spec.key!r} returned job "
                        f"{result.value.id}, not the key's job {existing.index}"
                    )
                return
        self.expect(kind, f"enqueue {spec}", result, error)
        if spec is not None and written:
            assert result.value.id not in model.by_id, f"{kind}: enqueue returned an old job"
            self.insert(model, result.value.id, spec, now=self.clock.now())

    @rule(
        name=st.sampled_from(JOB_NAMES),
        text=ARG,
        n=st.integers(0, 2),
        key=KEYS,
        wait=st.sampled_from([0.5, 5.0, 60.0]),
        queue=QUEUES,
        priority=PRIORITIES,
    )
    def enqueue_debounced(
        self,
        name: str,
        text: str,
        n: int,
        key: str | None,
        wait: float,
        queue: str | None,
        priority: int | None,
    ) -> None:
        """app.enqueue(debounce=): a queued job of the group is replaced and delayed."""
        now = self.clock.now()
        if key is None:
            spec, error = None, ValueError
        else:
            spec, error = self.spec(
                name, text, n, key=key, queue=queue, priority=priority, run_at=now + wait
            )
        results = []
        for kind, driver, model in self.pairs:
            app = driver.app
            result = attempt(
                lambda app=app: app.enqueue(
                    name, text, n, key=key, queue=queue, priority=priority, debounce=wait
                )
            )
            results.append(result)
            self.expect(kind, f"debounce {spec}", result, error)
            if spec is None:
                continue
            group = f"{name}:{key}"
            queued = model.queued_debounce(group)
            if queued is not None:
                assert result.value.id == queued.id, (
                    f"{kind}: debounce {group!r} returned job {result.value.id}, not the "
                    f"group's queued job {queued.index}"
                )
                model.debounce(
                    queued,
                    args=spec.args,
                    queue=spec.queue,
                    priority=spec.priority,
                    run_at=spec.run_at,
                    concurrency=spec.concurrency,
                    now=now,
                )
                self.dirty.add(queued.index)
            else:
                job = self.insert(model, result.value.id, replace(spec, key=None), now=now)
                job.debounce_key = group
        self.same_errors("debounce", results)

    @rule(
        name=st.sampled_from(JOB_NAMES),
        items=st.lists(st.tuples(st.one_of(FEW, FEW, TEXT), st.integers(0, 1)), max_size=5),
        keyed=st.booleans(),
        batch_size=st.sampled_from([1000, 2]),
        when=WHEN,
        queue=QUEUES,
        priority=PRIORITIES,
    )
    def enqueue_many(
        self,
        name: str,
        items: list[tuple[str, int]],
        keyed: bool,
        batch_size: int,
        when: tuple[str, float],
        queue: str | None,
        priority: int | None,
    ) -> None:
        """app.enqueue_many, with and without a key template, in one or more batches."""
        options, run_at = self.due(when)
        template = ("{channel}" if name == LIMITED else "{text}") if keyed else None
        results = []
        for kind, driver, model in self.pairs:
            app = driver.app
            result = attempt(
                lambda app=app: app.enqueue_many(
                    name,
                    items,
                    key=template,
                    queue=queue,
                    priority=priority,
                    batch_size=batch_size,
                    **options,
                )
            )
            results.append(result)
            created, error = self.plan_many(
                model, name, items, keyed=keyed, batch_size=batch_size,
                queue=queue, priority=priority, run_at=run_at,
            )  # fmt: skip
            self.expect(kind, f"enqueue_many {items!r} keyed={keyed}", result, error)
            self.adopt_new_jobs(kind, driver, model, created)
            if result.error is None:
                handles = result.value
                assert len(handles) == len(items), f"{kind}: one handle per item"
                for (text, _), handle in zip(items, handles, strict=True):
                    job = model.by_id.get(handle.id)
                    assert job is not None, f"{kind}: enqueue_many returned an unknown job"
                    if keyed:
                        assert job.key == text, f"{kind}: item {text!r} got job {job.index}"
        self.same_errors("enqueue_many", results)

    def plan_many(
        self,
        model: Model,
        name: str,
        items: list[tuple[str, int]],
        *,
        keyed: bool,
        batch_size: int,
        queue: str | None,
        priority: int | None,
        run_at: float,
    ) -> tuple[list[Enqueue], type[Exception] | None]:
        """The jobs an enqueue_many writes, and the error it raises (None: no error)."""
        created: list[Enqueue] = []
        taken = {job.key: (job.name, job.args) for job in model.jobs if job.key is not None}
        batch: list[Enqueue] = []

        def flush() -> type[Exception] | None:
            first: dict[str, Enqueue] = {}
            for spec in batch:
                if spec.key is None:
                    created.append(spec)
                elif spec.key not in first:
                    first[spec.key] = spec
                    if spec.key not in taken:
                        created.append(spec)
                        taken[spec.key] = (spec.name, spec.args)
            for spec in batch:
                if spec.key is not None and taken[spec.key] != (spec.name, spec.args):
                    return KeyConflict
            batch.clear()
            return None

        for text, n in items:
            spec, error = self.spec(
                name, text, n, key=text if keyed else None, queue=queue,
                priority=priority, run_at=run_at,
            )  # fmt: skip
            if spec is None:
                return created, error
            batch.append(spec)
            if len(batch) >= batch_size and (conflict := flush()) is not None:
                return created, conflict
        if batch:
            return created, flush()
        return created, None

    @rule(
        name=st.sampled_from(JOB_NAMES),
        text=ARG,
        n=st.integers(0, 2),
        key=KEYS,
        when=WHEN,
        queue=QUEUES,
        priority=PRIORITIES,
        commit=st.booleans(),
    )
    def enqueue_on_connection(
        self,
        name: str,
        text: str,
        n: int,
        key: str | None,
        when: tuple[str, float],
        queue: str | None,
        priority: int | None,
        commit: bool,
    ) -> None:
        """app.enqueue(connection=): the job exists if and only if the caller commits."""
        options, run_at = self.due(when)
        spec, error = self.spec(
            name, text, n, key=key, queue=queue, priority=priority, run_at=run_at
        )
        results = []
        for kind, driver, model in self.pairs:
            app = driver.app
            with driver.caller_connection() as conn:
                result = attempt(
                    lambda app=app, conn=conn: app.enqueue(
                        name, text, n, key=key, queue=queue, priority=priority,
                        connection=conn, **options,
                    )
                )  # fmt: skip
                if commit and result.error is None:
                    conn.commit()
                else:
                    conn.rollback()
            results.append(result)
            self.check_enqueue(
                kind, model, spec, error, result, written=commit and result.error is None
            )
            if result.error is None and not commit and result.value.id not in model.by_id:
                assert not driver.jobs([result.value.id]), (
                    f"{kind}: a job enqueued in a rolled back transaction exists"
                )
        self.same_errors("enqueue on the caller's connection", results)

    # what a worker does --------------------------------------------------------------------------
    @precondition(_has(JobState.QUEUED, JobState.WAITING))
    @rule(
        names=CLAIM_NAMES,
        queues=st.one_of(
            st.none(), st.lists(st.sampled_from(["default", "bulk", "q"]), min_size=1)
        ),
        limit=st.integers(1, 6),
        owner=st.sampled_from(OWNERS),
    )
    def claim_due(self, names: list[str], queues: list[str] | None, limit: int, owner: str) -> None:
        """store.job_claim_due: due jobs by priority then age, each limit kept."""
        now = self.clock.now()
        limited = [name for name in names if name in LIMITED_NAMES]
        for kind, driver, model in self.pairs:
            claimed = driver.claim_due(
                owner=owner, names=names, queues=queues, limit=limit, limited=limited,
                now=now, lease_until=now + LEASE,
            )  # fmt: skip
            unknown = [c.id for c in claimed if c.id not in model.by_id]
            assert not unknown, f"{kind}: claimed unknown jobs {unknown}"
            chosen = [model.by_id[c.id].index for c in claimed]
            assert len(set(chosen)) == len(chosen), f"{kind}: claimed a job twice: {chosen}"
            wrong = model.check_claim(
                set(chosen), names=names, queues=queues, limit=limit, limited=limited, now=now
            )
            assert wrong is None, (
                f"{kind}: job_claim_due(names={names}, queues={queues}, limit={limit}) "
                f"claimed jobs {sorted(chosen)}: {wrong}"
            )
            expected = model.apply_claim(chosen, owner=owner, now=now, lease_until=now + LEASE)
            for got, want in zip(claimed, expected, strict=True):
                assert got == want, f"{kind}: claim returned {got}, the model says {want}"
            self.dirty.update(chosen)

    @precondition(_has(JobState.QUEUED, JobState.WAITING))
    @rule(group=st.integers(0, 1), limit=st.integers(1, 8), owner=st.sampled_from(OWNERS))
    def claim_as_worker(self, group: int, limit: int, owner: str) -> None:
        """A worker's claim: every job it knows, from every queue."""
        if "claim-limited-last" in STEERED_AROUND:
            names = [PLAIN] if group == 0 else list(LIMITED_NAMES)
        else:
            names = list(JOB_NAMES)
        self.claim_due(names=names, queues=None, limit=limit, owner=owner)

    @precondition(_has(JobState.QUEUED, JobState.WAITING))
    @rule(
        group=st.integers(0, 1),
        limit=st.integers(1, 3),
        steps=st.lists(st.tuples(STEPS, TEXT), max_size=2),
        hows=st.lists(
            st.sampled_from(
                ["complete", "fail", "retry_later", "release", "sleep", "wait", "wait_child"]
            ),
            min_size=3,
            max_size=3,
        ),
        event=EVENTS.filter(valid_key),
    )
    def work(
        self,
        group: int,
        limit: int,
        steps: list[tuple[str, str]],
        hows: list[str],
        event: str,
    ) -> None:
        """A worker's round: claim, checkpoint some steps, end each run one way or another."""
        before = {j.index for j in self.models[0].jobs if j.state is JobState.RUNNING}
        self.claim_as_worker(group=group, limit=limit, owner=OWNERS[0])
        running = [j.index for j in self.models[0].jobs if j.state is JobState.RUNNING]
        claimed = [i for i in running if i not in before]
        for position, index in enumerate(claimed):
            for seq, (name, value) in enumerate(steps):
                self.checkpoint(
                    number=self.running_position(index), which="current", seq=seq,
                    name=name, status="ok", value=value, attempts=1,
                )  # fmt: skip
            self.transition(
                number=self.running_position(index), which="current",
                how=hows[position % len(hows)], text=event, offset=1.0, event=event, other=0,
            )  # fmt: skip

    def running_position(self, index: int) -> int:
        running = [j.index for j in self.models[0].jobs if j.state is JobState.RUNNING]
        return running.index(index)

    @precondition(_has(JobState.RUNNING))
    @rule(picks=st.lists(st.tuples(PICK, FENCES), min_size=1, max_size=3))
    def heartbeat(self, picks: list[tuple[int, str]]) -> None:
        """store.job_heartbeat: leases of the current fence are extended, others lost."""
        lease_until = self.clock.now() + LEASE
        for kind, driver, model in self.pairs:
            if not model.jobs:
                return
            leases = {}
            for number, which in picks:
                job = self.pick(model, number, state=JobState.RUNNING)
                assert job is not None
                leases[job.index] = self.fence_of(job, which)
            lost = driver.heartbeat(
                [(model.jobs[i].id, fence) for i, fence in leases.items()], lease_until=lease_until
            )
            expected = model.heartbeat(list(leases.items()), lease_until=lease_until)
            assert {model.by_id[i].index for i in lost} == expected, (
                f"{kind}: heartbeat lost {sorted(model.by_id[i].index for i in lost)}, "
                f"the model says {sorted(expected)}"
            )

    @rule(seconds=st.sampled_from([0.5, 1.0, 5.0, 29.0, 31.0, 61.0]))
    def advance_clock(self, seconds: float) -> None:
        """Time passes (leases expire, delayed jobs come due)."""
        self.clock.advance(seconds)

    @precondition(_has(JobState.RUNNING))
    @rule()
    def rescue(self) -> None:
        """rescue_expired: expired leases are requeued as replays, or failed as poison."""
        now = self.clock.now()
        for kind, driver, model in self.pairs:
            done = driver.rescue(now=now)
            requeued, poisoned = model.rescue(now=now, poison_error=poison_error)
            got = (
                {model.by_id[i].index for i in done.requeued},
                {model.by_id[i].index for i in done.poisoned},
            )
            assert got == (requeued, poisoned), (
                f"{kind}: rescue requeued/poisoned {got}, the model says {(requeued, poisoned)}"
            )
            self.dirty.update(requeued | poisoned)

    @precondition(_has(JobState.RUNNING))
    @rule(
        number=PICK,
        which=FENCES,
        seq=st.integers(0, 3),
        name=STEPS,
        status=st.sampled_from(["ok", "ok", "error"]),
        value=TEXT,
        attempts=st.integers(1, 3),
    )
    def checkpoint(
        self, number: int, which: str, seq: int, name: str, status: str, value: str, attempts: int
    ) -> None:
        """store.checkpoint_insert: written once, only under the current fence."""
        now = self.clock.now()
        for kind, driver, model in self.pairs:
            job = self.pick(model, number, state=JobState.RUNNING)
            if job is None:
                return
            fence = self.fence_of(job, which)
            data = {
                "seq": seq,
                "name": name,
                "status": status,
                "value": encoded(value),
                "attempts": attempts,
            }
            result = attempt(
                lambda d=driver, j=job, f=fence: d.checkpoint(j.id, f, now=now, **data)
            )
            refused = model.checkpoint(job, fence, now=now, **data)  # type: ignore[arg-type]
            self.expect(
                kind,
                f"checkpoint #{seq} of job {job.index}, fence {fence}",
                result,
                refused and refused.error,
            )
            self.dirty.add(job.index)

    @precondition(_has(JobState.RUNNING))
    @rule(
        number=PICK,
        which=FENCES,
        how=st.sampled_from(
            ["complete", "fail", "retry_later", "release", "sleep", "wait", "wait_child"]
        ),
        text=TEXT,
        offset=OFFSETS,
        event=EVENTS.filter(valid_key),
        other=PICK,
    )
    def transition(
        self, number: int, which: str, how: str, text: str, offset: float, event: str, other: int
    ) -> None:
        """store.job_transition: complete, fail, retry later, release or park, fenced."""
        now = self.clock.now()
        for kind, driver, model in self.pairs:
            job = self.pick(model, number, state=JobState.RUNNING)
            if job is None:
                return
            fence = self.fence_of(job, which)
            value = encoded(text)
            child = self.pick(model, other) if how == "wait_child" else None
            if how == "complete":
                outcome = Outcome.complete(job.id, fence, value)
                refused = model.complete(job, fence, result=value, now=now)
            elif how == "fail":
                outcome = Outcome.fail(job.id, fence, error=value, attempt=job.attempts)
                refused = model.fail(job, fence, error=value, attempt=job.attempts, now=now)
            elif how == "retry_later":
                outcome = Outcome.retry_later(
                    job.id, fence, error=value, attempt=job.attempts, run_at=now + offset
                )
                refused = model.retry_later(
                    job, fence, error=value, attempt=job.attempts, run_at=now + offset, now=now
                )
            elif how == "release":
                outcome = Outcome.release(job.id, fence)
                refused = model.release(job, fence, now=now)
            else:
                until = now + offset if how == "sleep" else WAIT_FOREVER
                wait = event if how == "wait" else None
                outcome = Outcome.park(
                    job.id, fence, until=until, event=wait, child=child.id if child else None
                )
                refused = model.park(job, fence, until=until, event=wait, child=child, now=now)
            result = attempt(lambda d=driver, o=outcome: d.transition(o, now=now))
            self.expect(
                kind, f"{how} job {job.index} with fence {fence}", result, refused and refused.error
            )
            self.dirty.add(job.index)

    # operations --------------------------------------------------------------------------------
    @precondition(_has_jobs)
    @rule(number=PICK, unknown=st.booleans())
    def cancel(self, number: int, unknown: bool) -> None:
        """app.cancel: an unfinished job is cancelled at once; a finished one is left."""
        now = self.clock.now()
        for kind, driver, model in self.pairs:
            job = None if unknown else self.pick(model, number)
            result = attempt(lambda d=driver, j=job: d.app.cancel(j.id if j else "no-such-job"))
            if job is None:
                self.expect(kind, "cancel an unknown job", result, JobNotFound)
                continue
            expected = model.cancel(job, now=now)
            self.expect(kind, f"cancel job {job.index}", result, None)
            assert result.value == expected, f"{kind}: cancel returned {result.value}"
            self.dirty.add(job.index)

    @precondition(_has_jobs)
    @rule(number=PICK, unknown=st.booleans())
    def retry(self, number: int, unknown: bool) -> None:
        """app.retry: a failed or cancelled job is queued again with a fresh budget."""
        now = self.clock.now()
        for kind, driver, model in self.pairs:
            job = None if unknown else self.pick(model, number)
            result = attempt(lambda d=driver, j=job: d.app.retry(j.id if j else "no-such-job"))
            if job is None:
                self.expect(kind, "retry an unknown job", result, JobNotFound)
                continue
            expected = model.requeue(job, now=now)
            self.expect(kind, f"retry job {job.index}", result, None)
            assert result.value == expected, f"{kind}: retry returned {result.value}"
            self.dirty.add(job.index)

    @rule(event=st.one_of(EVENTS, TEXT, st.just("stepstone.job:x")), payload=TEXT)
    def signal(self, event: str, payload: str) -> None:
        """app.signal: wakes the jobs waiting for the event; bad event names are refused."""
        now = self.clock.now()
        error: type[Exception] | None = None
        if not event or event.startswith("stepstone.job:"):
            error = ValueError
        elif not valid_key(event):
            error = InvalidKey
        results = []
        for kind, driver, model in self.pairs:
            result = attempt(lambda d=driver: d.app.signal(event, {"text": payload}))
            self.expect(kind, f"signal {event!r}", result, error)
            results.append(result)
            if error is None:
                waiting = {j.index for j in model.jobs if j.state is JobState.WAITING}
                woken = model.signal(event, now=now)
                assert result.value == woken, f"{kind}: signal woke {result.value}, not {woken}"
                self.dirty.update(waiting)
        self.same_errors("signal", results)

    # the check after every step ------------------------------------------------------------------
    @invariant()
    def stores_match_the_model(self) -> None:
        """Every job record, and the history of every job touched, is as the model says."""
        dirty, self.dirty = self.dirty, set()
        for kind, driver, model in self.pairs:
            extra = driver.all_job_ids() - set(model.by_id)
            assert not extra, f"{kind}: the store holds jobs the model does not: {extra}"
            stored = {r.id: r for r in driver.jobs([j.id for j in model.jobs])}
            for job in model.jobs:
                got = stored.get(job.id)
                want = job.record()
                assert got == want, f"{kind}: job {job.index} differs from the model:\n" + diff(
                    got, want
                )
            for index in sorted(dirty):
                job = model.jobs[index]
                got_checkpoints = driver.checkpoints(job.id)
                assert got_checkpoints == job.checkpoint_list(), (
                    f"{kind}: checkpoints of job {job.index}: {got_checkpoints} != "
                    f"{job.checkpoint_list()}"
                )
                got_errors = driver.errors(job.id)
                assert got_errors == job.errors, (
                    f"{kind}: errors of job {job.index}: {got_errors} != {job.errors}"
                )


def diff(got: Any, want: Any) -> str:
    if got is None:
        return "  the store has no such job"
    return "\n".join(
        f"  {name}: store {getattr(got, name)!r}, model {getattr(want, name)!r}"
        for name in want.__slots__
        if getattr(got, name) != getattr(want, name)
    )


__all__ = ["LEASE", "STEERED_AROUND", "StoresAgree", "declare_jobs"]
