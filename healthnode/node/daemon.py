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
- `EvidenceFound` is gossiped; `Rejected` is counted by reason.

The inbox is bounded, so a flood of gossip slows the peers' streams (backpressure) instead of
growing memory. Gossip and sync streams are accepted only from authority peer ids (and configured
observers); any peer may use the sync protocol only if allowed the same way.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import heapq
import logging
import os
import random
import socket
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Final

import trio

from healthnode import crypto, logs
from healthnode.admin import rpc
from healthnode.admin.server import serve_admin
from healthnode.codec import CodecError
from healthnode.config import (
    EMERGENCY_SHARE_FILE,
    GENESIS_FILE,
    KEY_FILE,
    NodeConfig,
    load_config,
    load_genesis,
)
from healthnode.consensus.core import Committed, Core
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
    Rejected,
    RequestBlocks,
    ScheduleTimeout,
    TimeoutFired,
    TxsAvailable,
    VoteReceived,
)
from healthnode.consensus.safety import decode_safety_state
from healthnode.errors import ConfigError, TxRefused
from healthnode.keys import load_identity
from healthnode.ledger import rules
from healthnode.ledger.mempool import Mempool
from healthnode.ledger.state import NONCE, read
from healthnode.metrics import NodeMetrics
from healthnode.net.p2p import P2P, Kind, Limits, normalise_ip
from healthnode.node.blobs import BlobKeeper
from healthnode.node.client import (
    CLIENT_FRAME_BYTES_MAX,
    CLIENT_PROTOCOL,
    ClientService,
)
from healthnode.node.emergency import EmergencyDuties
from healthnode.node.gossip import Gossip, Link
from healthnode.node.operator import operator_methods
from healthnode.node.restore import RestoreHold
from healthnode.node.source import LedgerSource
from healthnode.node.sync import fetch_blocks, serve_sync
from healthnode.protocol.block import Block, DuplicateProposal, DuplicateVote, Proposal, Vote
from healthnode.protocol.genesis import Genesis
from healthnode.protocol.state import SignerNonce
from healthnode.protocol.tx import AnyTx, decode_tx
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
    encode_proposal_message,
    encode_tx_batch,
)
from healthnode.store.leveldb import ChainStore

log = logs.get_logger("healthnode.node")

SAFETY_GUARD: Final = b"safety"
INBOX_ITEMS_MAX: Final = 4096  # events waiting for the core; beyond this, peers wait
TX_FLUSH_INTERVAL_S: Final = 0.02  # how long a submitted transaction waits to join a batch
PENDING_ARRIVALS_MAX: Final = 100_000  # arrival times kept for the finalize-latency metric
STARTUP_SYNC_WAIT_S: Final = 10  # how long a starting node waits for a first peer to sync from
SUBMIT_BATCH_TXS_MAX: Final = 1000  # one admin request (fits the admin line limit in hex)
BLOCKS_SENT_MAX: Final = 16  # proposed blocks kept to answer BlockWanted (a few rounds' worth)
BLOCKS_WANTED_MAX: Final = 64  # blocks asked for, kept so a rebroadcast does not ask again
BLOCK_WANTED_RETRY_S: Final = 1.0  # ask again (and answer again) after this long
RESOURCE_SAMPLE_INTERVAL_S: Final = 5.0  # connections, files and tasks on /metrics
MEMORY_TRIM_INTERVAL_S: Final = 60.0  # cyclic garbage collected, free heap pages handed back
MEMORY_TRIM_SLOW_S: Final = 0.1  # a collection longer than this is logged
MALLOC_ARENAS_MAX: Final = 2  # glibc's default is 8 per core: one per thread that allocates

MakeEvent = Callable[[int], Event]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def peer_public_key(address: str) -> bytes:
    """The public key named by the `/p2p/<peer id>` part of a peer address."""
    _, sep, peer = address.rpartition("/p2p/")
    if not sep:
        raise ConfigError(f"[p2p].peers {address!r}: the address must end in /p2p/<peer id>")
    try:
        return crypto.public_key_from_peer_id(peer)
    except ValueError as error:
        raise ConfigError(f"[p2p].peers {address!r}: {error}") from None


