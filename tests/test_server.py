"""relay.server: gunicorn's worker, used through its public methods only, and the client
socket timeouts."""

from __future__ import annotations

import inspect
import socket
from collections.abc import Callable
from typing import Any

from gunicorn.workers.base import Worker
from gunicorn.workers.ggevent import GeventWorker

from relay import gunicorn_conf, server


def test_relay_runs_its_worker_and_overrides_only_public_methods() -> None:
    assert gunicorn_conf.worker_class is server.RelayWorker
    assert issubclass(server.RelayWorker, GeventWorker)
    overridden = {name for name, value in vars(server.RelayWorker).items()
                  if inspect.isfunction(value)}
    assert overridden == {"handle_request", "load_wsgi"}
    assert "handle_request" in vars(GeventWorker)  # still a hook of gunicorn's gevent worker
    assert "load_wsgi" in vars(Worker)  # still how a gunicorn worker loads its app
    assert inspect.signature(Worker.load_wsgi).parameters.keys() == {"self"}


def test_the_app_reads_with_the_read_timeout_and_the_response_is_sent_with_the_write_one(
) -> None:
    seen: list[float | None] = []

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        seen.append(environ["gunicorn.socket"].gettimeout())
        start_response("200 OK", [])
        return [b"ok"]

    client, _peer = socket.socketpair()
    with client, _peer:
        body = server.ClientTimeouts(app, read=3.0, write=7.0)(
            {"gunicorn.socket": client}, lambda *args: None
        )
        assert list(body) == [b"ok"]
        assert seen == [3.0] and client.gettimeout() == 7.0
