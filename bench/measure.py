"""The measurements: TTFT, throughput and CPU per token, open streams, ticket creation.

Each function drives gevent greenlets against already-running services and returns plain dicts
for the JSON report. Every loop is bounded by a count and a deadline.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import gevent
import psutil

from .client import (
    Connection,
    HTTPError,
    StreamResult,
    Target,
    Visitor,
    create_ticket,
    openai_body,
    relay_body,
    run_stream,
    visitor_for,
)
from .servers import Service


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(pct / 100.0 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def summary_ms(values: list[float]) -> dict[str, float]:
    """Median and p99 of seconds, in milliseconds."""
    return {"median_ms": round(percentile(values, 50) * 1000, 3),
            "p99_ms": round(percentile(values, 99) * 1000, 3), "n": len(values)}


def body_for(target: Target, prompt: str, model: str) -> bytes:
    return relay_body(prompt, model) if target.kind == "relay" else openai_body(prompt, model)


def probe_openai_endpoint(host: str, port: int, model: str) -> int:
    """Status of a streaming POST /v1/chat/completions (404: the endpoint does not exist)."""
    conn = Connection(host, port, timeout=10)
    try:
        conn.send("POST", "/v1/chat/completions", openai_body("probe", model), "application/json")
        status, _ = conn.read_head()
        return status
    finally:
        conn.close()


def ttft(
    targets: list[Target], model: str, count: int, warmup: int, block: int = 1,
    new_visitors: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """One stream at a time, the targets taking turns so all see the same machine noise.

    `block` 1: a turn is one request, so each request follows another server's (which, sharing
    the server CPU, has evicted its caches: "interleaved"). `block` n: a turn is one unmeasured
    request, then n measured ones in a row ("warm"). Each round takes the targets in a fresh
    order (seeded, so runs repeat): in a fixed order one server always follows the same other
    one and pays alone for what that one left behind.

    Relay's streams are one returning visitor's (its cookie set by the first warm-up stream), as
    a chat page's are after its first message; LiteLLM here checks no key at all. A target with
    an account's user signs in once, before its warm-up; one with an API key sends no cookie.
    The targets named in `new_visitors` get a new visitor on every stream instead (no cookie).
    """
    samples: dict[str, list[float]] = {t.name: [] for t in targets}
    errors: dict[str, int] = {t.name: 0 for t in targets}
    seen: dict[str, int] = {t.name: -warmup for t in targets}  # below 0: warm-up left
    bodies = {t.name: body_for(t, "Say hello.", model) for t in targets}
    visitors = {t.name: None if t.name in new_visitors else visitor_for(t) for t in targets}
    order = list(targets)
    shuffle = random.Random(block).shuffle
    while any(seen[t.name] < count for t in targets):
        shuffle(order)
        for target in order:
            body, visitor = bodies[target.name], visitors[target.name]
            if block > 1 and seen[target.name] < count:
                run_stream(target, body, deadline_s=30, visitor=visitor)
            for _ in range(block):
                if seen[target.name] >= count:
                    break
                result = run_stream(target, body, deadline_s=30, visitor=visitor)
                if not result.ok:
                    errors[target.name] += 1
                elif seen[target.name] >= 0:
                    samples[target.name].append(result.ttft)
                seen[target.name] += 1
    return {name: {**summary_ms(values), "errors": errors[name]}
            for name, values in samples.items()}


def _cpu_of(services: list[Service]) -> float:
    return sum(s.cpu_seconds() for s in services)


def _self_cpu() -> float:
    times = psutil.Process().cpu_times()
    return times.user + times.system


def throughput(
    target: Target, server: list[Service], load: list[Service], model: str, tokens: int,
    concurrency: int, duration: float, max_streams: int,
) -> dict[str, Any]:
    """`concurrency` users (returning visitors) each stream answers back to back for
    `duration` seconds."""
    body = body_for(target, "Count.", model)
    results: list[StreamResult] = []
    stop_at = time.monotonic() + duration

    def user() -> None:
        visitor = Visitor()
        while time.monotonic() < stop_at and len(results) < max_streams:
            results.append(run_stream(target, body, deadline_s=60, visitor=visitor))

    cpu0, load0, self0 = _cpu_of(server), _cpu_of(load), _self_cpu()
    start = time.monotonic()
    gevent.joinall([gevent.spawn(user) for _ in range(concurrency)], timeout=duration + 90)
    elapsed = time.monotonic() - start
    cpu = _cpu_of(server) - cpu0
    load_cpu = _cpu_of(load) - load0 + _self_cpu() - self0
    ok = [r for r in results if r.ok]
    return _throughput_row(
        concurrency, len(results), [r.ttft for r in ok], sum(r.tokens for r in ok),
        sum(1 for r in ok if r.tokens != tokens), elapsed, cpu, load_cpu,
        next((r.error for r in results if r.error), None),
    )


def merge_windows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One level's windows (from `throughput`) as one row over all of their time."""
    return _throughput_row(
        rows[0]["concurrency"], sum(r["streams"] for r in rows),
        [t for r in rows for t in r["_ttft_s"]], sum(r["tokens"] for r in rows),
        sum(r["short_streams"] for r in rows), sum(r["_seconds"] for r in rows),
        sum(r["_cpu_s"] for r in rows), sum(r["_load_cpu_s"] for r in rows),
        next((r["first_error"] for r in rows if r["first_error"]), None),
        windows=len(rows), keep_raw=False,
    )


