"""A patient's consent: when a grant is in force (`grant_valid_at`) and which records it covers
(`record_in_scope`), `consent.grant` and `consent.revoke`, the write grant a provider's
`record.anchor` needs, and the grant a provider's read (`access.log`) is checked against.
"""

from __future__ import annotations

from collections.abc import Sequence

from healthnode.ledger.rules.block_context import BlockContext
from healthnode.ledger.rules.budgets import BlockTally, charge_grant
from healthnode.ledger.rules.governance import active_provider
from healthnode.ledger.rules.refusals import Reason, Reject
from healthnode.ledger.state import (
    DAILY_TXS,
    GRANT,
    GRANTEE_GRANT,
    PAIR_GRANT,
    PATIENT_GRANT,
    RECORD,
    Overlay,
    read,
)
from healthnode.protocol.schema import replace
from healthnode.protocol.state import GrantState, RecordState
from healthnode.protocol.tx import AccessLog, ConsentGrant, ConsentRevoke


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


def write_grant_covers(state: Overlay, patient: bytes, author: bytes, tags: Sequence[bytes],
                       time_ms: int) -> bool:
    prefix = PAIR_GRANT + patient + author
    for key, _ in state.scan(prefix):
        grant = read(state, GRANT + key[len(prefix):], GrantState)
        assert grant is not None, "pair index points at a missing grant"
        if ("write" in grant.actions and grant_valid_at(grant, time_ms)
                and set(tags) <= set(grant.scope_tags)):
            return True
    return False


def consent_grant(state: Overlay, tx: ConsentGrant, now: BlockContext,
                  _tally: BlockTally) -> None:
    grant(state, tx, tx.hash, tx.signer, now)


def grant(state: Overlay, tx: ConsentGrant, grant_id: bytes, payer: bytes,
          now: BlockContext) -> None:
    """The patient's (`tx.signer`'s) grant, under `grant_id`, charged to `payer`'s daily
    budget: the patient's own, or a representative's (`ledger/rules/representatives.py`)."""
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
        own_record(state, patient, record_id)
    scope = GrantState(patient, tx.grantee, tx.actions, tx.scope_records, tx.scope_tags,
                       tx.expires_at_ms, now.height, now.time_ms, None, None)
    wrapped = [wrap.record_id for wrap in tx.key_wraps]
    if len(set(wrapped)) != len(wrapped):
        raise Reject(Reason.DUPLICATE_KEY_WRAP, "two key wraps for one record")
    for record_id in wrapped:
        record = own_record(state, patient, record_id)
        if not record_in_scope(record_id, record, scope):
            raise Reject(Reason.KEY_WRAP_OUTSIDE_SCOPE,
                         "a key wrap is for a record the grant does not cover")
    daily = charge_grant(state, payer, now.quotas, now.time_ms) if now.rules >= 3 else None
    if daily is not None:
        state.put(DAILY_TXS + payer, daily)
    state.put(GRANT + grant_id, scope)
    state.put(PATIENT_GRANT + patient + grant_id, b"")
    state.put(GRANTEE_GRANT + tx.grantee + grant_id, b"")
    state.put(PAIR_GRANT + patient + tx.grantee + grant_id, b"")


def own_record(state: Overlay, patient: bytes, record_id: bytes) -> RecordState:
    record = read(state, RECORD + record_id, RecordState)
    if record is None:
        raise Reject(Reason.UNKNOWN_SCOPE_RECORD, f"no record {record_id.hex()[:16]}")
    if record.patient != patient:
        raise Reject(Reason.SCOPE_RECORD_OF_OTHER_PATIENT,
                     f"record {record_id.hex()[:16]} belongs to another patient")
    return record


def consent_revoke(state: Overlay, tx: ConsentRevoke, now: BlockContext,
                   _tally: BlockTally) -> None:
    grant = read(state, GRANT + tx.grant_id, GrantState)
    if grant is None:
        raise Reject(Reason.UNKNOWN_GRANT, "no such grant")
    if grant.patient != tx.signer:
        raise Reject(Reason.NOT_GRANT_OWNER, "only the patient who granted may revoke")
    if grant.revoked_height is not None:
        raise Reject(Reason.GRANT_ALREADY_REVOKED, f"revoked at height {grant.revoked_height}")
    state.put(GRANT + tx.grant_id, replace(
        grant, revoked_height=now.height, revoked_time_ms=now.time_ms))


def check_grant_read(state: Overlay, tx: AccessLog, record: RecordState,
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
