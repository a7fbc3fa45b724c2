"""The transaction kinds: every change to the chain is one of these, signed by its author.

Each transaction is `[kind, version, signer, nonce, ...fields, signature]`. The nonce is per signer
and strictly increasing (the ledger requires the next one), so a transaction cannot be replayed.
Who may sign which kind, and what else must hold, is the ledger's business (healthnode/ledger);
this module fixes only the shape. Categories never appear in clear: `tags` are blinded with the
patient's tag key (crypto.keyed_digest). docs/protocol.md lists the kinds in prose.
"""

from __future__ import annotations

from typing import Annotated, Final

from healthnode import limits
from healthnode.crypto import DOMAIN_TX
from healthnode.protocol.fields import (
    UNSIGNED,
    Hash,
    Name,
    Nonce,
    PublicKey,
    Signature,
)
from healthnode.protocol.schema import (
    Bytes,
    Int,
    ListOf,
    Optional,
    Str,
    StructOf,
    decode_message,
    message,
    struct,
)
from healthnode.protocol.signed import Signed

ROLES: Final = frozenset({"clinician", "lab", "pharmacy", "emergency"})
ACTIONS: Final = frozenset({"read", "write"})
# Break-glass reads carry one of these purpose codes (the clinician's words go in a sealed note).
EMERGENCY_PURPOSES: Final = frozenset(
    {"emergency", "er-unconscious", "er-life-threat", "er-medication"})
PURPOSES: Final = frozenset(
    {"treatment", "payment", "operations", "research", "patient-request"}) | EMERGENCY_PURPOSES
VALIDATOR_ACTIONS: Final = frozenset({"add", "remove"})

# A sealed box of a 32-byte data key is 80 bytes; allow other wrap schemes up to the limit.
KeyWrapBytes = Annotated[bytes, Bytes(size_min=1, size_max=limits.KEY_WRAP_BYTES_MAX)]
# R, the AEAD of a 32-byte data key, R̄ and the TDH2 proof (e, f): threshold.WRAP_BYTES.
EMERGENCY_WRAP_BYTES = Bytes(176)
# A sealed box adds 48 bytes (ephemeral key and MAC) to the note.
SEALED_NOTE = Bytes(size_min=1, size_max=limits.SEALED_NOTE_BYTES_MAX + 48)


@struct
class KeyWrap:
    """A record's data key sealed to one reader (the patient or a grantee)."""

    recipient: PublicKey
    sealed_key: KeyWrapBytes


@struct
class RecordKeyWrap:
    """Inside a grant: one record's data key re-sealed by the patient for the grantee."""

    record_id: Hash
    sealed_key: KeyWrapBytes


class Tx(Signed):
    DOMAIN = DOMAIN_TX
    __slots__ = ()
    nonce: int


@message(kind=1)
class ProviderRegister(Tx):
    """An authority (hospital node) vouches for a provider key and its roles."""

    signer: PublicKey
    nonce: Nonce
    provider: PublicKey
    roles: Annotated[
        tuple[str, ...], ListOf(Str(16, choices=ROLES), len(ROLES), items_min=1, sorted_unique=True)
    ]
    display_name: Name
    signature: Signature = UNSIGNED


@message(kind=2)
class ProviderRevoke(Tx):
    """The registering authority ends a provider key (left the hospital, key lost)."""

    signer: PublicKey
    nonce: Nonce
    provider: PublicKey
    signature: Signature = UNSIGNED


@message(kind=3)
class RecordAnchor(Tx):
    """Anchors one encrypted record: its ciphertext hash and size, blinded tags and key wraps.
    The record id is this transaction's hash."""

    signer: PublicKey
    nonce: Nonce
    patient: PublicKey
    ciphertext_hash: Hash
    ciphertext_bytes: Annotated[int, Int(1, limits.BLOB_BYTES_MAX)]
    tags: Annotated[
        tuple[bytes, ...],
        ListOf(Bytes(32), limits.TAGS_PER_RECORD_MAX, items_min=1, sorted_unique=True),
    ]
    key_wraps: Annotated[
        tuple[KeyWrap, ...], ListOf(StructOf(KeyWrap), limits.KEY_WRAPS_PER_ANCHOR_MAX, items_min=1)
    ]
    supersedes: Annotated[bytes | None, Optional(Bytes(32))]
    # The data key wrapped for the network's emergency key (threshold ElGamal), when the patient's
    # emergency policy covers this record's categories; nil otherwise.
    emergency_wrap: Annotated[bytes | None, Optional(EMERGENCY_WRAP_BYTES)] = None
    signature: Signature = UNSIGNED



# A grant's actions and scope, as the transaction states them and the state keeps them.
GrantActions = Annotated[
    tuple[str, ...], ListOf(Str(8, choices=ACTIONS), len(ACTIONS), items_min=1, sorted_unique=True)
]
ScopeRecords = Annotated[
    tuple[bytes, ...], ListOf(Bytes(32), limits.GRANT_RECORDS_MAX, sorted_unique=True)
]
ScopeTags = Annotated[
    tuple[bytes, ...], ListOf(Bytes(32), limits.GRANT_TAGS_MAX, sorted_unique=True)
]

