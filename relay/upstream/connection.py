"""HTTP/1.1 to one upstream endpoint: pooled keep-alive connections (`framing.py` reads each
response).

A streamed body is read straight from the socket: gevent's `recv` allocates its buffer only once
data is there, so an idle stream holds no read buffer (http.client's buffered reader held 4 KiB
per open stream while it waited), and upstream silence is watched by one greenlet per endpoint
rather than by a timer started and stopped around every read. Must not know SSE, JSON or OpenAI.

A connection is reused only when its last response ended exactly where its framing said and
nothing arrived on it since; a request is never sent again once a byte of it was sent (the
upstream may have seen it, and would bill it twice).
"""

from __future__ import annotations

import select
import socket
import ssl
import time
from typing import cast

import gevent

from .framing import ProtocolError as ProtocolError
from .framing import Response as Response

# gevent's recv allocates this much only once data is there; it still carries dozens of events.
READ_SIZE = 4096
_MAX_IDLE_CONNECTIONS = 256


class NothingSent(ConnectionError):
    """The connection was closed before it took any byte of the request."""


class UnreachableError(OSError):
    """No connection to the upstream could be made."""


class Connection:
    """One keep-alive connection; `last_read` is when it last received anything."""

    __slots__ = ("sock", "last_read", "silent")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.last_read = time.monotonic()
        self.silent = False  # closed by the watchdog

    def send(self, data: bytes | memoryview) -> None:
        """Send all of `data`; NothingSent if the connection refused its first byte."""
        try:
            # One send when the buffer has room: gevent's sendall first asks the kernel for
            # SO_SNDBUF, one more system call per request.
            try:
                sent = self.sock.send(data)
            except ConnectionError as exc:
                raise NothingSent(str(exc)) from exc
            if sent < len(data):
                self.sock.sendall(memoryview(data)[sent:])
        except OSError as exc:
            if self.silent:
                raise TimeoutError("the upstream read nothing for too long") from exc
            raise

    def recv_arrived(self, size: int = READ_SIZE) -> bytes | None:
        """What has arrived (b"" if the peer closed), None if nothing has: never waits."""
        self.sock.settimeout(0.0)
        try:
            return self.sock.recv(size)
        except (BlockingIOError, ssl.SSLWantReadError):
            return None
        finally:
            self.sock.settimeout(None)

    def waiting(self) -> bool:
        """Bytes (or the peer's close) are here to be read: the connection is not silent, its
        reader is late (a worker busy elsewhere)."""
        if isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
            return True
        try:
            return bool(select.select([self.sock], [], [], 0)[0])
        except (OSError, ValueError):
            return False

    def quiet(self) -> bool:
        """Nothing to read: neither the peer's close nor bytes that no request asked for."""
        try:
            return self.recv_arrived(1) is None  # a byte here rules the connection out anyway
        except OSError:
            return False

    def recv(self) -> bytes:
        try:
            data = self.sock.recv(READ_SIZE)
        except OSError as exc:
            if self.silent:
                raise TimeoutError("the upstream sent nothing for too long") from exc
            raise
        self.last_read = time.monotonic()
        return data

    def close(self) -> None:
        self.sock.close()


class Call:
    """A request to an endpoint, and the connection it was sent on until its answer is read."""

    __slots__ = ("request", "sent", "sent_on")

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.sent = 0  # bytes of it sent on `sent_on`
        self.sent_on: Connection | None = None


