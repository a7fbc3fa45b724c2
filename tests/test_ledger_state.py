"""The ledger's overlay: buffered writes seen by reads, encoded when read or collected."""

from __future__ import annotations

from healthnode.ledger.state import MemoryState, Overlay, read, with_change
from healthnode.protocol.state import SignerNonce


def test_a_written_value_reads_back_as_its_encoding_and_changes_come_in_key_order() -> None:
    base = MemoryState({b"n/a": SignerNonce(1).encode(), b"n/c": SignerNonce(3).encode()})
    overlay = Overlay(base)
    overlay.put(b"n/b", SignerNonce(2))
    overlay.put(b"n/a", SignerNonce(7))
    overlay.delete(b"n/c")
    overlay.put(b"x/raw", b"bytes as they are")
    assert overlay.get(b"n/b") == SignerNonce(2).encode()
    assert overlay.get(b"n/c") is None
    assert overlay.get(b"n/z") is None
    assert list(overlay.scan(b"n/")) == [
        (b"n/a", SignerNonce(7).encode()), (b"n/b", SignerNonce(2).encode())]
    assert overlay.changes() == (
        (b"n/a", SignerNonce(7).encode()), (b"n/b", SignerNonce(2).encode()), (b"n/c", None),
        (b"x/raw", b"bytes as they are"))
    assert base.get(b"n/a") == SignerNonce(1).encode()  # the base is never written


def test_a_typed_read_returns_the_written_message_and_sees_through_nested_overlays() -> None:
    base = MemoryState({b"n/a": SignerNonce(1).encode()})
    outer = Overlay(base)
    written = SignerNonce(5)
    outer.put(b"n/b", written)
    outer.put(b"n/raw", SignerNonce(9).encode())
    outer.delete(b"n/a")
    inner = Overlay(outer)
    assert read(outer, b"n/b", SignerNonce) is written  # not encoded and decoded again
    assert read(inner, b"n/b", SignerNonce) is written
    assert read(inner, b"n/raw", SignerNonce) == SignerNonce(9)
    assert read(inner, b"n/a", SignerNonce) is None
    assert read(Overlay(base), b"n/a", SignerNonce) == SignerNonce(1)
    assert read(inner, b"n/none", SignerNonce) is None


def test_with_change_keeps_key_order_whether_it_replaces_or_inserts() -> None:
    changes = ((b"a", b"1"), (b"c", None), (b"e", b"5"))
    assert with_change(changes, b"c", b"3") == ((b"a", b"1"), (b"c", b"3"), (b"e", b"5"))
    assert with_change(changes, b"d", b"4") == (
        (b"a", b"1"), (b"c", None), (b"d", b"4"), (b"e", b"5"))
    assert with_change(changes, b"0", None)[0] == (b"0", None)
    assert with_change(changes, b"z", b"9")[-1] == (b"z", b"9")
    assert with_change((), b"k", b"v") == ((b"k", b"v"),)
