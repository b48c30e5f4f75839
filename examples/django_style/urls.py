from __future__ import annotations

from django.urls import include, path

from . import views

urlpatterns = [
    path("", views.page),
    path("enqueue", views.enqueue),
    path("tasks/tally", views.tally),
    path("", include("taskhandler.django.urls")),  # runs django.tasks tasks
]
