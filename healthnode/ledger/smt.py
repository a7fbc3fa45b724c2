"""The state tree: a compressed binary sparse Merkle tree over the whole state, with proofs of
presence and absence against its root (docs/ledger.md, "The state root").

Theory of operation
-------------------
The design is the Diem/Aptos "Jellyfish" family, in its binary form (the sparse Merkle tree of
Diem's accumulator paper, "Jellyfish Merkle Tree", Gao et al., 2021, with one child per bit):

- A state key `k` sits at the path `H(k)` (256 bits, BLAKE2b-256), and commits to `H(value)`.
- A subtree that holds no key is *empty* (the all-zero hash). A subtree that holds one key is
  that key's **leaf**, placed as high as it can go: where its path first parts from every other
  key's. A subtree with two keys or more is an **internal** node with a left (bit 0) and a right
  (bit 1) child. So one set of keys has exactly one shape and one root, whatever the order in
  which the keys came.
- `leaf = H(0x00 ‖ key hash ‖ value hash)`, `internal = H(0x01 ‖ left ‖ right)`: the prefix
  byte keeps a leaf from passing for an internal node and back (second-preimage safety).

**Storage.** Nodes are immutable and stored under `(version, depth, path)`: the height that wrote
them, how deep they sit, and the path bits down to them. An internal node names its children by
hash, version and kind, so a node of any kept version can be found. An update at height `h`
writes the nodes it changes as version `h`, and records each node it replaces as *stale since
h*. A stale node still serves proofs at older heights; once the heights that need it are pruned,
the node is deleted (`prune`). Nothing here does I/O: nodes are read through a `NodeReader`, and
an update returns the nodes to write and the stale ones, which the caller writes in the same
batch as the block.

**Cost.** A batch of `k` changed keys rewrites the nodes on their paths, about
`k·(log2(n) - log2(k) + 2)` nodes for `n` keys: it grows with what a block touches, not with the
size of the state.

**Proofs.** A proof for a key hash is the list of sibling hashes from the root down to where the
key's path ends, and what is there: the key's own leaf (presence), nothing, or another key's leaf
whose path shares those bits (absence). `verify` folds the siblings back up to the root.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from healthnode.protocol.codec import CodecError, pack, unpack

HASH_BYTES: Final = 32
KEY_BITS: Final = HASH_BYTES * 8
EMPTY: Final = bytes(HASH_BYTES)  # the hash of an empty subtree
NODE_BYTES_MAX: Final = 256  # an encoded node: two child references at most
_LEAF: Final = 0
_INTERNAL: Final = 1


class TreeError(ValueError):
    """A stored node that is missing or malformed: the store does not hold the tree it claims."""


def hash_bytes(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=HASH_BYTES).digest()


def leaf_hash(key_hash: bytes, value_hash: bytes) -> bytes:
    return hash_bytes(b"\x00" + key_hash + value_hash)


def internal_hash(left: bytes, right: bytes) -> bytes:
    return hash_bytes(b"\x01" + left + right)


def bit(path: bytes, depth: int) -> int:
    """The bit of `path` at `depth` (0 = the most significant bit of the first byte)."""
    return (path[depth >> 3] >> (7 - (depth & 7))) & 1


def _prefix(path: bytes, depth: int) -> bytes:
    """The first `depth` bits of `path`, the rest zero, as 32 bytes."""
    whole, rest = divmod(depth, 8)
    if rest:
        return path[:whole] + bytes([path[whole] & (0xFF << (8 - rest)) & 0xFF]) \
            + bytes(HASH_BYTES - whole - 1)
    return path[:whole] + bytes(HASH_BYTES - whole)


def node_key(version: int, depth: int, path: bytes) -> bytes:
    """Where a node is stored: its version, its depth, and the path bits down to it."""
    return version.to_bytes(8, "big") + depth.to_bytes(2, "big") + _prefix(path, depth)


@dataclass(frozen=True, slots=True)
class Ref:
    """A child (or the root) as its parent names it: its hash, the version that wrote it, and
    whether it is a leaf."""

    hash: bytes
    version: int
    leaf: bool

    def wire(self) -> list[object]:
        return [self.hash, self.version, int(self.leaf)]

    @classmethod
    def from_wire(cls, value: object) -> Ref:
        if not (isinstance(value, list) and len(value) == 3 and isinstance(value[0], bytes)
                and len(value[0]) == HASH_BYTES and isinstance(value[1], int)
                and 0 <= value[1] < 2**63 and value[2] in (0, 1)):
            raise TreeError("malformed child reference")
        return cls(value[0], value[1], value[2] == 1)


@dataclass(frozen=True, slots=True)
class Leaf:
    key_hash: bytes
    value_hash: bytes

    @property
    def hash(self) -> bytes:
        return leaf_hash(self.key_hash, self.value_hash)

    def encode(self) -> bytes:
        return pack([_LEAF, self.key_hash, self.value_hash])


@dataclass(frozen=True, slots=True)
class Internal:
    left: Ref | None
    right: Ref | None

    @property
    def hash(self) -> bytes:
        return internal_hash(self.left.hash if self.left else EMPTY,
                             self.right.hash if self.right else EMPTY)

    def encode(self) -> bytes:
        return pack([_INTERNAL, self.left.wire() if self.left else None,
                     self.right.wire() if self.right else None])


Node = Leaf | Internal


def decode_node(data: bytes) -> Node:
    try:
        value = unpack(data, NODE_BYTES_MAX)
    except CodecError as error:
        raise TreeError(f"undecodable tree node: {error}") from None
    if isinstance(value, list) and len(value) == 3 and value[0] == _LEAF:
        key_hash, value_hash = value[1], value[2]
        if isinstance(key_hash, bytes) and isinstance(value_hash, bytes) \
                and len(key_hash) == len(value_hash) == HASH_BYTES:
            return Leaf(key_hash, value_hash)
    if isinstance(value, list) and len(value) == 3 and value[0] == _INTERNAL:
        left = None if value[1] is None else Ref.from_wire(value[1])
        right = None if value[2] is None else Ref.from_wire(value[2])
        if left is not None or right is not None:
            return Internal(left, right)
    raise TreeError("malformed tree node")


class NodeReader(Protocol):
    def tree_node(self, key: bytes) -> bytes | None: ...


def load(reader: NodeReader, ref: Ref, depth: int, path: bytes) -> Node:
    raw = reader.tree_node(node_key(ref.version, depth, path))
    if raw is None:
        raise TreeError(f"tree node at depth {depth}, version {ref.version} is missing")
    node = decode_node(raw)
    if node.hash != ref.hash or isinstance(node, Leaf) != ref.leaf:
        raise TreeError(f"tree node at depth {depth}, version {ref.version} does not match "
                        f"its parent's hash")
    return node


# --- updating -----------------------------------------------------------------------------------


@dataclass(slots=True)
class Update:
    """What one batch does to the tree: the new root, the nodes to write (by storage key), and
    the nodes it replaced (storage keys, stale from this version on)."""

    root: Ref | None
    written: dict[bytes, bytes] = field(default_factory=dict)
    stale: list[bytes] = field(default_factory=list)


class _Writer:
    def __init__(self, reader: NodeReader, version: int) -> None:
        self.reader = reader
        self.version = version
        self.written: dict[bytes, bytes] = {}
        self.stale: list[bytes] = []

    def put(self, node: Node, depth: int, path: bytes) -> Ref:
        self.written[node_key(self.version, depth, path)] = node.encode()
        return Ref(node.hash, self.version, isinstance(node, Leaf))

    def retire(self, ref: Ref, depth: int, path: bytes) -> None:
        key = node_key(ref.version, depth, path)
        if ref.version == self.version:
            self.written.pop(key, None)  # written earlier in this batch: never stored
        else:
            self.stale.append(key)

    def build(self, items: Sequence[tuple[bytes, bytes]], depth: int) -> Ref | None:
        """The subtree at `depth` holding exactly `items` (key hash, value hash), sorted."""
        if not items:
            return None
        path = items[0][0]
        if len(items) == 1:
            return self.put(Leaf(*items[0]), depth, path)
        split = _split(items, depth)
        left = self.build(items[:split], depth + 1)
        right = self.build(items[split:], depth + 1)
        return self.put(Internal(left, right), depth, path)

    def update(self, ref: Ref | None, depth: int, path: bytes,
               changes: Sequence[tuple[bytes, bytes | None]]) -> Ref | None:
        """The subtree at `depth` (at `path`) after `changes` (key hash, value hash or None to
        delete), sorted by key hash, all under this subtree's path."""
        if not changes:
            return ref
        if ref is None:
            return self.build([(k, v) for k, v in changes if v is not None], depth)
        node = load(self.reader, ref, depth, path)
        self.retire(ref, depth, path)
        if isinstance(node, Leaf):
            merged = {node.key_hash: node.value_hash}
            for key_hash, value_hash in changes:
                if value_hash is None:
                    merged.pop(key_hash, None)
                else:
                    merged[key_hash] = value_hash
            return self.build(sorted(merged.items()), depth)
        split = _split(changes, depth)
        left = self.update(node.left, depth + 1, _child_path(path, depth, 0),
                           changes[:split])
        right = self.update(node.right, depth + 1, _child_path(path, depth, 1),
                            changes[split:])
        return self._join(left, right, depth, path)

    def _join(self, left: Ref | None, right: Ref | None, depth: int, path: bytes) -> Ref | None:
        """An internal node over two children, kept canonical: no subtree of one key below an
        internal node (that leaf moves up), no internal node over nothing."""
        if left is None and right is None:
            return None
        only = right if left is None else left if right is None else None
        if only is not None and only.leaf:
            bit_ = 1 if left is None else 0
            child_path = _child_path(path, depth, bit_)
            leaf = load(self.reader_with_written(), only, depth + 1, child_path)
            self.retire(only, depth + 1, child_path)
            return self.put(leaf, depth, path)
        return self.put(Internal(left, right), depth, path)

    def reader_with_written(self) -> NodeReader:
        return _Layered(self.written, self.reader)


