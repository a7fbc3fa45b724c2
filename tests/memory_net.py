"""A network of memory streams for nodes that run in one trio run, under trio's `MockClock`.

`MemoryNetwork.transport` builds, for each node, a host that fulfils net/framing.Transport as the
libp2p host does for the node's parts (gossip, block sync, blob fetching, the restore hold): dial
a `/p2p/<peer id>` address, open a stream of a protocol, serve a protocol to allowed peers, close
every connection to a peer. Only the bytes' path is simulated; every frame goes through the node's
own FramedStream and decoders.

Faults:
- `partition(*groups)` cuts every pair of nodes in different groups *silently*: bytes written on
  a cut connection vanish and nothing is read (as a pulled cable: no FIN, no reset), and a new dial
  or stream across the cut fails. The nodes find out as they do on a real network, by their pings.
- `heal()` lifts every cut. A connection that was cut is closed then (its bytes were lost: a
  stream that lost bytes in its middle would be garbage), so the nodes redial.

A handler that raises is a bug of ours (net/p2p.P2P logs it as `bug`): it is kept in `bugs`, and
a test asserts that none was seen.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

from healthnode import crypto
from healthnode.net.framing import (
    Allow,
    BusyHandler,
    FramedStream,
    P2PError,
    StreamHandler,
)
from healthnode.net.p2p import Classify, Kind


class MemoryConnection:
    """One connection between two hosts; both ends share it (FramedStream only asks for
    `event_closed` and `close`)."""

    def __init__(self, network: MemoryNetwork, a: bytes, b: bytes) -> None:
        self.network = network
        self.ends = frozenset((a, b))
        self.event_closed = trio.Event()
        self.was_cut = False
        self.streams: list[MemoryStream] = []

    @property
    def cut(self) -> bool:
        return self.ends in self.network.cuts

    @property
    def closed(self) -> bool:
        return self.event_closed.is_set()

    async def close(self) -> None:
        self.shut()
        await trio.lowlevel.checkpoint()

    def shut(self) -> None:
        if not self.closed:
            self.event_closed.set()
            for stream in self.streams:
                stream.shut()


@dataclass(eq=False)
class MemoryStream:
    """One end of a stream: reads what the other end wrote, in order."""

    muxed_conn: MemoryConnection
    _incoming: trio.MemoryReceiveChannel[bytes]
    _outgoing: trio.MemorySendChannel[bytes]
    _buffer: bytearray = field(default_factory=bytearray)
    reset_seen: bool = False

    async def write(self, data: bytes) -> None:
        await trio.lowlevel.checkpoint()
        if self.reset_seen or self.muxed_conn.closed:
            raise trio.ClosedResourceError("stream reset or connection closed")
        if self.muxed_conn.cut:
            return  # the bytes vanish, as on a pulled cable
        try:
            self._outgoing.send_nowait(bytes(data))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise trio.ClosedResourceError("the other end is gone") from None

    async def read(self, n: int) -> bytes:
        if not self._buffer:
            try:
                self._buffer.extend(await self._incoming.receive())
            except (trio.EndOfChannel, trio.ClosedResourceError):
                return b""
        chunk = bytes(self._buffer[:n])
        del self._buffer[:n]
        return chunk

    async def close(self) -> None:
        await self.reset()

    async def reset(self) -> None:
        self.shut()
        await trio.lowlevel.checkpoint()

    def shut(self) -> None:
        self.reset_seen = True
        self._outgoing.close()
        self._incoming.close()


def _stream_pair(connection: MemoryConnection) -> tuple[MemoryStream, MemoryStream]:
    a_to_b_send, a_to_b_receive = trio.open_memory_channel[bytes](math.inf)
    b_to_a_send, b_to_a_receive = trio.open_memory_channel[bytes](math.inf)
    a = MemoryStream(connection, b_to_a_receive, a_to_b_send)
    b = MemoryStream(connection, a_to_b_receive, b_to_a_send)
    connection.streams = [s for s in connection.streams if not s.reset_seen] + [a, b]
    return a, b


class MemoryNetwork:
    def __init__(self) -> None:
        self.hosts: dict[str, MemoryHost] = {}  # by peer id
        self.cuts: set[frozenset[bytes]] = set()
        self.connections: list[MemoryConnection] = []
        self.bugs: list[BaseException] = []

    def transport(self, identity: crypto.Identity, classify: Classify) -> MemoryHost:
        host = MemoryHost(self, identity.public_key, classify)
        self.hosts[host.peer_id] = host
        return host

    def partition(self, *groups: set[bytes]) -> None:
        """Cut every pair of nodes that are in different groups (and only those)."""
        self.heal()
        for i, group in enumerate(groups):
            for other in groups[i + 1:]:
                self.cuts |= {frozenset((a, b)) for a in group for b in other}
        for connection in self.connections:
            if connection.cut:
                connection.was_cut = True

    def heal(self) -> None:
        self.cuts.clear()
        for connection in self.connections:
            if connection.was_cut:
                connection.shut()
        self.connections = [c for c in self.connections if not c.closed]

    def live(self, a: bytes, b: bytes) -> MemoryConnection | None:
        ends = frozenset((a, b))
        for connection in self.connections:
            if connection.ends == ends and not connection.closed:
                return connection
        return None


@dataclass(frozen=True, slots=True)
class _Handler:
    serve: StreamHandler
    allow: Allow
    frame_bytes_max: int


class MemoryHost:
    """One node's host on a MemoryNetwork (net/framing.Transport)."""

    def __init__(self, network: MemoryNetwork, public_key: bytes, classify: Classify) -> None:
        self.network = network
        self.public_key = public_key
        self.peer_id = crypto.peer_id(public_key)
        self._classify = classify
        self._handlers: dict[str, _Handler] = {}
        self._listen: list[str] = []
        self._nursery: trio.Nursery | None = None

    @asynccontextmanager
    async def running(self, listen: list[str]) -> AsyncIterator[MemoryHost]:
        async with trio.open_nursery() as nursery:
            self._nursery, self._listen = nursery, [f"{a}/p2p/{self.peer_id}" for a in listen]
            try:
                yield self
            finally:
                self._nursery, self._listen = None, []
                for connection in self.network.connections:
                    if self.public_key in connection.ends:
                        connection.shut()
                nursery.cancel_scope.cancel()

    def listen_addresses(self) -> list[str]:
        return list(self._listen)

    def set_handler(self, protocol: str, handler: StreamHandler, allow: Allow,
                    frame_bytes_max: int, busy: BusyHandler | None = None) -> None:
        self._handlers[protocol] = _Handler(handler, allow, frame_bytes_max)

    def _reachable(self, peer_id: str) -> MemoryHost:
        host = self.network.hosts.get(peer_id)
        if host is None or host._nursery is None:
            raise P2PError(f"cannot connect to {peer_id}: nobody listens")
        if frozenset((self.public_key, host.public_key)) in self.network.cuts:
            raise P2PError(f"cannot connect to {peer_id}: unreachable")
        return host

    async def dial(self, address: str) -> bytes:
        await trio.lowlevel.checkpoint()
        if "/p2p/" not in address:
            raise P2PError(f"bad peer address {address!r}")
        host = self._reachable(address.rsplit("/p2p/", 1)[1])
        if self.network.live(self.public_key, host.public_key) is None:
            self.network.connections = [c for c in self.network.connections if not c.closed]
            self.network.connections.append(
                MemoryConnection(self.network, self.public_key, host.public_key))
        return host.public_key

    async def open_stream(self, peer_public_key: bytes, protocol: str,
                          frame_bytes_max: int) -> FramedStream:
        await trio.lowlevel.checkpoint()
        host = self._reachable(crypto.peer_id(peer_public_key))
        connection = self.network.live(self.public_key, peer_public_key)
        handler = host._handlers.get(protocol)
        if connection is None or handler is None or host._nursery is None:
            raise P2PError(f"cannot open {protocol} to {host.peer_id}")
        ours, theirs = _stream_pair(connection)
        host._nursery.start_soon(host._serve, handler, self.public_key, theirs)
        return FramedStream(ours, peer_public_key, frame_bytes_max)

    async def _serve(self, handler: _Handler, peer: bytes, stream: MemoryStream) -> None:
        framed = FramedStream(stream, peer, handler.frame_bytes_max)
        if not handler.allow(peer):
            await framed.reset()
            return
        try:
            await handler.serve(peer, framed)
        except Exception as error:  # a bug of ours, as net/p2p.P2P's `loud` wrapper logs it
            self.network.bugs.append(error)
            await framed.reset()

    async def disconnect(self, peer_public_key: bytes) -> None:
        await self.abort_peer(peer_public_key)

    async def abort_peer(self, peer_public_key: bytes) -> None:
        for connection in self.network.connections:
            if connection.ends == frozenset((self.public_key, peer_public_key)):
                connection.shut()
        await trio.lowlevel.checkpoint()

    def connections_to(self, peer_public_key: bytes) -> int:
        return int(self.network.live(self.public_key, peer_public_key) is not None)

    def connection_counts(self) -> dict[str, int]:
        counts = {str(kind): 0 for kind in Kind}
        for connection in self.network.connections:
            if self.public_key in connection.ends and not connection.closed:
                (peer,) = connection.ends - {self.public_key}
                counts[str(self._classify(peer))] += 1
        return counts

    def known_peers(self) -> int:
        return sum(self.connection_counts().values())

    def forget_departed_wallets(self) -> int:
        return 0
