"""``Task`` and ``TaskRetryOptions``: App Engine's task object and its validation rules."""

from __future__ import annotations

import calendar
import datetime
import math
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any

from ._backend import NewTask, now
from ._enqueue import AddResult, add_tasks, check_queue_name
from ._errors import (
    InvalidEtaError,
    InvalidTaskError,
    InvalidTaskNameError,
    InvalidTaskRetryOptionsError,
    InvalidUrlError,
    TaskTooLargeError,
)
from ._queue_yaml import RetryParameters

MAX_TASK_NAME_LENGTH = 500
MAX_PUSH_TASK_SIZE_BYTES = 100 * 2**10
MAX_TASK_SIZE_BYTES = MAX_PUSH_TASK_SIZE_BYTES
MAX_URL_LENGTH = 2083
MAX_COUNTDOWN_SECONDS = 3600 * 24 * 30

TASK_NAME_PATTERN = rf"^[a-zA-Z0-9_-]{{1,{MAX_TASK_NAME_LENGTH}}}$"
TASK_NAME_RE = re.compile(TASK_NAME_PATTERN)
DEFAULT_QUEUE = "default"
DEFAULT_QUEUE_PATH = "/_ah/queue"

_METHODS = frozenset({"POST", "GET", "HEAD", "PUT", "DELETE"})
_BODY_METHODS = frozenset({"POST", "PUT"})
# The queue sets these itself; App Engine drops any a task tries to set.
_RESERVED_PREFIXES = ("x-appengine-", "x-cloudtasks-")


class TaskRetryOptions:
    """How a failed task is retried; each value set here overrides the queue's ``retry_parameters``.

    Args:
        min_backoff_seconds: wait before the first retry.
        max_backoff_seconds: longest wait between attempts.
        task_age_limit: seconds after the first attempt after which it is not retried (rounded up).
        max_doublings: doublings of the wait before it grows linearly.
        task_retry_limit: retries after the first attempt. With ``task_age_limit`` also set the
            task is retried until both limits are exceeded.

    Raises:
        InvalidTaskRetryOptionsError: a negative value, or a maximum backoff below the minimum.
    """

    def __init__(
        self,
        *,
        min_backoff_seconds: float | None = None,
        max_backoff_seconds: float | None = None,
        task_age_limit: float | None = None,
        max_doublings: int | None = None,
        task_retry_limit: int | None = None,
    ) -> None:
        checks = (
            (min_backoff_seconds, "The minimum retry interval cannot be negative"),
            (max_backoff_seconds, "The maximum retry interval cannot be negative"),
            (max_doublings, "The maximum number of retry interval doublings cannot be negative"),
            (task_retry_limit, "The maximum number of retries cannot be negative"),
            (task_age_limit, "The expiry countdown cannot be negative"),
        )
        for value, message in checks:
            if value is not None and value < 0:
                raise InvalidTaskRetryOptionsError(message)
        if (
            min_backoff_seconds is not None
            and max_backoff_seconds is not None
            and max_backoff_seconds < min_backoff_seconds
        ):
            raise InvalidTaskRetryOptionsError(
                "The maximum retry interval cannot be less than the minimum retry interval"
            )
        self._min_backoff_seconds = min_backoff_seconds
        self._max_backoff_seconds = max_backoff_seconds
        self._task_age_limit = None if task_age_limit is None else math.ceil(task_age_limit)
        self._max_doublings = max_doublings
        self._task_retry_limit = task_retry_limit

    @property
    def min_backoff_seconds(self) -> float | None:
        """The minimum number of seconds to wait before retrying a task."""
        return self._min_backoff_seconds

    @property
    def max_backoff_seconds(self) -> float | None:
        """The maximum number of seconds to wait before retrying a task."""
        return self._max_backoff_seconds

    @property
    def task_age_limit(self) -> int | None:
        """Seconds after the first attempt after which a failed task is not retried."""
        return self._task_age_limit

    @property
    def max_doublings(self) -> int | None:
        """How many times the retry interval doubles."""
        return self._max_doublings

    @property
    def task_retry_limit(self) -> int | None:
        """How many times a failed task is retried."""
        return self._task_retry_limit

    def to_parameters(self) -> RetryParameters:
        """These options as queue.yaml-style :class:`RetryParameters` (unset stays ``None``)."""
        return RetryParameters(
            task_retry_limit=self._task_retry_limit,
            task_age_limit=None if self._task_age_limit is None else float(self._task_age_limit),
            min_backoff_seconds=(
                None if self._min_backoff_seconds is None else float(self._min_backoff_seconds)
            ),
            max_backoff_seconds=(
                None if self._max_backoff_seconds is None else float(self._max_backoff_seconds)
            ),
            max_doublings=self._max_doublings,
        )

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{name}={getattr(self, name)!r}"
            for name in (
                "min_backoff_seconds",
                "max_backoff_seconds",
                "task_age_limit",
                "max_doublings",
                "task_retry_limit",
            )
        )
        return f"TaskRetryOptions({fields})"


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return str(value)


