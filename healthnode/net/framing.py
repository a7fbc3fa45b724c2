"""Length-prefixed frames for healthnode's stream protocols: `FrameDecoder` and `encode_frame`
(sans-IO), `FramedStream`, a libp2p stream that carries them, and `Transport`, what the node's
parts ask of the host that dials and serves those streams (net/p2p.P2P, over libp2p; a test may
hand the node another, as tests/memory_net.py does under trio's MockClock).

py-libp2p's `stream.read(n)` may return fewer bytes than asked (docs/network.md), so every message
on a stream travels as `uvarint(length) || payload`. `FrameDecoder` is fed whatever bytes arrived
and yields whole payloads; it never buffers more than one frame plus one read, and a length above
the stream's limit, or a varint longer than 10 bytes or not minimally encoded, is a `FrameError`
before any payload is buffered: the shell then closes the stream and penalises the peer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Final, Protocol

import trio

from healthnode.codec import CodecError

VARINT_BYTES_MAX: Final = 10


class P2PError(Exception):
    """A dial or stream could not be established, or broke."""


class StreamBroken(P2PError):
    """The stream, or the connection under it, broke while we wrote to it: reset, closed,
    lost. libp2p raises many unrelated types for this; `FramedStream` turns them into one."""


class FrameError(CodecError):
    """The byte stream is not a sequence of valid frames; the stream must be closed."""


def encode_uvarint(value: int) -> bytes:
    if value < 0:
        raise ValueError("uvarint of a negative number")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_frame(payload: bytes, frame_bytes_max: int) -> bytes:
    if len(payload) > frame_bytes_max:
        raise FrameError(f"frame of {len(payload)} bytes exceeds the limit {frame_bytes_max}")
    return encode_uvarint(len(payload)) + payload


class FrameDecoder:
    """Feed received bytes with `feed`, then take complete payloads from `frames`."""

    def __init__(self, frame_bytes_max: int) -> None:
        self.frame_bytes_max = frame_bytes_max
        self._buffer = bytearray()
        self._expected: int | None = None

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes; return every payload completed by them, in order."""
        self._buffer += data
        frames: list[bytes] = []
        while True:
            if self._expected is None:
                header = self._read_length()
                if header is None:
                    return frames
                self._expected, used = header
                del self._buffer[:used]
            if len(self._buffer) < self._expected:
                return frames
            frames.append(bytes(self._buffer[: self._expected]))
            del self._buffer[: self._expected]
            self._expected = None

    @property
    def buffered_bytes(self) -> int:
        return len(self._buffer)

    def _read_length(self) -> tuple[int, int] | None:
        value = 0
        for index, byte in enumerate(self._buffer[:VARINT_BYTES_MAX]):
            value |= (byte & 0x7F) << (7 * index)
            if not byte & 0x80:
                if index > 0 and byte == 0:
                    raise FrameError("frame length is not minimally encoded")
                if value > self.frame_bytes_max:
                    raise FrameError(
                        f"frame of {value} bytes exceeds the limit {self.frame_bytes_max}"
                    )
                return value, index + 1
        if len(self._buffer) >= VARINT_BYTES_MAX:
            raise FrameError(f"frame length longer than {VARINT_BYTES_MAX} bytes")
        return None


READ_CHUNK_BYTES: Final = 1024 * 1024  # what has arrived, up to this: fewer, larger reads
CLOSE_TIMEOUT_S: Final = 2.0


class FramedStream:
    """A libp2p stream carrying length-prefixed frames of at most `frame_bytes_max` bytes."""

    def __init__(self, stream: Any, peer_public_key: bytes, frame_bytes_max: int) -> None:
        self._stream = stream
        self.peer_public_key = peer_public_key
        self._frame_bytes_max = frame_bytes_max
        self._decoder = FrameDecoder(frame_bytes_max)
        self._ready: list[bytes] = []

    async def send(self, payload: bytes) -> None:
        """Send one frame; StreamBroken if the stream or its connection broke."""
        frame = encode_frame(payload, self._frame_bytes_max)
        try:
            await self._stream.write(frame)
        except Exception as error:  # libp2p's stream errors: reset, closed, connection lost
            raise StreamBroken(f"{type(error).__name__}: {str(error)[:120]}") from None

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

    async def connection_closed(self) -> None:
        """Return once the connection this stream runs on has closed."""
        await self._stream.muxed_conn.event_closed.wait()

    async def close_connection(self) -> None:
        """Close the connection this stream runs on (only that one: the peer may already have
        dialled a fresh one, which must live). The peer may have vanished: see
        `abort_connection`."""
        await abort_connection(self._stream.muxed_conn)


async def reset_quietly(stream: Any) -> None:
    with contextlib.suppress(Exception):  # already reset or closed
        await stream.reset()


async def abort_connection(muxed: Any) -> None:
    """Close a connection whose peer may be gone. The socket is closed first: a task blocked
    writing to a stopped peer holds yamux's stream lock, which its polite close (GO_AWAY) would
    wait for; closing the socket fails that write and frees the lock. Then yamux's own close
    tidies up, within `CLOSE_TIMEOUT_S`."""
    with trio.move_on_after(CLOSE_TIMEOUT_S):
        secured = getattr(muxed, "secured_conn", None)
        if secured is not None:
            await close_quietly(secured)
        await close_quietly(muxed)


async def close_quietly(closeable: Any) -> None:
    with contextlib.suppress(Exception):  # already closed or reset by the peer
        await closeable.close()


# What a peer can do to a request of ours: fail the dial or the stream, send bytes that do not
# decode, or take too long. Code that talks to a peer catches these, and only these: anything
# else is a bug of ours and must be seen (docs/architecture.md, rule 5).
PEER_FAULTS: Final = (P2PError, CodecError, trio.TooSlowError)


Allow = Callable[[bytes], bool]
StreamHandler = Callable[[bytes, FramedStream], Awaitable[None]]
BusyHandler = Callable[[FramedStream, str], Awaitable[None]]


class Transport(Protocol):
    """The host of the node's stream protocols, as the node's parts use it. Peers are named by
    their Ed25519 public keys; every failure to reach one is a P2PError."""

    peer_id: str

    def running(self, listen: list[str]) -> AbstractAsyncContextManager[Any]:
        """Listen on `listen` while the context is open; close every connection at its end."""
        ...

    def listen_addresses(self) -> list[str]: ...

    def set_handler(self, protocol: str, handler: StreamHandler, allow: Allow,
                    frame_bytes_max: int, busy: BusyHandler | None = None) -> None: ...

    async def dial(self, address: str) -> bytes:
        """Connect to a `/.../p2p/<peer id>` address; the peer's public key."""
        ...

    async def open_stream(self, peer_public_key: bytes, protocol: str,
                          frame_bytes_max: int) -> FramedStream: ...

    async def disconnect(self, peer_public_key: bytes) -> None: ...

    async def abort_peer(self, peer_public_key: bytes) -> None:
        """Close every connection to a peer that stopped answering, at once."""
        ...

    def connections_to(self, peer_public_key: bytes) -> int: ...

    def connection_counts(self) -> dict[str, int]:
        """Open connections by kind (`net.budget.Kind`), strangers being those in a handshake."""
        ...

    def known_peers(self) -> int: ...

    def forget_departed_wallets(self) -> int: ...
