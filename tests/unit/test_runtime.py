"""Engine pieces built from a Runtime alone, with no App: a job run, the step attempt
protocol (sync and async drivers), the enqueue module, the group commit and a worker."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stepstone import KeyConflict, Limit, Retry, StepstoneError
from stepstone._enqueue import build_job, enqueue, enqueue_many, insert
from stepstone._execute import execute_async, execute_sync
from stepstone._job import JobDefinition
from stepstone._retry import DEFAULT_JOB_RETRY, DEFAULT_STEP_RETRY
from stepstone._runtime import Runtime
from stepstone._step import StepDefinition, TransactionStep
from stepstone._store import open_store
from stepstone._worker import Worker
from stepstone.testing import FakeClock
from stepstone.types import ClaimedJob, JobState, NewJob, Outcome

NO_RETRY = Retry(max_attempts=1).with_defaults(DEFAULT_JOB_RETRY)
STEP_RETRY = Retry(max_attempts=3, jitter=False).with_defaults(DEFAULT_STEP_RETRY)


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Runtime]:
    """A runtime over a fresh SQLite file, with a fake clock and an empty registry."""
    jobs: dict[str, JobDefinition[Any, Any]] = {}
    runtime = Runtime(
        lambda: open_store(f"sqlite:///{tmp_path / 'engine.db'}"),
        jobs=jobs,
        clock=FakeClock(),
        lease=30.0,
        poll_interval=0.05,
    )
    yield runtime
    runtime.close()


def declare(runtime: Runtime, fn: Any, **options: Any) -> JobDefinition[Any, Any]:
    """Register a job in the runtime's registry, as ``App.job`` would."""
    definition: JobDefinition[Any, Any] = JobDefinition(
        fn,
        name=fn.__name__,
        queue="default",
        retry=options.pop("retry", NO_RETRY),
        priority=0,
        timeout=options.pop("timeout", None),
        **options,
    )
    jobs = runtime.jobs
    assert isinstance(jobs, dict)
    jobs[definition.name] = definition
    return definition


def claim_one(runtime: Runtime, name: str) -> ClaimedJob:
    now = runtime.clock.now()
    claimed = runtime.store.job_claim_due(
        owner="test", names=[name], queues=None, limit=1, now=now, lease_until=now + 30
    )
    assert len(claimed) == 1
    return claimed[0]


def test_a_job_run_checkpoints_its_steps_from_a_runtime_alone(runtime: Runtime) -> None:
    """A sync job run built from a runtime checkpoints each step once and stores its result."""
    calls: list[int] = []

    def double(n: int) -> int:
        calls.append(n)
        return n * 2

    step = StepDefinition(runtime, double, name="double", retry=STEP_RETRY)

    def pipeline(n: int) -> int:
        return step(step(n))

    definition = declare(runtime, pipeline)
    job = insert(runtime, build_job(definition, (3,), {}, run_at=0.0), now=0.0).job
    run = execute_sync(runtime, claim_one(runtime, "pipeline"))
    assert run is not None
    assert run.succeeded
    assert run.result == 12
    assert calls == [3, 6]
    record = runtime.store.job_get(job.id)
    assert record is not None
    assert record.state == JobState.SUCCEEDED
    assert [c.name for c in runtime.store.checkpoint_list(job.id)] == ["double#0", "double#1"]


def test_the_step_protocol_retries_with_backoff_on_the_runtime_clock(runtime: Runtime) -> None:
    """A failing step attempt is recorded and retried after its backoff (fake clock: no
    real sleep); the value of the attempt that succeeds is checkpointed."""
    attempts: list[float] = []

    def flaky() -> str:
        attempts.append(runtime.clock.now())
        if len(attempts) < 3:
            raise ValueError("not yet")
        return "done"

    step = StepDefinition(runtime, flaky, name="flaky", retry=STEP_RETRY)

    def job() -> str:
        return step()

    declare(runtime, job)
    handle = enqueue(runtime, runtime.jobs["job"], (), {})
    run = execute_sync(runtime, claim_one(runtime, "job"))
    assert run is not None
    assert run.result == "done"
    assert len(attempts) == 3
    assert attempts[1] > attempts[0]  # the backoff passed on the runtime's clock
    [checkpoint] = runtime.store.checkpoint_list(handle.id)
    assert checkpoint.attempts == 3
    assert len(runtime.store.error_list(handle.id)) == 2


def test_the_async_driver_runs_the_same_protocol(runtime: Runtime) -> None:
    """An async job's steps go through the same protocol: replayed steps do not run again."""
    runs: list[str] = []

    async def fetch(name: str) -> str:
        runs.append(name)
        return name.upper()

    step = StepDefinition(runtime, fetch, name="fetch", retry=STEP_RETRY)

    async def job() -> list[str]:
        return list(await asyncio.gather(step("a"), step("b")))

    declare(runtime, job)
    handle = enqueue(runtime, runtime.jobs["job"], (), {})
    run = asyncio.run(execute_async(runtime, claim_one(runtime, "job")))
    assert run is not None
    assert run.result == ["A", "B"]
    assert sorted(runs) == ["a", "b"]
    assert [c.name for c in runtime.store.checkpoint_list(handle.id)] == ["fetch#0", "fetch#1"]


