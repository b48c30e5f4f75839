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
import contextlib
import errno
import hashlib
import hmac
import importlib
import inspect
import io
import ipaddress
import logging
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from . import deferred
from ._console import CONSOLE_PATH, History, QueueConsole, Recorder, history_path
from ._console.history import AsgiRecorder
from ._types import ASGIApplication, Receive, Scope, Send, StartResponse, WSGIApplication
from .auth import SignedCookieAuth
from .config import AppConfig, load_app_yaml
from .exceptions import ConfigError
from .taskqueue import LocalTaskQueue, load_queue_yaml, use
from .taskqueue._dispatch import is_asgi
from .trust import TrustPolicy

logger = logging.getLogger("taskhandler.devserver")

DEFAULT_DB = ".taskhandler-queue.sqlite3"
# MODULE:APP, or MODULE:factory() for an app factory called with no arguments.
_TARGET_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*(\(\))?$")

__all__ = [
    "CONSOLE_PATH",
    "DEFAULT_DB",
    "QueueConsole",
    "allowed_host",
    "app_target",
    "build",
    "import_app",
    "is_loopback",
    "run_serve",
]


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


# The top-level module a missing import names -> the extra that installs it.
EXTRAS = {
    "flask": "flask",
    "starlette": "asgi",
    "uvicorn": "asgi",
    "fastapi": "asgi",
    "opentelemetry": "otel",
    "sqlalchemy": "outbox",
    "psycopg": "outbox",
}


def _install_hint(missing: str | None) -> str:
    """``"; install it with: pip install 'taskhandler[flask]'"`` for a known framework."""
    extra = EXTRAS.get((missing or "").partition(".")[0])
    return f"; install it with: pip install 'taskhandler[{extra}]'" if extra else ""


def import_app(target: str) -> Any:
    """Import ``MODULE:ATTR`` (ATTR may be dotted), with the working directory importable.

    ``MODULE:factory()`` calls ``factory`` with no arguments and serves what it returns; so
    does ``MODULE:factory`` when ``factory`` is a function that takes no arguments (Flask's
    ``create_app``), since a WSGI or ASGI app takes two or three.
    """
    module_name, _, attr = target.partition(":")
    call = attr.endswith("()")
    attr = attr.removesuffix("()")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"cannot import {module_name!r}: {exc}{_install_hint(exc.name)}", value=target
        ) from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"{module_name!r} has no attribute {attr!r}", value=target) from None
    if not call and inspect.isfunction(obj) and _takes_no_arguments(obj):
        call = True
    if call:
        if not callable(obj):
            raise ConfigError(f"{attr!r} is not a function to call", value=target)
        try:
            obj = obj()
        except ImportError as exc:
            raise ConfigError(
                f"the app factory {attr}() failed: {exc}{_install_hint(exc.name)}", value=target
            ) from exc
    if not callable(obj):
        raise ConfigError("the app is not a WSGI or ASGI application", value=target)
    return obj


def _takes_no_arguments(func: Callable[..., Any]) -> bool:
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        return False
    return all(
        p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        for p in signature.parameters.values()
    )


