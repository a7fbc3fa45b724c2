"""Model-based test: random sequences of transactions run through the ledger rules into the
LevelDB store, side by side with a plain in-memory model of who may do what.

The model is deliberately naive (dicts and a few `if`s, written from docs/ledger.md, not from
the rules' code). After every step the store's answers (records with versions, grants by patient
and grantee, audit trails, grant validity) must equal the model's, and the store's state must
equal the same blocks applied to a dict; closing and reopening the store is one of the steps.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from healthnode.crypto import digest
from healthnode.ledger import queries, rules
from healthnode.ledger.state import MemoryState
from healthnode.protocol.tx import (
    AccessLog,
    AnyTx,
    ConsentGrant,
    ConsentRevoke,
    ProviderRegister,
    ProviderRevoke,
    RecordAnchor,
    RecordErase,
)
from healthnode.store.leveldb import ChainStore
from tests.chain import AUTHORITIES, CHAIN_ID, certify, identity, make_genesis, tag, wrap_for

HOSPITALS = AUTHORITIES[:2]
PROVIDERS = [identity(f"model-provider-{i}") for i in range(4)]
PATIENTS = [identity(f"model-patient-{i}") for i in range(2)]
EVERYONE = [*PROVIDERS, *PATIENTS]
CATEGORIES = {name: tag(b"m" * 32, name) for name in ("lab", "mental-health", "imaging")}


@dataclass
class Grant:
    patient: bytes
    grantee: bytes
    actions: frozenset[str]
    tags: frozenset[bytes]
    records: frozenset[bytes]
    expires_at_ms: int | None
    granted_ms: int
    revoked_ms: int | None = None

    def in_force(self, time_ms: int) -> bool:
        return (self.granted_ms <= time_ms
                and (self.expires_at_ms is None or time_ms < self.expires_at_ms)
                and (self.revoked_ms is None or time_ms < self.revoked_ms))


@dataclass
class Record:
    patient: bytes
    tags: frozenset[bytes]
    supersedes: bytes | None
    erased: bool = False
    superseded_by: bytes | None = None


@dataclass
class Model:
    providers: dict[bytes, bytes] = field(default_factory=dict)  # provider -> its hospital
    revoked: set[bytes] = field(default_factory=set)
    records: dict[bytes, Record] = field(default_factory=dict)
    grants: dict[bytes, Grant] = field(default_factory=dict)
    audit: dict[bytes, list[tuple[bytes, bytes]]] = field(default_factory=dict)

    def active(self, key: bytes) -> bool:
        return key in self.providers and key not in self.revoked


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="healthnode-model-"))
        self.genesis = make_genesis()
        self.store = ChainStore.open(self.directory / "chain", self.genesis)
        self.mirror = MemoryState(self.store.state_items())
        self.model = Model()
        self.nonces: dict[bytes, int] = {}
        self.time_ms = self.genesis.genesis_time_ms
        self.made = 0

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    # --- plumbing ---------------------------------------------------------------------------

    def sign(self, cls: type[Any], signer: Any, **fields: Any) -> Any:
        nonce = self.nonces.get(signer.public_key, 0) + 1
        return cls(signer=b"", nonce=nonce, **fields).sign(signer, CHAIN_ID)

    def offer(self, tx: AnyTx, model_accepts: bool, advance_ms: int = 1000) -> bool:
        """Check `tx` as of the next block; it must agree with the model; commit it if
        accepted. Returns whether it was accepted."""
        time_ms = self.time_ms + advance_ms
        now = rules.context(self.store, self.store.head.height + 1, time_ms)
        verdict = rules.check_tx(self.store, tx, now)
        assert (verdict is None) == model_accepts, (type(tx).__name__, verdict, model_accepts)
        if verdict is None:
            self.nonces[tx.signer] = tx.nonce
            self.commit([tx], advance_ms)
        return verdict is None

    def commit(self, txs: list[AnyTx], advance_ms: int = 1000) -> None:
        time_ms = self.time_ms + advance_ms
        head = self.store.head
        built = rules.build_block(
            self.store, txs, height=head.height + 1, time_ms=time_ms, prev_hash=head.block_hash,
            last_commit=self.store.certificate(head.height), evidence=(),
            proposer=AUTHORITIES[0].public_key, params=self.genesis.params)
        assert len(built.block.txs) == len(txs), built.refused
        execution = rules.apply_block(self.store, built.block)
        self.store.commit(built.block, certify(built.block), execution)
        self.mirror.commit(execution)
        self.time_ms = time_ms

    # --- rules ------------------------------------------------------------------------------

    @initialize()
    def staff_the_hospitals(self) -> None:
        """Most runs need doctors: register three of the four providers first."""
        for index, provider in enumerate(PROVIDERS[:3]):
            self.register(HOSPITALS[index % 2], provider, emergency=index == 0)

    @rule(hospital=st.sampled_from(HOSPITALS), provider=st.sampled_from(PROVIDERS),
          emergency=st.booleans())
    def register(self, hospital: Any, provider: Any, emergency: bool) -> None:
        key = provider.public_key
        tx = self.sign(ProviderRegister, hospital, provider=key,
                       roles=("clinician", "emergency") if emergency else ("clinician",),
                       display_name="Dr Model")
        if self.offer(tx, key not in self.model.providers):
            self.model.providers[key] = hospital.public_key

    @rule(hospital=st.sampled_from(HOSPITALS), provider=st.sampled_from(PROVIDERS),
          roll=st.integers(0, 3))
    def revoke_provider(self, hospital: Any, provider: Any, roll: int) -> None:
        if roll:  # a revoked key is dead for good: revoke rarely, or the run runs out of doctors
            return
        key = provider.public_key
        accepts = self.model.active(key) and self.model.providers[key] == hospital.public_key
        if self.offer(self.sign(ProviderRevoke, hospital, provider=key), accepts):
            self.model.revoked.add(key)

    @rule(author=st.sampled_from(EVERYONE), patient=st.sampled_from(PATIENTS),
          categories=st.sets(st.sampled_from(sorted(CATEGORIES)), min_size=1),
          amend=st.integers(0, 40))
    def anchor(self, author: Any, patient: Any, categories: set[str], amend: int) -> None:
        tags = frozenset(CATEGORIES[name] for name in categories)
        known = sorted(self.model.records)
        supersedes = known[amend] if amend < len(known) else None
        self.made += 1
        tx = self.sign(RecordAnchor, author, patient=patient.public_key,
                       ciphertext_hash=digest(b"model-%d" % self.made), ciphertext_bytes=1024,
                       tags=tuple(sorted(tags)), key_wraps=wrap_for(patient.public_key),
                       supersedes=supersedes)
        time_ms = self.time_ms + 1000
        may_write = author.public_key == patient.public_key or (
            self.model.active(author.public_key) and any(
                g.patient == patient.public_key and g.grantee == author.public_key
                and "write" in g.actions and tags <= g.tags and g.in_force(time_ms)
                for g in self.model.grants.values()))
        previous = self.model.records.get(supersedes) if supersedes else None
        chain_ok = supersedes is None or (
            previous is not None and previous.patient == patient.public_key
            and not previous.erased and previous.superseded_by is None)
        if self.offer(tx, may_write and chain_ok):
            self.model.records[tx.hash] = Record(patient.public_key, tags, supersedes)
            if previous is not None:
                previous.superseded_by = tx.hash

    @rule(patient=st.sampled_from(PATIENTS), grantee=st.sampled_from(PROVIDERS * 3 + PATIENTS),
          actions=st.sets(st.sampled_from(["read", "write"]), min_size=1),
          categories=st.sets(st.sampled_from(sorted(CATEGORIES))),
          pick=st.sets(st.integers(0, 40), max_size=3),
          lifetime_ms=st.none() | st.none() | st.integers(0, 6000))
    def grant(self, patient: Any, grantee: Any, actions: set[str], categories: set[str],
              pick: set[int], lifetime_ms: int | None) -> None:
        own = sorted(record_id for record_id, record in self.model.records.items()
                     if record.patient == patient.public_key)
        records = frozenset(own[i] for i in pick if i < len(own))
        tags = frozenset(CATEGORIES[name] for name in categories)
        expires = None if lifetime_ms is None else self.time_ms + lifetime_ms
        tx = self.sign(ConsentGrant, patient, grantee=grantee.public_key,
                       actions=tuple(sorted(actions)), scope_records=tuple(sorted(records)),
                       scope_tags=tuple(sorted(tags)), expires_at_ms=expires, key_wraps=(),
                       tag_key_wrap=None)
        time_ms = self.time_ms + 1000
        accepts = (grantee.public_key != patient.public_key
                   and self.model.active(grantee.public_key)
                   and bool(records or tags)
                   and (expires is None or expires > time_ms))
        if self.offer(tx, accepts):
            self.model.grants[tx.hash] = Grant(patient.public_key, grantee.public_key,
                                               frozenset(actions), tags, records, expires, time_ms)

    @rule(patient=st.sampled_from(PATIENTS), pick=st.integers(0, 40))
    def revoke_grant(self, patient: Any, pick: int) -> None:
        known = sorted(self.model.grants)
        if not known:
            return
        grant_id = known[pick % len(known)]
        grant = self.model.grants[grant_id]
        accepts = grant.patient == patient.public_key and grant.revoked_ms is None
        if self.offer(self.sign(ConsentRevoke, patient, grant_id=grant_id), accepts):
            grant.revoked_ms = self.time_ms

    @rule(reader=st.sampled_from(EVERYONE), pick_record=st.integers(0, 40),
          pick_grant=st.none() | st.integers(0, 40))
    def read(self, reader: Any, pick_record: int, pick_grant: int | None) -> None:
        known = sorted(self.model.records)
        if not known:
            return
        record_id = known[pick_record % len(known)]
        record = self.model.records[record_id]
        grants = sorted(self.model.grants)
        grant_id = grants[pick_grant % len(grants)] if pick_grant is not None and grants else None
        purpose = "patient-request" if reader.public_key == record.patient else "treatment"
        tx = self.sign(AccessLog, HOSPITALS[0], reader=reader.public_key,
                       patient=record.patient, record_id=record_id, grant_id=grant_id,
                       break_glass=0, purpose=purpose, sealed_note=None)
        time_ms = self.time_ms + 1000
        if record.erased:
            accepts = False
        elif reader.public_key == record.patient:
            accepts = grant_id is None
        else:
            grant = self.model.grants.get(grant_id) if grant_id else None
            accepts = (self.model.active(reader.public_key) and grant is not None
                       and grant.patient == record.patient
                       and grant.grantee == reader.public_key and "read" in grant.actions
                       and grant.in_force(time_ms)
                       and (record_id in grant.records or record.tags <= grant.tags))
        if self.offer(tx, accepts):
            self.nonces[HOSPITALS[0].public_key] = tx.nonce
            self.model.audit.setdefault(record.patient, []).append(
                (reader.public_key, record_id))

    @rule(patient=st.sampled_from(PATIENTS), pick=st.integers(0, 40))
    def erase(self, patient: Any, pick: int) -> None:
        known = sorted(self.model.records)
        if not known:
            return
        record_id = known[pick % len(known)]
        record = self.model.records[record_id]
        accepts = record.patient == patient.public_key and not record.erased
        if self.offer(self.sign(RecordErase, patient, record_id=record_id), accepts):
            record.erased = True

    @rule(advance_ms=st.integers(1, 5000))
    def quiet_block(self, advance_ms: int) -> None:
        self.commit([], advance_ms)

    @rule()
    def reopen(self) -> None:
        self.store.close()
        self.store = ChainStore.open(self.directory / "chain", self.genesis)

    # --- invariants -------------------------------------------------------------------------

    @invariant()
    def store_answers_like_the_model(self) -> None:
        for patient in PATIENTS:
            key = patient.public_key
            chains = queries.patient_records(self.store, key)
            stored = {v.record_id: v.record for chain in chains for v in chain}
            expected = {r: rec for r, rec in self.model.records.items() if rec.patient == key}
            assert set(stored) == set(expected)
            for record_id, record in expected.items():
                assert (stored[record_id].erased_height is not None) == record.erased
                assert stored[record_id].superseded_by == record.superseded_by
                assert stored[record_id].supersedes == record.supersedes
            for chain in chains:  # each chain runs oldest to newest through `supersedes`
                for older, newer in itertools.pairwise(chain):
                    assert newer.record.supersedes == older.record_id
            grants = {g.grant_id: g.grant for g in queries.grants_by_patient(self.store, key)}
            assert set(grants) == {g for g, m in self.model.grants.items() if m.patient == key}
            for grant_id, grant in grants.items():
                model = self.model.grants[grant_id]
                assert (grant.revoked_height is not None) == (model.revoked_ms is not None)
                assert queries.grant_in_force(self.store, grant_id, self.time_ms) == (
                    model.in_force(self.time_ms))
            trail = [(e.reader, e.record_id) for e in queries.audit_trail(self.store, key)]
            assert trail == self.model.audit.get(key, [])
        for provider in PROVIDERS:
            granted = {g.grant_id for g in queries.grants_by_grantee(self.store,
                                                                     provider.public_key)}
            assert granted == {g for g, m in self.model.grants.items()
                               if m.grantee == provider.public_key}

    @invariant()
    def store_state_equals_the_same_blocks_applied_in_memory(self) -> None:
        assert self.store.state_items() == self.mirror.items()


TestLedgerModel = LedgerMachine.TestCase
TestLedgerModel.settings = settings(
    max_examples=40, stateful_step_count=50, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
