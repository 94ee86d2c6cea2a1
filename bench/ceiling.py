"""The ceiling: a minimal gevent server that only forwards the upstream's bytes.

It reads a client's request, sends it unchanged to the upstream over a pooled keep-alive
connection, and copies the response back as the bytes arrive, stopping at the chunked body's end.
No JSON, no SSE parsing, no storage: what it reaches is what one gevent process on this machine
allows, and relay's throughput is quoted as a fraction of it. Run standalone:
`python -m bench.ceiling --port 9100 --upstream 127.0.0.1:9000`.
"""

from __future__ import annotations

import argparse
import socket
from typing import Any

from gevent import socket as gsocket
from gevent.server import StreamServer

_END = b"0\r\n\r\n"


def _read_request(sock: socket.socket, buf: bytearray) -> bytes | None:
    """The raw bytes of one request (head and Content-Length body); None at EOF."""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            return None
        buf += data
    end = buf.index(b"\r\n\r\n") + 4
    length = 0
    for line in bytes(buf[:end]).split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    while len(buf) < end + length:
        data = sock.recv(65536)
        if not data:
            return None
        buf += data
    raw = bytes(buf[: end + length])
    del buf[: end + length]
    return raw


class Forwarder:
    """Copies each request to `upstream` and its response back, byte for byte."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._pool: list[socket.socket] = []

    def handle(self, client: socket.socket, _address: Any) -> None:
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = bytearray()
        try:
            while (raw := _read_request(client, buf)) is not None:
                if not self._forward(raw, client):
                    break
        except OSError:
            pass
        finally:
            client.close()

    def _forward(self, raw: bytes, client: socket.socket) -> bool:
        upstream = self._pool.pop() if self._pool else self._connect()
        try:
            upstream.sendall(raw)
            tail = b""
            while True:
                data = upstream.recv(65536)
                if not data:
                    upstream.close()
                    return False
                client.sendall(data)
                tail = (tail + data)[-len(_END) :]
                if tail == _END:
                    break
        except OSError:
            upstream.close()
            raise
        self._pool.append(upstream)
        return True

    def _connect(self) -> socket.socket:
        sock = gsocket.create_connection(self.upstream)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock


def serve(port: int, upstream: tuple[str, int], host: str = "127.0.0.1") -> StreamServer:
    """Start the forwarder on host:port and return the running server."""
    server = StreamServer((host, port), Forwarder(upstream).handle, backlog=4096)
    server.start()
    return server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--upstream", default="127.0.0.1:9000", help="host:port")
    args = parser.parse_args(argv)
    host, _, port = args.upstream.rpartition(":")
    server = serve(args.port, (host, int(port)), args.host)
    print(f"ceiling listening on http://{args.host}:{server.server_port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
