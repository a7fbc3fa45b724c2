"""Questions asked of the ledger state: a patient's records and their versions, grants by patient
and by grantee, a patient's audit trail, and whether a grant was in force at a given time.

All are prefix scans over the indexes that the rules maintain (ledger/state.py lists them), so
they cost what they return, and they read only finalized state.
"""

from __future__ import annotations

from dataclasses import dataclass

from healthnode.ledger.rules import grant_valid_at
from healthnode.ledger.state import (
    AUDIT,
    GRANT,
    GRANTEE_GRANT,
    PATIENT_GRANT,
    PATIENT_RECORD,
    RECORD,
    StateView,
    decode_value,
    read,
)
from healthnode.protocol.state import AccessEntry, GrantState, RecordState


@dataclass(frozen=True, slots=True)
class RecordVersion:
    record_id: bytes
    record: RecordState


def record(view: StateView, record_id: bytes) -> RecordState | None:
    return read(view, RECORD + record_id, RecordState)


def patient_records(view: StateView, patient: bytes) -> list[list[RecordVersion]]:
    """The patient's records, one list per version chain, oldest version first; chains in order
    of their first version's height."""
    prefix = PATIENT_RECORD + patient
    versions: dict[bytes, RecordState] = {}
    for key, _ in view.scan(prefix):
        record_id = key[len(prefix):]
        found = record(view, record_id)
        assert found is not None, "patient index points at a missing record"
        versions[record_id] = found
    chains: list[list[RecordVersion]] = []
    for record_id, state in versions.items():
        if state.supersedes is not None:
            continue  # not the first version of its chain
        chain = [RecordVersion(record_id, state)]
        while chain[-1].record.superseded_by is not None:
            successor = chain[-1].record.superseded_by
            chain.append(RecordVersion(successor, versions[successor]))
        chains.append(chain)
    chains.sort(key=lambda chain: (chain[0].record.height, chain[0].record_id))
    return chains


@dataclass(frozen=True, slots=True)
class GrantEntry:
    grant_id: bytes
    grant: GrantState


def grant(view: StateView, grant_id: bytes) -> GrantState | None:
    return read(view, GRANT + grant_id, GrantState)


def _grants(view: StateView, prefix: bytes) -> list[GrantEntry]:
    entries = []
    for key, _ in view.scan(prefix):
        grant_id = key[len(prefix):]
        found = grant(view, grant_id)
        assert found is not None, "grant index points at a missing grant"
        entries.append(GrantEntry(grant_id, found))
    entries.sort(key=lambda entry: (entry.grant.height, entry.grant_id))
    return entries


def grants_by_patient(view: StateView, patient: bytes) -> list[GrantEntry]:
    return _grants(view, PATIENT_GRANT + patient)


def grants_by_grantee(view: StateView, grantee: bytes) -> list[GrantEntry]:
    return _grants(view, GRANTEE_GRANT + grantee)


def grant_in_force(view: StateView, grant_id: bytes, time_ms: int) -> bool:
    """Whether the grant allowed access at block time `time_ms` (False for an unknown grant)."""
    found = grant(view, grant_id)
    return found is not None and grant_valid_at(found, time_ms)


def audit_trail(view: StateView, patient: bytes) -> list[AccessEntry]:
    """Every finalized access to the patient's records, break-glass included, oldest first."""
    return [decode_value(value, AccessEntry, key) for key, value in view.scan(AUDIT + patient)]
