"""The transaction kinds: every change to the chain is one of these, signed by its author.

Each transaction is `[kind, version, signer, nonce, ...fields, signature]`. The nonce is per signer
and strictly increasing (the ledger requires the next one), so a transaction cannot be replayed.
Who may sign which kind, and what else must hold, is the ledger's business (healthnode/ledger);
this module fixes only the shape. Categories never appear in clear: `tags` are blinded with the
patient's tag key (crypto.keyed_digest). docs/protocol.md lists the kinds in prose.
"""

from __future__ import annotations

import ipaddress
import re
import typing
from typing import TYPE_CHECKING, Annotated, ClassVar, Final, Literal, TypeAlias

from msgspec import Meta

from healthnode import crypto, limits
from healthnode.crypto import DOMAIN_ROTATE, DOMAIN_TX
from healthnode.protocol.fields import (
    UNSIGNED,
    Bytes32,
    Hash,
    Height,
    Name,
    Nonce,
    PublicKey,
    RulesVersion,
    Signature,
)
from healthnode.protocol.schema import SORTED_UNIQUE, Struct, decode_message
from healthnode.protocol.signed import Signed

# Words from a fixed set: msgspec refuses any other. (Type checkers see `str`, which is what
# the wallet's and the node's code hand in, checked where it is taken from a user.)
if TYPE_CHECKING:
    Role: TypeAlias = str
    Action: TypeAlias = str
    EmergencyPurpose: TypeAlias = str
    Purpose: TypeAlias = str
    ValidatorAction: TypeAlias = str
    RepresentativeScope: TypeAlias = str
else:
    Role = Literal["clinician", "lab", "pharmacy", "emergency"]
    Action = Literal["read", "write"]
    # Break-glass reads carry one of these purpose codes (the clinician's words go in a sealed
    # note).
    EmergencyPurpose = Literal["emergency", "er-unconscious", "er-life-threat", "er-medication"]
    Purpose = Literal["treatment", "payment", "operations", "research", "patient-request",
                      "emergency", "er-unconscious", "er-life-threat", "er-medication"]
    ValidatorAction = Literal["add", "remove"]
    # What a patient's representative may do for it (rules version 5 on; docs/ledger.md,
    # "Representatives"): read its records, grant and revoke, set its emergency policy, write
    # records. Never: appoint another representative, erase, rotate the patient's key.
    RepresentativeScope = Literal["grant", "policy", "read", "write"]
ROLES: Final = frozenset(typing.get_args(Role))
ACTIONS: Final = frozenset(typing.get_args(Action))
EMERGENCY_PURPOSES: Final = frozenset(typing.get_args(EmergencyPurpose))
PURPOSES: Final = frozenset(typing.get_args(Purpose))
# Each purpose's code in FHIR's purpose-of-use value set (HL7 v3 ActReason,
# http://terminology.hl7.org/CodeSystem/v3-ActReason), for what a wallet shows and exports. The
# four emergency purposes are all emergency treatment there; the chain keeps our finer words.
PURPOSE_CODES: Final = {
    "treatment": "TREAT", "payment": "HPAYMT", "operations": "HOPERAT", "research": "HRESCH",
    "patient-request": "PATRQT", "emergency": "ETREAT", "er-unconscious": "ETREAT",
    "er-life-threat": "ETREAT", "er-medication": "ETREAT",
}
assert set(PURPOSE_CODES) == PURPOSES, "every purpose has its FHIR code"
VALIDATOR_ACTIONS: Final = frozenset(typing.get_args(ValidatorAction))
REPRESENTATIVE_SCOPES: Final = frozenset(typing.get_args(RepresentativeScope))

# A sealed box of a 32-byte data key is 80 bytes; allow other wrap schemes up to the limit.
KeyWrapBytes = Annotated[bytes, Meta(min_length=1, max_length=limits.KEY_WRAP_BYTES_MAX)]
# R, the AEAD of a 32-byte data key, R̄ and the TDH2 proof (e, f): threshold.WRAP_BYTES.
EmergencyWrapBytes = Annotated[bytes, Meta(min_length=176, max_length=176)]
# A sealed box adds 48 bytes (ephemeral key and MAC) to the note.
SealedNote = Annotated[bytes, Meta(min_length=1, max_length=limits.SEALED_NOTE_BYTES_MAX + 48)]


class KeyWrap(Struct):
    """A record's data key sealed to one reader (the patient or a grantee)."""

    recipient: PublicKey
    sealed_key: KeyWrapBytes


