"""``assert_idempotent``: deliver one task several times and prove nothing changed twice.

App Engine delivers a task at least once: after a success whose answer was lost, or while
an earlier delivery of the same task is still running. A handler is idempotent when any
number of deliveries of one task leaves the same state as exactly one.
"""

from __future__ import annotations

import difflib
import pprint
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from ._app import Params, TaskTestApp, TaskTestResponse, generate_task_name

__all__ = ["Delivery", "IdempotencyError", "assert_idempotent"]

_BODY_CHARS = 300


@dataclass(frozen=True, slots=True)
class Delivery:
    """One delivery ``assert_idempotent`` made, and what the app answered.

    Attributes:
        number: 1-based, in the order the deliveries were made (started, when concurrent).
        retry_count: the ``X-AppEngine-TaskRetryCount`` it carried.
        situation: why the queue would make it ("first delivery", "redelivery after a
            success whose answer was lost", "overlapping delivery", ...).
        status: the response status.
        outcome: the ``X-Task-Outcome`` header (``None`` when the app sent none).
        body: the start of the response body, for the error message.
    """

    number: int
    retry_count: int
    situation: str
    status: int
    outcome: str | None
    body: str

    @property
    def succeeded(self) -> bool:
        """2xx, and not acknowledged as a permanent failure or a give-up."""
        return 200 <= self.status < 300 and self.outcome in (None, "success")

    def describe(self) -> str:
        """``delivery 2 (retry_count=1, redelivery after ...): 500, outcome retry``."""
        text = (
            f"delivery {self.number} (retry_count={self.retry_count}, {self.situation}): "
            f"status {self.status}, outcome {self.outcome or '(none)'}"
        )
        return f"{text}; body: {self.body!r}" if self.body else text


class IdempotencyError(AssertionError):
    """Delivering one task several times did not leave the state one delivery leaves.

    Attributes:
        deliveries: every :class:`Delivery` made, in order.
        expected: the snapshot after exactly one delivery (``None`` if it failed).
        actual: the snapshot after the deliveries that changed it (``None`` when the
            error is a failed delivery).
    """

    def __init__(
        self,
        message: str,
        *,
        deliveries: list[Delivery],
        expected: Any = None,
        actual: Any = None,
    ) -> None:
        super().__init__(message)
        self.deliveries = deliveries
        self.expected = expected
        self.actual = actual


IdempotencyError.__module__ = "taskhandler.testing"  # its public home, in tracebacks


