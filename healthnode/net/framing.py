"""Length-prefixed frames for healthnode's stream protocols, sans-IO.

py-libp2p's `stream.read(n)` may return fewer bytes than asked (docs/network.md), so every message
on a stream travels as `uvarint(length) || payload`. `FrameDecoder` is fed whatever bytes arrived
and yields whole payloads; it never buffers more than one frame plus one read, and a length above
the stream's limit, or a varint longer than 10 bytes or not minimally encoded, is a `FrameError`
before any payload is buffered: the shell then closes the stream and penalises the peer.
"""

from __future__ import annotations

from typing import Final

from healthnode.codec import CodecError

VARINT_BYTES_MAX: Final = 10


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
