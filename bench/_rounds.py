"""Interleaved A/B rounds and their ratios, shared by the scripts in ``bench/``.

A busy moment on a shared machine slows whatever runs at that moment. Measured in blocks
(all of A, then all of B) it lands on one side and moves the ratio; measured in rounds
(A, B, A, B, ...) it lands on both sides of the same round. So every script here times
each of its contenders once per round, in an order that rotates from round to round,
computes the ratio *within* each round, and prints the median of those ratios with their
spread (lowest-highest): a wide spread says the machine was busy, not that the code changed.

The in-process scripts time with the measuring thread's CPU time (``clock``), which a
busy neighbour process does not inflate; ``bench/http_servers.py`` counts requests per second.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence


def interleaved(runs: Mapping[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Call each of ``runs`` once per round; return every run's results, round by round.

    The order rotates each round (and reverses every other round), so no contender
    always goes first or always follows the same neighbour.
    """
    names = list(runs)
    results: dict[str, list[float]] = {name: [] for name in names}
    for index in range(rounds):
        shift = index % len(names)
        order = names[shift:] + names[:shift]
        if index % 2:
            order.reverse()
        for name in order:
            results[name].append(runs[name]())
    return results


def per_round(function: Callable[..., float], *columns: Sequence[float]) -> list[float]:
    """``function`` applied to each round's values: ``per_round(f, a, b)[i] == f(a[i], b[i])``."""
    return [function(*values) for values in zip(*columns, strict=True)]


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def spread(values: Sequence[float], digits: int = 2) -> str:
    """``median (lowest-highest)``, e.g. ``0.41 (0.38-0.47)``."""
    return f"{median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


# The clock of the in-process scripts: CPU time of the measuring thread, so that time the
# machine gives to other processes (or other threads) is not counted against either side.
clock = time.thread_time


def seconds_per_call(call: Callable[[], object], number: int) -> float:
    """Seconds of this thread's CPU time per call, over ``number`` calls in a row.

    Garbage the previous run left is collected first, so that it is not charged to this one.
    """
    gc.collect()
    started = clock()
    for _ in range(number):
        call()
    return (clock() - started) / number


def verdict(ok: bool, value: float, target: float, *, at_most: bool = True) -> str:
    """``met`` or ``MISSED by N%`` for a median against its target."""
    if ok:
        return "met"
    excess = value / target - 1 if at_most else 1 - value / target
    return f"MISSED by {excess:.0%}"
