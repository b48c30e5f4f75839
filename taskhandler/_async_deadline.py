"""The deadline machinery for async handlers: driven on the event loop (SPEC §5).

The policy -- deadline lengths, :func:`~taskhandler.deadline.resolve_deadline`,
:func:`~taskhandler.deadline.check_deadline` -- is in :mod:`taskhandler.deadline`; this
module delivers ``DeadlineExceededError`` into an async handler. It starts no thread and
installs nothing: each deadline is one timer on the running loop, made when the handler
first waits (a handler that never waits needs no waking).

An async handler runs on the event loop; injecting an exception from another thread could
land in the loop's own code, so no watchdog thread is involved. :class:`AsyncArmed` drives
the handler's coroutine itself, step by step, on behalf of the task that awaits it. When the
soft deadline comes while the handler is suspended at an ``await``, the future it waits on
is cancelled and ``DeadlineExceededError`` -- not ``CancelledError`` -- is thrown in at that
``await``, so the handler can ``except DeadlineExceededError:`` and save, and its later
``await``\\ s work normally: the task itself is never cancelled, so its cancellation count is
untouched and a cancellation coming from outside (server shutdown) still goes through as
``CancelledError``. If the awaited future had already completed when the deadline came, its
result is delivered and the error is raised at the next ``await`` instead (as asyncio's own
locks expect). Code that blocks the loop cannot be interrupted: it gets the error at its
next ``await``, and one that returns without awaiting again is detected by ``overran()``.

The contract for the ASGI adapter::

    armed = arm_async(deadline_s, grace_s)   # any time; the clock starts here
    ctx_private["_deadline"] = armed          # TaskContext.time_remaining() -> armed.remaining()
    try:
        await armed.run(app(scope, receive, send))   # raises what the handler raises
    except BaseException as exc: ...         # DeadlineExceededError among them
    if armed.overran(): ...                  # returned after the hard deadline: 500
    armed.fired                              # the error was raised in the handler
    armed.longest_step                       # longest time (s) it held the loop at once

or, when only the result matters, ``await run_async(awaitable, deadline_s, grace_s)``, which
returns the result and raises ``DeadlineExceededError`` also when the handler returned after
its hard deadline.

"""

from __future__ import annotations

import asyncio
import time
import types
from collections.abc import Awaitable, Callable, Generator
from typing import Any, TypeVar

from .deadline import _DONE, _HARD, _SOFT, _current
from .exceptions import DeadlineExceededError

__all__ = ["AsyncArmed", "arm_async", "run_async"]

T = TypeVar("T")


