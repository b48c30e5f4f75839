"""Deadlines for async handlers: the error at the await, later awaits intact (SPEC §5).

Deadlines are tens of milliseconds; a handler that never gets the error stops itself after
``LIMIT`` seconds so a failure is a failed assertion, not a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from taskhandler._async_deadline import AsyncArmed, arm_async, run_async
from taskhandler.deadline import check_deadline
from taskhandler.exceptions import DeadlineExceededError

LIMIT = 5.0
SOFT = (0.2, 0.18)  # deadline, grace: the error comes 20 ms after the start


def run(main: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(main(), LIMIT * 2))


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def _lock_held_elsewhere() -> Callable[[], Awaitable[Any]]:
    lock = asyncio.Lock()
    await lock.acquire()  # held by nobody who will release it in time

    async def acquire() -> None:
        await lock.acquire()

    return acquire


async def _sleep() -> Callable[[], Awaitable[Any]]:
    return lambda: asyncio.sleep(LIMIT)


async def _event() -> Callable[[], Awaitable[Any]]:
    return asyncio.Event().wait


async def _queue() -> Callable[[], Awaitable[Any]]:
    return asyncio.Queue[int]().get


async def _future() -> Callable[[], Awaitable[Any]]:
    future = asyncio.get_running_loop().create_future()

    async def wait() -> None:
        await future

    return wait


async def _wait_for() -> Callable[[], Awaitable[Any]]:
    return lambda: asyncio.wait_for(asyncio.Event().wait(), LIMIT)


async def _gather() -> Callable[[], Awaitable[Any]]:
    return lambda: asyncio.gather(asyncio.sleep(LIMIT), asyncio.sleep(LIMIT))


AWAITS = [
    pytest.param(_sleep, id="asyncio.sleep"),
    pytest.param(_event, id="Event.wait"),
    pytest.param(_queue, id="Queue.get"),
    pytest.param(_lock_held_elsewhere, id="Lock.acquire"),
    pytest.param(_future, id="a bare future"),
    pytest.param(_wait_for, id="wait_for"),
    pytest.param(_gather, id="gather"),
]


@pytest.mark.parametrize("make_await", AWAITS)
def test_error_is_raised_at_the_await_and_later_awaits_work(make_await: Any):
    """The handler gets DeadlineExceededError where it awaits, saves, and awaits again."""
    log: list[str] = []

    async def handler(suspend: Callable[[], Awaitable[Any]]) -> str:
        try:
            await suspend()
            log.append("suspension ended by itself")
        except DeadlineExceededError:
            log.append("deadline")
            await asyncio.sleep(0.001)  # saving progress: awaits still work
            log.append("saved")
        return "result"

    async def main() -> tuple[str, AsyncArmed, int]:
        armed = arm_async(*SOFT)
        result = await armed.run(handler(await make_await()))
        task = asyncio.current_task()
        assert task is not None
        await asyncio.sleep(0)  # the task itself is not cancelled
        return result, armed, task.cancelling() if sys.version_info >= (3, 11) else 0

    result, armed, cancelling = run(main)
    assert result == "result"
    assert log == ["deadline", "saved"]
    assert armed.fired and not armed.overran()
    assert cancelling == 0


def test_finally_runs_and_the_error_reaches_the_caller():
    """Uncaught, the error unwinds the handler's finally blocks and leaves run()."""
    log: list[str] = []

    async def handler() -> None:
        try:
            await asyncio.sleep(LIMIT)
        finally:
            log.append("finally")

    async def main() -> AsyncArmed:
        armed = arm_async(*SOFT)
        with pytest.raises(DeadlineExceededError):
            await armed.run(handler())
        return armed

    armed = run(main)
    assert log == ["finally"]
    assert armed.fired


def test_except_exception_does_not_swallow_it():
    """`except Exception` around an await does not catch the deadline error."""
    swallowed: list[BaseException] = []

    async def handler() -> None:
        try:
            await asyncio.sleep(LIMIT)
        except Exception as exc:
            swallowed.append(exc)

    async def main() -> None:
        with pytest.raises(DeadlineExceededError):
            await run_async(handler(), *SOFT)

    run(main)
    assert swallowed == []


