"""Reaching PostgreSQL: the URL, the connection pool and the retry loop every operation
runs in, and the translation of driver errors into stepstone's.

A dropped connection or a restarting server is retried with backoff for a while
(``retry_seconds``); a write is told when an earlier try may have committed before its
connection broke, so it can recognise its own work.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

from ...errors import StepstoneError, StoreError

try:
    import psycopg
    from psycopg.conninfo import conninfo_to_dict
    from psycopg_pool import ConnectionPool, PoolTimeout
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise StoreError(
        "the PostgreSQL store needs psycopg 3 and psycopg_pool: pip install 'stepstone[postgres]'"
    ) from exc

T = TypeVar("T")
Row = dict[str, Any]
logger = logging.getLogger("stepstone")

#: What libpq says when the server is away for now rather than the URL being wrong.
_SERVER_AWAY = ("Connection refused", "starting up", "shutting down", "in recovery")

OWN_TRANSACTION = (
    "a transactional step must not commit or roll back its connection: stepstone commits "
    "the step's writes together with its checkpoint when the function returns, and rolls "
    "them back if it raises"
)


def split_url(url: str) -> tuple[str, str | None]:
    """The libpq URL without stepstone's own ``schema`` parameter, and that parameter.

    The other parameters are kept exactly as written (percent-encoding included).
    """
    parts = urlsplit(url)
    kept: list[str] = []
    schema = None
    for pair in parts.query.split("&") if parts.query else []:
        name, _, value = pair.partition("=")
        if name == "schema":
            schema = unquote(value)
        else:
            kept.append(pair)
    return urlunsplit(parts._replace(query="&".join(kept))), schema


def quote_identifier(name: str) -> str:
    """``name`` as a quoted SQL identifier."""
    if not name or "\x00" in name:
        raise StoreError(f"invalid PostgreSQL schema name {name!r}")
    return '"' + name.replace('"', '""') + '"'


class StepConnection(psycopg.Connection[Any]):
    """The pool's connection type: while a transactional step runs on it, its transaction
    belongs to stepstone, so ``commit()`` and ``rollback()`` are refused."""

    in_step = False

    def commit(self) -> None:
        if self.in_step:
            raise StepstoneError(OWN_TRANSACTION)
        super().commit()

    def rollback(self) -> None:
        if self.in_step:
            raise StepstoneError(OWN_TRANSACTION)
        super().rollback()


def connect_kwargs(
    conninfo: str, application_name: str, idle_transaction_timeout: float
) -> dict[str, Any]:
    """The options every connection of the store is opened with (beyond the URL's own)."""
    kwargs: dict[str, Any] = {}
    if "application_name" not in conninfo:
        kwargs["application_name"] = application_name
    # A worker frozen inside one of the store's short transactions (SIGSTOP, a VM pause)
    # would hold its row locks for as long as it is frozen: the server ends such a session
    # instead, and the frozen worker's fenced writes fail on resume.
    given = str(conninfo_to_dict(conninfo).get("options") or "")
    if "idle_in_transaction_session_timeout" not in given:
        own = f"-c idle_in_transaction_session_timeout={int(idle_transaction_timeout * 1000)}"
        kwargs["options"] = f"{given} {own}".strip()
    return kwargs


def check_connection(url: str, conninfo: str, timeout: float, kwargs: dict[str, Any]) -> None:
    """Connect once up front, so that a wrong URL fails now with the server's reason.

    A server that is down, starting or shutting down gives a *transient* StoreError, which
    a starting worker waits out; a wrong URL, database or role does not.
    """
    try:
        with psycopg.connect(conninfo, connect_timeout=int(timeout), **kwargs):
            return
    except psycopg.Error as exc:
        reason = str(exc).strip()
        error = StoreError(f"cannot connect to PostgreSQL at {url}: {reason}")
        error.transient = any(sign in reason for sign in _SERVER_AWAY)
        raise error from exc


class Connected:
    """The pool of a store and the retry loop its operations run in."""

    url: str
    retry_seconds: float
    _pool: ConnectionPool[StepConnection]
    _closed: bool

    def _run(self, operation: Callable[[psycopg.Connection[Row], bool], T]) -> T:
        """Run ``operation(conn, retried)`` on a pooled connection, retrying lost connections.

        ``retried`` tells a write that an earlier try may have committed before its
        connection broke, so that it can recognise its own work.
        """
        deadline = time.monotonic() + self.retry_seconds
        delay = 0.05
        retried = False
        while True:
            try:
                with self._pool.connection() as conn:
                    return operation(conn, retried)
            except StepstoneError:
                raise
            except (psycopg.OperationalError, PoolTimeout) as exc:
                if self._closed or time.monotonic() + delay > deadline:
                    raise StoreError(
                        f"PostgreSQL at {self.url} is unreachable: {str(exc).strip()}"
                    ) from exc
                logger.warning(
                    "database connection failed (%s); retrying in %.2fs",
                    str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
                    delay,
                    extra={"action": "store.reconnecting"},
                )
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
                retried = True
                # Connections cut in the same event wait idle in the pool: drop them now,
                # or each retry would draw another dead one.
                self._pool.check()
            except psycopg.Error as exc:
                raise StoreError(f"PostgreSQL error: {str(exc).strip()}") from exc


__all__ = [
    "OWN_TRANSACTION",
    "Connected",
    "Row",
    "StepConnection",
    "check_connection",
    "connect_kwargs",
    "quote_identifier",
    "split_url",
]
