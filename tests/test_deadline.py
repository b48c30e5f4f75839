"""Deadlines for sync handlers: the watchdog, its race-free handshake, check_deadline (SPEC §5).

Logic is pinned by moving an injected clock (``Watchdog(clock=..., thread=False)`` and
``fire_due()``); delivery into real threads uses the real clock with deadlines of tens of
milliseconds. Handler loops do real work: CPython may skip ``except``/``finally`` checks in
an empty ``while True: pass``.
"""

from __future__ import annotations

import concurrent.futures
import json
import random
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from taskhandler._watchdog import (
    INTERRUPTS_SUPPORTED,
    SIGNAL_FALLBACK,
    Armed,
    Watchdog,
    arm,
    default_watchdog,
)
from taskhandler.context import TaskContext
from taskhandler.deadline import (
    AUTOMATIC_SCALING_DEADLINE,
    BASIC_SCALING_DEADLINE,
    DEFAULT_GRACE,
    check_deadline,
    resolve_deadline,
)
from taskhandler.exceptions import ConfigError, DeadlineExceededError
from tests.servers import ROOT

needs_interrupts = pytest.mark.skipif(
    not INTERRUPTS_SUPPORTED,
    reason="this CPython lets asynchronous exceptions skip except blocks (cpython#139622)",
)

# A bound for every loop that waits for something to happen (never reached when it works).
LIMIT = 5.0


def work(n: int = 200) -> int:
    """A few microseconds of real Python work."""
    total = 0
    for i in range(n):
        total += i * i
    return total


