"""cron.yaml schedules: App Engine's syntax translated to cron expressions, and the local runner.

The runner is tested on a real thread with the real clock shifted to just before a minute
boundary, and through ``start_local_cron`` adding real tasks to a real local queue.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("croniter", reason="the cron extra is not installed")

from taskhandler import CronJob, load_cron_yaml, taskqueue
from taskhandler._cron import CronSyntaxError, CronUnsupportedError, to_cron
from taskhandler._cron_runner import CronRunner
from taskhandler.exceptions import ConfigError

TRANSLATED = [
    pytest.param("every 5 minutes", ("*/5 * * * *",), id="every 5 minutes"),
    pytest.param("every 1 minutes", ("* * * * *",), id="every minute"),
    pytest.param("every 30 mins synchronized", ("*/30 * * * *",), id="synchronized"),
    pytest.param("every 24 hours", ("0 0 * * *",), id="every 24 hours"),
    pytest.param("every 3 hours", ("0 */3 * * *",), id="every 3 hours"),
    pytest.param("every 2 hours from 10:00 to 14:00", ("0 10,12,14 * * *",), id="hours in a range"),
    pytest.param(
        "every 5 minutes from 10:00 to 14:00",
        ("*/5 10-13 * * *", "0 14 * * *"),
        id="minutes in a range: the end time is a second expression",
    ),
    pytest.param(
        "every 1 hours from 22:00 to 02:00", ("0 0,1,2,22,23 * * *",), id="range across midnight"
    ),
    pytest.param(
        "every 90 minutes",
        ("0 */3 * * *", "30 1,4,7,10,13,16,19,22 * * *"),
        id="90 minutes: two sets of minutes",
    ),
    pytest.param("every monday 09:00", ("0 9 * * 1",), id="every monday"),
    pytest.param("every mon,wed,fri 17:30", ("30 17 * * 1,3,5",), id="weekday list"),
    pytest.param("every day 00:00", ("0 0 * * *",), id="every day"),
    pytest.param("Every  Day 07:05", ("5 7 * * *",), id="case and spaces"),
    pytest.param(
        "every wednesday of jan,feb 10:00", ("0 10 * 1-2 3",), id="weekday of some months"
    ),
    pytest.param(
        "1st,2nd,3rd,4th,5th sunday of month 06:00", ("0 6 * * 0",), id="all ordinals: every"
    ),
    pytest.param("1,15 of month 08:00", ("0 8 1,15 * *",), id="days of the month"),
    pytest.param("1 of jan,apr,jul,oct 00:00", ("0 0 1 */3 *",), id="quarterly"),
]


@pytest.mark.parametrize(("schedule", "expected"), TRANSLATED)
def test_translated(schedule: str, expected: tuple[str, ...]) -> None:
    """App Engine's schedule syntax becomes the cron expressions that give the same times."""
    assert to_cron(schedule) == expected


@pytest.mark.parametrize(
    ("schedule", "unsupported", "message"),
    [
        pytest.param(
            "1st,3rd monday of sep,oct,nov 17:00", True, "n-th weekday", id="n-th weekday"
        ),
        pytest.param("every 7 minutes", True, "does not divide the day", id="7 minutes"),
        pytest.param("every 5 hours", True, "does not divide the day", id="5 hours"),
        pytest.param(
            "every 7 minutes from 00:00 to 23:59", True, "7 cron expressions", id="7 in a range"
        ),
        pytest.param("every 0 minutes", False, "1 minute to 24 hours", id="zero interval"),
        pytest.param("every 25 hours", False, "1 minute to 24 hours", id="over a day"),
        pytest.param("every monday 25:00", False, "not a time of day", id="hour 25"),
        pytest.param("every funday 09:00", False, "not a weekday", id="bad weekday"),
        pytest.param("every monday of smarch 09:00", False, "not a month", id="bad month"),
        pytest.param("6th monday of month 09:00", False, "not a ordinal", id="bad ordinal"),
        pytest.param("32 of month 09:00", False, "1 to 31", id="day 32"),
        pytest.param("whenever", False, "not App Engine's cron syntax", id="nonsense"),
        pytest.param("*/5 * * * *", False, "not App Engine's cron syntax", id="a cron expression"),
    ],
)
def test_refused(schedule: str, unsupported: bool, message: str) -> None:
    """Bad syntax, and times cron cannot give, are refused with the reason."""
    with pytest.raises(CronSyntaxError, match=message) as info:
        to_cron(schedule)
    assert isinstance(info.value, CronUnsupportedError) is unsupported


