"""The deadline machinery for sync handlers: one watchdog thread per process (SPEC §5).

The policy -- deadline lengths, :func:`~taskhandler.deadline.resolve_deadline`,
:func:`~taskhandler.deadline.check_deadline` -- is in :mod:`taskhandler.deadline`; this
module delivers ``DeadlineExceededError`` into the thread that runs a sync handler.
Importing it starts nothing: the watchdog thread and the fork hook come with the first
:func:`arm`.

One watchdog thread per process (a daemon, started by the first :func:`arm`) keeps the set
of armed deadlines. When one comes due it raises the error inside the armed thread with
``PyThreadState_SetAsyncExc``. Arming adds to the set and disarming removes from it, both
O(1) under one short lock: no thread or timer object per request, and nothing left behind.
The watchdog sleeps until the earliest deadline it knew of when it last looked, and is woken
only by an arming that comes due before that; it then looks over the deadlines in flight
(one per busy thread). Under steady traffic with one deadline length, arming never wakes it.

The contract an adapter follows (:mod:`taskhandler.wsgi` does exactly this)::

    armed = arm(deadline_s, grace_s)     # for the current thread: a plain call, then at once
    try:                                 # the try (nothing in between may be interrupted)
        try:
            ... run the handler, consume and close its response ...
        finally:
            armed.disarm()               # nothing is delivered after this returns
    except BaseException as exc:         # DeadlineExceededError among them
        ... map exc to an outcome ...
    if armed.overran(): ...              # answer 500, outcome deadline-exceeded
    armed.fired                          # the error was raised (or scheduled) in the handler
    armed.remaining()                    # seconds until the soft deadline (< 0 after it)

The error is delivered only while the thread runs code between ``arm()`` returning and
``disarm()`` being entered -- the handler and the adapter's own code around it -- never
inside ``arm()``/``disarm()`` and never after ``disarm()`` returns. The handshake:

- the watchdog decides and injects while holding the lock, so an entry that ``disarm()``
  has marked dead is never injected;
- before injecting it looks at the target thread's current Python stack
  (``sys._current_frames``) and, if the thread is inside ``arm()`` or ``disarm()``
  (including the instant it enters ``disarm()``, where CPython checks for pending
  asynchronous exceptions), it does not inject but looks again half a millisecond later --
  by then the entry is usually dead. An injected exception is raised at the point where the
  target thread next takes the interpreter lock back, which is where the watchdog saw it;
- ``disarm()``, under the lock, clears any injection that is still pending
  (``PyThreadState_SetAsyncExc(thread, NULL)``) so that one that has not landed yet -- e.g.
  the thread was inside a C call -- can never land later in the server or the next request.

On the main thread (gunicorn's sync worker, a script, a test) the watchdog also uses a
``SIGALRM`` interval timer when ``SIGALRM`` is otherwise unused, so blocking calls there are
interrupted too (the watchdog thread then only steps in 50 ms later, should the signal not
come). An application that installs its own ``SIGALRM`` handler keeps it: from then on the
watchdog leaves the signal alone. ``Watchdog(signals=False)`` never uses it. The signal
handler follows the same rules (it gives way while the main thread is inside
``arm()``/``disarm()`` and tries again a millisecond later).

What is interrupted, and what is not (CPython 3.10-3.12; on 3.13 see
:data:`INTERRUPTS_SUPPORTED`):

- Python code, in any thread: within a few milliseconds of the soft deadline (a thread
  switch interval, 5 ms by default, is the usual delay). ``finally`` blocks and ``with``
  exits run; ``except Exception`` does not catch it (it derives from ``BaseException``).
- Blocking calls on the main thread (``time.sleep``, socket reads, ``select``, lock waits):
  interrupted at the soft deadline by the signal timer.
- Blocking calls in other threads (``time.sleep``, socket reads, database drivers, lock
  waits): not interrupted. The error is raised as soon as the call returns to Python.
- Long C computations that hold the interpreter lock (a huge regex, ``sum`` over a huge
  list): the error lands when the computation returns, in every thread.
"""

from __future__ import annotations

import ctypes
import math
import os
import signal
import sys
import threading
import time
import weakref
from collections.abc import Callable
from contextvars import Token
from types import CodeType, FrameType
from typing import Any

