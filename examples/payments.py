"""Charging a card exactly once, even when the worker dies right after the charge.

A checkpoint is written after a step returns. A worker that dies after the payment API
answered but before the checkpoint was written leaves no trace of the charge in the job's
history: the next worker runs the step again. So the step passes the payment API an
``Idempotency-Key`` that stepstone keeps the same on every attempt and every replay of
that step of that job, and the API (like Stripe's) answers a repeated key with the first
response instead of charging again.

This file holds both sides:

- ``PaymentAPI``: a fake payment API, a real HTTP server (``http.server``, JSON bodies)
  that keeps its charges, its idempotency keys and a log of every request in a SQLite file
  of its own. ``POST /v1/charges`` with ``{"order_id", "amount_cents", "currency"}``
  creates a charge. With an ``Idempotency-Key`` header, the first request with a key
  creates the charge and stores the response; a repeat with the same key and the same body
  gets the stored response (same charge id, header ``Idempotent-Replayed: true``) and
  charges nothing; a repeat with the same key and another body gets 422. ``fail_next(n)``
  makes the next ``n`` requests answer 503 without doing anything.
- ``build_app()``: a stepstone App with a step ``charge(order_id, amount_cents)`` that POSTs
  the charge with ``stepstone.current().idempotency_key``, a step ``send_receipt`` and a
  job ``bill_order(order_id, amount_cents)`` that calls both. ``app`` is the App built
  from the environment: ``$STEPSTONE_DATABASE_URL`` (else ``./stepstone.db``),
  ``$PAYMENTS_API_URL`` (else ``http://127.0.0.1:8765``), ``$PAYMENTS_LEASE`` (seconds,
  else 30).

From the repository root:
    python examples/payments.py                       # a demonstration on a temporary database
    stepstone worker examples.payments:app            # a worker for $STEPSTONE_DATABASE_URL

For the crash test: when ``$PAYMENTS_CRASH_MARKER`` names a file, ``charge``, once the API
has answered and before it returns (so before its checkpoint is written), writes the
charge id to that file and sleeps for a minute, waiting to be killed.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sqlite3
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import stepstone
from stepstone import Permanent, Retry

API_URL_ENV = "PAYMENTS_API_URL"
DEFAULT_API_URL = "http://127.0.0.1:8765"
LEASE_ENV = "PAYMENTS_LEASE"
CRASH_MARKER_ENV = "PAYMENTS_CRASH_MARKER"
#: The name of the billing job.
JOB = "payments.bill_order"
#: How long ``charge`` waits to be killed once it has written the crash marker.
CRASH_WAIT = 60.0

# -----------------------------------------------------------------------------------------
# The fake payment API
# -----------------------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS charges (
    id TEXT PRIMARY KEY, order_id TEXT NOT NULL, amount_cents INTEGER NOT NULL,
    currency TEXT NOT NULL, idempotency_key TEXT, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS idempotency_keys (
    key TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, status INTEGER NOT NULL,
    response TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY, method TEXT NOT NULL, path TEXT NOT NULL, order_id TEXT,
    idempotency_key TEXT, status INTEGER NOT NULL, outcome TEXT NOT NULL, at REAL NOT NULL);
"""


