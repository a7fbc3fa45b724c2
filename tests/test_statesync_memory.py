"""State sync between real LevelDB stores over memory streams (tests/memory_net.py): what one
lying peer can do to a node that takes a snapshot (net/statesync.py `take_snapshot`). Each liar
here holds the real chain; what it lies about is what it offers and what it serves. A lie costs
the new node a refusal and a retry elsewhere, never the state sync."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from msgspec.structs import replace

from healthnode.crypto import Identity
from healthnode.ledger import smt, snapshot
from healthnode.net import statesync
from healthnode.net.framing import PEER_FAULTS
from healthnode.net.p2p import Kind
from healthnode.net.sync import serve_sync
from healthnode.node import restore
from healthnode.protocol.statesync import (
    STATESYNC_FRAME_BYTES_MAX,
    STATESYNC_PROTOCOL,
    SnapshotInfo,
    SnapshotList,
    SnapshotManifest,
    StateSyncRequest,
    decode_statesync_request,
)
from healthnode.protocol.wire import SYNC_FRAME_BYTES_MAX, SYNC_PROTOCOL
from healthnode.store.leveldb import ChainStore
from tests.memory_net import MemoryHost, MemoryNetwork
from tests.test_snapshot import build, fill

Lie = Callable[[StateSyncRequest, ChainStore], Awaitable[bytes | None]]
HONEST_AT = 8  # the height of the honest peers' snapshot
WITHHELD = b""  # what a lie returns to close the stream without an answer


def _ignore(_: str) -> None:
    return None


class Peer:
    """A node that serves state sync and block sync from its store; `lie` (when set) answers a
    request in its place (None: the honest answer; WITHHELD: none)."""

    def __init__(self, network: MemoryNetwork, store: ChainStore, label: str,
                 lie: Lie | None = None, serves_blocks: bool = True) -> None:
        self.store = store
        self.lie = lie
        self.serves_blocks = serves_blocks
        self.identity = Identity.from_seed(label.encode().ljust(32, b"-"))
        self.host: MemoryHost = network.transport(self.identity, lambda _peer: Kind.AUTHORITY)
        self.host.set_handler(STATESYNC_PROTOCOL, self._statesync, lambda _peer: True,
                              STATESYNC_FRAME_BYTES_MAX)
        self.host.set_handler(SYNC_PROTOCOL, self._sync, lambda _peer: True,
                              SYNC_FRAME_BYTES_MAX)
        self.asked: list[tuple[str, int, int]] = []

    @property
    def address(self) -> str:
        return f"/memory/p2p/{self.host.peer_id}"

    async def _statesync(self, peer: bytes, stream: Any) -> None:
        if self.lie is None:
            await statesync.serve_statesync(self.store, peer, stream, _ignore)
            return
        raw = await stream.receive()
        request = decode_statesync_request(raw)
        self.asked.append((request.what, request.height, request.index))
        answer = await self.lie(request, self.store)
        if answer is None:
            answer = await statesync._answer(self.store, request)
        if answer:
            await stream.send(answer)
        await stream.close()

    async def _sync(self, peer: bytes, stream: Any) -> None:
        if not self.serves_blocks:
            self.asked.append(("block", 0, 0))
            await stream.close()
            return
        await serve_sync(self.store, peer, stream, _ignore)


def _store(tmp_path: Path, name: str, world: Any, snapshot_at: int) -> ChainStore:
    store = ChainStore.open(tmp_path / name / "chain", world.genesis)
    fill(store, world, snapshot_at)
    assert store.write_snapshot(store.pin(), keep=2) is not None
    fill(store, world, world.height)
    return store


async def _take(tmp_path: Path, network: MemoryNetwork, world: Any,
                peers: list[Peer]) -> statesync.Taken | None:
    joiner = network.transport(Identity.from_seed(b"j" * 32), lambda _peer: Kind.AUTHORITY)
    async with trio.open_nursery() as nursery:
        for peer in peers:
            await nursery.start(_run, peer.host)
        async with joiner.running(["/memory"]):
            taken = await statesync.take_snapshot(
                joiner, {peer.identity.public_key: peer.address for peer in peers},
                world.genesis, tmp_path / "new" / "chain", trio.current_time)
        nursery.cancel_scope.cancel()
    return taken


async def _run(host: MemoryHost, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    async with host.running(["/memory"]):
        task_status.started()
        await trio.sleep_forever()


@pytest.fixture
def world() -> Any:
    world = build(records=40)
    assert world.height > HONEST_AT + 2
    return world


def _installed(tmp_path: Path, world: Any, height: int) -> None:
    with ChainStore.open(tmp_path / "new" / "chain", world.genesis) as taken:
        assert taken.head.height == taken.base == height


@pytest.mark.parametrize("withheld", ["chunk", "block"])
async def test_a_liar_that_offers_a_newer_real_snapshot_and_withholds_a_part_costs_the_offer(
        tmp_path: Path, world: Any, withheld: str) -> None:
    """The liar's snapshot is real (its manifest proves), newer than the honest peers' and
    held by it alone; it never serves chunk 0, or the block of the snapshot's height. The new
    node takes the honest peers' older snapshot instead of failing (or, worse, of raising an
    ExceptionGroup out of the node's run)."""
    async def withhold(request: StateSyncRequest, store: ChainStore) -> bytes | None:
        if withheld == "chunk" and request.what == "chunk" and request.index == 0:
            return WITHHELD
        return None

    network = MemoryNetwork()
    liar = Peer(network, _store(tmp_path, "liar", world, world.height), "liar", withhold,
                serves_blocks=withheld != "block")
    honest = [Peer(network, _store(tmp_path, f"h{i}", world, HONEST_AT), f"honest-{i}")
              for i in range(2)]
    taken = await _take(tmp_path, network, world, [liar, *honest])
    assert taken is not None and taken.height == HONEST_AT
    assert ("chunk", world.height, 0) in liar.asked or ("block", 0, 0) in liar.asked
    _installed(tmp_path, world, HONEST_AT)


