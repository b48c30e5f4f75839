"""The local queue's pure parts: the scheduler's rules and the request a stored task becomes.

No thread, no file, no sleep: time is a number the tests move.
"""

from __future__ import annotations

import math

import pytest

from taskhandler.context import TaskContext
from taskhandler.taskqueue import QueueConfig, RetryParameters
from taskhandler.taskqueue._dispatcher import request_for
from taskhandler.taskqueue._scheduler import (
    Attempt,
    Finish,
    GiveUp,
    Retry,
    Scheduler,
    TokenBucket,
)
from taskhandler.taskqueue._store import StoredTask, utc

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("rate", "size", "steps", "expected"),
    [
        pytest.param(1.0, 5, [(0.0, 0)], [5], id="starts full"),
        pytest.param(1.0, 5, [(0.0, 5), (0.0, 0)], [5, 0], id="emptied"),
        pytest.param(2.0, 5, [(0.0, 5), (1.0, 0)], [5, 2], id="refills at rate"),
        pytest.param(2.0, 5, [(0.0, 5), (0.75, 0)], [5, 1], id="only whole tokens"),
        pytest.param(10.0, 3, [(0.0, 3), (60.0, 0)], [3, 3], id="never above the bucket size"),
        pytest.param(1.0, 2, [(0.0, 2), (-5.0, 0)], [2, 0], id="a clock going back adds none"),
    ],
)
def test_token_bucket(
    rate: float, size: int, steps: list[tuple[float, int]], expected: list[int]
) -> None:
    """Tokens available at each moment: full at first, refilled at ``rate``, capped."""
    bucket = TokenBucket(rate, size)
    seen = []
    for offset, take in steps:
        seen.append(bucket.available(NOW + offset))
        bucket.take(take)
    assert seen == expected


@pytest.mark.parametrize(
    ("rate", "expected"),
    [
        pytest.param(4.0, NOW + 0.25, id="a quarter second at 4/s"),
        pytest.param(0.0, math.inf, id="never at rate 0"),
    ],
)
def test_next_token(rate: float, expected: float) -> None:
    """An empty bucket says when its next whole token comes."""
    bucket = TokenBucket(rate, 1)
    bucket.available(NOW)
    bucket.take(1)
    assert bucket.next_token(NOW) == pytest.approx(expected)


def _scheduler(*configs: QueueConfig, slots: int = 8) -> Scheduler:
    return Scheduler({c.name: c for c in configs}, slots=slots)


@pytest.mark.parametrize(
    ("config", "leased", "free", "ending", "expected"),
    [
        pytest.param(QueueConfig("q", rate=100, bucket_size=50), 0, 8, 0, 8, id="free slots"),
        pytest.param(QueueConfig("q", rate=100, bucket_size=3), 0, 8, 0, 3, id="bucket"),
        pytest.param(
            QueueConfig("q", rate=100, bucket_size=50, max_concurrent_requests=2),
            2,
            8,
            0,
            0,
            id="at max_concurrent_requests",
        ),
        pytest.param(
            QueueConfig("q", rate=100, bucket_size=50, max_concurrent_requests=2),
            2,
            8,
            1,
            1,
            id="one ending frees one",
        ),
        pytest.param(QueueConfig("q", rate=100, bucket_size=50), 0, 0, 0, 0, id="no slot"),
    ],
)
def test_quota(config: QueueConfig, leased: int, free: int, ending: int, expected: int) -> None:
    """How many tasks may be leased: the least of slots, tokens and the concurrency limit."""
    scheduler = _scheduler(config)
    scheduler.took("q", leased)
    assert scheduler.quota("q", NOW, free, ending=ending) == expected


def test_took_spends_tokens_and_ended_frees_the_queue() -> None:
    """A lease spends tokens until the rate refills them; an ended task frees its slot."""
    scheduler = _scheduler(QueueConfig("q", rate=1, bucket_size=2, max_concurrent_requests=5))
    assert scheduler.quota("q", NOW, 8) == 2
    scheduler.took("q", 2)
    assert (scheduler.in_flight, scheduler.quota("q", NOW, 8)) == (2, 0)
    assert scheduler.quota("q", NOW + 1, 8) == 1
    scheduler.ended("q", 2)
    assert scheduler.in_flight == 0


def test_queues_take_turns() -> None:
    """Each lease round starts with the next queue; paused and pull queues are left out."""
    scheduler = _scheduler(
        QueueConfig("a"),
        QueueConfig("b"),
        QueueConfig("paused", rate=0),
        QueueConfig("pull", mode="pull"),
    )
    firsts = [scheduler.dispatchable()[0] for _ in range(4)]
    assert sorted(firsts) == ["a", "a", "b", "b"]
    assert set(scheduler.dispatchable()) == {"a", "b"}


