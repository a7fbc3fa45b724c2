"""The ledger's rules, one table per transaction kind: the accepted cases and every refusal.

Each row builds whatever state it needs on a small world (4 hospitals, a clinician, a lab, an
emergency physician, two patients, a lab record and a mental-health record, a read/write grant
for lab results), then asks the rules about one transaction. A last test checks that the tables
together exercise every named refusal reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from healthnode import crypto, limits
from healthnode.codec import SchemaViolation, pack
from healthnode.crypto import dkg, threshold
from healthnode.ledger import queries, rules
from healthnode.ledger.rules import (
    BlockRejected,
    Quotas,
    Reason,
    Rejected,
    rotation,
    rounds,
)
from healthnode.ledger.state import ACT_COUNT, ACT_LINE, decode_value
from healthnode.protocol import block as blocks
from healthnode.protocol.block import Block, Header
from healthnode.protocol.genesis import RULES_NEWEST, RULES_OLDEST, Authority, Genesis
from healthnode.protocol.schema import replace
from healthnode.protocol.state import ActLine, SignerDailyTxs, act_count_decode
from healthnode.protocol.tx import (
    ACT_UNSIGNED,
    PURPOSES,
    AccessLog,
    AnyTx,
    Complaint,
    ConsentGrant,
    ConsentGrantPurposes,
    ConsentRevoke,
    ConsentRevokeProvider,
    EmergencyDeal,
    EmergencyEpochKey,
    EmergencyPolicy,
    EmergencyReshare,
    EmergencyVerdict,
    EmergencyWrap,
    EncryptedSubshare,
    NodeAnnounce,
    NodeObserver,
    ProviderRegister,
    ProviderRevoke,
    RecordAnchor,
    RecordErase,
    RecordKeyWrap,
    RecordPurged,
    RepresentativeAct,
    RepresentativeAppoint,
    RepresentativeEnd,
    RulesVote,
    SealedSubshare,
    ValidatorVote,
    decode_tx,
)
from tests import rounds as rounds_help
from tests.attacks import re_randomise
from tests.chain import (
    AUTHORITIES,
    CHAIN_ID,
    World,
    emergency_dealing,
    identity,
    make_genesis,
    seeded_scalars,
    tag,
    wrap_for,
)

A0, A1, A2, A3 = AUTHORITIES
CLINICIAN = identity("clinician")
LAB = identity("lab")
EMERGENCY = identity("emergency-physician")
PATIENT = identity("patient-x")
OTHER_PATIENT = identity("patient-y")
STRANGER = identity("stranger")
TAG_KEY = b"k" * 32
LAB_TAG = tag(TAG_KEY, "lab")
MENTAL_TAG = tag(TAG_KEY, "mental-health")
DAY_MS = 24 * 3600 * 1000


@dataclass
class Cast:
    world: World
    lab_record: bytes
    mental_record: bytes  # tagged lab and mental-health
    grant: bytes  # PATIENT -> CLINICIAN, read+write, lab


def setup_world(quotas: Quotas = rules.DEFAULT_QUOTAS, rules_version: int | None = None) -> Cast:
    """A world of the newest rules, or of `rules_version` (for rules that a later one changed)."""
    world = World(None if rules_version is None else replace(make_genesis(),
                                                             format=rules_version),
                  quotas=quotas)
    world.commit(
        world.tx(ProviderRegister, A0, provider=CLINICIAN.public_key, roles=("clinician",),
                 display_name="Dr Clinician"),
        world.tx(ProviderRegister, A0, provider=EMERGENCY.public_key,
                 roles=("clinician", "emergency"), display_name="Dr Emergency"),
        world.tx(ProviderRegister, A1, provider=LAB.public_key, roles=("lab",),
                 display_name="City Lab"),
    )
    lab_record = world.anchor(PATIENT, PATIENT, [LAB_TAG])
    mental_record = world.anchor(PATIENT, PATIENT, [LAB_TAG, MENTAL_TAG])
    world.commit(lab_record, mental_record)
    grant = grant_tx(world, CLINICIAN, actions=("read", "write"), scope_tags=(LAB_TAG,))
    world.commit(grant)
    return Cast(world, lab_record.hash, mental_record.hash, grant.hash)


def grant_tx(world: World, grantee: Any, actions: tuple[str, ...] = ("read",),
             scope_records: tuple[bytes, ...] = (), scope_tags: tuple[bytes, ...] = (),
             expires_at_ms: int | None = None, key_wraps: tuple[RecordKeyWrap, ...] = (),
             signer: Any = PATIENT) -> ConsentGrant:
    grantee_key = grantee if isinstance(grantee, bytes) else grantee.public_key
    tx: ConsentGrant = world.tx(
        ConsentGrant, signer, grantee=grantee_key, actions=actions,
        scope_records=tuple(sorted(scope_records)), scope_tags=tuple(sorted(scope_tags)),
        expires_at_ms=expires_at_ms, key_wraps=key_wraps, tag_key_wrap=None)
    return tx


def access(world: World, reader: Any, record_id: bytes, grant_id: bytes | None,
           signer: Any = A0, patient: Any = PATIENT, break_glass: int = 0,
           purpose: str = "treatment") -> AccessLog:
    tx: AccessLog = world.tx(
        AccessLog, signer, reader=reader.public_key, patient=patient.public_key,
        record_id=record_id, grant_id=grant_id, break_glass=break_glass, purpose=purpose,
        sealed_note=None)
    return tx


def vote(world: World, signer: Any, action: str, subject: bytes, name: str) -> ValidatorVote:
    tx: ValidatorVote = world.tx(ValidatorVote, signer, action=action, subject=subject, name=name)
    return tx


def in_block(world: World, txs: list[AnyTx]) -> Rejected | None:
    """Apply `txs` as one block (as a validator would) and return the refusal, if any."""
    now = world.now()
    header = Header(
        chain_id=CHAIN_ID, height=now.height, time_ms=now.time_ms, prev_hash=world.prev_hash,
        last_commit=world.last_commit, txs_root=blocks.txs_root(txs),
        evidence_root=blocks.evidence_root(()),
        validators_hash=blocks.validators_hash(now.authorities), state_hash=b"\0" * 32,
        proposer=A0.public_key)
    try:
        rules.apply_block(world.state, Block(header, tuple(txs), ()), quotas=world.quotas)
    except BlockRejected as error:
        return error.rejected
    raise AssertionError("a block with a zero state hash cannot be accepted")


Make = Callable[[Cast], "AnyTx | Rejected | None"]


@dataclass(frozen=True)
class Case:
    name: str
    make: Make
    expected: Reason | None  # None: accepted
    rules_version: int | None = None  # None: the newest

    def run(self) -> None:
        cast = setup_world(rules_version=self.rules_version)
        outcome = self.make(cast)
        if isinstance(outcome, Rejected) or outcome is None:
            verdict = outcome
        else:
            verdict = cast.world.check(outcome)
            if verdict is None:  # accepted: it must also commit through the block path
                cast.world.commit(outcome)
        assert (verdict.reason if verdict else None) == self.expected, verdict


def cases(*rows: tuple[str, Make, Reason | None], rules_version: int | None = None) -> Any:
    table = [Case(name, make, expected, rules_version) for name, make, expected in rows]
    ALL_CASES.extend(table)
    return pytest.mark.parametrize("case", table, ids=[case.name for case in table])


ALL_CASES: list[Case] = []


# --- any kind -----------------------------------------------------------------------------------

def _bad_signature(c: Cast) -> AnyTx:
    tx = c.world.anchor(PATIENT, PATIENT, [LAB_TAG])
    forged: AnyTx = replace(tx, signature=bytes(64))
    return forged


def _other_chain(c: Cast) -> AnyTx:
    tx = c.world.anchor(PATIENT, PATIENT, [LAB_TAG])
    unsigned = replace(tx, signature=b"")
    signed: AnyTx = unsigned.sign(PATIENT, "another-chain")
    return signed


@cases(
    ("bad_signature", _bad_signature, Reason.BAD_SIGNATURE),
    ("signed_for_another_chain", _other_chain, Reason.BAD_SIGNATURE),
    ("nonce_replayed", lambda c: c.world.tx(ProviderRevoke, A0, nonce=1,
                                            provider=CLINICIAN.public_key),
     Reason.NONCE_REPLAYED),
    ("nonce_gap", lambda c: c.world.tx(ProviderRevoke, A0, nonce=9,
                                       provider=CLINICIAN.public_key), Reason.NONCE_GAP),
)
def test_any_kind(case: Case) -> None:
    case.run()


def test_the_same_transaction_twice_in_one_block_is_refused() -> None:
    cast = setup_world()
    tx = cast.world.anchor(PATIENT, PATIENT, [LAB_TAG])
    now = cast.world.now()
    header = Header(CHAIN_ID, now.height, now.time_ms, cast.world.prev_hash,
                    cast.world.last_commit, blocks.txs_root([tx, tx]), blocks.evidence_root(()),
                    blocks.validators_hash(now.authorities), b"\0" * 32, A0.public_key)
    with pytest.raises(BlockRejected, match="twice"):
        rules.apply_block(cast.world.state, Block(header, (tx, tx), ()))


# --- provider.register ----------------------------------------------------------------------

def _register_revoked(c: Cast) -> AnyTx:
    c.world.commit(c.world.tx(ProviderRevoke, A1, provider=LAB.public_key))
    return c.world.tx(ProviderRegister, A2, provider=LAB.public_key, roles=("lab",),
                      display_name="City Lab")


def _register(signer: Any, provider: bytes) -> Make:
    return lambda c: c.world.tx(ProviderRegister, signer, provider=provider,
                                roles=("pharmacy",), display_name="Pharmacy")


@cases(
    ("authority_registers_new_key", _register(A2, STRANGER.public_key), None),
    ("signer_is_no_authority", _register(PATIENT, STRANGER.public_key), Reason.NOT_AUTHORITY),
    ("provider_is_a_node_key", _register(A2, A3.public_key), Reason.PROVIDER_IS_AUTHORITY),
    ("already_registered", _register(A2, CLINICIAN.public_key),
     Reason.PROVIDER_ALREADY_REGISTERED),
    ("revoked_key_never_again", _register_revoked, Reason.PROVIDER_KEY_REVOKED),
)
def test_provider_register(case: Case) -> None:
    case.run()


# --- provider.revoke ------------------------------------------------------------------------

def _revoke(signer: Any, provider: bytes) -> Make:
    return lambda c: c.world.tx(ProviderRevoke, signer, provider=provider)


def _revoke_twice(c: Cast) -> AnyTx:
    c.world.commit(c.world.tx(ProviderRevoke, A0, provider=CLINICIAN.public_key))
    return c.world.tx(ProviderRevoke, A0, provider=CLINICIAN.public_key)


def _revoke_orphan(c: Cast) -> AnyTx:
    """The lab's hospital (A1) leaves the network; another hospital may then end the lab key."""
    c.world.commit(*(vote(c.world, signer, "remove", A1.public_key, "hospital-1")
                     for signer in (A0, A2, A3)))
    c.world.commit()
    c.world.commit()
    assert A1.public_key not in rules.authorities(c.world.state, c.world.height + 1)
    return c.world.tx(ProviderRevoke, A2, provider=LAB.public_key)


@cases(
    ("registering_authority_revokes", _revoke(A0, CLINICIAN.public_key), None),
    ("any_authority_revokes_when_registrar_left", _revoke_orphan, None),
    ("signer_is_no_authority", _revoke(PATIENT, CLINICIAN.public_key), Reason.NOT_AUTHORITY),
    ("unknown_provider", _revoke(A0, STRANGER.public_key), Reason.UNKNOWN_PROVIDER),
    ("another_hospitals_provider", _revoke(A1, CLINICIAN.public_key),
     Reason.NOT_REGISTERING_AUTHORITY),
    ("revoked_twice", _revoke_twice, Reason.PROVIDER_ALREADY_REVOKED),
)
def test_provider_revoke(case: Case) -> None:
    case.run()


# --- record.anchor --------------------------------------------------------------------------

def _anchor(author: Any, tags: list[bytes], patient: Any = PATIENT) -> Make:
    return lambda c: c.world.anchor(author, patient, tags)


def _anchor_wraps(wraps: tuple[bytes, ...]) -> Make:
    def make(c: Cast) -> AnyTx:
        tx = c.world.anchor(PATIENT, PATIENT, [LAB_TAG], supersedes=None)
        return c.world.tx(RecordAnchor, PATIENT, patient=PATIENT.public_key,
                          ciphertext_hash=b"\x11" * 32, ciphertext_bytes=1024, tags=tx.tags,
                          key_wraps=wrap_for(*wraps), supersedes=None,
                          nonce=tx.nonce)
    return make


def _anchor_same_ciphertext(c: Cast) -> AnyTx:
    original = c.world.anchor(PATIENT, PATIENT, [LAB_TAG], ciphertext=b"same bytes")
    c.world.commit(original)
    return c.world.anchor(PATIENT, PATIENT, [LAB_TAG], ciphertext=b"same bytes")


