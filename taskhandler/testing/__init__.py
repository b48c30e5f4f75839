"""Testing task handlers: ``TaskTestApp``, ``assert_idempotent``, ``testbed`` and a pytest plugin.

Needs the ``testing`` extra (``pip install taskhandler[testing]``: pytest and webtest).
The names are imported on first use, so the pytest plugin loads even where webtest is
missing, and ``import taskhandler`` never imports either.

Example::

    from taskhandler.testing import TaskTestApp, assert_idempotent

    app = TaskTestApp(make_app())
    assert app.post_task("/tasks/count", params={"name": "a"}).task_outcome == "success"
    assert_idempotent(app, "/tasks/count", params={"name": "a"}, snapshot=read_counters)

App Engine tests that use ``testbed`` port with their import changed:
``from taskhandler.testing import testbed`` (it needs neither pytest nor webtest).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from . import testbed as testbed
    from ._app import TaskTestApp as TaskTestApp
    from ._app import TaskTestResponse as TaskTestResponse
    from ._idempotent import Delivery as Delivery
    from ._idempotent import IdempotencyError as IdempotencyError
    from ._idempotent import assert_idempotent as assert_idempotent

__all__ = [
    "Delivery",
    "IdempotencyError",
    "TaskTestApp",
    "TaskTestResponse",
    "assert_idempotent",
    "testbed",
]

_WHERE = {
    "TaskTestApp": "._app",
    "TaskTestResponse": "._app",
    "Delivery": "._idempotent",
    "IdempotencyError": "._idempotent",
    "assert_idempotent": "._idempotent",
}


def __getattr__(name: str) -> Any:
    if name == "testbed":
        return importlib.import_module(".testbed", __name__)
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
