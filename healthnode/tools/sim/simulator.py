"""A seeded simulator that drives N consensus cores through a hostile world and checks them.

Theory of operation
-------------------
One seed is one world, fully determined by `random.Random(seed)`: virtual time advances through a
heap of events (message deliveries, timers, crashes, transaction arrivals), so a seed replays
exactly (`healthnode sim --seeds 1 --first-seed S ...`).

- Network: every send picks a delay (a per-seed base plus jitter, which also reorders), may be
  lost (a per-seed rate of 0-20 %) or duplicated, and is dropped when a partition cuts the link at
  send time. Partitions isolate one node, split the nodes in two, or cut one direction only; every
  fault heals by `heal_ms`, after which no message is lost (GST).
- Gossip: correct nodes relay every consensus message and evidence they see for the first time to
  all peers (a model of libp2p gossipsub with its seen-cache); a message one correct node received
  therefore reaches every connected correct node. Cores re-send their own messages (REBROADCAST),
  which repairs losses from before GST.
- Block sync: a `RequestBlocks` reaches peers like any message; each live correct peer answers
  with up to SYNC_BATCH committed blocks and their certificates.
- Storage: a node persists exactly what its effects ask (`Commit`, `PersistSafety`), in order. A
  crash loses everything else (core memory, seen-cache, mempool flag); half of the crashes strike
  in the middle of carrying out an effect list, after a random prefix of it.
- Byzantine authorities (up to f) run a real core but equivocate (two proposals, two votes), vote
  for unknown block hashes, replay old messages and send forged signatures, or stay mute. With more
  than f byzantine, they collude with shared keys: each runs one honest-looking core towards each
  half of the correct nodes, which the adversary keeps apart — the checker must then see a fork.

Invariants are checked after every step of a correct node (see `Checker`): agreement, validity,
finalized height never going back (also across restarts), no evidence against a correct
authority, every equivocation a correct node received detected as evidence, and liveness: after
`heal_ms`, with at most f faulty, every correct node finalizes a new height within
`liveness_bound_ms`.
"""

from __future__ import annotations

import dataclasses
import heapq
import random
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from healthnode.consensus.core import BlockSource, Committed, Core
from healthnode.consensus.events import (
    BlockFetched,
    Broadcast,
    Commit,
    Effect,
    Event,
    EvidenceFound,
    EvidenceReceived,
    PersistSafety,
    ProposalReceived,
    RequestBlocks,
    ScheduleTimeout,
    TimeoutFired,
    TxsAvailable,
    VoteReceived,
)
from healthnode.consensus.safety import SafetyState, decode_safety_state
from healthnode.crypto import ZERO_HASH, Identity, digest
from healthnode.protocol.block import (
    Block,
    CommitCertificate,
    DuplicateProposal,
    DuplicateVote,
    Evidence,
    Header,
    Proposal,
    VerificationError,
    Vote,
    evidence_root,
    txs_root,
    validators_hash,
    verify_commit,
)
from healthnode.protocol.evidence import evidence_key, evidence_signer
from healthnode.protocol.genesis import DEFAULT_PARAMS, ConsensusParams
from healthnode.protocol.signed import Signed

CHAIN_ID: Final = "sim"
GENESIS_TIME_MS: Final = 0
SYNC_BATCH: Final = 8  # blocks per sync answer: enough to catch up a few heights per request
HISTORY_MAX: Final = 256  # messages a byzantine node remembers to replay or forge from
CLOCK_SKEW_MS_MAX: Final = 100  # well under block_time_ahead_ms_max

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
                    evidence: tuple[Evidence, ...]) -> Block | None:
        prev_hash, prev_time, prev_state = self._previous()
        if not self.node.txs_pending and now_ms < prev_time + self.params.empty_block_interval_ms:
            return None
        header = Header(CHAIN_ID, height, max(now_ms, prev_time + 1), prev_hash, last_commit,
                        txs_root(()), evidence_root(evidence), self._validators_hash,
                        state_hash(prev_state, height), self.node.identity.public_key)
        return Block(header, (), evidence)

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
    seen: set[Any] = field(default_factory=set)  # delivered to the core (gossip seen-cache)
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


