"""The node's side of the client (wallet) protocol `/healthnode/client/1` (protocol/client.py).

Theory of operation
-------------------
Any peer may open a client stream: patients are unregistered keys, so the gate is not who may
connect but what each request may see or do, decided on the node's **finalized** state with the
asker's public key as proven by the Noise handshake (its peer id). One request per stream; the
answer is one frame; every malformed request is answered with a `ClientError` naming the problem,
and nothing from it is stored. At most `CLIENT_STREAMS_MAX` requests are served at once, so a
flood of wallets slows down instead of exhausting the node.

- submit: the transaction enters the mempool like any other (ledger check on entry), one of a
  patient's key within the node's door budgets (ledger/door.py); an anchor is accepted only
  when this node holds its ciphertext, so an anchored record always exists somewhere. With
  `wait_ms` the answer comes when the transaction is final or refused.
- upload: the ciphertext is kept, pending, until an anchor names it (net/blobs.py).
- fetch (a read): the node picks the asker's grant, dry-runs the `access.log` it would sign
  against the ledger rules (so a refusal names the rule: `grant_revoked`, `record_out_of_scope`,
  ...), finds the asker's key wrap and the ciphertext, then submits the access.log and **waits for
  it to be final** before answering: no read goes unrecorded. If the log is not final within
  `ACCESS_LOG_WAIT_S`, nothing is released.
- queries: lists about the asker only (its records, grants, audit trail, nonce), and the grants of
  a patient that lets the asker write (a writing clinician wraps new records for the patient's
  other readers).

A record is spoken of only to those who may read it (ledger/reading.py `record_sight`): to any
other asker, every request that names it (a read, a proof of its keys, break-glass, an upload of
its bytes, a submission that names it) is refused `record_not_readable`, with the same words
whether the id was never a record's, is another patient's or was erased. The refusals that name a
rule come after that check, so only its patient, its readers and an allowed emergency provider
hear them.

Break-glass (docs/break-glass.md): an emergency provider asks any node for the record's emergency
wrap and the share holders (`EmergencyInfoRequest`), then each holder for its decryption share
(`ShareRequest`). A holder dry-runs the break-glass `access.log` (role, the patient's emergency
policy at this height, the wrap), finalizes it, and only then answers with `s_i·R` and its DLEQ
proof. No node ever holds more than its own share, and no node ever sees the data key.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

import trio

from healthnode import crypto, logs
from healthnode.clock import Clock
from healthnode.codec import CodecError
from healthnode.crypto import threshold
from healthnode.errors import TxRefused
from healthnode.ledger import proofs, queries, reading, rules
from healthnode.ledger.state import (
    AUTHORITY_SET,
    EMERGENCY_WRAP,
    PROVIDER,
    height_bytes,
    read,
)
from healthnode.net.blobs import UploadRefused
from healthnode.net.framing import FramedStream, FrameError, StreamBroken
from healthnode.node.admission import Submitter
from healthnode.protocol import merkle
from healthnode.protocol.block import Block
from healthnode.protocol.client import (
    CLIENT_FRAME_BYTES_MAX,
    CLIENT_PROTOCOL,
    AuditItem,
    AuditResponse,
    CertifiedHead,
    ClientError,
    ClientRequest,
    EmergencyHolder,
    EmergencyInfoRequest,
    EmergencyInfoResponse,
    FetchRequest,
    FetchResponse,
    GenesisResponse,
    GrantItem,
    GrantsResponse,
    NonceResponse,
    QueryRequest,
    RecordItem,
    RecordsResponse,
    ShareRequest,
    ShareResponse,
    StateProofRequest,
    StateProofResponse,
    SubmitRequest,
    SubmitResponse,
    TxInclusion,
    UploadRequest,
    UploadResponse,
    clipped,
    decode_request,
)
from healthnode.protocol.schema import Message
from healthnode.protocol.state import (
    EmergencyWrapState,
    ProviderState,
    RecordState,
)
from healthnode.protocol.tx import GRANT_ID_CLASSES, AccessLog, RecordAnchor, grant_made

if TYPE_CHECKING:
    from healthnode.metrics import NodeMetrics
    from healthnode.net.blobs import BlobKeeper
    from healthnode.protocol.genesis import Genesis
    from healthnode.store.leveldb import ChainStore

log = logs.get_logger("healthnode.client")

CLIENT_STREAMS_MAX: Final = 32  # requests being answered at once
# Requests being read at once, and of them for one key: a slow sender holds a reader, never an
# answering slot, and a request that finds no reader free is answered `node_busy` at once (the
# wallet tries another node) rather than queued behind senders that send nothing. Each wallet
# connection reads at most `Limits.wallet_streams_max` at once; up to 16 MiB each.
CLIENT_READERS_MAX: Final = 128
CLIENT_READERS_PER_KEY_MAX: Final = 4
REQUEST_READ_TIMEOUT_S: Final = 60  # a 16 MiB upload over a slow hospital uplink
ANSWER_SEND_TIMEOUT_S: Final = 60  # a wallet that stops reading its answer loses it
BUSY_DRAIN_S: Final = 1  # a refused wallet's request is let in (and dropped) this long
ACCESS_LOG_WAIT_S: Final = 30  # a read waits this long for its access.log to be final
TX_TREES_KEPT: Final = 4  # blocks whose Merkle levels answer submissions (waiters of one block)

BREAK_GLASS_NEEDS_SHARES: Final = (
    "a break-glass read collects decryption shares from the authorities (EmergencyInfoRequest, "
    "then ShareRequest to each): use `healthnode record get --break-glass`")

# A restored node holds what its backup held: until it has caught up, it has neither applied the
# erasures since the backup nor seen the grants revoked since, so it answers no wallet.
RESTORING: Final = ("this node was restored from a backup and serves no wallet until it has "
                    "caught up with the network; another node will serve you")

__all__ = ["CLIENT_FRAME_BYTES_MAX", "CLIENT_PROTOCOL", "ClientService", "Refusal"]


class Refusal(Exception):
    """A request the node answers with a ClientError."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _refused(rejected: rules.Rejected) -> Refusal:
    """The ledger's or the mempool's refusal, as the wallet's answer names it."""
    return Refusal(str(rejected.reason), rejected.detail)


