"""A patient's records: `record.anchor` (an encrypted blob's hash and size, its blinded tags and
key wraps, within the signer's budgets), `record.erase` (crypto-shredding: the anchor stays,
marked erased, and from rules version 3 its emergency wrap goes), `record.purged` (from rules
version 3: each authority's statement that the erased ciphertext has left its files), and
`access.log`, the audit entry of each read: by the patient, under a grant, or by breaking the
glass; and from rules version 5 a representative's writes and reads (`representatives.py`).
"""

from __future__ import annotations

from healthnode.crypto import threshold
from healthnode.ledger.rules import representatives
from healthnode.ledger.rules.block_context import BlockContext
from healthnode.ledger.rules.budgets import BlockTally, charge_quota
from healthnode.ledger.rules.consent import check_grant_read, write_grant_covers
from healthnode.ledger.rules.emergency import check_bound_wrap, check_break_glass
from healthnode.ledger.rules.governance import active_provider, require_authority
from healthnode.ledger.rules.refusals import Reason, Reject
from healthnode.ledger.state import (
    AUDIT,
    CIPHERTEXT,
    EMERGENCY_WRAP,
    PATIENT_RECORD,
    PURGE,
    QUOTA,
    RECORD,
    Overlay,
    height_bytes,
    read,
)
from healthnode.protocol.genesis import REPRESENTATIVES_FROM
from healthnode.protocol.padding import is_padded, padded_size
from healthnode.protocol.schema import replace
from healthnode.protocol.state import (
    AccessEntry,
    EmergencyWrapState,
    Purge,
    PurgeState,
    RecordState,
)
from healthnode.protocol.tx import AccessLog, RecordAnchor, RecordErase, RecordPurged


def record_anchor(state: Overlay, tx: RecordAnchor, now: BlockContext,
                  tally: BlockTally) -> None:
    if now.rules >= 3 and not is_padded(tx.ciphertext_bytes):
        raise Reject(Reason.CIPHERTEXT_NOT_PADDED,
                     f"{tx.ciphertext_bytes} bytes is no padded length; the next is "
                     f"{padded_size(tx.ciphertext_bytes)} (the wallet pads every record)")
    author_is_provider = representative = False
    if tx.signer != tx.patient and now.rules >= REPRESENTATIVES_FROM and \
            representatives.may_act(state, tx.signer, tx.patient, "write", now.time_ms):
        representative = True  # writes as the patient would, on its own budget
    elif tx.signer != tx.patient:
        if active_provider(state, tx.signer) is None:
            raise Reject(Reason.AUTHOR_NOT_PROVIDER,
                         "only the patient or an active provider may anchor a record")
        if not write_grant_covers(state, tx.patient, tx.signer, tx.tags, now.time_ms):
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
    quota = charge_quota(state, tx, now.quotas, now.time_ms, tally, author_is_provider)

    record_id = tx.hash
    if tx.emergency_wrap is not None:
        state.put(EMERGENCY_WRAP + record_id, EmergencyWrapState(tx.emergency_wrap, now.height))
    state.put(RECORD + record_id, RecordState(
        tx.patient, tx.signer, tx.ciphertext_hash, tx.ciphertext_bytes, tx.tags, tx.supersedes,
        None, now.height, now.time_ms, None, None))
    state.put(PATIENT_RECORD + tx.patient + record_id, b"")
    state.put(CIPHERTEXT + tx.ciphertext_hash, record_id)
    if previous is not None and tx.supersedes is not None:
        state.put(RECORD + tx.supersedes, replace(previous, superseded_by=record_id))
    state.put(QUOTA + tx.signer, quota)
    if representative:
        representatives.record_act(state, tx.patient, tx.signer, record_id, tx.KIND, now)
    tally.records[tx.signer] = tally.records.get(tx.signer, 0) + 1
    tally.ciphertext_bytes[tx.signer] = (
        tally.ciphertext_bytes.get(tx.signer, 0) + tx.ciphertext_bytes)


def access_log(state: Overlay, tx: AccessLog, now: BlockContext, _tally: BlockTally) -> None:
    require_authority(tx.signer, now)
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
        check_break_glass(state, tx, record)
    elif tx.grant_id is None and now.rules >= REPRESENTATIVES_FROM and \
            representatives.may_act(state, tx.reader, tx.patient, "read", now.time_ms):
        pass  # a representative that may read reads every record of the patient's, as it would
    else:
        check_grant_read(state, tx, record, now)
    index = sum(1 for _ in state.scan(AUDIT + tx.patient + height_bytes(now.height)))
    state.put(AUDIT + tx.patient + height_bytes(now.height) + index.to_bytes(4, "big"),
              AccessEntry(tx.hash, tx.signer, tx.reader, tx.record_id, tx.grant_id,
                          tx.break_glass, tx.purpose, now.height, now.time_ms))


def record_erase(state: Overlay, tx: RecordErase, now: BlockContext,
                 _tally: BlockTally) -> None:
    record = read(state, RECORD + tx.record_id, RecordState)
    if record is None:
        raise Reject(Reason.UNKNOWN_RECORD, "no such record")
    if record.patient != tx.signer:
        raise Reject(Reason.NOT_RECORD_OWNER, "only the patient may erase a record")
    if record.erased_height is not None:
        raise Reject(Reason.RECORD_ALREADY_ERASED, f"erased at height {record.erased_height}")
    state.put(RECORD + tx.record_id, replace(
        record, erased_height=now.height, erased_time_ms=now.time_ms))
    if now.rules >= 3:  # the wrap opens nothing once the ciphertext is gone: it goes too
        state.delete(EMERGENCY_WRAP + tx.record_id)


def record_purged(state: Overlay, tx: RecordPurged, now: BlockContext,
                  _tally: BlockTally) -> None:
    if now.rules < 3:
        raise Reject(Reason.KIND_NOT_IN_RULES,
                     f"record.purged is in rules version 3 on; version {now.rules} is in force")
    require_authority(tx.signer, now)
    record = read(state, RECORD + tx.record_id, RecordState)
    if record is None:
        raise Reject(Reason.UNKNOWN_RECORD, "no such record")
    if record.erased_height is None:
        raise Reject(Reason.RECORD_NOT_ERASED, "the record is not erased")
    done = read(state, PURGE + tx.record_id, PurgeState)
    purges = done.purges if done is not None else ()
    if any(purge.authority == tx.signer for purge in purges):
        raise Reject(Reason.ALREADY_PURGED, "this authority already stated the purge")
    state.put(PURGE + tx.record_id, PurgeState(tuple(sorted(
        (*purges, Purge(tx.signer, now.height)), key=lambda purge: purge.authority))))
