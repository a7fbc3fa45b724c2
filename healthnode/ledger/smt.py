"""The state tree: a compressed 16-ary sparse Merkle tree over the whole state, with proofs of
presence and absence against its root (docs/ledger.md, "The state root").

Theory of operation
-------------------
The design is Diem's and Aptos's Jellyfish Merkle tree ("Jellyfish Merkle Tree", Gao et al.,
2021): a sparse Merkle tree whose internal nodes have 16 children, one per nibble of the path.

- A state key `k` sits at the path `H(k)` (256 bits = 64 nibbles, BLAKE2b-256), and commits to
  `H(value)`.
- A subtree that holds no key is *empty* (the all-zero hash). A subtree that holds one key is
  that key's **leaf**, placed as high as it can go: where its path first parts from every other
  key's. A subtree with two keys or more is an **internal** node whose children are the subtrees
  of the next nibble. So one set of keys has exactly one shape and one root, whatever the order
  in which the keys came.
- `leaf = H(0x00 ‖ key hash ‖ value hash)`, `internal = H(0x01 ‖ child 0 ‖ ... ‖ child 15)` (the
  all-zero hash for an empty child): the prefix byte keeps a leaf from passing for an internal
  node and back (second-preimage safety). Unlike Jellyfish, an internal node's hash is one flat
  hash of its 16 children rather than a binary tree inside the node: one BLAKE2b call per node,
  proofs of 15 hashes a level, and a verifier of a few lines.

**Storage.** Nodes are immutable and stored under `(version, depth, path)`: the height that wrote
them, how many nibbles deep they sit, and the path down to them. An internal node names its
children by hash, version and kind, so a node of any kept version can be found. An update at
height `h` writes the nodes it changes as version `h`, and records each node it replaces as
*stale since h*. A stale node still serves proofs at older heights; once the heights that need
it are pruned, the caller deletes it. Nothing here does I/O: nodes are read through a
`NodeReader`, and an update returns the nodes to write and the stale ones, which the caller
writes in the same batch as the block.

**Cost.** A batch of `k` changed keys of a state of `n` rewrites the nodes on their paths, about
`k·(log16(n) − log16(k) + 2)` nodes: it grows with what a block touches, not with the size of
the state. Sixteen children a node make paths four times shorter than a binary tree's, and the
update four times cheaper (docs/benchmarks.md).

**Proofs.** A proof for a key hash is, for each internal node from the root down to where the
key's path ends, the hashes of the node's 15 other children; and what is at the end: the key's
own leaf (presence), nothing, or another key's leaf whose path shares those nibbles (absence).
`verify` rebuilds each node's hash on the way back up to the root.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, NamedTuple, Protocol

HASH_BYTES: Final = 32
KEY_BITS: Final = HASH_BYTES * 8
RADIX: Final = 16
NIBBLES: Final = KEY_BITS // 4  # the deepest a path goes
SIBLINGS: Final = RADIX - 1  # hashes a proof carries per level
EMPTY: Final = bytes(HASH_BYTES)  # the hash of an empty subtree
NODE_BYTES_MAX: Final = 5 + RADIX * (HASH_BYTES + 8)  # an encoded internal node, at most
_EMPTY_CHILDREN: Final = (EMPTY,) * RADIX


class TreeError(ValueError):
    """A stored node that is missing or malformed: the store does not hold the tree it claims."""


def hash_bytes(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=HASH_BYTES).digest()


def leaf_hash(key_hash: bytes, value_hash: bytes) -> bytes:
    return hash_bytes(b"\x00" + key_hash + value_hash)


def internal_hash(children: Sequence[bytes]) -> bytes:
    """The hash of an internal node from its 16 child hashes (EMPTY for an empty child)."""
    return hash_bytes(b"\x01" + b"".join(children))


def nibble(path: int, depth: int) -> int:
    """The nibble of `path` (a 256-bit integer) at `depth` (0 = the most significant)."""
    return (path >> (KEY_BITS - 4 - 4 * depth)) & 0xF


def _prefix_int(path: int, depth: int) -> int:
    shift = KEY_BITS - 4 * depth
    return (path >> shift) << shift


def _node_key(version: int, depth: int, path: int) -> bytes:
    """Where a node is stored: its version, its depth in nibbles, and its path's first `depth`
    nibbles (the rest zero)."""
    return (version.to_bytes(8, "big") + bytes([depth])
            + _prefix_int(path, depth).to_bytes(HASH_BYTES, "big"))


def node_key(version: int, depth: int, path: bytes) -> bytes:
    return _node_key(version, depth, int.from_bytes(path, "big"))


class Ref(NamedTuple):
    """A child (or the root) as its parent names it: its hash, the version that wrote it, and
    whether it is a leaf. (A named tuple: a node decodes up to 16 of them, and a tuple is made
    several times faster than a frozen dataclass.)"""

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
    """Up to 16 children by nibble: at least two, or one that is itself internal. Stored as
    `0x01`, a 16-bit map of the children present, a 16-bit map of those that are leaves, then
    each present child's hash and version (8 bytes), in nibble order."""

    __slots__ = ("children", "hash")

    def __init__(self, children: Mapping[int, Ref]) -> None:
        self.children = dict(children)
        hashes = list(_EMPTY_CHILDREN)
        for index, child in self.children.items():
            hashes[index] = child.hash
        self.hash = internal_hash(hashes)

    def encode(self) -> bytes:
        present = leaves = 0
        body = []
        for index in sorted(self.children):
            child = self.children[index]
            present |= 1 << index
            if child.leaf:
                leaves |= 1 << index
            body.append(child.hash + child.version.to_bytes(8, "big"))
        return b"\x01" + present.to_bytes(2, "big") + leaves.to_bytes(2, "big") + b"".join(body)