class _Layered:
    def __init__(self, top: Mapping[bytes, bytes], below: NodeReader) -> None:
        self.top = top
        self.below = below

    def tree_node(self, key: bytes) -> bytes | None:
        raw = self.top.get(key)
        return raw if raw is not None else self.below.tree_node(key)


def _child_path(path: bytes, depth: int, bit_: int) -> bytes:
    """A path whose first `depth` bits are `path`'s and whose next bit is `bit_`."""
    prefix = bytearray(_prefix(path, depth))
    if bit_:
        prefix[depth >> 3] |= 0x80 >> (depth & 7)
    return bytes(prefix)


def _split(items: Sequence[tuple[bytes, object]], depth: int) -> int:
    """The index of the first item whose bit at `depth` is 1 (items sorted by key hash)."""
    low, high = 0, len(items)
    while low < high:
        middle = (low + high) // 2
        if bit(items[middle][0], depth):
            high = middle
        else:
            low = middle + 1
    return low


def update(reader: NodeReader, root: Ref | None, version: int,
           changes: Iterable[tuple[bytes, bytes | None]]) -> Update:
    """Apply `changes` (key hash -> value hash, None to delete; a key at most once) to the tree
    at `root`, writing new nodes as `version`."""
    ordered = sorted(changes, key=lambda change: change[0])
    for (first, _), (second, _) in itertools.pairwise(ordered):
        if first == second:
            raise ValueError("a key hash appears twice in one update")
    writer = _Writer(reader, version)
    new_root = writer.update(root, 0, EMPTY, ordered) if ordered else root
    return Update(new_root, writer.written, writer.stale)


