"""Every rule of who may write, read, grant and erase: one place, pure functions.

Theory of operation
-------------------
`check_tx(view, tx, now)` answers whether `tx` would be accepted at block context `now` (height,
block time, authorities); the mempool asks it on entry. `apply_block(view, block)` runs every
transaction of a finalized or proposed block through the same code path in order, over an
`Overlay`, and returns the state changes and the state hash the block's header must carry.
`build_block` is the proposer's side: it picks the candidate transactions that pass, in order,
and produces the header fields from the same execution. There is no second implementation of any
rule anywhere: mempool, proposer, validator and catch-up all come through `_apply_tx`.

Each transaction handler first checks everything and raises `Reject` with a named `Reason`, and
only then writes; so a rejected transaction leaves no trace in the overlay.

Time in every rule is the block's time (`BlockContext.time_ms`), which the proposer sets and
consensus bounds: never a node's clock, so every node decides alike. The state hash is the root
of the state tree (`ledger/smt.py`): a Merkle root over every state key and value, so two nodes
whose state diverged disagree on the very next header, and one key's value or absence can be
proven against a header. A block's execution carries the tree nodes it writes, for the store to
write in the same batch as the block.

docs/ledger.md states these rules in words for a privacy officer.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Container, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from healthnode import limits, threshold
from healthnode.codec import CodecError, pack, unpack
from healthnode.crypto import digest
from healthnode.errors import HealthnodeError
from healthnode.ledger import smt
from healthnode.ledger.state import (
    AUDIT,
    AUTHORITY_SET,
    CIPHERTEXT,
    EMERGENCY_DEALING,
    EMERGENCY_KEY,
    EMERGENCY_POLICY,
    EMERGENCY_WRAP,
    EVIDENCE,
    GENESIS,
    GRANT,
    GRANTEE_GRANT,
    INDEX_PREFIXES,
    META_KEY,
    NONCE,
    PAIR_GRANT,
    PATIENT_GRANT,
    PATIENT_RECORD,
    PROVIDER,
    QUOTA,
    RECORD,
    TREE_NODE,
    TREE_ROOT,
    TREE_STALE,
    VALIDATOR_PROPOSAL,
    Overlay,
    StateView,
    TreeRoots,
    decode_value,
    height_bytes,
    read,
    with_change,
)
from healthnode.protocol import block as blocks
from healthnode.protocol.block import (
    Block,
    CommitCertificate,
    Evidence,
    Header,
)
from healthnode.protocol.evidence import check_evidence as evidence_rule
from healthnode.protocol.evidence import evidence_height, evidence_key, evidence_signer
from healthnode.protocol.genesis import (
    Authority,
    ConsensusParams,
    EmergencyKey,
    Genesis,
    ShareCommitment,
)
from healthnode.protocol.state import (
    AccessEntry,
    AuthoritySet,
    ChainMeta,
    EmergencyDealingState,
    EmergencyKeyState,
    EmergencyPolicyState,
    EmergencyWrapState,
    EvidenceEntry,
    GrantState,
    ProviderState,
    RecordState,
    SignerNonce,
    SignerQuota,
    ValidatorProposal,
)
from healthnode.protocol.tx import (
    EMERGENCY_PURPOSES,
    AccessLog,
    AnyTx,
    ConsentGrant,
    ConsentRevoke,
    EmergencyPolicy,
    EmergencyReshare,
    ProviderRegister,
    ProviderRevoke,
    RecordAnchor,
    RecordErase,
    ValidatorVote,
)


class Reason(enum.StrEnum):
    """Why a transaction is refused. Names are stable: metrics, logs and wallets show them."""

    # any kind
    BAD_SIGNATURE = "bad_signature"
    NONCE_REPLAYED = "nonce_replayed"  # at or below the signer's last nonce
    NONCE_GAP = "nonce_gap"  # ahead of the next nonce: may become valid later
    # provider.register / provider.revoke
    NOT_AUTHORITY = "not_authority"
    PROVIDER_IS_AUTHORITY = "provider_is_authority"
    PROVIDER_ALREADY_REGISTERED = "provider_already_registered"
    PROVIDER_KEY_REVOKED = "provider_key_revoked"
    UNKNOWN_PROVIDER = "unknown_provider"
    NOT_REGISTERING_AUTHORITY = "not_registering_authority"
    PROVIDER_ALREADY_REVOKED = "provider_already_revoked"
    # record.anchor
    AUTHOR_NOT_PROVIDER = "author_not_provider"
    NO_WRITE_GRANT = "no_write_grant"
    MISSING_PATIENT_KEY_WRAP = "missing_patient_key_wrap"
    DUPLICATE_KEY_WRAP = "duplicate_key_wrap"
    CIPHERTEXT_ALREADY_ANCHORED = "ciphertext_already_anchored"
    UNKNOWN_SUPERSEDED_RECORD = "unknown_superseded_record"
    SUPERSEDES_OTHER_PATIENT = "supersedes_other_patient"
    RECORD_ALREADY_SUPERSEDED = "record_already_superseded"
    SUPERSEDED_RECORD_ERASED = "superseded_record_erased"
    SIGNER_RECORDS_PER_BLOCK = "signer_records_per_block"
    SIGNER_BYTES_PER_BLOCK = "signer_bytes_per_block"
    SIGNER_RECORDS_PER_DAY = "signer_records_per_day"
    SIGNER_BYTES_PER_DAY = "signer_bytes_per_day"
    # consent.grant / consent.revoke
    SELF_GRANT = "self_grant"
    GRANTEE_NOT_PROVIDER = "grantee_not_provider"
    EMPTY_SCOPE = "empty_scope"
    UNKNOWN_SCOPE_RECORD = "unknown_scope_record"
    SCOPE_RECORD_OF_OTHER_PATIENT = "scope_record_of_other_patient"
    GRANT_ALREADY_EXPIRED = "grant_already_expired"
    KEY_WRAP_OUTSIDE_SCOPE = "key_wrap_outside_scope"
    UNKNOWN_GRANT = "unknown_grant"
    NOT_GRANT_OWNER = "not_grant_owner"
    GRANT_ALREADY_REVOKED = "grant_already_revoked"
    # access.log
    UNKNOWN_RECORD = "unknown_record"
    RECORD_PATIENT_MISMATCH = "record_patient_mismatch"
    RECORD_ERASED = "record_erased"
    PATIENT_READ_WITH_GRANT = "patient_read_with_grant"
    BREAK_GLASS_WITH_GRANT = "break_glass_with_grant"
    BREAK_GLASS_PURPOSE = "break_glass_purpose"
    READER_LACKS_EMERGENCY_ROLE = "reader_lacks_emergency_role"
    READER_NOT_PROVIDER = "reader_not_provider"
    MISSING_GRANT = "missing_grant"
    GRANT_NOT_FOR_READER = "grant_not_for_reader"
    GRANT_LACKS_READ = "grant_lacks_read"
    GRANT_REVOKED = "grant_revoked"
    GRANT_EXPIRED = "grant_expired"
    RECORD_OUT_OF_SCOPE = "record_out_of_scope"
    BREAK_GLASS_NOT_ALLOWED = "break_glass_not_allowed"  # the patient's policy does not cover it
    NO_EMERGENCY_WRAP = "no_emergency_wrap"
    # emergency.policy, and a record.anchor's emergency wrap
    NO_EMERGENCY_KEY = "no_emergency_key"  # this network has no break-glass key
    BAD_EMERGENCY_WRAP = "bad_emergency_wrap"
    # its TDH2 proof fails for this record's label: copied, re-randomised or damaged
    EMERGENCY_WRAP_NOT_BOUND = "emergency_wrap_not_bound"
    EMERGENCY_WRAP_OUTSIDE_POLICY = "emergency_wrap_outside_policy"
    # emergency.reshare
    RESHARE_NOT_DUE = "reshare_not_due"  # no authority change to re-share for at that epoch
    NOT_SHARE_HOLDER = "not_share_holder"
    ALREADY_DEALT = "already_dealt"
    BAD_RESHARE = "bad_reshare"
    # record.erase
    NOT_RECORD_OWNER = "not_record_owner"
    RECORD_ALREADY_ERASED = "record_already_erased"
    # validator.vote
    ALREADY_AUTHORITY = "already_authority"
    SUBJECT_NOT_AUTHORITY = "subject_not_authority"
    AUTHORITY_NAME_TAKEN = "authority_name_taken"
    AUTHORITY_NAME_MISMATCH = "authority_name_mismatch"
    LAST_AUTHORITY = "last_authority"
    AUTHORITIES_FULL = "authorities_full"
    ALREADY_VOTED = "already_voted"


# Refusals that may pass later without the transaction changing: the mempool keeps these for a
# later block instead of dropping them.
DEFERRABLE: Final = frozenset({
    Reason.NONCE_GAP,
    Reason.SIGNER_RECORDS_PER_BLOCK,
    Reason.SIGNER_BYTES_PER_BLOCK,
})


@dataclass(frozen=True, slots=True)
class Rejected:
    """The one refusal of a transaction, from the ledger's rules or the mempool's bounds: a fixed
    `reason` (a `Reason`, or one of the mempool's names) and a `detail` for people. It travels
    typed to the wallet's message (node/client.py), never flattened and parsed back."""

    reason: str
    detail: str

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


class Reject(Exception):
    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(reason, detail)
        self.rejected = Rejected(reason, detail)


class BlockRejected(HealthnodeError):
    """A block cannot be applied to this state; `reason` names why (invalid tx, wrong hash...),
    and `rejected` is the refusal of the transaction that failed, if one did."""

    def __init__(self, reason: str, rejected: Rejected | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.rejected = rejected


@dataclass(frozen=True, slots=True)
class Quotas:
    """Per-signer anchoring budgets (limits.py explains the defaults)."""

    patient_records_per_block: int = limits.PATIENT_RECORDS_PER_BLOCK_MAX
    patient_bytes_per_block: int = limits.PATIENT_RECORD_BYTES_PER_BLOCK_MAX
    patient_records_per_day: int = limits.PATIENT_RECORDS_PER_DAY_MAX
    patient_bytes_per_day: int = limits.PATIENT_RECORD_BYTES_PER_DAY_MAX
    provider_records_per_block: int = limits.PROVIDER_RECORDS_PER_BLOCK_MAX
    provider_bytes_per_block: int = limits.PROVIDER_RECORD_BYTES_PER_BLOCK_MAX
    provider_records_per_day: int = limits.PROVIDER_RECORDS_PER_DAY_MAX
    provider_bytes_per_day: int = limits.PROVIDER_RECORD_BYTES_PER_DAY_MAX


DEFAULT_QUOTAS: Final = Quotas()


@dataclass(frozen=True, slots=True)
class BlockContext:
    """What a transaction is judged against: the block it is (or would be) in."""

    chain_id: str
    height: int
    time_ms: int
    authorities: tuple[bytes, ...]
    quotas: Quotas = DEFAULT_QUOTAS


@dataclass(slots=True)
class _BlockTally:
    """Per-block counters that are not state: records and bytes anchored by each signer."""

    records: dict[bytes, int] = field(default_factory=dict)
    ciphertext_bytes: dict[bytes, int] = field(default_factory=dict)


# --- reading state ----------------------------------------------------------------------------


def chain_meta(view: StateView) -> ChainMeta:
    meta = read(view, META_KEY, ChainMeta)
    if meta is None:
        raise BlockRejected("state has no chain meta: it was never initialised from a genesis")
    return meta


def authority_set(view: StateView, height: int) -> AuthoritySet:
    """The authority set in force at `height` (changes decided at h are stored for h+2)."""
    found: AuthoritySet | None = None
    for key, _ in view.scan(AUTHORITY_SET):
        if int.from_bytes(key[len(AUTHORITY_SET):], "big") > height:
            break
        found = read(view, key, AuthoritySet)
    if found is None:
        raise BlockRejected(f"no authority set for height {height}")
    return found


def authorities(view: StateView, height: int) -> tuple[bytes, ...]:
    return authority_set(view, height).keys


def context(view: StateView, height: int, time_ms: int,
            quotas: Quotas = DEFAULT_QUOTAS) -> BlockContext:
    meta = chain_meta(view)
    return BlockContext(meta.chain_id, height, time_ms, authorities(view, height), quotas)


def next_context(view: StateView, time_ms: int, quotas: Quotas = DEFAULT_QUOTAS) -> BlockContext:
    """The context of the block after the current head, at `time_ms` (the mempool's view)."""
    meta = chain_meta(view)
    return _context_after(meta, authorities(view, meta.height + 1), time_ms, quotas)


class NextContexts:
    """`next_context` for a caller that asks again and again (the mempool, for every transaction
    offered): the authority set is kept while the state, by its hash, is the same."""

    def __init__(self) -> None:
        self._authorities_at: tuple[bytes, tuple[bytes, ...]] | None = None
        self._chain_id: str | None = None

    def __call__(self, view: StateView, time_ms: int,
                 quotas: Quotas = DEFAULT_QUOTAS) -> BlockContext:
        meta = chain_meta(view)
        self._chain_id = meta.chain_id
        # By root and height: a block that changes nothing but the chain meta keeps the root,
        # and a scheduled authority set starts at a height.
        at = meta.state_hash + height_bytes(meta.height)
        if self._authorities_at is None or self._authorities_at[0] != at:
            self._authorities_at = (at, authorities(view, meta.height + 1))
        return _context_after(meta, self._authorities_at[1], time_ms, quotas)

    def chain_id(self, view: StateView) -> str:
        """The chain's id (fixed at genesis), read from `view` only the first time."""
        return self._chain_id if self._chain_id is not None else chain_meta(view).chain_id


def _context_after(meta: ChainMeta, keys: tuple[bytes, ...], time_ms: int,
                   quotas: Quotas) -> BlockContext:
    return BlockContext(meta.chain_id, meta.height + 1, max(time_ms, meta.time_ms + 1), keys,
                        quotas)


def active_provider(view: StateView, key: bytes) -> ProviderState | None:
    provider = read(view, PROVIDER + key, ProviderState)
    if provider is None or provider.revoked_height is not None:
        return None
    return provider


def grant_valid_at(grant: GrantState, time_ms: int) -> bool:
    """A grant is in force from its block's time until it expires or is revoked."""
    if time_ms < grant.time_ms:
        return False
    if grant.expires_at_ms is not None and time_ms >= grant.expires_at_ms:
        return False
    return grant.revoked_time_ms is None or time_ms < grant.revoked_time_ms


def record_in_scope(record_id: bytes, record: RecordState, grant: GrantState) -> bool:
    """A record is in scope when named, or when every one of its blinded tags is granted: a
    record tagged both 'lab' and 'mental-health' stays hidden from a 'lab'-only grant."""
    return record_id in grant.scope_records or set(record.tags) <= set(grant.scope_tags)


# --- the rules --------------------------------------------------------------------------------


def check_tx(view: StateView, tx: AnyTx, now: BlockContext,
             verify_signature: bool = True) -> Rejected | None:
    """None when `tx` would be accepted in a block at `now`, else why not. Writes nothing."""
    try:
        if verify_signature and not tx.signature_valid(now.chain_id):
            raise Reject(Reason.BAD_SIGNATURE, "signature does not verify for this chain")
        _apply_tx(Overlay(view), tx, now, _BlockTally())
    except Reject as refusal:
        return refusal.rejected
    return None


def _apply_tx(state: Overlay, tx: AnyTx, now: BlockContext, tally: _BlockTally) -> None:
    signer_nonce = read(state, NONCE + tx.signer, SignerNonce)
    expected = (signer_nonce.nonce if signer_nonce else 0) + 1
    if tx.nonce < expected:
        raise Reject(Reason.NONCE_REPLAYED, f"nonce {tx.nonce} already used, next is {expected}")
    if tx.nonce > expected:
        raise Reject(Reason.NONCE_GAP, f"nonce {tx.nonce} is ahead, next is {expected}")
    _HANDLERS[type(tx)](state, tx, now, tally)
    state.put(NONCE + tx.signer, SignerNonce(tx.nonce))


def _require_authority(signer: bytes, now: BlockContext) -> None:
    if signer not in now.authorities:
        raise Reject(Reason.NOT_AUTHORITY, f"{signer.hex()[:16]} is no authority at height "
                     f"{now.height}")


def _provider_register(state: Overlay, tx: ProviderRegister, now: BlockContext,
                       _tally: _BlockTally) -> None:
    _require_authority(tx.signer, now)
    if tx.provider in now.authorities:
        raise Reject(Reason.PROVIDER_IS_AUTHORITY, "a node key cannot also be a provider key")
    existing = read(state, PROVIDER + tx.provider, ProviderState)
    if existing is not None and existing.revoked_height is not None:
        raise Reject(Reason.PROVIDER_KEY_REVOKED,
                     "this key was revoked and can never be registered again; make a new key")
    if existing is not None:
        raise Reject(Reason.PROVIDER_ALREADY_REGISTERED, "provider key is already registered")
    state.put(PROVIDER + tx.provider, ProviderState(
        tx.signer, tx.roles, tx.display_name, now.height, None))


def _provider_revoke(state: Overlay, tx: ProviderRevoke, now: BlockContext,
                     _tally: _BlockTally) -> None:
    _require_authority(tx.signer, now)
    existing = read(state, PROVIDER + tx.provider, ProviderState)
    if existing is None:
        raise Reject(Reason.UNKNOWN_PROVIDER, "no such provider")
    # The registering hospital ends its own providers; one that has left the network can no
    # longer, so then any current authority may end them (no provider is left unrevocable).
    if existing.authority != tx.signer and existing.authority in now.authorities:
        raise Reject(Reason.NOT_REGISTERING_AUTHORITY,
                     "only the hospital that registered a provider may revoke it")
    if existing.revoked_height is not None:
        raise Reject(Reason.PROVIDER_ALREADY_REVOKED,
                     f"revoked at height {existing.revoked_height}")
    state.put(PROVIDER + tx.provider, dataclasses.replace(existing, revoked_height=now.height))


def _write_grant_covers(state: Overlay, patient: bytes, author: bytes, tags: Sequence[bytes],
                        time_ms: int) -> bool:
    prefix = PAIR_GRANT + patient + author
    for key, _ in state.scan(prefix):
        grant = read(state, GRANT + key[len(prefix):], GrantState)
        assert grant is not None, "pair index points at a missing grant"
        if ("write" in grant.actions and grant_valid_at(grant, time_ms)
                and set(tags) <= set(grant.scope_tags)):
            return True
    return False


def _record_anchor(state: Overlay, tx: RecordAnchor, now: BlockContext,
                   tally: _BlockTally) -> None:
    author_is_provider = False
    if tx.signer != tx.patient:
        if active_provider(state, tx.signer) is None:
            raise Reject(Reason.AUTHOR_NOT_PROVIDER,
                         "only the patient or an active provider may anchor a record")
        if not _write_grant_covers(state, tx.patient, tx.signer, tx.tags, now.time_ms):
            raise Reject(Reason.NO_WRITE_GRANT,
                         "no unexpired, unrevoked write grant of the patient covers these tags")
        author_is_provider = True
    recipients = [wrap.recipient for wrap in tx.key_wraps]
    if len(set(recipients)) != len(recipients):
        raise Reject(Reason.DUPLICATE_KEY_WRAP, "two key wraps for one recipient")
    if tx.patient not in recipients:
        raise Reject(Reason.MISSING_PATIENT_KEY_WRAP,
                     "the data key must be wrapped for the patient")
    if state.get(CIPHERTEXT + tx.ciphertext_hash) is not None:
        raise Reject(Reason.CIPHERTEXT_ALREADY_ANCHORED,
                     "this ciphertext is already anchored as another record")
    previous = None
    if tx.supersedes is not None:
        previous = read(state, RECORD + tx.supersedes, RecordState)
        if previous is None:
            raise Reject(Reason.UNKNOWN_SUPERSEDED_RECORD, "supersedes an unknown record")
        if previous.patient != tx.patient:
            raise Reject(Reason.SUPERSEDES_OTHER_PATIENT,
                         "supersedes a record of another patient")
        if previous.erased_height is not None:
            raise Reject(Reason.SUPERSEDED_RECORD_ERASED, "supersedes an erased record")
        if previous.superseded_by is not None:
            raise Reject(Reason.RECORD_ALREADY_SUPERSEDED,
                         "that version already has a successor; amend the latest version")
    if tx.emergency_wrap is not None:
        check_bound_wrap(state, tx.emergency_wrap, threshold.WrapLabel(
            now.chain_id, tx.patient, tx.ciphertext_hash))
    quota = _charge_quota(state, tx, now, tally, author_is_provider)

    record_id = tx.hash
    if tx.emergency_wrap is not None:
        state.put(EMERGENCY_WRAP + record_id, EmergencyWrapState(tx.emergency_wrap, now.height))
    state.put(RECORD + record_id, RecordState(
        tx.patient, tx.signer, tx.ciphertext_hash, tx.ciphertext_bytes, tx.tags, tx.supersedes,
        None, now.height, now.time_ms, None, None))
    state.put(PATIENT_RECORD + tx.patient + record_id, b"")
    state.put(CIPHERTEXT + tx.ciphertext_hash, record_id)
    if previous is not None and tx.supersedes is not None:
        state.put(RECORD + tx.supersedes, dataclasses.replace(previous, superseded_by=record_id))
    state.put(QUOTA + tx.signer, quota)
    tally.records[tx.signer] = tally.records.get(tx.signer, 0) + 1
    tally.ciphertext_bytes[tx.signer] = (
        tally.ciphertext_bytes.get(tx.signer, 0) + tx.ciphertext_bytes)


def _charge_quota(state: Overlay, tx: RecordAnchor, now: BlockContext, tally: _BlockTally,
                  provider: bool) -> SignerQuota:
    """Check the signer's budgets and return its day's counters with this record added."""
    q = now.quotas
    records_block, bytes_block, records_day, bytes_day = (
        (q.provider_records_per_block, q.provider_bytes_per_block,
         q.provider_records_per_day, q.provider_bytes_per_day) if provider else
        (q.patient_records_per_block, q.patient_bytes_per_block,
         q.patient_records_per_day, q.patient_bytes_per_day))
    if tally.records.get(tx.signer, 0) + 1 > records_block:
        raise Reject(Reason.SIGNER_RECORDS_PER_BLOCK, f"at most {records_block} records per block")
    if tally.ciphertext_bytes.get(tx.signer, 0) + tx.ciphertext_bytes > bytes_block:
        raise Reject(Reason.SIGNER_BYTES_PER_BLOCK, f"at most {bytes_block} bytes per block")
    day = now.time_ms // limits.DAY_MS
    used = read(state, QUOTA + tx.signer, SignerQuota)
    if used is None or used.day != day:
        used = SignerQuota(day, 0, 0)
    if used.records + 1 > records_day:
        raise Reject(Reason.SIGNER_RECORDS_PER_DAY, f"at most {records_day} records per day")
    if used.ciphertext_bytes + tx.ciphertext_bytes > bytes_day:
        raise Reject(Reason.SIGNER_BYTES_PER_DAY, f"at most {bytes_day} bytes per day")
    return SignerQuota(day, used.records + 1, used.ciphertext_bytes + tx.ciphertext_bytes)


def _consent_grant(state: Overlay, tx: ConsentGrant, now: BlockContext,
                   _tally: _BlockTally) -> None:
    patient = tx.signer
    if tx.grantee == patient:
        raise Reject(Reason.SELF_GRANT, "a patient needs no grant to its own records")
    if active_provider(state, tx.grantee) is None:
        raise Reject(Reason.GRANTEE_NOT_PROVIDER, "the grantee is not an active provider")
    if not tx.scope_records and not tx.scope_tags:
        raise Reject(Reason.EMPTY_SCOPE, "a grant must name records or categories")
    if tx.expires_at_ms is not None and tx.expires_at_ms <= now.time_ms:
        raise Reject(Reason.GRANT_ALREADY_EXPIRED, "the expiry is not after the block time")
    for record_id in tx.scope_records:
        _own_record(state, patient, record_id)
    scope = GrantState(patient, tx.grantee, tx.actions, tx.scope_records, tx.scope_tags,
                       tx.expires_at_ms, now.height, now.time_ms, None, None)
    wrapped = [wrap.record_id for wrap in tx.key_wraps]
    if len(set(wrapped)) != len(wrapped):
        raise Reject(Reason.DUPLICATE_KEY_WRAP, "two key wraps for one record")
    for record_id in wrapped:
        record = _own_record(state, patient, record_id)
        if not record_in_scope(record_id, record, scope):
            raise Reject(Reason.KEY_WRAP_OUTSIDE_SCOPE,
                         "a key wrap is for a record the grant does not cover")
    grant_id = tx.hash
    state.put(GRANT + grant_id, scope)
    state.put(PATIENT_GRANT + patient + grant_id, b"")
    state.put(GRANTEE_GRANT + tx.grantee + grant_id, b"")
    state.put(PAIR_GRANT + patient + tx.grantee + grant_id, b"")


def _own_record(state: Overlay, patient: bytes, record_id: bytes) -> RecordState:
    record = read(state, RECORD + record_id, RecordState)
    if record is None:
        raise Reject(Reason.UNKNOWN_SCOPE_RECORD, f"no record {record_id.hex()[:16]}")
    if record.patient != patient:
        raise Reject(Reason.SCOPE_RECORD_OF_OTHER_PATIENT,
                     f"record {record_id.hex()[:16]} belongs to another patient")
    return record


def _consent_revoke(state: Overlay, tx: ConsentRevoke, now: BlockContext,
                    _tally: _BlockTally) -> None:
    grant = read(state, GRANT + tx.grant_id, GrantState)
    if grant is None:
        raise Reject(Reason.UNKNOWN_GRANT, "no such grant")
    if grant.patient != tx.signer:
        raise Reject(Reason.NOT_GRANT_OWNER, "only the patient who granted may revoke")
    if grant.revoked_height is not None:
        raise Reject(Reason.GRANT_ALREADY_REVOKED, f"revoked at height {grant.revoked_height}")
    state.put(GRANT + tx.grant_id, dataclasses.replace(
        grant, revoked_height=now.height, revoked_time_ms=now.time_ms))


def _access_log(state: Overlay, tx: AccessLog, now: BlockContext, _tally: _BlockTally) -> None:
    _require_authority(tx.signer, now)
    record = read(state, RECORD + tx.record_id, RecordState)
    if record is None:
        raise Reject(Reason.UNKNOWN_RECORD, "no such record")
    if record.patient != tx.patient:
        raise Reject(Reason.RECORD_PATIENT_MISMATCH, "the record belongs to another patient")
    if record.erased_height is not None:
        raise Reject(Reason.RECORD_ERASED, "the record was erased")
    if tx.reader == tx.patient:
        if tx.grant_id is not None or tx.break_glass:
            raise Reject(Reason.PATIENT_READ_WITH_GRANT,
                         "a patient reads its own records without grant or break-glass")
    elif tx.break_glass:
        _check_break_glass(state, tx, record)
    else:
        _check_grant_read(state, tx, record, now)
    index = sum(1 for _ in state.scan(AUDIT + tx.patient + height_bytes(now.height)))
    state.put(AUDIT + tx.patient + height_bytes(now.height) + index.to_bytes(4, "big"),
              AccessEntry(tx.hash, tx.signer, tx.reader, tx.record_id, tx.grant_id,
                          tx.break_glass, tx.purpose, now.height, now.time_ms))


def _check_break_glass(state: Overlay, tx: AccessLog, record: RecordState) -> None:
    if tx.grant_id is not None:
        raise Reject(Reason.BREAK_GLASS_WITH_GRANT, "break-glass is access without a grant")
    if tx.purpose not in EMERGENCY_PURPOSES:
        raise Reject(Reason.BREAK_GLASS_PURPOSE, "break-glass access has an emergency purpose: "
                     + ", ".join(sorted(EMERGENCY_PURPOSES)))
    provider = active_provider(state, tx.reader)
    if provider is None or "emergency" not in provider.roles:
        raise Reject(Reason.READER_LACKS_EMERGENCY_ROLE,
                     "only an active provider with the emergency role may break the glass")
    policy = read(state, EMERGENCY_POLICY + tx.patient, EmergencyPolicyState)
    if policy is None or not set(record.tags) <= set(policy.allowed_tags):
        raise Reject(Reason.BREAK_GLASS_NOT_ALLOWED,
                     "the patient's emergency policy does not cover this record's categories")
    if state.get(EMERGENCY_WRAP + tx.record_id) is None:
        raise Reject(Reason.NO_EMERGENCY_WRAP,
                     "the record carries no emergency wrap (added before the policy covered it)")


def emergency_key(view: StateView) -> EmergencyKeyState | None:
    return read(view, EMERGENCY_KEY, EmergencyKeyState)


def wrap_label(chain_id: str, record: RecordState) -> threshold.WrapLabel:
    """The label a record's emergency wrap is bound to (threshold.py, "Bound wraps")."""
    return threshold.WrapLabel(chain_id, record.patient, record.ciphertext_hash)


def check_bound_wrap(view: StateView, wrap: bytes, label: threshold.WrapLabel) -> bytes:
    """The wrap's `R` when `wrap` is well formed and bound to `label` under the emergency key in
    force; a Reject naming what failed otherwise. The ledger calls it wherever it admits a wrap,
    and a holder again before it releases a share."""
    key = emergency_key(view)
    if key is None:
        raise Reject(Reason.NO_EMERGENCY_KEY, "this network has no emergency key")
    try:
        return threshold.check_wrap(key.key.public_key, wrap, label)
    except threshold.WrapNotBound as error:
        raise Reject(Reason.EMERGENCY_WRAP_NOT_BOUND, str(error)) from None
    except threshold.ThresholdError as error:
        raise Reject(Reason.BAD_EMERGENCY_WRAP, str(error)) from None


def reshare_target(view: StateView) -> tuple[int, AuthoritySet] | None:
    """The authority set (by its first height) the emergency key must be re-shared to: the
    latest one scheduled after the key's epoch, if its members differ from the share holders."""
    key = emergency_key(view)
    if key is None:
        return None
    latest: tuple[int, AuthoritySet] | None = None
    for state_key, raw in view.scan(AUTHORITY_SET):
        height = int.from_bytes(state_key[len(AUTHORITY_SET):], "big")
        if height > key.epoch:
            latest = (height, decode_value(raw, AuthoritySet, state_key))
    if latest is None:
        return None
    holders = {c.authority for c in key.key.commitments}
    return None if set(latest[1].keys) == holders else latest


def emergency_dealing_key(epoch: int, dealer_index: int) -> bytes:
    return EMERGENCY_DEALING + height_bytes(epoch) + dealer_index.to_bytes(2, "big")


def emergency_dealings(view: StateView, epoch: int) -> list[EmergencyDealingState]:
    prefix = EMERGENCY_DEALING + height_bytes(epoch)
    return [decode_value(raw, EmergencyDealingState, key) for key, raw in view.scan(prefix)]


def _emergency_reshare(state: Overlay, tx: EmergencyReshare, now: BlockContext,
                       _tally: _BlockTally) -> None:
    key = emergency_key(state)
    if key is None:
        raise Reject(Reason.NO_EMERGENCY_KEY, "this network has no emergency key")
    target = reshare_target(state)
    if target is None or target[0] != tx.epoch:
        raise Reject(Reason.RESHARE_NOT_DUE, f"no re-sharing is due for epoch {tx.epoch}"
                     + (f" (due: {target[0]})" if target else ""))
    mine = [c for c in key.key.commitments if c.authority == tx.signer]
    if not mine:
        raise Reject(Reason.NOT_SHARE_HOLDER, "only a holder of an emergency share re-deals")
    holder = mine[0]
    if state.get(emergency_dealing_key(tx.epoch, holder.index)) is not None:
        raise Reject(Reason.ALREADY_DEALT, f"share {holder.index} is already re-dealt")
    new_keys = target[1].keys
    new_threshold = threshold.quorum_threshold(len(new_keys))
    if len(tx.coefficients) != new_threshold:
        raise Reject(Reason.BAD_RESHARE, f"expected {new_threshold} coefficient commitments")
    if tx.coefficients[0] != holder.commitment:
        raise Reject(Reason.BAD_RESHARE, "the dealing must re-share the dealer's own share")
    if tuple(s.recipient for s in tx.sealed_shares) != new_keys:
        raise Reject(Reason.BAD_RESHARE, "one sealed sub-share per new authority, in order")
    try:
        for point in tx.coefficients:
            threshold.check_point(point, "a coefficient commitment")
    except threshold.ThresholdError as error:
        raise Reject(Reason.BAD_RESHARE, str(error)) from None
    state.put(emergency_dealing_key(tx.epoch, holder.index), EmergencyDealingState(
        tx.epoch, holder.index, tx.coefficients, tx.sealed_shares))
    dealings = emergency_dealings(state, tx.epoch)
    if len(dealings) < key.key.threshold:
        return
    # Enough holders dealt: the new set holds the same key from now on.
    commitments = threshold.reshared_commitments(
        {d.dealer_index: d.coefficients for d in dealings}, len(new_keys))
    state.put(EMERGENCY_KEY, EmergencyKeyState(
        EmergencyKey(key.key.public_key, new_threshold, tuple(
            ShareCommitment(authority, index + 1, commitment)
            for index, (authority, commitment) in enumerate(zip(new_keys, commitments,
                                                                strict=True)))),
        tx.epoch, tuple(sorted(d.dealer_index for d in dealings))))


def _emergency_policy(state: Overlay, tx: EmergencyPolicy, now: BlockContext,
                      _tally: _BlockTally) -> None:
    patient = tx.signer
    if emergency_key(state) is None:
        raise Reject(Reason.NO_EMERGENCY_KEY, "this network has no emergency key")
    wrapped = [wrap.record_id for wrap in tx.wraps]
    if len(set(wrapped)) != len(wrapped):
        raise Reject(Reason.DUPLICATE_KEY_WRAP, "two emergency wraps for one record")
    for wrap in tx.wraps:
        record = _own_record(state, patient, wrap.record_id)
        if record.erased_height is not None:
            raise Reject(Reason.RECORD_ERASED, f"record {wrap.record_id.hex()[:16]} was erased")
        if not set(record.tags) <= set(tx.allowed_tags):
            raise Reject(Reason.EMERGENCY_WRAP_OUTSIDE_POLICY,
                         "an emergency wrap for a record the policy does not cover")
        check_bound_wrap(state, wrap.wrap, wrap_label(now.chain_id, record))
    state.put(EMERGENCY_POLICY + patient, EmergencyPolicyState(tx.allowed_tags, now.height))
    for wrap in tx.wraps:
        state.put(EMERGENCY_WRAP + wrap.record_id, EmergencyWrapState(wrap.wrap, now.height))


def _check_grant_read(state: Overlay, tx: AccessLog, record: RecordState,
                      now: BlockContext) -> None:
    if active_provider(state, tx.reader) is None:
        raise Reject(Reason.READER_NOT_PROVIDER, "the reader is not an active provider")
    if tx.grant_id is None:
        raise Reject(Reason.MISSING_GRANT, "a provider reads under a grant")
    grant = read(state, GRANT + tx.grant_id, GrantState)
    if grant is None:
        raise Reject(Reason.UNKNOWN_GRANT, "no such grant")
    if grant.patient != tx.patient or grant.grantee != tx.reader:
        raise Reject(Reason.GRANT_NOT_FOR_READER, "the grant is not from this patient to reader")
    if "read" not in grant.actions:
        raise Reject(Reason.GRANT_LACKS_READ, "the grant does not allow reading")
    if grant.revoked_time_ms is not None and now.time_ms >= grant.revoked_time_ms:
        raise Reject(Reason.GRANT_REVOKED, f"revoked at height {grant.revoked_height}")
    if not grant_valid_at(grant, now.time_ms):
        raise Reject(Reason.GRANT_EXPIRED, "the grant expired")
    if not record_in_scope(tx.record_id, record, grant):
        raise Reject(Reason.RECORD_OUT_OF_SCOPE, "the record is outside the grant's scope")


def _record_erase(state: Overlay, tx: RecordErase, now: BlockContext,
                  _tally: _BlockTally) -> None:
    record = read(state, RECORD + tx.record_id, RecordState)
    if record is None:
        raise Reject(Reason.UNKNOWN_RECORD, "no such record")
    if record.patient != tx.signer:
        raise Reject(Reason.NOT_RECORD_OWNER, "only the patient may erase a record")
    if record.erased_height is not None:
        raise Reject(Reason.RECORD_ALREADY_ERASED, f"erased at height {record.erased_height}")
    state.put(RECORD + tx.record_id, dataclasses.replace(
        record, erased_height=now.height, erased_time_ms=now.time_ms))


def proposal_id(action: str, subject: bytes, name: str) -> bytes:
    return digest(pack([action, subject, name]))


def _validator_vote(state: Overlay, tx: ValidatorVote, now: BlockContext,
                    _tally: _BlockTally) -> None:
    _require_authority(tx.signer, now)
    # Judge against the latest decided set (a change decided at h-1 lands at h+1 <= h+2).
    future = authority_set(state, now.height + 2)
    if tx.action == "add":
        if tx.subject in future.keys:
            raise Reject(Reason.ALREADY_AUTHORITY, "the subject is already an authority")
        if any(a.name == tx.name for a in future.authorities):
            raise Reject(Reason.AUTHORITY_NAME_TAKEN, f"an authority is already named {tx.name!r}")
        if len(future.authorities) >= limits.AUTHORITIES_MAX:
            raise Reject(Reason.AUTHORITIES_FULL, f"at most {limits.AUTHORITIES_MAX} authorities")
    else:
        member = next((a for a in future.authorities if a.public_key == tx.subject), None)
        if member is None:
            raise Reject(Reason.SUBJECT_NOT_AUTHORITY, "the subject is no authority")
        if member.name != tx.name:
            raise Reject(Reason.AUTHORITY_NAME_MISMATCH,
                         f"the subject is named {member.name!r}, not {tx.name!r}")
        if len(future.authorities) == 1:
            raise Reject(Reason.LAST_AUTHORITY, "the last authority can never be removed")
    key = VALIDATOR_PROPOSAL + proposal_id(tx.action, tx.subject, tx.name)
    open_votes = read(state, key, ValidatorProposal)
    voters = set(open_votes.voters) if open_votes else set()
    if tx.signer in voters:
        raise Reject(Reason.ALREADY_VOTED, "this authority already voted for this change")
    voters.add(tx.signer)
    backing = sum(1 for voter in voters if voter in now.authorities)
    if backing < blocks.quorum(len(now.authorities)):
        state.put(key, ValidatorProposal(tx.action, tx.subject, tx.name, tuple(sorted(voters))))
        return
    if tx.action == "add":
        changed = (*future.authorities, Authority(tx.name, tx.subject))
    else:
        changed = tuple(a for a in future.authorities if a.public_key != tx.subject)
    state.put(AUTHORITY_SET + height_bytes(now.height + 2), AuthoritySet(changed))
    state.delete(key)


_Handler = Callable[[Overlay, Any, BlockContext, _BlockTally], None]
_HANDLERS: Final[dict[type[AnyTx], _Handler]] = {
    ProviderRegister: _provider_register,
    ProviderRevoke: _provider_revoke,
    RecordAnchor: _record_anchor,
    ConsentGrant: _consent_grant,
    ConsentRevoke: _consent_revoke,
    AccessLog: _access_log,
    RecordErase: _record_erase,
    ValidatorVote: _validator_vote,
    EmergencyPolicy: _emergency_policy,
    EmergencyReshare: _emergency_reshare,
}


# --- evidence ---------------------------------------------------------------------------------


def check_evidence(view: StateView, evidence: Evidence, now: BlockContext) -> str | None:
    """None when `evidence` in a block at `now` proves an authority signed two conflicting
    messages and is not committed yet, else why not (the rule itself: protocol/evidence.py)."""
    height = evidence_height(evidence)
    if height > now.height:
        return "evidence from a future height"
    problem = evidence_rule(evidence, authorities(view, height),
                            lambda message: message.signature_valid(now.chain_id))
    if problem is not None:
        return problem.detail
    if view.get(EVIDENCE + evidence_key(evidence)) is not None:
        return "the evidence is already committed"
    return None


# --- blocks -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Execution:
    """What a block does to the state: its changes (key order, None = delete), the resulting
    state root, the chain meta after it, and the writes of the tree keyspace (new nodes, the
    nodes they make stale, the root of this height)."""

    changes: tuple[tuple[bytes, bytes | None], ...]
    state_hash: bytes
    meta: ChainMeta
    tree_changes: tuple[tuple[bytes, bytes | None], ...] = ()


def tree_root(meta: ChainMeta) -> smt.Ref | None:
    """The root reference of the state tree after `meta`'s height."""
    if meta.state_hash == smt.EMPTY:
        return None
    return smt.Ref(meta.state_hash, meta.root_version, bool(meta.root_leaf))


def _chain_meta_with(chain_id: str, height: int, time_ms: int, root: smt.Ref | None) -> ChainMeta:
    """The chain meta after `height`, holding the tree's root (the inverse of `tree_root`)."""
    return ChainMeta(chain_id, height, time_ms, smt.root_hash(root),
                     root.version if root else 0, int(bool(root and root.leaf)))


def in_tree(key: bytes) -> bool:
    """Whether a state key is a leaf of the state tree: every key but the chain meta (which
    holds the root) and the indexes (state.INDEX_PREFIXES)."""
    return key != META_KEY and not key.startswith(INDEX_PREFIXES)


def tree_root_at(view: TreeRoots, height: int) -> smt.Ref | None:
    """The root reference of the state tree after `height`; smt.TreeError if not kept."""
    raw = view.tree_root(height)
    if raw is None:
        raise smt.TreeError(f"the state tree of height {height} is not kept here")
    try:
        value = unpack(raw, smt.NODE_BYTES_MAX)
    except CodecError as error:
        raise smt.TreeError(f"root of height {height}: {error}") from None
    return None if value is None else smt.Ref.from_wire(value)


def _grow_tree(view: StateView, root: smt.Ref | None, height: int,
               changes: Iterable[tuple[bytes, bytes | None]]
               ) -> tuple[smt.Ref | None, tuple[tuple[bytes, bytes | None], ...]]:
    """The state tree after `changes` (the chain meta left out: it holds the root), as the new
    root and the writes of the tree keyspace."""
    update = smt.update(view, root, height, [
        (digest(key), None if value is None else digest(value))
        for key, value in changes if in_tree(key)])
    since = height_bytes(height)
    writes: list[tuple[bytes, bytes | None]] = [
        (TREE_NODE + key, value) for key, value in update.written.items()]
    writes += [(TREE_STALE + since + key, b"") for key in update.stale]
    writes.append((TREE_ROOT + since, pack(None if update.root is None
                                             else update.root.wire())))
    return update.root, tuple(writes)


def _execute(state: Overlay, now: BlockContext, txs: Sequence[AnyTx],
             evidence: Sequence[Evidence], verify_signatures: bool,
             previous: ChainMeta, verified: Container[bytes] = ()) -> Execution:
    tally = _BlockTally()
    seen: set[bytes] = set()
    for index, tx in enumerate(txs):
        tx_hash = tx.hash
        if tx_hash in seen:
            raise BlockRejected(f"tx {index}: the same transaction twice in one block")
        seen.add(tx_hash)
        if (verify_signatures and tx_hash not in verified
                and not tx.signature_valid(now.chain_id)):
            bad = Rejected(Reason.BAD_SIGNATURE, "signature does not verify")
            raise BlockRejected(f"tx {index}: {bad}", bad)
        try:
            _apply_tx(state, tx, now, tally)
        except Reject as refusal:
            raise BlockRejected(f"tx {index}: {refusal.rejected}", refusal.rejected) from None
    _apply_evidence(state, evidence, now)
    return _finish(state, now, previous)


def _apply_evidence(state: Overlay, evidence: Sequence[Evidence], now: BlockContext) -> None:
    for index, item in enumerate(evidence):
        problem = check_evidence(state, item, now)
        if problem is not None:
            raise BlockRejected(f"evidence {index}: {problem}")
        offender = evidence_signer(item)
        key = evidence_key(item)
        state.put(EVIDENCE + key, EvidenceEntry(offender, now.height, key))


def _finish(state: Overlay, now: BlockContext, previous: ChainMeta) -> Execution:
    changes = state.changes()
    root, tree_changes = _grow_tree(state, tree_root(previous), now.height, changes)
    meta = _chain_meta_with(previous.chain_id, now.height, now.time_ms, root)
    state.put(META_KEY, meta)
    return Execution(with_change(changes, META_KEY, meta.encode()), meta.state_hash, meta,
                     tree_changes)


def _block_context(view: StateView, header: Header, quotas: Quotas) -> tuple[BlockContext,
                                                                               ChainMeta]:
    meta = chain_meta(view)
    now = context(view, meta.height + 1, header.time_ms, quotas)  # the next block's context
    wrong = blocks.header_problem(header, chain_id=meta.chain_id, height=meta.height + 1,
                                  after_time_ms=meta.time_ms, authorities=now.authorities)
    if wrong is not None:
        raise BlockRejected(wrong[1])
    return now, meta


def apply_block(view: StateView, block: Block, *, verify_signatures: bool = True,
                params: ConsensusParams | None = None,
                quotas: Quotas = DEFAULT_QUOTAS, verified: Container[bytes] = ()) -> Execution:
    """Apply `block` on top of `view`'s head; raise BlockRejected unless every transaction
    passes and the header's validators and state hash match. Writes nothing to `view`.

    `verify_signatures=False` is for blocks that arrive with a commit certificate of the
    authorities, who verified every signature before precommitting (catch-up). `verified` names
    transactions (by hash) whose signatures this node has already verified (its mempool), so each
    node verifies each signature once."""
    header = block.header
    blocks.verify_block_shape(block, header.chain_id)
    now, meta = _block_context(view, header, quotas)
    if params is not None:
        if len(block.txs) > params.block_txs_max:
            raise BlockRejected(f"block has {len(block.txs)} txs, at most {params.block_txs_max}")
        if len(block.encode()) > params.block_bytes_max:
            raise BlockRejected(f"block is larger than {params.block_bytes_max} bytes")
    execution = _execute(Overlay(view), now, block.txs, block.evidence, verify_signatures, meta,
                         verified)
    if execution.state_hash != header.state_hash:
        raise BlockRejected("state_hash does not match the state after this block")
    return execution


@dataclass(frozen=True, slots=True)
class Built:
    """A proposer's block and what happened to each candidate that did not make it in."""

    block: Block
    execution: Execution
    refused: tuple[tuple[AnyTx, Rejected], ...]  # invalid now; the mempool drops them
    deferred: tuple[AnyTx, ...]  # may pass in a later block; the mempool keeps them


def build_block(view: StateView, candidates: Iterable[AnyTx], *, height: int, time_ms: int,
                prev_hash: bytes, last_commit: CommitCertificate | None,
                evidence: Sequence[Evidence], proposer: bytes, params: ConsensusParams,
                verify_signatures: bool = True, quotas: Quotas = DEFAULT_QUOTAS) -> Built:
    """Assemble the next block from `candidates` in order, keeping those that pass, within the
    block's count and byte bounds. Signatures are verified unless the caller (the mempool) has
    already verified each one on entry."""
    meta = chain_meta(view)
    now = context(view, height, time_ms, quotas)
    if height != meta.height + 1 or time_ms <= meta.time_ms:
        raise BlockRejected("a block must follow the head in height and time")
    state = Overlay(view)
    tally = _BlockTally()
    chosen: list[AnyTx] = []
    refused: list[tuple[AnyTx, Rejected]] = []
    deferred: list[AnyTx] = []
    seen: set[bytes] = set()
    # Keep a margin under the byte bound for the header, certificate and evidence.
    budget_bytes = params.block_bytes_max - 64 * limits.KIB
    used_bytes = 0
    for tx in candidates:
        if len(chosen) >= params.block_txs_max:
            deferred.append(tx)
            continue
        size = len(tx.encode())
        if used_bytes + size > budget_bytes:
            deferred.append(tx)
            continue
        if tx.hash in seen:
            continue
        if verify_signatures and not tx.signature_valid(now.chain_id):
            refused.append((tx, Rejected(Reason.BAD_SIGNATURE, "signature does not verify")))
            continue
        try:
            _apply_tx(state, tx, now, tally)
        except Reject as refusal:
            if refusal.rejected.reason in DEFERRABLE:
                deferred.append(tx)
            else:
                refused.append((tx, refusal.rejected))
            continue
        seen.add(tx.hash)
        chosen.append(tx)
        used_bytes += size
    good_evidence = [item for item in evidence if check_evidence(state, item, now) is None]
    _apply_evidence(state, good_evidence, now)
    execution = _finish(state, now, meta)
    header = Header(
        chain_id=meta.chain_id, height=height, time_ms=time_ms, prev_hash=prev_hash,
        last_commit=last_commit, txs_root=blocks.txs_root(chosen),
        evidence_root=blocks.evidence_root(good_evidence),
        validators_hash=blocks.validators_hash(now.authorities), state_hash=execution.state_hash,
        proposer=proposer)
    return Built(Block(header, tuple(chosen), tuple(good_evidence)), execution, tuple(refused),
                 tuple(deferred))


def genesis_state(genesis: Genesis) -> Execution:
    """The state before block 1 (height 0): the first authority set and the emergency key, their
    tree, and the chain meta with its root."""
    state = Overlay(_EMPTY)
    # The genesis hash, in the tree: its time, parameters and format are then bound into every
    # root, as the first authorities and the emergency key are.
    state.put(GENESIS, genesis.hash)
    state.put(AUTHORITY_SET + height_bytes(1), AuthoritySet(genesis.authorities))
    if genesis.emergency is not None:
        state.put(EMERGENCY_KEY, EmergencyKeyState(genesis.emergency, 1, ()))
    changes = state.changes()
    root, tree_changes = _grow_tree(_EMPTY, None, 0, changes)
    meta = _chain_meta_with(genesis.chain_id, 0, genesis.genesis_time_ms, root)
    return Execution(with_change(changes, META_KEY, meta.encode()), meta.state_hash, meta,
                     tree_changes)


class _Empty:
    def get(self, key: bytes) -> bytes | None:
        return None

    def scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        return iter(())

    def tree_node(self, key: bytes) -> bytes | None:
        return None


_EMPTY: Final = _Empty()
