"""The ASGI twin of access_app.py: Starlette behind the ASGI TaskMiddleware, same rules.

Same views, same log file, same normalising catch-all, so the hostile-input table can be
run under uvicorn with the same verdicts as under the WSGI servers.
"""

from __future__ import annotations

import posixpath

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from taskhandler.asgi import TaskMiddleware
from taskhandler.auth import SignedCookieAuth
from taskhandler.config import load_app_yaml
from tests.data.access_app import HERE, KEYS, _record


def _view(kind: str, name: str) -> PlainTextResponse:
    if kind != "public":
        _record(f"{kind} {name}")
    label = "protected" if kind == "protected" else kind
    return PlainTextResponse(f"{label} page: {name}\n")


def _route(kind: str) -> Route:
    async def endpoint(request: Request) -> PlainTextResponse:
        return _view(kind, request.path_params["name"])

    prefix = "tasks" if kind == "protected" else kind
    return Route(f"/{prefix}/{{name:path}}", endpoint, methods=["GET", "POST"])


async def index(request: Request) -> PlainTextResponse:
    return PlainTextResponse("index\n")


async def normalising(request: Request) -> PlainTextResponse:
    # As in access_app.py: a later component that cleans paths up would hand a spelling
    # that slipped past the rules to the protected view.
    anything = request.path_params["anything"]
    normal = "/" + posixpath.normpath("/" + anything.replace("\\", "/")).lstrip("/")
    for prefix, kind in (
        ("/tasks/", "protected"),
        ("/members/", "members"),
        ("/secure/", "secure"),
    ):
        if normal.startswith(prefix):
            return _view(kind, normal[len(prefix) :])
    return PlainTextResponse("not found\n", status_code=404)


starlette_app = Starlette(
    routes=[
        Route("/", index, methods=["GET", "POST"]),
        _route("protected"),
        _route("members"),
        _route("secure"),
        _route("public"),
        Route("/{anything:path}", normalising, methods=["GET", "POST"]),
    ]
)
starlette_app.router.redirect_slashes = False

app = TaskMiddleware(
    starlette_app,
    config=load_app_yaml(HERE / "access_app.yaml"),
    authenticator=SignedCookieAuth(KEYS),
)
