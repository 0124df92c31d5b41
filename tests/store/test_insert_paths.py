"""Every write path of a job carries every job column, on every store.

A job inserted with every field of ``NewJob`` set, through each insert path (single,
claimed by its inserter, bulk, on the caller's connection, debounce), reads back with each
field as given. A field added to ``NewJob`` later fails these tests until every path (and
the record read back) carries it.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from stepstone._store import Store
from stepstone._store.base import JobRecord, NewJob
from stepstone.errors import StoreError

from .support import LEASE, T0

#: The job name the limit tests claim, and that they tell the claim is limited.
LIMITED = "ocr.run"


def full_job(**fields: Any) -> NewJob:
    """A job with every field of ``NewJob`` set to a value none of its defaults has."""
    suffix = uuid.uuid4().hex[:8]
    values: dict[str, Any] = {
        "id": uuid.uuid4().hex,
        "name": LIMITED,
        "queue": "scans",
        "key": f"scan:{suffix}",
        "args": '{"page": 7}',
        "priority": 3,
        "run_at": T0 + 0.5,
        "parent_id": f"parent-{suffix}",
        "concurrency_key": f"{LIMITED}:{suffix}",
        "concurrency_limit": 2,
        "debounce_key": None,
    }
    values.update(fields)
    return NewJob(**values)


def assert_carries_every_field(record: JobRecord | None, job: NewJob) -> None:
    """Each field of ``job`` reads back as given (the record has a field of each name)."""
    assert record is not None
    for field in dataclasses.fields(NewJob):
        assert getattr(record, field.name) == getattr(job, field.name), field.name


@contextmanager
def caller_connection(store: Store) -> Iterator[Any]:
    """The caller's own connection to the store's database, or a skip for :memory:."""
    if getattr(store, "memory", False):
        pytest.skip("no other connection can open sqlite:///:memory:")
    if hasattr(store, "conninfo"):
        import psycopg

        connection: Any = psycopg.connect(store.conninfo)
    else:
        connection = sqlite3.connect(store.path)  # type: ignore[attr-defined]
    try:
        yield connection
    finally:
        connection.close()


def _insert(store: Store, job: NewJob) -> NewJob:
    assert store.job_insert(job, now=T0).created
    return job


def _insert_many(store: Store, job: NewJob) -> NewJob:
    [result] = store.job_insert_many([job], now=T0)
    assert result.created
    return job


def _insert_on(store: Store, job: NewJob) -> NewJob:
    with caller_connection(store) as connection:
        assert store.job_insert_on(connection, job, now=T0).created
        connection.commit()
    return job


def _debounce(store: Store, job: NewJob) -> NewJob:
    job = dataclasses.replace(job, key=None, debounce_key=f"debounce:{uuid.uuid4().hex}")
    assert store.job_debounce(job, now=T0).created
    return job


INSERT_PATHS = [
    pytest.param(_insert, id="job_insert"),
    pytest.param(_insert_many, id="job_insert_many"),
    pytest.param(_insert_on, id="job_insert_on"),
    pytest.param(_debounce, id="job_debounce"),
]


@pytest.mark.parametrize("path", INSERT_PATHS)
def test_every_insert_path_stores_every_field(
    store: Store, path: Callable[[Store, NewJob], NewJob]
) -> None:
    """A job with every field set reads back with every field, whichever path wrote it."""
    job = path(store, full_job())
    assert_carries_every_field(store.job_get(job.id), job)


def test_single_and_bulk_inserts_return_the_record_stored(store: Store) -> None:
    """The record an insert returns is the record stored (no path forgets a column)."""
    one, many = full_job(), full_job()
    assert store.job_insert(one, now=T0).job == store.job_get(one.id)
    assert store.job_insert_many([many], now=T0)[0].job == store.job_get(many.id)


def test_a_job_inserted_claimed_stores_every_field(store: Store) -> None:
    """An insert already claimed by its inserter (``app.run``) keeps every field too."""
    job = full_job()
    result = store.job_insert(job, now=T0, owner="runner", lease_until=T0 + LEASE)
    record = store.job_get(job.id)
    assert_carries_every_field(record, job)
    assert record is not None
    assert record.state == "running"
    assert result.job == record


def test_a_debounce_that_replaces_a_queued_job_keeps_its_limit(store: Store) -> None:
    """A debounce replacing the queued job writes the new limit and arguments."""
    key = f"debounce:{uuid.uuid4().hex}"
    first = full_job(key=None, debounce_key=key)
    assert store.job_debounce(first, now=T0).created
    second = full_job(key=None, debounce_key=key, args='{"page": 8}', concurrency_limit=5)
    result = store.job_debounce(second, now=T0 + 1)
    assert not result.created
    record = store.job_get(first.id)
    assert record is not None
    assert (record.args, record.concurrency_limit) == ('{"page": 8}', 5)
    assert result.job == record


@pytest.mark.parametrize("path", INSERT_PATHS)
def test_a_limited_job_is_held_to_its_limit_whichever_path_enqueued_it(
    store: Store, path: Callable[[Store, NewJob], NewJob]
) -> None:
    """Four jobs of one concurrency key with limit 1: claims take one at a time, whether
    they came in one by one, in bulk, on the caller's connection or debounced."""
    group = f"{LIMITED}:channel-{uuid.uuid4().hex[:8]}"
    jobs = [
        full_job(key=None, concurrency_key=group, concurrency_limit=1, run_at=T0 + i / 8)
        for i in range(4)
    ]
    if path is _insert_many:
        assert all(result.created for result in store.job_insert_many(jobs, now=T0))
    else:
        jobs = [path(store, job) for job in jobs]
    claimed: list[str] = []
    for worker in ("worker-a", "worker-b"):
        claimed += [
            job.id
            for job in store.job_claim_due(
                owner=worker,
                names=(LIMITED,),
                queues=None,
                limit=10,
                now=T0 + 1,
                lease_until=T0 + 1 + LEASE,
                limited=(LIMITED,),
            )
        ]
    assert claimed == [jobs[0].id]
    assert store.job_claim(jobs[1].id, owner="c", now=T0 + 1, lease_until=T0 + 31) is None


def test_a_job_id_already_taken_is_refused(store: Store) -> None:
    """Inserting a second job under an id in use says so, and changes nothing."""
    job = full_job()
    assert store.job_insert(job, now=T0).created
    with pytest.raises(StoreError, match="already taken"):
        store.job_insert(dataclasses.replace(job, key=None, args="[]"), now=T0 + 1)
    assert_carries_every_field(store.job_get(job.id), job)
