"""Who may see what: the reading rules of the wallet protocol, over finalized state.

A node answers any key's question only within these rules, and the node's shell never slices a
state key to decide (docs/architecture.md, rule 2): it asks here, with the asker's key as the
Noise handshake proved it, and encodes the answer.

- Public to every wallet: the authority sets, providers, the emergency key and its dealings,
  committed evidence and open validator votes.
- A signer's own: its nonce, its quotas and, for a patient, its audit trail.
- A grant: to its patient and its grantee.
- A record and its emergency wrap: to the patient, to a reader that a grant in force lets read
  it, and, to an emergency provider, when a break-glass read of it would be allowed now (here
  `Sight.IF_BREAK_GLASS`, for the emergency role and a policy that covers the record; the node
  decides the rest: it dry-runs the access.log it would sign).
- A patient's emergency policy: to the patient and to the providers it lets write.
- An appointment (rules version 5): to its patient and its representative; a patient's lines of
  acts by its representatives and their count: to the patient. A representative that may read
  sees every record of the patient's, as the patient does.

Whether a record exists, or was erased, is itself the record's: an asker who may not read it
(`record_sight` is HIDDEN) is told `NOT_READABLE`, word for word the same, whether the id was
never a record's, is another patient's, or was erased; in every request that names it, a
submitted transaction's refusal included (`told_refusal`). Keys cost nothing, so anything less
would let anyone check a guessed id.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum
from typing import Final

from healthnode.ledger import door, mempool, queries
from healthnode.ledger.rules import (
    Reason,
    Rejected,
    chain_meta,
    emergency_allows,
    emergency_reader,
    grant_valid_at,
    purpose_allowed,
    record_in_scope,
    representatives,
)
from healthnode.ledger.state import (
    ACT_COUNT,
    ACT_LINE,
    APPOINTMENT,
    AUDIT,
    AUTHORITY_SET,
    DAILY_TXS,
    EMERGENCY_DEALING,
    EMERGENCY_KEY,
    EMERGENCY_POLICY,
    EMERGENCY_WRAP,
    EVIDENCE,
    GRANT,
    NONCE,
    PROVIDER,
    PURGE,
    QUOTA,
    RECORD,
    RULES_PROPOSAL,
    RULES_SCHEDULE,
    VALIDATOR_PROPOSAL,
    StateView,
    decode_value,
    height_bytes,
)
from healthnode.protocol.client import QUERY_ITEMS_MAX
from healthnode.protocol.state import AccessEntry, GrantState, RecordState
from healthnode.protocol.tx import (
    GRANT_CLASSES,
    AccessLog,
    AnyGrant,
    AnyTx,
    EmergencyPolicy,
    RecordAnchor,
    RecordErase,
    acted,
)

# State keys any wallet may have proven, and keys proven only to the key they start with (the
# indexes are outside the state tree, so never proven: rules.in_tree).
PUBLIC_STATE: Final = (AUTHORITY_SET, PROVIDER, EMERGENCY_KEY, EMERGENCY_DEALING, EVIDENCE,
                       VALIDATOR_PROPOSAL, RULES_SCHEDULE, RULES_PROPOSAL)
OWN_STATE: Final = (NONCE, QUOTA, DAILY_TXS, AUDIT, ACT_COUNT, ACT_LINE)

# What an asker who may not read a record is told of it, in every request that names it.
NOT_READABLE: Final = "record_not_readable"
NOT_READABLE_DETAIL: Final = (
    "no record you may read has this id (a record is shown to its patient, to a reader under a "
    "grant in force that covers it, and to an emergency provider its patient's policy allows)")
NOT_READABLE_BYTES: Final = (
    "these bytes are anchored as a record you may not read (only those who may read it may "
    "upload it again)")
# Refusals decided before a transaction's records are looked up (the mempool's room, then in
# rules.check_tx the signature and the signer's nonce): the same whatever records it names, so
# told as they are.
RECORD_BLIND: Final = frozenset({
    mempool.DUPLICATE, mempool.POOL_FULL, mempool.SIGNER_FULL, mempool.NONCE_PENDING,
    Reason.BAD_SIGNATURE, Reason.NONCE_REPLAYED, Reason.NONCE_GAP,
})


class Sight(Enum):
    """Whether a key may be shown to an asker."""

    SEEN = "seen"
    HIDDEN = "hidden"
    IF_BREAK_GLASS = "if_break_glass"  # a record (or its wrap) an emergency read may open


def _now_ms(view: StateView) -> int:
    return chain_meta(view).time_ms


def read_grants(view: StateView, reader: bytes, patient: bytes) -> list[GrantState]:
    """The patient's grants in force that let `reader` read."""
    time_ms = _now_ms(view)
    return [e.grant for e in queries.grants_by_grantee(view, reader)
            if e.grant.patient == patient and "read" in e.grant.actions
            and grant_valid_at(e.grant, time_ms)]


