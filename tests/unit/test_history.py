"""Step history: checkpoints by name#occurrence, replay of typed values, non-determinism."""

from __future__ import annotations

import asyncio
import enum
import re
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal

import pydantic
import pytest

from stepstone import App, JobFailed, NonDeterminism, Retry


@dataclass
class Order:
    sku: str
    qty: int
    price: Decimal


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Receipt(pydantic.BaseModel):
    id: uuid.UUID
    total: Decimal
    at: datetime


#: Flipped by a test between two attempts of a job, so the job takes another path.
FLAGS = {"swap": False}

ONCE_THEN_OK = Retry(max_attempts=2, jitter=False)


class FirstAttemptFails(Exception):
    """Raised by a job body (not a step) on its first attempt, so its checkpoints stay."""


def test_steps_are_checkpointed_by_name_and_occurrence(app: App) -> None:
    """Each step call gets the next position and the identity name#occurrence-in-this-run."""

    @app.step
    def fetch(n: int) -> int:
        return n * 10

    @app.step
    def store(total: int) -> str:
        return f"stored {total}"

    @app.job
    def job() -> str:
        return store(fetch(1) + fetch(2))

    handle = app.enqueue(job)
    app.run_worker(until_idle=True)
    assert handle.result(timeout=5) == "stored 30"
    steps = handle.steps()
    assert [(s.position, s.name, s.status, s.value) for s in steps] == [
        (0, "fetch#0", "ok", 10),
        (1, "fetch#1", "ok", 20),
        (2, "store#0", "ok", "stored 30"),
    ]
    assert all(s.attempts == 1 for s in steps)


def test_replay_skips_finished_steps(app: App) -> None:
    """When the job body fails after two steps, the retry replays them without running them."""
    runs: Counter[str] = Counter()
    attempts: list[int] = []

    @app.step
    def first() -> int:
        runs["first"] += 1
        return 1

    @app.step
    def second(x: int) -> int:
        runs["second"] += 1
        return x + 1

    @app.step
    def third(x: int) -> int:
        runs["third"] += 1
        return x + 1

    @app.job(retry=ONCE_THEN_OK)
    def job() -> int:
        attempts.append(1)
        value = second(first())
        if len(attempts) == 1:
            raise FirstAttemptFails("after two steps")
        return third(value)

    assert app.run(job) == 3
    assert len(attempts) == 2
    assert runs == {"first": 1, "second": 1, "third": 1}


def test_replayed_values_are_equal_and_of_the_same_type(app: App) -> None:
    """A replayed step returns a value equal to, and of the type of, the fresh one."""
    receipt_id = uuid.UUID("12345678-1234-5678-1234-567812345678")
    when = datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=UTC)
    runs: Counter[str] = Counter()
    seen: list[tuple[object, ...]] = []

    @app.step
    def get_order() -> Order:
        runs["order"] += 1
        return Order("sku-1", 3, Decimal("12.30"))

    @app.step
    def get_time() -> datetime:
        runs["time"] += 1
        return when

    @app.step
    def get_day() -> date:
        runs["day"] += 1
        return date(2024, 2, 29)

    @app.step
    def get_price() -> Decimal:
        runs["price"] += 1
        return Decimal("0.10")

    @app.step
    def get_id() -> uuid.UUID:
        runs["id"] += 1
        return receipt_id

    @app.step
    def get_color() -> Color:
        runs["color"] += 1
        return Color.BLUE

    @app.step
    def get_receipt() -> Receipt:
        runs["receipt"] += 1
        return Receipt(id=receipt_id, total=Decimal("36.90"), at=when)

    @app.step
    def get_blob() -> bytes:
        runs["blob"] += 1
        return b"\x00\xffpdf"

    @app.step
    def get_orders() -> list[Order]:
        runs["orders"] += 1
        return [Order("a", 1, Decimal("1.5")), Order("b", 2, Decimal("2"))]

    @app.job(retry=ONCE_THEN_OK)
    def job() -> str:
        seen.append(
            (
                get_order(),
                get_time(),
                get_day(),
                get_price(),
                get_id(),
                get_color(),
                get_receipt(),
                get_blob(),
                get_orders(),
            )
        )
        if len(seen) == 1:
            raise FirstAttemptFails("replay them all")
        return "done"

    assert app.run(job) == "done"
    fresh, replayed = seen
    assert replayed == fresh
    assert [type(value) for value in replayed] == [type(value) for value in fresh]
    assert all(isinstance(order, Order) for order in replayed[-1])
    assert str(replayed[3]) == "0.10"
    assert replayed[1].tzinfo is not None
    assert set(runs.values()) == {1}
    assert len(runs) == 9


