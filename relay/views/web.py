"""`GET /`: the chat page, and `/static/<path>` for the files of `frontend/`."""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, current_app, send_from_directory

bp = Blueprint("web", __name__)

FRONTEND_DIR = Path(__file__).resolve().parents[2] / "frontend"


@bp.get("/")
def index() -> Response:
    """The chat page."""
    response = send_from_directory(FRONTEND_DIR, "index.html", max_age=0)
    response.headers["Cache-Control"] = "no-cache"
    return response


@bp.get("/static/<path:filename>")
def static_file(filename: str) -> Response:
    """A file of the chat page (scripts, styles, vendored libraries)."""
    max_age = 0 if current_app.debug else 300
    return send_from_directory(FRONTEND_DIR, filename, max_age=max_age)
