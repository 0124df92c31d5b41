"""Cron schedules: each tick's job is enqueued in advance, once, by whichever worker gets
there first, and runs once when due; missed ticks follow the job's ``missed`` policy.

The fake clock starts at ``EPOCH`` (2023-11-14T22:13:20Z).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import limitsapp
import pytest

import stepstone
from stepstone import App, JobState, StepstoneError
from stepstone._enqueue import keep_schedule
from stepstone.testing import EPOCH, FakeClock


def at(text: str) -> float:
    """Epoch seconds of a UTC time written ``YYYY-MM-DDTHH:MM``."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def tick_key(name: str, text: str) -> str:
    """The job key of the tick at UTC time ``YYYY-MM-DDTHH:MM``."""
    return f"cron:{name}:{text}:00Z"


def five_minute_keys(first: str, count: int, name: str = "report") -> list[str]:
    """The keys of ``count`` ticks five minutes apart, from UTC time ``first``."""
    start = at(first)
    return [
        tick_key(name, datetime.fromtimestamp(start + 300 * i, UTC).strftime("%Y-%m-%dT%H:%M"))
        for i in range(count)
    ]


def declare_report(app: App, ran: list[str], **options: Any) -> Any:
    """A cron job ``report`` (every 5 minutes unless told) that records its tick's key."""
    options.setdefault("cron", "*/5 * * * *")

    @app.job(name="report", **options)
    def report() -> str:
        key = stepstone.current().key
        assert key is not None
        ran.append(key)
        return key

    return report


def cron_jobs(app: App, name: str = "report") -> dict[str, tuple[JobState, float]]:
    """Every job of the cron job, by key: (state, run_at)."""
    return {
        str(record.key): (record.state, record.run_at)
        for record in app.store.job_list(name=name, limit=5000)
    }


def test_keep_schedule_enqueues_the_next_tick_in_advance(app: App, clock: FakeClock) -> None:
    """keep_schedule records the next tick and enqueues its job (key cron:<name>:<UTC>) once."""
    declare_report(app, [])
    keep_schedule(app.runtime, app.jobs["report"], clock.now())
    tick = at("2023-11-14T22:15")
    assert app.store.schedule_list() == [("report", tick)]
    assert cron_jobs(app) == {tick_key("report", "2023-11-14T22:15"): (JobState.QUEUED, tick)}
    clock.advance(60)
    keep_schedule(app.runtime, app.jobs["report"], clock.now())
    keep_schedule(app.runtime, app.jobs["report"], clock.now())
    assert len(cron_jobs(app)) == 1
    assert app.store.schedule_list() == [("report", tick)]


def test_the_tick_runs_once_when_due(app: App, clock: FakeClock) -> None:
    """A worker runs a tick once when due (current().key names it) and then queues the next tick."""
    ran: list[str] = []
    declare_report(app, ran)
    app.run_worker(until_idle=True)
    assert ran == []
    first = tick_key("report", "2023-11-14T22:15")
    assert cron_jobs(app) == {first: (JobState.QUEUED, at("2023-11-14T22:15"))}
    clock.advance(at("2023-11-14T22:15") - clock.now())
    app.run_worker(until_idle=True)
    assert ran == [first]
    assert app.get_job_by_key(first).result(timeout=5) == first
    second = tick_key("report", "2023-11-14T22:20")
    assert cron_jobs(app)[second] == (JobState.QUEUED, at("2023-11-14T22:20"))
    assert app.store.schedule_list() == [("report", at("2023-11-14T22:20"))]
    app.run_worker(until_idle=True)
    clock.advance(30)
    app.run_worker(until_idle=True)
    assert ran == [first]


def test_a_cron_job_runs_every_tick_while_workers_keep_running(app: App, clock: FakeClock) -> None:
    """A worker polled every minute for half an hour runs each of the six ticks once."""
    ran: list[str] = []
    declare_report(app, ran)
    for _ in range(30):
        app.run_worker(until_idle=True)
        clock.advance(60)
    assert ran == five_minute_keys("2023-11-14T22:15", 6)


