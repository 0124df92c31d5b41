"""Leases in one process: an expired lease is reclaimed, and the old run is fenced off."""

from __future__ import annotations

import logging
import re
import threading
from collections import Counter

import pytest

from stepstone import App, Retry


class CardDeclined(Exception):
    """An error a job catches."""


def test_lease_lost_is_sticky_and_the_new_owner_keeps_its_outcome(
    make_app, clock, caplog: pytest.LogCaptureFixture
) -> None:
    """When a run's lease expires and another worker takes the job over, the old run's
    step checkpoint is refused, its later step calls raise LeaseLost without running,
    the new owner's result stands, and a WARNING names both fencing tokens."""
    caplog.set_level(logging.WARNING, logger="stepstone")
    old: App = make_app(clock=clock, lease=30.0)
    new: App = make_app(clock=clock, lease=30.0)
    entered, gate = threading.Event(), threading.Event()
    runs: Counter[str] = Counter()
    caught: list[str] = []

    @old.step(name="slow")
    def old_slow() -> str:
        runs["old slow"] += 1
        entered.set()
        assert gate.wait(10)
        return "old"

    @old.step(name="after")
    def old_after(text: str) -> str:
        runs["old after"] += 1
        return text

    @old.job(name="leases.job")
    def old_job() -> str:
        try:
            value = old_slow()
        except Exception as exc:  # a user's broad except must not let the run go on
            caught.append(type(exc).__name__)
            value = "swallowed"
        try:
            return old_after(value)
        except Exception as exc:
            caught.append(type(exc).__name__)
            return "old run result"

    @new.step(name="slow")
    def new_slow() -> str:
        runs["new slow"] += 1
        return "new"

    @new.step(name="after")
    def new_after(text: str) -> str:
        runs["new after"] += 1
        return text

    @new.job(name="leases.job")
    def new_job() -> str:
        return new_after(new_slow())

    returned: list[object] = []
    thread = threading.Thread(
        target=lambda: returned.append(old.run(old_job, key="leased")), daemon=True
    )
    thread.start()
    assert entered.wait(10)
    clock.advance(31.0)
    new.run_worker(until_idle=True)
    handle = new.get_job_by_key("leased")
    assert handle.result(timeout=5) == "new"

    gate.set()
    thread.join(10)
    assert not thread.is_alive()
    assert caught == ["LeaseLost", "LeaseLost"]
    assert runs == {"old slow": 1, "new slow": 1, "new after": 1}
    assert returned == ["new"]
    assert handle.state == "succeeded"
    assert handle.attempts == 1
    assert [(s.name, s.value) for s in handle.steps()] == [("slow#0", "new"), ("after#0", "new")]

    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "lease lost" in r.getMessage().lower()
    ]
    assert warnings
    token = handle.record().fence
    assert any(
        handle.id in text
        and {token - 1, token} <= {int(n) for n in re.findall(r"token (\d+)", text)}
        for text in warnings
    ), warnings


def test_run_takes_over_a_keyed_job_whose_lease_expired(make_app, clock) -> None:
    """app.run with the key of a job whose worker's lease expired takes it over and resumes
    it from its checkpoints (a stored step error included) and returns its result."""
    stale: App = make_app(clock=clock, lease=30.0)
    fresh: App = make_app(clock=clock, lease=30.0)
    entered, gate = threading.Event(), threading.Event()
    runs: Counter[str] = Counter()

    @stale.step(name="first")
    def stale_first() -> str:
        runs["stale first"] += 1
        return "first"

    @stale.step(name="charge", retry=Retry(max_attempts=1))
    def stale_charge() -> str:
        runs["stale charge"] += 1
        raise CardDeclined("declined")

    @stale.step(name="second")
    def stale_second() -> str:
        runs["stale second"] += 1
        entered.set()
        assert gate.wait(10)
        return "stale"

    @stale.job(name="leases.takeover")
    def stale_job(x: int) -> str:
        first = stale_first()
        try:
            paid = stale_charge()
        except CardDeclined:
            paid = "unpaid"
        return f"{first} {paid} {stale_second()} {x}"

    @fresh.step(name="first")
    def fresh_first() -> str:
        runs["fresh first"] += 1
        return "first"

    @fresh.step(name="charge", retry=Retry(max_attempts=1))
    def fresh_charge() -> str:
        runs["fresh charge"] += 1
        return "paid"

    @fresh.step(name="second")
    def fresh_second() -> str:
        runs["fresh second"] += 1
        return "fresh"

    @fresh.job(name="leases.takeover")
    def fresh_job(x: int) -> str:
        first = fresh_first()
        try:
            paid = fresh_charge()
        except CardDeclined:
            paid = "unpaid"
        return f"{first} {paid} {fresh_second()} {x}"

    thread = threading.Thread(target=lambda: stale.run(stale_job, 1, key="take-over"), daemon=True)
    thread.start()
    try:
        assert entered.wait(10)
        clock.advance(31.0)
        assert fresh.run(fresh_job, 1, key="take-over") == "first unpaid fresh 1"
    finally:
        gate.set()
        thread.join(10)
    assert runs == {"stale first": 1, "stale charge": 1, "stale second": 1, "fresh second": 1}
    assert fresh.get_job_by_key("take-over").result(timeout=5) == "first unpaid fresh 1"


def test_stale_run_cannot_record_its_outcome_over_the_new_owner(make_app, clock) -> None:
    """A run that lost its lease and then finishes cannot store its result while the new
    owner still runs the job: the new owner's result is the one stored."""
    stale: App = make_app(clock=clock, lease=30.0)
    fresh: App = make_app(clock=clock, lease=30.0)
    stale_in, stale_go = threading.Event(), threading.Event()
    fresh_in, fresh_go = threading.Event(), threading.Event()

    @stale.job(name="leases.outcome")
    def stale_job() -> str:
        stale_in.set()
        assert stale_go.wait(10)
        return "stale"

    @fresh.job(name="leases.outcome")
    def fresh_job() -> str:
        fresh_in.set()
        assert fresh_go.wait(10)
        return "fresh"

    results: list[object] = []
    first = threading.Thread(
        target=lambda: results.append(stale.run(stale_job, key="outcome")), daemon=True
    )
    first.start()
    try:
        assert stale_in.wait(10)
        clock.advance(31.0)
        second = threading.Thread(
            target=lambda: results.append(fresh.run(fresh_job, key="outcome")), daemon=True
        )
        second.start()
        assert fresh_in.wait(10)
        stale_go.set()  # the stale run returns while the new owner still runs
        first.join(0.5)
        handle = fresh.get_job_by_key("outcome")
        assert handle.state == "running"
    finally:
        stale_go.set()
        fresh_go.set()
    first.join(10)
    second.join(10)
    assert results == ["fresh", "fresh"]
    assert handle.result(timeout=5) == "fresh"
