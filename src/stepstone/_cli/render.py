"""What the commands print: rich consoles, messages, job states, stored JSON and errors, and
times said relative to now. rich is imported inside the functions, only when a command runs."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

_STATE_STYLES = {
    "queued": "cyan",
    "running": "yellow",
    "waiting": "blue",
    "succeeded": "green",
    "failed": "red",
    "cancelled": "magenta",
}


def console(*, stderr: bool = False) -> Console:
    """A rich console; wide when writing to a pipe, so tables are not squeezed to 80 columns."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    width = None if "COLUMNS" in os.environ or stream.isatty() else 160
    return Console(stderr=stderr, width=width, highlight=False)


def say(text: str, style: str | None = None) -> None:
    """Print one message to stdout."""
    from rich.text import Text

    console().print(Text(text, style=style or ""))


def error(message: str, detail: str | None = None) -> None:
    """Print ``error: message`` to stderr, after ``detail`` (a traceback) if there is one."""
    from rich.text import Text

    err = console(stderr=True)
    if detail:
        err.print(Text(detail.rstrip(), style="dim"))
    err.print(Text(f"error: {message}", style="bold red"))


def truncate(text: str, limit: int) -> str:
    """``text`` on one line, cut to ``limit`` characters with an ellipsis."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def span(seconds: float) -> str:
    """``12s``, ``3m05s``, ``1h30m``, ``7d``: the largest unit, and the next one if not zero."""
    total = round(seconds)
    for unit, size, smaller, small_size in (
        ("d", 86400, "h", 3600),
        ("h", 3600, "m", 60),
        ("m", 60, "s", 1),
    ):
        if total >= size:
            rest = total % size // small_size
            return f"{total // size}{unit}" + (f"{rest:02d}{smaller}" if rest else "")
    return f"{total}s"


def relative_time(when: float | None, now: float) -> str:
    """``in 3s``, ``12s ago``, ``now``, or ``-`` for no time."""
    if when is None:
        return "-"
    delta = when - now
    if abs(delta) < 0.5:
        return "now"
    return f"in {span(delta)}" if delta > 0 else f"{span(-delta)} ago"


def absolute_time(when: float | None, now: float) -> str:
    """``2024-05-01 12:00:00 (3m ago)``, or ``-`` for no time."""
    if when is None:
        return "-"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when))
    return f"{stamp} ({relative_time(when, now)})"


def error_summary(text: str | None, limit: int = 60) -> str:
    """``Type: message`` of a stored error record, truncated."""
    if not text:
        return ""
    try:
        record = json.loads(text)
    except ValueError:
        return truncate(text, limit)
    if not isinstance(record, dict):
        return truncate(text, limit)
    kind = str(record.get("type") or "Error").rsplit(".", 1)[-1]
    message = str(record.get("message") or "")
    return truncate(f"{kind}: {message}" if message else kind, limit)


def state_text(state: str) -> Any:
    """A job or step state, coloured by what it means."""
    from rich.text import Text

    return Text(state, style=_STATE_STYLES.get(state, ""))


def json_view(text: str) -> Any:
    """Stored JSON, pretty-printed (as it is, if it does not parse)."""
    from rich.json import JSON
    from rich.text import Text

    try:
        return JSON(text)
    except ValueError:
        return Text(text)


__all__ = [
    "absolute_time",
    "console",
    "error",
    "error_summary",
    "json_view",
    "relative_time",
    "say",
    "span",
    "state_text",
    "truncate",
]
