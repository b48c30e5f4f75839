"""``TaskContext``: what the queue said about the task being handled (SPEC §2).

Pure: standard library and pydantic only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import Annotated, Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from .headers import APPENGINE, CLOUDTASKS, FIELD_SUFFIXES, collect, format_eta, parse_task_fields
from .trust import TrustedBy

__all__ = ["TaskContext", "current_task"]

TaskName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,500}$")]
Count = Annotated[int, Field(ge=0, le=9_999_999_999)]


class _Deadline(Protocol):
    def remaining(self) -> float: ...


class TaskContext(BaseModel):
    """The task being handled, built only from headers the middleware decided to trust.

    Immutable. Equality and hashing compare what the queue said about the task (every
    field but ``trusted_by``): two deliveries of one attempt are the same task however
    this process came to believe them, and ``from_headers(ctx.to_headers()) == ctx``.

    Example::

        ctx = TaskContext.from_headers({"X-AppEngine-QueueName": "default",
                                        "X-AppEngine-TaskName": "count-1"})
        ctx.is_first_attempt  # True
    """

    # The request's deadline, set by the adapter that arms it (see _attach_deadline): a
    # plain slot, not a pydantic private attribute, which would cost every context built
    # a Python-level __init__ step.
    __slots__ = ("_deadline",)

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    queue_name: TaskName
    task_name: TaskName
    retry_count: Count = 0
    execution_count: Count = 0
    eta: datetime | None = None
    previous_response: Count | None = None
    retry_reason: str | None = None
    fail_fast: bool = False
    trusted_by: TrustedBy = "queue"

    @field_validator("eta")
    @classmethod
    def _aware_utc(cls, value: datetime | None) -> datetime | None:
        if value is None or value.tzinfo is timezone.utc:  # as parsed from a header
            return value
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("eta must be timezone-aware")
        return value.astimezone(timezone.utc)

    @field_validator("retry_reason")
    @classmethod
    def _header_safe(cls, value: str | None) -> str | None:
        if value is not None and not (value.isascii() and value.isprintable() and "," not in value):
            raise ValueError("retry_reason must be printable ASCII without commas")
        return value

    @classmethod
    def from_headers(
        cls,
        headers: Mapping[str, str] | Iterable[tuple[str, str]],
        *,
        trusted_by: TrustedBy = "queue",
    ) -> TaskContext:
        """Parse task headers: the one place they are parsed (SPEC §2).

        Args:
            headers: a mapping or ``(name, value)`` pairs; names in any case, with
                ``X-AppEngine-`` or ``X-CloudTasks-``; a name given twice (in any spelling)
                is two header lines, which the parser refuses.
            trusted_by: how the caller came to believe the headers.

        Raises:
            InvalidTaskHeaders: a ``ValueError`` naming the header and the bad value.
        """
        # Pairs as the adapters pass them (a tuple) are told apart first: the Mapping check
        # is an ABC lookup that costs a microsecond for a tuple.
        pairs: Iterable[tuple[str, str]]
        if isinstance(headers, tuple | list) or not isinstance(headers, Mapping):
            pairs = headers
        else:
            pairs = headers.items()
        fields = parse_task_fields(collect(pairs))
        fields["trusted_by"] = trusted_by
        return cls.model_validate(fields)

    def to_headers(self, *, cloud_tasks: bool = False) -> dict[str, str]:
        """The headers a queue sends for this task (``X-CloudTasks-*`` for HTTP targets)."""
        prefix = CLOUDTASKS if cloud_tasks else APPENGINE
        out = {
            prefix + FIELD_SUFFIXES["queue_name"]: self.queue_name,
            prefix + FIELD_SUFFIXES["task_name"]: self.task_name,
            prefix + FIELD_SUFFIXES["retry_count"]: str(self.retry_count),
            prefix + FIELD_SUFFIXES["execution_count"]: str(self.execution_count),
        }
        if self.eta is not None:
            out[prefix + FIELD_SUFFIXES["eta"]] = format_eta(self.eta)
        if self.previous_response is not None:
            out[prefix + FIELD_SUFFIXES["previous_response"]] = str(self.previous_response)
        if self.retry_reason is not None:
            out[prefix + FIELD_SUFFIXES["retry_reason"]] = self.retry_reason
        if self.fail_fast and not cloud_tasks:
            out[prefix + FIELD_SUFFIXES["fail_fast"]] = "true"
        return out

    @property
    def is_first_attempt(self) -> bool:
        """True on the first delivery (``retry_count == 0``)."""
        return self.retry_count == 0

    def time_remaining(self) -> float | None:
        """Seconds until the soft deadline (when ``DeadlineExceededError`` is raised), or None."""
        deadline = self._armed_deadline()
        if deadline is None:
            return None
        return max(0.0, deadline.remaining())

    def _armed_deadline(self) -> _Deadline | None:
        """The deadline armed for this task's request, or ``None`` (not run by a middleware)."""
        deadline: _Deadline | None = getattr(self, "_deadline", None)
        return deadline

    def __copy__(self) -> TaskContext:
        copy = super().__copy__()  # model_copy() too: the copy keeps the request's deadline
        deadline = self._armed_deadline()
        if deadline is not None:
            copy._attach_deadline(deadline)
        return copy

    def _attach_deadline(self, deadline: _Deadline) -> None:
        """Let :meth:`time_remaining` read ``deadline`` (the adapters call it when they arm)."""
        object.__setattr__(self, "_deadline", deadline)  # frozen: the model's own refuses

    def _key(self) -> tuple[Any, ...]:
        return (
            self.queue_name,
            self.task_name,
            self.retry_count,
            self.execution_count,
            self.eta,
            self.previous_response,
            self.retry_reason,
            self.fail_fast,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TaskContext):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())


_current: ContextVar[TaskContext | None] = ContextVar("taskhandler_current_task", default=None)


def current_task() -> TaskContext | None:
    """The context of the task request handled in this thread or asyncio task, else None."""
    return _current.get()
