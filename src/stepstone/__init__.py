"""stepstone: background jobs that are safe to retry.

Each step of a job has its result checkpointed in a database (SQLite by default,
PostgreSQL to scale out), so a retried, resumed or re-run job skips what already
finished and never calls an external service twice for the same work.
"""

from __future__ import annotations

from ._app import App
from ._context import Current, current
from ._flow import gather, sleep, sleep_until, wait_for
from ._handle import AttemptError, Enqueued, JobHandle, StepRecord
from ._job import JobDefinition
from ._limits import Limit, Rate
from ._logs import configure_logging
from ._retry import Retry
from ._step import StepDefinition, TransactionStep
from ._store.base import JobState
from ._worker import Worker
from .errors import (
    InvalidKey,
    JobCancelled,
    JobFailed,
    JobNotFound,
    JobTimeout,
    KeyConflict,
    LeaseLost,
    NonDeterminism,
    Permanent,
    SerializationError,
    StepstoneError,
    StepTimeout,
    StoredError,
    StoreError,
    UnknownJob,
    WaitTimeout,
)

__version__ = "0.1.0"

__all__ = [
    "App",
    "AttemptError",
    "Current",
    "Enqueued",
    "InvalidKey",
    "JobCancelled",
    "JobDefinition",
    "JobFailed",
    "JobHandle",
    "JobNotFound",
    "JobState",
    "JobTimeout",
    "KeyConflict",
    "Limit",
    "LeaseLost",
    "NonDeterminism",
    "Permanent",
    "Rate",
    "Retry",
    "SerializationError",
    "StepDefinition",
    "StepRecord",
    "StepTimeout",
    "StepstoneError",
    "StoreError",
    "StoredError",
    "TransactionStep",
    "UnknownJob",
    "WaitTimeout",
    "Worker",
    "__version__",
    "configure_logging",
    "current",
    "gather",
    "sleep",
    "sleep_until",
    "wait_for",
]
