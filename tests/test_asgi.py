"""The ASGI TaskMiddleware and async task handlers: what only ASGI has (scopes that pass
through, header lists, ``path``/``root_path``/``raw_path``, buffered responses, the asyncio
deadline, concurrency) and the frameworks on top (Starlette, FastAPI).

Decisions shared with WSGI are proven in ``tests/conformance/``."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route

from taskhandler import asgi, task_handler
from taskhandler.auth import SignedCookieAuth
from taskhandler.context import TaskContext, current_task
from taskhandler.deadline import DeadlineExceededError
from taskhandler.exceptions import ConfigError
from taskhandler.trust import TrustPolicy

from .conformance.harness import ASGIAdapter, call_asgi
from .conformance.harness import Request as Req

QUEUE = "0.1.0.2"
STRANGER = "203.0.113.9"
TASK = {"X-AppEngine-QueueName": "default", "X-AppEngine-TaskName": "task-1"}
ADAPTER = ASGIAdapter()


def scope_for(**kwargs: Any) -> dict[str, Any]:
    return ADAPTER.scope(Req(**kwargs))


def client(app: Any, peer: str = QUEUE) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=(peer, 40000)), base_url="http://testserver"
    )


class Recorder:
    """An ASGI app that records the scopes it was called with."""

    def __init__(self) -> None:
        self.scopes: list[dict[str, Any]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.scopes.append(scope)
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})


# -- the protocol --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["lifespan", "websocket"])
def test_other_scopes_pass_through_untouched(kind: str) -> None:
    """lifespan and websocket scopes reach the app as they came, with no state recorded."""
    inner = Recorder()
    headers = [(b"x-appengine-queuename", b"default")]
    scope = {"type": kind, "headers": headers, "client": (STRANGER, 1), "path": "/ws"}
    before = dict(scope)

    async def nothing() -> dict[str, Any]:
        return {}

    async def ignore(message: Any) -> None:
        return None

    asyncio.run(asgi.TaskMiddleware(inner)(scope, nothing, ignore))
    assert inner.scopes == [before]
    assert inner.scopes[0]["headers"] is headers


def test_the_callers_header_list_is_not_changed() -> None:
    """Stripping gives the app a new header list; the server's list is left as it was."""
    inner = Recorder()
    scope = scope_for(headers=[*TASK.items(), ("x_appengine_tasketa", "1")])
    original = scope["headers"]
    copy = list(original)
    asyncio.run(call_asgi(asgi.TaskMiddleware(inner), scope))
    assert original == copy
    assert inner.scopes[0]["headers"] is not original
    assert [name for name, _ in inner.scopes[0]["headers"]] == [b"host"]
    assert inner.scopes[0]["taskhandler.stripped"] == [
        "x-appengine-queuename",
        "x-appengine-taskname",
        "x-appengine-tasketa",
    ]


def test_header_names_in_any_case_are_stripped() -> None:
    """A scope built by hand with mixed-case names still loses its task headers."""
    inner = Recorder()
    scope = scope_for()
    scope["headers"] = [
        *scope["headers"],
        (b"X-AppEngine-QueueName", b"q"),
        (b"X_APPENGINE_X", b"1"),
    ]
    asyncio.run(call_asgi(asgi.TaskMiddleware(inner), scope))
    assert [name for name, _ in inner.scopes[0]["headers"]] == [b"host"]


@pytest.mark.parametrize(
    ("scope", "expected"),
    [
        pytest.param({"path": "/tasks/x", "root_path": ""}, "/tasks/x", id="plain"),
        pytest.param(
            {"path": "/app/tasks/x", "root_path": "/app"}, "/app/tasks/x", id="path holds root"
        ),
        pytest.param(
            {"path": "/tasks/x", "root_path": "/app"}, "/app/tasks/x", id="root kept apart"
        ),
        pytest.param({"path": "/t\u00e2che"}, "/t\u00e2che", id="decoded UTF-8"),
        pytest.param({"path": "/\ufffd", "raw_path": b"/%EF%BF%BD"}, "/\ufffd", id="a real U+FFFD"),
        pytest.param(
            {"path": "/\ufffd", "raw_path": b"/%FF"},
            "request path is not valid UTF-8",
            id="replacement for bad bytes",
        ),
        pytest.param(
            {"path": "/\udcff"},
            "request path is not valid UTF-8",
            id="surrogate escape",
        ),
        pytest.param({}, "request path is missing", id="no path"),
    ],
)
def test_request_path(scope: dict[str, Any], expected: str) -> None:
    """The rules see the full path the app routes; bytes that are not UTF-8 are a 400."""
    view = asgi.request_view({"headers": [], **scope})
    assert (view.path if view.path_error is None else view.path_error) == expected


