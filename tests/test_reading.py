"""Who may be told what of a record id (ledger/reading.py): `record_sight`, the state keys it
decides, and `told_refusal`, the refusal of a submitted transaction as its asker may hear it.

A small world: a patient with a live record and an erased one, a clinician it granted lab
results to, a lab provider it granted nothing, an emergency physician, and a stranger (a key of
no one). Each id kind a stranger may try is here: one that was never a record's, another
patient's live record, another patient's erased one. The ledger's own refusals tell them apart
(that was the leak); what the stranger is told must not."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from healthnode.crypto import Identity
from healthnode.ledger import reading, rules
from healthnode.ledger.reading import NOT_READABLE, Sight
from healthnode.ledger.rules import Reason, Rejected
from healthnode.ledger.state import EMERGENCY_WRAP, NONCE, RECORD, read
from healthnode.protocol.schema import replace
from healthnode.protocol.state import SignerNonce
from healthnode.protocol.tx import (
    AnyTx,
    ConsentGrant,
    ConsentRevoke,
    EmergencyPolicy,
    EmergencyWrap,
    ProviderRegister,
    RecordErase,
)
from tests.chain import AUTHORITIES, World, emergency_wrap, identity, tag

A0 = AUTHORITIES[0]
PATIENT = identity("reading-patient")
CLINICIAN = identity("reading-clinician")
LAB = identity("reading-lab")
EMERGENCY = identity("reading-emergency")
STRANGER = identity("reading-stranger")
LAB_TAG = tag(b"k" * 32, "lab")
MENTAL_TAG = tag(b"k" * 32, "mental-health")
UNKNOWN = b"\x88" * 32
LIVE_BYTES, ERASED_BYTES = b"the live record's bytes", b"the erased record's bytes"


@dataclass
class Ids:
    world: World
    live: bytes
    erased: bytes
    mental: bytes  # the patient's, outside the clinician's grant
    grant: bytes

    def kinds(self) -> dict[str, bytes]:
        """The three kinds of id a stranger may ask about."""
        return {"never": UNKNOWN, "live": self.live, "erased": self.erased}


@pytest.fixture
def ids() -> Ids:
    world = World()
    world.commit(
        world.tx(ProviderRegister, A0, provider=CLINICIAN.public_key, roles=("clinician",),
                 display_name="Dr Clinician"),
        world.tx(ProviderRegister, A0, provider=LAB.public_key, roles=("lab",),
                 display_name="City Lab"),
        world.tx(ProviderRegister, A0, provider=EMERGENCY.public_key,
                 roles=("clinician", "emergency"), display_name="Dr Emergency"))
    live = world.anchor(PATIENT, PATIENT, [LAB_TAG], ciphertext=LIVE_BYTES)
    erased = world.anchor(PATIENT, PATIENT, [LAB_TAG], ciphertext=ERASED_BYTES)
    mental = world.anchor(PATIENT, PATIENT, [LAB_TAG, MENTAL_TAG])
    world.commit(live, erased, mental)
    grant = world.tx(ConsentGrant, PATIENT, grantee=CLINICIAN.public_key, actions=("read",),
                     scope_records=(), scope_tags=(LAB_TAG,), expires_at_ms=None, key_wraps=(),
                     tag_key_wrap=None)
    world.commit(grant, world.tx(RecordErase, PATIENT, record_id=erased.hash))
    return Ids(world, live.hash, erased.hash, mental.hash, grant.hash)


def _sights(ids: Ids, asker: Identity) -> dict[str, Sight]:
    return {kind: reading.record_sight(ids.world.state, asker.public_key, record_id)
            for kind, record_id in ids.kinds().items()}


def test_record_sight_hides_every_kind_of_id_from_those_who_may_not_read(ids: Ids) -> None:
    hidden = {"never": Sight.HIDDEN, "live": Sight.HIDDEN, "erased": Sight.HIDDEN}
    assert _sights(ids, STRANGER) == hidden
    assert _sights(ids, LAB) == hidden  # a provider the patient granted nothing
    assert _sights(ids, EMERGENCY) == hidden  # the patient allowed no emergency reads
    # Its patient, and a reader a grant in force covers it for, are told, erased or not.
    told = {"never": Sight.HIDDEN, "live": Sight.SEEN, "erased": Sight.SEEN}
    assert _sights(ids, PATIENT) == told
    assert _sights(ids, CLINICIAN) == told
    # Not a record outside the grant's scope.
    assert reading.record_sight(ids.world.state, CLINICIAN.public_key,
                                ids.mental) is Sight.HIDDEN


def test_a_revoked_grant_tells_nothing_any_more(ids: Ids) -> None:
    world = ids.world
    world.commit(world.tx(ConsentRevoke, PATIENT, grant_id=ids.grant))
    assert set(_sights(ids, CLINICIAN).values()) == {Sight.HIDDEN}


def test_an_emergency_provider_is_told_what_the_patients_policy_allows(ids: Ids) -> None:
    world = ids.world
    world.commit(world.tx(EmergencyPolicy, PATIENT, allowed_tags=(LAB_TAG,), wraps=(
        EmergencyWrap(ids.live, world.record_wrap(ids.live)),)))
    assert _sights(ids, EMERGENCY) == {
        "never": Sight.HIDDEN, "live": Sight.IF_BREAK_GLASS, "erased": Sight.IF_BREAK_GLASS}
    # A category the policy leaves out, and a provider without the emergency role: hidden.
    assert reading.record_sight(world.state, EMERGENCY.public_key, ids.mental) is Sight.HIDDEN
    assert set(_sights(ids, LAB).values()) == {Sight.HIDDEN}


@pytest.mark.parametrize("prefix", [RECORD, EMERGENCY_WRAP], ids=["record", "wrap"])
def test_a_records_keys_are_proven_by_the_same_sight(ids: Ids, prefix: bytes) -> None:
    """An unknown id's key was SEEN (its absence then refused as unknown_record): a stranger
    told a missing record from another patient's by the refusal's code."""
    state = ids.world.state
    for record_id in ids.kinds().values():
        assert reading.may_see(state, STRANGER.public_key, prefix + record_id) is Sight.HIDDEN
    assert reading.may_see(state, PATIENT.public_key, prefix + ids.erased) is Sight.SEEN


# --- submissions ---------------------------------------------------------------------------


def _fresh(world: World, who: Identity) -> World:
    """The world with `who`'s next transaction at its next nonce on chain (none is kept)."""
    used = read(world.state, NONCE + who.public_key, SignerNonce)
    world.nonces[who.public_key] = used.nonce if used else 0
    return world


