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


class TransientError(Error):
    """A temporary failure; the same call may succeed later."""


class InternalError(Error):
    """The queue storage failed in an unexpected way."""


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
    """A push task was added to a pull queue."""


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


__all__ = [
    "BadTaskStateError",
    "BadTransactionStateError",
    "DuplicateTaskNameError",
    "Error",
    "InternalError",
    "InvalidEtaError",
    "InvalidQueueError",
    "InvalidQueueModeError",
    "InvalidQueueNameError",
    "InvalidTaskError",
    "InvalidTaskNameError",
    "InvalidTaskRetryOptionsError",
    "InvalidUrlError",
    "PermissionDeniedError",
    "TaskAlreadyExistsError",
    "TaskTooLargeError",
    "TombstonedTaskError",
    "TooManyTasksError",
    "TransactionalRequestTooLargeError",
    "TransientError",
    "UnknownQueueError",
]
