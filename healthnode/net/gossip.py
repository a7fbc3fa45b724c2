"""Gossip between authorities on healthnode's own stream protocol (`/healthnode/gossip/2`).

Theory of operation
-------------------
Every node keeps one outgoing stream to each configured authority peer and reads the incoming
streams its peers open to it. Each stream starts with a `Hello` each way: the protocol version the
node speaks and its genesis. A peer that speaks another version, or belongs to another network,
is refused on both sides, each logging it (`peer_protocol_refused`, `peer_genesis_refused`, with
both versions), and its link stays down: a node never gossips with a peer whose messages it
cannot read. A stream whose first frame is not a Hello is reset. (A release before the greeting
speaks `/healthnode/gossip/1`, which libp2p's protocol negotiation refuses before any frame.)

A `Link` per peer owns the outgoing side: it dials with exponential back-off (clearing libp2p's
negative cache, docs/network.md), opens the stream, and sends frames from a bounded queue; every
`ping_interval_ms` it sends a `Ping`. Anything received from a peer counts as a sign of life; a
peer silent for longer than ping interval + ping timeout is disconnected and redialled, which finds
a silently cut link in seconds (libp2p alone never notices one).

`broadcast` puts a frame on every connected link's queue without waiting. A full queue (a slow
peer) drops the frame for that peer, counts it (`dropped` by peer) and logs it: never silently.
A link that is down queues nothing (counted as `gossip_peer_down`), and its queue is emptied
when it goes down: a returning peer is not flooded with stale frames. What it needs comes
another way: consensus re-sends its messages, block sync brings finalized blocks, and when a link
comes up the node sends the peer the transactions waiting in its mempool (`on_link_up`), as
CometBFT's mempool reactor does for a new peer.
That is safe by design: the consensus core re-sends its own messages on a timer and a node that
fell behind fetches blocks by block sync, so a lost frame costs a retry, not safety or liveness;
a transaction stays in the mempool of the node that has it, and every node proposes in turn.

A node sends only on streams it opened, so a peer that dials in without a configured address here
(an authority whose node key was rotated: its new peer id is in no config yet, node/rotation.py)
would hear nothing back. For such a peer, when `link_back` says it is one to answer (an authority,
or an observer vouched for on chain, which may sit behind a NAT), the node opens
its stream over the connection the peer made (a link without an address), and keeps that link
while the connection lasts: the peer redials, this node cannot.

An incoming stream that stays silent for three ping windows (12 s by default) runs on a
connection that died without a FIN; that connection is closed. Incoming frames are decoded with
the protocol's bound; a frame that does not decode is dropped
and counted, and a peer that keeps sending garbage is disconnected. The first copy of a vote or
evidence is relayed to the other peers (so an equivocation shown to some peers reaches all), and
duplicates are dropped by a bounded set of recently seen frame digests.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final

import trio

from healthnode import logs
from healthnode.codec import CodecError
from healthnode.crypto import digest
from healthnode.net.dedup import SeenGate
from healthnode.net.framing import FramedStream, FrameError, P2PError, StreamBroken, Transport
from healthnode.protocol.block import DuplicateProposal, DuplicateVote, Vote
from healthnode.protocol.schema import decode_message
from healthnode.protocol.wire import (
    GOSSIP_FRAME_BYTES_MAX,
    GOSSIP_PROTOCOL,
    PROTOCOL_VERSION,
    CompactProposal,
    GossipMessage,
    Hello,
    Ping,
    Pong,
    ProposalMessage,
    decode_gossip,
)

log = logs.get_logger("healthnode.gossip")

# Frames waiting for one peer: a few rounds of votes plus a proposal or two; beyond this the
# peer is not keeping up and the core's retransmission takes over.
LINK_QUEUE_FRAMES_MAX: Final = 1024
# Digests of recently seen frames, to drop a relayed copy before decoding it. Copies arrive
# within a round or two, so a digest is kept for a minute, and at most 16,384 of them (seconds
# of traffic at the bench's rate). Each entry costs about 170 bytes (the digest, its time and
# its OrderedDict slot), so this is ~2.7 MiB at most. Kept by count alone, the set took over an
# hour to fill at a hospital's rate and showed as steady RSS growth in a soak; kept by age, it
# is as large after two minutes as after two months (docs/reliability.md).
SEEN_FRAMES_MAX: Final = 16_384
SEEN_FRAMES_TTL_S: Final = 60.0
GARBAGE_FRAMES_MAX: Final = 16  # undecodable frames before a peer is disconnected
REDIAL_FIRST_MS: Final = 200
INCOMING_SILENCE_PING_WINDOWS: Final = 3  # an incoming stream this many ping windows silent is dead
RELAYED: Final = (Vote, DuplicateVote, DuplicateProposal)
HELLO_TIMEOUT_S: Final = 5.0  # how long each side waits for the other's Hello
HELLO_BYTES_MAX: Final = 128


class PeerRefused(P2PError):
    """The peer's Hello says it cannot be spoken with (another protocol, another network)."""

