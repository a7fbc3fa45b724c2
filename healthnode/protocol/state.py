"""The values the ledger keeps in its state, as wire messages (kinds 40-43, 45-59, 90, 93-99
and 101): one per keyspace of `ledger/state.py`, which owns the key layout and the views (and
two fixed-width values that are no messages: the count and the lines of a patient's acts by its
representatives, `ActLine`).
Schemas, like every message, live in `protocol/`; a wallet's answers (`protocol/client.py`)
carry some of them as the node holds them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, ClassVar, Final, Literal, TypeAlias

from msgspec import Meta

from healthnode import limits
from healthnode.protocol.fields import (
    Bytes32,
    ChainId,
    Hash,
    Height,
    Name,
    PublicKey,
    RulesVersion,
    TimeMs,
)
from healthnode.protocol.genesis import Authority, EmergencyKey
from healthnode.protocol.schema import SORTED_UNIQUE, Message, Struct
from healthnode.protocol.tx import (
    PURPOSES,
    ROLES,
    AllowedTags,
    Coefficients,
    EmergencyWrapBytes,
    EncryptedSubshares,
    GrantActions,
    PeerAddress,
    Purpose,
    RecipientIndex,
    RepresentativeScopes,
    Role,
    RoundNumber,
    ScopeRecords,
    ScopeTags,
    SealedSubshares,
    ValidatorAction,
)

# Bound for decoding one state value read back from disk: the largest is a grant's scope.
STATE_VALUE_BYTES_MAX: Final = 64 * limits.KIB

OptionalHeight = Annotated[int, Meta(ge=1, le=limits.HEIGHT_MAX)] | None
OptionalTime = Annotated[int, Meta(ge=0, le=limits.TIME_MS_MAX)] | None
Tags = Annotated[
    tuple[Bytes32, ...], Meta(min_length=1, max_length=limits.TAGS_PER_RECORD_MAX), SORTED_UNIQUE
]


class ChainMeta(Message, tag=50):
    """Where the state stands: after block `height` (0 = genesis), its time and state root (the
    root hash of the state tree, ledger/smt.py), with the version that wrote the root node and
    whether it is a leaf, so that the tree can be read from it. The chain meta itself is the one
    state key outside the tree: it holds the root."""

    chain_id: ChainId
    height: Annotated[int, Meta(ge=0, le=limits.HEIGHT_MAX)]
    time_ms: TimeMs
    state_hash: Hash
    root_version: Annotated[int, Meta(ge=0, le=limits.HEIGHT_MAX)] = 0
    root_leaf: Annotated[int, Meta(ge=0, le=1)] = 0


class ProviderState(Message, tag=51):
    authority: PublicKey  # the hospital node that registered it
    roles: Annotated[tuple[Role, ...], Meta(min_length=1, max_length=len(ROLES)), SORTED_UNIQUE]
    display_name: Name
    registered_height: Height
    revoked_height: OptionalHeight


class RecordState(Message, tag=52):
    patient: PublicKey
    author: PublicKey
    ciphertext_hash: Hash
    ciphertext_bytes: Annotated[int, Meta(ge=1, le=limits.BLOB_BYTES_MAX)]
    tags: Tags
    supersedes: Bytes32 | None
    superseded_by: Bytes32 | None
    height: Height
    time_ms: TimeMs
    erased_height: OptionalHeight
    erased_time_ms: OptionalTime


class GrantState(Message, tag=53):
    """A grant (either kind) as the ledger keeps it. `purposes` came with rules version 5: a
    grant made before names none, which means every purpose, and its bytes are those of before
    (an added field, protocol/schema.py)."""

    ADDED_FIELDS: ClassVar[int] = 1

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
    purposes: Annotated[tuple[Purpose, ...], Meta(max_length=len(PURPOSES)), SORTED_UNIQUE] = ()


class AccessEntry(Message, tag=54):
    """One line of a patient's audit trail: an access.log that was finalized."""

    tx_hash: Hash  # the access.log transaction (its sealed note, if any, is there)
    authority: PublicKey  # the node that released the record
    reader: PublicKey
    record_id: Hash
    grant_id: Bytes32 | None
    break_glass: Annotated[int, Meta(ge=0, le=1)]
    purpose: Purpose
    height: Height
    time_ms: TimeMs


class AuthoritySet(Message, tag=55):
    """The authorities from one height on, in the order that rotates proposers."""

    authorities: Annotated[
        tuple[Authority, ...], Meta(min_length=1, max_length=limits.AUTHORITIES_MAX)
    ]

    @property
    def keys(self) -> tuple[bytes, ...]:
        return tuple(a.public_key for a in self.authorities)


class ValidatorProposal(Message, tag=56):
    """Open votes for one change of the authority set."""

    action: ValidatorAction
    subject: PublicKey
    name: Name
    voters: Annotated[tuple[Bytes32, ...], Meta(max_length=limits.AUTHORITIES_MAX), SORTED_UNIQUE]


