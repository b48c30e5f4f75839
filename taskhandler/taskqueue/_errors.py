"""The task queue error tree, with the names and hierarchy of ``google.appengine.api.taskqueue``.

Code that catches ``taskqueue.TaskAlreadyExistsError`` or ``taskqueue.Error`` keeps working
after its import is changed to ``from taskhandler import taskqueue``.
"""

from __future__ import annotations

from ..exceptions import TaskHandlerError


class Error(TaskHandlerError):
    """Base class of every task queue error."""


class UnknownQueueError(Error):
    """The queue is not ``default`` and is not declared in queue.yaml."""


class _StorageFailure(Error):
    """An error that may come from the local queue's SQLite file: it can name it and the reason."""

    def __init__(
        self, message: str = "", *, path: str | None = None, reason: str | None = None
    ) -> None:
        self.path = path
        self.reason = reason
        super().__init__(message)


class TransientError(_StorageFailure):
    """A temporary failure; the same call may succeed later.

    ``LocalTaskQueue`` raises it when its SQLite file is full (``SQLITE_FULL``), stays locked by
    another connection past the busy timeout (``SQLITE_BUSY``/``SQLITE_LOCKED``), or an I/O error
    occurs (``SQLITE_IOERR``, ``SQLITE_CANTOPEN``, ``SQLITE_NOMEM``, ``SQLITE_PROTOCOL``).
    Nothing was stored.

    Attributes:
        path: the database file, when the local queue's storage failed (else ``None``).
        reason: SQLite's error code name and message, e.g.
            ``"SQLITE_FULL: database or disk is full"`` (else ``None``).
    """


class InternalError(_StorageFailure):
    """The queue storage failed in an unexpected way.

    ``LocalTaskQueue`` raises it for an SQLite failure that retrying will not cure: the file
    became read-only or was deleted or moved (``SQLITE_READONLY``), is corrupt
    (``SQLITE_CORRUPT``, ``SQLITE_NOTADB``), and the like. Nothing was stored.

    Attributes:
        path: the database file, when the local queue's storage failed (else ``None``).
        reason: SQLite's error code name and message (else ``None``).
    """


class InvalidTaskError(Error):
    """A task argument is invalid (method, params with payload, countdown with eta, ...)."""


class InvalidTaskNameError(InvalidTaskError):
    """The task name does not match ``^[a-zA-Z0-9_-]{1,500}$``, or a transactional task is named."""


class TaskTooLargeError(InvalidTaskError):
    """The push task (method, URL, headers and payload) is larger than 100 KiB."""


class TaskAlreadyExistsError(InvalidTaskError):
    """A task with this name is already in the queue and has not finished."""


class TombstonedTaskError(InvalidTaskError):
    """A task with this name finished or was deleted recently (9 days by default)."""


class InvalidUrlError(InvalidTaskError):
    """The task URL is not a relative URL starting with ``/``, or is too long."""


class InvalidEtaError(InvalidTaskError):
    """The ETA is more than 30 days ahead."""


class BadTaskStateError(Error):
    """The task object was already added to a queue."""


class InvalidQueueError(Error):
    """The queue is invalid."""


class InvalidQueueNameError(InvalidQueueError):
    """The queue name does not match ``^[a-zA-Z0-9-]{1,100}$``."""


class InvalidQueueModeError(Error):
    """A pull operation on a push queue or vice versa.

    A push task added to a pull queue, a pull task added to a push queue, ``lease_tasks`` on
    a push queue, or any pull operation on a backend without pull queues
    (``CloudTasksBackend``).
    """


class DuplicateTaskNameError(Error):
    """The same task name appears twice in one ``add()`` call."""


class TooManyTasksError(Error):
    """More than 100 tasks in one ``add()`` call, or more than 5 in one transaction."""


class BadTransactionStateError(Error):
    """A transactional add outside ``with taskqueue.transaction():``, or a nested transaction."""


class InvalidTaskRetryOptionsError(Error):
    """A ``TaskRetryOptions`` value is negative or inconsistent."""


class PermissionDeniedError(Error):
    """The caller may not use this queue (kept for API compatibility; never raised locally)."""


class TransactionalRequestTooLargeError(TaskTooLargeError):
    """The tasks of one transaction are larger than 1 MiB together."""


class DatastoreError(Error):
    """A Datastore error while enqueueing (kept for API compatibility; never raised)."""


class InvalidLeaseTimeError(Error):
    """``lease_seconds`` is negative or longer than a week (``MAX_LEASE_SECONDS``)."""


class InvalidMaxTasksError(Error):
    """``max_tasks`` is not from 1 to 1000 (``MAX_TASKS_PER_LEASE``)."""


class InvalidDeadlineError(Error):
    """The ``deadline`` of a call is zero or negative."""


class TaskLeaseExpiredError(Error):
    """The task's lease could not be changed: it expired, or the task was leased again since."""


class QueuePausedError(Error):
    """The queue is paused and cannot change task leases."""


class InvalidTagError(Error):
    """A pull task's tag is longer than 500 (``MAX_TAG_LENGTH``) or not a string."""


class InvalidDispatchDeadlineError(Error):
    """``dispatch_deadline_usec`` is under 15 seconds or over 24 hours."""


BadTransactionState = BadTransactionStateError
"""App Engine's older name of :class:`BadTransactionStateError`."""


__all__ = [
    "BadTaskStateError",
    "BadTransactionState",
    "BadTransactionStateError",
    "DatastoreError",
    "DuplicateTaskNameError",
    "Error",
    "InternalError",
    "InvalidDeadlineError",
    "InvalidDispatchDeadlineError",
    "InvalidEtaError",
    "InvalidLeaseTimeError",
    "InvalidMaxTasksError",
    "InvalidQueueError",
    "InvalidQueueModeError",
    "InvalidQueueNameError",
    "InvalidTagError",
    "InvalidTaskError",
    "InvalidTaskNameError",
    "InvalidTaskRetryOptionsError",
    "InvalidUrlError",
    "PermissionDeniedError",
    "QueuePausedError",
    "TaskAlreadyExistsError",
    "TaskLeaseExpiredError",
    "TaskTooLargeError",
    "TombstonedTaskError",
    "TooManyTasksError",
    "TransactionalRequestTooLargeError",
    "TransientError",
    "UnknownQueueError",
]
