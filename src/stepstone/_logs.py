"""Logging set-up for the ``stepstone`` logger: text for people, JSON lines for machines.

stepstone's records carry structured fields as ``extra``: ``action`` on every record, and
``job_id``, ``job``, ``step``, ``attempt`` and ``fence`` when they apply. Both formats
show the fields a record has and leave out the others. Output goes to stderr.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

#: The structured fields of a record, in the order they are shown.
FIELDS = ("job_id", "job", "step", "attempt", "fence")
LEVELS = ("debug", "info", "warning", "error", "critical")
FORMATS = ("text", "json")

_LOGGER = "stepstone"


def _timestamp(record: logging.LogRecord) -> str:
    """The record's time as ISO 8601 in local time, with milliseconds and the UTC offset."""
    seconds = int(record.created)
    millis = int((record.created - seconds) * 1000)
    local = time.localtime(seconds)
    offset = time.strftime("%z", local)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', local)}.{millis:03d}{offset[:3]}:{offset[3:]}"


class TextFormatter(logging.Formatter):
    """``time level action key=value ... message``, one line per record (plus a traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [
            _timestamp(record),
            f"{record.levelname:<7}",
            str(getattr(record, "action", "-")),
        ]
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                parts.append(f"{name}={value}")
        parts.append(record.getMessage())
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        elif record.exc_text:
            line += "\n" + record.exc_text
        return line


class JSONFormatter(logging.Formatter):
    """One JSON object per line: ``time``, ``level``, ``action``, the fields, ``message``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _timestamp(record),
            "level": record.levelname.lower(),
            "action": getattr(record, "action", None),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        entry["message"] = record.getMessage()
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class _StepstoneHandler(logging.StreamHandler[TextIO]):
    """The handler ``configure_logging`` installs (so that calling it again replaces it)."""


def configure_logging(level: str = "info", fmt: str = "text") -> None:
    """Send the ``stepstone`` logger's records at ``level`` and above to stderr.

    ``level`` is one of debug, info, warning, error, critical; ``fmt`` is ``text`` or
    ``json``. Calling it again replaces the earlier set-up. Records stop propagating to
    the root logger, so they are not printed twice.
    """
    name = level.lower()
    if name not in LEVELS:
        raise ValueError(f"unknown log level {level!r}; use one of {', '.join(LEVELS)}")
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r}; use one of {', '.join(FORMATS)}")
    logger = logging.getLogger(_LOGGER)
    for handler in list(logger.handlers):
        if isinstance(handler, _StepstoneHandler):
            logger.removeHandler(handler)
    handler = _StepstoneHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    logger.addHandler(handler)
    logger.setLevel(getattr(logging, name.upper()))
    logger.propagate = False


__all__ = ["FIELDS", "FORMATS", "LEVELS", "JSONFormatter", "TextFormatter", "configure_logging"]
