"""The WSGI app under test: Flask views behind ``taskhandler.wsgi.TaskMiddleware``.

Variants (each a module attribute a server is pointed at):

- ``app``: the views under one middleware with the suite's rules;
- ``nested``: an outer middleware with no config around an inner one holding the rules;
- ``proxyfix_outside`` / ``proxyfix_inside``: werkzeug ``ProxyFix(x_prefix=1, x_for=1,
  x_proto=1)`` around, or inside, the middleware.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, request
from werkzeug.middleware.proxy_fix import ProxyFix

from taskhandler.wsgi import TaskMiddleware
from tests.security.apps.common import AUTH, RULES, record, trust_from_env


def _seen(view: str) -> dict[str, Any]:
    environ = request.environ
    return record(
        view,
        {name.lower(): value for name, value in request.headers.items()},
        remote=environ.get("REMOTE_ADDR"),
        scheme=environ.get("wsgi.url_scheme"),
        script_name=environ.get("SCRIPT_NAME"),
        path_info=environ.get("PATH_INFO"),
        environ_keys=sorted(k for k in environ if k.startswith("HTTP_")),
    )


def views() -> Flask:
    """A fresh Flask app with the suite's views."""
    flask_app = Flask(__name__)

    @flask_app.route("/tasks/run", methods=["GET", "POST"])
    def task_view() -> dict[str, Any]:
        return _seen("task")

    @flask_app.route("/admin/panel", methods=["GET", "POST"])
    def admin_view() -> dict[str, Any]:
        return _seen("admin")

    @flask_app.route("/secure/page", methods=["GET", "POST"])
    def secure_view() -> dict[str, Any]:
        return _seen("secure")

    @flask_app.route("/public/echo", methods=["GET", "POST"])
    def echo_view() -> dict[str, Any]:
        return _seen("echo")

    return flask_app


def _middleware(inner: Any) -> TaskMiddleware:
    return TaskMiddleware(inner, trust=trust_from_env(), config=RULES, authenticator=AUTH)


app = _middleware(views().wsgi_app)
nested = TaskMiddleware(
    TaskMiddleware(views().wsgi_app, config=RULES, authenticator=AUTH), trust=trust_from_env()
)
proxyfix_outside = ProxyFix(_middleware(views().wsgi_app), x_for=1, x_proto=1, x_prefix=1)
proxyfix_inside = _middleware(ProxyFix(views().wsgi_app, x_for=1, x_proto=1, x_prefix=1))
