"""Task header names and their strict parsing (SPEC §2).

Pure: standard library only. A wrong retry count or ETA silently changes what a handler
does, so every value is checked against one narrow grammar and refused otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

from .exceptions import InvalidTaskHeaders

__all__ = [
    "APPENGINE",
    "CLOUDTASKS",
    "ENVIRON_PREFIXES",
    "FIELD_SUFFIXES",
    "TASK_HEADER_PREFIXES",
    "format_eta",
    "is_task_header",
    "normalize_name",
    "parse_task_fields",
]

APPENGINE = "X-AppEngine-"
CLOUDTASKS = "X-CloudTasks-"
# Compared after lower() and "_" -> "-": the spelling a server may or may not fold.
TASK_HEADER_PREFIXES = ("x-appengine-", "x-cloudtasks-")
# PEP 3333 environ keys: HTTP_ + upper-case name with "-" turned into "_".
ENVIRON_PREFIXES = ("HTTP_X_APPENGINE_", "HTTP_X_CLOUDTASKS_")

# TaskContext field -> header suffix. Cloud Tasks HTTP targets have no FailFast.
FIELD_SUFFIXES: dict[str, str] = {
    "queue_name": "QueueName",
    "task_name": "TaskName",
    "retry_count": "TaskRetryCount",
    "execution_count": "TaskExecutionCount",
    "eta": "TaskETA",
    "previous_response": "TaskPreviousResponse",
    "retry_reason": "TaskRetryReason",
    "fail_fast": "FailFast",
}
_LOWER = {field: suffix.lower() for field, suffix in FIELD_SUFFIXES.items()}

_NAME = r"[A-Za-z0-9_-]{1,500}"
_QUEUE_RE = re.compile(rf"(?:projects/[^/]+/locations/[^/]+/queues/)?({_NAME})")
_TASK_RE = re.compile(rf"(?:projects/[^/]+/locations/[^/]+/queues/[^/]+/tasks/)?({_NAME})")
_MAX_COUNT_DIGITS = 10
_MAX_TEXT = 2000


def normalize_name(name: str) -> str:
    """Lower-case a header name and spell ``_`` as ``-``: how two servers may disagree."""
    return name.lower().replace("_", "-")


def is_task_header(name: str) -> bool:
    """True for any spelling of an ``X-AppEngine-*`` or ``X-CloudTasks-*`` header name."""
    return normalize_name(name).startswith(TASK_HEADER_PREFIXES)


def _check_text(name: str, value: str) -> None:
    header = _canonical(name)
    if "," in value:
        raise InvalidTaskHeaders(header, value, "several values (duplicate header lines)")
    if not (value.isascii() and value.isprintable()):
        raise InvalidTaskHeaders(header, value, "control or non-ASCII character")
    if len(value) > _MAX_TEXT:
        raise InvalidTaskHeaders(header, value[:40] + "...", "value too long")


def _canonical(name: str) -> str:
    """``x-appengine-taskretrycount`` -> ``X-AppEngine-TaskRetryCount`` for messages."""
    for prefix, family in (
        (TASK_HEADER_PREFIXES[0], APPENGINE),
        (TASK_HEADER_PREFIXES[1], CLOUDTASKS),
    ):
        if name.startswith(prefix):
            rest = name[len(prefix) :]
            for suffix in FIELD_SUFFIXES.values():
                if suffix.lower() == rest:
                    return family + suffix
            return family + rest
    return name


def _count(header: str, value: str) -> int:
    # Values are ASCII-checked already: isdigit() alone also accepts full-width digits.
    if not (value.isdigit() and 0 < len(value) <= _MAX_COUNT_DIGITS):
        raise InvalidTaskHeaders(header, value, f"expected 1-{_MAX_COUNT_DIGITS} ASCII digits")
    return int(value)


def _name(header: str, value: str, pattern: re.Pattern[str]) -> str:
    match = pattern.fullmatch(value)
    if match is None:
        raise InvalidTaskHeaders(header, value, "expected 1-500 of A-Z a-z 0-9 _ -")
    return match.group(1)


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MAX_EPOCH_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z, the last datetime


def _eta(header: str, value: str) -> datetime | None:
    if value == "":
        return None
    whole, dot, fraction = value.partition(".")
    # Values are ASCII-checked already, so isdigit() means 0-9 only.
    if not (
        whole.isdigit()
        and len(whole) <= 12
        and (not dot or (fraction.isdigit() and len(fraction) <= 20))
    ):
        raise InvalidTaskHeaders(header, value, "expected seconds since the epoch, digits[.digits]")
    seconds = int(whole)
    if seconds > _MAX_EPOCH_SECONDS:
        raise InvalidTaskHeaders(header, value, "out of range")
    micros = int(fraction[:6].ljust(6, "0")) if dot else 0
    return _EPOCH + timedelta(seconds=seconds, microseconds=micros)


def format_eta(eta: datetime) -> str:
    """Seconds since the epoch with microseconds, as App Engine writes ``TaskETA``."""
    delta = eta - _EPOCH
    whole = delta.days * 86_400 + delta.seconds
    return f"{whole}.{delta.microseconds:06d}"


# header name -> (field, canonical spelling), for the lower-case dash spelling and for the
# WSGI environ key spelling (HTTP_X_APPENGINE_QUEUENAME), so WSGI needs no renaming pass.
_FIELD_OF: dict[str, tuple[str, str]] = {}
for _field, _suffix in FIELD_SUFFIXES.items():
    for _prefix, _family in (("x-appengine-", APPENGINE), ("x-cloudtasks-", CLOUDTASKS)):
        if _field == "fail_fast" and _family == CLOUDTASKS:
            continue
        _lower = _prefix + _suffix.lower()
        _FIELD_OF[_lower] = _FIELD_OF["HTTP_" + _lower.upper().replace("-", "_")] = (
            _field,
            _family + _suffix,
        )
TASK_FIELD_NAMES = frozenset(_FIELD_OF)


def collect(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Group header ``(name, value)`` pairs by normalised name; repeats are joined with ``,``.

    Joining is what an HTTP server does with two lines of one header, and a joined value is
    refused by the parser: a task header must arrive exactly once.
    """
    values: dict[str, str] = {}
    for name, value in pairs:
        key = normalize_name(name)
        values[key] = value if key not in values else f"{values[key]},{value}"
    return values