Deliver = Callable[[bytes, GossipMessage], Awaitable[None]]
Count = Callable[[str], None]


@dataclass
class Link:
    public_key: bytes
    address: str
    send_channel: trio.MemorySendChannel[bytes]
    receive_channel: trio.MemoryReceiveChannel[bytes]
    connected: bool = False
    last_heard_ms: float = 0.0
    dropped: int = 0
    garbage: int = 0
    ups: int = 0  # times this link came up (a flapping link shows here)
    stream: FramedStream | None = field(default=None, repr=False)
    scope: trio.CancelScope = field(default_factory=trio.CancelScope, repr=False)


class Gossip:
    def __init__(self, p2p: Transport, peers: dict[bytes, str], allow: Callable[[bytes], bool],
                 deliver: Deliver, count_rejected: Count, *, ping_interval_ms: int,
                 ping_timeout_ms: int, redial_backoff_max_ms: int,
                 on_link_up: Callable[[Link], None] = lambda _link: None,
                 height: Callable[[], int] = lambda: 0, genesis_hash: bytes = bytes(32),
                 protocol: int = PROTOCOL_VERSION,
                 link_back: Callable[[bytes], bool] = lambda _peer: False) -> None:
        """`height()`: the height the node's core is deciding (the seen-gate's `reached`);
        `genesis_hash` and `protocol`: what this node says in its Hello; `link_back(peer)`:
        whether to open a link back to a peer that dialled in without a configured address."""
        self.p2p = p2p
        self.hello = Hello(protocol, genesis_hash).encode()
        # Peers whose last Hello was refused: the node speaks no protocol with them (block sync
        # and blobs ask `refused` too) until one of their Hellos is accepted.
        self.refused: set[bytes] = set()
        self.height = height
        self.on_link_up = on_link_up
        self.allow = allow
        self.deliver = deliver
        self.count_rejected = count_rejected
        self.ping_interval_ms = ping_interval_ms
        self.ping_timeout_ms = ping_timeout_ms
        self.redial_backoff_max_ms = redial_backoff_max_ms
        self.links: dict[bytes, Link] = {}
        for public_key, address in peers.items():
            self._add_link(public_key, address)
        self.seen = SeenGate(SEEN_FRAMES_MAX, SEEN_FRAMES_TTL_S)  # by frame digest
        self._ping_nonce = random.SystemRandom().getrandbits(62)
        self.link_back = link_back
        self._nursery: trio.Nursery | None = None

    def connected(self) -> list[bytes]:
        return [key for key, link in self.links.items() if link.connected]

    async def run(self) -> None:
        self.p2p.set_handler(GOSSIP_PROTOCOL, self._receive_from, self.allow,
                             GOSSIP_FRAME_BYTES_MAX)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for link in self.links.values():
                nursery.start_soon(self._run_link, link)
            await trio.sleep_forever()

    def set_links(self, peers: dict[bytes, str]) -> None:
        """Keep a link to each of `peers` (public key -> multiaddr with /p2p/) and to no one
        else: new peers get a link, gone ones lose theirs (its task ends, its connection is
        closed by the peer's silence or ours), and a peer that moved is dialled at its new
        address from its next dial on. Called after every block (node/daemon.py), so the set
        follows the chain's authorities, observers and announced addresses."""
        # A link back (no address: a peer that dialled in, module docstring) stays while the peer
        # may talk to us; it ends by itself when the peer's connection goes.
        for key in [key for key, link in self.links.items() if key not in peers
                    and not (not link.address and self.allow(key))]:
            link = self.links.pop(key)
            link.scope.cancel()
            log.info("gossip_link_removed", peer=key.hex()[:16])
        for key, address in peers.items():
            known = self.links.get(key)
            if known is not None:
                known.address = address
                continue
            link = self._add_link(key, address)
            log.info("gossip_link_added", peer=key.hex()[:16])
            if self._nursery is not None:
                self._nursery.start_soon(self._run_link, link)

    def _add_link(self, key: bytes, address: str) -> Link:
        """A link to `key` at `address` ("": a link back), with its queue of frames to send."""
        send, receive = trio.open_memory_channel[bytes](LINK_QUEUE_FRAMES_MAX)
        link = self.links[key] = Link(key, address, send, receive)
        return link

    async def _run_link(self, link: Link) -> None:
        try:
            with link.scope:
                await self._keep_link(link)
        finally:  # a link removed while up closes its stream (our side of the connection)
            stream, link.connected, link.stream = link.stream, False, None
            if stream is not None:
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    await stream.reset()

    # --- sending ----------------------------------------------------------------------------

    def broadcast(self, frame: bytes, *, skip: bytes | None = None) -> None:
        self.seen.remember(digest(frame), trio.current_time())
        for key, link in self.links.items():
            if key != skip:
                self.send_to(link, frame)

    async def _keep_link(self, link: Link) -> None:
        backoff_ms = REDIAL_FIRST_MS
        while True:
            try:
                if link.address:  # a link back (no address) rides on the peer's connection
                    await self.p2p.dial(link.address)
                stream = await self.p2p.open_stream(link.public_key, GOSSIP_PROTOCOL,
                                                    GOSSIP_FRAME_BYTES_MAX)
                await self._greet(link.public_key, stream)
            except P2PError as error:
                log.debug("gossip_dial_failed", peer=link.public_key.hex()[:16],
                          error=str(error)[:120])
                if not link.address:  # the peer's connection is gone: its next stream brings
                    if self.links.get(link.public_key) is link:  # the link back again
                        del self.links[link.public_key]
                    log.info("gossip_link_back_ended", peer=link.public_key.hex()[:16])
                    return
                await trio.sleep(backoff_ms / 1000 * random.uniform(0.8, 1.2))  # noqa: S311
                backoff_ms = min(backoff_ms * 2, self.redial_backoff_max_ms)
                continue
            backoff_ms = REDIAL_FIRST_MS
            link.stream, link.connected = stream, True
            link.ups += 1
            link.last_heard_ms = trio.current_time() * 1000
            log.info("gossip_link_up", peer=link.public_key.hex()[:16])
            self.on_link_up(link)
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._send_frames, link, stream)
                    nursery.start_soon(self._watch, link, nursery.cancel_scope)
                    nursery.start_soon(self._watch_connection, link, stream,
                                       nursery.cancel_scope)
            except* StreamBroken as group:  # the link died under a frame we sent
                log.info("gossip_link_down", peer=link.public_key.hex()[:16],
                         error=str(group.exceptions[0])[:120])
            link.connected, link.stream = False, None
            _drain(link.receive_channel)  # frames for the old link are stale by the next one
            with trio.move_on_after(1):
                await stream.reset()
            # The connection that carried the broken stream is presumed dead (a silent cut
            # shows as pings unanswered). Closing every connection of the peer instead would
            # also close the one the peer has just dialled after noticing the same break, and
            # the two sides would knock each other's new links down in turn.
            await stream.close_connection()
            await trio.sleep(REDIAL_FIRST_MS / 1000)

    async def _greet(self, peer: bytes, stream: FramedStream) -> None:
        """Say our Hello on a stream we opened and hear the peer's; PeerRefused (the stream
        reset) when it cannot be spoken with, P2PError when it says nothing in time."""
        try:
            await stream.send(self.hello)
            with trio.fail_after(HELLO_TIMEOUT_S):
                frame = await stream.receive()
            if frame is None:
                raise P2PError("the peer closed the stream without a Hello")
            self._check_hello(peer, frame)
        except (P2PError, trio.TooSlowError, CodecError) as error:
            with trio.move_on_after(1):
                await stream.reset()
            if isinstance(error, trio.TooSlowError):
                raise P2PError(f"no Hello within {HELLO_TIMEOUT_S:g} s") from None
            if isinstance(error, CodecError):
                raise P2PError(f"its Hello does not decode: {error}") from None
            raise

    def _check_hello(self, peer: bytes, frame: bytes) -> None:
        """PeerRefused, logged and counted, unless `frame` is a Hello of our protocol and
        network (CodecError when it is no Hello)."""
        theirs = decode_message(frame, Hello, HELLO_BYTES_MAX)
        ours = decode_message(self.hello, Hello, HELLO_BYTES_MAX)
        self.refused.add(peer)
        if theirs.protocol != ours.protocol:
            self.count_rejected("peer_protocol")
            log.warning("peer_protocol_refused", peer=peer.hex()[:16], theirs=theirs.protocol,
                        ours=ours.protocol)
            raise PeerRefused(f"it speaks protocol {theirs.protocol}, this node "
                              f"{ours.protocol}")
        if theirs.genesis_hash != ours.genesis_hash:
            self.count_rejected("peer_genesis")
            log.warning("peer_genesis_refused", peer=peer.hex()[:16],
                        theirs=theirs.genesis_hash.hex()[:16], ours=ours.genesis_hash.hex()[:16])
            raise PeerRefused("it belongs to another network (another genesis)")
        self.refused.discard(peer)

    async def _send_frames(self, link: Link, stream: FramedStream) -> None:
        """Send queued frames; a Ping whenever the queue was idle for a ping interval."""
        while True:
            frame = await self._next_frame(link)
            if frame is None:
                self._ping_nonce += 1
                frame = Ping(self._ping_nonce).encode()
            await stream.send(frame)  # never cancelled halfway: a torn frame breaks the stream

    async def _next_frame(self, link: Link) -> bytes | None:
        try:
            with trio.fail_after(self.ping_interval_ms / 1000):
                return await link.receive_channel.receive()
        except trio.TooSlowError:
            return None

    async def _watch(self, link: Link, scope: trio.CancelScope) -> None:
        """End the link when the peer has been silent too long (a silently cut link)."""
        silence_ms = self.ping_interval_ms + self.ping_timeout_ms
        while True:
            await trio.sleep(self.ping_interval_ms / 1000)
            quiet_ms = trio.current_time() * 1000 - link.last_heard_ms
            if quiet_ms > silence_ms:
                log.warning("gossip_peer_silent", peer=link.public_key.hex()[:16],
                            quiet_ms=math.floor(quiet_ms))
                # The peer answers nothing: every connection to it is dead or useless, also
                # those that carry no stream of ours (each side dials the other).
                await self.p2p.abort_peer(link.public_key)
                scope.cancel()
                return

    async def _watch_connection(self, link: Link, stream: FramedStream,
                                scope: trio.CancelScope) -> None:
        """End the link as soon as its connection closes (the peer went away cleanly, or an
        operator cut it), not at the next frame sent, up to a ping interval later."""
        await stream.connection_closed()
        log.info("gossip_connection_closed", peer=link.public_key.hex()[:16])
        scope.cancel()

    # --- receiving --------------------------------------------------------------------------

    def _open_link_back(self, peer: bytes) -> Link | None:
        """A link to a peer that dialled in and has no configured address, if `link_back` says
        it is one to answer (module docstring)."""
        if self._nursery is None or not self.link_back(peer):
            return None
        link = self._add_link(peer, "")
        log.info("gossip_link_back", peer=peer.hex()[:16])
        self._nursery.start_soon(self._run_link, link)
        return link

    async def _receive_from(self, peer: bytes, stream: FramedStream) -> None:
        # The peer pings on this stream whenever it has nothing else to send (every
        # `ping_interval_ms`, which a network sets alike on every node): a stream silent for
        # three times our own ping window runs on a dead connection (a vanished peer sends no
        # FIN), which is closed so that it gives back what it holds.
        silence_s = INCOMING_SILENCE_PING_WINDOWS * (
            self.ping_interval_ms + self.ping_timeout_ms) / 1000
        try:
            if not await self._answer_hello(peer, stream):
                return
            if self.links.get(peer) is None:
                self._open_link_back(peer)
            while True:
                try:
                    with trio.fail_after(silence_s):
                        frame = await stream.receive()
                except FrameError as error:  # oversized or endless length: the stream is lost
                    self.count_rejected("bad_frame")
                    log.info("gossip_stream_dropped", peer=peer.hex()[:16], error=str(error))
                    return
                except trio.TooSlowError:
                    log.warning("gossip_stream_silent", peer=peer.hex()[:16])
                    await self.p2p.abort_peer(peer)
                    return
                if frame is None:
                    return
                # Looked up per frame: our link to the peer may come (set_links) after the
                # peer's stream to us, as when an observer we learn of dials us first.
                link = self.links.get(peer)
                if link is not None:
                    link.last_heard_ms = trio.current_time() * 1000
                # Duplicates are dropped before decoding: a re-sent proposal carries a whole
                # block, and decoding it again for nothing would starve the node under load.
                frame_digest = digest(frame)
                if self.seen.seen(frame_digest):
                    continue
                try:
                    message = decode_gossip(frame)
                except CodecError as error:
                    self.count_rejected("malformed_frame")
                    log.info("gossip_frame_dropped", peer=peer.hex()[:16], error=str(error)[:120])
                    if link is not None:
                        link.garbage += 1
                        if link.garbage > GARBAGE_FRAMES_MAX:
                            log.warning("gossip_peer_dropped", peer=peer.hex()[:16])
                            return
                    continue
                if isinstance(message, Ping):
                    if link is not None and link.connected:
                        self.send_to(link, Pong(message.nonce).encode())
                    continue
                if isinstance(message, Pong):
                    continue
                self.seen.take(frame_digest, _height_of(message), self.height(),
                               trio.current_time())
                if isinstance(message, RELAYED):
                    self.broadcast(frame, skip=peer)
                await self.deliver(peer, message)
        finally:
            with trio.move_on_after(1):
                await stream.reset()

    async def _answer_hello(self, peer: bytes, stream: FramedStream) -> bool:
        """Hear the Hello that must open a stream a peer opened, and answer with ours (also
        when refusing, so that the peer logs why); whether to go on."""
        try:
            with trio.fail_after(HELLO_TIMEOUT_S):
                frame = await stream.receive()
        except (FrameError, trio.TooSlowError):
            frame = None
        if frame is None:
            self.count_rejected("peer_hello_missing")
            log.info("peer_hello_missing", peer=peer.hex()[:16])
            return False
        try:
            self._check_hello(peer, frame)
        except CodecError:
            self.count_rejected("peer_hello_missing")
            log.warning("peer_hello_missing", peer=peer.hex()[:16],
                        detail="its first frame is not a Hello (a release before the greeting?)")
            return False
        except PeerRefused:
            with trio.move_on_after(1), contextlib.suppress(StreamBroken):
                await stream.send(self.hello)
            return False
        try:
            await stream.send(self.hello)
        except StreamBroken:  # the peer left right after its Hello
            return False
        return True

    def send_to(self, link: Link, frame: bytes) -> None:
        """Queue `frame` for one peer without waiting; a full queue drops it, counted and logged.
        Nothing is queued for a peer whose link is down: on its return it would be flooded with
        stale votes and with transactions it will get in blocks (a restarted node spent a third
        of its catch-up verifying those). Consensus re-sends; block sync fills the gap."""
        if not link.connected:
            self.count_rejected("gossip_peer_down")
            return
        try:
            link.send_channel.send_nowait(frame)
        except trio.WouldBlock:
            link.dropped += 1
            self.count_rejected("gossip_queue_full")
            if link.dropped % 100 == 1:
                log.warning("gossip_queue_full", peer=link.public_key.hex()[:16],
                            dropped=link.dropped)



def _height_of(message: GossipMessage) -> int | None:
    """The height a consensus message is of (None for batches, evidence, block requests)."""
    if isinstance(message, Vote):
        return message.height
    if isinstance(message, CompactProposal | ProposalMessage):
        height: int = message.proposal.height
        return height
    return None


def _drain(channel: trio.MemoryReceiveChannel[bytes]) -> None:
    while True:
        try:
            channel.receive_nowait()
        except trio.WouldBlock:
            return