@pytest.mark.parametrize(
    ("blocks", "then_awaits", "expected"),
    [
        pytest.param(0.22, False, "overran", id="blocks past the deadline, returns: overran"),
        pytest.param(0.03, True, "deadline", id="blocks past the soft deadline, then awaits"),
        pytest.param(0.03, False, "success", id="blocks into the grace, returns: in time"),
    ],
)
def test_handler_that_blocks_the_loop(blocks: float, then_awaits: bool, expected: str):
    """A handler holding the loop is not interrupted; it is detected when it returns."""

    async def handler() -> str:
        time.sleep(blocks)
        if then_awaits:
            await asyncio.sleep(LIMIT)
        return "returned"

    async def main() -> tuple[str, AsyncArmed]:
        armed = arm_async(*SOFT)
        try:
            await armed.run(handler())
        except DeadlineExceededError:
            return "deadline", armed
        return ("overran" if armed.overran() else "success"), armed

    outcome, armed = run(main)
    assert outcome == expected
    assert armed.longest_step >= blocks
    assert armed.fired is then_awaits


def test_run_async_raises_for_a_handler_that_returned_too_late():
    """run_async() reports an overrun (blocked loop) as DeadlineExceededError."""

    async def handler() -> str:
        time.sleep(0.22)  # blocks the loop past the whole deadline
        return "too late"

    async def main() -> None:
        with pytest.raises(DeadlineExceededError, match="after its deadline"):
            await run_async(handler(), *SOFT)
        assert await run_async(asyncio.sleep(0, "in time"), *SOFT) == "in time"

    run(main)


@pytest.mark.parametrize(
    ("swallow", "expected"),
    [
        pytest.param(1, ["soft", "hard"], id="swallows the soft error: raised again at deadline"),
        pytest.param(2, ["soft", "hard", "returned late"], id="swallows both: overran"),
    ],
)
def test_swallowed_error_is_raised_again_at_the_deadline(swallow: int, expected: list[str]):
    """A handler that keeps going after the soft error gets it again at the hard deadline."""
    log: list[str] = []

    async def handler() -> None:
        for phase in ("soft", "hard"):
            try:
                await asyncio.sleep(LIMIT)
            except DeadlineExceededError:
                log.append(phase)
                if len(log) > swallow:
                    raise
        log.append("returned late")

    async def main() -> AsyncArmed:
        armed = arm_async(*SOFT)
        with contextlib.suppress(DeadlineExceededError):
            await armed.run(handler())
        return armed

    armed = run(main)
    assert log == expected
    assert armed.overran()


def test_completed_future_keeps_its_result_and_the_error_comes_next():
    """A result that was ready when the deadline came is delivered; the next await raises."""
    clock = FakeClock()
    log: list[Any] = []

    async def handler(future: asyncio.Future[int]) -> None:
        log.append(await future)
        try:
            await asyncio.sleep(0)
        except DeadlineExceededError:
            log.append("deadline at the next await")

    async def main() -> None:
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        armed = AsyncArmed(60, 10, clock=clock)
        running = asyncio.ensure_future(armed.run(handler(future)))
        await asyncio.sleep(0)  # the handler is now waiting on the future
        clock.now += 50  # the soft deadline passes...
        future.set_result(7)  # ...just as the result arrives
        await running

    run(main)
    assert log == [7, "deadline at the next await"]