def test_two_apps_on_one_database_enqueue_each_tick_once(
    make_app: Callable[..., App], clock: FakeClock
) -> None:
    """Two Apps on one database keeping the schedule for an hour enqueue and run each tick once."""
    runs: list[list[str]] = [[], []]
    apps = [make_app(clock=clock), make_app(clock=clock)]
    for app, ran in zip(apps, runs, strict=True):
        declare_report(app, ran)
    for step in range(24):  # an hour, in steps of 150 s
        order = apps if step % 2 else apps[::-1]
        for app in order:
            keep_schedule(app.runtime, app.jobs["report"], clock.now())
        order[0].run_worker(until_idle=True)
        clock.advance(150)
    every = runs[0] + runs[1]
    assert sorted(every) == five_minute_keys("2023-11-14T22:15", 12)
    assert len(every) == len(set(every))
    jobs = cron_jobs(apps[0])
    assert len(jobs) == 13  # twelve ran, the next one is queued
    assert jobs[tick_key("report", "2023-11-14T23:15")][0] == JobState.QUEUED


def test_racing_workers_record_one_schedule_and_one_job(
    make_app: Callable[..., App], clock: FakeClock
) -> None:
    """Four Apps keeping a fresh schedule at the same moment: one schedule row, one job."""
    apps = [make_app(clock=clock) for _ in range(4)]
    for app in apps:
        declare_report(app, [])
        assert app.store is not None  # opened (and migrated) before the race
    start = threading.Barrier(len(apps))
    errors: list[BaseException] = []

    def keep(app: App) -> None:
        start.wait()
        try:
            keep_schedule(app.runtime, app.jobs["report"], clock.now())
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=keep, args=(app,)) for app in apps]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert apps[0].store.schedule_list() == [("report", at("2023-11-14T22:15"))]
    assert list(cron_jobs(apps[0])) == [tick_key("report", "2023-11-14T22:15")]


def _run_after_an_hour_down(app: App, clock: FakeClock) -> None:
    """A worker keeps the schedule, stops for an hour (12 ticks pass), and comes back (with
    one slot, so that due jobs run in order)."""
    app.run_worker(concurrency=1, until_idle=True)
    clock.advance(3600)  # now 23:13:20
    app.run_worker(concurrency=1, until_idle=True)


def test_missed_latest_runs_the_most_recent_missed_tick_once(app: App, clock: FakeClock) -> None:
    """missed="latest" after an hour down: the pre-enqueued tick runs late, then only the latest."""
    ran: list[str] = []
    declare_report(app, ran, missed="latest")
    _run_after_an_hour_down(app, clock)
    assert ran == [
        tick_key("report", "2023-11-14T22:15"),
        tick_key("report", "2023-11-14T23:10"),
    ]
    assert app.store.schedule_list() == [("report", at("2023-11-14T23:15"))]
    assert cron_jobs(app)[tick_key("report", "2023-11-14T23:15")][0] == JobState.QUEUED
    assert len(cron_jobs(app)) == 3


def test_missed_all_runs_every_missed_tick(app: App, clock: FakeClock) -> None:
    """missed="all" after an hour down: each of the 12 ticks that passed runs once, oldest first."""
    ran: list[str] = []
    declare_report(app, ran, missed="all")
    _run_after_an_hour_down(app, clock)
    assert ran == five_minute_keys("2023-11-14T22:15", 12)
    assert app.store.schedule_list() == [("report", at("2023-11-14T23:15"))]


def test_missed_skip_runs_only_the_tick_enqueued_before_the_outage(
    app: App, clock: FakeClock
) -> None:
    """missed="skip" after an hour down: only the pre-enqueued tick runs; the next one on time."""
    ran: list[str] = []
    declare_report(app, ran, missed="skip")
    _run_after_an_hour_down(app, clock)
    assert ran == [tick_key("report", "2023-11-14T22:15")]
    assert app.store.schedule_list() == [("report", at("2023-11-14T23:15"))]
    clock.advance(at("2023-11-14T23:15") - clock.now())
    app.run_worker(until_idle=True)
    assert ran[1:] == [tick_key("report", "2023-11-14T23:15")]