def _amend(supersedes: Callable[[Cast], bytes], author: Any = PATIENT,
           patient: Any = PATIENT) -> Make:
    return lambda c: c.world.anchor(author, patient, [LAB_TAG], supersedes=supersedes(c))


def _amend_twice(c: Cast) -> AnyTx:
    c.world.commit(c.world.anchor(PATIENT, PATIENT, [LAB_TAG], supersedes=c.lab_record))
    return c.world.anchor(PATIENT, PATIENT, [LAB_TAG], supersedes=c.lab_record)


def _amend_erased(c: Cast) -> AnyTx:
    c.world.commit(c.world.tx(RecordErase, PATIENT, record_id=c.lab_record))
    return c.world.anchor(PATIENT, PATIENT, [LAB_TAG], supersedes=c.lab_record)


def _anchor_after_revoke(c: Cast) -> AnyTx:
    c.world.commit(c.world.tx(ConsentRevoke, PATIENT, grant_id=c.grant))
    return c.world.anchor(CLINICIAN, PATIENT, [LAB_TAG])


def _anchor_after_expiry(c: Cast) -> AnyTx:
    c.world.commit(grant_tx(c.world, LAB, actions=("write",), scope_tags=(LAB_TAG,),
                            expires_at_ms=c.world.time_ms + 5000))
    c.world.commit(advance_ms=5000)
    return c.world.anchor(LAB, PATIENT, [LAB_TAG])


def _anchor_under_read_only(c: Cast) -> AnyTx:
    c.world.commit(grant_tx(c.world, LAB, actions=("read",), scope_tags=(LAB_TAG,)))
    return c.world.anchor(LAB, PATIENT, [LAB_TAG])


def _anchor_by_revoked_provider(c: Cast) -> AnyTx:
    c.world.commit(c.world.tx(ProviderRevoke, A0, provider=CLINICIAN.public_key))
    return c.world.anchor(CLINICIAN, PATIENT, [LAB_TAG])


def _anchor_quota(quotas: Quotas, per_block: bool, count: int, size: int = 1024) -> Make:
    def make(c: Cast) -> Rejected | AnyTx:
        c.world.quotas = quotas
        txs = [c.world.anchor(PATIENT, PATIENT, [LAB_TAG], ciphertext_bytes=size)
               for _ in range(count)]
        if per_block:
            return in_block(c.world, txs)
        for tx in txs[:-1]:
            c.world.commit(tx)
        return txs[-1]
    return make


def _anchor_next_day(c: Cast) -> AnyTx:
    c.world.quotas = Quotas(patient_records_per_day=1)
    c.world.commit(c.world.anchor(PATIENT, PATIENT, [LAB_TAG]), advance_ms=DAY_MS)
    c.world.commit(advance_ms=DAY_MS)
    return c.world.anchor(PATIENT, PATIENT, [LAB_TAG])


def _provider_has_provider_quota(c: Cast) -> Rejected | None:
    c.world.quotas = Quotas(patient_records_per_block=1, provider_records_per_block=3)
    return in_block(c.world, [c.world.anchor(CLINICIAN, PATIENT, [LAB_TAG]) for _ in range(4)])


@cases(
    ("patient_anchors_own_record", _anchor(PATIENT, [LAB_TAG]), None),
    ("provider_with_write_grant", _anchor(CLINICIAN, [LAB_TAG]), None),
    ("patient_amends_a_record", _amend(lambda c: c.lab_record), None),
    ("provider_amends_under_grant", _amend(lambda c: c.lab_record, CLINICIAN), None),
    ("next_day_budget_is_fresh", _anchor_next_day, None),
    ("stranger_writes_for_patient", _anchor(STRANGER, [LAB_TAG]), Reason.AUTHOR_NOT_PROVIDER),
    ("revoked_provider_writes", _anchor_by_revoked_provider, Reason.AUTHOR_NOT_PROVIDER),
    ("provider_without_grant", _anchor(LAB, [LAB_TAG]), Reason.NO_WRITE_GRANT),
    ("grant_lacks_a_tag", _anchor(CLINICIAN, [LAB_TAG, MENTAL_TAG]), Reason.NO_WRITE_GRANT),
    ("grant_revoked", _anchor_after_revoke, Reason.NO_WRITE_GRANT),
    ("grant_expired", _anchor_after_expiry, Reason.NO_WRITE_GRANT),
    ("grant_is_read_only", _anchor_under_read_only, Reason.NO_WRITE_GRANT),
    ("no_wrap_for_patient", _anchor_wraps((CLINICIAN.public_key,)),
     Reason.MISSING_PATIENT_KEY_WRAP),
    ("two_wraps_for_one_reader", _anchor_wraps((PATIENT.public_key, PATIENT.public_key)),
     Reason.DUPLICATE_KEY_WRAP),
    ("ciphertext_anchored_twice", _anchor_same_ciphertext, Reason.CIPHERTEXT_ALREADY_ANCHORED),
    ("supersedes_unknown", _amend(lambda c: b"\x55" * 32), Reason.UNKNOWN_SUPERSEDED_RECORD),
    ("supersedes_other_patients_record",
     _amend(lambda c: c.lab_record, OTHER_PATIENT, OTHER_PATIENT),
     Reason.SUPERSEDES_OTHER_PATIENT),
    ("supersedes_an_old_version", _amend_twice, Reason.RECORD_ALREADY_SUPERSEDED),
    ("supersedes_an_erased_record", _amend_erased, Reason.SUPERSEDED_RECORD_ERASED),
    ("records_per_block", _anchor_quota(Quotas(patient_records_per_block=2), True, 3),
     Reason.SIGNER_RECORDS_PER_BLOCK),
    ("bytes_per_block", _anchor_quota(Quotas(patient_bytes_per_block=2 * 1024 + 1), True, 3),
     Reason.SIGNER_BYTES_PER_BLOCK),
    # The setup anchored two records of 1024 bytes for the patient earlier the same day.
    ("records_per_day", _anchor_quota(Quotas(patient_records_per_day=4), False, 3),
     Reason.SIGNER_RECORDS_PER_DAY),
    ("bytes_per_day", _anchor_quota(Quotas(patient_bytes_per_day=4 * 1024 + 1), False, 3),
     Reason.SIGNER_BYTES_PER_DAY),
    ("size_not_padded", _anchor_quota(Quotas(), False, 1, size=1000),
     Reason.CIPHERTEXT_NOT_PADDED),
    ("providers_have_their_own_budget", _provider_has_provider_quota,
     Reason.SIGNER_RECORDS_PER_BLOCK),
)
def test_record_anchor(case: Case) -> None:
    case.run()


def _raw_anchor(tags: list[bytes], ciphertext_bytes: int) -> bytes:
    return pack([3, 1, PATIENT.public_key, 1, PATIENT.public_key, b"\0" * 32, ciphertext_bytes,
                 tags, [[PATIENT.public_key, b"w" * 80]], None, None, b"\0" * 64])


def test_anchor_size_and_tag_count_limits_are_enforced_by_the_decoder() -> None:
    decode_tx(_raw_anchor([LAB_TAG], 10))  # the well-formed twin decodes
    with pytest.raises(SchemaViolation, match="tags"):
        decode_tx(_raw_anchor([bytes([i]) * 32 for i in range(17)], 10))
    with pytest.raises(SchemaViolation, match="ciphertext_bytes"):
        decode_tx(_raw_anchor([LAB_TAG], 16 * 1024 * 1024 + 1))


# --- consent.grant --------------------------------------------------------------------------

def _grant(grantee: Any, signer: Any = PATIENT, **fields: Any) -> Make:
    def make(c: Cast) -> AnyTx:
        resolved = {key: (value(c) if callable(value) else value) for key, value in fields.items()}
        return grant_tx(c.world, grantee, signer=signer, **resolved)
    return make


def _grant_to_revoked(c: Cast) -> AnyTx:
    c.world.commit(c.world.tx(ProviderRevoke, A1, provider=LAB.public_key))
    return grant_tx(c.world, LAB, scope_tags=(LAB_TAG,))


def _wraps(*records: Callable[[Cast], bytes]) -> Callable[[Cast], tuple[RecordKeyWrap, ...]]:
    return lambda c: tuple(RecordKeyWrap(record(c), b"\x09" * 80) for record in records)


def _grants_beyond_the_day(advance_ms: int) -> Make:
    """The setup granted once today; with a budget of two, a second grant passes and a third
    is refused, unless the day has turned."""
    def make(c: Cast) -> AnyTx:
        c.world.quotas = Quotas(grants_per_day=2)
        c.world.commit(grant_tx(c.world, LAB, scope_tags=(LAB_TAG,)))
        if advance_ms:
            c.world.commit(advance_ms=advance_ms)
        return grant_tx(c.world, LAB, scope_tags=(MENTAL_TAG,))
    return make


@cases(
    ("grant_by_category", _grant(LAB, scope_tags=(LAB_TAG,)), None),
    ("grant_by_record_with_key_wrap",
     _grant(LAB, scope_records=lambda c: (c.mental_record,),
            key_wraps=_wraps(lambda c: c.mental_record)), None),
    ("grant_with_future_expiry",
     _grant(LAB, scope_tags=(LAB_TAG,), expires_at_ms=lambda c: c.world.time_ms + 10_000), None),
    ("grant_to_self", _grant(PATIENT, scope_tags=(LAB_TAG,)), Reason.SELF_GRANT),
    ("grant_to_stranger", _grant(STRANGER, scope_tags=(LAB_TAG,)), Reason.GRANTEE_NOT_PROVIDER),
    ("grant_to_revoked_provider", _grant_to_revoked, Reason.GRANTEE_NOT_PROVIDER),
    ("grant_of_nothing", _grant(LAB), Reason.EMPTY_SCOPE),
    ("grant_already_expired",
     _grant(LAB, scope_tags=(LAB_TAG,), expires_at_ms=lambda c: c.world.time_ms + 1000),
     Reason.GRANT_ALREADY_EXPIRED),
    ("unknown_record_in_scope", _grant(LAB, scope_records=(b"\x66" * 32,)),
     Reason.UNKNOWN_SCOPE_RECORD),
    ("other_patients_record_in_scope",
     _grant(LAB, signer=OTHER_PATIENT, scope_records=lambda c: (c.lab_record,)),
     Reason.SCOPE_RECORD_OF_OTHER_PATIENT),
    ("key_wrap_for_record_outside_scope",
     _grant(LAB, scope_tags=(LAB_TAG,), key_wraps=_wraps(lambda c: c.mental_record)),
     Reason.KEY_WRAP_OUTSIDE_SCOPE),
    ("two_key_wraps_for_one_record",
     _grant(LAB, scope_tags=(LAB_TAG,),
            key_wraps=_wraps(lambda c: c.lab_record, lambda c: c.lab_record)),
     Reason.DUPLICATE_KEY_WRAP),
    ("next_day_grant_budget_is_fresh", _grants_beyond_the_day(DAY_MS), None),
    ("grants_per_day", _grants_beyond_the_day(0), Reason.SIGNER_GRANTS_PER_DAY),
)
def test_consent_grant(case: Case) -> None:
    case.run()


# --- consent.revoke -------------------------------------------------------------------------

def _revoke_grant(signer: Any, grant: Callable[[Cast], bytes]) -> Make:
    return lambda c: c.world.tx(ConsentRevoke, signer, grant_id=grant(c))


def _revoke_grant_twice(c: Cast) -> AnyTx:
    c.world.commit(c.world.tx(ConsentRevoke, PATIENT, grant_id=c.grant))
    return c.world.tx(ConsentRevoke, PATIENT, grant_id=c.grant)


@cases(
    ("patient_revokes_own_grant", _revoke_grant(PATIENT, lambda c: c.grant), None),
    ("unknown_grant", _revoke_grant(PATIENT, lambda c: b"\x77" * 32), Reason.UNKNOWN_GRANT),
    ("someone_elses_grant", _revoke_grant(OTHER_PATIENT, lambda c: c.grant),
     Reason.NOT_GRANT_OWNER),
    ("grantee_cannot_revoke", _revoke_grant(CLINICIAN, lambda c: c.grant),
     Reason.NOT_GRANT_OWNER),
    ("revoked_twice", _revoke_grant_twice, Reason.GRANT_ALREADY_REVOKED),
)
def test_consent_revoke(case: Case) -> None:
    case.run()


# --- access.log -----------------------------------------------------------------------------

def _read(reader: Any, record: Callable[[Cast], bytes] = lambda c: c.lab_record,
          grant: Callable[[Cast], bytes | None] = lambda c: c.grant, **fields: Any) -> Make:
    return lambda c: access(c.world, reader, record(c), grant(c), **fields)


def _after(setup: Callable[[Cast], list[AnyTx]], then: Make, advance_ms: int = 1000) -> Make:
    def make(c: Cast) -> Any:
        c.world.commit(*setup(c), advance_ms=advance_ms)
        return then(c)
    return make