async def test_a_liar_that_offers_many_made_up_snapshots_does_not_use_up_the_offers_tried(
        tmp_path: Path, world: Any) -> None:
    """SNAPSHOTS_LISTED_MAX made-up heights, all newer than the real one: once its first
    manifest is refused, its other offers are passed over, and the honest one is taken."""
    async def make_up(request: StateSyncRequest, store: ChainStore) -> bytes | None:
        if request.what == "snapshots":
            return SnapshotList(tuple(SnapshotInfo(1000 + i, 1) for i in range(16))).encode()
        return None

    network = MemoryNetwork()
    liar = Peer(network, _store(tmp_path, "liar", world, HONEST_AT), "liar", make_up)
    honest = Peer(network, _store(tmp_path, "h0", world, HONEST_AT), "honest-0")
    taken = await _take(tmp_path, network, world, [liar, honest])
    assert taken is not None and taken.height == HONEST_AT
    assert [what for what, _, _ in liar.asked if what != "snapshots"] == ["chain"]
    _installed(tmp_path, world, HONEST_AT)


def _forged_manifest(manifest: SnapshotManifest) -> SnapshotManifest | None:
    """The manifest with a chunk of exactly one key, beside other non-empty chunks, named by its
    leaf's hash as if it were an internal node: the roots still fold to the certified root (the
    parent hashes its children's hashes, whatever their kind), but no chunk rebuilds to it."""
    roots = list(manifest.roots)
    for index, root in enumerate(roots):
        group = range(index - index % 16, index - index % 16 + 16)
        if len(root) == 64 and any(roots[other] for other in group if other != index):
            roots[index] = smt.leaf_hash(root[:32], root[32:])
            return replace(manifest, roots=tuple(roots))
    return None


async def test_a_manifest_that_folds_but_that_no_chunk_matches_is_taken_from_another_holder(
        tmp_path: Path, world: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The liar holds the same snapshot as the honest peers and is asked for the manifest first;
    its manifest proves, but one of its roots is a leaf's hash called an internal node's. Every
    holder's chunk fails against it: the new node blames the manifest, not the chunk's holders,
    and takes an honest holder's manifest."""
    async def forge(request: StateSyncRequest, store: ChainStore) -> bytes | None:
        if request.what == "manifest":
            manifest = store.snapshot_manifest(request.height)
            assert manifest is not None
            forged = _forged_manifest(manifest)
            assert forged is not None
            return forged.encode()
        return None

    async def offer_late(request: StateSyncRequest, store: ChainStore) -> bytes | None:
        if request.what == "snapshots":
            await trio.sleep(0.2)  # the liar's offer comes first: it is asked first
        return None

    monkeypatch.setattr(snapshot, "CHUNK_BYTES_TARGET", 1024)  # depth 2: chunks of a key or two
    network = MemoryNetwork()
    liar = Peer(network, _store(tmp_path, "liar", world, HONEST_AT), "liar", forge)
    honest = [Peer(network, _store(tmp_path, f"h{i}", world, HONEST_AT), f"honest-{i}",
                   offer_late) for i in range(2)]
    manifest = honest[0].store.snapshot_manifest(HONEST_AT)
    assert manifest is not None
    forged = _forged_manifest(manifest)
    assert forged is not None and forged.depth >= 2
    trusted = snapshot.follow(world.genesis, statesync.ChainProof(
        HONEST_AT, tuple(honest[0].store.set_changes(HONEST_AT - 1))), forged)
    snapshot.check_manifest(forged, trusted.state_root)  # it folds: only chunks can tell
    taken = await _take(tmp_path, network, world, [liar, *honest])
    assert taken is not None and taken.height == HONEST_AT
    assert ("manifest", HONEST_AT, 0) in liar.asked
    _installed(tmp_path, world, HONEST_AT)


async def test_a_peer_with_more_set_changes_than_a_chain_proof_holds_never_looks_lower(
        tmp_path: Path, world: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The restore hold learns a peer's head from which heights it answers the chain request
    for (node/restore.py `_holds`). A peer whose chain to a height has more set changes than a
    ChainProof holds has no proof to send for it, though it has finalized that height: a
    closed stream without an answer (NoAnswer) read as "not held" made the network's height
    look lower than it is, and a restored authority would sign early. It must be a failed
    probe (asked again), never a lower head."""
    monkeypatch.setattr(statesync, "CHAIN_HEADS_MAX", 0)  # the one set change is too many
    network = MemoryNetwork()
    peer = Peer(network, _store(tmp_path, "h0", world, HONEST_AT), "honest-0")
    asker = network.transport(Identity.from_seed(b"r" * 32), lambda _peer: Kind.AUTHORITY)
    head = peer.store.head.height
    async with trio.open_nursery() as nursery:
        await nursery.start(_run, peer.host)
        async with asker.running(["/memory"]):
            await asker.dial(peer.address)
            try:
                learned = await restore.peer_head(asker, peer.identity.public_key, 0)
            except PEER_FAULTS:
                learned = None
        nursery.cancel_scope.cancel()
    assert learned is None or learned >= head
