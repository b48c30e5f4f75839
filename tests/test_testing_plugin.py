"""The pytest plugin: task_app, task_queue, the task_deadline marker, and import hygiene."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytest_plugins = ("pytester",)

CONFTEST = """
import pytest
from taskhandler.context import TaskContext
from taskhandler.deadline import check_deadline
from taskhandler import task_handler
from taskhandler.wsgi import TaskMiddleware

SEEN = []


def app(environ, start_response):
    from taskhandler.context import current_task

    task = current_task()
    SEEN.append(
        {
            "path": environ["PATH_INFO"],
            "task_name": task.task_name if task else None,
            "remaining": task.time_remaining() if task else None,
        }
    )
    if environ["PATH_INFO"] == "/slow":
        while True:
            check_deadline()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


@pytest.fixture
def taskhandler_app():
    SEEN.clear()
    return TaskMiddleware(app)


@pytest.fixture
def seen():
    return SEEN
"""


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST)
    return pytester


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("--strict-markers", "-p", "no:cacheprovider", *args)


def test_task_app_fixture(project: pytest.Pytester) -> None:
    """task_app is a TaskTestApp around the user's taskhandler_app."""
    project.makepyfile(
        """
        from taskhandler.testing import TaskTestApp

        def test_it(task_app, seen):
            assert isinstance(task_app, TaskTestApp)
            assert task_app.post_task("/tasks/x", task_name="t-1").task_outcome == "success"
            assert seen[0]["task_name"] == "t-1"
            assert seen[0]["remaining"] > 500
        """
    )
    run(project).assert_outcomes(passed=1)


def test_task_deadline_marker(project: pytest.Pytester) -> None:
    """@pytest.mark.task_deadline(s) shortens the deadline of task_app requests (and says so)."""
    project.makepyfile(
        """
        import pytest

        @pytest.mark.task_deadline(0.05)
        def test_short(task_app, task_deadline, seen):
            assert task_deadline == 0.05
            res = task_app.post_task("/slow", status=500)
            assert res.task_outcome == "deadline-exceeded"
            assert seen[0]["remaining"] <= 0.045

        def test_unmarked(task_app, task_deadline, seen):
            assert task_deadline is None
            task_app.post_task("/fast")
            assert seen[0]["remaining"] > 500
        """
    )
    run(project).assert_outcomes(passed=2)


@pytest.mark.parametrize(
    "marker",
    [
        pytest.param("task_deadline()", id="no seconds"),
        pytest.param("task_deadline(0)", id="zero"),
        pytest.param("task_deadline('1')", id="text"),
        pytest.param("task_deadline(1, 2)", id="two numbers"),
    ],
)
def test_bad_task_deadline_marker(project: pytest.Pytester, marker: str) -> None:
    """A marker without one positive number fails the test with a message that says so."""
    project.makepyfile(
        f"""
        import pytest

        @pytest.mark.{marker}
        def test_it(task_app):
            pass
        """
    )
    result = run(project)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*task_deadline takes one positive number of seconds*"])


def test_missing_taskhandler_app(pytester: pytest.Pytester) -> None:
    """Using task_app without defining taskhandler_app explains what to define."""
    pytester.makepyfile(
        """
        def test_it(task_app):
            pass
        """
    )
    result = run(pytester)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*define a fixture named `taskhandler_app`*"])


