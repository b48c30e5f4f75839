"""The WSGI application: ``taskhandler serve examples.django_style.wsgi:application``."""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_style.settings")
application = get_wsgi_application()
