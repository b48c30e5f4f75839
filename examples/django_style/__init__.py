"""A Django project with taskhandler: the middleware, @task_handler views, django.tasks."""
