"""``taskhandler queues sync`` and ``taskhandler cron sync``: queue.yaml and cron.yaml deployed.

App Engine's ``gcloud app deploy queue.yaml cron.yaml`` made the queues and cron jobs from the
app's files. Off App Engine, :func:`sync_queues` makes (or updates) Cloud Tasks queues from a
queue.yaml, and :func:`sync_cron` makes Cloud Scheduler jobs from a cron.yaml; both compare
what exists with what the file says, return the differences as readable lines, and apply them
unless ``dry_run``.

Queues: ``rate`` -> ``rate_limits.max_dispatches_per_second`` (``rate: 0`` pauses the queue),
``bucket_size`` -> ``max_burst_size``, ``max_concurrent_requests`` ->
``max_concurrent_dispatches``, ``retry_parameters`` -> ``retry_config`` (``task_retry_limit``
counts retries, ``max_attempts`` attempts: one more), ``target`` ->
``app_engine_routing_override``. Pull queues are skipped: Cloud Tasks has none. Queues
missing from the file are left alone (App Engine disabled them; delete them yourself).

Cron: each schedule becomes one job per cron expression (:func:`taskhandler._cron.to_cron`),
named ``taskhandler-<url>-<hash>``; a GET of the job's URL on App Engine (``target`` routes
it), or of ``target_url + url`` with an OIDC token for ``service_account`` (Cloud Run). Jobs
with the ``taskhandler-`` prefix that the file no longer has are deleted, as a cron.yaml
deploy replaced App Engine's list; other jobs are never touched.
"""

from __future__ import annotations

import datetime
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .exceptions import ConfigError

__all__ = ["JOB_PREFIX", "Change", "desired_jobs", "desired_queues", "sync_cron", "sync_queues"]

#: The prefix of the Cloud Scheduler jobs ``cron sync`` manages.
JOB_PREFIX = "taskhandler-"
_DEFAULT_CONCURRENCY = 1000  # Cloud Tasks' default max_concurrent_dispatches


@dataclass(frozen=True)
class Change:
    """One difference between the file and the service: ``create``, ``update`` or ``delete``.

    ``fields`` maps each differing field to ``(now, wanted)`` (``now`` is ``None`` on create).
    """

    action: str
    name: str
    fields: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    resource: Any = None

    def __str__(self) -> str:
        sign = {"create": "+", "update": "~", "delete": "-"}[self.action]
        parts = []
        for key, (now, wanted) in self.fields.items():
            parts.append(f"{key}={wanted!r}" if now is None else f"{key}: {now!r} -> {wanted!r}")
        return f"{sign} {self.name}" + (f" ({', '.join(parts)})" if parts else "")


def _duration(seconds: float | None) -> datetime.timedelta | None:
    return None if seconds is None else datetime.timedelta(seconds=seconds)


