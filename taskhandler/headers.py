"""Task header names and their strict parsing (SPEC §2).

Pure: standard library only. A wrong retry count or ETA silently changes what a handler
does, so every value is checked against one narrow grammar and refused otherwise.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

from .exceptions import InvalidTaskHeaders

__all__ = [
    "APPENGINE",
    "CLOUDTASKS",
    "FIELD_SUFFIXES",
    "TASK_HEADER_PREFIXES",
    "collect",
    "describes_a_task",
    "format_eta",
    "normalize_name",
    "parse_task_fields",
]

APPENGINE = "X-AppEngine-"
CLOUDTASKS = "X-CloudTasks-"
# Compared after lower() and "_" -> "-": the spelling a server may or may not fold.
TASK_HEADER_PREFIXES = ("x-appengine-", "x-cloudtasks-")

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

_NAME = r"[A-Za-z0-9_-]{1,500}"
_QUEUE_RE = re.compile(rf"(?:projects/[^/]+/locations/[^/]+/queues/)?({_NAME})")
_TASK_RE = re.compile(rf"(?:projects/[^/]+/locations/[^/]+/queues/[^/]+/tasks/)?({_NAME})")
_MAX_COUNT_DIGITS = 10
_MAX_TEXT = 2000


def normalize_name(name: str) -> str:
    """Lower-case a header name and spell ``_`` as ``-``: how two servers may disagree."""
    return name.lower().replace("_", "-")


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


NameOf = Callable[[str], str]
"""``TaskContext`` field -> the header it came from, spelled for an error message."""


def _count(value: str, name_of: NameOf, field: str) -> int:
    # Values are ASCII-checked already: isdigit() alone also accepts full-width digits.
    if value.isdigit() and len(value) <= _MAX_COUNT_DIGITS:
        return int(value)
    raise InvalidTaskHeaders(name_of(field), value, f"expected 1-{_MAX_COUNT_DIGITS} ASCII digits")


def _name(value: str, name_of: NameOf, field: str, pattern: re.Pattern[str]) -> str:
    match = pattern.fullmatch(value)
    if match is None:
        raise InvalidTaskHeaders(name_of(field), value, "expected 1-500 of A-Z a-z 0-9 _ -")
    return match.group(1)


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

_MAX_EPOCH_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z, the last datetime


def _eta(value: str, name_of: NameOf) -> datetime | None:
    if value == "":
        return None
    whole, dot, fraction = value.partition(".")
    # Values are ASCII-checked already, so isdigit() means 0-9 only.
    if not (
        whole.isdigit()
        and len(whole) <= 12
        and (not dot or (fraction.isdigit() and len(fraction) <= 20))
    ):
        raise InvalidTaskHeaders(
            name_of("eta"), value, "expected seconds since the epoch, digits[.digits]"
        )
    seconds = int(whole)
    if seconds > _MAX_EPOCH_SECONDS:
        raise InvalidTaskHeaders(name_of("eta"), value, "out of range")
    micros = int(fraction[:6].ljust(6, "0")) if dot else 0
    return _EPOCH + timedelta(0, seconds, micros)


def format_eta(eta: datetime) -> str:
    """Seconds since the epoch with microseconds, as App Engine writes ``TaskETA``."""
    delta = eta - _EPOCH
    whole = delta.days * 86_400 + delta.seconds
    return f"{whole}.{delta.microseconds:06d}"


# Lower-case dash-spelled header name -> TaskContext field, and -> canonical spelling.
_FIELD_OF: dict[str, str] = {}
_CANONICAL_OF: dict[str, str] = {}
for _field, _suffix in FIELD_SUFFIXES.items():
    for _prefix, _family in (("x-appengine-", APPENGINE), ("x-cloudtasks-", CLOUDTASKS)):
        if _field == "fail_fast" and _family == CLOUDTASKS:
            continue
        _FIELD_OF[_prefix + _suffix.lower()] = _field
        _CANONICAL_OF[_prefix + _suffix.lower()] = _family + _suffix
TASK_FIELD_NAMES = frozenset(_FIELD_OF)


def _header_of(values: Mapping[str, str], field: str) -> str:
    """The canonical spelling of the first header in ``values`` for ``field`` (for messages)."""
    for name in values:
        if _FIELD_OF.get(name) == field:
            return _CANONICAL_OF[name]
    return APPENGINE + FIELD_SUFFIXES[field]


def _conflict(values: Mapping[str, str], field: str) -> InvalidTaskHeaders:
    """The error for two spellings of one field with different values."""
    first: tuple[str, str] | None = None
    for name, value in values.items():
        if _FIELD_OF.get(name) != field:
            continue
        if first is None:
            first = (_CANONICAL_OF[name], value)
        elif value != first[1]:
            return InvalidTaskHeaders(
                first[0], f"{first[1]} / {value}", f"conflicts with {_CANONICAL_OF[name]}"
            )
    raise AssertionError("no conflicting values")  # pragma: no cover - callers checked


def collect(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Group header ``(name, value)`` pairs by normalised name; repeats are joined with ``,``.

    Joining is what an HTTP server does with two lines of one header, and a joined value is
    refused by the parser: a task header must arrive exactly once.
    """
    grouped: dict[str, str] = {}
    repeats: dict[str, list[str]] = {}  # joined once at the end: linear in the lines
    for name, value in pairs:
        key = name.lower().replace("_", "-")  # normalize_name(), inline: once per header
        if key not in grouped:
            grouped[key] = value
        elif key in repeats:
            repeats[key].append(value)
        else:
            repeats[key] = [grouped[key], value]
    for key, values in repeats.items():
        grouped[key] = ",".join(values)
    return grouped