class RecordKeyWrap(Struct):
    """Inside a grant: one record's data key re-sealed by the patient for the grantee."""

    record_id: Hash
    sealed_key: KeyWrapBytes


class Tx(Signed):
    DOMAIN: ClassVar[str] = DOMAIN_TX
    if TYPE_CHECKING:  # a field of each kind, in its place among the fields
        @property
        def nonce(self) -> int: ...


class ProviderRegister(Tx, tag=1):
    """An authority (hospital node) vouches for a provider key and its roles."""

    signer: PublicKey
    nonce: Nonce
    provider: PublicKey
    roles: Annotated[tuple[Role, ...], Meta(min_length=1, max_length=len(ROLES)), SORTED_UNIQUE]
    display_name: Name
    signature: Signature = UNSIGNED


class ProviderRevoke(Tx, tag=2):
    """The registering authority ends a provider key (left the hospital, key lost)."""

    signer: PublicKey
    nonce: Nonce
    provider: PublicKey
    signature: Signature = UNSIGNED


class RecordAnchor(Tx, tag=3):
    """Anchors one encrypted record: its ciphertext hash and size, blinded tags and key wraps.
    The record id is this transaction's hash."""

    signer: PublicKey
    nonce: Nonce
    patient: PublicKey
    ciphertext_hash: Hash
    ciphertext_bytes: Annotated[int, Meta(ge=1, le=limits.BLOB_BYTES_MAX)]
    tags: Annotated[
        tuple[Bytes32, ...],
        Meta(min_length=1, max_length=limits.TAGS_PER_RECORD_MAX),
        SORTED_UNIQUE,
    ]
    key_wraps: Annotated[
        tuple[KeyWrap, ...], Meta(min_length=1, max_length=limits.KEY_WRAPS_PER_ANCHOR_MAX)
    ]
    supersedes: Bytes32 | None
    # The data key wrapped for the network's emergency key (threshold ElGamal), when the patient's
    # emergency policy covers this record's categories; nil otherwise.
    emergency_wrap: EmergencyWrapBytes | None = None
    signature: Signature = UNSIGNED



# A grant's actions and scope, as the transaction states them and the state keeps them.
GrantActions = Annotated[
    tuple[Action, ...], Meta(min_length=1, max_length=len(ACTIONS)), SORTED_UNIQUE
]
ScopeRecords = Annotated[
    tuple[Bytes32, ...], Meta(max_length=limits.GRANT_RECORDS_MAX), SORTED_UNIQUE
]
ScopeTags = Annotated[tuple[Bytes32, ...], Meta(max_length=limits.GRANT_TAGS_MAX), SORTED_UNIQUE]
# The purposes a grant lets its grantee read for (rules version 5 on): a set of purpose words.
GrantPurposes = Annotated[
    tuple[Purpose, ...], Meta(min_length=1, max_length=len(PURPOSES)), SORTED_UNIQUE
]

class ConsentGrant(Tx, tag=4):
    """A patient lets `grantee` read and/or write records in scope (ids and/or blinded tags) until
    `expires_at_ms` (block time; nil = until revoked). The grant id is this transaction's hash."""

    signer: PublicKey
    nonce: Nonce
    grantee: PublicKey
    actions: GrantActions
    scope_records: ScopeRecords
    scope_tags: ScopeTags
    expires_at_ms: Annotated[int, Meta(ge=0, le=limits.TIME_MS_MAX)] | None
    key_wraps: Annotated[tuple[RecordKeyWrap, ...], Meta(max_length=limits.GRANT_RECORDS_MAX)]
    # The patient's tag key sealed to the grantee, so a writer can blind categories.
    tag_key_wrap: Annotated[bytes, Meta(min_length=1, max_length=256)] | None
    signature: Signature = UNSIGNED


class ConsentGrantPurposes(Tx, tag=100):
    """`consent.grant` with the purposes the grantee may read for (rules version 5 on): the
    fields of a ConsentGrant, then `purposes`. A ConsentGrant (kind 4) keeps its bytes and its
    meaning, every purpose (docs/ledger.md, "Purposes")."""

    signer: PublicKey
    nonce: Nonce
    grantee: PublicKey
    actions: GrantActions
    scope_records: ScopeRecords
    scope_tags: ScopeTags
    expires_at_ms: Annotated[int, Meta(ge=0, le=limits.TIME_MS_MAX)] | None
    key_wraps: Annotated[tuple[RecordKeyWrap, ...], Meta(max_length=limits.GRANT_RECORDS_MAX)]
    tag_key_wrap: Annotated[bytes, Meta(min_length=1, max_length=256)] | None
    purposes: GrantPurposes
    signature: Signature = UNSIGNED


