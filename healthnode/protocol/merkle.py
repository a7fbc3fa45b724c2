"""Merkle tree over transaction hashes, as in RFC 6962 / RFC 9162 (Certificate Transparency).

Leaves and inner nodes are hashed with distinct prefixes (0x00, 0x01), so a leaf can never be
passed off as an inner node. The tree splits at the largest power of two below its size, so proofs
for a tree of n leaves have at most ceil(log2 n) hashes and anyone can check that a transaction is
in a block from the header's `txs_root` alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from hashlib import blake2b as _blake2b

from healthnode.crypto import digest

_LEAF = b"\x00"
_NODE = b"\x01"
EMPTY_ROOT = digest(b"")


def leaf_hash(item_hash: bytes) -> bytes:
    return digest(_LEAF + item_hash)


def _node_hash(left: bytes, right: bytes) -> bytes:
    return digest(_NODE + left + right)


def root(item_hashes: Sequence[bytes]) -> bytes:
    """The Merkle root of the item hashes, in order.

    Computed level by level (`levels`), pairing neighbours and carrying an odd last node up
    unchanged: the same tree as splitting at the largest power of two (the left part is always
    complete), without a Python call per node (a block's root is computed for every block a
    node checks)."""
    if not item_hashes:
        return EMPTY_ROOT
    return levels(item_hashes)[-1][0]


def inclusion_proof(item_hashes: Sequence[bytes], index: int) -> list[bytes]:
    """The audit path of item `index`: sibling hashes from the leaf up to the root."""
    if not 0 <= index < len(item_hashes):
        raise IndexError(f"index {index} outside a tree of {len(item_hashes)} items")
    return path_from_levels(levels(item_hashes), index)


def verify_inclusion(root_hash: bytes, item_hash: bytes, index: int, size: int,
                     path: Sequence[bytes]) -> bool:
    """RFC 9162 section 2.1.3.2: does `path` prove `item_hash` is item `index` of `size`?"""
    if not 0 <= index < size:
        return False
    fn, sn = index, size - 1
    result = leaf_hash(item_hash)
    for sibling in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            result = _node_hash(sibling, result)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            result = _node_hash(result, sibling)
        fn >>= 1
        sn >>= 1
    return sn == 0 and result == root_hash


def levels(item_hashes: Sequence[bytes]) -> list[list[bytes]]:
    """Every level of the tree of `root`, leaves first: paths of many items from one pass."""
    level = [_blake2b(_LEAF + h, digest_size=32).digest() for h in item_hashes]
    out = [level]
    while len(level) > 1:
        paired = [_blake2b(_NODE + left + right, digest_size=32).digest()
                  for left, right in zip(level[0::2], level[1::2], strict=False)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
        out.append(level)
    return out


def path_from_levels(tree: Sequence[Sequence[bytes]], index: int) -> list[bytes]:
    """The audit path of item `index` (as `inclusion_proof`) from the levels of its tree: an
    odd last node is carried up unchanged, so that level adds no sibling."""
    if not tree or not 0 <= index < len(tree[0]):
        raise IndexError(f"index {index} outside the tree")
    path: list[bytes] = []
    position = index
    for level in tree[:-1]:
        sibling = position ^ 1
        if sibling < len(level):
            path.append(level[sibling])
        position >>= 1
    return path
