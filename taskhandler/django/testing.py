"""Signing in to a Django project from ``TaskTestApp``: ``as_admin()`` / ``as_user()``.

``TaskTestApp(app, sign_in=taskhandler.django.testing.sign_in)`` (or, with the pytest
plugin, a ``taskhandler_sign_in`` fixture returning :func:`sign_in`) signs requests in with a
Django session: the user is found by e-mail or created, staff exactly when it is to be an
administrator. It needs the database (pytest-django's ``db`` fixture).
"""

from __future__ import annotations

from ..trust import User

__all__ = ["sign_in"]


def sign_in(user: User) -> dict[str, str]:
    """The ``Cookie`` header of a Django session signed in as ``user``."""
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.test import Client

    model = get_user_model()
    manager = model._default_manager
    found = manager.filter(email=user.email).first()
    if found is None:
        found = manager.create_user(**{model.USERNAME_FIELD: user.email, "email": user.email})
    if found.is_staff != user.is_admin:
        found.is_staff = user.is_admin
        found.save(update_fields=["is_staff"])
    client = Client()
    client.force_login(found)
    name = settings.SESSION_COOKIE_NAME
    return {"Cookie": f"{name}={client.cookies[name].value}"}
