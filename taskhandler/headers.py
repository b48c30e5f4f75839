"""Task header names and their strict parsing (SPEC §2).

Pure: standard library only. A wrong retry count or ETA silently changes what a handler
does, so every value is checked against one narrow grammar and refused otherwise.
"""

from __future__ import annotations

import functools
import operator
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from .exceptions import InvalidTaskHeaders

__all__ = [
    "APPENGINE",
    "CLOUDTASKS",
    "ENVIRON_PREFIXES",
    "FIELD_SUFFIXES",
    "TASK_HEADER_PREFIXES",
    "FieldPlan",
    "fields_of",
    "format_eta",
    "is_task_header",
    "normalize_name",
    "parse_fields",
    "parse_task_fields",
    "parse_task_headers",
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
_UTC = timezone.utc
_MAX_EPOCH_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z, the last datetime
# Up to 3,999,999,999 s (below 2**32) with at most six decimals: a double resolves a
# microsecond there with room to spare, and float() rounds to the nearest double, so
# fromtimestamp(float(value)) lands on the exact microsecond. The rest take the long road.
_SHORT_ETA_RE = re.compile(r"[0-3]?[0-9]{1,9}(?:\.[0-9]{1,6})?")


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


# header name -> field and header name -> canonical spelling, for the lower-case dash
# spelling and for the WSGI environ key spelling (HTTP_X_APPENGINE_QUEUENAME), so WSGI
# needs no renaming pass.
_FIELD_OF: dict[str, str] = {}
_CANONICAL_OF: dict[str, str] = {}
for _field, _suffix in FIELD_SUFFIXES.items():
    for _prefix, _family in (("x-appengine-", APPENGINE), ("x-cloudtasks-", CLOUDTASKS)):
        if _field == "fail_fast" and _family == CLOUDTASKS:
            continue
        _lower = _prefix + _suffix.lower()
        for _spelling in (_lower, "HTTP_" + _lower.upper().replace("-", "_")):
            _FIELD_OF[_spelling] = _field
            _CANONICAL_OF[_spelling] = _family + _suffix
TASK_FIELD_NAMES = frozenset(_FIELD_OF)
_PLAIN_NAME_RE = re.compile(_NAME)


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
    grouped: dict[str, list[str]] = {}
    for name, value in pairs:
        grouped.setdefault(normalize_name(name), []).append(value)
    return {key: ",".join(values) for key, values in grouped.items()}


def has_task_fields(values: Mapping[str, str]) -> bool:
    """True when any header that describes a task (QueueName, TaskName, ...) is present."""
    return not TASK_FIELD_NAMES.isdisjoint(values)


def fields_of(values: Mapping[str, str]) -> dict[str, str]:
    """Task header values by ``TaskContext`` field; other ``X-AppEngine-*`` headers are left out.

    Args:
        values: header name -> value, names either lower-case dash-spelled (see
            :func:`collect`) or WSGI environ keys (``HTTP_X_APPENGINE_QUEUENAME``).

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
    """Parse normalised task headers into ``TaskContext`` field values.

    Args:
        values: header name -> value, as for :func:`fields_of`.

    Raises:
        InvalidTaskHeaders: naming the header and the bad value.
    """
    return parse_fields(fields_of(values), functools.partial(_header_of, values))


def parse_task_headers(values: Mapping[str, str]) -> dict[str, Any] | None:
    """:func:`parse_task_fields`, or ``None`` when no header describes a task (Country, ...)."""
    if TASK_FIELD_NAMES.isdisjoint(values):
        return None
    return parse_task_fields(values)


# The usual value of each field, as a regular expression that only admits values the
# checks of parse_fields() accept and convert the same way (a subset of the grammar: bare
# names, the short ETA form). A request whose values all match needs only converting.
_USUAL = {
    "queue_name": _NAME,
    "task_name": _NAME,
    "retry_count": r"[0-9]{1,10}",
    "execution_count": r"[0-9]{1,10}",
    "eta": _SHORT_ETA_RE.pattern,
    "previous_response": r"[0-9]{1,10}",
    "retry_reason": rf"[\x20-\x2b\x2d-\x7e]{{0,{_MAX_TEXT}}}",  # printable ASCII but ","
    "fail_fast": r"[\x20-\x2b\x2d-\x7e]*",
}


_COUNT_FIELDS = frozenset(("retry_count", "execution_count", "previous_response"))
# TaskContext values of the fields a request leaves out, in field order.
_DEFAULTS: dict[str, Any] = {
    "queue_name": None,
    "task_name": None,
    "retry_count": 0,
    "execution_count": 0,
    "eta": None,
    "previous_response": None,
    "retry_reason": None,
    "fail_fast": False,
}


@dataclass(frozen=True, slots=True)
class FieldPlan:
    """Which header names give which ``TaskContext`` field, worked out once per set of names.

    A server sends the same header names request after request, so an adapter can cache
    the plan by its names: :meth:`parse` then looks the values up in one call and checks
    them all with one regular expression, falling back to :func:`parse_fields` (which
    names the culprit) when any value is unusual.
    """

    fields: tuple[str, ...]
    """The fields present, in the order their headers came."""
    names: Mapping[str, str]
    """field -> canonical header spelling, for messages."""
    _get: Callable[[Mapping[str, str]], Any]
    _usual: re.Pattern[str] | None
    _counts: tuple[str, ...]
    _eta: bool
    _fail_fast: bool

    @classmethod
    def of(cls, names: Iterable[str]) -> FieldPlan | None:
        """The plan for these header names; ``None`` when two of them give one field.

        Two spellings of one field (``X-AppEngine-`` and ``X-CloudTasks-``) must be
        compared value by value: :func:`parse_task_fields` does that. Plans are kept for
        the last 256 sets of names.
        """
        return _field_plan(tuple(names))

    @classmethod
    def _make(cls, names: tuple[str, ...]) -> FieldPlan | None:
        headers: dict[str, str] = {}
        for name in names:
            field = _FIELD_OF.get(name)
            if field is None:
                continue
            if field in headers:
                return None
            headers[field] = name
        fields = tuple(headers)
        usual = None
        if "queue_name" in headers and "task_name" in headers:  # else parse_fields() refuses
            usual = re.compile("\n".join(f"(?P<{field}>{_USUAL[field]})" for field in fields))
        getter = operator.itemgetter(*headers.values()) if len(headers) > 1 else _one(headers)
        return cls(
            fields,
            {field: _CANONICAL_OF[name] for field, name in headers.items()},
            getter,
            usual,
            tuple(field for field in fields if field in _COUNT_FIELDS),
            "eta" in headers,
            "fail_fast" in headers,
        )

    def parse(self, values: Mapping[str, str]) -> dict[str, Any] | None:
        """:func:`parse_task_headers` for ``values`` whose names this plan was made from."""
        if not self.fields:
            return None
        found: tuple[str, ...] = self._get(values)
        usual = None if self._usual is None else self._usual.fullmatch("\n".join(found))
        if usual is None:
            return parse_fields(dict(zip(self.fields, found, strict=True)), self.name_of)
        # Every value is proven usual: convert in place, over the defaults, in field order.
        parsed: dict[str, Any] = _DEFAULTS | usual.groupdict()
        for field in self._counts:
            parsed[field] = int(parsed[field])
        if self._eta:
            parsed["eta"] = datetime.fromtimestamp(float(parsed["eta"]), _UTC)
        if self._fail_fast:
            parsed["fail_fast"] = parsed["fail_fast"] != ""
        return parsed

    def name_of(self, field: str) -> str:
        """The canonical spelling of the header ``field`` came from."""
        return self.names.get(field) or APPENGINE + FIELD_SUFFIXES[field]


@functools.lru_cache(maxsize=256)
def _field_plan(names: tuple[str, ...]) -> FieldPlan | None:
    return FieldPlan._make(names)


def _one(headers: Mapping[str, str]) -> Callable[[Mapping[str, str]], tuple[str, ...]]:
    """The value getter for a plan of at most one header (itemgetter returns it bare)."""
    keys = tuple(headers.values())
    return lambda values: tuple(values[key] for key in keys)


def parse_fields(raw: Mapping[str, str], name_of: NameOf) -> dict[str, Any]:
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
    if _PLAIN_NAME_RE.fullmatch(queue_name) is None:  # else the usual, bare name
        queue_name = _name(queue_name, name_of, "queue_name", _QUEUE_RE)
    task_name = get("task_name")
    if task_name is None:
        raise InvalidTaskHeaders(APPENGINE + "TaskName", None, "required header is missing")
    if _PLAIN_NAME_RE.fullmatch(task_name) is None:
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
        "eta": (
            None
            if eta_text is None
            else datetime.fromtimestamp(float(eta_text), _UTC)
            if _SHORT_ETA_RE.fullmatch(eta_text) is not None
            else _eta(eta_text, name_of)
        ),
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
