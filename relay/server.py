"""gunicorn's gevent worker as relay runs it: a keep-alive connection takes its turn, and a
client's socket has read and write timeouts.

Imported by gunicorn's master through `relay.gunicorn_conf`: it must import nothing that imports
ssl (Flask, SQLAlchemy, relay's app) before the worker patches the process. Uses only gunicorn's
public worker class, its `load_wsgi` and `handle_request` methods and the WSGI environ's
`gunicorn.socket`; relay copies and patches nothing of gunicorn's (a response class that sent
the head with the first body bytes, a cached `Date` header and frozen settings were measured and
dropped: bench/README.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import gevent
from gunicorn.workers.ggevent import GeventWorker

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class ClientTimeouts:
    """WSGI middleware: while the app runs (and reads the request body) the client's socket
    times out after `read` seconds without bytes; while the response is sent, a write that
    takes longer than `write` seconds fails.

    A timed-out read raises TimeoutError in the app (a `408`, then gunicorn closes the
    connection: the body is unfinished); a timed-out write raises it in the worker's
    `handle_request`, after gunicorn closed the response, which ends the stream as a disconnect.
    """

    def __init__(self, app: WSGIApp, read: float, write: float) -> None:
        self.app = app
        self.read = read
        self.write = write

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        client = environ["gunicorn.socket"]
        client.settimeout(self.read)
        body = self.app(environ, start_response)
        client.settimeout(self.write)
        return body


class RelayWorker(GeventWorker):
    """gunicorn's gevent worker, but a keep-alive connection reads its next request only after
    a turn of the event loop, and clients that stop sending or reading time out.

    gevent switches greenlets only when one must wait: a client that sends its next request
    before the worker is done with the last one is served again and again, while requests on
    other connections wait unread.
    """

    wsgi: WSGIApp  # set by gunicorn's load_wsgi

    def load_wsgi(self) -> None:
        super().load_wsgi()
        app = self.wsgi
        config = getattr(app, "config", None)  # relay's app; not gunicorn's reload stand-in
        if config is not None:
            self.wsgi = ClientTimeouts(
                app, config["CLIENT_READ_TIMEOUT_SECONDS"], config["CLIENT_WRITE_TIMEOUT_SECONDS"]
            )
            if config["UPSTREAM_MAX_CONCURRENCY"] is not None:
                from relay.dispatch import watch_queue

                watch_queue(app)  # type: ignore[arg-type]

    def handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any) -> Any:
        try:
            result = super().handle_request(listener_name, req, sock, addr)
        except TimeoutError:
            # A write timed out (ClientTimeouts): the client stopped reading. Closed like a
            # client that left, not logged as a socket error with its traceback.
            self.log.info("a client stopped reading its response; connection closed")
            raise StopIteration from None
        # The next request's head: gunicorn's keepalive timeout bounds it, as it did this one's.
        sock.settimeout(None)
        gevent.sleep(1e-6)  # > 0: resumed after the loop has polled every other socket
        return result
