"""The bench's run (`run_bench`): the verification bound of this machine, the network's phases
(full load, latency at a fixed rate, a restarted node's catch-up) in the order they run, then
the pipeline floor and the state tree, and the report (`describe`, `main`)."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import nacl.signing

from healthnode import crypto
from healthnode.home.config import KEY_FILE
from healthnode.home.keys import load_identity
from healthnode.protocol.tx import AnyTx, ProviderRegister
from healthnode.tools.bench import BenchError, Progress
from healthnode.tools.bench.floor import pipeline_floor
from healthnode.tools.bench.network import (
    FinalityWatcher,
    Network,
    own_cpu_seconds,
    submit,
    submit_in_parallel,
)
from healthnode.tools.bench.tree import tree_cost
from healthnode.tools.bench.workload import PROVIDERS, Workload, make_workload

LATENCY_RATE_PER_S: Final = 500
LATENCY_SECONDS: Final = 6


def verify_rate(seconds: float = 1.0) -> float:
    """Ed25519 verifications per second on one core (PyNaCl, a 200-byte message)."""
    key = nacl.signing.SigningKey(b"\x01" * 32)
    message = b"m" * 200
    signed = key.sign(message)
    verify_key = key.verify_key
    done, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        for _ in range(200):
            verify_key.verify(signed)
        done += 200
    return done / elapsed


def run_bench(nodes: int, txs: int, progress: Progress) -> dict[str, Any]:
    cores = os.cpu_count() or 1
    progress("measuring the Ed25519 verification rate of this machine ...")
    rate = verify_rate()
    directory = Path(tempfile.mkdtemp(prefix="healthnode-bench-"))
    network = Network(directory, nodes)
    try:
        network.create()
        progress(f"starting {nodes} nodes in {directory} ...")
        start_network(network)
        loads = sign_workloads(network, txs, progress)
        with FinalityWatcher(network) as watcher:
            register_providers(network, watcher, loads.registrations)
            full = full_load(network, watcher, loads.full, progress)
            latency = paced_latency(network, watcher, loads.paced, progress)
            catchup = catch_up(network, watcher, loads.catchup, progress)
        rss = [network.peak_rss_mb(i) for i in range(nodes)]
    finally:
        network.stop_all()
        shutil.rmtree(directory, ignore_errors=True)
    # After the network, so that its figures are taken exactly as before this was measured.
    floor = pipeline_floor(txs, nodes, progress)
    progress(f"pipeline floor: {floor['floor_total_us_per_tx']:.0f} µs per transaction per node; "
             f"at most {floor['floor_ceiling_tps']:.0f} tx/s")
    tree = tree_cost()
    progress(f"state tree: {tree['tree_update_ms_per_block']:.1f} ms per block of "
             f"{tree['tree_block_keys']} keys over {tree['tree_state_keys']} keys; proofs "
             f"{tree['tree_proof_bytes']} bytes")
    bound = rate * cores / nodes
    return {
        "nodes": nodes, "cores": cores, "txs": full.txs,
        "finalized_tps": round(full.tps, 1),
        "latency_rate_tps": LATENCY_RATE_PER_S,
        "latency_p50_ms": round(latency.p50 * 1000, 1),
        "latency_p99_ms": round(latency.p99 * 1000, 1),
        "catchup_blocks": catchup.blocks, "catchup_txs": catchup.txs,
        "catchup_seconds": round(catchup.seconds, 3),
        "catchup_tps": None if catchup.tps is None else round(catchup.tps, 1),
        "catchup_connect_seconds": round(catchup.connect_seconds, 3),
        "catchup_restart_to_head_seconds": round(catchup.restart_to_head_seconds, 3),
        "peak_rss_mb": [round(value, 1) for value in rss],
        "verify_rate_per_core": round(rate, 1), "bound_tps": round(bound, 1),
        "ratio_to_bound": round(full.tps / bound, 3),
        "node_cpu_us_per_tx": round(full.cpu_per_tx_us, 1),
        "load_cpu_seconds": round(full.load_cpu_seconds, 2),
        **floor,
        "floor_ceiling_ratio": round(floor["floor_ceiling_tps"] / bound, 3),
        **tree,
    }


# --- the phases, in the order they run --------------------------------------------------------


@dataclass
class Workloads:
    """Everything the network phases submit, signed before the clock starts."""

    registrations: list[ProviderRegister]
    full: Workload
    paced: Workload
    catchup: Workload


@dataclass
class FullLoad:
    txs: int
    tps: float
    cpu_per_tx_us: float  # the nodes' CPU per transaction per node
    load_cpu_seconds: float  # the load generator's own CPU over the phase


@dataclass
class Latency:
    p50: float  # seconds
    p99: float


@dataclass
class CatchUp:
    blocks: int  # from the node seen linked to the head
    txs: int
    seconds: float
    tps: float | None  # None: everything was synced before the first link was seen
    connect_seconds: float
    restart_to_head_seconds: float


def start_network(network: Network) -> None:
    for index in range(network.nodes):
        network.start(index)
    for index in range(network.nodes):
        network.wait_ready(index)


def sign_workloads(network: Network, txs: int, progress: Progress) -> Workloads:
    """The providers' registrations (signed by node 0's authority) and the three workloads."""
    authority = load_identity(network.homes[0] / KEY_FILE, expected_kind="node")
    providers = [crypto.Identity.from_seed(crypto.digest(b"bench-provider-%d" % i))
                 for i in range(PROVIDERS)]
    registrations = [ProviderRegister(
        signer=b"", nonce=i + 1, provider=p.public_key, roles=("clinician",),
        display_name=f"Bench Dr {i}").sign(authority, network.chain_id)
        for i, p in enumerate(providers)]
    provider_keys = [p.public_key for p in providers]
    progress(f"signing {txs} transactions for the full-load run ...")
    full = make_workload(txs, network.nodes, network.chain_id, provider_keys, "full")
    paced = make_workload(LATENCY_RATE_PER_S * LATENCY_SECONDS, network.nodes,
                          network.chain_id, provider_keys, "paced")
    catchup = make_workload(txs, network.nodes - 1, network.chain_id, provider_keys, "catchup")
    return Workloads(registrations, full, paced, catchup)


def register_providers(network: Network, watcher: FinalityWatcher,
                       registrations: list[ProviderRegister]) -> None:
    watcher.wait_all(submit(network, 0, list(registrations)).keys(), 60)
    # Every node must hold the registrations before grants to the providers reach it
    # (a node checks a submission against its own head; node 0 may be ahead).
    registered_at = network.height(0)
    deadline = time.monotonic() + 60
    while min(network.height(i) for i in range(network.nodes)) < registered_at:
        if time.monotonic() > deadline:
            raise BenchError("the nodes did not all reach the registrations' height")
        time.sleep(0.05)


def full_load(network: Network, watcher: FinalityWatcher, workload: Workload,
              progress: Progress) -> FullLoad:
    """Everything submitted at once; the rate at which it is finalized, and the CPU it cost."""
    nodes = network.nodes
    progress(f"full load: submitting {workload.count} transactions ...")
    nodes_cpu = sum(network.cpu_seconds(i) for i in range(nodes))
    load_cpu = own_cpu_seconds()
    started = time.monotonic()
    submitted = submit_in_parallel(network, workload)
    finished = watcher.wait_all(submitted)
    nodes_cpu = sum(network.cpu_seconds(i) for i in range(nodes)) - nodes_cpu
    load_cpu = own_cpu_seconds() - load_cpu
    full_tps = workload.count / (finished - started)
    cpu_per_tx_us = nodes_cpu / (workload.count * nodes) * 1e6
    progress(f"full load: {full_tps:.0f} tx/s finalized; node CPU {cpu_per_tx_us:.0f} µs "
             f"per transaction per node")
    return FullLoad(workload.count, full_tps, cpu_per_tx_us, load_cpu)


def paced_latency(network: Network, watcher: FinalityWatcher, workload: Workload,
                  progress: Progress) -> Latency:
    """Submit-to-final latency at LATENCY_RATE_PER_S."""
    progress(f"latency: {LATENCY_RATE_PER_S} tx/s for {LATENCY_SECONDS} s ...")
    paced = _paced_submit(network, workload)
    watcher.wait_all(paced)
    latencies = sorted(watcher.final_at[h] - t for h, t in paced.items())
    p50 = statistics.median(latencies)
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    progress(f"latency: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms")
    return Latency(p50, p99)


def catch_up(network: Network, watcher: FinalityWatcher, workload: Workload,
             progress: Progress) -> CatchUp:
    """Stop the last node, finalize `workload` without it, start it again and time how fast it
    reaches the head."""
    lagging = network.nodes - 1
    progress(f"catch-up: stopping node{lagging}, {workload.count} transactions ...")
    network.stop(lagging)
    left_at = network.height(0)
    submitted = submit_in_parallel(network, Workload([*workload.per_node, []]))
    watcher.wait_all(submitted)
    target = network.height(0)
    network.start(lagging)
    network.wait_ready(lagging)
    ready = time.monotonic()
    # The catch-up rate runs from the first moment the node is seen linked (its admin
    # socket answers and it has a peer: block sync starts on the first link) to the
    # head. Usually the link is up before the socket answers; if not, the time to connect
    # is reported on its own. Blocks synced before that moment are not counted.
    while network.status(lagging)["peers"] == 0:
        time.sleep(0.005)
    linked = time.monotonic()
    at_link = network.height(lagging)
    missed = sum(watcher.txs_in_block.get(h, 0) for h in range(at_link + 1, target + 1))
    while network.height(lagging) < target:
        time.sleep(0.01)
    caught_up = time.monotonic()
    catchup_s = caught_up - linked
    # None: everything was synced before the first link was seen (tiny workloads).
    catchup_tps = missed / catchup_s if missed and catchup_s > 0 else None
    progress(f"catch-up: {target - at_link} blocks, {missed} txs in {catchup_s:.2f} s "
             f"from the node seen linked ({at_link - left_at} blocks were already "
             f"synced then); restart to head {caught_up - ready:.2f} s")
    return CatchUp(target - at_link, missed, catchup_s, catchup_tps, linked - ready,
                   caught_up - ready)


def _paced_submit(network: Network, workload: Workload) -> dict[str, float]:
    """Submit at LATENCY_RATE_PER_S in 20 ms slices, round-robin over the nodes."""
    order = workload.interleaved()
    per_slice = max(1, LATENCY_RATE_PER_S // 50)
    times: dict[str, float] = {}
    started = time.monotonic()
    for position in range(0, len(order), per_slice):
        due = started + position / LATENCY_RATE_PER_S
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        by_node: dict[int, list[AnyTx]] = {}
        for node, tx in order[position:position + per_slice]:
            by_node.setdefault(node, []).append(tx)
        for node, txs in by_node.items():
            times.update(submit(network, node, txs))
    return times


def describe(result: dict[str, Any]) -> str:
    stages = result["floor_us_per_tx"]
    return "\n".join([
        f"nodes {result['nodes']} on {result['cores']} cores, {result['txs']} transactions",
        f"finalized at full load   {result['finalized_tps']:>10.0f} tx/s",
        f"latency at {result['latency_rate_tps']} tx/s     p50 {result['latency_p50_ms']:.0f} ms, "
        f"p99 {result['latency_p99_ms']:.0f} ms",
        f"catch-up                 {result['catchup_tps'] or 0:>10.0f} tx/s "
        f"({result['catchup_txs']} txs in {result['catchup_blocks']} blocks, "
        f"{result['catchup_seconds']} s from the node seen linked)",
        f"  restart to head        {result['catchup_restart_to_head_seconds']:>10.2f} s "
        f"(of which connecting {result['catchup_connect_seconds']:.2f} s)",
        f"peak RSS per node        {', '.join(f'{v:.0f}' for v in result['peak_rss_mb'])} MB",
        f"Ed25519 verify / core    {result['verify_rate_per_core']:>10.0f} /s",
        f"bound verify*cores/nodes {result['bound_tps']:>10.0f} tx/s; "
        f"ratio {result['ratio_to_bound']:.3f}",
        f"node CPU at full load    {result['node_cpu_us_per_tx']:>10.0f} µs per transaction "
        f"per node (load generator {result['load_cpu_seconds']:.2f} s)",
        f"pipeline floor           {result['floor_total_us_per_tx']:>10.0f} µs per transaction "
        f"per node ({stages['decode']:.0f} decode, {stages['admit']:.0f} admit of which "
        f"{stages['verify']:.0f} verify, {stages['check']:.0f} check or {stages['build']:.0f} "
        f"build, {stages['commit']:.0f} commit)",
        f"  ceiling (no network)   {result['floor_ceiling_tps']:>10.0f} tx/s; "
        f"ratio {result['floor_ceiling_ratio']:.3f}",
        f"state tree               {result['tree_update_ms_per_block']:>10.1f} ms per block of "
        f"{result['tree_block_keys']} keys over {result['tree_state_keys']} "
        f"({result['tree_update_us_per_key']:.1f} µs a key); proofs "
        f"{result['tree_proof_bytes']} bytes",
    ])


def main(nodes: int, txs: int, as_json: bool) -> int:
    def progress(text: str) -> None:
        print(f"bench: {text}", file=sys.stderr, flush=True)

    try:
        result = run_bench(nodes, txs, progress)
    except BenchError as error:
        print(f"healthnode: error: bench: {error}", file=sys.stderr)
        return 1
    print(json.dumps(result) if as_json else describe(result))
    return 0
