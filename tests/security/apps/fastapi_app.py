"""``FastAPI(root_path="/api")`` behind ``taskhandler.asgi.TaskMiddleware``.

FastAPI strips its own ``root_path`` before routing, so ``/api/admin/panel`` reaches the
``/admin/panel`` view: the rules must see that path too (SPEC §4).
"""

from __future__ import annotations

import warnings

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from taskhandler.asgi import TaskMiddleware
from tests.security.apps.asgi_app import seen
from tests.security.apps.common import AUTH, RULES, trust_from_env

with warnings.catch_warnings():
    # Deprecated in favour of the server's --root-path, but still honoured: users have it.
    warnings.simplefilter("ignore")
    api = FastAPI(root_path="/api", openapi_url=None, docs_url=None, redoc_url=None)


@api.api_route("/tasks/run", methods=["GET", "POST"])
async def task_view(request: Request) -> JSONResponse:
    return seen("task", request)


@api.api_route("/admin/panel", methods=["GET", "POST"])
async def admin_view(request: Request) -> JSONResponse:
    return seen("admin", request)


@api.api_route("/secure/page", methods=["GET", "POST"])
async def secure_view(request: Request) -> JSONResponse:
    return seen("secure", request)


@api.api_route("/public/echo", methods=["GET", "POST"])
async def echo_view(request: Request) -> JSONResponse:
    return seen("echo", request)


app = TaskMiddleware(api, trust=trust_from_env(), config=RULES, authenticator=AUTH)
