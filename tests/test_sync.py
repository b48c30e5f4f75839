"""``taskhandler queues sync`` and ``taskhandler cron sync``: queue.yaml and cron.yaml deployed.

Queues are synced against the Cloud Tasks emulator (``gcloud-tasks-emulator``, on 127.0.0.1 in
a subprocess, reached by the official client). The emulator stores a queue's settings when it
creates the queue but ignores UpdateQueue on an existing one, so an update is checked by the
diff printed and the call made, not by reading the queue back.

Cloud Scheduler has no emulator, and the real service cannot be reached from the test suite,
so cron jobs are synced against ``FakeScheduler``: a real gRPC server on 127.0.0.1 speaking the
real ``google.cloud.scheduler.v1.CloudScheduler`` protocol to the official client, storing the
jobs it is given and answering List/Create/Update/Delete as the API documents (ALREADY_EXISTS
for a taken name, NOT_FOUND for a missing one, output-only fields filled in).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("google.cloud.tasks_v2", reason="the cloudtasks extra is not installed")
pytest.importorskip("google.cloud.scheduler_v1", reason="the cloudtasks extra is not installed")

import grpc
from google.cloud import scheduler_v1
from google.cloud.scheduler_v1.services.cloud_scheduler.transports import (
    CloudSchedulerGrpcTransport,
)
from google.protobuf import empty_pb2

from taskhandler import load_cron_yaml
from taskhandler._sync import JOB_PREFIX, sync_cron, sync_queues
from taskhandler.cli import main
from taskhandler.exceptions import ConfigError
from taskhandler.taskqueue import load_queue_yaml
from taskhandler.taskqueue.cloudtasks import emulator_client

from .servers import free_port, stop, wait_for_port

PROJECT = "sync-project"
LOCATION = "us-central1"
PARENT = f"projects/{PROJECT}/locations/{LOCATION}"
LAUNCHER = str(Path(__file__).with_name("emulator_on_loopback.py"))

# -- Cloud Tasks: the emulator ------------------------------------------------------------------


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("sync-emulator") / "emulator.log"
    with open(log, "wb") as output:
        proc = subprocess.Popen(
            [sys.executable, LAUNCHER, str(port), str(free_port()), "1"],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(port, None)
        if proc.poll() is not None:
            raise RuntimeError(log.read_text())
        yield f"127.0.0.1:{port}"
    finally:
        stop(proc)


@pytest.fixture
def tasks_client(emulator: str) -> Iterator[Any]:
    client = emulator_client(emulator)
    yield client
    client.transport.close()


def _queue_yaml(tmp_path: Path, text: str) -> dict[str, Any]:
    path = tmp_path / "queue.yaml"
    path.write_text(text)
    return load_queue_yaml(path)


QUEUE_YAML = """\
queue:
- name: {mail}
  rate: 5/s
  bucket_size: 20
  max_concurrent_requests: 10
  retry_parameters:
    task_retry_limit: 4
    task_age_limit: 2h
    min_backoff_seconds: 1
    max_backoff_seconds: 60
    max_doublings: 3
- name: {slow}
  rate: 1/m
  target: worker
- name: {pull}
  mode: pull
"""


@pytest.mark.slow
def test_queues_created_then_up_to_date(tmp_path: Path, tasks_client: Any) -> None:
    """A first sync creates each push queue with the file's settings; a second finds no change."""
    names = {key: f"{key}-{uuid.uuid4().hex[:8]}" for key in ("mail", "slow", "pull")}
    queues = _queue_yaml(tmp_path, QUEUE_YAML.format(**names))
    planned = sync_queues(queues, PROJECT, LOCATION, client=tasks_client, dry_run=True)
    # queue.yaml always has the default queue too (created by the first test to sync).
    planned = [c for c in planned if not c.name.endswith("/default")]
    assert [(c.action, c.name.rsplit("/", 1)[-1]) for c in planned] == [
        ("create", names["mail"]),
        ("create", names["slow"]),
    ]
    existing = {q.name for q in tasks_client.list_queues(parent=PARENT)}
    assert f"{PARENT}/queues/{names['mail']}" not in existing  # the dry run made nothing

    changes = sync_queues(queues, PROJECT, LOCATION, client=tasks_client)
    changes = [c for c in changes if not c.name.endswith("/default")]
    assert [str(c) for c in changes] == [str(c) for c in planned]
    stored = {q.name: q for q in tasks_client.list_queues(parent=PARENT)}
    mail = stored[f"{PARENT}/queues/{names['mail']}"]
    assert mail.rate_limits.max_dispatches_per_second == 5
    assert mail.rate_limits.max_burst_size == 20
    assert mail.rate_limits.max_concurrent_dispatches == 10
    assert mail.retry_config.max_attempts == 5
    assert mail.retry_config.max_retry_duration.total_seconds() == 7200
    assert mail.retry_config.min_backoff.total_seconds() == 1
    assert mail.retry_config.max_backoff.total_seconds() == 60
    assert mail.retry_config.max_doublings == 3
    slow = stored[f"{PARENT}/queues/{names['slow']}"]
    assert slow.rate_limits.max_dispatches_per_second == pytest.approx(1 / 60)
    assert slow.app_engine_routing_override.service == "worker"
    assert slow.retry_config.max_attempts == -1  # no task_retry_limit: unlimited
    assert f"{PARENT}/queues/{names['pull']}" not in stored  # Cloud Tasks has no pull queues

    assert sync_queues(queues, PROJECT, LOCATION, client=tasks_client) == []


