"""Representatives (rules version 5 on): a patient appoints a key to act for it, within a scope
and until a date (`representative.appoint`); the patient or the representative ends it
(`representative.end`); and the representative acts with its own key (`representative.act`,
and for writing a `record.anchor` it signs as author; `records.py` asks `acting_for`).

Theory of operation
-------------------
An appointment is the patient's, kept under patient | representative (`APPOINTMENT`). It is in
force from its block until `ends_at_ms` of block time, or until a `representative.end`: no
transaction ends an appointment at its date, the block time does (so a guardian's appointment
for a minor ends by itself the day the child comes of age, as a grant expires). Each scope allows
exactly this, and nothing else:

- `grant`: a `consent.grant` or `consent.grant_purposes`, and a `consent.revoke` or
  `consent.revoke_provider`, of the patient's, as a `representative.act`;
- `policy`: an `emergency.policy` of the patient's, as a `representative.act`;
- `write`: a `record.anchor` for the patient, signed by the representative as its author;
- `read`: an `access.log` of a read by the representative of any of the patient's records
  (`records.py`), as a read under a grant that covers them all.

An act is the patient's transaction as the patient would sign it (the patient as signer, the
act's nonce the wrapper's, `ACT_UNSIGNED` as signature), applied by the same handler as the
patient's own (`consent.grant`, `consent.revoke_provider`, `emergency.policy`, ...), so that no
rule exists twice (and the kinds of rules version 5 are refused before it in an act too); a
grant made so has the `representative.act`'s hash as its id, so it is found and proven as any
transaction is. A representative's grants and policies count against its own daily budgets
(it signs them), an appointment against the patient's daily budget of grants.

What a representative can never do is not in any scope, and not in the wire type either: an act
is a grant, a revoke or a policy, so it cannot appoint another representative, erase a record
or rotate the patient's key; a `record.erase` or a `representative.appoint` it signs is its own.

Every act is a line of the patient's acts by representatives (`ACT_COUNT`, `ACT_LINE`): who, the
transaction, its kind and block. A representative's reads are in the patient's audit trail as
every read is (`AUDIT`), with the representative as the reader.
"""

from __future__ import annotations

from healthnode import limits
from healthnode.ledger.rules import consent, emergency
from healthnode.ledger.rules.block_context import BlockContext
from healthnode.ledger.rules.budgets import BlockTally, charge_grant
from healthnode.ledger.rules.consent import own_record
from healthnode.ledger.rules.refusals import Reason, Reject
from healthnode.ledger.state import (
    ACT_COUNT,
    ACT_LINE,
    APPOINTMENT,
    DAILY_TXS,
    Overlay,
    StateView,
    decode_value,
    read,
)
from healthnode.protocol.genesis import REPRESENTATIVES_FROM
from healthnode.protocol.schema import replace
from healthnode.protocol.state import (
    ActLine,
    AppointmentState,
    act_count_decode,
    act_count_encode,
)
from healthnode.protocol.tx import (
    ACT_UNSIGNED,
    GRANT_CLASSES,
    ConsentRevoke,
    ConsentRevokeProvider,
    EmergencyPolicy,
    RepresentativeAct,
    RepresentativeAppoint,
    RepresentativeEnd,
)


def in_force(appointment: AppointmentState, time_ms: int) -> bool:
    """An appointment is in force from its block's time until its date or its end."""
    return (appointment.time_ms <= time_ms < appointment.ends_at_ms
            and appointment.ended_time_ms is None)


def appointment(view: StateView, patient: bytes, representative: bytes) -> AppointmentState | None:
    return read(view, APPOINTMENT + patient + representative, AppointmentState)


def may_act(view: StateView, representative: bytes, patient: bytes, scope: str,
            time_ms: int) -> bool:
    """Whether an appointment of `patient`'s in force at `time_ms` lets `representative` act
    within `scope`."""
    found = appointment(view, patient, representative)
    return found is not None and in_force(found, time_ms) and scope in found.scopes


def acting_for(view: StateView, representative: bytes, patient: bytes, scope: str,
               now: BlockContext) -> AppointmentState:
    """The appointment that lets `representative` act for `patient` within `scope` at `now`,
    or the refusal that names what is missing."""
    _require_rules(now, "a representative's act")
    found = appointment(view, patient, representative)
    if found is None:
        raise Reject(Reason.NO_APPOINTMENT, "the patient has not appointed this key")
    if not in_force(found, now.time_ms):
        raise Reject(Reason.APPOINTMENT_NOT_IN_FORCE, "the appointment ended"
                     + (f" at height {found.ended_height}" if found.ended_height is not None
                        else f" at its date ({found.ends_at_ms} ms)"))
    if scope not in found.scopes:
        raise Reject(Reason.OUTSIDE_APPOINTMENT_SCOPE,
                     f"the appointment's scope is {', '.join(found.scopes)}, not {scope}")
    return found