def signing_key(db: str) -> str:
    """The key the sign-in cookie (and deferred payloads) are signed with.

    ``TASKHANDLER_SECRET_KEY`` when set; else a key kept in ``<db stem>.key`` beside the queue
    database (made on first use, readable by its owner only), so that a restart does not sign
    you out; a new key per run for ``:memory:``.
    """
    key = os.environ.get("TASKHANDLER_SECRET_KEY")
    if key:
        return key
    if db == ":memory:":
        return secrets.token_urlsafe(32)
    path = Path(db).with_name(f"{Path(db).stem}.key")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        stat = path.stat()
        owner = os.getuid() if hasattr(os, "getuid") else stat.st_uid  # POSIX only
        if stat.st_uid != owner or stat.st_mode & 0o077:
            raise ConfigError(
                "the sign-in key file must belong to you and be readable by you only "
                "(chmod 600), or anyone who can read it can sign in as an administrator",
                path=str(path),
            ) from None
        key = path.read_text(encoding="ascii").strip()
        if len(key) >= 32:
            return key
        raise ConfigError(
            "the sign-in key file is shorter than 32 characters: delete it to make a new one",
            path=str(path),
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot write the sign-in key ({exc.strerror})", path=str(path)) from exc
    key = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w", encoding="ascii") as file:
        file.write(key + "\n")
    return key


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


@dataclass
class Served:
    """What ``taskhandler serve`` runs: the app behind the router, its queue and console."""

    app: Any
    queue: LocalTaskQueue
    asgi: bool
    console: QueueConsole
    recorder: Recorder
    history: History


def build(args: argparse.Namespace) -> Served:
    """Build the app to serve, its queue, console and history from the ``serve`` arguments."""
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
    db = str(args.db or DEFAULT_DB)
    key = signing_key(db)
    auth = SignedCookieAuth(key)
    trust = TrustPolicy.development()
    asgi = is_asgi(app)
    app = mount_builtins(app, config, asgi=asgi, key=key, db=db)
    wrapped: Any
    if asgi:
        from .asgi import TaskMiddleware as AsgiTaskMiddleware

        wrapped = AsgiTaskMiddleware(app, trust=trust, config=config, authenticator=auth)
    else:
        from .wsgi import TaskMiddleware

        wrapped = TaskMiddleware(app, trust=trust, config=config, authenticator=auth)
    history = History(history_path(db), limit=getattr(args, "history", None) or 10_000)
    recorder = (AsgiRecorder if asgi else Recorder)(wrapped, history)
    queue = LocalTaskQueue(recorder, db=db, queues=queues)
    history.clock = queue.now
    # The console's forms carry a token derived from the key: it stays valid across restarts.
    token = hmac.new(key.encode(), b"taskhandler console", hashlib.sha256).hexdigest()
    console = QueueConsole(queue, auth, db=db, history=history, token=token)
    served: Any
    if asgi:
        served = _AsgiRouter(wrapped, console, bound=args.host)
    else:
        served = _Router(wrapped, console, bound=args.host)
    return Served(served, queue, asgi, console, recorder, history)


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``; ConfigError (not a traceback) when it is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"port {port} on {host} is already in use (another server is running?): stop "
                "it or choose another port with --port",
                value=port,
            ) from None
        raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror})", value=port) from None
    sock.set_inheritable(True)
    return sock


def run_serve(args: argparse.Namespace) -> int:
    """Run the development server until interrupted (Ctrl-C or SIGTERM); return the exit code.

    With ``--reload`` this process only watches the files and runs the server in a child
    process, started again whenever a ``.py`` or ``.yaml`` file changes.
    """
    watcher = os.environ.get(_CHILD, "")
    if getattr(args, "reload", False) and not watcher.isdigit():
        return _reload_loop(args)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sock = _bind(args.host, args.port)
    try:
        served = build(args)
    except BaseException:
        sock.close()
        raise
    queue = served.queue
    use(queue)
    served.recorder.install()
    queue.start()
    relay = None
    if getattr(args, "outbox_db_url", None):  # the app's outbox table, relayed to this queue
        from .outbox import Outbox

        relay = Outbox(args.outbox_db_url, backend=queue)
        relay.create_table()
        relay.start()
    shown_host = f"[{args.host}]" if ":" in args.host else args.host
    url = f"http://{shown_host}:{args.port}"
    cron = None
    try:
        if getattr(args, "cron_yaml", None):  # cron.yaml's jobs, added to this queue on time
            from ._cron_runner import start_local_cron

            cron = start_local_cron(args.cron_yaml, clock=queue.now)
        if served.asgi:
            try:
                import uvicorn
            except ImportError:
                raise ConfigError(
                    "serving an ASGI app needs uvicorn; install it with: "
                    "pip install 'taskhandler[asgi]'"
                ) from None
            server = uvicorn.Server(uvicorn.Config(served.app, log_level="warning"))
            if watcher.isdigit():

                def stop_uvicorn() -> None:
                    server.should_exit = True

                _exit_with_watcher(int(watcher), stop_uvicorn)
            _announce(url)
            server.run(sockets=[sock])
        else:
            from werkzeug.serving import make_server

            wsgi_server = make_server(
                args.host, args.port, served.app, threaded=True, fd=sock.fileno()
            )
            if watcher.isdigit():
                _exit_with_watcher(int(watcher), wsgi_server.shutdown)
            _announce(url)

            def shutdown(signum: int, frame: object) -> None:
                threading.Thread(target=wsgi_server.shutdown, daemon=True).start()

            previous = signal.signal(signal.SIGTERM, shutdown)
            try:
                wsgi_server.serve_forever()
            except KeyboardInterrupt:
                pass
            finally:
                signal.signal(signal.SIGTERM, previous)
                wsgi_server.server_close()
    finally:
        if cron is not None:
            cron.stop()
        if relay is not None:
            relay.close()
        queue.close()
        served.recorder.uninstall()
        served.console.close()
        served.history.close()
        sock.close()
        use(None)
    return 0


