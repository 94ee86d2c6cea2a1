"""`/static/` serves the chat page's scripts and styles, with the page's headers, and nothing
else of `relay/frontend/`."""

from __future__ import annotations

import socket

import httpx
import pytest

from relay.views.web import FRONTEND_DIR

from ..helpers import assert_error_shape
from .relay_server import RelayServer

pytestmark = pytest.mark.timeout(60)


def final_status(server: RelayServer, target: str) -> int:
    """The status of a GET of `target` exactly as written (no client normalises it), after
    following werkzeug's redirects (it merges repeated slashes)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        head = sock.makefile("rb").read().split(b"\r\n\r\n", 1)[0].decode().split("\r\n")
    status = int(head[0].split()[1])
    location = next((h.split(":", 1)[1].strip() for h in head if h.lower().startswith("location:")),
                    None)
    if status in (301, 308) and location:
        return final_status(server, location.removeprefix("http://x"))
    return status


@pytest.mark.parametrize("asset", [
    "style.css", "js/app.js", "js/boot.js", "vendor/marked.esm.js", "vendor/highlight-dark.min.css",
])
def test_a_page_asset_has_the_pages_headers(client: httpx.Client, asset: str) -> None:
    response = client.get(f"/static/{asset}")
    assert response.status_code == 200
    assert response.content == (FRONTEND_DIR / asset).read_bytes()
    page = client.get("/")
    for header in ("Content-Security-Policy", "X-Content-Type-Options", "Cache-Control"):
        assert response.headers[header] == page.headers[header], header
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]


@pytest.mark.parametrize("other", [
    "index.html", "vendor/README.md", "vendor/LICENSE.marked", "vendor", "js", "", "js/",
])
def test_other_files_of_the_frontend_folder_are_not_served(
    client: httpx.Client, other: str
) -> None:
    assert other == "" or (FRONTEND_DIR / other.rstrip("/")).exists()
    assert_error_shape(client.get(f"/static/{other}"), 404)


@pytest.mark.parametrize("target", [
    "/static/../__init__.py", "/static/%2e%2e/views/web.py", "/static/js/../../app.py",
    "/static/js/%2e%2e/%2e%2e/db.py", "/static/js%2f..%2f..%2fcli.py", "/static/%2fetc%2fpasswd",
    "/static/..%2f..%2fpyproject.toml", "/static/js/../vendor/README.md",
])
def test_path_traversal_is_not_found(relay: RelayServer, target: str) -> None:
    assert final_status(relay, target) == 404, target
