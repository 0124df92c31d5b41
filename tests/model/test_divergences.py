"""Divergences between the stores that the model test found, each pinned by one fixed case.

A divergence listed in ``machine.STEERED_AROUND`` is one the state machine steers around
until it is fixed; its case here fails while the stores disagree, and fails again once they
agree, asking to remove the entry (so the state machine draws those inputs again).
"""

from __future__ import annotations

import pytest

from stepstone.errors import StoreError
from stepstone.testing import FakeClock

from .adapter import StoreDriver
from .machine import LEASE, LIMITED, LIMITED_NAMES, PLAIN, STEERED_AROUND, WHOLE, Result, attempt

pytestmark = pytest.mark.postgres


def claim_all(driver: StoreDriver, clock: FakeClock, names: list[str], limit: int) -> list[str]:
    """A worker's claim of these job names, from every queue; the claimed jobs' names."""
    now = clock.now()
    claimed = driver.claim_due(
        owner="worker-a",
        names=names,
        queues=None,
        limit=limit,
        limited=[name for name in names if name in LIMITED_NAMES],
        now=now,
        lease_until=now + LEASE,
    )
    return sorted(job.name for job in claimed)


def settle(divergence: str, *, agree: bool, detail: str) -> None:
    """Fail while the stores disagree; once they agree, fail until the steering is removed."""
    assert agree, f"the stores disagree ({divergence}): {detail}"
    assert divergence not in STEERED_AROUND, (
        f"the stores agree now: remove {divergence!r} from STEERED_AROUND in "
        "tests/model/machine.py, so that the state machine draws these inputs again"
    )


def test_bulk_enqueue_keeps_the_concurrency_limit(
    drivers: list[StoreDriver], shared_clock: FakeClock
) -> None:
    """Jobs written by enqueue_many keep their Limit(n, key=) on every store (the shrunk
    counterexample of the model test: two jobs of one channel, both claimed on PostgreSQL)."""
    for driver in drivers:
        driver.app.enqueue_many(LIMITED, [("a", 0), ("a", 1), ("b", 0)])
        driver.app.enqueue_many(WHOLE, [("x", 0), ("y", 0), ("z", 0)])
        claimed = claim_all(driver, shared_clock, list(LIMITED_NAMES), limit=10)
        assert claimed == [LIMITED, LIMITED, WHOLE, WHOLE], (
            f"{driver.kind}: a worker claimed {claimed}; Limit(1, key='{{channel}}') allows "
            "one job per channel (channels a and b) and Limit(2) two of model.whole"
        )


def test_queue_name_holding_nul_is_refused_alike(drivers: list[StoreDriver]) -> None:
    """A queue name holding NUL gets the same clear error on every store."""
    results: list[Result] = [
        attempt(lambda d=driver: d.app.enqueue(PLAIN, "a", queue="mail\x00x")) for driver in drivers
    ]
    kinds = [type(r.error).__name__ if r.error else "accepted" for r in results]
    clear = all(r.error is not None and type(r.error) is not StoreError for r in results)
    settle(
        "queue-nul",
        agree=clear and len(set(kinds)) == 1,
        detail=", ".join(
            f"{d.kind}: {k} {r.error or ''}"
            for d, k, r in zip(drivers, kinds, results, strict=True)
        ),
    )


def test_claim_takes_a_limited_job_of_higher_priority_first(
    drivers: list[StoreDriver], shared_clock: FakeClock
) -> None:
    """A claim takes due jobs by priority whether they have a concurrency limit or not."""
    got = {}
    for driver in drivers:
        driver.app.enqueue(PLAIN, "low", priority=0)
        driver.app.enqueue(LIMITED, "a", priority=5)
        got[driver.kind] = claim_all(driver, shared_clock, [PLAIN, *LIMITED_NAMES], limit=1)
    settle(
        "claim-limited-last",
        agree=all(claimed == [LIMITED] for claimed in got.values()),
        detail=f"with limit=1 each store claimed {got}; the priority-5 {LIMITED} comes first",
    )
