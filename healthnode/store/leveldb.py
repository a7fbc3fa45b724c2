"""The LevelDB chain store: blocks, certificates, transactions, state and the head, on disk.

Theory of operation
-------------------
One LevelDB database per node home holds everything the node has finalized, under one-byte
keyspace prefixes:

    B height(8)        -> block (canonical bytes)
    E height(8)        -> the header of a height whose body this node does not hold (pruned, or
                          below the snapshot it joined from)
    H block_hash       -> height(8)
    C height(8)        -> the commit certificate that finalized that block
    T tx_hash          -> height(8) index(4) [offset(4) length(4)]: where the transaction is, and
                          where its bytes are in its block's (format 4 on); index 0xffffffff: a
                          transaction that a snapshot brought, whose place is not known
    L tx_hash          -> a transaction that the state names (ledger/snapshot.py `named_tx`),
                          kept when its block's body is not: a record's anchor, a grant, an
                          access.log
    A height(8)        -> the certified head (protocol/client.CertifiedHead) of the last height
                          of an authority set: the header, its certificate and set, and the
                          proof of the next set; what a joining node follows from the genesis
    Z height(8) key_hash -> [key, value]: a snapshot of the state tree's pairs at that height
    Y height(8)        -> the snapshot's manifest, written last: a snapshot without one is
                          unfinished, and deleted by `open`
    S state_key        -> state value (ledger/state.py owns the state key layout)
    M genesis | head   -> the genesis hash; [height, block_hash] of the last committed block
      | base           -> the height of the state this node executes from: 0, or the snapshot
                          it joined from by state sync
      | pruned         -> the highest height whose block body `prune` deleted (0: none)
    G name             -> small records the consensus core must keep across restarts
                          (the double-sign guard, the restore mark), written with sync on their
                          own; never copied into a backup (`backup`)
    X ciphertext_hash  -> a record's ciphertext (the encrypted record store, net/blobs.py)
    P ciphertext_hash  -> [uploaded_ms, uploader]: uploaded by a wallet, not yet anchored
    U                  -> [day, patients' bytes, every key's bytes]: the uploads this node took
                          on that UTC day of its clock (its door budgets, ledger/door.py)

`prune` (a node with `[node] keep_blocks`, docs/operations.md "Pruning") deletes old block bodies
in height order, never above the oldest snapshot, so that `verify` can re-execute from a kept
state: for each height it keeps the header (E) and the certificate, keeps the transactions that
the state names (L, with their T entry) and deletes the others' T entries, in one synced batch
per call with the new pruned floor. Ciphertexts are never touched by it.

`commit` writes a block, its certificate, its transaction index, its state changes and the new
head in one `write_batch(sync=True)`: after a crash at any instant the store holds either the old
head with the old state or the new head with the new state, never a mix. `open` checks the store
against the genesis and verifies the head (block bytes decode, hash matches, state meta and
certificate agree with it) and refuses a store whose head does not verify: a node never starts
from state it cannot vouch for.

This is the only module that imports plyvel. Everything it reads back decodes through the
checked codec again (docs/architecture.md, rule 8). A damaged entry is named by where it is, never
by a transaction's or ciphertext's hash: the error may end in the node's log, and such a hash is a
patient's id (docs/operations.md, "What the logs hold about patients").
"""

from __future__ import annotations

import os
import shutil
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import plyvel

from healthnode.codec import CodecError, array_header, pack, unpack
from healthnode.crypto import ZERO_HASH, digest
from healthnode.errors import StoreError
from healthnode.ledger import smt, snapshot
from healthnode.ledger.proofs import key_proof
from healthnode.ledger.rules import (
    Execution,
    apply_block,
    authorities,
    chain_meta_with,
    genesis_state,
    in_tree,
    tree_root,
)
from healthnode.ledger.state import (
    AUTHORITY_SET,
    META_KEY,
    TREE_NODE,
    TREE_ROOT,
    TREE_STALE,
    CorruptState,
    MemoryState,
    StateView,
    decode_value,
    height_bytes,
)
from healthnode.protocol.block import (
    Block,
    CommitCertificate,
    Header,
    VerificationError,
    decode_block,
)
from healthnode.protocol.client import CertifiedHead
from healthnode.protocol.genesis import Genesis
from healthnode.protocol.schema import decode_message
from healthnode.protocol.state import ChainMeta
from healthnode.protocol.statesync import (
    STATESYNC_FRAME_BYTES_MAX,
    SetChange,
    SnapshotChunk,
    SnapshotManifest,
)
from healthnode.protocol.tx import AnyTx, decode_tx
from healthnode.store.blob_files import BlobFiles, sync_directory