class RulesScheduled(Message, tag=49):
    """The rules version in force from the height this value is stored under, and the height
    whose block decided it (height 0: the genesis)."""

    rules_version: RulesVersion
    decided_height: Annotated[int, Meta(ge=0, le=limits.HEIGHT_MAX)]


class RulesProposal(Message, tag=90):
    """Open votes for one scheduled change of the ledger rules."""

    rules_version: RulesVersion
    height: Height
    voters: Annotated[tuple[Bytes32, ...], Meta(max_length=limits.AUTHORITIES_MAX), SORTED_UNIQUE]


class Purge(Struct):
    """One authority's statement that it purged an erased record, and the block it is in."""

    authority: PublicKey
    height: Height


class PurgeState(Message, tag=93):
    """The authorities that have purged an erased record, by key (RecordPurged)."""

    purges: Annotated[tuple[Purge, ...], Meta(min_length=1, max_length=limits.AUTHORITIES_MAX)]


class SignerQuota(Message, tag=57):
    """Records and ciphertext bytes one signer anchored on one day of block time (UTC)."""

    day: Annotated[int, Meta(ge=0, le=limits.TIME_MS_MAX)]
    records: Annotated[int, Meta(ge=0, le=limits.NONCE_MAX)]
    ciphertext_bytes: Annotated[int, Meta(ge=0, le=limits.NONCE_MAX)]


class SignerDailyTxs(Message, tag=94):
    """Grants and emergency policies one signer made on one day of block time (UTC); written from
    rules version 3 (ledger/rules/budgets.py)."""

    day: Annotated[int, Meta(ge=0, le=limits.TIME_MS_MAX)]
    grants: Annotated[int, Meta(ge=0, le=limits.NONCE_MAX)]
    emergency_policies: Annotated[int, Meta(ge=0, le=limits.NONCE_MAX)]


class SignerNonce(Message, tag=58):
    nonce: Annotated[int, Meta(ge=0, le=limits.NONCE_MAX)]


class EvidenceEntry(Message, tag=59):
    """Committed evidence of an authority's equivocation."""

    offender: PublicKey
    height: Height  # the block that committed it
    evidence_hash: Hash


class EmergencyKeyState(Message, tag=45):
    """The network's break-glass key in force: public key, threshold, share commitments."""

    key: EmergencyKey
    # Up to rules version 3: the authority set (by its first height) whose members hold the
    # shares. From 4: the block whose end made these shares (the round that closed there).
    epoch: Height
    dealers: Annotated[
        tuple[Annotated[int, Meta(ge=1, le=limits.AUTHORITIES_MAX)], ...],
        Meta(max_length=limits.AUTHORITIES_MAX),
    ]


class EmergencyPolicyState(Message, tag=46):
    """A patient's break-glass policy: the blinded categories emergency providers may read."""

    allowed_tags: AllowedTags
    height: Height


class EmergencyWrapState(Message, tag=47):
    """A record's data key wrapped for the emergency key, bound to the record (TDH2)."""

    wrap: EmergencyWrapBytes
    height: Height


class EmergencyDealingState(Message, tag=48):
    """One holder's re-dealing of its share towards the authority set of `epoch`."""

    epoch: Height
    dealer_index: Annotated[int, Meta(ge=1, le=limits.AUTHORITIES_MAX)]
    coefficients: Coefficients
    sealed_shares: SealedSubshares


# --- the key's rounds (rules version 4 on; ledger/rules/rounds.py) ---------------------------

if TYPE_CHECKING:
    RoundPurpose: TypeAlias = str
    RoundPhase: TypeAlias = str
else:
    RoundPurpose = Literal["found", "refresh", "reshare"]
    RoundPhase = Literal["keys", "deals", "verdicts", "closed"]
Holders = Annotated[tuple[PublicKey, ...], Meta(min_length=1, max_length=limits.AUTHORITIES_MAX)]


class EmergencyRound(Message, tag=40):
    """The emergency key's round: open (its phase, and the block at whose end that phase began)
    or the last one closed (`outcome` says how). Recipient j is `target[j-1]`."""

    number: RoundNumber
    purpose: RoundPurpose
    opened: Height
    phase: RoundPhase
    phase_since: Height
    phase_since_ms: TimeMs  # that block's time
    target: Holders  # the authority set the new shares are for, in its order
    threshold: Annotated[int, Meta(ge=1, le=limits.AUTHORITIES_MAX)]  # of the new shares
    needed: Annotated[int, Meta(ge=1, le=limits.AUTHORITIES_MAX)]  # good dealings to close
    recipients: Annotated[tuple[RecipientIndex, ...], Meta(max_length=limits.AUTHORITIES_MAX),
                          SORTED_UNIQUE]  # with an epoch key: set when the keys phase ends
    outcome: Annotated[str, Meta(max_length=200)]  # "" while open; "done", or why it failed


