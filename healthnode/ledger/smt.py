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

HASH_BYTES: Final = 32
KEY_BITS: Final = HASH_BYTES * 8
EMPTY: Final = bytes(HASH_BYTES)  # the hash of an empty subtree
NODE_BYTES_MAX: Final = 256  # an encoded node is at most 82 bytes; a root reference, packed, less


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
    return _prefix_int(int.from_bytes(path, "big"), depth).to_bytes(HASH_BYTES, "big")


def _prefix_int(path: int, depth: int) -> int:
    shift = KEY_BITS - depth
    return (path >> shift) << shift


def node_key(version: int, depth: int, path: bytes) -> bytes:
    """Where a node is stored: its version, its depth, and the path bits down to it."""
    return _node_key(version, depth, int.from_bytes(path, "big"))


def _node_key(version: int, depth: int, path: int) -> bytes:
    """`node_key` of a path given as an integer (only its first `depth` bits count)."""
    shift = KEY_BITS - depth
    return (version.to_bytes(8, "big") + depth.to_bytes(2, "big")
            + ((path >> shift) << shift).to_bytes(HASH_BYTES, "big"))


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


class Leaf:
    """One key's leaf. Stored as `0x00 ‖ key hash ‖ value hash` (65 bytes)."""

    __slots__ = ("hash", "key_hash", "value_hash")

    def __init__(self, key_hash: bytes, value_hash: bytes) -> None:
        self.key_hash = key_hash
        self.value_hash = value_hash
        self.hash = leaf_hash(key_hash, value_hash)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Leaf) and other.key_hash == self.key_hash and \
            other.value_hash == self.value_hash

    def __hash__(self) -> int:
        return hash(self.hash)

    def __repr__(self) -> str:
        return f"Leaf({self.key_hash.hex()[:16]}.., {self.value_hash.hex()[:16]}..)"

    def encode(self) -> bytes:
        return b"\x00" + self.key_hash + self.value_hash


class Internal:
    """Two children, either of which may be empty (not both). Stored as `0x01`, a byte of flags
    (left present, left is a leaf, right present, right is a leaf), then for each present child
    its hash and version (8 bytes)."""

    __slots__ = ("hash", "left", "right")

    def __init__(self, left: Ref | None, right: Ref | None) -> None:
        self.left = left
        self.right = right
        self.hash = internal_hash(left.hash if left else EMPTY, right.hash if right else EMPTY)

    def encode(self) -> bytes:
        left, right = self.left, self.right
        flags = (1 if left else 0) | (2 if left and left.leaf else 0) \
            | (4 if right else 0) | (8 if right and right.leaf else 0)
        out = b"\x01" + bytes([flags])
        if left:
            out += left.hash + left.version.to_bytes(8, "big")
        if right:
            out += right.hash + right.version.to_bytes(8, "big")
        return out


Node = Leaf | Internal
_CHILD_BYTES: Final = HASH_BYTES + 8


def decode_node(data: bytes) -> Node:
    if len(data) == 1 + 2 * HASH_BYTES and data[0] == 0:
        return Leaf(data[1:1 + HASH_BYTES], data[1 + HASH_BYTES:])
    if len(data) >= 2 and data[0] == 1:
        flags = data[1]
        expected = 2 + _CHILD_BYTES * ((flags & 1) + ((flags >> 2) & 1))
        if flags & ~0x0F or not flags & 5 or len(data) != expected \
                or (flags & 2 and not flags & 1) or (flags & 8 and not flags & 4):
            raise TreeError("malformed internal tree node")
        at, left, right = 2, None, None
        if flags & 1:
            left = Ref(data[at:at + HASH_BYTES],
                       int.from_bytes(data[at + HASH_BYTES:at + _CHILD_BYTES], "big"),
                       bool(flags & 2))
            at += _CHILD_BYTES
        if flags & 4:
            right = Ref(data[at:at + HASH_BYTES],
                        int.from_bytes(data[at + HASH_BYTES:at + _CHILD_BYTES], "big"),
                        bool(flags & 8))
        return Internal(left, right)
    raise TreeError("malformed tree node")


class NodeReader(Protocol):
    def tree_node(self, key: bytes) -> bytes | None: ...


def load(reader: NodeReader, ref: Ref, depth: int, path: bytes) -> Node:
    return _load(reader, ref, depth, int.from_bytes(path, "big"))


def _load(reader: NodeReader, ref: Ref, depth: int, path: int) -> Node:
    raw = reader.tree_node(_node_key(ref.version, depth, path))
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


# A change inside the writer: the key hash as an integer (its path), as bytes, and the value
# hash (None: delete). Sorted by path.
_Change = tuple[int, bytes, bytes | None]
_Item = tuple[int, bytes, bytes]