def may_write(view: StateView, asker: bytes, patient: bytes) -> bool:
    """Whether a grant in force lets `asker` write the patient's records, or an appointment in
    force with the scope `write` (rules version 5 on): a writer wraps each record's key for
    the patient's readers, so it is shown the patient's grants and emergency policy."""
    time_ms = _now_ms(view)
    return any(entry.grant.patient == patient and "write" in entry.grant.actions
               and grant_valid_at(entry.grant, time_ms)
               for entry in queries.grants_by_grantee(view, asker)) or \
        representatives.may_act(view, asker, patient, "write", time_ms)


def may_read_all(view: StateView, asker: bytes, patient: bytes) -> bool:
    """Whether `asker` is the patient's representative, in force now, that may read (rules
    version 5 on): it reads every record of the patient's, as the patient would."""
    return representatives.may_act(view, asker, patient, "read", _now_ms(view))


def pick_read_grant(view: StateView, reader: bytes, record_id: bytes, record: RecordState,
                    purpose: str) -> bytes | None:
    """The reader's grant from this patient to read `record_id` for `purpose` under: one in
    force that covers the record and allows the purpose, else one in force that covers the
    record, else the latest one (so the ledger's refusal names what is wrong with it: the
    grant's purposes, its scope, its end)."""
    time_ms = _now_ms(view)
    latest = covering = None
    for entry in queries.grants_by_grantee(view, reader):
        grant = entry.grant
        if grant.patient != record.patient or "read" not in grant.actions:
            continue
        if grant_valid_at(grant, time_ms) and record_in_scope(record_id, record, grant):
            if purpose_allowed(grant, purpose):
                return entry.grant_id
            covering = covering or entry.grant_id
        latest = entry.grant_id
    return covering or latest


def sealed_key(reader: bytes, record_id: bytes, grant: AnyGrant | None,
               anchor: RecordAnchor) -> bytes | None:
    """The record's data key sealed to `reader`: in the grant (re-wrapped by the patient),
    else in the anchor (wrapped by the author for the readers of the day)."""
    if grant is not None:
        for wrap in grant.key_wraps:
            if wrap.record_id == record_id:
                return wrap.sealed_key
    for key_wrap in anchor.key_wraps:
        if key_wrap.recipient == reader:
            return key_wrap.sealed_key
    return None


def record_of_key(key: bytes) -> bytes | None:
    """The record id that a RECORD, EMERGENCY_WRAP or PURGE key names, else None."""
    for prefix in (RECORD, EMERGENCY_WRAP, PURGE):
        if key.startswith(prefix):
            return key[len(prefix):]
    return None


def may_see(view: StateView, asker: bytes, key: bytes) -> Sight:
    """Whether `key` may be proven to `asker`, by the same rules as the queries (the module's
    docstring lists them)."""
    if key.startswith(PUBLIC_STATE):
        return Sight.SEEN
    for prefix in OWN_STATE:
        if key.startswith(prefix):
            return Sight.SEEN if key[len(prefix):len(prefix) + 32] == asker else Sight.HIDDEN
    if key.startswith(GRANT):
        grant = queries.grant(view, key[len(GRANT):])
        return Sight.SEEN if grant is None or asker in (grant.patient, grant.grantee) \
            else Sight.HIDDEN
    record_id = record_of_key(key)
    if record_id is not None:
        return record_sight(view, asker, record_id)
    if key.startswith(EMERGENCY_POLICY):
        patient = key[len(EMERGENCY_POLICY):]
        return Sight.SEEN if patient == asker or may_write(view, asker, patient) \
            else Sight.HIDDEN
    if key.startswith(APPOINTMENT):  # patient | representative: to either
        parties = key[len(APPOINTMENT):]
        return Sight.SEEN if asker in (parties[:32], parties[32:]) else Sight.HIDDEN
    return Sight.HIDDEN


def record_sight(view: StateView, asker: bytes, record_id: bytes) -> Sight:
    """What `asker` may be told of record `record_id`, erased or not: SEEN by its patient and by
    a reader that a grant in force lets read it; IF_BREAK_GLASS by an active provider with the
    emergency role whose patient's emergency policy covers the record (the node dry-runs the
    break-glass access.log before it shows the record itself); HIDDEN otherwise, and for an id
    that no record has. A HIDDEN asker is told NOT_READABLE: had an unknown id any other answer
    than another patient's record, a stranger could tell which ids are records."""
    record = queries.record(view, record_id)
    if record is None:
        return Sight.HIDDEN
    if record.patient == asker or may_read_all(view, asker, record.patient) or any(
            record_in_scope(record_id, record, grant)
            for grant in read_grants(view, asker, record.patient)):
        return Sight.SEEN
    if emergency_reader(view, asker) and emergency_allows(view, record.patient, record.tags):
        return Sight.IF_BREAK_GLASS
    return Sight.HIDDEN


