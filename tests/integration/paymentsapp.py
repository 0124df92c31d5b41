"""The control of the payments crash test (``paymentsapp:app``): the billing job of
``examples/payments.py`` with a ``charge`` step that sends no ``Idempotency-Key``.

Everything else is the example's: the payment API client, the retry policy, the crash
point (``$PAYMENTS_CRASH_MARKER``), the database (``$STEPSTONE_DATABASE_URL``), the API's
URL (``$PAYMENTS_API_URL``) and the lease (``$PAYMENTS_LEASE``).
"""

from __future__ import annotations

import os

from examples import payments

from stepstone import App

JOB = "paymentsapp.bill_order_without_key"


def build_app(url: str | None = None, *, lease: float | None = None) -> App:
    """An App declaring the job whose charge step sends no idempotency key."""
    if lease is None:
        lease = float(os.environ.get(payments.LEASE_ENV, "30"))
    app = App(url, lease=lease)

    @app.step(name="charge_without_key", retry=payments.API_RETRY)
    def charge(order_id: str, amount_cents: int) -> str:
        result = payments.create_charge(order_id, amount_cents, idempotency_key=None)
        payments.crash_point(result["id"])
        return str(result["id"])

    @app.job(name=JOB)
    def bill_order_without_key(order_id: str, amount_cents: int) -> dict[str, str]:
        return {"order_id": order_id, "charge_id": charge(order_id, amount_cents)}

    return app


app = build_app()
