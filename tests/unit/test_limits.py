"""The pure parts of flow control: the rate-limit window and the Limit/Rate values."""

from __future__ import annotations

from datetime import timedelta

import pytest

from stepstone import Limit, Rate
from stepstone._store.rows import rate_window

#: Epoch-sized times, where float resolution is about a quarter of a microsecond.
T = 1_700_000_000.0


def test_n_calls_go_at_once_and_the_next_waits_for_the_window() -> None:
    """Rate(10/s): ten calls at one instant pass; the eleventh waits a whole second."""
    calls: list[float] = []
    for _ in range(10):
        wait, kept = rate_window(calls, limit=10, per=1.0, now=T)
        assert wait == 0.0
        assert kept is not None
        calls = kept
    wait, kept = rate_window(calls, limit=10, per=1.0, now=T)
    assert kept is None
    assert wait == pytest.approx(1.0)


def test_no_window_ever_holds_more_than_n_calls() -> None:
    """Whatever the timing of the requests, any `per` seconds hold at most n calls."""
    calls: list[float] = []
    taken: list[float] = []
    now = T
    for step in range(400):
        now += (step % 7) * 0.013
        _wait, kept = rate_window(calls, limit=5, per=1.0, now=now)
        if kept is not None:
            calls = kept
            taken.append(now)
    assert taken
    for start in taken:
        assert len([t for t in taken if start <= t < start + 1.0]) <= 5


def test_the_wait_is_exactly_when_the_oldest_call_leaves_the_window() -> None:
    """A refused call is told to come back when the oldest counted call is `per` old."""
    calls = [T, T + 0.25, T + 0.5]
    wait, kept = rate_window(calls, limit=3, per=1.0, now=T + 0.75)
    assert kept is None
    assert wait == pytest.approx(0.25)
    wait, kept = rate_window(calls, limit=3, per=1.0, now=T + 1.0 + 1e-6)
    assert wait == 0.0
    assert kept is not None
    assert kept[0] == T + 0.25  # the old call has left the window


def test_limit_and_rate_check_their_values() -> None:
    """Limit(n) and Rate(n, per) refuse values that cannot work; per may be a timedelta."""
    with pytest.raises(ValueError, match="at least 1"):
        Limit(0)
    with pytest.raises(ValueError, match="at least 1"):
        Rate(0)
    with pytest.raises(ValueError, match="positive"):
        Rate(1, per=0)
    assert Rate(5, per=timedelta(minutes=1)).seconds == 60.0
