"""The client (wallet) protocol `/healthnode/client/1`: what a patient's or provider's wallet asks
a node, and what the node answers.

One request per stream: the wallet opens a stream, sends one request frame, reads one answer frame
(a response of the matching kind or a `ClientError`), and the stream is closed. The wallet is
authenticated by the transport: libp2p's Noise handshake proves the wallet holds the key of its
peer id, and the peer id *is* the wallet's Ed25519 public key. So the node knows who asks without
any extra signature, and a request names no "requester" field that could be forged.

Requests (70-76) and responses (80-92). docs/wallet.md describes each in prose.
"""

from __future__ import annotations

from typing import Annotated, Final

from healthnode import limits
from healthnode.protocol.block import CommitCertificate, Header
from healthnode.protocol.fields import ChainId, Hash, Height, Nonce, PublicKey
from healthnode.protocol.genesis import Genesis
from healthnode.protocol.schema import (
    Bytes,
    Int,
    ListOf,
    Message,
    Nested,
    Optional,
    Str,
    StructOf,
    decode_message,
    message,
    struct,
)
from healthnode.protocol.state import STATE_VALUE_BYTES_MAX, AccessEntry, GrantState, RecordState
from healthnode.protocol.tx import (
    EMERGENCY_PURPOSES,
    EMERGENCY_WRAP_BYTES,
    PURPOSES,
    SEALED_NOTE,
    TX_CLASSES,
    AccessLog,
    AnyTx,
    ConsentGrant,
    KeyWrapBytes,
    RecordAnchor,
)

CLIENT_PROTOCOL: Final = "/healthnode/client/1"
# The largest frame is an upload or a fetched record: one ciphertext and a little framing.
CLIENT_FRAME_BYTES_MAX: Final = limits.BLOB_BYTES_MAX + 64 * limits.KIB
# How long a wallet may ask a node to hold a submission open while waiting for finality.
SUBMIT_WAIT_MS_MAX: Final = 60_000
# Items in one list answer. A grant names at most 512 records; a patient's history may be longer,
# so list answers come in pages: an answer's `cursor` goes in the next request's `after`.
QUERY_ITEMS_MAX: Final = 256

Cursor = Annotated[bytes | None, Optional(Bytes(size_min=1, size_max=64))]

QUERIES: Final = frozenset(
    {"records", "grants", "patient_grants", "audit", "nonce", "genesis"})
ADDRESS_CHARS_MAX: Final = 256
STATE_KEY_BYTES_MAX: Final = 128  # the longest state key: a prefix and two or three hashes
PROOF_KEYS_MAX: Final = 64  # keys proven in one answer (a record add proves each grant in force)
ERROR_CODE_CHARS_MAX: Final = 40
ERROR_MESSAGE_CHARS_MAX: Final = 400


@message(kind=70)
class SubmitRequest(Message):
    """Submit a signed transaction; with `wait_ms` > 0 answer once it is final (or refused)."""

    tx: Annotated[AnyTx, Nested(TX_CLASSES)]
    wait_ms: Annotated[int, Int(0, SUBMIT_WAIT_MS_MAX)]


@message(kind=71)
class UploadRequest(Message):
    """A record's ciphertext, to be kept until its anchor is final (then replicated)."""

    ciphertext: Annotated[bytes, Bytes(size_min=1, size_max=limits.BLOB_BYTES_MAX)]


@message(kind=72)
class FetchRequest(Message):
    """Read a record: the node checks the asker's right on finalized state, finalizes an
    access.log for the read, and only then answers with the ciphertext and the asker's key wrap.
    `grant_id` nil lets the node pick the asker's grant that covers the record."""

    record_id: Hash
    grant_id: Annotated[bytes | None, Optional(Bytes(32))]
    purpose: Annotated[str, Str(16, choices=PURPOSES)]
    sealed_note: Annotated[bytes | None, Optional(SEALED_NOTE)]
    break_glass: Annotated[int, Int(0, 1)]


@message(kind=73)
class QueryRequest(Message):
    """A list about the asker: `records` (its own, or with `patient` the ones that patient granted
    it), `grants` (given and received), `patient_grants` (a patient's grants in force: the patient
    itself or a provider it lets write), `audit` (its audit trail), `nonce` (its next nonce)."""

    what: Annotated[str, Str(16, choices=QUERIES)]
    patient: Annotated[bytes | None, Optional(Bytes(32))]
    after: Cursor


@message(kind=74)
class EmergencyInfoRequest(Message):
    """Break-glass, step 1 (an emergency provider): whose record this is, the emergency key,
    its share holders and where to reach them. Refused unless a break-glass read of it would be
    allowed now. The wrap itself comes from each holder, with its share."""

    record_id: Hash


@message(kind=75)
class ShareRequest(Message):
    """Break-glass, step 2, to each share holder: the holder finalizes an access.log flagged
    break-glass, then answers with its decryption share of the record's emergency wrap."""

    record_id: Hash
    purpose: Annotated[str, Str(16, choices=EMERGENCY_PURPOSES)]
    sealed_note: Annotated[bytes | None, Optional(SEALED_NOTE)]
    want_ciphertext: Annotated[int, Int(0, 1)]