Node = Leaf | Internal
_CHILD_BYTES: Final = HASH_BYTES + 8


def decode_node(data: bytes) -> Node:
    if len(data) == 1 + 2 * HASH_BYTES and data[0] == 0:
        return Leaf(data[1:1 + HASH_BYTES], data[1 + HASH_BYTES:])
    if len(data) >= 5 and data[0] == 1:
        present = int.from_bytes(data[1:3], "big")
        leaves = int.from_bytes(data[3:5], "big")
        count = present.bit_count()
        if len(data) != 5 + _CHILD_BYTES * count or leaves & ~present or not present \
                or (count == 1 and leaves):
            raise TreeError("malformed internal tree node")
        children, at = {}, 5
        for index in range(RADIX):
            if present >> index & 1:
                children[index] = Ref(data[at:at + HASH_BYTES], int.from_bytes(
                    data[at + HASH_BYTES:at + _CHILD_BYTES], "big"), bool(leaves >> index & 1))
                at += _CHILD_BYTES
        return Internal(children)
    raise TreeError("malformed tree node")


class NodeReader(Protocol):
    def tree_node(self, key: bytes) -> bytes | None: ...


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


def _groups(items: Sequence[tuple[int, bytes, bytes | None]], depth: int
            ) -> list[tuple[int, int, int]]:
    """(nibble, start, end) of each run of items sharing their nibble at `depth` (items sorted
    by path)."""
    runs = []
    start = 0
    shift = KEY_BITS - 4 - 4 * depth
    current = (items[0][0] >> shift) & 0xF
    for index in range(1, len(items)):
        value = (items[index][0] >> shift) & 0xF
        if value != current:
            runs.append((current, start, index))
            current, start = value, index
    runs.append((current, start, len(items)))
    return runs


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
        children = {}
        for index, start, end in _groups(items, depth):
            child = self.build(items[start:end], depth + 1)
            assert child is not None
            children[index] = child
        return self.put(Internal(children), depth, items[0][0])

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
        children = dict(node.children)
        shift = KEY_BITS - 4 - 4 * depth
        for index, start, end in _groups(changes, depth):
            child_path = _prefix_int(path, depth) | (index << shift)
            child = self.update(children.get(index), depth + 1, child_path, changes[start:end])
            if child is None:
                children.pop(index, None)
            else:
                children[index] = child
        return self._join(children, depth, path)

    def _join(self, children: dict[int, Ref], depth: int, path: int) -> Ref | None:
        """An internal node over `children`, kept canonical: no internal node over nothing, and
        none over a single leaf (that leaf moves up)."""
        if not children:
            return None
        if len(children) == 1:
            ((index, only),) = children.items()
            if only.leaf:
                shift = KEY_BITS - 4 - 4 * depth
                child_path = _prefix_int(path, depth) | (index << shift)
                leaf = _load(Layered(self.written, self.reader), only, depth + 1, child_path)
                self.retire(only, depth + 1, child_path)
                return self.put(leaf, depth, path)
        return self.put(Internal(children), depth, path)


