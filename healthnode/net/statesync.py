"""State sync (`/healthnode/statesync/1`): a new node takes a recent snapshot of the state from
its peers instead of replaying every block from the genesis (docs/network.md, "State sync").

The server side answers one `StateSyncRequest` per stream from its store's snapshots
(store/leveldb.py): the snapshots it holds, the certified heads where the authority set changed,
a manifest, or one chunk, built in a worker thread (it reads up to a few MiB).

The client side (`take_snapshot`) is a node whose store is empty:
1. it asks every peer it can reach which snapshots it holds, and tries the newest snapshot that
   any of them offers, then older ones (a height that no holder proves is passed over);
2. from one holder at a time, it takes the chain to that height and the manifest, and checks
   them from its genesis (ledger/snapshot.py `follow`, `check_manifest`): the light client's
   rules, then the manifest's roots folded up to the certified state root. A holder whose
   answer does not hold is dropped;
3. it fetches the chunks from the holders in turn, a few at once, checks each against the
   manifest (`check_chunk`) and writes it (store/leveldb.py `SnapshotInstall`). A chunk that does
   not prove, or does not come, is asked of the next holder: one lying peer costs a retry;
4. it fetches the block of the snapshot's height (its header is the certified one) and puts the
   new store in place. The node then block-syncs from there, as any node that was down.

A chunk or block that no holder serves ends that try, not the state sync: what was written is
deleted, the holder whose manifest was taken is asked for no other (its manifest may name a
root that folds but that no chunk matches, a leaf's hash called an internal node's; or it was
the only holder and withholds), and another holder's manifest, else the next offer, is tried.

No block body below the snapshot's height is fetched. Nothing a peer says is written before it
is checked against the genesis; a peer whose answers fail is logged by its key with the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import trio

from healthnode import logs
from healthnode.codec import CodecError
from healthnode.ledger import light, snapshot
from healthnode.net.framing import PEER_FAULTS, FramedStream, FrameError, StreamBroken, Transport
from healthnode.net.sync import fetch_blocks
from healthnode.protocol.block import (
    Block,
    CommitCertificate,
    VerificationError,
    verify_block_shape,
)
from healthnode.protocol.genesis import Genesis
from healthnode.protocol.statesync import (
    CHAIN_HEADS_MAX,
    SNAPSHOTS_LISTED_MAX,
    STATESYNC_FRAME_BYTES_MAX,
    STATESYNC_PROTOCOL,
    ChainProof,
    SnapshotChunk,
    SnapshotInfo,
    SnapshotList,
    SnapshotManifest,
    StateSyncAnswer,
    StateSyncRequest,
    decode_statesync_answer,
    decode_statesync_request,
)
from healthnode.store.leveldb import ChainStore, SnapshotInstall

log = logs.get_logger("healthnode.statesync")

REQUEST_TIMEOUT_S: Final = 30  # one answer: a chunk of up to 16 MiB from a busy peer
OFFER_WAIT_S: Final = 10  # how long a new node waits for its peers to say what they hold
CHUNKS_AT_ONCE: Final = 4
OFFERS_TRIED_MAX: Final = 8  # distinct snapshots tried, newest first, before giving up
SERVE_THREADS: Final = 2  # chunks built at once by a serving node


class NoAnswer(StreamBroken):
    """The peer closed the stream without an answer: it has none (no such snapshot or chunk,
    or a height above its head)."""


class StateSyncFailed(Exception):
    """No peer served a snapshot that proves; the message says what went wrong last."""


# --- serving ----------------------------------------------------------------------------------


_serving = trio.CapacityLimiter(SERVE_THREADS)


async def serve_statesync(store: ChainStore, peer: bytes, stream: FramedStream,
                          count_rejected: Callable[[str], None]) -> None:
    try:
        with trio.fail_after(REQUEST_TIMEOUT_S):
            raw = await stream.receive()
        if raw is None:
            return
        request = decode_statesync_request(raw)
        answer = await _answer(store, request)
        if answer is not None:
            with trio.fail_after(REQUEST_TIMEOUT_S):
                await stream.send(answer)
        await stream.close()
    except (CodecError, FrameError) as error:
        count_rejected("malformed_statesync_request")
        log.info("statesync_request_dropped", peer=peer.hex()[:16], error=str(error)[:120])
        await stream.reset()
    except (StreamBroken, trio.TooSlowError) as error:
        log.debug("statesync_serve_ended", peer=peer.hex()[:16], error=str(error)[:120])
        with trio.move_on_after(1):
            await stream.reset()


async def _answer(store: ChainStore, request: StateSyncRequest) -> bytes | None:
    """The encoded answer to `request`, or None when this node has none (the stream then
    closes without one)."""
    if request.what == "snapshots":
        infos = []
        for height in store.snapshots()[:SNAPSHOTS_LISTED_MAX]:
            manifest = store.snapshot_manifest(height)
            if manifest is not None:
                infos.append(SnapshotInfo(height, manifest.depth))
        return SnapshotList(tuple(infos)).encode()
    if request.what == "chain":
        # Answered for exactly the heights up to the head: whether a peer answers is how a
        # restored node learns its head (node/restore.py `_holds`), so a chain longer than one
        # answer holds is cut, never left unanswered (which would make this head look lower
        # and let a restored authority sign early). A cut chain does not prove: the joining
        # node's `follow` refuses it at the first head of a set it was not given.
        if not 0 < request.height <= store.head.height:
            return None
        heads = store.set_changes(request.height - 1)[:CHAIN_HEADS_MAX]
        encoded = ChainProof(request.height, tuple(heads)).encode()
        while len(encoded) > STATESYNC_FRAME_BYTES_MAX:  # a payload bound (net/framing.py)
            heads = heads[:len(heads) // 2]
            encoded = ChainProof(request.height, tuple(heads)).encode()
        return encoded
    manifest = store.snapshot_manifest(request.height)
    if manifest is None:
        return None
    if request.what == "manifest":
        return manifest.encode()
    if request.index >= 16 ** manifest.depth:
        return None
    return await trio.to_thread.run_sync(store.snapshot_chunk, manifest, request.index,
                                         limiter=_serving)


# --- taking a snapshot --------------------------------------------------------------------------


async def ask(p2p: Transport, peer: bytes, request: StateSyncRequest) -> StateSyncAnswer:
    """One request to `peer` and its answer; a PEER_FAULTS error when there is none."""
    stream = await p2p.open_stream(peer, STATESYNC_PROTOCOL, STATESYNC_FRAME_BYTES_MAX)
    try:
        await stream.send(request.encode())
        with trio.fail_after(REQUEST_TIMEOUT_S):
            raw = await stream.receive()
        if raw is None:
            raise NoAnswer(f"the peer has no answer to {request.what} {request.height}")
        return decode_statesync_answer(raw)
    finally:
        with trio.move_on_after(1):
            await stream.reset()


@dataclass
class Taken:
    """What a state sync did: the snapshot's height, its chunks and pairs, and each peer's
    refusals (by peer key prefix: why its answers were not taken)."""

    height: int
    chunks: int
    pairs: int
    holders: int
    seconds: float
    refused: dict[str, list[str]] = field(default_factory=dict)


class _Holders:
    """The peers that offer the snapshot, in turn; one whose answer did not prove is asked
    again only when no other is left."""

    def __init__(self, peers: list[bytes], failed: dict[bytes, int]) -> None:
        self.peers = peers
        self.failed = failed

    def order(self, start: int) -> list[bytes]:
        turn = self.peers[start % len(self.peers):] + self.peers[:start % len(self.peers)]
        return sorted(turn, key=lambda peer: self.failed.get(peer, 0))


async def _offers(p2p: Transport, peers: dict[bytes, str]) -> dict[bytes, list[SnapshotInfo]]:
    offers: dict[bytes, list[SnapshotInfo]] = {}

    async def one(peer: bytes, address: str) -> None:
        try:
            if await p2p.dial(address) != peer:
                raise StreamBroken("the peer at that address has another key")
            answer = await ask(p2p, peer, StateSyncRequest("snapshots"))
        except PEER_FAULTS as error:
            log.info("statesync_no_offer", peer=peer.hex()[:16], error=str(error)[:120])
            return
        if isinstance(answer, SnapshotList) and answer.snapshots:
            offers[peer] = list(answer.snapshots)

    with trio.move_on_after(OFFER_WAIT_S):
        async with trio.open_nursery() as nursery:
            for peer, address in peers.items():
                nursery.start_soon(one, peer, address)
    return offers


async def take_snapshot(p2p: Transport, peers: dict[bytes, str], genesis: Genesis, path: Path,
                        now_s: Callable[[], float]) -> Taken | None:
    """Fill a new store at `path` from the newest snapshot that `peers` (public key -> address
    with /p2p/) offer and that proves
    from `genesis` (module docstring). None when no peer offers one (the node then replays from
    the genesis); StateSyncFailed when none that offers it serves one that proves."""
    started = now_s()
    offers = await _offers(p2p, peers)
    if not offers:
        return None
    refused: dict[str, list[str]] = {}
    failed: dict[bytes, int] = {}

    def refuse(peer: bytes, what: str, error: Exception) -> None:
        failed[peer] = failed.get(peer, 0) + 1
        refused.setdefault(peer.hex()[:16], []).append(f"{what}: {str(error)[:160]}")
        log.warning("statesync_answer_refused", peer=peer.hex()[:16], what=what,
                    error=str(error)[:160])

    # The newest offer first, then older ones: a peer that offers a height it cannot prove (a
    # liar's made-up height) costs a refusal, not the state sync. Every node cuts a snapshot
    # of one state alike (ledger/snapshot.py `choose_depth`): the holders of an offer are the
    # peers that offer exactly it. A peer whose manifest was refused, or named a chunk that no
    # holder could serve, is not asked for another (`distrusted`): an offer that only such
    # peers hold is passed over without counting, so that one liar's sixteen made-up offers
    # cost one refusal, not the OFFERS_TRIED_MAX tries.
    candidates = sorted({info for infos in offers.values() for info in infos},
                        key=lambda info: (info.height, info.depth), reverse=True)
    distrusted: set[bytes] = set()
    tried = 0
    for offer in candidates:
        holders = _Holders([peer for peer, infos in offers.items() if offer in infos], failed)
        if all(peer in distrusted for peer in holders.peers):
            continue
        if tried == OFFERS_TRIED_MAX:
            break
        tried += 1
        while (found := await _manifest(p2p, holders, genesis, offer, refuse,
                                        distrusted)) is not None:
            source, manifest, chain, trusted = found
            taken = await _install(p2p, holders, genesis, path, manifest, chain, trusted,
                                   refuse)
            if taken is not None:
                taken.seconds = round(now_s() - started, 3)
                taken.refused = refused
                log.info("statesync_done", height=taken.height, chunks=taken.chunks,
                         pairs=taken.pairs, seconds=taken.seconds,
                         refused=sum(len(r) for r in refused.values()))
                return taken
            # A chunk or the block that no holder served against this manifest: the manifest
            # (a root that folds but that no chunk matches), or a lone holder, lied.
            distrusted.add(source)
    raise StateSyncFailed(f"no peer served a snapshot that proves, of the {tried} offers tried")


class _Unserved(Exception):
    """No holder served a chunk, or the block, that proves against the manifest taken."""


async def _install(p2p: Transport, holders: _Holders, genesis: Genesis, path: Path,
                   manifest: SnapshotManifest, chain: ChainProof, trusted: light.TrustedHead,
                   refuse: Refuse) -> Taken | None:
    """The snapshot of `manifest` fetched and put in place at `path`; None (nothing written)
    when a chunk or the block is served by no holder."""
    height = manifest.head.header.height
    log.info("statesync_started", height=height, chunks=16 ** manifest.depth,
             holders=len(holders.peers), set_changes=len(chain.heads))
    install = SnapshotInstall(path, genesis, manifest)
    try:
        unserved: list[int] = []
        indexes = iter(range(16 ** manifest.depth))
        async with trio.open_nursery() as nursery:
            for _ in range(CHUNKS_AT_ONCE):
                nursery.start_soon(_fetch_chunks, p2p, holders, manifest, indexes, install,
                                   refuse, unserved, nursery.cancel_scope)
        if unserved:
            raise _Unserved(f"no holder served chunk {unserved[0]} that proves")
        block, certificate = await _block(p2p, holders, manifest, trusted, refuse)
        await trio.to_thread.run_sync(install.finish, block, certificate, chain.heads)
    except _Unserved as error:
        install.abandon()
        log.warning("statesync_offer_abandoned", height=height, error=str(error))
        return None
    except BaseException:
        install.abandon()
        raise
    return Taken(height, install.chunks, install.pairs, len(holders.peers), 0.0)


Refuse = Callable[[bytes, str, Exception], None]


async def _manifest(p2p: Transport, holders: _Holders, genesis: Genesis, offer: SnapshotInfo,
                    refuse: Refuse, distrusted: set[bytes]
                    ) -> tuple[bytes, SnapshotManifest, ChainProof, light.TrustedHead] | None:
    """The first manifest of `offer` that proves, from a holder not `distrusted` (a holder
    whose answer does not prove joins them), with that holder; None when none is left."""
    height = offer.height
    for peer in holders.order(0):
        if peer in distrusted:
            continue
        try:
            chain = await ask(p2p, peer, StateSyncRequest("chain", height))
            manifest = await ask(p2p, peer, StateSyncRequest("manifest", height))
            if not isinstance(chain, ChainProof) or not isinstance(manifest, SnapshotManifest):
                raise snapshot.SnapshotError("the peer answered with another message")
            if manifest.depth != offer.depth:
                raise snapshot.SnapshotError(f"a manifest of depth {manifest.depth}, offered "
                                             f"as {offer.depth}")
            trusted = snapshot.follow(genesis, chain, manifest)
            snapshot.check_manifest(manifest, trusted.state_root)
        except (*PEER_FAULTS, CodecError, VerificationError) as error:
            refuse(peer, "manifest", error)
            distrusted.add(peer)
            continue
        return peer, manifest, chain, trusted
    return None


async def _fetch_chunks(p2p: Transport, holders: _Holders, manifest: SnapshotManifest,
                        indexes: Iterator[int], install: SnapshotInstall, refuse: Refuse,
                        unserved: list[int], stop: trio.CancelScope) -> None:
    """Fetch chunks from `indexes` until none is left; a chunk that no holder serves is put in
    `unserved` and `stop` cancelled (not raised: inside a nursery it would come out as an
    ExceptionGroup, which no caller catches)."""
    for index in indexes:
        for peer in holders.order(index):
            try:
                answer = await ask(p2p, peer, StateSyncRequest(
                    "chunk", manifest.head.header.height, index))
                if not isinstance(answer, SnapshotChunk) or answer.index != index:
                    raise snapshot.SnapshotError(f"chunk {index}: the peer answered with "
                                                 f"another message")
                checked = snapshot.check_chunk(manifest, answer)
            except (*PEER_FAULTS, CodecError, VerificationError) as error:
                refuse(peer, f"chunk {index}", error)
                continue
            await trio.to_thread.run_sync(install.add_chunk, checked)
            break
        else:
            unserved.append(index)
            stop.cancel()
            return


async def _block(p2p: Transport, holders: _Holders, manifest: SnapshotManifest,
                 trusted: light.TrustedHead, refuse: Refuse
                 ) -> tuple[Block, CommitCertificate]:
    """The block of the snapshot's height: its header is the certified one, and its body must
    match the header's roots; its certificate, the manifest's (checked by `follow`)."""
    head = manifest.head
    for peer in holders.order(0):
        try:
            async for item in fetch_blocks(p2p, peer, head.header.height, 1):
                if item.block.hash != head.header.hash:
                    raise snapshot.SnapshotError("the block is not the certified one")
                verify_block_shape(item.block, trusted.chain_id)
                return item.block, head.certificate
            raise StreamBroken("the peer served no block")
        except (*PEER_FAULTS, CodecError, VerificationError) as error:
            refuse(peer, "block", error)
    raise _Unserved(f"no holder served block {head.header.height}")