def test_cancelling_the_overdue_tick_skips_it(app: App, clock: FakeClock) -> None:
    """missed="skip" with the overdue tick cancelled: nothing runs until the next tick."""
    ran: list[str] = []
    declare_report(app, ran, missed="skip")
    app.run_worker(concurrency=1, until_idle=True)
    clock.advance(3600)
    assert app.cancel(app.get_job_by_key(tick_key("report", "2023-11-14T22:15")).id)
    app.run_worker(concurrency=1, until_idle=True)
    assert ran == []
    assert app.store.schedule_list() == [("report", at("2023-11-14T23:15"))]


def test_a_time_zone_moves_the_ticks(app: App, clock: FakeClock) -> None:
    """ "0 9 * * *" is 09:00 UTC, 14:00 UTC in New York and 08:00 UTC in Berlin (a tzinfo)."""
    for name, timezone in [
        ("utc_nine", None),
        ("ny_nine", "America/New_York"),
        ("berlin_nine", ZoneInfo("Europe/Berlin")),
    ]:
        app.job(name=name, cron="0 9 * * *", timezone=timezone)(lambda: None)
        keep_schedule(app.runtime, app.jobs[name], clock.now())
    assert dict(app.store.schedule_list()) == {
        "berlin_nine": at("2023-11-15T08:00"),
        "ny_nine": at("2023-11-15T14:00"),
        "utc_nine": at("2023-11-15T09:00"),
    }
    assert cron_jobs(app, "ny_nine") == {
        tick_key("ny_nine", "2023-11-15T14:00"): (JobState.QUEUED, at("2023-11-15T14:00"))
    }


@pytest.mark.parametrize(
    ("start", "expected"),
    [
        pytest.param("2024-03-30T12:00", ["2024-03-31T01:00", "2024-04-01T00:30"], id="spring"),
        pytest.param("2024-10-26T12:00", ["2024-10-27T00:30", "2024-10-28T01:30"], id="fall"),
    ],
)
def test_daylight_saving_changes_follow_crons_rules(
    make_app: Callable[..., App], start: str, expected: list[str]
) -> None:
    """02:30 Berlin runs right after a spring-forward jump, and once on a fall-back night."""
    clock = FakeClock(at(start))
    app = make_app(clock=clock)
    ran: list[str] = []
    declare_report(app, ran, cron="30 2 * * *", timezone="Europe/Berlin")
    for _ in expected:
        app.run_worker(until_idle=True)
        [(_name, tick)] = app.store.schedule_list()
        clock.advance(tick - clock.now())
    app.run_worker(until_idle=True)
    assert ran == [tick_key("report", moment) for moment in expected]


def test_a_worker_keeps_only_the_schedules_of_its_queues(app: App) -> None:
    """A worker serving other queues neither records nor enqueues a cron job's ticks."""
    app.job(name="nightly", cron="0 3 * * *", queue="reports")(lambda: None)

    @app.job(name="other", queue="mail")
    def other() -> None:
        return None

    app.run_worker(queues=["mail"], until_idle=True)
    assert app.store.schedule_list() == []
    assert app.store.job_list() == []
    app.run_worker(queues=["reports"], until_idle=True)
    assert [name for name, _ in app.store.schedule_list()] == ["nightly"]


def test_current_key_names_the_tick(app: App, clock: FakeClock) -> None:
    """Inside a cron job, stepstone.current().key is cron:<name>:<tick in UTC>."""
    seen: list[Any] = []

    @app.job(name="stamp", cron="0 * * * *")
    def stamp() -> None:
        seen.append(stepstone.current().key)

    app.run_worker(until_idle=True)
    clock.advance(at("2023-11-14T23:00") - clock.now())
    app.run_worker(until_idle=True)
    assert seen == ["cron:stamp:2023-11-14T23:00:00Z"]


