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

import typing
from typing import TYPE_CHECKING, Annotated, Final, Literal, TypeAlias

from msgspec import Meta

from healthnode import limits
from healthnode.protocol.block import CommitCertificate, Header
from healthnode.protocol.fields import Bytes32, ChainId, Hash, Height, Nonce, PublicKey
from healthnode.protocol.genesis import Genesis
from healthnode.protocol.schema import PRINTABLE, Message, Struct, decode_message
from healthnode.protocol.state import STATE_VALUE_BYTES_MAX, AccessEntry, GrantState, RecordState
from healthnode.protocol.tx import (
    AccessLog,
    AnyGrant,
    AnyTx,
    ConsentGrant,
    ConsentGrantPurposes,
    EmergencyPurpose,
    EmergencyWrapBytes,
    KeyWrapBytes,
    Purpose,
    RecordAnchor,
    RepresentativeAct,
    SealedNote,
    grant_made,
)

CLIENT_PROTOCOL: Final = "/healthnode/client/1"
# The largest frame is an upload or a fetched record: one ciphertext and a little framing.
CLIENT_FRAME_BYTES_MAX: Final = limits.BLOB_BYTES_MAX + 64 * limits.KIB
# How long a wallet may ask a node to hold a submission open while waiting for finality.
SUBMIT_WAIT_MS_MAX: Final = 60_000
# Items in one list answer. A grant names at most 512 records; a patient's history may be longer,
# so list answers come in pages: an answer's `cursor` goes in the next request's `after`.
QUERY_ITEMS_MAX: Final = 256

Cursor = Annotated[bytes, Meta(min_length=1, max_length=64)] | None

if TYPE_CHECKING:  # as in protocol/tx.py
    Query: TypeAlias = str
else:
    Query = Literal["records", "grants", "patient_grants", "audit", "nonce", "genesis"]
QUERIES: Final = frozenset(typing.get_args(Query))
ADDRESS_CHARS_MAX: Final = 256
STATE_KEY_BYTES_MAX: Final = 128  # the longest state key: a prefix and two or three hashes
PROOF_KEYS_MAX: Final = 64  # keys proven in one answer (a record add proves each grant in force)
ERROR_CODE_CHARS_MAX: Final = 40
ERROR_MESSAGE_CHARS_MAX: Final = 400


class SubmitRequest(Message, tag=70):
    """Submit a signed transaction; with `wait_ms` > 0 answer once it is final (or refused)."""

    tx: AnyTx
    wait_ms: Annotated[int, Meta(ge=0, le=SUBMIT_WAIT_MS_MAX)]


class UploadRequest(Message, tag=71):
    """A record's ciphertext, to be kept until its anchor is final (then replicated)."""

    ciphertext: Annotated[bytes, Meta(min_length=1, max_length=limits.BLOB_BYTES_MAX)]


class FetchRequest(Message, tag=72):
    """Read a record: the node checks the asker's right on finalized state, finalizes an
    access.log for the read, and only then answers with the ciphertext and the asker's key wrap.
    `grant_id` nil lets the node pick the asker's grant that covers the record."""

    record_id: Hash
    grant_id: Bytes32 | None
    purpose: Purpose
    sealed_note: SealedNote | None
    break_glass: Annotated[int, Meta(ge=0, le=1)]


class QueryRequest(Message, tag=73):
    """A list about the asker: `records` (its own, or with `patient` the ones that patient granted
    it), `grants` (given and received), `patient_grants` (a patient's grants in force: the patient
    itself or a provider it lets write), `audit` (its audit trail), `nonce` (its next nonce)."""

    what: Query
    patient: Bytes32 | None
    after: Cursor


class EmergencyInfoRequest(Message, tag=74):
    """Break-glass, step 1 (an emergency provider): whose record this is, the emergency key,
    its share holders and where to reach them. Refused unless a break-glass read of it would be
    allowed now. The wrap itself comes from each holder, with its share."""

    record_id: Hash


