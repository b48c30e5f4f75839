"""Django settings for the example: the three lines taskhandler needs are marked."""

from __future__ import annotations

import os
from pathlib import Path

HERE = Path(__file__).resolve().parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-secret-" + "x" * 32)
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
ROOT_URLCONF = "examples.django_style.urls"
USE_TZ = True
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "taskhandler.django.TaskMiddleware",  # 1. trust, strip, app.yaml rules, deadlines
]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("EXAMPLE_DJANGO_DB", str(HERE / "django.sqlite3")),
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
LOGIN_URL = "/accounts/login/"

# 2. What TaskMiddleware believes and enforces. EXAMPLE_QUEUE_SOURCES lets the tests play
# the queue from 127.0.0.1; in production the queue is App Engine's 0.1.0.2 (the default).
TASKHANDLER = {
    "APP_YAML": HERE / "app.yaml",
    "TRUST": {"queue_sources": os.environ.get("EXAMPLE_QUEUE_SOURCES", "0.1.0.2").split(",")},
}

# 3. Django's tasks framework on taskhandler's push queues.
TASKS = {
    "default": {
        "BACKEND": "taskhandler.django.TaskQueueBackend",
        "QUEUES": ["default", "tallies"],
    }
}

# Where the example keeps its word counts.
EXAMPLE_STORE = os.environ.get("EXAMPLE_STORE", str(HERE / "counts.sqlite3"))