# Either kind of grant: a grant id is the hash of one of these.
AnyGrant: TypeAlias = ConsentGrant | ConsentGrantPurposes
GRANT_CLASSES: Final = (ConsentGrant, ConsentGrantPurposes)


def grant_purposes(grant: AnyGrant) -> tuple[str, ...]:
    """The purposes a grant transaction names; () for a ConsentGrant, which names none and
    allows every purpose."""
    return grant.purposes if isinstance(grant, ConsentGrantPurposes) else ()


class ConsentRevoke(Tx, tag=5):
    """A patient ends one of its grants."""

    signer: PublicKey
    nonce: Nonce
    grant_id: Hash
    signature: Signature = UNSIGNED


class AccessLog(Tx, tag=6):
    """An authority records that `reader` was given `record_id`, under a grant or break-glass."""

    signer: PublicKey
    nonce: Nonce
    reader: PublicKey
    patient: PublicKey
    record_id: Hash
    grant_id: Bytes32 | None
    break_glass: Annotated[int, Meta(ge=0, le=1)]
    purpose: Purpose
    sealed_note: SealedNote | None
    signature: Signature = UNSIGNED


class RecordErase(Tx, tag=7):
    """A patient crypto-shreds a record: nodes delete its ciphertext; the anchor stays, erased."""

    signer: PublicKey
    nonce: Nonce
    record_id: Hash
    signature: Signature = UNSIGNED


class ValidatorVote(Tx, tag=8):
    """An authority votes to add or remove an authority."""

    signer: PublicKey
    nonce: Nonce
    action: ValidatorAction
    subject: PublicKey
    name: Name
    signature: Signature = UNSIGNED


class RulesVote(Tx, tag=11):
    """An authority votes that the ledger's rules become `rules_version` from block `height` on
    (ledger/rules/governance.py: a quorum's vote schedules it, and every node switches at
    that block)."""

    signer: PublicKey
    nonce: Nonce
    rules_version: RulesVersion
    height: Height
    signature: Signature = UNSIGNED


class RecordPurged(Tx, tag=12):
    """An authority states that it has purged an erased record: the ciphertext is deleted and
    its key range compacted, so that the bytes have left its files (rules version 3 on)."""

    signer: PublicKey
    nonce: Nonce
    record_id: Hash
    signature: Signature = UNSIGNED


# The blinded categories of a patient's emergency policy (also in ledger/state.py).
AllowedTags = Annotated[tuple[Bytes32, ...], Meta(max_length=limits.GRANT_TAGS_MAX), SORTED_UNIQUE]


class EmergencyWrap(Struct):
    """Inside an emergency policy: one existing record's data key wrapped for the emergency key."""

    record_id: Hash
    wrap: EmergencyWrapBytes


class EmergencyPolicy(Tx, tag=9):
    """A patient's break-glass policy, replacing the previous one: the blinded categories an
    emergency provider may read without a grant (empty: none), and emergency wraps for the
    patient's existing records that the policy now covers."""

    signer: PublicKey
    nonce: Nonce
    allowed_tags: AllowedTags
    wraps: Annotated[tuple[EmergencyWrap, ...], Meta(max_length=limits.EMERGENCY_WRAPS_PER_TX_MAX)]
    signature: Signature = UNSIGNED


class SealedSubshare(Struct):
    """One new holder's sub-share g(j), sealed to its node key (80 bytes)."""

    recipient: PublicKey
    sealed: Annotated[bytes, Meta(min_length=80, max_length=80)]


# Shared with the ledger's state records of the same things (ledger/state.py).
Coefficients = Annotated[tuple[Bytes32, ...], Meta(min_length=1, max_length=limits.AUTHORITIES_MAX)]
SealedSubshares = Annotated[
    tuple[SealedSubshare, ...], Meta(min_length=1, max_length=limits.AUTHORITIES_MAX)
]


