"""gunicorn's gevent worker as relay runs it: fair turns between connections, and a response
whose head goes out with its first body bytes.

The one place relay touches gunicorn's internals. `CoalescingResponse` overrides gunicorn 27's
private `Response._emit_body` and rebuilds `send_headers`, and the worker installs it in place of
`gunicorn.http.wsgi.Response` (there is no setting for the response class). It stays because
without it time to first token and tokens per second both lose more than 10% in `make bench`
(bench/README.md, "History of measurements"); `tests/test_server.py` fails when the gunicorn
code it copies changes, and pyproject.toml pins gunicorn below 28.

Imported by gunicorn's master through `relay.gunicorn_conf`: it must import nothing that imports
ssl (Flask, SQLAlchemy, relay's app) before the worker patches the process.
"""

from __future__ import annotations

import socket
from typing import Any

import gevent
from gunicorn.http import wsgi
from gunicorn.workers.ggevent import GeventWorker

# A body write up to this size carries the response head in the same send.
COALESCE_BYTES = 64 * 1024


def send_all(sock: socket.socket, data: bytes) -> None:
    """`sock.sendall(data)`, in one send when the socket's buffer has room: gevent's sendall
    first asks the kernel for SO_SNDBUF, one more system call for every frame of every stream."""
    sent = sock.send(data)
    if sent < len(data):
        sock.sendall(memoryview(data)[sent:])


class CoalescingResponse(wsgi.Response):
    """gunicorn's response, but the head goes out in one send with the first body bytes, and
    each body write is one send.

    gunicorn sends the head, then each body write, separately: two system calls and two passes
    through the TCP stack for `POST /new`'s answer, and again for a stream's head and `retry:`.
    A head with no body after it (HEAD, 204, an empty body) is sent alone.
    """

    sock: socket.socket
    chunked: bool
    headers: list[tuple[str, str]]
    headers_sent: bool
    _hold = False
    _head = b""

    def write(self, arg: bytes) -> None:
        if self.headers_sent:  # every write after the first: one frame, one send
            super().write(arg)
            return
        self._hold = len(arg) <= COALESCE_BYTES
        try:
            super().write(arg)
        finally:
            self._hold = False
            if self._head:
                head, self._head = self._head, b""
                send_all(self.sock, head)

    def send_headers(self) -> None:
        if not self._hold:
            super().send_headers()
        elif not self.headers_sent:
            lines: list[str] = self.default_headers()
            lines.extend([f"{name}: {value}\r\n" for name, value in self.headers])
            self._head = ("{}\r\n".format("".join(lines))).encode("latin-1")
            self.headers_sent = True

    def _emit_body(self, data: bytes) -> None:
        if self.chunked:
            data = b"%X\r\n%s\r\n" % (len(data), data)
        head, self._head = self._head, b""
        send_all(self.sock, head + data if head else data)


class RelayWorker(GeventWorker):
    """gunicorn's gevent worker, with `CoalescingResponse`, and a keep-alive connection reads its
    next request only after a turn of the event loop.

    gevent switches greenlets only when one must wait: a client that sends its next request
    before the worker is done with the last one is served again and again, while requests on
    other connections wait unread (`POST /new` from 16 keep-alive clients: p99 60-100 ms, with
    the same throughput as fair turns).
    """

    def init_process(self) -> None:
        wsgi.Response = CoalescingResponse  # what wsgi.create() builds for each request
        super().init_process()

    def handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any) -> Any:
        result = super().handle_request(listener_name, req, sock, addr)
        gevent.sleep(1e-6)  # > 0: resumed after the loop has polled every other socket
        return result
