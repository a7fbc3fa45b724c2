"""State snapshots: the state of one height, cut into chunks that each prove against that
height's certified state root (docs/ledger.md, "Snapshots and state sync").

Theory of operation
-------------------
The model is CometBFT's state sync (snapshots of the application's state at fixed heights,
fetched in chunks from several peers and checked against a light client's header), with the
check made per chunk by the state tree (ledger/smt.py) instead of by the application at the end.

- A snapshot at height `h` holds every leaf of the state tree at `h` as its pair (state key,
  value), ordered by key hash. The indexes and the chain meta are not leaves: a node rebuilds the
  indexes from the records and grants (`index_entries`), and the chain meta from the header.
- Chunk `i` at depth `d` holds the pairs whose key hash starts with the `d` nibbles of `i`: one
  subtree of the state tree. The **manifest** names each chunk's subtree root: empty, a leaf
  (its key hash and value hash) or an internal node (its hash). `check_manifest` folds the
  16**d roots up to the root hash (smt.join, the tree's own shape rules) and compares it with
  the state root of a header that the light client took (ledger/light.py): one check, before any
  chunk, makes every root in the manifest as good as the certificate.
- `check_chunk` rebuilds a chunk's subtree from its pairs and compares it with the manifest's
  root of that chunk. A chunk whose pairs were altered, added to or left out, with whatever
  hash its server put beside it, does not rebuild to that root; the node asks another peer.
- A chunk also carries the transactions that its pairs name (`named_tx`): a record's anchor, a
  grant, an access.log, which a node serves to wallets with them. Each is named by its hash in a
  proven pair, so each is checked by hashing it.

Erased records are in a snapshot as the ledger keeps them: the anchor, marked erased. Their
ciphertexts are in no snapshot (ciphertexts never are: they follow by blob replication, which
fetches only records not erased). Pure: no I/O; the store (store/leveldb.py) and state sync
(net/statesync.py) call it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from healthnode.crypto import digest
from healthnode.ledger import light, proofs, smt
from healthnode.ledger.rules import chain_meta_with, in_tree
from healthnode.ledger.rules.tree import grow_tree
from healthnode.ledger.state import (
    AUDIT,
    CIPHERTEXT,
    GRANT,
    GRANTEE_GRANT,
    META_KEY,
    PAIR_GRANT,
    PATIENT_GRANT,
    PATIENT_RECORD,
    RECORD,
    MemoryState,
    StateView,
    decode_value,
    height_bytes,
)
from healthnode.protocol.block import VerificationError
from healthnode.protocol.genesis import Genesis
from healthnode.protocol.state import AccessEntry, ChainMeta, GrantState, RecordState
from healthnode.protocol.statesync import (
    CHUNK_BYTES_TARGET,
    CHUNK_DEPTH_MAX,
    ChainProof,
    SnapshotChunk,
    SnapshotManifest,
)
from healthnode.protocol.tx import (
    GRANT_ID_CLASSES,
    AccessLog,
    AnyTx,
    RecordAnchor,
    RepresentativeAct,
    grant_made,
)

HASH_BYTES: Final = smt.HASH_BYTES
# Chunk sizes are counted per prefix of this many nibbles while a snapshot is written, and the
# depth is chosen from them (`choose_depth`).
COUNT_DEPTH: Final = CHUNK_DEPTH_MAX


class SnapshotError(VerificationError):
    """A manifest or chunk that does not prove against the certified state root."""


# --- what the state names -------------------------------------------------------------------


def named_tx(key: bytes, value: bytes) -> tuple[bytes, tuple[type[AnyTx], ...]] | None:
    """The transaction (its hash, and the kinds it may be of) that a state pair names, which a
    node keeps to answer wallets: a record's anchor (the record id is its hash), a grant (of
    either kind, or the representative's act that made it: the act's hash is the grant id), and
    the access.log behind an audit entry. None for the other pairs."""
    if key.startswith(RECORD) and len(key) == len(RECORD) + HASH_BYTES:
        return key[len(RECORD):], (RecordAnchor,)
    if key.startswith(GRANT) and len(key) == len(GRANT) + HASH_BYTES:
        return key[len(GRANT):], GRANT_ID_CLASSES  # a grant, or a representative's act
    if key.startswith(AUDIT):
        return decode_value(value, AccessEntry, key).tx_hash, (AccessLog,)
    return None


def names(view: StateView, tx: AnyTx, height: int) -> bool:
    """Whether the state in `view` names `tx`, final at `height` (the other side of
    `named_tx`): an anchor whose record exists, a grant (or a representative's act that made
    one) whose grant exists, an access.log that an
    audit entry of its patient at its height holds. What a node that prunes a block's body keeps
    of its transactions (store/leveldb.py `prune`). Records, grants and audit entries are never
    deleted from the state (an erased record keeps its anchor), so a transaction named once is
    named for good."""
    if isinstance(tx, RecordAnchor):
        return view.get(RECORD + tx.hash) is not None
    if grant_made(tx) is not None:  # a grant of either kind, or a representative's act
        return view.get(GRANT + tx.hash) is not None
    if isinstance(tx, AccessLog):
        return any(decode_value(value, AccessEntry, key).tx_hash == tx.hash
                   for key, value in view.scan(AUDIT + tx.patient + height_bytes(height)))
    return False


def named_height(key: bytes, value: bytes) -> int:
    """The height of the transaction that a pair names (`named_tx`): its record's, grant's or
    audit entry's."""
    if key.startswith(RECORD):
        return decode_value(value, RecordState, key).height
    if key.startswith(GRANT):
        return decode_value(value, GrantState, key).height
    return decode_value(value, AccessEntry, key).height