def _not_readable() -> Refusal:
    """The one answer about a record id to an asker who may not read the record."""
    return Refusal(reading.NOT_READABLE, reading.NOT_READABLE_DETAIL)


class ClientService:
    def __init__(self, store: ChainStore, submitter: Submitter, genesis: Genesis,
                 metrics: NodeMetrics, blobs: BlobKeeper,
                 addresses: Callable[[], dict[bytes, str]],
                 share: Callable[[], tuple[int, int] | None], clock: Clock) -> None:
        """`addresses()`: where each authority listens (this node's own too), for a provider to
        reach the emergency key's holders; `share()`: this node's share of that key, if any."""
        self.store = store
        self.submitter = submitter
        self.genesis = genesis
        self.metrics = metrics
        self.blobs = blobs
        self._addresses = addresses
        self._emergency_share = share
        self._clock = clock
        self._limiter = trio.CapacityLimiter(CLIENT_STREAMS_MAX)
        self._readers = trio.CapacityLimiter(CLIENT_READERS_MAX)
        self._readers_by_key: Counter[bytes] = Counter()
        self._tx_trees: dict[int, list[list[bytes]]] = {}  # height -> Merkle levels (bounded)
        # Set by the node: whether it serves no wallet now (restored, and not caught up yet).
        self.held: Callable[[], bool] = lambda: False

    async def serve(self, asker: bytes, stream: FramedStream) -> None:
        if (self._readers.borrowed_tokens >= CLIENT_READERS_MAX
                or self._readers_by_key[asker] >= CLIENT_READERS_PER_KEY_MAX):
            # Never queue for a reader: a queue is what slow senders would hold everyone in.
            self.metrics.client_requests.labels("busy", "node_busy").inc()
            await self._send_answer(stream, ClientError(
                "node_busy", "this node is reading as many requests as it can; try another "
                             "node"))
            return
        kind = "malformed"
        try:
            self._readers_by_key[asker] += 1
            try:
                async with self._readers:
                    with trio.fail_after(REQUEST_READ_TIMEOUT_S):
                        raw = await stream.receive()
            finally:
                self._readers_by_key[asker] -= 1
                if not self._readers_by_key[asker]:
                    del self._readers_by_key[asker]
            if raw is None:
                return
            async with self._limiter:
                try:
                    request = decode_request(raw)
                except CodecError as error:
                    raise Refusal("malformed_request", str(error)) from None
                kind = type(request).__name__
                response = await self._answer(asker, request)
                outcome = "ok"
        except Refusal as refusal:
            response = ClientError(clipped(refusal.code, 40), clipped(refusal.message))
            outcome = refusal.code if len(refusal.code) <= 40 else "refused"
        except trio.TooSlowError:
            self.metrics.client_requests.labels(kind, "timeout").inc()
            await stream.reset()
            return
        except (StreamBroken, FrameError) as error:  # the wallet's stream broke: no answer
            log.debug("client_stream_ended", error=str(error)[:120])
            await stream.reset()
            return
        self.metrics.client_requests.labels(kind, outcome).inc()
        await self._send_answer(stream, response)

    async def busy(self, stream: FramedStream, reason: str) -> None:
        """A wallet whose connection the budget refused (net/budget.py): its requests are
        answered `node_busy` at once, naming the limit, so that the wallet tries another node."""
        self.metrics.client_requests.labels("busy", "node_busy").inc()
        await self._send_answer(stream, ClientError(
            "node_busy", f"this node serves no more wallets now ({reason}); try another node"))
        # The wallet may still be writing its request: let it finish (a reset now would fail
        # its write before it reads the answer), unread, for a moment.
        with trio.move_on_after(BUSY_DRAIN_S):
            await stream.receive()

    async def _send_answer(self, stream: FramedStream, response: Message) -> None:
        try:
            with trio.fail_after(ANSWER_SEND_TIMEOUT_S):
                await stream.send(response.encode())
                await stream.close()
        except (StreamBroken, trio.TooSlowError) as error:  # the wallet hung up, or stopped
            # reading, before the answer
            log.debug("client_answer_lost", error=str(error)[:120])
            await stream.reset()

    async def _answer(self, asker: bytes, request: ClientRequest) -> Message:
        if self.held():
            raise Refusal("node_restoring", RESTORING)
        if isinstance(request, SubmitRequest):
            return await self._submit(asker, request)
        if isinstance(request, UploadRequest):
            self._check_upload(asker, request.ciphertext)
            try:
                ciphertext_hash = self.blobs.upload(asker, request.ciphertext, self._clock.now_ms())
            except UploadRefused as refusal:
                raise Refusal(refusal.code, str(refusal)) from None
            return UploadResponse(ciphertext_hash)
        if isinstance(request, FetchRequest):
            return await self._fetch(asker, request)
        if isinstance(request, EmergencyInfoRequest):
            return self._emergency_info(asker, request)
        if isinstance(request, ShareRequest):
            return await self._share(asker, request)
        if isinstance(request, StateProofRequest):
            return self._state_proof(asker, request.keys)
        return self._query(asker, request)

    # --- proofs -----------------------------------------------------------------------------

    def _state_proof(self, asker: bytes, keys: tuple[bytes, ...]) -> StateProofResponse:
        """The keys' values or absences at the head, with the state tree's proofs, and the head
        as a light client takes it (header, certificate, authority set, the next set's proof):
        all read at once, between two commits."""
        store = self.store
        for key in keys:
            if not rules.in_tree(key):
                raise Refusal("not_in_state_tree", "the chain meta and the indexes are outside "
                                                   "the state tree")
            self._check_provable(asker, key)
        head = store.head.height
        block, certificate = store.block(head), store.certificate(head)
        if block is None or certificate is None:
            raise Refusal("no_certified_block", "no block is final yet")
        root = rules.tree_root(rules.chain_meta(store))
        key_proofs = []
        for key in keys:
            value = store.get(key)
            if value is None and not reading.absence_provable(asker, head, key):
                raise Refusal("not_found", "no such key (an absence is proven only for your "
                                           "own nonce and quota, emergency policies you may "
                                           "see, the emergency key and the next authority "
                                           "set)")
            key_proofs.append(proofs.key_proof(store, root, key, value))
        next_key = AUTHORITY_SET + height_bytes(head + 1)
        authorities = rules.authority_set(store, head).keys
        return StateProofResponse(
            CertifiedHead(block.header, certificate, authorities,
                          proofs.key_proof(store, root, next_key, store.get(next_key))),
            tuple(key_proofs))

    def _inclusion(self, tx_hash: bytes, height: int) -> TxInclusion | None:
        """Where a final transaction is: its block's header, certificate and authority set, and
        its Merkle path (the block's tree is kept for the few submissions it answers)."""
        store = self.store
        block, certificate = store.block(height), store.certificate(height)
        if block is None or certificate is None:
            return None
        tree = self._tx_trees.get(height)
        if tree is None:
            tree = merkle.levels([tx.hash for tx in block.txs])
            self._tx_trees[height] = tree
            while len(self._tx_trees) > TX_TREES_KEPT:
                del self._tx_trees[min(self._tx_trees)]
        try:
            index = next(i for i, tx in enumerate(block.txs) if tx.hash == tx_hash)
        except StopIteration:
            return None
        return TxInclusion(block.header, certificate, rules.authority_set(store, height).keys,
                           index, len(block.txs), tuple(merkle.path_from_levels(tree, index)))

    def _check_provable(self, asker: bytes, key: bytes) -> None:
        """Refuse unless `key` may be proven to the asker (ledger/reading.py): a record's key
        (its state, its wrap) is refused as `record_not_readable` to an asker who may not read
        it, exists or not; to an emergency provider, it is proven only when a break-glass read
        of it would be allowed now, else refused with the reason."""
        sight = reading.may_see(self.store, asker, key)
        if sight is reading.Sight.SEEN:
            return
        record_id = reading.record_of_key(key)
        if record_id is None:
            raise Refusal("not_your_state", "only keys of your own records, grants, policy "
                                            "and nonce, and public ones, are proven to you")
        if sight is reading.Sight.HIDDEN:
            raise _not_readable()
        self._break_glass_log(asker, record_id, "emergency", None)

    # --- submit -----------------------------------------------------------------------------

    async def _submit(self, asker: bytes, request: SubmitRequest) -> SubmitResponse:
        """A refusal is told as ledger/reading.py `told_refusal` lets the asker hear it. An anchor
        of a ciphertext already anchored goes to the ledger even when this node no longer holds
        it (erased): the ledger refuses it, and the asker hears no more than of a live one."""
        tx = request.tx
        store = self.store
        if isinstance(tx, RecordAnchor) and not store.has_blob(tx.ciphertext_hash) and \
                queries.record_of_ciphertext(store, tx.ciphertext_hash) is None:
            raise Refusal("ciphertext_missing",
                          "upload the record's ciphertext to this node before anchoring it")
        refusal = self.submitter.admit_wallet(tx)
        if refusal is not None:
            raise _refused(reading.told_refusal(store, asker, tx, refusal))
        if request.wait_ms == 0:
            return SubmitResponse(tx.hash, None)
        outcome = await self.submitter.wait_final(tx.hash, request.wait_ms / 1000)
        if outcome.timed_out:
            return SubmitResponse(tx.hash, None)
        if outcome.refusal is not None:
            raise _refused(reading.told_refusal(store, asker, tx, outcome.refusal))
        if outcome.height is None:
            return SubmitResponse(tx.hash, None)
        return SubmitResponse(tx.hash, outcome.height, self._inclusion(tx.hash, outcome.height))

    def _check_upload(self, asker: bytes, ciphertext: bytes) -> None:
        """Refuse, as `record_not_readable`, bytes anchored as a record the asker may not read,
        erased or not: the holder of a copy (a former grantee) learns that they are anchored (an
        anchor of them would be refused anyway), never whether the record was erased since. Its
        readers may upload it again (a copy the network lost), or hear `record_erased`."""
        anchored = queries.record_of_ciphertext(self.store, crypto.digest(ciphertext))
        if anchored is not None and reading.record_sight(
                self.store, asker, anchored[0]) is reading.Sight.HIDDEN:
            raise Refusal(reading.NOT_READABLE, reading.NOT_READABLE_BYTES)

    # --- fetch (a read) ---------------------------------------------------------------------

    async def _fetch(self, reader: bytes, request: FetchRequest) -> FetchResponse:
        if request.break_glass:
            raise Refusal("break_glass_needs_shares", BREAK_GLASS_NEEDS_SHARES)
        record_id = request.record_id
        record, grant_id, build = self._read_check(reader, request)
        found = None if grant_id is None else self.store.tx(grant_id)
        grant = None if found is None else grant_made(found)  # a representative's: its act's
        anchor = self.store.tx(record_id)
        assert isinstance(anchor, RecordAnchor), "a record id is its anchor's hash"
        sealed_key = reading.sealed_key(reader, record_id, grant, anchor)
        if sealed_key is None:
            raise Refusal("no_key_wrap", "no key wrap for you on this record: ask the patient "
                                         "to grant this record by id (its key is re-wrapped then)")
        ciphertext = await self._ciphertext(record_id, record)
        access, height = await self._finalize_access_log(build)
        self.metrics.record_reads.inc()
        log.info("record_released", reader_pseudonym=logs.pseudonym(reader), height=height)
        anchor = self.store.tx(record_id)
        assert isinstance(anchor, RecordAnchor), "a record id is its anchor's hash"
        return FetchResponse(record_id, anchor, ciphertext, sealed_key, access.hash, height)

    def _read_check(self, reader: bytes, request: FetchRequest
                    ) -> tuple[RecordState, bytes | None, Callable[[int], AccessLog]]:
        """The record, the grant that lets `reader` read it (None: its own) and the builder of
        the read's access.log, which the ledger would take now; else the refusal: to a reader
        who may not read it, `record_not_readable` whatever the id, and to the others the one
        that names why not (the ledger's reason, or the node's own)."""
        store = self.store
        record_id = request.record_id
        if reading.record_sight(store, reader, record_id) is reading.Sight.HIDDEN:
            raise _not_readable()
        record = queries.record(store, record_id)
        assert record is not None, "a record seen exists"
        if record.erased_height is not None:
            raise Refusal("record_erased", f"the patient erased this record at height "
                                           f"{record.erased_height}")
        if reader == record.patient:
            grant_id = None
        else:
            grant_id = request.grant_id or reading.pick_read_grant(
                store, reader, record_id, record, request.purpose)
            if grant_id is None and rules.active_provider(store, reader) is not None:
                raise Refusal("no_grant", "the patient has given you no grant to this record")

        def build(nonce: int) -> AccessLog:
            return AccessLog(self.submitter.public_key, nonce, reader, record.patient, record_id,
                             grant_id, 0, request.purpose, request.sealed_note)

        self._dry_run(build)
        return record, grant_id, build

    def _dry_run(self, build: Callable[[int], AccessLog]) -> None:
        """Refuse, with the ledger's reason, an access.log the ledger would refuse now."""
        verdict = self.submitter.check(self.submitter.sign_own(build))
        if verdict is not None:
            raise _refused(verdict)

    async def _finalize_access_log(self, build: Callable[[int], AccessLog]
                                   ) -> tuple[AccessLog, int]:
        """Submit this node's access.log and wait until it is final: nothing is released
        before (a refusal or a timeout releases nothing)."""
        try:
            access = self.submitter.submit_own(build)
        except TxRefused as refused:  # the state moved since the dry run
            raise Refusal(refused.code, refused.detail) from None
        outcome = await self.submitter.wait_final(access.hash, ACCESS_LOG_WAIT_S)
        if outcome.height is None:
            if outcome.refusal is not None:
                raise _refused(outcome.refusal)
            raise Refusal("access_log_timeout", f"the access.log was not final within "
                          f"{ACCESS_LOG_WAIT_S} s; nothing was released, retry")
        assert isinstance(access, AccessLog)
        return access, outcome.height

    async def _ciphertext(self, record_id: bytes, record: RecordState) -> bytes:
        blobs = self.blobs
        data = self.store.blob(record.ciphertext_hash)
        if data is None:
            await blobs.fetch([record.ciphertext_hash])
            data = self.store.blob(record.ciphertext_hash)
        if data is None:
            raise Refusal("ciphertext_unavailable", "no reachable node holds this record's "
                          "ciphertext right now; retry later")
        return data

    # --- break-glass --------------------------------------------------------------------------

    def _break_glass_log(self, reader: bytes, record_id: bytes, purpose: str,
                         sealed_note: bytes | None) -> tuple[Callable[[int], AccessLog],
                                                             RecordState]:
        """The access.log a break-glass read of `record_id` by `reader` needs, dry-run against
        the ledger now (role, the patient's emergency policy, the wrap), or a Refusal: a reader
        without the emergency role is told so whatever the id (public state, its own), and one
        the patient's policy does not allow is told `record_not_readable`."""
        store = self.store
        if not rules.emergency_reader(store, reader):
            raise Refusal(str(rules.Reason.READER_LACKS_EMERGENCY_ROLE),
                          rules.EMERGENCY_ROLE_NEEDED)
        if reading.record_sight(store, reader, record_id) is reading.Sight.HIDDEN:
            raise _not_readable()
        record = queries.record(store, record_id)
        assert record is not None, "a record seen exists"

        def build(nonce: int) -> AccessLog:
            return AccessLog(self.submitter.public_key, nonce, reader, record.patient, record_id,
                             None, 1, purpose, sealed_note)

        self._dry_run(build)
        return build, record

    def _emergency_info(self, reader: bytes,
                        request: EmergencyInfoRequest) -> EmergencyInfoResponse:
        """What the provider needs before any access.log: whose record, the key, the threshold
        and the holders to ask. Not the wrap: each holder returns the wrap that it checked and
        made its share of, so no node can hand the wallet a wrap that the holders did not use."""
        store = self.store
        key = rules.emergency_key(store)
        if key is None:
            raise Refusal("no_emergency_key", "this network has no break-glass key")
        _, record = self._break_glass_log(reader, request.record_id, "emergency", None)
        self._bound_wrap(request.record_id, record)
        addresses = self._addresses()
        holders = tuple(
            EmergencyHolder(c.index, c.authority, c.commitment,
                            _with_peer_id(addresses.get(c.authority, ""), c.authority))
            for c in key.key.commitments)
        anchor = store.tx(request.record_id)
        assert isinstance(anchor, RecordAnchor), "a record id is its anchor's hash"
        return EmergencyInfoResponse(anchor, key.key.public_key, key.key.threshold, holders)

    def _bound_wrap(self, record_id: bytes, record: RecordState) -> tuple[bytes, bytes]:
        """The record's emergency wrap and its `R`, checked against the record's label (chain,
        patient, ciphertext hash) under the key in force; a Refusal when it does not verify:
        a holder never makes a share of a wrap that is not bound to the record it names."""
        store = self.store
        wrap = read(store, EMERGENCY_WRAP + record_id, EmergencyWrapState)
        if wrap is None:
            raise Refusal(str(rules.Reason.NO_EMERGENCY_WRAP),
                          "the record carries no emergency wrap")
        try:
            ephemeral = rules.check_bound_wrap(
                store, wrap.wrap, rules.wrap_label(self.genesis.chain_id, record))
        except rules.Reject as rejected:
            verdict = rejected.rejected
            log.error("break_glass_wrap_not_bound", record_pseudonym=logs.pseudonym(record_id),
                      reason=str(verdict.reason))
            raise Refusal(str(verdict.reason), verdict.detail) from None
        return wrap.wrap, ephemeral

    async def _share(self, reader: bytes, request: ShareRequest) -> ShareResponse:
        share = self._emergency_share()
        if share is None:
            raise Refusal("no_emergency_share", "this node holds no valid share of the "
                                                "emergency key (see its log)")
        build, record = self._break_glass_log(reader, request.record_id, request.purpose,
                                              request.sealed_note)
        self._bound_wrap(request.record_id, record)  # nothing logged for a wrap never served
        ciphertext = None
        if request.want_ciphertext:
            ciphertext = await self._ciphertext(request.record_id, record)
        access, height = await self._finalize_access_log(build)
        # Again, against the record and patient that the final access.log names, in the state
        # after it: the share is made of exactly the wrap checked here.
        final_record = queries.record(self.store, access.record_id)
        if final_record is None or final_record.patient != access.patient:
            raise Refusal(str(rules.Reason.RECORD_PATIENT_MISMATCH),
                          "the final access.log names a record of another patient")
        wrapped, ephemeral = self._bound_wrap(access.record_id, final_record)
        index, secret = share
        partial, proof = threshold.decryption_share(secret, ephemeral)
        log.warning("break_glass_share_released", reader_pseudonym=logs.pseudonym(reader),
                    height=height, purpose=request.purpose)
        return ShareResponse(request.record_id, index, partial, proof, wrapped, ciphertext,
                             access.hash, height)

    def block_committed(self, block: Block) -> None:
        """Count finalized break-glass reads per hospital (metrics)."""
        names = None
        for tx in block.txs:
            if isinstance(tx, AccessLog) and tx.break_glass:
                names = names or self._hospital_names()
                self.metrics.break_glass_reads.labels(
                    names.get(tx.signer, tx.signer.hex()[:16])).inc()

    def _hospital_names(self) -> dict[bytes, str]:
        """The authorities' names: the genesis set's, and the next height's set's."""
        store = self.store
        return {**{a.public_key: a.name for a in self.genesis.authorities},
                **queries.authority_names(store, store.head.height + 1)}

    # --- queries ----------------------------------------------------------------------------

    def _query(self, asker: bytes, request: QueryRequest) -> Message:
        store = self.store
        if request.what == "nonce":
            return NonceResponse(self.submitter.next_nonce(asker), self.genesis.chain_id)
        if request.what == "audit":
            if request.patient not in (None, asker):
                raise Refusal("not_your_audit", "only the patient sees its audit trail")
            entries, cursor = reading.audit_page(store, asker, request.after)
            items = []
            for entry in entries:
                logged = store.tx(entry.tx_hash)
                assert isinstance(logged, AccessLog), "an audit entry names its access.log"
                reader = read(store, PROVIDER + entry.reader, ProviderState)
                items.append(AuditItem(entry, logged,
                                       reader.display_name if reader else None,
                                       self._hospital_names().get(entry.authority)))
            return AuditResponse(tuple(items), cursor)
        if request.what == "records":
            return self._records(asker, request)
        if request.what == "genesis":
            return GenesisResponse(self.genesis)
        if request.what == "grants":
            return self._grant_items(reading.own_grants(store, asker), request.after)
        # patient_grants: a patient's grants in force, for the patient or a writer it allowed.
        patient = request.patient or asker
        if patient != asker:
            self._require_writer(asker, patient)
        return self._grant_items(reading.grants_in_force(store, patient), request.after)

    def _require_writer(self, asker: bytes, patient: bytes) -> None:
        if not reading.may_write(self.store, asker, patient):
            raise Refusal("no_write_grant", "only the patient, or a provider it lets write, "
                                            "may see the patient's grants and policy")

    def _records(self, asker: bytes, request: QueryRequest) -> RecordsResponse:
        store = self.store
        record_ids = reading.readable_record_ids(store, asker, request.patient or asker)
        page, cursor = reading.page(((r, b"") for r in record_ids), 0, request.after)
        items = []
        for record_id, _ in page:
            anchor = store.tx(record_id)
            assert isinstance(anchor, RecordAnchor), "a record id is its anchor's hash"
            record = queries.record(store, record_id)
            assert record is not None, "patient index points at a missing record"
            items.append(RecordItem(record_id, anchor, record))
        return RecordsResponse(tuple(items), cursor)

    def _grant_items(self, grant_ids: list[bytes], after: bytes | None) -> GrantsResponse:
        store = self.store
        page, cursor = reading.page(((g, b"") for g in grant_ids), 0, after)
        items = []
        for grant_id, _ in page:
            grant_tx = store.tx(grant_id)
            assert isinstance(grant_tx, GRANT_ID_CLASSES) and grant_made(grant_tx) is not None, (
                "a grant id is its grant's hash (or its representative's act's)")
            state = queries.grant(store, grant_id)
            assert state is not None, "grant index points at a missing grant"
            items.append(GrantItem(grant_id, grant_tx, state))
        return GrantsResponse(tuple(items), cursor)


def _with_peer_id(address: str, public_key: bytes) -> str:
    if not address or "/p2p/" in address:
        return address
    return f"{address}/p2p/{crypto.peer_id(public_key)}"