class Simulation:
    def __init__(self, seed: int, config: SimConfig) -> None:
        self.seed = seed
        self.config = config
        self.params = config.params
        self.rng = random.Random(seed)  # noqa: S311 - a replayable world, not cryptography
        self.verify = Verifier()
        self.now = 0
        self._heap: list[tuple[int, int, str, Any]] = []
        self._sequence = 0
        self.violations: list[str] = []
        self.rejected: Counter[str] = Counter()
        self.deliveries = 0
        count = config.nodes
        self.fork_mode = config.byzantine > faults_tolerated(count)
        identities = [Identity.from_seed(digest(b"sim-authority-%d" % i)) for i in range(count)]
        self.authorities = tuple(identity.public_key for identity in identities)
        byzantine_indexes = set(self.rng.sample(range(count), config.byzantine))
        self.byzantine_keys = {identities[i].public_key for i in byzantine_indexes}
        self.nodes: list[SimNode] = []
        correct = [i for i in range(count) if i not in byzantine_indexes]
        for i in range(count):
            if i in byzantine_indexes and self.fork_mode:
                for side in (0, 1):  # one persona per half, sharing the key
                    self.nodes.append(SimNode(len(self.nodes), identities[i], True, side))
            else:
                side = None
                if self.fork_mode:
                    side = 0 if correct.index(i) < (len(correct) + 1) // 2 else 1
                self.nodes.append(SimNode(len(self.nodes), identities[i],
                                          i in byzantine_indexes, side))
        for node in self.nodes:
            node.clock_offset_ms = self.rng.randint(-CLOCK_SKEW_MS_MAX, CLOCK_SKEW_MS_MAX)
        self.correct = [node for node in self.nodes if not node.byzantine]
        self.finalized: dict[int, tuple[bytes, int]] = {}
        self.certificates_checked: dict[CommitCertificate, str | None] = {}
        self.equivocations: set[tuple[bytes, int, int, int]] = set()
        self.evidence_committed: set[bytes] = set()
        self.commit_log: list[tuple[int, int, int]] = []  # (virtual ms, node, height)
        self.history: deque[tuple[Message, Block | None]] = deque(maxlen=HISTORY_MAX)
        self._plan_faults()

    # --- plan -------------------------------------------------------------------------------

    def _plan_faults(self) -> None:
        rng, config = self.rng, self.config
        self.partitions: list[Partition] = []
        self.loss = 0.0
        self.duplication = 0.0
        self.delay_base_ms = rng.randint(2, 40)
        self.delay_jitter_ms = rng.randint(0, 250)
        self.heal_ms = 0
        self.byzantine_mode = {key: rng.choice(("equivocate", "equivocate", "chaos", "mute"))
                               for key in self.byzantine_keys}
        if config.faults and not self.fork_mode:
            self.heal_ms = rng.randint(2_000, config.heal_ms_max)
            self.loss = rng.uniform(0.0, 0.2)
            self.duplication = rng.uniform(0.0, 0.1)
            for _ in range(rng.randint(0, 2)):
                self.partitions.append(self._random_partition())
            for _ in range(rng.randint(0, 2)):
                node = rng.choice(self.correct)
                crash_at = rng.randint(0, self.heal_ms - 1)
                restart_at = min(crash_at + rng.randint(200, 8_000), self.heal_ms)
                self._push(crash_at, "crash", node.index)
                self._push(restart_at, "restart", node.index)
        # Transactions arrive now and then; otherwise heights are heartbeats.
        horizon = max(self.heal_ms, 1) + liveness_bound_ms(self.params, config.nodes)
        at = rng.randint(0, 3_000)
        while at < horizon:
            self._push(at, "txs", None)
            at += rng.randint(500, 12_000)

    def schedule_crash(self, index: int, at_ms: int, restart_at_ms: int | None) -> None:
        """Crash node `index` cleanly (between steps) at `at_ms`; restart it at `restart_at_ms`."""
        self._push(at_ms, "crash_now", index)
        if restart_at_ms is not None:
            self._push(restart_at_ms, "restart", index)

    def _random_partition(self) -> Partition:
        rng = self.rng
        start = rng.randint(0, self.heal_ms - 1)
        end = rng.randint(start + 1, self.heal_ms)
        count = len(self.nodes)
        kind = rng.choice(("isolate", "split", "asymmetric"))
        if kind == "isolate":
            alone = rng.randrange(count)
            return Partition(start, end, lambda a, b: (a == alone) != (b == alone))
        if kind == "split":
            group = set(rng.sample(range(count), rng.randint(1, count - 1)))
            return Partition(start, end, lambda a, b: (a in group) != (b in group))
        deaf = rng.randrange(count)  # hears nobody, but is heard
        return Partition(start, end, lambda a, b: b == deaf and a != deaf)

    # --- event heap ---------------------------------------------------------------------------

    def _push(self, at_ms: int, kind: str, payload: Any) -> None:
        self._sequence += 1
        heapq.heappush(self._heap, (at_ms, self._sequence, kind, payload))

    def _link_cut(self, sender: SimNode, receiver: SimNode) -> bool:
        if sender.side is not None and receiver.side is not None and sender.side != receiver.side:
            return True
        return any(p.start_ms <= self.now < p.end_ms and p.cuts(sender.index, receiver.index)
                   for p in self.partitions)

    def _send(self, sender: SimNode, receiver: SimNode, payload: Any) -> None:
        if self._link_cut(sender, receiver):
            return
        faulty_network = self.now < self.heal_ms
        if faulty_network and self.rng.random() < self.loss:
            return
        copies = 2 if faulty_network and self.rng.random() < self.duplication else 1
        for _ in range(copies):
            delay = self.delay_base_ms + int(self.rng.random() * self.delay_jitter_ms)
            self._push(self.now + delay, "deliver", (receiver.index, sender.index, payload))

    def _broadcast(self, sender: SimNode, payload: Any) -> None:
        for receiver in self.nodes:
            if receiver is not sender:
                self._send(sender, receiver, payload)

    # --- running ------------------------------------------------------------------------------

    def run(self) -> SeedResult:
        for node in self.nodes:
            self._boot(node)
        bound = liveness_bound_ms(self.params, self.config.nodes)
        check_liveness = not self.fork_mode
        heal_height: int | None = None
        recovery: int | None = None
        deadline = self.heal_ms + bound
        stop_at = self.heal_ms + bound if check_liveness else 60_000
        while self._heap:
            at, _, kind, payload = heapq.heappop(self._heap)
            if at > stop_at:
                break
            if heal_height is None and at >= self.heal_ms:
                heal_height = max(node.store.committed().height for node in self.correct)
            self.now = at
            self._dispatch(kind, payload)
            if self.fork_mode and self.violations:
                break
            if heal_height is not None and recovery is None and self._all_reached(heal_height + 1):
                recovery = max(0, self.now - self.heal_ms)
            if recovery is not None and check_liveness and self._all_reached(
                    heal_height_or_zero(heal_height) + self.config.heights_after_heal):
                break
        if check_liveness and recovery is None:
            self.violations.append(
                f"liveness: no new height by every correct node within {bound} ms after the "
                f"heal at {self.heal_ms} ms (heights "
                f"{[node.store.committed().height for node in self.correct]})")
        if check_liveness:
            assert self.now <= deadline or recovery is None
        return SeedResult(
            seed=self.seed, nodes=self.config.nodes, byzantine=self.config.byzantine,
            heights=min(node.store.committed().height for node in self.correct),
            violations=self.violations, recovery_ms=recovery,
            equivocations_detected=len(self.equivocations),
            evidence_committed=len(self.evidence_committed),
            deliveries=self.deliveries, virtual_ms=self.now, rejected=self.rejected)

    def _all_reached(self, height: int) -> bool:
        return all(node.core is not None and node.store.committed().height >= height
                   for node in self.correct)

    def _boot(self, node: SimNode) -> None:
        node.incarnation += 1
        node.seen = set()
        node.relayed = set()
        node.txs_pending = False
        node.crash_armed = False
        node.evidence_slots = set()
        node.received_slots = {}
        safety_state: SafetyState | None = None
        if node.store.safety is not None:
            safety_state = decode_safety_state(node.store.safety)
        source = FakeSource(node, self.authorities, self.params)
        node.core = Core(node.identity, CHAIN_ID, self.params, source, node.store.committed(),
                         safety_state, verify=self.verify)
        height = node.store.committed().height
        if height < node.finalized_max:
            self._violate(f"monotonic: node {node.index} restarted at height {height} after "
                          f"finalizing {node.finalized_max}")
        self._carry_out(node, node.core.start(self._local(node)))

    @staticmethod
    def _alive(node: SimNode) -> bool:
        return node.core is not None

    def _local(self, node: SimNode) -> int:
        return self.now + node.clock_offset_ms

    def _dispatch(self, kind: str, payload: Any) -> None:
        if kind == "deliver":
            receiver_index, sender_index, item = payload
            self._deliver(self.nodes[receiver_index], self.nodes[sender_index], item)
        elif kind == "timer":
            index, incarnation, timeout = payload
            node = self.nodes[index]
            if node.core is not None and node.incarnation == incarnation:
                local_now = self._local(node)
                self._step(node, dataclasses.replace(timeout, now_ms=local_now))
        elif kind == "txs":
            for node in self.nodes:
                delay = self.delay_base_ms + int(self.rng.random() * self.delay_jitter_ms)
                self._push(self.now + delay, "txs_arrive", node.index)
        elif kind == "txs_arrive":
            node = self.nodes[payload]
            if node.core is not None:
                node.txs_pending = True
                self._step(node, TxsAvailable(self._local(node)))
        elif kind == "crash":
            node = self.nodes[payload]
            if node.core is not None:
                if self.rng.random() < 0.5:
                    node.core = None
                else:
                    node.crash_armed = True
        elif kind == "crash_now":
            self.nodes[payload].core = None
        elif kind == "restart":
            node = self.nodes[payload]
            node.core = None
            self._boot(node)

    def _deliver(self, node: SimNode, sender: SimNode, item: Any) -> None:
        if node.core is None:
            return
        kind = item[0]
        if kind == "request":
            if not node.byzantine:
                from_height = item[1]
                batch = node.store.blocks[from_height - 1: from_height - 1 + SYNC_BATCH]
                if batch:
                    self._send(node, sender, ("blocks", tuple(batch)))
            return
        if kind == "blocks":
            for block, certificate in item[1]:
                if not self._alive(node):  # a crash may strike within the batch
                    return
                self._step(node, BlockFetched(block, certificate, self._local(node)))
            return
        if item not in node.relayed:
            node.relayed.add(item)
            if not node.byzantine:
                self._broadcast(node, item)  # gossip relay of what is new to this node
        if item in node.seen:
            return
        if kind != "message" or item[1].height <= node.core.height:
            # Messages of a height this node has not reached are not marked seen: the core can
            # only buffer a few, and a re-sent copy must get through once the node catches up.
            node.seen.add(item)
        self.deliveries += 1
        now = self._local(node)
        if kind == "evidence":
            self._step(node, EvidenceReceived(item[1], now))
            return
        message, block = item[1], item[2]
        if node.byzantine:
            self.history.append((message, block))
        else:
            self._track_equivocation(node, message, block)
        if isinstance(message, Vote):
            self._step(node, VoteReceived(message, now))
        else:
            self._step(node, ProposalReceived(message, block, now))

    def _step(self, node: SimNode, event: Event) -> None:
        assert node.core is not None
        effects = node.core.step(event)
        if node.crash_armed:
            # Crash in the middle of carrying out this step: only a prefix reaches disk or wire.
            effects = effects[: self.rng.randint(0, len(effects))]
            self._carry_out(node, effects)
            node.core = None
            node.crash_armed = False
            return
        self._carry_out(node, effects)
        if not node.byzantine:
            self._check_after_step(node)

    # --- effects --------------------------------------------------------------------------

    def _carry_out(self, node: SimNode, effects: list[Effect]) -> None:
        for effect in effects:
            if isinstance(effect, Broadcast):
                if node.byzantine and not self.fork_mode:
                    self._misbehave(node, effect)
                else:
                    self._broadcast(node, ("message", effect.message, effect.block))
            elif isinstance(effect, ScheduleTimeout):
                timeout = TimeoutFired(effect.height, effect.round, effect.step, 0)
                self._push(effect.at_ms - node.clock_offset_ms, "timer",
                           (node.index, node.incarnation, timeout))
            elif isinstance(effect, PersistSafety):
                node.store.safety = effect.state.encode()
            elif isinstance(effect, Commit):
                self._on_commit(node, effect)
            elif isinstance(effect, RequestBlocks):
                self._broadcast(node, ("request", effect.from_height))
            elif isinstance(effect, EvidenceFound):
                self._on_evidence_found(node, effect.evidence)
            else:
                self.rejected[effect.reason] += 1

    def _on_commit(self, node: SimNode, effect: Commit) -> None:
        block, certificate = effect.block, effect.certificate
        expected = node.store.committed().height + 1
        assert block.height == expected, "core committed out of order"
        node.store.blocks.append((block, certificate))
        node.txs_pending = False  # the block took the mempool's transactions
        if node.byzantine:
            return
        node.finalized_max = max(node.finalized_max, block.height)
        self.commit_log.append((self.now, node.index, block.height))
        block_hash = block.hash
        earlier = self.finalized.get(block.height)
        if earlier is None:
            self.finalized[block.height] = (block_hash, node.index)
        elif earlier[0] != block_hash:
            self._violate(f"agreement: height {block.height} finalized as "
                          f"{earlier[0].hex()[:12]} by node {earlier[1]} and as "
                          f"{block_hash.hex()[:12]} by node {node.index}")
        self._check_validity(node, block, block_hash, certificate, effect.proposal)
        for item in block.evidence:
            self.evidence_committed.add(evidence_key(item))

    def _check_validity(self, node: SimNode, block: Block, block_hash: bytes,
                        certificate: CommitCertificate, proposal: Proposal | None) -> None:
        if certificate.block_hash != block_hash or certificate.height != block.height:
            self._violate(f"validity: node {node.index} certificate is not for its block")
        reason = self.certificates_checked.get(certificate, "unchecked")
        if reason == "unchecked":
            try:
                verify_commit(certificate, CHAIN_ID, self.authorities)  # the real, slow check
                reason = None
            except VerificationError as error:
                reason = error.reason
            self.certificates_checked[certificate] = reason
        if reason is not None:
            self._violate(f"validity: node {node.index} height {block.height}: {reason}")
        if proposal is not None:
            expected = self.authorities[(block.height + proposal.round) % len(self.authorities)]
            if (proposal.block_hash != block_hash or proposal.signer != expected
                    or not self.verify(proposal)):
                self._violate(f"validity: node {node.index} height {block.height}: the proposal "
                              "is not the round proposer's signed proposal of this block")

    def _on_evidence_found(self, node: SimNode, item: Evidence) -> None:
        signer = evidence_signer(item)
        if signer not in self.byzantine_keys:
            self._violate(f"double sign: node {node.index} found evidence against the correct "
                          f"authority {signer.hex()[:12]}")
        if isinstance(item, DuplicateVote):
            vote = item.vote_a
            slot = (signer, vote.vote_type, vote.height, vote.round)
        else:
            assert isinstance(item, DuplicateProposal)
            slot = (signer, 0, item.proposal_a.height, item.proposal_a.round)
        node.evidence_slots.add(slot)
        self.equivocations.add(slot)
        if not node.byzantine:
            self._broadcast(node, ("evidence", item))

    # --- invariants -----------------------------------------------------------------------

    def _violate(self, text: str) -> None:
        self.violations.append(f"t={self.now}ms {text}")

    def _track_equivocation(self, node: SimNode, message: Message, block: Block | None) -> None:
        """Record what a correct node received from byzantine signers at its current height,
        mirroring what its core accepts (valid signature, the round's proposer, matching block)."""
        core = node.core
        assert core is not None
        if message.signer not in self.byzantine_keys or message.height != core.height:
            return
        if not core._entered or not self.verify(message):
            return
        if isinstance(message, Vote):
            slot = (message.signer, message.vote_type, message.height, message.round)
            value: Any = message.block_hash
        else:
            if message.signer != core.proposer(message.round):
                return
            if block is not None and block.hash != message.block_hash:
                return
            slot = (message.signer, 0, message.height, message.round)
            value = (message.block_hash, message.pol_round)
        node.received_slots.setdefault(slot, set()).add(value)

    def _check_after_step(self, node: SimNode) -> None:
        core = node.core
        if core is None:
            return
        if core.committed.height < node.finalized_max:
            self._violate(f"monotonic: node {node.index} went back to height "
                          f"{core.committed.height} from {node.finalized_max}")
        for slot, values in node.received_slots.items():
            if len(values) > 1 and slot not in node.evidence_slots:
                self._violate(f"evidence: node {node.index} received an equivocation of "
                              f"{slot[0].hex()[:12]} at height {slot[2]} round {slot[3]} "
                              "and found no evidence")
                node.evidence_slots.add(slot)  # report once

    # --- the adversary --------------------------------------------------------------------

    def _misbehave(self, node: SimNode, effect: Broadcast) -> None:
        rng = self.rng
        mode = self.byzantine_mode[node.identity.public_key]
        if mode == "mute":
            return
        message, block = effect.message, effect.block
        others = [receiver for receiver in self.nodes if receiver is not node]
        own = message.signer == node.identity.public_key
        if mode == "equivocate" and own and rng.random() < 0.5:
            twin, twin_block = self._conflicting(node, message, block)
            for receiver in others:
                if rng.random() < 0.5:
                    self._send(node, receiver, ("message", message, block))
                else:
                    self._send(node, receiver, ("message", twin, twin_block))
        else:
            self._broadcast(node, ("message", message, block))
        if (mode == "chaos" or rng.random() < 0.2) and own:
            self._chaos(node, message)

    def _conflicting(self, node: SimNode, message: Message,
                     block: Block | None) -> tuple[Message, Block | None]:
        if isinstance(message, Vote):
            # A fixed twin per vote, so a re-sent vote does not mint a new equivocation.
            other = None if message.block_hash is not None else digest(
                b"unknown" + message.encode())
            twin_vote = dataclasses.replace(message, block_hash=other, signature=b"")
            return twin_vote.sign(node.identity, CHAIN_ID), None
        assert block is not None
        header = dataclasses.replace(block.header, time_ms=block.header.time_ms + 1)
        twin_block = Block(header, block.txs, block.evidence)
        twin = dataclasses.replace(message, block_hash=twin_block.hash, pol_round=-1,
                                   signature=b"")
        return twin.sign(node.identity, CHAIN_ID), twin_block

    def _chaos(self, node: SimNode, message: Message) -> None:
        rng = self.rng
        target = rng.choice([receiver for receiver in self.nodes if receiver is not node])
        action = rng.choice(("unknown_vote", "replay", "forge"))
        if action == "unknown_vote":
            unknown = Vote(rng.choice((1, 2)), message.height, message.round,
                           digest(b"never-proposed-%d" % rng.randrange(1 << 30)),
                           node.identity.public_key).sign(node.identity, CHAIN_ID)
            self._send(node, target, ("message", unknown, None))
        elif action == "replay" and self.history:
            old, old_block = rng.choice(self.history)
            self._send(node, target, ("message", old, old_block))
        elif action == "forge" and self.history:
            old, old_block = rng.choice(self.history)
            if isinstance(old, Vote):
                tampered_hash = digest(b"forged" + old.signer)
                forged: Message = dataclasses.replace(old, block_hash=tampered_hash)
            else:
                forged = dataclasses.replace(old, signature=bytes(64))
            self._send(node, target, ("message", forged, old_block))


