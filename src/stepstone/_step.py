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
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Generator
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, cast

from ._frames import StepFrame, current_step, logger
from ._keys import KeyTemplate
from ._limits import Rate, rate_key
from ._memo import memo_acquire, memo_complete, memo_release
from ._retry import Retry
from ._runner import JobRun, current_run
from ._serialization import ArgumentCodec, loads
from .errors import SerializationError, StepstoneError, StoreError

if TYPE_CHECKING:
    from ._runtime import Runtime

P = ParamSpec("P")
R = TypeVar("R")

#: How often a run waiting for a memo key that another run computes looks again, at most.
MEMO_POLL_MAX = 0.25
#: The longest a rate-limited call sleeps before asking again (it re-checks cancellation).
RATE_WAIT_MAX = 1.0

# The effects the step attempt protocol asks its driver for (see ``_attempts``).
#: ``(_STORE, fn, args)``: a blocking store call (through a thread for async code).
_STORE = 0
#: ``(_BODY, frame)``: run the body once; returns ``(value, encoded)``.
_BODY = 1
#: ``(_SLEEP, seconds)``: a backoff on the App's clock.
_SLEEP = 2
#: ``(_POLL, seconds)``: a short real wait for a memo key another run computes.
_POLL = 3
#: ``(_RELEASE, key)``: give the memo key up (shielded from cancellation).
_RELEASE = 4
#: ``(_BODY_OK, frame)``: run the body once, then write its "ok" checkpoint (a plain step's
#: common case, one effect instead of two); returns ``(value, encoded)``, or
#: ``(error, _REFUSED)`` when the checkpoint write failed (the body's value is dropped).
_BODY_OK = 5

#: The encoded value of a ``_BODY_OK`` whose checkpoint write raised instead.
_REFUSED: Any = object()

Effect = tuple[Any, ...]
Attempts = Generator[Effect, Any, Any]


class StepWatchdog:
    """A timer that abandons a sync step's attempt if it has not returned in time."""

    def __init__(self, run: JobRun, timeout: float, frame: StepFrame) -> None:
        self._lock = threading.Lock()
        self._state = "running"
        self._timer = threading.Timer(timeout, self._fire, args=(run, timeout, frame))
        self._timer.daemon = True
        self._timer.start()

    def _fire(self, run: JobRun, timeout: float, frame: StepFrame) -> None:
        with self._lock:
            if self._state != "running":
                return
            self._state = "fired"
        run.abandon_step(timeout, frame.seq, frame.ident, frame.attempt)

    def done(self) -> bool:
        """The step returned (or raised): stop the timer. True if it had already fired."""
        with self._lock:
            if self._state == "running":
                self._state = "done"
                self._timer.cancel()
            return self._state == "fired"


class _Interrupted(Exception):
    """Raised by a body to stop the step without retrying it: ``error`` goes up as it is
    (from ``cause``); ``sticky``: it becomes the run's interruption."""

    def __init__(self, error: StepstoneError, *, sticky: bool, cause: BaseException | None) -> None:
        super().__init__(str(error))
        self.error = error
        self.sticky = sticky
        self.cause = cause


