"""A peer that lies to a node taking a snapshot, for tests only: a libp2p host that answers the
state sync protocol by asking a real node (as an observer the network vouched for), and corrupts
what it hands on.

With `corrupt`, every chunk it serves has its first pair's value changed by one bit, and its
manifest names, for the first chunk that holds keys, the root that its corrupted chunk rebuilds
to: a chunk hash that matches the corruption; the certified state root is what is left to
catch both. With `made_up_offer`, it offers, besides the real node's snapshots, one of a height
that nobody holds, newer than all. It runs its own trio loop in a thread, beside the test's
real node processes."""

from __future__ import annotations

from typing import Any

import trio
from msgspec.structs import replace

from healthnode import crypto
from healthnode.crypto import Identity, digest
from healthnode.ledger import snapshot
from healthnode.net.addresses import peer_public_key
from healthnode.net.p2p import P2P
from healthnode.net.statesync import NoAnswer, ask
from healthnode.protocol.statesync import (
    STATESYNC_FRAME_BYTES_MAX,
    STATESYNC_PROTOCOL,
    SnapshotChunk,
    SnapshotList,
    SnapshotManifest,
    StatePair,
    StateSyncRequest,
    decode_statesync_request,
)
from tests.liar import ThreadedHost

MADE_UP_AHEAD = 1000  # the liar also offers a snapshot this far above the newest real one


def corrupted(chunk: SnapshotChunk) -> SnapshotChunk:
    first, *rest = chunk.pairs
    flipped = StatePair(first.key, first.value[:-1] + bytes([first.value[-1] ^ 1]))
    return replace(chunk, pairs=(flipped, *rest))


class StateSyncLiar(ThreadedHost):
    def __init__(self, real_address: str, port: int, *, corrupt: bool = True,
                 made_up_offer: bool = False) -> None:
        self.corrupt = corrupt
        self.made_up_offer = made_up_offer
        self.real_address = real_address
        self.real_key = peer_public_key(real_address)
        self.identity = Identity.generate()
        self.listen = f"/ip4/127.0.0.1/tcp/{port}"
        self.address = f"{self.listen}/p2p/{crypto.peer_id(self.identity.public_key)}"
        self.served: list[tuple[str, int]] = []  # (what, chunk index) it answered, with a lie
        super().__init__()

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self.p2p = P2P(self.identity)
        with trio.CancelScope() as scope:
            self._scope = scope
            async with self.p2p.running([self.listen]):
                self.p2p.set_handler(STATESYNC_PROTOCOL, self._serve, lambda _peer: True,
                                     STATESYNC_FRAME_BYTES_MAX)
                self._ready.set()
                await trio.sleep_forever()

    async def _ask(self, request: StateSyncRequest) -> Any:
        await self.p2p.dial(self.real_address)
        return await ask(self.p2p, self.real_key, request)

    async def _serve(self, _peer: bytes, stream: Any) -> None:
        raw = await stream.receive()
        if raw is None:
            return
        request = decode_statesync_request(raw)
        try:
            answer = await self._ask(request)
        except NoAnswer:  # a height it made up: the real node has nothing for it
            self.served.append((request.what, request.height))
            await stream.close()
            return
        if isinstance(answer, SnapshotList) and answer.snapshots and self.made_up_offer:
            newest = answer.snapshots[0]
            answer = replace(answer, snapshots=(
                replace(newest, height=newest.height + MADE_UP_AHEAD), *answer.snapshots))
        elif isinstance(answer, SnapshotChunk) and self.corrupt:
            answer = corrupted(answer)
            self.served.append(("chunk", request.index))
        elif isinstance(answer, SnapshotManifest) and self.corrupt:
            answer = await self._lying_manifest(request, answer)
            self.served.append(("manifest", 0))
        await stream.send(answer.encode())
        await stream.close()

    async def _lying_manifest(self, request: StateSyncRequest,
                              manifest: SnapshotManifest) -> SnapshotManifest:
        """The manifest with the root of its first chunk that holds keys replaced by the root
        that the corrupted chunk rebuilds to."""
        index = next(i for i, root in enumerate(manifest.roots) if root)
        chunk = corrupted(await self._ask(replace(request, what="chunk", index=index)))
        hashed = [(digest(pair.key), digest(pair.value)) for pair in chunk.pairs]
        roots = list(manifest.roots)
        roots[index] = snapshot.subtree_root(hashed, manifest.depth)
        return replace(manifest, roots=tuple(roots))
