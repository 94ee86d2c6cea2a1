"""gunicorn settings for relay: gevent workers, loopback by default, a printed chat URL.

This file is read by the gunicorn master, so it must not import `relay` (that would import ssl
before the gevent worker patches it).

gunicorn's gevent worker monkey-patches the process after fork, so nothing here (or in the app)
patches, starts threads or opens connections at import time.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import time

import gevent
from gunicorn import util
from gunicorn.http import wsgi
from gunicorn.workers.ggevent import GeventWorker

# A body write up to this size carries the response head in the same send.
_COALESCE_BYTES = 64 * 1024


def _send(sock, data):  # type: ignore[no-untyped-def]
    """`sock.sendall(data)` in one send when the socket's buffer has room: gevent's sendall
    asks the kernel for SO_SNDBUF first, one more system call for every frame of every stream."""
    sent = sock.send(data)
    if sent < len(data):
        sock.sendall(memoryview(data)[sent:])


_format_http_date = util.http_date
_date_line = [-1, ""]  # (the second, its Date value)


def _http_date(timestamp=None):  # type: ignore[no-untyped-def]
    """gunicorn's `http_date`, formatted once a second: email.utils' formatting took ~75 µs of
    every response on a cold CPU cache (in POST /new's answer and a stream's head)."""
    if timestamp is not None:
        return _format_http_date(timestamp)
    second = int(time.time())
    if _date_line[0] != second:
        _date_line[:] = [second, _format_http_date(second)]
    return _date_line[1]


class CoalescingResponse(wsgi.Response):
    """gunicorn's response, but the head goes out in one send with the first body bytes, and
    each body write is one send.

    gunicorn sends the head, then each body write, separately: two system calls and two passes
    through the TCP stack for POST /new's answer and again for a stream's head and `retry:`.
    A head with no body after it (HEAD, 204, an empty body) is sent alone.
    """

    _hold = False
    _head = b""

    def write(self, arg):  # type: ignore[no-untyped-def]
        if self.headers_sent:  # every write after the first: one frame, one send
            super().write(arg)
            return
        self._hold = len(arg) <= _COALESCE_BYTES
        try:
            super().write(arg)
        finally:
            self._hold = False
            if self._head:
                head, self._head = self._head, b""
                _send(self.sock, head)

    def send_headers(self):  # type: ignore[no-untyped-def]
        if not self._hold:
            super().send_headers()
        elif not self.headers_sent:
            lines = self.default_headers()
            lines.extend(["%s: %s\r\n" % (k, v) for k, v in self.headers])
            self._head = ("%s\r\n" % "".join(lines)).encode("latin-1")
            self.headers_sent = True

    def _emit_body(self, data):  # type: ignore[no-untyped-def]
        if self.chunked:
            data = b"%X\r\n%s\r\n" % (len(data), data)
        head, self._head = self._head, b""
        _send(self.sock, head + data if head else data)


def _freeze_settings(cfg):  # type: ignore[no-untyped-def]
    """Every setting as a plain attribute of `cfg`: a worker's never change after fork, and
    gunicorn reads them through `Config.__getattr__` and `Setting.get`, dozens of times a request
    (~0.1 ms of a stream's two requests on a cold CPU cache, side by side). Properties, such as
    `is_ssl`, are left to compute as before."""
    config_class = type(cfg)
    cfg.__dict__.update({
        name: setting.get() for name, setting in cfg.settings.items()
        if not hasattr(config_class, name)
    })


class FairGeventWorker(GeventWorker):
    """gunicorn's gevent worker, but a keep-alive connection reads its next request only after
    a turn of the event loop.

    gevent switches greenlets only when one must wait: a client that sends its next request
    before the worker is done with the last one is served again and again, while requests on
    other connections wait unread (POST /new from 16 keep-alive clients: median 0.4 ms, p90
    20 ms, p99 60-100 ms, with the same throughput as fair scheduling).
    """

    def init_process(self):  # type: ignore[no-untyped-def]
        # What wsgi.create() builds for each request; only where the body goes out through
        # _emit_body (gunicorn 27), or a body could be sent ahead of its head.
        if hasattr(wsgi.Response, "_emit_body"):
            wsgi.Response = CoalescingResponse
        util.http_date = _http_date  # wsgi.Response.default_headers looks it up per response
        _freeze_settings(self.cfg)
        super().init_process()

    def handle_request(self, listener_name, req, sock, addr):  # type: ignore[no-untyped-def]
        super().handle_request(listener_name, req, sock, addr)
        gevent.sleep(1e-6)  # > 0: resumed after the loop has polled every other socket

_port = os.environ.get("PORT")
bind = os.environ.get("RELAY_BIND") or (f"0.0.0.0:{_port}" if _port else "127.0.0.1:8000")
worker_class = FairGeventWorker
# Otherwise every greenlet keeps the frames of the stack that spawned it: ~14 records per stream.
gevent.config.track_greenlet_tree = False
workers = int(os.environ.get("WEB_CONCURRENCY") or multiprocessing.cpu_count())
worker_connections = 10000
timeout = 30
graceful_timeout = 10
keepalive = 5
accesslog = os.environ.get("RELAY_ACCESS_LOG") or None
errorlog = "-"
control_socket_disable = True  # gunicorn 27: several relays on one machine must not share it


def when_ready(server):  # type: ignore[no-untyped-def]
    for address in server.LISTENERS:
        host, port = str(address).rsplit(":", 1) if ":" in str(address) else (str(address), "")
        host = host.replace("http://", "")
        if host in ("0.0.0.0", "[::]"):
            host = "127.0.0.1"
        server.log.info("relay is ready: open http://%s:%s/ for the chat page", host, port)


def post_worker_init(worker):  # type: ignore[no-untyped-def]
    # The app's ~150,000 objects from imports and start-up never become garbage: frozen, no
    # collection walks them again. With thousands of open streams, the default thresholds
    # (700, 10, 10) ran young collections of 40-80 ms and full ones of up to 390 ms, a third of
    # the worker's CPU at 4,000 slow streams; cycles are rare here (werkzeug's URL matcher makes
    # one per request), so young collections can wait for 50,000 new objects.
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def worker_exit(server, worker):  # type: ignore[no-untyped-def]
    from relay.generation import stop_all

    stop_all("worker exiting")


def child_exit(server, worker):  # type: ignore[no-untyped-def]
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