def test_cancellation_from_outside_still_cancels():
    """Cancelling the request's task (server shutdown) is a CancelledError, not a deadline."""
    log: list[str] = []

    async def handler() -> None:
        try:
            await asyncio.sleep(LIMIT)
        except DeadlineExceededError:
            log.append("deadline")
        except asyncio.CancelledError:
            log.append("cancelled")
            raise

    async def main() -> None:
        task = asyncio.ensure_future(arm_async(30, 10).run(handler()))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(main)
    assert log == ["cancelled"]


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.timeout arrived in 3.11")
def test_asyncio_timeout_inside_the_handler_still_works():
    """The handler's own asyncio.timeout keeps raising TimeoutError before the deadline."""
    log: list[str] = []

    async def handler() -> None:
        try:
            async with asyncio.timeout(0.005):
                await asyncio.sleep(LIMIT)
        except TimeoutError:
            log.append("own timeout")
        try:
            await asyncio.sleep(LIMIT)
        except DeadlineExceededError:
            log.append("deadline")

    async def main() -> None:
        await arm_async(*SOFT).run(handler())

    run(main)
    assert log == ["own timeout", "deadline"]


def test_concurrent_handlers_are_isolated():
    """Each handler gets only its own deadline; check_deadline() follows the task."""

    async def handler(name: str) -> str:
        try:
            for _ in range(15):
                await asyncio.sleep(0.01)
                check_deadline()
        except DeadlineExceededError:
            return f"{name}: deadline"
        return f"{name}: completed"

    async def main() -> list[str]:
        return list(
            await asyncio.gather(
                arm_async(*SOFT).run(handler("short")),
                arm_async(30, 10).run(handler("long")),
                arm_async(*SOFT).run(handler("short again")),
            )
        )

    assert run(main) == ["short: deadline", "long: completed", "short again: deadline"]


@pytest.mark.parametrize(
    ("advance", "raises"),
    [
        pytest.param(0, False, id="at the start"),
        pytest.param(49.9, False, id="just before the soft deadline"),
        pytest.param(50, True, id="at the soft deadline"),
    ],
)
def test_check_deadline_in_an_async_handler(advance: float, raises: bool):
    """check_deadline() raises in an async handler once its soft deadline has passed."""
    clock = FakeClock()
    seen: list[str] = []

    async def handler() -> None:
        clock.now += advance
        try:
            check_deadline()
            seen.append("passed")
        except DeadlineExceededError:
            seen.append("raised")
            await asyncio.sleep(0)  # the driver does not deliver the soft error again
            seen.append("saved")

    async def main() -> AsyncArmed:
        armed = AsyncArmed(60, 10, clock=clock)
        await armed.run(handler())
        check_deadline()  # the run is over: no deadline here any more
        return armed

    armed = run(main)
    assert seen == (["raised", "saved"] if raises else ["passed"])
    assert armed.fired is raises


def test_remaining_and_overran_follow_the_clock():
    """remaining() counts to the soft deadline and freezes when the run ends."""
    clock = FakeClock()

    async def handler() -> float:
        clock.now += 30
        return armed.remaining()

    armed = AsyncArmed(60, 10, clock=clock)
    assert armed.remaining() == 50
    assert run(lambda: armed.run(handler())) == 20
    clock.now += 100
    assert armed.remaining() == 20 and not armed.overran()


def test_an_armed_deadline_runs_one_handler():
    """run() twice on one AsyncArmed is a programming error."""

    async def main() -> None:
        armed = arm_async(30, 10)
        await armed.run(asyncio.sleep(0))
        coro = asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="one awaitable"):
            await armed.run(coro)
        coro.close()

    run(main)


def test_lock_stays_usable_after_a_waiter_got_the_deadline():
    """A handler interrupted while waiting for an asyncio.Lock does not wedge the lock."""

    async def handler(lock: asyncio.Lock) -> str:
        try:
            async with lock:
                return "acquired"
        except DeadlineExceededError:
            return "deadline"

    async def main() -> list[str]:
        lock = asyncio.Lock()
        await lock.acquire()
        waiter = await arm_async(*SOFT).run(handler(lock))
        lock.release()
        after = await asyncio.wait_for(handler(lock), 1.0)  # a later request gets the lock
        return [waiter, after, "locked" if lock.locked() else "free"]

    assert run(main) == ["deadline", "acquired", "free"]
