"""The ASGI app under test: Starlette views behind ``taskhandler.asgi.TaskMiddleware``.

Variants (each a module attribute a server is pointed at):

- ``app``: the views under one middleware with the suite's rules;
- ``nested``: an outer middleware with no config around an inner one holding the rules;
- ``hypercorn_legacy`` / ``hypercorn_modern``: hypercorn's ``ProxyFixMiddleware``
  (``X-Forwarded-*`` / ``Forwarded``, one trusted hop) around the middleware, as its docs
  deploy it;
- ``granian_proxy``: granian's ``wrap_asgi_with_proxy_headers`` (trusting 127.0.0.1) around it.
"""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from taskhandler.asgi import TaskMiddleware
from tests.security.apps.common import AUTH, RULES, record, trust_from_env


def seen(view: str, request: Request) -> JSONResponse:
    """Record what ``view`` saw of ``request``; answer it as JSON."""
    scope = request.scope
    client = scope.get("client")
    entry = record(
        view,
        {name.lower(): value for name, value in request.headers.items()},
        remote=client[0] if client else None,
        scheme=scope.get("scheme"),
        root_path=scope.get("root_path"),
        path=scope.get("path"),
        raw_names=sorted({name.decode("latin-1") for name, _ in scope["headers"]}),
    )
    return JSONResponse(entry)


async def task_view(request: Request) -> JSONResponse:
    return seen("task", request)


async def admin_view(request: Request) -> JSONResponse:
    return seen("admin", request)


async def secure_view(request: Request) -> JSONResponse:
    return seen("secure", request)


async def echo_view(request: Request) -> JSONResponse:
    return seen("echo", request)


ROUTES = [
    Route("/tasks/run", task_view, methods=["GET", "POST"]),
    Route("/admin/panel", admin_view, methods=["GET", "POST"]),
    Route("/secure/page", secure_view, methods=["GET", "POST"]),
    Route("/public/echo", echo_view, methods=["GET", "POST"]),
]


def _middleware(inner: Any) -> TaskMiddleware:
    return TaskMiddleware(inner, trust=trust_from_env(), config=RULES, authenticator=AUTH)


app = _middleware(Starlette(routes=ROUTES))
nested = TaskMiddleware(
    TaskMiddleware(Starlette(routes=ROUTES), config=RULES, authenticator=AUTH),
    trust=trust_from_env(),
)


# Server-side proxy modes, wrapped around the middleware as their docs deploy them. Built
# only where the server is installed (the suite skips their backends otherwise).
try:
    from hypercorn.middleware import ProxyFixMiddleware
except ImportError:  # pragma: no cover - hypercorn missing
    pass
else:
    hypercorn_legacy = ProxyFixMiddleware(
        _middleware(Starlette(routes=ROUTES)), mode="legacy", trusted_hops=1
    )
    hypercorn_modern = ProxyFixMiddleware(
        _middleware(Starlette(routes=ROUTES)), mode="modern", trusted_hops=1
    )
try:
    from granian.utils.proxies import wrap_asgi_with_proxy_headers
except ImportError:  # pragma: no cover - granian missing
    pass
else:
    granian_proxy = wrap_asgi_with_proxy_headers(_middleware(Starlette(routes=ROUTES)), "127.0.0.1")