@dataclass(frozen=True)
class Request:
    """One request the API received, as its log recorded it."""

    method: str
    path: str
    order_id: str | None
    idempotency_key: str | None
    status: int
    #: ``created``, ``replayed``, ``key reused`` (422), ``injected failure`` (503),
    #: ``invalid`` (400) or ``not found`` (404).
    outcome: str


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], api: PaymentAPI) -> None:
        super().__init__(address, _Handler)
        self.api = api


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        key = self.headers.get("Idempotency-Key")
        status, body, headers = self.server.api.handle_post(self.path, raw, key)
        self._send(status, body, headers)

    def do_GET(self) -> None:
        if self.path.rstrip("/") != "/v1/charges":
            self._send(404, _error("not_found", f"no such endpoint {self.path}"), {})
            return
        self._send(200, {"data": self.server.api.charges()}, {})

    def _send(self, status: int, body: dict[str, Any], headers: dict[str, str]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # keep the output quiet
        pass


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


class PaymentAPI:
    """A fake payment API on ``http://host:port`` (port 0: any free port), its state in
    the SQLite file ``db_path``. ``start()``/``stop()``, or use it as a context manager."""

    def __init__(self, db_path: str | Path, host: str = "127.0.0.1", port: int = 0) -> None:
        self.db_path = str(db_path)
        self._address = (host, port)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one request at a time changes the database
        self._failures: list[int] = []
        with self._connect() as conn:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.executescript(_SCHEMA)

    # running the server ------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The API's base URL (once started)."""
        if self._server is None:
            raise RuntimeError("the payment API is not running; call start() first")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> PaymentAPI:
        """Serve requests in a background thread."""
        self._server = _Server(self._address, self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            args=(0.05,),
            name="payment-api",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving (the charges stay in the database file)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> PaymentAPI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # failure injection and inspection ----------------------------------------------------
    def fail_next(self, count: int, status: int = 503) -> None:
        """Make the next ``count`` requests answer ``status`` without doing anything."""
        with self._lock:
            self._failures.extend([status] * count)

    def charges(self, order_id: str | None = None) -> list[dict[str, Any]]:
        """The charges made (for one order), oldest first."""
        query = "SELECT id, order_id, amount_cents, currency, created FROM charges"
        params: tuple[Any, ...] = ()
        if order_id is not None:
            query, params = query + " WHERE order_id = ?", (order_id,)
        with self._connect() as conn:
            rows = conn.execute(query + " ORDER BY created, rowid", params).fetchall()
        names = ("id", "order_id", "amount_cents", "currency", "created")
        return [dict(zip(names, row, strict=True)) for row in rows]

    def requests(
        self, *, order_id: str | None = None, idempotency_key: str | None = None
    ) -> list[Request]:
        """The requests received (for one order, or with one key), oldest first."""
        query = "SELECT method, path, order_id, idempotency_key, status, outcome FROM requests"
        clauses, params = [], []
        if order_id is not None:
            clauses.append("order_id = ?")
            params.append(order_id)
        if idempotency_key is not None:
            clauses.append("idempotency_key = ?")
            params.append(idempotency_key)
        if clauses:
            query += " WHERE " + " AND ".join(clauses)
        with self._connect() as conn:
            rows = conn.execute(query + " ORDER BY id", params).fetchall()
        return [Request(*row) for row in rows]

    # handling a request ------------------------------------------------------------------
    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
        try:
            yield conn
        finally:
            conn.close()

    def handle_post(
        self, path: str, raw: bytes, key: str | None
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        """Answer one POST: (status, JSON body, extra headers). Every request is logged."""
        with self._lock, self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                status, body, headers, order_id, outcome = self._post(conn, path, raw, key)
                conn.execute(
                    "INSERT INTO requests (method, path, order_id, idempotency_key, status, "
                    "outcome, at) VALUES ('POST', ?, ?, ?, ?, ?, ?)",
                    (path, order_id, key, status, outcome, time.time()),
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return status, body, headers

    def _post(
        self, conn: sqlite3.Connection, path: str, raw: bytes, key: str | None
    ) -> tuple[int, dict[str, Any], dict[str, str], str | None, str]:
        try:
            params = json.loads(raw or b"{}")
        except ValueError:
            params = None
        order_id = params.get("order_id") if isinstance(params, dict) else None
        order_id = order_id if isinstance(order_id, str) else None
        if self._failures:
            status = self._failures.pop(0)
            message = "the payment API is unavailable, try again"
            return status, _error("unavailable", message), {}, order_id, "injected failure"
        if path.rstrip("/") != "/v1/charges":
            return 404, _error("not_found", f"no such endpoint {path}"), {}, order_id, "not found"
        amount = params.get("amount_cents") if isinstance(params, dict) else None
        if order_id is None or type(amount) is not int or amount <= 0:
            message = "give order_id (a string) and amount_cents (a positive integer)"
            return 400, _error("invalid_request", message), {}, order_id, "invalid"
        assert isinstance(params, dict)
        currency = str(params.get("currency", "usd"))
        fingerprint = hashlib.sha256(
            json.dumps([path, params], sort_keys=True).encode()
        ).hexdigest()
        if key is not None:
            row = conn.execute(
                "SELECT fingerprint, status, response FROM idempotency_keys WHERE key = ?",
                (key,),
            ).fetchone()
            if row is not None:
                if row[0] != fingerprint:
                    message = (
                        f"Idempotency-Key {key} was used by an earlier request with other "
                        "parameters; use a new key for a new request"
                    )
                    error = _error("idempotency_key_reused", message)
                    return 422, error, {}, order_id, "key reused"
                replayed = {"Idempotent-Replayed": "true"}
                return row[1], json.loads(row[2]), replayed, order_id, "replayed"
        now = time.time()
        charge = {
            "id": "ch_" + secrets.token_hex(8),
            "object": "charge",
            "order_id": order_id,
            "amount_cents": amount,
            "currency": currency,
            "created": now,
        }
        conn.execute(
            "INSERT INTO charges (id, order_id, amount_cents, currency, idempotency_key, "
            "created) VALUES (?, ?, ?, ?, ?, ?)",
            (charge["id"], order_id, amount, currency, key, now),
        )
        if key is not None:
            conn.execute(
                "INSERT INTO idempotency_keys (key, fingerprint, status, response, created) "
                "VALUES (?, ?, 200, ?, ?)",
                (key, fingerprint, json.dumps(charge), now),
            )
        return 200, charge, {}, order_id, "created"


# -----------------------------------------------------------------------------------------
# The client: what a step calls
# -----------------------------------------------------------------------------------------


class PaymentUnavailable(ConnectionError):
    """The payment API answered 5xx: worth retrying (with the same idempotency key)."""


class PaymentRejected(Permanent):
    """The payment API refused the request (4xx): retrying will not help."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


def api_url() -> str:
    """The payment API's base URL: ``$PAYMENTS_API_URL``, else ``http://127.0.0.1:8765``."""
    return os.environ.get(API_URL_ENV) or DEFAULT_API_URL


def create_charge(
    order_id: str,
    amount_cents: int,
    *,
    idempotency_key: str | None,
    base_url: str | None = None,
    currency: str = "usd",
) -> dict[str, Any]:
    """POST a charge to the payment API; the charge (with its ``id``) as the API returns it.

    Raises ``PaymentUnavailable`` on a 5xx answer and ``PaymentRejected`` on a 4xx one.
    """
    body = {"order_id": order_id, "amount_cents": amount_cents, "currency": currency}
    headers = {"Content-Type": "application/json"}
    if idempotency_key is not None:
        headers["Idempotency-Key"] = idempotency_key
    request = urllib.request.Request(
        f"{base_url or api_url()}/v1/charges",
        data=json.dumps(body).encode(),
        headers=headers,
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            charge: dict[str, Any] = json.load(response)
            return charge
    except urllib.error.HTTPError as exc:
        try:
            message = json.load(exc)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = exc.reason
        if exc.code >= 500:
            raise PaymentUnavailable(f"payment API answered {exc.code}: {message}") from None
        raise PaymentRejected(exc.code, message) from None


# -----------------------------------------------------------------------------------------
# The stepstone app
# -----------------------------------------------------------------------------------------

#: The payment API is sometimes down for a moment: retry the charge quickly, with the same key.
API_RETRY = Retry(max_attempts=5, initial=0.1, factor=2.0, max_delay=2.0)


def build_app(
    url: str | None = None, *, lease: float | None = None, base_url: str | None = None
) -> stepstone.App:
    """The billing App on database ``url`` (None: ``$STEPSTONE_DATABASE_URL``), calling the
    payment API at ``base_url`` (None: ``$PAYMENTS_API_URL`` when the step runs)."""
    if lease is None:
        lease = float(os.environ.get(LEASE_ENV, "30"))
    app = stepstone.App(url, lease=lease)

    @app.step(retry=API_RETRY)
    def charge(order_id: str, amount_cents: int) -> str:
        # The same key on every attempt of this step, and on a run that replays this job
        # after its worker died: the API charges once, however often we ask.
        key = stepstone.current().idempotency_key
        result = create_charge(order_id, amount_cents, idempotency_key=key, base_url=base_url)
        crash_point(result["id"])  # the crash test kills the worker here, when it asks to
        return str(result["id"])

    @app.step
    def send_receipt(order_id: str, charge_id: str) -> str:
        stepstone.current().logger.info("receipt for order %s: charge %s", order_id, charge_id)
        return f"receipt for {order_id}: {charge_id}"

    @app.job(name=JOB, retry=Retry(max_attempts=3, initial=0.2))
    def bill_order(order_id: str, amount_cents: int) -> dict[str, str]:
        charge_id = charge(order_id, amount_cents)
        receipt = send_receipt(order_id, charge_id)
        return {"order_id": order_id, "charge_id": charge_id, "receipt": receipt}

    return app


def crash_point(charge_id: str) -> None:
    """For the crash test: with ``$PAYMENTS_CRASH_MARKER`` set, say that the API has charged
    (write the charge id to that file) and wait to be killed before the step returns, that
    is before its checkpoint is written. Without it, nothing."""
    marker = os.environ.get(CRASH_MARKER_ENV)
    if not marker:
        return
    partial = Path(marker + ".partial")  # the marker appears complete or not at all
    partial.write_text(charge_id)
    os.replace(partial, marker)
    time.sleep(CRASH_WAIT)


#: The App a worker runs: ``stepstone worker examples.payments:app``.
app = build_app()


def demo() -> None:
    """Bill one order while the payment API fails twice, then ask again with the same key."""
    with tempfile.TemporaryDirectory() as tmp, PaymentAPI(Path(tmp) / "payments.db") as api:
        billing = build_app(f"sqlite:///{tmp}/stepstone.db", lease=5.0, base_url=api.url)
        try:
            print(f"payment API on {api.url}; the next 2 requests will answer 503")
            api.fail_next(2)
            handle = billing.enqueue(JOB, "order-1001", 4200)
            billing.run_worker(until_idle=True)
            print(f"job {handle.state}: {handle.result(timeout=5)}")
            for step in handle.steps():
                print(f"  step {step.name}: {step.attempts} attempt(s) -> {step.value}")
            for request in api.requests(order_id="order-1001"):
                print(f"  API: {request.status} {request.outcome}, key {request.idempotency_key}")

            # A worker that died after the charge, before the checkpoint, asks again with
            # the same key: the API answers with the same charge and charges nothing.
            key = api.requests(order_id="order-1001")[-1].idempotency_key
            again = create_charge("order-1001", 4200, idempotency_key=key, base_url=api.url)
            print(f"the same request again, same key: charge {again['id']}")
            try:
                create_charge("order-1001", 9900, idempotency_key=key, base_url=api.url)
            except PaymentRejected as exc:
                print(f"the same key with another amount: rejected ({exc})")
            print(f"charges for order-1001: {len(api.charges('order-1001'))}")
        finally:
            billing.close()


if __name__ == "__main__":
    demo()
