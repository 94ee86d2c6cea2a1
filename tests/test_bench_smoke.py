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
    for name in ("relay", "direct"):
        assert data["ttft"]["warm"][name]["n"] > 0, data["ttft"]["warm"]

    for name in ("relay", "direct", "ceiling"):
        rows = data["throughput"]["results"][name]
        assert [r["concurrency"] for r in rows] == list(data["meta"]["plan"]["levels"])
        assert all(r["errors"] == 0 and r["tokens_per_s"] > 0 for r in rows), (name, rows)
    assert data["throughput"]["saturation"]["relay"]["tokens_per_cpu_s"] > 0

    for size in ("1KiB", "1MiB"):
        tickets = data["tickets"][size]
        assert tickets["requests"] > 0 and tickets["errors"] == 0 and tickets["per_s"] > 0

    streams = data["open_streams"]
    assert streams["relay"]["max_streams_on_time"] > 0, streams["relay"]
    assert streams["direct"]["max_streams_on_time"] > 0, streams["direct"]
    assert {check["target"] for check in data["targets"]}
