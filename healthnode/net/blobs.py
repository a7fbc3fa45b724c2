"""The encrypted record store: ciphertexts kept by hash, replicated to every authority, purged on
erasure.

Theory of operation
-------------------
A record's ciphertext reaches the network through one node: the author's wallet uploads it
(`upload`), then submits the record's anchor. Until the anchor is final the upload is *pending*:
bounded per uploading key and in total (the node's `[budgets].pending_upload_bytes_per_key` and
`pending_upload_bytes`), and deleted after `PENDING_UPLOAD_TTL_MS` if no anchor names it
(limits.py). The node accepts an anchor from a wallet only when it holds the ciphertext
(node/client.py), so an anchored record always exists somewhere, and what a node takes a day
bounds what it adds to every hospital's disk: its door budgets of uploads per UTC day of its
clock (ledger/door.py), one for patients' keys and one for every key, counted in the store with
each upload, so that a restart does not start the day again. Keys cost nothing, and the budgets
are over all keys at once.

After each finalized block (`block_committed`):
- an anchor whose ciphertext this node holds stops being pending;
- an anchor whose ciphertext it lacks goes on the *missing* list: the replicator asks connected
  authorities for it on `/healthnode/blob/1`, checks the hash and the anchored size, and stores
  it. A miss is retried with exponential backoff (1 s up to 5 min), so a record whose only copy
  sits on a node that is down arrives when that node returns, at a bounded cost (at most ten
  rounds of 64 a second, and none while the node catches up by block sync);
- an erasure deletes the ciphertext (synced) and drops it from the missing list: after it, no
  node serves or fetches it again, and an upload of the same bytes is refused. A ciphertext is
  a file of its own (store/blob_files.py), so the delete takes its bytes out of the store's
  files; then `on_purged` tells the node, which states the purge on chain (`record.purged`):
  a few statements a round, never while the node catches up or is held after a restore, and a
  statement the node could not make now (its mempool room for its own transactions) is tried
  again at a later round, so statements never crowd out the node's access.logs.

At start the missing list is rebuilt from the ledger (every record not erased whose ciphertext is
absent), and erased records are purged again where a ciphertext was left by a crash between
commit and delete, or where this node's purge is not yet on chain (`purge_stated`).
Every ciphertext is checked against its hash when it arrives and again when it is read back
(store/leveldb.py `blob`).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

import trio

from healthnode import limits, logs
from healthnode.clock import Clock
from healthnode.codec import CodecError
from healthnode.crypto import digest
from healthnode.ledger import door, queries
from healthnode.net.framing import PEER_FAULTS, FramedStream, StreamBroken, Transport
from healthnode.protocol.block import Block
from healthnode.protocol.state import RecordState
from healthnode.protocol.tx import RecordAnchor, RecordErase
from healthnode.protocol.wire import (
    BLOB_FRAME_BYTES_MAX,
    BLOB_HASHES_PER_REQUEST_MAX,
    BLOB_PROTOCOL,
    BlobItem,
    BlobRequest,
    decode_blob_item,
    decode_blob_request,
)
from healthnode.store.leveldb import ChainStore

log = logs.get_logger("healthnode.blobs")

RETRY_FIRST_MS: Final = 1_000
RETRY_MAX_MS: Final = 300_000
REPLICATOR_INTERVAL_S: Final = 0.5
REPLICATOR_ROUND_GAP_S: Final = 0.1
EXPIRY_INTERVAL_S: Final = 60
PURGE_STATEMENTS_PER_ROUND: Final = 8  # record.purged a replicator round (0.5 s) at most
BLOB_REQUEST_TIMEOUT_S: Final = 30  # 64 ciphertexts of up to 16 MiB at loopback speed and more


class UploadRefused(Exception):
    """An upload the node will not keep; `code` is a fixed snake_case name."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(slots=True)
class _Missing:
    record_id: bytes
    size_bytes: int
    next_try_ms: int
    backoff_ms: int