def test_a_new_default_argument_does_not_stop_the_schedule(
    make_app: Callable[..., App], clock: FakeClock
) -> None:
    """A new defaulted parameter does not crash the worker on a tick the old release enqueued."""
    old = make_app(clock=clock)

    @old.job(name="nightly", cron="*/5 * * * *")
    def nightly_v1(dry_run: bool = False) -> str:
        return "v1"

    old.run_worker(until_idle=True)
    new = make_app(clock=clock)

    @new.job(name="nightly", cron="*/5 * * * *")
    def nightly_v2(dry_run: bool = False, limit: int = 100) -> str:
        return f"v2 limit={limit}"

    clock.advance(at("2023-11-14T22:15") - clock.now())
    new.run_worker(until_idle=True)
    tick = new.get_job_by_key(tick_key("nightly", "2023-11-14T22:15"))
    assert tick.result(timeout=5) == "v2 limit=100"
    assert new.store.schedule_list() == [("nightly", at("2023-11-14T22:20"))]
    assert cron_jobs(new, "nightly")[tick_key("nightly", "2023-11-14T22:20")][0] == (
        JobState.QUEUED
    )


def test_a_bad_cron_expression_fails_at_declaration() -> None:
    """A malformed expression is a ValueError naming the job and the expected format."""
    app = App("sqlite:///:memory:")
    for expression in ["every day", "61 * * * *", "* * * *"]:
        with pytest.raises(ValueError, match="is not a cron expression") as info:
            app.job(name="broken", cron=expression)(lambda: None)
        assert "broken" in str(info.value)
    assert "broken" not in app.jobs


def test_an_unknown_time_zone_fails_at_declaration() -> None:
    """An unknown IANA name is a ValueError saying so."""
    app = App("sqlite:///:memory:")
    with pytest.raises(ValueError, match="unknown time zone 'Mars/Olympus'"):
        app.job(name="mars", cron="0 9 * * *", timezone="Mars/Olympus")(lambda: None)


def test_a_cron_job_with_required_arguments_fails_at_declaration() -> None:
    """A cron job with a required parameter is refused at declaration; defaulted ones are fine."""
    app = App("sqlite:///:memory:")

    def needs(customer: str) -> None:
        return None

    with pytest.raises(StepstoneError, match="must be callable with no arguments"):
        app.job(name="needs", cron="0 9 * * *")(needs)

    def defaults(customer: str = "all") -> str:
        return customer

    app.job(name="defaults", cron="0 9 * * *")(defaults)
    assert "defaults" in app.jobs


def test_an_unknown_missed_policy_fails_at_declaration() -> None:
    """missed= takes latest, all or skip."""
    app = App("sqlite:///:memory:")
    with pytest.raises(ValueError, match="missed="):
        app.job(name="x", cron="0 9 * * *", missed="sometimes")(lambda: None)


def test_two_worker_processes_on_a_fresh_database_make_one_schedule_and_one_tick(
    db_url: str, spawn_worker
) -> None:
    """Two worker processes started on a fresh database make one schedule row and one tick job."""
    env = {"LIMITSAPP_CRON": "1"}
    workers = [spawn_worker(module="limitsapp", until_idle=True, env_extra=env) for _ in range(2)]
    for worker in workers:
        assert worker.wait(timeout=60) == 0, worker.stderr()
    app = limitsapp.build_app(db_url)
    schedule = app.store.schedule_list()
    assert [name for name, _ in schedule] == ["limits.yearly"]
    tick = schedule[0][1]
    moment = datetime.fromtimestamp(tick, UTC)
    assert (moment.month, moment.day, moment.hour, moment.minute) == (1, 1, 0, 0)
    assert moment.year == datetime.now(UTC).year + 1
    [job] = app.store.job_list()
    assert (job.name, job.state, job.run_at) == ("limits.yearly", JobState.QUEUED, tick)
    assert job.key == f"cron:limits.yearly:{moment.year}-01-01T00:00:00Z"


def test_the_epoch_is_what_these_tests_assume() -> None:
    """The fake clock starts at 2023-11-14T22:13:20Z."""
    assert at("2023-11-14T22:13") + 20 == EPOCH
