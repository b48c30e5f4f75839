"""Attack 1: task headers from a stranger, in every spelling, through every server and proxy.

SPEC §3: an untrusted request loses every ``X-AppEngine-*``/``X-CloudTasks-*`` header (any
case, ``-`` or ``_``, any number of copies) before the app sees it. Verdict from the record:
the task view (``/tasks/run``, ``login: admin``) never runs, and ``/public/echo`` runs
without a TaskContext and without any task header in any spelling.
"""

from __future__ import annotations

import pytest

from tests.security.harness import MAIN, PROXIED, PROXIES, SETS_XFF, Target, build, cases
from tests.security.launch import Fleet

pytestmark = pytest.mark.slow

SPELLINGS = [
    ("canonical", b"X-AppEngine-QueueName: default\r\nX-AppEngine-TaskName: t1\r\n"),
    ("lower", b"x-appengine-queuename: default\r\nx-appengine-taskname: t1\r\n"),
    ("upper", b"X-APPENGINE-QUEUENAME: default\r\nX-APPENGINE-TASKNAME: t1\r\n"),
    ("underscores", b"X_AppEngine_QueueName: default\r\nX_AppEngine_TaskName: t1\r\n"),
    ("mixed-separators", b"X-AppEngine_QueueName: default\r\nX_AppEngine-TaskName: t1\r\n"),
    (
        "duplicates",
        b"X-AppEngine-QueueName: default\r\nX-AppEngine-QueueName: default\r\n"
        b"X-AppEngine-TaskName: t1\r\nX-AppEngine-TaskName: t1\r\n",
    ),
    (
        "dash-and-underscore",
        b"X_AppEngine_QueueName: default\r\nX-AppEngine-QueueName: default\r\n"
        b"X_AppEngine_TaskName: t1\r\nX-AppEngine-TaskName: t1\r\n",
    ),
    ("cloudtasks", b"X-CloudTasks-QueueName: default\r\nX-CloudTasks-TaskName: t1\r\n"),
    ("cloudtasks-underscores", b"x_cloudtasks_queuename: default\r\nx_cloudtasks_taskname: t1\r\n"),
    ("no-space", b"X-AppEngine-QueueName:default\r\nX-AppEngine-TaskName:t1\r\n"),
    ("tabs", b"X-AppEngine-QueueName:\tdefault\t\r\nX-AppEngine-TaskName: \tt1\r\n"),
    (
        "platform-admin-claim",
        b"X-AppEngine-User-Is-Admin: 1\r\nX-AppEngine-User-IP: 0.1.0.2\r\n"
        b"X-AppEngine-QueueName: default\r\nX-AppEngine-TaskName: t1\r\n",
    ),
]

TASK_PREFIXES = ("x-appengine", "x_appengine", "x-cloudtasks", "x_cloudtasks")


def _task_names(entry: dict[str, object]) -> list[str]:
    """Every task header name the app could see: parsed names, raw ASGI names, environ keys."""
    names: list[str] = []
    for key in ("headers", "raw_names", "environ_keys"):
        for name in entry.get(key) or []:  # type: ignore[attr-defined]
            folded = str(name).lower().removeprefix("http_").replace("_", "-")
            if folded.startswith(("x-appengine", "x-cloudtasks")):
                names.append(str(name))
    return names


@pytest.mark.parametrize(
    ("backend_id", "proxy", "spelling"),
    [
        *cases(MAIN, PROXIES, SPELLINGS),
        *cases(PROXIED, ("direct", *SETS_XFF), SPELLINGS),
    ],
)
def test_stranger_task_headers_are_stripped(
    fleet: Fleet, backend_id: str, proxy: str, spelling: bytes
) -> None:
    """A stranger's task headers never make a task: the task view stays shut, echo sees none."""
    target = Target.of(fleet, backend_id, proxy)
    target.assert_stranger_kept_out(build("/tasks/run", spelling, case="task"), "GET /tasks/run")
    answer, entries = target.exchange(build("/public/echo", spelling, case="echo"))
    echo = [e for e in entries if e["view"] == "echo"]
    assert [e["task"] for e in echo] == [None] * len(echo), (
        f"{backend_id} behind {proxy}: /public/echo saw a task: {echo}"
    )
    leaked = [name for e in echo for name in _task_names(e)]
    assert not leaked, f"{backend_id} behind {proxy}: the app saw task headers {leaked}"
    if answer.status == 200:
        assert echo, f"{backend_id} behind {proxy}: /public/echo answered 200 but recorded nothing"