@pytest.mark.parametrize(
    ("schedule", "loads"),
    [
        pytest.param("every 5 minutes", True, id="valid"),
        pytest.param("1st monday of month 09:00", True, id="valid on App Engine, not in cron"),
        pytest.param("every 5 minuets", False, id="misspelt"),
    ],
)
def test_load_cron_yaml_checks_the_syntax(tmp_path: Path, schedule: str, loads: bool) -> None:
    """load_cron_yaml refuses bad syntax with the file and line, and keeps App Engine's own."""
    path = tmp_path / "cron.yaml"
    path.write_text(
        f"cron:\n- url: /a\n  schedule: every day 00:00\n- url: /b\n  schedule: {schedule}\n"
    )
    if loads:
        assert load_cron_yaml(path)[1].schedule == schedule
    else:
        with pytest.raises(ConfigError, match=r"cron\[2\]\.schedule") as info:
            load_cron_yaml(path)
        assert str(path) in str(info.value)
        assert "line 5" in str(info.value) or ":5" in str(info.value)


def test_cron_job_cron_names_the_line() -> None:
    """CronJob.cron() refuses what cron cannot say with a ConfigError naming the line."""
    job = CronJob(url="/a", schedule="2nd tuesday of month 10:00", line=7)
    with pytest.raises(ConfigError, match="n-th weekday") as info:
        job.cron()
    assert "line 7" in str(info.value)


@pytest.mark.parametrize(
    ("timezone", "schedule", "since", "expected"),
    [
        pytest.param(
            None,
            "every day 09:00",
            "2026-03-02T08:00:00+00:00",
            "2026-03-02T09:00:00+00:00",
            id="UTC",
        ),
        pytest.param(
            "America/New_York",
            "every day 09:00",
            "2026-03-02T08:00:00+00:00",
            "2026-03-02T14:00:00+00:00",
            id="New York, winter",
        ),
        pytest.param(
            "America/New_York",
            "every day 09:00",
            "2026-07-02T08:00:00+00:00",
            "2026-07-02T13:00:00+00:00",
            id="New York, summer",
        ),
        pytest.param(
            "Australia/NSW",
            "every monday 09:00",
            "2026-03-01T00:00:00+00:00",
            "2026-03-01T22:00:00+00:00",
            id="Sydney, Monday morning is Sunday UTC",
        ),
    ],
)
def test_runner_times_in_the_job_time_zone(
    timezone: str | None, schedule: str, since: str, expected: str
) -> None:
    """The runner computes each job's next time in the job's time zone."""
    from datetime import datetime

    runner = CronRunner(
        [CronJob(url="/a", schedule=schedule, timezone=timezone)], lambda j, n: None, time.time
    )
    [due] = runner.next_times(datetime.fromisoformat(since).timestamp())
    assert due == datetime.fromisoformat(expected).timestamp()


def test_run_due_names_each_run_once() -> None:
    """A job due in the window is added once, under a name made of the job and its time."""
    added: list[tuple[str, str]] = []
    jobs = [
        CronJob(url="/a", schedule="every 1 minutes"),
        CronJob(url="/b", schedule="every day 00:00"),
    ]
    runner = CronRunner(jobs, lambda job, name: added.append((job.url, name)), time.time)
    start = 1_772_000_000.0  # 2026-02-25T06:13:20Z
    names = runner.run_due(start, start + 60)
    assert [url for url, _ in added] == ["/a"]
    assert names == [added[0][1]]
    assert names[0].startswith("cron-") and names[0].endswith(str(int(start) // 60 * 60 + 60))
    assert runner.run_due(start, start + 60) == names  # the same window, the same name


def test_runner_thread_adds_the_task_when_due() -> None:
    """On its thread the runner adds the job at the next minute (the clock is set just before it)."""
    now = time.time()
    shift = (now // 60 + 1) * 60 - 0.3 - now  # 0.3 s before a minute boundary
    added = threading.Event()
    names: list[str] = []

    def add(job: CronJob, name: str) -> None:
        names.append(name)
        added.set()

    runner = CronRunner(
        [CronJob(url="/a", schedule="every 1 minutes")], add, lambda: time.time() + shift
    )
    runner.start()
    try:
        assert added.wait(10)
    finally:
        runner.stop()
    assert len(names) == 1


def test_start_local_cron_adds_get_tasks_to_the_local_queue(tmp_path: Path) -> None:
    """start_local_cron adds each due job to the installed local queue as a named GET task."""
    from taskhandler._cron_runner import start_local_cron

    cron_yaml = tmp_path / "cron.yaml"
    cron_yaml.write_text("cron:\n- url: /tasks/tick\n  schedule: every 1 minutes\n")
    now = time.time()
    shift = (now // 60 + 1) * 60 - 0.3 - now
    seen: list[Any] = []

    def app(environ: Any, start_response: Any) -> list[bytes]:
        seen.append((environ["REQUEST_METHOD"], environ["PATH_INFO"]))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    queue = taskqueue.LocalTaskQueue(app, db=str(tmp_path / "q.db"))
    with taskqueue.use(queue):
        runner = start_local_cron(str(cron_yaml), clock=lambda: time.time() + shift)
        try:
            deadline = time.monotonic() + 10
            while not queue.run_until_idle() and time.monotonic() < deadline:
                time.sleep(0.05)
                if seen:
                    break
        finally:
            runner.stop()
            queue.close()
    assert seen[:1] == [("GET", "/tasks/tick")]