class ShareRequest(Message, tag=75):
    """Break-glass, step 2, to each share holder: the holder finalizes an access.log flagged
    break-glass, then answers with its decryption share of the record's emergency wrap."""

    record_id: Hash
    purpose: EmergencyPurpose
    sealed_note: SealedNote | None
    want_ciphertext: Annotated[int, Meta(ge=0, le=1)]


class StateProofRequest(Message, tag=76):
    """State keys' values, or their absence, proven against the newest certified header
    (docs/ledger.md, "The state root"), with what a light client needs to check that header.
    No keys: the certified head alone. Only keys the asker may see are answered."""

    keys: Annotated[
        tuple[Annotated[bytes, Meta(min_length=1, max_length=STATE_KEY_BYTES_MAX)], ...],
        Meta(max_length=PROOF_KEYS_MAX),
    ]


class KeyProof(Struct):
    """A state key's value (nil: absent) and the state tree's proof of it: the sibling hashes
    from the root down, and the leaf where the key's path ends, if any (ledger/smt.py)."""

    key: Annotated[bytes, Meta(min_length=1, max_length=STATE_KEY_BYTES_MAX)]
    value: Annotated[bytes, Meta(min_length=1, max_length=STATE_VALUE_BYTES_MAX)] | None
    # 15 hashes per internal node on the path, at most 64 nodes deep (ledger/smt.py)
    siblings: Annotated[tuple[Bytes32, ...], Meta(max_length=960)]
    leaf_key_hash: Bytes32 | None
    leaf_value_hash: Bytes32 | None


class CertifiedHead(Struct):
    """A header with what a light client needs to take it (ledger/light.py): its commit
    certificate, its authority set, and the proof at it of the next height's set."""

    header: Header
    certificate: CommitCertificate
    authorities: Annotated[
        tuple[Bytes32, ...], Meta(min_length=1, max_length=limits.AUTHORITIES_MAX)
    ]
    next_set: KeyProof


class TxInclusion(Struct):
    """A transaction's place in a certified block: the block's header, its certificate and
    authority set, and the Merkle audit path of the transaction's hash to the header's
    `txs_root` (protocol/merkle.py)."""

    header: Header
    certificate: CommitCertificate
    authorities: Annotated[
        tuple[Bytes32, ...], Meta(min_length=1, max_length=limits.AUTHORITIES_MAX)
    ]
    index: Annotated[int, Meta(ge=0, le=limits.BLOCK_TXS_MAX - 1)]
    size: Annotated[int, Meta(ge=1, le=limits.BLOCK_TXS_MAX)]
    path: Annotated[tuple[Bytes32, ...], Meta(max_length=32)]


class SubmitResponse(Message, tag=80):
    tx_hash: Hash
    height: Annotated[int, Meta(ge=1, le=limits.HEIGHT_MAX)] | None  # nil: accepted, not final
    # with a height: where the transaction is, for the wallet to check (nil only when not final)
    inclusion: TxInclusion | None = None


class UploadResponse(Message, tag=81):
    ciphertext_hash: Hash


class FetchResponse(Message, tag=82):
    record_id: Hash
    # The record's anchor: it hashes to the record id, names the patient (the ciphertext's
    # associated data) and the ciphertext's hash, so the wallet checks what it is served.
    anchor: RecordAnchor
    ciphertext: Annotated[bytes, Meta(min_length=1, max_length=limits.BLOB_BYTES_MAX)]
    sealed_key: KeyWrapBytes  # the record's data key sealed to the asker
    access_tx_hash: Hash  # the finalized access.log of this read
    access_height: Height


class RecordItem(Struct):
    record_id: Hash
    anchor: RecordAnchor
    state: RecordState


class GrantItem(Struct):
    grant_id: Hash
    # The transaction whose hash is the grant id: the patient's grant of either kind, or from
    # rules version 5 a representative's act that carries one (`protocol.tx.grant_made`).
    grant: ConsentGrant | ConsentGrantPurposes | RepresentativeAct
    state: GrantState

    @property
    def consent(self) -> AnyGrant:
        """The grant as the patient's (a representative's act unwrapped)."""
        grant = grant_made(self.grant)
        assert grant is not None, "a grant item carries a grant"
        return grant


