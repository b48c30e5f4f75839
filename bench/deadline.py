"""What a task deadline costs per request, and how close to the soft deadline the error lands.

Run: ``python bench/deadline.py [--quick]``

Measured in the same run:
  cost      arm() + disarm() per request, against starting (and cancelling) a
            ``threading.Timer`` per request -- the obvious way to get a callback at a
            deadline. One thread, 8 threads at once, and the main thread. CPU time of
            the whole process (every thread), interleaved rounds (``bench/_rounds.py``);
            the per-round ratio's median is held to the target: <= 0.05.
  delay     time from the soft deadline to ``DeadlineExceededError`` landing in a CPU-bound
            handler (median over many requests). Target: median <= 10 ms for a handler
            thread in an otherwise idle process; also shown on the main thread (signal
            timer) and with 3 other CPU-bound threads competing for the interpreter lock.
  bounded   deadlines the watchdog holds, and watchdog threads, after 100,000 requests on 8
            threads. Target: never more than the deadlines in flight, one watchdog thread.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable

from _rounds import interleaved, median, per_round, spread, verdict

from taskhandler._watchdog import Watchdog, default_watchdog
from taskhandler.exceptions import DeadlineExceededError

COST_TARGET = 0.05
DELAY_TARGET = 0.010


def _noop() -> None:
    pass


def _per_request(threads: int, requests: int, one: Callable[[], None]) -> float:
    """CPU seconds of the whole process per request, ``threads`` threads doing a share each.

    Process CPU time counts every thread of the process (the watchdog thread, the Timer
    threads) and not the time the machine gives to other processes.
    """
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
    started = time.process_time()
    for worker in workers:
        worker.join()
    return (time.process_time() - started) / (share * threads)


def cost(
    requests: int, timer_requests: int, rounds: int
) -> list[tuple[str, list[float], list[float]]]:
    """Per-request cost of arm+disarm and of a Timer, round by round, interleaved."""
    wd = Watchdog(signals=False)

    def armed() -> None:
        wd.arm(600, 10).disarm()

    def timer() -> None:
        t = threading.Timer(590, _noop)
        t.start()
        t.cancel()

    def main_thread(one: Callable[[], None], number: int) -> float:
        # On the main thread arming also sets and clears a SIGALRM timer (two system calls).
        started = time.process_time()
        for _ in range(number):
            one()
        return (time.process_time() - started) / number

    def settled(measure: Callable[[], float]) -> Callable[[], float]:
        def run() -> float:
            value = measure()
            _settle()
            return value

        return run

    runs: dict[str, Callable[[], float]] = {}
    for threads in (1, 8):
        runs[f"{threads}/ours"] = lambda n=threads: _per_request(n, requests, armed)
        runs[f"{threads}/timer"] = settled(lambda n=threads: _per_request(n, timer_requests, timer))
    runs["main/ours"] = lambda: main_thread(
        lambda: default_watchdog.arm(600, 10).disarm(), requests
    )
    runs["main/timer"] = settled(lambda: main_thread(timer, timer_requests))
    results = interleaved(runs, rounds)
    wd.close()
    _settle()
    return [
        (label, results[f"{key}/ours"], results[f"{key}/timer"])
        for key, label in (
            ("1", "1 thread"),
            ("8", "8 threads"),
            ("main", "main thread (+ signal timer)"),
        )
    ]


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
    requests, timer_requests, rounds, samples, total = (
        (10_000, 500, 3, 15, 20_000) if args.quick else (40_000, 1_500, 7, 60, 100_000)
    )
    print(f"Python {sys.version.split()[0]}, switch interval {sys.getswitchinterval() * 1e3:g} ms")
    ok = True

    print(
        f"\ncost per request, CPU µs ({rounds} interleaved rounds)"
        f"    arm+disarm   Timer start+cancel   ratio median (spread)   target <= {COST_TARGET}"
    )
    for label, ours, theirs in cost(requests, timer_requests, rounds):
        ratios = per_round(lambda a, b: a / b, ours, theirs)
        met = median(ratios) <= COST_TARGET
        ok &= met
        print(
            f"  {label:<46}{median(ours) * 1e6:8.2f}   {median(theirs) * 1e6:18.2f}   "
            f"{spread(ratios, 4):<24}{verdict(met, median(ratios), COST_TARGET)}"
        )

    print("\ndelay after the soft deadline   median      p90       max   (target: median <= 10 ms)")
    for index, (label, values) in enumerate(delay(samples)):
        values.sort()
        middle = median(values)
        p90 = values[int(len(values) * 0.9) - 1]
        if index == 0:
            ok &= middle <= DELAY_TARGET
        print(f"  {label:<30}{middle * 1e3:6.2f} ms {p90 * 1e3:6.2f} ms {values[-1] * 1e3:7.2f} ms")

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
