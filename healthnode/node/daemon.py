"""The node daemon (`healthnode run`): the trio shell around the consensus core and the ledger.

Theory of operation
-------------------
One nursery holds every task of the node: the libp2p host, gossip links, the block sync server,
the admin socket, the timer, the transaction-batch flusher and the consensus driver. Nothing runs
outside it, so cancelling it (SIGTERM, Ctrl-C) stops the node cleanly.

The node is wired here and nothing else happens here: the consensus driver (node/driver.py) is the
event loop that carries out the core's effects in order, admission (node/admission.py) is the
one door for transactions, and the services (client, operator, emergency duties, restore hold)
get narrow ports, never this object.

Gossip and sync streams are accepted only from authority peer ids (and configured
observers); any peer may use the sync protocol only if allowed the same way. A node whose key
the ledger rotated away stops after the block before the rotation's height (node/rotation.py).
"""

from __future__ import annotations

import ipaddress
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import trio

from healthnode import __version__, crypto, limits, logs
from healthnode.admin import rpc
from healthnode.admin.server import serve_admin
from healthnode.clock import Clock, SystemClock
from healthnode.consensus.core import Committed, Core
from healthnode.consensus.safety import decode_safety_state
from healthnode.crypto import Identity
from healthnode.errors import TxRefused
from healthnode.home.backup import RESTORED_GUARD, RestoreMark
from healthnode.home.config import (
    EMERGENCY_SHARE_FILE,
    GENESIS_FILE,
    KEY_FILE,
    ROUND_KEY_FILE,
    NodeConfig,
    load_config,
    load_genesis,
)
from healthnode.home.keys import load_identity
from healthnode.ledger import door, queries, rules
from healthnode.ledger.mempool import Mempool
from healthnode.ledger.rules import peers
from healthnode.metrics import NodeMetrics
from healthnode.net.addresses import known_hosts, peer_public_key
from healthnode.net.blobs import BlobKeeper
from healthnode.net.framing import Transport
from healthnode.net.gossip import Gossip
from healthnode.net.p2p import P2P, Classify, Kind, Limits
from healthnode.net.statesync import StateSyncFailed, serve_statesync, take_snapshot
from healthnode.net.sync import serve_sync
from healthnode.node.admission import Submitter
from healthnode.node.client import (
    CLIENT_FRAME_BYTES_MAX,
    CLIENT_PROTOCOL,
    ClientService,
)
from healthnode.node.compact import CompactBlocks
from healthnode.node.driver import SAFETY_GUARD, Driver
from healthnode.node.emergency import EmergencyDuties
from healthnode.node.health import BEAT_INTERVAL_S, Probes, Readiness, SignerLiveness, readiness
from healthnode.node.operator import operator_methods
from healthnode.node.restore import RestoreHold
from healthnode.node.rotation import (
    KeyRotated,
    follow_rotations,
    former_keys,
    stop_if_rotated,
)
from healthnode.node.runtime import (
    counting_libp2p_warnings,
    limit_malloc_arenas,
    open_fds,
    release_free_memory,
    trio_tasks,
)
from healthnode.node.snapshots import SnapshotTaker
from healthnode.node.source import LedgerSource
from healthnode.protocol.block import Block
from healthnode.protocol.genesis import ROUNDS_FROM, Genesis
from healthnode.protocol.statesync import STATESYNC_FRAME_BYTES_MAX, STATESYNC_PROTOCOL
from healthnode.protocol.tx import NodeAnnounce, RecordPurged, peer_address_problem
from healthnode.protocol.wire import (
    BLOB_FRAME_BYTES_MAX,
    BLOB_PROTOCOL,
    SYNC_FRAME_BYTES_MAX,
    SYNC_PROTOCOL,
)
from healthnode.store.leveldb import ChainStore

log = logs.get_logger("healthnode.node")

