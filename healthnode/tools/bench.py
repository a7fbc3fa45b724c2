"""`healthnode bench`: how fast a real network of node processes finalizes, against the bound
set by signature verification on this machine.

Theory of operation
-------------------
The benchmark starts a fresh testnet of `healthnode run` processes on 127.0.0.1 (in a temporary
directory), registers a few providers, and signs its whole workload before the clock starts:
record anchors from many patients and, for every tenth transaction, a grant to a provider. This
process is the load generator: it submits through the nodes' admin sockets in batches (each
patient's transactions to one node, in nonce order, as a wallet does) and watches node 0's blocks
to see when each transaction is final. It measures:

- finalized transactions per second at full load (everything submitted at once);
- submit-to-final latency p50/p99 at a fixed 500 tx/s;
- the catch-up rate of a node restarted after missing the blocks of a full-load run (from the
  moment it is seen linked, its admin socket answering and a peer connected, to the head; the
  time to connect and the whole restart-to-head time are reported beside it);
- peak RSS of each node (VmHWM);
- the Ed25519 verification rate of this machine, measured in the same run, and the bound
  `verify_rate x cores / nodes` (every node verifies every transaction once), with the ratio of the
  finalized rate to it;
- the nodes' CPU time over the full-load phase per transaction per node (user + system, from
  /proc), and the load generator's own: steadier than the rate, and what any speed-up must cut;
- the pipeline floor, after the network has stopped: the CPU per transaction of the work every
  node must do for every transaction (decode, admit with its signature check, block check,
  commit, a share of block building), run in this process on the node's own code and a real
  LevelDB, with no network, consensus or client; and the rate `cores / (nodes x floor)` that a
  network could reach if nothing else cost anything (`pipeline_floor`).

docs/benchmarks.md records the figures and what limits them.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import nacl.signing

from healthnode import crypto, home
from healthnode.admin.client import call
from healthnode.codec import pack
from healthnode.config import KEY_FILE, MempoolSection
from healthnode.crypto import digest
from healthnode.keys import load_identity
from healthnode.ledger import smt
from healthnode.ledger.mempool import Mempool
from healthnode.node.launcher import LaunchError, NodeProcess, stop_all
from healthnode.node.source import LedgerSource
from healthnode.protocol.block import Block, CommitCertificate
from healthnode.protocol.tx import AnyTx, ConsentGrant, KeyWrap, ProviderRegister, RecordAnchor
from healthnode.protocol.wire import TX_BATCH_TXS_MAX, TxBatch, decode_gossip, encode_tx_batch
from healthnode.store.leveldb import ChainStore

SUBMIT_BATCH: Final = 500
RECORDS_PER_PATIENT: Final = 40  # below the per-day patient budget of the ledger
PROVIDERS: Final = 8
LATENCY_RATE_PER_S: Final = 500
LATENCY_SECONDS: Final = 6
READY_TIMEOUT_S: Final = 60
FINAL_TIMEOUT_S: Final = 300
PIPELINE_VERIFY_SAMPLE: Final = 2000  # signatures timed on their own for the floor's breakdown

Progress = Callable[[str], None]


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


@dataclass
class Network:
    directory: Path
    nodes: int
    homes: list[Path] = field(default_factory=list)
    processes: dict[int, NodeProcess] = field(default_factory=dict)
    chain_id: str = home.DEFAULT_CHAIN_ID

    def create(self) -> None:
        base = home.free_base_port(self.nodes)
        _, made = home.make_testnet(self.nodes, self.directory, base)
        self.homes = [node.path for node in made]

    def start(self, index: int) -> None:
        node = NodeProcess(self.homes[index])
        node.start()
        self.processes[index] = node

    def wait_ready(self, index: int) -> None:
        try:
            self.processes[index].wait_ready(READY_TIMEOUT_S)
        except LaunchError as error:
            raise BenchError(str(error).splitlines()[0] + f"; see {self.homes[index] / 'node.log'}"
                             ) from None

    def stop(self, index: int) -> None:
        self.processes.pop(index).stop()

    def stop_all(self) -> None:
        stop_all(self.processes.values())
        self.processes.clear()

    def admin(self, index: int, method: str, **params: Any) -> Any:
        return call(self.homes[index] / "admin.sock", method, params, timeout_s=60)

    def status(self, index: int) -> dict[str, Any]:
        status: dict[str, Any] = self.admin(index, "status")
        return status

    def height(self, index: int) -> int:
        return int(self.status(index)["height"])

    def peak_rss_mb(self, index: int) -> float:
        status = Path(f"/proc/{self.processes[index].pid}/status").read_text()
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def cpu_seconds(self, index: int) -> float:
        """User + system CPU time the node's process has used so far (`/proc/<pid>/stat`)."""
        stat = Path(f"/proc/{self.processes[index].pid}/stat").read_text()
        fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """User + system CPU time of this process (the load generator), all threads."""
    times = os.times()
    return times.user + times.system