def _no_grant(c: Cast) -> None:
    return None


def _policy(c: Cast, allowed: tuple[bytes, ...],
            wraps: tuple[EmergencyWrap, ...] = (), signer: Any = PATIENT) -> EmergencyPolicy:
    tx: EmergencyPolicy = c.world.tx(EmergencyPolicy, signer,
                                     allowed_tags=tuple(sorted(allowed)), wraps=wraps)
    return tx


def _allow_lab_with_wrap(c: Cast) -> list[AnyTx]:
    wrapped = c.world.record_wrap(c.lab_record)
    return [_policy(c, (LAB_TAG,), (EmergencyWrap(c.lab_record, wrapped),))]


def _write_only_grant(c: Cast) -> AnyTx:
    write_only = grant_tx(c.world, LAB, actions=("write",), scope_tags=(LAB_TAG,))
    c.world.commit(write_only)
    return access(c.world, LAB, c.lab_record, write_only.hash)


def _expired_grant(c: Cast) -> AnyTx:
    short = grant_tx(c.world, LAB, scope_tags=(LAB_TAG,), expires_at_ms=c.world.time_ms + 5000)
    c.world.commit(short)
    c.world.commit(advance_ms=5000)
    return access(c.world, LAB, c.lab_record, short.hash)


@cases(
    ("grantee_reads_under_grant", _read(CLINICIAN), None),
    ("patient_reads_own_record", _read(PATIENT, grant=_no_grant, purpose="patient-request"),
     None),
    ("emergency_physician_breaks_glass",
     _after(_allow_lab_with_wrap, _read(EMERGENCY, grant=_no_grant, break_glass=1,
                                         purpose="er-unconscious")), None),
    ("break_glass_outside_the_patients_policy",
     _after(_allow_lab_with_wrap, _read(EMERGENCY, grant=_no_grant, break_glass=1,
                                         purpose="emergency", record=lambda c: c.mental_record)),
     Reason.BREAK_GLASS_NOT_ALLOWED),
    ("break_glass_without_any_policy",
     _read(EMERGENCY, grant=_no_grant, break_glass=1, purpose="emergency"),
     Reason.BREAK_GLASS_NOT_ALLOWED),
    ("break_glass_after_the_patient_denies",
     _after(_allow_lab_with_wrap,
            _after(lambda c: [_policy(c, ())],
                   _read(EMERGENCY, grant=_no_grant, break_glass=1, purpose="emergency"))),
     Reason.BREAK_GLASS_NOT_ALLOWED),
    ("break_glass_on_a_record_without_emergency_wrap",
     _after(lambda c: [_policy(c, (LAB_TAG,))],
            _read(EMERGENCY, grant=_no_grant, break_glass=1, purpose="emergency")),
     Reason.NO_EMERGENCY_WRAP),
    ("logged_by_no_authority", _read(CLINICIAN, signer=CLINICIAN), Reason.NOT_AUTHORITY),
    ("unknown_record", _read(CLINICIAN, record=lambda c: b"\x88" * 32), Reason.UNKNOWN_RECORD),
    ("record_of_another_patient", _read(CLINICIAN, patient=OTHER_PATIENT),
     Reason.RECORD_PATIENT_MISMATCH),
    ("erased_record",
     _after(lambda c: [c.world.tx(RecordErase, PATIENT, record_id=c.lab_record)],
            _read(CLINICIAN)), Reason.RECORD_ERASED),
    ("patient_with_grant", _read(PATIENT), Reason.PATIENT_READ_WITH_GRANT),
    ("break_glass_with_grant", _read(EMERGENCY, break_glass=1, purpose="emergency"),
     Reason.BREAK_GLASS_WITH_GRANT),
    ("break_glass_for_payment",
     _read(EMERGENCY, grant=_no_grant, break_glass=1, purpose="payment"),
     Reason.BREAK_GLASS_PURPOSE),
    ("break_glass_without_emergency_role",
     _read(CLINICIAN, grant=_no_grant, break_glass=1, purpose="emergency"),
     Reason.READER_LACKS_EMERGENCY_ROLE),
    ("reader_is_no_provider", _read(STRANGER), Reason.READER_NOT_PROVIDER),
    ("reader_was_revoked",
     _after(lambda c: [c.world.tx(ProviderRevoke, A0, provider=CLINICIAN.public_key)],
            _read(CLINICIAN)), Reason.READER_NOT_PROVIDER),
    ("provider_without_grant", _read(LAB, grant=_no_grant), Reason.MISSING_GRANT),
    ("unknown_grant", _read(LAB, grant=lambda c: b"\x99" * 32), Reason.UNKNOWN_GRANT),
    ("someone_elses_grant", _read(LAB), Reason.GRANT_NOT_FOR_READER),
    ("grant_without_read", _write_only_grant, Reason.GRANT_LACKS_READ),
    ("revoked_grant",
     _after(lambda c: [c.world.tx(ConsentRevoke, PATIENT, grant_id=c.grant)],
            _read(CLINICIAN)), Reason.GRANT_REVOKED),
    ("expired_grant", _expired_grant, Reason.GRANT_EXPIRED),
    ("record_outside_scope", _read(CLINICIAN, record=lambda c: c.mental_record),
     Reason.RECORD_OUT_OF_SCOPE),
)
def test_access_log(case: Case) -> None:
    case.run()


# --- record.erase ---------------------------------------------------------------------------

def _erase(signer: Any, record: Callable[[Cast], bytes] = lambda c: c.lab_record) -> Make:
    return lambda c: c.world.tx(RecordErase, signer, record_id=record(c))


@cases(
    ("patient_erases_own_record", _erase(PATIENT), None),
    ("unknown_record", _erase(PATIENT, lambda c: b"\xaa" * 32), Reason.UNKNOWN_RECORD),
    ("provider_cannot_erase", _erase(CLINICIAN), Reason.NOT_RECORD_OWNER),
    ("erased_twice", _after(lambda c: [c.world.tx(RecordErase, PATIENT, record_id=c.lab_record)],
                            _erase(PATIENT)), Reason.RECORD_ALREADY_ERASED),
)
def test_record_erase(case: Case) -> None:
    case.run()


# --- record.purged -------------------------------------------------------------------------

def _purged(signer: Any, erase_first: bool = True,
            record: Callable[[Cast], bytes] = lambda c: c.lab_record) -> Make:
    def make(c: Cast) -> AnyTx:
        if erase_first:
            c.world.commit(c.world.tx(RecordErase, PATIENT, record_id=record(c)))
        return c.world.tx(RecordPurged, signer, record_id=record(c))
    return make


def _purged_twice(c: Cast) -> AnyTx:
    c.world.commit(c.world.tx(RecordErase, PATIENT, record_id=c.lab_record))
    c.world.commit(c.world.tx(RecordPurged, A1, record_id=c.lab_record))
    return c.world.tx(RecordPurged, A1, record_id=c.lab_record)


def _purged_under_rules_2(c: Cast) -> AnyTx:
    c.world = World(replace(make_genesis(), format=RULES_OLDEST))
    anchor: RecordAnchor = c.world.anchor(PATIENT, PATIENT, [LAB_TAG])
    c.world.commit(anchor)
    c.world.commit(c.world.tx(RecordErase, PATIENT, record_id=anchor.hash))
    return c.world.tx(RecordPurged, A0, record_id=anchor.hash)


@cases(
    ("authority_states_its_purge", _purged(A0), None),
    ("non_authority", _purged(CLINICIAN), Reason.NOT_AUTHORITY),
    ("unknown_record", _purged(A0, False, lambda c: b"\xaa" * 32), Reason.UNKNOWN_RECORD),
    ("record_not_erased", _purged(A0, erase_first=False), Reason.RECORD_NOT_ERASED),
    ("purged_twice", _purged_twice, Reason.ALREADY_PURGED),
    ("under_rules_2", _purged_under_rules_2, Reason.KIND_NOT_IN_RULES),
)
def test_record_purged(case: Case) -> None:
    case.run()


def test_purges_are_kept_per_record_by_authority() -> None:
    cast = setup_world()
    world = cast.world
    world.commit(world.tx(RecordErase, PATIENT, record_id=cast.lab_record))
    world.commit(world.tx(RecordPurged, A2, record_id=cast.lab_record))
    world.commit(world.tx(RecordPurged, A0, record_id=cast.lab_record))
    state = queries.purges(world.state, cast.lab_record)
    assert state is not None
    assert [(p.authority, p.height) for p in state.purges] == sorted(
        [(A2.public_key, world.height - 1), (A0.public_key, world.height)])


# --- validator.vote -------------------------------------------------------------------------

NEWCOMER = identity("new-hospital")


def _vote(signer: Any, action: str, subject: bytes, name: str) -> Make:
    return lambda c: vote(c.world, signer, action, subject, name)


def _vote_twice(c: Cast) -> AnyTx:
    c.world.commit(vote(c.world, A0, "add", NEWCOMER.public_key, "new"))
    return vote(c.world, A0, "add", NEWCOMER.public_key, "new")


def _remove_last_authority(c: Cast) -> AnyTx:
    solo = Genesis(CHAIN_ID, c.world.genesis.genesis_time_ms,
                   (Authority("only", A0.public_key),), c.world.genesis.params)
    c.world = World(solo)
    return vote(c.world, A0, "remove", A0.public_key, "only")


def _add_beyond_limit(c: Cast) -> AnyTx:
    crowd = Genesis(CHAIN_ID, c.world.genesis.genesis_time_ms,
                    tuple(Authority(f"h{i}", identity(f"authority-{i}").public_key)
                          for i in range(128)), c.world.genesis.params)
    c.world = World(crowd)
    return vote(c.world, A0, "add", NEWCOMER.public_key, "one-too-many")


@cases(
    ("authority_votes_to_add", _vote(A0, "add", NEWCOMER.public_key, "new"), None),
    ("authority_votes_to_remove", _vote(A0, "remove", A3.public_key, "hospital-3"), None),
    ("non_authority_votes", _vote(CLINICIAN, "add", NEWCOMER.public_key, "new"),
     Reason.NOT_AUTHORITY),
    ("add_an_authority", _vote(A0, "add", A1.public_key, "again"), Reason.ALREADY_AUTHORITY),
    ("remove_a_stranger", _vote(A0, "remove", NEWCOMER.public_key, "new"),
     Reason.SUBJECT_NOT_AUTHORITY),
    ("add_with_a_taken_name", _vote(A0, "add", NEWCOMER.public_key, "hospital-2"),
     Reason.AUTHORITY_NAME_TAKEN),
    ("remove_by_wrong_name", _vote(A0, "remove", A3.public_key, "hospital-2"),
     Reason.AUTHORITY_NAME_MISMATCH),
    ("remove_the_last_authority", _remove_last_authority, Reason.LAST_AUTHORITY),
    ("add_beyond_the_limit", _add_beyond_limit, Reason.AUTHORITIES_FULL),
    ("vote_twice", _vote_twice, Reason.ALREADY_VOTED),
)
def test_validator_vote(case: Case) -> None:
    case.run()


# --- rules.vote --------------------------------------------------------------------------------

def _rules_vote(signer: Any, version: int, ahead: int) -> Make:
    """A vote for `version` from `ahead` heights after the head."""
    return lambda c: c.world.tx(RulesVote, signer, rules_version=version,
                                height=c.world.height + ahead)


def _rules_vote_twice(c: Cast) -> AnyTx:
    height = c.world.height + 10
    c.world.commit(c.world.tx(RulesVote, A0, rules_version=RULES_NEWEST + 1, height=height))
    return c.world.tx(RulesVote, A0, rules_version=RULES_NEWEST + 1, height=height)


def _rules_vote_before_the_scheduled(c: Cast) -> AnyTx:
    schedule_rules(c.world, RULES_NEWEST + 1, c.world.height + 20)
    return c.world.tx(RulesVote, A0, rules_version=RULES_NEWEST + 2, height=c.world.height + 10)


def _rules_move(later: int) -> Make:
    """A vote to move the version scheduled 20 heights ahead by `later` heights."""
    def make(c: Cast) -> AnyTx:
        start = c.world.height + 20
        schedule_rules(c.world, RULES_NEWEST + 1, start)
        return c.world.tx(RulesVote, A0, rules_version=RULES_NEWEST + 1, height=start + later)
    return make


def _rules_move_in_force(c: Cast) -> AnyTx:
    return c.world.tx(RulesVote, A0, rules_version=RULES_NEWEST, height=c.world.height + 10)


def schedule_rules(world: World, version: int, height: int) -> None:
    """A quorum (3 of the 4) votes `version` from `height`, in one block."""
    world.commit(*(world.tx(RulesVote, signer, rules_version=version, height=height)
                   for signer in (A0, A1, A2)))