def test_task_response_is_buffered_into_one_body() -> None:
    """A streamed task response reaches the queue whole, with its status and outcome added."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 202, "headers": [(b"x-a", b"1")]})
        for part in (b"a", b"b", b"c"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    status, headers, body, sent = asyncio.run(
        call_asgi(asgi.TaskMiddleware(app), scope_for(headers=list(TASK.items()), peer=QUEUE))
    )
    assert (status, headers["x-task-outcome"], headers["x-a"], body) == (
        202,
        "success",
        "1",
        b"abc",
    )
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]


@pytest.mark.parametrize(
    "fails",
    [
        pytest.param("after start", id="raises after the response started"),
        pytest.param("no response", id="returns without a response"),
        pytest.param("body first", id="body before start"),
    ],
)
def test_a_broken_task_response_becomes_a_clean_500(fails: str) -> None:
    """Nothing of a failed response leaks out: the queue gets one 500 retry."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if fails == "body first":
            await send({"type": "http.response.body", "body": b"x"})
        if fails == "after start":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"half", "more_body": True})
            raise RuntimeError("disk full")

    status, headers, body, sent = asyncio.run(
        call_asgi(asgi.TaskMiddleware(app), scope_for(headers=list(TASK.items()), peer=QUEUE))
    )
    assert (status, headers["x-task-outcome"], body) == (500, "retry", b"retry\n")
    assert len(sent) == 2


def test_task_requests_do_not_offer_pathsend() -> None:
    """A buffered task response cannot hand a file to the server, so the extension is hidden."""
    inner = Recorder()
    scope = scope_for(headers=list(TASK.items()), peer=QUEUE)
    scope["extensions"] = {"http.response.pathsend": {}, "http.response.trailers": {}}
    asyncio.run(call_asgi(asgi.TaskMiddleware(inner), scope))
    assert inner.scopes[0]["extensions"] == {"http.response.trailers": {}}


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        pytest.param({"trust": "strict"}, "TrustPolicy", id="trust not a policy"),
        pytest.param({"config": {"handlers": []}}, "AppConfig", id="config not an AppConfig"),
        pytest.param({"authenticator": "cookie"}, "callable", id="authenticator not callable"),
        pytest.param({"deadline": 0}, "positive", id="zero deadline"),
        pytest.param({"deadline": 60, "grace": 60}, "smaller", id="grace not below deadline"),
    ],
)
def test_bad_settings_raise_config_error(kwargs: dict[str, Any], fragment: str) -> None:
    """Bad keywords fail at construction, as for the WSGI middleware."""
    with pytest.raises(ConfigError, match=fragment):
        asgi.TaskMiddleware(Recorder(), **kwargs)


def test_sign_in_page_is_served_and_other_bodies_are_replayed() -> None:
    """The authenticator answers /_ah/login; a near-miss path still gets its body."""

    async def echo(request: Request) -> Response:
        return PlainTextResponse(await request.body())

    app = asgi.TaskMiddleware(
        Starlette(routes=[Route("/_ah/logbook", echo, methods=["POST"])]),
        authenticator=SignedCookieAuth("k" * 32),
    )

    async def main() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        async with client(app, STRANGER) as c:
            return (
                await c.get("/_ah/login"),
                await c.post("/_ah/logbook", content=b"entry"),
                await c.post("/_ah/logbook", content=b"x" * (65 * 1024)),
            )

    page, replayed, too_big = asyncio.run(main())
    assert page.status_code == 200
    assert "<form" in page.text
    assert (replayed.status_code, replayed.text) == (200, "entry")
    assert too_big.status_code == 400


# -- deadlines -----------------------------------------------------------------------------


def run_task_handler(handler: Any, **middleware: Any) -> tuple[int, dict[str, str], bytes]:
    scope = scope_for(headers=list(TASK.items()), peer=QUEUE)
    status, headers, body, _ = asyncio.run(
        call_asgi(asgi.TaskMiddleware(handler, **middleware), scope)
    )
    return status, headers, body


def test_deadline_is_raised_at_the_await_and_the_handler_can_save() -> None:
    """DeadlineExceededError arrives at the suspended await; a handler that saves and returns succeeds."""
    events: list[str] = []

    @task_handler
    async def slow(task: TaskContext) -> None:
        remaining = task.time_remaining()
        assert remaining is not None
        assert 0 < remaining <= 0.1
        try:
            await asyncio.sleep(5)
        except DeadlineExceededError:
            events.append("saved")
            return
        events.append("finished")

    status, headers, _ = run_task_handler(slow, deadline=0.2, grace=0.15)
    assert events == ["saved"]
    assert (status, headers["x-task-outcome"]) == (200, "success")


