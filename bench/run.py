"""The one benchmark command: start everything on loopback, measure, stop, write the report.

`python -m bench` (full) or `python -m bench --smoke` (a few requests each, for the test suite).
Writes bench/results/results.json, results.md and plot.png, and prints the Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import measure, report, servers
from .client import Target
from .upstream import model_name


@dataclass(frozen=True)
class Plan:
    """How much of each measurement to do."""

    ttft_count: int
    ttft_warmup: int
    levels: tuple[int, ...]
    level_seconds: float
    level_windows: int  # each level's time, split into windows the servers take turns in
    max_streams: int
    answer_tokens: int
    stream_levels: tuple[int, ...]
    stream_hold: float
    stream_budget: float
    tickets_small: int
    tickets_large: int
    tickets_seconds: float


FULL = Plan(ttft_count=300, ttft_warmup=30, levels=(1, 4, 16, 64), level_seconds=6.0,
            level_windows=3, max_streams=20000, answer_tokens=100,
            stream_levels=(100, 250, 500, 1000, 1500, 2000, 3000, 4000, 5000, 6000, 8000),
            stream_hold=6.0,
            stream_budget=150.0, tickets_small=20000, tickets_large=400, tickets_seconds=8.0)
SMOKE = Plan(ttft_count=5, ttft_warmup=2, levels=(1, 4), level_seconds=1.0, level_windows=1,
             max_streams=20, answer_tokens=20, stream_levels=(10, 20), stream_hold=1.2,
             stream_budget=10.0, tickets_small=40, tickets_large=4, tickets_seconds=2.0)
HEARTBEAT_S = 1.0
WARM_BLOCK = 10
SLOW_MODEL = model_name(tokens=600, ttft_ms=0, pace_ms=1000)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a few requests each (~1 minute)")
    parser.add_argument("--no-litellm", action="store_true", help="skip LiteLLM's proxy")
    parser.add_argument("--out", type=Path, default=servers.BENCH_DIR / "results")
    parser.add_argument("--compare", type=Path, default=None, metavar="CHECKOUT",
                        help="also run the relay of another checkout (e.g. a git worktree of "
                             "main) as `relay_b`, interleaved with this one in TTFT and "
                             "throughput, for a side-by-side comparison in one run")
    parser.add_argument("--only", nargs="*", default=None,
                        choices=["ttft", "throughput", "tickets", "streams"],
                        help="run only these measurements")
    args = parser.parse_args(argv)
    plan = SMOKE if args.smoke else FULL
    with_litellm = not args.no_litellm
    if with_litellm and not args.smoke:
        servers.install_litellm()
    with_litellm = with_litellm and servers.litellm_installed()
    data = run(plan, args.smoke, with_litellm, set(args.only or
                                                    ["ttft", "throughput", "tickets", "streams"]),
               compare=args.compare)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.only:
        data = _merge_into(args.out / "results.json", data)
    (args.out / "results.json").write_text(json.dumps(data, indent=2) + "\n")
    table = report.markdown(data)
    (args.out / "results.md").write_text(table)
    report.plot(data, args.out / "plot.png")
    print(table)
    print(f"wrote {args.out}/results.json, results.md, plot.png")
    return 0


def run(
    plan: Plan, smoke: bool, with_litellm: bool, only: set[str], compare: Path | None = None,
) -> dict[str, Any]:
    """Every measurement in order, each against freshly started servers; with `compare`, the
    relay of that checkout too, as `relay_b`, in TTFT and throughput."""
    nofile = servers.raise_file_limit()
    server_cpus, load_cpus = servers.split_cpus()
    os.sched_setaffinity(0, load_cpus)
    workers = len(server_cpus)
    names = ["relay", "direct", "ceiling"] + (["litellm"] if with_litellm else [])
    # Relay with limits and quotas on (never refusing), in the TTFT and throughput passes.
    compared = ["relay_limits"] + (["relay_b"] if compare is not None else [])
    data: dict[str, Any] = {"meta": {
        "mode": "smoke" if smoke else "full", "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "cpus": os.cpu_count(), "server_cpus": sorted(server_cpus),
        "load_cpus": sorted(load_cpus), "workers": workers, "targets": names,
        "open_files_limit": nofile, "python": platform.python_version(),
        "relay_commit": _git_commit(), "relay_b": str(compare) if compare else None,
        "relay_b_commit": _git_commit(compare) if compare else None,
        "litellm": servers.LITELLM_REQUIREMENT if with_litellm else None,
        "saturation_concurrency": plan.levels[-1], "plan": plan.__dict__,
    }}
    fast = model_name(plan.answer_tokens)
    short = model_name(4)
    log_dir = Path(tempfile.mkdtemp(prefix="relay-bench-"))
    data["meta"]["logs"] = str(log_dir)
    with ExitStack() as stack:
        upstream = servers.start_upstream(load_cpus, log_dir)
        stack.callback(upstream.stop)
        if "ttft" in only:  # the CLI's start-ups run meanwhile, on the load CPU(s)
            pool = stack.enter_context(ThreadPoolExecutor(max_workers=1))
            accounts_prepared = pool.submit(servers.prepare_accounts_relay, upstream.port, log_dir)

        def start(name: str, **relay_options: Any) -> servers.Service:
            if name in ("relay", "relay_b", "relay_limits"):
                service = servers.start_relay(upstream.port, server_cpus, log_dir,
                                              workers=workers, **relay_options,
                                              source=compare if name == "relay_b" else None,
                                              limits=name == "relay_limits")
            elif name == "litellm":
                service = servers.start_litellm(upstream.port, [fast, short, SLOW_MODEL],
                                                server_cpus, log_dir, workers=workers)
            elif name == "ceiling":
                service = servers.start_ceiling(upstream.port, server_cpus, log_dir)
            elif name == "floor":
                service = servers.start_floor(upstream.port, server_cpus, log_dir)
            else:
                return upstream
            stack.callback(service.stop)
            return service

        def target(name: str, service: servers.Service) -> Target:
            kind = "relay" if name in ("relay", "relay_b", "relay_limits", "floor") else "openai"
            return Target(name, "127.0.0.1", service.port, kind)

        if only & {"ttft", "throughput"}:
            _log("starting relay, ceiling" + (", LiteLLM" if with_litellm else ""))
            running = {name: start(name) for name in names + compared}
            targets = [target(name, service) for name, service in running.items()]
            if "ttft" in only:
                _log("measuring TTFT, one stream at a time (with the floor, and an accounts "
                     "relay called with an API key and by a signed-in user)")
                floor = start("floor")
                env, account = accounts_prepared.result(timeout=600)
                accounts = servers.start_accounts_relay(env, server_cpus, log_dir,
                                                        workers=workers)
                stack.callback(accounts.stop)
                data["ttft"] = _ttft(plan, [*targets, target("floor", floor)], running["relay"],
                                     short, _callers(accounts, account))
                floor.stop()
                accounts.stop()
            if "throughput" in only:
                data["throughput"] = _throughput(plan, targets, running, upstream, fast)
            for service in running.values():
                if service is not upstream:
                    service.stop()
        if "tickets" in only:
            _log("measuring POST /new")
            relay = start("relay")
            target_relay = target("relay", relay)
            data["tickets"] = {
                "1KiB": measure.tickets(target_relay, [relay], short, 1024, 16,
                                        plan.tickets_small, plan.tickets_seconds),
                "1MiB": measure.tickets(target_relay, [relay], short, 2**20, 4,
                                        plan.tickets_large, plan.tickets_seconds),
            }
            relay.stop()
        if "streams" in only:
            # Smoke mode spares LiteLLM a second slow start: the harness path is the same.
            stream_names = [n for n in names if n != "ceiling" and not (smoke and n == "litellm")]
            data["open_streams"] = _open_streams(plan, stream_names, start, target)
    data["targets"] = report.check_targets(data)
    data["limits_cost"] = report.limits_cost(data)
    return data


def _callers(accounts: servers.Service, account: servers.Account) -> list[Target]:
    """The accounts relay twice: called with an API key (`POST /new` with `Authorization`, the
    GET with the `stream_url`'s `access_token`), and by a signed-in user (session cookie)."""
    host, port = "127.0.0.1", accounts.port
    return [Target("relay_key", host, port, "relay", api_key=account.api_key),
            Target("relay_user", host, port, "relay", user=(account.username, account.password))]


def _ttft(
    plan: Plan, targets: list[Target], relay: servers.Service, model: str,
    callers: Sequence[Target] = (),
) -> dict[str, Any]:
    """The TTFT passes; `callers` (relay's other ways in) only in the interleaved and warm ones."""
    result: dict[str, Any] = {"model": model, "results": measure.ttft(
        [*targets, *callers], model, plan.ttft_count, plan.ttft_warmup)}
    result["warm"] = measure.ttft([*targets, *callers], model, plan.ttft_count, plan.ttft_warmup,
                                  block=WARM_BLOCK)
    status = measure.probe_openai_endpoint("127.0.0.1", relay.port, model)
    if status != 200:
        result["relay_v1"] = f"skipped: relay's /v1/chat/completions answered {status}"
    else:
        # Interleaved again with relay's one-request path among the peers: the number to set
        # against LiteLLM's, which is that same request.
        v1 = Target("relay_v1", "127.0.0.1", relay.port, "openai")
        result["relay_v1"] = measure.ttft([*targets, v1], model, plan.ttft_count,
                                          plan.ttft_warmup)
        result["added_relay_v1"] = report.added_ttft(result["relay_v1"])
    # Once more interleaved, relay's streams each a new visitor's (it makes and signs a cookie
    # every time): what a browser's first message costs, against the same peers.
    result["new_visitor"] = measure.ttft(targets, model, plan.ttft_count, plan.ttft_warmup,
                                         new_visitors=frozenset({"relay", "relay_b",
                                                                 "relay_limits"}))
    result["added"] = report.added_ttft(result["results"])
    result["added_warm"] = report.added_ttft(result["warm"])
    result["added_new_visitor"] = report.added_ttft(result["new_visitor"])
    return result


def _throughput(
    plan: Plan, targets: list[Target], running: dict[str, servers.Service],
    upstream: servers.Service, model: str,
) -> dict[str, Any]:
    """Each level in windows the servers take turns in (a fresh order each round), so a slow
    stretch of a shared machine falls on all of them rather than on whichever ran then."""
    results: dict[str, list[dict[str, Any]]] = {t.name: [] for t in targets}
    window = plan.level_seconds / plan.level_windows
    order = list(targets)
    shuffle = random.Random(0).shuffle
    for level in plan.levels:
        _log(f"throughput: {level} concurrent streams, {plan.level_windows} turns of "
             f"{window:g} s each")
        windows: dict[str, list[dict[str, Any]]] = {t.name: [] for t in targets}
        for _ in range(plan.level_windows):
            shuffle(order)
            for t in order:
                server = [running[t.name]]
                load = [] if t.name == "direct" else [upstream]
                windows[t.name].append(measure.throughput(
                    t, server, load, model, plan.answer_tokens, level, window,
                    plan.max_streams // plan.level_windows))
        for name, rows in windows.items():
            results[name].append(measure.merge_windows(rows))
    return {
        "model": model, "tokens_per_answer": plan.answer_tokens, "results": results,
        "saturation": {name: rows[-1] for name, rows in results.items()},
    }


def _open_streams(plan: Plan, names: list[str], start: Any, target: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"model": SLOW_MODEL, "heartbeat_s": HEARTBEAT_S}
    for name in names:
        _log(f"open streams: {name}, levels {plan.stream_levels}")
        service = start(name, heartbeat=HEARTBEAT_S) if name == "relay" else start(name)
        out[name] = measure.open_streams(
            target(name, service), service, SLOW_MODEL, list(plan.stream_levels),
            late_after=HEARTBEAT_S + 0.5, hold=plan.stream_hold, budget=plan.stream_budget)
        if name != "direct":
            service.stop()
    return out


def _merge_into(path: Path, data: dict[str, Any]) -> dict[str, Any]:
    """Update an earlier run's results with the measurements re-run by `--only`."""
    if not path.exists():
        return data
    merged: dict[str, Any] = json.loads(path.read_text())
    rerun = [key for key in data if key not in ("meta", "targets")]
    merged.update({key: data[key] for key in rerun})
    merged["meta"].setdefault("reruns", []).append({"started": data["meta"]["started"],
                                                    "measurements": rerun})
    merged["targets"] = report.check_targets(merged)
    merged["limits_cost"] = report.limits_cost(merged)
    return merged


def _git_commit(checkout: Path = servers.REPO_DIR) -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=checkout, capture_output=True,
            text=True, check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