def spin(seconds: float) -> None:
    """Run Python code (not sleep) for ``seconds`` of wall time."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        work()


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Worker(threading.Thread):
    """Runs ``body`` in its own thread and records how it ended.

    ``outcome`` is "returned", or the name of the exception class that escaped.
    """

    def __init__(self, body: Callable[[Worker], Any]) -> None:
        super().__init__(daemon=True)
        self.body = body
        self.ready = threading.Event()
        self.stop = threading.Event()
        self.outcome: str | None = None
        self.notes: list[str] = []
        self.armed: Armed | None = None

    def run(self) -> None:
        try:
            self.body(self)
            self.outcome = "returned"
        except BaseException as exc:
            self.outcome = type(exc).__name__

    def busy(self) -> None:
        """Do Python work until told to stop (bounded)."""
        end = time.monotonic() + LIMIT
        while not self.stop.is_set() and time.monotonic() < end:
            work()

    def finish(self) -> str | None:
        self.stop.set()
        self.join(LIMIT)
        assert not self.is_alive()
        return self.outcome


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fake_wd(clock: FakeClock) -> Iterator[Watchdog]:
    wd = Watchdog(clock=clock, thread=False)
    yield wd
    wd.close()


@pytest.fixture
def real_wd() -> Iterator[Watchdog]:
    wd = Watchdog(signals=False)
    yield wd
    wd.close()


def armed_worker(wd: Watchdog, deadline: float, grace: float, handler: Callable[[Worker], Any]):
    """A worker that arms, runs ``handler`` and disarms, like the middleware does."""

    def body(w: Worker) -> None:
        w.armed = wd.arm(deadline, grace)
        try:
            w.ready.set()
            handler(w)
        finally:
            w.armed.disarm()

    worker = Worker(body)
    worker.start()
    assert worker.ready.wait(LIMIT)
    return worker


# -- configuration -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("deadline", "grace", "expected"),
    [
        pytest.param(None, None, (600.0, 10.0), id="defaults: automatic scaling, 10 s grace"),
        pytest.param(BASIC_SCALING_DEADLINE, None, (86_400.0, 10.0), id="basic scaling"),
        pytest.param(60, 5, (60.0, 5.0), id="explicit ints"),
        pytest.param(0.05, 0.02, (0.05, 0.02), id="short test deadline"),
        pytest.param(1, 0, (1.0, 0.0), id="zero grace"),
    ],
)
def test_resolve_deadline_accepts(deadline: Any, grace: Any, expected: tuple[float, float]):
    """Valid deadlines and graces resolve to floats, with 600 s / 10 s defaults."""
    assert resolve_deadline(deadline, grace) == expected
    assert resolve_deadline(None, None) == (AUTOMATIC_SCALING_DEADLINE, DEFAULT_GRACE)


@pytest.mark.parametrize(
    ("deadline", "grace", "message"),
    [
        pytest.param(0, None, "positive", id="zero deadline"),
        pytest.param(-5, None, "positive", id="negative deadline"),
        pytest.param(10, 10, "smaller than the deadline", id="grace equal to deadline"),
        pytest.param(None, 600, "smaller than the deadline", id="grace equal to default"),
        pytest.param(10, 11, "smaller than the deadline", id="grace above deadline"),
        pytest.param(10, -1, "negative", id="negative grace"),
        pytest.param("600", None, "number of seconds", id="deadline as text"),
        pytest.param(True, None, "number of seconds", id="deadline as bool"),
        pytest.param(float("nan"), None, "finite", id="NaN deadline"),
        pytest.param(float("inf"), None, "finite", id="infinite deadline"),
        pytest.param(86_401, None, "at most 86400 s", id="longer than any push task"),
        pytest.param(1e10, None, "at most 86400 s", id="beyond what a timer can wait"),
        pytest.param(None, float("nan"), "finite", id="NaN grace"),
    ],
)
def test_resolve_deadline_refuses(deadline: Any, grace: Any, message: str):
    """Bad deadline/grace values raise ConfigError naming the problem and the value."""
    with pytest.raises(ConfigError, match=message) as info:
        resolve_deadline(deadline, grace)
    assert any(info.value.value is given for given in (deadline, grace))


def test_error_is_not_an_exception():
    """DeadlineExceededError passes through `except Exception` and has a useful message."""
    assert issubclass(DeadlineExceededError, BaseException)
    assert not issubclass(DeadlineExceededError, Exception)
    assert "deadline" in str(DeadlineExceededError())
    assert str(DeadlineExceededError("custom")) == "custom"


def test_watchdog_refuses_a_clock_that_is_not_callable():
    """A Watchdog with a non-callable clock is a ConfigError at construction."""
    with pytest.raises(ConfigError, match="clock"):
        Watchdog(clock=1.0)  # type: ignore[arg-type]


# -- the watchdog's logic, by moving an injected clock -----------------------------------------


@pytest.mark.parametrize(
    ("advance", "delivered"),
    [
        pytest.param(49.999, 0, id="just before the soft deadline"),
        pytest.param(50.0, 1, id="at the soft deadline"),
        pytest.param(55.0, 1, id="inside the grace"),
    ],
)
@needs_interrupts
def test_fires_at_the_soft_deadline(
    fake_wd: Watchdog, clock: FakeClock, advance: float, delivered: int
):
    """The error is injected at deadline - grace, not before."""
    worker = armed_worker(fake_wd, 60, 10, lambda w: w.busy())
    clock.advance(advance)
    assert fake_wd.fire_due() == delivered
    if delivered:
        worker.join(LIMIT)
        assert worker.outcome == "DeadlineExceededError"
    else:
        assert worker.finish() == "returned"
    assert worker.armed is not None
    assert worker.armed.fired is bool(delivered)
    assert worker.armed.overran() is False


def test_disarmed_deadline_never_fires(fake_wd: Watchdog, clock: FakeClock):
    """After disarm() returns nothing is delivered, however far time moves."""

    def body(w: Worker) -> None:
        armed = fake_wd.arm(60, 10)
        armed.disarm()
        w.armed = armed
        w.ready.set()
        w.busy()

    worker = Worker(body)
    worker.start()
    assert worker.ready.wait(LIMIT)
    clock.advance(10_000)
    assert fake_wd.fire_due() == 0
    assert worker.finish() == "returned"
    assert fake_wd.armed_count == 0


@needs_interrupts
def test_swallowed_error_is_raised_again_at_the_hard_deadline(fake_wd: Watchdog, clock: FakeClock):
    """A handler that swallows the soft error gets it again at the deadline, and overran."""

    def handler(w: Worker) -> None:
        for phase in ("soft", "hard"):
            try:
                w.busy()
            except DeadlineExceededError:
                w.notes.append(phase)

    worker = armed_worker(fake_wd, 60, 10, handler)
    clock.advance(50)
    assert fake_wd.fire_due() == 1
    _wait_for(lambda: worker.notes == ["soft"])
    assert fake_wd.fire_due() == 0  # nothing more until the hard deadline
    clock.advance(10)
    assert fake_wd.fire_due() == 1
    worker.join(LIMIT)
    assert worker.notes == ["soft", "hard"]
    assert worker.outcome == "returned"
    assert worker.armed is not None
    assert worker.armed.overran() and worker.armed.fired


@needs_interrupts
def test_pending_injection_is_cleared_by_disarm(fake_wd: Watchdog, clock: FakeClock):
    """An error injected while the thread sat in a C call is dropped if disarm() comes first."""
    release = threading.Event()

    def body(w: Worker) -> None:
        w.armed = fake_wd.arm(60, 10)
        w.ready.set()
        release.wait(LIMIT)  # blocked in C: an injected error stays pending
        w.notes.append("woke")
        w.busy()  # Python code: a pending error would land here

    worker = Worker(body)
    worker.start()
    assert worker.ready.wait(LIMIT)
    _wait_for(lambda: _frame_name(worker) == "wait")
    clock.advance(50)
    assert fake_wd.fire_due() == 1  # injected, not landed: the thread is blocked
    assert worker.armed is not None
    worker.armed.disarm()  # the request ends first (disarmed here, from another thread)
    release.set()
    _wait_for(lambda: worker.notes == ["woke"])
    assert worker.finish() == "returned"


@needs_interrupts
def test_no_delivery_while_the_thread_is_inside_disarm(fake_wd: Watchdog, clock: FakeClock):
    """A due deadline whose thread is entering disarm() is held back, then dropped."""
    worker = armed_worker(fake_wd, 60, 10, lambda w: w.stop.wait(LIMIT))
    with fake_wd._lock:  # the worker's disarm() will wait for it
        worker.stop.set()
        _wait_for(lambda: _frame_name(worker) == "disarm")
        clock.advance(50)
        delivered, _ = fake_wd._fire_due_locked()
        assert delivered == 0
        assert fake_wd.scheduled_count == 1  # kept, to look again in a moment
    worker.join(LIMIT)
    assert worker.outcome == "returned"
    clock.advance(1)
    assert fake_wd.fire_due() == 0
    assert fake_wd.scheduled_count == 0
    assert worker.armed is not None and not worker.armed.fired


@needs_interrupts
def test_thread_that_ended_without_disarming_is_never_targeted(fake_wd: Watchdog, clock: FakeClock):
    """An arming whose thread is gone is dropped (its thread id may belong to a new thread)."""
    worker = Worker(lambda w: fake_wd.arm(60, 10))
    worker.start()
    worker.join(LIMIT)
    assert fake_wd.armed_count == 1
    clock.advance(50)
    assert fake_wd.fire_due() == 0
    assert fake_wd.armed_count == 0


@pytest.mark.parametrize(
    "live",
    [pytest.param(1, id="one request at a time"), pytest.param(64, id="64 concurrent")],
)
def test_only_deadlines_in_flight_are_kept(fake_wd: Watchdog, clock: FakeClock, live: int):
    """Disarming forgets a deadline at once: over 20,000 requests the watchdog never holds
    more than the deadlines in flight, and nothing once they are all disarmed."""
    rng = random.Random(4)
    window: list[Armed] = []
    for _ in range(20_000):
        window.append(fake_wd.arm(rng.uniform(20, 600), 10))
        if len(window) > live:
            window.pop(rng.randrange(len(window))).disarm()
        assert fake_wd.scheduled_count == fake_wd.armed_count == len(window)
        clock.advance(0.001)
    for armed in window:
        armed.disarm()
    assert fake_wd.armed_count == 0
    assert fake_wd.scheduled_count == 0


def test_remaining_and_overran_follow_the_clock(fake_wd: Watchdog, clock: FakeClock):
    """remaining() counts to the soft deadline; both freeze at disarm."""
    armed = fake_wd.arm(60, 10)
    assert armed.remaining() == 50
    clock.advance(55)
    assert armed.remaining() == -5 and not armed.overran()
    clock.advance(5)
    assert armed.overran()
    armed.disarm()
    clock.advance(100)
    assert armed.remaining() == -10 and armed.overran()


def test_task_context_time_remaining_reads_the_armed_deadline(fake_wd: Watchdog, clock: FakeClock):
    """TaskContext.time_remaining() is the armed deadline's remaining(), floored at 0."""
    ctx = TaskContext.from_headers({"X-AppEngine-QueueName": "q", "X-AppEngine-TaskName": "t"})
    assert ctx.time_remaining() is None
    armed = fake_wd.arm(60, 10)
    ctx._attach_deadline(armed)  # as the middlewares do
    assert ctx.time_remaining() == 50
    clock.advance(20)
    assert ctx.time_remaining() == 30
    clock.advance(40)
    assert ctx.time_remaining() == 0
    armed.disarm()


