# ruff: noqa
# fmt: off
# mypy: ignore-errors
"""App Engine's pull-counter sample, written in its spirit and ported with its imports changed.

The page adds one pull task per click, tagged with the counter's name; the worker leases the
tasks of one tag at a time (``lease_tasks_by_tag`` without a tag takes the oldest task's),
adds their number to that counter in one transaction, and deletes them.

Changed from the App Engine app, and nothing else:

- imports: ``webapp2`` -> ``taskhandler.webapp``; ``google.appengine.api.taskqueue`` ->
  ``taskhandler.taskqueue``; ``google.appengine.ext.ndb`` -> the SQLite stand-in of the webapp2
  example (``get_or_insert``, ``get_by_id``, ``@transactional``);
- the worker ran forever on a backend instance started by ``/_ah/start``; here it stops when
  no task is left, so a request, a cron job or a test can run it (``login: admin`` in app.yaml
  keeps it for administrators and the queue);
- ``/count?key=NAME`` shows a counter (the stand-in has no queries for the page's list).

Serve it with ``taskhandler serve --app-yaml examples/pull_counter/app.yaml --queue-yaml
examples/pull_counter/queue.yaml`` from the repository root.
"""
import logging

from examples.webapp2_style import ndb_sqlite as ndb   # was: from google.appengine.ext import ndb
from taskhandler import taskqueue                       # was: from google.appengine.api import taskqueue
from taskhandler import webapp as webapp2               # was: import webapp2


class Counter(ndb.Model):
    count = ndb.IntegerProperty(indexed=False)


class CounterHandler(webapp2.RequestHandler):
    def get(self):
        self.response.write(
            '<form method="post"><input name="key"><button>count</button></form>'
        )

    def post(self):
        key = self.request.get('key')
        if key:
            queue = taskqueue.Queue('pullq')
            queue.add(taskqueue.Task(payload='', method='PULL', tag=key))
        self.redirect('/')


class CountHandler(webapp2.RequestHandler):
    def get(self):
        counter = Counter.get_by_id(self.request.get('key'))
        self.response.write(str(counter.count if counter else 0))


class CounterWorker(webapp2.RequestHandler):
    def get(self):
        """Lease the tasks of one counter at a time and count them, until none is left."""
        queue = taskqueue.Queue('pullq')
        while True:
            try:
                tasks = queue.lease_tasks_by_tag(3600, 1000, deadline=60)
            except taskqueue.TransientError as e:
                logging.exception(e)
                continue
            if not tasks:
                break
            key = tasks[0].tag
            try:
                update_counter(key, tasks)
            except Exception as e:
                logging.exception(e)  # the tasks come back when their lease ends
            else:
                queue.delete_tasks(tasks)
        self.response.write('done')


@ndb.transactional
def update_counter(key, tasks):
    counter = Counter.get_or_insert(key, count=0)
    counter.count += len(tasks)
    counter.put()


app = webapp2.WSGIApplication([
    ('/', CounterHandler),
    ('/count', CountHandler),
    ('/_ah/start', CounterWorker),
], debug=True)
