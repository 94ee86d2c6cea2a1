"""gunicorn settings and hooks for relay: gevent workers, loopback by default, a printed chat URL.

Loaded by `relay serve` as `--config python:relay.gunicorn_conf`, in gunicorn's master: it must
not import relay's app (that would import ssl before the gevent worker patches it), and nothing
here patches, starts threads or opens connections at import time.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
from typing import Any

import gevent
from gunicorn.glogging import Logger

from relay import logs
from relay.server import RelayWorker

_port = os.environ.get("PORT")
bind = os.environ.get("RELAY_BIND") or (f"0.0.0.0:{_port}" if _port else "127.0.0.1:8000")
worker_class = RelayWorker
# Otherwise every greenlet keeps the frames of the stack that spawned it: ~14 records per stream.
gevent.config.track_greenlet_tree = False
workers = int(os.environ.get("WEB_CONCURRENCY") or multiprocessing.cpu_count())
worker_connections = 10000
timeout = 30
graceful_timeout = 10
keepalive = 5
accesslog = os.environ.get("RELAY_ACCESS_LOG") or None
# gunicorn's default but the path without its query string and no Referer: a stream's URL may
# carry an access token, which must not reach a log.
access_log_format = '%(h)s %(l)s %(u)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s "%(a)s"'
if os.environ.get("RELAY_TRUSTED_PROXIES"):
    # Whose X-Forwarded-Proto says the request came over HTTPS (`Secure` cookies).
    forwarded_allow_ips = os.environ["RELAY_TRUSTED_PROXIES"]
errorlog = "-"
control_socket_disable = True  # gunicorn 27: several relays on one machine must not share it


class OneLineLogger(Logger):
    """gunicorn's logger, its error log written one line per record with no exception text
    (relay.logs says why)."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for handler in self.error_log.handlers:
            logs.install(handler)


logger_class = OneLineLogger


def when_ready(server: Any) -> None:
    for address in server.LISTENERS:
        host, port = str(address).rsplit(":", 1) if ":" in str(address) else (str(address), "")
        host = host.replace("http://", "")
        if host in ("0.0.0.0", "[::]"):
            host = "127.0.0.1"
        server.log.info("relay is ready: open http://%s:%s/ for the chat page", host, port)


def post_worker_init(worker: Any) -> None:
    # The objects of imports and start-up never become garbage: frozen, no collection walks
    # them again. With thousands of open streams the default thresholds spent a third of the
    # worker's CPU in collections; cycles are rare here, so young collections can wait for
    # 50,000 new objects.
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    logs.report_greenlet_errors(gevent.get_hub())


def worker_exit(server: Any, worker: Any) -> None:
    from relay.generation import stop_all

    stop_all("worker exiting")


def child_exit(server: Any, worker: Any) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
