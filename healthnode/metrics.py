"""Prometheus metrics of a node, on a configurable address (localhost by default).

One `NodeMetrics` per node, each with its own registry, so tests can run several nodes in one
process. The HTTP endpoint is prometheus_client's own handler in a server on a background thread:
scraping never touches the trio loop, and the daemon only updates numbers. The same server answers
the probes `/healthz` and `/readyz` (node/health.py) from what the loop last stamped. Metric
names follow Prometheus conventions (`healthnode_` prefix, units last). No label ever carries a
patient key or record id: labels are bounded sets (rejection reasons, hospitals, authorities), so
cardinality stays fixed.
"""

from __future__ import annotations

import json
import platform
import threading
from collections.abc import Callable
from http.server import ThreadingHTTPServer
from typing import Any, Final
from urllib.parse import urlsplit

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
)
from prometheus_client.exposition import MetricsHandler

from healthnode import __version__
from healthnode.errors import ConfigError

# A probe's answer: (HTTP status, JSON body), asked on every GET of /healthz or /readyz.
Probe = Callable[[], tuple[int, dict[str, Any]]]

# Submit-to-finality latency buckets: the targets are p50 < 300 ms and p99 < 1 s.
FINALIZE_SECONDS_BUCKETS: Final = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0)


class NodeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.height = Gauge("healthnode_height", "Height of the last finalized block",
                            registry=self.registry)
        self.pruned_height = Gauge(
            "healthnode_pruned_height",
            "Highest height whose block body this node pruned (0: none; [node] keep_blocks)",
            registry=self.registry)
        self.round = Gauge("healthnode_round", "Consensus round at the current height",
                           registry=self.registry)
        self.peers = Gauge("healthnode_peers", "Connected peers", registry=self.registry)
        self.mempool_txs = Gauge("healthnode_mempool_txs", "Transactions waiting in the mempool",
                                 registry=self.registry)
        self.finalize_seconds = Histogram(
            "healthnode_finalize_seconds", "Time from a transaction's arrival to its finality",
            buckets=FINALIZE_SECONDS_BUCKETS, registry=self.registry)
        self.rejected_messages = Counter(
            "healthnode_rejected_messages", "Messages and transactions rejected, by reason",
            ["reason"], registry=self.registry)
        self.client_requests = Counter(
            "healthnode_client_requests", "Wallet requests on the client protocol, by kind and "
            "outcome (ok or a refusal code)", ["kind", "outcome"], registry=self.registry)
        self.record_reads = Counter(
            "healthnode_record_reads", "Records released to a reader after a finalized "
            "access.log", registry=self.registry)
        self.break_glass_reads = Counter(
            "healthnode_break_glass_reads", "Finalized break-glass access.logs, by the hospital "
            "whose node released its share", ["hospital"], registry=self.registry)
        self.compact_proposals = Counter(
            "healthnode_compact_proposals_total", "Compact proposals, by outcome (complete: "
            "received, every transaction was in the mempool; incomplete: received, the whole "
            "block was asked for; block_sent: a peer asked this node for a whole block)",
            ["outcome"], registry=self.registry)
        self.connections = Gauge(
            "healthnode_connections", "Open libp2p connections, by kind of peer (authority, "
            "observer, wallet; stranger: still in its handshake)", ["kind"],
            registry=self.registry)
        self.connection_refusals = Counter(
            "healthnode_connection_refusals", "Inbound connections refused or ended by the "
            "connection budget, by reason", ["reason"], registry=self.registry)
        self.dials = Counter(
            "healthnode_dials", "Dials this node started, by kind of peer (wallet: refused)",
            ["kind"], registry=self.registry)
        self.open_fds = Gauge("healthnode_open_fds", "Open file descriptors of the node process",
                              registry=self.registry)
        self.trio_tasks = Gauge("healthnode_trio_tasks", "Trio tasks alive in the node process",
                                registry=self.registry)
        self.store_memory = Gauge(
            "healthnode_store_memory_bytes", "Memory LevelDB holds by its own account "
            "(memtables and block cache)", registry=self.registry)
        # The standard process_* metrics (resident memory, CPU, open files) that a custom
        # registry would otherwise lack.
        ProcessCollector(registry=self.registry)
        self.blobs_missing = Gauge(
            "healthnode_blobs_missing", "Anchored ciphertexts this node does not hold yet",
            registry=self.registry)
        Info("healthnode_build", "The release this node runs", registry=self.registry).info(
            {"version": __version__, "python": platform.python_version()})
        self.last_block_time = Gauge(
            "healthnode_last_block_time_seconds", "Block time of the last finalized block "
            "(seconds since the Unix epoch)", registry=self.registry)
        self.ready = Gauge("healthnode_ready", "1 when the node is ready (as /readyz answers)",
                           registry=self.registry)
        self.missed_proposals = Counter(
            "healthnode_missed_proposals", "Heights decided in a later round than the one this "
            "authority should have proposed in, since this node started", ["authority"],
            registry=self.registry)
        self.missed_precommits = Counter(
            "healthnode_missed_precommits", "Finalized blocks whose certificate lacks this "
            "authority's precommit, since this node started", ["authority"],
            registry=self.registry)

    def serve(self, listen: str, probes: dict[str, Probe] | None = None) -> int:
        """Serve /metrics, and each of `probes` on its path, on `host:port` from a background
        thread; returns the bound port."""
        host, _, port_text = listen.rpartition(":")
        handler = _handler(self.registry, probes or {})
        try:
            server = ThreadingHTTPServer((host, int(port_text)), handler)
        except OSError as error:
            raise ConfigError(f"[metrics].listen {listen}: cannot listen ({error.strerror})") \
                from None
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
        self._server = server
        return int(server.server_address[1])

    def close(self) -> None:
        server = getattr(self, "_server", None)
        if server is not None:
            server.shutdown()
            server.server_close()


def _handler(registry: CollectorRegistry, probes: dict[str, Probe]) -> type[MetricsHandler]:
    """prometheus_client's handler of `registry`, which answers the `probes`' paths itself."""
    metrics: type[MetricsHandler] = MetricsHandler.factory(registry)

    class Handler(metrics):  # type: ignore[misc, valid-type]
        # A connection that sends nothing for this long is closed: each holds a thread.
        timeout = 10

        def do_GET(self) -> None:
            probe = probes.get(urlsplit(self.path).path)
            if probe is None:
                super().do_GET()
                return
            status, body = probe()
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            """Probes come every few seconds: not logged."""

    return Handler
