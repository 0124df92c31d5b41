"""Steps: functions whose result, inside a running job, is checkpointed once and replayed.

A step with a memo key (``@app.step(key="ocr:{attachment_id}")``) also stores its result
under that key for every job: the first run to need the key claims it and computes it,
runs that need it meanwhile wait, and every later call returns the stored value. A
transactional step (``@app.transaction``) runs inside the database transaction that also
writes its checkpoint.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, cast

from .context import StepFrame, current_run, current_step
from .errors import SerializationError, StepstoneError, StoreError
from .keys import KeyTemplate
from .limits import Rate, rate_key
from .retry import Retry
from .serialization import ArgumentCodec, loads

if TYPE_CHECKING:
    from .app import App
    from .runner import JobRun

P = ParamSpec("P")
R = TypeVar("R")

#: How often a run waiting for a memo key that another run computes looks again, at most.
MEMO_POLL_MAX = 0.25
#: The longest a rate-limited call sleeps before asking again (it re-checks cancellation).
RATE_WAIT_MAX = 1.0


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
        key: str | Callable[..., str] | None = None,
        ttl: float | timedelta | None = None,
        transactional: bool = False,
        timeout: float | None = None,
        rate: Rate | None = None,
    ) -> None:
        self.app = app
        self.fn = fn
        self.name = name
        self.retry = retry
        self.is_async = inspect.iscoroutinefunction(fn)
        self.codec = ArgumentCodec(fn, localns=localns)
        self.transactional = transactional
        self.memo = (
            KeyTemplate(key, fn, what=f"memo key of step {name}") if key is not None else None
        )
        if ttl is not None and key is None:
            raise StepstoneError(f"step {name}: ttl= applies to a memo key; pass key= too")
        self.ttl = ttl.total_seconds() if isinstance(ttl, timedelta) else ttl
        if self.ttl is not None and self.ttl <= 0:
            raise ValueError(f"step {name}: ttl must be positive")
        self.timeout = timeout
        self.rate = rate
        self.rate_key = rate_key(rate, fn, name) if rate is not None else None
        functools.update_wrapper(self, fn)

    def _rate_name(self, args: Any, kwargs: Any) -> str:
        assert self.rate_key is not None
        key = (
            self.rate_key if isinstance(self.rate_key, str) else self.rate_key.render(args, kwargs)
        )
        return key

    def _take_rate_sync(self, run: JobRun, args: Any, kwargs: Any) -> None:
        """Wait (outside any transaction) until the step's rate limit lets a call through."""
        if self.rate is None:
            return
        key = self._rate_name(args, kwargs)
        while True:
            wait = run.rate_acquire(key, self.rate)
            if wait <= 0:
                return
            self.app.clock.sleep(min(wait, RATE_WAIT_MAX))
            run.check()

    async def _take_rate_async(self, run: JobRun, args: Any, kwargs: Any) -> None:
        if self.rate is None:
            return
        key = self._rate_name(args, kwargs)
        while True:
            wait = await self.app._call_store(run.rate_acquire, key, self.rate)
            if wait <= 0:
                return
            await self.app.clock.sleep_async(min(wait, RATE_WAIT_MAX))
            run.check()

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
            return self._plain_call(args, kwargs)
        if self.is_async:
            # The position is taken now, at call time, not when the coroutine first runs.
            return cast(R, self._call_async(run, *self._begin(run), args, kwargs))
        return self._call_sync(run, *self._begin(run), args, kwargs)

    def _plain_call(self, args: Any, kwargs: Any) -> R:
        return self.fn(*args, **kwargs)

    def _begin(self, run: JobRun) -> tuple[int, str]:
        run.check()
        return run.assign(self.name)

    def _decode_memo(self, run: JobRun, key: str, text: str) -> Any:
        try:
            return loads(text, self.return_type)
        except SerializationError as exc:
            raise SerializationError(
                f"memo key {key!r} holds a value that step {self.name} of job {run.name} "
                f"cannot decode as its return type ({exc}); another step stored it under the "
                f"same key, or the type changed. Drop it with `stepstone forget {key}`."
            ) from exc

    # sync -------------------------------------------------------------------------------
    def _call_sync(self, run: JobRun, seq: int, ident: str, args: Any, kwargs: Any) -> R:
        stored = run.history.get(seq)
        if stored is not None:
            return cast(R, run.replay(stored, self))
        memo = None
        if self.memo is not None:
            memo = self.memo.render(args, kwargs)
            delay = 0.005
            while True:
                claim = run.memo_acquire(self, seq, ident, memo)
                if claim.outcome == "hit":
                    assert claim.value is not None
                    return cast(R, self._decode_memo(run, memo, claim.value))
                if claim.outcome == "acquired":
                    break
                run.check()
                time.sleep(delay)
                delay = min(delay * 2, MEMO_POLL_MAX, self.app.poll_interval)
        try:
            return self._attempts_sync(run, seq, ident, args, kwargs, memo=memo)
        except BaseException:
            if memo is not None:
                run.memo_release(memo)
            raise

    def _attempts_sync(
        self, run: JobRun, seq: int, ident: str, args: Any, kwargs: Any, *, memo: str | None
    ) -> R:
        attempt = 0
        while True:
            attempt += 1
            self._take_rate_sync(run, args, kwargs)
            started = run.log_step_started(ident, attempt)
            token = current_step.set(StepFrame(self.name, ident, seq, attempt, memo))
            watchdog = run.watch_step(self, seq, ident, attempt) if self.timeout else None
            try:
                value = self.fn(*args, **kwargs)
                if watchdog is not None:
                    watchdog.done()
                text = run.encode_step_value(self, ident, value)
            except Exception as exc:
                current_step.reset(token)
                if watchdog is not None and watchdog.done():
                    raise run.abandoned() from exc
                delay = run.step_failed(self, seq, ident, attempt, exc)
                if delay is None:
                    raise
                self.app.clock.sleep(delay)
                run.check()
                continue
            current_step.reset(token)
            if memo is None:
                run.checkpoint(seq, ident, "ok", text, attempt)
            else:
                stored = run.memo_complete(self, seq, ident, memo, text=text, attempts=attempt)
                if stored != text:  # another run stored the key first: its value wins
                    value = self._decode_memo(run, memo, stored)
            run.log_step(ident, attempt, started)
            return value

    # async ------------------------------------------------------------------------------
    async def _call_async(self, run: JobRun, seq: int, ident: str, args: Any, kwargs: Any) -> R:
        stored = run.history.get(seq)
        app = self.app
        if stored is not None:
            return cast(R, run.replay(stored, self))
        memo = None
        if self.memo is not None:
            memo = self.memo.render(args, kwargs)
            delay = 0.005
            while True:
                claim = await app._call_store(run.memo_acquire, self, seq, ident, memo)
                if claim.outcome == "hit":
                    assert claim.value is not None
                    return cast(R, self._decode_memo(run, memo, claim.value))
                if claim.outcome == "acquired":
                    break
                run.check()
                await asyncio.sleep(delay)
                delay = min(delay * 2, MEMO_POLL_MAX, app.poll_interval)
        try:
            return await self._attempts_async(run, seq, ident, args, kwargs, memo=memo)
        except BaseException:
            if memo is not None:
                await asyncio.shield(app._call_store(run.memo_release, memo))
            raise

    async def _attempts_async(
        self, run: JobRun, seq: int, ident: str, args: Any, kwargs: Any, *, memo: str | None
    ) -> R:
        app = self.app
        attempt = 0
        while True:
            attempt += 1
            await self._take_rate_async(run, args, kwargs)
            started = run.log_step_started(ident, attempt)
            token = current_step.set(StepFrame(self.name, ident, seq, attempt, memo))
            try:
                if self.timeout is None:
                    value = await cast(Any, self.fn)(*args, **kwargs)
                else:
                    value = await asyncio.wait_for(
                        cast(Any, self.fn)(*args, **kwargs), self.timeout
                    )
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
            if memo is None:
                await app._call_store(run.checkpoint, seq, ident, "ok", text, attempt)
            else:
                stored = await app._call_store(
                    run.memo_complete, self, seq, ident, memo, text=text, attempts=attempt
                )
                if stored != text:
                    value = self._decode_memo(run, memo, stored)
            run.log_step(ident, attempt, started)
            return cast(R, value)


