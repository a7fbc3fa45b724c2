"""The values the ledger keeps in its state, as wire messages (kinds 50-59): one per keyspace of
`ledger/state.py`, which owns the key layout and the views. Schemas, like every message, live in
`protocol/`; a wallet's answers (`protocol/client.py`) carry some of them as the node holds them.
"""

from __future__ import annotations

from typing import Annotated, Final

from healthnode import limits
from healthnode.protocol.fields import ChainId, Hash, Height, Name, PublicKey, TimeMs
from healthnode.protocol.genesis import Authority, EmergencyKey
from healthnode.protocol.schema import (
    Bytes,
    Int,
    ListOf,
    Message,
    Optional,
    Str,
    StructOf,
    message,
)
from healthnode.protocol.tx import (
    EMERGENCY_WRAP_BYTES,
    PURPOSES,
    ROLES,
    VALIDATOR_ACTIONS,
    AllowedTags,
    Coefficients,
    GrantActions,
    ScopeRecords,
    ScopeTags,
    SealedSubshares,
)

# Bound for decoding one state value read back from disk: the largest is a grant's scope.
STATE_VALUE_BYTES_MAX: Final = 64 * limits.KIB

OptionalHeight = Annotated[int | None, Optional(Int(1, limits.HEIGHT_MAX))]
OptionalTime = Annotated[int | None, Optional(Int(0, limits.TIME_MS_MAX))]
Tags = Annotated[
    tuple[bytes, ...],
    ListOf(Bytes(32), limits.TAGS_PER_RECORD_MAX, items_min=1, sorted_unique=True),
]


@message(kind=50)
class ChainMeta(Message):
    """Where the state stands: after block `height` (0 = genesis), its time and state root (the
    root hash of the state tree, ledger/smt.py), with the version that wrote the root node and
    whether it is a leaf, so that the tree can be read from it. The chain meta itself is the one
    state key outside the tree: it holds the root."""

    chain_id: ChainId
    height: Annotated[int, Int(0, limits.HEIGHT_MAX)]
    time_ms: TimeMs
    state_hash: Hash
    root_version: Annotated[int, Int(0, limits.HEIGHT_MAX)] = 0
    root_leaf: Annotated[int, Int(0, 1)] = 0


@message(kind=51)
class ProviderState(Message):
    authority: PublicKey  # the hospital node that registered it
    roles: Annotated[
        tuple[str, ...], ListOf(Str(16, choices=ROLES), len(ROLES), items_min=1, sorted_unique=True)
    ]
    display_name: Name
    registered_height: Height
    revoked_height: OptionalHeight


@message(kind=52)
class RecordState(Message):
    patient: PublicKey
    author: PublicKey
    ciphertext_hash: Hash
    ciphertext_bytes: Annotated[int, Int(1, limits.BLOB_BYTES_MAX)]
    tags: Tags
    supersedes: Annotated[bytes | None, Optional(Bytes(32))]
    superseded_by: Annotated[bytes | None, Optional(Bytes(32))]
    height: Height
    time_ms: TimeMs
    erased_height: OptionalHeight
    erased_time_ms: OptionalTime


@message(kind=53)
class GrantState(Message):
    patient: PublicKey
    grantee: PublicKey
    actions: GrantActions
    scope_records: ScopeRecords
    scope_tags: ScopeTags
    expires_at_ms: OptionalTime
    height: Height
    time_ms: TimeMs
    revoked_height: OptionalHeight
    revoked_time_ms: OptionalTime


@message(kind=54)
class AccessEntry(Message):
    """One line of a patient's audit trail: an access.log that was finalized."""

    tx_hash: Hash  # the access.log transaction (its sealed note, if any, is there)
    authority: PublicKey  # the node that released the record
    reader: PublicKey
    record_id: Hash
    grant_id: Annotated[bytes | None, Optional(Bytes(32))]
    break_glass: Annotated[int, Int(0, 1)]
    purpose: Annotated[str, Str(16, choices=PURPOSES)]
    height: Height
    time_ms: TimeMs


@message(kind=55)
class AuthoritySet(Message):
    """The authorities from one height on, in the order that rotates proposers."""

    authorities: Annotated[
        tuple[Authority, ...], ListOf(StructOf(Authority), limits.AUTHORITIES_MAX, items_min=1)
    ]

    @property
    def keys(self) -> tuple[bytes, ...]:
        return tuple(a.public_key for a in self.authorities)


@message(kind=56)
class ValidatorProposal(Message):
    """Open votes for one change of the authority set."""

    action: Annotated[str, Str(8, choices=VALIDATOR_ACTIONS)]
    subject: PublicKey
    name: Name
    voters: Annotated[
        tuple[bytes, ...], ListOf(Bytes(32), limits.AUTHORITIES_MAX, sorted_unique=True)
    ]


@message(kind=57)
class SignerQuota(Message):
    """Records and ciphertext bytes one signer anchored on one day of block time (UTC)."""

    day: Annotated[int, Int(0, limits.TIME_MS_MAX)]
    records: Annotated[int, Int(0, limits.NONCE_MAX)]
    ciphertext_bytes: Annotated[int, Int(0, limits.NONCE_MAX)]


@message(kind=58)
class SignerNonce(Message):
    nonce: Annotated[int, Int(0, limits.NONCE_MAX)]


@message(kind=59)
class EvidenceEntry(Message):
    """Committed evidence of an authority's equivocation."""

    offender: PublicKey
    height: Height  # the block that committed it
    evidence_hash: Hash


@message(kind=45)
class EmergencyKeyState(Message):
    """The network's break-glass key in force: public key, threshold, share commitments."""

    key: Annotated[EmergencyKey, StructOf(EmergencyKey)]
    epoch: Height  # the authority set (by its first height) whose members hold the shares
    dealers: Annotated[  # the old holders whose re-dealings made these shares (none at genesis)
        tuple[int, ...], ListOf(Int(1, limits.AUTHORITIES_MAX), limits.AUTHORITIES_MAX)
    ]


@message(kind=46)
class EmergencyPolicyState(Message):
    """A patient's break-glass policy: the blinded categories emergency providers may read."""

    allowed_tags: AllowedTags
    height: Height


@message(kind=47)
class EmergencyWrapState(Message):
    """A record's data key wrapped for the emergency key, bound to the record (TDH2)."""

    wrap: Annotated[bytes, EMERGENCY_WRAP_BYTES]
    height: Height


@message(kind=48)
class EmergencyDealingState(Message):
    """One holder's re-dealing of its share towards the authority set of `epoch`."""

    epoch: Height
    dealer_index: Annotated[int, Int(1, limits.AUTHORITIES_MAX)]
    coefficients: Coefficients
    sealed_shares: SealedSubshares
