# ruff: noqa
# fmt: off
# mypy: ignore-errors
# The seed's counter handler ("Creating task handlers"), with only its imports changed:
#   from google.appengine.ext import ndb  ->  from . import ndb_sqlite as ndb
#   import webapp2                        ->  import taskhandler.webapp as webapp2
# Kept as the seed wrote it (quotes, spacing), so the lines can be compared with the original.
from . import ndb_sqlite as ndb
import taskhandler.webapp as webapp2

COUNTER_KEY = 'default counter'

class Counter(ndb.Model):
    count = ndb.IntegerProperty(indexed=False)

class UpdateCounterHandler(webapp2.RequestHandler):
    def post(self):
        amount = int(self.request.get('amount'))

        # This task should run at most once per second because of the datastore
        # transaction write throughput.
        @ndb.transactional
        def update_counter():
            counter = Counter.get_or_insert(COUNTER_KEY, count=0)
            counter.count += amount
            counter.put()

        update_counter()

app = webapp2.WSGIApplication([
    ('/update_counter', UpdateCounterHandler)
], debug=True)
