"""Turn the results dict into the targets check, the Markdown table and the plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

_COLUMNS = ("relay", "relay_limits", "relay_key", "relay_user", "direct", "litellm", "ceiling",
            "floor")
# Relay's other ways in (an accounts relay, TTFT only): the table's relay is an open relay's
# returning visitor.
_CALLERS = {"relay_key": "API key", "relay_user": "signed in"}
_TITLES = {"relay": "relay", "relay_key": "relay, API key", "relay_user": "relay, signed in",
           "direct": "direct upstream", "litellm": "LiteLLM proxy",
           "ceiling": "ceiling (gevent forwarder)", "floor": "floor (two steps, nothing kept)",
           "relay_b": "relay_b (--compare)", "relay_limits": "relay, limits on"}


def _get(data: dict[str, Any], *path: str | int) -> Any:
    node: Any = data
    for key in path:
        if isinstance(node, dict) and key in node:
            node = node[key]
        else:
            return None
    return node


def added_ttft(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Each target's TTFT minus the direct upstream's, at the median and at p99."""
    direct = results.get("direct")
    if not direct:
        return {}
    return {
        name: {"median_ms": round(row["median_ms"] - direct["median_ms"], 3),
               "p99_ms": round(row["p99_ms"] - direct["p99_ms"], 3)}
        for name, row in results.items() if name != "direct" and row.get("n")
    }


