"""Jobs: the functions a worker runs durably. The decorated function stays callable."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from ._limits import Limit, limit_key
from ._retry import Retry
from ._serialization import ArgumentCodec

if TYPE_CHECKING:
    from ._schedule import Schedule

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_QUEUE = "default"


class JobDefinition(Generic[P, R]):
    """A declared job: its name, queue, retry policy and how to encode its arguments."""

    def __init__(
        self,
        fn: Callable[P, R],
        *,
        name: str,
        queue: str,
        retry: Retry,
        priority: int,
        timeout: float | None,
        localns: dict[str, Any] | None = None,
        concurrency: Limit | None = None,
        schedule: Schedule | None = None,
    ) -> None:
        self.fn = fn
        self.name = name
        self.queue = queue
        self.retry = retry
        self.priority = priority
        #: The job's deadline in seconds, counted from its first start (None: no limit).
        self.timeout = timeout
        self.concurrency = concurrency
        self.schedule = schedule
        self.is_async = inspect.iscoroutinefunction(fn)
        self.codec = ArgumentCodec(fn, localns=localns)
        self._limit_key = limit_key(concurrency, fn, name) if concurrency is not None else None
        functools.update_wrapper(self, fn)

    def concurrency_key(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[str | None, int | None]:
        """The concurrency key and limit of one call (None, None without a limit)."""
        if self.concurrency is None:
            return None, None
        if self._limit_key is None:
            return self.name, self.concurrency.n
        return f"{self.name}:{self._limit_key.render(args, kwargs)}", self.concurrency.n

    @property
    def return_type(self) -> object:
        """The return annotation that decodes stored values (resolved on first use)."""
        return self.codec.return_type

    def __repr__(self) -> str:
        return f"<job {self.name}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call the function as plain Python, with no checkpoints."""
        return self.fn(*args, **kwargs)


__all__ = ["DEFAULT_QUEUE", "JobDefinition"]