def index_entries(key: bytes, value: bytes) -> list[tuple[bytes, bytes]]:
    """The index pairs (state.INDEX_PREFIXES) that the ledger's rules write beside a record or a
    grant: what a node that takes a snapshot writes for each of its pairs."""
    if key.startswith(RECORD) and len(key) == len(RECORD) + HASH_BYTES:
        record_id = key[len(RECORD):]
        record = decode_value(value, RecordState, key)
        return [(PATIENT_RECORD + record.patient + record_id, b""),
                (CIPHERTEXT + record.ciphertext_hash, record_id)]
    if key.startswith(GRANT) and len(key) == len(GRANT) + HASH_BYTES:
        grant_id = key[len(GRANT):]
        grant = decode_value(value, GrantState, key)
        return [(PATIENT_GRANT + grant.patient + grant_id, b""),
                (GRANTEE_GRANT + grant.grantee + grant_id, b""),
                (PAIR_GRANT + grant.patient + grant.grantee + grant_id, b"")]
    return []


def state_of_pairs(chain_id: str, height: int, time_ms: int,
                   pairs: Iterable[tuple[bytes, bytes]]) -> tuple[MemoryState, ChainMeta]:
    """The state of a snapshot's `pairs` at `height` (whose header's time is `time_ms`), as a
    node that executes from it holds it: the pairs, the indexes derived from them, the state
    tree built from them (every node written as `height`, as a node that takes the snapshot
    writes it) and the chain meta that holds the tree's root. The caller compares the meta's
    `state_hash` with the certified header's. SnapshotError for a pair outside the tree."""
    state = MemoryState(prune_tree=True)
    items: list[tuple[bytes, bytes | None]] = []
    leaves: list[tuple[bytes, bytes | None]] = []
    for key, value in pairs:
        if not in_tree(key):
            raise SnapshotError("a snapshot pair outside the state tree (an index or the meta)")
        leaves.append((key, value))
        items.append((key, value))
        items += index_entries(key, value)
    root, tree_writes = grow_tree(state, None, height, leaves)
    meta = chain_meta_with(chain_id, height, time_ms, root)
    items.append((META_KEY, meta.encode()))
    state.apply(tuple(items))
    state.apply_tree(tree_writes)
    return state, meta


# --- the chain to a snapshot ---------------------------------------------------------------


