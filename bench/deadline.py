"""What a task deadline costs per request, and how close to the soft deadline the error lands.

Run: ``python bench/deadline.py [--quick]``

Measured in the same run:
  cost      arm() + disarm() per request, against starting (and cancelling) a
            ``threading.Timer`` per request -- the obvious way to get a callback at a
            deadline. One thread, and 8 threads at once. Target: ratio <= 0.05.
  delay     time from the soft deadline to ``DeadlineExceededError`` landing in a CPU-bound
            handler (median over many requests). Target: median <= 10 ms for a handler
            thread in an otherwise idle process; also shown on the main thread (signal
            timer) and with 3 other CPU-bound threads competing for the interpreter lock.
  bounded   deadlines the watchdog holds, and watchdog threads, after 100,000 requests on 8
            threads. Target: never more than the deadlines in flight, one watchdog thread.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections.abc import Callable

from taskhandler._watchdog import Watchdog, default_watchdog
from taskhandler.exceptions import DeadlineExceededError

COST_TARGET = 0.05
DELAY_TARGET = 0.010


def _noop() -> None:
    pass


def _per_request(threads: int, requests: int, one: Callable[[], None]) -> float:
    """Seconds of wall time per request with ``threads`` threads each doing its share."""
    share = requests // threads
    barrier = threading.Barrier(threads + 1)

    def run() -> None:
        barrier.wait()
        for _ in range(share):
            one()

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for worker in workers:
        worker.start()
    barrier.wait()
    started = time.perf_counter()
    for worker in workers:
        worker.join()
    return (time.perf_counter() - started) / (share * threads)


def cost(requests: int, timer_requests: int) -> list[tuple[str, float, float]]:
    wd = Watchdog(signals=False)

    def armed() -> None:
        wd.arm(600, 10).disarm()

    def timer() -> None:
        t = threading.Timer(590, _noop)
        t.start()
        t.cancel()

    rows = []
    for threads in (1, 8):
        ours = min(_per_request(threads, requests, armed) for _ in range(3))
        theirs = min(_per_request(threads, timer_requests, timer) for _ in range(3))
        rows.append((f"{threads} thread{'s' if threads > 1 else ''}", ours, theirs))
    _settle()
    # The main thread also sets and clears a SIGALRM timer (two system calls).
    started = time.perf_counter()
    for _ in range(requests):
        default_watchdog.arm(600, 10).disarm()
    ours_main = (time.perf_counter() - started) / requests
    started = time.perf_counter()
    for _ in range(timer_requests):
        timer()
    theirs_main = (time.perf_counter() - started) / timer_requests
    rows.append(("main thread (+ signal timer)", ours_main, theirs_main))
    wd.close()
    _settle()
    return rows


def _settle() -> None:
    """Wait for the cancelled Timer threads to exit, so they do not load what follows."""
    end = time.monotonic() + 10
    while threading.active_count() > 3 and time.monotonic() < end:
        time.sleep(0.01)


def _work() -> int:
    total = 0
    for i in range(200):
        total += i * i
    return total


def _delay_once(wd: Watchdog, soft: float) -> float:
    armed = wd.arm(soft + 0.05, 0.05)
    try:
        end = time.monotonic() + 5
        while time.monotonic() < end:
            _work()
    except DeadlineExceededError:
        return time.monotonic() - armed.soft_at
    finally:
        armed.disarm()
    raise RuntimeError("the deadline never came")


def delay(samples: int) -> list[tuple[str, list[float]]]:
    wd = Watchdog(signals=False)
    rows: list[tuple[str, list[float]]] = []

    def in_thread(out: list[float]) -> None:
        for _ in range(samples):
            out.append(_delay_once(wd, 0.02))

    alone: list[float] = []
    worker = threading.Thread(target=in_thread, args=(alone,))
    worker.start()
    worker.join()
    rows.append(("handler thread, idle process", alone))

    main = [_delay_once(default_watchdog, 0.02) for _ in range(samples)]
    rows.append(("main thread (signal timer)", main))

    stop = threading.Event()

    def busy() -> None:
        while not stop.is_set():
            _work()

    others = [threading.Thread(target=busy) for _ in range(3)]
    for other in others:
        other.start()
    loaded: list[float] = []
    worker = threading.Thread(target=in_thread, args=(loaded,))
    worker.start()
    worker.join()
    stop.set()
    for other in others:
        other.join()
    rows.append(("handler thread + 3 busy threads", loaded))
    wd.close()
    return rows


def bounded(requests: int) -> tuple[int, int, int, int, int]:
    wd = Watchdog(signals=False)
    before = threading.active_count()
    largest = 0
    counter = [0]

    def run(share: int, seed: int) -> None:
        nonlocal largest
        held = []
        for i in range(share):
            held.append(wd.arm(30 + (i * seed) % 600, 10))
            if len(held) > 4:  # a few requests in flight per thread, ending out of order
                held.pop((i * 7 + seed) % len(held)).disarm()
            if i % 1000 == 0:
                largest = max(largest, wd.scheduled_count)
        for armed in held:
            armed.disarm()
        counter[0] += share

    workers = [threading.Thread(target=run, args=(requests // 8, s + 1)) for s in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    watchdogs = sum(1 for t in threading.enumerate() if t is wd.thread)
    extra = threading.active_count() - before
    result = (counter[0], wd.scheduled_count, largest, watchdogs, extra)
    wd.close()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests (a smoke run)")
    args = parser.parse_args()
    requests, timer_requests, samples, total = (
        (20_000, 1_000, 15, 20_000) if args.quick else (200_000, 5_000, 60, 100_000)
    )
    print(f"Python {sys.version.split()[0]}, switch interval {sys.getswitchinterval() * 1e3:g} ms")
    ok = True

    print("\ncost per request        arm+disarm    Timer start+cancel    ratio   (target <= 0.05)")
    for label, ours, theirs in cost(requests, timer_requests):
        ratio = ours / theirs
        ok &= ratio <= COST_TARGET
        print(f"  {label:<28}{ours * 1e6:8.2f} us   {theirs * 1e6:10.2f} us      {ratio:8.4f}")

    print("\ndelay after the soft deadline   median      p90       max   (target: median <= 10 ms)")
    for index, (label, values) in enumerate(delay(samples)):
        values.sort()
        median = statistics.median(values)
        p90 = values[int(len(values) * 0.9) - 1]
        if index == 0:
            ok &= median <= DELAY_TARGET
        print(f"  {label:<30}{median * 1e3:6.2f} ms {p90 * 1e3:6.2f} ms {values[-1] * 1e3:7.2f} ms")

    done, held, largest, watchdogs, extra = bounded(total)
    print(f"\nafter {done:,} requests on 8 threads (at most {8 * 5} in flight)")
    print(f"  deadlines held now / most seen      {held} / {largest}")
    print(f"  watchdog threads                    {watchdogs}")
    print(f"  threads left behind (watchdog incl.) {extra}")
    ok &= held == 0 and largest <= 8 * 5 and watchdogs == 1 and extra == 1
    print("\nall targets met" if ok else "\nSOME TARGETS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
