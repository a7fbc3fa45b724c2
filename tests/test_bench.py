"""`healthnode bench` runs end to end on a small workload and reports every figure the issue
names. The figures themselves are not asserted: speed lives in docs/benchmarks.md, not in tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from healthnode.tools.bench.floor import pipeline_floor
from healthnode.tools.bench.run import LATENCY_RATE_PER_S, LATENCY_SECONDS


@pytest.mark.slow  # 16 s: in CI's slow step (.ci/run), out of the default suite's time
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
    # What the restarted node synced: the catch-up workload, and the last block or two of the
    # latency phase when the node was stopped before it had them (405 of 400 seen once).
    assert 0 <= result["catchup_txs"] <= 400 + LATENCY_RATE_PER_S * LATENCY_SECONDS
    assert len(result["peak_rss_mb"]) == 4 and all(rss > 0 for rss in result["peak_rss_mb"])
    assert result["bound_tps"] == pytest.approx(
        result["verify_rate_per_core"] * result["cores"] / result["nodes"], abs=0.2)
    assert result["ratio_to_bound"] > 0
    assert result["node_cpu_us_per_tx"] > 0 and result["load_cpu_seconds"] >= 0
    assert result["floor_total_us_per_tx"] > 0 and result["floor_ceiling_tps"] > 0
    assert result["floor_ceiling_ratio"] == pytest.approx(
        result["floor_ceiling_tps"] / result["bound_tps"], abs=0.002)
    # progress while it runs
    for line in ("pipeline floor:", "full load:", "latency:", "catch-up:"):
        assert f"bench: {line}" in done.stderr


def test_pipeline_floor_commits_the_whole_workload_and_adds_up() -> None:
    messages: list[str] = []
    result = pipeline_floor(300, 4, messages.append)
    stages = result["floor_us_per_tx"]
    assert result["floor_blocks"] >= 1  # every transaction was committed, or it raised
    assert all(stages[name] > 0 for name in ("decode", "admit", "verify", "check", "commit"))
    expected = (stages["decode"] + stages["admit"] + stages["commit"]
                + (3 * stages["check"] + stages["build"]) / 4)
    assert result["floor_total_us_per_tx"] == pytest.approx(expected, abs=0.3)
    cores = os.cpu_count() or 1
    assert result["floor_ceiling_tps"] == pytest.approx(
        cores * 1e6 / (4 * result["floor_total_us_per_tx"]), rel=0.01)
    assert any("pipeline floor" in message for message in messages)