@pytest.mark.parametrize(
    ("earliest", "drained", "expected"),
    [
        pytest.param({"q": NOW + 30}, False, NOW + 30, id="the next ETA"),
        pytest.param({"q": NOW - 5}, True, NOW + 0.5, id="an empty bucket delays a due task"),
        pytest.param({}, False, None, id="nothing pending"),
        pytest.param({"q": NOW, "other": NOW + 1}, False, NOW, id="the earliest queue"),
    ],
)
def test_next_start(earliest: dict[str, float], drained: bool, expected: float | None) -> None:
    """When the pump should look next: the first ETA, no earlier than the next token."""
    scheduler = _scheduler(QueueConfig("q", rate=2, bucket_size=1), QueueConfig("other"))
    if drained:
        scheduler.took("q", scheduler.quota("q", NOW, 8))
        scheduler.ended("q", 1)
    assert scheduler.next_start(NOW, earliest) == expected


def test_next_start_skips_a_queue_at_its_concurrency_limit() -> None:
    """A queue whose limit is reached waits for an ending delivery, not for a time."""
    scheduler = _scheduler(QueueConfig("q", max_concurrent_requests=1))
    scheduler.took("q", 1)
    assert scheduler.next_start(NOW, {"q": NOW}) is None


RETRY = RetryParameters(min_backoff_seconds=10, max_backoff_seconds=300, max_doublings=3)


@pytest.mark.parametrize(
    ("params", "task_retry", "retry_count", "age", "ok", "expected"),
    [
        pytest.param(RETRY, None, 0, 0.0, True, Finish(), id="2xx finishes"),
        pytest.param(RETRY, None, 0, 0.0, False, Retry(NOW + 10, 1), id="first backoff"),
        pytest.param(RETRY, None, 3, 0.0, False, Retry(NOW + 80, 1), id="doubled three times"),
        pytest.param(RETRY, None, 5, 0.0, False, Retry(NOW + 240, 1), id="then linear"),
        pytest.param(RETRY, None, 20, 0.0, False, Retry(NOW + 300, 1), id="capped"),
        pytest.param(
            RetryParameters(task_retry_limit=0), None, 0, 0.0, False, GiveUp(1), id="limit 0"
        ),
        pytest.param(
            RetryParameters(task_retry_limit=2, task_age_limit=60),
            None,
            5,
            30.0,
            False,
            Retry(NOW + 0.1 * 2**5, 1),
            id="retries exceeded but not the age: retried",
        ),
        pytest.param(
            RetryParameters(task_retry_limit=2, task_age_limit=60),
            None,
            5,
            61.0,
            False,
            GiveUp(6),
            id="both limits exceeded: given up",
        ),
        pytest.param(
            RETRY,
            RetryParameters(task_retry_limit=1),
            1,
            0.0,
            False,
            GiveUp(2),
            id="the task's retry options override the queue's",
        ),
    ],
)
def test_decide(
    params: RetryParameters,
    task_retry: RetryParameters | None,
    retry_count: int,
    age: float,
    ok: bool,
    expected: object,
) -> None:
    """After an attempt: finish on 2xx, else back off until every set limit is exceeded."""
    scheduler = _scheduler(QueueConfig("q", retry_parameters=params))
    attempt = Attempt("q", task_retry, retry_count, execution_count=0, first_run=NOW - age)
    assert scheduler.decide(attempt, ok=ok, executed=True, now=NOW) == expected


def test_a_failure_that_never_reached_the_app_is_not_an_execution() -> None:
    """TaskExecutionCount counts only attempts that reached the app."""
    scheduler = _scheduler(QueueConfig("q"))
    attempt = Attempt("q", None, 0, execution_count=2, first_run=NOW)
    decision = scheduler.decide(attempt, ok=False, executed=False, now=NOW)
    assert isinstance(decision, Retry) and decision.execution_count == 2


def _stored(**changes: object) -> StoredTask:
    fields: dict[str, object] = {
        "id": 1,
        "queue": "mail",
        "name": "send-1",
        "named": True,
        "method": "POST",
        "url": "/tasks/send",
        "headers": (("Content-Type", "application/x-www-form-urlencoded"),),
        "payload": b"to=a",
        "target": None,
        "retry": None,
        "eta": NOW + 0.5,
        "created": NOW,
        "first_run": NOW,
        "retry_count": 0,
        "execution_count": 0,
        "previous_response": None,
        "retry_reason": None,
        "state": "leased",
        "lease_id": "host/1/x/1",
    }
    fields.update(changes)
    return StoredTask(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("task", "expected"),
    [
        pytest.param(
            _stored(),
            TaskContext(
                queue_name="mail",
                task_name="send-1",
                eta=utc(NOW + 0.5),
            ),
            id="first attempt",
        ),
        pytest.param(
            _stored(retry_count=2, execution_count=1, previous_response=503, retry_reason="x y"),
            TaskContext(
                queue_name="mail",
                task_name="send-1",
                retry_count=2,
                execution_count=1,
                previous_response=503,
                retry_reason="x y",
                eta=utc(NOW + 0.5),
            ),
            id="a retry carries the previous response and reason",
        ),
    ],
)
def test_request_headers_round_trip(task: StoredTask, expected: TaskContext) -> None:
    """A delivery's queue headers parse back into the task's context (one header format)."""
    request = request_for(task)
    assert request.headers[0] == ("Content-Type", "application/x-www-form-urlencoded")
    assert TaskContext.from_headers(request.headers[1:]) == expected
    assert ("X-AppEngine-TaskETA", "1700000000.500000") in request.headers
