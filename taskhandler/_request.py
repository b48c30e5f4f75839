"""One request as plain data: what every step of the request path reads (SPEC §1).

Each adapter (WSGI, ASGI) builds one :class:`RequestView` per request from its protocol;
the steps are pure functions over it, so both adapters decide alike by construction.

Pure: standard library only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

__all__ = ["RequestView"]


class RequestView(NamedTuple):
    """A request as the steps of the request path see it.

    Attributes:
        peer: the immediate peer address as the server reported it (``REMOTE_ADDR``,
            ASGI ``client[0]``), or ``None``.
        method: the HTTP method.
        scheme: ``http`` or ``https`` as the server reported it.
        host: the ``Host`` asked for (else the server's name and port).
        path: the full path (``SCRIPT_NAME + PATH_INFO``, ASGI ``path``) decoded as UTF-8.
        path_error: why the path cannot be used (not UTF-8, missing), or ``None``.
        prefixes: mount prefixes that may be removed from ``path`` before the app routes it
            (``SCRIPT_NAME``, ``root_path``, a framework's own root path).
        query_string: the raw query string.
        headers: the other headers by lower-case, dash-spelled name (copies joined with
            ``,``); only the exact dash spelling of a name is ever found here.
        task_headers: ``(name, value)`` of every ``X-AppEngine-*`` / ``X-CloudTasks-*``
            header in any spelling and copy, the name lower case with ``_`` spelled ``-``.
        folded: the server may have folded ``_`` spellings of header names into the dash
            spelling before the middleware saw the request (so ``headers`` cannot tell a
            client's ``X_Forwarded_For`` from a proxy's ``X-Forwarded-For``).
    """

    peer: str | None
    method: str
    scheme: str
    host: str
    path: str
    path_error: str | None
    prefixes: tuple[str, ...]
    query_string: str
    headers: Mapping[str, str]
    task_headers: tuple[tuple[str, str], ...]
    folded: bool = False
