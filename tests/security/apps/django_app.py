"""The Django app under test: Django views behind ``taskhandler.django.TaskMiddleware``.

The same views, rules, sign-in and trust policy as the Flask and Starlette apps, configured
the Django way (``settings.TASKHANDLER``), served by Django's own handlers:

- ``wsgi``: ``get_wsgi_application()``, for the WSGI servers;
- ``asgi``: ``get_asgi_application()``, for the ASGI servers;
- ``nested_wsgi`` / ``nested_asgi``: the same inside the WSGI / ASGI ``TaskMiddleware``
  with no config (the outer one decides trust, Django's applies the rules), as
  ``taskhandler serve`` runs a Django project.

No database, no session: the sign-in is the suite's ``SignedCookieAuth``.
"""

from __future__ import annotations

from typing import Any

import django
from django.conf import settings

from taskhandler import asgi as asgi_middleware
from taskhandler import wsgi as wsgi_middleware
from tests.security.apps.common import AUTH, RULES, record, trust_from_env

settings.configure(
    DEBUG=False,
    SECRET_KEY="security-suite-" + "s" * 40,
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    USE_TZ=True,
    INSTALLED_APPS=[],
    MIDDLEWARE=["taskhandler.django.TaskMiddleware"],
    TASKHANDLER={"TRUST": trust_from_env(), "CONFIG": RULES, "AUTHENTICATOR": AUTH},
    LOGGING_CONFIG=None,
)
django.setup()

from django.core.asgi import get_asgi_application  # noqa: E402
from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.http import JsonResponse  # noqa: E402
from django.urls import path  # noqa: E402
from django.views.decorators.csrf import csrf_exempt  # noqa: E402


def _seen(view: str) -> Any:
    """A view that records what it saw of the request and answers it as JSON."""

    @csrf_exempt
    def run(request: Any) -> JsonResponse:
        meta = request.META
        scope = getattr(request, "scope", None)  # an ASGIRequest's scope, as the server gave it
        facts: dict[str, Any] = {
            "remote": meta.get("REMOTE_ADDR"),
            "scheme": request.scheme,
            "script_name": meta.get("SCRIPT_NAME"),
            "path_info": request.path_info,
            "environ_keys": sorted(str(k) for k in meta if str(k).startswith("HTTP_")),
        }
        if scope is not None:
            facts["root_path"] = scope.get("root_path")
            facts["path"] = scope.get("path")
            facts["raw_names"] = sorted({bytes(n).decode("latin-1") for n, _ in scope["headers"]})
        headers = {name.lower(): value for name, value in request.headers.items()}
        return JsonResponse(record(view, headers, **facts))

    return run


urlpatterns = [
    path("tasks/run", _seen("task")),
    path("admin/panel", _seen("admin")),
    path("secure/page", _seen("secure")),
    path("public/echo", _seen("echo")),
]

wsgi = get_wsgi_application()
asgi = get_asgi_application()
nested_wsgi = wsgi_middleware.TaskMiddleware(get_wsgi_application(), trust=trust_from_env())
nested_asgi = asgi_middleware.TaskMiddleware(get_asgi_application(), trust=trust_from_env())