from .deadline import _DONE, _HARD, _SOFT, _Checkable, _current
from .exceptions import ConfigError, DeadlineExceededError

# signal.getsignal() without turning its answer into an enum (slow), as it runs on every
# arming on the main thread: the C function the signal module wraps, where there is one.
_getsignal: Callable[[int], Any] = getattr(signal, "_signal", signal).getsignal

__all__ = [
    "INTERRUPTS_SUPPORTED",
    "RETRY_INTERVAL",
    "SIGNAL_FALLBACK",
    "Armed",
    "Watchdog",
    "arm",
    "default_watchdog",
]

#: How long the watchdog waits before looking again at a thread that is inside
#: ``arm()``/``disarm()`` (those take microseconds).
RETRY_INTERVAL = 0.0005
#: With a signal timer, the watchdog thread is only the fallback (e.g. someone else reset
#: the timer), so it comes this much later than the signal.
SIGNAL_FALLBACK = 0.05

#: Whether the watchdog interrupts threads by default. CPython 3.13 can let an exception
#: raised between two bytecodes -- by ``PyThreadState_SetAsyncExc`` or by a signal handler --
#: skip the ``except`` and ``finally`` blocks of the code it lands in (python/cpython#139622),
#: which would break every promise above; there the watchdog only keeps time (``overran()``,
#: ``remaining()``, :func:`~taskhandler.deadline.check_deadline`) unless
#: ``Watchdog(interrupt=True)`` says otherwise.
#: Async handlers are not affected.
INTERRUPTS_SUPPORTED = sys.version_info < (3, 13)


# PyThreadState_SetAsyncExc(thread_id, exc): exc is an exception *class* (CPython raises
# ``exc()`` in the thread); NULL clears a pending one. It returns the number of threads changed.
_set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc
_set_async_exc.argtypes = [ctypes.c_ulong, ctypes.py_object]
_set_async_exc.restype = ctypes.c_int


_NULL = ctypes.py_object()


class Armed:
    """One armed deadline for one request in one thread (see :meth:`Watchdog.arm`).

    Attributes:
        started_at: clock time of arming.
        soft_at: clock time of the soft deadline (when the error is raised).
        hard_at: clock time of the deadline itself.
        fired: True once the error was raised, or scheduled to be raised, in the handler.
    """

    __slots__ = (
        "_due",
        "_ended_at",
        "_injected",
        "_live",
        "_phase",
        "_signal",
        "_thread",
        "_tid",
        "_token",
        "_watchdog",
        "fired",
        "hard_at",
        "soft_at",
        "started_at",
    )

    def __init__(
        self, watchdog: Watchdog, started_at: float, soft_at: float, hard_at: float
    ) -> None:
        self._watchdog = watchdog
        self.started_at = started_at
        self.soft_at = soft_at
        self.hard_at = hard_at
        self.fired = False
        self._due = soft_at
        self._phase = _SOFT
        self._live = True
        self._injected = False
        self._signal = False
        self._ended_at: float | None = None
        self._tid = threading.get_ident()
        self._thread = threading.current_thread()
        self._token: Token[_Checkable | None] | None = None

    def disarm(self) -> None:
        """End this deadline: after this returns the error is never delivered for it.

        Clears an injection that is still pending. Idempotent; call it in a ``finally``.
        """
        wd = self._watchdog
        stop_timer = False
        ended = wd.clock()  # outside the lock: keep the section free of thread switches
        with wd._lock:
            if self._injected:
                # First thing under the lock, before any bytecode that could let a pending
                # injection land: drop it. The watchdog cannot inject again (it needs the lock).
                _set_async_exc(self._tid, _NULL)
            if self._live:
                self._live = False
                self._ended_at = ended
                wd._live_count -= 1
                # Subscripts, not a method call: the interpreter may switch threads after a
                # call, and a thread switched out while holding the lock stalls every other.
                scheduled = wd._scheduled
                if self in scheduled:
                    del scheduled[self]
                if wd._signal_armed is self:
                    wd._signal_armed = None
                    stop_timer = True
        if stop_timer:
            signal.setitimer(signal.ITIMER_REAL, 0)
        token, self._token = self._token, None
        if token is not None and _current.get() is self:
            try:  # noqa: SIM105 - cheaper than contextlib.suppress on every request
                _current.reset(token)
            except (ValueError, RuntimeError):
                pass  # disarmed from another context: that context's value is not ours

    def overran(self) -> bool:
        """True if the request ended (or, while armed, is now) at or after the hard deadline."""
        end = self._ended_at
        if end is None:
            end = self._watchdog.clock()
        return end >= self.hard_at

    def remaining(self) -> float:
        """Seconds until the soft deadline; negative after it (frozen when disarmed)."""
        end = self._ended_at
        if end is None:
            end = self._watchdog.clock()
        return self.soft_at - end

    def elapsed(self) -> float:
        """Seconds from arming to disarming (or to now, while armed)."""
        end = self._ended_at
        if end is None:
            end = self._watchdog.clock()
        return end - self.started_at

    def _check(self) -> None:
        wd = self._watchdog
        now = wd.clock()
        if now < self.soft_at:
            return
        with wd._lock:
            if not self._live:
                return  # disarmed: a request that is over has no deadline
            self.fired = True
            while self._phase != _DONE and now >= self._phase_at(self._phase):
                wd._advance_locked(self, now)
            if self._injected and self._tid == threading.get_ident():
                # One error for one deadline: drop a copy the watchdog may have queued.
                _set_async_exc(self._tid, _NULL)
        raise DeadlineExceededError("the task's soft deadline has passed")

    def _phase_at(self, phase: int) -> float:
        return self.soft_at if phase == _SOFT else self.hard_at

    def __repr__(self) -> str:
        state = "armed" if self._live else "disarmed"
        return f"<Armed {state} remaining={self.remaining():.3f}s fired={self.fired}>"


