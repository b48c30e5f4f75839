"""``Task`` and ``TaskRetryOptions``: App Engine's task object and its validation rules."""

from __future__ import annotations

import calendar
import datetime
import math
import re
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from typing import Any

from ._backend import NewTask, max_push_task_size, now
from ._enqueue import AddResult, add_tasks, check_queue_name
from ._errors import (
    InvalidDispatchDeadlineError,
    InvalidEtaError,
    InvalidTagError,
    InvalidTaskError,
    InvalidTaskNameError,
    InvalidTaskRetryOptionsError,
    InvalidUrlError,
    TaskTooLargeError,
)
from ._queue_yaml import RetryParameters

MAX_QUEUE_NAME_LENGTH = 100
MAX_TASK_NAME_LENGTH = 500
MAX_PUSH_TASK_SIZE_BYTES = 100 * 2**10
MAX_PULL_TASK_SIZE_BYTES = 2**20
MAX_TASK_SIZE_BYTES = MAX_PUSH_TASK_SIZE_BYTES
MAX_TRANSACTIONAL_REQUEST_SIZE_BYTES = 2**20
MAX_URL_LENGTH = 2083
MAX_TASKS_PER_LEASE = 1000
MAX_TAG_LENGTH = 500
MAX_LEASE_SECONDS = 3600 * 24 * 7
MAX_DISPATCH_DEADLINE = datetime.timedelta(hours=24)
MIN_DISPATCH_DEADLINE = datetime.timedelta(seconds=15)
MAX_COUNTDOWN_SECONDS = 3600 * 24 * 30


class _DefaultAppVersion:
    def __repr__(self) -> str:
        return "<DefaultApplicationVersion>"


DEFAULT_APP_VERSION: Any = _DefaultAppVersion()
"""``Task(target=DEFAULT_APP_VERSION)``: the app's default service, as ``target=None`` is."""

TASK_NAME_PATTERN = rf"^[a-zA-Z0-9_-]{{1,{MAX_TASK_NAME_LENGTH}}}$"
TASK_NAME_RE = re.compile(TASK_NAME_PATTERN)
DEFAULT_QUEUE = "default"
DEFAULT_QUEUE_PATH = "/_ah/queue"

_METHODS = frozenset({"POST", "GET", "HEAD", "PUT", "DELETE"})
_BODY_METHODS = frozenset({"POST", "PUT", "PULL"})
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


class CaselessDict(MutableMapping[str, Any]):
    """A dict whose keys compare case-insensitively and keep the spelling last given.

    A task keeps its headers in one, as App Engine's (``urlfetch._CaselessDict``) does, so a
    default content type is added only when no spelling of ``Content-Type`` was given.
    Values are kept as given (a list stays a list).
    """

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        self._data: dict[str, tuple[str, Any]] = {}
        if data:
            self.update(data)

    def __getitem__(self, key: str) -> Any:
        return self._data[key.lower()][1]

    def __setitem__(self, key: str, value: Any) -> None:
        self._data[key.lower()] = (key, value)  # the latest spelling, as App Engine's

    def __delitem__(self, key: str) -> None:
        del self._data[key.lower()]

    def __iter__(self) -> Iterator[str]:
        return (spelling for spelling, _ in self._data.values())

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.lower() in self._data

    def copy(self) -> CaselessDict:
        """A shallow copy."""
        return CaselessDict(self)

    def plain(self) -> dict[str, Any]:
        """A plain (case-sensitive) dict of the items."""
        return {spelling: value for spelling, value in self._data.values()}

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return dict(self.items()) == dict(other.items())
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable, like dict

    def __repr__(self) -> str:
        return repr(dict(self.items()))


