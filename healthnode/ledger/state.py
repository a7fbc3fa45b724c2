"""The ledger's state: a sorted key-value map, its key layout and the records stored under it.

Theory of operation
-------------------
Everything the rules need to decide on a transaction lives in one flat, sorted map of byte keys
to canonical byte values. Keys start with a keyspace prefix (`prov/`, `rec/`, `grant/`, ...);
secondary indexes (a patient's records, a grantee's grants, a patient's audit trail) are keys of
their own, so every query is a prefix scan. The rules read through the narrow `StateView`
interface and never write: applying a block collects its writes in an `Overlay`, and the caller
(the node's store) persists the overlay's changes in one atomic batch. So the same rule code runs
over the LevelDB store, over a plain dict in unit tests, and over a throwaway overlay when the
mempool checks a transaction.

Values are registered message kinds (50-59, their schemas in `protocol/state.py`) and decode
through the same checked codec as bytes from a peer: state read back from disk is verified again
(docs/architecture.md, rule 8). Nothing in here is a record's content, a category in clear or a
key that could decrypt anything: only public keys, hashes, blinded tags, sizes, heights and times.
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Iterable, Iterator, Mapping
from typing import Final, Protocol, TypeVar

from healthnode.protocol.schema import Message, decode_message
from healthnode.protocol.state import STATE_VALUE_BYTES_MAX

# Decoded state values kept by their bytes. The hot ones are few (the chain meta, the authority
# set, a busy signer's nonce, read once at admission and again in the block); every other value
# passes through once. 4096 entries took about an hour to fill at a hospital's rate and held
# kilobytes each (key wraps, grants), which a 2-hour soak saw as RSS growing for that hour
# (docs/reliability.md, run 5); 512 fill within minutes and still hold a block's worth.
STATE_DECODE_CACHE_ENTRIES: Final = 512


# --- key layout -------------------------------------------------------------------------------
# One prefix per keyspace; fixed-width big-endian heights keep scans in height order.
META_KEY: Final = b"meta"
NONCE: Final = b"nonce/"
PROVIDER: Final = b"prov/"
RECORD: Final = b"rec/"
PATIENT_RECORD: Final = b"prec/"  # patient | record_id
CIPHERTEXT: Final = b"ctext/"  # ciphertext_hash -> record_id
GRANT: Final = b"grant/"
PATIENT_GRANT: Final = b"pgrant/"  # patient | grant_id
GRANTEE_GRANT: Final = b"ggrant/"  # grantee | grant_id
PAIR_GRANT: Final = b"pair/"  # patient | grantee | grant_id
# Indexes: derived from the records and grants by the same rules on every node, kept for
# listing. They are not leaves of the state tree: a listing cannot be proven complete by single
# keys anyway, and leaving them out keeps the tree's work per anchor to its record, its signer's
# nonce and quota (docs/ledger.md, "The state root"; docs/benchmarks.md).
INDEX_PREFIXES: Final = (b"prec/", b"ctext/", b"pgrant/", b"ggrant/", b"pair/")
AUDIT: Final = b"audit/"  # patient | height | index
AUTHORITY_SET: Final = b"vset/"  # effective height
VALIDATOR_PROPOSAL: Final = b"vprop/"  # proposal id
QUOTA: Final = b"quota/"
DAILY_TXS: Final = b"daily/"  # signer -> its grants and emergency policies of a day (rules 3 on)
EVIDENCE: Final = b"evid/"
EMERGENCY_KEY: Final = b"ekey"
GENESIS: Final = b"genesis"  # the genesis hash: every state root commits to the genesis
EMERGENCY_POLICY: Final = b"epol/"  # patient
EMERGENCY_WRAP: Final = b"ewrap/"  # record_id
EMERGENCY_DEALING: Final = b"edeal/"  # epoch | dealer index (2 bytes)
RULES_SCHEDULE: Final = b"rules/"  # effective height -> the rules version from that height
RULES_PROPOSAL: Final = b"rprop/"  # proposal id
PURGE: Final = b"purge/"  # record_id -> the authorities that purged its ciphertext
# The emergency key's rounds (rules version 4 on): the round open or last closed, and the
# current round's epoch keys, dealings and verdicts (gone when the next round opens).
EMERGENCY_ROUND: Final = b"eround"
ROUND_EPOCH_KEY: Final = b"erkey/"  # round (8 bytes) | authority
ROUND_DEAL: Final = b"erdeal/"  # round (8 bytes) | dealer
ROUND_VERDICT: Final = b"erverd/"  # round (8 bytes) | recipient
EMERGENCY_REFRESH: Final = b"erefresh"  # the holders' requests for a refresh
EMERGENCY_KEY_ROUND: Final = b"ekeyround"  # the round that made the key state in force
OBSERVER: Final = b"obs/"  # observer key -> its sponsor (rules version 4 on)
ADDRESS: Final = b"addr/"  # node key -> its announced addresses (rules version 4 on)
# Node key rotations (rules version 4 on): each waits for its block under its height, then stays
# for good under the key it retired.
ROTATION_DUE: Final = b"rotdue/"  # effective height (8 bytes) | old key -> its KeyRotation
ROTATED: Final = b"rotated/"  # old key -> the KeyRotation that retired it
# Representatives (rules version 5 on): each appointment, and the patient's acts by its
# representatives, numbered from 0 (protocol/state.py ActLine), with their count.
APPOINTMENT: Final = b"appt/"  # patient | representative -> its AppointmentState
ACT_COUNT: Final = b"actn/"  # patient -> the number of its act lines (8 bytes)
ACT_LINE: Final = b"actl/"  # patient | line number (8 bytes) -> ActLine


# The state tree's own keyspace (ledger/smt.py), beside the state and outside it: a store keeps
# these under a prefix of their own, and they are never leaves of the tree.
TREE_NODE: Final = b"n"  # smt.node_key -> encoded node
TREE_STALE: Final = b"s"  # stale since (8 bytes) | smt.node_key -> b""
TREE_ROOT: Final = b"r"  # height (8 bytes) -> the root reference after that height


def height_bytes(height: int) -> bytes:
    return height.to_bytes(8, "big")


class StateView(Protocol):
    """Read-only access to the ledger state and to its tree's nodes."""

    def get(self, key: bytes) -> bytes | None: ...

    def scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value) whose key starts with `prefix`, in key order."""
        ...

    def tree_node(self, key: bytes) -> bytes | None:
        """A state tree node by its storage key (smt.node_key), if kept."""
        ...


class TreeRoots(Protocol):
    """A view that keeps the state tree's root of recent heights (a store; MemoryState)."""

    def tree_node(self, key: bytes) -> bytes | None: ...

    def tree_root(self, height: int) -> bytes | None:
        """The packed root reference after `height` (smt.Ref.wire, or nil for an empty tree),
        or None when that height's tree is no longer kept."""
        ...


