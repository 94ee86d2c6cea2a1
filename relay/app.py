"""Building the relay app: config, extensions, blueprints, error handlers, and `RelayState`."""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from typing import Any

import orjson
from dotenv import load_dotenv
from flask import Flask
from flask.json.provider import DefaultJSONProvider
from flask_cors import CORS

from . import logs, sql
from .broker import Broker
from .config import ConfigError, default_instance_path, load_config
from .cookies import IdentityCookie
from .db import MIGRATIONS_DIR, db, migrate, migration_heads, tune_sqlite
from .errors import register_error_handlers
from .identity import AuthMode, check_access
from .openstreams import StreamLimiter
from .ratelimits import RequestCounter
from .signin import SignInLimiter
from .state import RelayState
from .streams import StreamSettings
from .upstream import build_upstream
from .writer import BatchWriter


def build_app(overrides: dict[str, Any] | None = None) -> Flask:
    """Build the relay app from the environment (and `.env`), then `overrides`."""
    load_dotenv(os.path.join(os.getcwd(), ".env"))
    config = load_config(os.environ)
    config.update(overrides or {})
    if config["AUTH"] == AuthMode.PROXY and not config["TRUSTED_PROXIES"]:
        raise ConfigError("RELAY_AUTH=proxy needs RELAY_TRUSTED_PROXIES: the addresses of the "
                          "proxies whose user header relay may believe.")
    instance_path = os.path.abspath(config["INSTANCE_PATH"] or default_instance_path())
    os.makedirs(instance_path, exist_ok=True)

    app = Flask(__name__, instance_path=instance_path, static_folder=None)
    app.json = _JSONProvider(app)
    app.config.update(config)
    app.config.update(
        SECRET_KEY=config["SECRET_KEY"] or _stored_secret(instance_path),
        SQLALCHEMY_DATABASE_URI=_database_url(config["DATABASE_URL"], instance_path),
        MAX_CONTENT_LENGTH=config["MAX_PROMPT_BYTES"],
        SESSION_COOKIE_NAME="relay_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        PERMANENT_SESSION_LIFETIME=timedelta(days=365),
    )
    app.session_interface = IdentityCookie()
    # JSON columns (a ticket's request, usage) through orjson, as request bodies are; no
    # statement's parameters (prompts, answers) in the text of its exceptions.
    json_options = {
        "json_serializer": _json_text, "json_deserializer": orjson.loads, "hide_parameters": True,
    }
    if app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite"):
        app.config["SQLALCHEMY_ENGINE_OPTIONS"] = {
            "pool_size": 20, "max_overflow": 40, **json_options,
        }
    else:
        app.config["SQLALCHEMY_ENGINE_OPTIONS"] = {
            "pool_size": 10, "max_overflow": 30, "pool_pre_ping": True, **json_options,
        }
    _configure_logging(config["LOG_LEVEL"])

    db.init_app(app)
    migrate.init_app(app, db, directory=MIGRATIONS_DIR, render_as_batch=True)
    with app.app_context():
        engine = db.engine
    if engine.dialect.name == "sqlite":
        tune_sqlite(engine, config["SQLITE_SYNCHRONOUS"])
        sql.keep_sqlite_connections(engine)
    app.extensions["relay"] = RelayState(
        config=config, embedded_store=not config["DATABASE_URL"],
        migration_heads=migration_heads(), upstream=build_upstream(config),
        broker=Broker(config["REDIS_URL"]),
        writer=BatchWriter(app, engine), stream_settings=StreamSettings.of(app),
        signin=SignInLimiter(config["REDIS_URL"], config["SIGNIN_ATTEMPTS"]),
        request_counter=RequestCounter(config["REDIS_URL"]),
        open_streams=StreamLimiter(config, engine),
    )

    from .views import admin, api, auth, compat, conversations, ops, stream, usage, web

    for blueprint in (api.bp, stream.bp, conversations.bp, compat.bp, ops.bp, web.bp, auth.bp,
                      admin.bp, usage.bp):
        app.register_blueprint(blueprint)
    app.before_request(check_access)
    if config["CORS_ORIGINS"]:
        # Pages of these origins may call the API with a key; never with relay's cookie.
        CORS(app, origins=list(config["CORS_ORIGINS"]), supports_credentials=False,
             allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
             expose_headers=["Location", "Retry-After"], max_age=600)
    register_error_handlers(app)
    return app


class _JSONProvider(DefaultJSONProvider):
    """Flask's JSON, but request bodies are decoded with orjson: json.loads lets a lone surrogate
    ("\\ud800") through, which no database can store (a 500 instead of a 400)."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return orjson.loads(s)


def _json_text(value: Any) -> str:
    return orjson.dumps(value).decode()


def _database_url(url: str | None, instance_path: str) -> str:
    if not url:
        return "sqlite:///" + os.path.join(instance_path, "relay.db")
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def _stored_secret(instance_path: str) -> str:
    """The secret generated on first start, shared by every worker through the instance folder."""
    path = os.path.join(instance_path, "secret_key")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        with open(path, encoding="ascii") as existing:
            secret = existing.read().strip()
        if len(secret) < 32:
            raise RuntimeError(f"{path} is damaged; delete it or set RELAY_SECRET_KEY") from None
        return secret
    secret = os.urandom(32).hex()
    with os.fdopen(fd, "w", encoding="ascii") as new:
        new.write(secret)
    return secret


def _configure_logging(level: str) -> None:
    """relay's records to stderr, one line each (`logs.py`), unless the host program logs them."""
    logger = logging.getLogger("relay")
    logger.setLevel(level)
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logs.install(handler)
        logger.addHandler(handler)