def record_act(state: Overlay, patient: bytes, representative: bytes, tx_hash: bytes,
               kind: int, now: BlockContext) -> None:
    """The patient's next act line: `representative` did `tx_hash` (of `kind`) for it now."""
    count = act_count_decode(state.get(ACT_COUNT + patient))
    state.put(ACT_LINE + patient + count.to_bytes(8, "big"),
              ActLine(representative, tx_hash, kind, now.height, now.time_ms).encode())
    state.put(ACT_COUNT + patient, act_count_encode(count + 1))


def appointments_in_force(view: StateView, patient: bytes, time_ms: int) -> list[bytes]:
    """The representatives whose appointment by `patient` is in force at `time_ms`."""
    prefix = APPOINTMENT + patient
    return [key[len(prefix):] for key, raw in view.scan(prefix)
            if in_force(decode_value(raw, AppointmentState, key), time_ms)]


def representative_appoint(state: Overlay, tx: RepresentativeAppoint, now: BlockContext,
                           _tally: BlockTally) -> None:
    _require_rules(now, "representative.appoint")
    patient = tx.signer
    if tx.representative == patient:
        raise Reject(Reason.SELF_APPOINTMENT, "a patient needs no representative for itself")
    if tx.ends_at_ms <= now.time_ms:
        raise Reject(Reason.APPOINTMENT_ALREADY_ENDED, "the end is not after the block time")
    others = [key for key in appointments_in_force(state, patient, now.time_ms)
              if key != tx.representative]
    if len(others) >= limits.REPRESENTATIVES_PER_PATIENT_MAX:
        raise Reject(Reason.REPRESENTATIVES_FULL,
                     f"at most {limits.REPRESENTATIVES_PER_PATIENT_MAX} appointments in force")
    wrapped = [wrap.record_id for wrap in tx.key_wraps]
    if len(set(wrapped)) != len(wrapped):
        raise Reject(Reason.DUPLICATE_KEY_WRAP, "two key wraps for one record")
    if wrapped and "read" not in tx.scopes:
        raise Reject(Reason.KEY_WRAP_OUTSIDE_SCOPE, "key wraps for a representative that may "
                                                    "not read")
    for record_id in wrapped:
        own_record(state, patient, record_id)
    state.put(DAILY_TXS + patient, charge_grant(state, patient, now.quotas, now.time_ms))
    state.put(APPOINTMENT + patient + tx.representative, AppointmentState(
        tx.scopes, tx.ends_at_ms, tx.hash, now.height, now.time_ms, None, None,
        tx.tag_key_wrap))


def representative_end(state: Overlay, tx: RepresentativeEnd, now: BlockContext,
                       _tally: BlockTally) -> None:
    _require_rules(now, "representative.end")
    if tx.signer not in (tx.patient, tx.representative):
        raise Reject(Reason.NOT_APPOINTMENT_PARTY,
                     "only the patient or the representative ends an appointment")
    found = appointment(state, tx.patient, tx.representative)
    if found is None:
        raise Reject(Reason.NO_APPOINTMENT, "the patient has not appointed this key")
    if not in_force(found, now.time_ms):
        raise Reject(Reason.APPOINTMENT_NOT_IN_FORCE, "the appointment has ended already")
    state.put(APPOINTMENT + tx.patient + tx.representative, replace(
        found, ended_height=now.height, ended_time_ms=now.time_ms))


def representative_act(state: Overlay, tx: RepresentativeAct, now: BlockContext,
                       _tally: BlockTally) -> None:
    _require_rules(now, "representative.act")
    act, patient = tx.act, tx.act.signer
    if act.nonce != tx.nonce or act.signature != ACT_UNSIGNED:
        raise Reject(Reason.BAD_ACT, "an act carries the wrapper's nonce and no signature")
    if patient == tx.signer:
        raise Reject(Reason.BAD_ACT, "a patient signs its own transactions")
    if isinstance(act, GRANT_CLASSES):  # either kind (grant_purposes: version 5, as this)
        acting_for(state, tx.signer, patient, "grant", now)
        if act.grantee == tx.signer:
            raise Reject(Reason.SELF_GRANT, "a representative does not grant to itself")
        consent.grant(state, act, tx.hash, tx.signer, now)
    elif isinstance(act, ConsentRevoke):
        acting_for(state, tx.signer, patient, "grant", now)
        consent.consent_revoke(state, act, now, _tally)
    elif isinstance(act, ConsentRevokeProvider):
        acting_for(state, tx.signer, patient, "grant", now)
        consent.consent_revoke_provider(state, act, now, _tally)
    else:
        assert isinstance(act, EmergencyPolicy), "the wire type allows these five"
        acting_for(state, tx.signer, patient, "policy", now)
        emergency.policy(state, act, tx.signer, now)
    record_act(state, patient, tx.signer, tx.hash, act.KIND, now)


def _require_rules(now: BlockContext, kind: str) -> None:
    if now.rules < REPRESENTATIVES_FROM:
        raise Reject(Reason.KIND_NOT_IN_RULES,
                     f"{kind} is in rules version {REPRESENTATIVES_FROM} on; version "
                     f"{now.rules} is in force")