class EmergencyReshare(Tx, tag=10):
    """An emergency share holder re-deals its share to the authority set in force from
    `epoch` (a height): commitments of its new polynomial, whose constant term is its share, and
    the new holders' sub-shares, each sealed to its holder. Once `threshold` holders have dealt,
    the new set holds the same key; the secret is never assembled (crypto/threshold.py)."""

    signer: PublicKey
    nonce: Nonce
    epoch: Annotated[int, Meta(ge=1, le=limits.HEIGHT_MAX)]
    coefficients: Coefficients
    sealed_shares: SealedSubshares
    signature: Signature = UNSIGNED


# --- the key's rounds (rules version 4 on; ledger/rules/rounds.py, crypto/dkg.py) ----------------
# A round makes a new set of emergency shares: the first key of a network (a distributed key
# generation, no dealer), a refresh of the shares in force (same key, new shares), or a re-sharing
# to a new authority set (same key). Each round has three phases, each a transaction per
# authority: an epoch key, a dealing encrypted to the epoch keys, and a verdict on the dealings.

RoundNumber = Annotated[int, Meta(ge=1, le=limits.HEIGHT_MAX)]
Proof = Annotated[bytes, Meta(min_length=64, max_length=64)]
RecipientIndex = Annotated[int, Meta(ge=1, le=limits.AUTHORITIES_MAX)]


class EmergencyEpochKey(Tx, tag=13):
    """An authority's public key for one round of the emergency key (`X = x·B` on the Ed25519
    group): the dealers encrypt its sub-shares to it, and its node deletes `x` when the round is
    over, so that old chain data and a stolen node key later open no old sub-share."""

    signer: PublicKey
    nonce: Nonce
    round: RoundNumber
    public_key: Bytes32
    proof: Proof  # that the signer knows `x`, for this chain, round and signer (crypto/dkg.py)
    signature: Signature = UNSIGNED


class EncryptedSubshare(Struct):
    """One recipient's sub-share `g(j)`, encrypted to its epoch key `X_j`: `R = r·B` and
    `g(j) + H(r·X_j, ...) mod L` (crypto/dkg.py), which a complaint can open in public, and a
    proof that the dealer knows `r`, so that a complaint opens nothing else."""

    index: RecipientIndex  # j: the recipient's place in the round's authority set, from 1
    ephemeral: Bytes32
    masked: Bytes32
    proof: Proof  # that the dealer knows `r`, bound to the sub-share's context and `masked`


EncryptedSubshares = Annotated[
    tuple[EncryptedSubshare, ...], Meta(min_length=1, max_length=limits.AUTHORITIES_MAX)
]


class EmergencyDeal(Tx, tag=14):
    """A dealer's part of a round: commitments `C_k = a_k·B` of its polynomial `g` of degree
    t-1 (in a refresh or a re-sharing, `g(0)` is its share, so `C_0` is its share's commitment;
    in the first round `g(0)` is a random secret of its own) and each recipient's `g(j)`,
    encrypted to that recipient's epoch key."""

    signer: PublicKey
    nonce: Nonce
    round: RoundNumber
    coefficients: Coefficients
    subshares: EncryptedSubshares
    signature: Signature = UNSIGNED


class Complaint(Struct):
    """A recipient shows that a dealer's sub-share for it is wrong: it reveals `K = x·R` of that
    sub-share with a Chaum-Pedersen proof that `log_B(X) = log_R(K)`, so that anyone can open the
    sub-share and check it against the dealer's commitments (an unfounded complaint is refused)."""

    dealer: PublicKey
    shared: Bytes32
    proof: Proof


class EmergencyVerdict(Tx, tag=15):
    """A recipient's verdict on a round's dealings: the dealers whose sub-share for it is wrong,
    each with its proof (empty: every dealing is good). Once every recipient has given one, the
    round closes without waiting for its deadline."""

    signer: PublicKey
    nonce: Nonce
    round: RoundNumber
    complaints: Annotated[tuple[Complaint, ...], Meta(max_length=limits.AUTHORITIES_MAX)]
    signature: Signature = UNSIGNED


class EmergencyRefresh(Tx, tag=16):
    """A share holder asks for a refresh of the shares of the key in force since `epoch` (a
    height). When the key's threshold of holders have asked, a refresh round opens: the same key,
    new shares, and the old ones useless together with the new."""

    signer: PublicKey
    nonce: Nonce
    epoch: Height
    signature: Signature = UNSIGNED


class ConsentRevokeProvider(Tx, tag=27):
    """A patient ends, in one transaction, every grant of its own to `grantee` that is neither
    revoked nor expired (at most limits.GRANTS_REVOKED_PER_TX_MAX of them; rules version 5 on)."""

    signer: PublicKey
    nonce: Nonce
    grantee: PublicKey
    signature: Signature = UNSIGNED