@cases(
    ("authority_votes_for_the_next_version", _rules_vote(A0, RULES_NEWEST + 1, 3), None),
    ("non_authority_votes", _rules_vote(CLINICIAN, RULES_NEWEST + 1, 3), Reason.NOT_AUTHORITY),
    ("skips_a_version", _rules_vote(A0, RULES_NEWEST + 2, 3), Reason.RULES_VERSION_NOT_NEXT),
    ("the_version_in_force", _rules_vote(A0, RULES_NEWEST, 3), Reason.RULES_VERSION_NOT_NEXT),
    # voted in block head+1, it could start at head+3 at the earliest
    ("starts_too_soon", _rules_vote(A0, RULES_NEWEST + 1, 2), Reason.RULES_HEIGHT_TOO_SOON),
    ("starts_before_the_version_scheduled", _rules_vote_before_the_scheduled,
     Reason.RULES_HEIGHT_TOO_SOON),
    ("vote_twice", _rules_vote_twice, Reason.ALREADY_VOTED),
    ("move_to_the_height_it_has", _rules_move(0), Reason.RULES_ALREADY_SCHEDULED),
    ("move_a_scheduled_version", _rules_move(30), None),
    ("move_a_version_in_force", _rules_move_in_force, Reason.RULES_VERSION_NOT_NEXT),
)
def test_rules_vote(case: Case) -> None:
    case.run()


def test_a_quorum_schedules_the_rules_from_the_height_it_voted() -> None:
    """Two votes of four are no quorum; the third schedules the version at the height voted,
    every open proposal for that version ends, and the rules in force change exactly there."""
    world = World()
    start = world.height + 6
    world.commit(world.tx(RulesVote, A0, rules_version=RULES_NEWEST + 1, height=start),
                 world.tx(RulesVote, A1, rules_version=RULES_NEWEST + 1, height=start + 1))
    world.commit(world.tx(RulesVote, A1, rules_version=RULES_NEWEST + 1, height=start))
    assert rules.latest_rules(world.state) == (RULES_NEWEST, 1)
    world.commit(world.tx(RulesVote, A2, rules_version=RULES_NEWEST + 1, height=start))
    assert rules.latest_rules(world.state) == (RULES_NEWEST + 1, start)
    assert list(world.state.scan(b"rprop/")) == []  # the vote for start + 1 ended too
    assert rules.rules_at(world.state, start - 1) == RULES_NEWEST
    assert rules.rules_at(world.state, start) == RULES_NEWEST + 1


def test_a_quorum_moves_a_scheduled_version_while_it_is_not_in_force() -> None:
    world = World()
    first = world.height + 10
    schedule_rules(world, RULES_NEWEST + 1, first)
    schedule_rules(world, RULES_NEWEST + 1, first + 50)  # more time for the hospitals
    assert rules.latest_rules(world.state) == (RULES_NEWEST + 1, first + 50)
    assert rules.rules_at(world.state, first + 49) == RULES_NEWEST
    assert [start for start, _ in rules.rules_schedule(world.state)] == [1, first + 50]
    schedule_rules(world, RULES_NEWEST + 1, world.height + 3)  # or sooner again
    assert rules.latest_rules(world.state) == (RULES_NEWEST + 1, world.height + 2)


def test_a_release_without_the_scheduled_rules_refuses_the_block_at_their_height() -> None:
    """The context of the block at the height where an unknown version starts is refused with
    the error that names it (the node stops there: tests/test_upgrade.py), and the blocks
    before it are still decided."""
    world = World()
    start = world.height + 4
    schedule_rules(world, RULES_NEWEST + 1, start)
    while world.height + 1 < start:
        world.commit()
    with pytest.raises(rules.RulesUnknown, match=f"version {RULES_NEWEST + 1} from height "
                                                 f"{start}.*install a release"):
        world.now()
    with pytest.raises(rules.RulesUnknown):
        rules.next_context(world.state, world.time_ms + 1000)


def _erase_with_wrap(genesis: Genesis) -> tuple[World, RecordAnchor]:
    world = World(genesis)
    anchor: RecordAnchor = world.anchor(PATIENT, PATIENT, [LAB_TAG], with_emergency_wrap=True)
    world.commit(anchor)
    return world, anchor


def test_erasure_deletes_the_emergency_wrap_from_rules_3_and_only_from_them() -> None:
    """Rules 2 keep an erased record's emergency wrap; on the same chain, once version 3 is in
    force, an erasure deletes it. A chain that starts with version 3 deletes it from the first
    block."""
    old = replace(make_genesis(), format=RULES_OLDEST)
    world, kept = _erase_with_wrap(old)
    assert rules.rules_at(world.state, world.height + 1) == 2
    world.commit(world.tx(RecordErase, PATIENT, record_id=kept.hash))
    assert world.state.get(b"ewrap/" + kept.hash) is not None
    start = world.height + 3
    schedule_rules(world, 3, start)
    second: RecordAnchor = world.anchor(PATIENT, PATIENT, [LAB_TAG], with_emergency_wrap=True)
    world.commit(second)
    while world.height + 1 < start:
        world.commit()
    world.commit(world.tx(RecordErase, PATIENT, record_id=second.hash))
    assert world.state.get(b"ewrap/" + second.hash) is None
    assert world.state.get(b"ewrap/" + kept.hash) is not None  # what rules 2 did stays done

    world, anchor = _erase_with_wrap(replace(make_genesis(), format=3))
    world.commit(world.tx(RecordErase, PATIENT, record_id=anchor.hash))
    assert world.state.get(b"ewrap/" + anchor.hash) is None


def test_daily_budgets_of_grants_and_policies_are_rules_3_and_only_rules_3() -> None:
    """On a chain of rules 2 a key's grants and policies are neither counted nor refused (their
    state roots stay those of the releases before); from version 3 each is counted in the
    signer's `daily/` key, proven to the signer like its quota."""
    quotas = Quotas(grants_per_day=1, emergency_policies_per_day=1)
    old = World(replace(make_genesis(), format=RULES_OLDEST), quotas=quotas)
    old.commit(old.tx(ProviderRegister, A0, provider=LAB.public_key, roles=("lab",),
                      display_name="City Lab"))
    for _ in range(3):
        old.commit(grant_tx(old, LAB, scope_tags=(LAB_TAG,)),
                   old.tx(EmergencyPolicy, PATIENT, allowed_tags=(), wraps=()))
    assert not any(key.startswith(b"daily/") for key in old.state.items())

    new = World(quotas=quotas)
    new.commit(new.tx(ProviderRegister, A0, provider=LAB.public_key, roles=("lab",),
                      display_name="City Lab"))
    new.commit(grant_tx(new, LAB, scope_tags=(LAB_TAG,)),
               new.tx(EmergencyPolicy, PATIENT, allowed_tags=(), wraps=()))
    daily = queries_daily(new)
    assert (daily.grants, daily.emergency_policies) == (1, 1)
    again = new.check(grant_tx(new, LAB, scope_tags=(LAB_TAG,)))
    assert again is not None and again.reason is Reason.SIGNER_GRANTS_PER_DAY
    assert rules.in_tree(b"daily/" + PATIENT.public_key)


def queries_daily(world: World, signer: Any = PATIENT) -> SignerDailyTxs:
    raw = world.state.get(b"daily/" + signer.public_key)
    assert raw is not None
    return decode_value(raw, SignerDailyTxs, b"daily/")


def test_a_genesis_of_the_oldest_format_keeps_its_state_root() -> None:
    """A format-2 chain stores no rules schedule, so its roots are those that the releases
    before rules versions computed (tests/test_migrate.py replays such a chain)."""
    old = replace(make_genesis(), format=RULES_OLDEST)
    assert not any(key.startswith(b"rules/") for key, _ in rules.genesis_state(old).changes)
    assert any(key.startswith(b"rules/")
               for key, _ in rules.genesis_state(make_genesis()).changes)


# --- emergency.policy and emergency wraps on anchors ---------------------------------------

def _anchor_with_emergency_wrap(c: Cast) -> AnyTx:
    return c.world.anchor(PATIENT, PATIENT, [LAB_TAG], with_emergency_wrap=True)


def _anchor_with_copied_wrap(c: Cast) -> AnyTx:
    """Another patient's anchor carrying PATIENT's lab wrap, as it is public on chain."""
    anchor: RecordAnchor = c.world.anchor(OTHER_PATIENT, OTHER_PATIENT, [LAB_TAG])
    return c.world.tx(RecordAnchor, OTHER_PATIENT, nonce=anchor.nonce, **{
        **{name: getattr(anchor, name) for name, _ in RecordAnchor.WIRE_FIELDS
           if name not in ("signer", "nonce", "signature")},
        "emergency_wrap": c.world.record_wrap(c.lab_record)})


def _re_randomised(wrapped: bytes) -> bytes:
    """`R + r'·B` and `R̄ + r'·G`, the rest kept: the old attack's wrap (tests/attacks.py)."""
    return re_randomise(wrapped, 12345)


def _no_emergency_key_network(_c: Cast) -> Rejected | None:
    world = World(make_genesis(4, emergency=False))
    return world.check(world.tx(EmergencyPolicy, PATIENT, allowed_tags=(LAB_TAG,), wraps=()))


def _policies_beyond_the_day(advance_ms: int) -> Make:
    """With a budget of two policies a day, a third the same day is refused: a policy of no
    wraps is valid for any key, so the budget is what bounds a key's policies."""
    def make(c: Cast) -> AnyTx:
        c.world.quotas = Quotas(emergency_policies_per_day=2)
        c.world.commit(_policy(c, (LAB_TAG,)))
        c.world.commit(_policy(c, ()))
        if advance_ms:
            c.world.commit(advance_ms=advance_ms)
        return _policy(c, (LAB_TAG,))
    return make


def _bad_wrap(c: Cast) -> AnyTx:
    point_free = b"\xff" * 32 + c.world.record_wrap(c.lab_record)[32:]
    return _policy(c, (LAB_TAG,), (EmergencyWrap(c.lab_record, point_free),))


@cases(
    ("patient_allows_lab_results", lambda c: _policy(c, (LAB_TAG,)), None),
    ("patient_allows_with_wraps_for_existing_records",
     lambda c: _allow_lab_with_wrap(c)[0], None),
    ("patient_denies_everything", lambda c: _policy(c, ()), None),
    ("anchor_with_emergency_wrap", _anchor_with_emergency_wrap, None),
    ("network_without_emergency_key", _no_emergency_key_network, Reason.NO_EMERGENCY_KEY),
    ("wrap_that_is_no_point", _bad_wrap, Reason.BAD_EMERGENCY_WRAP),
    ("wrap_outside_the_policy",
     lambda c: _policy(c, (LAB_TAG,), (EmergencyWrap(c.mental_record,
                                                     c.world.record_wrap(c.mental_record)),)),
     Reason.EMERGENCY_WRAP_OUTSIDE_POLICY),
    ("wrap_for_another_patients_record",
     lambda c: _policy(c, (LAB_TAG,), (EmergencyWrap(c.lab_record,
                                                     c.world.record_wrap(c.lab_record)),),
                       signer=OTHER_PATIENT), Reason.SCOPE_RECORD_OF_OTHER_PATIENT),
    ("two_wraps_for_one_record",
     lambda c: _policy(c, (LAB_TAG,), (EmergencyWrap(c.lab_record, c.world.record_wrap(
         c.lab_record)),) * 2), Reason.DUPLICATE_KEY_WRAP),
    ("wrap_copied_from_another_record",
     lambda c: _policy(c, (LAB_TAG, MENTAL_TAG), (EmergencyWrap(
         c.mental_record, c.world.record_wrap(c.lab_record)),)),
     Reason.EMERGENCY_WRAP_NOT_BOUND),
    ("wrap_re_randomised", lambda c: _policy(c, (LAB_TAG,), (EmergencyWrap(
        c.lab_record, _re_randomised(c.world.record_wrap(c.lab_record))),)),
     Reason.EMERGENCY_WRAP_NOT_BOUND),
    ("anchor_with_a_copied_wrap", _anchor_with_copied_wrap, Reason.EMERGENCY_WRAP_NOT_BOUND),
    ("wrap_for_an_erased_record",
     _after(lambda c: [c.world.tx(RecordErase, PATIENT, record_id=c.lab_record)],
            lambda c: _allow_lab_with_wrap(c)[0]), Reason.RECORD_ERASED),
    ("next_day_policy_budget_is_fresh", _policies_beyond_the_day(DAY_MS), None),
    ("policies_per_day", _policies_beyond_the_day(0), Reason.SIGNER_POLICIES_PER_DAY),
)
def test_emergency_policy(case: Case) -> None:
    case.run()


# --- emergency.reshare ----------------------------------------------------------------------

DEALING = emergency_dealing(4)


def _schedule_removal_of_a3(c: Cast) -> int:
    """Three of four authorities vote A3 out; the new set holds from two blocks later."""
    c.world.commit(*[vote(c.world, signer, "remove", A3.public_key, "hospital-3")
                     for signer in (A0, A1, A2)])
    target = rules.reshare_target(c.world.state)
    assert target is not None and target[1].keys == (A0.public_key, A1.public_key,
                                                      A2.public_key)
    return target[0]