def root_hash(root: Ref | None) -> bytes:
    return EMPTY if root is None else root.hash


# --- proofs -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Proof:
    """Sibling hashes from the root down, and what the key's path ends at: its own leaf
    (presence), another key's leaf (absence), or nothing (absence)."""

    siblings: tuple[bytes, ...]
    leaf: Leaf | None

    def wire(self) -> list[object]:
        return [list(self.siblings),
                None if self.leaf is None else [self.leaf.key_hash, self.leaf.value_hash]]

    @classmethod
    def from_wire(cls, value: object) -> Proof:
        if not (isinstance(value, list) and len(value) == 2 and isinstance(value[0], list)
                and len(value[0]) <= KEY_BITS
                and all(isinstance(s, bytes) and len(s) == HASH_BYTES for s in value[0])):
            raise TreeError("malformed proof")
        leaf = value[1]
        if leaf is None:
            return cls(tuple(value[0]), None)
        if not (isinstance(leaf, list) and len(leaf) == 2
                and all(isinstance(h, bytes) and len(h) == HASH_BYTES for h in leaf)):
            raise TreeError("malformed proof leaf")
        return cls(tuple(value[0]), Leaf(leaf[0], leaf[1]))


def prove(reader: NodeReader, root: Ref | None, key_hash: bytes) -> Proof:
    siblings: list[bytes] = []
    ref, depth, path = root, 0, EMPTY
    while ref is not None:
        node = load(reader, ref, depth, path)
        if isinstance(node, Leaf):
            return Proof(tuple(siblings), node)
        side = bit(key_hash, depth)
        sibling = node.left if side else node.right
        siblings.append(EMPTY if sibling is None else sibling.hash)
        ref = node.right if side else node.left
        path = _child_path(key_hash, depth, side)
        depth += 1
    return Proof(tuple(siblings), None)


def verify(root: bytes, key_hash: bytes, value_hash: bytes | None, proof: Proof) -> bool:
    """Whether `proof` shows that, in the tree with root hash `root`, `key_hash` holds
    `value_hash` (or is absent, for None). Pure and total: never raises on any input."""
    if len(key_hash) != HASH_BYTES or len(proof.siblings) > KEY_BITS:
        return False
    depth = len(proof.siblings)
    leaf = proof.leaf
    if value_hash is not None:
        if leaf is None or leaf.key_hash != key_hash or leaf.value_hash != value_hash:
            return False
        node = leaf.hash
    elif leaf is None:
        node = EMPTY
    else:
        if leaf.key_hash == key_hash or _prefix(leaf.key_hash, depth) != _prefix(key_hash, depth):
            return False
        node = leaf.hash
    for level in range(depth - 1, -1, -1):
        sibling = proof.siblings[level]
        node = internal_hash(sibling, node) if bit(key_hash, level) else \
            internal_hash(node, sibling)
    return node == root
