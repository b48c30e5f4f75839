"""The apps ``bench/http_servers.py`` serves: the same tiny app bare and under ``TaskMiddleware``.

Besides ``bare`` and ``wrapped`` there is ``floor``: the same app under a few lines that do
only the work a request needs and nothing else. A plain request: look for task headers among
its headers, pass it on. A trusted task request: check the peer, parse the task headers with
``TaskContext.from_headers``, make it the current task, arm and disarm the deadline, buffer
the response and add ``X-Task-Outcome``. No request view, no decision, no access rules, no
failure handling, no log record: what any middleware meeting the contract pays at least. It
is an experiment, not a second implementation (a bad header is a 500 there).

``POST /tasks/count`` answers ``task`` when the request was trusted as a task (the handler
sees ``current_task()``) and ``ok`` otherwise, so a run can check that its task requests
really were trusted. Loopback is the queue: ``TrustPolicy(queue_sources=["127.0.0.1"])``.

Served from the repository root as ``bench.http_apps:<name>``::

    uvicorn bench.http_apps:starlette_wrapped
    gunicorn -k gthread bench.http_apps:flask_wrapped
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Flask
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from taskhandler import TaskContext, TrustPolicy, current_task
from taskhandler._async_deadline import arm_async
from taskhandler._watchdog import arm
from taskhandler.asgi import TaskMiddleware as AsgiTaskMiddleware
from taskhandler.context import _current
from taskhandler.wsgi import TaskMiddleware as WsgiTaskMiddleware

TRUST = TrustPolicy(queue_sources=["127.0.0.1"])


async def count(request: Request) -> PlainTextResponse:
    await request.body()
    return PlainTextResponse("task" if current_task() is not None else "ok")


def _starlette() -> Starlette:
    return Starlette(routes=[Route("/tasks/count", count, methods=["POST"])])


def _flask() -> Flask:
    app = Flask(__name__)

    @app.post("/tasks/count")
    def flask_count() -> str:
        return "task" if current_task() is not None else "ok"

    return app


starlette_bare = _starlette()
starlette_wrapped = AsgiTaskMiddleware(_starlette(), trust=TRUST)

flask_bare = _flask()
flask_wrapped = _flask()
flask_wrapped.wsgi_app = WsgiTaskMiddleware(flask_wrapped.wsgi_app, trust=TRUST)  # type: ignore[method-assign]


QUEUE = "127.0.0.1"
WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Any]
AsgiApp = Callable[[dict[str, Any], Any, Any], Any]


def wsgi_floor(app: WsgiApp) -> WsgiApp:
    """``app`` with a trusted task request's work and nothing more (see the module docstring)."""

    def serve(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        pairs = tuple(
            (key[5:].lower().replace("_", "-"), value)
            for key, value in environ.items()
            if key.startswith("HTTP_X_APPENGINE_")
        )
        if not pairs or environ.get("REMOTE_ADDR") != QUEUE:
            return app(environ, start_response)
        ctx = TaskContext.from_headers(pairs)
        response: list[Any] = []

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
            response[:] = (status, headers)

        token = _current.set(ctx)
        armed = arm(600, 10)
        try:
            ctx._attach_deadline(armed)
            chunks = app(environ, capture)
            try:
                body = list(chunks)
            finally:
                close = getattr(chunks, "close", None)
                if close is not None:
                    close()  # PEP 3333: the server's part, so the floor's too
        finally:
            armed.disarm()
            _current.reset(token)
        status, headers = response
        start_response(status, [*headers, ("X-Task-Outcome", "success")])
        return body

    return serve


def asgi_floor(app: AsgiApp) -> AsgiApp:
    """``app`` with a trusted task request's work and nothing more (see the module docstring)."""

    async def serve(scope: dict[str, Any], receive: Any, send: Any) -> None:
        pairs = tuple(
            (name.decode("latin-1").lower(), value.decode("latin-1"))
            for name, value in scope.get("headers", ())
            if name.lower().startswith(b"x-appengine-")
        )
        client = scope.get("client")
        if scope["type"] != "http" or not pairs or client is None or client[0] != QUEUE:
            await app(scope, receive, send)
            return
        ctx = TaskContext.from_headers(pairs)
        messages: list[dict[str, Any]] = []

        async def capture(message: dict[str, Any]) -> None:
            messages.append(message)

        armed = arm_async(600, 10)
        ctx._attach_deadline(armed)
        token = _current.set(ctx)
        try:
            await armed.run(app(scope, receive, capture))
        finally:
            _current.reset(token)
        start, *rest = messages
        await send({**start, "headers": [*start["headers"], (b"x-task-outcome", b"success")]})
        for message in rest:
            await send(message)

    return serve


starlette_floor = asgi_floor(_starlette())
flask_floor = _flask()
flask_floor.wsgi_app = wsgi_floor(flask_floor.wsgi_app)  # type: ignore[method-assign,assignment]
