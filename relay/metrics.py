"""Prometheus metrics, shared across gunicorn workers through PROMETHEUS_MULTIPROC_DIR.

`relay serve` points PROMETHEUS_MULTIPROC_DIR at a fresh folder in the instance path before
gunicorn starts, so every worker writes its samples there and `/metrics` sums them.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import gevent
import gevent.monkey
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

TICKETS_CREATED = Counter("relay_tickets_created", "Tickets created by POST /new.")
TICKETS_FINISHED = Counter(
    "relay_tickets_finished", "Tickets that reached a final status.", ["status", "error_code"]
)
TOKENS = Counter(
    "relay_tokens", "Tokens of finished tickets (the upstream's counts, or estimated).",
    ["kind", "model", "estimated"],
)
CHUNKS_RELAYED = Counter("relay_chunks_relayed", "Upstream text chunks stored for streaming.")
STREAMS_OPEN = Gauge(
    "relay_streams_open", "Open GET /sse responses.", multiprocess_mode="livesum"
)
TIME_TO_FIRST_CHUNK = Histogram(
    "relay_upstream_first_chunk_seconds",
    "Time from the start of generation to the upstream's first chunk.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)


def soon(update: Callable[[], object]) -> None:
    """Make a metric update at the event loop's next turn in a gevent worker, else at once.

    A sample in multiprocess mode (a gevent lock, a getpid, a write to the shared file) would
    otherwise sit on the path of `POST /new`'s answer and of a stream's first token; the worker
    takes it once it waits for I/O. Updates run in the order they were made.
    """
    if gevent.monkey.is_module_patched("socket"):
        gevent.get_hub().loop.run_callback(update)
    else:
        update()


def render() -> tuple[bytes, str]:
    """The exposition text of every worker's metrics, and its content type."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