@pytest.mark.parametrize(
    "behaviour",
    [
        pytest.param("ignores", id="does not catch it"),
        pytest.param("swallows", id="catches it and keeps waiting"),
        pytest.param("blocks", id="blocks the loop past the deadline"),
    ],
)
def test_deadline_exceeded_outcomes(behaviour: str, caplog: pytest.LogCaptureFixture) -> None:
    """A handler that does not stop in time is answered 500 deadline-exceeded, and logged so."""
    caplog.set_level(logging.INFO, "taskhandler")

    @task_handler
    async def slow(task: TaskContext) -> None:
        if behaviour == "blocks":
            time.sleep(0.12)  # holds the event loop: nothing can interrupt it
            return
        try:
            await asyncio.sleep(5)
        except DeadlineExceededError:
            if behaviour == "ignores":
                raise
            await asyncio.sleep(5)  # the hard deadline raises here again

    status, headers, body = run_task_handler(slow, deadline=0.1, grace=0.05)
    assert (status, headers["x-task-outcome"], body) == (
        500,
        "deadline-exceeded",
        b"deadline-exceeded\n",
    )
    outcomes = [r.taskhandler["outcome"] for r in caplog.records if hasattr(r, "taskhandler")]
    assert outcomes == ["deadline-exceeded"]


def test_plain_function_runs_in_a_thread_with_its_task_and_deadline() -> None:
    """A def handler served by ASGI runs off the loop, sees its task and is stopped in time."""
    seen: list[Any] = []

    @task_handler
    def busy(task: TaskContext) -> None:
        seen.append(current_task())
        end = time.monotonic() + 5
        while time.monotonic() < end:  # Python code: interruptible in any thread
            pass

    status, headers, _ = run_task_handler(busy, deadline=0.2, grace=0.1)
    assert (status, headers["x-task-outcome"]) == (500, "deadline-exceeded")
    assert seen[0] is not None
    assert seen[0].task_name == "task-1"


# -- concurrency ---------------------------------------------------------------------------


def test_current_task_is_isolated_between_concurrent_requests() -> None:
    """Each of many interleaved requests sees its own task, before and after every await."""

    @task_handler
    async def handler(task: TaskContext) -> dict[str, Any]:
        names = []
        for i in range(5):
            await asyncio.sleep(0.001 * ((hash(task.task_name) + i) % 3))
            current = current_task()
            names.append(None if current is None else current.task_name)
        return {"task": task.task_name, "seen": names}

    app = asgi.TaskMiddleware(handler)

    async def main() -> list[dict[str, Any]]:
        async with client(app) as c:
            responses = await asyncio.gather(
                *(c.post("/", headers={**TASK, "X-AppEngine-TaskName": f"t{i}"}) for i in range(30))
            )
        assert current_task() is None
        return [r.json() for r in responses]

    for answer in asyncio.run(main()):
        assert answer["seen"] == [answer["task"]] * 5


# -- frameworks ----------------------------------------------------------------------------


class Counter(BaseModel):
    amount: int


@task_handler(payload=Counter)
async def count(task: TaskContext, payload: Counter) -> dict[str, Any]:
    """Echo what the handler was given."""
    await asyncio.sleep(0)
    return {"task_name": task.task_name, "amount": payload.amount}


async def headers_seen(request: Request) -> Response:
    return JSONResponse(
        {
            "task_headers": [
                k for k in request.headers if k.replace("_", "-").startswith("x-appengine")
            ],
            "stripped": request.scope.get("taskhandler.stripped"),
        }
    )


def starlette_app() -> Any:
    return asgi.TaskMiddleware(
        Starlette(
            routes=[
                Route("/tasks/count", count, methods=["POST", "GET"]),
                Mount("/mounted", routes=[Route("/count", count, methods=["POST"])]),
                Route("/headers", headers_seen),
            ]
        )
    )


def fastapi_app() -> Any:
    api = FastAPI()
    api.add_api_route("/tasks/count", asgi.endpoint(count), methods=["POST"])
    api.get("/tasks/count")(asgi.endpoint(count))
    api.add_route("/mounted/count", count, methods=["POST"])
    api.add_api_route("/headers", headers_seen)

    @api.post("/decorated")
    async def decorated(request: Request) -> Response:
        return await asgi.endpoint(count)(request)  # type: ignore[no-any-return]

    return asgi.TaskMiddleware(api)


