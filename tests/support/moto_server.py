"""moto_server with one request at a time.

DynamoDB applies each request atomically: an UpdateItem's ADD, a condition and the write it
guards, a TransactWriteItems. moto's threaded server runs requests side by side without a lock,
so two concurrent ADDs to one attribute can lose one of them (a test saw 62 of 64 increments).
Serving one request at a time gives the tests DynamoDB's atomicity; the connections stay
concurrent, so clients still race each other as they do against the real service.
Usage: python3 moto_server.py PORT (0: any free port; the werkzeug banner names it).
"""
import signal
import sys
import threading

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import run_simple

moto = DomainDispatcherApplication(create_backend_app)
one_at_a_time = threading.Lock()


def serialized(environ, start_response):
    with one_at_a_time:
        return list(moto(environ, start_response))  # the whole body inside the lock


signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
run_simple("127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 0, serialized, threaded=True)
