"""relay: store a prompt with `POST /new`, stream the answer with `GET /sse/<id>`.

Only `create_app` lives here, and it imports the app's modules when called: gunicorn's master
imports `relay.server` and `relay.gunicorn_conf` through this package, and must not import
Flask, SQLAlchemy or ssl before the gevent worker patches the process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask


def create_app(overrides: dict[str, Any] | None = None) -> Flask:
    """Build the relay app from the environment (and `.env`), then `overrides`."""
    from .app import build_app

    return build_app(overrides)