RESOURCE_SAMPLE_INTERVAL_S: Final = 5.0  # connections, files and tasks on /metrics
MEMORY_TRIM_INTERVAL_S: Final = 60.0  # cyclic garbage collected, free heap pages handed back
MEMORY_TRIM_SLOW_S: Final = 0.1  # a collection longer than this is logged
# Purge statements (record.purged) of this node waiting in its mempool at most: the rest wait in
# the blob keeper, so that the node's access.logs always find room under the per-signer bound.
PURGE_STATEMENTS_PENDING_MAX: Final = 16



# Builds the node's stream host from its key and its `classify`; by default net/p2p.P2P over
# libp2p, with the limits of the node's config (a test may pass one over memory streams).
MakeTransport = Callable[[Identity, Classify], Transport]


class Node:
    """One hospital's node, from its home directory. `identity` is its key, read by `healthnode
    run` from wherever the operator keeps it (home/node_key.py); without it, the home's clear key
    file. `clock` is its wall clock and `make_transport` builds its stream host
    (healthnode/clock.py; net/framing.Transport): a running node has the system's clock and
    libp2p, and a test may hand in others."""

    def __init__(self, home: Path, *, identity: Identity | None = None,
                 clock: Clock | None = None, make_transport: MakeTransport | None = None) -> None:
        self.home = home
        self.clock: Clock = clock or SystemClock()
        self._make_transport = make_transport or self._libp2p
        self.config: NodeConfig = load_config(home)
        self.genesis: Genesis = load_genesis(home / GENESIS_FILE)
        self.identity = identity if identity is not None else \
            load_identity(home / KEY_FILE, expected_kind="node")
        # The config's peers are a seed list: the node dials them, and the authorities and
        # observers of the chain at their announced addresses (`refresh_peers`); `peers` is
        # the set it dials now, kept in place (block sync and blobs hold it).
        self.seeds = {peer_public_key(a): a for a in self.config.p2p.peers}
        self.seeds.pop(self.identity.public_key, None)
        self.peers = dict(self.seeds)
        self.manual_peers: dict[bytes, str] = {}  # admin `peer_add`, until the node stops
        self.observers = {peer_public_key(a) for a in self.config.p2p.observers}
        self.chain_observers: frozenset[bytes] = frozenset()
        self._announced: bytes | None = None  # our node.announce waiting in the pool
        self.metrics = NodeMetrics()
        self.probes = Probes()
        # Asked at each scrape, from the probes: a stuck loop shows as not ready here too.
        self.metrics.ready.set_function(lambda: float(self.probes.ready()[0]))
        self.liveness = SignerLiveness()
        self._allowed_at = -1
        self._allowed: frozenset[bytes] = frozenset()
        self.connection_refusals: Counter[str] = Counter()
        self.dials: Counter[str] = Counter()

    # --- lifetime ---------------------------------------------------------------------------

    def open(self, state_sync: bool = False) -> None:
        """Open the store and build the node's parts (no network, no tasks yet); with
        `state_sync`, a new node's parts wait for `_state_sync_if_new` (`run`)."""
        data_dir = self.home / self.config.node.data_dir
        self.store = ChainStore.open(data_dir / "chain", self.genesis)
        try:
            self._stop_before_unknown_rules(self.store.head.height)
            stop_if_rotated(self.store, self.identity.public_key, self.home)
        except (rules.RulesUnknown, KeyRotated):
            self.store.close()
            raise
        # The configured peers under their keys of now (one may have rotated its key since):
        # `refresh_peers` follows rotations after every block.
        self.peers.clear()
        self.peers.update(follow_rotations(self.store, self.seeds))
        self.peers.pop(self.identity.public_key, None)
        self.p2p = self._make_transport(self.identity, self._classify)
        if not (state_sync and self._wants_state_sync()):
            self._build()

    def _wants_state_sync(self) -> bool:
        """A new node (its store empty) that may take a snapshot: its config allows it, and it
        has peers to ask."""
        return self.config.node.state_sync and self.store.head.height == 0 and bool(self.peers)

    def _build(self) -> None:
        """The node's parts over its store (again after a state sync put a new store in
        place): everything but the store and the stream host."""
        self.store.tree_versions_kept = self.config.node.state_versions_kept
        pool = self.config.mempool
        self.mempool = Mempool(pool.txs_max, pool.bytes_max, pool.txs_per_signer_max,
                               pool.reserved_txs, pool.reserved_bytes)
        self.budgets = door.Budgets({name: getattr(self.config.budgets, name)
                                     for name in door.WINDOWS})
        self.submitter = Submitter(self.store, self.mempool, self.identity,
                                   self.genesis.chain_id, self.metrics, self._count_rejected,
                                   lambda: self.driver.signal_txs(),  # noqa: PLW0108 (built later)
                                   self.clock, self.budgets)
        self.source = LedgerSource(self.store, self.mempool, self.identity, self.genesis.params)
        raw_guard = self.store.read_guard(SAFETY_GUARD)
        safety = decode_safety_state(raw_guard) if raw_guard else None
        head = self.store.head
        self.restore_hold = RestoreHold.load(self.store)  # a restored node signs later
        self.core = Core(
            self.identity, self.genesis.chain_id, self.genesis.params, self.source,
            Committed(head.height, head.block_hash, rules.chain_meta(self.store).time_ms,
                      self.store.certificate(head.height)), safety,
            sign_from_height=self.restore_hold.sign_from_height)
        self.driver = Driver(self.core, self.store, self.source, self.mempool, self.submitter,
                             self.p2p, self.peers, self.metrics, self._count_rejected,
                             self.clock)
        hooks = self.driver.commit_hooks
        hooks.append(self._count_signers)
        hooks.append(self.restore_hold.block_committed)
        uploads = self.config.budgets
        self.blobs = BlobKeeper(self.store, self.p2p, self._blob_peers, self._count_rejected,
                                self.clock, self.budgets, uploads.pending_upload_bytes,
                                uploads.pending_upload_bytes_per_key)
        self.blobs.purge_stated = self._purge_stated
        self.blobs.on_purged = self._state_purge
        self.blobs.statements_held = lambda: self.restore_hold.active
        self.blobs.recover()
        self.blobs.paused = lambda: self.driver.syncing
        hooks.append(self.blobs.block_committed)
        hooks.append(self._rules_came_in)
        self.client = ClientService(self.store, self.submitter, self.genesis, self.metrics,
                                    self.blobs, self._authority_addresses,
                                    lambda: self.emergency.share, self.clock)
        hooks.append(self.client.block_committed)
        self.client.held = lambda: self.restore_hold.active
        self.emergency = EmergencyDuties(self.store, self.identity, self.submitter,
                                         self.home / EMERGENCY_SHARE_FILE,
                                         self.home / ROUND_KEY_FILE,
                                         self.config.emergency.refresh_blocks)
        self.emergency.start()
        hooks.append(self.emergency.block_committed)
        self.gossip = Gossip(
            self.p2p, self.peers, self._allow, self.driver.deliver, self._count_rejected,
            ping_interval_ms=self.config.p2p.ping_interval_ms,
            ping_timeout_ms=self.config.p2p.ping_timeout_ms,
            redial_backoff_max_ms=self.config.p2p.redial_backoff_max_ms,
            on_link_up=self.driver.link_up, height=lambda: self.core.height,
            genesis_hash=self.genesis.hash, link_back=self._is_authority)
        self.compact = CompactBlocks(self.gossip, self.mempool, lambda: self.store.head.height,
                                     self.metrics, self._count_rejected)
        self.driver.connect(self.gossip, self.compact, self.blobs)
        self.refresh_peers()
        hooks.append(self._peers_after_block)
        node = self.config.node
        self.snapshots = SnapshotTaker(self.store, node.snapshot_interval, node.snapshots_kept,
                                       self.start_background)
        hooks.append(self.snapshots.block_committed)
        hooks.append(self._prune)
        self.metrics.pruned_height.set(self.store.pruned)
        # Last: every other hook has seen the block before the node may stop after it.
        hooks.append(lambda block: self._stop_before_unknown_rules(block.height))
        hooks.append(lambda _block: stop_if_rotated(self.store, self.identity.public_key,
                                                    self.home))

    def _prune(self, _block: Block) -> None:
        """With `[node] keep_blocks`, delete old block bodies after each commit: at most
        PRUNE_HEIGHTS_PER_CALL heights (one synced batch), so that turning pruning on over a
        long chain catches up over many commits (store/leveldb.py `prune`)."""
        keep_blocks = self.config.node.keep_blocks
        if keep_blocks and self.store.prune(keep_blocks):
            self.metrics.pruned_height.set(self.store.pruned)
            log.debug("blocks_pruned", through=self.store.pruned)

    def _stop_before_unknown_rules(self, head: int) -> None:
        """RulesUnknown, logged, when the block after `head` is to be decided by a rules version
        that this release does not carry: the node stops at that height instead of deciding by
        other rules than its peers (ledger/rules/block_context.py)."""
        try:
            rules.known_rules_at(self.store, head + 1)
        except rules.RulesUnknown as unknown:
            log.error("rules_upgrade_needed", version=unknown.version,
                      from_height=unknown.height, head=head, release=__version__,
                      detail=str(unknown))
            raise

    def _libp2p(self, identity: Identity, classify: Classify) -> Transport:
        """The node's libp2p host, with the connection budget of its config."""
        p2p = self.config.p2p
        return P2P(
            identity, limits=Limits(
                handshakes_max=p2p.handshakes_max, handshakes_per_ip_max=p2p.handshakes_per_ip_max,
                handshake_timeout_ms=p2p.handshake_timeout_ms, wallets_max=p2p.peers_max,
                wallets_per_ip_max=p2p.peers_per_ip_max, wallets_per_key_max=p2p.peers_per_key_max,
                idle_timeout_ms=p2p.idle_timeout_ms),
            classify=classify, known_hosts=known_hosts((*p2p.peers, *p2p.observers)),
            count_refused=self._count_refused_connection, count_dial=self._count_dial)

    @property
    def syncing(self) -> bool:
        """Whether block sync is catching this node up now."""
        return self.driver.syncing

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        limit_malloc_arenas()
        self.open(state_sync=True)
        try:
            if self.config.metrics.enabled:
                self.metrics.serve(self.config.metrics.listen,
                                   {"/healthz": self._healthz, "/readyz": self._readyz})
            with counting_libp2p_warnings(self._count_rejected):
                await self._serve(task_status)
        finally:
            self.metrics.close()
            self.store.close()

    async def _serve(self, task_status: Any) -> None:
        """Every task of the node, in one nursery, until it is cancelled."""
        async with self.p2p.running(list(self.config.p2p.listen)), \
                trio.open_nursery() as nursery:
            self._nursery = nursery
            await self._state_sync_if_new()
            self.p2p.set_handler(SYNC_PROTOCOL, self._serve_sync, self._allow_spoken,
                                 SYNC_FRAME_BYTES_MAX)
            self.p2p.set_handler(STATESYNC_PROTOCOL, self._serve_statesync, self._allow_spoken,
                                 STATESYNC_FRAME_BYTES_MAX)
            self.p2p.set_handler(BLOB_PROTOCOL, self.blobs.serve, self._allow_spoken,
                                 BLOB_FRAME_BYTES_MAX)
            # Any peer may speak the client protocol: what it may see is decided per request.
            self.p2p.set_handler(CLIENT_PROTOCOL, self.client.serve, lambda _peer: True,
                                 CLIENT_FRAME_BYTES_MAX, busy=self.client.busy)
            nursery.start_soon(self._sample_resources)
            nursery.start_soon(self._beat)
            nursery.start_soon(self.blobs.run)
            nursery.start_soon(self.gossip.run)
            await nursery.start(serve_admin, self.home / self.config.admin.socket,
                                self.admin_methods())
            nursery.start_soon(self.driver.run_timers)
            nursery.start_soon(self.driver.flush_txs)
            nursery.start_soon(self.driver.drive, nursery)
            nursery.start_soon(self.driver.sync_on_start)
            nursery.start_soon(self.restore_hold.run, self.p2p, self.identity.public_key,
                               self.gossip.connected, self.driver.hold_signing)
            log.info("node_started", node=self.config.node.name, version=__version__,
                     height=self.store.head.height, peer_id=self.p2p.peer_id,
                     listen=self.p2p.listen_addresses())
            task_status.started()

    async def _state_sync_if_new(self) -> None:
        """A node whose store is empty takes its peers' newest snapshot, if one is offered
        (net/statesync.py), unless its config says to replay (`init --replay`). The store is
        closed meanwhile (the node's tasks start after), and opened again on the new one."""
        store = self.store
        if not self._wants_state_sync():
            return
        self._authorities_next()  # the peers' kinds, read once before the store closes
        path = store.path
        store.close()
        try:
            taken = await take_snapshot(self.p2p, dict(self.peers), self.genesis, path,
                                        time.monotonic)
        except StateSyncFailed as failed:
            log.error("statesync_failed", error=str(failed)[:300],
                      detail="replaying from the genesis instead, which needs a peer that holds "
                             "every block body (an archive node); restart the node to try state "
                             "sync again")
            taken = None
        self.store = ChainStore.open(path, self.genesis)
        head = self.store.head.height
        if taken is not None and self.identity.public_key in rules.authorities(self.store,
                                                                               head + 1):
            # A hospital's node rebuilt from a snapshot: its key may have signed above it.
            self.store.write_guard(RESTORED_GUARD, RestoreMark(
                head, self.clock.now_ms(), None).encode())
        self._allowed_at = -1
        self._build()

    async def _serve_statesync(self, peer: bytes, stream: Any) -> None:
        await serve_statesync(self.store, peer, stream, self._count_rejected)

    def start_background(self, task: Callable[..., Awaitable[None]], *args: Any) -> None:
        """Run `task(*args)` in the node's nursery: a job that outlives the request that
        started it (a backup)."""
        self._nursery.start_soon(task, *args)

    # --- health (node/health.py) ------------------------------------------------------------

    def readiness(self) -> Readiness:
        head = self.store.head
        return readiness(
            authorities=rules.authorities(self.store, head.height + 1),
            own_key=self.identity.public_key, connected=self.gossip.connected(),
            syncing=self.driver.syncing, head_time_ms=rules.chain_meta(self.store).time_ms,
            now_ms=self.clock.now_ms(),
            heartbeat_ms=self.genesis.params.empty_block_interval_ms)

    async def _beat(self) -> None:
        """Stamp, every second, that the loop runs and whether the node is ready."""
        while True:
            self.probes.beat(self.readiness())
            await trio.sleep(BEAT_INTERVAL_S)

    def _healthz(self) -> tuple[int, dict[str, Any]]:
        alive, detail = self.probes.alive()
        return (200 if alive else 503), {"alive": alive, "detail": detail,
                                         "version": __version__}

    def _readyz(self) -> tuple[int, dict[str, Any]]:
        ready, state = self.probes.ready()
        return (200 if ready else 503), state

    def _count_signers(self, block: Block) -> None:
        """Signer liveness: what each authority of the block's height missed in deciding it."""
        self.metrics.last_block_time.set(block.header.time_ms / 1000)
        certificate = self.store.certificate(block.height)
        if certificate is None:
            return
        names = queries.authority_names(self.store, block.height)
        for key, what in self.liveness.block_committed(
                block, certificate, rules.authorities(self.store, block.height)):
            counter = self.metrics.missed_proposals if what == "proposal" \
                else self.metrics.missed_precommits
            counter.labels(names.get(key, key.hex()[:16])).inc()

    # --- erasure ---------------------------------------------------------------------------

    def _purge_stated(self, record_id: bytes) -> bool:
        """Whether this node's purge of an erased record is on chain, or not this node's to
        state (it is no authority, or the rules in force have no `record.purged`)."""
        store = self.store
        own = self.identity.public_key
        head = store.head.height
        if rules.rules_at(store, head + 1) < 3 or own not in rules.authorities(store, head + 1):
            return True
        purges = queries.purges(store, record_id)
        if purges is None:
            return False
        ours = {own} | former_keys(store, own)  # stated under a key this node rotated away
        return any(purge.authority in ours for purge in purges.purges)

    def _state_purge(self, record_id: bytes) -> bool:
        """The ciphertext of an erased record has left this node's files: say so on chain.
        False (try again later) while this node already has PURGE_STATEMENTS_PENDING_MAX of its
        own transactions waiting, so that its access.logs always find room, or when the mempool
        refuses it now."""
        if self._purge_stated(record_id):
            return True
        own = self.identity.public_key
        if self.mempool.pending_of(own) >= PURGE_STATEMENTS_PENDING_MAX:
            return False
        try:
            self.submitter.submit_own(lambda nonce: RecordPurged(
                signer=own, nonce=nonce, record_id=record_id))
        except TxRefused as refused:
            log.warning("purge_statement_refused", code=refused.code)
            return False
        return True

    def _rules_came_in(self, block: Block) -> None:
        """A commit hook: when the block makes `record.purged` part of the rules in force, the
        erasures before it are stated too."""
        if rules.rules_at(self.store, block.height) < 3 <= rules.rules_at(
                self.store, block.height + 1):
            self.blobs.queue_unstated()

    # --- whom to dial (rules version 4: ledger/rules/peers.py) --------------------------------

    def refresh_peers(self) -> None:
        """The peers to dial after the head: the seeds, and the authorities of the next two
        heights (and, for an authority, the observers) at their announced addresses; one added
        by hand (`peer_add`) at that address. Gossip gets a link to each and only to them."""
        store, own = self.store, self.identity.public_key
        height = store.head.height
        authorities = self._authorities_next()
        self.chain_observers = frozenset(peers.observers(store, height))
        wanted = set(authorities | (self.chain_observers if own in authorities else frozenset()))
        wanted.discard(own)
        dial = follow_rotations(store, self.seeds)  # seeds under their keys of now
        dial.pop(own, None)
        for key in wanted:
            if key in self.manual_peers:
                dial[key] = self.manual_peers[key]
                continue
            announced = peers.announced(store, key)
            if announced is not None and self._may_dial(announced.addresses[0]):
                dial[key] = f"{announced.addresses[0]}/p2p/{crypto.peer_id(key)}"
        for key, address in self.manual_peers.items():
            dial.setdefault(key, address)
        if dial != self.peers:
            self.peers.clear()
            self.peers.update(dial)
        self.gossip.set_links(dial)

    def _may_dial(self, address: str) -> bool:
        """Whether to dial an address a node announced: not one on this machine's loopback or
        a link-local one (a cloud's metadata service), which a faulty authority could name to
        make every node knock on it, unless `[p2p].dial_local` (a network on one machine). A
        DNS name is dialled as it resolves: its owner answers for it."""
        _, kind, host, _, _ = address.split("/")
        if self.config.p2p.dial_local or kind not in ("ip4", "ip6"):
            return True
        parsed = ipaddress.ip_address(host)
        mapped = getattr(parsed, "ipv4_mapped", None) or parsed
        return not (mapped.is_loopback or mapped.is_link_local)

    def _peers_after_block(self, _block: Block) -> None:
        self.refresh_peers()
        self._announce_if_due()

    def announce_addresses(self) -> tuple[str, ...]:
        """What this node announces: `[p2p].announce`, else its listen addresses that others
        can dial (not 0.0.0.0 or ::), each without /p2p/."""
        candidates = self.config.p2p.announce or self.config.p2p.listen
        return tuple(a for a in candidates
                     if peer_address_problem(a) is None)[:limits.PEER_ADDRESSES_MAX]

    def _announce_if_due(self) -> None:
        """Announce this node's addresses on chain when they differ from what the chain holds:
        an authority or an observer that an authority vouched for (rules version 4 on)."""
        store, own = self.store, self.identity.public_key
        height = store.head.height
        if rules.rules_at(store, height + 1) < ROUNDS_FROM or self.restore_hold.active:
            return
        if own not in self._authorities_next() and own not in self.chain_observers:
            return
        addresses = self.announce_addresses()
        current = peers.announced(store, own)
        if not addresses or (current is not None and current.addresses == addresses):
            return
        if current is not None and height + 1 - current.height < peers.ANNOUNCE_INTERVAL_BLOCKS:
            return
        if self._announced is not None and self.submitter.is_waiting(self._announced):
            return
        try:
            tx = self.submitter.submit_own(lambda nonce: NodeAnnounce(
                signer=own, nonce=nonce, addresses=addresses))
        except TxRefused as refused:
            log.warning("announce_refused", code=refused.code)
            return
        self._announced = tx.hash
        log.info("addresses_announced", addresses=list(addresses))

    # --- block sync -------------------------------------------------------------------------

    def _authority_addresses(self) -> dict[bytes, str]:
        """Where each configured authority listens (under its key of now), this node's own
        first listen address too."""
        addresses = dict(self.peers)  # (refresh_peers keeps them under their keys of now)
        own = self.p2p.listen_addresses()
        if own:
            addresses[self.identity.public_key] = own[0].replace("/ip4/0.0.0.0/",
                                                                 "/ip4/127.0.0.1/")
        return addresses

    def _blob_peers(self) -> list[bytes]:
        """Authorities to ask for a missing ciphertext: connected ones first."""
        connected = [peer for peer in self.gossip.connected() if self._allow(peer)]
        return connected + [peer for peer in self.peers
                            if peer not in connected and peer not in self.gossip.refused]

    async def _serve_sync(self, peer: bytes, stream: Any) -> None:
        await serve_sync(self.store, peer, stream, self._count_rejected)

    # --- gossip in --------------------------------------------------------------------------

    def _authorities_next(self) -> frozenset[bytes]:
        """The authorities of the next two heights after the head, read once per head (the
        peers allowed, dialled and announcing all start from them)."""
        height = self.store.head.height
        if height != self._allowed_at:
            self._allowed = frozenset(rules.authorities(self.store, height + 1)) | frozenset(
                rules.authorities(self.store, height + 2))
            self._allowed_at = height
        return self._allowed

    def _allow(self, peer: bytes) -> bool:
        return peer in self._authorities_next() or peer in self.observers or \
            peer in self.chain_observers

    def _is_authority(self, peer: bytes) -> bool:
        """An authority of the next two heights, or an observer vouched for on chain (`_allow`
        without the configured observers): gossip opens a link back to one that dials in without
        an address we dial (a rotated key, an observer behind a NAT)."""
        return self._allow(peer) and peer not in self.observers

    def _allow_spoken(self, peer: bytes) -> bool:
        """An allowed peer whose protocol this node speaks (its Hello was not refused)."""
        return self._allow(peer) and peer not in self.gossip.refused

    def _classify(self, peer: bytes) -> Kind:
        """A connected peer's kind, for the connection budget and the metrics."""
        if peer in self.observers or peer in self.chain_observers:
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
        by_kind = self.p2p.connection_counts()
        return {"by_kind": by_kind, "handshaking": by_kind[str(Kind.STRANGER)],
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

    def _count_rejected(self, reason: str) -> None:
        self.metrics.rejected_messages.labels(reason).inc()

    # --- admin ------------------------------------------------------------------------------

    def admin_methods(self) -> dict[str, rpc.Method]:
        return operator_methods(self)
