"""`RelayState`, the per-app objects the views, the producer and the streams share, and its typed
accessor."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flask import Flask, current_app

from .secondcache import SecondCache

if TYPE_CHECKING:
    from .broker import Broker
    from .openstreams import StreamLimiter
    from .ratelimits import RequestCounter
    from .signin import SignInLimiter
    from .streams import StreamSettings
    from .upstream import Upstream
    from .writer import BatchWriter


@dataclass
class RelayState:
    """What `create_app` builds once per app, kept in `app.extensions["relay"]`."""

    config: dict[str, Any]
    embedded_store: bool  # the default SQLite file, which `relay serve` migrates itself
    migration_heads: frozenset[str]
    upstream: Upstream
    broker: Broker
    writer: BatchWriter
    stream_settings: StreamSettings  # of an EventSource stream (`/v1`: `for_one_request()`)
    signin: SignInLimiter
    request_counter: RequestCounter  # requests per minute (ratelimits.py)
    open_streams: StreamLimiter  # open streams per user and address (openstreams.py)
    # Sessions, keys and proxy users looked up in this second (identity.py).
    credentials: SecondCache = field(default_factory=SecondCache)
    _default_model: str | None = field(default=None)

    def default_model(self) -> str:
        """The model of a request that names none, kept once the upstream listed its models (a
        failed listing raises, and the next call lists again)."""
        if self._default_model is None:
            from .upstream import default_model

            self._default_model = default_model(self.config, self.upstream)
        return self._default_model


def relay_state(app: Flask | None = None) -> RelayState:
    """The RelayState of `app`, else of the current app."""
    state: RelayState = (app or current_app).extensions["relay"]
    return state