# -- check_deadline -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("advance", "raises"),
    [
        pytest.param(0, False, id="at the start"),
        pytest.param(49.9, False, id="just before the soft deadline"),
        pytest.param(50, True, id="at the soft deadline"),
        pytest.param(70, True, id="after the deadline"),
    ],
)
def test_check_deadline(fake_wd: Watchdog, clock: FakeClock, advance: float, raises: bool):
    """check_deadline() raises once the current thread's soft deadline has passed."""
    armed = fake_wd.arm(60, 10)
    try:
        clock.advance(advance)
        if raises:
            with pytest.raises(DeadlineExceededError):
                check_deadline()
        else:
            check_deadline()
        assert armed.fired is raises
    finally:
        armed.disarm()
    check_deadline()  # disarmed: nothing to check any more


def test_check_deadline_outside_a_request_does_nothing():
    """Without an armed deadline check_deadline() is a no-op."""
    assert check_deadline() is None


def test_check_deadline_is_per_thread(fake_wd: Watchdog, clock: FakeClock):
    """One thread's passed deadline does not make check_deadline() raise in another."""
    armed = fake_wd.arm(1, 0.5)
    clock.advance(1)
    seen: list[str] = []

    def other() -> None:
        check_deadline()
        seen.append("no error")

    thread = threading.Thread(target=other)
    thread.start()
    thread.join(LIMIT)
    armed.disarm()
    assert seen == ["no error"]