class Changes(Protocol):
    """What a block writes (ledger.rules.Execution): state changes and tree keyspace changes."""

    @property
    def changes(self) -> tuple[tuple[bytes, bytes | None], ...]: ...

    @property
    def tree_changes(self) -> tuple[tuple[bytes, bytes | None], ...]: ...


M = TypeVar("M", bound=Message)


class CorruptState(Exception):
    """A state value does not decode: the store is damaged. The node must stop, not go on."""


def read(view: StateView, key: bytes, cls: type[M]) -> M | None:
    if type(view) is Overlay:
        return view.read(key, cls)
    raw = view.get(key)
    if raw is None:
        return None
    return decode_value(raw, cls, key)


def decode_value(raw: bytes, cls: type[M], key: bytes) -> M:
    try:
        value: M = _decode_cached(raw, cls)
    except ValueError as error:
        raise CorruptState(f"state key {key!r}: {error}") from None
    return value


@functools.lru_cache(maxsize=STATE_DECODE_CACHE_ENTRIES)
def _decode_cached(raw: bytes, cls: type[M]) -> M:
    """Decoded state values by their bytes: values are immutable, and the same few (the chain
    meta, the authority set, a busy signer's nonce) are read for every transaction."""
    value: M = decode_message(raw, cls, STATE_VALUE_BYTES_MAX)
    return value


