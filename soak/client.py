"""The soak's HTTP/1.1 client: one request per connection, chunked bodies decoded, event streams
parsed the WHATWG way (enough of it for what relay sends), every read kept as a `Read`.

Runs in greenlets (the soak's process is monkey-patched); no keep-alive, so a disconnect is just
closing the socket, at any byte.
"""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

Event = tuple[int, str, str]
"""(id, kind, data): kind `delta` (relay's default `message` event) or `done`."""


class ClientError(Exception):
    """A broken connection, a timeout or a response relay should never send."""


@dataclass
class Read:
    """One GET /sse/<id>: what the client asked for and every event it saw, in order."""

    ticket: str
    after: int
    status: int = 0
    events: list[Event] = field(default_factory=list)
    done: bool = False  # read to the `done` event
    left: bool = False  # the client closed it on purpose before `done`
    error: str | None = None


class Connection:
    """One HTTP/1.1 request and its response on a fresh loopback connection."""

    def __init__(self, port: int, timeout: float) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = bytearray()

    def close(self, reset: bool = False) -> None:
        """Close; with `reset`, abortively (RST), as a crashed client or a dead network does."""
        if reset:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def send(self, method: str, path: str, cookie: str, body: bytes = b"",
             headers: dict[str, str] | None = None) -> None:
        lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
        if cookie:
            lines.append(f"Cookie: {cookie}")
        if method == "POST":
            lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)

    def _more(self) -> None:
        try:
            data = self.sock.recv(65536)
        except TimeoutError as exc:
            raise ClientError("read timed out") from exc
        except OSError as exc:
            raise ClientError(f"connection broken: {exc}") from exc
        if not data:
            raise ClientError("connection closed early")
        self.buf += data

    def read_head(self) -> tuple[int, dict[str, str]]:
        while (end := self.buf.find(b"\r\n\r\n")) < 0:
            self._more()
        lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
        del self.buf[: end + 4]
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(lines[0].split(" ", 2)[1]), headers

    def read_body(self, headers: dict[str, str]) -> bytes:
        if headers.get("transfer-encoding", "").lower() == "chunked":
            return b"".join(self.chunks())
        length = int(headers.get("content-length", "0"))
        while len(self.buf) < length:
            self._more()
        return bytes(self.buf[:length])

    def chunks(self) -> Iterator[bytes]:
        """The pieces of a chunked body as they arrive; strict about the framing."""
        while True:
            while (end := self.buf.find(b"\r\n")) < 0:
                self._more()
            size = int(bytes(self.buf[:end]).split(b";")[0], 16)
            del self.buf[: end + 2]
            while len(self.buf) < size + 2:
                self._more()
            if self.buf[size : size + 2] != b"\r\n":
                raise ClientError("a chunk without its CRLF")
            piece = bytes(self.buf[:size])
            del self.buf[: size + 2]
            if size == 0:
                return
            yield piece


def request_json(port: int, method: str, path: str, cookie: str, body: Any = None,
                 raw: bytes | None = None, timeout: float = 60.0
                 ) -> tuple[int, dict[str, Any], str]:
    """(status, JSON body or {}, the session cookie set, else `cookie`)."""
    conn = Connection(port, timeout)
    try:
        payload = raw if raw is not None else (json.dumps(body).encode() if body else b"")
        try:
            conn.send(method, path, cookie, payload)
        except OSError:
            pass  # refused before it read all of the body: its answer may still be there
        status, headers = conn.read_head()
        data = conn.read_body(headers)
    finally:
        conn.close()
    set_cookie = headers.get("set-cookie", "")
    if set_cookie:
        cookie = set_cookie.split(";", 1)[0]
    return status, (json.loads(data) if data else {}), cookie


def read_stream(port: int, ticket: str, cookie: str, after: int, *, stop_after: int | None,
                reset: bool, timeout: float) -> Read:
    """GET /sse/<ticket> after event `after`, to `done` or, with `stop_after`, that many events."""
    read = Read(ticket, after)
    conn = Connection(port, timeout)
    try:
        headers = {"Last-Event-ID": str(after)} if after else {}
        conn.send("GET", f"/sse/{ticket}", cookie, headers=headers)
        read.status, response_headers = conn.read_head()
        if read.status != 200:
            conn.read_body(response_headers)
            return read
        for event in _events(conn.chunks()):
            read.events.append(event)
            if event[1] == "done":
                read.done = True
                return read
            if stop_after is not None and len(read.events) >= stop_after:
                read.left = True
                return read
        read.error = "the stream ended without done"
    except (ClientError, ValueError) as exc:
        read.error = str(exc)
    finally:
        conn.close(reset=reset and read.left)
    return read


def _events(chunks: Iterator[bytes]) -> Iterator[Event]:
    """Dispatch event-stream blocks: relay sends `\\n` line ends and one `data:` line each."""
    pending = b""
    for chunk in chunks:
        *blocks, pending = (pending + chunk).split(b"\n\n")
        for block in blocks:
            event_id, kind, data = None, "delta", None
            for line in block.decode("utf-8").split("\n"):
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "id":
                    event_id = int(value)
                elif name == "event":
                    kind = "done" if value == "done" else value
                elif name == "data":
                    data = value if data is None else data + "\n" + value
            if data is not None and kind != "queued":  # `queued` has no id, by the contract
                if event_id is None:
                    raise ClientError(f"an event without an id: {block[:80]!r}")
                yield event_id, kind, data
