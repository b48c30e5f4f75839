"""Property tests: stripping never leaks a task header; a trusted request never gets a 500."""

from __future__ import annotations

import io
import string
from datetime import datetime, timedelta, timezone
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from taskhandler import TaskContext, TaskMiddleware

PREFIXES = [
    "X-AppEngine-",
    "X-CloudTasks-",
    "x-appengine-",
    "X_AppEngine_",
    "X-APPENGINE-",
    "x_cloudtasks_",
]
SUFFIXES = [
    "QueueName",
    "TaskName",
    "TaskRetryCount",
    "TaskExecutionCount",
    "TaskETA",
    "TaskPreviousResponse",
    "TaskRetryReason",
    "FailFast",
    "User-Is-Admin",
    "Anything",
]

header_names = st.one_of(
    st.builds(lambda p, s: p + s, st.sampled_from(PREFIXES), st.sampled_from(SUFFIXES)),
    st.text(string.ascii_letters + "-_", min_size=1, max_size=20),
)
# WSGI values are latin-1 decoded text.
header_values = st.one_of(
    st.text(st.characters(min_codepoint=0, max_codepoint=255), max_size=30),
    st.integers(-5, 10**12).map(str),
    st.sampled_from(["", "0", "1", "default", "q,r", "1700000000.5", " 3", "\uff11"]),
)
header_sets = st.lists(st.tuples(header_names, header_values), max_size=12)


def environ_for(headers: list[tuple[str, str]], peer: str) -> dict[str, Any]:
    env: dict[str, Any] = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/t",
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": io.StringIO(),
        "REMOTE_ADDR": peer,
    }
    for name, value in headers:
        key = "HTTP_" + name.upper().replace("-", "_")
        env[key] = value if key not in env else f"{env[key]},{value}"  # as servers join repeats
    return env


def run(app: Any, env: dict[str, Any]) -> str:
    seen: list[str] = []
    b"".join(app(env, lambda status, headers, exc_info=None: seen.append(status)))
    return seen[0]


@settings(max_examples=300, deadline=None)
@given(header_sets)
def test_untrusted_peer_never_shows_a_task_header(headers: list[tuple[str, str]]) -> None:
    """From an untrusted peer, whatever headers arrive, the app sees no task header and no context."""
    seen: list[dict[str, Any]] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(environ)
        start_response("200 OK", [])
        return [b""]

    assert run(TaskMiddleware(app), environ_for(headers, "198.51.100.4")) == "200 OK"
    leaked = [k for k in seen[0] if k.upper().startswith(("HTTP_X_APPENGINE", "HTTP_X_CLOUDTASKS"))]
    assert leaked == []
    assert seen[0]["taskhandler.state"].context is None


@settings(max_examples=300, deadline=None)
@given(header_sets)
def test_trusted_peer_gets_a_context_or_a_400_never_a_500(headers: list[tuple[str, str]]) -> None:
    """From the queue, arbitrary headers yield a valid context (app runs) or a 400 (app does not)."""
    ran: list[Any] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        ran.append(environ["taskhandler.state"].context)
        start_response("200 OK", [])
        return [b""]

    status = run(TaskMiddleware(app), environ_for(headers, "0.1.0.2"))
    assert status in ("200 OK", "400 Bad Request")
    if status.startswith("400"):
        assert ran == []
    else:
        assert len(ran) == 1
        if ran[0] is not None:
            assert TaskContext.model_validate(ran[0].model_dump()) == ran[0]


names = st.text(string.ascii_letters + string.digits + "_-", min_size=1, max_size=40)
contexts = st.builds(
    TaskContext,
    queue_name=names,
    task_name=names,
    retry_count=st.integers(0, 9_999_999_999),
    execution_count=st.integers(0, 9_999_999_999),
    eta=st.none()
    | st.datetimes(
        min_value=datetime(1970, 1, 1),
        max_value=datetime(9999, 12, 31),
        timezones=st.just(timezone.utc),
    ),
    previous_response=st.none() | st.integers(0, 9_999_999_999),
    retry_reason=st.none() | st.text(string.ascii_letters + string.digits + " .:-_", max_size=40),
    fail_fast=st.booleans(),
    trusted_by=st.sampled_from(["queue", "admin", "platform", "development"]),
)


@settings(max_examples=300, deadline=None)
@given(contexts)
def test_headers_round_trip(ctx: TaskContext) -> None:
    """TaskContext.from_headers(ctx.to_headers()) == ctx for every valid context."""
    assert TaskContext.from_headers(ctx.to_headers()) == ctx


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(st.integers(0, 3_999_999_999), st.integers(0, 253_402_300_799)),
    st.text(string.digits, max_size=20),
)
def test_etas_convert_to_the_exact_microsecond(seconds: int, fraction: str) -> None:
    """Every ETA lands on its exact microsecond, decimals past the sixth cut off."""
    text = f"{seconds}.{fraction}" if fraction else str(seconds)
    exact = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(
        seconds=seconds, microseconds=int(fraction[:6].ljust(6, "0")) if fraction else 0
    )
    values = {
        "x-appengine-queuename": "q",
        "x-appengine-taskname": "t",
        "x-appengine-tasketa": text,
    }
    assert TaskContext.from_headers(values).eta == exact
