"""End-to-end security suite: real servers behind real proxies, a stranger on another address.

Every case is a raw HTTP/1.1 request from **127.0.0.2** (the stranger; the queue's stand-in
is 127.0.0.3, proxies reach the servers from 127.0.0.1) to a real server running one of the
apps in ``apps/`` (Flask / Starlette / FastAPI behind ``TaskMiddleware``, Django behind
``taskhandler.django.TaskMiddleware``, rules
``/admin/.*`` and ``/tasks/.*`` ``login: admin``, ``/secure/.*`` ``secure: always``,
``SignedCookieAuth``). Each view appends a JSON line to its server's record file when it
runs; that record, not the status code, is every test's verdict.

The matrix (``launch.py`` starts it once per session, in parallel; ~30 s on two cores):

- servers (``launch.SERVERS``), default settings: gunicorn sync and gthread, waitress,
  werkzeug ``run_simple``, cheroot, wsgiref, hypercorn and granian (WSGI); uvicorn h11 and
  httptools, gunicorn with ``UvicornWorker``, hypercorn, daphne, granian (ASGI) -- each
  under strict trust and under ``trusted_proxies=["127.0.0.1"]`` (``+proxied``); plus
  uvicorn ``--no-proxy-headers`` (the advised setup behind a proxy);
- the Django app (``settings.TASKHANDLER``, Django's own WSGI and ASGI handlers) under
  gunicorn gthread, waitress, cheroot, uvicorn, hypercorn, daphne and granian, strict and
  ``+proxied``, in every table the plain app is in (nested: inside the WSGI and ASGI
  middleware, as ``taskhandler serve`` runs it; ``uvicorn --no-proxy-headers`` too);
- app variants: nested middlewares (gunicorn, uvicorn), werkzeug ``ProxyFix(x_prefix=1)``
  outside and inside the middleware, ``FastAPI(root_path="/api")``, hypercorn's
  ``ProxyFixMiddleware`` (legacy and modern) and granian's proxy-headers wrapper;
- proxies (``proxies/``): none, nginx plain ``proxy_pass``, nginx with
  ``$proxy_add_x_forwarded_for`` and ``underscores_in_headers on``, Caddy's default
  ``reverse_proxy``, HAProxy ``option forwardfor`` -- one process each, a port per server.

The attacks, each a table of spellings x servers x proxies (ids ``server-proxy-spelling``):

1. ``test_task_headers``: task headers in every case, ``_`` spelling, duplicates, spacing;
2. ``test_forwarding_underscores``: ``X_Forwarded_For``, ``X-Forwarded_For``, ``X_Real_IP``,
   ``Forwarded`` with task headers, with and without ``trusted_proxies``;
3. ``test_mount_prefixes``: gunicorn's ``SCRIPT_NAME`` header, ``Daphne-Root-Path``,
   ``X-Forwarded-Prefix`` under ProxyFix, FastAPI's ``root_path``;
4. ``test_rewritten_peers``: ``X-Forwarded-For: 0.1.0.2`` / ``Forwarded`` / ``X-Real-IP`` and
   scheme headers (``X-Forwarded-Proto``, ``-Ssl``, ``-Protocol``, ``Front-End-Https``, ...)
   under servers and server-side proxy modes that rewrite the peer or the scheme;
5. ``test_nested``: an outer middleware without config around the one holding the rules;
6. ``test_peer_strings``: peer strings that are not exactly an address (in process);
7. ``test_quadratic``: 20,000 repeated header lines while other requests must be answered;
8. ``test_platform_proto``: ``platform_sets_proto=True`` behind a front end that sets
   ``X-Forwarded-Proto`` (Caddy): a stranger's scheme headers never open ``secure: always``;

plus ``test_paths`` (spellings of protected paths) and ``test_controls`` (the queue and a
signed-in admin do get through everywhere, so nothing above passes vacuously).

A missing server module or proxy binary skips its cases with the reason. Set
``PYTHONPATH`` to another checkout's directory to run the servers on another taskhandler.
"""
