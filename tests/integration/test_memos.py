"""Memo keys: a step's result stored under a key shared by every job, from any process."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import idemapp
import pytest
from waiting import body_runs, wait_for

import stepstone
from stepstone import App, InvalidKey, JobFailed, Permanent, Retry
from stepstone._store.base import MAX_KEY_BYTES
from stepstone.testing import FakeClock


def ocr_app(app: App, calls: list[str]) -> tuple[object, object]:
    """An OCR step memoised by attachment, and a job calling it."""

    @app.step(key="ocr:{attachment_id}")
    def run_ocr(attachment_id: str, quality: str = "fast") -> str:
        calls.append(attachment_id)
        return f"text of {attachment_id} ({quality})"

    @app.job(name="index")
    def index(attachment_id: str) -> str:
        return run_ocr(attachment_id)

    return run_ocr, index


# --- in one process ------------------------------------------------------------------------


def test_a_second_job_with_the_same_key_reuses_the_value(app: App) -> None:
    """Two jobs (two different job runs, no job key) needing the same memo key: the body
    runs once; the second job's history records the value as a memo hit (0 attempts)."""
    calls: list[str] = []
    _, index = ocr_app(app, calls)
    first = app.enqueue(index, "a1")
    second = app.enqueue(index, "a1")
    app.run_worker(until_idle=True)
    assert first.result(timeout=5) == second.result(timeout=5) == "text of a1 (fast)"
    assert calls == ["a1"]
    hit, computed = sorted((first.steps()[0], second.steps()[0]), key=lambda s: s.attempts)
    assert (computed.memo, computed.attempts) == ("ocr:a1", 1)
    assert (hit.memo, hit.attempts, hit.value) == ("ocr:a1", 0, "text of a1 (fast)")
    memo = app.memo("ocr:a1")
    assert memo is not None
    assert (memo.state, memo.step) == ("done", "run_ocr")


def test_other_keys_compute_their_own_values(app: App) -> None:
    """Only the same key is shared: other attachments run the body."""
    calls: list[str] = []
    _, index = ocr_app(app, calls)
    for attachment in ["a1", "a2", "a1", "a3", "a2"]:
        app.enqueue(index, attachment)
    app.run_worker(until_idle=True)
    assert sorted(calls) == ["a1", "a2", "a3"]


def test_a_callable_key_and_a_template_over_defaults(app: App) -> None:
    """A key may be a callable taking the step's arguments; a template sees defaults."""
    calls: list[tuple[str, int]] = []

    @app.step(key=lambda doc, page=1: f"page:{doc}:{page}")
    def render(doc: str, page: int = 1) -> str:
        calls.append((doc, page))
        return f"{doc}#{page}"

    @app.step(key="size:{doc}:{unit}")
    def size(doc: str, unit: str = "kb") -> int:
        return len(doc)

    @app.job(name="pages")
    def pages(doc: str) -> list[str]:
        size(doc)
        return [render(doc), render(doc, 1), render(doc, page=2)]

    assert app.run(pages, "d") == ["d#1", "d#1", "d#2"]
    assert calls == [("d", 1), ("d", 2)]
    assert app.memo("size:d:kb") is not None


def test_forget_makes_the_next_call_compute_again(app: App) -> None:
    """app.forget(key) drops one memo, prefix=True every memo under a prefix; a job that
    already took the value keeps it in its own history (its replay is unchanged)."""
    calls: list[str] = []
    _, index = ocr_app(app, calls)
    first = app.enqueue(index, "a1")
    app.enqueue(index, "a2")
    app.run_worker(until_idle=True)
    assert app.forget("ocr:a1") == 1
    assert app.forget("ocr:a1") == 0
    app.enqueue(index, "a1")
    app.run_worker(until_idle=True)
    assert sorted(calls) == ["a1", "a1", "a2"]
    assert app.forget("ocr:", prefix=True) == 2
    assert app.memo("ocr:a2") is None
    assert first.steps()[0].value == "text of a1 (fast)"


def test_ttl_expires_the_value(app: App, clock: FakeClock) -> None:
    """With ttl=, the value is reused until it expires, then computed again; prune drops
    expired memos."""
    calls: list[str] = []

    @app.step(key="rate:{currency}", ttl=timedelta(minutes=10))
    def fetch_rate(currency: str) -> float:
        calls.append(currency)
        return 1.5

    @app.job(name="convert")
    def convert(currency: str) -> float:
        return fetch_rate(currency)

    app.run(convert, "EUR")
    clock.advance(599)
    app.run(convert, "EUR")
    assert calls == ["EUR"]
    clock.advance(2)
    app.run(convert, "EUR")
    assert calls == ["EUR", "EUR"]
    memo = app.memo("rate:EUR")
    assert memo is not None
    assert memo.expires_at == pytest.approx(clock.now() + 600)
    clock.advance(601)
    app.prune(older_than=timedelta(days=1))
    assert app.memo("rate:EUR") is None


