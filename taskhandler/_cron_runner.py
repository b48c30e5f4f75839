"""The development server's cron: cron.yaml's jobs added to the local queue on schedule.

:class:`CronRunner` is a thread that adds each job's GET task to the queue when its time comes
(``croniter`` computes the times from :meth:`CronJob.cron <taskhandler.CronJob.cron>`'s
expressions, in the job's time zone), so the job runs through the same handler, trust and
console as any task. ``taskhandler serve --cron-yaml cron.yaml`` starts one
(:func:`start_local_cron`).
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import threading
import zoneinfo
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .config import CronJob
from .exceptions import ConfigError

__all__ = ["CronRunner", "start_local_cron"]

log = logging.getLogger("taskhandler")

INSTALL_HINT = "install the cron extra: pip install 'taskhandler[cron]'"


def _croniter() -> Any:
    try:
        from croniter import croniter
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ConfigError(f"running cron.yaml locally needs croniter: {INSTALL_HINT}") from exc
    return croniter


@dataclass(frozen=True)
class _Entry:
    job: CronJob
    expression: str
    zone: datetime.tzinfo


class CronRunner:
    """Adds each cron.yaml job's GET task to the queue at the job's times, on a thread.

    Args:
        jobs: the jobs (:func:`taskhandler.load_cron_yaml`).
        add: called with ``(job, task_name)`` when a job is due; normally it adds a GET task
            for ``job.url``. The name is the job and the time it was due, so a second runner
            (or a restart within the minute) adds it once.
        clock: seconds since the epoch.

    Raises:
        ConfigError: a schedule cron cannot express, or croniter is missing.
    """

    def __init__(
        self,
        jobs: Sequence[CronJob],
        add: Callable[[CronJob, str], None],
        clock: Callable[[], float],
    ) -> None:
        self._croniter = _croniter()
        self._entries: list[_Entry] = []
        for job in jobs:
            expressions = job.cron()
            zone = zoneinfo.ZoneInfo(job.timezone) if job.timezone else datetime.timezone.utc
            self._entries.extend(_Entry(job, expression, zone) for expression in expressions)
        self._add = add
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def next_times(self, after: float) -> list[float]:
        """Each expression's next due time after ``after`` (seconds since the epoch)."""
        found = []
        for entry in self._entries:
            start = datetime.datetime.fromtimestamp(after, tz=entry.zone)
            found.append(float(self._croniter(entry.expression, start).get_next(float)))
        return found

    def run_due(self, since: float, until: float) -> list[str]:
        """Add the tasks of the jobs due in ``(since, until]``; return their task names."""
        added = []
        for entry, due in zip(self._entries, self.next_times(since), strict=True):
            if due <= until:
                digest = hashlib.sha256(
                    f"{entry.job.url}\n{entry.job.schedule}".encode()
                ).hexdigest()[:12]
                name = f"cron-{digest}-{int(due)}"
                try:
                    self._add(entry.job, name)
                except Exception as exc:  # a duplicate or a stopped queue: log, keep running
                    log.warning("taskhandler: cron job %s not added: %s", entry.job.url, exc)
                else:
                    added.append(name)
        return added

    def _loop(self) -> None:
        last = self._clock()
        while not self._stop.is_set():
            upcoming = self.next_times(last)
            wait = min(upcoming, default=last + 3600) - self._clock()
            if self._stop.wait(max(0.0, min(wait, 60.0))):
                return
            now = self._clock()
            if now >= min(upcoming, default=now + 1):
                self.run_due(last, now)
                last = now

    def start(self) -> None:
        """Start the thread (a daemon: it never holds the process open)."""
        self._thread = threading.Thread(target=self._loop, name="taskhandler-cron", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and wait for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)


def start_local_cron(path: str, clock: Callable[[], float]) -> CronRunner:
    """Read a cron.yaml and start a :class:`CronRunner` that adds each job as a GET task.

    The tasks go to the ``default`` queue of the installed backend (the development server's
    local queue), so each run shows in the console and reaches the handler as a task:
    ``login: admin`` URLs accept it, as App Engine's cron requests were accepted.

    Raises:
        ConfigError: an invalid cron.yaml, a schedule cron cannot express, or no croniter.
    """
    from . import taskqueue
    from .config import load_cron_yaml

    def add(job: CronJob, name: str) -> None:
        taskqueue.Task(url=job.url, method="GET", name=name).add(queue_name="default")
        log.info("taskhandler: cron job %s (%s) added as task %s", job.url, job.schedule, name)

    runner = CronRunner(load_cron_yaml(path), add, clock)
    runner.start()
    return runner