@message(kind=4)
class ConsentGrant(Tx):
    """A patient lets `grantee` read and/or write records in scope (ids and/or blinded tags) until
    `expires_at_ms` (block time; nil = until revoked). The grant id is this transaction's hash."""

    signer: PublicKey
    nonce: Nonce
    grantee: PublicKey
    actions: GrantActions
    scope_records: ScopeRecords
    scope_tags: ScopeTags
    expires_at_ms: Annotated[int | None, Optional(Int(0, limits.TIME_MS_MAX))]
    key_wraps: Annotated[
        tuple[RecordKeyWrap, ...], ListOf(StructOf(RecordKeyWrap), limits.GRANT_RECORDS_MAX)
    ]
    # The patient's tag key sealed to the grantee, so a writer can blind categories.
    tag_key_wrap: Annotated[bytes | None, Optional(Bytes(size_min=1, size_max=256))]
    signature: Signature = UNSIGNED


@message(kind=5)
class ConsentRevoke(Tx):
    """A patient ends one of its grants."""

    signer: PublicKey
    nonce: Nonce
    grant_id: Hash
    signature: Signature = UNSIGNED


@message(kind=6)
class AccessLog(Tx):
    """An authority records that `reader` was given `record_id`, under a grant or break-glass."""

    signer: PublicKey
    nonce: Nonce
    reader: PublicKey
    patient: PublicKey
    record_id: Hash
    grant_id: Annotated[bytes | None, Optional(Bytes(32))]
    break_glass: Annotated[int, Int(0, 1)]
    purpose: Annotated[str, Str(16, choices=PURPOSES)]
    sealed_note: Annotated[bytes | None, Optional(SEALED_NOTE)]
    signature: Signature = UNSIGNED


@message(kind=7)
class RecordErase(Tx):
    """A patient crypto-shreds a record: nodes delete its ciphertext; the anchor stays, erased."""

    signer: PublicKey
    nonce: Nonce
    record_id: Hash
    signature: Signature = UNSIGNED


@message(kind=8)
class ValidatorVote(Tx):
    """An authority votes to add or remove an authority."""

    signer: PublicKey
    nonce: Nonce
    action: Annotated[str, Str(8, choices=VALIDATOR_ACTIONS)]
    subject: PublicKey
    name: Name
    signature: Signature = UNSIGNED


# The blinded categories of a patient's emergency policy (also in ledger/state.py).
AllowedTags = Annotated[
    tuple[bytes, ...], ListOf(Bytes(32), limits.GRANT_TAGS_MAX, sorted_unique=True)
]


@struct
class EmergencyWrap:
    """Inside an emergency policy: one existing record's data key wrapped for the emergency key."""

    record_id: Hash
    wrap: Annotated[bytes, EMERGENCY_WRAP_BYTES]


@message(kind=9)
class EmergencyPolicy(Tx):
    """A patient's break-glass policy, replacing the previous one: the blinded categories an
    emergency provider may read without a grant (empty: none), and emergency wraps for the
    patient's existing records that the policy now covers."""

    signer: PublicKey
    nonce: Nonce
    allowed_tags: AllowedTags
    wraps: Annotated[
        tuple[EmergencyWrap, ...],
        ListOf(StructOf(EmergencyWrap), limits.EMERGENCY_WRAPS_PER_TX_MAX)
    ]
    signature: Signature = UNSIGNED


@struct
class SealedSubshare:
    """One new holder's sub-share g(j), sealed to its node key (80 bytes)."""

    recipient: PublicKey
    sealed: Annotated[bytes, Bytes(80)]


# Shared with the ledger's state records of the same things (ledger/state.py).
Coefficients = Annotated[
    tuple[bytes, ...], ListOf(Bytes(32), limits.AUTHORITIES_MAX, items_min=1)
]
SealedSubshares = Annotated[
    tuple[SealedSubshare, ...],
    ListOf(StructOf(SealedSubshare), limits.AUTHORITIES_MAX, items_min=1)
]


@message(kind=10)
class EmergencyReshare(Tx):
    """An emergency share holder re-deals its share to the authority set in force from
    `epoch` (a height): commitments of its new polynomial, whose constant term is its share, and
    the new holders' sub-shares, each sealed to its holder. Once `threshold` holders have dealt,
    the new set holds the same key; the secret is never assembled (crypto/threshold.py)."""

    signer: PublicKey
    nonce: Nonce
    epoch: Annotated[int, Int(1, limits.HEIGHT_MAX)]
    coefficients: Coefficients
    sealed_shares: SealedSubshares
    signature: Signature = UNSIGNED


TX_CLASSES: Final = (
    ProviderRegister,
    ProviderRevoke,
    RecordAnchor,
    ConsentGrant,
    ConsentRevoke,
    AccessLog,
    RecordErase,
    ValidatorVote,
    EmergencyPolicy,
    EmergencyReshare,
)

AnyTx = (
    ProviderRegister
    | ProviderRevoke
    | RecordAnchor
    | ConsentGrant
    | ConsentRevoke
    | AccessLog
    | RecordErase
    | ValidatorVote
    | EmergencyPolicy
    | EmergencyReshare
)

def decode_tx(data: bytes) -> AnyTx:
    """Decode untrusted bytes into a transaction (signature not yet checked)."""
    tx: AnyTx = decode_message(data, TX_CLASSES, limits.TX_BYTES_MAX)  # type: ignore[assignment]
    return tx