def _protected(frame: FrameType | None) -> bool:
    """True if ``frame``'s thread is inside arm()/disarm() (no delivery there)."""
    while frame is not None:
        if frame.f_code in _PROTECTED:
            return True
        frame = frame.f_back
    return False


class Watchdog:
    """The process's deadline watchdog: one thread, one set of armed deadlines, one lock.

    Most code uses the module-level :func:`arm` (backed by :data:`default_watchdog`); a
    separate instance is for tests that move time by hand. Making one starts nothing: its
    first :meth:`arm` starts the thread and registers a fork hook (the child of a ``fork()``
    starts with no thread and none of the parent's deadlines).

    Args:
        clock: a monotonic clock in seconds (``time.monotonic``); inject one to test by
            moving time, then call :meth:`fire_due` (or :meth:`wake`) after moving it.
        signals: also use a ``SIGALRM`` timer for deadlines armed on the main thread, when
            ``SIGALRM`` has no other handler (only with the real ``time.monotonic`` clock).
        thread: start the watchdog thread on first use. Without it nothing fires unless
            :meth:`fire_due` is called.
        interrupt: raise the error in the armed thread at all (default: where the
            interpreter supports it, see :data:`INTERRUPTS_SUPPORTED`). Without it a deadline
            only keeps time: ``overran()``, ``remaining()`` and
            :func:`~taskhandler.deadline.check_deadline`.

    Example::

        clock = FakeClock()
        wd = Watchdog(clock=clock, thread=False)
        armed = wd.arm(60, 10)
        clock.advance(50)
        wd.fire_due()          # raises DeadlineExceededError in the armed thread
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        signals: bool = True,
        thread: bool = True,
        interrupt: bool | None = None,
    ) -> None:
        if not callable(clock):
            raise ConfigError(f"clock must be callable, got {clock!r}", value=clock)
        self.clock = clock
        self.interrupt = INTERRUPTS_SUPPORTED if interrupt is None else bool(interrupt)
        self.use_signals = bool(signals) and clock is time.monotonic and self.interrupt
        self._autostart = thread
        self._fork_hooked = False
        self._init_state()

    def _init_state(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        # Armings with something left to deliver (insertion-ordered; the values are unused).
        self._scheduled: dict[Armed, None] = {}
        # When the watchdog thread looks next by itself: an arming due earlier must wake it.
        self._sleep_until = math.inf
        self._live_count = 0
        self._thread: threading.Thread | None = None
        self._closed = False
        self._signal_armed: Armed | None = None
        self._alarm_handler = self._on_alarm
        # After a fork from another thread, that thread is the child's main thread.
        self._main_thread = threading.main_thread()

    # -- arming -----------------------------------------------------------------------

    def arm(self, deadline: float, grace: float) -> Armed:
        """Arm a deadline for the current thread: the error comes at ``deadline - grace`` s.

        O(log n); starts no thread (except the one watchdog thread, the first time).
        ``deadline``/``grace`` are seconds, already validated (see
        :func:`~taskhandler.deadline.resolve_deadline`). Also makes
        :func:`~taskhandler.deadline.check_deadline` work in this thread until
        :meth:`Armed.disarm`.
        """
        now = self.clock()
        armed = Armed(self, now, now + deadline - grace, now + deadline)
        if not self.interrupt:
            armed._phase = _DONE  # nothing to deliver: not scheduled, no signal
            with self._lock:
                if not self._fork_hooked:
                    self._hook_fork_locked()
                self._live_count += 1
            armed._token = _current.set(armed)
            return armed
        use_signal = (
            self.use_signals and armed._thread is self._main_thread and self._signal_available()
        )
        with self._lock:
            if self._closed:
                raise RuntimeError("this deadline watchdog is closed")
            if not self._fork_hooked:
                self._hook_fork_locked()
            if use_signal and self._signal_armed is None:
                self._signal_armed = armed
                armed._signal = True
                armed._due += SIGNAL_FALLBACK
            self._live_count += 1
            self._scheduled[armed] = None
            if armed._due < self._sleep_until:
                self._sleep_until = armed._due
                self._wake.notify()
            if self._thread is None and self._autostart:
                self._start_locked()
        if armed._signal:
            signal.setitimer(signal.ITIMER_REAL, max(armed.soft_at - now, 1e-6))
        armed._token = _current.set(armed)
        return armed

    def _hook_fork_locked(self) -> None:
        """On first use (not at import): give the child of a fork a fresh state."""
        self._fork_hooked = True
        ref = weakref.ref(self)

        def after_fork() -> None:
            wd = ref()
            if wd is not None:
                wd._init_state()

        # The child of a fork has no watchdog thread and none of the parent's requests.
        os.register_at_fork(after_in_child=after_fork)

    def _advance_locked(self, armed: Armed, now: float) -> None:
        """Move ``armed`` past its current phase; schedule the hard-deadline delivery."""
        armed._phase += 1
        if armed._phase == _HARD and armed.hard_at > armed.soft_at:
            armed._due = armed.hard_at + (SIGNAL_FALLBACK if armed._signal else 0.0)
            if armed._signal and self._signal_armed is armed:
                signal.setitimer(signal.ITIMER_REAL, max(armed.hard_at - now, 1e-6))
        else:
            armed._phase = _DONE
            self._scheduled.pop(armed, None)

    # -- firing -----------------------------------------------------------------------

    def fire_due(self) -> int:
        """Deliver every deadline that is due now; return how many were delivered.

        The watchdog thread calls this; tests with an injected clock call it after moving
        the clock.
        """
        with self._lock:
            return self._fire_due_locked()[0]

    def _fire_due_locked(self) -> tuple[int, float]:
        """Deliver what is due; return how many were delivered and when the next one is due."""
        now = self.clock()
        delivered = 0
        next_due = math.inf
        for armed in list(self._scheduled):
            if armed._due <= now:
                outcome = self._deliver_locked(armed, now)
                if outcome is None:
                    armed._due = now + RETRY_INTERVAL  # inside arm()/disarm(): look again soon
                elif outcome:
                    delivered += 1
                if armed not in self._scheduled:
                    continue
            next_due = min(next_due, armed._due)
        return delivered, next_due

    def _deliver_locked(self, armed: Armed, now: float) -> bool | None:
        """Inject into ``armed``'s thread: True done, False dropped, None try again soon."""
        tid = armed._tid
        if not armed._thread.is_alive():
            # The thread ended without disarming; its id may be reused: never inject.
            armed._live = False
            self._live_count -= 1
            self._scheduled.pop(armed, None)
            return False
        frames = sys._current_frames()
        if tid not in frames or _protected(frames[tid]):
            return None
        if not _set_async_exc(tid, DeadlineExceededError):
            armed._live = False
            self._live_count -= 1
            self._scheduled.pop(armed, None)
            return False
        armed._injected = True
        # The interpreter lock may have changed hands while this thread looked, letting the
        # target move on. It is stopped now where the error will land: look once more, and
        # take the error back if that is inside arm()/disarm().
        frames = sys._current_frames()
        if tid in frames and _protected(frames[tid]):
            _set_async_exc(tid, _NULL)
            return None
        armed.fired = True
        self._advance_locked(armed, now)
        return True

    def _start_locked(self) -> None:
        thread = threading.Thread(
            target=self._run, name="taskhandler-deadline-watchdog", daemon=True
        )
        self._thread = thread
        thread.start()

    def _run(self) -> None:
        with self._lock:
            while not self._closed:
                due = self._fire_due_locked()[1]
                self._sleep_until = due
                wait = None if due == math.inf else max(due - self.clock(), 0.0)
                self._wake.wait(None if wait is None else min(wait, threading.TIMEOUT_MAX))

    def wake(self) -> None:
        """Make the watchdog thread look at its deadlines now (after moving an injected clock)."""
        with self._lock:
            self._wake.notify()

    def close(self) -> None:
        """Stop the watchdog thread (for instances made in tests); arming afterwards fails."""
        with self._lock:
            self._closed = True
            self._wake.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        main = threading.current_thread() is threading.main_thread()
        if main and signal.getsignal(signal.SIGALRM) == self._alarm_handler:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, signal.SIG_DFL)

    # -- the main thread's signal timer ----------------------------------------------------

    def _signal_available(self) -> bool:
        current = _getsignal(signal.SIGALRM)
        if current == self._alarm_handler:
            return True
        if current == signal.SIG_DFL:
            try:
                signal.signal(signal.SIGALRM, self._alarm_handler)
            except (ValueError, OSError):
                self.use_signals = False  # e.g. not the main interpreter: the thread does it all
                return False
            return True
        return False  # someone else uses SIGALRM: leave it to them, rely on the thread

    def _on_alarm(self, signum: int, frame: FrameType | None) -> None:
        armed = self._signal_armed
        if armed is None:
            return
        if _protected(frame) or not self._lock.acquire(blocking=False):
            # Inside arm()/disarm(), or the lock is busy: look again in a moment.
            signal.setitimer(signal.ITIMER_REAL, 2 * RETRY_INTERVAL)
            return
        try:
            if armed is not self._signal_armed or not armed._live or armed._phase == _DONE:
                return
            now = self.clock()
            at = armed._phase_at(armed._phase)
            if now < at:
                signal.setitimer(signal.ITIMER_REAL, at - now)
                return
            armed.fired = True
            self._advance_locked(armed, now)
        finally:
            self._lock.release()
        raise DeadlineExceededError

    # -- introspection ----------------------------------------------------------------------

    @property
    def scheduled_count(self) -> int:
        """Armed deadlines the watchdog still has something to deliver for (never stale ones)."""
        return len(self._scheduled)

    @property
    def armed_count(self) -> int:
        """Deadlines currently armed."""
        return self._live_count

    @property
    def thread(self) -> threading.Thread | None:
        """The watchdog thread, once started."""
        return self._thread


default_watchdog = Watchdog()
"""The process's watchdog, used by :func:`arm` and the middlewares."""


def arm(deadline: float, grace: float) -> Armed:
    """Arm a deadline for the current thread on the process watchdog.

    ``DeadlineExceededError`` is raised in this thread ``deadline - grace`` seconds from
    now (and again at ``deadline`` if still running). Always pair with
    :meth:`Armed.disarm` in a ``finally``.

    Example::

        armed = arm(600, 10)
        try:
            handler()
        finally:
            armed.disarm()
        if armed.overran(): ...
    """
    return default_watchdog.arm(deadline, grace)


_PROTECTED: frozenset[CodeType] = frozenset(
    {
        arm.__code__,
        Watchdog.arm.__code__,
        Armed.disarm.__code__,
        Watchdog._on_alarm.__code__,
    }
)
