"""How a ``stepstone`` command ends: its exit codes, and the error for a command line that
cannot work."""

from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """A command line that cannot work; printed as one line, exit code 2."""

    def __init__(self, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.detail = detail


__all__ = ["EXIT_ERROR", "EXIT_OK", "EXIT_USAGE", "UsageError"]