def test_check_deadline_takes_the_soft_delivery(fake_wd: Watchdog, clock: FakeClock):
    """After check_deadline() raised, the watchdog does not deliver the soft error again."""

    def handler(w: Worker) -> None:
        while not w.stop.is_set():
            try:
                check_deadline()
                work()
            except DeadlineExceededError:
                w.notes.append("check")
                break
        w.busy()  # saving its work: only the hard deadline may interrupt this

    worker = armed_worker(fake_wd, 60, 10, handler)
    clock.advance(50)
    _wait_for(lambda: worker.notes == ["check"])
    assert fake_wd.fire_due() == 0
    assert worker.finish() == "returned"


# -- delivery into real threads -----------------------------------------------------------------


def _on_thread(where: str, body: Callable[[], Any]) -> Any:
    """Run ``body`` on the main thread or a new one; return its result or raise its error."""
    if where == "main":
        return body()
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = body()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(LIMIT)
    assert not thread.is_alive()
    if "error" in box:
        raise box["error"]
    return box.get("result")


WHERE = [pytest.param("main", id="main thread"), pytest.param("worker", id="worker thread")]


@pytest.mark.parametrize("where", WHERE)
@needs_interrupts
def test_cpu_bound_handler_is_interrupted_and_finally_runs(where: str):
    """A CPU-bound loop gets the error at the soft deadline; its finally block runs."""
    events: list[str] = []

    def request() -> Armed:
        armed = arm(0.3, 0.28)  # the error at 20 ms; a long grace so that it never overruns
        try:
            try:
                end = time.monotonic() + LIMIT
                while time.monotonic() < end:
                    work()
                events.append("loop ended")
            finally:
                events.append("finally")
        except DeadlineExceededError:
            events.append("error")
        finally:
            armed.disarm()
        return armed

    armed = _on_thread(where, request)
    assert events == ["finally", "error"]
    assert armed.fired and not armed.overran()