@pytest.mark.parametrize("make_app", [starlette_app, fastapi_app], ids=["starlette", "fastapi"])
@pytest.mark.parametrize(
    ("method", "url", "kwargs", "amount"),
    [
        pytest.param("POST", "/tasks/count", {"json": {"amount": 3}}, 3, id="JSON body"),
        pytest.param("POST", "/tasks/count", {"data": {"amount": "4"}}, 4, id="form body"),
        pytest.param("GET", "/tasks/count", {"params": {"amount": "5"}}, 5, id="query string"),
        pytest.param("POST", "/mounted/count", {"json": {"amount": 6}}, 6, id="mounted route"),
    ],
)
def test_typed_payload_through_frameworks(
    make_app: Any, method: str, url: str, kwargs: dict[str, Any], amount: int
) -> None:
    """An async task handler is a Starlette route and a FastAPI endpoint with a typed payload."""

    async def main() -> httpx.Response:
        async with client(make_app()) as c:
            return await c.request(method, url, headers=TASK, **kwargs)

    response = asyncio.run(main())
    assert response.status_code == 200
    assert response.headers["x-task-outcome"] == "success"
    assert response.json() == {"task_name": "task-1", "amount": amount}


def test_fastapi_decorated_endpoint_and_schema() -> None:
    """@app.post with endpoint() works, and FastAPI can still build its OpenAPI schema."""
    app = fastapi_app()

    async def main() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        async with client(app) as c:
            ok = await c.post("/decorated", headers=TASK, json={"amount": 7})
            bad = await c.post("/decorated", headers=TASK, json={"amount": "lots"})
            schema = await c.get("/openapi.json")
            return ok, bad, schema

    ok, bad, schema = asyncio.run(main())
    assert (ok.status_code, ok.json()["amount"]) == (200, 7)
    assert (bad.status_code, bad.headers["x-task-outcome"]) == (200, "permanent-failure")
    assert schema.status_code == 200
    assert "/decorated" in schema.json()["paths"]


@pytest.mark.parametrize("make_app", [starlette_app, fastapi_app], ids=["starlette", "fastapi"])
def test_framework_sees_no_spoofed_headers(make_app: Any) -> None:
    """Behind the middleware, a framework's Request shows none of a stranger's task headers."""

    async def main() -> httpx.Response:
        async with client(make_app(), STRANGER) as c:
            return await c.get(
                "/headers", headers=[("X-AppEngine-QueueName", "q"), ("x_appengine_taskname", "t")]
            )

    response = asyncio.run(main())
    assert response.json() == {
        "task_headers": [],
        "stripped": ["x-appengine-queuename", "x-appengine-taskname"],
    }


@pytest.mark.parametrize("make_app", [starlette_app, fastapi_app], ids=["starlette", "fastapi"])
def test_framework_route_refuses_strangers(make_app: Any) -> None:
    """A task route reached by a stranger answers 403 rejected."""

    async def main() -> httpx.Response:
        async with client(make_app(), STRANGER) as c:
            return await c.post("/tasks/count", headers=TASK, json={"amount": 1})

    response = asyncio.run(main())
    assert (response.status_code, response.headers["x-task-outcome"]) == (403, "rejected")


@pytest.mark.parametrize(
    ("returned", "status", "outcome", "body"),
    [
        pytest.param(PlainTextResponse("gone", 410), 410, "retry", b"gone", id="starlette 410"),
        pytest.param(JSONResponse({"a": 1}), 200, "success", b'{"a":1}', id="starlette JSON"),
        pytest.param(
            PlainTextResponse("x", headers={"X-Task-Outcome": "permanent-failure"}),
            200,
            "permanent-failure",
            b"x",
            id="own outcome kept",
        ),
        pytest.param(
            StreamingResponse(iter([b"a", b"b"])), 200, "success", b"ab", id="streaming response"
        ),
    ],
)
def test_framework_response_objects_keep_their_status(
    returned: Response, status: int, outcome: str, body: bytes
) -> None:
    """An async handler may return a Starlette response; its status decides the outcome."""

    @task_handler
    async def handler(task: TaskContext) -> Response:
        return returned

    got_status, headers, got_body = run_task_handler(handler)
    assert (got_status, headers["x-task-outcome"], got_body) == (status, outcome, body)


def test_werkzeug_response_from_async_handler() -> None:
    """A werkzeug response returned by an async handler is sent as it is."""
    from werkzeug.wrappers import Response as WerkzeugResponse

    @task_handler
    async def handler(task: TaskContext) -> Any:
        return WerkzeugResponse("later", status=503)

    status, headers, body = run_task_handler(handler)
    assert (status, headers["x-task-outcome"], body) == (503, "retry", b"later")