def _erase(ids: Ids, who: Identity, record_id: bytes) -> AnyTx:
    return _fresh(ids.world, who).tx(RecordErase, who, record_id=record_id)


def _grant(ids: Ids, who: Identity, record_id: bytes) -> AnyTx:
    return _fresh(ids.world, who).tx(
        ConsentGrant, who, grantee=CLINICIAN.public_key, actions=("read",),
        scope_records=(record_id,), scope_tags=(), expires_at_ms=None, key_wraps=(),
        tag_key_wrap=None)


def _policy(ids: Ids, who: Identity, record_id: bytes) -> AnyTx:
    wrap = emergency_wrap(ids.world.genesis, who.public_key, b"\x05" * 32)
    return _fresh(ids.world, who).tx(EmergencyPolicy, who, allowed_tags=(LAB_TAG,),
                                     wraps=(EmergencyWrap(record_id, wrap),))


def _amend(ids: Ids, who: Identity, record_id: bytes) -> AnyTx:
    return _fresh(ids.world, who).anchor(who, who, [LAB_TAG], supersedes=record_id)


def _same_bytes(ids: Ids, who: Identity, record_id: bytes) -> AnyTx:
    """An anchor of the bytes of the record `record_id` (never anchored: new bytes)."""
    body = {ids.live: LIVE_BYTES, ids.erased: ERASED_BYTES}.get(record_id, b"new bytes")
    return _fresh(ids.world, who).anchor(who, who, [LAB_TAG], ciphertext=body)


SUBMISSIONS: dict[str, Any] = {"erase": _erase, "grant": _grant, "policy": _policy,
                               "amend": _amend}


def _told(ids: Ids, asker: Identity, tx: AnyTx) -> Rejected | None:
    refusal = ids.world.check(tx)
    if refusal is None:
        return None
    return reading.told_refusal(ids.world.state, asker.public_key, tx, refusal)


