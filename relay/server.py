"""gunicorn's gevent worker as relay runs it: a keep-alive connection takes its turn.

Imported by gunicorn's master through `relay.gunicorn_conf`: it must import nothing that imports
ssl (Flask, SQLAlchemy, relay's app) before the worker patches the process. Uses only gunicorn's
public worker class and its `handle_request` hook; relay copies and patches nothing of
gunicorn's (a response class that sent the head with the first body bytes, a cached `Date`
header and frozen settings were measured and dropped: bench/README.md).
"""

from __future__ import annotations

from typing import Any

import gevent
from gunicorn.workers.ggevent import GeventWorker


class RelayWorker(GeventWorker):
    """gunicorn's gevent worker, but a keep-alive connection reads its next request only after
    a turn of the event loop.

    gevent switches greenlets only when one must wait: a client that sends its next request
    before the worker is done with the last one is served again and again, while requests on
    other connections wait unread.
    """

    def handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any) -> Any:
        result = super().handle_request(listener_name, req, sock, addr)
        gevent.sleep(1e-6)  # > 0: resumed after the loop has polled every other socket
        return result