@message(kind=76)
class StateProofRequest(Message):
    """State keys' values, or their absence, proven against the newest certified header
    (docs/ledger.md, "The state root"), with what a light client needs to check that header.
    No keys: the certified head alone. Only keys the asker may see are answered."""

    keys: Annotated[tuple[bytes, ...],
                    ListOf(Bytes(size_min=1, size_max=STATE_KEY_BYTES_MAX), PROOF_KEYS_MAX)]


@struct
class KeyProof:
    """A state key's value (nil: absent) and the state tree's proof of it: the sibling hashes
    from the root down, and the leaf where the key's path ends, if any (ledger/smt.py)."""

    key: Annotated[bytes, Bytes(size_min=1, size_max=STATE_KEY_BYTES_MAX)]
    value: Annotated[bytes | None, Optional(Bytes(size_min=1, size_max=STATE_VALUE_BYTES_MAX))]
    # 15 hashes per internal node on the path, at most 64 nodes deep (ledger/smt.py)
    siblings: Annotated[tuple[bytes, ...], ListOf(Bytes(32), 960)]
    leaf_key_hash: Annotated[bytes | None, Optional(Bytes(32))]
    leaf_value_hash: Annotated[bytes | None, Optional(Bytes(32))]


@struct
class CertifiedHead:
    """A header with what a light client needs to take it (ledger/light.py): its commit
    certificate, its authority set, and the proof at it of the next height's set."""

    header: Annotated[Header, Nested((Header,))]
    certificate: Annotated[CommitCertificate, Nested((CommitCertificate,))]
    authorities: Annotated[tuple[bytes, ...],
                           ListOf(Bytes(32), limits.AUTHORITIES_MAX, items_min=1)]
    next_set: Annotated[KeyProof, StructOf(KeyProof)]


@struct
class TxInclusion:
    """A transaction's place in a certified block: the block's header, its certificate and
    authority set, and the Merkle audit path of the transaction's hash to the header's
    `txs_root` (protocol/merkle.py)."""

    header: Annotated[Header, Nested((Header,))]
    certificate: Annotated[CommitCertificate, Nested((CommitCertificate,))]
    authorities: Annotated[tuple[bytes, ...],
                           ListOf(Bytes(32), limits.AUTHORITIES_MAX, items_min=1)]
    index: Annotated[int, Int(0, limits.BLOCK_TXS_MAX - 1)]
    size: Annotated[int, Int(1, limits.BLOCK_TXS_MAX)]
    path: Annotated[tuple[bytes, ...], ListOf(Bytes(32), 32)]


@message(kind=80)
class SubmitResponse(Message):
    tx_hash: Hash
    height: Annotated[int | None, Optional(Int(1, limits.HEIGHT_MAX))]  # nil: accepted, not final
    # with a height: where the transaction is, for the wallet to check (nil only when not final)
    inclusion: Annotated[TxInclusion | None, Optional(StructOf(TxInclusion))] = None


@message(kind=81)
class UploadResponse(Message):
    ciphertext_hash: Hash


@message(kind=82)
class FetchResponse(Message):
    record_id: Hash
    # The record's anchor: it hashes to the record id, names the patient (the ciphertext's
    # associated data) and the ciphertext's hash, so the wallet checks what it is served.
    anchor: Annotated[RecordAnchor, Nested((RecordAnchor,))]
    ciphertext: Annotated[bytes, Bytes(size_min=1, size_max=limits.BLOB_BYTES_MAX)]
    sealed_key: KeyWrapBytes  # the record's data key sealed to the asker
    access_tx_hash: Hash  # the finalized access.log of this read
    access_height: Height


@struct
class RecordItem:
    record_id: Hash
    anchor: Annotated[RecordAnchor, Nested((RecordAnchor,))]
    state: Annotated[RecordState, Nested((RecordState,))]


@struct
class GrantItem:
    grant_id: Hash
    grant: Annotated[ConsentGrant, Nested((ConsentGrant,))]
    state: Annotated[GrantState, Nested((GrantState,))]


@struct
class AuditItem:
    entry: Annotated[AccessEntry, Nested((AccessEntry,))]
    access: Annotated[AccessLog, Nested((AccessLog,))]
    reader_name: Annotated[str | None, Optional(Str(limits.NAME_CHARS_MAX, chars_min=1))]
    hospital_name: Annotated[str | None, Optional(Str(limits.NAME_CHARS_MAX, chars_min=1))]


@struct
class EmergencyHolder:
    index: Annotated[int, Int(1, limits.AUTHORITIES_MAX)]
    authority: PublicKey
    commitment: Annotated[bytes, Bytes(32)]
    address: Annotated[str, Str(ADDRESS_CHARS_MAX)]  # empty: the asked node knows none


