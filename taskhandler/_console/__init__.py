"""The development server's queue console (``/_ah/admin/queues``) and the history it shows.

- ``app``: :class:`QueueConsole`, the pages and actions (WSGI);
- ``pages``: the HTML, from plain values, everything escaped;
- ``browse``: the queue file read a page at a time (read-only);
- ``history``: what the server saw of each attempt, kept beside the queue database;
- ``static/``: the stylesheet and the few lines of JavaScript that refresh a page.
"""

from __future__ import annotations

from .app import CONSOLE_PATH as CONSOLE_PATH
from .app import QueueConsole as QueueConsole
from .history import History as History
from .history import Recorder as Recorder
from .history import history_path as history_path

__all__ = ["CONSOLE_PATH", "History", "QueueConsole", "Recorder", "history_path"]