BLOCK: Final = b"B"
BLOCK_HASH: Final = b"H"
CERTIFICATE: Final = b"C"
TX: Final = b"T"
STATE: Final = b"S"
TREE: Final = b"N"  # the state tree's keyspace (ledger/state.py TREE_*): nodes, stale index, roots
# Tree versions kept for proofs, unless the node's config says otherwise ([node]
# state_versions_kept): a proof can be served at any of the last this-many heights. Older nodes
# are deleted at commit, in the same batch (docs/ledger.md, "The state root").
TREE_VERSIONS_KEPT: Final = 1000
META_GENESIS: Final = b"Mgenesis"
META_HEAD: Final = b"Mhead"
# The store's format: one number for everything in this LevelDB (blocks, indexes, state, the
# state tree, the guard, the ciphertexts). A store without it is format 1, written before the
# number existed. `migrate` (home/migrate.py) takes a store from any older format to this one.
META_FORMAT: Final = b"Mformat"
STORE_FORMAT: Final = 4
META_BASE: Final = b"Mbase"
META_PRUNED: Final = b"Mpruned"
# Heights whose bodies one `prune` call deletes at most: one synced batch of up to this many
# blocks (8 MiB each at most, a few KiB as a hospital fills them), so a node that turns pruning
# on over a long chain catches up a few dozen heights per commit instead of stalling one
# commit for the whole chain (docs/operations.md, "Pruning").
PRUNE_HEIGHTS_PER_CALL: Final = 32
HEADER: Final = b"E"
NAMED_TX: Final = b"L"
SET_CHANGE: Final = b"A"
SNAPSHOT: Final = b"Z"
SNAPSHOT_MANIFEST: Final = b"Y"
UNKNOWN_INDEX: Final = 0xFFFFFFFF  # a transaction's place in its block, when a snapshot brought it
GUARD: Final = b"G"
BLOB: Final = b"X"
BLOB_PENDING: Final = b"P"
UPLOADS_TODAY: Final = b"U"
GUARD_BYTES_MAX: Final = 16 * 1024 * 1024  # a guard may hold a locked block
# What a backup never copies: the double-sign guard (a restored node must never read a guard
# older than what its key has signed since), and the ciphertexts, which every authority holds
# and a restored node fetches again, so that no backup keeps a record that is erased after it
# (docs/operations.md, "Backups hold no ciphertexts"); with them, the uploads and their day's
# count, which are this node's door's, not the chain's.
BACKUP_LEAVES_OUT: Final = (GUARD, BLOB, BLOB_PENDING, UPLOADS_TODAY)
BLOB_DIR: Final = "blobs"  # beside the chain store: the ciphertext files (store/blob_files.py)
# A rewrite's new store while it is copied, and the store it replaces until the new one is in
# place (`rewrite`): names no operator's copy would have, as `open` deletes or restores them.
REWRITE_SUFFIX: Final = ".healthnode-rewrite-new"
OLD_SUFFIX: Final = ".healthnode-rewrite-old"
CERTIFICATE_BYTES_MAX: Final = 64 * 1024
SET_CHANGE_BYTES_MAX: Final = 256 * 1024  # a header, a certificate, 64 keys and a proof
# A backup writes in batches of about this size: bounded memory, few write calls. One value (a
# block, a ciphertext) may exceed it; a batch then holds just that value.
BACKUP_BATCH_BYTES_MAX: Final = 4 * 1024 * 1024
# LevelDB's options. A Bloom filter per table (10 bits a key, ~1 % false positives) answers most
# reads of an absent key without reading a table block: every new record asks whether its
# ciphertext is already anchored, and a new signer for its nonce. A 16 MiB write buffer (the
# default is 4 MiB) flushes and compacts a quarter as often under load: compaction, on
# LevelDB's own thread, was a tenth of a loaded node's CPU time (docs/benchmarks.md).
# LevelDB keeps the writes not yet in a table file in memory (the memtable, up to
# `write_buffer_size`) and in its log. 16 MiB cut compaction CPU in the bench (0.30 -> 0.07 s per
# node over 20,000 transactions), but at a hospital's write rate a 16 MiB memtable fills for
# hours, which a soak sees as RSS growing by that much (docs/reliability.md). LevelDB's own
# 4 MiB reaches its steady state within the first half hour. 2 MiB was tried (it halves the swing
# of RSS as the memtable fills and flushes): in the bench it cost 15 % more node CPU per
# transaction and ~100 ms of p50 latency, from the extra flushes and compactions under load
# (docs/benchmarks.md), so the memtable stays at 4 MiB.
# The block cache (decompressed table blocks) is 2 MiB, not LevelDB's 8 MiB: at a hospital's read
# rate 8 MiB filled for two hours, which the 2-hour soak saw as RSS growing by that much (run 4,
# docs/reliability.md). The kernel's page cache keeps the table files in memory anyway, and the
# node keeps its hot values decoded, so a smaller block cache costs a decompression, not a read.
DB_OPTIONS: Final = {"bloom_filter_bits": 10, "write_buffer_size": 4 * 1024 * 1024,
                     "lru_cache_size": 2 * 1024 * 1024}
RECENT_BLOCKS: Final = 4  # committed blocks kept decoded (up to 8 MiB each on the wire)


def _finish_rewrite(path: Path) -> None:
    """Finish or undo a `ChainStore.rewrite` cut short: the old store back in place if the new
    one never got there, the old one deleted if it did, a half-copied new one deleted."""
    old = path.with_name(path.name + OLD_SUFFIX)
    fresh = path.with_name(path.name + REWRITE_SUFFIX)
    if old.exists():
        if path.exists():
            shutil.rmtree(old)
        else:
            os.replace(old, path)
    if fresh.exists():
        shutil.rmtree(fresh)


def _ranges_without(prefixes: Iterable[bytes]) -> list[tuple[bytes | None, bytes | None]]:
    """The key ranges [start, stop) that cover every key but those under `prefixes` (one-byte
    prefixes below 0xff)."""
    ranges: list[tuple[bytes | None, bytes | None]] = []
    start: bytes | None = None
    for prefix in sorted(prefixes):
        ranges.append((start, prefix))
        start = prefix[:-1] + bytes([prefix[-1] + 1])
    ranges.append((start, None))
    return ranges


def _height(height: int) -> bytes:
    return height.to_bytes(8, "big")


def _snapshot_pair(raw: bytes, path: Path) -> tuple[bytes, bytes]:
    try:
        value = unpack(raw, STATESYNC_FRAME_BYTES_MAX)
    except CodecError:
        value = None
    if not (isinstance(value, list) and len(value) == 2
            and all(isinstance(part, bytes) for part in value)):
        raise StoreError(f"{path}: a snapshot pair is damaged")
    return value[0], value[1]


class _PinnedView:
    """A StateView over a LevelDB snapshot of the store (`ChainStore.pin`)."""

    def __init__(self, pinned: Any) -> None:
        self._pinned = pinned

    def get(self, key: bytes) -> bytes | None:
        value: bytes | None = self._pinned.get(STATE + key)
        return value

    def scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        with self._pinned.iterator(prefix=STATE + prefix) as items:
            for key, value in items:
                yield key[len(STATE):], value

    def tree_node(self, key: bytes) -> bytes | None:
        value: bytes | None = self._pinned.get(TREE + TREE_NODE + key)
        return value


def _cut(raw_block: bytes, location: bytes) -> bytes:
    """A transaction's bytes, cut from its block's where its index entry (format 4) says."""
    start = int.from_bytes(location[12:16], "big")
    return raw_block[start:start + int.from_bytes(location[16:20], "big")]


def _tx_index(block: Block) -> Iterator[tuple[bytes, bytes]]:
    """The index entries of a block's transactions: height, place, and where the bytes are."""
    height_key = _height(block.height)
    for index, (tx, start, length) in enumerate(block.tx_spans()):
        yield TX + tx.hash, (height_key + index.to_bytes(4, "big") + start.to_bytes(4, "big")
                             + length.to_bytes(4, "big"))


def _certified_head(view: StateView, header: Header, certificate: CommitCertificate,
                    meta: ChainMeta) -> CertifiedHead:
    """The head as a light client takes it: the header, its certificate and authority set,
    and the proof, in the state `view` after that height (`meta`), of the next height's set."""
    next_key = AUTHORITY_SET + height_bytes(header.height + 1)
    return CertifiedHead(header, certificate, authorities(view, header.height),
                         key_proof(view, tree_root(meta), next_key, view.get(next_key)))


class _Written:
    """The state after a block not yet stored: its changes and tree nodes over the store."""

    def __init__(self, changes: dict[bytes, bytes | None], tree: dict[bytes, bytes],
                 store: ChainStore) -> None:
        self._changes = changes
        self._tree = smt.Layered(tree, store)
        self._store = store

    def get(self, key: bytes) -> bytes | None:
        return self._changes[key] if key in self._changes else self._store.get(key)

    def scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        return self._store.scan(prefix)  # the authority sets a block reads are older than it

    def tree_node(self, key: bytes) -> bytes | None:
        return self._tree.tree_node(key)


class StoreFormatError(StoreError):
    """The store is of another format than this release reads; the message says what to run."""


@dataclass(frozen=True, slots=True)
class Head:
    height: int  # 0: nothing committed yet
    block_hash: bytes  # ZERO_HASH at height 0


@dataclass(frozen=True, slots=True)
class BackupCopy:
    """What `ChainStore.backup` copied: the head at the snapshot and how many keys."""

    height: int
    head_hash: bytes
    keys: int