def check_targets(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each with the value measured and whether it is met (None: not run)."""
    added = data.get("ttft", {}).get("added", {})
    warm = data.get("ttft", {}).get("added_warm", {})
    sat = data.get("throughput", {}).get("saturation", {})
    relay_add, lite_add = added.get("relay", {}), added.get("litellm", {})
    relay_warm, lite_warm = warm.get("relay", {}), warm.get("litellm", {})
    relay_sat, lite_sat, ceil_sat = sat.get("relay", {}), sat.get("litellm", {}), sat.get(
        "ceiling", {})
    streams = data.get("open_streams", {}).get("relay", {})
    small = data.get("tickets", {}).get("1KiB", {})

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a is not None and b else None

    checks = [
        ("added TTFT median <= 3 ms (interleaved)", relay_add.get("median_ms"), lambda v: v <= 3),
        ("added TTFT p99 <= 15 ms (interleaved)", relay_add.get("p99_ms"), lambda v: v <= 15),
        ("added TTFT median <= 1/5 of LiteLLM's (ratio, interleaved)",
         ratio(relay_add.get("median_ms"), lite_add.get("median_ms")), lambda v: v <= 0.2),
        ("added TTFT median <= 3 ms (warm)", relay_warm.get("median_ms"), lambda v: v <= 3),
        ("added TTFT p99 <= 15 ms (warm)", relay_warm.get("p99_ms"), lambda v: v <= 15),
        ("added TTFT median <= 1/5 of LiteLLM's (ratio, warm)",
         ratio(relay_warm.get("median_ms"), lite_warm.get("median_ms")), lambda v: v <= 0.2),
        ("tokens per CPU-second >= 5x LiteLLM's (ratio)",
         ratio(relay_sat.get("tokens_per_cpu_s"), lite_sat.get("tokens_per_cpu_s")),
         lambda v: v >= 5),
        ("throughput >= 40% of the ceiling (tokens/s ratio)",
         ratio(relay_sat.get("tokens_per_s"), ceil_sat.get("tokens_per_s")), lambda v: v >= 0.4),
        (">= 5,000 open streams, every heartbeat on time", streams.get("max_streams_on_time"),
         lambda v: v >= 5000),
        ("< 40 KiB resident memory per open stream", streams.get("rss_kib_per_stream"),
         lambda v: v < 40),
        ("POST /new >= 1,000 tickets/s (1 KiB prompts)", small.get("per_s"),
         lambda v: v >= 1000),
        ("POST /new p99 < 50 ms (1 KiB prompts)", _get(small, "latency", "p99_ms"),
         lambda v: v < 50),
    ]
    for name, how in {**_CALLERS, "relay_limits": "limits on"}.items():
        for mode, rows in (("interleaved", added), ("warm", warm)):
            checks += [
                (f"added TTFT median <= 3 ms ({mode}, {how})", _get(rows, name, "median_ms"),
                 lambda v: v <= 3),
                (f"added TTFT p99 <= 15 ms ({mode}, {how})", _get(rows, name, "p99_ms"),
                 lambda v: v <= 15),
            ]
    limits_sat = sat.get("relay_limits", {})
    checks += [
        ("tokens per CPU-second >= 5x LiteLLM's (ratio, limits on)",
         ratio(limits_sat.get("tokens_per_cpu_s"), lite_sat.get("tokens_per_cpu_s")),
         lambda v: v >= 5),
        ("throughput >= 40% of the ceiling (tokens/s ratio, limits on)",
         ratio(limits_sat.get("tokens_per_s"), ceil_sat.get("tokens_per_s")),
         lambda v: v >= 0.4),
    ]
    return [{"target": name, "measured": value, "met": None if value is None else bool(ok(value))}
            for name, value, ok in checks]


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"
    else:
        text = f"{value:,}" if isinstance(value, int) else str(value)
    return text + unit


def _pair(row: dict[str, Any] | None, a: str, b: str) -> str:
    if not row or not row.get("n", 1):
        return "–"
    return f"{_fmt(row.get(a))} / {_fmt(row.get(b))}"


def markdown(data: dict[str, Any]) -> str:
    """The short results table and the targets table."""
    meta = data["meta"]
    ttft = data.get("ttft", {})
    cols = [c for c in _COLUMNS if c in meta["targets"] or c in ttft.get("results", {})]
    added = ttft.get("added", {})
    added_warm = ttft.get("added_warm", {})
    sat = data.get("throughput", {}).get("saturation", {})
    streams = data.get("open_streams", {})
    tick = data.get("tickets", {})
    conc = meta.get("saturation_concurrency")
    rows: list[tuple[str, dict[str, str]]] = [
        ("TTFT median / p99, ms (one stream at a time, servers interleaved)",
         {c: _pair(_get(ttft, "results", c), "median_ms", "p99_ms") for c in cols}),
        ("added TTFT over direct, median / p99, ms (interleaved)",
         {c: _pair(added.get(c), "median_ms", "p99_ms") for c in cols if c != "direct"}),
        ("TTFT median / p99, ms (warm: 10 in a row per server)",
         {c: _pair(_get(ttft, "warm", c), "median_ms", "p99_ms") for c in cols}),
        ("added TTFT over direct, median / p99, ms (warm)",
         {c: _pair(added_warm.get(c), "median_ms", "p99_ms") for c in cols if c != "direct"}),
        (f"tokens/s, {conc} concurrent streams, zero-delay upstream",
         {c: _fmt(_get(sat, c, "tokens_per_s")) for c in cols}),
        ("tokens per CPU-second of the server's process tree",
         {c: _fmt(_get(sat, c, "tokens_per_cpu_s")) for c in cols}),
        ("CPU seconds per 1,000 tokens",
         {c: _fmt(_get(sat, c, "cpu_s_per_1k_tokens")) for c in cols}),
        (f"TTFT median / p99 at {conc} streams, ms",
         {c: _pair(_get(sat, c, "ttft"), "median_ms", "p99_ms") for c in cols}),
        ("slow streams held with every frame on time (max tried level)",
         {c: _fmt(_get(streams, c, "max_streams_on_time")) for c in cols if c in streams}),
        ("resident memory per open stream, KiB",
         {c: _fmt(_get(streams, c, "rss_kib_per_stream")) for c in cols if c in streams}),
    ]
    cost = limits_cost(data)
    if cost:
        rows.append(("limits on / off: added TTFT (median, interleaved) / CPU per 1,000 tokens",
                     {"relay_limits": " / ".join(
                         f"{cost[key]:.2f}x" if key in cost else "–"
                         for key in ("added_ttft", "cpu_s_per_1k_tokens"))}))
    for size in ("1KiB", "1MiB"):
        if size in tick:
            rows.append((f"POST /new, {size} prompts: tickets/s, p99 ms", {
                "relay": f"{_fmt(tick[size]['per_s'])}, {_fmt(tick[size]['latency']['p99_ms'])}"
            }))
    lines = [
        f"## relay benchmark ({meta['mode']} mode, {meta['started']})", "",
        f"Machine: {meta['cpus']} CPUs. Server under test pinned to CPU(s) "
        f"{meta['server_cpus']} ({meta['workers']} worker); load generator and upstream pinned "
        f"to CPU(s) {meta['load_cpus']}. Servers: {', '.join(cols)}.", "",
        "| measurement | " + " | ".join(_TITLES[c] for c in cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for label, values in rows:
        lines.append(f"| {label} | " + " | ".join(values.get(c, "–") for c in cols) + " |")
    if isinstance(ttft.get("relay_v1"), str):
        lines += ["", f"relay `/v1/chat/completions` TTFT: {ttft['relay_v1']}"]
    lines += _pass_note(ttft.get("added_relay_v1", {}), "relay_v1",
                        "Relay's `/v1/chat/completions` (one streaming request, as LiteLLM's)")
    lines += _floor_note(added, added_warm)
    lines += _callers_note(added, added_warm)
    lines += _limits_note(data)
    lines += _compare_note(data)
    lines += _pass_note(ttft.get("added_new_visitor", {}), "relay",
                        "Relay with a new visitor on every stream (a cookie made and signed each "
                        "time; the table's relay is one returning visitor)")
    lines += ["", "| target | measured | met |", "|---|---|---|"]
    for check in data.get("targets", []):
        met = {True: "yes", False: "**no**", None: "not measured"}[check["met"]]
        lines.append(f"| {check['target']} | {_fmt(check['measured'])} | {met} |")
    return "\n".join(lines) + "\n"


def _floor_note(added: dict[str, Any], added_warm: dict[str, Any]) -> list[str]:
    """What the stack alone adds to the first token, next to the 1/5-of-LiteLLM line."""
    parts = []
    for mode, rows in (("interleaved", added), ("warm", added_warm)):
        floor, lite = _get(rows, "floor", "median_ms"), _get(rows, "litellm", "median_ms")
        if floor is not None and lite:
            parts.append(f"{floor:.2f} ms {mode} (1/5 of LiteLLM's: {lite / 5:.2f} ms)")
    if not parts:
        return []
    return ["", "The floor (the contract's two steps on gunicorn's gevent worker and Flask, "
            "nothing stored, checked or parsed) adds " + "; ".join(parts) + "."]


def _callers_note(added: dict[str, Any], added_warm: dict[str, Any]) -> list[str]:
    """Relay's other ways in, each against the open relay's returning visitor in the same pass."""
    parts = []
    for name, how in _CALLERS.items():
        for mode, rows in (("interleaved", added), ("warm", added_warm)):
            mine, base = _get(rows, name, "median_ms"), _get(rows, "relay", "median_ms")
            if mine is not None and base:
                parts.append(f"{how}, {mode}: {mine:.2f} vs {base:.2f} ms ({mine / base:.2f}x)")
    if not parts:
        return []
    return ["", "An accounts relay's added TTFT (median) against the open relay's returning "
            "visitor, same passes; API key: `POST /new` with `Authorization: Bearer`, then the "
            "`stream_url` with its `access_token` and no cookie; signed in: a session cookie "
            "from `POST /auth/login`: " + "; ".join(parts) + "."]


def limits_cost(data: dict[str, Any]) -> dict[str, float]:
    """Relay with limits and quotas on against off, same passes: each figure's ratio on/off
    (added TTFT, median; CPU seconds per 1,000 tokens and tokens/s at saturation)."""
    ttft = data.get("ttft", {})
    sat = data.get("throughput", {}).get("saturation", {})
    pairs = {
        f"{mode}_ttft": [_get(ttft, mode, name, "median_ms") for name in ("relay_limits", "relay")]
        for mode in ("added", "added_warm", "added_new_visitor")
    }
    pairs.update({key: [_get(sat, name, key) for name in ("relay_limits", "relay")]
                  for key in ("cpu_s_per_1k_tokens", "tokens_per_s")})
    return {key: round(on / off, 3) for key, (on, off) in pairs.items()
            if on is not None and off}


def _limits_note(data: dict[str, Any]) -> list[str]:
    """The cost of limits and quotas being on: relay_limits against relay, as ratios."""
    ratios = limits_cost(data)
    if not ratios:
        return []
    ttft = data.get("ttft", {})
    sat = data.get("throughput", {}).get("saturation", {})
    parts = []
    for mode, what in (("added", "interleaved"), ("added_warm", "warm"),
                       ("added_new_visitor", "new visitor")):
        if f"{mode}_ttft" in ratios:
            on, off = (_get(ttft, mode, name, "median_ms") for name in ("relay_limits", "relay"))
            parts.append(f"added TTFT ({what}) {on:.2f} vs {off:.2f} ms "
                         f"({ratios[f'{mode}_ttft']:.2f}x)")
    for key, what, unit in (("cpu_s_per_1k_tokens", "CPU per 1,000 tokens", " s"),
                            ("tokens_per_s", "tokens/s", "")):
        if key in ratios:
            on, off = (_get(sat, name, key) for name in ("relay_limits", "relay"))
            parts.append(f"{what} {_fmt(on)}{unit} vs {_fmt(off)}{unit} ({ratios[key]:.2f}x)")
    return ["", "The cost of limits and quotas (relay with every limit of `LIMITS_ON`, the "
            "upstream queue's cap included, set never to refuse, against relay without, same "
            "passes; on vs off, ratio): " + "; ".join(parts) + "."]


def _compare_note(data: dict[str, Any]) -> list[str]:
    """relay against `relay_b` (another checkout, `--compare`), measured in the same passes."""
    meta, ttft = data["meta"], data.get("ttft", {})
    sat = data.get("throughput", {}).get("saturation", {})
    if not meta.get("relay_b"):
        return []
    parts = []
    for mode in ("added", "added_warm", "added_new_visitor"):
        a, b = (_get(ttft, mode, name, "median_ms") for name in ("relay", "relay_b"))
        if a is not None and b:
            parts.append(f"{mode.replace('_', ' ')} TTFT {a:.2f} vs {b:.2f} ms ({a / b:.3f})")
    for key, what in (("tokens_per_s", "tokens/s"), ("tokens_per_cpu_s", "tokens per CPU-s")):
        a, b = (_get(sat, name, key) for name in ("relay", "relay_b"))
        if a is not None and b:
            parts.append(f"{what} {a:,.0f} vs {b:,.0f} ({a / b:.3f})")
    return ["", f"This relay ({meta.get('relay_commit')}) against relay_b "
            f"({meta['relay_b']}, {meta.get('relay_b_commit')}), same passes: "
            + "; ".join(parts) + "."]


def _pass_note(added: dict[str, Any], name: str, what: str) -> list[str]:
    """One more interleaved pass's line: `name`'s added TTFT, and its ratio to LiteLLM's."""
    median, lite = _get(added, name, "median_ms"), _get(added, "litellm", "median_ms")
    if median is None:
        return []
    line = (f"{what}, interleaved again: adds {median:.2f} / {_get(added, name, 'p99_ms'):.2f} ms "
            f"(median / p99)")
    if lite:
        line += f"; LiteLLM in the same pass {lite:.2f} ms (ratio {median / lite:.3f})"
    return ["", line + "."]


def plot(data: dict[str, Any], path: Path) -> None:
    """TTFT (median) and throughput against concurrency, one line per server."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, rows in data.get("throughput", {}).get("results", {}).items():
        xs = [r["concurrency"] for r in rows]
        left.plot(xs, [r["ttft"]["median_ms"] for r in rows], marker="o", label=_TITLES[name])
        right.plot(xs, [r["tokens_per_s"] for r in rows], marker="o", label=_TITLES[name])
    for axis, title, unit in ((left, "time to first token (median)", "ms"),
                              (right, "throughput", "tokens/s")):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("concurrent streams")
        axis.set_ylabel(unit)
        axis.set_title(title)
        axis.grid(True, alpha=0.3)
        if axis.get_legend_handles_labels()[0]:  # none when `--only` skipped throughput
            axis.legend()
    left.set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
