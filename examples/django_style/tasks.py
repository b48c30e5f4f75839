"""The example's Django task: count a word, once per task."""

from __future__ import annotations

from django.conf import settings

from taskhandler import current_task

from . import store

try:
    from django.tasks import task  # type: ignore[import-not-found, unused-ignore]
except ImportError:  # Django 5.2: the django-tasks backport
    from django_tasks import task  # type: ignore[no-redef, unused-ignore]


@task(queue_name="tallies")
def count_word(word: str) -> int:
    """Count ``word``; the queue may deliver the task again, so it counts once per task name."""
    ctx = current_task()
    assert ctx is not None, "run by the queue, through taskhandler.django.urls"
    store.count(settings.EXAMPLE_STORE, word, ctx.task_name)
    return store.counts(settings.EXAMPLE_STORE)[word]
