"""The soak's summary: the numbers as a dict (saved as summary.json) and as a Markdown table."""

from __future__ import annotations

import argparse
from typing import Any

from .check import Findings

MIB = 1024 * 1024


def summarize(run: dict[str, Any], found: Findings, args: argparse.Namespace) -> dict[str, Any]:
    """Everything the soak measured and found; `passed` when nothing was lost or grew."""
    problems = dict(found.problems)
    if run["left_active"]:
        problems["left pending or running after the grace"] = run["left_active"]
    start, end = run["workers_start"], run["workers_end"]
    if set(start) != set(end):
        problems["a worker restarted"] = 1
    growth = {
        pid: {"rss_mb": round((end[pid]["rss"] - start[pid]["rss"]) / MIB, 1),
              "fds": end[pid]["fds"] - start[pid]["fds"],
              "sockets": end[pid]["sockets"] - start[pid]["sockets"]}
        for pid in start.keys() & end.keys()
    }
    for pid, grew in growth.items():
        if grew["rss_mb"] > args.max_rss_growth_mb:
            problems[f"worker {pid} memory grew {grew['rss_mb']} MiB"] = 1
        if grew["fds"] > args.max_fd_growth:
            problems[f"worker {pid} descriptors grew by {grew['fds']} "
                     f"({grew['sockets']} of them sockets)"] = 1
    return {
        "seed": run["seed"], "seconds": run["seconds"], "prompt_limit": run["limit"],
        "warmup_tickets": run["warmup_tickets"], "healthz": run["healthz"],
        "counts": dict(sorted(found.counts.items())),
        "faults": dict(sorted(found.faults.items())),
        "outcomes": dict(sorted(found.codes.items())),
        "workers_start": start, "workers_end": end, "growth": growth,
        "problems": problems, "lost": sum(problems.values()), "examples": found.examples,
        "passed": not problems,
    }


def table(summary: dict[str, Any]) -> str:
    """The summary for a terminal or a closing note."""
    counts = summary["counts"]
    lines = [
        f"## relay soak (seed {summary['seed']}, {summary['seconds']} s, prompts up to "
        f"{summary['prompt_limit']} bytes)", "", "| measure | value |", "|---|---|",
    ]
    for name, value in counts.items():
        lines.append(f"| {name} | {value} |")
    injected = sum(v for k, v in summary["faults"].items() if k not in ("ok", "noise"))
    lines.append(f"| faults injected | {injected} |")
    for kind, value in summary["faults"].items():
        lines.append(f"| upstream model `{kind}` | {value} |")
    for pid in sorted(summary["workers_start"]):
        start = summary["workers_start"][pid]
        end = summary["workers_end"].get(pid, {"rss": 0, "fds": 0, "sockets": 0})
        lines.append(f"| worker {pid} RSS start / end (MiB) | {start['rss'] / MIB:.1f} / "
                     f"{end['rss'] / MIB:.1f} |")
        lines.append(f"| worker {pid} open fds start / end | {start['fds']} / {end['fds']} |")
        lines.append(f"| worker {pid} sockets start / end | {start['sockets']} / {end['sockets']} |")
    health = summary["healthz"]
    lines.append(f"| /healthz probes / slowest (s) / over 1 s | {health['probes']} / "
                 f"{health['slowest_s']} / {health['over_1s']} |")
    lines.append(f"| **lost, wrong or left running** | **{summary['lost']}** |")
    lines += ["", "outcomes by upstream model:"]
    lines += [f"  {name}: {value}" for name, value in summary["outcomes"].items()]
    if summary["problems"]:
        lines += ["", "problems:"]
        lines += [f"  {name}: {value}" for name, value in summary["problems"].items()]
        lines += ["", "first examples:"] + [f"  {line}" for line in summary["examples"]]
    return "\n".join(lines)
