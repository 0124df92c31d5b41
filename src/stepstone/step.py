"""Steps: functions whose result, inside a running job, is checkpointed once and replayed."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, cast

from .context import StepFrame, current_run, current_step
from .retry import Retry
from .serialization import ArgumentCodec

if TYPE_CHECKING:
    from .app import App
    from .runner import JobRun

P = ParamSpec("P")
R = TypeVar("R")


class StepDefinition(Generic[P, R]):
    """A declared step. Inside a running job a call is checkpointed; outside, a plain call."""

    def __init__(
        self,
        app: App,
        fn: Callable[P, R],
        *,
        name: str,
        retry: Retry,
        localns: dict[str, Any] | None = None,
    ) -> None:
        self.app = app
        self.fn = fn
        self.name = name
        self.retry = retry
        self.is_async = inspect.iscoroutinefunction(fn)
        self.codec = ArgumentCodec(fn, localns=localns)
        functools.update_wrapper(self, fn)

    @property
    def return_type(self) -> object:
        """The return annotation that decodes stored values (resolved on first use)."""
        return self.codec.return_type

    def __repr__(self) -> str:
        return f"<step {self.name}>"

    def __get__(self, instance: object, owner: type | None = None) -> Any:
        if instance is None:
            return self
        return functools.partial(cast(Callable[..., R], self), instance)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        run = current_run.get()
        if run is None or current_step.get() is not None:
            return self.fn(*args, **kwargs)
        if self.is_async:
            # The position is taken now, at call time, not when the coroutine first runs.
            return cast(R, self._call_async(run, *self._begin(run), args, kwargs))
        return self._call_sync(run, *self._begin(run), args, kwargs)

    def _begin(self, run: JobRun) -> tuple[int, str]:
        run.check()
        return run.assign(self.name)

    def _call_sync(self, run: JobRun, seq: int, ident: str, args: Any, kwargs: Any) -> R:
        stored = run.history.get(seq)
        if stored is not None:
            return cast(R, run.replay(stored, self))
        attempt = 0
        while True:
            attempt += 1
            started = run.log_step_started(ident, attempt)
            token = current_step.set(StepFrame(self.name, ident, seq, attempt))
            try:
                value = self.fn(*args, **kwargs)
                text = run.encode_step_value(self, ident, value)
            except Exception as exc:
                current_step.reset(token)
                delay = run.step_failed(self, seq, ident, attempt, exc)
                if delay is None:
                    raise
                self.app.clock.sleep(delay)
                run.check()
                continue
            current_step.reset(token)
            run.checkpoint(seq, ident, "ok", text, attempt)
            run.log_step(ident, attempt, started)
            return value

    async def _call_async(self, run: JobRun, seq: int, ident: str, args: Any, kwargs: Any) -> R:
        stored = run.history.get(seq)
        app = self.app
        if stored is not None:
            return cast(R, run.replay(stored, self))
        attempt = 0
        while True:
            attempt += 1
            started = run.log_step_started(ident, attempt)
            token = current_step.set(StepFrame(self.name, ident, seq, attempt))
            try:
                value = await cast(Any, self.fn)(*args, **kwargs)
                text = run.encode_step_value(self, ident, value)
            except Exception as exc:
                current_step.reset(token)
                delay = await app._call_store(run.step_failed, self, seq, ident, attempt, exc)
                if delay is None:
                    raise
                await app.clock.sleep_async(delay)
                run.check()
                continue
            current_step.reset(token)
            await app._call_store(run.checkpoint, seq, ident, "ok", text, attempt)
            run.log_step(ident, attempt, started)
            return cast(R, value)


__all__ = ["StepDefinition"]
