"""The state tree (ledger/smt.py) as the rules keep it: which state keys are its leaves
(`in_tree`), its root in the chain meta (`tree_root`, `chain_meta_with`) and in the tree
keyspace (`tree_root_at`), and its growth by one block's changes (`grow_tree`).
"""

from __future__ import annotations

from collections.abc import Iterable

from healthnode.codec import CodecError, pack, unpack
from healthnode.crypto import digest
from healthnode.ledger import smt
from healthnode.ledger.state import (
    INDEX_PREFIXES,
    META_KEY,
    TREE_NODE,
    TREE_ROOT,
    TREE_STALE,
    StateView,
    TreeRoots,
    height_bytes,
)
from healthnode.protocol.state import ChainMeta


def tree_root(meta: ChainMeta) -> smt.Ref | None:
    """The root reference of the state tree after `meta`'s height."""
    if meta.state_hash == smt.EMPTY:
        return None
    return smt.Ref(meta.state_hash, meta.root_version, bool(meta.root_leaf))


def chain_meta_with(chain_id: str, height: int, time_ms: int, root: smt.Ref | None) -> ChainMeta:
    """The chain meta after `height`, holding the tree's root (the inverse of `tree_root`)."""
    return ChainMeta(chain_id, height, time_ms, smt.root_hash(root),
                     root.version if root else 0, int(bool(root and root.leaf)))


def in_tree(key: bytes) -> bool:
    """Whether a state key is a leaf of the state tree: every key but the chain meta (which
    holds the root) and the indexes (state.INDEX_PREFIXES)."""
    return key != META_KEY and not key.startswith(INDEX_PREFIXES)


def tree_root_at(view: TreeRoots, height: int) -> smt.Ref | None:
    """The root reference of the state tree after `height`; smt.TreeError if not kept."""
    raw = view.tree_root(height)
    if raw is None:
        raise smt.TreeError(f"the state tree of height {height} is not kept here")
    try:
        value = unpack(raw, smt.NODE_BYTES_MAX)
    except CodecError as error:
        raise smt.TreeError(f"root of height {height}: {error}") from None
    return None if value is None else smt.Ref.from_wire(value)


def grow_tree(view: StateView, root: smt.Ref | None, height: int,
              changes: Iterable[tuple[bytes, bytes | None]]
              ) -> tuple[smt.Ref | None, tuple[tuple[bytes, bytes | None], ...]]:
    """The state tree after `changes` (the chain meta left out: it holds the root), as the new
    root and the writes of the tree keyspace."""
    update = smt.update(view, root, height, [
        (digest(key), None if value is None else digest(value))
        for key, value in changes if in_tree(key)])
    since = height_bytes(height)
    writes: list[tuple[bytes, bytes | None]] = [
        (TREE_NODE + key, value) for key, value in update.written.items()]
    writes += [(TREE_STALE + since + key, b"") for key in update.stale]
    writes.append((TREE_ROOT + since, pack(None if update.root is None
                                             else update.root.wire())))
    return update.root, tuple(writes)
