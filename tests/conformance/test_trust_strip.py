"""Trust and stripping, proven on both middlewares (SPEC §2-3): who may send task headers,
what every other request loses, and which trusted values are refused with 400."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from taskhandler.trust import TrustPolicy, User

from .harness import Adapter, Request

QUEUE = "0.1.0.2"
STRANGER = "203.0.113.9"
TASK = [("X-AppEngine-QueueName", "default"), ("X-AppEngine-TaskName", "task-1")]


@pytest.mark.parametrize(
    ("headers", "stripped"),
    [
        pytest.param(
            [("X-AppEngine-QueueName", "default")], ["x-appengine-queuename"], id="queue name"
        ),
        pytest.param(
            TASK, ["x-appengine-queuename", "x-appengine-taskname"], id="queue and task name"
        ),
        pytest.param(
            [("X-AppEngine-TaskRetryCount", "0")], ["x-appengine-taskretrycount"], id="retry count"
        ),
        pytest.param(
            [("X-AppEngine-TaskETA", "1700000000.0")], ["x-appengine-tasketa"], id="eta alone"
        ),
        pytest.param([("X-AppEngine-FailFast", "true")], ["x-appengine-failfast"], id="fail fast"),
        pytest.param(
            [("X-CloudTasks-QueueName", "q"), ("X-CloudTasks-TaskName", "t")],
            ["x-cloudtasks-queuename", "x-cloudtasks-taskname"],
            id="cloud tasks pair",
        ),
        pytest.param(
            [("X-AppEngine-User-Is-Admin", "1")], ["x-appengine-user-is-admin"], id="admin claim"
        ),
        pytest.param([("X-AppEngine-User-IP", QUEUE)], ["x-appengine-user-ip"], id="user IP claim"),
        pytest.param([("X-AppEngine-Country", "ZZ")], ["x-appengine-country"], id="country"),
        pytest.param([("X-AppEngine-Cron", "true")], ["x-appengine-cron"], id="cron claim"),
        pytest.param(
            [("X-AppEngine-Anything", "x")], ["x-appengine-anything"], id="unknown suffix"
        ),
        pytest.param([("x-appengine-queuename", "q")], ["x-appengine-queuename"], id="lower case"),
        pytest.param([("X-APPENGINE-QUEUENAME", "q")], ["x-appengine-queuename"], id="upper case"),
        pytest.param(
            [("x_appengine_queuename", "q")], ["x-appengine-queuename"], id="underscore spelling"
        ),
        pytest.param(
            [("X_AppEngine-TaskName", "t")], ["x-appengine-taskname"], id="mixed _ and - spelling"
        ),
        pytest.param(
            [("x_cloudtasks_taskname", "t")], ["x-cloudtasks-taskname"], id="cloud tasks underscore"
        ),
        pytest.param(
            [("X-AppEngine-QueueName", "a"), ("X-AppEngine-QueueName", "b")],
            ["x-appengine-queuename"],
            id="duplicate lines",
        ),
        pytest.param(
            [("X-AppEngine-QueueName", "a"), ("x_appengine_queuename", "b")],
            ["x-appengine-queuename"],
            id="dash and underscore copies",
        ),
        pytest.param(
            [*TASK, ("X-AppEngine-TaskName", "t2"), ("x_appengine_taskname", "t3")],
            ["x-appengine-queuename", "x-appengine-taskname"],
            id="three copies of one name",
        ),
        pytest.param([("X-AppEngine-QueueName", "q\x01")], ["x-appengine-queuename"], id="control"),
        pytest.param([*TASK, ("X-Forwarded-For", QUEUE)], None, id="X-Forwarded-For claims queue"),
        pytest.param([*TASK, ("Forwarded", f"for={QUEUE}")], None, id="Forwarded claims queue"),
        pytest.param([*TASK, ("X-Real-IP", QUEUE)], None, id="X-Real-IP claims the queue"),
    ],
)
def test_untrusted_requests_lose_every_task_header(
    adapter: Adapter, headers: list[tuple[str, str]], stripped: list[str] | None
) -> None:
    """A stranger's task headers, any spelling or count, are removed and recorded; the app runs."""
    result = adapter.run(Request(headers=[*headers, ("X-Other", "kept")], peer=STRANGER))
    assert result.status == 200
    assert result.outcome is None
    assert result.seen is not None
    assert result.seen.task_headers() == {}
    assert result.seen.headers["x-other"] == "kept"
    assert result.seen.task is None
    expected = stripped or ["x-appengine-queuename", "x-appengine-taskname"]
    assert result.seen.stripped == expected
    assert result.seen.state is not None
    assert result.seen.state.stripped == tuple(expected)