class _Writer:
    def __init__(self, reader: NodeReader, version: int) -> None:
        self.reader = reader
        self.version = version
        self.written: dict[bytes, bytes] = {}
        self.stale: list[bytes] = []

    def put(self, node: Node, depth: int, path: int) -> Ref:
        self.written[_node_key(self.version, depth, path)] = node.encode()
        return Ref(node.hash, self.version, isinstance(node, Leaf))

    def retire(self, ref: Ref, depth: int, path: int) -> None:
        key = _node_key(ref.version, depth, path)
        if ref.version == self.version:
            self.written.pop(key, None)  # written earlier in this batch: never stored
        else:
            self.stale.append(key)

    def build(self, items: Sequence[_Item], depth: int) -> Ref | None:
        """The subtree at `depth` holding exactly `items`, sorted by path."""
        if not items:
            return None
        if len(items) == 1:
            path, key_hash, value_hash = items[0]
            return self.put(Leaf(key_hash, value_hash), depth, path)
        split = _split(items, depth)
        left = self.build(items[:split], depth + 1)
        right = self.build(items[split:], depth + 1)
        return self.put(Internal(left, right), depth, items[0][0])

    def update(self, ref: Ref | None, depth: int, path: int,
               changes: Sequence[_Change]) -> Ref | None:
        """The subtree at `depth` (at `path`) after `changes`, sorted by path, all under this
        subtree's path."""
        if ref is None:
            return self.build([c for c in changes if c[2] is not None], depth)  # type: ignore[misc]
        node = _load(self.reader, ref, depth, path)
        self.retire(ref, depth, path)
        if isinstance(node, Leaf):
            merged = {node.key_hash: (int.from_bytes(node.key_hash, "big"), node.key_hash,
                                      node.value_hash)}
            for change in changes:
                if change[2] is None:
                    merged.pop(change[1], None)
                else:
                    merged[change[1]] = change  # type: ignore[assignment]
            return self.build(sorted(merged.values()), depth)
        split = _split(changes, depth)
        left, right = node.left, node.right
        if split:
            left = self.update(left, depth + 1, path, changes[:split])
        if split < len(changes):
            right = self.update(right, depth + 1, path | (1 << (KEY_BITS - 1 - depth)),
                                changes[split:])
        return self._join(left, right, depth, path)

    def _join(self, left: Ref | None, right: Ref | None, depth: int, path: int) -> Ref | None:
        """An internal node over two children, kept canonical: no subtree of one key below an
        internal node (that leaf moves up), no internal node over nothing."""
        if left is None and right is None:
            return None
        only = right if left is None else left if right is None else None
        if only is not None and only.leaf:
            child_path = path if left is not None else path | (1 << (KEY_BITS - 1 - depth))
            leaf = _load(_Layered(self.written, self.reader), only, depth + 1, child_path)
            self.retire(only, depth + 1, child_path)
            return self.put(leaf, depth, path)
        return self.put(Internal(left, right), depth, path)


class _Layered:
    def __init__(self, top: Mapping[bytes, bytes], below: NodeReader) -> None:
        self.top = top
        self.below = below

    def tree_node(self, key: bytes) -> bytes | None:
        raw = self.top.get(key)
        return raw if raw is not None else self.below.tree_node(key)


def _split(items: Sequence[tuple[int, bytes, bytes | None]], depth: int) -> int:
    """The index of the first item whose bit at `depth` is 1 (items sorted by path)."""
    mask = 1 << (KEY_BITS - 1 - depth)
    low, high = 0, len(items)
    while low < high:
        middle = (low + high) // 2
        if items[middle][0] & mask:
            high = middle
        else:
            low = middle + 1
    return low


def update(reader: NodeReader, root: Ref | None, version: int,
           changes: Iterable[tuple[bytes, bytes | None]]) -> Update:
    """Apply `changes` (key hash -> value hash, None to delete; a key at most once) to the tree
    at `root`, writing new nodes as `version`."""
    ordered = sorted(((int.from_bytes(key_hash, "big"), key_hash, value_hash)
                      for key_hash, value_hash in changes), key=lambda change: change[0])
    for first, second in itertools.pairwise(ordered):
        if first[0] == second[0]:
            raise ValueError("a key hash appears twice in one update")
    writer = _Writer(reader, version)
    new_root = writer.update(root, 0, 0, ordered) if ordered else root
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
    key = int.from_bytes(key_hash, "big")
    ref, depth = root, 0
    while ref is not None:
        node = _load(reader, ref, depth, key)
        if isinstance(node, Leaf):
            return Proof(tuple(siblings), node)
        side = (key >> (KEY_BITS - 1 - depth)) & 1
        sibling = node.left if side else node.right
        siblings.append(EMPTY if sibling is None else sibling.hash)
        ref = node.right if side else node.left
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