def describes_a_task(names: Iterable[str]) -> bool:
    """True when any of these header names (lower case, dash-spelled) describes a task.

    ``X-AppEngine-Country`` and the like are task-prefixed but say nothing about a task.
    """
    return not TASK_FIELD_NAMES.isdisjoint(names)


def _fields_of(values: Mapping[str, str]) -> dict[str, str]:
    """Task header values by ``TaskContext`` field; other ``X-AppEngine-*`` headers are left out.

    Raises:
        InvalidTaskHeaders: two spellings of one field (``X-AppEngine-`` and
            ``X-CloudTasks-``) with different values.
    """
    raw: dict[str, str] = {}
    for name, value in values.items():
        field = _FIELD_OF.get(name)
        if field is None:  # another X-AppEngine-* header (Country, CityLatLong, ...)
            continue
        if field in raw and raw[field] != value:
            raise _conflict(values, field)
        raw[field] = value
    return raw


def parse_task_fields(values: Mapping[str, str]) -> dict[str, Any]:
    """Parse task headers into ``TaskContext`` field values: the one parser of task headers.

    Args:
        values: lower-case dash-spelled header name -> value (see :func:`collect`).

    Raises:
        InvalidTaskHeaders: naming the header and the bad value.
    """
    return _parse_fields(_fields_of(values), functools.partial(_header_of, values))


def _parse_fields(raw: Mapping[str, str], name_of: NameOf) -> dict[str, Any]:
    """Parse task header values by field (see :func:`fields_of`) into ``TaskContext`` values.

    ``name_of(field)`` names the header a bad value came from; it is called only to raise.

    Raises:
        InvalidTaskHeaders: naming the header and the bad value.
    """
    text = "".join(raw.values())
    # One C-level pass over every value; the slow path only runs to name the culprit.
    if "," in text or not (text.isascii() and text.isprintable()):
        for field, value in raw.items():
            _check_text(name_of(field), value)

    get = raw.get
    queue_name = get("queue_name")
    if queue_name is None:
        raise InvalidTaskHeaders(APPENGINE + "QueueName", None, "required header is missing")
    queue_name = _name(queue_name, name_of, "queue_name", _QUEUE_RE)
    task_name = get("task_name")
    if task_name is None:
        raise InvalidTaskHeaders(APPENGINE + "TaskName", None, "required header is missing")
    task_name = _name(task_name, name_of, "task_name", _TASK_RE)
    # In the order of the fields, so that the first bad one named is the same every time.
    retry_count = get("retry_count")
    execution_count = get("execution_count")
    eta_text = get("eta")
    previous_response = get("previous_response")
    retry_reason = get("retry_reason")
    parsed: dict[str, Any] = {
        "queue_name": queue_name,
        "task_name": task_name,
        "retry_count": 0 if retry_count is None else _count(retry_count, name_of, "retry_count"),
        "execution_count": (
            0 if execution_count is None else _count(execution_count, name_of, "execution_count")
        ),
        "eta": None if eta_text is None else _eta(eta_text, name_of),
        "previous_response": (
            None
            if previous_response is None
            else _count(previous_response, name_of, "previous_response")
        ),
        "retry_reason": retry_reason,
        "fail_fast": bool(get("fail_fast")),
    }
    if retry_reason is not None and len(retry_reason) > _MAX_TEXT:
        raise InvalidTaskHeaders(
            name_of("retry_reason"), retry_reason[:40] + "...", "value too long"
        )
    return parsed