def test_plain_request_is_untouched(adapter: Adapter) -> None:
    """A request without task headers reaches the app as sent, with no stripped record."""
    result = adapter.run(Request(headers=[("X-Other", "a"), ("X-Other", "b")]))
    assert result.status == 200
    assert result.seen is not None
    assert result.seen.headers["x-other"] == "a,b"
    assert result.seen.stripped is None
    assert result.seen.task is None
    assert result.seen.state is not None
    assert result.seen.state.trusted_by is None


@pytest.mark.parametrize(
    ("trust", "peer", "extra", "trusted_by"),
    [
        pytest.param(TrustPolicy(), QUEUE, [], "queue", id="queue address"),
        pytest.param(TrustPolicy(), f"::ffff:{QUEUE}", [], "queue", id="mapped queue address"),
        pytest.param(TrustPolicy(["10.8.0.0/16"]), "10.8.3.4", [], "queue", id="queue CIDR"),
        pytest.param(
            TrustPolicy(trusted_proxies=["127.0.0.1"], proxy_drops_underscore_headers=True),
            "127.0.0.1",
            [("X-Forwarded-For", QUEUE)],
            "queue",
            id="queue behind trusted proxy",
        ),
        pytest.param(
            TrustPolicy(trusted_proxies=["127.0.0.0/8"], proxy_drops_underscore_headers=True),
            "127.0.0.1",
            [("X-Forwarded-For", f"{STRANGER}, {QUEUE}, 127.0.0.2")],
            "queue",
            id="walk right to left over proxies",
        ),
        pytest.param(
            TrustPolicy(trusted_proxies=["127.0.0.1"], proxy_drops_underscore_headers=True),
            "127.0.0.1",
            [("X-Forwarded-For", "198.51.100.1"), ("X-Forwarded-For", QUEUE)],
            "queue",
            id="two X-Forwarded-For lines read as one list",
        ),
        pytest.param(TrustPolicy.development(), STRANGER, [], "development", id="development"),
        pytest.param(TrustPolicy.app_engine(), "169.254.8.1", [], "platform", id="app engine"),
        pytest.param(
            TrustPolicy.app_engine(),
            "169.254.8.1",
            [("X-AppEngine-User-IP", QUEUE)],
            "queue",
            id="app engine queue by user IP",
        ),
    ],
)
def test_trusted_requests_keep_headers_and_get_a_context(
    adapter: Adapter,
    trust: TrustPolicy,
    peer: str,
    extra: list[tuple[str, str]],
    trusted_by: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A trusted source keeps its task headers and the app runs with the parsed context."""
    caplog.set_level(logging.INFO, "taskhandler")
    result = adapter.run(Request(headers=[*TASK, *extra], peer=peer), trust=trust)
    assert result.status == 200
    assert result.outcome == "success"
    assert result.seen is not None
    assert result.seen.stripped is None
    assert result.seen.task_headers()["x-appengine-taskname"] == "task-1"
    assert result.seen.task is not None
    assert (result.seen.task.queue_name, result.seen.task.task_name) == ("default", "task-1")
    assert result.seen.task.trusted_by == trusted_by


@pytest.mark.parametrize(
    ("trust", "peer", "extra"),
    [
        pytest.param(TrustPolicy(), STRANGER, [], id="stranger"),
        pytest.param(TrustPolicy(), None, [], id="no peer address"),
        pytest.param(TrustPolicy(), "0.1.0.3", [], id="neighbour of the queue"),
        pytest.param(TrustPolicy(), "0.1.0.2.nip.io", [], id="name that starts like the queue"),
        pytest.param(
            TrustPolicy(trusted_proxies=["127.0.0.1"]),
            STRANGER,
            [("X-Forwarded-For", QUEUE)],
            id="X-Forwarded-For from an untrusted proxy",
        ),
        pytest.param(
            TrustPolicy(trusted_proxies=["127.0.0.1"]),
            "127.0.0.1",
            [("X-Forwarded-For", f"{QUEUE}, {STRANGER}")],
            id="queue address left of a stranger",
        ),
        pytest.param(
            TrustPolicy(trusted_proxies=["127.0.0.1"]),
            "127.0.0.1",
            [("X_Forwarded_For", STRANGER)],
            id="underscore X-Forwarded-For names a stranger",
        ),
    ],
)
def test_spoofing_table(
    adapter: Adapter, trust: TrustPolicy, peer: str | None, extra: list[tuple[str, str]]
) -> None:
    """Every way of pretending to be the queue ends with the headers stripped and no context."""
    result = adapter.run(Request(headers=[*TASK, *extra], peer=peer), trust=trust)
    assert result.status == 200
    assert result.seen is not None
    assert result.seen.task is None
    assert result.seen.task_headers() == {}
    assert result.seen.stripped is not None
    stripped = [name for name in result.seen.stripped if "appengine" in name]
    assert stripped == ["x-appengine-queuename", "x-appengine-taskname"]


@pytest.mark.parametrize(
    ("headers", "fragment"),
    [
        pytest.param(
            [*TASK, ("X-AppEngine-TaskRetryCount", "-1")], "TaskRetryCount", id="negative"
        ),
        pytest.param([*TASK, ("X-AppEngine-TaskRetryCount", "+1")], "TaskRetryCount", id="plus"),
        pytest.param([*TASK, ("X-AppEngine-TaskRetryCount", "1e3")], "TaskRetryCount", id="exp"),
        pytest.param([*TASK, ("X-AppEngine-TaskRetryCount", " 1")], "TaskRetryCount", id="space"),
        pytest.param(
            [*TASK, ("X-AppEngine-TaskRetryCount", "\u0661".encode().decode("latin-1"))],
            "TaskRetryCount",
            id="arabic-indic digit bytes",
        ),
        pytest.param(
            [*TASK, ("X-AppEngine-TaskExecutionCount", "12345678901")],
            "TaskExecutionCount",
            id="eleven digits",
        ),
        pytest.param([*TASK, ("X-AppEngine-TaskETA", "soon")], "TaskETA", id="bad eta"),
        pytest.param([*TASK, ("X-AppEngine-TaskETA", "1.2.3")], "TaskETA", id="eta two dots"),
        pytest.param([("X-AppEngine-TaskName", "t")], "QueueName", id="missing queue name"),
        pytest.param([("X-AppEngine-QueueName", "q")], "TaskName", id="missing task name"),
        pytest.param(
            [("X-AppEngine-QueueName", "a b"), ("X-AppEngine-TaskName", "t")],
            "QueueName",
            id="space in queue name",
        ),
        pytest.param(
            [*TASK, ("X-AppEngine-QueueName", "other")], "QueueName", id="duplicate queue name"
        ),
        pytest.param(
            [*TASK, ("x_appengine_taskname", "task-2")], "TaskName", id="underscore duplicate"
        ),
        pytest.param(
            [*TASK, ("X-AppEngine-TaskRetryCount", "1"), ("X-AppEngine-TaskRetryCount", "1")],
            "TaskRetryCount",
            id="same value twice",
        ),
        pytest.param(
            [*TASK, ("X-AppEngine-TaskRetryReason", "caf\xe9")],
            "TaskRetryReason",
            id="non-ASCII reason",
        ),
        pytest.param(
            [*TASK, ("X-AppEngine-TaskRetryReason", "a\x7fb")],
            "TaskRetryReason",
            id="DEL in reason",
        ),
        pytest.param(
            [*TASK, ("X-CloudTasks-TaskRetryCount", "1"), ("X-AppEngine-TaskRetryCount", "2")],
            "RetryCount",
            id="families disagree",
        ),
    ],
)
def test_trusted_request_with_bad_headers_gets_400_and_app_never_runs(
    adapter: Adapter, headers: list[tuple[str, str]], fragment: str
) -> None:
    """A trusted request with an unbelievable task header is refused with a one-line 400."""
    result = adapter.run(Request(headers=headers, peer=QUEUE))
    assert result.status == 400
    assert result.seen is None
    assert result.outcome == "rejected"
    assert fragment in result.body.decode()
    assert result.body.count(b"\n") == 1


class HeaderUser:
    """Signs in whoever ``X-Test-User`` names (``!`` suffix: an admin); a test authenticator."""

    def __call__(self, request: Any, /) -> User | None:
        value = request.header("x-test-user")
        if not value:
            return None
        return User(email=value.rstrip("!"), is_admin=value.endswith("!"))


@pytest.mark.parametrize(
    ("user", "trusted_by", "stripped"),
    [
        pytest.param("root@example.com!", "admin", None, id="admin keeps headers"),
        pytest.param(
            "bob@example.com", None, ["x-appengine-queuename", "x-appengine-taskname"], id="user"
        ),
        pytest.param(None, None, ["x-appengine-queuename", "x-appengine-taskname"], id="anonymous"),
    ],
)
def test_admin_may_send_task_headers_others_may_not(
    adapter: Adapter, user: str | None, trusted_by: str | None, stripped: list[str] | None
) -> None:
    """Only a signed-in administrator may send task headers from an untrusted address."""
    extra = [] if user is None else [("X-Test-User", user)]
    result = adapter.run(
        Request(headers=[*TASK, *extra], peer=STRANGER), authenticator=HeaderUser()
    )
    assert result.status == 200
    assert result.seen is not None
    assert result.seen.stripped == stripped
    task = result.seen.task
    assert (task.trusted_by if task is not None else None) == trusted_by
