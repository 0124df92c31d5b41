"""stepstone: background jobs that are safe to retry.

Each step of a job has its result checkpointed in a database (SQLite by default,
PostgreSQL to scale out), so a retried, resumed or re-run job skips what already
finished and never calls an external service twice for the same work.
"""

from __future__ import annotations

from .app import App
from .context import Current, current
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
from .flow import gather, sleep, sleep_until, wait_for
from .handle import AttemptError, Enqueued, JobHandle, StepRecord
from .job import JobDefinition
from .limits import Limit, Rate
from .logs import configure_logging
from .retry import Retry
from .step import StepDefinition, TransactionStep
from .store.base import JobState
from .worker import Worker

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
