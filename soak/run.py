"""The soak command: a real relay (two gevent workers, a fresh SQLite store in a temp folder) and
the fault-injecting upstream, both on 127.0.0.1 only; random clients for a bounded time and
number of tickets; then the checks of soak/check.py and the workers' memory and descriptors.

`python -m soak [--duration S] [--tickets N] [--concurrency C] [--seed X]`. Exits 1 when anything
is lost, left running, different from what the upstream sent, or growing.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import gevent
import psutil
from gevent.pool import Pool

from relay.config import load_config
from tests.live.relay_server import RelayServer

from . import check, report
from .client import ClientError, request_json
from .flows import FAULT_WEIGHTS, Soak, make_pool

UPSTREAM_TIMEOUT_S = 3
GRACE_S = 30.0  # for the last tickets to end after the clients are done (hangs take 3 s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m soak", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=180.0, help="seconds of load at most")
    parser.add_argument("--tickets", type=int, default=3000, help="tickets to create at most")
    parser.add_argument("--concurrency", type=int, default=48, help="clients at once")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    parser.add_argument("--big-share", type=float, default=0.05,
                        help="share of prompts between 16 KiB and the limit (default 0.05)")
    parser.add_argument("--max-rss-growth-mb", type=float, default=48.0,
                        help="a worker's resident memory growth that fails the soak")
    parser.add_argument("--max-fd-growth", type=int, default=16,
                        help="a worker's open-descriptor growth that fails the soak")
    parser.add_argument("--faults", default=",".join(FAULT_WEIGHTS),
                        help="the upstream models to use, comma-separated (default: all of "
                             "tests/live/fake_upstream.py SOAK_FAULTS), e.g. to tell one "
                             "fault's harm from another's")
    parser.add_argument("--dir", type=Path, default=None, help="work folder (default: a temp one)")
    args = parser.parse_args(argv)
    unknown = set(args.faults.split(",")) - set(FAULT_WEIGHTS)
    if unknown:
        parser.error(f"unknown --faults {', '.join(sorted(unknown))}; known: "
                     f"{', '.join(FAULT_WEIGHTS)}")
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    work = args.dir or Path(tempfile.mkdtemp(prefix="relay-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    limit = int(load_config(os.environ)["MAX_PROMPT_BYTES"])
    print(f"soak: seed {seed}, up to {args.tickets} tickets in {args.duration:.0f} s, "
          f"{args.concurrency} clients, prompts up to {limit} bytes; work folder {work}",
          flush=True)
    summary = run(args, seed, work, limit)
    (work / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(report.table(summary))
    print(f"soak: {'PASSED' if summary['passed'] else 'FAILED'}; details in {work}")
    return 0 if summary["passed"] else 1


def run(args: argparse.Namespace, seed: int, work: Path, limit: int) -> dict[str, Any]:
    record = work / "upstream-record.jsonl"
    upstream_log = open(work / "upstream.log", "wb")  # noqa: SIM115 (closed below)
    upstream = subprocess.Popen(
        [sys.executable, "-m", "soak.upstream", "--record", str(record)],
        stdout=subprocess.PIPE, stderr=upstream_log, text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    relay = None
    try:
        assert upstream.stdout is not None
        port = int(upstream.stdout.readline())
        relay = RelayServer(work / "instance", {
            "OPENAI_API_KEY": "soak", "OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1",
            "RELAY_DEFAULT_MODEL": "echo", "RELAY_MAX_PROMPT_BYTES": str(limit),
            "RELAY_UPSTREAM_TIMEOUT_SECONDS": str(UPSTREAM_TIMEOUT_S),
            "RELAY_HEARTBEAT_SECONDS": "2", "RELAY_LOG_LEVEL": "WARNING",
        }, workers=2)
        summary = _load(args, seed, relay, limit)
        summary["left_active"] = _wait_terminal(work / "instance" / "relay.db")
        summary["workers_end"] = _sample(relay)
    finally:
        if relay is not None:
            relay.stop()
        upstream.terminate()
        upstream.wait(timeout=15)
        upstream_log.close()
    soak: Soak = summary.pop("soak")
    found = check.check(soak.tickets, work / "instance" / "relay.db", record)
    return report.summarize(summary, found, args)


def _load(args: argparse.Namespace, seed: int, relay: RelayServer, limit: int) -> dict[str, Any]:
    """Warm up (two prompts at the limit among them), sample the workers, then the soak."""
    rng = random.Random(seed)
    faults = {name: FAULT_WEIGHTS[name] for name in args.faults.split(",")}
    soak = Soak(relay.port, limit, args.big_share, timeout=60.0, faults=faults,
                pool=make_pool(rng))
    pool = Pool(args.concurrency)
    # Enough at once to fill every pool (store connections, upstream connections) before the
    # start sample, so that what the soak then finds grown is a leak, not a pool filling up.
    warmup = max(2 * args.concurrency, min(100, args.tickets // 20))
    for index in range(warmup):
        forced = limit if index < 2 else None
        pool.spawn(soak.flow, random.Random(rng.random()), forced)
    pool.join()
    time.sleep(1)
    start = _sample(relay)
    began = time.monotonic()
    deadline = began + args.duration
    health: list[float] = []
    probe = gevent.spawn(_probe_health, relay.port, health)
    while len(soak.tickets) < args.tickets and time.monotonic() < deadline:
        pool.wait_available(timeout=1)
        if pool.free_count():
            pool.spawn(soak.flow, random.Random(rng.random()))
    pool.join()
    probe.kill()
    return {"soak": soak, "seed": seed, "seconds": round(time.monotonic() - began, 1),
            "warmup_tickets": warmup, "workers_start": start, "limit": limit,
            "healthz": {"probes": len(health), "slowest_s": round(max(health, default=0), 2),
                        "over_1s": sum(1 for t in health if t > 1)}}


def _probe_health(port: int, seconds: list[float]) -> None:
    """GET /healthz twice a second: a slow answer means a worker's loop was blocked (a stall
    fails innocent streams with upstream_timeout: their data waits unread in the socket)."""
    while True:
        began = time.monotonic()
        try:
            request_json(port, "GET", "/healthz", "", timeout=30)
        except (ClientError, OSError):
            pass
        seconds.append(time.monotonic() - began)
        gevent.sleep(0.5)


def _wait_terminal(db_path: Path) -> int:
    """Wait up to GRACE_S for no ticket to be pending or running; how many still are."""
    deadline = time.monotonic() + GRACE_S
    while True:
        conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
        try:
            active = conn.execute(
                "SELECT COUNT(*) FROM tickets WHERE status IN ('pending', 'running')"
            ).fetchone()[0]
        finally:
            conn.close()
        if active == 0 or time.monotonic() > deadline:
            return int(active)
        gevent.sleep(0.5)


def _sample(relay: RelayServer) -> dict[str, dict[str, int]]:
    """Each worker's resident memory and open descriptors, by pid."""
    workers = {}
    for proc in psutil.Process(relay.process.pid).children():
        try:
            workers[str(proc.pid)] = {
                "rss": proc.memory_info().rss, "fds": proc.num_fds(),
                "sockets": len(proc.net_connections(kind="all")),
            }
        except psutil.NoSuchProcess:
            pass
    return workers