def _redeal(c: Cast, dealer: Any, epoch: int, index: int | None = None,
            coefficients: Callable[[tuple[bytes, ...]], tuple[bytes, ...]] = lambda x: x,
            recipients: tuple[Any, ...] = (A0, A1, A2)) -> EmergencyReshare:
    share = DEALING.shares[(index or AUTHORITIES.index(dealer) + 1) - 1]
    redealt = threshold.redeal(share, 3, len(recipients), seeded_scalars(7))
    sealed = tuple(SealedSubshare(r.public_key, crypto.seal(r.public_key, threshold.scalar_bytes(
        redealt.subshares[j]))) for j, r in enumerate(recipients))
    tx: EmergencyReshare = c.world.tx(EmergencyReshare, dealer, epoch=epoch,
                                      coefficients=coefficients(redealt.coefficients),
                                      sealed_shares=sealed)
    return tx


def _deal_after_removal(dealer: Any, before: tuple[Any, ...] = (), **options: Any) -> Make:
    def make(c: Cast) -> AnyTx:
        epoch = _schedule_removal_of_a3(c)
        if before:
            c.world.commit(*[_redeal(c, other, epoch) for other in before])
        return _redeal(c, dealer, epoch, **options)
    return make


@cases(
    ("holder_redeals_for_the_new_set", _deal_after_removal(A0), None),
    ("the_removed_holder_may_deal_too", _deal_after_removal(A3), None),
    ("third_dealer_completes_the_resharing", _deal_after_removal(A2, before=(A0, A1)), None),
    ("no_authority_change_pending", lambda c: _redeal(c, A0, 5), Reason.RESHARE_NOT_DUE),
    ("wrong_epoch",
     lambda c: _redeal(c, A0, _schedule_removal_of_a3(c) + 1), Reason.RESHARE_NOT_DUE),
    ("dealt_by_no_share_holder", _deal_after_removal(PATIENT, index=1),
     Reason.NOT_SHARE_HOLDER),
    ("dealt_twice", _deal_after_removal(A1, before=(A1,)), Reason.ALREADY_DEALT),
    ("not_its_own_share", _deal_after_removal(A0, index=2), Reason.BAD_RESHARE),
    ("too_few_coefficients", _deal_after_removal(A0, coefficients=lambda x: x[:2]),
     Reason.BAD_RESHARE),
    ("sub_shares_in_the_wrong_order", _deal_after_removal(A0, recipients=(A1, A0, A2)),
     Reason.BAD_RESHARE),
    ("sub_shares_for_the_old_set", _deal_after_removal(A0, recipients=(A0, A1, A2, A3)),
     Reason.BAD_RESHARE),
    ("a_coefficient_that_is_no_point",
     _deal_after_removal(A0, coefficients=lambda x: (x[0], b"\xff" * 32, x[2])),
     Reason.BAD_RESHARE),
    rules_version=3,  # from version 4 the key moves in rounds (below)
)
def test_emergency_reshare(case: Case) -> None:
    case.run()


def test_resharing_moves_the_same_key_to_the_new_set() -> None:
    c = setup_world(rules_version=3)
    epoch = _schedule_removal_of_a3(c)
    wrapped = c.world.record_wrap(c.lab_record)
    c.world.commit(*[_redeal(c, dealer, epoch) for dealer in (A0, A2, A3)])
    key = rules.emergency_key(c.world.state)
    assert key is not None and key.epoch == epoch and key.dealers == (1, 3, 4)
    assert key.key.public_key == DEALING.public_key and key.key.threshold == 3
    assert [h.authority for h in key.key.commitments] == [A0.public_key, A1.public_key,
                                                           A2.public_key]
    assert rules.reshare_target(c.world.state) is None
    # Each new holder opens its sub-shares, checks them, and combines its new share.
    ephemeral = threshold.wrap_ephemeral(wrapped)
    partials = {}
    for holder in key.key.commitments:
        identity_ = AUTHORITIES[holder.index - 1]
        subshares = {}
        for dealing in rules.emergency_dealings(c.world.state, epoch):
            sealed = next(s.sealed for s in dealing.sealed_shares
                          if s.recipient == identity_.public_key)
            value = int.from_bytes(crypto.unseal(identity_, sealed), "little")
            assert threshold.subshare_valid(dealing.coefficients, holder.index, value)
            subshares[dealing.dealer_index] = value
        share = threshold.combine_subshares(subshares)
        assert threshold.base_mul(share) == holder.commitment
        partials[holder.index] = threshold.mul(share, ephemeral)
    record = queries.record(c.world.state, c.lab_record)
    assert record is not None
    assert threshold.open_wrap(key.key.public_key, wrapped, rules.wrap_label(CHAIN_ID, record),
                               threshold.combine(partials, 3)) == b"\x07" * 32


# --- the emergency key's rounds (rules version 4; more in test_rounds.py) ------------------------
# A refresh round of the dealt key: the same machinery as the first round and a re-sharing.

def _refresh_round(c: Cast) -> None:
    c.world.commit(*rounds_help.refresh_votes(c.world, (A0, A1, A2)))


def _in_deals(c: Cast) -> None:
    _refresh_round(c)
    c.world.commit(*[rounds_help.epoch_key_tx(c.world, a) for a in AUTHORITIES])


def _in_verdicts(c: Cast, tamper: dict[bytes, rounds_help.Tamper] | None = None) -> None:
    _in_deals(c)
    c.world.commit(*[rounds_help.deal_tx(c.world, a, DEALING.shares[i],
                                         (tamper or {}).get(a.public_key))
                     for i, a in enumerate(AUTHORITIES)])


def _resigned(c: Cast, tx: AnyTx, signer: Any, **changes: Any) -> AnyTx:
    """`tx` with `changes`, signed again with its own nonce."""
    fields = {name: getattr(tx, name) for name, _ in type(tx).WIRE_FIELDS
              if name not in ("signer", "nonce", "signature")}
    made: AnyTx = c.world.tx(type(tx), signer, nonce=tx.nonce, **{**fields, **changes})
    return made


def _round_number(c: Cast) -> int:
    return rounds_help.open_round(c.world).number


def _then(setup: Callable[[Cast], None], make: Make) -> Make:
    def run(c: Cast) -> AnyTx | Rejected | None:
        setup(c)
        return make(c)
    return run


def _deal_with_g1_zero(c: Cast) -> AnyTx:
    """A0 deals its own share with a polynomial that is 0 at recipient 1: commitments that no
    complaint can fault, and a share commitment of the identity for recipient 1."""
    found = rounds_help.open_round(c.world)
    rng = seeded_scalars(11)
    share, a2 = DEALING.shares[0], rng()
    coefficients = [share, (-share - a2) % threshold.L, a2]  # g(1) = 0
    subshares = []
    for j in found.recipients:
        value = sum(a * pow(j, k, threshold.L) for k, a in enumerate(coefficients)) % threshold.L
        epoch_key = rounds.epoch_key_of(c.world.state, found.number, found.target[j - 1])
        assert epoch_key is not None
        context = rounds.subshare_context(CHAIN_ID, found.number, A0.public_key, j)
        ephemeral, masked, proof = dkg.encrypt_subshare(epoch_key, value, context)
        subshares.append(EncryptedSubshare(j, ephemeral, masked, proof))
    made: AnyTx = c.world.tx(EmergencyDeal, A0, round=found.number,
                             coefficients=tuple(threshold.base_mul(a) for a in coefficients),
                             subshares=tuple(subshares))
    return made


def _wrong_for_a0(index: int, value: int) -> int:
    return value + 1 if index == 1 else value


@cases(
    ("epoch_key_in_its_phase", _then(_refresh_round, lambda c: rounds_help.epoch_key_tx(
        c.world, A0)), None),
    ("epoch_key_without_a_round", lambda c: c.world.tx(
        EmergencyEpochKey, A0, round=1, public_key=threshold.base_mul(5), proof=bytes(64)),
     Reason.ROUND_NOT_OPEN),
    ("epoch_key_of_another_round", _then(_refresh_round, lambda c: rounds_help.epoch_key_tx(
        c.world, A0, _round_number(c) + 1)), Reason.ROUND_NOT_OPEN),
    ("epoch_key_by_a_stranger", _then(_refresh_round, lambda c: rounds_help.epoch_key_tx(
        c.world, STRANGER)), Reason.NOT_ROUND_MEMBER),
    ("epoch_key_twice", _then(_refresh_round, lambda c: (
        c.world.commit(rounds_help.epoch_key_tx(c.world, A0)),
        rounds_help.epoch_key_tx(c.world, A0))[1]), Reason.ALREADY_IN_ROUND),
    ("epoch_key_not_a_point", _then(_refresh_round, lambda c: _resigned(
        c, rounds_help.epoch_key_tx(c.world, A0), A0, public_key=b"\xff" * 32)),
     Reason.BAD_ROUND_TX),
    # Another authority's epoch key with the proof that authority made: bound to its signer.
    ("epoch_key_of_another_authority", _then(_refresh_round, lambda c: c.world.tx(
        EmergencyEpochKey, A1, round=(theirs := rounds_help.epoch_key_tx(c.world, A0)).round,
        public_key=theirs.public_key, proof=theirs.proof)), Reason.BAD_ROUND_TX),
    ("epoch_key_with_a_proof_of_another_round", _then(_refresh_round, lambda c: _resigned(
        c, (tx := rounds_help.epoch_key_tx(c.world, A0)), A0, proof=dkg.epoch_key_proof(
            rounds_help.epoch_secret(A0, tx.round), CHAIN_ID, tx.round + 1, A0.public_key))),
     Reason.BAD_ROUND_TX),
    ("deal_in_the_keys_phase", _then(_refresh_round, lambda c: c.world.tx(
        EmergencyDeal, A0, round=_round_number(c), coefficients=(threshold.base_mul(3),) * 3,
        subshares=(EncryptedSubshare(1, threshold.base_mul(2), bytes(32), bytes(64)),))),
     Reason.ROUND_NOT_IN_PHASE),
    ("deal_of_a_refresh", _then(_in_deals, lambda c: rounds_help.deal_tx(
        c.world, A0, DEALING.shares[0])), None),
    ("deal_not_of_its_own_share", _then(_in_deals, lambda c: rounds_help.deal_tx(
        c.world, A0, DEALING.shares[1])), Reason.BAD_ROUND_TX),
    ("deal_by_no_holder", _then(_in_deals, lambda c: rounds_help.deal_tx(
        c.world, STRANGER, DEALING.shares[0])), Reason.NOT_ROUND_MEMBER),
    ("deal_twice", _then(_in_deals, lambda c: (
        c.world.commit(rounds_help.deal_tx(c.world, A0, DEALING.shares[0])),
        rounds_help.deal_tx(c.world, A0, DEALING.shares[0]))[1]), Reason.ALREADY_IN_ROUND),
    ("deal_of_too_few_coefficients", _then(_in_deals, lambda c: _resigned(
        c, (tx := rounds_help.deal_tx(c.world, A0, DEALING.shares[0])), A0,
        coefficients=tx.coefficients[:2])), Reason.BAD_ROUND_TX),
    ("deal_of_sub_shares_out_of_order", _then(_in_deals, lambda c: _resigned(
        c, (tx := rounds_help.deal_tx(c.world, A0, DEALING.shares[0])), A0,
        subshares=tx.subshares[::-1])), Reason.BAD_ROUND_TX),
    ("deal_of_a_sub_share_above_the_order", _then(_in_deals, lambda c: _resigned(
        c, (tx := rounds_help.deal_tx(c.world, A0, DEALING.shares[0])), A0,
        subshares=(replace(tx.subshares[0], masked=b"\xff" * 32), *tx.subshares[1:]))),
     Reason.BAD_ROUND_TX),
    # Another dealer's R (with its proof) for recipient 1: its complaint would open the other
    # dealer's sub-share; the proof of r is bound to dealer, index and m.
    ("deal_with_another_dealer_s_ephemeral", _then(_in_deals, lambda c: (
        c.world.commit(theirs := rounds_help.deal_tx(c.world, A1, DEALING.shares[1])),
        _resigned(c, (tx := rounds_help.deal_tx(c.world, A0, DEALING.shares[0])), A0,
                  subshares=(replace(tx.subshares[0], ephemeral=theirs.subshares[0].ephemeral,
                                     proof=theirs.subshares[0].proof), *tx.subshares[1:])))[1]),
     Reason.BAD_ROUND_TX),
    ("deal_without_the_proof_of_r", _then(_in_deals, lambda c: _resigned(
        c, (tx := rounds_help.deal_tx(c.world, A0, DEALING.shares[0])), A0,
        subshares=(replace(tx.subshares[0], proof=bytes(64)), *tx.subshares[1:]))),
     Reason.BAD_ROUND_TX),
    ("deal_of_a_zero_sub_share", _then(_in_deals, _deal_with_g1_zero), Reason.BAD_ROUND_TX),
    ("verdict_of_good_dealings", _then(_in_verdicts, lambda c: rounds_help.verdict_tx(
        c.world, A0)), None),
    ("complaint_of_its_own_dealing", _then(_in_verdicts, lambda c: rounds_help.verdict_tx(
        c.world, A0, accuse=(A0.public_key,))), Reason.BAD_COMPLAINT),
    ("verdict_with_a_founded_complaint",
     _then(lambda c: _in_verdicts(c, {A1.public_key: _wrong_for_a0}),
           lambda c: rounds_help.verdict_tx(c.world, A0)), None),
    ("complaint_of_a_good_dealing", _then(_in_verdicts, lambda c: rounds_help.verdict_tx(
        c.world, A0, accuse=(A1.public_key,))), Reason.COMPLAINT_UNFOUNDED),
    ("complaint_with_a_false_proof",
     _then(lambda c: _in_verdicts(c, {A1.public_key: _wrong_for_a0}), lambda c: _resigned(
         c, (tx := rounds_help.verdict_tx(c.world, A0)), A0,
         complaints=(replace(tx.complaints[0], proof=bytes(64)),))), Reason.BAD_COMPLAINT),
    ("complaint_of_one_that_did_not_deal", _then(_in_verdicts, lambda c: c.world.tx(
        EmergencyVerdict, A0, round=_round_number(c), complaints=(Complaint(
            STRANGER.public_key, threshold.base_mul(2), bytes(64)),))), Reason.BAD_COMPLAINT),
    ("verdict_by_no_recipient", _then(_in_verdicts, lambda c: c.world.tx(
        EmergencyVerdict, STRANGER, round=_round_number(c), complaints=())),
     Reason.NOT_ROUND_MEMBER),
    ("verdict_twice", _then(_in_verdicts, lambda c: (
        c.world.commit(rounds_help.verdict_tx(c.world, A0)),
        rounds_help.verdict_tx(c.world, A0))[1]), Reason.ALREADY_IN_ROUND),
    ("refresh_asked_by_a_holder", lambda c: rounds_help.refresh_votes(c.world, (A0,))[0], None),
    ("refresh_of_another_epoch", lambda c: _resigned(
        c, (tx := rounds_help.refresh_votes(c.world, (A0,))[0]), A0, epoch=tx.epoch + 1),
     Reason.REFRESH_NOT_DUE),
    ("refresh_by_no_holder", lambda c: rounds_help.refresh_votes(c.world, (STRANGER,))[0],
     Reason.NOT_SHARE_HOLDER),
    ("refresh_asked_twice", lambda c: (
        c.world.commit(*rounds_help.refresh_votes(c.world, (A0,))),
        rounds_help.refresh_votes(c.world, (A0,))[0])[1], Reason.ALREADY_VOTED),
    ("refresh_during_a_round", _then(_refresh_round, lambda c: rounds_help.refresh_votes(
        c.world, (A3,))[0]), Reason.ROUND_OPEN),
    ("reshare_of_the_rules_before", lambda c: _redeal(c, A0, 5), Reason.KIND_NOT_IN_RULES),
)
def test_emergency_rounds(case: Case) -> None:
    case.run()


