"""A patient's consent: when a grant is in force (`grant_valid_at`) and which records it covers
(`record_in_scope`), `consent.grant` and `consent.revoke`, the write grant a provider's
`record.anchor` needs, and the grant a provider's read (`access.log`) is checked against.

From rules version 5 (`PURPOSES_FROM`) a grant may name the purposes it allows
(`consent.grant_purposes`), kept in its state; a read under it for another purpose is refused,
naming the grant's purposes. A grant that names none (every `consent.grant`, kind 4, before or
after version 5) allows every purpose, as grants always did. And `consent.revoke_provider` ends
every grant of the signer's to one grantee in one transaction.
"""

from __future__ import annotations

from collections.abc import Sequence

from healthnode import limits
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
from healthnode.protocol.genesis import PURPOSES_FROM
from healthnode.protocol.schema import replace
from healthnode.protocol.state import GrantState, RecordState
from healthnode.protocol.tx import (
    PURPOSE_CODES,
    AccessLog,
    AnyGrant,
    ConsentGrantPurposes,
    ConsentRevoke,
    ConsentRevokeProvider,
    grant_purposes,
)


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


def purpose_allowed(grant: GrantState, purpose: str) -> bool:
    """A grant that names no purposes (made as `consent.grant`) allows every purpose."""
    return not grant.purposes or purpose in grant.purposes


def with_codes(purposes: tuple[str, ...]) -> str:
    """`treatment (TREAT), research (HRESCH)`: purposes as words and FHIR purpose-of-use codes."""
    return ", ".join(f"{purpose} ({PURPOSE_CODES[purpose]})" for purpose in purposes)


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


def consent_grant(state: Overlay, tx: AnyGrant, now: BlockContext,
                  _tally: BlockTally) -> None:
    """Either kind of grant: `consent.grant` (every purpose) or, from rules version 5,
    `consent.grant_purposes`."""
    grant(state, tx, tx.hash, tx.signer, now)


def grant(state: Overlay, tx: AnyGrant, grant_id: bytes, payer: bytes,
          now: BlockContext) -> None:
    """The patient's (`tx.signer`'s) grant of either kind, under `grant_id`, charged to
    `payer`'s daily budget: the patient's own, or a representative's
    (`ledger/rules/representatives.py`)."""
    if isinstance(tx, ConsentGrantPurposes) and now.rules < PURPOSES_FROM:
        raise Reject(Reason.KIND_NOT_IN_RULES,
                     f"consent.grant_purposes is in rules version {PURPOSES_FROM} on; version "
                     f"{now.rules} is in force")
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
                       tx.expires_at_ms, now.height, now.time_ms, None, None,
                       grant_purposes(tx))
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


def consent_revoke_provider(state: Overlay, tx: ConsentRevokeProvider, now: BlockContext,
                            _tally: BlockTally) -> None:
    """Revoke every grant of the signer's to `tx.grantee` that is in force or not yet begun
    (not revoked, not expired at the block time), up to GRANTS_REVOKED_PER_TX_MAX in grant id
    order. No daily budget: each one ends at least one grant, so a key's are bounded by its
    grants, and a patient's withdrawal of consent is never refused for a budget."""
    if now.rules < PURPOSES_FROM:
        raise Reject(Reason.KIND_NOT_IN_RULES,
                     f"consent.revoke_provider is in rules version {PURPOSES_FROM} on; version "
                     f"{now.rules} is in force")
    prefix = PAIR_GRANT + tx.signer + tx.grantee
    ending: list[tuple[bytes, GrantState]] = []
    for key, _ in state.scan(prefix):
        grant_id = key[len(prefix):]
        grant = read(state, GRANT + grant_id, GrantState)
        assert grant is not None, "pair index points at a missing grant"
        if grant.revoked_height is None and (
                grant.expires_at_ms is None or now.time_ms < grant.expires_at_ms):
            ending.append((grant_id, grant))
            if len(ending) == limits.GRANTS_REVOKED_PER_TX_MAX:
                break
    if not ending:
        raise Reject(Reason.NO_GRANT_TO_REVOKE,
                     "none of your grants to this key is in force: nothing to revoke")
    for grant_id, grant in ending:
        state.put(GRANT + grant_id, replace(
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
    if now.rules >= PURPOSES_FROM and not purpose_allowed(grant, tx.purpose):
        raise Reject(Reason.PURPOSE_NOT_GRANTED,
                     f"the grant allows reading for {with_codes(grant.purposes)} only, not for "
                     f"{with_codes((tx.purpose,))}")
