"""Crash consistency of the chain store: a child process commits blocks in a loop and reports each
height once `commit` has returned; the test kills it with SIGKILL at a random moment, reopens the
store, and requires every reported height to be there and the whole chain to verify from genesis
(links, certificates, re-executed state roots, the stored state equal to the replayed one, and the
stored state tree proving the replayed state against the root). Each restarted child goes on
committing, and the next cycle re-executes its blocks: a restart computes the same roots.

`--crash-cycles N` sets the number of kill cycles (default 20). The whole stored state is compared
with the replayed one on 20 of the cycles and on the last (on every cycle of the default run); the
chain is re-verified on every cycle.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from healthnode.crypto import digest
from healthnode.ledger import rules, smt
from healthnode.ledger.state import MemoryState
from healthnode.protocol.block import verify_commit
from healthnode.store.leveldb import ChainStore
from tests.chain import make_genesis

REPO = Path(__file__).resolve().parent.parent


class Child:
    """The committing child; a reader thread collects the heights it reports."""

    def __init__(self, store_dir: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.crash_child", str(store_dir)],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.reported: list[int] = []
        self.ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if not line.endswith("\n"):
                return  # torn by the kill: the child died before finishing this report
            word, height = line.split()
            if word == "ready":
                self.ready.set()
            else:
                self.reported.append(int(height))

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self._reader.join()
        assert self.process.returncode == -signal.SIGKILL, self.process.stderr


class Verifier:
    """Replays the stored chain, keeping what it verified so each cycle only adds the new part,
    and checks that the part verified before has not changed."""

    def __init__(self) -> None:
        self.genesis = make_genesis()
        self.state = MemoryState()
        self.state.commit(rules.genesis_state(self.genesis))
        self.hashes: list[bytes] = []

    def verify(self, store: ChainStore, compare_state: bool = True) -> None:
        for height, block_hash in enumerate(self.hashes, start=1):
            block = store.block(height)
            assert block is not None and block.hash == block_hash, f"block {height} changed"
        for block, certificate in store.blocks(len(self.hashes) + 1):
            if block.header.last_commit is not None:
                verify_commit(block.header.last_commit, self.genesis.chain_id,
                              rules.authorities(self.state, block.height - 1))
            assert block.header.prev_hash == (self.hashes[-1] if self.hashes else bytes(32))
            execution = rules.apply_block(self.state, block)
            verify_commit(certificate, self.genesis.chain_id,
                          rules.authorities(self.state, block.height))
            self.state.commit(execution)
            self.hashes.append(block.hash)
        meta = rules.chain_meta(store)
        assert meta == rules.chain_meta(self.state)  # the same state root as the replay's
        # The stored tree is whole: every key of the replayed state proves against the root
        # (the nodes came in the same synced batch as the block, never half of them).
        for key, value in list(self.state.items().items())[:50]:
            if rules.in_tree(key):
                proof = smt.prove(store, rules.tree_root(meta), digest(key))
                assert smt.verify(meta.state_hash, digest(key), digest(value), proof)
        if compare_state:  # every key and value: O(state), so not on every cycle of long runs
            assert store.state_items() == self.state.items(), "stored state differs from replay"


def test_sigkill_during_commits_loses_no_reported_block_and_corrupts_nothing(
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    cycles = request.config.getoption("--crash-cycles")
    chance = random.Random(2026)
    store_dir = tmp_path / "chain"
    verifier = Verifier()
    reported_max = 0
    kills_mid_run = 0
    for cycle in range(cycles):
        child = Child(store_dir)
        assert child.ready.wait(30), f"cycle {cycle}: child did not start"
        time.sleep(chance.uniform(0.0, 0.15))
        child.kill()
        if child.reported:
            kills_mid_run += 1
            reported_max = max(reported_max, child.reported[-1])
        with ChainStore.open(store_dir, verifier.genesis) as store:
            assert store.head.height >= reported_max, (
                f"cycle {cycle}: reported height {reported_max}, store head {store.head.height}")
            verifier.verify(store, compare_state=(
                cycle % max(1, cycles // 20) == 0 or cycle == cycles - 1))
    print(f"\n{cycles} cycles, {len(verifier.hashes)} blocks, 0 lost, 0 corrupt")
    assert kills_mid_run >= cycles // 2, "most kills should land while blocks are committed"