class TransactionStep(StepDefinition[P, R]):
    """A step that runs inside the transaction that writes its checkpoint.

    The function's first parameter receives the connection (``sqlite3.Connection`` or a
    psycopg ``Connection``); callers pass only the other arguments. Each attempt gets a
    fresh transaction; the step's writes and its checkpoint commit together or not at all.
    """

    def __init__(
        self,
        app: App,
        fn: Callable[..., R],
        *,
        name: str,
        retry: Retry,
        localns: dict[str, Any] | None = None,
    ) -> None:
        if inspect.iscoroutinefunction(fn):
            raise StepstoneError(
                f"@app.transaction {name} is an async def: a transactional step gets a "
                "blocking database connection, so declare it with def (an async job may "
                "call it; it runs inline)"
            )
        if not inspect.signature(fn).parameters:
            raise StepstoneError(
                f"@app.transaction {name} takes no parameters; its first parameter receives "
                "the database connection"
            )
        super().__init__(
            app,
            cast(Callable[P, R], fn),
            name=name,
            retry=retry,
            localns=localns,
            transactional=True,
        )

    def _plain_call(self, args: Any, kwargs: Any) -> R:
        # Outside a job (or inside another step): its own transaction, no checkpoint.
        with self.app.store.step_transaction(None, None) as transaction:
            return cast(Callable[..., R], self.fn)(transaction.connection, *args, **kwargs)

    def _call_sync(self, run: JobRun, seq: int, ident: str, args: Any, kwargs: Any) -> R:
        stored = run.history.get(seq)
        if stored is not None:
            return cast(R, run.replay(stored, self))
        store, fn = self.app.store, cast(Callable[..., R], self.fn)
        attempt = 0
        while True:
            attempt += 1
            started = run.log_step_started(ident, attempt)
            token = current_step.set(StepFrame(self.name, ident, seq, attempt))
            try:
                with store.step_transaction(run.job_id, run.fence) as transaction:
                    value = fn(transaction.connection, *args, **kwargs)
                    text = run.encode_step_value(self, ident, value)
                    try:
                        transaction.checkpoint(
                            seq=seq,
                            name=ident,
                            value=text,
                            attempts=attempt,
                            now=self.app.clock.now(),
                        )
                    except StepstoneError as exc:  # LeaseLost, JobCancelled, StoreError
                        raise _Interrupted(exc) from exc
            except _Interrupted as interrupted:
                current_step.reset(token)
                run.interrupt = cast(Any, interrupted.error)
                raise interrupted.error from None
            except StoreError as exc:  # the transaction could not begin or commit
                current_step.reset(token)
                run.interrupt = exc
                raise
            except Exception as exc:
                current_step.reset(token)
                delay = run.step_failed(self, seq, ident, attempt, exc)
                if delay is None:
                    raise
                self.app.clock.sleep(delay)
                run.check()
                continue
            current_step.reset(token)
            run.executed += 1
            run.log_step(ident, attempt, started)
            return value

    async def _call_async(self, run: JobRun, seq: int, ident: str, args: Any, kwargs: Any) -> R:
        raise AssertionError("transactional steps are sync")  # pragma: no cover


class _Interrupted(Exception):
    """Carries a refused checkpoint out of the transaction (which then rolls back)."""

    def __init__(self, error: StepstoneError) -> None:
        super().__init__(str(error))
        self.error = error


__all__ = ["MEMO_POLL_MAX", "StepDefinition", "TransactionStep"]
