"""The libp2p adapter: the only module of healthnode that imports libp2p.

Theory of operation
-------------------
A node's libp2p identity is its Ed25519 node key, so a peer id names a hospital's validator key.
Connections are secured with Noise only: the host is built with a security table holding just
Noise, so a plaintext, secio or TLS dialer fails negotiation (py-libp2p's default table would admit
plaintext: docs/network.md). Streams are multiplexed with yamux.

The rest of healthnode sees only `P2P` and `FramedStream`: open a stream to a peer (named by its
public key) on a protocol, send and receive length-prefixed frames (`net/framing.py`). Incoming
streams are gated per protocol by an `allow(peer_public_key) -> bool` function that the node passes
in (consensus and gossip: authorities and observers only; the client protocol: anyone), so a
stranger's stream is reset before a byte of it is read.

libp2p's loggers write to stderr on their own; they are rerouted into structlog on import.

Connections that end, and a budget (docs/network.md, "Connections")
-------------------------------------------------------------------
py-libp2p 0.8.1 gets three things wrong for a node that lives for months, and `_repair_swarm`
fixes each in this one place (the library is pinned to that version in pyproject.toml):

- **Inbound slots were never given back.** `Swarm._do_handle_inbound_connection` keeps the
  handler of every upgraded inbound connection waiting on `manager.wait_finished()`, the end of
  the whole swarm, and only then releases the connection's slot of `_inbound_limiter` (sized
  `max_connections - min_connections`). Each wallet command took one slot for the life of the
  node: after about 61 the node refused every new connection, its own redialling authorities
  included. Our `_accept` replaces that handler: it waits for *this* connection's end, and gives
  back its slot, its task and its budget in a `finally`.
- **The auto-connector and the pruner are not off.** With `min_connections=0` the auto-connector
  still aims at the midpoint of the watermarks, and dials every peer in the peerstore (wallets
  that have left) every 30 s and after every disconnect; the pruner may close an authority's
  link. Both are replaced by inert objects: the node dials only authorities, observers and
  configured peers (`Node` decides; `dial_peer` refuses the rest and counts every attempt by kind).
- **The resource manager's limits are not ours** (8 connections per peer id within a window,
  rate limits that refuse a wallet's ninth command): it is detached, and `ConnectionBudget`
  (`net/budget.py`) is the one owner of connection limits, with room reserved for authorities.

A wallet connection with no open stream for `idle_timeout_ms` is closed; that also ends the
connection of a wallet that vanished without a FIN. An authority that vanished is found by the
gossip layer's pings (`net/gossip.py`), which closes its connections.
"""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Final

import multiaddr
import trio
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
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.network.exceptions import SwarmException
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr

from healthnode import crypto, logs
from healthnode.errors import ConfigError
from healthnode.net.addresses import normalise_ip
from healthnode.net.budget import Admission, ConnectionBudget, Kind, Limits
from healthnode.net.framing import (
    CLOSE_TIMEOUT_S,
    Allow,
    BusyHandler,
    FramedStream,
    P2PError,
    StreamHandler,
    abort_connection,
    close_quietly,
    reset_quietly,
)

logs.route_foreign_loggers()
log = logs.get_logger("healthnode.net")

# py-libp2p staggers the dials of a peer's addresses (happy eyeballs) and waits 250 ms after each
# start unless that dial fails, so a successful connect never returns sooner (docs/network.md). We
# dial exactly one configured address per peer (`P2P.dial`), so there is nothing to stagger: without
# the wait a restarted node is linked, and syncing, about 0.2 s sooner. A private constant of the
# library, read at call time; if a new version drops it, this does nothing.
if hasattr(_swarm, "_HAPPY_EYEBALLS_DELAY"):
    _swarm._HAPPY_EYEBALLS_DELAY = 0

# libp2p's own global cap, far above the budget's, so that the budget is what decides.
LIBP2P_CONNECTIONS_MAX: Final = 4096
IDLE_CHECK_INTERVAL_S: Final = 1.0  # how often a wallet connection's idleness is looked at
BUSY_LINGER_S: Final = 2.0  # a refused wallet's connection stays this long to hear `node_busy`
BUSY_CONNECTIONS_MAX: Final = 32  # refused wallets told why at once; beyond, closed unanswered
HANDSHAKE_QUEUE_WAIT_S: Final = 2.0  # a connection waits this long for a handshake slot
HANDSHAKE_WAITERS_MAX: Final = 256  # connections waiting for one; beyond, refused at once
# A client request is one stream of ours; libp2p's identify and ping may add one each.
STREAMS_PER_REQUEST_MAX: Final = 2
STREAM_REFUSALS_MAX: Final = 64  # streams refused on one wallet connection before it is closed