class EmergencyEpochKeyState(Message, tag=41):
    """An authority's epoch key for one round (`emergency.epoch_key`)."""

    public_key: Bytes32


class EmergencyDealState(Message, tag=42):
    """A dealer's dealing in a round (`emergency.deal`), and the recipient whose founded
    complaint disqualified it, if one did."""

    dealer: PublicKey
    dealer_index: RecipientIndex  # its share's index (refresh, re-sharing), else its place
    coefficients: Coefficients
    subshares: EncryptedSubshares
    disqualified_by: PublicKey | None


class EmergencyVerdictState(Message, tag=43):
    """A recipient's verdict in a round: the dealers it showed to be wrong."""

    complaints: Annotated[tuple[PublicKey, ...], Meta(max_length=limits.AUTHORITIES_MAX),
                          SORTED_UNIQUE]


class EmergencyRefreshVotes(Message, tag=95):
    """The holders who asked for a refresh of the shares made at `epoch`."""

    epoch: Height
    voters: Annotated[tuple[PublicKey, ...], Meta(min_length=1, max_length=limits.AUTHORITIES_MAX),
                      SORTED_UNIQUE]


class EmergencyKeyRound(Message, tag=96):
    """The round that made the key state in force (at the end of block `epoch`), so that a
    holder takes up its share from that round's dealings even after the next round opened."""

    round: RoundNumber
    purpose: RoundPurpose
    epoch: Height


# --- where the nodes are (rules version 4 on; ledger/rules/peers.py) -------------------------

class ObserverState(Message, tag=98):
    """An observer that an authority vouched for (`node.observer`)."""

    sponsor: PublicKey
    name: Name
    height: Height


class AddressState(Message, tag=99):
    """A node's announced addresses (`node.announce`), without the /p2p/ part."""

    addresses: Annotated[tuple[PeerAddress, ...],
                         Meta(min_length=1, max_length=limits.PEER_ADDRESSES_MAX)]
    height: Height


class KeyRotation(Message, tag=97):
    """An authority's replacement of its node key (`node.rotate`), under the old key: waiting
    for its block (`rotdue/`), then, from `height` on, what retired the old key (`rotated/`)."""

    new_key: PublicKey
    height: Height  # the first block whose authority set has the new key
    decided_height: Height  # the block of the `node.rotate`


# --- representatives (rules version 5 on; ledger/rules/representatives.py) ----------------------

class AppointmentState(Message, tag=101):
    """A patient's appointment of a representative (`representative.appoint`), under
    patient | representative: in force from its block until `ends_at_ms` or its end."""

    scopes: RepresentativeScopes
    ends_at_ms: TimeMs
    appointed_tx: Hash  # the representative.appoint (its key wraps are there)
    height: Height
    time_ms: TimeMs
    ended_height: OptionalHeight  # ended early (representative.end)
    ended_time_ms: OptionalTime
    # The patient's tag key sealed to the representative (from the appointment), proven to it
    # with the appointment, so that it names categories as the patient does.
    tag_key_wrap: Annotated[bytes, Meta(min_length=1, max_length=256)] | None


@dataclass(frozen=True, slots=True)
class ActLine:
    """One line of a patient's acts by its representatives (`ledger/state.py` ACT_LINE): who
    acted, the transaction (a `representative.act`, or a `record.anchor` the representative
    signed), its kind (the message kind of the act: 3 anchor, 4 grant, 100 grant with
    purposes, 5 revoke, 27 revoke by provider, 9 emergency policy; one byte holds every kind) and
    its block. Fixed width (81 bytes), so that it needs no kind of its own and its decoding has
    nothing to get wrong."""

    representative: bytes
    tx_hash: bytes
    kind: int
    height: int
    time_ms: int

    WIDTH: ClassVar[int] = 32 + 32 + 1 + 8 + 8

    def encode(self) -> bytes:
        return (self.representative + self.tx_hash + self.kind.to_bytes(1, "big")
                + self.height.to_bytes(8, "big") + self.time_ms.to_bytes(8, "big"))

    @classmethod
    def decode(cls, raw: bytes) -> ActLine:
        """ValueError unless `raw` is one line."""
        if len(raw) != cls.WIDTH:
            raise ValueError(f"an act line is {cls.WIDTH} bytes, not {len(raw)}")
        return cls(raw[:32], raw[32:64], raw[64], int.from_bytes(raw[65:73], "big"),
                   int.from_bytes(raw[73:81], "big"))


def act_count_encode(count: int) -> bytes:
    return count.to_bytes(8, "big")


def act_count_decode(raw: bytes | None) -> int:
    """The number of a patient's act lines (none: 0); ValueError unless 8 bytes."""
    if raw is None:
        return 0
    if len(raw) != 8:
        raise ValueError(f"an act count is 8 bytes, not {len(raw)}")
    return int.from_bytes(raw, "big")