@pytest.mark.parametrize("where", WHERE)
@needs_interrupts
def test_except_exception_does_not_swallow_it(where: str):
    """`except Exception` in the handler does not catch DeadlineExceededError."""
    swallowed: list[BaseException] = []

    def request() -> None:
        armed = arm(0.05, 0.03)
        try:
            try:
                spin(LIMIT)
            except Exception as exc:
                swallowed.append(exc)
        finally:
            armed.disarm()

    with pytest.raises(DeadlineExceededError):
        _on_thread(where, request)
    assert swallowed == []


@pytest.mark.parametrize(
    ("returns_after", "overran"),
    [
        pytest.param("soft", False, id="swallows, saves, returns within the grace"),
        pytest.param("hard", True, id="swallows everything, runs past the deadline"),
    ],
)
@needs_interrupts
def test_bare_except_that_swallows_it(real_wd: Watchdog, returns_after: str, overran: bool):
    """A bare except swallowing the error is seen: fired, and overran() past the deadline."""
    caught: list[str] = []

    def request() -> Armed:
        armed = real_wd.arm(0.25, 0.22)  # the error at 30 ms, again at 250 ms
        try:
            while True:
                try:
                    spin(LIMIT)
                except:  # noqa: E722 - the behaviour under test
                    caught.append("swallowed")
                if returns_after == "soft" or armed.overran():
                    break
        finally:
            armed.disarm()
        return armed

    armed = _on_thread("worker", request)
    assert armed.fired
    assert armed.overran() is overran
    assert caught == (["swallowed"] if returns_after == "soft" else ["swallowed", "swallowed"])


@pytest.mark.parametrize(
    ("where", "interrupted"),
    [
        pytest.param("main", True, id="main thread: the signal timer interrupts sleep"),
        pytest.param("worker", False, id="worker thread: raised when sleep returns"),
    ],
)
@needs_interrupts
def test_time_sleep(where: str, interrupted: bool):
    """time.sleep is cut short on the main thread; elsewhere the error follows the sleep."""
    sleep = 1.0 if interrupted else 0.08  # main: would take 1 s if it were not interrupted

    def request() -> float:
        armed = arm(0.04, 0.02)
        started = time.monotonic()
        try:
            time.sleep(sleep)
        except DeadlineExceededError:
            return time.monotonic() - started
        finally:
            armed.disarm()
        return -1.0

    slept = _on_thread(where, request)
    assert slept > 0, "DeadlineExceededError was not raised"
    assert (slept < sleep) is interrupted


@needs_interrupts
def test_main_thread_deadline_uses_the_signal_timer():
    """On the main thread a SIGALRM timer is set (and cleared at disarm); the watchdog
    thread comes only as a fallback, so it cannot beat the signal to a sleeping thread."""
    import signal

    armed = arm(30, 10)
    try:
        remaining_on_timer = signal.getitimer(signal.ITIMER_REAL)[0]
        due = armed._due
    finally:
        armed.disarm()
    assert 19 < remaining_on_timer <= 20
    assert due == pytest.approx(armed.soft_at + SIGNAL_FALLBACK)
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_signal_timer_is_only_used_when_sigalrm_is_free():
    """With another SIGALRM handler installed the watchdog leaves the signal alone."""
    import signal

    previous = signal.signal(signal.SIGALRM, lambda *_: None)
    wd = Watchdog()
    try:
        armed = wd.arm(60, 10)
        assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
        armed.disarm()
    finally:
        wd.close()
        signal.signal(signal.SIGALRM, previous)


@needs_interrupts
def test_one_threads_deadline_never_hits_another(real_wd: Watchdog):
    """Concurrent requests: only the ones whose deadline passed get the error."""
    results: dict[str, list[str]] = {"short": [], "long": []}

    def request(kind: str) -> None:
        # Soft deadline 20 ms in, hard deadline far later: a thread slowed down by a busy
        # machine still reaches disarm() before the second delivery.
        armed = real_wd.arm(1.0, 0.98) if kind == "short" else real_wd.arm(30, 10)
        try:
            try:
                # The short ones run until their error comes (10 s is a hang guard for a
                # machine so busy the watchdog waits long for its turn); the long ones end
                # well before their own deadline.
                spin(10.0 if kind == "short" else 0.15)
                results[kind].append("completed")
            except DeadlineExceededError:
                results[kind].append("deadline")
        finally:
            armed.disarm()

    threads = [threading.Thread(target=request, args=(k,)) for k in ["short", "long"] * 3]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(LIMIT)
    assert results == {"short": ["deadline"] * 3, "long": ["completed"] * 3}


