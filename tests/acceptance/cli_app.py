"""A small App for the CLI acceptance tests; its database comes from $STEPSTONE_DATABASE_URL."""

from __future__ import annotations

import stepstone
from stepstone import Retry

app = stepstone.App()
not_an_app = "a string, not an App"


@app.step
def double(number: int) -> int:
    return number * 2


@app.job(name="add")
def add(a: int, b: int = 0) -> int:
    return double(a) + b


@app.job(name="explode", retry=Retry(max_attempts=1))
def explode(message: str) -> None:
    raise ValueError(message)