def has_task_fields(values: Mapping[str, str]) -> bool:
    """True when any header that describes a task (QueueName, TaskName, ...) is present."""
    return not TASK_FIELD_NAMES.isdisjoint(values)


def parse_task_fields(values: Mapping[str, str]) -> dict[str, Any]:
    """Parse normalised task headers into ``TaskContext`` field values.

    Args:
        values: header name -> value, names either lower-case dash-spelled (see
            :func:`collect`) or WSGI environ keys (``HTTP_X_APPENGINE_QUEUENAME``).

    Raises:
        InvalidTaskHeaders: naming the header and the bad value.
    """
    raw: dict[str, tuple[str, str]] = {}
    joined = []
    for name, value in values.items():
        known = _FIELD_OF.get(name)
        if known is None:  # another X-AppEngine-* header (Country, CityLatLong, ...)
            continue
        field, canonical = known
        seen = raw.get(field)
        if seen is not None and seen[1] != value:
            raise InvalidTaskHeaders(seen[0], f"{seen[1]} / {value}", f"conflicts with {canonical}")
        raw[field] = (canonical, value)
        joined.append(value)
    text = "".join(joined)
    # One C-level pass over every value; the slow path only runs to name the culprit.
    if "," in text or not (text.isascii() and text.isprintable()):
        for canonical, value in raw.values():
            _check_text(canonical, value)

    found = raw.get("queue_name")
    if found is None:
        raise InvalidTaskHeaders(APPENGINE + "QueueName", None, "required header is missing")
    queue_name = _name(found[0], found[1], _QUEUE_RE)
    found = raw.get("task_name")
    if found is None:
        raise InvalidTaskHeaders(APPENGINE + "TaskName", None, "required header is missing")
    task_name = _name(found[0], found[1], _TASK_RE)
    found = raw.get("retry_count")
    retry_count = 0 if found is None else _count(*found)
    found = raw.get("execution_count")
    execution_count = 0 if found is None else _count(*found)
    found = raw.get("eta")
    eta = None if found is None else _eta(*found)
    found = raw.get("previous_response")
    previous_response = None if found is None else _count(*found)
    found = raw.get("retry_reason")
    if found is not None and len(found[1]) > _MAX_TEXT:
        raise InvalidTaskHeaders(found[0], found[1][:40] + "...", "value too long")
    found_ff = raw.get("fail_fast")
    return {
        "queue_name": queue_name,
        "task_name": task_name,
        "retry_count": retry_count,
        "execution_count": execution_count,
        "eta": eta,
        "previous_response": previous_response,
        "retry_reason": None if found is None else found[1],
        "fail_fast": found_ff is not None and found_ff[1] != "",
    }
