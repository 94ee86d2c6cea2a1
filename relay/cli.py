"""The `relay` command: Flask's CLI for the app (`relay db upgrade`, ...), `relay serve`, and the
operator's `relay users ...` and `relay keys ...`."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import click
from flask import Flask, current_app
from flask.cli import FlaskGroup, with_appcontext
from flask_migrate import upgrade

from . import apikeys, create_app, quotas, usage, users
from .config import ConfigError
from .db import MIGRATIONS_DIR, SchemaBehind, check_schema, db
from .errors import RelayError
from .state import relay_state


def _configured_app() -> Flask:
    """The app, or a bad setting as the command's error (its name and why, no traceback)."""
    try:
        return create_app()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@click.group(cls=FlaskGroup, create_app=_configured_app)
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
    if current_app.config["AUTH"] == "accounts" and users.setup_required():
        click.echo("relay: RELAY_AUTH=accounts and no user yet: the page will ask for the first "
                   "admin (or run `relay users create NAME --admin`)", err=True)
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


@main.group("users")
def users_group() -> None:
    """Users who sign in (RELAY_AUTH=accounts) or whom the proxy names."""


@users_group.command("create")
@click.argument("name")
@click.option("--admin", is_flag=True, help="May manage users in the page.")
@click.option("--password-stdin", is_flag=True, help="Read the password from one line of stdin.")
@with_appcontext
def users_create(name: str, admin: bool, password_stdin: bool) -> None:
    """Create a user with a password."""
    with _refusals():
        password = users.check_password(_read_password(password_stdin))
        user = users.create_user(name, password, admin)
    click.echo(f"created user {user.name}{' (admin)' if user.admin else ''}")


@users_group.command("list")
@with_appcontext
def users_list() -> None:
    """List users."""
    rows = [(u["name"], "admin" if u["admin"] else "", "disabled" if u["disabled"] else "",
             _when(u["created_at"])) for u in users.list_users()]
    _table(("NAME", "ADMIN", "DISABLED", "CREATED"), rows)


@users_group.command("disable")
@click.argument("name")
@with_appcontext
def users_disable(name: str) -> None:
    """Disable a user: their sessions and API keys stop working, their answers stop."""
    with _refusals():
        users.disable_user(name)
    click.echo(f"disabled user {name}")


@users_group.command("enable")
@click.argument("name")
@with_appcontext
def users_enable(name: str) -> None:
    """Let a disabled user sign in again."""
    with _refusals():
        users.enable_user(name)
    click.echo(f"enabled user {name}")


@users_group.command("set-password")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from one line of stdin.")
@with_appcontext
def users_set_password(name: str, password_stdin: bool) -> None:
    """Give a user a new password; every session of theirs ends."""
    with _refusals():
        users.find_user(name)
        users.set_password(name, users.check_password(_read_password(password_stdin)))
    click.echo(f"set the password of {name}; their sessions ended")


@main.group("keys")
def keys_group() -> None:
    """API keys (`Authorization: Bearer <key>`)."""


@keys_group.command("create")
@click.argument("user")
@click.option("--name", default="", help="A label to recognise the key by.")
@click.option("--expires-days", type=click.IntRange(1, 3650), help="Stop working after N days.")
@click.option("--models", help="Comma-separated models the key may use (default: any).")
@with_appcontext
def keys_create(user: str, name: str, expires_days: int | None, models: str | None) -> None:
    """Create a key for USER; the key is printed once, alone on the last line."""
    allowed = [m.strip() for m in models.split(",") if m.strip()] if models else None
    with _refusals():
        listing, secret = apikeys.create_key(
            users.find_user(user), current_app.secret_key or "", name, expires_days, allowed
        )
    click.echo(f"created key {listing['id']} ({listing['prefix']}…) for {user}; "
               "it is shown only now:")
    click.echo(secret)


@keys_group.command("list")
@click.argument("user", required=False)
@with_appcontext
def keys_list(user: str | None) -> None:
    """List keys (of USER, or everyone's): ids and prefixes, never the keys."""
    with _refusals():
        owner = users.find_user(user) if user else None
    rows = [(k["id"], k["prefix"] + "…", k["user"], k["name"], _when(k["created_at"]),
             _when(k["last_used_at"]), _when(k["expires_at"]), "revoked" if k["revoked"] else "")
            for k in apikeys.list_keys(owner)]
    _table(("ID", "PREFIX", "USER", "NAME", "CREATED", "LAST USED", "EXPIRES", "REVOKED"), rows)