def test_a_failed_step_is_not_memoised(app: App) -> None:
    """Failed attempts store nothing under the key: the next job runs the body again."""
    calls: list[str] = []

    @app.step(key="ocr:{attachment_id}", retry=Retry(max_attempts=2, initial=0.0))
    def run_ocr(attachment_id: str) -> str:
        calls.append(attachment_id)
        if len(calls) <= 2:
            raise ConnectionError("OCR down")
        return "text"

    @app.job(name="index", retry=Retry(max_attempts=1))
    def index(attachment_id: str) -> str:
        return run_ocr(attachment_id)

    with pytest.raises(JobFailed, match="OCR down"):
        app.run(index, "a1")
    assert app.memo("ocr:a1") is None
    assert app.run(index, "a1") == "text"
    assert calls == ["a1", "a1", "a1"]


def test_a_permanent_error_releases_the_key(app: App) -> None:
    """A step that fails for good gives its claim up at once (no live owner remains)."""

    @app.step(key="k:{x}")
    def boom(x: int) -> int:
        raise Permanent("no")

    @app.job(name="job", retry=Retry(max_attempts=1))
    def job(x: int) -> int:
        return boom(x)

    with pytest.raises(JobFailed):
        app.run(job, 1)
    assert app.memo("k:1") is None


def test_the_stored_value_decodes_to_the_return_type(app: App) -> None:
    """A memo hit returns the step's annotated type, like a replay."""
    from datetime import date

    @app.step(key="day:{n}")
    def day(n: int) -> date:
        return date(2024, 1, n)

    @app.job(name="days")
    def days(n: int) -> list[bool]:
        return [isinstance(day(n), date)]

    assert app.run(days, 3) == [True]
    assert app.run(days, 3) == [True]


def test_async_steps_share_memo_keys(app: App) -> None:
    """An async step with a memo key works the same way."""
    calls: list[str] = []

    @app.step(key="ocr:{attachment_id}")
    async def run_ocr(attachment_id: str) -> str:
        calls.append(attachment_id)
        return attachment_id.upper()

    @app.job(name="index_async")
    async def index(attachment_id: str) -> str:
        return await run_ocr(attachment_id)

    handles = [app.enqueue(index, "a1") for _ in range(3)]
    app.run_worker(until_idle=True)
    assert [h.result(timeout=5) for h in handles] == ["A1"] * 3
    assert calls == ["a1"]


def test_outside_a_job_a_memo_step_is_a_plain_call(app: App) -> None:
    """Called outside a running job, the step runs and stores nothing (like any step)."""
    calls: list[str] = []
    run_ocr, _ = ocr_app(app, calls)
    assert run_ocr("a1") == "text of a1 (fast)"  # type: ignore[operator]
    assert app.memo("ocr:a1") is None


def test_the_idempotency_key_follows_the_memo_key(app: App) -> None:
    """Inside a memo step, current().idempotency_key is derived from the memo key: every
    job computing the key presents the same one to an external API."""
    seen: list[str] = []

    @app.step(key="charge:{order}")
    def charge(order: str) -> str:
        seen.append(stepstone.current().idempotency_key)
        raise ConnectionError("lost")

    @app.job(name="bill", retry=Retry(max_attempts=1))
    def bill(order: str) -> str:
        return charge(order)

    for _ in range(2):
        with pytest.raises(JobFailed):
            app.run(bill, "o1")
    assert len(seen) == 6
    assert len(set(seen)) == 1


def test_two_threads_needing_one_key_run_the_body_once(make_app: Callable[..., App]) -> None:
    """Two jobs run at the same moment in two threads: one computes, the other waits for
    its value (it does not run the body)."""
    app = make_app(poll_interval=0.05)
    started, release = threading.Event(), threading.Event()
    calls: list[str] = []

    @app.step(key="ocr:{attachment_id}")
    def run_ocr(attachment_id: str) -> str:
        calls.append(attachment_id)
        started.set()
        assert release.wait(10)
        return "text"

    @app.job(name="index")
    def index(attachment_id: str, n: int) -> str:
        return run_ocr(attachment_id)

    results: list[str] = []
    first = threading.Thread(target=lambda: results.append(app.run(index, "a1", 1)))
    first.start()
    assert started.wait(10)
    second = threading.Thread(target=lambda: results.append(app.run(index, "a1", 2)))
    second.start()
    time.sleep(0.3)  # the second run is waiting for the key now
    memo = app.memo("ocr:a1")
    assert memo is not None
    assert memo.state == "computing"
    release.set()
    first.join(10)
    second.join(10)
    assert results == ["text", "text"]
    assert calls == ["a1"]


