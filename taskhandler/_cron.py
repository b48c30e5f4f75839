"""cron.yaml schedules: App Engine's English-like syntax as cron expressions, and a local runner.

:func:`to_cron` translates a cron.yaml ``schedule`` (``every 5 minutes``, ``every monday 09:00``,
``2nd,4th tue of jan 08:00``...) into the five-field unix-cron expression Cloud Scheduler and
``croniter`` read, or raises :class:`CronSyntaxError` saying why it cannot: cron has one
expression per job, so a schedule whose times need more than a few of them (e.g.
``every 7 minutes``, whose minutes move from hour to hour) or that picks the n-th weekday of a
month (unix-cron ORs a day of the month with a day of the week) is refused, not approximated. An
interval whose minutes differ between hours becomes a few expressions (Cloud Scheduler: one
job each).

Interval schedules are read as App Engine reads ``synchronized`` ones: the first run at the
``from`` time (default 00:00), then every interval until the ``to`` time (default 23:59). App
Engine starts an unsynchronized ``every 5 minutes`` 5 minutes after the previous run ended
instead; cron (and Cloud Scheduler) can only run on the clock, so both translate alike.

``taskhandler._cron_runner`` runs a cron.yaml's jobs in the development server with these
expressions (this module imports nothing of taskhandler's: ``config`` uses it).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["MAX_EXPRESSIONS", "CronSyntaxError", "CronUnsupportedError", "to_cron"]


class CronSyntaxError(ValueError):
    """A schedule App Engine's grammar does not allow, or that cron cannot express."""


class CronUnsupportedError(CronSyntaxError):
    """A schedule App Engine accepts but cron cannot express (the message says why)."""


_WEEKDAYS = {
    "sunday": 0, "sun": 0, "monday": 1, "mon": 1, "tuesday": 2, "tue": 2, "tues": 2,
    "wednesday": 3, "wed": 3, "thursday": 4, "thu": 4, "thur": 4, "thurs": 4,
    "friday": 5, "fri": 5, "saturday": 6, "sat": 6,
}  # fmt: skip
_MONTHS = {
    name: number
    for number, names in enumerate(
        (
            ("january", "jan"), ("february", "feb"), ("march", "mar"), ("april", "apr"),
            ("may",), ("june", "jun"), ("july", "jul"), ("august", "aug"),
            ("september", "sep", "sept"), ("october", "oct"), ("november", "nov"),
            ("december", "dec"),
        ),
        1,
    )
    for name in names
}  # fmt: skip
_ORDINALS = {
    "1st": 1, "first": 1, "2nd": 2, "second": 2, "3rd": 3, "third": 3,
    "4th": 4, "fourth": 4, "5th": 5, "fifth": 5,
}  # fmt: skip
_TIME = r"(?P<{}>[0-2]?[0-9]:[0-5][0-9])"
_INTERVAL_RE = re.compile(
    r"every\s+(?P<n>[0-9]{1,4})\s+(?P<unit>minutes?|mins?|hours?|hrs?)"
    rf"(?:\s+from\s+{_TIME.format('start')}\s+to\s+{_TIME.format('end')})?"
    r"(?:\s+(?P<sync>synchronized))?"
)
_SPECIFIC_RE = re.compile(
    r"(?P<ordinals>every|[a-z0-9,]+)\s+(?P<days>day|[a-z,]+)"
    r"(?:\s+of\s+(?P<months>month|[a-z,]+))?\s+" + _TIME.format("time")
)
_MONTH_DAYS_RE = re.compile(
    r"(?P<dates>[0-9]{1,2}(?:,[0-9]{1,2})*)\s+of\s+(?P<months>month|[a-z,]+)\s+"
    + _TIME.format("time")
)


def _clock(text: str, schedule: str) -> tuple[int, int]:
    hour, minute = (int(part) for part in text.split(":"))
    if hour > 23:
        raise CronSyntaxError(f"schedule {schedule!r}: {text} is not a time of day (00:00-23:59)")
    return hour, minute


def _field(values: Sequence[int], full: range) -> str:
    """A cron field for ``values`` (sorted): ``*``, ``*/N``, ``A-B`` or a list."""
    values = sorted(set(values))
    if values == list(full):
        return "*"
    if len(values) > 1:
        step = values[1] - values[0]
        if values == list(range(full.start, full.stop, step)):
            return f"*/{step}"
        if step == 1 and values == list(range(values[0], values[-1] + 1)):
            return f"{values[0]}-{values[-1]}"
    return ",".join(map(str, values))


def _names(text: str, table: dict[str, int], what: str, schedule: str) -> list[int]:
    found = []
    for word in text.split(","):
        if word not in table:
            raise CronSyntaxError(f"schedule {schedule!r}: {word!r} is not a {what}")
        found.append(table[word])
    return found


