# ruff: noqa
# fmt: off
# mypy: ignore-errors
"""App Engine's deferred sample (the docstring of ``google.appengine.ext.deferred``), ported.

Changed from the sample, and nothing else:

- imports: ``from google.appengine.ext import deferred`` -> ``from taskhandler import deferred``;
  ``from google.appengine.ext import ndb`` -> the SQLite stand-in of the webapp2 example;
- ``wrap_wsgi_app(app.wsgi_app, use_deferred=True)`` -> ``TaskMiddleware`` over the app with
  ``deferred.application`` mounted at ``/_ah/queue/deferred`` (what gunicorn serves);
  ``taskhandler serve`` mounts it by itself, from app.yaml's ``builtins: - deferred: on``;
- the sample created ``app`` twice (the second one lost the route) and its view returned
  nothing (Flask refuses that): one ``app``, and the view says what it deferred;
- ``@ndb.transactional`` on the deferred function: a task may be delivered twice, and the
  stand-in's transaction records the task so the second delivery adds nothing;
- ``/total`` shows the counter.

Deferred payloads are signed: set ``TASKHANDLER_SECRET_KEY`` (32+ bytes, the same in every
process) in production. ``EXAMPLE_DB`` names the SQLite file of the counter.
"""
from pathlib import Path

from flask import Flask, request
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from examples.webapp2_style import ndb_sqlite as ndb   # was: from google.appengine.ext import ndb
from taskhandler import TaskMiddleware, load_app_yaml  # was: from google.appengine.api import wrap_wsgi_app
from taskhandler import deferred                        # was: from google.appengine.ext import deferred

HERE = Path(__file__).resolve().parent

app = Flask(__name__)
app.wsgi_app = TaskMiddleware(
    DispatcherMiddleware(app.wsgi_app, {deferred.DEFAULT_URL: deferred.application}),
    config=load_app_yaml(HERE / "app.yaml"),
)


class MyModel(ndb.Model):
  total = ndb.IntegerProperty(indexed=True)

my_key = "defaultKey"

@ndb.transactional
def do_something_later(key, amount):
   entity = MyModel.get_or_insert(key, total=0)
   entity.total += amount
   entity.put()

@app.route("/home")
def hello_world():
  # Use default URL and queue name, no task name, execute ASAP.
  deferred.defer(do_something_later, my_key, 20)

  # Execute after 60s
  deferred.defer(do_something_later, my_key, 20, _countdown=60)

  # Using a non-default queue (a TaskQueue 'foo' should already exist)
  deferred.defer(do_something_later, my_key, 20, _queue="foo", _countdown=60)
  return "Deferred three calls: +20 now, +20 in 60 s, +20 in 60 s on queue foo.\n"

@app.route("/total")
def total():
  entity = MyModel.get_by_id(request.args.get("key", my_key))
  return f"{0 if entity is None else entity.total}\n"