class Layered:
    """Nodes written but not stored yet (`top`, by storage key) over a reader's."""

    def __init__(self, top: Mapping[bytes, bytes], below: NodeReader) -> None:
        self.top = top
        self.below = below

    def tree_node(self, key: bytes) -> bytes | None:
        raw = self.top.get(key)
        return raw if raw is not None else self.below.tree_node(key)


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
    """For each internal node from the root down, its 15 other children's hashes (in nibble
    order, flattened), and what the key's path ends at: its own leaf (presence), another key's
    leaf (absence), or nothing (absence)."""

    siblings: tuple[bytes, ...]
    leaf: Leaf | None

    def wire(self) -> list[object]:
        return [list(self.siblings),
                None if self.leaf is None else [self.leaf.key_hash, self.leaf.value_hash]]

    @classmethod
    def from_wire(cls, value: object) -> Proof:
        if not (isinstance(value, list) and len(value) == 2 and isinstance(value[0], list)
                and len(value[0]) <= SIBLINGS * NIBBLES and len(value[0]) % SIBLINGS == 0
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
        own = nibble(key, depth)
        for index in range(RADIX):
            if index != own:
                child = node.children.get(index)
                siblings.append(EMPTY if child is None else child.hash)
        ref = node.children.get(own)
        depth += 1
    return Proof(tuple(siblings), None)


def verify(root: bytes, key_hash: bytes, value_hash: bytes | None, proof: Proof) -> bool:
    """Whether `proof` shows that, in the tree with root hash `root`, `key_hash` holds
    `value_hash` (or is absent, for None). Pure and total: never raises on any input."""
    siblings = proof.siblings
    if len(key_hash) != HASH_BYTES or len(siblings) % SIBLINGS or \
            len(siblings) > SIBLINGS * NIBBLES:
        return False
    depth = len(siblings) // SIBLINGS
    key = int.from_bytes(key_hash, "big")
    leaf = proof.leaf
    if value_hash is not None:
        if leaf is None or leaf.key_hash != key_hash or leaf.value_hash != value_hash:
            return False
        node = leaf.hash
    elif leaf is None:
        node = EMPTY
    else:
        other = int.from_bytes(leaf.key_hash, "big")
        if other == key or _prefix_int(other, depth) != _prefix_int(key, depth):
            return False
        node = leaf.hash
    for level in range(depth - 1, -1, -1):
        hashes = list(siblings[level * SIBLINGS:(level + 1) * SIBLINGS])
        hashes.insert(nibble(key, level), node)
        node = internal_hash(hashes)
    return node == root


# --- building a tree from its leaves (state sync, ledger/snapshot.py) -------------------------


class _NoNodes:
    def tree_node(self, key: bytes) -> bytes | None:
        return None


def build(items: Sequence[tuple[bytes, bytes]], depth: int, version: int) -> Update:
    """The subtree at `depth` that holds exactly `items` ((key hash, value hash), sorted by key
    hash, all under one path of `depth` nibbles), its nodes written as `version`."""
    writer = _Writer(_NoNodes(), version)
    root = writer.build([(int.from_bytes(k, "big"), k, v) for k, v in items], depth)
    return Update(root, writer.written, [])


def join(subtrees: Sequence[Ref | Leaf | None], depth: int, version: int) -> Update:
    """The tree above `depth` whose subtrees at `depth` are `subtrees` (16**depth of them, in
    path order): an internal subtree as the Ref of its root (stored already), a subtree of one
    key as its Leaf (written here, as high as it goes), an empty one as None. The nodes above
    `depth` are written as `version`; the root is `Update.root`."""
    assert len(subtrees) == RADIX ** depth
    writer = _Writer(_NoNodes(), version)

    def place(child: Ref | Leaf, at: int, path: int) -> Ref:
        if isinstance(child, Leaf):
            return writer.put(child, at, int.from_bytes(child.key_hash, "big"))
        return child

    def top(at: int, first: int) -> Ref | Leaf | None:
        if at == depth:
            return subtrees[first]
        span = RADIX ** (depth - at - 1)
        children = {}
        for index in range(RADIX):
            child = top(at + 1, first + index * span)
            if child is not None:
                children[index] = child
        if not children:
            return None
        if len(children) == 1:
            only = next(iter(children.values()))
            if isinstance(only, Leaf):
                return only  # a lone leaf moves up
        path = first << (KEY_BITS - 4 * depth)
        refs = {index: place(child, at + 1, path) for index, child in children.items()}
        return writer.put(Internal(refs), at, path)

    root = top(0, 0)
    if isinstance(root, Leaf):
        root = writer.put(root, 0, int.from_bytes(root.key_hash, "big"))
    return Update(root, writer.written, [])
