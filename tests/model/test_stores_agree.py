"""The model-based test across stores: random sequences of enqueues, claims, checkpoints,
outcomes, cancels, retries, signals, heartbeats and lease expiries, on SQLite and PostgreSQL
side by side, each checked against a plain Python model after every step.

The bounded profile runs with the suite; the long one is marked ``model_long``
(``pytest -m model_long tests/model``) and left out of ``make test``.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

from stepstone.testing import FakeClock

from .adapter import StoreDriver
from .machine import StoresAgree

pytestmark = pytest.mark.postgres

_SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]

#: Runs with the suite: a few dozen short histories (well under a minute on both stores).
BOUNDED = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    database=None,
    suppress_health_check=_SLOW_OK,
)
#: ``-m model_long``: many long histories; STEPSTONE_MODEL_EXAMPLES sets how many.
LONG = settings(
    max_examples=int(os.environ.get("STEPSTONE_MODEL_EXAMPLES", "600")),
    stateful_step_count=60,
    deadline=None,
    database=None,
    suppress_health_check=_SLOW_OK,
)


@pytest.mark.timeout(900)  # a failure is shrunk to a short history: that takes minutes
def test_stores_agree_with_the_model(drivers: list[StoreDriver], shared_clock: FakeClock) -> None:
    """SQLite and PostgreSQL do what the model says for random histories (bounded run)."""
    run_state_machine_as_test(lambda: StoresAgree(drivers, shared_clock), settings=BOUNDED)


@pytest.mark.model_long
@pytest.mark.timeout(0)
def test_stores_agree_with_the_model_long(
    drivers: list[StoreDriver], shared_clock: FakeClock
) -> None:
    """SQLite and PostgreSQL do what the model says for many long random histories."""
    run_state_machine_as_test(lambda: StoresAgree(drivers, shared_clock), settings=LONG)
