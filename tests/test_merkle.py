"""Merkle roots and inclusion proofs over transaction hashes (RFC 6962 shape)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from healthnode.crypto import digest
from healthnode.protocol import merkle

hashes = st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=70)


def test_known_answers_for_small_trees() -> None:
    a, b, c = (bytes([i]) * 32 for i in (1, 2, 3))
    leaf = [digest(b"\x00" + x) for x in (a, b, c)]
    assert merkle.root([]) == digest(b"")
    assert merkle.root([a]) == leaf[0]
    assert merkle.root([a, b]) == digest(b"\x01" + leaf[0] + leaf[1])
    assert merkle.root([a, b, c]) == digest(
        b"\x01" + digest(b"\x01" + leaf[0] + leaf[1]) + leaf[2])


@given(hashes)
def test_the_root_is_the_largest_power_of_two_split(items: list[bytes]) -> None:
    """RFC 9162's definition, written as the RFC does (recursive split), is the model."""

    def subtree(leaves: list[bytes]) -> bytes:
        if len(leaves) == 1:
            return leaves[0]
        k = 1 << ((len(leaves) - 1).bit_length() - 1)
        return digest(b"\x01" + subtree(leaves[:k]) + subtree(leaves[k:]))

    leaves = [merkle.leaf_hash(item) for item in items]
    assert merkle.root(items) == subtree(leaves)


@given(hashes)
def test_every_proof_verifies(items: list[bytes]) -> None:
    root = merkle.root(items)
    for index, item in enumerate(items):
        proof = merkle.inclusion_proof(items, index)
        assert merkle.verify_inclusion(root, item, index, len(items), proof)


@given(hashes, st.data())
def test_a_wrong_proof_fails(items: list[bytes], data: st.DataObject) -> None:
    root = merkle.root(items)
    index = data.draw(st.integers(0, len(items) - 1))
    proof = merkle.inclusion_proof(items, index)
    size = len(items)
    other_item = bytes(32) if items[index] != bytes(32) else b"\x01" * 32
    assert not merkle.verify_inclusion(root, other_item, index, size, proof)
    assert not merkle.verify_inclusion(digest(root), items[index], index, size, proof)
    assert not merkle.verify_inclusion(root, items[index], size, size, proof)
    if size > 1:
        wrong_index = data.draw(st.integers(0, size - 1).filter(
            lambda i: items[i] != items[index]))  if len(set(items)) > 1 else None
        if wrong_index is not None:
            assert not merkle.verify_inclusion(root, items[index], wrong_index, size, proof)
        position = data.draw(st.integers(0, len(proof) - 1))
        bent = list(proof)
        bent[position] = digest(bent[position])
        assert not merkle.verify_inclusion(root, items[index], index, size, bent)
        assert not merkle.verify_inclusion(root, items[index], index, size, proof[:-1])
        assert not merkle.verify_inclusion(root, items[index], index, size, [*proof, root])


def test_the_root_depends_on_order() -> None:
    a, b = b"\x01" * 32, b"\x02" * 32
    assert merkle.root([a, b]) != merkle.root([b, a])
