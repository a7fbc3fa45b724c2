"""Stream framing: whole payloads out of arbitrarily split input, typed errors for bad lengths."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from healthnode.net.framing import FrameDecoder, FrameError, encode_frame, encode_uvarint

LIMIT = 4096


@given(st.lists(st.binary(max_size=300), max_size=20), st.data())
def test_frames_survive_any_split_of_the_stream(payloads: list[bytes],
                                                data: st.DataObject) -> None:
    stream = b"".join(encode_frame(p, LIMIT) for p in payloads)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=30)))
    decoder = FrameDecoder(LIMIT)
    received: list[bytes] = []
    start = 0
    for cut in [*cuts, len(stream)]:
        received += decoder.feed(stream[start:cut])
        start = cut
    assert received == payloads
    assert decoder.buffered_bytes == 0


def test_a_length_over_the_limit_is_refused_before_buffering_the_payload() -> None:
    decoder = FrameDecoder(LIMIT)
    with pytest.raises(FrameError, match="exceeds the limit 4096"):
        decoder.feed(encode_uvarint(LIMIT + 1))


def test_sending_an_oversized_frame_is_refused() -> None:
    with pytest.raises(FrameError):
        encode_frame(bytes(LIMIT + 1), LIMIT)


def test_an_endless_varint_is_refused() -> None:
    with pytest.raises(FrameError, match="longer than 10 bytes"):
        FrameDecoder(LIMIT).feed(b"\xff" * 11)


def test_a_non_minimal_length_is_refused() -> None:
    with pytest.raises(FrameError, match="minimally"):
        FrameDecoder(LIMIT).feed(b"\x85\x00hello")


def test_uvarint_known_values() -> None:
    assert encode_uvarint(0) == b"\x00"
    assert encode_uvarint(127) == b"\x7f"
    assert encode_uvarint(128) == b"\x80\x01"
    assert encode_uvarint(300) == b"\xac\x02"
