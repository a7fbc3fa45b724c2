"""The pipeline floor of the bench (`pipeline_floor`): the CPU per transaction of the work every
node must do for every transaction, run in this process on the node's own code and a real
LevelDB, with no network, consensus, client or load generator."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from healthnode import crypto
from healthnode.home import layout
from healthnode.home.config import KEY_FILE, MempoolSection
from healthnode.home.keys import load_identity
from healthnode.ledger.mempool import Mempool
from healthnode.node.source import LedgerSource
from healthnode.protocol.block import Block, CommitCertificate
from healthnode.protocol.genesis import Genesis
from healthnode.protocol.tx import AnyTx, ProviderRegister
from healthnode.protocol.wire import TxBatch, decode_gossip, encode_tx_batches
from healthnode.store.leveldb import ChainStore
from healthnode.tools.bench import BenchError, Progress
from healthnode.tools.bench.workload import PROVIDERS, make_workload

PIPELINE_VERIFY_SAMPLE: Final = 2000  # signatures timed on their own for the floor's breakdown
STAGES: Final = ("decode", "admit", "verify", "build", "check", "commit")


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
    genesis, homes = layout.make_testnet(nodes, directory / "testnet",
                                       now_ms=int(time.time() * 1000) - 60_000)
    authorities = [load_identity(made.path / KEY_FILE, expected_kind="node") for made in homes]
    providers = [crypto.Identity.from_seed(crypto.digest(b"floor-provider-%d" % i))
                 for i in range(PROVIDERS)]
    progress(f"pipeline floor: signing {txs} transactions ...")
    workload = make_workload(txs, 1, genesis.chain_id, [p.public_key for p in providers],
                             "floor")
    encoded = [tx.encode() for tx in workload.per_node[0]]
    frames = encode_tx_batches(encoded)
    store = ChainStore.open(directory / "chain", genesis)
    try:
        ledger = FloorLedger.open(store, genesis, authorities, txs, encoded)
        ledger.register(providers)
        progress("pipeline floor: decode, admit, check and commit in this process ...")
        spent = dict.fromkeys(STAGES, 0.0)
        decoded = ledger.decode_and_admit(frames, spent)
        committed, blocks = ledger.commit_all(spent)
    finally:
        store.close()
        shutil.rmtree(directory, ignore_errors=True)
    if committed != len(decoded):
        raise BenchError(f"pipeline floor: {committed} of {len(decoded)} transactions committed")
    return floor_figures(spent, committed, blocks, nodes)


def now_ms() -> int:
    """The node's clock; build_block keeps block times increasing."""
    return time.time_ns() // 1_000_000


@dataclass
class FloorLedger:
    """One node's ledger for the floor: its store and mempool, the proposer (the first
    authority) that builds blocks, and the validator (the last) that checks and commits them."""

    store: ChainStore
    mempool: Mempool
    proposer: LedgerSource
    validator: LedgerSource
    authorities: list[crypto.Identity]
    chain_id: str
    last_commit: CommitCertificate | None = None

    @classmethod
    def open(cls, store: ChainStore, genesis: Genesis, authorities: list[crypto.Identity],
             txs: int, encoded: list[bytes]) -> FloorLedger:
        limits = MempoolSection()  # a node's defaults, raised only for a workload beyond them
        mempool = Mempool(max(limits.txs_max, txs + PROVIDERS),
                          max(limits.bytes_max, sum(len(e) for e in encoded) + (1 << 20)),
                          limits.txs_per_signer_max)
        proposer = LedgerSource(store, mempool, authorities[0], genesis.params)
        validator = LedgerSource(store, mempool, authorities[-1], genesis.params)
        return cls(store, mempool, proposer, validator, authorities, genesis.chain_id)

    def certify(self, block: Block) -> CommitCertificate:
        return CommitCertificate.signed_by(block, self.authorities, self.chain_id)

    def register(self, providers: list[crypto.Identity]) -> None:
        """Register the workload's providers and commit them in block 1, before any timing."""
        for nonce, provider in enumerate(providers, start=1):
            registration = ProviderRegister(
                signer=b"", nonce=nonce, provider=provider.public_key, roles=("clinician",),
                display_name=f"Floor Dr {nonce}").sign(self.authorities[0], self.chain_id)
            if (refusal := self.mempool.add(self.store, registration, 200, now_ms())) is not None:
                raise BenchError(f"pipeline floor: provider registration refused: {refusal}")
        first = self.proposer.build_block(1, 0, now_ms(), None, ()).block
        assert first is not None
        self.last_commit = self.certify(first)
        self.proposer.commit(first, self.last_commit)
        self.mempool.block_committed(self.store, first.txs, now_ms())

    def decode_and_admit(self, frames: list[bytes], spent: dict[str, float]) -> list[AnyTx]:
        """Decode the gossip batches and admit their transactions as relayed ones, then time
        the verification part of admission again on a sample; returns what was decoded."""
        clock = time.process_time  # all threads: LevelDB's compaction is part of the work
        started = clock()
        batches = [decode_gossip(frame) for frame in frames]
        spent["decode"] = clock() - started
        decoded = [tx for batch in batches if isinstance(batch, TxBatch) for tx in batch.txs]
        started = clock()
        for tx in decoded:
            refusal = self.mempool.add(self.store, tx, len(tx.encode()), now_ms(), relayed=True)
            if refusal is not None:
                raise BenchError(f"pipeline floor: a workload transaction was refused: {refusal}")
        spent["admit"] = clock() - started
        started = clock()  # the verification part of admission, on a sample, again
        for tx in decoded[:PIPELINE_VERIFY_SAMPLE]:
            tx.signature_valid(self.chain_id)
        spent["verify"] = (clock() - started) * len(decoded) / min(
            len(decoded), PIPELINE_VERIFY_SAMPLE)
        return decoded

    def commit_all(self, spent: dict[str, float]) -> tuple[int, int]:
        """Build, check and commit blocks until the mempool is empty; returns the transactions
        committed and the blocks it took."""
        clock = time.process_time
        committed, height = 0, 1
        while len(self.mempool):
            height += 1
            started = clock()
            block = self.proposer.build_block(height, 0, now_ms(), self.last_commit, ()).block
            built = clock()
            assert block is not None
            problem = self.validator.check_block(block, now_ms())
            checked = clock()
            if problem is not None or not block.txs:
                raise BenchError(f"pipeline floor: block {height} does not check: {problem}")
            certificate = self.certify(block)
            resumed = clock()
            self.validator.commit(block, certificate)
            self.mempool.block_committed(self.store, block.txs, now_ms())
            spent["commit"] += clock() - resumed
            spent["build"] += built - started
            spent["check"] += checked - built
            self.last_commit = certificate
            committed += len(block.txs)
        return committed, height - 1


def floor_figures(spent: dict[str, float], committed: int, blocks: int,
                  nodes: int) -> dict[str, Any]:
    """The floor's figures from the CPU seconds spent in each stage."""
    per_tx = {stage: seconds / committed * 1e6 for stage, seconds in spent.items()}
    # A node checks the blocks of the others and builds its own (whose execution it keeps).
    floor = (per_tx["decode"] + per_tx["admit"] + per_tx["commit"]
             + (per_tx["check"] * (nodes - 1) + per_tx["build"]) / nodes)
    cores = os.cpu_count() or 1
    return {
        "floor_us_per_tx": {stage: round(value, 1) for stage, value in per_tx.items()},
        "floor_total_us_per_tx": round(floor, 1),
        "floor_blocks": blocks,
        "floor_ceiling_tps": round(cores * 1e6 / (nodes * floor), 1),
    }