Classify = Callable[[bytes], Kind]
Count = Callable[[str], None]


def public_key_of(peer: ID) -> bytes:
    return crypto.public_key_from_peer_id(peer.to_base58())


def _every_peer_is_a_node(_key: bytes) -> Kind:
    """A wallet's host: whatever it dials is a node of the network."""
    return Kind.AUTHORITY


@dataclass
class _Inbound:
    """One accepted connection: its budget slot, and its streams in our handlers."""

    admission: Admission | None  # None: refused by the budget, told `busy`, then closed
    busy: str | None
    streams: int = 0
    last_active_s: float = field(default_factory=trio.current_time)


class P2P:
    """One libp2p host with healthnode's security settings and connection budget.

    `classify(public_key)` names the kind of an authenticated peer (the node passes one that
    knows its authorities and observers; a wallet's host treats every peer as a node and dials
    anyone). `count_refused(reason)` and `count_dial(kind)` feed the node's metrics."""

    def __init__(self, identity: crypto.Identity, *, limits: Limits | None = None,
                 classify: Classify | None = None, known_hosts: frozenset[str] = frozenset(),
                 count_refused: Count = lambda _reason: None,
                 count_dial: Count = lambda _kind: None) -> None:
        key_pair = create_identity_from_seed(identity.seed)
        noise = NoiseTransport(key_pair, noise_privkey=create_new_x25519_key_pair().private_key)
        self.limits = limits or Limits()
        self.budget = ConnectionBudget(self.limits, known_hosts)
        self._classify = classify or _every_peer_is_a_node
        self._dials_guarded = classify is not None
        self._count_refused = count_refused
        self._count_dial = count_dial
        connections = ConnectionConfig(
            max_connections=LIBP2P_CONNECTIONS_MAX, high_watermark=LIBP2P_CONNECTIONS_MAX,
            min_connections=0, low_watermark=0,
            max_connections_per_peer=self.limits.authority_connections_per_key_max
            + self.limits.wallets_per_key_max,
            inbound_upgrade_timeout=self.limits.handshake_timeout_ms / 1000)
        self._host = new_host(
            key_pair=key_pair,
            sec_opt={NOISE_PROTOCOL_ID: noise},
            muxer_opt=create_yamux_muxer_option(),
            connection_config=connections,
        )
        self._swarm: Any = self._host.get_network()
        self._inbound: dict[int, _Inbound] = {}  # by id() of the muxed connection
        self._busy = 0
        self._handshake_waiters = 0
        self._handshake_freed = trio.Event()
        _repair_swarm(self._swarm, self)
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
            try:
                yield self
            finally:
                await self._close_connections()

    async def _close_connections(self) -> None:
        """Close every connection before the host stops. py-libp2p's own shutdown closes them
        inside an already cancelled scope, so no close ever reaches the socket: the peer keeps
        a dead connection (and its slot) until it notices by itself."""
        muxed = [connection.muxed_conn for connections in list(self._swarm.connections.values())
                 for connection in connections]
        with trio.CancelScope(shield=True):
            async with trio.open_nursery() as nursery:
                for connection in muxed:
                    nursery.start_soon(close_quietly, connection)
                # The socket is closed when `event_closed` is set; what follows in py-libp2p
                # is bookkeeping with two 0.1 s sleeps a connection, which nobody waits for here.
                with trio.move_on_after(CLOSE_TIMEOUT_S):
                    for connection in muxed:
                        await connection.event_closed.wait()
                nursery.cancel_scope.cancel()

    def listen_addresses(self) -> list[str]:
        return [str(a) for a in self._host.get_addrs()]

    def set_handler(self, protocol: str, handler: StreamHandler, allow: Allow,
                    frame_bytes_max: int, busy: BusyHandler | None = None) -> None:
        """Serve `protocol` with `handler` for peers that `allow` admits. On a connection the
        budget refused, `busy` (if given) tells the peer why; otherwise the stream is reset."""
        async def gated(stream: Any) -> None:
            peer_key = public_key_of(stream.muxed_conn.peer_id)
            framed = FramedStream(stream, peer_key, frame_bytes_max)
            inbound = self._inbound.get(id(stream.muxed_conn))
            if not allow(peer_key):
                log.warning("stream_refused", protocol=protocol,
                             peer_pseudonym=logs.pseudonym(peer_key))
                await framed.reset()
                return
            # The kind is asked now, not taken from admission: a key the ledger has just made
            # an authority is one from its next stream on (and one it removed, a wallet).
            if inbound is None or (inbound.admission is not None
                                   and self._classify(peer_key) is not Kind.WALLET):
                await handler(peer_key, framed)
                return
            if inbound.busy is not None:
                if busy is None:
                    await framed.reset()
                else:
                    await busy(framed, inbound.busy)
                return
            if inbound.streams >= self.limits.wallet_streams_max:
                self._count_refused("wallet_streams")
                await framed.reset()
                return
            inbound.streams += 1
            try:
                await handler(peer_key, framed)
            finally:
                inbound.streams -= 1
                inbound.last_active_s = trio.current_time()

        async def loud(stream: Any) -> None:
            """A handler catches what a peer can do to it (net/framing.PEER_FAULTS); anything
            that escapes is a bug of ours: logged with its traceback as `bug` (tests look for
            it in every node's log), counted, and the stream reset. The node serves on."""
            try:
                await gated(stream)
            except Exception as error:
                self._count_refused("internal_error")
                log.error("bug", where=f"stream handler {protocol}", error=type(error).__name__,
                          traceback="".join(traceback.format_exception(error)))
                with contextlib.suppress(Exception):  # the stream may be gone already
                    await stream.reset()

        self._host.set_stream_handler(TProtocol(protocol), loud)

    async def dial(self, address: str) -> bytes:
        """Connect to a `/.../p2p/<peer id>` address; returns the peer's public key."""
        try:
            info = info_from_p2p_addr(multiaddr.Multiaddr(address))
        except Exception as error:
            raise P2PError(f"bad peer address {address!r}: {error}") from None
        # After a failed dial libp2p keeps the peer in a negative cache for 60 s (docs/network.md).
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

    async def abort_peer(self, peer_public_key: bytes) -> None:
        """Close every connection to a peer that stopped answering (`abort_connection`, at once).
        Shielded: the first connection's close may cancel the caller (a link that ends when its
        connection does), and the others must be closed all the same."""
        peer = ID.from_base58(crypto.peer_id(peer_public_key))
        with trio.CancelScope(shield=True):
            await self._abort_all(peer)

    async def _abort_all(self, peer: ID) -> None:
        async with trio.open_nursery() as nursery:
            for connection in list(self._swarm.get_connections(peer)):
                nursery.start_soon(abort_connection, connection.muxed_conn)

    def connections_to(self, peer_public_key: bytes) -> int:
        """Open connections to one peer, both directions."""
        return len(self._swarm.get_connections(ID.from_base58(crypto.peer_id(peer_public_key))))

    def connection_counts(self) -> dict[str, int]:
        """Open connections by kind (both directions); strangers are those in a handshake."""
        counts = {str(kind): 0 for kind in Kind}
        for peer, connections in list(self._swarm.connections.items()):
            counts[str(self._classify(public_key_of(peer)))] += len(connections)
        counts[str(Kind.STRANGER)] = self.budget.handshaking + self.budget.known_handshaking
        return counts

    def known_peers(self) -> int:
        """Peers that libp2p's peerstore holds data of (keys, addresses, protocols)."""
        return len(self._host.get_peerstore().peer_ids())

    def forget_departed_wallets(self) -> int:
        """Drop from libp2p's peerstore every wallet that holds no connection now; how many.
        libp2p keeps what identify told it of every peer that ever connected and answered it,
        up to 1,000 peers (about 10-16 KiB of RSS each, measured with 300 full libp2p
        clients): a node's memory grew with each new client key until the store was full.
        (healthnode's own wallet hangs up before identify completes, so it was not one of
        them.) Authorities and observers are kept."""
        peerstore = self._host.get_peerstore()
        forgotten = 0
        for peer in peerstore.peer_ids():
            if peer == self._host.get_id() or self._swarm.get_connections(peer):
                continue
            try:
                kind = self._classify(public_key_of(peer))
            except ValueError:  # not an Ed25519 peer id: never ours to keep
                kind = Kind.WALLET
            if kind is Kind.WALLET:
                peerstore.clear_peerdata(peer)
                forgotten += 1
        return forgotten

    # --- the inbound path (replaces Swarm._handle_inbound_connection) ----------------------

    async def _accept(self, read_write_closer: Any, maddr: Any) -> None:
        """One inbound connection from its first byte to its end: handshake slot, Noise and
        yamux under a timeout, admission by kind, then hold it until it closes (or idles out)
        and give back everything in `finally`."""
        ip = _remote_ip(read_write_closer)
        refusal = await self._handshake_slot(ip)
        if refusal is not None:
            self._count_refused(refusal)
            await close_quietly(read_write_closer)
            return
        raw = RawConnection(read_write_closer, False)
        inbound: _Inbound | None = None
        muxed: Any = None
        try:
            with trio.move_on_after(self.limits.handshake_timeout_ms / 1000) as deadline:
                secured = await self._swarm.upgrader.upgrade_security(raw, False)
                peer = secured.get_remote_peer()
                key = public_key_of(peer)
                admitted = self.budget.admit(self._classify(key), ip, key)
                if isinstance(admitted, str):
                    self._count_refused(admitted)
                    if self._busy >= BUSY_CONNECTIONS_MAX:
                        await close_quietly(secured)
                        return
                    inbound = _Inbound(None, admitted)
                    self._busy += 1
                else:
                    inbound = _Inbound(admitted, None)
                muxed = await self._swarm.upgrader.upgrade_connection(secured, peer)
            if deadline.cancelled_caught:
                self._count_refused("handshake_timeout")
        except Exception as error:  # a stranger's garbage, a reset: its loss only
            self._count_refused("handshake_failed")
            log.debug("handshake_failed", ip=ip, error=str(error)[:120])
        finally:
            self._end_handshake(ip)
        try:
            if muxed is None:
                await close_quietly(raw)
                return
            assert inbound is not None
            self._inbound[id(muxed)] = inbound
            if inbound.admission is None or inbound.admission.kind is Kind.WALLET:
                _cap_streams(muxed, self.limits.wallet_streams_max * STREAMS_PER_REQUEST_MAX,
                             self._count_refused)
            try:
                connection = await self._swarm.add_conn(muxed, direction="inbound")
            except Exception as error:  # SwarmException, or the peer left at once
                self._count_refused("add_failed")
                log.debug("connection_not_added", ip=ip, error=str(error)[:120])
                return
            await self._hold(connection, inbound)
        finally:
            if inbound is not None:
                if inbound.admission is not None:
                    self.budget.release(inbound.admission)
                else:
                    self._busy -= 1
            if muxed is not None:
                with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT_S):
                    await close_quietly(muxed)  # a no-op if the peer closed it
                self._inbound.pop(id(muxed), None)

    async def _handshake_slot(self, ip: str) -> str | None:
        """Take a handshake slot, waiting up to `HANDSHAKE_QUEUE_WAIT_S` when the share is full
        (a burst of wallets dialling at once is smoothed, not refused); None once taken, else
        the refusal. An address already at its own limit is refused at once: that is a flood."""
        refusal = self.budget.start_handshake(ip)
        if refusal is None or refusal == "handshakes_per_ip":
            return refusal
        if self._handshake_waiters >= HANDSHAKE_WAITERS_MAX:
            return refusal
        self._handshake_waiters += 1
        try:
            with trio.move_on_after(HANDSHAKE_QUEUE_WAIT_S):
                while refusal == "handshakes_full":
                    await self._handshake_freed.wait()
                    refusal = self.budget.start_handshake(ip)
        finally:
            self._handshake_waiters -= 1
        return refusal

    def _end_handshake(self, ip: str) -> None:
        self.budget.end_handshake(ip)
        self._handshake_freed.set()
        self._handshake_freed = trio.Event()

    async def _hold(self, connection: Any, inbound: _Inbound) -> None:
        """Wait for the connection's end; a refused wallet's after it heard why, a wallet's
        once it has been idle too long; keep an authority's newest few only."""
        if inbound.busy is not None:
            with trio.move_on_after(BUSY_LINGER_S):
                await _closed(connection)
            return
        assert inbound.admission is not None
        peer = connection.muxed_conn.peer_id
        if inbound.admission.kind is not Kind.WALLET:
            await self._trim_peer(peer)
        idle_s = self.limits.idle_timeout_ms / 1000
        key = inbound.admission.key
        while not _is_closed(connection):
            with trio.move_on_after(IDLE_CHECK_INTERVAL_S):
                await _closed(connection)
            # Idle means: no request of ours in progress or finished lately. libp2p's own
            # protocols (ping, identify) do not count, or a wallet could hold its slot for
            # ever by pinging.
            if inbound.streams or self._classify(key) is not Kind.WALLET:
                inbound.last_active_s = trio.current_time()
            elif trio.current_time() - inbound.last_active_s > idle_s:
                self._count_refused("idle_timeout")
                return

    async def _trim_peer(self, peer: ID) -> None:
        """An authority redialling before its old connections were noticed dead: close the
        oldest beyond `authority_connections_per_key_max`."""
        connections = sorted(self._swarm.get_connections(peer),
                             key=lambda c: getattr(c, "_created_at", 0.0))
        excess = len(connections) - self.limits.authority_connections_per_key_max
        for old in connections[:max(excess, 0)]:
            self._count_refused("authority_trimmed")
            with trio.move_on_after(CLOSE_TIMEOUT_S):
                await close_quietly(old)

    async def _guarded_dial(self, dial_peer: Callable[[ID], Awaitable[Any]], peer: ID) -> Any:
        kind = self._classify(public_key_of(peer))
        self._count_dial(str(kind))
        if self._dials_guarded and kind is Kind.WALLET:
            raise SwarmException(f"{peer}: not an authority, observer or configured peer; "
                                 "this node dials no one else")
        return await dial_peer(peer)