def named_records(view: StateView, tx: AnyTx) -> list[bytes]:
    """The records whose state a refusal of `tx` can depend on: the one it erases or logs a read
    of, those its grant or emergency policy names, and, for an anchor, the record it amends and
    the one already anchored with its ciphertext (the ledger refuses a second anchor of it)."""
    tx = acted(tx)  # a representative's act names what the act names
    if isinstance(tx, RecordErase | AccessLog):
        return [tx.record_id]
    if isinstance(tx, GRANT_CLASSES):
        return [*tx.scope_records, *(wrap.record_id for wrap in tx.key_wraps)]
    if isinstance(tx, EmergencyPolicy):
        return [wrap.record_id for wrap in tx.wraps]
    if isinstance(tx, RecordAnchor):
        named = [] if tx.supersedes is None else [tx.supersedes]
        anchored = queries.record_of_ciphertext(view, tx.ciphertext_hash)
        return named if anchored is None else [*named, anchored[0]]
    return []


def told_refusal(view: StateView, asker: bytes, tx: AnyTx, refusal: Rejected) -> Rejected:
    """The refusal of a transaction that `asker` submitted, as it may be told: as it is when it
    is RECORD_BLIND or a door budget's (decided before anything else), or when the asker may be
    told of every record the transaction names; else NOT_READABLE. The ledger looks a named
    record up among its first checks (`unknown_record`, `not_record_owner`,
    `unknown_scope_record`, `scope_record_of_other_patient`, `supersedes_other_patient`, ...),
    so any refusal after the blind ones may depend on it."""
    if refusal.reason in RECORD_BLIND or door.is_budget_refusal(refusal.reason) or all(
            record_sight(view, asker, record_id) is not Sight.HIDDEN
            for record_id in named_records(view, tx)):
        return refusal
    return Rejected(NOT_READABLE, NOT_READABLE_DETAIL)


def absence_provable(asker: bytes, head: int, key: bytes) -> bool:
    """Whether the absence of `key` is proven to `asker`: only for fixed keys (its own nonce and
    quotas, its emergency policy, the emergency key, the next authority set), and for any
    emergency policy the asker may see (so that a writer's wallet knows no wrap is due). An
    absence proof ends at whatever leaf sits where the key's path ends: for a key of the
    asker's choosing that could be another patient's, whose hashes would let a guess about it
    be checked."""
    return key.startswith(EMERGENCY_POLICY) or key in (
        NONCE + asker, QUOTA + asker, DAILY_TXS + asker, ACT_COUNT + asker, EMERGENCY_KEY,
        AUTHORITY_SET + height_bytes(head + 1))


def readable_record_ids(view: StateView, asker: bytes, patient: bytes) -> list[bytes]:
    """The patient's records that `asker` may list: all of them for the patient, else those a
    grant in force lets it read."""
    record_ids = queries.patient_record_ids(view, patient)
    if patient == asker or may_read_all(view, asker, patient):
        return record_ids
    grants = read_grants(view, asker, patient)
    readable = []
    for record_id in record_ids:
        record = queries.record(view, record_id)
        assert record is not None, "patient index points at a missing record"
        if any(record_in_scope(record_id, record, grant) for grant in grants):
            readable.append(record_id)
    return readable


def page(items: Iterable[tuple[bytes, bytes]], strip: int,
         after: bytes | None) -> tuple[list[tuple[bytes, bytes]], bytes | None]:
    """Up to QUERY_ITEMS_MAX items whose key (less `strip` bytes) sorts after `after`, and the
    cursor to ask for the rest with (None when there is no rest)."""
    chosen: list[tuple[bytes, bytes]] = []
    for key, value in sorted(items):
        if after is not None and key[strip:] <= after:
            continue
        if len(chosen) == QUERY_ITEMS_MAX:
            return chosen, chosen[-1][0][strip:]
        chosen.append((key, value))
    return chosen, None


def audit_page(view: StateView, patient: bytes,
               after: bytes | None) -> tuple[list[AccessEntry], bytes | None]:
    """One page of the patient's audit trail, and the cursor for the next."""
    prefix = AUDIT + patient
    entries, cursor = page(view.scan(prefix), len(prefix), after)
    return [decode_value(raw, AccessEntry, prefix) for _, raw in entries], cursor


def grants_in_force(view: StateView, patient: bytes) -> list[bytes]:
    """The ids of the patient's grants in force."""
    time_ms = _now_ms(view)
    return [grant_id for grant_id in queries.patient_grant_ids(view, patient)
            if (grant := queries.grant(view, grant_id)) is not None
            and grant_valid_at(grant, time_ms)]


def own_grants(view: StateView, asker: bytes) -> list[bytes]:
    """The ids of the grants that `asker` gave or received."""
    return sorted(queries.patient_grant_ids(view, asker) + queries.grantee_grant_ids(view, asker))