@pytest.mark.parametrize("make", SUBMISSIONS.values(), ids=SUBMISSIONS.keys())
def test_a_strangers_submission_naming_any_kind_of_id_is_told_one_refusal(
        ids: Ids, make: Any) -> None:
    ledger = {kind: ids.world.check(make(ids, STRANGER, record_id))
              for kind, record_id in ids.kinds().items()}
    assert all(refusal is not None for refusal in ledger.values())
    assert len({refusal.reason for refusal in ledger.values() if refusal}) > 1, \
        "the ledger's reasons tell the kinds apart (the leak told_refusal closes)"
    told = {kind: _told(ids, STRANGER, make(ids, STRANGER, record_id))
            for kind, record_id in ids.kinds().items()}
    assert set(told.values()) == {Rejected(NOT_READABLE, reading.NOT_READABLE_DETAIL)}


def test_an_anchor_of_anchored_bytes_is_told_alike_live_or_erased(ids: Ids) -> None:
    ledger = [ids.world.check(_same_bytes(ids, STRANGER, r)) for r in (ids.live, ids.erased)]
    assert {r.reason for r in ledger if r} == {Reason.CIPHERTEXT_ALREADY_ANCHORED}
    told = {_told(ids, STRANGER, _same_bytes(ids, STRANGER, r)) for r in (ids.live, ids.erased)}
    assert told == {Rejected(NOT_READABLE, reading.NOT_READABLE_DETAIL)}
    # Bytes never anchored make a record: nothing to hide (the wallet's own `record add`).
    assert _told(ids, STRANGER, _same_bytes(ids, STRANGER, UNKNOWN)) is None
    # Its patient hears the ledger's reason.
    own = _same_bytes(ids, PATIENT, ids.erased)
    assert _told(ids, PATIENT, own) == ids.world.check(own) == ledger[1]


def test_those_who_may_read_hear_the_ledgers_reason(ids: Ids) -> None:
    # A grantee erasing the patient's record: the record is its to read, the erase is not.
    told = _told(ids, CLINICIAN, _erase(ids, CLINICIAN, ids.live))
    assert told is not None and told.reason == Reason.NOT_RECORD_OWNER
    # The patient, erasing again and amending an erased record.
    told = _told(ids, PATIENT, _erase(ids, PATIENT, ids.erased))
    assert told is not None and told.reason == Reason.RECORD_ALREADY_ERASED
    told = _told(ids, PATIENT, _amend(ids, PATIENT, ids.erased))
    assert told is not None and told.reason == Reason.SUPERSEDED_RECORD_ERASED
    # An unknown id is no one's record: its own patient (there is none) is told no more.
    told = _told(ids, PATIENT, _erase(ids, PATIENT, UNKNOWN))
    assert told is not None and told.reason == NOT_READABLE


def test_refusals_decided_before_the_records_are_told_as_they_are(ids: Ids) -> None:
    """A bad signature or a used nonce says nothing of the records a transaction names."""
    erase = _erase(ids, STRANGER, ids.live)
    forged = replace(erase, signature=bytes(64))
    assert _told(ids, STRANGER, forged) == Rejected(
        Reason.BAD_SIGNATURE, "signature does not verify for this chain")
    stale = _fresh(ids.world, PATIENT).tx(RecordErase, PATIENT, nonce=1, record_id=ids.live)
    told = _told(ids, STRANGER, stale)
    assert told is not None and told.reason == Reason.NONCE_REPLAYED
    assert {Reason.BAD_SIGNATURE, Reason.NONCE_REPLAYED, Reason.NONCE_GAP} <= \
        reading.RECORD_BLIND
    assert not reading.RECORD_BLIND & {str(reason) for reason in Reason
                                        if "record" in reason or "scope" in reason}


def test_named_records(ids: Ids) -> None:
    state = ids.world.state
    assert reading.named_records(state, _erase(ids, STRANGER, UNKNOWN)) == [UNKNOWN]
    assert reading.named_records(state, _amend(ids, STRANGER, ids.live)) == [ids.live]
    assert reading.named_records(state, _same_bytes(ids, STRANGER, ids.erased)) == [ids.erased]
    assert reading.named_records(state, _same_bytes(ids, STRANGER, UNKNOWN)) == []
    assert rules.emergency_reader(state, EMERGENCY.public_key)
    assert not rules.emergency_reader(state, CLINICIAN.public_key)