@pytest.mark.slow
def test_changed_queue_is_updated(tmp_path: Path, tasks_client: Any) -> None:
    """A changed rate is an update of that field only, shown as old -> new."""
    name = f"q-{uuid.uuid4().hex[:8]}"
    sync_queues(
        _queue_yaml(tmp_path, f"queue:\n- name: {name}\n  rate: 5/s\n"),
        PROJECT,
        LOCATION,
        client=tasks_client,
    )
    changed = _queue_yaml(tmp_path, f"queue:\n- name: {name}\n  rate: 10/s\n")
    [change] = sync_queues(changed, PROJECT, LOCATION, client=tasks_client)
    assert change.action == "update"
    assert change.fields == {"rate_limits.max_dispatches_per_second": (5.0, 10.0)}
    assert (
        str(change)
        == f"~ {PARENT}/queues/{name} (rate_limits.max_dispatches_per_second: 5.0 -> 10.0)"
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        pytest.param(["--dry-run"], "would change", id="dry run"),
        pytest.param([], "changed", id="applied"),
    ],
)
def test_queues_sync_command(
    tmp_path: Path,
    emulator: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    expected: str,
) -> None:
    """`taskhandler queues sync` prints the diff and a count; CLOUD_TASKS_EMULATOR_HOST picks the emulator."""
    monkeypatch.setenv("CLOUD_TASKS_EMULATOR_HOST", emulator)
    name = f"cli-{uuid.uuid4().hex[:8]}"
    path = tmp_path / "queue.yaml"
    path.write_text(f"queue:\n- name: {name}\n  rate: 2/s\n")
    args = ["queues", "sync", str(path), "--project", PROJECT, "--location", LOCATION, *extra]
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    [line] = [line for line in lines if line.startswith(f"+ {PARENT}/queues/{name} (")]
    assert "rate_limits.max_dispatches_per_second=2.0" in line
    assert lines[-1] in (f"1 {expected}", f"2 {expected}")  # 2: the default queue too
    queues = {q.name for q in emulator_client(emulator).list_queues(parent=PARENT)}
    assert (f"{PARENT}/queues/{name}" in queues) is (extra == [])


