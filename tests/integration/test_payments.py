"""The payments example: a worker killed after the payment API charged, before the step's
checkpoint was written, does not charge the customer twice, because the retried step sends
the same ``Idempotency-Key`` and the API answers with the first charge.

The fake payment API (``examples/payments.py``) runs in the test process on a free port;
the workers are real ``stepstone worker examples.payments:app`` processes that call it over
HTTP.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import paymentsapp
import pytest
from examples import payments
from tests.conftest import INTEGRATION, SRC
from waiting import wait_for

from stepstone import JobHandle

#: The repository root, so a worker process can import ``examples.payments``.
ROOT = Path(payments.__file__).resolve().parent.parent
#: The lease of the worker that is killed: its job is taken over a second or two after it
#: died. The worker that takes over holds its own claim longer, so that a heartbeat late on a
#: loaded machine cannot lose it the job (and make it ask the API a third time).
KILLED_LEASE = 2.0
SURVIVOR_LEASE = 5.0


class PaymentsWorker:
    """A ``stepstone worker examples.payments:app`` process; its stderr goes to a file."""

    def __init__(self, popen: subprocess.Popen[bytes], stderr_path: Path) -> None:
        self.popen = popen
        self.stderr_path = stderr_path

    def signal(self, sig: int) -> None:
        self.popen.send_signal(sig)

    def wait(self, timeout: float = 15.0) -> int:
        return self.popen.wait(timeout)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


@pytest.fixture
def payment_api(tmp_path: Path) -> Iterator[payments.PaymentAPI]:
    """The fake payment API on a free port, its charges in a SQLite file of its own."""
    with payments.PaymentAPI(tmp_path / "payments.db") as api:
        yield api


@pytest.fixture
def spawn_payments_worker(
    db_url: str, tmp_path: Path, payment_api: payments.PaymentAPI
) -> Iterator[Callable[..., PaymentsWorker]]:
    """Start worker processes of the payments app on this test's database, calling this
    test's payment API; any still alive at teardown is killed.

    ``spawn(app_spec="examples.payments:app", lease=, crash_marker=None, until_idle=False)``:
    with ``crash_marker``, the charge step writes that file once the API has charged and
    then waits to be killed.
    """
    started: list[PaymentsWorker] = []

    def spawn(
        app_spec: str = "examples.payments:app",
        *,
        lease: float,
        crash_marker: Path | None = None,
        until_idle: bool = False,
    ) -> PaymentsWorker:
        env = dict(os.environ)
        env.pop(payments.CRASH_MARKER_ENV, None)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(SRC), str(ROOT), str(INTEGRATION), *filter(None, [env.get("PYTHONPATH")])]
        )
        env.update(
            STEPSTONE_DATABASE_URL=db_url,
            PAYMENTS_API_URL=payment_api.url,
            PAYMENTS_LEASE=str(lease),
        )
        if crash_marker is not None:
            env[payments.CRASH_MARKER_ENV] = str(crash_marker)
        command = [sys.executable, "-m", "stepstone", "worker", app_spec]
        command += ["--concurrency", "1", *(["--until-idle"] if until_idle else [])]
        stderr_path = tmp_path / f"payments-worker-{len(started)}.stderr"
        with stderr_path.open("wb") as stderr:
            popen = subprocess.Popen(
                command,
                env=env,
                cwd=tmp_path,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        started.append(PaymentsWorker(popen, stderr_path))
        return started[-1]

    yield spawn
    for worker in started:
        if worker.popen.poll() is None:
            worker.popen.kill()
            worker.popen.wait(10)


def kill_after_the_charge(
    spawn: Callable[..., PaymentsWorker],
    app_spec: str,
    handle: JobHandle,
    api: payments.PaymentAPI,
    marker: Path,
) -> str:
    """Start a worker of ``app_spec`` that stops in its charge step once the API has
    charged (the step's checkpoint not yet written), SIGKILL it there, then let a second
    worker take the job over and finish it. The id of the charge made before the kill."""
    first = spawn(app_spec, lease=KILLED_LEASE, crash_marker=marker)
    wait_for(marker.exists, timeout=30, what="the first worker to charge the card")
    charged_before_the_kill = marker.read_text()
    first.signal(signal.SIGKILL)
    assert first.wait() == -signal.SIGKILL
    # Not finished: running (or queued, if the dying worker's heartbeat came so late that
    # its own rescue released the job), and the charge was made but never checkpointed.
    assert handle.state in ("running", "queued")
    assert handle.steps() == []
    assert [c["id"] for c in api.charges()] == [charged_before_the_kill]
    # A second worker takes the job over once the first one's lease has expired.
    second = spawn(app_spec, lease=SURVIVOR_LEASE, until_idle=True)
    assert second.wait(timeout=30) == 0, second.stderr()
    return charged_before_the_kill


def test_worker_killed_after_the_charge_does_not_charge_twice(
    db_url: str,
    tmp_path: Path,
    payment_api: payments.PaymentAPI,
    spawn_payments_worker: Callable[..., PaymentsWorker],
) -> None:
    """SIGKILL the worker after the API charged the card but before the ``charge`` step's
    checkpoint was written: a second worker runs the step again, the API receives the
    charge twice with the same Idempotency-Key, and holds exactly one charge, the one the
    job returns."""
    app = payments.build_app(db_url)
    handle = app.enqueue(payments.JOB, "order-1", 4200)

    charged = kill_after_the_charge(
        spawn_payments_worker, "examples.payments:app", handle, payment_api, tmp_path / "charged"
    )

    result = handle.result(timeout=5)
    charges = payment_api.charges("order-1")
    assert len(charges) == 1
    assert result["charge_id"] == charges[0]["id"] == charged
    requests = payment_api.requests(order_id="order-1")
    assert [(r.status, r.outcome) for r in requests] == [(200, "created"), (200, "replayed")]
    keys = {r.idempotency_key for r in requests}
    assert len(keys) == 1
    assert None not in keys
    assert [(s.name, s.attempts) for s in handle.steps()] == [
        ("charge#0", 1),
        ("send_receipt#0", 1),
    ]
    assert handle.attempts == 1  # resumed after the crash, not retried


def test_control_without_the_key_the_killed_worker_charges_twice(
    db_url: str,
    tmp_path: Path,
    payment_api: payments.PaymentAPI,
    spawn_payments_worker: Callable[..., PaymentsWorker],
) -> None:
    """The control: the same crash with a charge step that sends no Idempotency-Key (the
    step's checkpoint alone cannot help: it was never written) charges the card twice."""
    app = paymentsapp.build_app(db_url)
    handle = app.enqueue(paymentsapp.JOB, "order-5", 4200)

    charged = kill_after_the_charge(
        spawn_payments_worker, "paymentsapp:app", handle, payment_api, tmp_path / "charged"
    )

    result = handle.result(timeout=5)
    charges = [c["id"] for c in payment_api.charges("order-5")]
    assert len(charges) == 2
    assert charges == [charged, result["charge_id"]]
    requests = payment_api.requests(order_id="order-5")
    assert [(r.status, r.outcome, r.idempotency_key) for r in requests] == [
        (200, "created", None),
        (200, "created", None),
    ]


def test_transient_api_failures_are_retried_and_charge_once(
    db_url: str, payment_api: payments.PaymentAPI
) -> None:
    """The API answers 503 twice: the ``charge`` step is retried with the same key and
    the customer is charged once."""
    app = payments.build_app(db_url, lease=5.0, base_url=payment_api.url)
    payment_api.fail_next(2)
    handle = app.enqueue(payments.JOB, "order-2", 1999)

    app.run_worker(concurrency=1, until_idle=True)

    result = handle.result(timeout=5)
    charges = payment_api.charges("order-2")
    assert [c["id"] for c in charges] == [result["charge_id"]]
    assert charges[0]["amount_cents"] == 1999
    requests = payment_api.requests(order_id="order-2")
    assert [(r.status, r.outcome) for r in requests] == [
        (503, "injected failure"),
        (503, "injected failure"),
        (200, "created"),
    ]
    assert len({r.idempotency_key for r in requests}) == 1
    assert requests[0].idempotency_key is not None
    assert [(s.name, s.attempts) for s in handle.steps()] == [
        ("charge#0", 3),
        ("send_receipt#0", 1),
    ]


def test_without_an_idempotency_key_a_repeated_request_charges_twice(
    payment_api: payments.PaymentAPI,
) -> None:
    """The control: what the second worker's request does without the header. Two POSTs
    of the same charge without a key make two charges; with one key, one charge, and the
    repeat gets the first response; the key with another body is refused."""
    url = payment_api.url
    first = payments.create_charge("order-3", 500, idempotency_key=None, base_url=url)
    second = payments.create_charge("order-3", 500, idempotency_key=None, base_url=url)
    assert first["id"] != second["id"]
    assert len(payment_api.charges("order-3")) == 2

    first = payments.create_charge("order-4", 500, idempotency_key="key-4", base_url=url)
    second = payments.create_charge("order-4", 500, idempotency_key="key-4", base_url=url)
    assert first == second
    assert len(payment_api.charges("order-4")) == 1

    with pytest.raises(payments.PaymentRejected) as rejected:
        payments.create_charge("order-4", 999, idempotency_key="key-4", base_url=url)
    assert rejected.value.status == 422
    assert len(payment_api.charges("order-4")) == 1
    assert [(r.status, r.outcome) for r in payment_api.requests(idempotency_key="key-4")] == [
        (200, "created"),
        (200, "replayed"),
        (422, "key reused"),
    ]