def test_task_queue_fixture(project: pytest.Pytester) -> None:
    """task_queue is installed for taskqueue.add() during the test, and only then."""
    project.makepyfile(
        """
        import pytest
        from taskhandler import taskqueue
        from taskhandler.taskqueue import LocalTaskQueue

        def test_add_and_run(task_queue, seen):
            assert isinstance(task_queue, LocalTaskQueue)
            taskqueue.add(url="/tasks/count", params={"name": "a"}, name="count-a")
            assert [t.task_name for t in task_queue.tasks("default")] == ["count-a"]
            task_queue.run_until_idle(timeout=30)
            assert task_queue.tasks("default") == []
            assert seen == [{"path": "/tasks/count", "task_name": "count-a",
                             "remaining": seen[0]["remaining"]}]
            assert seen[0]["remaining"] > 500

        @pytest.mark.task_deadline(0.05)
        def test_marker_applies_to_the_queue(task_queue, seen):
            taskqueue.add(url="/fast")
            task_queue.run_until_idle(timeout=30)
            assert seen[0]["remaining"] <= 0.045

        def test_uninstalled_after(seen):
            with pytest.raises(taskqueue.Error, match="no task queue is installed"):
                taskqueue.add(url="/tasks/count")
        """
    )
    run(project, "-p", "no:randomly").assert_outcomes(passed=3)


def test_queue_options_fixture(project: pytest.Pytester) -> None:
    """taskhandler_queue_options configures the queue, e.g. queues from a queue.yaml."""
    project.makefile(".yaml", queue="queue:\n- name: mail\n  rate: 10/s\n")
    project.makepyfile(
        """
        import pytest
        from taskhandler import taskqueue
        from taskhandler.taskqueue import load_queue_yaml

        @pytest.fixture
        def taskhandler_queue_options():
            return {"queues": load_queue_yaml("queue.yaml")}

        def test_it(task_queue, seen):
            taskqueue.add(url="/mail", queue_name="mail", name="m-1")
            task_queue.run_until_idle(timeout=30)
            assert seen[0]["task_name"] == "m-1"
            with pytest.raises(taskqueue.UnknownQueueError):
                taskqueue.add(url="/x", queue_name="other")
        """
    )
    run(project).assert_outcomes(passed=1)


def test_as_admin_through_the_fixture(pytester: pytest.Pytester) -> None:
    """taskhandler_sign_in reaches task_app, for an authenticator of the app's own."""
    pytester.makeconftest(
        """
        import pytest
        from taskhandler.config import AccessRule, AppConfig
        from taskhandler.trust import User
        from taskhandler.wsgi import TaskMiddleware

        def ok(environ, start_response):
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok"]

        def header_auth(request):
            email = request.header("x-test-user")
            return User(email=email, is_admin=True) if email else None

        @pytest.fixture
        def taskhandler_app():
            rules = AppConfig(rules=[AccessRule(url="/admin/.*", login="admin")])
            return TaskMiddleware(ok, config=rules, authenticator=header_auth)

        @pytest.fixture
        def taskhandler_sign_in():
            return lambda user: {"X-Test-User": user.email}
        """
    )
    pytester.makepyfile(
        """
        def test_it(task_app):
            task_app.get("/admin/x", status=302)
            task_app.as_admin().get("/admin/x", status=200)
        """
    )
    run(pytester).assert_outcomes(passed=1)


PROBE = """
import importlib, json, pkgutil, sys
import taskhandler
names = [m.name for m in pkgutil.walk_packages(taskhandler.__path__, "taskhandler.")
         if not m.name.startswith("taskhandler.testing")]
for name in names + {extra}:
    importlib.import_module(name)
print(json.dumps(sorted(m for m in sys.modules
                        if m.split(".")[0] in ("pytest", "_pytest", "webtest", "pluggy"))))
"""


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param([], id="taskhandler and every module outside testing"),
        pytest.param(["taskhandler.testing"], id="the testing package itself, before first use"),
    ],
)
def test_importing_taskhandler_never_imports_pytest_or_webtest(extra: list[str]) -> None:
    """import taskhandler (any module of it) leaves pytest and webtest unimported."""
    probe = textwrap.dedent(PROBE).format(extra=repr(extra))
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(out.stdout) == []


def test_testing_names_load_on_first_use() -> None:
    """taskhandler.testing exports its names lazily; an unknown name is an AttributeError."""
    import taskhandler.testing as testing

    assert testing.TaskTestApp.__name__ == "TaskTestApp"
    assert issubclass(testing.IdempotencyError, AssertionError)
    assert set(testing.__all__) <= set(dir(testing))
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        testing.nothing  # noqa: B018