def test_queues_sync_bad_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A bad queue.yaml is a ConfigError naming the file, before any API call."""
    path = tmp_path / "queue.yaml"
    path.write_text("queue:\n- name: a\n  rate: fast\n")
    assert main(["queues", "sync", str(path), "--project", PROJECT, "--location", LOCATION]) == 2
    assert str(path) in capsys.readouterr().err


# -- Cloud Scheduler: a fake over real gRPC ------------------------------------------------------

SCHEDULER = "google.cloud.scheduler.v1.CloudScheduler"


class FakeScheduler:
    """Cloud Scheduler's job calls as the API documents them, stored in memory, over real gRPC."""

    def __init__(self) -> None:
        self.jobs: dict[str, scheduler_v1.Job] = {}
        self.calls: list[str] = []
        #: a status to answer every CreateJob with, when set
        self.refuse_create: tuple[grpc.StatusCode, str] | None = None
        self._lock = threading.Lock()

    def list_jobs(
        self, request: scheduler_v1.ListJobsRequest, context: grpc.ServicerContext
    ) -> scheduler_v1.ListJobsResponse:
        self.calls.append("ListJobs")
        return scheduler_v1.ListJobsResponse(
            jobs=[
                job
                for name, job in sorted(self.jobs.items())
                if name.startswith(request.parent + "/jobs/")
            ]
        )

    def create_job(
        self, request: scheduler_v1.CreateJobRequest, context: grpc.ServicerContext
    ) -> scheduler_v1.Job:
        self.calls.append("CreateJob")
        if self.refuse_create is not None:
            context.abort(*self.refuse_create)
        with self._lock:
            job = request.job
            if job.name in self.jobs:
                context.abort(grpc.StatusCode.ALREADY_EXISTS, "Job already exists.")
            job.state = scheduler_v1.Job.State.ENABLED  # output only, filled in by the service
            self.jobs[job.name] = job
        return job

    def update_job(
        self, request: scheduler_v1.UpdateJobRequest, context: grpc.ServicerContext
    ) -> scheduler_v1.Job:
        self.calls.append("UpdateJob")
        with self._lock:
            if request.job.name not in self.jobs:
                context.abort(grpc.StatusCode.NOT_FOUND, "Job not found.")
            job = request.job
            job.state = scheduler_v1.Job.State.ENABLED
            self.jobs[job.name] = job
        return job

    def delete_job(
        self, request: scheduler_v1.DeleteJobRequest, context: grpc.ServicerContext
    ) -> empty_pb2.Empty:
        self.calls.append("DeleteJob")
        with self._lock:
            if self.jobs.pop(request.name, None) is None:
                context.abort(grpc.StatusCode.NOT_FOUND, "Job not found.")
        return empty_pb2.Empty()

    def handler(self) -> grpc.GenericRpcHandler:
        def method(fn: Any, request_type: Any, serializer: Any) -> Any:
            return grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=request_type.deserialize, response_serializer=serializer
            )

        return grpc.method_handlers_generic_handler(
            SCHEDULER,
            {
                "ListJobs": method(
                    self.list_jobs,
                    scheduler_v1.ListJobsRequest,
                    scheduler_v1.ListJobsResponse.serialize,
                ),
                "CreateJob": method(
                    self.create_job, scheduler_v1.CreateJobRequest, scheduler_v1.Job.serialize
                ),
                "UpdateJob": method(
                    self.update_job, scheduler_v1.UpdateJobRequest, scheduler_v1.Job.serialize
                ),
                "DeleteJob": method(
                    self.delete_job,
                    scheduler_v1.DeleteJobRequest,
                    empty_pb2.Empty.SerializeToString,
                ),
            },
        )


