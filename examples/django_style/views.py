"""The page (enqueue a word through django.tasks) and a push task handler view."""

from __future__ import annotations

import html
from typing import Any

from django.conf import settings
from django.http import HttpResponse, HttpResponseRedirect
from django.middleware.csrf import get_token
from pydantic import BaseModel, Field

from taskhandler import TaskContext, task_handler

from . import store
from .tasks import count_word


def page(request: Any) -> HttpResponse:
    """The counts, and a form that enqueues a word."""
    rows = "".join(
        f"<li>{html.escape(word)}: {n}</li>"
        for word, n in store.counts(settings.EXAMPLE_STORE).items()
    )
    return HttpResponse(
        "<!doctype html><title>Word counts</title><h1>Word counts</h1>"
        f"<ul>{rows}</ul>"
        '<form method="post" action="/enqueue">'
        f'<input type="hidden" name="csrfmiddlewaretoken" value="{get_token(request)}">'
        '<input name="word" required> <button>Count it later</button></form>'
        "<p>Run with <code>taskhandler serve examples.django_style.wsgi:application</code>.</p>"
    )


def enqueue(request: Any) -> HttpResponse:
    """Enqueue ``count_word`` with Django's own tasks API."""
    word = request.POST.get("word", "").strip()[:100]
    if word:
        count_word.enqueue(word)
    return HttpResponseRedirect("/")


class Tally(BaseModel):
    word: str = Field(min_length=1, max_length=100)
    amount: int = Field(default=1, ge=1, le=1000)


@task_handler(payload=Tally, max_attempts=5)
def tally(task: TaskContext, payload: Tally) -> dict[str, Any]:
    """A push task handler (``taskqueue.add(url="/tasks/tally", params=...)``) as a Django view."""
    store.count(settings.EXAMPLE_STORE, payload.word, task.task_name, payload.amount)
    return {"word": payload.word, "count": store.counts(settings.EXAMPLE_STORE)[payload.word]}
