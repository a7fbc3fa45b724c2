"""The node daemon (`healthnode run`): the trio shell around the consensus core and the ledger.

Theory of operation
-------------------
One nursery holds every task of the node: the libp2p host, gossip links, the block sync server,
the admin socket, the timer, the transaction-batch flusher and the consensus driver. Nothing runs
outside it, so cancelling it (SIGTERM, Ctrl-C) stops the node cleanly.

Everything that reaches the consensus core goes through one bounded inbox and one driver task,
which turns each item into an event stamped with the wall clock, calls `core.step`, and carries
out the effects **in order** before taking the next item:

- `PersistSafety`: written to the store with sync before anything after it (persist before you
  speak: the double-sign guard);
- `Broadcast`: queued on every gossip link (never waits for a slow peer);
- `Commit`: the block, its certificate and its state changes are written in one synced batch
  before the mempool is cleaned and any submitter is answered (commit before acknowledge);
- `ScheduleTimeout`: handed to the timer task, which feeds `TimeoutFired` back into the inbox;
- `RequestBlocks`: starts block sync from a connected peer (one at a time), which feeds
  `BlockFetched` back into the inbox in height order;
- `EvidenceFound` is gossiped; `Ignored` is counted by reason.

The inbox is bounded, so a flood of gossip slows the peers' streams (backpressure) instead of
growing memory. Gossip and sync streams are accepted only from authority peer ids (and configured
observers); any peer may use the sync protocol only if allowed the same way.
"""

from __future__ import annotations

import heapq
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Final

import trio

