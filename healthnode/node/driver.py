"""The consensus driver: the event loop that carries out the core's effects, in order.

Everything that reaches the consensus core goes through one bounded inbox and `drive`, which
turns each item into an event stamped with the wall clock, calls `core.step`, and carries out
the effects **in order** before taking the next item:

- `PersistSafety`: written to the store with sync before anything after it (persist before you
  speak: the double-sign guard);
- `Broadcast`: queued on every gossip link (never waits for a slow peer); a proposal goes out
  compact (node/compact.py), after the transactions still waiting to be gossiped;
- `Commit`: the block, its certificate and its state changes are written in one synced batch
  before the mempool is cleaned and any submitter is answered (commit before acknowledge);
  then the core hears `CommitApplied` before anything else, and enters the next height;
- `ScheduleTimeout`: handed to the timer task, which feeds `TimeoutFired` back into the inbox;
- `RequestBlocks`: starts block sync from a connected peer (one at a time), which feeds
  `BlockFetched` back into the inbox in height order;
- `DropRefused`: what the block source refused leaves the mempool, and its waiters hear why;
- `EvidenceFound` is gossiped; `Ignored` is counted by reason.

The inbox is bounded, so a flood of gossip slows the peers' streams (backpressure) instead of
growing memory. Gossip delivers here (`deliver`), and a link that comes up is handed the
transactions waiting in the mempool (`link_up`).
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Final

import trio

from healthnode import logs
from healthnode.clock import Clock
from healthnode.consensus.core import Core
from healthnode.consensus.events import (
    BlockFetched,
    Broadcast,
    Commit,
    CommitApplied,
    DropRefused,
    Effect,
    Event,
    EvidenceFound,
    EvidenceReceived,
    Ignored,
    PersistSafety,
    ProposalReceived,
    RequestBlocks,
    ScheduleTimeout,
    SigningHeld,
    TimeoutFired,
    TxsAvailable,
    VoteReceived,
)
from healthnode.ledger import rules
from healthnode.ledger.mempool import Mempool
from healthnode.metrics import NodeMetrics
from healthnode.net.blobs import BlobKeeper
from healthnode.net.framing import PEER_FAULTS, Transport
from healthnode.net.gossip import Gossip, Link
from healthnode.net.sync import fetch_blocks
from healthnode.node.admission import Submitter
from healthnode.node.compact import CompactBlocks
from healthnode.node.rotation import KeyRotated
from healthnode.node.source import LedgerSource
from healthnode.protocol.block import Block, DuplicateProposal, DuplicateVote, Proposal, Vote
from healthnode.protocol.wire import (
    BlockWanted,
    CompactProposal,
    GossipMessage,
    ProposalMessage,
    TxBatch,
    encode_tx_batches,
)
from healthnode.store.leveldb import ChainStore

log = logs.get_logger("healthnode.node")

SAFETY_GUARD: Final = b"safety"
INBOX_ITEMS_MAX: Final = 4096  # events waiting for the core; beyond this, peers wait
TX_FLUSH_INTERVAL_S: Final = 0.02  # how long a submitted transaction waits to join a batch
STARTUP_SYNC_WAIT_S: Final = 10  # how long a starting node waits for a first peer to sync from

MakeEvent = Callable[[int], Event]


@dataclass(order=True)
class _Timer:
    at_ms: int
    height: int = field(compare=False)
    round: int = field(compare=False)
    step: int = field(compare=False)


class Driver:
    """The event loop around one node's consensus core; see the module docstring."""

    def __init__(self, core: Core, store: ChainStore, source: LedgerSource, mempool: Mempool,
                 submitter: Submitter, p2p: Transport, peers: dict[bytes, str],
                 metrics: NodeMetrics, count_rejected: Callable[[str], None],
                 clock: Clock) -> None:
        self.core = core
        self.clock = clock
        self.store = store
        self.source = source
        self.mempool = mempool
        self.submitter = submitter
        self.p2p = p2p
        self.peers = peers
        self.metrics = metrics
        self._count_rejected = count_rejected
        self.syncing = False
        # Called after each committed block (blob replication, erasure, ...), in order.
        self.commit_hooks: list[Callable[[Block], None]] = []
        self._inbox_send, self._inbox = trio.open_memory_channel[MakeEvent](INBOX_ITEMS_MAX)
        self._timers: list[_Timer] = []
        self._timer_changed = trio.Event()
        self._txs_signalled = False
        self._first_link = trio.Event()

    def connect(self, gossip: Gossip, compact: CompactBlocks, blobs: BlobKeeper) -> None:
        """The parts built after the driver (they deliver to it)."""
        self.gossip = gossip
        self.compact = compact
        self.blobs = blobs

    async def drive(self, nursery: trio.Nursery) -> None:
        self.apply(self.core.start(self.clock.now_ms()), nursery)
        async for make_event in self._inbox:
            event = make_event(self.clock.now_ms())
            self.apply(self.core.step(event), nursery)
            self.metrics.round.set(self.core.round)
            self.metrics.peers.set(len(self.gossip.connected()))

    def _enqueue(self, make_event: MakeEvent) -> None:
        """Put an event for the core on the inbox from synchronous code (never blocks)."""
        try:
            self._inbox_send.send_nowait(make_event)
        except trio.WouldBlock:
            self._count_rejected("inbox_full")

    def apply(self, effects: list[Effect], nursery: trio.Nursery) -> None:
        """Carry out a step's effects; after a Commit, acknowledge it to the core (which then
        enters the next height) and carry out what that step says, until no commit is left."""
        while (committed := self.execute(effects, nursery)) is not None:
            effects = self.core.step(CommitApplied(committed, self.clock.now_ms()))

    def execute(self, effects: list[Effect], nursery: trio.Nursery) -> int | None:
        """Carry out `effects` in order; the height committed among them, if any."""
        committed = None
        for effect in effects:
            if isinstance(effect, PersistSafety):
                self.store.write_guard(SAFETY_GUARD, effect.state.encode())
            elif isinstance(effect, Broadcast):
                if isinstance(effect.message, Proposal):
                    frame = self.compact.frame(effect.message, effect.block)
                    if effect.block is not None:
                        # Its transactions first, on the same streams (node/compact.py).
                        self._send_outgoing_txs()
                else:
                    frame = effect.message.encode()
                self.gossip.broadcast(frame)
            elif isinstance(effect, ScheduleTimeout):
                heapq.heappush(self._timers, _Timer(effect.at_ms, effect.height, effect.round,
                                                    effect.step))
                self._timer_changed.set()
            elif isinstance(effect, Commit):
                self._commit(effect)
                committed = effect.block.height
            elif isinstance(effect, RequestBlocks):
                if not self.syncing:
                    self.syncing = True
                    nursery.start_soon(self._sync_from, effect.from_height)
            elif isinstance(effect, EvidenceFound):
                log.warning("evidence_found", kind=type(effect.evidence).__name__)
                self.gossip.broadcast(effect.evidence.encode())
            elif isinstance(effect, DropRefused):
                self.submitter.dropped(self.source.drop(effect.refused))
                self.metrics.mempool_txs.set(len(self.mempool))
            elif isinstance(effect, Ignored):
                self._count_rejected(effect.reason)
        return committed

    async def _receive_compact(self, peer: bytes, message: CompactProposal) -> None:
        """Rebuild the block from the mempool (asking the sender for the whole block if a
        transaction is missing), and hand the core the proposal, alone meanwhile (as for a
        proposal whose block has not arrived)."""
        if message.header.hash != message.proposal.block_hash:
            self._count_rejected("block_hash_mismatch")
            return
        block = self.compact.rebuild(peer, message)
        await self._inbox_send.send(partial(ProposalReceived, message.proposal, block))

    def _commit(self, effect: Commit) -> None:
        started = time.perf_counter()
        block = effect.block
        self.source.commit(block, effect.certificate)
        evicted = self.mempool.block_committed(self.store, block.txs, self.clock.now_ms())
        self.submitter.committed(block)
        self.submitter.dropped(evicted)
        stop: rules.RulesUnknown | KeyRotated | None = None
        for hook in self.commit_hooks:
            try:
                hook(block)
            except (rules.RulesUnknown, KeyRotated) as error:
                # Every hook still sees the block (an erasure in it is carried out); the node
                # stops after it, below (the daemon's last hooks raise these for that: rules
                # this release does not carry, or this node's key rotated away).
                stop = stop or error
        self.metrics.height.set(block.height)
        self.metrics.mempool_txs.set(len(self.mempool))
        self.metrics.blobs_missing.set(len(self.blobs.missing))
        self._txs_signalled = False
        log.info("block_committed", height=block.height, round=effect.certificate.round,
                 txs=len(block.txs), block_hash=block.hash.hex()[:16], commit_ms=round(
                     (time.perf_counter() - started) * 1000, 1))
        if stop is not None:
            raise stop
        if len(self.mempool):
            self.signal_txs()

    async def hold_signing(self, sign_from_height: int) -> None:
        await self._inbox_send.send(partial(SigningHeld, sign_from_height))

    def signal_txs(self) -> None:
        if not self._txs_signalled:
            self._txs_signalled = True
            self._enqueue(TxsAvailable)

    async def run_timers(self) -> None:
        while True:
            self._timer_changed = trio.Event()
            if not self._timers:
                await self._timer_changed.wait()
                continue
            due_in_s = (self._timers[0].at_ms - self.clock.now_ms()) / 1000
            if due_in_s > 0:
                with trio.move_on_after(due_in_s):
                    await self._timer_changed.wait()
                continue
            timer = heapq.heappop(self._timers)
            await self._inbox_send.send(
                partial(TimeoutFired, timer.height, timer.round, timer.step))

    async def sync_on_start(self) -> None:
        """Ask for the blocks finalized while this node was down as soon as a peer is
        connected, instead of waiting to hear of a later height (on an idle network that is the
        next heartbeat, up to `empty_block_interval_ms` away)."""
        with trio.move_on_after(STARTUP_SYNC_WAIT_S):
            await self._first_link.wait()
        if not self.syncing:
            self.syncing = True
            await self._sync_from(self.store.head.height + 1)

    async def _sync_from(self, from_height: int) -> None:
        try:
            candidates = self.gossip.connected() or [
                peer for peer in self.peers if peer not in self.gossip.refused]
            for peer in candidates:
                try:
                    received = 0
                    async for item in fetch_blocks(self.p2p, peer, from_height):
                        received += 1
                        await self._inbox_send.send(
                            partial(BlockFetched, item.block, item.certificate))
                    if received:
                        log.info("sync_fetched", peer=peer.hex()[:16], first=from_height,
                                 blocks=received)
                        return
                except PEER_FAULTS as error:  # SyncError, a timeout, a reset: try the next peer
                    self._count_rejected("sync_failed")
                    log.info("sync_peer_failed", peer=peer.hex()[:16], error=str(error)[:120])
        finally:
            self.syncing = False

    async def deliver(self, peer: bytes, message: GossipMessage) -> None:
        if isinstance(message, Vote):
            await self._inbox_send.send(partial(VoteReceived, message))
        elif isinstance(message, CompactProposal):
            await self._receive_compact(peer, message)
        elif isinstance(message, BlockWanted):
            self.compact.answer(peer, message)
        elif isinstance(message, ProposalMessage):
            await self._inbox_send.send(
                partial(ProposalReceived, message.proposal, message.block))
        elif isinstance(message, DuplicateVote | DuplicateProposal):
            await self._inbox_send.send(partial(EvidenceReceived, message))
        elif isinstance(message, TxBatch):
            for tx in message.txs:
                self.submitter.offer(tx, len(tx.encode()), relayed=True)

    def link_up(self, link: Link) -> None:
        self._first_link.set()
        self._send_mempool_to(link)

    def _send_mempool_to(self, link: Link) -> None:
        """A peer just connected: give it the transactions waiting here (it missed their gossip
        while the link was down), in batches, oldest first."""
        for batch in encode_tx_batches([tx.encode() for tx in self.mempool.candidates()]):
            self.gossip.send_to(link, batch)

    async def flush_txs(self) -> None:
        """Gossip submitted transactions in batches (one frame per interval, not per tx)."""
        while True:
            await trio.sleep(TX_FLUSH_INTERVAL_S)
            self._send_outgoing_txs()

    def _send_outgoing_txs(self) -> None:
        for batch in self.submitter.outgoing_batches():
            self.gossip.broadcast(batch)
