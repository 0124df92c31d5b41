"""Cron schedules: a job declared with ``cron=`` is enqueued once per tick.

Every worker that serves the job keeps its schedule going: it makes sure the job of the
next tick is enqueued (due at the tick, so ``stepstone jobs`` shows when it runs next) and
records that tick in the store. The tick is part of the job key (``cron:<name>:<tick>``),
so however many workers do this at once, each tick is enqueued once. When a tick comes
due, a worker enqueues the one after it and moves the recorded tick on (conditionally,
so one worker wins). Ticks that passed while no worker ran are handled per ``missed``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from datetime import UTC, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from .errors import StepstoneError

#: How many missed ticks ``missed="all"`` enqueues at most after a long outage.
MAX_CATCH_UP = 1000
MISSED_POLICIES = ("latest", "all", "skip")


class Schedule:
    """A job's cron expression, its time zone and what to do with missed ticks."""

    def __init__(
        self,
        expression: str,
        *,
        timezone: str | tzinfo | None,
        missed: str,
        fn: Callable[..., Any],
        name: str,
    ) -> None:
        self.expression = expression
        self.name = name
        if missed not in MISSED_POLICIES:
            raise ValueError(f"missed= must be one of {MISSED_POLICIES}, not {missed!r}")
        self.missed = missed
        if timezone is None:
            self.timezone: tzinfo = UTC
        elif isinstance(timezone, str):
            try:
                self.timezone = ZoneInfo(timezone)
            except (ZoneInfoNotFoundError, ValueError) as exc:
                raise ValueError(
                    f"job {name}: unknown time zone {timezone!r} (use an IANA name such as "
                    "'Europe/Berlin' or 'UTC')"
                ) from exc
        else:
            self.timezone = timezone
        try:
            CronSim(expression, datetime.now(self.timezone))
        except CronSimError as exc:
            raise ValueError(
                f"job {name}: {expression!r} is not a cron expression ({exc}); write five "
                "fields, minute hour day-of-month month day-of-week, such as '*/5 * * * *'"
            ) from exc
        try:
            inspect.signature(fn).bind()
        except TypeError as exc:
            raise StepstoneError(
                f"cron job {name} must be callable with no arguments (each tick enqueues it "
                f"with none): {exc}"
            ) from exc

    def next_after(self, moment: float) -> float:
        """The first tick strictly after ``moment`` (epoch seconds)."""
        start = datetime.fromtimestamp(moment, self.timezone)
        for tick in CronSim(self.expression, start):
            if tick.timestamp() > moment:
                return tick.timestamp()
        raise StepstoneError(f"cron expression {self.expression!r} has no next tick")

    def ticks_between(self, after: float, until: float, limit: int) -> list[float]:
        """The ticks strictly after ``after`` and at or before ``until``, at most ``limit``."""
        found: list[float] = []
        for tick in CronSim(self.expression, datetime.fromtimestamp(after, self.timezone)):
            moment = tick.timestamp()
            if moment <= after:
                continue
            if moment > until or len(found) >= limit:
                break
            found.append(moment)
        return found

    def latest_at_or_before(self, moment: float) -> float:
        """The last tick at or before ``moment``."""
        start = datetime.fromtimestamp(math.floor(moment) + 1, self.timezone)
        return next(CronSim(self.expression, start, reverse=True)).timestamp()

    def key(self, tick: float) -> str:
        """The job key of one tick: the same in every worker."""
        when = datetime.fromtimestamp(tick, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return f"cron:{self.name}:{when}"


__all__ = ["MAX_CATCH_UP", "MISSED_POLICIES", "Schedule"]
