"""A short soak runs end to end and loses nothing, so `soak/` cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent.parent

pytestmark = pytest.mark.timeout(240)


def test_short_soak_loses_nothing(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "soak", "--duration", "20", "--tickets", "200",
         "--concurrency", "16", "--seed", "18", "--dir", str(tmp_path),
         # Memory is not yet flat after 20 s; the full soak checks it.
         "--max-rss-growth-mb", "200"],
        cwd=REPO, capture_output=True, text=True, timeout=200,
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert completed.returncode == 0, completed.stdout[-6000:] + completed.stderr[-3000:]
    counts = summary["counts"]
    assert summary["lost"] == 0 and summary["passed"]
    assert counts["tickets"] >= 50 and counts["reads to done"] > 0 and counts["resumes"] > 0
    assert counts["cancels asked"] > 0 and sum(summary["faults"].values()) > 0
    assert "| **lost, wrong or left running** | **0** |" in completed.stdout