class MemoryState:
    """A `StateView` over a dict: for tests and for replaying a chain in memory."""

    def __init__(self, items: Mapping[bytes, bytes] | None = None, *,
                 prune_tree: bool = False) -> None:
        self._items: dict[bytes, bytes] = dict(items or {})
        self._keys: list[bytes] = sorted(self._items)
        self._tree: dict[bytes, bytes] = {}  # the tree keyspace (TREE_NODE, TREE_STALE, ...)
        self._prune_tree = prune_tree  # keep the newest tree only (a replay)
        self._root_key: bytes | None = None

    def get(self, key: bytes) -> bytes | None:
        return self._items.get(key)

    def tree_node(self, key: bytes) -> bytes | None:
        return self._tree.get(TREE_NODE + key)

    def tree_root(self, height: int) -> bytes | None:
        return self._tree.get(TREE_ROOT + height_bytes(height))

    def commit(self, execution: Changes) -> None:
        """Apply a block's execution (ledger.rules.Execution): its state and tree changes."""
        self.apply(execution.changes)
        self.apply_tree(execution.tree_changes)

    def apply_tree(self, changes: Iterable[tuple[bytes, bytes | None]]) -> None:
        """Write changes of the tree keyspace. With `prune_tree`, a node is dropped as soon as
        it is stale, and only the newest root is kept; otherwise nothing is pruned."""
        for key, value in changes:
            if self._prune_tree and key.startswith(TREE_STALE):
                self._tree.pop(TREE_NODE + key[len(TREE_STALE) + 8:], None)
                continue
            if self._prune_tree and key.startswith(TREE_ROOT):
                if self._root_key is not None:
                    self._tree.pop(self._root_key, None)
                self._root_key = key
            if value is None:
                self._tree.pop(key, None)
            else:
                self._tree[key] = value

    def scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        start = bisect.bisect_left(self._keys, prefix)
        for key in self._keys[start:]:
            if not key.startswith(prefix):
                break
            yield key, self._items[key]

    def apply(self, changes: Iterator[tuple[bytes, bytes | None]] | tuple[
            tuple[bytes, bytes | None], ...]) -> None:
        for key, value in changes:
            if value is None:
                self._items.pop(key, None)
            else:
                self._items[key] = value
        self._keys = sorted(self._items)

    def items(self) -> dict[bytes, bytes]:
        return dict(self._items)


class Overlay:
    """Writes buffered over a base view; reads see the buffered writes first.

    A written message is encoded only when something reads it back or asks for the changes:
    a dry run (the mempool's check of a transaction) is thrown away unread, and encoding the
    state values it would write was a fifth of the check's cost."""

    def __init__(self, base: StateView) -> None:
        self._base = base
        self._pending: dict[bytes, Message | bytes | None] = {}

    def get(self, key: bytes) -> bytes | None:
        if key in self._pending:
            return _encoded(self._pending[key])
        return self._base.get(key)

    def tree_node(self, key: bytes) -> bytes | None:
        return self._base.tree_node(key)

    def read(self, key: bytes, cls: type[M]) -> M | None:
        """`state.read` of this overlay: a message written here is returned as written, not
        encoded and decoded again (a block writes a busy signer's nonce and quota once per
        transaction, and reads them back for the next)."""
        if key not in self._pending:
            return read(self._base, key, cls)
        value = self._pending[key]
        if value is None:
            return None
        if type(value) is cls:
            return value
        return decode_value(_encoded(value), cls, key)  # type: ignore[arg-type]

    def scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        merged = dict(self._base.scan(prefix))
        for key, value in self._pending.items():
            if key.startswith(prefix):
                if value is None:
                    merged.pop(key, None)
                else:
                    merged[key] = _encoded(value)  # type: ignore[assignment]
        for key in sorted(merged):
            yield key, merged[key]

    def put(self, key: bytes, value: Message | bytes) -> None:
        self._pending[key] = value

    def delete(self, key: bytes) -> None:
        self._pending[key] = None

    def changes(self) -> tuple[tuple[bytes, bytes | None], ...]:
        """The buffered writes in key order (None: delete)."""
        pending = self._pending
        return tuple([(key, _encoded(pending[key])) for key in sorted(pending)])


def _encoded(value: Message | bytes | None) -> bytes | None:
    return value if value is None or type(value) is bytes else value.encode()  # type: ignore[union-attr]


def with_change(changes: tuple[tuple[bytes, bytes | None], ...], key: bytes,
                value: bytes | None) -> tuple[tuple[bytes, bytes | None], ...]:
    """`changes` (in key order) with `key` set to `value`, still in key order, without sorting
    them all again."""
    at = bisect.bisect_left(changes, (key,))
    after = at + 1 if at < len(changes) and changes[at][0] == key else at
    return (*changes[:at], (key, value), *changes[after:])