class StepDefinition(Generic[P, R]):
    """A declared step. Inside a running job a call is checkpointed; outside, a plain call."""

    def __init__(
        self,
        runtime: Runtime,
        fn: Callable[P, R],
        *,
        name: str,
        retry: Retry,
        localns: dict[str, Any] | None = None,
        key: str | Callable[..., str] | None = None,
        ttl: float | None = None,
        transactional: bool = False,
        timeout: float | None = None,
        rate: Rate | None = None,
    ) -> None:
        self.runtime = runtime
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
        self.ttl = ttl
        if self.ttl is not None and self.ttl <= 0:
            raise ValueError(f"step {name}: ttl must be positive")
        self.timeout = timeout
        self.rate = rate
        self.rate_key = rate_key(rate, fn, name) if rate is not None else None
        functools.update_wrapper(self, fn)

    @functools.cached_property
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
        # The position is taken now, at call time (an async step's too, not when its
        # coroutine first runs: ``asyncio.gather`` over steps stays deterministic).
        run.check()
        seq, ident = run.assign(self.name)
        attempts = self._attempts(run, seq, ident, args, kwargs)
        if self.is_async:
            return cast(R, _drive_async(self, run, attempts, args, kwargs))
        return _drive_sync(self, run, attempts, args, kwargs)

    def _plain_call(self, args: Any, kwargs: Any) -> R:
        return self.fn(*args, **kwargs)

    def _decode_memo(self, run: JobRun, key: str, text: str) -> Any:
        try:
            return loads(text, self.return_type)
        except SerializationError as exc:
            raise SerializationError(
                f"memo key {key!r} holds a value that step {self.name} of job {run.name} "
                f"cannot decode as its return type ({exc}); another step stored it under the "
                f"same key, or the type changed. Drop it with `stepstone forget {key}`."
            ) from exc

    # the step attempt protocol, written once -------------------------------------------
    def _attempts(self, run: JobRun, seq: int, ident: str, args: Any, kwargs: Any) -> Attempts:
        """One step call inside a run, as a generator of effects that a sync or an async
        driver performs: replay the checkpoint, or take the memo key (or wait for the run
        that computes it), take the rate limit, run the body, and checkpoint its value; a
        failed attempt is recorded and retried after its backoff, the final failure is
        checkpointed too. Returns the step's value (or raises its error)."""
        stored = run.history.get(seq)
        if stored is not None:
            return run.replay(stored, self.return_type)
        memo = None
        if self.memo is not None:
            memo = self.memo.render(args, kwargs)
            delay = 0.005
            while True:
                claim = yield (_STORE, memo_acquire, (run, self.name, seq, ident, memo))
                if claim.outcome == "hit":
                    return self._decode_memo(run, memo, claim.value)
                if claim.outcome == "acquired":
                    break
                run.check()
                yield (_POLL, delay)
                delay = min(delay * 2, MEMO_POLL_MAX, run.runtime.poll_interval)
        # A plain step writes its checkpoint in the same effect as its body.
        plain = memo is None and not self.transactional
        try:
            attempt = 0
            while True:
                attempt += 1
                if self.rate is not None:
                    yield from self._take_rate(run, args, kwargs)
                debug = logger.isEnabledFor(logging.DEBUG)
                if debug:
                    started = time.perf_counter()
                    run.logger.debug(
                        "step %s started (attempt %d)",
                        ident,
                        attempt,
                        extra={"action": "step.started", "step": ident},
                    )
                frame = StepFrame(self.name, ident, seq, attempt, memo)
                token = current_step.set(frame)
                try:
                    value, text = yield (_BODY_OK if plain else _BODY, frame)
                except _Interrupted as interrupted:
                    current_step.reset(token)
                    if interrupted.sticky:
                        run.interrupt_with(interrupted.error)
                    raise interrupted.error from interrupted.cause
                except Exception as exc:
                    current_step.reset(token)
                    delay = yield (_STORE, run.step_failed, (self.retry, seq, ident, attempt, exc))
                    if delay is None:
                        raise
                    yield (_SLEEP, delay)
                    run.check()
                    continue
                current_step.reset(token)
                if self.transactional:  # its checkpoint was written with its body
                    run.executed += 1
                elif memo is not None:
                    kept = yield (_STORE, memo_complete, (run, frame, text, self.ttl))
                    if kept != text:  # another run stored the key first: its value wins
                        value = self._decode_memo(run, memo, kept)
                elif text is _REFUSED:  # plain: the checkpoint write raised ``value``
                    raise value
                if debug:
                    run.logger.debug(
                        "step %s succeeded (attempt %d, %.1f ms)",
                        ident,
                        attempt,
                        (time.perf_counter() - started) * 1000,
                        extra={"action": "step.succeeded", "step": ident},
                    )
                return value
        except GeneratorExit:
            raise  # dropped unfinished (its coroutine was never resumed): nothing to give up
        except BaseException:
            if memo is not None:
                yield (_RELEASE, memo)
            raise

    def _take_rate(self, run: JobRun, args: Any, kwargs: Any) -> Attempts:
        """Wait (outside any transaction) until the step's rate limit lets a call through."""
        assert self.rate is not None
        assert self.rate_key is not None
        template = self.rate_key
        key = template if isinstance(template, str) else template.render(args, kwargs)
        while True:
            wait = yield (_STORE, run.rate_acquire, (key, self.rate))
            if wait <= 0:
                return
            yield (_SLEEP, min(wait, RATE_WAIT_MAX))
            run.check()

    def _body_sync(self, run: JobRun, frame: StepFrame, args: Any, kwargs: Any) -> tuple[Any, str]:
        """Run a sync body once. With a timeout, a watchdog abandons the attempt."""
        if self.timeout is None:
            value = self.fn(*args, **kwargs)
            return value, run.encode_step_value(self.return_type, frame.ident, value)
        watchdog = StepWatchdog(run, self.timeout, frame)
        try:
            value = self.fn(*args, **kwargs)
            watchdog.done()
            return value, run.encode_step_value(self.return_type, frame.ident, value)
        except Exception as exc:
            if watchdog.done():
                raise _Interrupted(run.abandoned(), sticky=False, cause=exc) from exc
            raise

    async def _body_async(
        self, run: JobRun, frame: StepFrame, args: Any, kwargs: Any
    ) -> tuple[Any, str]:
        """Run an async body once; with a timeout, it is cancelled (``TimeoutError``)."""
        coroutine = cast(Callable[..., Coroutine[Any, Any, Any]], self.fn)(*args, **kwargs)
        if self.timeout is None:
            value = await coroutine
        else:
            value = await asyncio.wait_for(coroutine, self.timeout)
        return value, run.encode_step_value(self.return_type, frame.ident, value)