# --- bad input -----------------------------------------------------------------------------


def test_a_template_naming_a_missing_argument_fails_at_declaration(app: App) -> None:
    """A memo key template naming a parameter the step lacks: InvalidKey at decoration
    time, naming the field and the parameters."""
    with pytest.raises(InvalidKey, match=r"\{attachment\}.*no parameter 'attachment'.*"):

        @app.step(key="ocr:{attachment}")
        def run_ocr(attachment_id: str) -> str:
            return ""

    with pytest.raises(InvalidKey, match="positional field"):

        @app.step(key="ocr:{0}")
        def other(attachment_id: str) -> str:
            return ""


def test_a_key_longer_than_the_store_allows_is_refused(app: App) -> None:
    """A memo key or a job key over MAX_KEY_BYTES: InvalidKey, never a truncated key."""
    calls: list[str] = []
    _, index = ocr_app(app, calls)
    with pytest.raises(InvalidKey, match=f"at most {MAX_KEY_BYTES:,} bytes"):
        app.enqueue(index, "a1", key="k" * (MAX_KEY_BYTES + 1))
    app.enqueue(index, "a1", key="é" * (MAX_KEY_BYTES // 2))  # 2 bytes each: fits
    with pytest.raises(JobFailed, match="InvalidKey"):
        app.run(index, "x" * MAX_KEY_BYTES)
    assert calls == []


# --- across processes ----------------------------------------------------------------------


def test_two_processes_needing_one_key_run_the_body_once(
    db_url: str, tmp_path: Path, spawn_worker
) -> None:
    """Two worker processes each run a job needing the same key at the same moment: one
    computes (its body blocks), the other waits; the body ran once, both jobs succeed."""
    log = tmp_path / "ocr.log"
    Path(f"{log}.block-ocr").touch()
    app = idemapp.build_app(db_url)
    first = app.enqueue("idemapp.index", "a1", str(log))
    second = app.enqueue("idemapp.index", "a1", str(log))
    workers = [spawn_worker(module="idemapp", concurrency=1) for _ in range(2)]
    wait_for(lambda: first.state == second.state == "running", what="both jobs to run")
    wait_for(lambda: any(tmp_path.glob("ocr.log.ocr-blocked.*")), what="one body to block")
    time.sleep(0.3)  # the other job polls the key meanwhile
    assert len(list(tmp_path.glob("ocr.log.ocr-blocked.*"))) == 1
    Path(f"{log}.release").touch()
    assert first.result(timeout=20) == second.result(timeout=20) == "text of a1"
    assert body_runs(log) == {("ocr:a1", "subprocess"): 1}
    assert sorted(h.steps()[0].attempts for h in (first, second)) == [0, 1]
    for worker in workers:
        worker.signal(signal.SIGTERM)
        assert worker.wait() == 0


def test_a_waiter_takes_the_key_over_when_its_owner_is_killed(
    db_url: str, tmp_path: Path, spawn_worker
) -> None:
    """SIGKILL the process computing a key: once its lease expires, a job waiting for the
    key takes it over and computes it; the killed job, replayed, reuses that value."""
    log = tmp_path / "ocr.log"
    Path(f"{log}.block-ocr").touch()
    app = idemapp.build_app(db_url, lease=1.0)
    owner = app.enqueue("idemapp.index", "a1", str(log))
    worker = spawn_worker(module="idemapp", concurrency=1)
    wait_for(lambda: any(tmp_path.glob("ocr.log.ocr-blocked.*")), what="the body to block")
    waiter = app.enqueue("idemapp.index", "a1", str(log))
    worker.signal(signal.SIGKILL)
    assert worker.wait() == -signal.SIGKILL
    app.run_worker(concurrency=2, until_idle=True)
    assert owner.result(timeout=5) == waiter.result(timeout=5) == "text of a1"
    assert body_runs(log) == {("ocr:a1", "subprocess"): 1, ("ocr:a1", "test"): 1}
    assert owner.attempts == 1  # a reclaim is a replay, not a new attempt