def _flatten(mapping: Mapping[Any, Any]) -> list[tuple[str, str]]:
    """``{"a": "1", "b": ["2", "3"]}`` -> ``[("a", "1"), ("b", "2"), ("b", "3")]``."""
    pairs: list[tuple[str, str]] = []
    for key, value in mapping.items():
        if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
            pairs.append((_text(key), _text(value)))
        else:
            pairs.extend((_text(key), _text(item)) for item in value)
    return pairs


def _urlencode(pairs: list[tuple[str, str]]) -> str:
    """``urllib.parse.urlencode`` of (str, str) pairs, without its per-pair type checks."""
    quote = urllib.parse.quote_plus
    return "&".join(f"{quote(key)}={quote(value)}" for key, value in pairs)


def _split_url(url: str) -> tuple[bool, str, str]:
    """Return (uses the queue's default URL, path, query); InvalidUrlError for a bad URL."""
    if not url:
        return True, "", ""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme or parts.netloc:
        raise InvalidUrlError("Relative URL cannot have a scheme or location")
    if parts.fragment:
        raise InvalidUrlError("Relative URL cannot specify a fragment")
    if not parts.path.startswith("/"):
        raise InvalidUrlError('The relative URL path must start with "/"')
    if len(parts.path) > MAX_URL_LENGTH:
        raise InvalidUrlError(
            f"The task URL must be less than {MAX_URL_LENGTH} characters; found {len(parts.path)}"
        )
    return False, parts.path, parts.query


def eta_from(eta: datetime.datetime | None, countdown: float | None, now: float) -> float:
    """The ETA as seconds since the epoch, from ``eta`` or ``countdown`` (exclusive) or ``now``.

    A naive ``eta`` is read as UTC, which is what App Engine's servers run in.
    """
    if eta is not None and countdown is not None:
        raise InvalidTaskError("Cannot use a countdown and ETA together")
    if eta is not None:
        if not isinstance(eta, datetime.datetime):
            raise InvalidTaskError("ETA must be a datetime.datetime instance")
        return calendar.timegm(eta.utctimetuple()) + eta.microsecond * 1e-6
    if countdown is not None:
        try:
            seconds = float(countdown)
        except (TypeError, ValueError):
            raise InvalidTaskError("Countdown must be a number") from None
        if not math.isfinite(seconds):
            raise InvalidTaskError("Countdown out of range")
        return now + seconds
    return now


