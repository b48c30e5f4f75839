"""``taskhandler serve``: the development server, with a local push queue and its console.

One process runs, on one machine and with no cloud account, the whole loop:

- the app (``MODULE:APP``, or app.yaml's ``entrypoint``) under ``TaskMiddleware`` in
  development trust, with app.yaml's access rules and the development sign-in page
  (``/_ah/login``);
- a :class:`~taskhandler.taskqueue.LocalTaskQueue` in a SQLite file, installed as the queue
  ``taskqueue.add()`` uses, delivering to the app in-process (peer ``0.1.0.2``);
- a console at ``/_ah/admin/queues`` for administrators: queues, pending tasks with their ETA and
  retry count, and *run now*, *delete*, *purge*;
- with ``builtins: - deferred: on`` in app.yaml, :mod:`taskhandler.deferred`'s handler at
  ``/_ah/queue/deferred`` (behind ``login: admin``), large calls kept beside the database.

Development trust believes any request's task headers, so the server refuses to listen on an
address other than loopback, and answers only requests addressed to a loopback name
(:func:`allowed_host`): a web page whose own DNS name is made to resolve to 127.0.0.1 (DNS
rebinding) gets ``400 Host not allowed`` and reaches neither the app nor the console.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import hmac
import html
import importlib
import io
import ipaddress
import logging
import os
import re
import secrets
import signal
import sys
import threading
import urllib.parse
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, cast

from . import deferred
from ._types import ASGIApplication, Receive, Scope, Send, StartResponse, WSGIApplication
from .auth import LOGOUT_PATH, SignedCookieAuth, same_origin
from .config import AppConfig, load_app_yaml
from .exceptions import ConfigError
from .taskqueue import InternalError, LocalTaskQueue, TransientError, load_queue_yaml, use
from .taskqueue._dispatch import is_asgi
from .trust import TrustPolicy
from .wsgi import request_info

logger = logging.getLogger("taskhandler.devserver")

CONSOLE_PATH = "/_ah/admin/queues"
DEFAULT_DB = ".taskhandler-queue.sqlite3"
_TARGET_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# A Host header: a registered name or IPv4 address, or an IPv6 literal in brackets, and an
# optional port. Anything else (user-info, spaces, a comma from two joined Host headers,
# a path) is not a Host a browser sends.
_HOST = re.compile(
    r"(?P<name>[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(?::(?P<port>[0-9]{1,5}))?"
)
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_SHOWN_HOST_CHARS = 100


def _host_name(name: str) -> str:
    """A host or bind address compared by value: lower case, IPs in their canonical form."""
    name = name.lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return name


def allowed_host(host: str | None, bound: str) -> bool:
    """Whether the development server answers a request whose ``Host`` header is ``host``.

    The server listens on loopback only, but a browser will still send it the requests of
    a page on ``evil.example`` once that name resolves to 127.0.0.1 (DNS rebinding); the
    ``Host`` header is then ``evil.example``. Allowed are only names that no one else can
    make resolve here, with any port (a forwarded port, e.g. ``ssh -L``, changes it):

    - ``localhost`` and ``*.localhost`` (browsers resolve these to loopback themselves);
    - an IPv4 address in 127.0.0.0/8 in dotted-quad form (what a browser sends, even for a
      URL written ``127.1`` or ``0x7f.1``), and ``[::1]``;
    - the address the server is bound to (``--host``), spelt the same way.

    Refused: every other name, a trailing dot (``localhost.``), a missing or empty
    ``Host``, two ``Host`` headers (joined with a comma), user-info (``a@127.0.0.1``),
    ``0.0.0.0``, and IPv4-mapped IPv6 (``[::ffff:127.0.0.1]``).

    Example::

        >>> allowed_host("localhost:8080", "127.0.0.1")
        True
        >>> allowed_host("evil.example:8080", "127.0.0.1")
        False
    """
    if not host:
        return False
    match = _HOST.fullmatch(host)
    if match is None or (match["port"] is not None and int(match["port"]) > 65535):
        return False
    name = match["name"].lower()
    if name.startswith("["):
        try:
            if ipaddress.IPv6Address(name[1:-1]).is_loopback:
                return True
        except ValueError:
            return False
    elif name == "localhost" or (
        name.endswith(".localhost") and all(_LABEL.fullmatch(label) for label in name.split("."))
    ):
        return True
    else:
        try:
            if ipaddress.IPv4Address(name).is_loopback:
                return True
        except ValueError:
            pass
    return _host_name(name) == _host_name(bound)


def _shown_host(host: str | None) -> str:
    """The refused ``Host`` as one short line of printable ASCII."""
    if not host:
        return "(none)"
    text = "".join(c if " " <= c <= "~" else "?" for c in host[:_SHOWN_HOST_CHARS])
    return text + ("..." if len(host) > _SHOWN_HOST_CHARS else "")


def _refusal(host: str | None) -> tuple[str, list[tuple[str, str]], bytes]:
    """The ``400`` answer to a request for a ``Host`` the server does not answer."""
    shown = _shown_host(host)
    logger.warning(
        "refused a request for Host %s: the development server answers loopback names "
        "only (localhost, 127.0.0.1, [::1]) so that other sites cannot reach it "
        "through DNS rebinding",
        shown,
    )
    body = f"Host not allowed: {shown}\n".encode()
    headers = [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", str(len(body))),
        ("Cache-Control", "no-store"),
        ("X-Content-Type-Options", "nosniff"),
    ]
    return "400 Bad Request", headers, body


def app_target(app: str | None, config: AppConfig | None) -> str:
    """The ``MODULE:APP`` to serve: the argument, else the one named in app.yaml's entrypoint.

    Raises:
        ConfigError: neither gives one.
    """
    if app:
        if not _TARGET_RE.match(app):
            raise ConfigError("the app must be given as MODULE:APP", value=app)
        return app
    entrypoint = None if config is None else config.entrypoint
    if entrypoint:
        for word in entrypoint.split():
            if _TARGET_RE.match(word):
                return word
    raise ConfigError(
        "name the app (taskhandler serve MODULE:APP) or give an app.yaml whose entrypoint names it",
        path=None if config is None else config.source,
        value=entrypoint,
    )


def import_app(target: str) -> Any:
    """Import ``MODULE:ATTR`` (ATTR may be dotted), with the working directory importable."""
    module_name, _, attr = target.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import {module_name!r}: {exc}", value=target) from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"{module_name!r} has no attribute {attr!r}", value=target) from None
    if not callable(obj):
        raise ConfigError("the app is not a WSGI or ASGI application", value=target)
    return obj


# -- the console -----------------------------------------------------------------------------


def _when(moment: datetime.datetime, now: float) -> str:
    delta = moment.timestamp() - now
    words = (
        "now" if abs(delta) < 0.5 else (f"in {delta:.0f} s" if delta > 0 else f"{-delta:.0f} s ago")
    )
    return f"{moment.strftime('%Y-%m-%d %H:%M:%S')} UTC ({words})"


class QueueConsole:
    """The ``/_ah/admin/queues`` pages (WSGI): administrators only.

    Args:
        queue: the queue to show and act on.
        auth: the authenticator telling who is signed in; non-admins get 403, nobody a
            redirect to its sign-in page.
    """

    def __init__(self, queue: LocalTaskQueue, auth: SignedCookieAuth) -> None:
        self.queue = queue
        self.auth = auth
        # Forms carry this token: the cookie is SameSite=Strict, and the token also
        # stops a cross-site form from running or deleting tasks.
        self.token = secrets.token_urlsafe(24)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        try:
            return self._serve(environ, start_response)
        except (TransientError, InternalError) as exc:
            # The queue's storage failed (disk full, locked, deleted): say so, not a 500.
            status = "503 Service Unavailable" if isinstance(exc, TransientError) else "500 Error"
            return self._page(start_response, status, f"<p>{html.escape(str(exc))}</p>")

    def _serve(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        request = request_info(environ)
        user = self.auth(request)
        if user is None:
            target = urllib.parse.quote(CONSOLE_PATH, safe="/")
            location = f"{self.auth.login_url}?continue={target}"
            start_response("302 Found", [("Location", location), ("Content-Length", "0")])
            return [b""]
        if not user.is_admin:
            return self._page(start_response, "403 Forbidden", "<p>Administrators only.</p>")
        path = environ.get("PATH_INFO", "")
        if environ.get("REQUEST_METHOD") == "POST":
            # Every action changes state: it must come from the console's own page.
            if not same_origin(request):
                return self._page(
                    start_response, "403 Forbidden", "<p>Cross-site request refused.</p>"
                )
            return self._act(environ, start_response, path)
        if path.rstrip("/") != CONSOLE_PATH:
            return self._page(start_response, "404 Not Found", "<p>Not found.</p>")
        return self._page(start_response, "200 OK", _signed_in(user.email) + self._overview())

    def _act(
        self, environ: dict[str, Any], start_response: StartResponse, path: str
    ) -> Iterable[bytes]:
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        form = dict(
            urllib.parse.parse_qsl(
                environ["wsgi.input"].read(min(length, 65536)).decode("utf-8", "replace")
            )
        )
        if not hmac.compare_digest(form.get("token", ""), self.token):
            return self._page(
                start_response, "403 Forbidden", "<p>Stale form: reload the page.</p>"
            )
        queue_name = form.get("queue", "")
        if queue_name not in self.queue.queues:
            return self._page(start_response, "400 Bad Request", "<p>Unknown queue.</p>")
        action = path.rsplit("/", 1)[-1]
        name = form.get("name", "")
        if action == "run":
            self.queue.run_now(queue_name, name)
        elif action == "delete":
            self.queue.delete(queue_name, name)
        elif action == "purge":
            self.queue.purge(queue_name)
        else:
            return self._page(start_response, "404 Not Found", "<p>Not found.</p>")
        start_response("303 See Other", [("Location", CONSOLE_PATH), ("Content-Length", "0")])
        return [b""]

    def _button(self, action: str, label: str, queue_name: str, name: str = "") -> str:
        e = html.escape
        return (
            f'<form method="post" action="{CONSOLE_PATH}/{action}" class="inline">'
            f'<input type="hidden" name="token" value="{e(self.token)}">'
            f'<input type="hidden" name="queue" value="{e(queue_name)}">'
            f'<input type="hidden" name="name" value="{e(name)}">'
            f'<button type="submit" data-action="{action}" data-task="{e(name)}">'
            f"{e(label)}</button>"
            "</form>"
        )

    def _overview(self) -> str:
        e = html.escape
        now = self.queue.now()
        counts = self.queue.counts()
        parts: list[str] = []
        for queue_name, config in self.queue.queues.items():
            c = counts.get(queue_name, {})
            rate = "paused" if config.paused else f"{config.rate:g}/s"
            limit = config.max_concurrent_requests or "-"
            parts.append(
                f'<section data-queue="{e(queue_name)}"><h2>{e(queue_name)}</h2>'
                f"<p>rate {e(rate)}, bucket {config.bucket_size}, max concurrent {limit}, "
                f"mode {e(config.mode)}; pending {c.get('pending', 0)}, running "
                f"{c.get('leased', 0)}, done {c.get('done', 0)}, failed {c.get('failed', 0)}</p>"
            )
            tasks = self.queue.tasks(queue_name) if config.mode == "push" else []
            if tasks:
                parts.append(
                    "<table><tr><th>task</th><th>method</th><th>url</th><th>ETA</th>"
                    "<th>retries</th><th>last response</th><th>reason</th><th></th></tr>"
                )
                for t in tasks:
                    actions = ""
                    if t.state == "pending":
                        actions = self._button("run", "Run now", queue_name, t.task_name)
                    actions += self._button("delete", "Delete", queue_name, t.task_name)
                    parts.append(
                        f'<tr data-task="{e(t.task_name)}"><td>{e(t.task_name)}</td>'
                        f"<td>{e(t.method)}</td><td>{e(t.url)}</td><td>{e(_when(t.eta, now))}</td>"
                        f"<td>{t.retry_count}</td><td>{t.previous_response or ''}</td>"
                        f"<td>{e(t.retry_reason or '')}</td><td>{actions}</td></tr>"
                    )
                parts.append("</table>")
                parts.append(self._button("purge", "Purge queue", queue_name))
            else:
                parts.append("<p>No pending tasks.</p>")
            parts.append("</section>")
        return "".join(parts)

    def _page(self, start_response: StartResponse, status: str, body: str) -> Iterable[bytes]:
        page = (
            "<!doctype html><html><head><meta charset='utf-8'><title>Task queues</title>"
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}"
            "form.inline{display:inline}</style></head><body><h1>Task queues</h1>"
            f"{body}</body></html>"
        ).encode()
        start_response(
            status,
            [
                ("Content-Type", "text/html; charset=utf-8"),
                ("Content-Length", str(len(page))),
                ("Cache-Control", "no-store"),
                ("X-Frame-Options", "DENY"),
            ],
        )
        return [page]


def _signed_in(email: str) -> str:
    logout = f"{LOGOUT_PATH}?{urllib.parse.urlencode({'continue': CONSOLE_PATH})}"
    return (
        f'<p id="current">Signed in as {html.escape(email)} (administrator). '
        f'<a id="logout" href="{html.escape(logout)}">Sign out</a></p>'
    )


class _Router:
    """Refuses foreign ``Host`` names, then sends console paths to the console and
    everything else to the app (WSGI)."""

    def __init__(
        self, app: WSGIApplication, console: QueueConsole, *, bound: str = "127.0.0.1"
    ) -> None:
        self.app = app
        self.console = console
        self.bound = bound

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        # werkzeug joins repeated headers with "," (never valid in a Host) and leaves
        # HTTP_HOST out when the request has none.
        host = environ.get("HTTP_HOST")
        if not allowed_host(host, self.bound):
            status, headers, body = _refusal(host)
            start_response(status, headers)
            return [body]
        path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
        if path == CONSOLE_PATH or path.startswith(CONSOLE_PATH + "/"):
            return self.console(environ, start_response)
        return self.app(environ, start_response)


class _AsgiRouter:
    """The ASGI counterpart: foreign ``Host`` names refused (HTTP and WebSocket), console
    requests run the WSGI console in a thread."""

    def __init__(
        self, app: ASGIApplication, console: QueueConsole, *, bound: str = "127.0.0.1"
    ) -> None:
        self.app = app
        self.console = console
        self.bound = bound

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            # Copies joined with "," as a WSGI server does (never valid in a Host).
            values = [v for k, v in scope.get("headers", []) if k.lower() == b"host"]
            host = b",".join(values).decode("latin-1") if values else None
            if not allowed_host(host, self.bound):
                await _refuse(scope, send, host)
                return
        path = scope.get("root_path", "") + scope.get("path", "")
        if scope["type"] != "http" or not (
            path == CONSOLE_PATH or path.startswith(CONSOLE_PATH + "/")
        ):
            await self.app(scope, receive, send)
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        environ: dict[str, Any] = {
            "REQUEST_METHOD": scope["method"],
            "SCRIPT_NAME": "",
            "PATH_INFO": scope["path"],
            "QUERY_STRING": scope.get("query_string", b"").decode("latin-1"),
            "SERVER_NAME": "localhost",
            "SERVER_PORT": "80",
            "REMOTE_ADDR": (scope.get("client") or ("", 0))[0],
            "CONTENT_LENGTH": str(len(body)),
            "wsgi.input": io.BytesIO(body),
            "wsgi.url_scheme": scope.get("scheme", "http"),
        }
        for name, value in scope.get("headers", []):
            key = name.decode("latin-1").upper().replace("-", "_")
            if key == "CONTENT_TYPE":
                environ[key] = value.decode("latin-1")
            else:
                environ[f"HTTP_{key}"] = value.decode("latin-1")
        status: list[str] = []
        headers: list[tuple[str, str]] = []

        def start_response(
            status_line: str, response_headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Callable[[bytes], object]:
            status[:] = [status_line]
            headers[:] = response_headers
            return lambda data: None

        chunks = await asyncio.to_thread(
            lambda: b"".join(self.console(environ, cast(StartResponse, start_response)))
        )
        await send(
            {
                "type": "http.response.start",
                "status": int(status[0].split()[0]),
                "headers": [(k.lower().encode(), v.encode()) for k, v in headers],
            }
        )
        await send({"type": "http.response.body", "body": chunks})


async def _refuse(scope: Scope, send: Send, host: str | None) -> None:
    status, headers, body = _refusal(host)
    if scope["type"] == "websocket":
        # Closing before accepting makes the server answer the handshake with 403.
        await send({"type": "websocket.close", "code": 1008})
        return
    await send(
        {
            "type": "http.response.start",
            "status": int(status.split()[0]),
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


# -- app.yaml builtins -----------------------------------------------------------------------


class _DeferredRoute:
    """Sends ``/_ah/queue/deferred`` to :data:`taskhandler.deferred.application` (WSGI)."""

    def __init__(self, app: WSGIApplication) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
        if path == deferred.DEFAULT_URL:
            return deferred.application(environ, start_response)
        return self.app(environ, start_response)


class _AsgiDeferredRoute:
    """Sends ``/_ah/queue/deferred`` to :data:`taskhandler.deferred.asgi_application`."""

    def __init__(self, app: ASGIApplication) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("root_path", "") + scope.get("path", "")
        if scope["type"] == "http" and path == deferred.DEFAULT_URL:
            await deferred.asgi_application(scope, receive, send)
            return
        await self.app(scope, receive, send)


def mount_builtins(app: Any, config: AppConfig | None, *, asgi: bool, key: str, db: str) -> Any:
    """``app`` with app.yaml's builtins mounted: ``deferred: on`` -> ``/_ah/queue/deferred``.

    The handler sits inside the ``TaskMiddleware`` that wraps the result, so app.yaml's rules
    (``login: admin`` on that URL, added by the builtin) apply to it. Unless the app set them
    itself, deferred payloads are signed with ``key`` and large calls are kept in
    ``<db stem>.deferred.sqlite3`` beside the queue database (in memory for ``:memory:``).
    """
    if config is None or "deferred" not in config.builtins:
        return app
    if not deferred.has_secret_key():
        deferred.configure(secret_key=key)
        logger.warning(
            "deferred payloads are signed with a key made for this run: set "
            "TASKHANDLER_SECRET_KEY so that deferred tasks survive a restart"
        )
    if deferred.current_store() is None:
        store: deferred.DeferredStore = (
            deferred.MemoryDeferredStore()
            if db == ":memory:"
            else deferred.SqliteDeferredStore(deferred.SqliteDeferredStore.beside(db))
        )
        deferred.configure(store=store)
    return _AsgiDeferredRoute(app) if asgi else _DeferredRoute(app)


# -- the server ------------------------------------------------------------------------------


def build(args: argparse.Namespace) -> tuple[Any, LocalTaskQueue, bool]:
    """Build (the app to serve, its queue, whether it is ASGI) from the ``serve`` arguments."""
    if not is_loopback(args.host):
        raise ConfigError(
            "the development server trusts every request's task headers; it listens on "
            "loopback only (use --host 127.0.0.1)",
            value=args.host,
        )
    app_yaml = args.app_yaml
    if app_yaml is None and Path("app.yaml").is_file():
        app_yaml = "app.yaml"
    config = load_app_yaml(app_yaml) if app_yaml else None
    queue_yaml = args.queue_yaml
    if queue_yaml is None:
        beside = Path(app_yaml).parent / "queue.yaml" if app_yaml else Path("queue.yaml")
        queue_yaml = str(beside) if beside.is_file() else None
    queues = load_queue_yaml(queue_yaml) if queue_yaml else None
    app = import_app(app_target(args.app, config))
    key = os.environ.get("TASKHANDLER_SECRET_KEY") or secrets.token_urlsafe(32)
    auth = SignedCookieAuth(key)
    trust = TrustPolicy.development()
    asgi = is_asgi(app)
    app = mount_builtins(app, config, asgi=asgi, key=key, db=str(args.db or DEFAULT_DB))
    wrapped: Any
    if asgi:
        from .asgi import TaskMiddleware as AsgiTaskMiddleware

        wrapped = AsgiTaskMiddleware(app, trust=trust, config=config, authenticator=auth)
    else:
        from .wsgi import TaskMiddleware

        wrapped = TaskMiddleware(app, trust=trust, config=config, authenticator=auth)
    queue = LocalTaskQueue(wrapped, db=args.db or DEFAULT_DB, queues=queues)
    console = QueueConsole(queue, auth)
    served: Any
    if asgi:
        served = _AsgiRouter(wrapped, console, bound=args.host)
    else:
        served = _Router(wrapped, console, bound=args.host)
    return served, queue, asgi


def run_serve(args: argparse.Namespace) -> int:
    """Run the development server until interrupted (Ctrl-C or SIGTERM); return the exit code."""
    served, queue, asgi = build(args)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    use(queue)
    queue.start()
    relay = None
    if getattr(args, "outbox_db_url", None):  # the app's outbox table, relayed to this queue
        from .outbox import Outbox

        relay = Outbox(args.outbox_db_url, backend=queue)
        relay.create_table()
        relay.start()
    url = f"http://{args.host}:{args.port}"
    print(
        f"taskhandler: serving on {url} (queue console {url}{CONSOLE_PATH}, "
        f"sign in at {url}/_ah/login)",
        flush=True,
    )
    try:
        if asgi:
            try:
                import uvicorn
            except ImportError:
                raise ConfigError("serving an ASGI app needs uvicorn installed") from None
            uvicorn.run(served, host=args.host, port=args.port, log_level="warning")
        else:
            from werkzeug.serving import make_server

            server = make_server(args.host, args.port, served, threaded=True)

            def shutdown(signum: int, frame: object) -> None:
                threading.Thread(target=server.shutdown, daemon=True).start()

            previous = signal.signal(signal.SIGTERM, shutdown)
            try:
                server.serve_forever()
            except KeyboardInterrupt:
                pass
            finally:
                signal.signal(signal.SIGTERM, previous)
                server.server_close()
    finally:
        if relay is not None:
            relay.close()
        queue.close()
        use(None)
    return 0