@needs_interrupts
def test_stress_requests_ending_around_the_soft_deadline(real_wd: Watchdog):
    """1,200 requests on 8 threads, ending within ±3 ms of the soft deadline: no stray errors.

    The error may land in the handler or in the adapter's code before disarm(); never after
    disarm() returns (the "server" code that follows, or the next request on the thread).
    """
    soft = 0.008
    counts = {"in handler": 0, "before disarm": 0, "completed": 0, "after disarm": 0}
    lock = threading.Lock()
    rng = random.Random(1)
    lengths = [soft + rng.uniform(-0.003, 0.003) for _ in range(1200)]

    def count(key: str) -> None:
        with lock:
            counts[key] += 1

    def request(length: float) -> None:
        outcome = "completed"
        armed = real_wd.arm(soft + 0.004, 0.004)
        try:
            try:
                try:
                    end = time.monotonic() + length
                    while time.monotonic() < end:
                        work(50)
                except DeadlineExceededError:
                    outcome = "in handler"
            finally:
                armed.disarm()
        except DeadlineExceededError:
            outcome = "before disarm"
        count(outcome)
        try:  # the server, then the next request on this thread
            end = time.monotonic() + 0.001
            while time.monotonic() < end:
                work(50)
        except DeadlineExceededError:
            count("after disarm")

    # Switching threads ten times more often than usual keeps the run short and makes the
    # watchdog and the handlers interleave in more ways.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)
    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            errors = [f.exception() for f in [pool.submit(request, n) for n in lengths]]
    finally:
        sys.setswitchinterval(interval)
    assert errors == [None] * len(lengths)
    assert counts["after disarm"] == 0
    assert sum(counts.values()) == len(lengths)
    assert counts["in handler"] > 0 and counts["completed"] > 0  # both sides were exercised
    assert real_wd.armed_count == 0
    assert real_wd.scheduled_count == 0
    watchdogs = [t for t in threading.enumerate() if t is real_wd.thread]
    assert len(watchdogs) == 1


