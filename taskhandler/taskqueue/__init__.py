"""Creating push tasks, the App Engine way, and a local SQLite push queue that delivers them.

The API mirrors ``google.appengine.api.taskqueue``, so code written for it ports by changing
its import::

    from taskhandler import taskqueue
    from taskhandler.taskqueue import LocalTaskQueue, load_queue_yaml

    q = LocalTaskQueue(app, db="tasks.sqlite3", queues=load_queue_yaml("queue.yaml"))
    taskqueue.use(q)                                  # or: with taskqueue.use(q): ...
    taskqueue.add(url="/tasks/count", params={"amount": "1"}, name="count-1")
    q.run_until_idle(timeout=30)                      # tests; q.start() for a server

In production, ``taskqueue.use(CloudTasksBackend(project, location))`` creates Google Cloud
Tasks tasks instead (the ``cloudtasks`` extra; google-cloud-tasks is imported only when a
``CloudTasksBackend`` is made).
"""

from __future__ import annotations

from ._api import Queue as Queue
from ._api import QueueStatistics as QueueStatistics
from ._api import add as add
from ._api import add_async as add_async
from ._api import create_rpc as create_rpc
from ._backend import LeasedTask as LeasedTask
from ._backend import NewTask as NewTask
from ._backend import PullQueueBackend as PullQueueBackend
from ._backend import TaskQueueBackend as TaskQueueBackend
from ._backend import current_backend as current_backend
from ._backend import use as use
from ._backoff import RetryPolicy as RetryPolicy
from ._clock import ManualClock as ManualClock
from ._dispatch import QUEUE_PEER as QUEUE_PEER
from ._enqueue import MAX_TASKS_PER_ADD as MAX_TASKS_PER_ADD
from ._enqueue import MAX_TRANSACTIONAL_TASKS as MAX_TRANSACTIONAL_TASKS
from ._enqueue import AddResult as AddResult
from ._enqueue import transaction as transaction
from ._errors import BadTaskStateError as BadTaskStateError
from ._errors import BadTransactionState as BadTransactionState
from ._errors import BadTransactionStateError as BadTransactionStateError
from ._errors import DatastoreError as DatastoreError
from ._errors import DuplicateTaskNameError as DuplicateTaskNameError
from ._errors import Error as Error
from ._errors import InternalError as InternalError
from ._errors import InvalidDeadlineError as InvalidDeadlineError
from ._errors import InvalidDispatchDeadlineError as InvalidDispatchDeadlineError
from ._errors import InvalidEtaError as InvalidEtaError
from ._errors import InvalidLeaseTimeError as InvalidLeaseTimeError
from ._errors import InvalidMaxTasksError as InvalidMaxTasksError
from ._errors import InvalidQueueError as InvalidQueueError
from ._errors import InvalidQueueModeError as InvalidQueueModeError
from ._errors import InvalidQueueNameError as InvalidQueueNameError
from ._errors import InvalidTagError as InvalidTagError
from ._errors import InvalidTaskError as InvalidTaskError
from ._errors import InvalidTaskNameError as InvalidTaskNameError
from ._errors import InvalidTaskRetryOptionsError as InvalidTaskRetryOptionsError
from ._errors import InvalidUrlError as InvalidUrlError
from ._errors import PermissionDeniedError as PermissionDeniedError
from ._errors import QueuePausedError as QueuePausedError
from ._errors import TaskAlreadyExistsError as TaskAlreadyExistsError
from ._errors import TaskLeaseExpiredError as TaskLeaseExpiredError
from ._errors import TaskTooLargeError as TaskTooLargeError
from ._errors import TombstonedTaskError as TombstonedTaskError
from ._errors import TooManyTasksError as TooManyTasksError
from ._errors import TransactionalRequestTooLargeError as TransactionalRequestTooLargeError
from ._errors import TransientError as TransientError
from ._errors import UnknownQueueError as UnknownQueueError
from ._local import LocalTaskQueue as LocalTaskQueue
from ._local import QueuedTask as QueuedTask
from ._queue_yaml import QueueConfig as QueueConfig
from ._queue_yaml import RetryParameters as RetryParameters
from ._queue_yaml import describe_queue_yaml as describe_queue_yaml
from ._queue_yaml import describe_queues as describe_queues
from ._queue_yaml import format_rate as format_rate
from ._queue_yaml import load_queue_yaml as load_queue_yaml
from ._queue_yaml import parse_duration as parse_duration
from ._queue_yaml import parse_rate as parse_rate
from ._task import DEFAULT_APP_VERSION as DEFAULT_APP_VERSION
from ._task import DEFAULT_QUEUE as DEFAULT_QUEUE
from ._task import MAX_DISPATCH_DEADLINE as MAX_DISPATCH_DEADLINE
from ._task import MAX_LEASE_SECONDS as MAX_LEASE_SECONDS
from ._task import MAX_PULL_TASK_SIZE_BYTES as MAX_PULL_TASK_SIZE_BYTES
from ._task import MAX_PUSH_TASK_SIZE_BYTES as MAX_PUSH_TASK_SIZE_BYTES
from ._task import MAX_QUEUE_NAME_LENGTH as MAX_QUEUE_NAME_LENGTH
from ._task import MAX_TAG_LENGTH as MAX_TAG_LENGTH
from ._task import MAX_TASK_NAME_LENGTH as MAX_TASK_NAME_LENGTH
from ._task import MAX_TASK_SIZE_BYTES as MAX_TASK_SIZE_BYTES
from ._task import MAX_TASKS_PER_LEASE as MAX_TASKS_PER_LEASE
from ._task import MAX_TRANSACTIONAL_REQUEST_SIZE_BYTES as MAX_TRANSACTIONAL_REQUEST_SIZE_BYTES
from ._task import MAX_URL_LENGTH as MAX_URL_LENGTH
from ._task import MIN_DISPATCH_DEADLINE as MIN_DISPATCH_DEADLINE
from ._task import Task as Task
from ._task import TaskRetryOptions as TaskRetryOptions
from .cloudtasks import CloudTasksBackend as CloudTasksBackend