class BlobKeeper:
    def __init__(self, store: ChainStore, p2p: Transport, peers: Callable[[], list[bytes]],
                 count_rejected: Callable[[str], None], clock: Clock,
                 budgets: door.Budgets | None = None,
                 pending_bytes_max: int = limits.PENDING_UPLOAD_BYTES_MAX,
                 pending_bytes_per_key_max: int = limits.PENDING_UPLOAD_BYTES_PER_CLIENT_MAX
                 ) -> None:
        self.store = store
        self._budgets = budgets or door.Budgets({})
        self.pending_bytes_max = pending_bytes_max
        self.pending_bytes_per_key_max = pending_bytes_per_key_max
        self.p2p = p2p
        self._clock = clock
        self._peers = peers
        self._count_rejected = count_rejected
        self.missing: dict[bytes, _Missing] = {}
        # (next_try_ms, hash), lazily cleaned: an entry whose hash is no longer missing, or
        # whose time moved, is skipped when it surfaces. Keeps scheduling O(log n) per try
        # with tens of thousands missing (a benchmark anchors synthetic hashes).
        self._schedule: list[tuple[int, bytes]] = []
        self._pending: dict[bytes, tuple[bytes, int, int]] = {}  # hash -> uploader, ms, size
        self._pending_by_uploader: dict[bytes, int] = {}
        self._wake = trio.Event()
        # Replication waits while the node catches up by block sync: the blocks come first, and
        # the ciphertexts they anchor may arrive with the peers' next answers anyway.
        self.paused: Callable[[], bool] = lambda: False
        # Erased records whose ciphertext is deleted, and whose purge is still to be stated.
        self._unstated: dict[bytes, None] = {}
        # Set by the node: whether its purge of an erased record is on chain (or not its to
        # state); stating one (False: not now, try again later); whether it states none now.
        self.purge_stated: Callable[[bytes], bool] = lambda _record_id: True
        self.on_purged: Callable[[bytes], bool] = lambda _record_id: True
        self.statements_held: Callable[[], bool] = lambda: False

    # --- start ------------------------------------------------------------------------------

    def recover(self) -> None:
        """Rebuild the missing list, the pending uploads and the day's count of uploads from the
        store."""
        today = self.store.uploads_today()
        if today is not None:
            day, patients, everyone = today
            self._budgets.restore(door.PATIENT_UPLOADS, day, patients)
            self._budgets.restore(door.UPLOADS, day, everyone)
        left = 0
        for record_id, record in queries.all_records(self.store):
            if record.erased_height is not None:
                if self.store.has_blob(record.ciphertext_hash):
                    self.store.delete_blob(record.ciphertext_hash)
                    left += 1
                    self._unstated[record_id] = None
                elif not self.purge_stated(record_id):
                    self._unstated[record_id] = None
            elif not self.store.has_blob(record.ciphertext_hash):
                self._add_missing(record.ciphertext_hash, record_id, record.ciphertext_bytes,
                                  self._clock.now_ms())
        for ciphertext_hash, uploaded_ms, uploader, size in self.store.pending_blobs():
            if queries.record_of_ciphertext(self.store, ciphertext_hash) is not None:
                self.store.blob_anchored(ciphertext_hash)
            else:
                self._track_pending(ciphertext_hash, uploader, uploaded_ms, size)
        if self._unstated:
            log.info("purges_resumed", records=len(self._unstated), ciphertexts_left=left)
        if left:
            log.info("blobs_purged_after_restart", count=left)

    # --- uploads ----------------------------------------------------------------------------

    def upload(self, uploader: bytes, ciphertext: bytes, now_ms: int) -> bytes:
        """Keep a wallet's ciphertext (synced before returning); its hash."""
        ciphertext_hash = digest(ciphertext)
        anchored = self._anchored_record(ciphertext_hash)
        if anchored is not None:
            record_id, record = anchored
            if record.erased_height is not None:
                raise UploadRefused("record_erased", "this ciphertext belongs to an erased record")
            if not self.store.has_blob(ciphertext_hash):
                self.store.put_blob(ciphertext)  # re-seeding a copy the network lost
                self.missing.pop(ciphertext_hash, None)
                log.info("blob_reseeded", record_pseudonym=logs.pseudonym(record_id))
            return ciphertext_hash
        if ciphertext_hash in self._pending or self.store.has_blob(ciphertext_hash):
            return ciphertext_hash
        size = len(ciphertext)
        mine = self._pending_by_uploader.get(uploader, 0)
        if mine + size > self.pending_bytes_per_key_max:
            raise UploadRefused(
                "upload_quota", f"[budgets].pending_upload_bytes_per_key = "
                f"{self.pending_bytes_per_key_max}: at most that many bytes of unanchored "
                f"uploads per key; anchor or wait for them to expire")
        if self.pending_bytes + size > self.pending_bytes_max:
            raise UploadRefused(
                "node_upload_full", f"[budgets].pending_upload_bytes = {self.pending_bytes_max}: "
                f"this node holds that many bytes of unanchored uploads; retry later or use "
                f"another node")
        budgets = self._budgets
        names = (door.PATIENT_UPLOADS, door.UPLOADS) if door.is_patient(self.store, uploader) \
            else (door.UPLOADS,)
        for name in names:
            refusal = budgets.refusal(name, size, now_ms)
            if refusal is not None:
                self._count_rejected(refusal.reason)
                raise UploadRefused(refusal.reason, refusal.detail)
        for name in names:
            budgets.charge(name, size, now_ms)
        self.store.put_blob(ciphertext, (now_ms, uploader), (
            budgets.window_of(door.UPLOADS, now_ms), budgets.used(door.PATIENT_UPLOADS, now_ms),
            budgets.used(door.UPLOADS, now_ms)))
        self._track_pending(ciphertext_hash, uploader, now_ms, size)
        return ciphertext_hash

    @property
    def pending_bytes(self) -> int:
        return sum(self._pending_by_uploader.values())

    def _track_pending(self, ciphertext_hash: bytes, uploader: bytes, uploaded_ms: int,
                       size: int) -> None:
        self._pending[ciphertext_hash] = (uploader, uploaded_ms, size)
        self._pending_by_uploader[uploader] = self._pending_by_uploader.get(uploader, 0) + size

    def _untrack_pending(self, ciphertext_hash: bytes) -> None:
        entry = self._pending.pop(ciphertext_hash, None)
        if entry is None:
            return
        uploader, _, size = entry
        left = self._pending_by_uploader[uploader] - size
        if left:
            self._pending_by_uploader[uploader] = left
        else:
            del self._pending_by_uploader[uploader]

    def expire(self, now_ms: int) -> int:
        """Delete uploads no anchor named within the time limit; how many."""
        expired = [h for h, (_, at, _) in self._pending.items()
                   if now_ms - at > limits.PENDING_UPLOAD_TTL_MS]
        for ciphertext_hash in expired:
            self.store.delete_blob(ciphertext_hash)
            self._untrack_pending(ciphertext_hash)
        if expired:
            log.info("uploads_expired", count=len(expired))
        return len(expired)

    # --- finalized blocks -------------------------------------------------------------------

    def block_committed(self, block: Block) -> None:
        now = self._clock.now_ms()
        erased = 0
        for tx in block.txs:
            if isinstance(tx, RecordAnchor):
                if self.store.has_blob(tx.ciphertext_hash):
                    self.store.blob_anchored(tx.ciphertext_hash)
                    self._untrack_pending(tx.ciphertext_hash)
                else:
                    self._add_missing(tx.ciphertext_hash, tx.hash, tx.ciphertext_bytes, now)
            elif isinstance(tx, RecordErase):
                record = queries.record(self.store, tx.record_id)
                assert record is not None, "a final erasure names a known record"
                self.store.delete_blob(record.ciphertext_hash)
                self.missing.pop(record.ciphertext_hash, None)
                self._unstated[tx.record_id] = None
                self._wake.set()
                erased += 1
        if erased:
            log.info("blobs_erased", count=erased, height=block.height)

    def _add_missing(self, ciphertext_hash: bytes, record_id: bytes, size: int,
                     now_ms: int) -> None:
        self.missing[ciphertext_hash] = _Missing(record_id, size, now_ms, RETRY_FIRST_MS)
        heapq.heappush(self._schedule, (now_ms, ciphertext_hash))
        self._wake.set()

    def _anchored_record(self, ciphertext_hash: bytes) -> tuple[bytes, RecordState] | None:
        return queries.record_of_ciphertext(self.store, ciphertext_hash)

    # --- replication ------------------------------------------------------------------------

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._expire_loop)
            while True:
                self._wake = trio.Event()
                self.state_purges()
                due = [] if self.paused() else self._due(self._clock.now_ms())
                if due:
                    await self.fetch(due)
                    await trio.sleep(REPLICATOR_ROUND_GAP_S)  # at most 10 rounds (640 tries) a s
                busy = self.missing or self._unstated
                with trio.move_on_after(REPLICATOR_INTERVAL_S if busy else 3600):
                    await self._wake.wait()

    def state_purges(self) -> int:
        """Have the node state up to PURGE_STATEMENTS_PER_ROUND purges on chain (`on_purged`),
        unless it catches up or is held now; one it cannot state now stays for a later round.
        How many were stated."""
        if not self._unstated or self.paused() or self.statements_held():
            return 0
        stated = 0
        for record_id in list(self._unstated)[:PURGE_STATEMENTS_PER_ROUND]:
            if not self.on_purged(record_id):
                break
            del self._unstated[record_id]
            stated += 1
        if stated:
            log.info("purges_stated", records=stated, left=len(self._unstated))
        return stated

    def queue_unstated(self) -> int:
        """Queue every erased record whose purge this node has not stated (the rules that
        have `record.purged` just came in force); how many."""
        for record_id, record in queries.all_records(self.store):
            if record.erased_height is not None and not self.purge_stated(record_id):
                self._unstated[record_id] = None
        self._wake.set()
        return len(self._unstated)

    async def _expire_loop(self) -> None:
        while True:
            await trio.sleep(EXPIRY_INTERVAL_S)
            self.expire(self._clock.now_ms())

    def _due(self, now_ms: int) -> list[bytes]:
        due: list[bytes] = []
        while self._schedule and len(due) < BLOB_HASHES_PER_REQUEST_MAX:
            at, ciphertext_hash = self._schedule[0]
            if at > now_ms:
                break
            heapq.heappop(self._schedule)
            entry = self.missing.get(ciphertext_hash)
            if entry is not None and entry.next_try_ms == at and ciphertext_hash not in due:
                due.append(ciphertext_hash)
        return due

    async def fetch(self, hashes: Iterable[bytes]) -> set[bytes]:
        """Try to get these missing ciphertexts from connected authorities now; what arrived.
        Those still missing are retried later with backoff."""
        wanted = {h for h in hashes if h in self.missing}
        arrived: set[bytes] = set()
        for peer in self._peers():
            if not wanted - arrived:
                break
            try:
                arrived |= await self._fetch_from(peer, sorted(wanted - arrived))
            except PEER_FAULTS as error:  # a reset, a timeout, garbage: try the next peer
                self._count_rejected("blob_fetch_failed")
                log.info("blob_fetch_failed", peer=peer.hex()[:16], error=str(error)[:120])
        now = self._clock.now_ms()
        for ciphertext_hash in wanted - arrived:
            entry = self.missing.get(ciphertext_hash)
            if entry is not None:
                entry.next_try_ms = now + entry.backoff_ms
                heapq.heappush(self._schedule, (entry.next_try_ms, ciphertext_hash))
                entry.backoff_ms = min(entry.backoff_ms * 2, RETRY_MAX_MS)
        return arrived

    async def _fetch_from(self, peer: bytes, hashes: list[bytes]) -> set[bytes]:
        arrived: set[bytes] = set()
        arrived_bytes = 0
        stream = await self.p2p.open_stream(peer, BLOB_PROTOCOL, BLOB_FRAME_BYTES_MAX)
        try:
            await stream.send(BlobRequest(tuple(hashes)).encode())
            while True:
                with trio.fail_after(BLOB_REQUEST_TIMEOUT_S):
                    raw = await stream.receive()
                if raw is None:
                    return arrived
                item = decode_blob_item(raw)
                if self._accept(peer, item):
                    arrived.add(item.ciphertext_hash)
                    arrived_bytes += len(item.ciphertext)
        finally:
            if arrived:  # also those before a fault: they are stored
                log.info("blobs_replicated", peer=peer.hex()[:16], count=len(arrived),
                         bytes=arrived_bytes)
            with trio.move_on_after(1):
                await stream.reset()

    def _accept(self, peer: bytes, item: BlobItem) -> bool:
        entry = self.missing.get(item.ciphertext_hash)
        if entry is None:
            return False  # not asked for, or erased meanwhile
        if digest(item.ciphertext) != item.ciphertext_hash or \
                len(item.ciphertext) != entry.size_bytes:
            self._count_rejected("bad_blob")
            log.warning("blob_rejected", peer=peer.hex()[:16],
                        record_pseudonym=logs.pseudonym(entry.record_id),
                        reason="hash or size mismatch")
            return False
        self.store.put_blob(item.ciphertext)
        del self.missing[item.ciphertext_hash]
        return True

    async def serve(self, peer: bytes, stream: FramedStream) -> None:
        """Answer one BlobRequest from an authority with the anchored ciphertexts we hold."""
        try:
            with trio.fail_after(BLOB_REQUEST_TIMEOUT_S):
                raw = await stream.receive()
            if raw is None:
                return
            request = decode_blob_request(raw)
            for ciphertext_hash in request.hashes:
                anchored = self._anchored_record(ciphertext_hash)
                if anchored is None or anchored[1].erased_height is not None:
                    continue  # never hand out unanchored uploads or erased records
                data = self.store.blob(ciphertext_hash)
                if data is not None:
                    await stream.send(BlobItem(ciphertext_hash, data).encode())
            await stream.close()
        except CodecError as error:
            self._count_rejected("malformed_blob_request")
            log.info("blob_request_dropped", peer=peer.hex()[:16], error=str(error)[:120])
            await stream.reset()
        except (StreamBroken, trio.TooSlowError) as error:  # the peer went, or never asked
            log.debug("blob_serve_ended", peer=peer.hex()[:16], error=str(error)[:120])
            with trio.move_on_after(1):
                await stream.reset()
