"""relay.server: gunicorn's worker, used through its public hook only."""

from __future__ import annotations

import inspect

from gunicorn.workers.ggevent import GeventWorker

from relay import gunicorn_conf, server


def test_relay_runs_its_worker_and_overrides_only_the_request_hook() -> None:
    assert gunicorn_conf.worker_class is server.RelayWorker
    assert issubclass(server.RelayWorker, GeventWorker)
    overridden = {name for name, value in vars(server.RelayWorker).items()
                  if inspect.isfunction(value)}
    assert overridden == {"handle_request"}
    assert "handle_request" in vars(GeventWorker)  # still a hook of gunicorn's gevent worker