def _seconds(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    return float(value)


# -- queues -----------------------------------------------------------------------------------


def desired_queues(queues: Mapping[str, Any], parent: str) -> dict[str, dict[str, Any]]:
    """The Cloud Tasks fields each push queue of a queue.yaml asks for, by queue path."""
    from .taskqueue.cloudtasks import app_engine_routing

    wanted: dict[str, dict[str, Any]] = {}
    for name, queue in queues.items():
        if queue.mode == "pull":
            continue
        retry = queue.retry_parameters
        limit = retry.task_retry_limit
        fields: dict[str, Any] = {
            "rate_limits.max_dispatches_per_second": queue.rate if queue.rate > 0 else None,
            "rate_limits.max_burst_size": queue.bucket_size,
            "rate_limits.max_concurrent_dispatches": queue.max_concurrent_requests
            or _DEFAULT_CONCURRENCY,
            "retry_config.max_attempts": -1 if limit is None else limit + 1,
            "retry_config.max_retry_duration": retry.task_age_limit,
            "retry_config.min_backoff": retry.min_backoff_seconds,
            "retry_config.max_backoff": retry.max_backoff_seconds,
            "retry_config.max_doublings": retry.max_doublings,
            "state": "PAUSED" if queue.rate == 0 else "RUNNING",
        }
        if queue.target:
            try:
                fields["app_engine_routing_override"] = app_engine_routing(queue.target)
            except Exception as exc:
                raise ConfigError(str(exc), path=queue.source, value=queue.target) from None
        wanted[f"{parent}/queues/{name}"] = fields
    return wanted


def _queue_fields(queue: Any) -> dict[str, Any]:
    rate, retry = queue.rate_limits, queue.retry_config
    routing = queue.app_engine_routing_override
    found = {
        "rate_limits.max_dispatches_per_second": rate.max_dispatches_per_second or None,
        "rate_limits.max_burst_size": rate.max_burst_size,
        "rate_limits.max_concurrent_dispatches": rate.max_concurrent_dispatches,
        "retry_config.max_attempts": retry.max_attempts,
        "retry_config.max_retry_duration": _seconds(retry.max_retry_duration),
        "retry_config.min_backoff": _seconds(retry.min_backoff),
        "retry_config.max_backoff": _seconds(retry.max_backoff),
        "retry_config.max_doublings": retry.max_doublings,
        "state": "PAUSED" if queue.state.name == "PAUSED" else "RUNNING",
    }
    shown = {k: getattr(routing, k) for k in ("instance", "version", "service")}
    if any(shown.values()):
        found["app_engine_routing_override"] = {k: v for k, v in shown.items() if v}
    return found


def _differences(now: Mapping[str, Any], wanted: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    # A field the file leaves unset (None) keeps whatever the service chose for it.
    return {
        key: (now.get(key), value)
        for key, value in wanted.items()
        if value is not None and now.get(key) != value
    }


def _queue_proto(tasks_v2: Any, name: str, fields: Mapping[str, Any]) -> Any:
    def get(key: str) -> Any:
        return fields.get(key)

    retry: dict[str, Any] = {"max_attempts": get("retry_config.max_attempts")}
    for key in ("max_retry_duration", "min_backoff", "max_backoff"):
        if get(f"retry_config.{key}") is not None:
            retry[key] = _duration(get(f"retry_config.{key}"))
    if get("retry_config.max_doublings") is not None:
        retry["max_doublings"] = get("retry_config.max_doublings")
    rate = {
        "max_burst_size": get("rate_limits.max_burst_size"),
        "max_concurrent_dispatches": get("rate_limits.max_concurrent_dispatches"),
    }
    if get("rate_limits.max_dispatches_per_second") is not None:
        rate["max_dispatches_per_second"] = get("rate_limits.max_dispatches_per_second")
    queue: dict[str, Any] = {
        "name": name,
        "rate_limits": tasks_v2.RateLimits(**rate),
        "retry_config": tasks_v2.RetryConfig(**retry),
    }
    if get("app_engine_routing_override"):
        queue["app_engine_routing_override"] = tasks_v2.AppEngineRouting(
            **get("app_engine_routing_override")
        )
    return tasks_v2.Queue(**queue)


def sync_queues(
    queues: Mapping[str, Any],
    project: str,
    location: str,
    *,
    client: Any = None,
    dry_run: bool = False,
) -> list[Change]:
    """Create or update the Cloud Tasks queues of a queue.yaml; return the changes.

    Args:
        queues: :func:`taskhandler.taskqueue.load_queue_yaml`'s result.
        project, location: where the queues live.
        client: a ``CloudTasksClient`` (default: one for ``CLOUD_TASKS_EMULATOR_HOST`` when
            set, else with the application default credentials).
        dry_run: only compute the changes.

    Raises:
        ConfigError: a queue Cloud Tasks cannot take, or an API error (with its message).
    """
    import os

    from .taskqueue.cloudtasks import EMULATOR_ENV, _import_tasks, emulator_client

    tasks_v2, exceptions = _import_tasks()
    if client is None and os.environ.get(EMULATOR_ENV):
        client = emulator_client(os.environ[EMULATOR_ENV])
    elif client is None:
        try:
            client = tasks_v2.CloudTasksClient()
        except exceptions.GoogleAPIError as exc:  # no default credentials
            raise ConfigError(f"queues sync: cannot make a client: {exc}") from exc
    parent = f"projects/{project}/locations/{location}"
    try:
        existing = {q.name: q for q in client.list_queues(parent=parent)}
        changes: list[Change] = []
        for name, wanted in desired_queues(queues, parent).items():
            current = existing.get(name)
            if current is None:
                shown = {k: (None, v) for k, v in wanted.items() if v is not None}
                changes.append(Change("create", name, shown))
            else:
                diff = _differences(_queue_fields(current), wanted)
                if diff:
                    changes.append(Change("update", name, diff))
        if not dry_run:
            for change in changes:
                _apply_queue(client, tasks_v2, parent, change, desired_queues(queues, parent))
    except exceptions.GoogleAPIError as exc:
        raise ConfigError(f"Cloud Tasks: {getattr(exc, 'message', None) or exc}") from exc
    return changes


def _apply_queue(
    client: Any, tasks_v2: Any, parent: str, change: Change, wanted: Mapping[str, Any]
) -> None:
    fields = wanted[change.name]
    proto = _queue_proto(tasks_v2, change.name, fields)
    if change.action == "create":
        client.create_queue(parent=parent, queue=proto)
    else:
        paths = sorted({key for key in change.fields if key != "state"})
        if paths:
            client.update_queue(queue=proto, update_mask={"paths": paths})
    if "state" in change.fields or (change.action == "create" and fields["state"] == "PAUSED"):
        if fields["state"] == "PAUSED":
            client.pause_queue(name=change.name)
        else:
            client.resume_queue(name=change.name)


# -- cron -------------------------------------------------------------------------------------


def _job_id(url: str, index: int) -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", url).strip("-")[:40] or "root"
    digest = hashlib.sha256(url.encode()).hexdigest()[:8]
    return f"{JOB_PREFIX}{slug}-{digest}" + (f"-{index}" if index else "")


def desired_jobs(
    jobs: Sequence[Any],
    parent: str,
    *,
    target_url: str | None = None,
    service_account: str | None = None,
) -> dict[str, dict[str, Any]]:
    """The Cloud Scheduler fields of each job a cron.yaml asks for, by job path.

    Raises:
        ConfigError: a schedule cron cannot express (naming its line), or ``target_url``
            without ``service_account``.
    """
    if target_url is not None and not service_account:
        raise ConfigError(
            "cron sync --target-url needs --service-account: Cloud Scheduler signs each "
            "request with an OIDC token for it",
            value=target_url,
        )
    wanted: dict[str, dict[str, Any]] = {}
    seen: dict[str, int] = {}
    for job in jobs:
        for expression in job.cron():
            index = seen.get(job.url, 0)
            seen[job.url] = index + 1
            retry = job.retry_parameters
            fields: dict[str, Any] = {
                "schedule": expression,
                "time_zone": job.timezone or "UTC",
                "description": job.description or "",
                "attempt_deadline": job.attempt_deadline,
                "retry_config.retry_count": None if retry is None else retry.job_retry_limit,
                "retry_config.max_retry_duration": None if retry is None else retry.job_age_limit,
                "retry_config.min_backoff_duration": (
                    None if retry is None else retry.min_backoff_seconds
                ),
                "retry_config.max_backoff_duration": (
                    None if retry is None else retry.max_backoff_seconds
                ),
                "retry_config.max_doublings": None if retry is None else retry.max_doublings,
            }
            if target_url is not None:
                fields["http_target.uri"] = target_url.rstrip("/") + job.url
                fields["http_target.oidc_token.service_account_email"] = service_account
            else:
                fields["app_engine_http_target.relative_uri"] = job.url
                if job.target:
                    # cron.yaml's target: a service (as App Engine documents it today), or
                    # service:version.
                    service, _, version = job.target.partition(":")
                    routing = (
                        {"service": service, "version": version}
                        if version
                        else {"service": service}
                    )
                    fields["app_engine_http_target.app_engine_routing"] = routing
            wanted[f"{parent}/jobs/{_job_id(job.url, index)}"] = fields
    return wanted


def _job_fields(job: Any) -> dict[str, Any]:
    retry = job.retry_config
    found: dict[str, Any] = {
        "schedule": job.schedule,
        "time_zone": job.time_zone,
        "description": job.description,
        "attempt_deadline": _seconds(job.attempt_deadline),
        "retry_config.retry_count": retry.retry_count,
        "retry_config.max_retry_duration": _seconds(retry.max_retry_duration),
        "retry_config.min_backoff_duration": _seconds(retry.min_backoff_duration),
        "retry_config.max_backoff_duration": _seconds(retry.max_backoff_duration),
        "retry_config.max_doublings": retry.max_doublings,
    }
    if job.http_target.uri:
        found["http_target.uri"] = job.http_target.uri
        found["http_target.oidc_token.service_account_email"] = (
            job.http_target.oidc_token.service_account_email
        )
    else:
        found["app_engine_http_target.relative_uri"] = job.app_engine_http_target.relative_uri
        routing = job.app_engine_http_target.app_engine_routing
        shown = {k: getattr(routing, k) for k in ("service", "version") if getattr(routing, k)}
        if shown:
            found["app_engine_http_target.app_engine_routing"] = shown
    return found


def _job_proto(scheduler_v1: Any, name: str, fields: Mapping[str, Any]) -> Any:
    retry: dict[str, Any] = {}
    for key in ("max_retry_duration", "min_backoff_duration", "max_backoff_duration"):
        if fields[f"retry_config.{key}"] is not None:
            retry[key] = _duration(fields[f"retry_config.{key}"])
    for key in ("retry_count", "max_doublings"):
        if fields[f"retry_config.{key}"] is not None:
            retry[key] = fields[f"retry_config.{key}"]
    job: dict[str, Any] = {
        "name": name,
        "schedule": fields["schedule"],
        "time_zone": fields["time_zone"],
        "description": fields["description"],
        "retry_config": scheduler_v1.RetryConfig(**retry),
    }
    if fields["attempt_deadline"] is not None:
        job["attempt_deadline"] = _duration(fields["attempt_deadline"])
    if "http_target.uri" in fields:
        job["http_target"] = scheduler_v1.HttpTarget(
            uri=fields["http_target.uri"],
            http_method=scheduler_v1.HttpMethod.GET,
            oidc_token=scheduler_v1.OidcToken(
                service_account_email=fields["http_target.oidc_token.service_account_email"]
            ),
        )
    else:
        job["app_engine_http_target"] = scheduler_v1.AppEngineHttpTarget(
            relative_uri=fields["app_engine_http_target.relative_uri"],
            http_method=scheduler_v1.HttpMethod.GET,
            app_engine_routing=scheduler_v1.AppEngineRouting(
                **fields.get("app_engine_http_target.app_engine_routing", {})
            ),
        )
    return scheduler_v1.Job(**job)


def _import_scheduler() -> tuple[Any, Any]:
    try:
        from google.api_core import exceptions
        from google.cloud import scheduler_v1
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ConfigError(
            "cron sync needs google-cloud-scheduler: pip install 'taskhandler[cloudtasks]'"
        ) from exc
    return scheduler_v1, exceptions


def sync_cron(
    jobs: Sequence[Any],
    project: str,
    location: str,
    *,
    client: Any = None,
    dry_run: bool = False,
    target_url: str | None = None,
    service_account: str | None = None,
) -> list[Change]:
    """Make Cloud Scheduler's ``taskhandler-`` jobs those of a cron.yaml; return the changes.

    Args:
        jobs: :func:`taskhandler.load_cron_yaml`'s result.
        project, location: where the jobs live.
        client: a ``CloudSchedulerClient`` (default: application default credentials).
        dry_run: only compute the changes.
        target_url: send each job to ``target_url + url`` (Cloud Run, GKE) instead of the
            App Engine app, signed with an OIDC token for ``service_account``.

    Raises:
        ConfigError: a schedule cron cannot express, or an API error (with its message).
    """
    scheduler_v1, exceptions = _import_scheduler()
    parent = f"projects/{project}/locations/{location}"
    wanted = desired_jobs(jobs, parent, target_url=target_url, service_account=service_account)
    if client is None:
        try:
            client = scheduler_v1.CloudSchedulerClient()
        except exceptions.GoogleAPIError as exc:
            raise ConfigError(f"cron sync: cannot make a client: {exc}") from exc
    try:
        existing = {
            job.name: job
            for job in client.list_jobs(parent=parent)
            if job.name.rsplit("/", 1)[-1].startswith(JOB_PREFIX)
        }
        changes: list[Change] = []
        for name, fields in wanted.items():
            current = existing.get(name)
            if current is None:
                shown = {k: (None, v) for k, v in fields.items() if v not in (None, "")}
                changes.append(Change("create", name, shown))
            else:
                diff = _differences(_job_fields(current), fields)
                if diff:
                    changes.append(Change("update", name, diff))
        changes.extend(Change("delete", name) for name in existing if name not in wanted)
        if not dry_run:
            for change in changes:
                if change.action == "delete":
                    client.delete_job(name=change.name)
                    continue
                proto = _job_proto(scheduler_v1, change.name, wanted[change.name])
                if change.action == "create":
                    client.create_job(parent=parent, job=proto)
                else:
                    client.update_job(job=proto)
    except exceptions.GoogleAPIError as exc:
        raise ConfigError(f"Cloud Scheduler: {getattr(exc, 'message', None) or exc}") from exc
    return changes