def _drive_sync(
    step: StepDefinition[Any, R], run: JobRun, attempts: Attempts, args: Any, kwargs: Any
) -> R:
    """Perform the protocol's effects in this thread."""
    send = attempts.send
    checkpoint = run.checkpoint
    try:
        effect = send(None)
        while True:
            try:
                kind = effect[0]
                if kind == _BODY_OK:
                    frame = effect[1]
                    result = step._body_sync(run, frame, args, kwargs)
                    try:
                        checkpoint(frame.seq, frame.ident, "ok", result[1], frame.attempt)
                    except BaseException as refused:
                        result = (refused, _REFUSED)
                elif kind == _STORE:
                    result = effect[1](*effect[2])
                elif kind == _BODY:
                    result = step._body_sync(run, effect[1], args, kwargs)
                else:
                    result = None
                    if kind == _SLEEP:
                        run.clock.sleep(effect[1])
                    elif kind == _POLL:
                        time.sleep(effect[1])
                    else:
                        memo_release(run, effect[1])
            except BaseException as exc:
                effect = attempts.throw(exc)
                continue
            effect = send(result)
    except StopIteration as stop:
        value: R = stop.value
        return value


async def _drive_async(
    step: StepDefinition[Any, Any], run: JobRun, attempts: Attempts, args: Any, kwargs: Any
) -> Any:
    """Perform the protocol's effects on the running event loop (store calls through the
    runtime, which moves them off the loop when the store blocks)."""
    call_store = run.runtime.call_store
    try:
        effect = attempts.send(None)
        while True:
            try:
                kind = effect[0]
                if kind == _BODY_OK:
                    frame = effect[1]
                    result = await step._body_async(run, frame, args, kwargs)
                    try:
                        await call_store(
                            run.checkpoint, frame.seq, frame.ident, "ok", result[1], frame.attempt
                        )
                    except BaseException as refused:
                        result = (refused, _REFUSED)
                elif kind == _STORE:
                    result = await call_store(effect[1], *effect[2])
                elif kind == _BODY:
                    result = await step._body_async(run, effect[1], args, kwargs)
                else:
                    result = None
                    if kind == _SLEEP:
                        await run.clock.sleep_async(effect[1])
                    elif kind == _POLL:
                        await asyncio.sleep(effect[1])
                    else:
                        await asyncio.shield(call_store(memo_release, run, effect[1]))
            except BaseException as exc:
                effect = attempts.throw(exc)
                continue
            effect = attempts.send(result)
    except StopIteration as stop:
        return stop.value


class TransactionStep(StepDefinition[P, R]):
    """A step that runs inside the transaction that writes its checkpoint.

    The function's first parameter receives the connection (``sqlite3.Connection`` or a
    psycopg ``Connection``); callers pass only the other arguments. Each attempt gets a
    fresh transaction; the step's writes and its checkpoint commit together or not at all.
    It is the step protocol with one more body: the body writes the checkpoint itself.
    """

    def __init__(
        self,
        runtime: Runtime,
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
            runtime,
            cast(Callable[P, R], fn),
            name=name,
            retry=retry,
            localns=localns,
            transactional=True,
        )

    def _plain_call(self, args: Any, kwargs: Any) -> R:
        # Outside a job (or inside another step): its own transaction, no checkpoint.
        with self.runtime.store.step_transaction(None, None) as transaction:
            return cast(Callable[..., R], self.fn)(transaction.connection, *args, **kwargs)

    def _body_sync(self, run: JobRun, frame: StepFrame, args: Any, kwargs: Any) -> tuple[Any, str]:
        fn = cast(Callable[..., Any], self.fn)
        try:
            with run.store.step_transaction(run.job_id, run.fence) as transaction:
                value = fn(transaction.connection, *args, **kwargs)
                text = run.encode_step_value(self.return_type, frame.ident, value)
                try:
                    transaction.checkpoint(
                        seq=frame.seq,
                        name=frame.ident,
                        value=text,
                        attempts=frame.attempt,
                        now=run.clock.now(),
                    )
                except StepstoneError as exc:  # LeaseLost, JobCancelled, StoreError
                    raise _Interrupted(exc, sticky=True, cause=None) from exc
        except StoreError as exc:  # the transaction could not begin or commit
            raise _Interrupted(exc, sticky=True, cause=exc.__cause__) from exc
        return value, text


__all__ = ["MEMO_POLL_MAX", "StepDefinition", "TransactionStep"]