def _decode_head(raw: bytes | None, path: Path) -> Head:
    try:
        value = unpack(raw, 64) if raw is not None else None
    except CodecError:
        value = None
    if not (isinstance(value, list) and len(value) == 2
            and isinstance(value[0], int) and isinstance(value[1], bytes)):
        raise StoreError(f"{path}: missing or malformed head record")
    return Head(value[0], value[1])


class ChainStore:
    """A node's finalized chain and state. Also a `StateView` of the committed state."""

    def __init__(self, db: plyvel.DB, path: Path, genesis: Genesis) -> None:
        self._db = db
        self.format = STORE_FORMAT
        self.tree_versions_kept = TREE_VERSIONS_KEPT
        self.path = path
        self.genesis = genesis
        self._state = db.prefixed_db(STATE)
        self._head = Head(0, ZERO_HASH)
        self._blobs = BlobFiles(path.parent / BLOB_DIR)
        # The last blocks committed, as committed: the blocks most asked for (the newest block
        # by clients, a peer a few blocks behind by sync) are served without decoding them
        # again, which costs about 10 ms for a block of 1,250 transactions.
        self._recent: OrderedDict[int, Block] = OrderedDict()
        self.base = 0  # the height of the state this node executes from (META_BASE)
        self.pruned = 0  # the highest height whose body was pruned (META_PRUNED)

    @classmethod
    def open(cls, path: Path, genesis: Genesis, *, any_format: bool = False) -> ChainStore:
        """Open (creating from `genesis` if new) and verify the store at `path`. A store of
        another format than this release's is refused (StoreFormatError), unless `any_format`
        (for `migrate` and the backup it takes first)."""
        _finish_rewrite(path)
        path.mkdir(parents=True, exist_ok=True)
        try:
            db = plyvel.DB(str(path), create_if_missing=True, **DB_OPTIONS)
        except plyvel.IOError as error:
            if "lock" in str(error).lower():
                raise StoreError(f"{path}: the chain store is in use by another process") from None
            raise StoreError(f"{path}: cannot open the chain store ({error})") from None
        except plyvel.CorruptionError as error:
            raise StoreError(f"{path}: the chain store is corrupt ({error})") from None
        store = cls(db, path, genesis)
        try:
            store._initialise_or_check(any_format)
        except BaseException:
            db.close()
            raise
        return store

    def _initialise_or_check(self, any_format: bool) -> None:
        recorded = self._db.get(META_GENESIS)
        if recorded is None:
            if next(self._db.iterator(include_value=False), None) is not None:
                raise StoreError(f"{self.path}: not a healthnode chain store (no genesis record)")
            genesis = genesis_state(self.genesis)
            with self._db.write_batch(sync=True) as batch:
                for key, value in genesis.changes:
                    assert value is not None
                    batch.put(STATE + key, value)
                for key, value in genesis.tree_changes:
                    assert value is not None
                    batch.put(TREE + key, value)
                batch.put(META_GENESIS, self.genesis.hash)
                batch.put(META_HEAD, pack([0, ZERO_HASH]))
                batch.put(META_FORMAT, pack(STORE_FORMAT))
            return
        if recorded != self.genesis.hash:
            raise StoreError(f"{self.path}: the chain store belongs to another genesis")
        self.format = self._read_format()
        if self.format != STORE_FORMAT and not any_format:
            if self.format > STORE_FORMAT:
                raise StoreFormatError(
                    f"{self.path}: the chain store is format {self.format}, written by a newer "
                    f"release; this release reads format {STORE_FORMAT}: run the newer release")
            raise StoreFormatError(
                f"{self.path}: the chain store is format {self.format}; this release reads "
                f"format {STORE_FORMAT}. Stop the node and run `healthnode migrate --home HOME` "
                f"(it takes a backup first)")
        self.base = self._read_height(META_BASE)
        self.pruned = self._read_height(META_PRUNED)
        self._head = self._verify_head()
        if self.format >= 4:
            self._delete_unfinished_snapshots()

    def _read_height(self, key: bytes) -> int:
        return self._read_int(key, 0, 0, f"{key.decode()} record")

    def _read_format(self) -> int:
        # A store without the record was written before the format number existed.
        return self._read_int(META_FORMAT, 1, 2, "store format record")

    def _read_int(self, key: bytes, missing: int, least: int, what: str) -> int:
        """A small packed integer of the store's own (`missing` when there is none); a
        StoreError naming `what` when it is not one of at least `least`."""
        raw = self._db.get(key)
        if raw is None:
            return missing
        try:
            value = unpack(raw, 16)
        except CodecError:
            value = None
        if type(value) is not int or value < least:
            raise StoreError(f"{self.path}: malformed {what}")
        return value

    def set_format(self, format_: int) -> None:
        """Record the store's format (the last step of a migration), synced."""
        self._db.put(META_FORMAT, pack(format_), sync=True)
        self.format = format_

    def _verify_head(self) -> Head:
        problem = "missing head record"
        raw = self._db.get(META_HEAD)
        try:
            if raw is None:
                raise CorruptState(problem)
            value = unpack(raw, 64)
            if not (isinstance(value, list) and len(value) == 2
                    and isinstance(value[0], int) and isinstance(value[1], bytes)):
                raise CorruptState("malformed head record")
            head = Head(value[0], value[1])
            meta = self._meta()
            if meta.height != head.height:
                raise CorruptState(f"state is at height {meta.height}, head at {head.height}")
            if head.height == 0:
                if meta.state_hash != genesis_state(self.genesis).state_hash or \
                        head.block_hash != ZERO_HASH:
                    raise CorruptState("empty chain whose state is not the genesis state")
                return head
            block = self.block(head.height)
            if block is None:
                raise CorruptState(f"head block {head.height} is missing")
            if block.hash != head.block_hash:
                raise CorruptState("head block's hash does not match the head record")
            if block.header.state_hash != meta.state_hash:
                raise CorruptState("state hash differs from the head block's")
            certificate = self.certificate(head.height)
            if certificate is None or certificate.block_hash != head.block_hash:
                raise CorruptState("head block has no matching commit certificate")
        except (CorruptState, CodecError, VerificationError) as error:
            raise StoreError(f"{self.path}: the chain head does not verify: {error}") from None
        return head

    # --- StateView --------------------------------------------------------------------------

    def get(self, key: bytes) -> bytes | None:
        value: bytes | None = self._state.get(key)
        return value

    def scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        with self._state.iterator(prefix=prefix) as items:
            yield from items

    def tree_node(self, key: bytes) -> bytes | None:
        value: bytes | None = self._db.get(TREE + TREE_NODE + key)
        return value

    def tree_root(self, height: int) -> bytes | None:
        """The packed root reference of the state tree after `height`, while it is kept."""
        value: bytes | None = self._db.get(TREE + TREE_ROOT + height_bytes(height))
        return value

    def state_items(self) -> dict[bytes, bytes]:
        return dict(self._state.iterator())

    # --- chain ------------------------------------------------------------------------------

    @property
    def head(self) -> Head:
        return self._head

    def _meta(self) -> ChainMeta:
        raw = self.get(META_KEY)
        if raw is None:
            raise CorruptState("state has no chain meta")
        return decode_value(raw, ChainMeta, META_KEY)

    def block(self, height: int) -> Block | None:
        recent = self._recent.get(height)
        if recent is not None:
            return recent
        raw = self._db.get(BLOCK + _height(height))
        if raw is None:
            return None
        try:
            block = decode_block(raw)
        except CodecError as error:
            raise StoreError(f"{self.path}: block {height} is damaged: {error}") from None
        if block.height != height:
            raise StoreError(f"{self.path}: block stored at {height} says height {block.height}")
        return block

    def block_by_hash(self, block_hash: bytes) -> Block | None:
        raw = self._db.get(BLOCK_HASH + block_hash)
        if raw is None:
            return None
        height = int.from_bytes(raw, "big")
        block = self.block(height)
        if block is None and not self.holds_body(height):
            return None  # pruned, or below the snapshot this node joined from
        if block is None or block.hash != block_hash:
            raise StoreError(f"{self.path}: hash index for {block_hash.hex()[:16]} is damaged")
        return block

    def header(self, height: int) -> Header | None:
        """The header of `height`: its block's, or the one kept without its body."""
        block = self._recent.get(height)
        if block is not None:
            return block.header
        raw = self._db.get(HEADER + _height(height))
        if raw is None:
            found = self.block(height)
            return None if found is None else found.header
        try:
            header: Header = decode_message(raw, Header, CERTIFICATE_BYTES_MAX)
        except CodecError as error:
            raise StoreError(f"{self.path}: header {height} is damaged: {error}") from None
        return header

    def certificate(self, height: int) -> CommitCertificate | None:
        raw = self._db.get(CERTIFICATE + _height(height))
        if raw is None:
            return None
        try:
            certificate: CommitCertificate = decode_message(
                raw, CommitCertificate, CERTIFICATE_BYTES_MAX)
        except CodecError as error:
            raise StoreError(f"{self.path}: certificate {height} is damaged: {error}") from None
        return certificate

    def tx_location(self, tx_hash: bytes) -> tuple[int, int] | None:
        """(height, index) of a final transaction; index UNKNOWN_INDEX for one that a
        snapshot brought."""
        raw = self._db.get(TX + tx_hash)
        if raw is None:
            return None
        return int.from_bytes(raw[:8], "big"), int.from_bytes(raw[8:12], "big")

    def tx(self, tx_hash: bytes) -> AnyTx | None:
        raw = self.tx_bytes(tx_hash)
        if raw is None:
            return None
        try:
            tx = decode_tx(raw)
        except CodecError:
            tx = None
        if tx is None or tx.hash != tx_hash:
            raise StoreError(f"{self.path}: a stored transaction is damaged")
        return tx

    def tx_bytes(self, tx_hash: bytes, snapshot: Any = None) -> bytes | None:
        """A final transaction's encoding: cut from its block's bytes where the index says
        where, else from its decoded block, else the copy kept without its body (L); None for
        a transaction this node does not hold (unknown, or in a pruned body and named by
        nothing). `snapshot`: read from a LevelDB snapshot instead of the store as it is."""
        db = self._db if snapshot is None else snapshot
        location = db.get(TX + tx_hash)
        if location is None:
            return None
        height = int.from_bytes(location[:8], "big")
        index = int.from_bytes(location[8:12], "big")
        recent = self._recent.get(height) if snapshot is None else None
        if recent is not None and index < len(recent.txs) and recent.txs[index].hash == tx_hash:
            return recent.txs[index].encode()
        raw_block = None if index == UNKNOWN_INDEX else db.get(BLOCK + _height(height))
        if raw_block is None:
            kept: bytes | None = db.get(NAMED_TX + tx_hash)
            return kept
        if len(location) == 20:
            return _cut(raw_block, location)
        try:
            block = decode_block(raw_block)
        except CodecError as error:
            raise StoreError(f"{self.path}: block {height} is damaged: {error}") from None
        if index >= len(block.txs) or block.txs[index].hash != tx_hash:
            raise StoreError(f"{self.path}: the tx index entry for block {height}, "
                             f"position {index} is damaged")
        return block.txs[index].encode()

    @property
    def first_body(self) -> int:
        """The lowest height whose block body this store holds (every one from it to the head):
        above what `prune` deleted, and from the snapshot a node joined from."""
        return max(self.pruned + 1, self.base, 1)

    def holds_body(self, height: int) -> bool:
        """Whether the body of `height` (<= the head) is held here, not pruned or left out."""
        return height >= self.first_body

    def blocks(self, first: int = 1) -> Iterator[tuple[Block, CommitCertificate]]:
        """Committed blocks from `first` up to the head, each with its certificate; a StoreError
        for a height whose body is not held (`first_body`) or is missing."""
        if first < self.first_body and first <= self._head.height:
            raise StoreError(f"{self.path}: the bodies below height {self.first_body} are not "
                             f"held here (pruned, or below the snapshot the node joined from)")
        for height in range(first, self._head.height + 1):
            block, certificate = self.block(height), self.certificate(height)
            if block is None or certificate is None:
                raise StoreError(f"{self.path}: block {height} is missing below the head")
            yield block, certificate

    def headers(self, first: int, last: int) -> Iterator[tuple[Header, CommitCertificate]]:
        """The headers of heights `first` to `last`, each with its certificate, whether or not
        the body is held; a StoreError for a height that has none."""
        for height in range(first, last + 1):
            header, certificate = self.header(height), self.certificate(height)
            if header is None or certificate is None:
                raise StoreError(f"{self.path}: the header or certificate of height {height} is "
                                 f"missing")
            yield header, certificate

    # --- pruning ----------------------------------------------------------------------------

    def prune_target(self, keep_blocks: int) -> int:
        """The height up to which `prune(keep_blocks)` deletes bodies: the head less
        `keep_blocks`, never above the oldest finished snapshot (0: none, nothing is pruned),
        so that `verify` always finds a kept state to re-execute from. `keep_blocks` 0: none."""
        snapshots = self.snapshots()
        if keep_blocks <= 0 or not snapshots:
            return self.pruned
        return max(self.pruned, min(self._head.height - keep_blocks, snapshots[-1]))

    def prune(self, keep_blocks: int, heights_max: int = PRUNE_HEIGHTS_PER_CALL) -> int:
        """Delete the bodies of at most `heights_max` heights up to `prune_target`, from where
        the last call stopped, in one synced batch with the new floor (META_PRUNED): for each,
        the header is kept (E) with its certificate, a transaction that the state names
        (ledger/snapshot.py `names`) is kept (L) with its index entry, any other loses its index
        entry. Returns how many heights were pruned."""
        assert keep_blocks >= 0 and heights_max >= 1
        first = self.first_body
        last = min(self.prune_target(keep_blocks), first + heights_max - 1)
        if last < first:
            return 0
        assert last < self._head.height, "the head's body is never pruned"
        with self._db.write_batch(sync=True) as batch:
            for height in range(first, last + 1):
                height_key = _height(height)
                block = self.block(height)
                if block is None:
                    raise StoreError(f"{self.path}: block {height} is missing below the head")
                batch.put(HEADER + height_key, block.header.encode())
                for tx in block.txs:
                    if snapshot.names(self, tx, height):
                        batch.put(NAMED_TX + tx.hash, tx.encode())
                    else:
                        batch.delete(TX + tx.hash)
                batch.delete(BLOCK + height_key)
            batch.put(META_PRUNED, pack(last))
        for height in range(first, last + 1):
            self._recent.pop(height, None)
        self.pruned = last
        return last - first + 1

    def compact(self) -> None:
        """Have LevelDB compact every table: what was deleted (pruned bodies, old tree nodes,
        old snapshots) leaves the disk now instead of when its level is next compacted. Takes
        seconds to minutes on a large store and writes as much as the store holds; from a worker
        thread, or with the node stopped."""
        # Bounds given: plyvel 1.5's compact_range() without them compacted nothing here (three
        # level-0 tables stayed), with them every table is rewritten. Every key starts with a
        # one-byte keyspace prefix, which these bounds cover.
        self._db.compact_range(start=b"\x00", stop=b"\xff" * 9)

    def commit(self, block: Block, certificate: CommitCertificate, execution: Execution) -> None:
        """Persist a finalized block with its certificate and state changes, atomically and
        durably (one batch, synced). The caller has verified the certificate and obtained
        `execution` from `ledger.apply_block` on this store's state."""
        expected_prev = self._head.block_hash
        assert block.height == self._head.height + 1, "commit out of order"
        assert block.header.prev_hash == expected_prev, "commit does not extend the head"
        assert certificate.block_hash == block.hash and certificate.height == block.height
        assert execution.meta.height == block.height
        assert execution.state_hash == block.header.state_hash
        block_hash = block.hash
        height_key = _height(block.height)
        set_change = self._set_change_head(block, certificate, execution)
        with self._db.write_batch(sync=True) as batch:
            batch.put(BLOCK + height_key, block.encode())
            batch.put(BLOCK_HASH + block_hash, height_key)
            batch.put(CERTIFICATE + height_key, certificate.encode())
            for key, location in _tx_index(block):
                batch.put(key, location)
            if set_change is not None:
                batch.put(SET_CHANGE + height_key, SetChange(set_change).encode())
            for key, value in execution.changes:
                if value is None:
                    batch.delete(STATE + key)
                else:
                    batch.put(STATE + key, value)
            for key, value in execution.tree_changes:
                if value is None:
                    batch.delete(TREE + key)
                else:
                    batch.put(TREE + key, value)
            self._prune_tree(batch, block.height - self.tree_versions_kept)
            batch.put(META_HEAD, pack([block.height, block_hash]))
        self._head = Head(block.height, block_hash)
        self._recent[block.height] = block
        while len(self._recent) > RECENT_BLOCKS:
            self._recent.popitem(last=False)

    def _set_change_head(self, block: Block, certificate: CommitCertificate,
                         execution: Execution) -> CertifiedHead | None:
        """The certified head of `block` when it is the last of its authority set (the state
        after it holds a set for the next height), with the proof of that set against its
        state root: kept for good (A), so that a node that joins can follow the authority sets
        from the genesis after the tree of that height is pruned."""
        next_key = AUTHORITY_SET + height_bytes(block.height + 1)
        changes = dict(execution.changes)
        if (changes[next_key] if next_key in changes else self.get(next_key)) is None:
            return None
        tree = {key[len(TREE_NODE):]: node for key, node in execution.tree_changes
                if key.startswith(TREE_NODE) and node is not None}
        return _certified_head(_Written(changes, tree, self), block.header, certificate,
                               execution.meta)

    def keep_set_changes_by_replay(self) -> int:
        """Replay the chain in memory and keep the certified head of each height after which
        the authority set changes, and index where each transaction's bytes are in its block
        (format 3 → 4, home/migrate.py). How many set changes."""
        state = MemoryState(prune_tree=True)
        state.commit(genesis_state(self.genesis))
        kept = 0
        for block, certificate in self.blocks():
            execution = apply_block(state, block)
            state.commit(execution)
            with self._db.write_batch() as batch:  # the index where each tx's bytes are
                for key, location in _tx_index(block):
                    batch.put(key, location)
            if state.get(AUTHORITY_SET + height_bytes(block.height + 1)) is not None:
                head = _certified_head(state, block.header, certificate, execution.meta)
                self._db.put(SET_CHANGE + _height(block.height), SetChange(head).encode(),
                             sync=True)
                kept += 1
        return kept

    def set_changes(self, up_to: int, snapshot: Any = None) -> list[CertifiedHead]:
        """The certified heads of the last heights of the authority sets, up to `up_to`."""
        db = self._db if snapshot is None else snapshot
        heads = []
        with db.iterator(start=SET_CHANGE, stop=SET_CHANGE + _height(up_to + 1),
                         include_key=False) as values:
            for raw in values:
                try:
                    heads.append(decode_message(raw, SetChange, SET_CHANGE_BYTES_MAX).head)
                except CodecError as error:
                    raise StoreError(f"{self.path}: an authority set change is damaged: "
                                     f"{error}") from None
        return heads

    def _prune_tree(self, batch: Any, below: int) -> None:
        """Delete the tree nodes that only heights before `below` needed (stale since a height
        <= `below`), and those heights' roots: at most what one block made stale, each commit."""
        if below < 1:
            return
        stale = TREE + TREE_STALE
        stop = stale + height_bytes(below + 1)
        with self._db.iterator(start=stale, stop=stop, include_value=False) as entries:
            for entry in entries:
                batch.delete(TREE + TREE_NODE + entry[len(stale) + 8:])
                batch.delete(entry)
        roots = TREE + TREE_ROOT
        with self._db.iterator(start=roots, stop=roots + height_bytes(below),
                               include_value=False) as entries:
            for entry in entries:  # one a commit; more after state_versions_kept was lowered
                batch.delete(entry)

    # --- snapshots (ledger/snapshot.py) ------------------------------------------------------

    def pin(self) -> Any:
        """A LevelDB snapshot of the store as it is now: taken right after a commit, it holds
        that height's state while `write_snapshot` copies it in a worker thread."""
        return self._db.snapshot()

    def write_snapshot(self, pinned: Any, keep: int,
                       stopping: Callable[[], bool] = lambda: False) -> SnapshotManifest | None:
        """Write the snapshot of the state in `pinned` (`pin`): its tree's pairs by key hash
        (Z), then its manifest (Y), which checks itself against the state root first; then
        delete the snapshots but the newest `keep`. From a worker thread (LevelDB is safe to
        share between threads). Returns the manifest; None if `stopping()` said so first (the
        unfinished snapshot is deleted at the next `open`)."""
        view = _PinnedView(pinned)
        meta = decode_value(pinned.get(STATE + META_KEY), ChainMeta, META_KEY)
        height = meta.height
        prefix = SNAPSHOT + _height(height)
        sizes = [0] * 16 ** snapshot.COUNT_DEPTH
        batch, batch_bytes = self._db.write_batch(), 0
        with pinned.iterator(prefix=STATE) as items:
            for state_key, value in items:
                key = state_key[len(STATE):]
                if not in_tree(key):
                    continue
                key_hash = digest(key)
                entry = pack([key, value])
                batch.put(prefix + key_hash, entry)
                size = len(entry)
                named = snapshot.named_tx(key, value)
                if named is not None:
                    size += self._named_tx_size(pinned, named[0])
                sizes[snapshot.chunk_index(key_hash, snapshot.COUNT_DEPTH)] += size
                batch_bytes += len(entry) + 40
                if batch_bytes >= BACKUP_BATCH_BYTES_MAX:
                    batch.write()
                    if stopping():
                        return None
                    batch, batch_bytes = self._db.write_batch(), 0
        batch.write()
        depth = snapshot.choose_depth(sizes)
        roots = self._snapshot_roots(prefix, depth, stopping)
        if roots is None:
            return None
        if smt.root_hash(snapshot.join_roots(roots, depth, height).root) != meta.state_hash:
            raise StoreError(f"{self.path}: the snapshot of height {height} does not fold to "
                             f"its state root")
        block = decode_block(pinned.get(BLOCK + _height(height)))
        certificate = decode_message(pinned.get(CERTIFICATE + _height(height)),
                                     CommitCertificate, CERTIFICATE_BYTES_MAX)
        head = _certified_head(view, block.header, certificate, meta)
        manifest = SnapshotManifest(head, depth, tuple(roots))
        self._db.put(SNAPSHOT_MANIFEST + _height(height), manifest.encode(), sync=True)
        for old in self.snapshots()[keep:]:
            self.delete_snapshot(old)
        return manifest

    def _named_tx_size(self, pinned: Any, tx_hash: bytes) -> int:
        """The bytes of a transaction the state names, as a chunk carries it: from its index
        entry (format 4 writes where its bytes are), else from its kept copy (a snapshot
        brought it). The same figure on every node (a transaction has one encoding), so every
        node cuts a snapshot of one state alike. StoreError when neither says."""
        location = pinned.get(TX + tx_hash) or b""
        if len(location) == 20:
            return int.from_bytes(location[16:20], "big")
        kept = pinned.get(NAMED_TX + tx_hash)
        if kept is None:
            raise StoreError(f"{self.path}: a transaction that the state names is not held "
                             f"(or indexed before format 4: run migrate)")
        return len(kept)

    def _snapshot_roots(self, prefix: bytes, depth: int,
                        stopping: Callable[[], bool]) -> list[bytes] | None:
        roots = [b""] * 16 ** depth
        current, hashed = -1, list[tuple[bytes, bytes]]()
        with self._db.iterator(prefix=prefix) as items:
            for key, raw in items:
                key_hash = key[len(prefix):]
                index = snapshot.chunk_index(key_hash, depth)
                if index != current:
                    if hashed:
                        roots[current] = snapshot.subtree_root(hashed, depth)
                        if stopping():
                            return None
                    current, hashed = index, []
                hashed.append((key_hash, digest(_snapshot_pair(raw, self.path)[1])))
        if hashed:
            roots[current] = snapshot.subtree_root(hashed, depth)
        return roots

    def snapshots(self) -> list[int]:
        """The heights of the finished snapshots, newest first."""
        with self._db.iterator(prefix=SNAPSHOT_MANIFEST, include_value=False) as keys:
            return sorted((int.from_bytes(key[1:9], "big") for key in keys), reverse=True)

    def snapshot_manifest(self, height: int) -> SnapshotManifest | None:
        raw = self._db.get(SNAPSHOT_MANIFEST + _height(height))
        if raw is None:
            return None
        try:
            manifest: SnapshotManifest = decode_message(raw, SnapshotManifest,
                                                        STATESYNC_FRAME_BYTES_MAX)
        except CodecError as error:
            raise StoreError(f"{self.path}: the manifest of snapshot {height} is damaged: "
                             f"{error}") from None
        return manifest

    def snapshot_chunk(self, manifest: SnapshotManifest, index: int) -> bytes | None:
        """The encoded SnapshotChunk `index` of the snapshot of `manifest`, made from the
        stored pairs and the transactions they name, without decoding them; None when a named
        transaction is not held here (a damaged store)."""
        height = manifest.head.header.height
        shift = 256 - 4 * manifest.depth
        prefix = SNAPSHOT + _height(height)
        start = prefix + (index << shift).to_bytes(32, "big")
        stop = prefix + ((index + 1) << shift).to_bytes(32, "big") \
            if index + 1 < 16 ** manifest.depth else SNAPSHOT + _height(height + 1)
        pairs, named = [], dict[bytes, None]()
        with self._db.iterator(start=start, stop=stop, include_key=False) as values:
            for raw in values:
                pairs.append(raw)
                found = snapshot.named_tx(*_snapshot_pair(raw, self.path))
                if found is not None:
                    named[found[0]] = None
        txs = self._txs_bytes(list(named))
        if txs is None:
            return None
        return b"".join([array_header(6), pack(SnapshotChunk.KIND), pack(SnapshotChunk.VERSION),
                         pack(height), pack(index), array_header(len(pairs)), *pairs,
                         array_header(len(txs)), *txs])

    def _txs_bytes(self, tx_hashes: list[bytes]) -> list[bytes] | None:
        """The encodings of final transactions (`tx_bytes`), each block's bytes read once for
        all of its transactions among them, not once each: a block of 10,000 transactions is
        megabytes. None if one is not held."""
        by_height: dict[int, list[tuple[bytes, bytes]]] = {}
        for tx_hash in tx_hashes:
            location = self._db.get(TX + tx_hash)
            if location is None:
                return None
            by_height.setdefault(int.from_bytes(location[:8], "big"), []).append(
                (tx_hash, location))
        out = []
        for height, found in sorted(by_height.items()):
            raw_block = self._db.get(BLOCK + _height(height))
            for tx_hash, location in found:
                if raw_block is not None and len(location) == 20:
                    out.append(_cut(raw_block, location))
                    continue
                tx = self.tx_bytes(tx_hash)
                if tx is None:
                    return None
                out.append(tx)
        return out

    def snapshot_pairs(self, height: int) -> Iterator[tuple[bytes, bytes]]:
        """The pairs of the snapshot of `height`, by key hash."""
        with self._db.iterator(prefix=SNAPSHOT + _height(height), include_key=False) as values:
            for raw in values:
                yield _snapshot_pair(raw, self.path)

    def delete_snapshot(self, height: int) -> None:
        """The manifest first (synced): a snapshot without one is never served."""
        self._db.delete(SNAPSHOT_MANIFEST + _height(height), sync=True)
        self._delete_range(SNAPSHOT + _height(height))

    def _delete_range(self, prefix: bytes) -> None:
        while True:
            with self._db.iterator(prefix=prefix, include_value=False) as keys:
                chunk = [key for _, key in zip(range(10_000), keys, strict=False)]
            if not chunk:
                return
            with self._db.write_batch() as batch:
                for key in chunk:
                    batch.delete(key)

    def _delete_unfinished_snapshots(self) -> None:
        finished = set(self.snapshots())
        at = SNAPSHOT
        while True:
            with self._db.iterator(start=at, stop=SNAPSHOT + b"\xff" * 8,
                                   include_value=False) as keys:
                key = next(keys, None)
            if key is None:
                return
            height = int.from_bytes(key[1:9], "big")
            if height not in finished:
                self._delete_range(SNAPSHOT + _height(height))
            at = SNAPSHOT + _height(height + 1)

    # --- consensus guard --------------------------------------------------------------------

    def read_guard(self, name: bytes) -> bytes | None:
        value: bytes | None = self._db.get(GUARD + name)
        return value

    def write_guard(self, name: bytes, value: bytes) -> None:
        """Durably record `value` (synced before returning): persist before you speak."""
        assert len(value) <= GUARD_BYTES_MAX
        self._db.put(GUARD + name, value, sync=True)

    def delete_guard(self, name: bytes) -> None:
        self._db.delete(GUARD + name, sync=True)

    # --- backup -----------------------------------------------------------------------------

    def backup(self, destination: Path,
               progress: Callable[[int, int], None] | None = None) -> BackupCopy:
        """Copy this store, as of one instant, into a new LevelDB at `destination`.

        A LevelDB snapshot pins the instant: blocks committed while the copy runs (the node keeps
        running; call this from a worker thread) are not in it, and since a block, its state and
        the head are one batch, the copy holds a whole head or none. Keys are copied in batches of
        about BACKUP_BATCH_BYTES_MAX, so memory stays bounded whatever the store's size. The
        guard and the ciphertexts are left out (BACKUP_LEAVES_OUT says why). The copy is opened
        and its head verified before this returns (check at both ends). `progress(keys, bytes)`
        is told what has been copied after each batch."""
        keys = copied_bytes = 0
        with self._db.snapshot() as snapshot:
            head = _decode_head(snapshot.get(META_HEAD), self.path)
            try:
                target = plyvel.DB(str(destination), create_if_missing=True,
                                   error_if_exists=True)
            except plyvel.Error as error:
                raise StoreError(f"{destination}: cannot create the backup store ({error})") \
                    from None
            try:  # a LevelDB error (a damaged table, a full disk) is the store's, named
                # Each batch is synced (one fsync per few MiB): the copy is durable on return.
                batch, batch_bytes = target.write_batch(sync=True), 0
                for start, stop in _ranges_without(BACKUP_LEAVES_OUT):
                    with snapshot.iterator(start=start, stop=stop) as items:
                        for key, value in items:
                            batch.put(key, value)
                            keys += 1
                            batch_bytes += len(key) + len(value)
                            if batch_bytes >= BACKUP_BATCH_BYTES_MAX:
                                batch.write()
                                copied_bytes += batch_bytes
                                if progress is not None:
                                    progress(keys, copied_bytes)
                                batch, batch_bytes = target.write_batch(sync=True), 0
                batch.write()
                if progress is not None:
                    progress(keys, copied_bytes + batch_bytes)
            except plyvel.Error as error:
                raise StoreError(f"{destination}: the backup failed ({error})") from None
            finally:
                target.close()
        # A copy has its source's format (`migrate` backs up a store of an older one).
        ChainStore.open(destination, self.genesis, any_format=True).close()
        return BackupCopy(head.height, head.block_hash, keys)

    def size_estimate(self) -> int:
        """LevelDB's estimate of the bytes its tables hold (not counting the memtable)."""
        return int(self._db.approximate_size(b"", b"\xff" * 8))

    # --- ciphertext blobs -------------------------------------------------------------------

    def put_blob(self, ciphertext: bytes, pending: tuple[int, bytes] | None = None,
                 uploads_today: tuple[int, int, int] | None = None) -> bytes:
        """Durably keep a ciphertext under its hash (store/blob_files.py); `pending` =
        (uploaded_ms, uploader) marks it as uploaded but not yet anchored (the mark is written
        first: a crash between leaves a mark without a file, which `pending_blobs` drops, never
        a file that nothing names), and `uploads_today` = (day, patients' bytes, every key's
        bytes) is the day's count with this upload, written in the same batch as the mark: an
        upload on disk is always counted. Returns the hash."""
        ciphertext_hash = digest(ciphertext)
        if pending is not None:
            with self._db.write_batch(sync=True) as batch:
                batch.put(BLOB_PENDING + ciphertext_hash, pack(list(pending)))
                if uploads_today is not None:
                    batch.put(UPLOADS_TODAY, pack(list(uploads_today)))
        self._blobs.put(ciphertext)
        return ciphertext_hash

    def uploads_today(self) -> tuple[int, int, int] | None:
        """The day's count of the uploads this node took (`put_blob`), if it took any."""
        raw = self._db.get(UPLOADS_TODAY)
        if raw is None:
            return None
        value = unpack(raw, 64)
        if not (isinstance(value, list) and len(value) == 3
                and all(type(item) is int and item >= 0 for item in value)):
            raise StoreError(f"{self.path}: the count of the day's uploads is damaged")
        day, patients, everyone = value
        return day, patients, everyone

    def blob(self, ciphertext_hash: bytes) -> bytes | None:
        """A stored ciphertext, checked against its hash again on the way out."""
        return self._blobs.get(ciphertext_hash)

    def has_blob(self, ciphertext_hash: bytes) -> bool:
        return self._blobs.has(ciphertext_hash)

    def blob_anchored(self, ciphertext_hash: bytes) -> None:
        """The ciphertext's anchor is final: it is no longer a pending upload."""
        if self._db.get(BLOB_PENDING + ciphertext_hash) is not None:
            self._db.delete(BLOB_PENDING + ciphertext_hash, sync=True)

    def delete_blob(self, ciphertext_hash: bytes) -> None:
        """Unlink the ciphertext's file, durably: its bytes leave the store's files at once."""
        self._blobs.delete(ciphertext_hash)
        if self._db.get(BLOB_PENDING + ciphertext_hash) is not None:
            self._db.delete(BLOB_PENDING + ciphertext_hash, sync=True)

    def pending_blobs(self) -> Iterator[tuple[bytes, int, bytes, int]]:
        """(hash, uploaded_ms, uploader, size) of every upload not yet anchored; a mark whose
        file a crash kept from being written is dropped."""
        self._blobs.remove_partials()
        with self._db.iterator(prefix=BLOB_PENDING) as items:
            marks = list(items)
        for key, raw in marks:
            ciphertext_hash = key[len(BLOB_PENDING):]
            value = unpack(raw, 128)
            if not (isinstance(value, list) and len(value) == 2):
                raise StoreError(f"{self.path}: a pending-upload record is damaged")
            size = self._blobs.size(ciphertext_hash)
            if size is None:
                self._db.delete(key, sync=True)
                continue
            yield ciphertext_hash, value[0], value[1], size

    def move_blobs_to_files(self, progress: Callable[[int], None] | None = None) -> int:
        """Format 2 -> 3: every ciphertext kept in LevelDB becomes a file, and the store is
        rewritten without them (`rewrite`): deleted LevelDB values stay in its tables, and no
        compaction is promised to drop them. Runs again from the start if cut short. How many
        ciphertexts moved."""
        moved = 0
        with self._db.iterator(prefix=BLOB) as items:
            for _, value in items:
                self._blobs.put(value)
                moved += 1
                if progress is not None:
                    progress(moved)
        self.rewrite(leave_out=(BLOB,))
        return moved

    def rewrite(self, leave_out: tuple[bytes, ...] = ()) -> None:
        """Copy every key (but those under `leave_out`) into a new LevelDB, and put it in place
        of this one, which is deleted: what was deleted in this store leaves the disk, which a
        LevelDB compaction does not promise. The store stays open. A rewrite cut short is
        undone or finished by the next `open` (`_finish_rewrite`)."""
        fresh = self.path.with_name(self.path.name + REWRITE_SUFFIX)
        shutil.rmtree(fresh, ignore_errors=True)
        target = plyvel.DB(str(fresh), create_if_missing=True, error_if_exists=True,
                           **DB_OPTIONS)
        try:
            batch, batch_bytes = target.write_batch(sync=True), 0
            for start, stop in _ranges_without(leave_out):
                with self._db.iterator(start=start, stop=stop) as items:
                    for key, value in items:
                        batch.put(key, value)
                        batch_bytes += len(key) + len(value)
                        if batch_bytes >= BACKUP_BATCH_BYTES_MAX:
                            batch.write()
                            batch, batch_bytes = target.write_batch(sync=True), 0
            batch.write()
        finally:
            target.close()
        self._db.close()
        old = self.path.with_name(self.path.name + OLD_SUFFIX)
        os.replace(self.path, old)
        os.replace(fresh, self.path)
        sync_directory(self.path.parent)
        shutil.rmtree(old)
        self._db = plyvel.DB(str(self.path), **DB_OPTIONS)
        self._state = self._db.prefixed_db(STATE)
        self._recent.clear()

    # --- lifetime ---------------------------------------------------------------------------

    def memory_bytes(self) -> int:
        """What LevelDB itself holds in memory now (memtables and block cache), by its own
        account: the part of a node's RSS that is the store's, bounded by its options."""
        raw = self._db.get_property(b"leveldb.approximate-memory-usage")
        return int(raw) if raw is not None and raw.isdigit() else -1

    def close(self) -> None:
        if not self._db.closed:
            self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()