class Task:
    """One task: a push task (where it goes, what it carries, when it runs) or a pull task.

    The arguments and rules are App Engine's, so code written for
    ``google.appengine.api.taskqueue`` ports by changing its import.

    Args:
        payload: the request body (``str`` is sent as UTF-8 with a ``text/plain`` content type);
            POST, PUT and PULL only, and not together with ``params`` for POST and PULL.
        name: 1-500 of ``[a-zA-Z0-9_-]``; named tasks are added at most once (see
            :class:`TaskAlreadyExistsError`, :class:`TombstonedTaskError`). Unnamed tasks (no
            name, ``None`` or ``""``) get a unique generated name when added.
        method: ``POST`` (default), ``GET``, ``HEAD``, ``PUT``, ``DELETE``, or ``PULL`` for a
            pull task (added to a ``mode: pull`` queue and leased by workers).
        url: a relative URL starting with ``/``; default ``/_ah/queue/<queue name>``. No query
            string for POST (use ``params``); none at all for pull tasks.
        headers: extra request headers; a list value repeats the header. ``X-AppEngine-*`` and
            ``X-CloudTasks-*`` headers are not sent: only the queue sets them. Not for pull tasks.
        params: a dict (list values repeat the key); form-encoded in the body for POST and PULL,
            in the query string for the other methods.
        countdown: seconds from now until the task may run or be leased; excludes ``eta``.
        eta: a ``datetime`` when the task may run or be leased (naive = UTC); at most 30 days
            ahead.
        retry_options: a :class:`TaskRetryOptions` overriding the queue's retry parameters (for
            a pull task, ``task_retry_limit`` is how many times it may be leased).
        target: the service (``version.service``...) to run the task on; a queue's ``target``
            overrides it. Not for pull tasks.
        tag: a pull task's tag, for ``Queue.lease_tasks_by_tag``; at most 500 characters.
        dispatch_deadline_usec: how long the handler of a push task may take, in microseconds
            (15 s to 24 h); ``CloudTasksBackend`` sets it as the task's ``dispatch_deadline``.

    Raises:
        InvalidTaskError: a bad combination (``params`` with ``payload``, ``tag`` on a push
            task, ``url``/``headers``/``target`` on a pull task, no payload for a pull task...).
        InvalidTaskNameError, InvalidUrlError, InvalidEtaError, InvalidTagError: a bad value.
        TaskTooLargeError: over 100 KiB (push; up to 1 MB while a ``CloudTasksBackend`` for
            HTTP targets is installed) or 1 MiB (pull).
        InvalidDispatchDeadlineError: ``dispatch_deadline_usec`` out of range (``TypeError``
            when it is not an integer, as on App Engine).

    Example:
        >>> Task(url="/tasks/count", params={"amount": "1"}).extract_params()
        {'amount': b'1'}
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
        tag: str | bytes | None = None,
        dispatch_deadline_usec: int | None = None,
        _size_check: bool = True,
    ) -> None:
        if (
            name is not None
            and name != ""
            and (not isinstance(name, str) or not TASK_NAME_RE.match(name))
        ):
            raise InvalidTaskNameError(
                f'The task name does not match expression "{TASK_NAME_PATTERN}"; found {name!r}'
            )
        self._name = name  # "" is kept, as App Engine keeps it: both mean "no name"
        self._default_url, path, query = _split_url(url or "")
        method_upper = str(method).upper()
        self._method = method_upper
        self._headers = CaselessDict(headers)
        self._tag = tag
        params = params or {}
        body: str | bytes | None = None
        if query and params:
            raise InvalidTaskError(
                "Query string and parameters both present; only one of these can be supplied"
            )
        if method_upper != "PULL" and tag is not None:
            raise InvalidTaskError("tag can only be specified for pull tasks")
        if method_upper == "PULL":
            if not self._default_url:
                raise InvalidTaskError("url must not be specified for pull tasks")
            if headers:
                raise InvalidTaskError("headers must not be specified for pull tasks")
            if target:
                raise InvalidTaskError("target must not be specified for pull tasks")
            if params:
                if payload:
                    raise InvalidTaskError(
                        "Message body and parameters both present for PULL method; "
                        "only one of these can be supplied"
                    )
                payload = _urlencode(_flatten(params))
            if payload is None:
                raise InvalidTaskError("payload must be specified for pull task")
            body = _convert_payload(payload, self._headers)
        elif method_upper == "POST":
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
                # A str, as App Engine's Python 3 library has it; sent as ASCII.
                body = _urlencode(_flatten(params))
                self._headers.setdefault("content-type", "application/x-www-form-urlencoded")
            elif payload is not None:
                body = _convert_payload(payload, self._headers)
        elif method_upper in _METHODS:
            if payload and method_upper not in _BODY_METHODS:
                raise InvalidTaskError("Payload can only be specified for methods POST, PUT, PULL")
            if payload:
                body = _convert_payload(payload, self._headers)
            if params:
                query = _urlencode(_flatten(params))
            if query:
                path = f"{path}?{query}"
        else:
            raise InvalidTaskError(f"Invalid method: {method_upper}")
        if target is not None and "Host" in self._headers:
            raise InvalidTaskError("A host header cannot be set when a target is specified.")
        if target is not None and target is not DEFAULT_APP_VERSION and not isinstance(target, str):
            raise InvalidTaskError(f"target must be a string; found {target!r}")
        self._relative_url = path
        self._payload = body
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
        if _size_check:
            limit = (
                MAX_PULL_TASK_SIZE_BYTES
                if method_upper == "PULL"
                else max_push_task_size(MAX_PUSH_TASK_SIZE_BYTES)
            )
            if self.size > limit:
                raise TaskTooLargeError(f"Task size must be less than {limit}; found {self.size}")
            if tag is not None:
                if not isinstance(tag, (str, bytes)):
                    raise InvalidTagError(f"Tag must be a string; found {tag!r}")
                if len(tag) > MAX_TAG_LENGTH:
                    raise InvalidTagError(
                        f"Tag must be <= {MAX_TAG_LENGTH} bytes. Got a {len(tag)} byte tag."
                    )
        if dispatch_deadline_usec is not None:
            _check_dispatch_deadline(dispatch_deadline_usec)

    @classmethod
    def _leased(
        cls,
        queue_name: str,
        *,
        name: str,
        payload: bytes,
        tag: str | None,
        eta: float,
        retry_count: int,
    ) -> Task:
        """A pull task as ``lease_tasks`` returns it: its lease ends at ``eta``."""
        task = cls(payload, name=name, method="PULL", tag=tag, _size_check=False)
        task._eta_posix = eta
        task._retry_count = retry_count
        task._queue_name = queue_name
        task._enqueued = True
        return task

    # -- properties, as App Engine names them ------------------------------------------------

    @property
    def name(self) -> str | None:
        """The task name (set by the queue when it was added unnamed)."""
        return self._name

    @property
    def method(self) -> str:
        """The HTTP method, or ``"PULL"`` for a pull task."""
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
    def headers(self) -> dict[str, Any]:
        """A copy of the headers as given, with the content type the task added, as a dict.

        As App Engine's: a plain (case-sensitive) dict; values are as given (a list value stays
        a list); a content type the task sets itself is spelt ``content-type``.
        """
        return self._headers.plain()

    @property
    def header_list(self) -> list[tuple[str, str]]:
        """The headers the request carries, as (name, value) pairs, repeated headers apart.

        ``X-AppEngine-*`` and ``X-CloudTasks-*`` headers are left out: only the queue sets them.
        """
        return [
            # App Engine's object spells it content-type; requests carry the usual spelling.
            ("Content-Type" if key.lower() == "content-type" else key, value)
            for key, value in _flatten(self._headers)
            if not key.lower().replace("_", "-").startswith(_RESERVED_PREFIXES)
        ]

    @property
    def payload(self) -> str | bytes | None:
        """The body, or ``None``: ``bytes``, except a ``str`` when it was made from ``params``.

        That is how App Engine's Python 3 library has it (a form-encoded ``params`` body is the
        ``str`` ``urlencode`` returns; a ``str`` payload is encoded to UTF-8).
        """
        return self._payload

    @property
    def tag(self) -> str | bytes | None:
        """A pull task's tag, as given (``str`` on tasks returned by a lease)."""
        return self._tag

    @property
    def target(self) -> str | None:
        """The service the task was created for (a queue's ``target`` wins over it)."""
        return self._target

    @property
    def eta_posix(self) -> float:
        """When the task may run or be leased (a leased task: its lease's end), epoch seconds."""
        return self._eta_posix

    @property
    def eta(self) -> datetime.datetime:
        """When the task may run or be leased, as an aware UTC datetime."""
        return datetime.datetime.fromtimestamp(self._eta_posix, datetime.timezone.utc)

    @property
    def retry_options(self) -> TaskRetryOptions | None:
        """The task's retry options, if any."""
        return self._retry_options

    @property
    def dispatch_deadline_usec(self) -> int | None:
        """The dispatch deadline given at creation, in microseconds."""
        return self._dispatch_deadline_usec

    @property
    def queue_name(self) -> str | None:
        """The queue the task was added to, once added."""
        return self._queue_name

    @property
    def retry_count(self) -> int:
        """Attempts (push) or leases (pull) so far: 0 on a task object the caller created."""
        return self._retry_count

    @property
    def size(self) -> int:
        """The size App Engine limits: method, URL, headers and payload, in bytes."""
        header_size = sum(len(k) + len(v) + len(": \r\n") for k, v in _flatten(self._headers))
        return len(self._method) + len(self._payload or b"") + len(self._relative_url) + header_size

    @property
    def was_enqueued(self) -> bool:
        """True once the task was added to a queue."""
        return self._enqueued

    @property
    def was_deleted(self) -> bool:
        """True once the task was deleted through ``Queue.delete_tasks``."""
        return self._deleted

    def extract_params(self) -> dict[Any, bytes | list[bytes]]:
        """The params: from the body for POST and PULL, from the query string otherwise.

        As App Engine's Python 3 library returns them: values are ``bytes``; names are ``str``
        when read from the query string or a ``params`` body, ``bytes`` when read from a
        ``bytes`` payload. A name given several times maps to a list of values.

        Raises:
            ValueError: the body or query string is not form-encoded data.
        """
        query: str | bytes | None
        if self._method in ("PULL", "POST"):
            query = self._payload
        else:
            query = urllib.parse.urlsplit(self._relative_url).query
        result: dict[Any, Any] = {}
        if not query:
            return result
        pairs: list[tuple[Any, Any]] = urllib.parse.parse_qsl(
            query, keep_blank_values=True, strict_parsing=True
        )
        for key, value in pairs:
            encoded = value.encode("utf-8") if isinstance(value, str) else value
            result.setdefault(key, []).append(encoded)
        return {key: values[0] if len(values) == 1 else values for key, values in result.items()}

    def add(self, queue_name: str = DEFAULT_QUEUE, transactional: bool = False) -> Task:
        """Add this task to a queue; see :meth:`Queue.add`."""
        return self.add_async(queue_name, transactional).get_result()

    def add_async(
        self,
        queue_name: str = DEFAULT_QUEUE,
        transactional: bool = False,
        rpc: AddResult[Any] | None = None,
    ) -> AddResult[Task]:
        """Add this task to a queue; ``get_result()`` on the returned object gives the task.

        With ``rpc`` (from ``taskqueue.create_rpc()``) the call fills it and returns it; see
        :meth:`Queue.add_async`.
        """
        result: AddResult[Task] = add_tasks(
            check_queue_name(queue_name),
            [self],
            transactional=transactional,
            multiple=False,
            rpc=rpc,
        )
        return result

    def _record(self, queue_name: str) -> NewTask:
        """This task as the record a backend stores in ``queue_name``."""
        pull = self._method == "PULL"
        url = "" if pull else self._relative_url
        if self._default_url and not pull:
            url = f"{DEFAULT_QUEUE_PATH}/{queue_name}{url}"
        options = self._retry_options
        payload = self._payload
        tag = self._tag
        deadline = self._dispatch_deadline_usec
        return NewTask(
            queue_name=queue_name,
            task_name=self._name,
            method=self._method,
            url=url,
            headers=() if pull else tuple(self.header_list),
            payload=(
                b""
                if payload is None
                else payload.encode()
                if isinstance(payload, str)
                else payload
            ),
            eta=self._eta_posix,
            target=None if self._target is DEFAULT_APP_VERSION else self._target,
            retry=None if options is None else options.to_parameters(),
            tag=tag.decode("utf-8", "surrogateescape") if isinstance(tag, bytes) else tag,
            dispatch_deadline=None if deadline is None else deadline / 1e6,
        )

    def _mark_enqueued(self, queue_name: str, name: str) -> None:
        self._queue_name = queue_name
        self._name = name
        self._enqueued = True

    def _mark_deleted(self, deleted: bool = True) -> None:
        self._deleted = deleted

    def __repr__(self) -> str:
        where = f"tag={self._tag!r}" if self._method == "PULL" else f"url={self._relative_url!r}"
        return (
            f"Task<name={self._name!r}, queue_name={self._queue_name!r}, method={self._method!r}, "
            f"{where}, eta={self.eta.isoformat()!r}, size={self.size}, "
            f"was_enqueued={self._enqueued!r}>"
        )


def _check_dispatch_deadline(usec: object) -> None:
    """App Engine's check of ``dispatch_deadline_usec``: an int from 15 s to 24 h."""
    if not isinstance(usec, int):
        raise TypeError("deadline must be an integer")
    seconds = usec / 1e6
    if seconds > MAX_DISPATCH_DEADLINE.total_seconds():
        raise InvalidDispatchDeadlineError(f"Deadline cannot be more than {MAX_DISPATCH_DEADLINE}")
    if seconds < MIN_DISPATCH_DEADLINE.total_seconds():
        raise InvalidDispatchDeadlineError(f"Deadline cannot be less than {MIN_DISPATCH_DEADLINE}")


def _convert_payload(payload: str | bytes, headers: CaselessDict) -> bytes:
    """The payload as bytes; a non-empty ``str`` is UTF-8 and sets the content type if unset."""
    if isinstance(payload, str):
        if payload:
            headers.setdefault("content-type", "text/plain; charset=utf-8")
        return payload.encode("utf-8")
    if isinstance(payload, (bytes, bytearray, memoryview)):
        return bytes(payload)
    raise InvalidTaskError(f"Task payloads must be strings; invalid payload: {payload!r}")
