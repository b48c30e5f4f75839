"""The async worker example: typed payload, idempotent counting, login: admin from app.yaml."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from examples.starlette_style.main import make_app
from taskhandler.auth import SignedCookieAuth

KEY = "example-secret-key-of-32-bytes!!"
QUEUE = "0.1.0.2"


def task_headers(name: str, retry_count: int = 0) -> dict[str, str]:
    return {
        "X-AppEngine-QueueName": "default",
        "X-AppEngine-TaskName": name,
        "X-AppEngine-TaskRetryCount": str(retry_count),
    }


def send(
    app: Any, peer: str, requests: list[tuple[str, str, dict[str, Any]]]
) -> list[httpx.Response]:
    async def main() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app, client=(peer, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
            return [await c.request(method, url, **kw) for method, url, kw in requests]

    return asyncio.run(main())


@pytest.fixture
def app(tmp_path: Path) -> Any:
    return make_app(tmp_path / "counters.sqlite3", secret_key=KEY)


def test_task_is_counted_once_however_often_delivered(app: Any) -> None:
    """Redelivering the same task (rising retry counts) adds its amount once."""
    url = "/tasks/update_counter"
    responses = send(
        app,
        QUEUE,
        [
            ("POST", url, {"json": {"amount": 3}, "headers": task_headers("count-1")}),
            ("POST", url, {"json": {"amount": 3}, "headers": task_headers("count-1", 1)}),
            ("POST", url, {"data": {"amount": "2"}, "headers": task_headers("count-2")}),
            ("GET", "/", {}),
        ],
    )
    assert [r.json().get("added") for r in responses[:3]] == [True, False, True]
    assert {r.headers["x-task-outcome"] for r in responses[:3]} == {"success"}
    assert responses[3].json() == {"default": 5}


@pytest.mark.parametrize(
    ("body", "outcome"),
    [
        pytest.param({"amount": 0}, "permanent-failure", id="amount below range"),
        pytest.param({"amount": 1, "key": "a b"}, "permanent-failure", id="bad key"),
        pytest.param({"key": "x"}, "permanent-failure", id="amount missing"),
    ],
)
def test_bad_payload_is_acknowledged_not_retried(
    app: Any, body: dict[str, Any], outcome: str
) -> None:
    """A payload that fails validation is a permanent failure: 200, so the queue drops it."""
    (response,) = send(
        app,
        QUEUE,
        [("POST", "/tasks/update_counter", {"json": body, "headers": task_headers("t")})],
    )
    assert (response.status_code, response.headers["x-task-outcome"]) == (200, outcome)


@pytest.mark.parametrize(
    ("cookie", "status"),
    [
        pytest.param(None, 302, id="anonymous is sent to sign in"),
        pytest.param("user", 403, id="signed-in user is forbidden"),
        pytest.param("admin", 200, id="admin runs it from a browser"),
    ],
)
def test_login_admin_from_app_yaml(app: Any, cookie: str | None, status: int) -> None:
    """Strangers' spoofed task headers are stripped, and app.yaml's login: admin applies."""
    headers = task_headers("spoof")
    if cookie is not None:
        value = SignedCookieAuth(KEY).cookie_value(f"{cookie}@example.com", admin=cookie == "admin")
        headers["Cookie"] = f"taskhandler_signin={value}"
    (response,) = send(
        app,
        "203.0.113.9",
        [
            (
                "POST",
                "/tasks/update_counter",
                {"json": {"amount": 1}, "headers": headers},
            )
        ],
    )
    assert response.status_code == status
    if status == 302:
        assert response.headers["location"].startswith("/_ah/login?continue=")
    if status == 200:
        assert response.json()["task_name"] == "spoof"  # an admin may send task headers


@pytest.mark.slow
def test_under_uvicorn(tmp_path: Path) -> None:
    """Served by uvicorn with a local queue's address trusted, a real HTTP task is counted."""
    from tests.servers import serve

    env = {"EXAMPLE_DB": str(tmp_path / "c.sqlite3"), "EXAMPLE_QUEUE_SOURCES": "127.0.0.1"}
    with serve("uvicorn", "examples.starlette_style.main:app", env=env) as base:
        task = httpx.post(
            base + "/tasks/update_counter",
            json={"amount": 4},
            headers=task_headers("u1"),
            timeout=10,
        )
        counts = httpx.get(base + "/", timeout=10)
    assert (task.status_code, task.headers["x-task-outcome"]) == (200, "success")
    assert counts.json() == {"default": 4}
