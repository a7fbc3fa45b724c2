"""Hostile peers against a real network: a stranger's gossip and sync streams are refused, a
plaintext dialer cannot connect, and malformed or oversized frames on every protocol the node
speaks (libp2p's own handshake included) are dropped and counted while the network goes on."""

from __future__ import annotations

import contextlib
import random
from pathlib import Path

import multiaddr
import pytest
import trio
from libp2p import PLAINTEXT_PROTOCOL_ID, InsecureTransport, create_identity_from_seed, new_host
from libp2p.peer.peerinfo import info_from_p2p_addr

from healthnode import crypto
from healthnode.codec import pack
from healthnode.home.config import KEY_FILE, load_config
from healthnode.home.keys import load_identity
from healthnode.net.framing import FramedStream, encode_uvarint
from healthnode.net.p2p import P2P, P2PError
from healthnode.protocol.block import PREVOTE, Header, Proposal, Vote
from healthnode.protocol.wire import (
    GOSSIP_FRAME_BYTES_MAX,
    GOSSIP_PROTOCOL,
    PROTOCOL_VERSION,
    SYNC_PROTOCOL,
    BlockWanted,
    CompactProposal,
    Hello,
)
from tests.cluster import Cluster, Patient

LISTEN = ["/ip4/127.0.0.1/tcp/0"]


def node_address(cluster: Cluster, index: int) -> str:
    listen = load_config(cluster.homes[index]).p2p.listen[0]
    return f"{listen}/p2p/{crypto.peer_id(cluster.public_keys[index])}"


async def refused(p2p: P2P, peer: bytes, protocol: str) -> bool:
    """Whether the node refuses our stream on `protocol` (reset in negotiation or at once)."""
    try:
        stream = await p2p.open_stream(peer, protocol, GOSSIP_FRAME_BYTES_MAX)
    except P2PError:
        return True
    with contextlib.suppress(Exception):
        await stream.send(Vote(PREVOTE, 1, 0, None, b"").sign(
            crypto.Identity.generate(), "healthnode-testnet").encode())
    with trio.fail_after(20):
        return await stream.receive() is None


async def send_raw(stream: FramedStream, data: bytes) -> None:
    await stream._stream.write(data)  # bytes that are not frames, on purpose


@pytest.fixture
def three_of_four(tmp_path: Path) -> Cluster:
    cluster = Cluster(tmp_path / "net")
    for index in (0, 1, 2):
        cluster.start(index)
    return cluster


