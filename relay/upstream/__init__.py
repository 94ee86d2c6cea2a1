"""Upstream LLM sources behind one protocol; `build_upstream` picks one from the config."""

from __future__ import annotations

from typing import Any

from ..errors import UpstreamUnavailable
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
    """The configured default model, else the upstream's first model (`mock-echo` if it lists
    none).

    While the upstream cannot list its models, a request that names none is refused with a 503
    and the listing's code (it would fail upstream as well); naming `mock-echo` instead sent a
    made-up model upstream, and was remembered until a restart. The next request lists again.
    """
    if config["DEFAULT_MODEL"]:
        return str(config["DEFAULT_MODEL"])
    try:
        models = upstream.models()
    except UpstreamError as exc:
        raise UpstreamUnavailable(
            "No `model` was named, and the upstream's list of models could not be read: "
            "name a model, or try again shortly.",
            code=exc.code,
        ) from exc
    return models[0] if models else ECHO_MODEL