class BenchError(Exception):
    pass


# --- workload --------------------------------------------------------------------------------


@dataclass
class Workload:
    """Signed transactions per node, each node's list in submission order."""

    per_node: list[list[AnyTx]]

    @property
    def count(self) -> int:
        return sum(len(txs) for txs in self.per_node)

    def interleaved(self) -> list[tuple[int, AnyTx]]:
        """(node, tx) in an order that spreads load over the nodes."""
        out: list[tuple[int, AnyTx]] = []
        longest = max(len(txs) for txs in self.per_node)
        for position in range(longest):
            for node, txs in enumerate(self.per_node):
                if position < len(txs):
                    out.append((node, txs[position]))
        return out


def make_workload(count: int, nodes: int, chain_id: str, providers: list[bytes],
                  label: str) -> Workload:
    tag = crypto.keyed_digest(b"bench-tag-key".ljust(32, b"."), b"lab")
    per_node: list[list[AnyTx]] = [[] for _ in range(nodes)]
    patients = max(1, -(-count // RECORDS_PER_PATIENT))
    made = 0
    for number in range(patients):
        patient = crypto.Identity.from_seed(crypto.digest(f"{label}-patient-{number}".encode()))
        node = number % nodes
        nonce = 0
        while made < count and nonce < RECORDS_PER_PATIENT:
            nonce += 1
            made += 1
            if nonce % 10 == 0:
                tx: AnyTx = ConsentGrant(
                    signer=b"", nonce=nonce, grantee=providers[number % len(providers)],
                    actions=("read",), scope_records=(), scope_tags=(tag,), expires_at_ms=None,
                    key_wraps=(), tag_key_wrap=None).sign(patient, chain_id)
            else:
                tx = RecordAnchor(
                    signer=b"", nonce=nonce, patient=patient.public_key,
                    ciphertext_hash=crypto.digest(f"{label}-{number}-{nonce}".encode()),
                    ciphertext_bytes=2000, tags=(tag,),
                    key_wraps=(KeyWrap(patient.public_key, b"w" * 80),), supersedes=None,
                ).sign(patient, chain_id)
            per_node[node].append(tx)
    return Workload(per_node)


# --- finality watching ------------------------------------------------------------------------


class FinalityWatcher:
    """Follows node 0's new blocks and notes when each transaction was first seen final."""

    def __init__(self, network: Network) -> None:
        self.network = network
        self.final_at: dict[str, float] = {}
        self.height = network.height(0)
        self.txs_in_block: dict[int, int] = {}
        self._stop = threading.Event()
        self._new_block = threading.Condition()
        self._thread = threading.Thread(target=self._follow, daemon=True)

    def __enter__(self) -> FinalityWatcher:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _follow(self) -> None:
        """Ask node 0 for the next block every 10 ms: a missing block is one LevelDB read there,
        so the watcher costs the measured network next to nothing (polling `status` cost node 0
        about a tenth of its CPU)."""
        while not self._stop.is_set():
            block = self.network.admin(0, "block", height=self.height + 1)
            if block is None:
                time.sleep(0.01)
                continue
            seen = time.monotonic()
            with self._new_block:
                self.height += 1
                self.txs_in_block[self.height] = len(block["txs"])
                for tx_hash in block["txs"]:
                    self.final_at.setdefault(tx_hash, seen)
                self._new_block.notify_all()

    def wait_all(self, tx_hashes: Iterable[str], timeout_s: float = FINAL_TIMEOUT_S) -> float:
        """When the last of `tx_hashes` was seen final. Looks again only after a new block."""
        wanted = list(tx_hashes)
        missing = wanted
        deadline = time.monotonic() + timeout_s
        with self._new_block:
            while True:
                missing = [h for h in missing if h not in self.final_at]
                if not missing:
                    return max(self.final_at[h] for h in wanted)
                left_s = deadline - time.monotonic()
                if left_s <= 0:
                    raise BenchError(f"{len(missing)} of {len(wanted)} transactions not final "
                                     f"after {timeout_s} s")
                self._new_block.wait(min(left_s, 0.5))


def submit(network: Network, node: int, txs: Sequence[AnyTx]) -> dict[str, float]:
    """Submit in batches; returns the submit time of each transaction (hash hex)."""
    times: dict[str, float] = {}
    for start in range(0, len(txs), SUBMIT_BATCH):
        chunk = txs[start:start + SUBMIT_BATCH]
        sent = time.monotonic()
        result = network.admin(node, "submit_txs", txs=[tx.encode().hex() for tx in chunk])
        if result["refused"]:
            raise BenchError(f"node{node} refused: {result['refused'][:3]}")
        for tx in chunk:
            times[tx.hash.hex()] = sent
    return times


def submit_in_parallel(network: Network, workload: Workload) -> dict[str, float]:
    times: dict[str, float] = {}
    errors: list[BaseException] = []

    def worker(node: int) -> None:
        try:
            times.update(submit(network, node, workload.per_node[node]))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(network.nodes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return times


# --- the run ----------------------------------------------------------------------------------


def run_bench(nodes: int, txs: int, progress: Progress) -> dict[str, Any]:
    cores = os.cpu_count() or 1
    progress("measuring the Ed25519 verification rate of this machine ...")
    rate = verify_rate()
    directory = Path(tempfile.mkdtemp(prefix="healthnode-bench-"))
    network = Network(directory, nodes)
    try:
        network.create()
        progress(f"starting {nodes} nodes in {directory} ...")
        for index in range(nodes):
            network.start(index)
        for index in range(nodes):
            network.wait_ready(index)
        authority = load_identity(network.homes[0] / KEY_FILE, expected_kind="node")
        providers = [crypto.Identity.from_seed(crypto.digest(b"bench-provider-%d" % i))
                     for i in range(PROVIDERS)]
        registrations = [ProviderRegister(
            signer=b"", nonce=i + 1, provider=p.public_key, roles=("clinician",),
            display_name=f"Bench Dr {i}").sign(authority, network.chain_id)
            for i, p in enumerate(providers)]
        provider_keys = [p.public_key for p in providers]
        progress(f"signing {txs} transactions for the full-load run ...")
        full = make_workload(txs, nodes, network.chain_id, provider_keys, "full")
        latency_load = make_workload(LATENCY_RATE_PER_S * LATENCY_SECONDS, nodes,
                                     network.chain_id, provider_keys, "paced")
        catchup = make_workload(txs, nodes - 1, network.chain_id, provider_keys, "catchup")
        with FinalityWatcher(network) as watcher:
            watcher.wait_all(submit(network, 0, list(registrations)).keys(), 60)
            # Every node must hold the registrations before grants to the providers reach it
            # (a node checks a submission against its own head; node 0 may be ahead).
            registered_at = network.height(0)
            deadline = time.monotonic() + 60
            while min(network.height(i) for i in range(nodes)) < registered_at:
                if time.monotonic() > deadline:
                    raise BenchError("the nodes did not all reach the registrations' height")
                time.sleep(0.05)
            progress(f"full load: submitting {full.count} transactions ...")
            nodes_cpu = sum(network.cpu_seconds(i) for i in range(nodes))
            load_cpu = own_cpu_seconds()
            started = time.monotonic()
            submitted = submit_in_parallel(network, full)
            finished = watcher.wait_all(submitted)
            nodes_cpu = sum(network.cpu_seconds(i) for i in range(nodes)) - nodes_cpu
            load_cpu = own_cpu_seconds() - load_cpu
            full_tps = full.count / (finished - started)
            cpu_per_tx_us = nodes_cpu / (full.count * nodes) * 1e6
            progress(f"full load: {full_tps:.0f} tx/s finalized; node CPU {cpu_per_tx_us:.0f} µs "
                     f"per transaction per node")

            progress(f"latency: {LATENCY_RATE_PER_S} tx/s for {LATENCY_SECONDS} s ...")
            paced = _paced_submit(network, latency_load)
            watcher.wait_all(paced)
            latencies = sorted(watcher.final_at[h] - t for h, t in paced.items())
            p50 = statistics.median(latencies)
            p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
            progress(f"latency: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms")

            lagging = nodes - 1
            progress(f"catch-up: stopping node{lagging}, {catchup.count} transactions ...")
            network.stop(lagging)
            left_at = network.height(0)
            submitted = submit_in_parallel(network, Workload([*catchup.per_node, []]))
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
        "nodes": nodes, "cores": cores, "txs": full.count,
        "finalized_tps": round(full_tps, 1),
        "latency_rate_tps": LATENCY_RATE_PER_S,
        "latency_p50_ms": round(p50 * 1000, 1), "latency_p99_ms": round(p99 * 1000, 1),
        "catchup_blocks": target - at_link, "catchup_txs": missed,
        "catchup_seconds": round(catchup_s, 3),
        "catchup_tps": None if catchup_tps is None else round(catchup_tps, 1),
        "catchup_connect_seconds": round(linked - ready, 3),
        "catchup_restart_to_head_seconds": round(caught_up - ready, 3),
        "peak_rss_mb": [round(value, 1) for value in rss],
        "verify_rate_per_core": round(rate, 1), "bound_tps": round(bound, 1),
        "ratio_to_bound": round(full_tps / bound, 3),
        "node_cpu_us_per_tx": round(cpu_per_tx_us, 1),
        "load_cpu_seconds": round(load_cpu, 2),
        **floor,
        "floor_ceiling_ratio": round(floor["floor_ceiling_tps"] / bound, 3),
        **tree,
    }


# --- the state tree -------------------------------------------------------------------------

TREE_STATE_KEYS: Final = 100_000  # a state of this many keys (a busy hospital's first months)
TREE_BLOCK_KEYS: Final = 5_000  # keys one full block changes (1,000 anchors x ~5 keys)
TREE_BLOCKS: Final = 5


def tree_cost() -> dict[str, Any]:
    """The state tree's own cost, in memory, apart from the network: the root update of a block
    that changes TREE_BLOCK_KEYS keys of a state of TREE_STATE_KEYS, per block and per key
    changed, and the mean size of a proof (ledger/smt.py). The nodes' reads come from a dict, so
    this is the CPU of the tree's code; a node adds its LevelDB reads."""
    nodes: dict[bytes, bytes] = {}

    class Reader:
        def tree_node(self, key: bytes) -> bytes | None:
            return nodes.get(key)

    reader = Reader()
    first = smt.update(reader, None, 1, ((digest(i.to_bytes(8, "big")), digest(b"v" + bytes(8)))
                                         for i in range(TREE_STATE_KEYS)))
    nodes.update(first.written)
    root = first.root
    chance = random.Random(7)  # noqa: S311  (which keys a block changes; no secret)
    started = time.perf_counter()
    for block in range(TREE_BLOCKS):
        changed = chance.sample(range(TREE_STATE_KEYS), TREE_BLOCK_KEYS)
        done = smt.update(reader, root, 2 + block, (
            (digest(i.to_bytes(8, "big")), digest(bytes([block]) + i.to_bytes(8, "big")))
            for i in changed))
        nodes.update(done.written)
        root = done.root
    per_block = (time.perf_counter() - started) / TREE_BLOCKS
    sizes = [len(pack(smt.prove(reader, root, digest(i.to_bytes(8, "big"))).wire()))
             for i in chance.sample(range(TREE_STATE_KEYS), 200)]
    return {"tree_state_keys": TREE_STATE_KEYS, "tree_block_keys": TREE_BLOCK_KEYS,
            "tree_update_ms_per_block": round(per_block * 1000, 1),
            "tree_update_us_per_key": round(per_block * 1e6 / TREE_BLOCK_KEYS, 1),
            "tree_proof_bytes": round(sum(sizes) / len(sizes))}


# --- the pipeline floor -----------------------------------------------------------------------


def pipeline_floor(txs: int, nodes: int, progress: Progress) -> dict[str, Any]:
    """CPU per transaction of the work every node must do for every transaction, measured in
    this process with the node's own code but no network, consensus, client or load generator:
    decode it from a gossip batch, admit it to the mempool as a relayed transaction (its
    signature verified, its nonce checked: the cheaper of the two admissions), apply the block
    that holds it (checking the block of another node, or building its own: one in `nodes`) and
    commit that block to LevelDB. What a network of `nodes` could finalize on this machine if
    nothing else cost anything is `cores / (nodes * floor)`: docs/benchmarks.md compares it
    with the bound and the target."""
    directory = Path(tempfile.mkdtemp(prefix="healthnode-floor-"))
    genesis, homes = home.make_testnet(nodes, directory / "testnet",
                                       now_ms=int(time.time() * 1000) - 60_000)
    authorities = [load_identity(made.path / KEY_FILE, expected_kind="node") for made in homes]
    chain_id = genesis.chain_id

    def certify(block: Block) -> CommitCertificate:
        return CommitCertificate.signed_by(block, authorities, chain_id)

    def now_ms() -> int:  # the node's clock; build_block keeps block times increasing
        return time.time_ns() // 1_000_000

    providers = [crypto.Identity.from_seed(crypto.digest(b"floor-provider-%d" % i))
                 for i in range(PROVIDERS)]
    progress(f"pipeline floor: signing {txs} transactions ...")
    workload = make_workload(txs, 1, chain_id, [p.public_key for p in providers], "floor")
    encoded = [tx.encode() for tx in workload.per_node[0]]
    frames = [encode_tx_batch(encoded[i:i + TX_BATCH_TXS_MAX])
              for i in range(0, len(encoded), TX_BATCH_TXS_MAX)]
    store = ChainStore.open(directory / "chain", genesis)
    try:
        limits = MempoolSection()  # a node's defaults, raised only for a workload beyond them
        mempool = Mempool(max(limits.txs_max, txs + PROVIDERS),
                          max(limits.bytes_max, sum(len(e) for e in encoded) + (1 << 20)),
                          limits.txs_per_signer_max)
        proposer = LedgerSource(store, mempool, authorities[0], genesis.params)
        validator = LedgerSource(store, mempool, authorities[-1], genesis.params)
        for nonce, provider in enumerate(providers, start=1):
            registration = ProviderRegister(
                signer=b"", nonce=nonce, provider=provider.public_key, roles=("clinician",),
                display_name=f"Floor Dr {nonce}").sign(authorities[0], chain_id)
            if (refusal := mempool.add(store, registration, 200, now_ms())) is not None:
                raise BenchError(f"pipeline floor: provider registration refused: {refusal}")
        first = proposer.build_block(1, 0, now_ms(), None, ())
        assert first is not None
        last_commit = certify(first)
        proposer.commit(first, last_commit)
        mempool.block_committed(store, first.txs, now_ms())

        progress("pipeline floor: decode, admit, check and commit in this process ...")
        spent = dict.fromkeys(("decode", "admit", "verify", "build", "check", "commit"), 0.0)
        clock = time.process_time  # all threads: LevelDB's compaction is part of the work

        started = clock()
        batches = [decode_gossip(frame) for frame in frames]
        spent["decode"] = clock() - started
        decoded = [tx for batch in batches if isinstance(batch, TxBatch) for tx in batch.txs]
        started = clock()
        for tx in decoded:
            refusal = mempool.add(store, tx, len(tx.encode()), now_ms(), relayed=True)
            if refusal is not None:
                raise BenchError(f"pipeline floor: a workload transaction was refused: {refusal}")
        spent["admit"] = clock() - started
        started = clock()  # the verification part of admission, on a sample, again
        for tx in decoded[:PIPELINE_VERIFY_SAMPLE]:
            tx.signature_valid(chain_id)
        spent["verify"] = (clock() - started) * len(decoded) / min(
            len(decoded), PIPELINE_VERIFY_SAMPLE)

        committed, height = 0, 1
        while len(mempool):
            height += 1
            started = clock()
            block = proposer.build_block(height, 0, now_ms(), last_commit, ())
            built = clock()
            assert block is not None
            problem = validator.check_block(block, now_ms())
            checked = clock()
            if problem is not None or not block.txs:
                raise BenchError(f"pipeline floor: block {height} does not check: {problem}")
            certificate = certify(block)
            resumed = clock()
            validator.commit(block, certificate)
            mempool.block_committed(store, block.txs, now_ms())
            spent["commit"] += clock() - resumed
            spent["build"] += built - started
            spent["check"] += checked - built
            last_commit = certificate
            committed += len(block.txs)
    finally:
        store.close()
        shutil.rmtree(directory, ignore_errors=True)
    if committed != len(decoded):
        raise BenchError(f"pipeline floor: {committed} of {len(decoded)} transactions committed")
    per_tx = {stage: seconds / committed * 1e6 for stage, seconds in spent.items()}
    # A node checks the blocks of the others and builds its own (whose execution it keeps).
    floor = (per_tx["decode"] + per_tx["admit"] + per_tx["commit"]
             + (per_tx["check"] * (nodes - 1) + per_tx["build"]) / nodes)
    cores = os.cpu_count() or 1
    return {
        "floor_us_per_tx": {stage: round(value, 1) for stage, value in per_tx.items()},
        "floor_total_us_per_tx": round(floor, 1),
        "floor_blocks": height - 1,
        "floor_ceiling_tps": round(cores * 1e6 / (nodes * floor), 1),
    }


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
