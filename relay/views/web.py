"""`GET /`: the chat page, and `/static/<path>` for the files of `relay/frontend/`."""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, send_from_directory

bp = Blueprint("web", __name__)

FRONTEND_DIR = Path(__file__).resolve().parents[1] / "frontend"
# The page's own <meta> policy, plus what only a header can say (no framing: clickjacking).
PAGE_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)


@bp.get("/")
def index() -> Response:
    """The chat page."""
    response = _no_cache(send_from_directory(FRONTEND_DIR, "index.html", max_age=0))
    response.headers["Content-Security-Policy"] = PAGE_POLICY
    return response


@bp.get("/static/<path:filename>")
def static_file(filename: str) -> Response:
    """A file of the chat page (scripts, styles, vendored libraries)."""
    # The page's ES modules import each other: revalidate (ETag) so an upgrade never mixes them.
    return _no_cache(send_from_directory(FRONTEND_DIR, filename, max_age=0))


def _no_cache(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