def _announce(url: str) -> None:
    print(
        f"taskhandler: serving on {url} (queue console {url}{CONSOLE_PATH}, "
        f"sign in at {url}/_ah/login)",
        flush=True,
    )


# -- serve --reload -----------------------------------------------------------------------------

_CHILD = "TASKHANDLER_RELOAD_CHILD"
_WATCHED = (".py", ".yaml", ".yml")


def _snapshot(root: Path) -> dict[str, float]:
    """Modification times of the watched files under ``root`` (hidden folders and virtual
    environments skipped)."""
    times: dict[str, float] = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [
            d
            for d in dirs
            if not d.startswith(".") and d not in ("__pycache__", "node_modules", "venv")
        ]
        for name in files:
            if name.endswith(_WATCHED):
                path = os.path.join(folder, name)
                with contextlib.suppress(OSError):
                    times[path] = os.stat(path).st_mtime
    return times


def _changes(root: Path, interval: float = 0.5) -> Iterator[None]:
    """Yield once per change of a watched file: with watchfiles when it is installed, else by
    looking at modification times every ``interval`` seconds."""
    try:
        import watchfiles  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        before = _snapshot(root)
        while True:
            time.sleep(interval)
            now = _snapshot(root)
            if now != before:
                before = now
                yield
    else:
        for _ in watchfiles.watch(root, watch_filter=lambda change, path: path.endswith(_WATCHED)):
            yield


def _reload_loop(args: argparse.Namespace) -> int:
    """Run the server in a child process; start it again when a watched file changes."""
    command = [sys.executable, "-m", "taskhandler.cli", *sys.argv[1:]]
    env = {**os.environ, _CHILD: str(os.getpid())}
    root = Path.cwd()
    print(f"taskhandler: watching {root} for changes (.py, .yaml)", flush=True)

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # leave through the finally below, which stops the server

    previous = signal.signal(signal.SIGTERM, stop)
    child = subprocess.Popen(command, env=env)  # noqa: S603 - our own command line
    try:
        for _ in _changes(root):
            print("taskhandler: a file changed; restarting", flush=True)
            child.terminate()
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            child = subprocess.Popen(command, env=env)  # noqa: S603 - our own command line
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
    return 0


def _exit_with_watcher(watcher: int, stop: Callable[[], None]) -> None:
    """In a server ``--reload`` started: call ``stop`` once the watching process is gone (even
    killed with SIGKILL), so no server is left behind holding the port."""

    def watch() -> None:
        while os.getppid() == watcher:
            time.sleep(0.5)
        logger.warning("the --reload watcher is gone; stopping")
        stop()

    threading.Thread(target=watch, name="taskhandler-reload-watch", daemon=True).start()
