"""Jobs: the functions a worker runs durably. The decorated function stays callable."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from .retry import Retry
from .serialization import ArgumentCodec

if TYPE_CHECKING:
    from .app import App

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_QUEUE = "default"


class JobDefinition(Generic[P, R]):
    """A declared job: its name, queue, retry policy and how to encode its arguments."""

    def __init__(
        self,
        app: App,
        fn: Callable[P, R],
        *,
        name: str,
        queue: str,
        retry: Retry,
        priority: int,
        timeout: float | timedelta | None,
        localns: dict[str, Any] | None = None,
    ) -> None:
        self.app = app
        self.fn = fn
        self.name = name
        self.queue = queue
        self.retry = retry
        self.priority = priority
        self.timeout = timeout
        self.is_async = inspect.iscoroutinefunction(fn)
        self.codec = ArgumentCodec(fn, localns=localns)
        functools.update_wrapper(self, fn)

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
