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

Invariants are checked after every step of a correct node (`Checker`, checker.py): agreement,
validity, finalized height never going back (also across restarts), no evidence against a
correct authority, every equivocation a correct node received detected as evidence, and
liveness: after `heal_ms`, with at most f faulty, every correct node finalizes a new height
within `liveness_bound_ms`.

    world.py       the parts: configuration, result, a node, its disk and fake ledger, partitions
    adversary.py   the byzantine authorities' misbehaviour
    checker.py     the invariants, checked as the run goes
    simulator.py   the world's event loop (network, gossip, sync, crashes), one seed and many
"""

from __future__ import annotations

import dataclasses
import heapq
import random
from collections import Counter
from dataclasses import dataclass
from typing import Any, Final

from healthnode.consensus.core import Core
from healthnode.consensus.events import (
    BlockFetched,
    Broadcast,
    Commit,
    CommitApplied,
    Effect,
    Event,
    EvidenceFound,
    EvidenceReceived,
    Ignored,
    PersistSafety,
    ProposalReceived,
    RequestBlocks,
    ScheduleTimeout,
    TimeoutFired,
    TxsAvailable,
    VoteReceived,
)
from healthnode.consensus.safety import SafetyState, decode_safety_state
from healthnode.crypto import Identity, digest
from healthnode.net.dedup import SeenGate
from healthnode.protocol.block import Vote
from healthnode.tools.sim.adversary import Adversary
from healthnode.tools.sim.checker import Checker
from healthnode.tools.sim.world import (
    CHAIN_ID,
    FakeSource,
    Partition,
    SeedResult,
    SimConfig,
    SimNode,
    Verifier,
    faults_tolerated,
    liveness_bound_ms,
)

SEEN_ITEMS_MAX: Final = 1 << 20  # a seed's whole run: the simulator keeps what a node took
SYNC_BATCH: Final = 8  # blocks per sync answer: enough to catch up a few heights per request
CLOCK_SKEW_MS_MAX: Final = 100  # well under block_time_ahead_ms_max


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
        self.checker = Checker(self.authorities, self.byzantine_keys, self.verify,
                               lambda: self.now)
        self.commit_log: list[tuple[int, int, int]] = []  # (virtual ms, node, height)
        self._plan_faults()
        self.adversary = Adversary(self.rng, self.nodes, self.byzantine_mode, self._send,
                                   self._broadcast)

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
                               for key in sorted(self.byzantine_keys)}
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
            if self.fork_mode and self.checker.violations:
                break
            if heal_height is not None and recovery is None and self._all_reached(heal_height + 1):
                recovery = max(0, self.now - self.heal_ms)
            if recovery is not None and check_liveness and self._all_reached(
                    heal_height_or_zero(heal_height) + self.config.heights_after_heal):
                break
        if check_liveness and recovery is None:
            self.checker.violations.append(
                f"liveness: no new height by every correct node within {bound} ms after the "
                f"heal at {self.heal_ms} ms (heights "
                f"{[node.store.committed().height for node in self.correct]})")
        if check_liveness:
            assert self.now <= deadline or recovery is None
        return SeedResult(
            seed=self.seed, nodes=self.config.nodes, byzantine=self.config.byzantine,
            heights=min(node.store.committed().height for node in self.correct),
            violations=self.checker.violations, recovery_ms=recovery,
            equivocations_detected=len(self.checker.equivocations),
            evidence_committed=len(self.checker.evidence_committed),
            deliveries=self.deliveries, virtual_ms=self.now, rejected=self.rejected)

    def _all_reached(self, height: int) -> bool:
        return all(node.core is not None and node.store.committed().height >= height
                   for node in self.correct)

    def _boot(self, node: SimNode) -> None:
        node.incarnation += 1
        node.seen = SeenGate(SEEN_ITEMS_MAX)
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
        self.checker.restarted(node, node.store.committed().height)
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
        # The node's own gate (net/dedup.py): a copy of a height not reached yet is not
        # remembered, so a re-sent copy gets through once the node catches up.
        height = item[1].height if kind == "message" else None
        if not node.seen.take(item, height, node.core.height, self.now / 1000):
            return
        self.deliveries += 1
        now = self._local(node)
        if kind == "evidence":
            self._step(node, EvidenceReceived(item[1], now))
            return
        message, block = item[1], item[2]
        if node.byzantine:
            self.adversary.remember(message, block)
        else:
            self.checker.track_equivocation(node, message, block)
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
            self.checker.after_step(node)
        committed = [effect.block.height for effect in effects if isinstance(effect, Commit)]
        if committed:  # the shell acknowledges the commit at once, as the node's driver does
            self._step(node, CommitApplied(committed[0], event.now_ms))

    # --- effects --------------------------------------------------------------------------

    def _carry_out(self, node: SimNode, effects: list[Effect]) -> None:
        for effect in effects:
            if isinstance(effect, Broadcast):
                if node.byzantine and not self.fork_mode:
                    self.adversary.misbehave(node, effect)
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
                self.checker.evidence_found(node, effect.evidence)
                if not node.byzantine:
                    self._broadcast(node, ("evidence", effect.evidence))
            elif isinstance(effect, Ignored):
                self.rejected[effect.reason] += 1
            # DropRefused: the simulated source refuses nothing

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
        self.checker.committed(node, block, certificate, effect.proposal)


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