async def test_hostile_peers_are_refused_and_garbage_is_dropped_without_harm(
        three_of_four: Cluster) -> None:
    cluster = three_of_four
    try:
        for index in (0, 1, 2):
            await trio.to_thread.run_sync(cluster.wait_ready, index)
        target, target_key = node_address(cluster, 0), cluster.public_keys[0]

        # A peer that is not an authority: both node protocols are refused.
        stranger = P2P(crypto.Identity.generate())
        async with stranger.running(LISTEN):
            await stranger.dial(target)
            assert await refused(stranger, target_key, GOSSIP_PROTOCOL)
            assert await refused(stranger, target_key, SYNC_PROTOCOL)

        # A plaintext dialer cannot even connect (Noise only).
        key_pair = create_identity_from_seed(b"\x09" * 32)
        plaintext = new_host(key_pair=key_pair,
                             sec_opt={PLAINTEXT_PROTOCOL_ID: InsecureTransport(key_pair)})
        async with plaintext.run(listen_addrs=[multiaddr.Multiaddr(LISTEN[0])]):
            with pytest.raises(Exception, match=r"unable to connect|failed"), \
                    trio.fail_after(15):
                await plaintext.connect(info_from_p2p_addr(multiaddr.Multiaddr(target)))

        # An authority's key (node3 is not running) sending garbage on every protocol.
        impostor_identity = load_identity(cluster.homes[3] / KEY_FILE, expected_kind="node")
        impostor = P2P(impostor_identity)
        async with impostor.running(LISTEN):
            await impostor.dial(target)
            # A stream that does not start with a Hello is refused at once.
            mute = await impostor.open_stream(target_key, GOSSIP_PROTOCOL, GOSSIP_FRAME_BYTES_MAX)
            await mute.send(b"\xc1\xc1\xc1")
            with trio.fail_after(10):
                assert await mute.receive() is None  # reset, unanswered
            # One that greets first is read, and its garbage dropped frame by frame.
            gossip = await impostor.open_stream(target_key, GOSSIP_PROTOCOL,
                                                GOSSIP_FRAME_BYTES_MAX)
            await gossip.send(Hello(PROTOCOL_VERSION, cluster.genesis.hash).encode())
            with trio.fail_after(10):
                assert await gossip.receive() is not None  # the node's own Hello
            await gossip.send(b"\xc1\xc1\xc1")  # not msgpack
            await gossip.send(pack([99, 1, b"unknown kind"]))
            await gossip.send(pack([21, 1, 1]))  # a vote with missing fields
            # A compact proposal whose header is not the block its proposal signs, and a
            # request for a block this node never sent: both counted, neither answered.
            header = Header("healthnode-testnet", 1, 1, bytes(32), None, bytes(32), bytes(32),
                            bytes(32), bytes(32), impostor_identity.public_key)
            signed = Proposal(1, 0, -1, b"\x01" * 32, b"").sign(impostor_identity,
                                                                 "healthnode-testnet")
            await gossip.send(CompactProposal(signed, header, (), ()).encode())
            await gossip.send(BlockWanted(b"\x02" * 32, 1).encode())
            await trio.sleep(0.3)  # so the next bytes arrive in a read of their own
            await send_raw(gossip, encode_uvarint(GOSSIP_FRAME_BYTES_MAX + 1))  # oversized
            sync = await impostor.open_stream(target_key, SYNC_PROTOCOL, 1024)
            await sync.send(b"\x92\x01")  # not a sync request
            endless = await impostor.open_stream(target_key, SYNC_PROTOCOL, 1024)
            await send_raw(endless, b"\xff" * 12)  # a length prefix that never ends
            await trio.sleep(1)

        # Below libp2p: raw bytes into the TCP listener, and a broken multistream handshake.
        host, port = "127.0.0.1", int(target.split("/tcp/")[1].split("/")[0])
        noise = random.Random(7)
        for payload in (bytes(noise.getrandbits(8) for _ in range(4096)),
                        b"\x13/multistream/1.0.0\n\xff\xff\xff\xff\xff",
                        b"\x13/multistream/1.0.0\n\x0b/noise\nxxxx" + b"\x00" * 70000):
            with contextlib.suppress(OSError):
                tcp = await trio.open_tcp_stream(host, port)
                with contextlib.suppress(trio.BrokenResourceError, OSError):
                    await tcp.send_all(payload)
                    with trio.move_on_after(1):
                        await tcp.receive_some(1024)
                await tcp.aclose()
    except BaseException:
        cluster.close()
        raise

    def after() -> None:
        try:
            assert cluster.rejected(0, "peer_hello_missing") >= 1
            assert cluster.rejected(0, "malformed_frame") >= 3
            assert cluster.rejected(0, "bad_frame") >= 1
            assert cluster.rejected(0, "malformed_sync_request") >= 2
            assert cluster.rejected(0, "block_hash_mismatch") >= 1
            assert cluster.rejected(0, "block_wanted_unknown") >= 1
            assert cluster.rejected(0, "libp2p_error") + cluster.rejected(
                0, "libp2p_warning") >= 1  # plaintext dialer and TCP garbage, seen by libp2p
            assert sorted(cluster.running()) == [0, 1, 2], "a node died"
            # The network goes on: a new record is finalized everywhere.
            tx = cluster.submit(0, Patient().anchor())
            cluster.wait_final([tx], [0, 1, 2], timeout_s=30)
        finally:
            cluster.close()

    await trio.to_thread.run_sync(after)