@pytest.fixture
def scheduler() -> Iterator[tuple[FakeScheduler, Any]]:
    fake = FakeScheduler()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((fake.handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield (
            fake,
            scheduler_v1.CloudSchedulerClient(
                transport=CloudSchedulerGrpcTransport(channel=channel)
            ),
        )
    finally:
        channel.close()
        server.stop(grace=None).wait(5)


CRON_YAML = """\
cron:
- description: daily summary
  url: /tasks/summary
  schedule: every 24 hours
  target: worker
- url: /mail/weekly
  schedule: every monday 09:00
  timezone: Australia/NSW
  attempt_deadline: 600s
  retry_parameters:
    job_retry_limit: 2
    min_backoff_seconds: 5
- url: /tasks/cleanup
  schedule: every 5 minutes from 10:00 to 14:00
"""


def _cron(tmp_path: Path, text: str = CRON_YAML) -> Any:
    path = tmp_path / "cron.yaml"
    path.write_text(text)
    return load_cron_yaml(path)


def test_cron_jobs_created_then_up_to_date(
    tmp_path: Path, scheduler: tuple[FakeScheduler, Any]
) -> None:
    """Each schedule becomes one job per cron expression, with its time zone, deadline and retries."""
    fake, client = scheduler
    jobs = _cron(tmp_path)
    planned = sync_cron(jobs, PROJECT, LOCATION, client=client, dry_run=True)
    assert [c.action for c in planned] == ["create"] * 4
    assert fake.jobs == {}
    sync_cron(jobs, PROJECT, LOCATION, client=client)
    stored = list(fake.jobs.values())
    by_url: dict[str, list[scheduler_v1.Job]] = {}
    for job in stored:
        assert job.name.rsplit("/", 1)[-1].startswith(JOB_PREFIX)
        by_url.setdefault(job.app_engine_http_target.relative_uri, []).append(job)
    [summary] = by_url["/tasks/summary"]
    assert (summary.schedule, summary.time_zone, summary.description) == (
        "0 0 * * *",
        "UTC",
        "daily summary",
    )
    assert summary.app_engine_http_target.app_engine_routing.service == "worker"
    assert summary.app_engine_http_target.http_method == scheduler_v1.HttpMethod.GET
    [weekly] = by_url["/mail/weekly"]
    assert (weekly.schedule, weekly.time_zone) == ("0 9 * * 1", "Australia/NSW")
    assert weekly.attempt_deadline.total_seconds() == 600
    assert weekly.retry_config.retry_count == 2
    assert weekly.retry_config.min_backoff_duration.total_seconds() == 5
    assert sorted(j.schedule for j in by_url["/tasks/cleanup"]) == ["*/5 10-13 * * *", "0 14 * * *"]
    assert sync_cron(jobs, PROJECT, LOCATION, client=client) == []


def test_cron_sync_updates_and_deletes_only_its_own_jobs(
    tmp_path: Path, scheduler: tuple[FakeScheduler, Any]
) -> None:
    """A changed schedule is an update; a job gone from the file is deleted; others' jobs stay."""
    fake, client = scheduler
    other = f"{PARENT}/jobs/someone-elses-job"
    fake.jobs[other] = scheduler_v1.Job(name=other, schedule="* * * * *")
    sync_cron(_cron(tmp_path), PROJECT, LOCATION, client=client)
    changed = _cron(
        tmp_path, "cron:\n- url: /tasks/summary\n  schedule: every 12 hours\n  target: worker\n"
    )
    changes = sync_cron(changed, PROJECT, LOCATION, client=client)
    assert sorted(c.action for c in changes) == ["delete", "delete", "delete", "update"]
    [update] = [c for c in changes if c.action == "update"]
    assert update.fields["schedule"] == ("0 0 * * *", "0 */12 * * *")
    assert "description" in update.fields  # the description was removed from the file
    assert sorted(fake.jobs) == sorted([other, update.name])


def test_cron_sync_http_target(tmp_path: Path, scheduler: tuple[FakeScheduler, Any]) -> None:
    """With a target URL each job requests BASE + url with an OIDC token for the service account."""
    fake, client = scheduler
    sync_cron(
        _cron(tmp_path, "cron:\n- url: /tasks/summary\n  schedule: every day 03:00\n"),
        PROJECT,
        LOCATION,
        client=client,
        target_url="https://worker-abc-uc.a.run.app/",
        service_account="cron@p.iam.gserviceaccount.com",
    )
    [job] = fake.jobs.values()
    assert job.http_target.uri == "https://worker-abc-uc.a.run.app/tasks/summary"
    assert job.http_target.http_method == scheduler_v1.HttpMethod.GET
    assert job.http_target.oidc_token.service_account_email == "cron@p.iam.gserviceaccount.com"


@pytest.mark.parametrize(
    ("text", "kwargs", "message"),
    [
        pytest.param(
            "cron:\n- url: /a\n  schedule: 1st monday of month 09:00\n",
            {},
            "line 2: .*n-th weekday",
            id="n-th weekday",
        ),
        pytest.param(
            "cron:\n- url: /a\n  schedule: every 5 minutes\n",
            {"target_url": "https://x.example"},
            "--service-account",
            id="target URL without account",
        ),
    ],
)
def test_cron_sync_refuses(
    tmp_path: Path,
    scheduler: tuple[FakeScheduler, Any],
    text: str,
    kwargs: dict[str, Any],
    message: str,
) -> None:
    """What Cloud Scheduler cannot take is refused before any API call."""
    fake, client = scheduler
    with pytest.raises(ConfigError, match=message):
        sync_cron(_cron(tmp_path, text), PROJECT, LOCATION, client=client, **kwargs)
    assert fake.calls == []


def test_cron_sync_api_error(tmp_path: Path, scheduler: tuple[FakeScheduler, Any]) -> None:
    """An API error becomes a ConfigError carrying the API's message."""
    fake, client = scheduler
    fake.refuse_create = (
        grpc.StatusCode.PERMISSION_DENIED,
        "scripted: no cloudscheduler.jobs.create",
    )
    jobs = _cron(tmp_path, "cron:\n- url: /a\n  schedule: every 5 minutes\n")
    with pytest.raises(ConfigError, match=r"no cloudscheduler\.jobs\.create"):
        sync_cron(jobs, PROJECT, LOCATION, client=client)
