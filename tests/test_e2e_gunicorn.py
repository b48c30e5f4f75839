"""End to end: the Flask example under gunicorn on 127.0.0.1, real HTTP, spoofed and trusted headers."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.servers import raw_request, serve, status_of

pytestmark = pytest.mark.slow

SPOOF = {
    "X-AppEngine-QueueName": "default",
    "X-AppEngine-TaskName": "spoofed-1",
    "X-AppEngine-TaskRetryCount": "0",
    "X-AppEngine-TaskExecutionCount": "0",
}


def _state(base: str) -> dict[str, object]:
    return httpx.get(f"{base}/state", timeout=10).json()


@pytest.mark.parametrize(
    "threads", [pytest.param("1", id="sync worker"), pytest.param("4", id="gthread worker")]
)
def test_spoofed_headers_from_loopback_are_stripped_by_default(
    tmp_path: Path, threads: str
) -> None:
    """From 127.0.0.1 the task headers are stripped: the task URL answers like any stranger's request."""
    env = {"EXAMPLE_DB": str(tmp_path / "app.sqlite3")}
    with serve(
        "gunicorn", "examples.flask_style.main:app", extra=["--threads", threads], env=env
    ) as base:
        response = httpx.post(
            f"{base}/tasks/count",
            data={"counter": "c", "amount": "5"},
            headers=SPOOF,
            timeout=10,
            follow_redirects=False,
        )
        # login: admin, nobody signed in -> sign-in redirect; the handler never ran.
        assert response.status_code == 302
        assert "/_ah/login" in response.headers["location"]
        assert "X-Task-Outcome" not in response.headers
        assert _state(base)["counters"] == {}


def test_underscore_and_duplicate_spellings_on_a_raw_socket(tmp_path: Path) -> None:
    """Underscore-spelled and repeated task headers sent raw never reach the handler."""
    env = {"EXAMPLE_DB": str(tmp_path / "app.sqlite3"), "EXAMPLE_QUEUE_SOURCES": "0.1.0.2"}
    with serve("gunicorn", "examples.flask_style.main:app", env=env) as base:
        body = b"counter=c&amount=5"
        for spelling in (
            b"X_AppEngine_QueueName: default\r\nX_AppEngine_TaskName: t1\r\n",
            b"X-AppEngine-QueueName: default\r\nX-AppEngine-QueueName: other\r\nX-AppEngine-TaskName: t2\r\n",
            b"x-appengine-queuename: default\r\nX-APPENGINE-TASKNAME: t3\r\n",
        ):
            answer = raw_request(
                base,
                b"POST /tasks/count HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/x-www-form-urlencoded\r\n"
                b"Content-Length: 18\r\nConnection: close\r\n" + spelling + b"\r\n" + body,
            )
            assert status_of(answer) in (302, 400), answer[:200]
        assert _state(base)["counters"] == {}


def test_trusted_when_loopback_is_a_queue_source(tmp_path: Path) -> None:
    """With queue_sources=["127.0.0.1"] the same request is a task: it runs once per task name."""
    env = {"EXAMPLE_DB": str(tmp_path / "app.sqlite3"), "EXAMPLE_QUEUE_SOURCES": "127.0.0.1"}
    with serve(
        "gunicorn", "examples.flask_style.main:app", extra=["--threads", "4"], env=env
    ) as base:
        first = httpx.post(
            f"{base}/tasks/count", data={"counter": "c", "amount": "5"}, headers=SPOOF, timeout=10
        )
        again = httpx.post(
            f"{base}/tasks/count",
            data={"counter": "c", "amount": "5"},
            headers={**SPOOF, "X-AppEngine-TaskRetryCount": "1"},
            timeout=10,
        )
        bad = httpx.post(
            f"{base}/tasks/count",
            data={"counter": "c", "amount": "5"},
            headers={**SPOOF, "X-AppEngine-TaskRetryCount": "+1"},
            timeout=10,
        )
        invalid = httpx.post(
            f"{base}/tasks/count",
            data={"counter": "c", "amount": "many"},
            headers={**SPOOF, "X-AppEngine-TaskName": "other"},
            timeout=10,
        )
        state = _state(base)
    assert (first.status_code, first.headers["X-Task-Outcome"]) == (200, "success")
    assert json.loads(first.text) == {"counted": True, "value": 5}
    assert (again.status_code, again.headers["X-Task-Outcome"]) == (200, "success")
    assert json.loads(again.text) == {"counted": False}
    assert (bad.status_code, bad.headers["X-Task-Outcome"]) == (400, "rejected")
    assert "X-AppEngine-TaskRetryCount" in bad.text
    assert (invalid.status_code, invalid.headers["X-Task-Outcome"]) == (200, "permanent-failure")
    assert state["counters"] == {"c": 5}
