"""The libp2p adapter: the only module of healthnode that imports libp2p.

Theory of operation
-------------------
A node's libp2p identity is its Ed25519 node key, so a peer id names a hospital's validator key.
Connections are secured with Noise only: the host is built with a security table holding just
Noise, so a plaintext, secio or TLS dialer fails negotiation (py-libp2p's default table would admit
plaintext: LIBP2P.md). Streams are multiplexed with yamux.

The rest of healthnode sees only `P2P` and `FramedStream`: open a stream to a peer (named by its
public key) on a protocol, send and receive length-prefixed frames (`net/framing.py`). Incoming
streams are gated per protocol by an `allow(peer_public_key) -> bool` function that the node passes
in (consensus and gossip: authorities and observers only; the client protocol: anyone), so a
stranger's stream is reset before a byte of it is read.

libp2p's loggers write to stderr on their own; they are rerouted into structlog on import.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Final

import multiaddr
from libp2p import (
    NOISE_PROTOCOL_ID,
    NoiseTransport,
    create_identity_from_seed,
    create_new_x25519_key_pair,
    create_yamux_muxer_option,
    new_host,
)
from libp2p.custom_types import TProtocol
from libp2p.network import swarm as _swarm
from libp2p.network.config import ConnectionConfig
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr

from healthnode import crypto, logs
from healthnode.errors import ConfigError
from healthnode.net.framing import FrameDecoder, encode_frame

logs.route_foreign_loggers()
log = logs.get_logger("healthnode.net")

# py-libp2p staggers the dials of a peer's addresses (happy eyeballs) and waits 250 ms after each
# start unless that dial fails, so a successful connect never returns sooner (LIBP2P.md). We dial
# exactly one configured address per peer (`P2P.dial`), so there is nothing to stagger: without
# the wait a restarted node is linked, and syncing, about 0.2 s sooner. A private constant of the
# library, read at call time; if a new version drops it, this does nothing.
if hasattr(_swarm, "_HAPPY_EYEBALLS_DELAY"):
    _swarm._HAPPY_EYEBALLS_DELAY = 0

READ_CHUNK_BYTES: Final = 1024 * 1024  # what has arrived, up to this: fewer, larger reads

Allow = Callable[[bytes], bool]
StreamHandler = Callable[[bytes, "FramedStream"], Awaitable[None]]


class P2PError(Exception):
    """A dial or stream could not be established."""


class FramedStream:
    """A libp2p stream carrying length-prefixed frames of at most `frame_bytes_max` bytes."""

    def __init__(self, stream: Any, peer_public_key: bytes, frame_bytes_max: int) -> None:
        self._stream = stream
        self.peer_public_key = peer_public_key
        self._frame_bytes_max = frame_bytes_max
        self._decoder = FrameDecoder(frame_bytes_max)
        self._ready: list[bytes] = []

    async def send(self, payload: bytes) -> None:
        await self._stream.write(encode_frame(payload, self._frame_bytes_max))

    async def receive(self) -> bytes | None:
        """The next frame, or None when the peer closed the stream. Raises FrameError (a
        CodecError) when the peer sends bytes that are not frames: close the stream then."""
        while not self._ready:
            try:
                data = await self._stream.read(READ_CHUNK_BYTES)
            except Exception:  # libp2p raises several stream-closed types
                return None
            if not data:
                return None
            self._ready.extend(self._decoder.feed(data))
        return self._ready.pop(0)

    async def close(self) -> None:
        with contextlib.suppress(Exception):  # closing an already reset stream
            await self._stream.close()

    async def reset(self) -> None:
        with contextlib.suppress(Exception):  # resetting an already closed stream
            await self._stream.reset()


def public_key_of(peer: ID) -> bytes:
    return crypto.public_key_from_peer_id(peer.to_base58())


class P2P:
    """One libp2p host with healthnode's security settings."""

    def __init__(self, identity: crypto.Identity, connections_max: int = 64) -> None:
        key_pair = create_identity_from_seed(identity.seed)
        noise = NoiseTransport(key_pair, noise_privkey=create_new_x25519_key_pair().private_key)
        # The node dials its configured peers itself. libp2p's auto-connector would otherwise
        # try 200 dials every 30 s to reach a minimum of 50 connections (network.md).
        connections = ConnectionConfig(
            max_connections=connections_max, high_watermark=connections_max,
            min_connections=0, low_watermark=0)
        self._host = new_host(
            key_pair=key_pair,
            sec_opt={NOISE_PROTOCOL_ID: noise},
            muxer_opt=create_yamux_muxer_option(),
            connection_config=connections,
        )
        self.public_key = identity.public_key
        self.peer_id = crypto.peer_id(identity.public_key)

    @asynccontextmanager
    async def running(self, listen: list[str]) -> AsyncIterator[P2P]:
        addresses = [multiaddr.Multiaddr(a) for a in listen]
        async with self._host.run(listen_addrs=addresses):
            # libp2p logs a listener it could not start (a port in use) and runs on without it:
            # a hospital's node that nobody can reach must not look started.
            if len(self._host.get_addrs()) < len(addresses):
                raise ConfigError(f"[p2p].listen {', '.join(listen)}: cannot listen on every "
                                  "address (in use, or not an address of this machine)")
            yield self

    def listen_addresses(self) -> list[str]:
        return [str(a) for a in self._host.get_addrs()]

    def set_handler(self, protocol: str, handler: StreamHandler, allow: Allow,
                    frame_bytes_max: int) -> None:
        async def gated(stream: Any) -> None:
            peer_key = public_key_of(stream.muxed_conn.peer_id)
            framed = FramedStream(stream, peer_key, frame_bytes_max)
            if not allow(peer_key):
                log.warning("stream_refused", protocol=protocol, peer=peer_key.hex()[:16])
                await framed.reset()
                return
            await handler(peer_key, framed)

        self._host.set_stream_handler(TProtocol(protocol), gated)

    async def dial(self, address: str) -> bytes:
        """Connect to a `/.../p2p/<peer id>` address; returns the peer's public key."""
        try:
            info = info_from_p2p_addr(multiaddr.Multiaddr(address))
        except Exception as error:
            raise P2PError(f"bad peer address {address!r}: {error}") from None
        # After a failed dial libp2p keeps the peer in a negative cache for 60 s (LIBP2P.md).
        network = self._host.get_network()
        if hasattr(network, "unblock_peer"):
            network.unblock_peer(info.peer_id)
        # Dial only the configured address: a peer listening on 0.0.0.0 announces addresses
        # (127.0.0.1, ...) that libp2p would otherwise keep and try, reaching our own port.
        self._host.get_peerstore().clear_addrs(info.peer_id)
        try:
            await self._host.connect(info)
        except Exception as error:
            raise P2PError(f"cannot connect to {address}: {str(error)[:120]}") from None
        return public_key_of(info.peer_id)

    async def open_stream(self, peer_public_key: bytes, protocol: str,
                          frame_bytes_max: int) -> FramedStream:
        peer = ID.from_base58(crypto.peer_id(peer_public_key))
        try:
            stream = await self._host.new_stream(peer, [TProtocol(protocol)])
        except Exception as error:
            raise P2PError(f"cannot open {protocol} to {peer}: {str(error)[:120]}") from None
        return FramedStream(stream, peer_public_key, frame_bytes_max)

    def connected_peers(self) -> list[bytes]:
        return [public_key_of(peer) for peer in self._host.get_network().connections]

    async def disconnect(self, peer_public_key: bytes) -> None:
        await self._host.disconnect(ID.from_base58(crypto.peer_id(peer_public_key)))


__all__ = ["P2P", "FramedStream", "P2PError"]