class Endpoint:
    """POSTs to one URL with fixed headers, on pooled keep-alive connections, silence watched."""

    def __init__(
        self, host: str, port: int, path: str, headers: dict[str, str], *, https: bool,
        connect_timeout: float, read_timeout: float,
    ) -> None:
        self.host, self.port = host, port
        authority = f"[{host}]" if ":" in host else host
        if port != (443 if https else 80):
            authority += f":{port}"
        fixed = {"Host": authority, **headers}
        self._head = (f"POST {path} HTTP/1.1\r\n" + "".join(
            f"{name}: {value}\r\n" for name, value in fixed.items()
        )).encode("latin-1")
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._tls = ssl.create_default_context() if https else None
        self._idle: list[Connection] = []
        self._active: set[Connection] = set()
        self._watchdog: gevent.Greenlet[[], None] | None = None

    def post(self, body: bytes) -> Response:
        """Send a request and return its response once the head has arrived."""
        return self.answer(self.start(body))

    def start(self, body: bytes) -> Call:
        """Send the request now, as much as one `send` takes, if a pooled plain TCP connection
        is idle and clean; `answer` sends the rest. Never waits: an idle connection's buffer
        has room, and a partial send returns at once (TLS sockets are left to `answer`: they
        take no send flags)."""
        call = Call(self._head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        if self._tls is None and (conn := self._idle_connection()) is not None:
            call.sent_on = conn
            try:
                call.sent = conn.sock.send(call.request, socket.MSG_DONTWAIT)
            except OSError:  # nothing sent: `answer` finds out why
                pass
        return call

    def answer(self, call: Call) -> Response:
        """The response to a started call, once its head has arrived. Nothing is sent again
        once the upstream may have seen a byte of it: only a reused connection that refused
        the request's first byte is given up for a fresh one."""
        conn, call.sent_on = call.sent_on, None
        if conn is None:
            conn = self._idle_connection()
        if conn is not None:
            try:
                return self._exchange(conn, memoryview(call.request)[call.sent :])
            except NothingSent:
                if call.sent:
                    raise
        return self._exchange(self._watched(self._connect()), call.request)

    def abandon(self, call: Call) -> None:
        """A started call whose answer will not be read: its connection is closed, so the
        upstream stops."""
        conn, call.sent_on = call.sent_on, None
        if conn is not None:
            self._active.discard(conn)
            conn.close()

    def release(self, response: Response) -> None:
        """The exchange is over: keep its connection for the next request if it can be reused."""
        conn = cast(Connection, response.conn)  # the one `_exchange` gave it
        self._active.discard(conn)
        if response.reusable and not conn.silent and len(self._idle) < _MAX_IDLE_CONNECTIONS:
            self._idle.append(conn)
        else:
            conn.close()

    def close_idle(self) -> None:
        """Close the pooled idle connections."""
        while self._idle:
            self._idle.pop().close()

    def _connect(self) -> Connection:
        try:
            sock = socket.create_connection((self.host, self.port), self.connect_timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._tls is not None:
                sock = self._tls.wrap_socket(sock, server_hostname=self.host)
        except OSError as exc:
            raise UnreachableError(f"Could not reach the upstream: {exc}") from exc
        sock.settimeout(None)  # silence is the watchdog's to judge
        return Connection(sock)

    def _idle_connection(self) -> Connection | None:
        """A pooled connection with nothing to read on it, now watched: one with the upstream's
        close or bytes no request asked for (they would be taken for the next answer) is
        closed."""
        while self._idle:
            conn = self._idle.pop()
            if conn.quiet():
                return self._watched(conn)
            conn.close()
        return None

    def _exchange(self, conn: Connection, unsent: bytes | memoryview) -> Response:
        """Send what is left of a request on `conn`, then read the response's head."""
        try:
            if unsent:
                conn.send(unsent)
            received = conn.recv()
            if not received:
                raise ConnectionError("the upstream closed the connection without answering")
            return Response(conn, received)
        except BaseException:
            self._active.discard(conn)
            conn.close()
            raise

    def _watched(self, conn: Connection) -> Connection:
        """`conn`, now in use: the watchdog closes it after too long a silence."""
        conn.last_read = time.monotonic()
        self._active.add(conn)
        if self._watchdog is None or self._watchdog.dead:
            self._watchdog = gevent.spawn(self._close_silent)
        return conn

    def _close_silent(self) -> None:
        """Close every connection that has received nothing for `read_timeout`; its reader's
        recv then fails and reports the silence."""
        tick = min(1.0, self.read_timeout / 4)
        while self._active:
            gevent.sleep(tick)
            now = time.monotonic()
            for conn in [c for c in self._active
                         if now - c.last_read > self.read_timeout and not c.waiting()]:
                conn.silent = True
                self._active.discard(conn)
                conn.close()
        self._watchdog = None
