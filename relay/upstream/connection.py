"""HTTP/1.1 to one upstream endpoint: pooled keep-alive connections, each response's framing.

A streamed body is read straight from the socket: gevent's `recv` allocates its buffer only once
data is there, so an idle stream holds no read buffer (http.client's buffered reader held 4 KiB
per open stream while it waited), and upstream silence is watched by one greenlet per endpoint
rather than by a timer started and stopped around every read. Must not know SSE, JSON or OpenAI.

Over 300 lines because the connection pool, the silence watch and the response framing share
one connection's state; issue 18 asks to re-check this framing against a well-kept HTTP/1.1
parser (h11), which would shrink it.
"""

from __future__ import annotations

import socket
import ssl
import time

import gevent

# gevent's recv allocates this much only once data is there; it still carries dozens of events.
READ_SIZE = 4096
_MAX_HEAD = 64 * 1024
_MAX_CHUNK_LINE = 1024  # a chunk's size in hex, and any extensions
_MAX_IDLE_CONNECTIONS = 256


class ProtocolError(ValueError):
    """The upstream's response is not valid HTTP/1.1 framing."""


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
        try:
            # One send when the buffer has room: gevent's sendall first asks the kernel for
            # SO_SNDBUF, one more system call per request.
            sent = self.sock.send(data)
            if sent < len(data):
                self.sock.sendall(memoryview(data)[sent:])
        except OSError as exc:
            if self.silent:
                raise TimeoutError("the upstream read nothing for too long") from exc
            raise

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


class Response:
    """A response's status and framing; `read()` returns its body's bytes as they arrive."""

    __slots__ = ("conn", "status", "chunked", "length", "keep_alive", "complete", "_pending",
                 "_left")

    def __init__(self, conn: Connection, head: bytes, rest: bytes) -> None:
        self.conn = conn
        lines = head.split(b"\r\n")
        version, _, status = lines[0].partition(b" ")
        if not version.startswith(b"HTTP/1.") or not status[:3].isdigit():
            raise ProtocolError(f"not an HTTP/1.1 status line: {lines[0][:80]!r}")
        self.status = int(status[:3])
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon:
                raise ProtocolError(f"not a header line: {line[:80]!r}")
            headers[name.strip().lower()] = value.strip().lower()
        self.chunked = b"chunked" in headers.get(b"transfer-encoding", b"")
        length = headers.get(b"content-length")
        if length is not None and not length.isdigit():
            raise ProtocolError(f"bad Content-Length: {length[:40]!r}")
        self.length = None if self.chunked or length is None else int(length)
        connection = headers.get(b"connection", b"")
        self.keep_alive = (b"close" not in connection and (
            version == b"HTTP/1.1" or b"keep-alive" in connection
        ) and (self.chunked or self.length is not None))
        self.complete = self.length == 0  # the whole body has been read
        self._pending = rest  # received, not yet returned
        # Chunked: payload bytes still to come in the current chunk, then its CRLF (2 more);
        # with a Content-Length: body bytes still to come.
        self._left = 0 if self.length is None else self.length

    @property
    def reusable(self) -> bool:
        return self.complete and self.keep_alive

    def read(self) -> bytes:
        """The body's next bytes as they arrive, b"" once it has all been read."""
        if self.complete:
            return b""
        if self.chunked:
            return self._read_chunked()
        data, self._pending = self._pending or self.conn.recv(), b""
        if self.length is None:  # the body ends when the connection does
            self.complete = not data
            return data
        if not data:
            raise ConnectionError("the upstream closed the connection mid-body")
        data = data[: self._left]
        self._left -= len(data)
        self.complete = self._left == 0
        return data

    def _read_chunked(self) -> bytes:
        """Decode from all the bytes at hand: one recv often holds dozens of chunks, an event
        each, and the caller wants them in one piece. Walked by offset: slicing off each chunk
        copied the rest of the buffer, once per chunk."""
        pending, left, at = self._pending, self._left, 0
        payload: list[bytes] = []
        while True:
            end = len(pending)
            while at < end:
                if left > 2:
                    take = min(left - 2, end - at)
                    payload.append(pending[at : at + take])
                    at += take
                    left -= take
                elif left:
                    skipped = min(left, end - at)
                    at += skipped
                    left -= skipped
                else:
                    line_end = pending.find(b"\n", at)
                    if line_end < 0:
                        if end - at > _MAX_CHUNK_LINE:
                            raise ProtocolError("a chunk size line without its end")
                        break
                    size = _chunk_size(pending[at:line_end])
                    at = line_end + 1
                    if size == 0:
                        self._skip_trailers(pending[at:])
                        self.complete, self._pending = True, b""
                        return b"".join(payload)
                    left = size + 2
            pending, at = pending[at:], 0
            if payload:
                self._pending, self._left = pending, left
                return b"".join(payload)
            received = self.conn.recv()
            if not received:
                raise ConnectionError("the upstream closed the connection mid-body")
            pending += received

    def _skip_trailers(self, pending: bytes) -> None:
        """Read the trailer section after the last chunk, up to its blank line."""
        while True:
            while b"\n" not in pending:
                received = self.conn.recv()
                if not received:
                    raise ConnectionError("the upstream closed the connection in the trailers")
                pending += received
            line, _, pending = pending.partition(b"\n")
            if not line.strip():
                return


