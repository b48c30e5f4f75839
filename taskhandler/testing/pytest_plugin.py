"""The taskhandler pytest plugin, loaded through the ``pytest11`` entry point.

Fixtures, all function-scoped:

- ``task_app`` -- a :class:`~taskhandler.testing.TaskTestApp` around your app.
- ``task_queue`` -- a ``LocalTaskQueue`` in memory delivering to your app, installed as the
  backend ``taskqueue.add()`` uses for the test's duration.
- ``task_deadline`` -- the seconds given by ``@pytest.mark.task_deadline(seconds)``, or
  ``None``. Under the marker, every task request of ``task_app`` and ``task_queue`` runs
  with that task deadline (the grace is a tenth of it), so deadline handling is tested in
  milliseconds.

Fixtures you define (in a ``conftest.py``) to configure them:

- ``taskhandler_app`` (required) -- returns the WSGI app under test.
- ``taskhandler_sign_in`` -- ``user -> headers`` for ``task_app.as_admin()`` when the app's
  authenticator is not a ``SignedCookieAuth`` (default ``None``).
- ``taskhandler_queue_options`` -- keyword arguments for ``LocalTaskQueue`` (``queues=``,
  ``clock=``, ...; default none).

Example::

    @pytest.fixture
    def taskhandler_app():
        return TaskMiddleware(make_app())

    def test_count(task_app):
        assert task_app.post_task("/tasks/count").task_outcome == "success"

webtest and the queue are imported when a fixture is first used, so this plugin costs
nothing in test runs that do not use it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from ..taskqueue import LocalTaskQueue
    from ._app import SignIn, TaskTestApp

__all__ = [
    "task_app",
    "task_deadline",
    "task_queue",
    "taskhandler_app",
    "taskhandler_queue_options",
    "taskhandler_sign_in",
]

_MARKER = "task_deadline"


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``task_deadline`` marker (so ``--strict-markers`` accepts it)."""
    config.addinivalue_line(
        "markers",
        f"{_MARKER}(seconds): run this test's task requests (task_app, task_queue) under a "
        "task deadline of that many seconds",
    )


@pytest.fixture
def taskhandler_app() -> Any:
    """The WSGI app under test. Define this fixture yourself; this one only explains that."""
    pytest.fail(
        "define a fixture named `taskhandler_app` returning your WSGI app (for instance in "
        "conftest.py) to use the task_app and task_queue fixtures",
        pytrace=False,
    )


@pytest.fixture
def taskhandler_sign_in() -> SignIn | None:
    """``user -> headers`` that sign a client in; ``None`` mints ``SignedCookieAuth`` cookies."""
    return None


@pytest.fixture
def taskhandler_queue_options() -> Mapping[str, Any]:
    """Keyword arguments for the ``task_queue`` ``LocalTaskQueue`` (``queues=``, ``clock=``)."""
    return {}


@pytest.fixture
def task_deadline(request: pytest.FixtureRequest) -> float | None:
    """The seconds of ``@pytest.mark.task_deadline(seconds)`` on this test, else ``None``."""
    marker = request.node.get_closest_marker(_MARKER)
    if marker is None:
        return None
    args = list(marker.args) + list(marker.kwargs.values())
    seconds = args[0] if len(args) == 1 else None
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds > 0:
        pytest.fail(
            f"@pytest.mark.{_MARKER} takes one positive number of seconds, "
            f"not {marker.args!r} {marker.kwargs!r}",
            pytrace=False,
        )
    from ._app import _deadline_pair

    _deadline_pair(seconds)  # ConfigError now for a value the middleware would refuse
    return float(seconds)


@pytest.fixture
def task_app(
    taskhandler_app: Any,
    taskhandler_sign_in: SignIn | None,
    task_deadline: float | None,
) -> TaskTestApp:
    """A ``TaskTestApp`` around ``taskhandler_app`` (``post_task``, ``as_admin``, ...)."""
    from ._app import TaskTestApp

    return TaskTestApp(taskhandler_app, sign_in=taskhandler_sign_in, deadline=task_deadline)


@pytest.fixture
def task_queue(
    taskhandler_app: Any,
    taskhandler_queue_options: Mapping[str, Any],
    task_deadline: float | None,
) -> Iterator[LocalTaskQueue]:
    """A ``LocalTaskQueue`` in memory, delivering to ``taskhandler_app``, installed for the test.

    ``taskqueue.add()`` puts tasks in it; ``task_queue.run_until_idle()`` delivers them.
    """
    from .. import taskqueue
    from ..taskqueue import LocalTaskQueue

    target = taskhandler_app
    if task_deadline is not None and not _is_async(taskhandler_app):
        target = _with_deadline(taskhandler_app, task_deadline)
    options = dict(taskhandler_queue_options)
    options.setdefault("db", ":memory:")
    with LocalTaskQueue(target, **options) as queue, taskqueue.use(queue):
        yield queue


def _is_async(app: Any) -> bool:
    # An async def function, or an object with async def __call__ (ASGI).
    call = type(app).__call__ if not inspect.isroutine(app) else app
    return inspect.iscoroutinefunction(app) or inspect.iscoroutinefunction(call)


def _with_deadline(app: Any, seconds: float) -> Callable[..., Iterable[bytes]]:
    """``app`` with every request run under a task deadline of ``seconds``."""
    from ..wsgi import DEADLINE_KEY
    from ._app import _deadline_pair

    pair = _deadline_pair(seconds)

    def wrapped(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        environ[DEADLINE_KEY] = pair
        result: Iterable[bytes] = app(environ, start_response)
        return result

    return wrapped
