"""Questions asked of the ledger state: a patient's records and their versions, grants by patient
and by grantee, a patient's audit trail, whether a grant was in force at a given time, every
record (a node's ciphertext store rebuilds from it), open validator votes and committed evidence.

All are prefix scans over the indexes that the rules maintain (ledger/state.py lists them), so
they cost what they return, and they read only finalized state. The node's shell asks here and
never slices a state key itself: only the ledger knows the layout.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from healthnode.ledger.rules import authority_set, grant_valid_at
from healthnode.ledger.state import (
    AUDIT,
    CIPHERTEXT,
    EVIDENCE,
    GRANT,
    GRANTEE_GRANT,
    PATIENT_GRANT,
    PATIENT_RECORD,
    PURGE,
    RECORD,
    RULES_PROPOSAL,
    VALIDATOR_PROPOSAL,
    StateView,
    decode_value,
    read,
)
from healthnode.protocol.state import (
    AccessEntry,
    EvidenceEntry,
    GrantState,
    PurgeState,
    RecordState,
    RulesProposal,
    ValidatorProposal,
)


@dataclass(frozen=True, slots=True)
class RecordVersion:
    record_id: bytes
    record: RecordState


def record(view: StateView, record_id: bytes) -> RecordState | None:
    return read(view, RECORD + record_id, RecordState)


def patient_records(view: StateView, patient: bytes) -> list[list[RecordVersion]]:
    """The patient's records, one list per version chain, oldest version first; chains in order
    of their first version's height."""
    versions: dict[bytes, RecordState] = {}
    for record_id in patient_record_ids(view, patient):
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
    for grant_id in _ids(view, prefix):
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


def _ids(view: StateView, prefix: bytes) -> list[bytes]:
    """The ids an index holds under `prefix` (its keys are prefix | id), in id order."""
    return [key[len(prefix):] for key, _ in view.scan(prefix)]


def patient_record_ids(view: StateView, patient: bytes) -> list[bytes]:
    return _ids(view, PATIENT_RECORD + patient)


def patient_grant_ids(view: StateView, patient: bytes) -> list[bytes]:
    return _ids(view, PATIENT_GRANT + patient)


def grantee_grant_ids(view: StateView, grantee: bytes) -> list[bytes]:
    return _ids(view, GRANTEE_GRANT + grantee)


def all_records(view: StateView) -> Iterator[tuple[bytes, RecordState]]:
    """Every record (its id and state), in id order."""
    for key, raw in view.scan(RECORD):
        yield key[len(RECORD):], decode_value(raw, RecordState, key)


def open_proposals(view: StateView) -> list[tuple[bytes, ValidatorProposal]]:
    """The validator votes still open, by proposal id."""
    return [(key[len(VALIDATOR_PROPOSAL):], decode_value(value, ValidatorProposal, key))
            for key, value in view.scan(VALIDATOR_PROPOSAL)]


def purges(view: StateView, record_id: bytes) -> PurgeState | None:
    """The authorities that have stated the purge of an erased record, if any has."""
    return read(view, PURGE + record_id, PurgeState)


def rules_proposals(view: StateView) -> list[tuple[bytes, RulesProposal]]:
    """The rules votes still open, by proposal id."""
    return [(key[len(RULES_PROPOSAL):], decode_value(value, RulesProposal, key))
            for key, value in view.scan(RULES_PROPOSAL)]


def committed_evidence(view: StateView) -> list[EvidenceEntry]:
    """Every equivocation committed, newest first."""
    return sorted((decode_value(value, EvidenceEntry, key)
                   for key, value in view.scan(EVIDENCE)),
                  key=lambda entry: (-entry.height, entry.evidence_hash))


def record_of_ciphertext(view: StateView, ciphertext_hash: bytes
                         ) -> tuple[bytes, RecordState] | None:
    """The record (id and state) that anchors `ciphertext_hash`, if any."""
    record_id = view.get(CIPHERTEXT + ciphertext_hash)
    if record_id is None:
        return None
    found = record(view, record_id)
    assert found is not None, "ciphertext index points at a missing record"
    return record_id, found


def authority_names(view: StateView, height: int) -> dict[bytes, str]:
    """The names of the authorities that decide `height`, by public key."""
    return {a.public_key: a.name for a in authority_set(view, height).authorities}