def test_a_transactional_step_is_one_more_body_of_the_protocol(runtime: Runtime) -> None:
    """A transactional step writes its checkpoint in its own transaction, from a runtime."""

    def record(connection: Any, n: int) -> int:
        connection.execute("CREATE TABLE IF NOT EXISTS seen (n INTEGER)")
        connection.execute("INSERT INTO seen VALUES (?)", (n,))
        return n

    step = TransactionStep(runtime, record, name="record", retry=NO_RETRY)

    def job(n: int) -> int:
        return step(n)

    declare(runtime, job)
    handle = enqueue(runtime, runtime.jobs["job"], (7,), {})
    run = execute_sync(runtime, claim_one(runtime, "job"))
    assert run is not None
    assert run.result == 7
    [checkpoint] = runtime.store.checkpoint_list(handle.id)
    assert checkpoint.name == "record#0"


def test_every_row_carries_the_concurrency_columns(runtime: Runtime) -> None:
    """build_job fills the concurrency key and limit, and enqueue_many writes them."""

    def send(channel: str, text: str) -> None:
        return None

    definition = declare(runtime, send, concurrency=Limit(1, key="{channel}"))
    row = build_job(definition, ("news", "hi"), {}, run_at=0.0)
    assert (row.concurrency_key, row.concurrency_limit) == ("send:news", 1)
    store = runtime.store
    written: list[NewJob] = []
    insert_many = store.job_insert_many

    def recording(rows: list[NewJob], *, now: float) -> Any:
        written.extend(rows)
        return insert_many(rows, now=now)

    store.job_insert_many = recording  # type: ignore[method-assign]
    handles = enqueue_many(runtime, definition, [("news", str(n)) for n in range(3)])
    assert handles.new == 3
    assert {(r.concurrency_key, r.concurrency_limit) for r in written} == {("send:news", 1)}


def test_a_taken_key_with_other_arguments_is_a_conflict_with_its_index(runtime: Runtime) -> None:
    """The one KeyConflict rule: the same key with other arguments is refused, and in bulk
    the conflict names the item's position."""

    def greet(name: str) -> str:
        return name

    definition = declare(runtime, greet)
    first = enqueue(runtime, definition, ("ada",), {}, key="k1")
    assert enqueue(runtime, definition, ("ada",), {}, key="k1") == first
    with pytest.raises(KeyConflict):
        enqueue(runtime, definition, ("bob",), {}, key="k1")
    with pytest.raises(KeyConflict) as caught:
        enqueue_many(runtime, definition, [("x",), ("bob",)], key="k1")
    assert caught.value.index == 0


def test_run_now_refuses_a_connection(runtime: Runtime) -> None:
    """The claimed insert of app.run does not take a caller's connection."""

    def job() -> None:
        return None

    definition = declare(runtime, job)
    with pytest.raises(StepstoneError, match="does not take a connection"):
        insert(runtime, build_job(definition, (), {}, run_at=0.0), now=0.0, owner="me",
               connection=object())  # fmt: skip


def test_group_commit_writes_every_outcome_kind(runtime: Runtime) -> None:
    """Failures, retries and parks go through the outcome writer too, fenced."""

    def job(n: int) -> None:
        return None

    definition = declare(runtime, job)
    for n in range(3):
        enqueue(runtime, definition, (n,), {})
    now = runtime.clock.now()
    claimed = runtime.store.job_claim_due(
        owner="w", names=["job"], queues=None, limit=3, now=now, lease_until=now + 30
    )
    fail, retry, park = claimed
    runtime.outcomes.write(Outcome.fail(fail.id, fail.fence, error='{"type": "E"}', attempt=1))
    runtime.outcomes.write(
        Outcome.retry_later(
            retry.id, retry.fence, error='{"type": "E"}', attempt=1, run_at=now + 60
        )
    )
    runtime.outcomes.write(Outcome.park(park.id, park.fence, until=now + 60))
    states = {r.id: r.state for r in runtime.store.job_get_many(ids=[j.id for j in claimed])}
    assert states == {
        fail.id: JobState.FAILED,
        retry.id: JobState.QUEUED,
        park.id: JobState.WAITING,
    }


def test_a_worker_runs_on_a_bare_runtime(runtime: Runtime) -> None:
    """A Worker takes a runtime as well as an App, and drains it until idle."""
    seen: list[int] = []

    def job(n: int) -> None:
        seen.append(n)

    definition = declare(runtime, job)
    enqueue_many(runtime, definition, [(n,) for n in range(5)])
    Worker(runtime, concurrency=2, until_idle=True).run()
    assert sorted(seen) == [0, 1, 2, 3, 4]


def test_no_engine_module_imports_the_app() -> None:
    """The engine takes a Runtime: no module below the App imports app.py, not even for
    type checking (the App is the registry and the public face, on top)."""
    import ast

    import stepstone

    package = Path(stepstone.__file__).parent
    above = {"__init__.py", "__main__.py", "_app.py", "_demo.py", "testing.py"}
    importers = []
    for path in sorted(package.glob("*.py")):
        if path.name in above:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                target = "." * node.level + (node.module or "")
                names = {alias.name for alias in node.names}
                if target in {"._app", "stepstone._app"} or (target == "." and "_app" in names):
                    importers.append(path.name)
    assert importers == []


def test_nothing_outside_the_app_touches_its_private_attributes() -> None:
    """No module but _app.py reads or writes a private attribute of an App (``app._x``):
    the engine gets what it needs from the Runtime."""
    import ast

    import stepstone

    package = Path(stepstone.__file__).parent
    touches = []
    for path in sorted(package.rglob("*.py")):
        if path.name == "_app.py" and path.parent == package:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and (
                    (isinstance(node.value, ast.Name) and node.value.id == "app")
                    or (isinstance(node.value, ast.Attribute) and node.value.attr == "app")
                )
            ):
                touches.append(f"{path.relative_to(package)}:{node.lineno} app.{node.attr}")
    assert touches == []
