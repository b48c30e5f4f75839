"""The apps ``bench/http_servers.py`` serves: the same tiny app bare and under ``TaskMiddleware``.

``POST /tasks/count`` answers ``task`` when the request was trusted as a task (the handler
sees ``current_task()``) and ``ok`` otherwise, so a run can check that its task requests
really were trusted. Loopback is the queue: ``TrustPolicy(queue_sources=["127.0.0.1"])``.

Served from the repository root as ``bench.http_apps:<name>``::

    uvicorn bench.http_apps:starlette_wrapped
    gunicorn -k gthread bench.http_apps:flask_wrapped
"""

from __future__ import annotations

from flask import Flask
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from taskhandler import TrustPolicy, current_task
from taskhandler.asgi import TaskMiddleware as AsgiTaskMiddleware
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