class AsyncArmed:
    """A deadline for one async handler, driven on the running event loop.

    Create it when the request starts (the clock starts then), then ``await
    armed.run(handler_coroutine)``. See the module docstring for what is delivered where.

    Args:
        deadline: seconds from now to the hard deadline.
        grace: how long before it ``DeadlineExceededError`` is raised.
        clock: a monotonic clock in seconds.

    Attributes:
        started_at: clock time of creation.
        soft_at, hard_at: clock times of the soft and hard deadlines.
        fired: True once the error was raised in the handler.
        longest_step: the longest time (s) the handler ran without awaiting, i.e. held
            the event loop.

    Example::

        armed = AsyncArmed(60, 10)
        result = await armed.run(handler(task))
        if armed.overran(): ...
    """

    __slots__ = (
        "_cancelled_waiter",
        "_clock",
        "_due",
        "_ended_at",
        "_loop",
        "_phase",
        "_started",
        "_task",
        "_task_cancels",
        "_timer",
        "_waiting",
        "fired",
        "hard_at",
        "longest_step",
        "soft_at",
        "started_at",
    )

    def __init__(
        self, deadline: float, grace: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        now = clock()
        self._clock = clock
        self.started_at = now
        self.soft_at = now + deadline - grace
        self.hard_at = now + deadline
        self.fired = False
        self.longest_step = 0.0
        self._phase = _SOFT if self.hard_at > self.soft_at else _HARD
        self._due = False
        self._started = False
        self._ended_at: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[Any] | None = None
        self._task_cancels = 0
        self._timer: asyncio.TimerHandle | None = None
        self._waiting: object = None
        self._cancelled_waiter: object = None

    def remaining(self) -> float:
        """Seconds until the soft deadline; negative after it (frozen once run() ends)."""
        end = self._ended_at
        if end is None:
            end = self._clock()
        return self.soft_at - end

    def overran(self) -> bool:
        """True if the handler ended (or, while running, is now) at or after the hard deadline."""
        end = self._ended_at
        if end is None:
            end = self._clock()
        return end >= self.hard_at

    def elapsed(self) -> float:
        """Seconds from creation until run() ended (or until now, before that)."""
        end = self._ended_at
        if end is None:
            end = self._clock()
        return end - self.started_at

    def run(self, awaitable: Awaitable[T]) -> Awaitable[T]:
        """Run ``awaitable`` (a coroutine) under this deadline: ``await armed.run(coro)``.

        Returns its result; raises whatever it raises, ``DeadlineExceededError`` included.
        Usable once.
        """
        if self._started:
            raise RuntimeError("an AsyncArmed runs one awaitable")
        self._started = True
        return self._drive(awaitable)

    # The awaiting task calls this generator's send()/throw(); it forwards to the handler.
    # No timer until the handler first waits: one that never does needs no waking.
    @types.coroutine
    def _drive(self, awaitable: Awaitable[T]) -> Generator[Any, Any, T]:
        self._task = asyncio.current_task()
        cancelling = getattr(self._task, "cancelling", None)
        self._task_cancels = cancelling() if cancelling is not None else 0
        token = _current.set(self)
        clock = self._clock
        it: Any = awaitable.__await__()
        value: Any = None
        error: BaseException | None = None
        try:
            while True:
                started = clock()
                try:
                    yielded = it.send(value) if error is None else it.throw(error)
                except StopIteration as stop:
                    self._step_took(clock() - started)
                    result: T = stop.value
                    return result
                except BaseException:
                    self._step_took(clock() - started)
                    raise
                now = clock()
                self._step_took(now - started)
                value = error = None
                if self._is_due(now):
                    # Deliver at this await: cancel what it waits on, raise there instead.
                    cancel = getattr(yielded, "cancel", None)
                    if cancel is not None:
                        cancel()
                    error = self._deliver()
                    continue
                if self._timer is None:
                    self._schedule()  # the handler waits: wake it when the deadline comes
                self._waiting = yielded
                try:
                    value = yield yielded
                except GeneratorExit:
                    it.close()
                    raise
                except BaseException as exc:  # forwarded to the handler below
                    error = exc
                finally:
                    self._waiting = None
                if (
                    isinstance(error, asyncio.CancelledError)
                    and yielded is self._cancelled_waiter
                    and not self._cancelled_from_outside()
                ):
                    # The cancellation is ours (the deadline): turn it into the deadline error.
                    self._cancelled_waiter = None
                    error = self._deliver()
                elif error is None and yielded is None and self._is_due(clock()):
                    error = self._deliver()
        finally:
            self._ended_at = clock()
            self._phase = _DONE
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            _current.reset(token)

    def _step_took(self, seconds: float) -> None:
        if seconds > self.longest_step:
            self.longest_step = seconds

    def _cancelled_from_outside(self) -> bool:
        cancelling = getattr(self._task, "cancelling", None)
        return cancelling is not None and cancelling() > self._task_cancels

    def _is_due(self, now: float) -> bool:
        if self._phase == _DONE:
            return False
        return self._due or now >= (self.soft_at if self._phase == _SOFT else self.hard_at)

    def _deliver(self) -> DeadlineExceededError:
        self.fired = True
        self._due = False
        self._phase += 1
        self._schedule()
        return DeadlineExceededError()

    def _schedule(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._phase == _DONE or self._task is None:
            return
        if self._loop is None:
            self._loop = self._task.get_loop()
        at = self.soft_at if self._phase == _SOFT else self.hard_at
        self._timer = self._loop.call_later(max(0.0, at - self._clock()), self._on_due)

    def _on_due(self) -> None:
        self._timer = None
        if self._phase == _DONE or self._ended_at is not None:
            return
        at = self.soft_at if self._phase == _SOFT else self.hard_at
        if self._clock() < at:
            self._schedule()
            return
        self._due = True
        waiting = self._waiting
        cancel = getattr(waiting, "cancel", None)
        # Wake the task by cancelling the future it waits on; if that future is already
        # done, its result goes through and the error comes at the next await.
        if cancel is not None and cancel():
            self._cancelled_waiter = waiting

    def _check(self) -> None:
        now = self._clock()
        if now < self.soft_at or self._ended_at is not None:
            return
        self.fired = True
        while self._phase != _DONE and now >= (
            self.soft_at if self._phase == _SOFT else self.hard_at
        ):
            self._phase += 1
        self._due = False
        self._schedule()
        raise DeadlineExceededError("the task's soft deadline has passed")

    def __repr__(self) -> str:
        return f"<AsyncArmed remaining={self.remaining():.3f}s fired={self.fired}>"


def arm_async(
    deadline: float, grace: float, *, clock: Callable[[], float] = time.monotonic
) -> AsyncArmed:
    """Start a deadline for an async handler; run it with ``await armed.run(coro)``."""
    return AsyncArmed(deadline, grace, clock=clock)


async def run_async(awaitable: Awaitable[T], deadline: float, grace: float) -> T:
    """Await ``awaitable`` under a deadline; return its result.

    ``DeadlineExceededError`` is raised at the ``await`` where the handler is suspended
    ``deadline - grace`` seconds from now. Also raised here, after the fact, when the
    handler returned at or after ``deadline`` (it swallowed the error, or blocked the loop).

    Example::

        result = await run_async(handler(task), 600, 10)
    """
    armed = AsyncArmed(deadline, grace)
    result = await armed.run(awaitable)
    if armed.overran():
        raise DeadlineExceededError("the handler returned after its deadline")
    return result