class SnapshotInstall:
    """A chain store made from a checked snapshot (net/statesync.py), in a directory beside the
    store's own, put in its place by `finish`: until then the node's store is untouched, and an
    install cut short is deleted by the next `ChainStore.open` (`_finish_rewrite`).

    Each chunk, once checked (ledger/snapshot.py `check_chunk`), is written at once: its pairs
    into the state and the snapshot (so that this node serves the same snapshot to the next
    one), the indexes derived from them, its subtree's nodes, and the transactions it names.
    `finish` adds the nodes above the chunks, the chain meta, the block of the snapshot's height
    and its certificate, the authority set changes followed from the genesis, and the head."""

    def __init__(self, path: Path, genesis: Genesis, manifest: SnapshotManifest) -> None:
        self.path = path
        self.genesis = genesis
        self.manifest = manifest
        self.height = manifest.head.header.height
        self.work = path.with_name(path.name + REWRITE_SUFFIX)
        shutil.rmtree(self.work, ignore_errors=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = plyvel.DB(str(self.work), create_if_missing=True, error_if_exists=True,
                             **DB_OPTIONS)
        self._db.put(META_GENESIS, genesis.hash)
        self._db.put(META_FORMAT, pack(STORE_FORMAT))
        self.chunks = 0
        self.pairs = 0

    def add_chunk(self, chunk: snapshot.CheckedChunk) -> None:
        height_key = _height(self.height)
        prefix = SNAPSHOT + height_key
        with self._db.write_batch() as batch:
            for (key, value), key_hash in zip(chunk.pairs, chunk.key_hashes, strict=True):
                batch.put(STATE + key, value)
                batch.put(prefix + key_hash, pack([key, value]))
                for index_key, index_value in snapshot.index_entries(key, value):
                    batch.put(STATE + index_key, index_value)
                named = snapshot.named_tx(key, value)
                if named is not None:
                    tx = chunk.txs[named[0]]
                    batch.put(TX + tx.hash, _height(snapshot.named_height(key, value))
                              + UNKNOWN_INDEX.to_bytes(4, "big"))
                    batch.put(NAMED_TX + tx.hash, tx.encode())
            for node_key, node in snapshot.chunk_nodes(self.manifest, chunk).items():
                batch.put(TREE + TREE_NODE + node_key, node)
        self.chunks += 1
        self.pairs += len(chunk.pairs)

    def finish(self, block: Block, certificate: CommitCertificate,
               set_changes: Iterable[CertifiedHead]) -> None:
        """Write the rest and put the new store in place of the old. `block` and
        `certificate` are of the snapshot's height, checked by the caller against the
        manifest's certified head; `set_changes`, the heads the caller followed."""
        header = self.manifest.head.header
        assert block.hash == header.hash and certificate.block_hash == header.hash
        top = snapshot.join_roots(self.manifest.roots, self.manifest.depth, self.height)
        meta = chain_meta_with(self.genesis.chain_id, self.height, header.time_ms, top.root)
        if meta.state_hash != header.state_hash:
            raise StoreError("the installed snapshot does not fold to its state root")
        height_key = _height(self.height)
        with self._db.write_batch(sync=True) as batch:
            for node_key, node in top.written.items():
                batch.put(TREE + TREE_NODE + node_key, node)
            batch.put(TREE + TREE_ROOT + height_key,
                      pack(None if top.root is None else top.root.wire()))
            batch.put(STATE + META_KEY, meta.encode())
            for head in set_changes:
                at = _height(head.header.height)
                batch.put(SET_CHANGE + at, SetChange(head).encode())
                batch.put(HEADER + at, head.header.encode())
                batch.put(CERTIFICATE + at, head.certificate.encode())
            batch.put(BLOCK + height_key, block.encode())
            batch.put(BLOCK_HASH + block.hash, height_key)
            batch.put(CERTIFICATE + height_key, certificate.encode())
            for key, location in _tx_index(block):
                batch.put(key, location)
            batch.put(SNAPSHOT_MANIFEST + height_key, self.manifest.encode())
            batch.put(META_BASE, pack(self.height))
            batch.put(META_HEAD, pack([self.height, block.hash]))
        self._db.close()
        with ChainStore.open(self.work, self.genesis):  # as the node will: its head verified
            pass
        old = self.path.with_name(self.path.name + OLD_SUFFIX)
        if self.path.exists():
            os.replace(self.path, old)
        os.replace(self.work, self.path)
        sync_directory(self.path.parent)
        shutil.rmtree(old, ignore_errors=True)

    def abandon(self) -> None:
        if not self._db.closed:
            self._db.close()
        shutil.rmtree(self.work, ignore_errors=True)
