"""gunicorn settings for relay: gevent workers, loopback by default, a printed chat URL.

This file is read by the gunicorn master, so it must not import `relay` (that would import ssl
before the gevent worker patches it).

gunicorn's gevent worker monkey-patches the process after fork, so nothing here (or in the app)
patches, starts threads or opens connections at import time.
"""

from __future__ import annotations

import multiprocessing
import os

_port = os.environ.get("PORT")
bind = os.environ.get("RELAY_BIND") or (f"0.0.0.0:{_port}" if _port else "127.0.0.1:8000")
worker_class = "gevent"
workers = int(os.environ.get("WEB_CONCURRENCY") or multiprocessing.cpu_count())
worker_connections = 10000
timeout = 30
graceful_timeout = 10
keepalive = 5
accesslog = os.environ.get("RELAY_ACCESS_LOG") or None
errorlog = "-"
control_socket_disable = True  # gunicorn 27: several relays on one machine must not share it


def when_ready(server):  # type: ignore[no-untyped-def]
    for address in server.LISTENERS:
        host, port = str(address).rsplit(":", 1) if ":" in str(address) else (str(address), "")
        host = host.replace("http://", "")
        if host in ("0.0.0.0", "[::]"):
            host = "127.0.0.1"
        server.log.info("relay is ready: open http://%s:%s/ for the chat page", host, port)


def worker_exit(server, worker):  # type: ignore[no-untyped-def]
    from relay.generation import stop_all

    stop_all("worker exiting")


def child_exit(server, worker):  # type: ignore[no-untyped-def]
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
