"""Upstream LLM sources behind one protocol; `build_upstream` picks one from the config."""

from __future__ import annotations

from typing import Any

from .base import ChatRequest, Delta, Finish, Upstream, UpstreamError
from .mock import ECHO_MODEL, MockUpstream
from .openai_compat import OpenAIUpstream

__all__ = [
    "ChatRequest", "Delta", "Finish", "Upstream", "UpstreamError", "build_upstream",
    "default_model",
]


def build_upstream(config: dict[str, Any]) -> Upstream:
    """Return the upstream the config names (`auto`: openai when a key is set, else mock)."""
    kind = config["UPSTREAM"]
    if kind == "auto":
        kind = "openai" if config["OPENAI_API_KEY"] else "mock"
    if kind == "mock":
        return MockUpstream(config["MOCK_DELAY_MS"])
    return OpenAIUpstream(
        api_key=config["OPENAI_API_KEY"] or "unset",
        base_url=config["OPENAI_BASE_URL"],
        read_timeout=config["UPSTREAM_TIMEOUT_SECONDS"],
        connect_timeout=config["UPSTREAM_CONNECT_TIMEOUT_SECONDS"],
    )


def default_model(config: dict[str, Any], upstream: Upstream) -> str:
    """The configured default model, else the upstream's first model, else `mock-echo`."""
    if config["DEFAULT_MODEL"]:
        return config["DEFAULT_MODEL"]
    try:
        models = upstream.models()
    except UpstreamError:
        models = []
    return models[0] if models else ECHO_MODEL

