"""Every setting relay reads, in one table, and `load_config` to read them from an environment.

This module must not import the app: `create_app` calls `load_config(os.environ)` and nothing
reads the environment at import time.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


class ConfigError(ValueError):
    """A setting has a value that cannot be used; the message names the variable."""


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError("expected true/false")


def _positive(cast: Callable[[str], float | int]) -> Callable[[str], Any]:
    def parse(raw: str) -> float | int:
        value = cast(raw)
        if value <= 0:
            raise ValueError("must be greater than 0")
        return value

    return parse


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return raw

    return parse


def _addresses(raw: str) -> tuple[str, ...]:
    networks = tuple(part.strip() for part in raw.split(",") if part.strip())
    for network in networks:
        ipaddress.ip_network(network, strict=False)  # ValueError names the bad one
    return networks


def _origins(raw: str) -> tuple[str, ...]:
    origins = tuple(part.strip().rstrip("/") for part in raw.split(",") if part.strip())
    for origin in origins:
        scheme, _, host = origin.partition("://")
        if scheme not in ("http", "https") or not host or "/" in host:
            raise ValueError(f"{origin!r} is not an origin like https://app.example")
    return origins


def _prices(raw: str) -> dict[str, tuple[float, float]]:
    try:
        table = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(table, dict):
        raise ValueError('expected {"model": [usd_per_1k_prompt, usd_per_1k_completion]}')
    prices: dict[str, tuple[float, float]] = {}
    for model, pair in table.items():
        if not (isinstance(pair, list) and len(pair) == 2 and all(
            isinstance(p, int | float) and not isinstance(p, bool) and p >= 0 for p in pair
        )):
            raise ValueError(f"the price of {model!r} is not [usd_per_1k_prompt, "
                             "usd_per_1k_completion]")
        prices[model] = (float(pair[0]), float(pair[1]))
    return prices


@dataclass(frozen=True)
class Setting:
    """One environment variable: its config key, default, parser and help text."""

    env: str
    key: str
    default: Any
    cast: Callable[[str], Any]
    help: str


SETTINGS: tuple[Setting, ...] = (
    Setting("DATABASE_URL", "DATABASE_URL", None, str,
            "SQLAlchemy URL of the store; default the SQLite file `relay.db` in the instance "
            "folder. `postgresql://...` uses psycopg 3."),
    Setting("REDIS_URL", "REDIS_URL", None, str,
            "Redis URL for cross-worker/cross-host wake-ups and cancels; unset: single machine."),
    Setting("OPENAI_API_KEY", "OPENAI_API_KEY", None, str,
            "Key for the OpenAI-compatible upstream; unset: the built-in mock."),
    Setting("OPENAI_BASE_URL", "OPENAI_BASE_URL", None, str,
            "Base URL of the OpenAI-compatible upstream (e.g. `http://127.0.0.1:8000/v1`); works "
            "with OpenAI, vLLM, Ollama, llama.cpp's server, LiteLLM. Answers stream over pooled "
            "HTTP/1.1 keep-alive connections straight to it (`HTTPS_PROXY` is not used; HTTPS is "
            "verified against the system's CA certificates)."),
    Setting("RELAY_SECRET_KEY", "SECRET_KEY", None, str,
            "Signs session cookies and stream tokens, and keys the stored hashes of API keys; "
            "default generated once into `secret_key` in the instance folder. Set it when "
            "several hosts serve the same users (changing it ends every session, stream token "
            "and API key)."),
    Setting("RELAY_DEFAULT_MODEL", "DEFAULT_MODEL", None, str,
            "Model used when a request names none; default the upstream's first model, or "
            "`mock-echo` if it lists none. While the upstream cannot list its models, a request "
            "naming none gets a 503."),
    Setting("RELAY_UPSTREAM", "UPSTREAM", "auto", _choice("auto", "mock", "openai"),
            "`mock`, `openai`, or `auto` (openai when `OPENAI_API_KEY` is set, else mock)."),
    Setting("RELAY_HEARTBEAT_SECONDS", "HEARTBEAT_SECONDS", 15.0, _positive(float),
            "Silence on a stream before a `: ping` comment is sent."),
    Setting("RELAY_RETRY_MS", "RETRY_MS", 2000, _positive(int),
            "The `retry:` reconnection delay sent to EventSource clients."),
    Setting("RELAY_UPSTREAM_TIMEOUT_SECONDS", "UPSTREAM_TIMEOUT_SECONDS", 60.0, _positive(float),
            "Upstream silence (before the first chunk or between chunks) that fails a ticket; "
            "checked every second (every quarter of the timeout when it is shorter than 4 s)."),
    Setting("RELAY_UPSTREAM_CONNECT_TIMEOUT_SECONDS", "UPSTREAM_CONNECT_TIMEOUT_SECONDS", 10.0,
            _positive(float), "Time allowed to connect to the upstream."),
    Setting("RELAY_UPSTREAM_MAX_CONCURRENCY", "UPSTREAM_MAX_CONCURRENCY", None, _positive(int),
            "Concurrent upstream calls, on every worker and host together; tickets beyond it "
            "wait in a queue that is fair between users (round-robin by owner) and their "
            "streams get `event: queued` with their position. Unset: no cap, no queue."),
    Setting("RELAY_UPSTREAM_QUEUE_MAX", "UPSTREAM_QUEUE_MAX", 1000, _positive(int),
            "Tickets waiting in the upstream queue, in all; one more is refused (`429` "
            "`queue_full` with `Retry-After`). Only with `RELAY_UPSTREAM_MAX_CONCURRENCY`."),
    Setting("RELAY_MAX_PROMPT_BYTES", "MAX_PROMPT_BYTES", 4 * 1024 * 1024, _positive(int),
            "Largest accepted `POST /new` request body, in bytes (larger: `413`)."),
    Setting("RELAY_MAX_MESSAGES", "MAX_MESSAGES", 1000, _positive(int),
            "Most messages one request may hold (`messages` of `POST /new` or "
            "`/v1/chat/completions`); more: `400` `invalid_messages`."),
    Setting("RELAY_MAX_HISTORY_MESSAGES", "MAX_HISTORY_MESSAGES", 1000, _positive(int),
            "Most messages a turn sends upstream: a longer conversation sends its system "
            "message, then its newest messages. Keep it at least `RELAY_MAX_MESSAGES`, or a "
            "`/v1` request loses its oldest messages."),
    Setting("RELAY_MOCK_DELAY_MS", "MOCK_DELAY_MS", 20.0, float,
            "The mock upstream's pause between chunks, in milliseconds."),
    Setting("RELAY_CANCEL_ON_DISCONNECT", "CANCEL_ON_DISCONNECT", False, _bool,
            "Stop generation when the last reader of a ticket on its worker disconnects and "
            "none returns within `RELAY_DISCONNECT_GRACE_SECONDS`. By default generation goes "
            "on, so the answer is stored and can be resumed later."),
    Setting("RELAY_DISCONNECT_GRACE_SECONDS", "DISCONNECT_GRACE_SECONDS", 10.0, float,
            "With `RELAY_CANCEL_ON_DISCONNECT`, how long to wait for a reader to reconnect."),
    Setting("RELAY_CLIENT_READ_TIMEOUT_SECONDS", "CLIENT_READ_TIMEOUT_SECONDS", 30.0,
            _positive(float),
            "Longest wait for the next bytes of a request body: a client slower than this gets "
            "`408` `request_timeout` and its connection is closed. (A request head must arrive "
            "within gunicorn's `keepalive`, 5 s.)"),
    Setting("RELAY_CLIENT_WRITE_TIMEOUT_SECONDS", "CLIENT_WRITE_TIMEOUT_SECONDS", 60.0,
            _positive(float),
            "Longest one write to a client may take (a response, or a batch of a stream's "
            "events): a client that stops reading is dropped then, as if it had disconnected."),
    Setting("RELAY_LEASE_SECONDS", "LEASE_SECONDS", 15.0, _positive(float),
            "A generating worker renews its claim on a ticket every third of this; a claim not "
            "renewed for this long (its worker died) fails the ticket with `worker_lost`."),
    Setting("RELAY_FLUSH_MS", "FLUSH_MS", 25.0, float,
            "How long chunks may gather before their worker commits them, all of its streams in "
            "one transaction; an idle writer commits at once. Chunks reach readers only once "
            "committed."),
    Setting("RELAY_SQLITE_SYNCHRONOUS", "SQLITE_SYNCHRONOUS", "full", _choice("full", "normal"),
            "How hard a SQLite commit holds: `full` (a ticket answered `201` survives an OS "
            "crash or power cut; answers written in the last second may be cut short and end "
            "failed) or `normal` (faster for many short answers; an OS crash may also lose "
            "tickets answered in the last second). A relay crash loses nothing either way."),
    Setting("RELAY_POLL_MS", "POLL_MS", 100.0, _positive(float),
            "How often a reader on another worker checks the database for new events when "
            "Redis is not configured."),
    Setting("RELAY_AUTH", "AUTH", "open", _choice("open", "accounts", "proxy"),
            "Who may use relay: `open` (anyone; each browser or client gets an anonymous "
            "identity in a signed cookie), `accounts` (a signed-in user or an API key everywhere "
            "but the page, sign-in, static files and `/healthz`), `proxy` (a trusted reverse "
            "proxy names the user in `RELAY_PROXY_USER_HEADER`)."),
    Setting("RELAY_SESSION_DAYS", "SESSION_DAYS", 30.0, _positive(float),
            "How long a sign-in lasts; sign-out, a password change or disabling the user ends "
            "it sooner, on every worker and host within seconds."),
    Setting("RELAY_STREAM_TOKEN_SECONDS", "STREAM_TOKEN_SECONDS", 60.0, _positive(float),
            "How long the `access_token` in a key-made ticket's `stream_url` may start a "
            "stream; after that it only resumes (with `Last-Event-ID`) while the ticket runs and "
            "for as long again after it ended."),
    Setting("RELAY_PROXY_USER_HEADER", "PROXY_USER_HEADER", "X-Forwarded-User", str,
            "In `proxy` mode, the header that names the signed-in user (oauth2-proxy: "
            "`X-Forwarded-User`; Authelia: `Remote-User`). Users are created on first sight."),
    Setting("RELAY_TRUSTED_PROXIES", "TRUSTED_PROXIES", (), _addresses,
            "Comma-separated addresses or networks of reverse proxies relay trusts: for the "
            "user header in `proxy` mode (required there), for `X-Forwarded-Proto` (is the "
            "request HTTPS, for `Secure` cookies) and for `X-Forwarded-For` (the client's "
            "address, which the sign-in and per-address limits count). Empty: gunicorn's "
            "default, 127.0.0.1 and ::1, for `X-Forwarded-Proto`."),
    Setting("RELAY_CORS_ORIGINS", "CORS_ORIGINS", (), _origins,
            "Comma-separated origins (`https://app.example`) whose pages may call relay's API "
            "with an API key (CORS, never with cookies). Empty: none."),
    Setting("RELAY_SIGNIN_ATTEMPTS", "SIGNIN_ATTEMPTS", 5, _positive(int),
            "Failed sign-ins allowed per user in 15 minutes (per address: four times this); "
            "then `429` `rate_limited` with `Retry-After`. Counted in Redis when configured, "
            "else per worker."),
    Setting("RELAY_TOKENS_PER_DAY", "TOKENS_PER_DAY", None, _positive(int),
            "Tokens (prompt and answer) each user may spend per UTC day; an anonymous visitor "
            "of an open relay counts as a user. A generation reserves its prompt's estimate "
            "and its answer's cap first and is refused (`429` `quota_exceeded`) when that does "
            "not fit. Unset: no quota. `relay users limits` overrides it per user."),
    Setting("RELAY_TOKENS_PER_MONTH", "TOKENS_PER_MONTH", None, _positive(int),
            "Tokens each user may spend per UTC month, as `RELAY_TOKENS_PER_DAY`."),
    Setting("RELAY_KEY_TOKENS_PER_DAY", "KEY_TOKENS_PER_DAY", None, _positive(int),
            "Tokens the tickets of each API key may spend per UTC day (on top of its user's "
            "quota). Unset: no quota. `relay keys limits` overrides it per key."),
    Setting("RELAY_KEY_TOKENS_PER_MONTH", "KEY_TOKENS_PER_MONTH", None, _positive(int),
            "Tokens each API key may spend per UTC month, as `RELAY_KEY_TOKENS_PER_DAY`."),
    Setting("RELAY_MAX_GENERATIONS", "MAX_GENERATIONS", None, _positive(int),
            "Answers each user, and each API key, may have generating at once, on every worker "
            "and host together; one more is refused (`429` `too_many_generations`). Unset: no "
            "limit."),
    Setting("RELAY_REQUESTS_PER_MINUTE", "REQUESTS_PER_MINUTE", None, _positive(int),
            "Requests each user may make per minute to `POST /new` and "
            "`/v1/chat/completions`, on every worker and host together; an anonymous visitor "
            "of an open relay counts as a user. A minute starts at the first request; every "
            "request counts, refused or not, and one over the limit gets `429` `rate_limited` "
            "with `Retry-After` (the seconds left of the minute). Unset: no limit. "
            "`relay users limits` overrides it per user."),
    Setting("RELAY_KEY_REQUESTS_PER_MINUTE", "KEY_REQUESTS_PER_MINUTE", None, _positive(int),
            "Requests each API key may make per minute, as `RELAY_REQUESTS_PER_MINUTE` (on top "
            "of its user's limit). Unset: no limit. `relay keys limits` overrides it per key."),
    Setting("RELAY_ADDRESS_REQUESTS_PER_MINUTE", "ADDRESS_REQUESTS_PER_MINUTE", None,
            _positive(int),
            "Requests each client address may make per minute to `POST /new` and "
            "`/v1/chat/completions`, whoever sends them, as `RELAY_REQUESTS_PER_MINUTE` (an "
            "open relay's client without a cookie is a new visitor on every request). The "
            "address is the peer's, or behind `RELAY_TRUSTED_PROXIES` the one they forwarded. "
            "Unset: no limit."),
    Setting("RELAY_MAX_STREAMS_PER_USER", "MAX_STREAMS_PER_USER", None, _positive(int),
            "Streams (`GET /sse/<id>`, streamed `/v1/chat/completions`) each user may have open "
            "at once, on every worker and host together; one more is refused before it starts "
            "(`429` `too_many_streams`). A killed worker's streams stop counting after "
            "`RELAY_LEASE_SECONDS`. Unset: no limit. `relay users limits --max-streams` "
            "overrides it per user (not per key: a key's streams are its user's)."),
    Setting("RELAY_MAX_STREAMS_PER_ADDRESS", "MAX_STREAMS_PER_ADDRESS", None, _positive(int),
            "Streams each client address may have open at once, as `RELAY_MAX_STREAMS_PER_USER` "
            "(the address as for `RELAY_ADDRESS_REQUESTS_PER_MINUTE`: behind a proxy not in "
            "`RELAY_TRUSTED_PROXIES`, every client shares the proxy's). Unset: no limit."),
    Setting("RELAY_DEFAULT_MAX_TOKENS_RESERVED", "DEFAULT_MAX_TOKENS_RESERVED", 4096,
            _positive(int),
            "Under a token quota, the answer's cap reserved (and sent upstream as `max_tokens`) "
            "for a request that names no `max_tokens`."),
    Setting("RELAY_MODEL_PRICES", "MODEL_PRICES", None, _prices,
            "Prices per model for the cost in usage records, as JSON: "
            "`{\"model\": [usd_per_1k_prompt, usd_per_1k_completion]}`. A model without a "
            "price has no cost."),
    Setting("RELAY_INSTANCE_PATH", "INSTANCE_PATH", None, str,
            "Folder for the SQLite file and the generated secret; default `./instance`."),
    Setting("RELAY_LOG_LEVEL", "LOG_LEVEL", "INFO",
            _choice("DEBUG", "INFO", "WARNING", "ERROR"),
            "Log level of relay's own logger. Its records and gunicorn's error log are one line "
            "each; an exception is logged as its type, codes and frames, never its text."),
)


def load_config(environ: Mapping[str, str]) -> dict[str, Any]:
    """Return the config mapping for `environ`, raising ConfigError naming a bad variable."""
    config: dict[str, Any] = {}
    for setting in SETTINGS:
        raw = environ.get(setting.env)
        if raw is None or raw == "":
            config[setting.key] = setting.default
            continue
        try:
            config[setting.key] = setting.cast(raw)
        except ValueError as exc:
            raise ConfigError(f"{setting.env}={raw!r} is invalid: {exc}") from exc
    return config


def default_instance_path() -> str:
    """Where the instance folder lives when RELAY_INSTANCE_PATH is not set."""
    return os.path.join(os.getcwd(), "instance")