def assert_idempotent(
    app: Any,
    url: str,
    *,
    params: Params | None = None,
    payload: str | bytes | None = None,
    json: Any = None,
    snapshot: Callable[[], Any],
    deliveries: int = 3,
    concurrent: bool = False,
    reset: Callable[[], object] | None = None,
    queue_name: str = "default",
    task_name: str | None = None,
    method: str = "POST",
    headers: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> Any:
    """Deliver one task ``deliveries`` times and check the state is as after one delivery.

    Sequentially (always): the first delivery must succeed; its snapshot is the reference.
    Then the same task (same name, ETA and body; ``retry_count`` 1, 2, ...) is delivered
    again, as the queue does when a success's answer was lost; each redelivery must succeed
    and leave the snapshot unchanged.

    With ``concurrent=True``, then: ``reset()`` puts the state back as before the first
    delivery, and all ``deliveries`` are made at once from threads released together by a
    barrier (as when the queue redelivers while the first delivery is still running; that
    is how a check-then-act or read-modify-write race shows itself). The state must again
    equal the reference. An overlapping delivery may answer a retry status (say, 503 while
    another copy holds a lease): the queue would deliver it again later, so this does,
    once, after the overlap, and that delivery must succeed.

    Args:
        app: a WSGI app or a :class:`TaskTestApp` (whose settings are used).
        url, params, payload, json, queue_name, method, headers: the task, as for
            :meth:`TaskTestApp.post_task`.
        snapshot: returns the state the handler changes, as comparable data (rows,
            dicts); compared with ``==`` and shown with ``pprint`` in the diff.
        deliveries: how many times to deliver the task (at least 2).
        concurrent: also deliver every copy at once from threads (needs ``reset``).
        reset: restores the state to what it was before the first delivery.
        task_name: the task's name (default: a generated unique one).
        timeout: seconds to wait for overlapping deliveries before failing.

    Returns:
        the final snapshot (equal to the one after a single delivery).

    Raises:
        IdempotencyError: with a unified diff of the two snapshots, or naming the delivery
            that failed with its status and outcome.

    Example::

        def test_count_is_idempotent(task_app, db):
            assert_idempotent(task_app, "/tasks/count", params={"name": "a"},
                              snapshot=lambda: db.execute("select * from counters").fetchall())
    """
    __tracebackhide__ = True  # pytest shows the caller's line and the message, not this code
    if isinstance(deliveries, bool) or not isinstance(deliveries, int) or deliveries < 2:
        raise ValueError(f"deliveries must be an integer of at least 2, not {deliveries!r}")
    if concurrent and reset is None:
        raise ValueError(
            "concurrent=True needs reset=: overlapping deliveries are compared with exactly one "
            "delivery from the same starting state, so the state must be put back in between"
        )
    client = app if isinstance(app, TaskTestApp) else TaskTestApp(app)
    task = _Task(
        client,
        url,
        {
            "params": params,
            "payload": payload,
            "json": json,
            "queue_name": queue_name,
            "task_name": task_name if task_name is not None else generate_task_name(),
            "method": method,
            "headers": headers,
            # One task: every delivery carries the ETA it was scheduled for.
            "eta": datetime.now(timezone.utc),
        },
    )
    made: list[Delivery] = []

    before = snapshot()
    first = task.deliver(client, 0, 1, "first delivery")
    made.append(first)
    if not first.succeeded:
        raise IdempotencyError(
            "the first delivery of the task failed, so idempotency cannot be judged:\n  "
            + first.describe(),
            deliveries=made,
        )
    reference = snapshot()

    for number in range(2, deliveries + 1):
        delivery = task.deliver(
            client, number - 1, number, "redelivery after a success whose answer was lost"
        )
        made.append(delivery)
        if not delivery.succeeded:
            raise IdempotencyError(
                "a redelivery of a task that had already succeeded failed:\n  "
                + delivery.describe(),
                deliveries=made,
                expected=reference,
            )
        state = snapshot()
        if state != reference:
            raise IdempotencyError(
                f"delivery {number} of the same task changed the state "
                f"(retry_count={number - 1}, a redelivery after a success whose answer was "
                "lost):\n"
                + _diff(reference, state, "after 1 delivery", f"after {number} deliveries"),
                deliveries=made,
                expected=reference,
                actual=state,
            )
    if not concurrent:
        return reference

    assert reset is not None
    reset()
    restored = snapshot()
    if restored != before:
        raise AssertionError(
            "reset() did not put the state back as it was before the first delivery:\n"
            + _diff(before, restored, "before the first delivery", "after reset()")
        )
    overlap = task.deliver_at_once(deliveries, timeout, first_number=len(made) + 1)
    made.extend(overlap)
    round_made = list(overlap)
    bad = [d for d in overlap if not d.succeeded and not _is_retry(d)]
    if bad:
        raise IdempotencyError(
            "an overlapping delivery of the task failed:\n  "
            + "\n  ".join(d.describe() for d in bad),
            deliveries=made,
            expected=reference,
        )
    retried = [d for d in overlap if not d.succeeded]
    if retried:
        late = task.deliver(
            client,
            deliveries,
            len(made) + 1,
            f"redelivery after {len(retried)} overlapping deliveries answered a retry",
        )
        made.append(late)
        round_made.append(late)
        if not late.succeeded:
            raise IdempotencyError(
                "after the overlapping deliveries, a redelivery of the task failed:\n  "
                + "\n  ".join(d.describe() for d in round_made),
                deliveries=made,
                expected=reference,
            )
    state = snapshot()
    if state != reference:
        raise IdempotencyError(
            f"{deliveries} overlapping deliveries of the same task left a different state "
            "than one delivery:\n"
            + _diff(
                reference, state, "after 1 delivery", f"after {deliveries} overlapping deliveries"
            )
            + "\nwhat each delivery answered:\n  "
            + "\n  ".join(d.describe() for d in round_made),
            deliveries=made,
            expected=reference,
            actual=state,
        )
    return state


def _is_retry(delivery: Delivery) -> bool:
    return not 200 <= delivery.status < 300 and delivery.outcome in (None, "retry")


def _diff(expected: Any, actual: Any, expected_name: str, actual_name: str) -> str:
    """A unified diff of the pretty-printed snapshots."""
    left = pprint.pformat(expected, width=88, sort_dicts=True).splitlines()
    right = pprint.pformat(actual, width=88, sort_dicts=True).splitlines()
    lines = difflib.unified_diff(left, right, expected_name, actual_name, n=3, lineterm="")
    text = "\n".join(lines)
    if not text:  # equal when printed, different by == (e.g. 1 vs 1.0, or types)
        text = f"--- {expected_name}\n+++ {actual_name}\n-{expected!r}\n+{actual!r}"
    return text


class _Task:
    """One task and how to deliver it, with the given sending options."""

    def __init__(self, client: TaskTestApp, url: str, options: dict[str, Any]) -> None:
        self.client = client
        self.url = url
        self.options = options

    def deliver(
        self, client: TaskTestApp, retry_count: int, number: int, situation: str
    ) -> Delivery:
        response: TaskTestResponse = client.post_task(
            self.url, retry_count=retry_count, expect_errors=True, **self.options
        )
        return Delivery(
            number=number,
            retry_count=retry_count,
            situation=situation,
            status=response.status_int,
            outcome=response.task_outcome,
            body=response.body[:_BODY_CHARS].decode("utf-8", "replace").strip(),
        )

    def deliver_at_once(self, count: int, timeout: float, first_number: int) -> list[Delivery]:
        """``count`` deliveries from threads released together; errors re-raised here."""
        # webtest clients keep per-client state (cookies): one per thread.
        clients = [self.client.clone() for _ in range(count)]
        barrier = threading.Barrier(count)
        results: list[Delivery | None] = [None] * count
        errors: list[BaseException] = []

        def run(index: int) -> None:
            try:
                barrier.wait(timeout)
                results[index] = self.deliver(
                    clients[index], index, first_number + index, "overlapping delivery"
                )
            except BaseException as exc:  # re-raised in the test's thread below
                errors.append(exc)
                barrier.abort()

        threads = [
            threading.Thread(target=run, args=(i,), name=f"delivery-{i + 1}", daemon=True)
            for i in range(count)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout)
        if errors:
            real = [e for e in errors if not isinstance(e, threading.BrokenBarrierError)]
            raise (real or errors)[0]
        stuck = [t.name for t in threads if t.is_alive()]
        if stuck:
            raise AssertionError(
                f"overlapping deliveries did not finish within {timeout:g}s: {', '.join(stuck)}"
            )
        return [r for r in results if r is not None]