def heal_height_or_zero(height: int | None) -> int:
    return 0 if height is None else height


def run_seed(seed: int, config: SimConfig) -> SeedResult:
    return Simulation(seed, config).run()


@dataclass
class Summary:
    """What `healthnode sim` reports for a run of seeds."""

    seeds: int
    first_seed: int
    nodes: int
    byzantine: int
    heights_finalized: int  # summed over seeds: the lowest height a correct node reached
    violations: int
    worst_recovery_ms: int
    worst_recovery_seed: int | None
    liveness_bound_ms: int
    equivocations_detected: int
    evidence_committed: int
    failing: list[SeedResult]

    def to_json(self) -> dict[str, Any]:
        return {
            "seeds": self.seeds,
            "first_seed": self.first_seed,
            "nodes": self.nodes,
            "byzantine": self.byzantine,
            "heights_finalized": self.heights_finalized,
            "violations": self.violations,
            "worst_recovery_ms": self.worst_recovery_ms,
            "worst_recovery_seed": self.worst_recovery_seed,
            "liveness_bound_ms": self.liveness_bound_ms,
            "equivocations_detected": self.equivocations_detected,
            "evidence_committed": self.evidence_committed,
            "failing_seeds": [
                {"seed": result.seed, "violations": result.violations[:5],
                 "replay": result.replay}
                for result in self.failing
            ],
        }