__all__ = [
    "DEFAULT_APP_VERSION",
    "DEFAULT_QUEUE",
    "MAX_DISPATCH_DEADLINE",
    "MAX_LEASE_SECONDS",
    "MAX_PULL_TASK_SIZE_BYTES",
    "MAX_PUSH_TASK_SIZE_BYTES",
    "MAX_QUEUE_NAME_LENGTH",
    "MAX_TAG_LENGTH",
    "MAX_TASKS_PER_ADD",
    "MAX_TASKS_PER_LEASE",
    "MAX_TASK_NAME_LENGTH",
    "MAX_TASK_SIZE_BYTES",
    "MAX_TRANSACTIONAL_REQUEST_SIZE_BYTES",
    "MAX_TRANSACTIONAL_TASKS",
    "MAX_URL_LENGTH",
    "MIN_DISPATCH_DEADLINE",
    "QUEUE_PEER",
    "AddResult",
    "BadTaskStateError",
    "BadTransactionState",
    "BadTransactionStateError",
    "CloudTasksBackend",
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
    "LeasedTask",
    "LocalTaskQueue",
    "ManualClock",
    "NewTask",
    "PermissionDeniedError",
    "PullQueueBackend",
    "Queue",
    "QueueConfig",
    "QueuePausedError",
    "QueueStatistics",
    "QueuedTask",
    "RetryParameters",
    "RetryPolicy",
    "Task",
    "TaskAlreadyExistsError",
    "TaskLeaseExpiredError",
    "TaskQueueBackend",
    "TaskRetryOptions",
    "TaskTooLargeError",
    "TombstonedTaskError",
    "TooManyTasksError",
    "TransactionalRequestTooLargeError",
    "TransientError",
    "UnknownQueueError",
    "add",
    "add_async",
    "create_rpc",
    "current_backend",
    "describe_queue_yaml",
    "describe_queues",
    "format_rate",
    "load_queue_yaml",
    "parse_duration",
    "parse_rate",
    "transaction",
    "use",
]