class Task:
    """One push task: where it goes (``url``, ``target``), what it carries, and when it runs.

    The arguments and rules are App Engine's, so code written for
    ``google.appengine.api.taskqueue`` ports by changing its import.

    Args:
        payload: the request body (``str`` is sent as UTF-8 ``text/plain``); POST and PUT only,
            and not together with ``params`` for POST.
        name: 1-500 of ``[a-zA-Z0-9_-]``; named tasks are added at most once (see
            :class:`TaskAlreadyExistsError`, :class:`TombstonedTaskError`). Unnamed tasks get a
            unique generated name when added.
        method: ``POST`` (default), ``GET``, ``HEAD``, ``PUT`` or ``DELETE``.
        url: a relative URL starting with ``/``; default ``/_ah/queue/<queue name>``. No query
            string for POST (use ``params``).
        headers: extra request headers; a list value repeats the header. ``X-AppEngine-*`` and
            ``X-CloudTasks-*`` headers are dropped: only the queue sets them.
        params: a dict (list values repeat the key); form-encoded in the body for POST, in the
            query string for the other methods.
        countdown: seconds from now until the task may run; excludes ``eta``.
        eta: a ``datetime`` when the task may run (naive = UTC); at most 30 days ahead.
        retry_options: a :class:`TaskRetryOptions` overriding the queue's retry parameters.
        target: the service (``version.service``...) to run the task on; a queue's ``target``
            overrides it.

    Example:
        >>> Task(url="/tasks/count", params={"amount": "1"}).payload
        b'amount=1'
    """

    def __init__(
        self,
        payload: str | bytes | None = None,
        *,
        name: str | None = None,
        method: str = "POST",
        url: str | None = None,
        headers: Mapping[str, Any] | None = None,
        params: Mapping[Any, Any] | None = None,
        countdown: float | None = None,
        eta: datetime.datetime | None = None,
        retry_options: TaskRetryOptions | None = None,
        target: str | None = None,
        dispatch_deadline_usec: int | None = None,
    ) -> None:
        if name is not None and (not isinstance(name, str) or not TASK_NAME_RE.match(name)):
            raise InvalidTaskNameError(
                f'The task name does not match expression "{TASK_NAME_PATTERN}"; found {name!r}'
            )
        self._name = name or None
        self._default_url, path, query = _split_url(url or "")
        method_upper = str(method).upper()
        self._method = method_upper
        header_pairs = (
            [
                (key, value)
                for key, value in _flatten(headers)
                if not key.lower().replace("_", "-").startswith(_RESERVED_PREFIXES)
            ]
            if headers
            else []
        )
        params = params or {}
        body: bytes | None = None
        if query and params:
            raise InvalidTaskError(
                "Query string and parameters both present; only one of these can be supplied"
            )
        if method_upper == "POST":
            if payload and params:
                raise InvalidTaskError(
                    "Message body and parameters both present for POST method; "
                    "only one of these can be supplied"
                )
            if query:
                raise InvalidTaskError(
                    'POST method cannot have a query string; use the "params" keyword argument'
                    " instead"
                )
            if params:
                body = _urlencode(_flatten(params)).encode("ascii")
                header_pairs = _setdefault(
                    header_pairs, "Content-Type", "application/x-www-form-urlencoded"
                )
            elif payload is not None:
                body, header_pairs = _convert_payload(payload, header_pairs)
        elif method_upper in _METHODS:
            if payload and method_upper not in _BODY_METHODS:
                raise InvalidTaskError("Payload can only be specified for methods POST, PUT")
            if payload:
                body, header_pairs = _convert_payload(payload, header_pairs)
            if params:
                query = _urlencode(_flatten(params))
            if query:
                path = f"{path}?{query}"
        elif method_upper == "PULL":
            raise InvalidTaskError("pull tasks are not supported; only push tasks can be added")
        else:
            raise InvalidTaskError(f"Invalid method: {method_upper}")
        if target is not None and any(k.lower() == "host" for k, _ in header_pairs):
            raise InvalidTaskError("A host header cannot be set when a target is specified.")
        if target is not None and not isinstance(target, str):
            raise InvalidTaskError(f"target must be a string; found {target!r}")
        self._relative_url = path
        self._payload = body
        self._headers = header_pairs
        self._target = target
        self._retry_options = retry_options
        if retry_options is not None and not isinstance(retry_options, TaskRetryOptions):
            raise InvalidTaskError("retry_options must be a TaskRetryOptions")
        current = now()
        self._eta_posix = eta_from(eta, countdown, current)
        if self._eta_posix - current > MAX_COUNTDOWN_SECONDS:
            raise InvalidEtaError("ETA too far in the future")
        self._dispatch_deadline_usec = dispatch_deadline_usec
        self._queue_name: str | None = None
        self._retry_count = 0
        self._enqueued = False
        self._deleted = False
        if self.size > MAX_PUSH_TASK_SIZE_BYTES:
            raise TaskTooLargeError(
                f"Task size must be less than {MAX_PUSH_TASK_SIZE_BYTES}; found {self.size}"
            )

    # -- properties, as App Engine names them ------------------------------------------------

    @property
    def name(self) -> str | None:
        """The task name (set by the queue when it was added unnamed)."""
        return self._name

    @property
    def method(self) -> str:
        """The HTTP method."""
        return self._method

    @property
    def url(self) -> str:
        """The relative URL (with the query string for non-POST methods); ``""`` = queue default."""
        return self._relative_url

    @property
    def on_queue_url(self) -> bool:
        """True when the task goes to its queue's default URL ``/_ah/queue/<queue>``."""
        return self._default_url

    @property
    def headers(self) -> dict[str, str]:
        """A copy of the extra headers (a repeated header once, its values joined by ``,``)."""
        result: dict[str, str] = {}
        for key, value in self._headers:
            result[key] = f"{result[key]},{value}" if key in result else value
        return result

    @property
    def header_list(self) -> list[tuple[str, str]]:
        """The extra headers as (name, value) pairs, repeated headers kept apart."""
        return list(self._headers)

    @property
    def payload(self) -> bytes | None:
        """The request body, or ``None``."""
        return self._payload

    @property
    def target(self) -> str | None:
        """The service the task was created for (a queue's ``target`` wins over it)."""
        return self._target

    @property
    def eta_posix(self) -> float:
        """When the task may run, in seconds since the epoch."""
        return self._eta_posix

    @property
    def eta(self) -> datetime.datetime:
        """When the task may run, as an aware UTC datetime."""
        return datetime.datetime.fromtimestamp(self._eta_posix, datetime.timezone.utc)

    @property
    def retry_options(self) -> TaskRetryOptions | None:
        """The task's retry options, if any."""
        return self._retry_options

    @property
    def dispatch_deadline_usec(self) -> int | None:
        """The dispatch deadline given at creation (kept for API compatibility)."""
        return self._dispatch_deadline_usec

    @property
    def queue_name(self) -> str | None:
        """The queue the task was added to, once added."""
        return self._queue_name

    @property
    def retry_count(self) -> int:
        """Attempts made so far (always 0 on a task object created by the caller)."""
        return self._retry_count

    @property
    def size(self) -> int:
        """The size App Engine limits: method, URL, headers and payload, in bytes."""
        header_size = sum(len(k) + len(v) + len(": \r\n") for k, v in self._headers)
        return len(self._method) + len(self._payload or b"") + len(self._relative_url) + header_size

    @property
    def was_enqueued(self) -> bool:
        """True once the task was added to a queue."""
        return self._enqueued

    @property
    def was_deleted(self) -> bool:
        """True once the task was deleted through ``Queue.delete_tasks``."""
        return self._deleted

    def extract_params(self) -> dict[str, str | list[str]]:
        """The params: from the form body for POST, from the query string otherwise.

        A name given several times maps to a list of values.
        """
        if self._method == "POST":
            query = (self._payload or b"").decode("utf-8")
        else:
            query = urllib.parse.urlsplit(self._relative_url).query
        result: dict[str, str | list[str]] = {}
        if not query:
            return result
        for key, value in urllib.parse.parse_qsl(
            query, keep_blank_values=True, strict_parsing=True
        ):
            if key in result:
                existing = result[key]
                result[key] = (
                    [*existing, value] if isinstance(existing, list) else [existing, value]
                )
            else:
                result[key] = value
        return result

    def add(self, queue_name: str = DEFAULT_QUEUE, transactional: bool = False) -> Task:
        """Add this task to a queue; see :meth:`Queue.add`."""
        return self.add_async(queue_name, transactional).get_result()

    def add_async(
        self, queue_name: str = DEFAULT_QUEUE, transactional: bool = False
    ) -> AddResult[Task]:
        """Add this task to a queue; ``get_result()`` on the returned object gives the task."""
        result: AddResult[Task] = add_tasks(
            check_queue_name(queue_name), [self], transactional=transactional, multiple=False
        )
        return result

    def _record(self, queue_name: str) -> NewTask:
        """This task as the record a backend stores in ``queue_name``."""
        url = self._relative_url
        if self._default_url:
            url = f"{DEFAULT_QUEUE_PATH}/{queue_name}{url}"
        options = self._retry_options
        return NewTask(
            queue_name=queue_name,
            task_name=self._name,
            method=self._method,
            url=url,
            headers=tuple(self._headers),
            payload=self._payload or b"",
            eta=self._eta_posix,
            target=self._target,
            retry=None if options is None else options.to_parameters(),
        )

    def _mark_enqueued(self, queue_name: str, name: str) -> None:
        self._queue_name = queue_name
        self._name = name
        self._enqueued = True

    def _mark_deleted(self) -> None:
        self._deleted = True

    def __repr__(self) -> str:
        return (
            f"Task<name={self._name!r}, queue_name={self._queue_name!r}, method={self._method!r}, "
            f"url={self._relative_url!r}, eta={self.eta.isoformat()!r}, size={self.size}, "
            f"was_enqueued={self._enqueued!r}>"
        )


def _setdefault(pairs: list[tuple[str, str]], name: str, value: str) -> list[tuple[str, str]]:
    if any(k.lower() == name.lower() for k, _ in pairs):
        return pairs
    return [*pairs, (name, value)]


def _convert_payload(
    payload: str | bytes, pairs: list[tuple[str, str]]
) -> tuple[bytes, list[tuple[str, str]]]:
    if isinstance(payload, str):
        if payload:
            pairs = _setdefault(pairs, "Content-Type", "text/plain; charset=utf-8")
        return payload.encode("utf-8"), pairs
    if isinstance(payload, (bytes, bytearray, memoryview)):
        return bytes(payload), pairs
    raise InvalidTaskError(f"Task payloads must be strings; invalid payload: {payload!r}")