@cases(
    ("epoch_key_before_rules_4", lambda c: c.world.tx(
        EmergencyEpochKey, A0, round=1, public_key=threshold.base_mul(5), proof=bytes(64)),
     Reason.KIND_NOT_IN_RULES),
    rules_version=3,
)
def test_emergency_rounds_come_with_rules_4(case: Case) -> None:
    case.run()


# --- node.observer and node.announce (rules version 4) ----------------------------------------

OBSERVER_NODE = identity("observer-hospital")
HERE = ("/ip4/10.0.0.5/tcp/26600",)


def _observer(signer: Any, action: str, subject: Any = OBSERVER_NODE) -> Make:
    return lambda c: c.world.tx(NodeObserver, signer, action=action, subject=subject.public_key,
                                name="fifth")


def _announce(signer: Any, addresses: tuple[str, ...] = HERE) -> Make:
    return lambda c: c.world.tx(NodeAnnounce, signer, addresses=addresses)


def _vouched(c: Cast) -> None:
    c.world.commit(_observer(A1, "add")(c))  # type: ignore[arg-type]


@cases(
    ("observer_added_by_an_authority", _observer(A0, "add"), None),
    ("observer_added_by_no_authority", _observer(PATIENT, "add"), Reason.NOT_AUTHORITY),
    ("observer_added_twice", _then(_vouched, _observer(A0, "add")), Reason.ALREADY_OBSERVER),
    ("an_authority_as_observer", _observer(A0, "add", A2), Reason.ALREADY_AUTHORITY),
    ("observer_removed", _then(_vouched, _observer(A2, "remove")), None),
    ("no_observer_removed", _observer(A0, "remove"), Reason.NOT_OBSERVER),
    ("a_ninth_observer_of_one_authority", _then(
        lambda c: c.world.commit(*[c.world.tx(
            NodeObserver, A0, action="add", subject=identity(f"observer-{n}").public_key,
            name=f"o{n}") for n in range(8)]),
        _observer(A0, "add")), Reason.OBSERVERS_FULL),
    ("an_observer_of_another_authority_then", _then(
        lambda c: c.world.commit(*[c.world.tx(
            NodeObserver, A0, action="add", subject=identity(f"observer-{n}").public_key,
            name=f"o{n}") for n in range(8)]),
        _observer(A1, "add")), None),
    ("an_authority_announces", _announce(A0), None),
    ("an_observer_announces", _then(_vouched, _announce(OBSERVER_NODE)), None),
    ("a_stranger_announces", _announce(STRANGER), Reason.NOT_AUTHORITY_OR_OBSERVER),
    ("an_address_twice", _announce(A0, HERE * 2), Reason.DUPLICATE_ADDRESS),
    ("an_ip_that_is_none", _announce(A0, ("/ip4/999.1.1.1/tcp/26600",)), Reason.BAD_ADDRESS),
    ("a_port_beyond_65535", _announce(A0, ("/ip4/10.0.0.5/tcp/70000",)), Reason.BAD_ADDRESS),
    ("the_unspecified_address", _announce(A0, ("/ip4/0.0.0.0/tcp/26600",)), Reason.BAD_ADDRESS),
    ("an_ip6_address", _announce(A0, ("/ip6/fd00::5/tcp/26600",)), None),
    ("announced_again_too_soon", lambda c: (c.world.commit(_announce(A0)(c)),  # type: ignore[arg-type]
                                            _announce(A0, ("/dns4/a.example/tcp/1",))(c))[1],
     Reason.ANNOUNCE_TOO_SOON),
    ("announced_again_later", lambda c: (
        c.world.commit(_announce(A0)(c)),  # type: ignore[arg-type]
        [c.world.commit() for _ in range(10)],
        _announce(A0, ("/dns4/a.example/tcp/1",))(c))[2], None),
)
def test_observers_and_addresses(case: Case) -> None:
    case.run()


# --- node.rotate (rules version 4; the whole story in test_key_rotation.py) -----------------------

NEW_NODE_KEY = identity("new-node-key")
OTHER_NODE_KEY = identity("other-new-node-key")


def _rotate(signer: Any = A0, new: Any = NEW_NODE_KEY, ahead: int = 3, **forged: Any) -> Make:
    """`signer`'s rotation to `new` from `ahead` heights after the head (its block is the
    head's next, so 3 is the soonest)."""
    return lambda c: c.world.rotate(signer, new, c.world.height + ahead, **forged)


def _rotated(c: Cast, signer: Any = A0, new: Any = NEW_NODE_KEY) -> None:
    """`signer`'s key rotated to `new`, in force: the head is at the rotation's height."""
    height = c.world.height + 3
    c.world.commit(c.world.rotate(signer, new, height))
    c.world.commit_until(height)


def _rotation_waiting(c: Cast) -> None:
    c.world.commit(c.world.rotate(A1, NEW_NODE_KEY, c.world.height + 10))


def _voted_in(c: Cast) -> None:
    """NEWCOMER decided as an authority from two heights on."""
    c.world.commit(*(vote(c.world, signer, "add", NEWCOMER.public_key, "new")
                     for signer in (A1, A2, A3)))


@cases(
    ("authority_rotates_its_key", _rotate(), None),
    ("rotation_by_a_non_authority", _rotate(CLINICIAN), Reason.NOT_AUTHORITY),
    ("rotation_before_the_height_after_next", _rotate(ahead=2), Reason.ROTATION_HEIGHT_TOO_SOON),
    ("rotation_beyond_its_bound", _rotate(ahead=2 + rotation.ROTATION_NOTICE_BLOCKS_MAX),
     Reason.ROTATION_HEIGHT_TOO_FAR),
    ("rotation_at_its_bound", _rotate(ahead=1 + rotation.ROTATION_NOTICE_BLOCKS_MAX), None),
    ("rotation_to_another_authority_s_key", _rotate(new=A1), Reason.ROTATION_KEY_IN_USE),
    ("rotation_to_its_own_key", _rotate(new=A0), Reason.ROTATION_KEY_IN_USE),
    ("rotation_to_a_provider_s_key", _rotate(new=LAB), Reason.ROTATION_KEY_IN_USE),
    ("rotation_to_a_key_voted_in", _then(_voted_in, _rotate(new=NEWCOMER)),
     Reason.ROTATION_KEY_IN_USE),
    ("rotation_to_another_rotation_s_new_key", _then(_rotation_waiting, _rotate()),
     Reason.ROTATION_KEY_IN_USE),
    ("rotation_to_a_retired_key", _then(_rotated, _rotate(A1, A0)),
     Reason.ROTATION_KEY_RETIRED),
    ("second_rotation_while_one_waits", _then(_rotation_waiting, _rotate(A1, OTHER_NODE_KEY)),
     Reason.ROTATION_PENDING),
    ("rotation_without_the_new_key_s_consent", _rotate(consent_by=STRANGER),
     Reason.BAD_ROTATION_SIGNATURE),
    ("rotation_with_a_consent_to_another_height", lambda c: c.world.rotate(
        A0, NEW_NODE_KEY, c.world.height + 3, consent_height=c.world.height + 4),
     Reason.BAD_ROTATION_SIGNATURE),
    ("a_retired_key_signs_nothing_more", _then(_rotated, _register(A0, STRANGER.public_key)),
     Reason.KEY_ROTATED),
    ("nor_as_a_patient", _then(_rotated, lambda c: grant_tx(
        c.world, CLINICIAN, scope_tags=(LAB_TAG,), signer=A0)), Reason.KEY_ROTATED),
    ("the_new_key_signs_in_its_place", _then(_rotated, _register(NEW_NODE_KEY,
                                                                 STRANGER.public_key)), None),
    ("a_vote_to_add_a_retired_key", _then(_rotated, _vote(A1, "add", A0.public_key, "again")),
     Reason.KEY_ROTATED),
    ("a_vote_to_add_a_rotation_s_new_key",
     _then(_rotation_waiting, _vote(A0, "add", NEW_NODE_KEY.public_key, "new")),
     Reason.ALREADY_AUTHORITY),
    ("the_rotated_hospital_revokes_its_provider",
     _then(_rotated, _revoke(NEW_NODE_KEY, CLINICIAN.public_key)), None),
    ("another_hospital_revokes_a_rotated_hospital_s_provider",
     _then(_rotated, _revoke(A1, CLINICIAN.public_key)), Reason.NOT_REGISTERING_AUTHORITY),
)
def test_node_rotate(case: Case) -> None:
    case.run()


@cases(
    ("rotation_before_rules_4", _rotate(), Reason.KIND_NOT_IN_RULES),
    rules_version=3,
)
def test_node_rotate_comes_with_rules_4(case: Case) -> None:
    case.run()


# --- representatives (rules version 5 on) ---------------------------------------------------

PARENT = identity("parent")


def appoint_tx(world: World, representative: Any = PARENT, scopes: tuple[str, ...] = ("grant",),
               ends_in_ms: int = 60_000, signer: Any = PATIENT,
               key_wraps: tuple[RecordKeyWrap, ...] = ()) -> RepresentativeAppoint:
    tx: RepresentativeAppoint = world.tx(
        RepresentativeAppoint, signer, representative=representative.public_key,
        scopes=tuple(sorted(scopes)), ends_at_ms=world.time_ms + ends_in_ms,
        key_wraps=key_wraps, tag_key_wrap=None)
    return tx


def act_tx(world: World, representative: Any, cls: type[Any], patient: Any = PATIENT,
           **fields: Any) -> RepresentativeAct:
    """`representative`'s act for `patient`: `cls(...)` as the patient's, wrapped."""
    nonce = world.nonces.get(representative.public_key, 0) + 1
    world.nonces[representative.public_key] = nonce
    act = cls(signer=patient.public_key, nonce=nonce, signature=ACT_UNSIGNED, **fields)
    wrapped: RepresentativeAct = RepresentativeAct(signer=b"", nonce=nonce, act=act).sign(
        representative, CHAIN_ID)
    return wrapped


