"""The benchmark harness's smoke mode runs end to end, so `bench/` cannot rot.

Benchmarks never decide pass/fail by their numbers; this only checks that every measurement ran
and produced non-zero results in the JSON report.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.live, pytest.mark.timeout(300)]


def test_smoke_mode_writes_every_measurement(tmp_path: Path) -> None:
    out = tmp_path / "results"
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=240,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    data = json.loads((out / "results.json").read_text())
    assert {"meta", "ttft", "throughput", "tickets", "open_streams", "targets"} <= set(data)
    assert (out / "results.md").read_text().startswith("## relay benchmark")
    assert (out / "plot.png").stat().st_size > 1000
    assert "| measurement | relay |" in completed.stdout

    ttft = data["ttft"]["results"]
    for name in ("relay", "direct", "ceiling", "floor"):
        assert ttft[name]["n"] > 0 and ttft[name]["errors"] == 0, (name, ttft[name])
        assert ttft[name]["median_ms"] > 0
    assert "relay" in data["ttft"]["added"] and "relay" in data["ttft"]["added_warm"]
    assert data["ttft"]["new_visitor"]["relay"]["n"] > 0, data["ttft"]["new_visitor"]
    assert "relay" in data["ttft"]["added_new_visitor"]
    assert "Relay with a new visitor on every stream" in completed.stdout
    v1 = data["ttft"]["relay_v1"]
    assert v1["relay_v1"]["n"] > 0 and v1["relay_v1"]["errors"] == 0, v1
    assert data["ttft"]["added_relay_v1"]["relay_v1"]["median_ms"] > 0
    assert "Relay's `/v1/chat/completions` (one streaming request" in completed.stdout
    for name in ("relay", "direct", "relay_key", "relay_user"):
        assert data["ttft"]["warm"][name]["n"] > 0, data["ttft"]["warm"]
    # An accounts relay called with an API key (the stream_url's access_token, no cookie) and
    # by a signed-in user, in the same passes as the open relay.
    for name in ("relay_key", "relay_user"):
        assert ttft[name]["n"] > 0 and ttft[name]["errors"] == 0, (name, ttft[name])
        assert name in data["ttft"]["added"] and name in data["ttft"]["added_warm"]
    assert "| relay | relay, limits on | relay, API key | relay, signed in |" in completed.stdout
    checked = {check["target"]: check["met"] for check in data["targets"]}
    assert checked["added TTFT median <= 3 ms (interleaved, API key)"] is not None
    assert checked["added TTFT median <= 3 ms (interleaved, signed in)"] is not None

    for name in ("relay", "direct", "ceiling"):
        rows = data["throughput"]["results"][name]
        assert [r["concurrency"] for r in rows] == list(data["meta"]["plan"]["levels"])
        assert all(r["errors"] == 0 and r["tokens_per_s"] > 0 for r in rows), (name, rows)
    assert data["throughput"]["saturation"]["relay"]["tokens_per_cpu_s"] > 0
    # Relay with limits and quotas on (never refusing), in the same passes, and its cost.
    assert ttft["relay_limits"]["n"] > 0 and ttft["relay_limits"]["errors"] == 0
    limited = data["throughput"]["results"]["relay_limits"]
    assert all(r["errors"] == 0 and r["tokens_per_s"] > 0 for r in limited), limited
    assert {"added_ttft", "added_warm_ttft", "cpu_s_per_1k_tokens"} <= set(data["limits_cost"])
    assert "The cost of limits and quotas" in completed.stdout

    for size in ("1KiB", "1MiB"):
        tickets = data["tickets"][size]
        assert tickets["requests"] > 0 and tickets["errors"] == 0 and tickets["per_s"] > 0

    streams = data["open_streams"]
    assert streams["relay"]["max_streams_on_time"] > 0, streams["relay"]
    assert streams["direct"]["max_streams_on_time"] > 0, streams["direct"]
    assert {check["target"] for check in data["targets"]}


def test_throughput_windows_merge_into_one_row_over_all_their_time() -> None:
    from bench.measure import _throughput_row, merge_windows

    first = _throughput_row(64, 10, [0.01] * 10, 1000, 0, 2.0, 1.0, 0.5, None)
    second = _throughput_row(64, 5, [0.03] * 4, 400, 1, 2.0, 1.0, 0.5, "HTTPError: x")
    merged = merge_windows([first, second])
    assert merged["windows"] == 2 and merged["streams"] == 15 and merged["errors"] == 1
    assert merged["tokens"] == 1400 and merged["short_streams"] == 1
    assert merged["tokens_per_s"] == 350.0 and merged["tokens_per_cpu_s"] == 700.0
    assert merged["server_cpu_util"] == 0.5 and merged["load_cpu_util"] == 0.25
    assert merged["ttft"]["n"] == 14 and merged["ttft"]["p99_ms"] == 30.0
    assert merged["first_error"] == "HTTPError: x"
    assert not [key for key in merged if key.startswith("_")]
