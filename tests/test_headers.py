"""Strict parsing of task headers into TaskContext (SPEC §2)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from taskhandler import InvalidTaskHeaders, TaskContext

BASE = {"X-AppEngine-QueueName": "default", "X-AppEngine-TaskName": "task-1"}


def ctx(**headers: str) -> TaskContext:
    merged = dict(BASE)
    for name, value in headers.items():
        merged[name.replace("_", "-")] = value
    return TaskContext.from_headers(merged)


@pytest.mark.parametrize(
    ("headers", "field", "expected"),
    [
        pytest.param({}, "retry_count", 0, id="retry count absent is 0"),
        pytest.param({"X-AppEngine-TaskRetryCount": "7"}, "retry_count", 7, id="retry count"),
        pytest.param({"X-AppEngine-TaskRetryCount": "0007"}, "retry_count", 7, id="leading zeros"),
        pytest.param(
            {"X-AppEngine-TaskRetryCount": "9999999999"},
            "retry_count",
            9_999_999_999,
            id="ten digits is the maximum",
        ),
        pytest.param(
            {"X-AppEngine-TaskExecutionCount": "2"}, "execution_count", 2, id="execution count"
        ),
        pytest.param({"X-AppEngine-TaskETA": ""}, "eta", None, id="empty ETA is absent"),
        pytest.param(
            {"X-AppEngine-TaskETA": "1700000000"},
            "eta",
            datetime(2023, 11, 14, 22, 13, 20, tzinfo=timezone.utc),
            id="ETA whole seconds",
        ),
        pytest.param(
            {"X-AppEngine-TaskETA": "1700000000.123456789"},
            "eta",
            datetime(2023, 11, 14, 22, 13, 20, 123456, tzinfo=timezone.utc),
            id="ETA fraction truncated to microseconds",
        ),
        pytest.param(
            {"X-AppEngine-TaskPreviousResponse": "503"},
            "previous_response",
            503,
            id="previous response",
        ),
        pytest.param(
            {"X-AppEngine-TaskRetryReason": "Instance Unavailable"},
            "retry_reason",
            "Instance Unavailable",
            id="retry reason",
        ),
        pytest.param({"X-AppEngine-FailFast": "true"}, "fail_fast", True, id="fail fast present"),
        pytest.param(
            {"X-AppEngine-FailFast": ""}, "fail_fast", False, id="fail fast empty is false"
        ),
        pytest.param({}, "fail_fast", False, id="fail fast absent"),
        pytest.param(
            {"X-AppEngine-Country": "ZZ"},
            "queue_name",
            "default",
            id="other platform headers ignored",
        ),
        pytest.param(
            {"X-AppEngine-CityLatLong": "1.0,2.0"},
            "task_name",
            "task-1",
            id="a comma in a non-task header is not an error",
        ),
    ],
)
def test_valid_values(headers: dict[str, str], field: str, expected: object) -> None:
    """Each task header parses to the field value App Engine means."""
    assert getattr(TaskContext.from_headers({**BASE, **headers}), field) == expected


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param(
            {"x-appengine-queuename": "q", "X-APPENGINE-TASKNAME": "t"}, ("q", "t"), id="any case"
        ),
        pytest.param(
            {"X_AppEngine_QueueName": "q", "X_AppEngine_TaskName": "t"},
            ("q", "t"),
            id="underscore spelling",
        ),
        pytest.param(
            {"X-CloudTasks-QueueName": "q", "X-CloudTasks-TaskName": "t"},
            ("q", "t"),
            id="cloud tasks HTTP target headers",
        ),
        pytest.param(
            {
                "X-CloudTasks-QueueName": "projects/p/locations/us-central1/queues/q",
                "X-CloudTasks-TaskName": "t",
            },
            ("q", "t"),
            id="queue resource path reduced",
        ),
        pytest.param(
            {
                "X-AppEngine-QueueName": "q",
                "X-AppEngine-TaskName": "projects/p/locations/l/queues/q/tasks/12345",
            },
            ("q", "12345"),
            id="task resource path reduced",
        ),
        pytest.param(
            {
                "X-AppEngine-QueueName": "q",
                "X-CloudTasks-QueueName": "q",
                "X-AppEngine-TaskName": "t",
            },
            ("q", "t"),
            id="both families agreeing",
        ),
        pytest.param(
            {"X-AppEngine-QueueName": "q", "X-AppEngine-TaskName": "a" * 500},
            ("q", "a" * 500),
            id="500-character name",
        ),
    ],
)
def test_names_and_spellings(headers: dict[str, str], expected: tuple[str, str]) -> None:
    """Names parse from either family in any spelling; resource paths reduce to their last segment."""
    parsed = TaskContext.from_headers(headers)
    assert (parsed.queue_name, parsed.task_name) == expected


@pytest.mark.parametrize(
    ("name", "value"),
    [
        pytest.param("X-AppEngine-TaskRetryCount", "-1", id="negative count"),
        pytest.param("X-AppEngine-TaskRetryCount", "+1", id="plus sign"),
        pytest.param("X-AppEngine-TaskRetryCount", " 1", id="leading space"),
        pytest.param("X-AppEngine-TaskRetryCount", "1 ", id="trailing space"),
        pytest.param("X-AppEngine-TaskRetryCount", "1e3", id="exponent"),
        pytest.param("X-AppEngine-TaskRetryCount", "\uff11", id="full-width digit"),
        pytest.param("X-AppEngine-TaskRetryCount", "\u0663", id="arabic-indic digit"),
        pytest.param("X-AppEngine-TaskRetryCount", "\u00b2", id="superscript two"),
        pytest.param("X-AppEngine-TaskRetryCount", "", id="empty count"),
        pytest.param("X-AppEngine-TaskRetryCount", "12345678901", id="eleven digits"),
        pytest.param("X-AppEngine-TaskRetryCount", "0x10", id="hex"),
        pytest.param("X-AppEngine-TaskRetryCount", "1.0", id="decimal count"),
        pytest.param("X-AppEngine-TaskRetryCount", "1,2", id="two joined header lines"),
        pytest.param("X-AppEngine-TaskRetryCount", "1\x00", id="NUL byte"),
        pytest.param("X-AppEngine-TaskExecutionCount", "NaN", id="NaN execution count"),
        pytest.param("X-AppEngine-TaskExecutionCount", "1_000", id="underscore digit separator"),
        pytest.param("X-AppEngine-QueueName", "a/b", id="slash in queue name"),
        pytest.param("X-AppEngine-QueueName", "", id="empty queue name"),
        pytest.param("X-AppEngine-QueueName", "q" * 501, id="501-character queue name"),
        pytest.param("X-AppEngine-QueueName", "caf\u00e9", id="non-ASCII queue name"),
        pytest.param("X-AppEngine-QueueName", "default,evil", id="joined queue names"),
        pytest.param("X-AppEngine-TaskName", "my task", id="space in task name"),
        pytest.param("X-AppEngine-TaskName", "a.b", id="dot in task name"),
        pytest.param(
            "X-AppEngine-TaskName", "projects/p/queues/q/tasks/t", id="malformed resource path"
        ),
        pytest.param("X-AppEngine-TaskName", "t\r\nX-Injected: 1", id="CRLF in task name"),
        pytest.param("X-AppEngine-TaskETA", "abc", id="ETA letters"),
        pytest.param("X-AppEngine-TaskETA", "-1", id="negative ETA"),
        pytest.param("X-AppEngine-TaskETA", "1.5.6", id="ETA two dots"),
        pytest.param("X-AppEngine-TaskETA", "1e9", id="ETA exponent"),
        pytest.param("X-AppEngine-TaskETA", ".5", id="ETA without whole part"),
        pytest.param("X-AppEngine-TaskETA", "5.", id="ETA dot without fraction"),
        pytest.param("X-AppEngine-TaskETA", "999999999999", id="ETA past year 9999"),
        pytest.param("X-AppEngine-TaskETA", "inf", id="ETA infinity"),
        pytest.param("X-AppEngine-TaskPreviousResponse", "OK", id="previous response text"),
        pytest.param("X-AppEngine-TaskRetryReason", "a\nb", id="newline in retry reason"),
        pytest.param("X-AppEngine-TaskRetryReason", "r\u00e9essayer", id="non-ASCII retry reason"),
        pytest.param("X-AppEngine-FailFast", "yes\x7f", id="DEL in fail fast"),
    ],
)
def test_malformed_values_are_refused(name: str, value: str) -> None:
    """A malformed value raises InvalidTaskHeaders naming the header and the value."""
    with pytest.raises(InvalidTaskHeaders) as info:
        TaskContext.from_headers({**BASE, name: value})
    assert info.value.header == name
    assert info.value.value is not None
    assert name in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("headers", "header"),
    [
        pytest.param({"X-AppEngine-TaskName": "t"}, "X-AppEngine-QueueName", id="no queue name"),
        pytest.param({"X-AppEngine-QueueName": "q"}, "X-AppEngine-TaskName", id="no task name"),
        pytest.param({"X-AppEngine-TaskRetryCount": "1"}, "X-AppEngine-QueueName", id="count only"),
    ],
)
def test_missing_required_headers(headers: dict[str, str], header: str) -> None:
    """QueueName and TaskName are required; the error names the missing one."""
    with pytest.raises(InvalidTaskHeaders) as info:
        TaskContext.from_headers(headers)
    assert info.value.header == header
    assert info.value.value is None


def test_conflicting_families_are_refused() -> None:
    """X-AppEngine-* and X-CloudTasks-* saying different things is refused, not guessed."""
    with pytest.raises(InvalidTaskHeaders, match="conflicts"):
        TaskContext.from_headers({**BASE, "X-CloudTasks-QueueName": "other"})


def test_round_trip_full_context() -> None:
    """from_headers(to_headers()) gives back an equal context, for both header families."""
    original = TaskContext(
        queue_name="q",
        task_name="t",
        retry_count=3,
        execution_count=2,
        eta=datetime(2030, 1, 2, 3, 4, 5, 600, tzinfo=timezone.utc),
        previous_response=503,
        retry_reason="Instance Unavailable",
        fail_fast=True,
    )
    assert TaskContext.from_headers(original.to_headers()) == original
    cloud = TaskContext.from_headers(original.to_headers(cloud_tasks=True))
    assert cloud == original.model_copy(update={"fail_fast": False})


def test_context_is_immutable_and_checked() -> None:
    """TaskContext is frozen, and direct construction validates like the header parser."""
    parsed = ctx()
    with pytest.raises(ValidationError):
        parsed.retry_count = 5  # type: ignore[misc]
    with pytest.raises(ValidationError):
        TaskContext(queue_name="a/b", task_name="t")
    with pytest.raises(ValidationError):
        TaskContext(queue_name="q", task_name="t", retry_count=-1)
    with pytest.raises(ValidationError):
        TaskContext(queue_name="q", task_name="t", eta=datetime(2030, 1, 1))  # naive


def test_eta_is_utc_and_attempt_helpers() -> None:
    """An aware ETA is kept in UTC; is_first_attempt follows retry_count; no deadline means None."""
    tokyo = timezone(timedelta(hours=9))
    local = TaskContext(queue_name="q", task_name="t", eta=datetime(2030, 1, 1, 9, tzinfo=tokyo))
    assert local.eta == datetime(2030, 1, 1, tzinfo=timezone.utc)
    assert local.eta is not None and local.eta.tzinfo == timezone.utc
    assert ctx().is_first_attempt
    assert not ctx(X_AppEngine_TaskRetryCount="1").is_first_attempt
    assert ctx().time_remaining() is None


def test_fast_construction_matches_validated_model() -> None:
    """The header path builds the same model state as pydantic validation does."""
    parsed = ctx(X_AppEngine_TaskRetryCount="2", X_AppEngine_TaskETA="1700000000.5")
    validated = TaskContext.model_validate(parsed.model_dump())
    assert parsed.model_dump() == validated.model_dump()
    assert parsed.model_fields_set == validated.model_fields_set
    assert parsed.model_copy(update={"retry_count": 3}).retry_count == 3
    assert hash(parsed) == hash(validated)