@message(kind=83)
class RecordsResponse(Message):
    items: Annotated[tuple[RecordItem, ...], ListOf(StructOf(RecordItem), QUERY_ITEMS_MAX)]
    cursor: Cursor  # nil: the list is complete; else ask again with `after` = cursor


@message(kind=84)
class GrantsResponse(Message):
    items: Annotated[tuple[GrantItem, ...], ListOf(StructOf(GrantItem), QUERY_ITEMS_MAX)]
    cursor: Cursor  # nil: the list is complete; else ask again with `after` = cursor


@message(kind=85)
class AuditResponse(Message):
    items: Annotated[tuple[AuditItem, ...], ListOf(StructOf(AuditItem), QUERY_ITEMS_MAX)]
    cursor: Cursor  # nil: the list is complete; else ask again with `after` = cursor


@message(kind=86)
class NonceResponse(Message):
    next_nonce: Nonce
    chain_id: ChainId  # what the wallet signs for (a wrong one only voids its transaction)


@message(kind=87)
class EmergencyInfoResponse(Message):
    """The record's anchor (its hash is the record id, so the wallet checks it is the record's
    own), the emergency key, its threshold, and the share holders."""

    anchor: Annotated[RecordAnchor, Nested((RecordAnchor,))]
    public_key: Annotated[bytes, Bytes(32)]
    threshold: Annotated[int, Int(1, limits.AUTHORITIES_MAX)]
    holders: Annotated[tuple[EmergencyHolder, ...],
                       ListOf(StructOf(EmergencyHolder), limits.AUTHORITIES_MAX, items_min=1)]


@message(kind=88)
class ShareResponse(Message):
    record_id: Hash
    index: Annotated[int, Int(1, limits.AUTHORITIES_MAX)]
    partial: Annotated[bytes, Bytes(32)]  # s_i·R
    proof: Annotated[bytes, Bytes(64)]  # DLEQ proof against the holder's commitment
    # the wrap the holder checked and made its share of
    wrap: Annotated[bytes, EMERGENCY_WRAP_BYTES]
    ciphertext: Annotated[bytes | None,
                          Optional(Bytes(size_min=1, size_max=limits.BLOB_BYTES_MAX))]
    access_tx_hash: Hash
    access_height: Height


@message(kind=91)
class StateProofResponse(Message):
    """The certified head and, for each key asked, its proof against the head's state root,
    in the order asked. ledger/proofs.py checks it."""

    head: Annotated[CertifiedHead, StructOf(CertifiedHead)]
    proofs: Annotated[tuple[KeyProof, ...], ListOf(StructOf(KeyProof), PROOF_KEYS_MAX)]


@message(kind=92)
class GenesisResponse(Message):
    """The node's genesis (`QueryRequest` "genesis"): a wallet pinned by the genesis hash alone
    takes the document from any node and checks it against the hash."""

    genesis: Annotated[Genesis, Nested((Genesis,))]


@message(kind=89)
class ClientError(Message):
    """A refusal: `code` is a fixed snake_case name (a ledger reason such as `grant_revoked`, or
    one of the node's own: `no_grant`, `ciphertext_missing`, ...), `message` says why."""

    code: Annotated[str, Str(ERROR_CODE_CHARS_MAX, chars_min=1)]
    message: Annotated[str, Str(ERROR_MESSAGE_CHARS_MAX, chars_min=1)]


ClientRequest = (SubmitRequest | UploadRequest | FetchRequest | QueryRequest
                 | EmergencyInfoRequest | ShareRequest | StateProofRequest)
REQUEST_CLASSES: Final = (SubmitRequest, UploadRequest, FetchRequest, QueryRequest,
                          EmergencyInfoRequest, ShareRequest, StateProofRequest)
ClientResponse = (SubmitResponse | UploadResponse | FetchResponse | RecordsResponse
                  | GrantsResponse | AuditResponse | NonceResponse | ClientError
                  | EmergencyInfoResponse | ShareResponse
                  | StateProofResponse | GenesisResponse)
RESPONSE_CLASSES: Final = (SubmitResponse, UploadResponse, FetchResponse, RecordsResponse,
                           GrantsResponse, AuditResponse, NonceResponse, ClientError,
                           EmergencyInfoResponse, ShareResponse,
                           StateProofResponse, GenesisResponse)


def decode_request(data: bytes) -> ClientRequest:
    request: ClientRequest = decode_message(  # type: ignore[assignment]
        data, REQUEST_CLASSES, CLIENT_FRAME_BYTES_MAX)
    return request


def decode_response(data: bytes) -> ClientResponse:
    response: ClientResponse = decode_message(  # type: ignore[assignment]
        data, RESPONSE_CLASSES, CLIENT_FRAME_BYTES_MAX)
    return response


def clipped(text: str, chars_max: int = ERROR_MESSAGE_CHARS_MAX) -> str:
    """`text` made fit for a ClientError field (printable, within the limit)."""
    printable = "".join(c if c.isprintable() else " " for c in text).strip() or "refused"
    return printable[:chars_max]

