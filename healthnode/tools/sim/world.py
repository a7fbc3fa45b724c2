"""The simulated world's parts (healthnode/tools/sim/simulator.py runs them): the run's
configuration and result, the liveness bound, a node's disk (`Store`), its fake ledger and
mempool (`FakeSource`), the node itself (`SimNode`), a partition, and the memoised verifier."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from healthnode.consensus.core import BlockSource, Committed, Core
from healthnode.consensus.source import Built
from healthnode.crypto import ZERO_HASH, Identity, digest
from healthnode.net.dedup import SeenGate
from healthnode.protocol.block import (
    Block,
    CommitCertificate,
    Evidence,
    Header,
    Proposal,
    Vote,
    evidence_root,
    txs_root,
    validators_hash,
)
from healthnode.protocol.genesis import DEFAULT_PARAMS, ConsensusParams
from healthnode.protocol.signed import Signed

CHAIN_ID: Final = "sim"
GENESIS_TIME_MS: Final = 0


Message = Proposal | Vote


def faults_tolerated(nodes: int) -> int:
    return (nodes - 1) // 3


def liveness_bound_ms(params: ConsensusParams, nodes: int) -> int:
    """After the last fault heals, every correct node finalizes a new height within this.

    - one heartbeat interval: the height may have nothing to do until the heartbeat is due;
    - one capped round (3 capped step timeouts) for REBROADCAST to repair pre-GST losses and for
      lagging nodes to sync the heights they missed;
    - f rounds whose proposer is byzantine, one round to bring the correct nodes into the same
      round (the f+1 rule and rebroadcast), one round with a correct proposer that decides, and
      one spare round for a node that restarted into a round where its guard makes it re-send
      rather than vote;
    each round at most 3 x round_timeout_cap_ms. docs/consensus.md derives it.
    """
    round_ms = 3 * params.round_timeout_cap_ms
    return params.empty_block_interval_ms + (faults_tolerated(nodes) + 4) * round_ms


@dataclass(frozen=True, slots=True)
class SimConfig:
    nodes: int = 4
    byzantine: int = 1
    params: ConsensusParams = DEFAULT_PARAMS
    heal_ms_max: int = 30_000  # faults happen, and all heal, before this
    faults: bool = True  # False: a quiet network, for scenario tests
    heights_after_heal: int = 1  # the run ends when every correct node finalized this many more


@dataclass
class SeedResult:
    seed: int
    nodes: int
    byzantine: int
    heights: int  # lowest finalized height among correct nodes at the end
    violations: list[str]
    recovery_ms: int | None  # from heal to every correct node finalizing a new height
    equivocations_detected: int
    evidence_committed: int
    deliveries: int
    virtual_ms: int
    rejected: Counter[str] = field(default_factory=Counter)

    @property
    def replay(self) -> str:
        return (f"healthnode sim --seeds 1 --first-seed {self.seed} --nodes {self.nodes} "
                f"--byzantine {self.byzantine}")


class Verifier:
    """Signature verification memoised per message: every core of a seed verifies each vote;
    Ed25519 is the cost of a run, and frozen messages hash by value."""

    def __init__(self) -> None:
        self._cache: dict[Signed, bool] = {}

    def __call__(self, message: Signed) -> bool:
        result = self._cache.get(message)
        if result is None:
            result = message.signature_valid(CHAIN_ID)
            self._cache[message] = result
        return result


@dataclass
class Store:
    """A node's disk: committed blocks with their certificates, and the safety state (bytes)."""

    blocks: list[tuple[Block, CommitCertificate]] = field(default_factory=list)
    safety: bytes | None = None

    def committed(self) -> Committed:
        if not self.blocks:
            return Committed.genesis(GENESIS_TIME_MS)
        block, certificate = self.blocks[-1]
        return Committed(block.height, block.hash, block.header.time_ms, certificate)


def state_hash(previous: bytes, height: int) -> bytes:
    """The fake ledger's state: a hash chain, so a proposer cannot invent one."""
    return digest(previous + height.to_bytes(8, "big"))


class FakeSource(BlockSource):
    """The ledger and mempool of one simulated node: empty blocks, a pending-transactions flag."""

    def __init__(self, node: SimNode, authorities: tuple[bytes, ...],
                 params: ConsensusParams) -> None:
        self.node = node
        self._authorities = authorities
        self._validators_hash = validators_hash(authorities)
        self.params = params

    def authorities(self, height: int) -> tuple[bytes, ...]:
        return self._authorities

    def _previous(self) -> tuple[bytes, int, bytes]:
        if not self.node.store.blocks:
            return ZERO_HASH, GENESIS_TIME_MS, ZERO_HASH
        block = self.node.store.blocks[-1][0]
        return block.hash, block.header.time_ms, block.header.state_hash

    def build_block(self, height: int, round_: int, now_ms: int,
                    last_commit: CommitCertificate | None,
                    evidence: tuple[Evidence, ...]) -> Built:
        prev_hash, prev_time, prev_state = self._previous()
        if not self.node.txs_pending and now_ms < prev_time + self.params.empty_block_interval_ms:
            return Built(None)
        header = Header(CHAIN_ID, height, max(now_ms, prev_time + 1), prev_hash, last_commit,
                        txs_root(()), evidence_root(evidence), self._validators_hash,
                        state_hash(prev_state, height), self.node.identity.public_key)
        return Built(Block(header, (), evidence))

    def check_block(self, block: Block, now_ms: int, certified: bool = False) -> str | None:
        _, _, prev_state = self._previous()
        if block.header.state_hash != state_hash(prev_state, block.height):
            return "wrong_state_hash"
        return None


@dataclass
class SimNode:
    index: int
    identity: Identity
    byzantine: bool
    side: int | None  # fork mode: the half of the network this persona talks to
    store: Store = field(default_factory=Store)
    core: Core | None = None
    incarnation: int = 0
    seen: SeenGate = field(default_factory=lambda: SeenGate(1 << 20))  # net/dedup.py
    relayed: set[Any] = field(default_factory=set)  # relayed to peers once
    txs_pending: bool = False
    crash_armed: bool = False
    clock_offset_ms: int = 0
    finalized_max: int = 0
    evidence_slots: set[tuple[bytes, int, int, int]] = field(default_factory=set)
    received_slots: dict[tuple[bytes, int, int, int], set[Any]] = field(default_factory=dict)


@dataclass
class Partition:
    start_ms: int
    end_ms: int
    cuts: Callable[[int, int], bool]  # (sender, receiver) -> link cut