def _throughput_row(
    concurrency: int, streams: int, ttfts: list[float], relayed: int, short: int,
    elapsed: float, cpu: float, load_cpu: float, first_error: str | None, *, windows: int = 1,
    keep_raw: bool = True,
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "concurrency": concurrency, "windows": windows, "streams": streams,
        "errors": streams - len(ttfts), "short_streams": short,
        "tokens": relayed, "seconds": round(elapsed, 3),
        "tokens_per_s": round(relayed / elapsed, 1) if elapsed else 0.0,
        "server_cpu_s": round(cpu, 3),
        "server_cpu_util": round(cpu / elapsed, 3) if elapsed else 0.0,
        "cpu_s_per_1k_tokens": round(cpu / relayed * 1000, 4) if relayed else None,
        "tokens_per_cpu_s": round(relayed / cpu, 1) if cpu > 0 else None,
        "load_cpu_util": round(load_cpu / elapsed, 3) if elapsed else 0.0,
        "ttft": summary_ms(ttfts),
        "first_error": first_error,
    }
    if keep_raw:  # what merge_windows needs; not in the report
        row.update(_ttft_s=ttfts, _seconds=elapsed, _cpu_s=cpu, _load_cpu_s=load_cpu)
    return row


def open_streams(
    target: Target, server: Service, model: str, levels: list[int], *, late_after: float,
    hold: float, budget: float, batch: int = 100,
) -> dict[str, Any]:
    """Open slow streams level by level; a level passes with no error and no late frame."""
    body = body_for(target, "Talk slowly.", model)
    baseline_rss = server.rss_bytes()
    results: list[StreamResult] = []
    greenlets: list[gevent.Greenlet] = []
    report: list[dict[str, Any]] = []
    held = 0
    deadline = time.monotonic() + budget
    try:
        for level in levels:
            level_start = time.monotonic()
            prior = len(results)
            while len(results) < level and time.monotonic() < deadline:
                fresh = [StreamResult() for _ in range(min(batch, level - len(results)))]
                for result in fresh:
                    greenlets.append(gevent.spawn(
                        run_stream, target, body, late_after=late_after, deadline_s=budget + 60,
                        result=result,
                    ))
                results.extend(fresh)
                _wait_until(lambda f=fresh: all(r.ttft or r.error for r in f), deadline)
            ramp = time.monotonic() - level_start
            # Held, not opened: silences that began while new streams were still being opened
            # (each open costs a POST /new and a claim) are the ramp's, reported as ramp_s.
            hold_start = time.monotonic()
            gevent.sleep(min(hold, max(0.0, deadline - time.monotonic())))
            failures = _failures_since(results, level_start, hold_start)
            rss = server.rss_bytes()
            opened = sum(1 for r in results if r.ttft and not r.error)
            report.append({
                "level": level, "opened": opened, "ramp_s": round(ramp, 2),
                "errors": failures["errors"], "late_streams": failures["late"],
                "max_gap_s": round(max((r.max_gap for r in results), default=0.0), 3),
                "open_per_s": round((len(results) - prior) / ramp, 1) if ramp else None,
                "rss_mib": round(rss / 2**20, 1),
                "rss_kib_per_stream": round((rss - baseline_rss) / 1024 / max(opened, 1), 1),
                "first_error": next((r.error for r in results if r.error), None),
            })
            if failures["errors"] or failures["late"] or opened < level:
                break
            held = level
            if time.monotonic() >= deadline:
                break
    finally:
        gevent.killall(greenlets, block=True, timeout=30)
    passed = next((row for row in report if row["level"] == held), None)
    return {
        "max_streams_on_time": held, "late_after_s": late_after,
        "baseline_rss_mib": round(baseline_rss / 2**20, 1),
        "rss_kib_per_stream": passed["rss_kib_per_stream"] if passed else None,
        "levels": report,
    }


def _wait_until(condition: Callable[[], bool], deadline: float) -> None:
    while not condition() and time.monotonic() < deadline:
        gevent.sleep(0.05)


def _failures_since(
    results: list[StreamResult], errors_since: float, late_since: float
) -> dict[str, int]:
    errors = sum(1 for r in results if r.error and r.error_at >= errors_since)
    late = sum(1 for r in results if any(t >= late_since for t in r.late_at))
    return {"errors": errors, "late": late}


def tickets(
    target: Target, server: list[Service], model: str, prompt_bytes: int, concurrency: int,
    count: int, duration: float,
) -> dict[str, Any]:
    """`POST /new` back to back on keep-alive connections; the tickets are never streamed."""
    body = relay_body("x" * prompt_bytes, model)
    latencies: list[float] = []
    errors: list[str] = []
    stop_at = time.monotonic() + duration

    def user() -> None:
        conn: Connection | None = None
        while time.monotonic() < stop_at and len(latencies) + len(errors) < count:
            start = time.monotonic()
            try:
                conn = conn or Connection(target.host, target.port, timeout=30)
                create_ticket(conn, body)
                latencies.append(time.monotonic() - start)
            except (OSError, HTTPError, ValueError) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()

    cpu0 = _cpu_of(server)
    start = time.monotonic()
    gevent.joinall([gevent.spawn(user) for _ in range(concurrency)], timeout=duration + 60)
    elapsed = time.monotonic() - start
    cpu = _cpu_of(server) - cpu0
    return {
        "prompt_bytes": prompt_bytes, "concurrency": concurrency, "requests": len(latencies),
        "errors": len(errors), "seconds": round(elapsed, 3),
        "per_s": round(len(latencies) / elapsed, 1) if elapsed else 0.0,
        "latency": summary_ms(latencies),
        "server_cpu_ms_per_ticket": round(cpu / len(latencies) * 1000, 3) if latencies else None,
        "first_error": errors[0] if errors else None,
    }