def _chunk_size(line: bytes) -> int:
    size = line.split(b";", 1)[0].strip()
    try:
        return int(size, 16)
    except ValueError:
        raise ProtocolError(f"bad chunk size: {size[:40]!r}") from None


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
        is idle; `answer` sends the rest, or all of it elsewhere if that connection turns out
        closed. Never waits: an idle connection's buffer has room, and a partial send returns
        at once (TLS sockets are left to `answer`: they take no send flags)."""
        call = Call(self._head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        if self._idle and self._tls is None:
            conn = self._watched(self._idle.pop())
            try:
                call.sent = conn.sock.send(call.request, socket.MSG_DONTWAIT)
            except OSError:  # closed while idle
                self._active.discard(conn)
                conn.close()
            else:
                call.sent_on = conn
        return call

    def answer(self, call: Call) -> Response:
        """The response to a started call, once its head has arrived."""
        conn, call.sent_on = call.sent_on, None
        response = None
        if conn is not None:
            response = self._exchange(conn, memoryview(call.request)[call.sent :])
        while response is None and self._idle:
            response = self._exchange(self._watched(self._idle.pop()), call.request)
        if response is None:
            response = self._exchange(self._watched(self._connect()), call.request)
        if response is not None:
            return response
        raise ConnectionError("the upstream closed the connection without answering")

    def abandon(self, call: Call) -> None:
        """A started call whose answer will not be read: its connection is closed, so the
        upstream stops."""
        conn, call.sent_on = call.sent_on, None
        if conn is not None:
            self._active.discard(conn)
            conn.close()

    def release(self, response: Response) -> None:
        """The exchange is over: keep its connection for the next request if it can be reused."""
        conn = response.conn
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

    def _exchange(self, conn: Connection, unsent: bytes | memoryview) -> Response | None:
        """Send what is left of a request on `conn`, then read the response's head; None, with
        `conn` closed, when the server had closed it before reading the request."""
        try:
            if unsent:
                self._send(conn, unsent)
            return self._read_head(conn)
        except _ClosedBeforeAnswer:
            conn.close()
            return None
        except BaseException:
            conn.close()
            raise

    def _send(self, conn: Connection, data: bytes | memoryview) -> None:
        try:
            conn.send(data)
        except ConnectionError as exc:  # reset or broken pipe: the server closed it
            self._active.discard(conn)
            raise _ClosedBeforeAnswer from exc
        except BaseException:
            self._active.discard(conn)
            raise

    def _read_head(self, conn: Connection) -> Response:
        answered = False
        try:
            received = b""
            while True:
                head_end = received.find(b"\r\n\r\n")
                if head_end >= 0:
                    head, received = received[:head_end], received[head_end + 4 :]
                    if not head.startswith((b"HTTP/1.1 1", b"HTTP/1.0 1")):
                        return Response(conn, head, received)
                    continue  # an interim 1xx response: the final one follows
                if len(received) > _MAX_HEAD:
                    raise ProtocolError("the upstream's response head is too large")
                data = conn.recv()
                if not data:
                    if not answered:
                        raise _ClosedBeforeAnswer
                    raise ConnectionError("the upstream closed the connection mid-head")
                received += data
                answered = True
        except ConnectionError as exc:  # reset or broken pipe
            self._active.discard(conn)
            if not answered:
                raise _ClosedBeforeAnswer from exc
            raise
        except BaseException:
            self._active.discard(conn)
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
            for conn in [c for c in self._active if now - c.last_read > self.read_timeout]:
                conn.silent = True
                self._active.discard(conn)
                conn.close()
        self._watchdog = None


class _ClosedBeforeAnswer(Exception):
    """The connection ended before any byte of an answer."""