# --- where the nodes are (rules version 4 on; ledger/rules/peers.py) --------------------------

# An address a node can be dialled at, without its /p2p/ part (the dialler adds the peer id of
# the key that announced it): a host (IPv4, IPv6 or a DNS name) and a TCP port.
# (\Z, not $: a pattern is searched, and $ would let a final newline through.)
PEER_ADDRESS_PATTERN: Final = (r"^/(ip4/[0-9.]{7,15}|ip6/[0-9a-fA-F:.]{2,45}|"
                                r"dns[46]?/[A-Za-z0-9.-]{1,170})/tcp/[0-9]{1,5}\Z")
PeerAddress = Annotated[str, Meta(min_length=12, max_length=limits.PEER_ADDRESS_CHARS_MAX,
                                  pattern=PEER_ADDRESS_PATTERN)]


_PEER_ADDRESS: Final = re.compile(PEER_ADDRESS_PATTERN)


def peer_address_problem(address: str) -> str | None:
    """What is wrong with an address to announce: not of `PeerAddress`'s shape, or of it but an
    IP that is none (or unspecified, or multicast), or a port outside 1..65535. None: dialable.
    The ledger refuses such an announcement, a node's config such an `announce`, and a node
    announces none of its listen addresses that is one."""
    if _PEER_ADDRESS.search(address) is None:
        return ("not /ip4/, /ip6/ or /dns*/ with a host, then /tcp/ and a port (no /p2p/: the "
                "peer id is the announcing node's own)")
    _, kind, host, _, port = address.split("/")
    if not 1 <= int(port) <= 65_535:
        return f"port {port} is outside 1..65535"
    if kind in ("ip4", "ip6"):
        try:
            parsed = ipaddress.ip_address(host)
        except ValueError:
            return f"{host!r} is not an IPv{kind[-1]} address"
        if parsed.version != int(kind[-1]) or parsed.is_unspecified or parsed.is_multicast:
            return f"{host!r} is not a dialable IPv{kind[-1]} address"
    return None


class NodeObserver(Tx, tag=17):
    """An authority vouches for (`add`) or ends (`remove`) an observer: a node that follows the
    chain without voting, such as a hospital that will join, which every authority then lets in
    and serves, and whose announced addresses every authority dials."""

    signer: PublicKey
    nonce: Nonce
    action: ValidatorAction
    subject: PublicKey
    name: Name
    signature: Signature = UNSIGNED


class NodeAnnounce(Tx, tag=18):
    """A node (an authority, or an observer an authority vouched for) says where it can be
    dialled, signed by its node key; it replaces the node's previous announcement."""

    signer: PublicKey
    nonce: Nonce
    addresses: Annotated[tuple[PeerAddress, ...],
                         Meta(min_length=1, max_length=limits.PEER_ADDRESSES_MAX)]
    signature: Signature = UNSIGNED


# --- a hospital replaces its node key (rules version 4 on; ledger/rules/rotation.py) ------------

class NodeRotate(Tx, tag=19):
    """An authority replaces its node key: from block `height` on, the authority set has
    `new_key` in the signer's place (same name, same position) and the signer's emergency share
    commitment is relabelled to `new_key`; the signer's key then signs nothing more. Signed by
    the old key (the signer) as every transaction is, and by the new key over (chain id, old key,
    new key, height) in `new_signature`, so that nobody hands its place to a key it does not
    hold (a typo, or a key of another hospital's)."""

    signer: PublicKey
    nonce: Nonce
    new_key: PublicKey
    height: Height
    new_signature: Signature
    signature: Signature = UNSIGNED

    @staticmethod
    def new_key_consent(new: crypto.Identity, chain_id: str, old_key: bytes,
                        height: int) -> bytes:
        """The new key's signature that it takes `old_key`'s place from `height` on."""
        return new.sign(DOMAIN_ROTATE, chain_id, [old_key, new.public_key, height])

    def new_key_consents(self, chain_id: str) -> bool:
        """Whether `new_signature` is the new key's consent to this rotation on this chain."""
        return crypto.verify(self.new_key, self.new_signature, DOMAIN_ROTATE, chain_id,
                             [self.signer, self.new_key, self.height])


# --- representatives (rules version 5 on; ledger/rules/representatives.py) ---------------------

