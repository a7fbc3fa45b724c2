"""The libp2p adapter between real hosts on 127.0.0.1: Noise only, framed streams, gating."""

from __future__ import annotations

import contextlib

import multiaddr
import pytest
import structlog
import trio
from libp2p import PLAINTEXT_PROTOCOL_ID, InsecureTransport, create_identity_from_seed, new_host
from libp2p.peer.peerinfo import info_from_p2p_addr

from healthnode import crypto
from healthnode.net.framing import FramedStream, FrameError
from healthnode.net.p2p import P2P, P2PError

PROTOCOL = "/healthnode/test/1"
FRAME_MAX = 1024
LISTEN = ["/ip4/127.0.0.1/tcp/0"]


def address_of(node: P2P) -> str:
    return f"{node.listen_addresses()[0]}/p2p/{node.peer_id}" \
        if "/p2p/" not in node.listen_addresses()[0] else node.listen_addresses()[0]


async def echo(peer: bytes, stream: FramedStream) -> None:
    while (frame := await stream.receive()) is not None:
        await stream.send(b"echo:" + frame)


def test_peer_id_round_trips_to_the_public_key() -> None:
    key = crypto.Identity.generate().public_key
    assert crypto.public_key_from_peer_id(crypto.peer_id(key)) == key
    with pytest.raises(ValueError, match="not the peer id of an Ed25519 key"):
        crypto.public_key_from_peer_id("QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N")


async def test_frames_travel_both_ways_between_allowed_peers() -> None:
    server, client = P2P(crypto.Identity.generate()), P2P(crypto.Identity.generate())
    server.set_handler(PROTOCOL, echo, allow=lambda key: key == client.public_key,
                       frame_bytes_max=FRAME_MAX)
    async with server.running(LISTEN), client.running(LISTEN):
        assert await client.dial(address_of(server)) == server.public_key
        stream = await client.open_stream(server.public_key, PROTOCOL, FRAME_MAX)
        for payload in (b"one", b"", b"x" * 900):
            await stream.send(payload)
            assert await stream.receive() == b"echo:" + payload
        await stream.close()
        assert server.public_key in client.connected_peers()


async def test_a_peer_that_is_not_allowed_gets_its_stream_reset() -> None:
    server, stranger = P2P(crypto.Identity.generate()), P2P(crypto.Identity.generate())
    server.set_handler(PROTOCOL, echo, allow=lambda key: False, frame_bytes_max=FRAME_MAX)
    async with server.running(LISTEN), stranger.running(LISTEN):
        await stranger.dial(address_of(server))
        with trio.fail_after(40):
            try:
                stream = await stranger.open_stream(server.public_key, PROTOCOL, FRAME_MAX)
            except P2PError as error:
                # The reset usually lands during protocol negotiation.
                assert "cannot open" in str(error)
                return
            with contextlib.suppress(Exception):  # a reset may already be visible on write
                await stream.send(b"let me in")
            assert await stream.receive() is None


async def test_oversized_frames_are_typed_errors_on_the_receiving_side() -> None:
    server, client = P2P(crypto.Identity.generate()), P2P(crypto.Identity.generate())
    seen: list[str] = []

    async def strict(peer: bytes, stream: FramedStream) -> None:
        try:
            await stream.receive()
        except FrameError as error:
            seen.append(str(error))
            await stream.reset()

    server.set_handler(PROTOCOL, strict, allow=lambda key: True, frame_bytes_max=16)
    async with server.running(LISTEN), client.running(LISTEN):
        await client.dial(address_of(server))
        stream = await client.open_stream(server.public_key, PROTOCOL, FRAME_MAX)
        await stream.send(b"y" * 100)
        with trio.fail_after(10):
            while not seen:
                await trio.sleep(0.01)
    assert "exceeds the limit 16" in seen[0]


async def test_a_plaintext_dialer_cannot_connect() -> None:
    server = P2P(crypto.Identity.generate())
    server.set_handler(PROTOCOL, echo, allow=lambda key: True, frame_bytes_max=FRAME_MAX)
    key_pair = create_identity_from_seed(b"\x07" * 32)
    plaintext = new_host(key_pair=key_pair,
                         sec_opt={PLAINTEXT_PROTOCOL_ID: InsecureTransport(key_pair)})
    async with server.running(LISTEN), plaintext.run(
            listen_addrs=[multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        info = info_from_p2p_addr(multiaddr.Multiaddr(address_of(server)))
        with pytest.raises(Exception, match=r"unable to connect|failed"):
            with trio.fail_after(15):
                await plaintext.connect(info)
        assert server.connected_peers() == []


async def test_a_bug_in_a_stream_handler_is_logged_with_its_traceback_and_the_host_serves_on(
        ) -> None:
    """A handler catches what a peer can do to it; an exception that escapes is our bug:
    logged as `bug` with its traceback (a test cluster fails on it), counted, the stream
    reset, and the host keeps serving every other stream."""
    async def broken(peer: bytes, stream: FramedStream) -> None:
        raise KeyError("planted")

    counted: list[str] = []
    server = P2P(crypto.Identity.generate(), count_refused=counted.append)
    client = P2P(crypto.Identity.generate())
    server.set_handler("/healthnode/broken/1", broken, allow=lambda key: True,
                       frame_bytes_max=FRAME_MAX)
    server.set_handler(PROTOCOL, echo, allow=lambda key: True, frame_bytes_max=FRAME_MAX)
    with structlog.testing.capture_logs() as events:
        async with server.running(LISTEN), client.running(LISTEN):
            await client.dial(address_of(server))
            stream = await client.open_stream(server.public_key, "/healthnode/broken/1",
                                              FRAME_MAX)
            with trio.fail_after(10):
                assert await stream.receive() is None  # reset, unanswered
            echoed = await client.open_stream(server.public_key, PROTOCOL, FRAME_MAX)
            await echoed.send(b"still here")
            assert await echoed.receive() == b"echo:still here"
    [bug] = [e for e in events if e["event"] == "bug"]
    assert bug["log_level"] == "error" and bug["error"] == "KeyError"
    assert "/healthnode/broken/1" in bug["where"]
    assert 'raise KeyError("planted")' in bug["traceback"]
    assert counted.count("internal_error") == 1
