"""`healthnode bench` runs end to end on a small workload and reports every figure the issue
names. The figures themselves are not asserted: speed lives in docs/benchmarks.md, not in tests."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def test_bench_reports_every_figure_as_json() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "healthnode", "bench", "--txs", "400", "--json"],
        capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["nodes"] == 4 and result["txs"] == 400
    assert result["finalized_tps"] > 0
    assert 0 < result["latency_p50_ms"] <= result["latency_p99_ms"]
    assert 0 <= result["catchup_connect_seconds"] <= result["catchup_restart_to_head_seconds"]
    assert 0 <= result["catchup_txs"] <= 400
    assert len(result["peak_rss_mb"]) == 4 and all(rss > 0 for rss in result["peak_rss_mb"])
    assert result["bound_tps"] == pytest.approx(
        result["verify_rate_per_core"] * result["cores"] / result["nodes"], abs=0.2)
    assert result["ratio_to_bound"] > 0
    assert result["node_cpu_us_per_tx"] > 0 and result["load_cpu_seconds"] >= 0
    for line in ("full load:", "latency:", "catch-up:"):  # progress while it runs
        assert f"bench: {line}" in done.stderr