def open_fds() -> int:
    """File descriptors this process holds open (Linux: /proc/self/fd)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return -1


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim  # noqa: B018  (glibc only)
        libc.mallopt  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


_LIBC: Final = _glibc()
_M_ARENA_MAX: Final = -8  # glibc's mallopt parameter


def limit_malloc_arenas() -> None:
    """At most MALLOC_ARENAS_MAX malloc arenas (glibc). LevelDB's compaction thread and trio's
    worker threads each get an arena of their own by default, and freed memory in one arena is
    not reused by another: in a soak this showed as RSS that grew for hours with no live data
    behind it (docs/reliability.md)."""
    if _LIBC is not None:
        _LIBC.mallopt(_M_ARENA_MAX, MALLOC_ARENAS_MAX)


def release_free_memory() -> float:
    """Collect cyclic garbage of every generation, then hand free heap pages back to the system
    (glibc `malloc_trim`); the seconds it took. A connection's objects form reference cycles
    (yamux and its streams, the swarm's connection and its muxer), which Python frees only in a
    collection of the oldest generation; under steady load those run rarely, so garbage piled up
    and showed as RSS that grew for hours (docs/reliability.md)."""
    started = time.perf_counter()
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
    return time.perf_counter() - started


def trio_tasks() -> int:
    """Trio tasks alive in this process, counted from the root task down."""
    root = trio.lowlevel.current_root_task()
    count, stack = 0, [] if root is None else [root]
    while stack:
        task = stack.pop()
        count += 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return count


class _CountingHandler(logging.Handler):
    """Counts libp2p's warnings and errors as rejected input, by level (a bounded label)."""

    def __init__(self, count: Callable[[str], None]) -> None:
        super().__init__(logging.WARNING)
        self._count = count

    def emit(self, record: logging.LogRecord) -> None:
        self._count(f"libp2p_{record.levelname.lower()}")


@dataclass(frozen=True, slots=True)
class TxOutcome:
    """What became of a transaction someone is waiting for: final at `height`, or refused."""

    height: int | None
    refusal: rules.Rejected | None = None
    timed_out: bool = False


@dataclass
class _SentBlock:
    """A block this node sent as a compact proposal, kept to answer `BlockWanted`."""

    proposal: Proposal
    block: Block
    compact: bytes
    answered: dict[bytes, float] = field(default_factory=dict)  # peer -> when


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
        self._outgoing_txs: list[bytes] = []
        self._arrivals: dict[bytes, float] = {}
        self._txs_signalled = False
        self._allowed_at = -1
        self._allowed: frozenset[bytes] = frozenset()
        self._tx_waiters: dict[bytes, trio.Event] = {}
        self._tx_outcomes: dict[bytes, TxOutcome] = {}
        self._blocks_sent: OrderedDict[bytes, _SentBlock] = OrderedDict()  # by block hash
        self._blocks_wanted: OrderedDict[bytes, float] = OrderedDict()  # block hash -> when
        self._nonces = random.SystemRandom()
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
            classify=self._classify, known_hosts=self._known_hosts(),
            count_refused=self._count_refused_connection, count_dial=self._count_dial)
        self.blobs = BlobKeeper(self.store, self.p2p, self._blob_peers, self._count_rejected)
        self.blobs.recover()
        self.blobs.paused = lambda: self.syncing
        self.commit_hooks.append(self.blobs.block_committed)
        self.client = ClientService(self)
        self.commit_hooks.append(self.client.block_committed)
        self.emergency_share: tuple[int, int] | None = None
        self.emergency = EmergencyDuties(self, self.home / EMERGENCY_SHARE_FILE)
        self.emergency.start()
        self.commit_hooks.append(self.emergency.block_committed)
        self.gossip = Gossip(
            self.p2p, self.peers, self._allow, self._deliver, self._count_rejected,
            ping_interval_ms=self.config.p2p.ping_interval_ms,
            ping_timeout_ms=self.config.p2p.ping_timeout_ms,
            redial_backoff_max_ms=self.config.p2p.redial_backoff_max_ms,
            on_link_up=self._link_up)
        self._first_link = trio.Event()

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        limit_malloc_arenas()
        self.open()
        # Garbage below our protocols (a broken Noise or multistream handshake, a bad yamux
        # frame) is handled and logged by libp2p itself; count it too.
        libp2p_errors = _CountingHandler(self._count_rejected)
        logging.getLogger("libp2p").addHandler(libp2p_errors)
        try:
            if self.config.metrics.enabled:
                self.metrics.serve(self.config.metrics.listen)
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
                nursery.start_soon(self.restore_hold.run, self)
                log.info("node_started", node=self.config.node.name,
                         height=self.store.head.height, peer_id=self.p2p.peer_id,
                         listen=self.p2p.listen_addresses())
                task_status.started()
        finally:
            logging.getLogger("libp2p").removeHandler(libp2p_errors)
            self.metrics.close()
            self.store.close()

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
                    frame = self._proposal_frame(effect.message, effect.block)
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
            elif isinstance(effect, Rejected):
                self._count_rejected(effect.reason)

    def _proposal_frame(self, proposal: Proposal, block: Block | None) -> bytes:
        """A proposal goes out compact: its block as the transactions' hashes. The transactions
        still waiting to be gossiped go first, on the same streams, so a peer has them when the
        proposal arrives; a peer that lacks some asks for the whole block (`BlockWanted`)."""
        if block is None:
            return encode_proposal_message(proposal, None)
        sent = self._blocks_sent.get(block.hash)
        if sent is None or sent.proposal != proposal:
            sent = _SentBlock(proposal, block, CompactProposal.of(proposal, block).encode())
            self._blocks_sent[block.hash] = sent
            while len(self._blocks_sent) > BLOCKS_SENT_MAX:
                self._blocks_sent.popitem(last=False)
        self._send_outgoing_txs()
        return sent.compact

    def _commit(self, effect: Commit) -> None:
        started = time.perf_counter()
        block = effect.block
        self.source.commit(block, effect.certificate)
        finalized = time.monotonic()
        final = TxOutcome(block.height)
        for tx in block.txs:
            tx_hash = tx.hash
            arrived = self._arrivals.pop(tx_hash, None)
            if arrived is not None:
                self.metrics.finalize_seconds.observe(finalized - arrived)
            self._settle(tx_hash, final)
        evicted = self.mempool.block_committed(self.store, block.txs, now_ms())
        for tx, refusal in [*evicted, *self.source.refused]:
            self._count_rejected(str(refusal.reason))
            self._arrivals.pop(tx.hash, None)  # it will never be final: no latency to measure
            self._settle(tx.hash, TxOutcome(None, refusal))
        for hook in self.commit_hooks:
            hook(block)
        self.source.refused.clear()
        self.metrics.height.set(block.height)
        self.metrics.mempool_txs.set(len(self.mempool))
        self.metrics.blobs_missing.set(len(self.blobs.missing))
        self._txs_signalled = False
        log.info("block_committed", height=block.height, round=effect.certificate.round,
                 txs=len(block.txs), block_hash=block.hash.hex()[:16], commit_ms=round(
                     (time.perf_counter() - started) * 1000, 1))
        if len(self.mempool):
            self._signal_txs()

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
                except Exception as error:  # SyncError, a timeout, a reset: try the next peer
                    self._count_rejected("sync_failed")
                    log.info("sync_peer_failed", peer=peer.hex()[:16], error=str(error)[:120])
        finally:
            self.syncing = False

    def _emergency_status(self) -> dict[str, Any] | None:
        key = rules.emergency_key(self.store)
        if key is None:
            return None
        return {"public_key": key.key.public_key.hex(), "threshold": key.key.threshold,
                "epoch": key.epoch, "holders": [c.authority.hex() for c in key.key.commitments],
                "my_index": self.emergency_share[0] if self.emergency_share else None,
                "reshare_due": (rules.reshare_target(self.store) or (None,))[0]}

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

    def _known_hosts(self) -> frozenset[str]:
        """IP addresses of configured authorities and observers: their handshakes have room of
        their own (net/budget.py)."""
        hosts = set()
        for address in (*self.config.p2p.peers, *self.config.p2p.observers):
            parts = address.split("/")
            if len(parts) < 3:
                continue
            if parts[1] in ("ip4", "ip6"):
                hosts.add(normalise_ip(parts[2]))
            elif parts[1] in ("dns", "dns4", "dns6"):
                # A name (compose, a hospital's DNS) is looked up once, at start: a peer whose
                # address moves later competes with strangers until the node restarts.
                try:
                    found = socket.getaddrinfo(parts[2], None, proto=socket.IPPROTO_TCP)
                except OSError:
                    log.warning("peer_name_not_resolved", name=parts[2][:80])
                    continue
                hosts.update(normalise_ip(str(entry[4][0])) for entry in found)
        return frozenset(hosts)

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
                "store_memory_bytes": self.store.memory_bytes(),
                "refusals": dict(self.connection_refusals), "dials": dict(self.dials)}

    async def _sample_resources(self) -> None:
        """Keep the resource gauges of /metrics current (the scrape runs on another thread), and
        hand free memory back to the system once a minute."""
        trimmed_at = trio.current_time()
        while True:
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
            self._answer_block_wanted(peer, message)
        elif isinstance(message, ProposalMessage):
            await self._inbox_send.send(
                partial(ProposalReceived, message.proposal, message.block))
        elif isinstance(message, DuplicateVote | DuplicateProposal):
            await self._inbox_send.send(partial(EvidenceReceived, message))
        elif isinstance(message, TxBatch):
            for tx in message.txs:
                self._admit(tx, len(tx.encode()), gossip=False)

    async def _receive_compact(self, peer: bytes, message: CompactProposal) -> None:
        """Rebuild the block from the mempool; if a transaction is missing, ask the sender for
        the whole block, and hand the core the proposal alone meanwhile (as for a proposal whose
        block has not arrived)."""
        proposal = message.proposal
        if message.header.hash != proposal.block_hash:
            self._count_rejected("block_hash_mismatch")
            return
        block = message.block(self.mempool.get)
        if block is None:
            self.metrics.compact_proposals.labels("incomplete").inc()
            self._want_block(peer, message)
        else:
            self.metrics.compact_proposals.labels("complete").inc()
        await self._inbox_send.send(partial(ProposalReceived, proposal, block))

    def _want_block(self, peer: bytes, message: CompactProposal) -> None:
        link = self.gossip.links.get(peer)
        block_hash = message.proposal.block_hash
        # The height being decided, or the next (this node may still be committing the last
        # block; the core keeps the next height's proposal for when it gets there, and the
        # proposer's re-sends are identical frames, dropped as seen). Other heights are block
        # sync's business.
        if link is None or not 1 <= message.header.height - self.store.head.height <= 2:
            return
        asked = self._blocks_wanted.get(block_hash)
        now = time.monotonic()
        if asked is not None and now - asked < BLOCK_WANTED_RETRY_S:
            return
        self._blocks_wanted[block_hash] = now
        self._blocks_wanted.move_to_end(block_hash)
        while len(self._blocks_wanted) > BLOCKS_WANTED_MAX:
            self._blocks_wanted.popitem(last=False)
        self.gossip.send_to(link, BlockWanted(block_hash, self._nonces.getrandbits(63)).encode())

    def _answer_block_wanted(self, peer: bytes, message: BlockWanted) -> None:
        """Send a peer the whole block of a compact proposal this node sent: at most once per
        peer and block in `BLOCK_WANTED_RETRY_S` (a block is up to 8 MiB)."""
        sent = self._blocks_sent.get(message.block_hash)
        link = self.gossip.links.get(peer)
        if sent is None or link is None:
            self._count_rejected("block_wanted_unknown")
            return
        now = time.monotonic()
        if now - sent.answered.get(peer, -BLOCK_WANTED_RETRY_S) < BLOCK_WANTED_RETRY_S:
            self._count_rejected("block_wanted_repeated")
            return
        sent.answered[peer] = now
        self.metrics.compact_proposals.labels("block_sent").inc()
        self.gossip.send_to(link, encode_proposal_message(sent.proposal, sent.block))

    def _admit(self, tx: AnyTx, size_bytes: int, *, gossip: bool) -> rules.Rejected | None:
        """Offer a transaction to the mempool; None if admitted, else why not. One to `gossip`
        came from this node's clients and is checked in full; one that is not came from a peer,
        which checked it in full (the mempool then checks its signature and nonce only)."""
        refusal = self.mempool.add(self.store, tx, size_bytes, now_ms(), relayed=not gossip)
        if refusal is not None:
            self._count_rejected(str(refusal.reason))
            return refusal
        if len(self._arrivals) < PENDING_ARRIVALS_MAX:
            self._arrivals[tx.hash] = time.monotonic()
        self.metrics.mempool_txs.set(len(self.mempool))
        if gossip:
            self._outgoing_txs.append(tx.encode())
        self._signal_txs()
        return None

    # --- the node's own transactions --------------------------------------------------------

    def sign_own(self, build: Callable[[int], AnyTx]) -> AnyTx:
        """`build(nonce)` signed by this node, with the nonce after its finalized and waiting
        ones (nothing is submitted: `submit_own` does that)."""
        used = read(self.store, NONCE + self.identity.public_key, SignerNonce)
        waiting = self.mempool.highest_nonce(self.identity.public_key)
        nonce = max(used.nonce if used else 0, waiting or 0) + 1
        return build(nonce).sign(self.identity, self.genesis.chain_id)

    def submit_own(self, build: Callable[[int], AnyTx]) -> AnyTx:
        """Sign and submit a transaction of this node (an access.log, a provider registration,
        an authority vote). Synchronous, so two callers never take the same nonce. Raises
        TxRefused with the mempool's or the ledger's reason."""
        tx = self.sign_own(build)
        refusal = self.admit(tx)
        if refusal is not None:
            raise TxRefused(str(refusal.reason), refusal.detail)
        return tx

    def admit(self, tx: AnyTx) -> rules.Rejected | None:
        """Offer a transaction from this node's clients to the mempool and gossip it; None if
        admitted, else the refusal."""
        return self._admit(tx, len(tx.encode()), gossip=True)

    async def wait_final(self, tx_hash: bytes, timeout_s: float) -> TxOutcome:
        """Wait until `tx_hash` is final or refused; a TxOutcome that timed out otherwise."""
        location = self.store.tx_location(tx_hash)
        if location is not None:
            return TxOutcome(location[0])
        event = self._tx_waiters.setdefault(tx_hash, trio.Event())
        try:
            with trio.move_on_after(timeout_s):
                await event.wait()
        finally:
            if tx_hash in self._tx_waiters and not event.is_set():
                del self._tx_waiters[tx_hash]
            # Taken in `finally`: a waiter cancelled just as its event fired (its wallet hung
            # up) must not leave the outcome behind for good.
            outcome = self._tx_outcomes.pop(tx_hash, None)
        return outcome or TxOutcome(None, timed_out=True)

    def _settle(self, tx_hash: bytes, outcome: TxOutcome) -> None:
        event = self._tx_waiters.pop(tx_hash, None)
        if event is not None:
            self._tx_outcomes[tx_hash] = outcome
            event.set()

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
        while self._outgoing_txs:
            chunk = self._outgoing_txs[:TX_BATCH_TXS_MAX]
            del self._outgoing_txs[:TX_BATCH_TXS_MAX]
            self.gossip.broadcast(encode_tx_batch(chunk))

    def _count_rejected(self, reason: str) -> None:
        self.metrics.rejected_messages.labels(reason).inc()

    # --- admin ------------------------------------------------------------------------------

    async def _admin_connections(self, _params: dict[str, Any]) -> dict[str, Any]:
        return self.resources()

    async def _peer_disconnect(self, params: dict[str, Any]) -> dict[str, Any]:
        """Close every connection to one authority now; its gossip link redials by itself. For
        operators (a link that looks stuck) and for the soak's link cuts."""
        text = rpc.require(params, "peer", str)
        try:
            peer = bytes.fromhex(text)
        except ValueError:
            raise rpc.RpcError(rpc.INVALID_PARAMS, "peer: not hex") from None
        link = self.gossip.links.get(peer)
        if link is None:
            raise rpc.RpcError(rpc.INVALID_PARAMS, "peer: not a configured authority of this node")
        was_connected, stream = link.connected, link.stream
        with trio.move_on_after(5):
            if stream is not None:
                await stream.close_connection()
            await self.p2p.disconnect(peer)
        return {"peer": text, "was_connected": was_connected}

    def admin_methods(self) -> dict[str, rpc.Method]:
        async def status(_params: dict[str, Any]) -> dict[str, Any]:
            head = self.store.head
            return {
                "node": self.config.node.name,
                "chain_id": self.genesis.chain_id,
                # What a hospital gives its patients, for their wallets to pin (docs/wallet.md).
                "genesis_hash": self.genesis.hash.hex(),
                "peer_id": self.p2p.peer_id,
                "height": head.height,
                "head_hash": head.block_hash.hex(),
                # The root of this node's own state tree, computed here (docs/ledger.md).
                "state_root": rules.chain_meta(self.store).state_hash.hex(),
                "round": self.core.round,
                "step": self.core.step_name,
                "peers": len(self.gossip.connected()),
                "validators": [key.hex() for key in rules.authorities(
                    self.store, head.height + 1)],
                "syncing": self.syncing,
                "mempool_txs": len(self.mempool),
                "emergency": self._emergency_status(),
            }

        async def peers(_params: dict[str, Any]) -> list[dict[str, Any]]:
            return [{"public_key": key.hex(), "peer_id": crypto.peer_id(key),
                     "address": link.address, "connected": link.connected,
                     "link_ups": link.ups, "connections": self.p2p.connections_to(key),
                     "dropped_frames": link.dropped}
                    for key, link in self.gossip.links.items()]

        async def submit_tx(params: dict[str, Any]) -> dict[str, Any]:
            text = rpc.require(params, "tx", str)
            try:
                raw = bytes.fromhex(text)
                tx = decode_tx(raw)
            except (ValueError, CodecError) as error:
                raise rpc.RpcError(rpc.INVALID_PARAMS, f"tx: {error}") from None
            refusal = self._admit(tx, len(raw), gossip=True)
            if refusal is not None:
                raise rpc.RpcError(rpc.REFUSED, f"transaction refused: {refusal}")
            return {"tx_hash": tx.hash.hex()}

        async def submit_txs(params: dict[str, Any]) -> dict[str, Any]:
            """A batch of transactions (hex) in one request: for load tools and gateways."""
            texts = rpc.require(params, "txs", list)
            if len(texts) > SUBMIT_BATCH_TXS_MAX:
                raise rpc.RpcError(rpc.INVALID_PARAMS,
                                   f"txs: at most {SUBMIT_BATCH_TXS_MAX} per request")
            refused = []
            for index, text in enumerate(texts):
                try:
                    raw = bytes.fromhex(text) if isinstance(text, str) else b""
                    refusal = self._admit(decode_tx(raw), len(raw), gossip=True)
                    reason = None if refusal is None else str(refusal)
                except (ValueError, CodecError) as error:
                    reason = f"malformed: {error}"
                if reason is not None:
                    refused.append({"index": index, "reason": reason})
            return {"accepted": len(texts) - len(refused), "refused": refused}

        async def block(params: dict[str, Any]) -> dict[str, Any] | None:
            found = self.store.block(rpc.require_height(params))
            if found is None:
                return None
            return {"height": found.height, "hash": found.hash.hex(),
                    "time_ms": found.header.time_ms, "txs": [tx.hash.hex() for tx in found.txs],
                    "proposer": found.header.proposer.hex(),
                    "state_hash": found.header.state_hash.hex()}

        async def tx_status(params: dict[str, Any]) -> dict[str, Any]:
            text = rpc.require(params, "tx_hash", str)
            try:  # bytes.fromhex refuses NUL and every other non-hex character
                tx_hash = bytes.fromhex(text) if len(text) == 2 * crypto.HASH_BYTES else b""
            except ValueError:
                tx_hash = b""
            if len(tx_hash) != crypto.HASH_BYTES:
                raise rpc.RpcError(rpc.INVALID_PARAMS, f"parameter 'tx_hash' must be a hash "
                                                       f"({2 * crypto.HASH_BYTES} hex characters)")
            location = self.store.tx_location(tx_hash)
            if location is not None:
                return {"status": "final", "height": location[0], "index": location[1]}
            return {"status": "pending" if tx_hash in self.mempool else "unknown"}

        return {"status": status, "peers": peers, "submit_tx": submit_tx,
                "submit_txs": submit_txs, "block": block, "tx": tx_status,
                "connections": self._admin_connections, "peer_disconnect": self._peer_disconnect,
                **operator_methods(self)}