class _InertAutoConnector:
    """Stands in for py-libp2p's AutoConnector, which dials peerstore entries to keep a minimum
    of connections: a healthnode node dials only whom it decides to (`Gossip`, block sync)."""

    _is_connecting = False
    _last_trim_time = 0.0

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def run_background_task(self, _nursery: Any) -> None:
        return None

    async def maybe_connect(self) -> None:
        return None

    def set_discovery_callback(self, _callback: Any) -> None:
        return None


class _InertPruner(_InertAutoConnector):
    """Stands in for py-libp2p's ConnectionPruner: the budget, not a watermark, decides."""

    async def maybe_prune_connections(self) -> None:
        return None


def _repair_swarm(swarm: Any, p2p: P2P) -> None:
    """Apply the fixes named in the module docstring to one host's swarm."""
    swarm._handle_inbound_connection = p2p._accept
    swarm.auto_connector = _InertAutoConnector()
    swarm.connection_pruner = _InertPruner()
    swarm.set_resource_manager(None)
    dial_peer = swarm.dial_peer

    async def guarded_dial(peer: ID) -> Any:
        return await p2p._guarded_dial(dial_peer, peer)

    swarm.dial_peer = guarded_dial


def _cap_streams(muxed: Any, streams_max: int, count_refused: Count) -> None:
    """Refuse a wallet connection's streams beyond `streams_max` open at once, as they arrive.

    py-libp2p's yamux accepts every stream a peer opens and the swarm starts a task for each,
    which then waits up to 10 s in protocol negotiation: 5,000 stream openings in 0.6 s made
    5,000 tasks. Wrapping this connection's `accept_stream` resets the excess before any task
    exists; a peer that keeps trying is disconnected."""
    accept_stream = muxed.accept_stream
    refused = 0

    async def capped_accept_stream() -> Any:
        nonlocal refused
        while True:
            stream = await accept_stream()
            if len(getattr(muxed, "streams", ())) <= streams_max:
                return stream
            refused += 1
            count_refused("wallet_streams")
            await reset_quietly(stream)
            if refused > STREAM_REFUSALS_MAX:
                count_refused("wallet_stream_flood")
                await close_quietly(muxed)

    muxed.accept_stream = capped_accept_stream


def _is_closed(connection: Any) -> bool:
    return bool(connection.event_closed.is_set() or connection.muxed_conn.event_closed.is_set())


async def _closed(connection: Any) -> None:
    """Until the connection is closed: its muxer (the socket) or the swarm's record of it,
    whichever is first (py-libp2p sets the second about 0.1 s after a peer's clean close)."""
    async with trio.open_nursery() as nursery:
        async def wait(event: trio.Event) -> None:
            await event.wait()
            nursery.cancel_scope.cancel()

        nursery.start_soon(wait, connection.event_closed)
        nursery.start_soon(wait, connection.muxed_conn.event_closed)


def _remote_ip(read_write_closer: Any) -> str:
    try:
        address = read_write_closer.get_remote_address()
    except Exception:  # a socket already gone
        return "?"
    return normalise_ip(str(address[0])) if address else "?"


__all__ = ["P2P", "Kind", "Limits", "P2PError"]