@keys_group.command("revoke")
@click.argument("key_id")
@with_appcontext
def keys_revoke(key_id: str) -> None:
    """Revoke a key: it stops working within seconds and its streams end."""
    with _refusals():
        apikeys.revoke_key(key_id)
    click.echo(f"revoked key {key_id}")


class _Limit(click.ParamType):
    """A limit's new value: a number, or 0 / `none` to clear it."""

    name = "N|none"

    def convert(self, value: Any, param: Any, ctx: Any) -> int:
        if isinstance(value, int) or str(value).isdigit():
            return int(value)
        if str(value).lower() == "none":
            return 0
        self.fail(f"{value!r} is not a number of 0 or more, or none", param, ctx)


def _limit_options(kind: str) -> Any:
    def add(command: Any) -> Any:
        for name in reversed(quotas.LIMIT_NAMES):
            flag = "--" + name.replace("_", "-")
            # Not a key's limit: hidden, and refused with set_limits's reason when given.
            hidden = kind == "key" and name not in quotas.KEY_LIMIT_NAMES
            command = click.option(flag, name, type=_Limit(), hidden=hidden,
                                   help="0 or none clears it (the setting applies).")(command)
        return command
    return add


def _set_limits(kind: str, ident: Any, label: str, changes: dict[str, int | None]) -> None:
    given = {name: value for name, value in changes.items() if value is not None}
    with _refusals():
        stored = quotas.set_limits(kind, ident, given)
    shown = ", ".join(f"{name}={value if value else 'setting'}" for name, value in stored.items())
    click.echo(f"limits of {label}: {shown}")


@users_group.command("limits")
@click.argument("name")
@_limit_options("user")
@with_appcontext
def users_limits(name: str, **changes: int | None) -> None:
    """Show or change a user's limits (overriding RELAY_TOKENS_PER_DAY, ...,
    RELAY_MAX_STREAMS_PER_USER)."""
    with _refusals():
        user = users.find_user(name)
    _set_limits("user", user.id, f"user {name}", changes)


@keys_group.command("limits")
@click.argument("key_id")
@_limit_options("key")
@with_appcontext
def keys_limits(key_id: str, **changes: int | None) -> None:
    """Show or change a key's limits (overriding RELAY_KEY_TOKENS_PER_DAY, ...)."""
    _set_limits("key", key_id, f"key {key_id}", changes)


@main.command("usage")
@click.option("--user", "user_name", help="Only this user's usage (with all their keys).")
@click.option("--key", "key_id", help="Only the usage of this API key.")
@click.option("--since", help="From this UTC day on (YYYY-MM-DD).")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
@with_appcontext
def usage_command(user_name: str | None, key_id: str | None, since: str | None,
                  as_json: bool) -> None:
    """Tokens used per user, day and model (`GET /usage` shows a caller theirs)."""
    if since is not None and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", since):
        raise click.BadParameter("a day, YYYY-MM-DD", param_hint="--since")
    with _refusals():
        owner = users.find_user(user_name).owner if user_name else None
    names = {f"user:{u['id']}": u["name"] for u in users.list_user_ids()}
    rows = [{"user": names.get(row["owner"], row["owner"]), **row}
            for row in usage.report(owner, key_id, since)]
    if as_json:
        click.echo(json.dumps({"totals": usage.summed(rows), "rows": rows}, indent=2))
        return
    _table(("USER", "DAY", "MODEL", "TICKETS", "PROMPT", "COMPLETION", "TOTAL", "ESTIMATED",
            "COST"),
           [(row["user"], row["day"], row["model"], row["tickets"], row["prompt_tokens"],
             row["completion_tokens"], row["total_tokens"], "yes" if row["estimated"] else "",
             "-" if row["cost"] is None else f"{row['cost']:.4f}") for row in rows])


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        raise click.UsageError("no terminal to ask for the password: use --password-stdin")
    return str(click.prompt("Password", hide_input=True, confirmation_prompt=True))


@contextmanager
def _refusals() -> Iterator[None]:
    """A refusal (user exists, no such key, a short password) as the command's error."""
    try:
        yield
    except RelayError as exc:
        raise click.ClickException(exc.message) from None


def _when(timestamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp)) if timestamp else "-"


def _table(header: tuple[str, ...], rows: Sequence[tuple[Any, ...]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    for row in (header, *rows):
        cells = (str(cell).ljust(width) for cell, width in zip(row, widths, strict=True))
        click.echo("  ".join(cells).rstrip())
