"""The error tree: one base, narrow subclasses that carry what is needed to debug.

``DeadlineExceededError`` stands apart: it derives from ``BaseException`` so that
``except Exception`` does not swallow it (see :mod:`taskhandler.deadline`).
"""

from __future__ import annotations


class TaskHandlerError(Exception):
    """Base class of every error taskhandler raises on purpose."""


class ConfigError(TaskHandlerError, ValueError):
    """A configuration value (argument, app.yaml, web.xml, queue.yaml) is invalid.

    Raised at construction or load time, never while serving a request.

    Attributes:
        message: what is wrong, in one sentence.
        path: the file the value came from, when it came from a file.
        line: the 1-based line in that file, when the parser knows it.
        value: the offending value, when there is one.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        line: int | None = None,
        value: object = None,
    ) -> None:
        self.message = message
        self.path = None if path is None else str(path)
        self.line = line
        self.value = value
        where = ""
        if self.path is not None:
            where = self.path if line is None else f"{self.path}:{line}"
            where += ": "
        super().__init__(f"{where}{message}")


class InvalidTaskHeaders(TaskHandlerError, ValueError):
    """A task header from a trusted source has a value that cannot be believed.

    The middleware answers such a request with 400 and the app never runs.

    Attributes:
        header: the canonical header name, e.g. ``X-AppEngine-TaskRetryCount``.
        value: the raw value received (``None`` when a required header is missing).
        reason: why it was refused, in a few words.
    """

    def __init__(self, header: str, value: str | None, reason: str) -> None:
        self.header = header
        self.value = value
        self.reason = reason
        shown = "missing" if value is None else repr(value)
        super().__init__(f"{header}: {reason} (got {shown})")


class RetryTask(TaskHandlerError):
    """Raise in a handler to fail this attempt so the queue retries the task.

    Args:
        reason: logged with the outcome.
        status: the non-2xx status to answer with (default 500; 503 or 429 also ask the
            queue to slow down).
    """

    def __init__(self, reason: str = "", *, status: int = 500) -> None:
        if not 300 <= status <= 599:
            raise ValueError(f"RetryTask status must be a non-2xx HTTP status, got {status}")
        self.reason = reason
        self.status = status
        super().__init__(reason)


class PermanentTaskFailure(TaskHandlerError):
    """Raise in a handler when a retry cannot help: the task is acknowledged (200) and dropped.

    Logged at ERROR; the handler's ``on_permanent_failure`` hook is called.
    """

    def __init__(self, reason: str = "") -> None:
        self.reason = reason
        super().__init__(reason)


class DeadlineExceededError(BaseException):
    """Raised inside a task handler shortly before its deadline, so it can save its work.

    Derives from ``BaseException``: ``except Exception`` does not swallow it, and ``finally``
    blocks run as it propagates. Raised ``grace`` seconds before the task deadline, and once
    more at the deadline itself if the handler is still running.

    Example::

        try:
            for item in work:
                process(item)
        except DeadlineExceededError:
            save_cursor(item)      # a few seconds left: record progress, then fail
            raise                  # the queue retries the task
    """

    def __init__(self, *args: object) -> None:
        super().__init__(*(args or ("the task deadline is near: save your work and return",)))
