"""The pure parts of flow control: the rate-limit arithmetic and the Limit/Rate values."""

from __future__ import annotations

from datetime import timedelta

import pytest

from stepstone import Limit, Rate
from stepstone.store.rows import gcra


def test_a_burst_of_n_calls_goes_through_then_one_per_interval() -> None:
    """Rate(10/s): ten calls at one instant pass, the eleventh waits a tenth of a second."""
    tat = None
    for _ in range(10):
        wait, tat = gcra(tat, limit=10, per=1.0, now=100.0)
        assert wait == 0.0
    wait, new = gcra(tat, limit=10, per=1.0, now=100.0)
    assert new is None
    assert wait == pytest.approx(0.1)
    wait, tat = gcra(tat, limit=10, per=1.0, now=100.1)
    assert wait == 0.0


def test_a_steady_rate_never_waits() -> None:
    """Calls spaced by the interval are never held back, however many."""
    tat = None
    for n in range(100):
        wait, tat = gcra(tat, limit=2, per=1.0, now=50.0 + n * 0.5)
        assert wait == 0.0


def test_an_idle_key_regains_its_burst() -> None:
    """After a quiet period as long as the window, a full burst passes again."""
    tat = None
    for _ in range(3):
        _, tat = gcra(tat, limit=3, per=3.0, now=0.0)
    for _ in range(3):
        wait, tat = gcra(tat, limit=3, per=3.0, now=3.0)
        assert wait == 0.0


def test_limit_and_rate_check_their_values() -> None:
    """Limit(n) and Rate(n, per) refuse values that cannot work; per may be a timedelta."""
    with pytest.raises(ValueError, match="at least 1"):
        Limit(0)
    with pytest.raises(ValueError, match="at least 1"):
        Rate(0)
    with pytest.raises(ValueError, match="positive"):
        Rate(1, per=0)
    assert Rate(5, per=timedelta(minutes=1)).seconds == 60.0
