"""The `relay` command: Flask's CLI for the app (`relay db upgrade`, ...) plus `relay serve`."""

from __future__ import annotations

import os
import shutil
import sys

import click
from flask import current_app
from flask.cli import FlaskGroup, with_appcontext
from flask_migrate import upgrade

from . import create_app
from .db import MIGRATIONS_DIR, SchemaBehind, check_schema, db
from .state import relay_state


@click.group(cls=FlaskGroup, create_app=create_app)
def main() -> None:
    """relay: a streaming relay for LLM answers over plain EventSource."""


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("gunicorn_args", nargs=-1, type=click.UNPROCESSED)
@with_appcontext
def serve(gunicorn_args: tuple[str, ...]) -> None:
    """Run gunicorn with gevent workers (extra args go to gunicorn).

    The embedded SQLite store is migrated first; a configured database must already be at the
    code's migrations (`relay db upgrade`, run once per release), or relay refuses to start.
    """
    state = relay_state()
    if state.embedded_store:
        upgrade(directory=MIGRATIONS_DIR)
    try:
        check_schema(db.engine, state.migration_heads)
    except SchemaBehind as exc:
        raise click.ClickException(str(exc)) from None
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        metrics_dir = os.path.join(current_app.instance_path, "metrics")
        shutil.rmtree(metrics_dir, ignore_errors=True)
        os.makedirs(metrics_dir)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    db.engine.dispose()
    argv = [
        sys.executable, "-m", "gunicorn", "--config", "python:relay.gunicorn_conf",
        *gunicorn_args, "relay:create_app()",
    ]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)
