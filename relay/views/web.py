"""`GET /`: the chat page, and `/static/<path>` for the scripts and styles it loads from
`relay/frontend/` (nothing else there: not the licences, notes or whatever else lies in it)."""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, send_from_directory

from ..errors import NotFound

bp = Blueprint("web", __name__)

FRONTEND_DIR = Path(__file__).resolve().parents[1] / "frontend"
# The page's own <meta> policy, plus what only a header can say (no framing: clickjacking).
PAGE_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
# What index.html and its modules load: style.css, js/*.js, vendor/*.js and vendor/*.css.
_ASSET_FOLDERS = frozenset({"", "js", "vendor"})
_ASSET_SUFFIXES = (".js", ".css")


@bp.get("/")
def index() -> Response:
    """The chat page."""
    return _page_headers(send_from_directory(FRONTEND_DIR, "index.html", max_age=0))


@bp.get("/static/<path:filename>")
def static_file(filename: str) -> Response:
    """A file the chat page loads: its style sheet, its scripts and vendored libraries."""
    folder, _, name = filename.rpartition("/")
    if folder not in _ASSET_FOLDERS or not name.endswith(_ASSET_SUFFIXES) or name.startswith("."):
        raise NotFound("No such file.")
    # The page's ES modules import each other: revalidate (ETag) so an upgrade never mixes them.
    return _page_headers(send_from_directory(FRONTEND_DIR, filename, max_age=0))


def _page_headers(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Security-Policy"] = PAGE_POLICY
    return response