class AuditItem(Struct):
    entry: AccessEntry
    access: AccessLog
    reader_name: Annotated[
        str, Meta(min_length=1, max_length=limits.NAME_CHARS_MAX), PRINTABLE
    ] | None
    hospital_name: Annotated[
        str, Meta(min_length=1, max_length=limits.NAME_CHARS_MAX), PRINTABLE
    ] | None


class EmergencyHolder(Struct):
    index: Annotated[int, Meta(ge=1, le=limits.AUTHORITIES_MAX)]
    authority: PublicKey
    commitment: Bytes32
    # empty: the asked node knows none
    address: Annotated[str, Meta(max_length=ADDRESS_CHARS_MAX), PRINTABLE]


class RecordsResponse(Message, tag=83):
    items: Annotated[tuple[RecordItem, ...], Meta(max_length=QUERY_ITEMS_MAX)]
    cursor: Cursor  # nil: the list is complete; else ask again with `after` = cursor


class GrantsResponse(Message, tag=84):
    items: Annotated[tuple[GrantItem, ...], Meta(max_length=QUERY_ITEMS_MAX)]
    cursor: Cursor  # nil: the list is complete; else ask again with `after` = cursor


class AuditResponse(Message, tag=85):
    items: Annotated[tuple[AuditItem, ...], Meta(max_length=QUERY_ITEMS_MAX)]
    cursor: Cursor  # nil: the list is complete; else ask again with `after` = cursor


class NonceResponse(Message, tag=86):
    next_nonce: Nonce
    chain_id: ChainId  # what the wallet signs for (a wrong one only voids its transaction)


class EmergencyInfoResponse(Message, tag=87):
    """The record's anchor (its hash is the record id, so the wallet checks it is the record's
    own), the emergency key, its threshold, and the share holders."""

    anchor: RecordAnchor
    public_key: Bytes32
    threshold: Annotated[int, Meta(ge=1, le=limits.AUTHORITIES_MAX)]
    holders: Annotated[
        tuple[EmergencyHolder, ...], Meta(min_length=1, max_length=limits.AUTHORITIES_MAX)
    ]


class ShareResponse(Message, tag=88):
    record_id: Hash
    index: Annotated[int, Meta(ge=1, le=limits.AUTHORITIES_MAX)]
    partial: Bytes32  # s_i·R
    # DLEQ proof against the holder's commitment
    proof: Annotated[bytes, Meta(min_length=64, max_length=64)]
    # the wrap the holder checked and made its share of
    wrap: EmergencyWrapBytes
    ciphertext: Annotated[bytes, Meta(min_length=1, max_length=limits.BLOB_BYTES_MAX)] | None
    access_tx_hash: Hash
    access_height: Height


class StateProofResponse(Message, tag=91):
    """The certified head and, for each key asked, its proof against the head's state root,
    in the order asked. ledger/proofs.py checks it."""

    head: CertifiedHead
    proofs: Annotated[tuple[KeyProof, ...], Meta(max_length=PROOF_KEYS_MAX)]


class GenesisResponse(Message, tag=92):
    """The node's genesis (`QueryRequest` "genesis"): a wallet pinned by the genesis hash alone
    takes the document from any node and checks it against the hash."""

    genesis: Genesis


class ClientError(Message, tag=89):
    """A refusal: `code` is a fixed snake_case name (a ledger reason such as `grant_revoked`, or
    one of the node's own: `no_grant`, `ciphertext_missing`, ...), `message` says why."""

    code: Annotated[str, Meta(min_length=1, max_length=ERROR_CODE_CHARS_MAX), PRINTABLE]
    message: Annotated[str, Meta(min_length=1, max_length=ERROR_MESSAGE_CHARS_MAX), PRINTABLE]


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

