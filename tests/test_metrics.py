"""Prometheus metrics: served over HTTP on the configured address, per-node registries."""

from __future__ import annotations

import socket
import urllib.request

import pytest

from healthnode.errors import ConfigError
from healthnode.metrics import NodeMetrics


def test_metrics_are_served_on_the_configured_address() -> None:
    metrics = NodeMetrics()
    port = metrics.serve("127.0.0.1:0")
    try:
        metrics.height.set(42)
        metrics.rejected_messages.labels(reason="bad_signature").inc(3)
        metrics.finalize_seconds.observe(0.25)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            body = response.read().decode()
    finally:
        metrics.close()
    assert "healthnode_height 42.0" in body
    assert 'healthnode_rejected_messages_total{reason="bad_signature"} 3.0' in body
    assert 'healthnode_finalize_seconds_bucket{le="0.3"} 1.0' in body


def test_two_nodes_in_one_process_keep_separate_numbers() -> None:
    first, second = NodeMetrics(), NodeMetrics()
    first.height.set(1)
    second.height.set(2)
    assert first.registry.get_sample_value("healthnode_height") == 1
    assert second.registry.get_sample_value("healthnode_height") == 2


def test_a_port_in_use_is_a_config_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=r"\[metrics\].listen"):
            NodeMetrics().serve(f"127.0.0.1:{port}")
