"""Property tests: stripping never leaks a task header; a trusted request never gets a 500."""

from __future__ import annotations

import io
import string
from datetime import datetime, timedelta, timezone
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from taskhandler import TaskContext, TaskMiddleware
from taskhandler.exceptions import InvalidTaskHeaders
from taskhandler.headers import FieldPlan, parse_task_headers

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


# Values for each task field: around the usual ones (which FieldPlan converts without the
# full checks, boundaries included), legal but unusual ones (resource paths, long ETAs) and
# wrong ones. The usual kind is drawn three times as often, so whole sets of usual values
# (the only ones the plan's own road takes) come up often.
_counts = st.one_of(
    st.integers(0, 9_999_999_999).map(str), st.sampled_from(["10000000000", "00000000001"])
)
_usual = {
    "QueueName": st.one_of(names, st.just("x" * 500), st.just("x" * 501)),
    "TaskName": st.one_of(names, st.just("-")),
    "TaskRetryCount": _counts,
    "TaskExecutionCount": _counts,
    "TaskPreviousResponse": _counts,
    "TaskETA": st.builds(
        lambda s, f: f"{s}.{f}" if f else str(s),
        st.one_of(st.integers(0, 3_999_999_999), st.integers(3_999_999_990, 10**13)),
        st.text(string.digits, max_size=7),
    ),
    "TaskRetryReason": st.text(string.ascii_letters + " .:;-_!", max_size=40),
    "FailFast": st.sampled_from(["", "true", "1"]),
}
_other = {
    "QueueName": st.one_of(
        st.builds(lambda n: f"projects/p/locations/l/queues/{n}", names),
        st.sampled_from(["", "a b", "q,r", "caf\u00e9"]),
    ),
    "TaskName": st.one_of(
        st.builds(lambda n: f"projects/p/locations/l/queues/q/tasks/{n}", names),
        st.sampled_from(["", "a/b", "t\t", "x" * 501]),
    ),
    "TaskRetryCount": st.sampled_from(["", "-1", "+1", " 1", "\uff11", "1_0"]),
    "TaskExecutionCount": st.sampled_from(["", "1.0", "0x1"]),
    "TaskPreviousResponse": st.just("5xx"),
    "TaskETA": st.sampled_from(["", ".5", "1.", "1e9", "-1", "1700000000.123456789", "0x10"]),
    "TaskRetryReason": st.one_of(
        st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
        st.sampled_from([",", "a,b", "x" * 2001, "tab\there", "caf\u00e9", "\x7f"]),
    ),
    "FailFast": st.sampled_from(["a,b", "\u00ff"]),
}
_OPTIONAL = sorted(set(_usual) - {"QueueName", "TaskName"})


@st.composite
def field_header_sets(draw: st.DrawFn) -> dict[str, str]:
    """A set of task headers around the usual ones, at most one of them unusual or wrong."""
    prefix = draw(st.sampled_from(["HTTP_X_APPENGINE_", "x-appengine-", "HTTP_X_CLOUDTASKS_"]))
    odd = draw(st.none() | st.sampled_from(sorted(_usual)))
    present = {"QueueName", "TaskName", *draw(st.sets(st.sampled_from(_OPTIONAL)))}
    if odd is not None:
        present.add(odd)
    if "CLOUDTASKS" in prefix:
        present.discard("FailFast")  # not a Cloud Tasks header
    chosen = {suffix: draw(_usual[suffix]) for suffix in sorted(present)}
    if odd in present:
        chosen[odd] = draw(_other[odd])
    spell = str.upper if prefix.startswith("HTTP_") else str.lower
    return {prefix + spell(suffix): value for suffix, value in chosen.items()}


def _outcome(parse: Any, values: dict[str, str]) -> Any:
    try:
        return parse(values)
    except InvalidTaskHeaders as exc:
        return ("refused", str(exc))


@settings(max_examples=500, deadline=None)
@given(field_header_sets())
def test_cached_plans_parse_exactly_as_the_full_parser(values: dict[str, str]) -> None:
    """FieldPlan.parse (one regex for the usual values) gives the full parser's answer: the
    same fields, or the same refusal naming the same header."""
    plan = FieldPlan.of(values)
    assert plan is not None
    assert _outcome(plan.parse, values) == _outcome(parse_task_headers, values)


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(st.integers(0, 3_999_999_999), st.integers(0, 253_402_300_799)),
    st.text(string.digits, max_size=20),
)
def test_etas_convert_to_the_exact_microsecond(seconds: int, fraction: str) -> None:
    """Every ETA lands on its exact microsecond, decimals past the sixth cut off: the float
    road (below 4e9 s, up to six decimals) agrees with the integer road."""
    text = f"{seconds}.{fraction}" if fraction else str(seconds)
    exact = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(
        seconds=seconds, microseconds=int(fraction[:6].ljust(6, "0")) if fraction else 0
    )
    values = {
        "x-appengine-queuename": "q",
        "x-appengine-taskname": "t",
        "x-appengine-tasketa": text,
    }
    plan = FieldPlan.of(values)
    assert plan is not None
    assert parse_task_headers(values)["eta"] == exact  # type: ignore[index]
    assert plan.parse(values)["eta"] == exact  # type: ignore[index]