def act_grant(world: World, representative: Any = PARENT, grantee: Any = LAB,
              patient: Any = PATIENT) -> RepresentativeAct:
    return act_tx(world, representative, ConsentGrant, patient, grantee=grantee.public_key,
                  actions=("read",), scope_records=(), scope_tags=(LAB_TAG,),
                  expires_at_ms=None, key_wraps=(), tag_key_wrap=None)


def _appointed(scopes: tuple[str, ...], then: Make, ends_in_ms: int = 60_000,
               representative: Any = PARENT) -> Make:
    def make(c: Cast) -> Any:
        c.world.commit(appoint_tx(c.world, representative, scopes, ends_in_ms))
        return then(c)
    return make


def _appoint(**options: Any) -> Make:
    return lambda c: appoint_tx(c.world, **options)


def _appoint_beyond_limit(c: Cast) -> AnyTx:
    c.world.commit(*(appoint_tx(c.world, identity(f"carer-{n}"))
                     for n in range(limits.REPRESENTATIVES_PER_PATIENT_MAX)))
    return appoint_tx(c.world)


def _appoint_beyond_the_day(c: Cast) -> AnyTx:
    c.world.quotas = Quotas(grants_per_day=1)  # the setup granted once today
    return appoint_tx(c.world)


def _end(signer: Any, representative: Any = PARENT) -> Make:
    return lambda c: c.world.tx(RepresentativeEnd, signer, patient=PATIENT.public_key,
                                representative=representative.public_key)


def _ended(c: Cast) -> None:
    c.world.commit(_end(PATIENT)(c))  # type: ignore[arg-type]


def _act_with(**changes: Any) -> Make:
    def make(c: Cast) -> AnyTx:
        wrapper = act_grant(c.world)
        bent: AnyTx = replace(wrapper, signature=b"", act=replace(wrapper.act, **changes)).sign(
            PARENT, CHAIN_ID)
        return bent
    return make


def _after_end(then: Make) -> Make:
    def make(c: Cast) -> Any:
        _ended(c)
        return then(c)
    return make


def _advanced(ms: int, then: Make) -> Make:
    def make(c: Cast) -> Any:
        c.world.commit(advance_ms=ms)
        return then(c)
    return make


@cases(
    ("patient_appoints", _appoint(scopes=("grant", "read")), None),
    ("patient_appoints_with_key_wraps_to_read",
     lambda c: appoint_tx(c.world, scopes=("read",), key_wraps=_wraps(lambda c: c.lab_record)(c)),
     None),
    ("appoint_self", _appoint(representative=PATIENT), Reason.SELF_APPOINTMENT),
    ("appoint_ending_now", _appoint(ends_in_ms=1000), Reason.APPOINTMENT_ALREADY_ENDED),
    ("appoint_beyond_limit", _appoint_beyond_limit, Reason.REPRESENTATIVES_FULL),
    ("key_wraps_for_one_who_may_not_read",
     lambda c: appoint_tx(c.world, key_wraps=_wraps(lambda c: c.lab_record)(c)),
     Reason.KEY_WRAP_OUTSIDE_SCOPE),
    ("two_key_wraps_for_one_record",
     lambda c: appoint_tx(c.world, scopes=("read",), key_wraps=_wraps(
         lambda c: c.lab_record, lambda c: c.lab_record)(c)), Reason.DUPLICATE_KEY_WRAP),
    ("key_wrap_of_another_patients_record",
     lambda c: appoint_tx(c.world, scopes=("read",), signer=OTHER_PATIENT,
                          key_wraps=_wraps(lambda c: c.lab_record)(c)),
     Reason.SCOPE_RECORD_OF_OTHER_PATIENT),
    ("appointments_count_against_the_grants_of_a_day", _appoint_beyond_the_day,
     Reason.SIGNER_GRANTS_PER_DAY),
)
def test_representative_appoint(case: Case) -> None:
    case.run()


@cases(
    ("patient_ends", _appointed(("grant",), _end(PATIENT)), None),
    ("representative_ends_itself", _appointed(("grant",), _end(PARENT)), None),
    ("stranger_ends", _appointed(("grant",), _end(STRANGER)), Reason.NOT_APPOINTMENT_PARTY),
    ("end_without_appointment", _end(PATIENT), Reason.NO_APPOINTMENT),
    ("end_twice", _appointed(("grant",), _after_end(_end(PATIENT))),
     Reason.APPOINTMENT_NOT_IN_FORCE),
    ("end_after_its_date", _appointed(("grant",), _advanced(60_000, _end(PATIENT))),
     Reason.APPOINTMENT_NOT_IN_FORCE),
)
def test_representative_end(case: Case) -> None:
    case.run()


def _act_revoke(c: Cast) -> AnyTx:
    return act_tx(c.world, PARENT, ConsentRevoke, grant_id=c.grant)


def _act_policy(c: Cast) -> AnyTx:
    return act_tx(c.world, PARENT, EmergencyPolicy, allowed_tags=(LAB_TAG,), wraps=())


def _act_erase(c: Cast) -> AnyTx:
    return c.world.tx(RecordErase, PARENT, record_id=c.lab_record)


@cases(
    ("representative_grants", _appointed(("grant",), lambda c: act_grant(c.world)), None),
    ("representative_revokes", _appointed(("grant",), _act_revoke), None),
    ("representative_sets_the_emergency_policy", _appointed(("policy",), _act_policy), None),
    ("read_only_representative_grants", _appointed(("read",), lambda c: act_grant(c.world)),
     Reason.OUTSIDE_APPOINTMENT_SCOPE),
    ("policy_representative_revokes", _appointed(("policy",), _act_revoke),
     Reason.OUTSIDE_APPOINTMENT_SCOPE),
    ("grant_representative_sets_policy", _appointed(("grant",), _act_policy),
     Reason.OUTSIDE_APPOINTMENT_SCOPE),
    ("grant_after_the_appointments_date",
     _appointed(("grant",), _advanced(60_000, lambda c: act_grant(c.world))),
     Reason.APPOINTMENT_NOT_IN_FORCE),
    ("grant_after_the_appointment_ended",
     _appointed(("grant",), _after_end(lambda c: act_grant(c.world))),
     Reason.APPOINTMENT_NOT_IN_FORCE),
    ("stranger_acts", lambda c: act_grant(c.world, STRANGER), Reason.NO_APPOINTMENT),
    ("representative_of_another_patient_acts",
     _appointed(("grant",), lambda c: act_grant(c.world, patient=OTHER_PATIENT)),
     Reason.NO_APPOINTMENT),
    ("act_with_another_nonce", _appointed(("grant",), _act_with(nonce=7)), Reason.BAD_ACT),
    ("act_with_a_signature", _appointed(("grant",), _act_with(signature=b"\x01" * 64)),
     Reason.BAD_ACT),
    ("patient_wraps_its_own_act", lambda c: act_grant(c.world, representative=PATIENT),
     Reason.BAD_ACT),
    ("representative_grants_to_itself",
     _appointed(("grant",), lambda c: act_grant(c.world, CLINICIAN, grantee=CLINICIAN),
                representative=CLINICIAN), Reason.SELF_GRANT),
    ("representative_grants_to_a_stranger",
     _appointed(("grant",), lambda c: act_grant(c.world, grantee=STRANGER)),
     Reason.GRANTEE_NOT_PROVIDER),
    ("representative_erases", _appointed(("grant", "policy", "read", "write"), _act_erase),
     Reason.NOT_RECORD_OWNER),
    ("representative_writes", _appointed(("write",), _anchor(PARENT, [LAB_TAG])), None),
    ("representative_without_write_writes", _appointed(("read",), _anchor(PARENT, [LAB_TAG])),
     Reason.AUTHOR_NOT_PROVIDER),
    ("representative_reads", _appointed(("read",), _read(PARENT, grant=_no_grant)), None),
    ("representative_without_read_reads", _appointed(("grant",), _read(PARENT, grant=_no_grant)),
     Reason.READER_NOT_PROVIDER),
)
def test_representative_act(case: Case) -> None:
    case.run()


def _appoint_under_4(c: Cast) -> AnyTx:
    return appoint_tx(c.world)


@cases(
    ("appoint_under_rules_4", _appoint_under_4, Reason.KIND_NOT_IN_RULES),
    ("end_under_rules_4", _end(PATIENT), Reason.KIND_NOT_IN_RULES),
    ("act_under_rules_4", lambda c: act_grant(c.world), Reason.KIND_NOT_IN_RULES),
    rules_version=4,
)
def test_representatives_come_with_rules_5(case: Case) -> None:
    case.run()


def act_lines(world: World, patient: Any = PATIENT) -> list[ActLine]:
    count = act_count_decode(world.state.get(ACT_COUNT + patient.public_key))
    return [ActLine.decode(raw) for _, raw in world.state.scan(ACT_LINE + patient.public_key)
            ][:count]


def test_a_representatives_grant_is_the_patients_and_on_the_patients_lines_as_its_act() -> None:
    c = setup_world()
    c.world.commit(appoint_tx(c.world, scopes=("grant", "write")))
    grant = act_grant(c.world)
    written = c.world.anchor(PARENT, PATIENT, [LAB_TAG])
    c.world.commit(grant, written)
    state = queries.grant(c.world.state, grant.hash)
    assert state is not None and state.patient == PATIENT.public_key
    assert state.grantee == LAB.public_key
    revoke = act_tx(c.world, PARENT, ConsentRevoke, grant_id=grant.hash)
    c.world.commit(revoke)
    assert [(line.representative, line.tx_hash, line.kind) for line in act_lines(c.world)] == [
        (PARENT.public_key, grant.hash, ConsentGrant.KIND),
        (PARENT.public_key, written.hash, RecordAnchor.KIND),
        (PARENT.public_key, revoke.hash, ConsentRevoke.KIND)]
    record = queries.record(c.world.state, written.hash)
    assert record is not None and record.author == PARENT.public_key
    # the representative's grant counts against its own day, not the patient's
    assert queries_daily(c.world, PARENT).grants == 1


def test_an_appointment_ends_at_its_date_in_block_time() -> None:
    c = setup_world()
    c.world.commit(appoint_tx(c.world, ends_in_ms=10_000))
    grant = act_grant(c.world)
    assert c.world.check(grant, advance_ms=8_999) is None
    refused = c.world.check(grant, advance_ms=9_000)
    assert refused is not None and refused.reason == Reason.APPOINTMENT_NOT_IN_FORCE


# --- purposes and revoke by provider (rules version 5) -----------------------------------------

def purpose_grant(world: World, grantee: Any, purposes: tuple[str, ...],
                  scope_tags: tuple[bytes, ...] = (LAB_TAG,),
                  expires_at_ms: int | None = None) -> ConsentGrantPurposes:
    tx: ConsentGrantPurposes = world.tx(
        ConsentGrantPurposes, PATIENT, grantee=grantee.public_key, actions=("read",),
        scope_records=(), scope_tags=tuple(sorted(scope_tags)), expires_at_ms=expires_at_ms,
        key_wraps=(), tag_key_wrap=None, purposes=tuple(sorted(purposes)))
    return tx


def _read_for(purpose: str, granted: tuple[str, ...]) -> Make:
    """LAB reads the lab record for `purpose` under a grant for `granted`."""
    def make(c: Cast) -> AnyTx:
        grant = purpose_grant(c.world, LAB, granted)
        c.world.commit(grant)
        return access(c.world, LAB, c.lab_record, grant.hash, purpose=purpose)
    return make


def _grant_for(purposes: tuple[str, ...]) -> Make:
    return lambda c: purpose_grant(c.world, LAB, purposes)


def _grants_beyond_the_day_with_purposes(c: Cast) -> AnyTx:
    """Both kinds of grant count against one daily budget."""
    c.world.quotas = Quotas(grants_per_day=2)
    c.world.commit(purpose_grant(c.world, LAB, ("treatment",)))
    return purpose_grant(c.world, LAB, ("research",), scope_tags=(MENTAL_TAG,))


def _revoke_provider(grantee: Any, signer: Any = PATIENT,
                     before: Callable[[Cast], None] = lambda c: None) -> Make:
    def make(c: Cast) -> AnyTx:
        before(c)
        return c.world.tx(ConsentRevokeProvider, signer, grantee=grantee.public_key)
    return make


def _revoke_every_grant_first(c: Cast) -> None:
    c.world.commit(c.world.tx(ConsentRevokeProvider, PATIENT, grantee=CLINICIAN.public_key))


def _only_an_expired_grant(c: Cast) -> None:
    c.world.commit(purpose_grant(c.world, LAB, ("treatment",),
                                 expires_at_ms=c.world.time_ms + 5000))
    c.world.commit(advance_ms=5000)


