"""The ``adapter`` fixture: every conformance test runs on WSGI, ASGI and Django (both ways)."""

from __future__ import annotations

import pytest

from .harness import Adapter, ASGIAdapter, WSGIAdapter

try:
    import django  # noqa: F401
except ImportError:  # pragma: no cover - the test extra installs Django
    DJANGO: list[object] = [
        pytest.param(None, id=name, marks=pytest.mark.skip(reason="Django is not installed"))
        for name in ("django-wsgi", "django-asgi")
    ]
else:
    from .django_adapter import DjangoASGIAdapter, DjangoWSGIAdapter, configure

    configure()
    DJANGO = [DjangoWSGIAdapter(), DjangoASGIAdapter()]


@pytest.fixture(params=[WSGIAdapter(), ASGIAdapter(), *DJANGO], ids=lambda a: a.name)
def adapter(request: pytest.FixtureRequest) -> Adapter:
    """The middleware under test, WSGI, ASGI or Django's, behind one interface."""
    return request.param  # type: ignore[no-any-return]


# Cases that do not apply to one adapter's protocol: (test, adapter) -> (reason, the case ids).
PROTOCOL_SPECIFIC = {
    ("test_ambiguous_paths_are_refused_before_rules", "django-wsgi"): (
        "Django's WSGIRequest re-percent-encodes path bytes that are not UTF-8 (b'\\xff' -> "
        "'%FF') before any middleware runs; the rules judge that text, which is the path "
        "Django routes, so nothing is left ambiguous to refuse (tests/test_django.py pins it)",
        ("bytes not UTF-8", "broken UTF-8 sequence", "surrogate bytes"),
    ),
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Skip, with its reason, each case that does not apply to one adapter's protocol."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is None:
            continue
        name = getattr(callspec.params.get("adapter"), "name", "")
        entry = PROTOCOL_SPECIFIC.get((getattr(item, "originalname", ""), name))
        if entry is not None and any(f"-{case}]" in item.name for case in entry[1]):
            item.add_marker(pytest.mark.skip(reason=entry[0]))