RepresentativeScopes = Annotated[tuple[RepresentativeScope, ...],
                                 Meta(min_length=1, max_length=len(REPRESENTATIVE_SCOPES)),
                                 SORTED_UNIQUE]
# The act's placeholder signature: the act is the patient's transaction as the patient would
# sign it, but the representative's signature over the whole `representative.act` stands for it.
ACT_UNSIGNED: Final = bytes(crypto.SIGNATURE_BYTES)


class RepresentativeAppoint(Tx, tag=37):
    """A patient (the signer) appoints `representative` to act for it within `scopes` until
    `ends_at_ms` (block time: a date, or for a minor the date of coming of age), replacing an
    appointment of the same representative. `key_wraps` carry the data keys of existing records
    for a representative that may read; `tag_key_wrap` the patient's tag key, sealed to the
    representative, so that it can name categories in grants, policies and records."""

    signer: PublicKey
    nonce: Nonce
    representative: PublicKey
    scopes: RepresentativeScopes
    ends_at_ms: Annotated[int, Meta(ge=0, le=limits.TIME_MS_MAX)]
    key_wraps: Annotated[tuple[RecordKeyWrap, ...], Meta(max_length=limits.GRANT_RECORDS_MAX)]
    tag_key_wrap: Annotated[bytes, Meta(min_length=1, max_length=256)] | None
    signature: Signature = UNSIGNED


class RepresentativeEnd(Tx, tag=38):
    """The patient, or the representative itself, ends an appointment before its date."""

    signer: PublicKey
    nonce: Nonce
    patient: PublicKey
    representative: PublicKey
    signature: Signature = UNSIGNED


class RepresentativeAct(Tx, tag=39):
    """A representative (the signer) acts for a patient: `act` is the patient's own grant (of
    either kind), revoke (of one grant or by provider) or emergency policy, with the patient as
    its signer, this transaction's nonce as its nonce and `ACT_UNSIGNED` as its signature. The
    ledger applies it as the patient's after checking that an appointment in force covers it; a
    grant made so has this transaction's hash as its id. No other kind can be an act: a
    representative never appoints, erases or rotates a key. The kinds of rules version 5
    (`consent.grant_purposes`, `consent.revoke_provider`) are acts only where those kinds are."""

    signer: PublicKey
    nonce: Nonce
    act: (ConsentGrant | ConsentGrantPurposes | ConsentRevoke | ConsentRevokeProvider
          | EmergencyPolicy)
    signature: Signature = UNSIGNED

    @property
    def patient(self) -> bytes:
        return self.act.signer


ActKind = (ConsentGrant | ConsentGrantPurposes | ConsentRevoke | ConsentRevokeProvider
           | EmergencyPolicy)


def acted(tx: AnyTx) -> AnyTx:
    """The transaction as its patient's: the act inside a `representative.act`, else `tx`."""
    return tx.act if isinstance(tx, RepresentativeAct) else tx


# The kinds of transaction whose hash is a grant id: a grant of either kind, or a
# representative's act that carries one (`grant_made`).
GRANT_ID_CLASSES: Final = (*GRANT_CLASSES, RepresentativeAct)


def grant_made(tx: AnyTx) -> AnyGrant | None:
    """The grant that `tx` makes under its own hash: `tx` itself when a grant of either kind,
    the grant a representative's act carries, else None."""
    grant = acted(tx)
    return grant if isinstance(grant, GRANT_CLASSES) else None


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
    RulesVote,
    RecordPurged,
    EmergencyEpochKey,
    EmergencyDeal,
    EmergencyVerdict,
    EmergencyRefresh,
    NodeObserver,
    NodeAnnounce,
    NodeRotate,
    ConsentGrantPurposes,
    ConsentRevokeProvider,
    RepresentativeAppoint,
    RepresentativeEnd,
    RepresentativeAct,
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
    | RulesVote
    | RecordPurged
    | EmergencyEpochKey
    | EmergencyDeal
    | EmergencyVerdict
    | EmergencyRefresh
    | NodeObserver
    | NodeAnnounce
    | NodeRotate
    | ConsentGrantPurposes
    | ConsentRevokeProvider
    | RepresentativeAppoint
    | RepresentativeEnd
    | RepresentativeAct
)

def decode_tx(data: bytes) -> AnyTx:
    """Decode untrusted bytes into a transaction (signature not yet checked)."""
    tx: AnyTx = decode_message(data, TX_CLASSES, limits.TX_BYTES_MAX)  # type: ignore[assignment]
    return tx