def _months(text: str | None, schedule: str) -> str:
    if text is None or text == "month":
        return "*"
    return _field(_names(text, _MONTHS, "month", schedule), range(1, 13))


def _interval(match: re.Match[str], schedule: str) -> tuple[str, ...]:
    n = int(match["n"])
    step = n * (60 if match["unit"].startswith("h") else 1)
    if not 1 <= step <= 24 * 60:
        raise CronSyntaxError(f"schedule {schedule!r}: the interval must be 1 minute to 24 hours")
    if not match["start"] and (24 * 60) % step:
        raise CronUnsupportedError(
            f"schedule {schedule!r}: the interval does not divide the day, so its times move "
            "from day to day, which cron cannot follow; choose an interval that divides 24 "
            "hours, or give a range (from HH:MM to HH:MM) that starts it again each day"
        )
    start = _clock(match["start"], schedule) if match["start"] else (0, 0)
    end = _clock(match["end"], schedule) if match["end"] else (23, 59)
    first, last = start[0] * 60 + start[1], end[0] * 60 + end[1]
    if last < first:
        last += 24 * 60  # a range across midnight: 22:00 to 02:00
    times = {(t // 60 % 24, t % 60) for t in range(first, last + 1, step)}
    by_hour: dict[int, set[int]] = {}
    for hour, minute in times:
        by_hour.setdefault(hour, set()).add(minute)
    groups: dict[frozenset[int], list[int]] = {}
    for hour, minutes in sorted(by_hour.items()):
        groups.setdefault(frozenset(minutes), []).append(hour)
    if len(groups) > MAX_EXPRESSIONS:
        raise CronUnsupportedError(
            f"schedule {schedule!r}: its minutes differ from hour to hour, which would take "
            f"{len(groups)} cron expressions (at most {MAX_EXPRESSIONS}); choose an interval "
            "that divides the hour or the day"
        )
    ordered = sorted(groups.items(), key=lambda item: item[1][0])
    return tuple(
        f"{_field(sorted(minutes), range(60))} {_field(hours, range(24))} * * *"
        for minutes, hours in ordered
    )


def _specific(match: re.Match[str], schedule: str) -> tuple[str, ...]:
    hour, minute = _clock(match["time"], schedule)
    months = _months(match["months"], schedule)
    if match["ordinals"] != "every":
        ordinals = _names(match["ordinals"], _ORDINALS, "ordinal (1st-5th or every)", schedule)
        if sorted(set(ordinals)) != [1, 2, 3, 4, 5]:
            raise CronUnsupportedError(
                f"schedule {schedule!r}: cron cannot pick the n-th weekday of a month "
                "(unix-cron ORs a day of the month with a day of the week); use `every "
                "<weekday>` and let the handler skip the other weeks"
            )
    days = "*" if match["days"] == "day" else None
    if days is None:
        days = _field(_names(match["days"], _WEEKDAYS, "weekday", schedule), range(7))
    return (f"{minute} {hour} * {months} {days}",)


def _month_days(match: re.Match[str], schedule: str) -> tuple[str, ...]:
    hour, minute = _clock(match["time"], schedule)
    dates = [int(d) for d in match["dates"].split(",")]
    if not all(1 <= d <= 31 for d in dates):
        raise CronSyntaxError(f"schedule {schedule!r}: a day of the month is 1 to 31")
    days = _field(dates, range(1, 32))
    return (f"{minute} {hour} {days} {_months(match['months'], schedule)} *",)


#: The most cron expressions one schedule may become.
MAX_EXPRESSIONS = 4


def to_cron(schedule: str) -> tuple[str, ...]:
    """The unix-cron expressions (minute hour day month weekday) of an App Engine schedule.

    Usually one; an interval whose minutes differ between the hours it covers gives one
    expression per set of hours with the same minutes (``every 5 minutes from 10:00 to
    14:00`` is ``*/5 10-13 * * *`` and ``0 14 * * *``), at most :data:`MAX_EXPRESSIONS`.

    Raises:
        CronSyntaxError: not App Engine's syntax, or times cron cannot express (the message
            says which and why).

    Example:
        >>> to_cron("every 2 hours from 10:00 to 14:00")
        ('0 10,12,14 * * *',)
        >>> to_cron("every monday 09:00")
        ('0 9 * * 1',)
    """
    text = " ".join(schedule.lower().split())
    for pattern, translate in (
        (_INTERVAL_RE, _interval),
        (_MONTH_DAYS_RE, _month_days),
        (_SPECIFIC_RE, _specific),
    ):
        match = pattern.fullmatch(text)
        if match is not None:
            return translate(match, schedule)
    raise CronSyntaxError(
        f"schedule {schedule!r} is not App Engine's cron syntax (e.g. 'every 5 minutes', "
        "'every 2 hours from 10:00 to 14:00', 'every monday 09:00', '1,15 of month 08:00', "
        "'every day 00:00')"
    )