def test_job_result_is_decoded_as_the_job_return_type(app: App) -> None:
    """A job's stored result comes back from the store as its annotated type."""

    @app.job
    def job() -> Order:
        return Order("sku", 2, Decimal("9.99"))

    handle = app.enqueue(job)
    app.run_worker(until_idle=True)
    result = handle.result(timeout=5)
    assert result == Order("sku", 2, Decimal("9.99"))
    assert isinstance(result, Order)


def test_different_step_order_raises_nondeterminism_with_both_sequences(
    app: App, clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replay that calls steps in another order than stored fails with NonDeterminism."""
    monkeypatch.setitem(FLAGS, "swap", False)
    runs: Counter[str] = Counter()

    @app.step
    def fetch() -> int:
        runs["fetch"] += 1
        return 1

    @app.step
    def store() -> int:
        runs["store"] += 1
        return 2

    @app.job(retry=ONCE_THEN_OK)
    def job() -> int:
        if FLAGS["swap"]:
            return store()
        fetch()
        store()
        raise FirstAttemptFails("after fetch and store")

    handle = app.enqueue(job)
    app.run_worker(until_idle=True)
    assert handle.state == "queued"
    assert [s.name for s in handle.steps()] == ["fetch#0", "store#0"]

    FLAGS["swap"] = True
    clock.advance(1.0)
    app.run_worker(until_idle=True)

    assert handle.state == "failed"
    with pytest.raises(JobFailed) as failed:
        handle.result(timeout=5)
    cause = failed.value.__cause__
    assert isinstance(cause, NonDeterminism)
    message = str(cause)
    assert "fetch#0" in message
    assert message.count("store#0") >= 2, message
    assert re.search(r"fetch#0\W+store#0", message), message  # the stored sequence
    assert "NonDeterminism" in str(failed.value)
    assert runs == {"fetch": 1, "store": 1}


def test_step_called_inside_a_step_is_a_plain_call(app: App) -> None:
    """An inner step runs inside its caller's body and gets no checkpoint of its own."""
    runs: Counter[str] = Counter()
    attempts: list[int] = []

    @app.step
    def inner(x: int) -> int:
        runs["inner"] += 1
        return x * 2

    @app.step
    def outer() -> int:
        runs["outer"] += 1
        return inner(1) + inner(2)

    @app.step
    def after(x: int) -> int:
        return x + 1

    @app.job(retry=ONCE_THEN_OK)
    def job() -> int:
        attempts.append(1)
        value = outer()
        if len(attempts) == 1:
            raise FirstAttemptFails("replay outer")
        return after(value)

    handle = app.enqueue(job)
    app.run_worker(until_idle=True)
    app.clock.advance(1.0)
    app.run_worker(until_idle=True)
    assert handle.result(timeout=5) == 7
    assert [s.name for s in handle.steps()] == ["outer#0", "after#0"]
    assert runs == {"outer": 1, "inner": 2}


def test_step_called_outside_a_job_is_a_plain_call(app: App, clock) -> None:
    """Outside a job a step runs every time it is called, and its errors are not retried."""
    runs: Counter[str] = Counter()

    @app.step
    def add(a: int, b: int) -> int:
        runs["add"] += 1
        return a + b

    @app.step(retry=Retry(max_attempts=5))
    def broken() -> None:
        runs["broken"] += 1
        raise ValueError("plain")

    assert add(1, 2) == 3
    assert add(1, 2) == 3
    with pytest.raises(ValueError, match="plain"):
        broken()
    assert runs == {"add": 2, "broken": 1}
    assert clock.sleeps == []


def test_gathered_async_steps_get_positions_in_call_order(app: App) -> None:
    """asyncio.gather over async steps: positions follow call order, not completion order."""
    finished: list[int] = []
    attempts: list[int] = []

    @app.step
    async def square(n: int) -> int:
        await asyncio.sleep(0.01 * (5 - n))  # the last call finishes first
        finished.append(n)
        return n * n

    @app.job(retry=ONCE_THEN_OK)
    async def job() -> list[int]:
        attempts.append(1)
        values = await asyncio.gather(*(square(n) for n in range(5)))
        if len(attempts) == 1:
            raise FirstAttemptFails("replay the gather")
        return list(values)

    handle = app.enqueue(job)
    app.run_worker(until_idle=True)
    assert finished == [4, 3, 2, 1, 0]
    assert [(s.position, s.name, s.value) for s in handle.steps()] == [
        (n, f"square#{n}", n * n) for n in range(5)
    ]
    app.clock.advance(1.0)
    app.run_worker(until_idle=True)
    assert handle.result(timeout=5) == [0, 1, 4, 9, 16]
    assert finished == [4, 3, 2, 1, 0]


def test_async_job_replays_async_and_sync_steps(app: App) -> None:
    """An async def job checkpoints both async and sync steps and replays them on retry."""
    runs: Counter[str] = Counter()
    attempts: list[int] = []

    @app.step
    async def fetch(x: int) -> int:
        runs["fetch"] += 1
        await asyncio.sleep(0)
        return x + 1

    @app.step
    def double(x: int) -> int:
        runs["double"] += 1
        return x * 2

    @app.job(retry=ONCE_THEN_OK)
    async def job(x: int) -> int:
        attempts.append(1)
        value = double(await fetch(x))
        if len(attempts) == 1:
            raise FirstAttemptFails("replay")
        return value

    assert app.run(job, 4) == 10
    assert runs == {"fetch": 1, "double": 1}
    assert len(attempts) == 2


def test_sync_job_result_via_worker_and_result_async(app: App) -> None:
    """A handle's result_async returns the same result as result()."""

    @app.step
    def hello(name: str) -> str:
        return f"hello {name}"

    @app.job
    def job(name: str) -> str:
        return hello(name)

    handle = app.enqueue(job, "ada")
    app.run_worker(until_idle=True)
    assert handle.result(timeout=5) == "hello ada"
    assert asyncio.run(handle.result_async(timeout=5)) == "hello ada"


def test_replayed_value_of_a_locally_declared_class_keeps_its_type(app: App) -> None:
    """A step declared inside a function, annotated with a class local to it, replays
    that class, not a dict (this module uses `from __future__ import annotations`)."""

    @dataclass
    class Shipment:
        carrier: str
        weight: Decimal

    seen: list[object] = []

    @app.step
    def ship() -> Shipment:
        return Shipment("ups", Decimal("1.5"))

    @app.job(retry=ONCE_THEN_OK)
    def job() -> str:
        seen.append(ship())
        if len(seen) == 1:
            raise FirstAttemptFails("replay ship")
        return "shipped"

    assert app.run(job) == "shipped"
    fresh, replayed = seen
    assert type(replayed) is type(fresh), f"replayed a {type(replayed).__name__}"
    assert replayed == fresh


def test_job_arguments_arrive_as_their_annotated_types(app: App) -> None:
    """A worker calls the job with arguments rebuilt as their annotated types."""
    receipt_id = uuid.UUID("12345678-1234-5678-1234-567812345678")
    when = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)
    received: list[tuple[object, ...]] = []

    @app.job
    def job(
        order: Order,
        at: datetime,
        day: date,
        amount: Decimal,
        id_: uuid.UUID,
        color: Color,
        receipt: Receipt,
        blob: bytes,
        orders: list[Order],
    ) -> None:
        received.append((order, at, day, amount, id_, color, receipt, blob, orders))

    sent = (
        Order("sku", 1, Decimal("2.50")),
        when,
        date(2024, 2, 29),
        Decimal("0.10"),
        receipt_id,
        Color.RED,
        Receipt(id=receipt_id, total=Decimal("2.50"), at=when),
        b"\x00\x01",
        [Order("a", 2, Decimal("1"))],
    )
    handle = app.enqueue(job, *sent)
    app.run_worker(until_idle=True)
    handle.result(timeout=5)
    [got] = received
    assert got == sent
    assert [type(value) for value in got] == [type(value) for value in sent]
