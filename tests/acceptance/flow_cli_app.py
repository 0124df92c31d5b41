"""Small Apps for the flow CLI acceptance tests; their database comes from
$STEPSTONE_DATABASE_URL.

``app`` has jobs that park: one waits for a signal, one sleeps, one waits for a child job.
``cron_app`` has one cron job, kept apart so that workers of ``app`` enqueue no ticks.
"""

from __future__ import annotations

from typing import Any

import stepstone

app = stepstone.App()
cron_app = stepstone.App()


@app.step
def order_total(order: str) -> int:
    return len(order) * 100


@app.job(name="wait_payment")
def wait_payment(order: str) -> dict[str, Any]:
    """Wait for the signal ``paid:<order>``; return its payload with the order's total."""
    total = order_total(order)
    payload = stepstone.wait_for(f"paid:{order}")
    return {"total": total, "payload": payload}


@app.job(name="nap")
def nap() -> str:
    """Sleep durably for an hour."""
    stepstone.sleep(3600)
    return "rested"


@app.job(name="parent")
def parent(order: str) -> dict[str, Any]:
    """Enqueue ``wait_payment`` as a child job and wait for its result."""
    child = app.enqueue(wait_payment, order)
    result: dict[str, Any] = child.result()
    return result


@cron_app.job(name="nightly_report", cron="0 3 * * *", timezone="Europe/Berlin")
def nightly_report() -> str:
    return "report"