def test_handler_as_whole_app_answers_lifespan_and_closes_websockets() -> None:
    """A task handler served on its own completes lifespan and refuses websockets."""
    sent: list[dict[str, Any]] = []
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(count({"type": "lifespan"}, receive, send))
    asyncio.run(count({"type": "websocket", "headers": []}, receive, send))
    assert [m["type"] for m in sent] == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
        "websocket.close",
    ]


def test_handler_on_its_own_uses_its_options() -> None:
    """Without a middleware, the handler's own trust= decides who is the queue."""

    @task_handler(trust=TrustPolicy(queue_sources=["10.0.0.0/8"]))
    async def handler(task: TaskContext) -> str:
        return task.trusted_by

    async def main() -> tuple[httpx.Response, httpx.Response]:
        async with client(handler, "10.1.2.3") as inside, client(handler, QUEUE) as outside:
            return await inside.post("/", headers=TASK), await outside.post("/", headers=TASK)

    inside, outside = asyncio.run(main())
    assert (inside.status_code, inside.text) == (200, "queue")
    assert (outside.status_code, outside.headers["x-task-outcome"]) == (403, "rejected")


def test_one_log_record_per_task_request(caplog: pytest.LogCaptureFixture) -> None:
    """Each task request logs one INFO record with the task fields and the full path."""
    caplog.set_level(logging.INFO, "taskhandler")

    async def main() -> None:
        async with client(starlette_app()) as c:
            await c.post("/mounted/count", headers=TASK, json={"amount": 1})

    asyncio.run(main())
    records = [r for r in caplog.records if hasattr(r, "taskhandler")]
    assert len(records) == 1
    fields = records[0].taskhandler
    assert (fields["task_name"], fields["outcome"], fields["status"], fields["path"]) == (
        "task-1",
        "success",
        200,
        "/mounted/count",
    )
    assert json.dumps(fields)


# -- header-name plans (kept per list of names) --------------------------------------------


def test_a_client_inventing_header_names_is_still_stripped() -> None:
    """Header names never seen before are judged afresh every time."""
    inner = Recorder()
    app = asgi.TaskMiddleware(inner)
    for i in range(700):
        scope = scope_for(headers=[(f"x-invented-{i}", "1"), *TASK.items()])
        asyncio.run(call_asgi(app, scope))
    assert all(
        [n for n, _ in s["headers"]] == [b"host", b"x-invented-" + str(i).encode()]
        for i, s in enumerate(inner.scopes[-3:], start=697)
    )


def test_the_same_names_in_another_order_are_stripped_in_place() -> None:
    """Plans follow the order of the names: each request keeps its own other headers, in order."""
    inner = Recorder()
    app = asgi.TaskMiddleware(inner)
    orders = [
        [("a", "1"), ("X-AppEngine-QueueName", "q"), ("b", "2")],
        [("X-AppEngine-QueueName", "q"), ("a", "1"), ("b", "2")],
        [("a", "1"), ("b", "2"), ("X-AppEngine-QueueName", "q")],
    ]
    for headers in orders * 2:
        asyncio.run(call_asgi(app, scope_for(headers=headers)))
    for scope in inner.scopes:
        assert [(n, v) for n, v in scope["headers"] if n != b"host"] == [(b"a", b"1"), (b"b", b"2")]
        assert scope["taskhandler.stripped"] == ["x-appengine-queuename"]


def test_headers_as_any_iterable_or_odd_name_types_are_still_judged() -> None:
    """ASGI promises only an iterable of name/value pairs: a generator of headers, or a
    bytearray or memoryview name, is stripped like a list of bytes."""
    inner = Recorder()
    app = asgi.TaskMiddleware(inner)
    scope = scope_for(headers=[("a", "1")])
    scope["headers"] = iter([(b"a", b"1"), (b"x-appengine-queuename", b"q")])
    asyncio.run(call_asgi(app, scope))
    scope = scope_for(headers=[("a", "1")])
    scope["headers"] = [(b"a", b"1"), (bytearray(b"X-AppEngine-TaskName"), b"t")]
    asyncio.run(call_asgi(app, scope))
    scope = scope_for(headers=[("a", "1")])  # a writable memoryview cannot even be hashed
    scope["headers"] = [(b"a", b"1"), (memoryview(bytearray(b"X-AppEngine-TaskName")), b"t")]
    asyncio.run(call_asgi(app, scope))
    assert [list(s["headers"]) for s in inner.scopes] == [[(b"a", b"1")]] * 3
    assert [s["taskhandler.stripped"] for s in inner.scopes] == [
        ["x-appengine-queuename"],
        ["x-appengine-taskname"],
        ["x-appengine-taskname"],
    ]
