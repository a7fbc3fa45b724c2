"""Block sync (`/healthnode/sync/1`): a node that is behind fetches finalized blocks, each with
the certificate that finalized it, from a peer.

The server side answers one `SyncRequest` per stream with up to `count` `SyncBlock` frames from
its store, in height order, and closes the stream. The client side yields what it receives after
decoding each frame with the protocol's bound; it checks only that heights run on from the
request. Whether a block and its certificate are genuine is the consensus core's decision
(`BlockFetched`: the certificate must verify against that height's authorities, and the ledger
must accept the block on the node's own state), so a lying peer costs a retry, nothing more.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Final

import trio

from healthnode import logs
from healthnode.codec import CodecError
from healthnode.net.framing import FramedStream, FrameError, P2PError, StreamBroken, Transport
from healthnode.protocol.wire import (
    SYNC_BLOCKS_PER_REQUEST_MAX,
    SYNC_FRAME_BYTES_MAX,
    SYNC_PROTOCOL,
    SyncBlock,
    SyncRequest,
    decode_sync_block,
    decode_sync_request,
)
from healthnode.store.leveldb import ChainStore

log = logs.get_logger("healthnode.sync")

SYNC_REQUEST_TIMEOUT_S: Final = 10  # a peer that serves nothing for this long is skipped


class SyncError(P2PError):
    """A peer's answer was unusable (closed early, malformed, out of order)."""


async def serve_sync(store: ChainStore, peer: bytes, stream: FramedStream,
                     count_rejected: Callable[[str], None]) -> None:
    try:
        with trio.fail_after(SYNC_REQUEST_TIMEOUT_S):
            raw = await stream.receive()
        if raw is None:
            return
        request = decode_sync_request(raw)
        last = min(store.head.height, request.from_height + request.count - 1)
        for height in range(request.from_height, last + 1):
            block, certificate = store.block(height), store.certificate(height)
            if block is None or certificate is None:
                break
            await stream.send(SyncBlock(block, certificate).encode())
        await stream.close()
    except (CodecError, FrameError) as error:
        count_rejected("malformed_sync_request")
        log.info("sync_request_dropped", peer=peer.hex()[:16], error=str(error)[:120])
        await stream.reset()
    except (StreamBroken, trio.TooSlowError) as error:  # the peer went, or never asked
        log.debug("sync_serve_ended", peer=peer.hex()[:16], error=str(error)[:120])
        with trio.move_on_after(1):
            await stream.reset()


async def fetch_blocks(p2p: Transport, peer: bytes, from_height: int,
                       count: int = SYNC_BLOCKS_PER_REQUEST_MAX) -> AsyncIterator[SyncBlock]:
    """Blocks `from_height`.. from `peer` (possibly fewer, possibly none)."""
    stream = await p2p.open_stream(peer, SYNC_PROTOCOL, SYNC_FRAME_BYTES_MAX)
    try:
        await stream.send(SyncRequest(from_height, count).encode())
        expected = from_height
        while True:
            with trio.fail_after(SYNC_REQUEST_TIMEOUT_S):
                raw = await stream.receive()
            if raw is None:
                return
            try:
                item = decode_sync_block(raw)
            except CodecError as error:
                raise SyncError(f"malformed block from peer: {error}") from None
            if item.block.height != expected or item.certificate.height != expected:
                raise SyncError(f"peer sent height {item.block.height}, expected {expected}")
            expected += 1
            yield item
    finally:
        with trio.move_on_after(1):
            await stream.reset()