def _run_chunk(job: tuple[int, int, SimConfig]) -> list[SeedResult]:
    first, count, config = job
    return [run_seed(seed, config) for seed in range(first, first + count)]


def run_many(first_seed: int, seeds: int, config: SimConfig, jobs: int = 1) -> Summary:
    """Run seeds first_seed.. first_seed+seeds-1; with `jobs` > 1 in worker processes (each seed
    is independent and deterministic, so the result does not depend on `jobs`)."""
    chunk = max(1, min(250, seeds // max(1, jobs * 4)))
    work = [(start, min(chunk, first_seed + seeds - start), config)
            for start in range(first_seed, first_seed + seeds, chunk)]
    if jobs > 1:
        from concurrent.futures import ProcessPoolExecutor  # noqa: PLC0415 - only when asked

        with ProcessPoolExecutor(max_workers=jobs) as pool:
            chunks = list(pool.map(_run_chunk, work))
    else:
        chunks = [_run_chunk(item) for item in work]
    results = [result for chunk_results in chunks for result in chunk_results]
    worst = max(results, key=lambda result: result.recovery_ms or 0)
    failing = [result for result in results if result.violations]
    return Summary(
        seeds=seeds, first_seed=first_seed, nodes=config.nodes, byzantine=config.byzantine,
        heights_finalized=sum(result.heights for result in results),
        violations=sum(len(result.violations) for result in results),
        worst_recovery_ms=worst.recovery_ms or 0,
        worst_recovery_seed=worst.seed if worst.recovery_ms is not None else None,
        liveness_bound_ms=liveness_bound_ms(config.params, config.nodes),
        equivocations_detected=sum(result.equivocations_detected for result in results),
        evidence_committed=sum(result.evidence_committed for result in results),
        failing=failing,
    )
