"""The exceptions stepstone raises, and the two control-flow signals it uses.

An exception's docstring is its default message. Control flow (``Suspend``) is
kept apart from the error tree and derives from ``BaseException`` so that a
user's ``except Exception`` cannot swallow it.
"""

from __future__ import annotations

from typing import Any


class StepstoneError(Exception):
    """A stepstone operation failed."""

    def __init__(self, message: str | None = None, *args: Any) -> None:
        super().__init__(message or (self.__doc__ or "").strip(), *args)


class KeyConflict(StepstoneError):
    """This key is already taken by a job with other arguments."""

    #: With ``enqueue_many``: the position of the conflicting item in ``items``.
    index: int | None = None


class JobNotFound(StepstoneError, LookupError):
    """No job matches this id or key."""


class UnknownJob(StepstoneError, LookupError):
    """No job with this name is registered in this process."""


class NonDeterminism(StepstoneError):
    """The job called its steps in a different order than its stored history."""


class InvalidKey(StepstoneError, ValueError):
    """A job key or memo key that cannot be used: too long, empty, or a template naming an
    argument the function does not have."""


class SerializationError(StepstoneError, TypeError):
    """A value cannot be stored as JSON."""


class LeaseLost(StepstoneError):
    """This worker no longer owns the job: another worker claimed it, or it was released."""


class StoreError(StepstoneError):
    """The database could not be used."""

    #: True when the database is away for now (down, restarting) rather than misnamed.
    transient: bool = False


class JobFailed(StepstoneError):
    """The job failed."""


class JobCancelled(StepstoneError):
    """The job was cancelled."""


class WaitTimeout(StepstoneError, TimeoutError):
    """No signal arrived (or the awaited job did not finish) before the timeout."""


class JobTimeout(StepstoneError, TimeoutError):
    """The job ran past its ``timeout=`` (counted from its first start, across attempts,
    replays and restarts). It is not retried."""


class StepTimeout(StepstoneError, TimeoutError):
    """A sync step ran past its ``timeout=``: its attempt was abandoned (the thread cannot
    be interrupted) and the job attempt failed."""


class Permanent(Exception):
    """Raise it (or a subclass) to fail a step or job without retrying it."""


class StoredError(StepstoneError):
    """A stand-in for an error recorded by an earlier run whose class cannot be rebuilt here."""

    def __init__(self, type_name: str, message: str, traceback: str | None = None) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.error_message = message
        self.remote_traceback = traceback


class PermanentStoredError(StoredError, Permanent):
    """A stand-in for a recorded ``Permanent`` error whose class cannot be rebuilt here."""


class Suspend(BaseException):
    """Control flow: park the running job; the worker resumes it later. Not an error.

    It derives from ``BaseException`` so that ``except Exception`` in a job does not catch
    it. The job waits until ``until`` (epoch seconds), or until ``event`` is signalled
    (newer than signal ``signal_after``), or until job ``child`` finishes.
    """

    def __init__(
        self,
        reason: str,
        *,
        until: float,
        event: str | None = None,
        signal_after: int = 0,
        child: str | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.until = until
        self.event = event
        self.signal_after = signal_after
        self.child = child


__all__ = [
    "InvalidKey",
    "JobCancelled",
    "JobFailed",
    "JobNotFound",
    "JobTimeout",
    "KeyConflict",
    "LeaseLost",
    "NonDeterminism",
    "Permanent",
    "PermanentStoredError",
    "SerializationError",
    "StepTimeout",
    "StepstoneError",
    "StoreError",
    "StoredError",
    "Suspend",
    "UnknownJob",
    "WaitTimeout",
]