def follow(genesis: Genesis, chain: ChainProof, manifest: SnapshotManifest) -> light.TrustedHead:
    """The light client's head at the manifest's height, taken from the genesis through the
    heads where the authority set changed (each proves the next set against its state root) and
    then the manifest's own head; LightError or SnapshotError naming what does not hold.

    Each head is the last height of a set, or a height of the manifest's set, so each must be
    certified by exactly the set that the head before it named: the light client's skipping rule
    (more than a third of the trusted set) is not used. A peer that leaves a change out is caught
    at the next head, whose set is another; one that adds a head cannot certify it. (With the
    skipping rule, a hidden change whose new set shares more than a third of the old was taken,
    and the node kept a chain that its own `verify` refuses, ledger/replay.py.)"""
    height = manifest.head.header.height
    trusted = light.from_genesis(genesis)
    if chain.height != height:
        raise SnapshotError(f"the chain proof is up to height {chain.height}, not {height}")
    for position, head in enumerate((*chain.heads, manifest.head)):
        at = head.header.height
        if position < len(chain.heads):
            if at >= height:
                raise SnapshotError("the chain proof has a head at or above the snapshot's")
            if head.next_set.value is None:
                raise SnapshotError(f"the head at height {at} is no change of the authority "
                                    f"set")
        if tuple(head.authorities) != trusted.next_authorities:
            raise SnapshotError(f"the head at height {at} is of another authority set than the "
                                f"one in force: a set change was left out")
        trusted = proofs.take_head(trusted, head)
    return trusted


# --- chunks -----------------------------------------------------------------------------------


def chunk_index(key_hash: bytes, depth: int) -> int:
    """The chunk of a key hash at `depth` (1 to 3 nibbles): its first `depth` nibbles."""
    return int.from_bytes(key_hash[:2], "big") >> (16 - 4 * depth)


def choose_depth(chunk_bytes: Sequence[int]) -> int:
    """The smallest depth at which every chunk stays under CHUNK_BYTES_TARGET, given the bytes
    of each chunk at COUNT_DEPTH (16**COUNT_DEPTH counts); the deepest one if none does."""
    for depth in range(1, COUNT_DEPTH + 1):
        span = 16 ** (COUNT_DEPTH - depth)
        largest = max(sum(chunk_bytes[start:start + span])
                      for start in range(0, len(chunk_bytes), span))
        if largest <= CHUNK_BYTES_TARGET:
            return depth
    return COUNT_DEPTH


def subtree_root(hashed: Sequence[tuple[bytes, bytes]], depth: int) -> bytes:
    """The manifest's root of a chunk holding `hashed` ((key hash, value hash), sorted):
    empty, the leaf's two hashes, or the internal node's hash."""
    if not hashed:
        return b""
    if len(hashed) == 1:
        return hashed[0][0] + hashed[0][1]
    root = smt.build(hashed, depth, 0).root
    assert root is not None
    return root.hash


def _subtree(root: bytes, index: int, depth: int) -> smt.Ref | smt.Leaf | None:
    """Chunk `index`'s subtree as its manifest root names it, in a form that a chunk can
    rebuild (`subtree_root`); else SnapshotError. The fold alone does not hold a root to that:
    a lone leaf moves up, so its place among empty siblings is not in the hash, and an empty
    child hashes as zeros, so the fold takes a leaf named in another chunk of its parent, or
    the empty hash named as an internal node's; no chunk matches either."""
    at = f"chunk {index}"
    if not root:
        return None
    if len(root) == 2 * HASH_BYTES:
        if chunk_index(root[:HASH_BYTES], depth) != index:
            raise SnapshotError(f"{at}: a leaf root whose key hash is of another chunk")
        return smt.Leaf(root[:HASH_BYTES], root[HASH_BYTES:])
    if len(root) == HASH_BYTES:
        if root == smt.EMPTY:
            raise SnapshotError(f"{at}: the empty hash named as an internal node's")
        return smt.Ref(root, 0, False)
    raise SnapshotError(f"{at}: a subtree root of {len(root)} bytes (0, 32 or 64)")


def join_roots(roots: Sequence[bytes], depth: int, version: int) -> smt.Update:
    """The tree's nodes above `depth` over the manifest's roots, written as `version` (an
    internal root is referred to as written at `version` too: a node that takes a snapshot
    writes every node of it as the snapshot's height)."""
    subtrees = []
    for index, root in enumerate(roots):
        subtree = _subtree(root, index, depth)
        if isinstance(subtree, smt.Ref):
            subtree = smt.Ref(subtree.hash, version, False)
        subtrees.append(subtree)
    if len(subtrees) != 16 ** depth:
        raise SnapshotError(f"the manifest has {len(subtrees)} roots; depth {depth} needs "
                            f"{16 ** depth}")
    return smt.join(subtrees, depth, version)


