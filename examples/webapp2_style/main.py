"""The worker service: the seed's counter app behind ``TaskMiddleware`` and app.yaml's rules.

Serve it from the repository root::

    gunicorn examples.webapp2_style.main:app

Settings come from the environment, so the same module serves tests and a laptop:

- ``EXAMPLE_DB``: the SQLite file holding the counter and the task ledger (default
  ``taskhandler-webapp2-example.sqlite3`` in the temporary directory).
- ``EXAMPLE_QUEUE_SOURCES``: comma-separated addresses or CIDRs the queue calls from
  (default: App Engine's ``0.1.0.2``). Behind a local queue dispatching over HTTP, e.g.
  ``127.0.0.1``.
- ``EXAMPLE_SECRET_KEY``: at least 32 bytes; turns on the development sign-in page at
  ``/_ah/login`` so an administrator can run the handler from a browser (``login: admin``).
"""

from __future__ import annotations

import os
from pathlib import Path

from taskhandler.config import load_app_yaml
from taskhandler.trust import Authenticator, TrustPolicy
from taskhandler.wsgi import TaskMiddleware

from . import ndb_sqlite, worker

HERE = Path(__file__).resolve().parent


def trust_from_env() -> TrustPolicy:
    """The strict policy, with the queue's addresses from ``EXAMPLE_QUEUE_SOURCES`` if set."""
    sources = [s.strip() for s in os.environ.get("EXAMPLE_QUEUE_SOURCES", "").split(",")]
    sources = [s for s in sources if s]
    return TrustPolicy(queue_sources=sources) if sources else TrustPolicy()


def authenticator_from_env() -> Authenticator | None:
    """Signed-cookie sign-in when ``EXAMPLE_SECRET_KEY`` is set, else nobody can sign in."""
    key = os.environ.get("EXAMPLE_SECRET_KEY")
    if not key:
        return None
    from taskhandler.auth import SignedCookieAuth

    return SignedCookieAuth(key)


def create_app(
    *,
    trust: TrustPolicy | None = None,
    authenticator: Authenticator | None = None,
    database: str | os.PathLike[str] | None = None,
) -> TaskMiddleware:
    """The worker app under ``TaskMiddleware`` with ``app.yaml``'s ``login: admin``."""
    if database is not None:
        ndb_sqlite.configure(database)
    return TaskMiddleware(
        worker.app,
        trust=trust if trust is not None else trust_from_env(),
        config=load_app_yaml(HERE / "app.yaml"),
        authenticator=authenticator if authenticator is not None else authenticator_from_env(),
    )


app = create_app()