@needs_interrupts
def test_one_watchdog_thread_for_the_process():
    """However many threads arm deadlines, the process has one watchdog thread."""

    def request() -> None:
        armed = arm(30, 10)
        work()
        armed.disarm()

    threads = [threading.Thread(target=request) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(LIMIT)
    names = [t.name for t in threading.enumerate() if t.name == "taskhandler-deadline-watchdog"]
    assert names == ["taskhandler-deadline-watchdog"]
    assert default_watchdog.thread is not None and default_watchdog.thread.daemon


@needs_interrupts
def test_closed_watchdog_refuses_to_arm():
    """close() stops the thread; arming afterwards is an error, not a silent no-op."""
    wd = Watchdog(signals=False)
    wd.arm(30, 10).disarm()
    thread = wd.thread
    wd.close()
    assert thread is not None and not thread.is_alive()
    with pytest.raises(RuntimeError, match="closed"):
        wd.arm(30, 10)


def test_watchdog_starts_on_first_arm_not_at_import():
    """Importing the machinery starts no thread and hooks no fork; the first arm() does both,
    once (the thread only where the interpreter can interrupt threads)."""
    script = textwrap.dedent(
        """
        import json, os, threading
        hooks = []
        register = os.register_at_fork
        def recording(**kwargs):
            hooks.extend(f.__module__ for f in kwargs.values())
            register(**kwargs)
        os.register_at_fork = recording

        import taskhandler, taskhandler.deadline
        from taskhandler._watchdog import arm, default_watchdog
        ours = lambda: [m for m in hooks if m == "taskhandler._watchdog"]
        seen = {"import": [threading.active_count(), default_watchdog.thread is None, ours()]}
        arm(30, 10).disarm()
        seen["first arm"] = [threading.active_count(), default_watchdog.thread is None, ours()]
        arm(30, 10).disarm()
        seen["second arm"] = [threading.active_count(), default_watchdog.thread is None, ours()]
        print(json.dumps(seen))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, timeout=30, check=True, cwd=ROOT
    )
    started = [2, False] if INTERRUPTS_SUPPORTED else [1, True]
    hooked = [["taskhandler._watchdog"]]
    assert json.loads(done.stdout) == {
        "import": [1, True, []],
        "first arm": started + hooked,
        "second arm": started + hooked,
    }


@needs_interrupts
def test_fork_child_gets_a_fresh_watchdog(tmp_path: Any):
    """After fork() the child arms and is interrupted by its own watchdog thread."""
    script = textwrap.dedent(
        """
        import os, sys, time
        from taskhandler._watchdog import arm, default_watchdog
        from taskhandler.exceptions import DeadlineExceededError

        arm(30, 10).disarm()                      # the parent's watchdog thread is running
        pid = os.fork()
        if pid == 0:
            assert default_watchdog.thread is None    # none inherited
            import threading
            def request():
                armed = arm(0.05, 0.02)
                try:
                    end = time.monotonic() + 5
                    while time.monotonic() < end:
                        sum(i * i for i in range(100))
                    os._exit(3)
                except DeadlineExceededError:
                    os._exit(0)
                finally:
                    armed.disarm()
            t = threading.Thread(target=request)
            t.start()
            t.join()
            os._exit(4)
        _, status = os.waitpid(pid, 0)
        sys.exit(os.waitstatus_to_exitcode(status))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, timeout=30, check=False, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr.decode()


# -- helpers --------------------------------------------------------------------------------------


def _wait_for(condition: Callable[[], bool]) -> None:
    end = time.monotonic() + LIMIT
    while not condition():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.001)


def _frame_name(thread: threading.Thread) -> str | None:
    frame = sys._current_frames().get(thread.ident or 0)
    return None if frame is None else frame.f_code.co_name


def test_without_interrupts_a_deadline_only_keeps_time(clock: FakeClock):
    """Watchdog(interrupt=False) (the default where the interpreter cannot interrupt safely)
    schedules nothing and starts no thread, but overran() and check_deadline() still work."""
    wd = Watchdog(clock=clock, interrupt=False)
    try:
        armed = wd.arm(60, 10)
        assert (wd.scheduled_count, wd.armed_count, wd.thread) == (0, 1, None)
        clock.advance(50)
        assert wd.fire_due() == 0
        with pytest.raises(DeadlineExceededError):
            check_deadline()
        clock.advance(10)
        armed.disarm()
        assert armed.fired and armed.overran()
        assert wd.armed_count == 0
    finally:
        wd.close()


def test_arming_wakes_the_watchdog_only_for_an_earlier_deadline(clock: FakeClock):
    """Under steady traffic arming never wakes the watchdog thread: only an arming due
    before the time the watchdog will look by itself does."""
    wd = Watchdog(clock=clock, thread=False, signals=False)
    wakes = []
    notify = wd._wake.notify
    wd._wake.notify = lambda n=1: (wakes.append(clock()), notify(n))  # type: ignore[method-assign]
    try:
        first = wd.arm(60, 10)  # nothing scheduled before: wake it to look at this one
        clock.advance(1)
        later = [wd.arm(60, 10) for _ in range(5)]  # due after the first: no wake
        earlier = wd.arm(5, 1)  # due before the first: wake
        assert wakes == [1000.0, 1001.0]
        for armed in (first, *later, earlier):
            armed.disarm()
    finally:
        wd.close()


@needs_interrupts
def test_a_short_deadline_armed_behind_a_long_one_still_fires_on_time(real_wd: Watchdog):
    """The watchdog sleeping until a 600 s deadline is woken for a 0.2 s one armed later."""
    long = real_wd.arm(600, 10)
    try:
        _wait_for(lambda: real_wd.thread is not None and _frame_name(real_wd.thread) == "wait")
        started = time.monotonic()
        with pytest.raises(DeadlineExceededError):
            _spin_armed(real_wd, 0.2, 0.1)
        assert time.monotonic() - started < 1.0
    finally:
        long.disarm()


def _spin_armed(wd: Watchdog, deadline: float, grace: float) -> None:
    """Arm a deadline and keep the thread busy with Python work until something is raised."""
    armed = wd.arm(deadline, grace)
    try:
        end = time.monotonic() + LIMIT
        while time.monotonic() < end:
            work(50)
    finally:
        armed.disarm()
