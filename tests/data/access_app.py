"""A Flask app behind TaskMiddleware with the rules of access_app.yaml, for real servers.

Every protected view appends a line to the file named by ``TH_ACCESS_LOG`` before it answers,
so a test can prove from outside the server process that the view never ran.

Environment:
    TH_ACCESS_LOG: the file protected views append to.
    TH_ACCESS_KEYS: signing keys for SignedCookieAuth, newest first, separated by ``,``.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

from flask import Flask

from taskhandler.auth import SignedCookieAuth
from taskhandler.config import load_app_yaml
from taskhandler.wsgi import TaskMiddleware

HERE = Path(__file__).resolve().parent
LOG = Path(os.environ.get("TH_ACCESS_LOG", os.devnull))
KEYS = os.environ.get("TH_ACCESS_KEYS", "k" * 32).split(",")

flask_app = Flask(__name__)
# Route every spelling to a view, so that only the middleware stands between a strange
# path and the protected code: no slash merging, no trailing-slash redirects.
flask_app.url_map.merge_slashes = False
flask_app.url_map.strict_slashes = False


def _record(what: str) -> None:
    with LOG.open("a", encoding="utf-8") as f:
        f.write(what + "\n")


@flask_app.route("/", methods=["GET", "POST"])
def index() -> str:
    return "index\n"


@flask_app.route("/tasks/<path:name>", methods=["GET", "POST"])
def protected(name: str) -> str:
    _record(f"protected {name}")
    return f"protected page: {name}\n"


@flask_app.route("/members/<path:name>", methods=["GET", "POST"])
def members(name: str) -> str:
    _record(f"members {name}")
    return f"members page: {name}\n"


@flask_app.route("/secure/<path:name>", methods=["GET", "POST"])
def secure(name: str) -> str:
    _record(f"secure {name}")
    return f"secure page: {name}\n"


@flask_app.route("/public/<path:name>", methods=["GET", "POST"])
def public(name: str) -> str:
    return f"public page: {name}\n"


@flask_app.route("/<path:anything>", methods=["GET", "POST"])
def normalising(anything: str) -> tuple[str, int] | str:
    # Stands for every later component that cleans paths up (a static file server, a proxy,
    # a framework): it resolves dot segments, backslashes and repeated slashes. A spelling
    # of a protected URL that got past the rules would reach the protected view here.
    normal = posixpath.normpath("/" + anything.replace("\\", "/"))
    normal = "/" + normal.lstrip("/")
    for prefix, view in (("/tasks/", protected), ("/members/", members), ("/secure/", secure)):
        if normal.startswith(prefix):
            return view(normal[len(prefix) :])
    return "not found\n", 404


app = TaskMiddleware(
    flask_app,
    config=load_app_yaml(HERE / "access_app.yaml"),
    authenticator=SignedCookieAuth(KEYS),
)