@cases(
    ("grant_with_purposes", _grant_for(("research", "treatment")), None),
    ("grant_with_every_purpose", _grant_for(tuple(sorted(PURPOSES))), None),
    ("grants_with_purposes_per_day", _grants_beyond_the_day_with_purposes,
     Reason.SIGNER_GRANTS_PER_DAY),
    ("read_for_a_granted_purpose", _read_for("treatment", ("treatment",)), None),
    ("read_for_one_of_several", _read_for("research", ("research", "treatment")), None),
    ("read_for_a_purpose_not_granted", _read_for("research", ("treatment",)),
     Reason.PURPOSE_NOT_GRANTED),
    ("emergency_purpose_under_a_treatment_grant", _read_for("emergency", ("treatment",)),
     Reason.PURPOSE_NOT_GRANTED),
    ("read_for_research_under_a_grant_without_purposes",
     _read(CLINICIAN, purpose="research"), None),
    ("revoke_every_grant_to_a_provider", _revoke_provider(CLINICIAN), None),
    ("revoke_provider_without_grants", _revoke_provider(LAB), Reason.NO_GRANT_TO_REVOKE),
    ("revoke_provider_twice", _revoke_provider(CLINICIAN, before=_revoke_every_grant_first),
     Reason.NO_GRANT_TO_REVOKE),
    ("revoke_provider_of_expired_grants_only",
     _revoke_provider(LAB, before=_only_an_expired_grant), Reason.NO_GRANT_TO_REVOKE),
    ("another_patient_revokes_nothing_of_ours", _revoke_provider(CLINICIAN, OTHER_PATIENT),
     Reason.NO_GRANT_TO_REVOKE),
)
def test_purposes_and_revoke_by_provider(case: Case) -> None:
    case.run()


@cases(
    ("grant_with_purposes_before_rules_5", _grant_for(("treatment",)), Reason.KIND_NOT_IN_RULES),
    ("revoke_provider_before_rules_5", _revoke_provider(CLINICIAN), Reason.KIND_NOT_IN_RULES),
    ("read_for_research_under_an_old_grant", _read(CLINICIAN, purpose="research"), None),
    rules_version=4,
)
def test_purposes_come_with_rules_5(case: Case) -> None:
    case.run()


def test_a_read_refused_for_its_purpose_names_the_grant_s_purposes_and_codes() -> None:
    c = setup_world()
    grant = purpose_grant(c.world, LAB, ("payment", "treatment"))
    c.world.commit(grant)
    refusal = c.world.check(access(c.world, LAB, c.lab_record, grant.hash, purpose="research"))
    assert refusal is not None and refusal.reason == Reason.PURPOSE_NOT_GRANTED
    assert refusal.detail == ("the grant allows reading for payment (HPAYMT), treatment (TREAT) "
                              "only, not for research (HRESCH)")


def test_a_grant_s_state_carries_its_purposes_and_an_old_grant_s_bytes_stay() -> None:
    c = setup_world()
    grant = purpose_grant(c.world, LAB, ("research", "treatment"))
    c.world.commit(grant)
    state = queries.grant(c.world.state, grant.hash)
    assert state is not None and state.purposes == ("research", "treatment")
    old = queries.grant(c.world.state, c.grant)  # a consent.grant: no purposes, every one
    assert old is not None and old.purposes == ()
    assert len(pack(old.to_wire())) == len(old.encode()) and len(old.to_wire()) == 12


def test_revoke_by_provider_ends_every_grant_to_it_in_one_transaction() -> None:
    c = setup_world()
    others = [purpose_grant(c.world, CLINICIAN, (purpose,)) for purpose in
              ("payment", "research", "treatment")]
    to_lab = purpose_grant(c.world, LAB, ("treatment",))
    c.world.commit(*others, to_lab)
    revoke = c.world.tx(ConsentRevokeProvider, PATIENT, grantee=CLINICIAN.public_key)
    c.world.commit(revoke)
    for grant_id in (c.grant, *(g.hash for g in others)):
        state = queries.grant(c.world.state, grant_id)
        assert state is not None and state.revoked_height == c.world.height
    lab_state = queries.grant(c.world.state, to_lab.hash)
    assert lab_state is not None and lab_state.revoked_height is None
    refusal = c.world.check(access(c.world, CLINICIAN, c.lab_record, c.grant))
    assert refusal is not None and refusal.reason == Reason.GRANT_REVOKED


# --- representatives with purposes and revoke by provider (rules version 5) --------------------

def act_purpose_grant(world: World, purposes: tuple[str, ...], representative: Any = PARENT,
                      grantee: Any = LAB) -> RepresentativeAct:
    return act_tx(world, representative, ConsentGrantPurposes, grantee=grantee.public_key,
                  actions=("read",), scope_records=(), scope_tags=(LAB_TAG,),
                  expires_at_ms=None, key_wraps=(), tag_key_wrap=None,
                  purposes=tuple(sorted(purposes)))


def _act_revoke_provider(grantee: Any) -> Make:
    return lambda c: act_tx(c.world, PARENT, ConsentRevokeProvider, grantee=grantee.public_key)


@cases(
    ("representative_grants_with_purposes",
     _appointed(("grant",), lambda c: act_purpose_grant(c.world, ("treatment",))), None),
    ("representative_revokes_by_provider",
     _appointed(("grant",), _act_revoke_provider(CLINICIAN)), None),
    ("read_only_representative_grants_with_purposes",
     _appointed(("read",), lambda c: act_purpose_grant(c.world, ("treatment",))),
     Reason.OUTSIDE_APPOINTMENT_SCOPE),
    ("policy_representative_revokes_by_provider",
     _appointed(("policy",), _act_revoke_provider(CLINICIAN)), Reason.OUTSIDE_APPOINTMENT_SCOPE),
    ("representative_revokes_by_provider_without_grants",
     _appointed(("grant",), _act_revoke_provider(LAB)), Reason.NO_GRANT_TO_REVOKE),
    ("representative_grants_itself_with_purposes",
     _appointed(("grant",), lambda c: act_purpose_grant(c.world, ("treatment",), CLINICIAN,
                                                        grantee=CLINICIAN),
                representative=CLINICIAN), Reason.SELF_GRANT),
)
def test_representative_act_with_purposes(case: Case) -> None:
    case.run()


def test_a_representatives_grant_with_purposes_limits_reads_as_the_patients_would() -> None:
    c = setup_world()
    c.world.commit(appoint_tx(c.world))
    grant = act_purpose_grant(c.world, ("treatment",))
    c.world.commit(grant)
    state = queries.grant(c.world.state, grant.hash)
    assert state is not None and state.patient == PATIENT.public_key
    assert state.purposes == ("treatment",)
    c.world.commit(access(c.world, LAB, c.lab_record, grant.hash))  # for treatment
    refusal = c.world.check(access(c.world, LAB, c.lab_record, grant.hash, purpose="research"))
    assert refusal is not None and refusal.reason == Reason.PURPOSE_NOT_GRANTED
    assert [(line.tx_hash, line.kind) for line in act_lines(c.world)] == [
        (grant.hash, ConsentGrantPurposes.KIND)]


def test_a_representatives_revoke_by_provider_ends_the_patients_grants_and_its_own() -> None:
    c = setup_world()
    c.world.commit(appoint_tx(c.world))
    by_representative = act_purpose_grant(c.world, ("research",), grantee=CLINICIAN)
    c.world.commit(by_representative)
    revoke = act_tx(c.world, PARENT, ConsentRevokeProvider, grantee=CLINICIAN.public_key)
    c.world.commit(revoke)
    for grant_id in (c.grant, by_representative.hash):  # the patient's own, the act's
        state = queries.grant(c.world.state, grant_id)
        assert state is not None and state.revoked_height == c.world.height
    assert [(line.tx_hash, line.kind) for line in act_lines(c.world)][-1] == (
        revoke.hash, ConsentRevokeProvider.KIND)


def test_the_tables_cover_every_refusal_reason() -> None:
    covered = {case.expected for case in ALL_CASES if case.expected is not None}
    assert set(Reason) - covered == set()


# --- behaviour beyond single transactions ---------------------------------------------------

def test_an_authority_change_backed_by_a_quorum_takes_effect_two_blocks_later() -> None:
    world = World(make_genesis(4))
    world.commit(vote(world, A0, "add", NEWCOMER.public_key, "new"),
                 vote(world, A1, "add", NEWCOMER.public_key, "new"))
    assert NEWCOMER.public_key not in rules.authorities(world.state, world.height + 2)
    world.commit(vote(world, A2, "add", NEWCOMER.public_key, "new"))  # third of four: quorum
    decided = world.height
    assert NEWCOMER.public_key not in rules.authorities(world.state, decided + 1)
    assert NEWCOMER.public_key in rules.authorities(world.state, decided + 2)


def test_two_of_four_votes_change_nothing() -> None:
    world = World(make_genesis(4))
    world.commit(vote(world, A0, "remove", A3.public_key, "hospital-3"),
                 vote(world, A1, "remove", A3.public_key, "hospital-3"))
    world.commit()
    world.commit()
    assert A3.public_key in rules.authorities(world.state, world.height + 5)


def test_a_block_must_carry_the_authority_set_of_its_height() -> None:
    world = World(make_genesis(4))
    world.commit(*(vote(world, signer, "remove", A3.public_key, "hospital-3")
                   for signer in (A0, A1, A2)))
    world.commit()  # height 2: still four authorities
    execution = world.commit()  # height 3: three
    assert world.blocks[-1][0].header.validators_hash == blocks.validators_hash(
        (A0.public_key, A1.public_key, A2.public_key))
    assert execution.meta.height == 3


def test_rule_time_is_block_time_not_a_local_clock() -> None:
    cast = setup_world()
    world = cast.world
    short = grant_tx(world, LAB, scope_tags=(LAB_TAG,), expires_at_ms=world.time_ms + 3000)
    world.commit(short)
    read = access(world, LAB, cast.lab_record, short.hash)
    assert world.check(read, advance_ms=1000) is None
    refusal = world.check(read, advance_ms=2000)
    assert refusal is not None and refusal.reason is Reason.GRANT_EXPIRED


def test_a_rejected_transaction_writes_nothing() -> None:
    cast = setup_world()
    before = cast.world.state.items()
    assert cast.world.check(cast.world.anchor(LAB, PATIENT, [LAB_TAG])) is not None
    assert cast.world.state.items() == before


def test_block_height_and_time_must_move_forward() -> None:
    cast = setup_world()
    world = cast.world
    with pytest.raises(BlockRejected, match="height"):
        rules.apply_block(world.state, world.blocks[-1][0])
    built = rules.build_block(
        world.state, [], height=world.height + 1, time_ms=world.time_ms + 1,
        prev_hash=world.prev_hash, last_commit=world.last_commit, evidence=(),
        proposer=A0.public_key, params=world.genesis.params)
    rules.apply_block(world.state, built.block)  # the honest twin applies
    stale = replace(built.block.header, time_ms=world.time_ms)
    with pytest.raises(BlockRejected, match="time"):
        rules.apply_block(world.state, Block(stale, (), ()))


def test_a_wrong_state_hash_is_refused() -> None:
    cast = setup_world()
    world = cast.world
    built = rules.build_block(
        world.state, [world.anchor(PATIENT, PATIENT, [LAB_TAG])], height=world.height + 1,
        time_ms=world.time_ms + 1, prev_hash=world.prev_hash, last_commit=world.last_commit,
        evidence=(), proposer=A0.public_key, params=world.genesis.params)
    lying = replace(built.block.header, state_hash=b"\x01" * 32)
    with pytest.raises(BlockRejected, match="state_hash"):
        rules.apply_block(world.state, Block(lying, built.block.txs, ()))


def test_build_block_defers_what_may_pass_later_and_refuses_the_rest() -> None:
    cast = setup_world()
    world = cast.world
    world.quotas = Quotas(patient_records_per_block=1)
    first = world.anchor(PATIENT, PATIENT, [LAB_TAG])
    second = world.anchor(PATIENT, PATIENT, [LAB_TAG])
    hopeless = world.anchor(STRANGER, PATIENT, [LAB_TAG])
    built = rules.build_block(
        world.state, [first, second, hopeless], height=world.height + 1,
        time_ms=world.time_ms + 1, prev_hash=world.prev_hash, last_commit=world.last_commit,
        evidence=(), proposer=A0.public_key, params=world.genesis.params, quotas=world.quotas)
    assert built.block.txs == (first,)
    assert built.deferred == (second,)
    assert [(tx, refusal.reason) for tx, refusal in built.refused] == [
        (hopeless, Reason.AUTHOR_NOT_PROVIDER)]


def test_an_announced_address_with_a_final_newline_does_not_even_decode() -> None:
    """The pattern ends in \\Z: a `$` let "...tcp/26600\\n" through, and every node then failed to
    encode its answer naming that address (the second review's finding)."""
    world = World()
    with pytest.raises(SchemaViolation, match="does not match"):
        world.tx(NodeAnnounce, A0, addresses=("/ip4/10.0.0.5/tcp/26600\n",)).encode()
    assert world.tx(NodeAnnounce, A0, addresses=HERE).encode()
