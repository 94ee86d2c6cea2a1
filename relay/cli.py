"""The `relay` command: Flask's CLI for the app (`relay db upgrade`, ...) plus `relay serve`."""

from __future__ import annotations

import os
import shutil
import sys

import click
from flask import current_app
from flask.cli import FlaskGroup, with_appcontext
from flask_migrate import upgrade

from . import GUNICORN_CONFIG, MIGRATIONS_DIR, create_app


@click.group(cls=FlaskGroup, create_app=create_app)
def main() -> None:
    """relay: a streaming relay for LLM answers over plain EventSource."""


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("gunicorn_args", nargs=-1, type=click.UNPROCESSED)
@with_appcontext
def serve(gunicorn_args: tuple[str, ...]) -> None:
    """Apply migrations, then run gunicorn with gevent workers (extra args go to gunicorn)."""
    upgrade(directory=MIGRATIONS_DIR)
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        metrics_dir = os.path.join(current_app.instance_path, "metrics")
        shutil.rmtree(metrics_dir, ignore_errors=True)
        os.makedirs(metrics_dir)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    argv = [
        sys.executable, "-m", "gunicorn", "--config", GUNICORN_CONFIG,
        *gunicorn_args, "relay:create_app()",
    ]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)
