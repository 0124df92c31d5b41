"""Retry policies: backoff delays, jitter, which errors are retried, and the pinned defaults."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest

from stepstone import App, NonDeterminism, Permanent, Retry, SerializationError


class FatalError(Permanent):
    """A user's permanent error."""


def test_delays_grow_exponentially_without_jitter() -> None:
    """Without jitter the delay after attempt n is initial * factor ** (n - 1)."""
    retry = Retry(initial=0.5, factor=3.0, max_delay=1000, jitter=False)
    assert [retry.delay(n) for n in range(1, 6)] == [0.5, 1.5, 4.5, 13.5, 40.5]


def test_delays_are_capped_at_max_delay() -> None:
    """No delay exceeds max_delay, however many attempts failed."""
    retry = Retry(initial=1.0, factor=2.0, max_delay=10.0, jitter=False)
    assert [retry.delay(n) for n in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert retry.delay(10_000) == 10.0


def test_delays_accept_timedelta() -> None:
    """initial and max_delay may be timedeltas; delays are still seconds."""
    retry = Retry(initial=timedelta(seconds=2), max_delay=timedelta(seconds=5), jitter=False)
    assert [retry.delay(n) for n in (1, 2, 3)] == [2.0, 4.0, 5.0]


@pytest.mark.parametrize(("draw", "expected"), [(0.0, 2.0), (0.5, 3.0), (0.999, 3.998)])
def test_jitter_maps_the_random_draw_onto_half_to_full_delay(draw: float, expected: float) -> None:
    """With jitter the delay is d/2 + draw * d/2 for an injected draw in [0, 1)."""
    retry = Retry(initial=1.0, factor=2.0, max_delay=60, random=lambda: draw)
    assert retry.delay(3) == pytest.approx(expected)


def test_jitter_stays_within_half_to_full_delay() -> None:
    """With real randomness every delay lies in [d/2, d] and the range is actually used."""
    rng = random.Random(1234)
    retry = Retry(initial=1.0, factor=2.0, max_delay=60, random=rng.random)
    delays = [retry.delay(4) for _ in range(2000)]
    assert all(4.0 <= delay <= 8.0 for delay in delays)
    assert min(delays) < 4.2
    assert max(delays) > 7.8


def test_jitter_is_on_by_default() -> None:
    """Retry() jitters by default: the injected draw decides where in [d/2, d] it lands."""
    assert Retry(random=lambda: 0.0).delay(2) == 1.0
    assert Retry(random=lambda: 0.99).delay(2) == pytest.approx(1.99)


def test_max_attempts_counts_every_run_including_the_first() -> None:
    """With max_attempts=3, failed attempts 1 and 2 are retried and attempt 3 is not."""
    retry = Retry(max_attempts=3)
    error = RuntimeError("flaky")
    assert [retry.should_retry(error, n) for n in (1, 2, 3, 4)] == [True, True, False, False]


def test_max_attempts_one_never_retries() -> None:
    """max_attempts=1 means a single run."""
    assert not Retry(max_attempts=1).should_retry(RuntimeError(), 1)


def test_max_attempts_below_one_is_rejected() -> None:
    """A policy with no attempt at all is a mistake, reported at once."""
    with pytest.raises(ValueError, match="max_attempts"):
        Retry(max_attempts=0)


def test_retry_on_a_class_limits_retries_to_it_and_its_subclasses() -> None:
    """retry_on=ConnectionError retries ConnectionError (and subclasses) only."""
    retry = Retry(max_attempts=5, retry_on=ConnectionError)
    assert retry.should_retry(ConnectionError(), 1)
    assert retry.should_retry(ConnectionResetError(), 1)
    assert not retry.should_retry(ValueError(), 1)


def test_retry_on_a_tuple() -> None:
    """retry_on takes a tuple of exception classes."""
    retry = Retry(max_attempts=5, retry_on=(ConnectionError, TimeoutError))
    assert retry.should_retry(TimeoutError(), 1)
    assert retry.should_retry(ConnectionError(), 1)
    assert not retry.should_retry(KeyError(), 1)


def test_give_up_on_a_class_or_tuple_is_never_retried() -> None:
    """give_up_on names errors that end retrying, even when retry_on would match them."""
    single = Retry(max_attempts=5, give_up_on=KeyError)
    assert not single.should_retry(KeyError(), 1)
    assert single.should_retry(ValueError(), 1)
    both = Retry(max_attempts=5, retry_on=Exception, give_up_on=(KeyError, TypeError))
    assert not both.should_retry(TypeError(), 1)
    assert not both.should_retry(KeyError(), 1)
    assert both.should_retry(ValueError(), 1)


def test_permanent_and_its_subclasses_are_never_retried() -> None:
    """Permanent ends retrying whatever retry_on says."""
    retry = Retry(max_attempts=5, retry_on=Exception)
    assert not retry.should_retry(Permanent("no"), 1)
    assert not retry.should_retry(FatalError("no"), 1)


def test_serialization_and_nondeterminism_errors_are_never_retried() -> None:
    """Errors no retry can mend (bad values, changed code) are not retried."""
    retry = Retry(max_attempts=5)
    assert not retry.should_retry(SerializationError("bad value"), 1)
    assert not retry.should_retry(NonDeterminism("changed"), 1)


def test_retry_constructor_defaults_are_the_step_defaults() -> None:
    """Retry() is 3 attempts, 1.0 s initial, factor 2.0, capped at 60 s, with jitter."""
    retry = Retry()
    assert (retry.max_attempts, retry.initial, retry.factor, retry.max_delay, retry.jitter) == (
        3,
        1.0,
        2.0,
        60.0,
        True,
    )


def test_declared_steps_and_jobs_get_the_pinned_defaults() -> None:
    """A step without retry= gets 3/1.0/2.0/60 and a job 5/1.0/2.0/300, per DESIGN.md."""
    app = App("sqlite:///:memory:")

    @app.step
    def a_step() -> int:
        return 1

    @app.job
    def a_job() -> int:
        return a_step()

    assert a_step.retry == Retry(max_attempts=3, initial=1.0, factor=2.0, max_delay=60.0)
    assert a_job.retry == Retry(max_attempts=5, initial=1.0, factor=2.0, max_delay=300.0)
    assert a_job.retry.jitter
    assert a_step.retry.jitter
    assert 30.0 <= a_step.retry.delay(20) <= 60.0
    assert 150.0 <= a_job.retry.delay(20) <= 300.0


def test_fields_left_out_take_the_defaults_of_where_the_policy_is_used() -> None:
    """A job's Retry(max_attempts=10) keeps the job cap of 300 s; a step's Retry(initial=)
    keeps the step's 3 attempts and 60 s cap; given fields always win."""
    app = App("sqlite:///:memory:")

    @app.step(retry=Retry(initial=0.5))
    def a_step() -> int:
        return 1

    @app.job(name="tests.retry_defaults", retry=Retry(max_attempts=10, max_delay=60))
    def capped_job() -> int:
        return a_step()

    @app.job(name="tests.retry_defaults_2", retry=Retry(max_attempts=10))
    def a_job() -> int:
        return a_step()

    assert a_step.retry == Retry(max_attempts=3, initial=0.5, factor=2.0, max_delay=60.0)
    assert a_job.retry == Retry(max_attempts=10, initial=1.0, factor=2.0, max_delay=300.0)
    assert capped_job.retry.max_delay == 60
    assert Retry(max_attempts=4).given == frozenset({"max_attempts"})