from healthnode import logs
from healthnode.admin import rpc
from healthnode.admin.server import serve_admin
from healthnode.clock import now_ms
from healthnode.consensus.core import Committed, Core
from healthnode.consensus.events import (
    BlockFetched,
    Broadcast,
    Commit,
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
from healthnode.consensus.safety import decode_safety_state
from healthnode.home.config import (
    EMERGENCY_SHARE_FILE,
    GENESIS_FILE,
    KEY_FILE,
    NodeConfig,
    load_config,
    load_genesis,
)
from healthnode.home.keys import load_identity
from healthnode.ledger import rules
from healthnode.ledger.mempool import Mempool
from healthnode.metrics import NodeMetrics
from healthnode.net.addresses import known_hosts, peer_public_key
from healthnode.net.blobs import BlobKeeper
from healthnode.net.framing import PEER_FAULTS
from healthnode.net.gossip import Gossip, Link
from healthnode.net.p2p import P2P, Kind, Limits
from healthnode.net.sync import fetch_blocks, serve_sync
from healthnode.node.admission import Submitter
from healthnode.node.client import (
    CLIENT_FRAME_BYTES_MAX,
    CLIENT_PROTOCOL,
    ClientService,
)
from healthnode.node.compact import CompactBlocks
from healthnode.node.emergency import EmergencyDuties
from healthnode.node.operator import operator_methods
from healthnode.node.restore import RestoreHold
from healthnode.node.runtime import (
    counting_libp2p_warnings,
    limit_malloc_arenas,
    open_fds,
    release_free_memory,
    trio_tasks,
)
from healthnode.node.source import LedgerSource
from healthnode.protocol.block import Block, DuplicateProposal, DuplicateVote, Proposal, Vote
from healthnode.protocol.genesis import Genesis
from healthnode.protocol.wire import (
    BLOB_FRAME_BYTES_MAX,
    BLOB_PROTOCOL,
    SYNC_FRAME_BYTES_MAX,
    SYNC_PROTOCOL,
    TX_BATCH_TXS_MAX,
    BlockWanted,
    CompactProposal,
    GossipMessage,
    ProposalMessage,
    TxBatch,
    encode_tx_batch,
)
from healthnode.store.leveldb import ChainStore

log = logs.get_logger("healthnode.node")

SAFETY_GUARD: Final = b"safety"
INBOX_ITEMS_MAX: Final = 4096  # events waiting for the core; beyond this, peers wait
TX_FLUSH_INTERVAL_S: Final = 0.02  # how long a submitted transaction waits to join a batch
STARTUP_SYNC_WAIT_S: Final = 10  # how long a starting node waits for a first peer to sync from
RESOURCE_SAMPLE_INTERVAL_S: Final = 5.0  # connections, files and tasks on /metrics
MEMORY_TRIM_INTERVAL_S: Final = 60.0  # cyclic garbage collected, free heap pages handed back
MEMORY_TRIM_SLOW_S: Final = 0.1  # a collection longer than this is logged

MakeEvent = Callable[[int], Event]


@dataclass(order=True)
class _Timer:
    at_ms: int
    height: int = field(compare=False)
    round: int = field(compare=False)
    step: int = field(compare=False)


class Node:
    """One hospital's node, from its home directory."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.config: NodeConfig = load_config(home)
        self.genesis: Genesis = load_genesis(home / GENESIS_FILE)
        self.identity = load_identity(home / KEY_FILE, expected_kind="node")
        self.peers = {peer_public_key(a): a for a in self.config.p2p.peers}
        self.peers.pop(self.identity.public_key, None)
        self.observers = {peer_public_key(a) for a in self.config.p2p.observers}
        self.metrics = NodeMetrics()
        self.syncing = False
        self._inbox_send, self._inbox = trio.open_memory_channel[MakeEvent](INBOX_ITEMS_MAX)
        self._timers: list[_Timer] = []
        self._timer_changed = trio.Event()
        self._txs_signalled = False
        self._allowed_at = -1
        self._allowed: frozenset[bytes] = frozenset()
        # Called after each committed block (blob replication, erasure, ...), in order.
        self.commit_hooks: list[Callable[[Block], None]] = []
        self.connection_refusals: Counter[str] = Counter()
        self.dials: Counter[str] = Counter()

    # --- lifetime ---------------------------------------------------------------------------

    def open(self) -> None:
        """Open the store and build the node's parts (no network, no tasks yet)."""
        data_dir = self.home / self.config.node.data_dir
        self.store = ChainStore.open(data_dir / "chain", self.genesis)
        self.store.tree_versions_kept = self.config.node.state_versions_kept
        self.mempool = Mempool(self.config.mempool.txs_max, self.config.mempool.bytes_max,
                               self.config.mempool.txs_per_signer_max)
        self.submitter = Submitter(self.store, self.mempool, self.identity,
                                   self.genesis.chain_id, self.metrics, self._count_rejected,
                                   self._signal_txs)
        self.source = LedgerSource(self.store, self.mempool, self.identity, self.genesis.params)
        raw_guard = self.store.read_guard(SAFETY_GUARD)
        safety = decode_safety_state(raw_guard) if raw_guard else None
        head = self.store.head
        self.restore_hold = RestoreHold.load(self.store)  # a restored node signs later
        self.commit_hooks.append(self.restore_hold.block_committed)
        self.core = Core(
            self.identity, self.genesis.chain_id, self.genesis.params, self.source,
            Committed(head.height, head.block_hash, rules.chain_meta(self.store).time_ms,
                      self.store.certificate(head.height)), safety,
            sign_from_height=self.restore_hold.sign_from_height)
        p2p = self.config.p2p
        self.p2p = P2P(
            self.identity, limits=Limits(
                handshakes_max=p2p.handshakes_max, handshakes_per_ip_max=p2p.handshakes_per_ip_max,
                handshake_timeout_ms=p2p.handshake_timeout_ms, wallets_max=p2p.peers_max,
                wallets_per_ip_max=p2p.peers_per_ip_max, wallets_per_key_max=p2p.peers_per_key_max,
                idle_timeout_ms=p2p.idle_timeout_ms),
            classify=self._classify,
            known_hosts=known_hosts((*self.config.p2p.peers, *self.config.p2p.observers)),
            count_refused=self._count_refused_connection, count_dial=self._count_dial)
        self.blobs = BlobKeeper(self.store, self.p2p, self._blob_peers, self._count_rejected)
        self.blobs.recover()
        self.blobs.paused = lambda: self.syncing
        self.commit_hooks.append(self.blobs.block_committed)
        self.client = ClientService(self.store, self.submitter, self.genesis, self.metrics,
                                    self.blobs, self._authority_addresses,
                                    lambda: self.emergency.share)
        self.commit_hooks.append(self.client.block_committed)
        self.emergency = EmergencyDuties(self.store, self.identity, self.submitter,
                                         self.home / EMERGENCY_SHARE_FILE)
        self.emergency.start()
        self.commit_hooks.append(self.emergency.block_committed)
        self.gossip = Gossip(
            self.p2p, self.peers, self._allow, self._deliver, self._count_rejected,
            ping_interval_ms=self.config.p2p.ping_interval_ms,
            ping_timeout_ms=self.config.p2p.ping_timeout_ms,
            redial_backoff_max_ms=self.config.p2p.redial_backoff_max_ms,
            on_link_up=self._link_up)
        self.compact = CompactBlocks(self.gossip, self.mempool, lambda: self.store.head.height,
                                     self.metrics, self._count_rejected)
        self._first_link = trio.Event()

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        limit_malloc_arenas()
        self.open()
        try:
            if self.config.metrics.enabled:
                self.metrics.serve(self.config.metrics.listen)
            with counting_libp2p_warnings(self._count_rejected):
                await self._serve(task_status)
        finally:
            self.metrics.close()
            self.store.close()

    async def _serve(self, task_status: Any) -> None:
        """Every task of the node, in one nursery, until it is cancelled."""
        async with self.p2p.running(list(self.config.p2p.listen)), \
                trio.open_nursery() as nursery:
            self.p2p.set_handler(SYNC_PROTOCOL, self._serve_sync, self._allow,
                                 SYNC_FRAME_BYTES_MAX)
            self.p2p.set_handler(BLOB_PROTOCOL, self.blobs.serve, self._allow,
                                 BLOB_FRAME_BYTES_MAX)
            # Any peer may speak the client protocol: what it may see is decided per request.
            self.p2p.set_handler(CLIENT_PROTOCOL, self.client.serve, lambda _peer: True,
                                 CLIENT_FRAME_BYTES_MAX, busy=self.client.busy)
            nursery.start_soon(self._sample_resources)
            nursery.start_soon(self.blobs.run)
            nursery.start_soon(self.gossip.run)
            await nursery.start(serve_admin, self.home / self.config.admin.socket,
                                self.admin_methods())
            nursery.start_soon(self._run_timers)
            nursery.start_soon(self._flush_txs)
            nursery.start_soon(self._drive, nursery)
            nursery.start_soon(self._sync_on_start)
            nursery.start_soon(self.restore_hold.run, self.p2p, self.identity.public_key,
                               self.gossip.connected, self._hold_signing)
            log.info("node_started", node=self.config.node.name,
                     height=self.store.head.height, peer_id=self.p2p.peer_id,
                     listen=self.p2p.listen_addresses())
            task_status.started()

    # --- the consensus driver ---------------------------------------------------------------

    async def _drive(self, nursery: trio.Nursery) -> None:
        self._execute(self.core.start(now_ms()), nursery)
        async for make_event in self._inbox:
            event = make_event(now_ms())
            self._execute(self.core.step(event), nursery)
            self.metrics.round.set(self.core.round)
            self.metrics.peers.set(len(self.gossip.connected()))

    def _enqueue(self, make_event: MakeEvent) -> None:
        """Put an event for the core on the inbox from synchronous code (never blocks)."""
        try:
            self._inbox_send.send_nowait(make_event)
        except trio.WouldBlock:
            self._count_rejected("inbox_full")

    def _execute(self, effects: list[Effect], nursery: trio.Nursery) -> None:
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
            elif isinstance(effect, RequestBlocks):
                if not self.syncing:
                    self.syncing = True
                    nursery.start_soon(self._sync_from, effect.from_height)
            elif isinstance(effect, EvidenceFound):
                log.warning("evidence_found", kind=type(effect.evidence).__name__)
                self.gossip.broadcast(effect.evidence.encode())
            elif isinstance(effect, DropRefused):
                self.submitter.committed(None, self.source.drop(effect.refused))
                self.metrics.mempool_txs.set(len(self.mempool))
            elif isinstance(effect, Ignored):
                self._count_rejected(effect.reason)

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
        evicted = self.mempool.block_committed(self.store, block.txs, now_ms())
        self.submitter.committed(block, evicted)
        for hook in self.commit_hooks:
            hook(block)
        self.metrics.height.set(block.height)
        self.metrics.mempool_txs.set(len(self.mempool))
        self.metrics.blobs_missing.set(len(self.blobs.missing))
        self._txs_signalled = False
        log.info("block_committed", height=block.height, round=effect.certificate.round,
                 txs=len(block.txs), block_hash=block.hash.hex()[:16], commit_ms=round(
                     (time.perf_counter() - started) * 1000, 1))
        if len(self.mempool):
            self._signal_txs()

    async def _hold_signing(self, sign_from_height: int) -> None:
        await self._inbox_send.send(partial(SigningHeld, sign_from_height))

    def _signal_txs(self) -> None:
        if not self._txs_signalled:
            self._txs_signalled = True
            self._enqueue(TxsAvailable)

    async def _run_timers(self) -> None:
        while True:
            self._timer_changed = trio.Event()
            if not self._timers:
                await self._timer_changed.wait()
                continue
            due_in_s = (self._timers[0].at_ms - now_ms()) / 1000
            if due_in_s > 0:
                with trio.move_on_after(due_in_s):
                    await self._timer_changed.wait()
                continue
            timer = heapq.heappop(self._timers)
            await self._inbox_send.send(
                partial(TimeoutFired, timer.height, timer.round, timer.step))

    # --- block sync -------------------------------------------------------------------------

    async def _sync_on_start(self) -> None:
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
            candidates = self.gossip.connected() or list(self.peers)
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

    def _authority_addresses(self) -> dict[bytes, str]:
        """Where each configured authority listens, this node's own first listen address too."""
        addresses = dict(self.peers)
        own = self.p2p.listen_addresses()
        if own:
            addresses[self.identity.public_key] = own[0].replace("/ip4/0.0.0.0/",
                                                                 "/ip4/127.0.0.1/")
        return addresses

    def _blob_peers(self) -> list[bytes]:
        """Authorities to ask for a missing ciphertext: connected ones first."""
        connected = [peer for peer in self.gossip.connected() if self._allow(peer)]
        return connected + [peer for peer in self.peers if peer not in connected]

    async def _serve_sync(self, peer: bytes, stream: Any) -> None:
        await serve_sync(self.store, peer, stream, self._count_rejected)

    # --- gossip in --------------------------------------------------------------------------

    def _allow(self, peer: bytes) -> bool:
        height = self.store.head.height
        if height != self._allowed_at:
            self._allowed = frozenset(rules.authorities(self.store, height + 1)) | frozenset(
                rules.authorities(self.store, height + 2))
            self._allowed_at = height
        return peer in self._allowed or peer in self.observers

    def _classify(self, peer: bytes) -> Kind:
        """A connected peer's kind, for the connection budget and the metrics."""
        if peer in self.observers:
            return Kind.OBSERVER
        if peer in self.peers or self._allow(peer):
            return Kind.AUTHORITY
        return Kind.WALLET

    def _count_refused_connection(self, reason: str) -> None:
        self.connection_refusals[reason] += 1
        self.metrics.connection_refusals.labels(reason).inc()

    def _count_dial(self, kind: str) -> None:
        self.dials[kind] += 1
        self.metrics.dials.labels(kind).inc()

    def resources(self) -> dict[str, Any]:
        """What this node holds now: connections by kind, files, tasks (admin `connections`)."""
        return {"by_kind": self.p2p.connection_counts(),
                "handshaking": self.p2p.budget.handshaking + self.p2p.budget.known_handshaking,
                "open_fds": open_fds(), "trio_tasks": trio_tasks(),
                "known_peers": self.p2p.known_peers(),
                "store_memory_bytes": self.store.memory_bytes(),
                "refusals": dict(self.connection_refusals), "dials": dict(self.dials)}

    async def _sample_resources(self) -> None:
        """Keep the resource gauges of /metrics current (the scrape runs on another thread),
        forget the wallets that left, and hand free memory back to the system once a minute."""
        trimmed_at = trio.current_time()
        while True:
            self.p2p.forget_departed_wallets()
            if trio.current_time() - trimmed_at >= MEMORY_TRIM_INTERVAL_S:
                took_s = release_free_memory()
                if took_s > MEMORY_TRIM_SLOW_S:
                    log.warning("memory_release_slow", ms=round(took_s * 1000, 1))
                trimmed_at = trio.current_time()
            sample = self.resources()
            for kind, count in sample["by_kind"].items():
                self.metrics.connections.labels(kind).set(count)
            self.metrics.open_fds.set(sample["open_fds"])
            self.metrics.trio_tasks.set(sample["trio_tasks"])
            self.metrics.store_memory.set(sample["store_memory_bytes"])
            await trio.sleep(RESOURCE_SAMPLE_INTERVAL_S)

    async def _deliver(self, peer: bytes, message: GossipMessage) -> None:
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

    def _link_up(self, link: Link) -> None:
        self._first_link.set()
        self._send_mempool_to(link)

    def _send_mempool_to(self, link: Link) -> None:
        """A peer just connected: give it the transactions waiting here (it missed their gossip
        while the link was down), in batches, oldest first."""
        waiting = [tx.encode() for tx in self.mempool.candidates()]
        for start in range(0, len(waiting), TX_BATCH_TXS_MAX):
            self.gossip.send_to(link, encode_tx_batch(waiting[start:start + TX_BATCH_TXS_MAX]))

    async def _flush_txs(self) -> None:
        """Gossip submitted transactions in batches (one frame per interval, not per tx)."""
        while True:
            await trio.sleep(TX_FLUSH_INTERVAL_S)
            self._send_outgoing_txs()

    def _send_outgoing_txs(self) -> None:
        for batch in self.submitter.outgoing_batches():
            self.gossip.broadcast(batch)

    def _count_rejected(self, reason: str) -> None:
        self.metrics.rejected_messages.labels(reason).inc()

    # --- admin ------------------------------------------------------------------------------

    def admin_methods(self) -> dict[str, rpc.Method]:
        return operator_methods(self)