def check_manifest(manifest: SnapshotManifest, state_root: bytes) -> None:
    """SnapshotError unless the manifest's roots fold up to `state_root` (the state root of its
    head, which the caller has taken through the light client)."""
    if manifest.head.header.state_hash != state_root:
        raise SnapshotError("the manifest's head is not the certified one")
    root = join_roots(manifest.roots, manifest.depth, 0).root
    if smt.root_hash(root) != state_root:
        raise SnapshotError("the manifest's chunk roots do not fold up to the certified "
                            "state root")


@dataclass(frozen=True, slots=True)
class CheckedChunk:
    """A chunk that proved: its pairs (key order by key hash) with their key hashes, and the
    transactions they name, by hash."""

    index: int
    pairs: tuple[tuple[bytes, bytes], ...]
    key_hashes: tuple[bytes, ...]
    txs: dict[bytes, AnyTx]


def check_chunk(manifest: SnapshotManifest, chunk: SnapshotChunk) -> CheckedChunk:
    """The chunk, checked against the manifest (checked itself by `check_manifest`); else
    SnapshotError naming what does not hold. Every pair must be a leaf of the state tree under
    the chunk's prefix, once, and rebuild to the manifest's root; every transaction a pair names
    must be there, with that hash and kind, and nothing else."""
    height, depth, index = manifest.head.header.height, manifest.depth, chunk.index
    at = f"chunk {index} of height {height}"
    if chunk.height != height:
        raise SnapshotError(f"{at}: the peer sent a chunk of height {chunk.height}")
    if index >= 16 ** depth:
        raise SnapshotError(f"{at}: no such chunk at depth {depth}")
    hashed, key_hashes = [], []
    previous = b""
    pairs = tuple((pair.key, pair.value) for pair in chunk.pairs)
    for key, value in pairs:
        if not in_tree(key):
            raise SnapshotError(f"{at}: a pair outside the state tree (an index or the meta)")
        key_hash = digest(key)
        if chunk_index(key_hash, depth) != index:
            raise SnapshotError(f"{at}: a pair of another chunk")
        if key_hash <= previous:
            raise SnapshotError(f"{at}: pairs out of key-hash order, or one twice")
        previous = key_hash
        hashed.append((key_hash, digest(value)))
        key_hashes.append(key_hash)
    if subtree_root(hashed, depth) != manifest.roots[index]:
        raise SnapshotError(f"{at}: the pairs do not rebuild the subtree root that the "
                            f"certified manifest names")
    named: dict[bytes, tuple[type[AnyTx], ...]] = {}
    try:
        for key, value in pairs:
            found = named_tx(key, value)
            if found is not None:
                named[found[0]] = found[1]
    except ValueError as error:  # CorruptState: a proven value that does not decode
        raise SnapshotError(f"{at}: a certified value does not decode: {error}") from None
    txs = {}
    for tx in chunk.txs:
        kinds = named.get(tx.hash)
        if kinds is None or tx.hash in txs:
            raise SnapshotError(f"{at}: a transaction that no pair of the chunk names")
        if type(tx) not in kinds or (
                isinstance(tx, RepresentativeAct) and grant_made(tx) is None):  # an act's revoke
            raise SnapshotError(f"{at}: a named transaction of the wrong kind")
        txs[tx.hash] = tx
    if len(txs) != len(named):
        raise SnapshotError(f"{at}: {len(named) - len(txs)} named transaction(s) missing")
    return CheckedChunk(index, pairs, tuple(key_hashes), txs)


def chunk_nodes(manifest: SnapshotManifest, chunk: CheckedChunk) -> dict[bytes, bytes]:
    """The tree nodes of a checked chunk's subtree, written as the snapshot's height, by
    storage key (smt.node_key): none for a subtree of one key or none (`join_roots` writes a
    lone leaf where it belongs)."""
    if len(chunk.pairs) < 2:
        return {}
    hashed = [(key_hash, digest(value)) for key_hash, (_, value)
              in zip(chunk.key_hashes, chunk.pairs, strict=True)]
    return smt.build(hashed, manifest.depth, manifest.head.header.height).written
