"""Test helpers: a small network's genesis, signed transactions with running nonces, commit
certificates from the authorities, and a ledger world that finalizes one block per `commit`."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from healthnode.crypto import ZERO_HASH, Identity, digest, keyed_digest, threshold
from healthnode.ledger import queries, rules
from healthnode.ledger.rules import DEFAULT_QUOTAS, Execution, Quotas, Rejected
from healthnode.ledger.state import MemoryState
from healthnode.protocol.block import Block, CommitCertificate
from healthnode.protocol.genesis import (
    DEFAULT_PARAMS,
    Authority,
    EmergencyKey,
    Genesis,
    ShareCommitment,
)
from healthnode.protocol.tx import AnyTx, KeyWrap, NodeRotate, RecordAnchor

CHAIN_ID = "test-chain"
GENESIS_TIME_MS = 1_700_000_000_000


def identity(label: str) -> Identity:
    """A deterministic identity per label, so failures are reproducible."""
    return Identity.from_seed(label.encode().ljust(32, b"\0")[:32])


AUTHORITIES = tuple(identity(f"authority-{i}") for i in range(4))


def seeded_scalars(seed: int) -> Callable[[], int]:
    """Deterministic non-zero scalars, so a test network's emergency key is reproducible."""
    rng = random.Random(seed)
    return lambda: rng.randrange(1, threshold.L)


def emergency_dealing(authority_count: int = 4) -> threshold.Dealing:
    return threshold.deal(threshold.quorum_threshold(authority_count), authority_count,
                          seeded_scalars(authority_count))


def make_genesis(authority_count: int = 4, emergency: bool = True) -> Genesis:
    keys = [identity(f"authority-{i}").public_key for i in range(authority_count)]
    emergency_key = None
    if emergency:
        dealing = emergency_dealing(authority_count)
        emergency_key = EmergencyKey(dealing.public_key, dealing.threshold, tuple(
            ShareCommitment(key, index + 1, commitment)
            for index, (key, commitment) in enumerate(zip(keys, dealing.commitments,
                                                          strict=True))))
    genesis = Genesis(
        chain_id=CHAIN_ID,
        genesis_time_ms=GENESIS_TIME_MS,
        authorities=tuple(Authority(f"hospital-{i}", key) for i, key in enumerate(keys)),
        params=DEFAULT_PARAMS,
        emergency=emergency_key,
    )
    genesis.validate()
    return genesis


def emergency_wrap(genesis: Genesis, patient: bytes, ciphertext_hash: bytes,
                   data_key: bytes = b"\x07" * 32) -> bytes:
    """`data_key` wrapped for the genesis emergency key, bound to (chain, patient, ciphertext)."""
    assert genesis.emergency is not None
    return threshold.wrap(genesis.emergency.public_key, data_key,
                          threshold.WrapLabel(CHAIN_ID, patient, ciphertext_hash),
                          seeded_scalars(99))


def certify(block: Block, signers: Sequence[Identity] = AUTHORITIES,
            round_number: int = 0) -> CommitCertificate:
    """The precommits of `signers` for `block`, as a commit certificate."""
    return CommitCertificate.signed_by(block, signers, CHAIN_ID, round_number)


def tag(patient_tag_key: bytes, category: str) -> bytes:
    return keyed_digest(patient_tag_key, category.encode())


def wrap_for(*recipients: bytes) -> tuple[KeyWrap, ...]:
    return tuple(KeyWrap(recipient, b"\x07" * 80) for recipient in recipients)


class World:
    """A ledger over a MemoryState, with actors that sign transactions with running nonces."""

    def __init__(self, genesis: Genesis | None = None, quotas: Quotas = DEFAULT_QUOTAS) -> None:
        self.genesis = genesis or make_genesis()
        self.quotas = quotas
        self.state = MemoryState()
        self.state.commit(rules.genesis_state(self.genesis))
        self.nonces: dict[bytes, int] = {}
        self.time_ms = self.genesis.genesis_time_ms
        self.prev_hash = ZERO_HASH
        self.last_commit: CommitCertificate | None = None
        self.blocks: list[tuple[Block, CommitCertificate]] = []
        self.ciphertexts_made = 0
        self.states: list[dict[bytes, bytes]] = [self.state.items()]  # by height

    def state_at(self, height: int) -> dict[bytes, bytes]:
        """The state items after `height` (0: the genesis state)."""
        return self.states[height]

    @property
    def height(self) -> int:
        return len(self.blocks)

    def tx(self, cls: type[Any], signer: Identity, nonce: int | None = None,
           **fields: Any) -> Any:
        """`cls(...)` signed by `signer` with its next nonce (or `nonce`)."""
        if nonce is None:
            nonce = self.nonces.get(signer.public_key, 0) + 1
            self.nonces[signer.public_key] = nonce
        return cls(signer=b"", nonce=nonce, **fields).sign(signer, CHAIN_ID)

    def now(self, advance_ms: int = 1000) -> rules.BlockContext:
        return rules.context(self.state, self.height + 1, self.time_ms + advance_ms, self.quotas)

    def check(self, tx: AnyTx, advance_ms: int = 1000) -> Rejected | None:
        return rules.check_tx(self.state, tx, self.now(advance_ms))

    def commit(self, *txs: AnyTx, advance_ms: int = 1000) -> Execution:
        """Propose a block of exactly `txs` (each must pass), apply it as a validator would,
        and finalize it."""
        time_ms = self.time_ms + advance_ms
        authorities = self.now(advance_ms).authorities  # the set of this height: votes change it
        proposer = authorities[self.height % len(authorities)]
        built = rules.build_block(
            self.state, txs, height=self.height + 1, time_ms=time_ms, prev_hash=self.prev_hash,
            last_commit=self.last_commit, evidence=(), proposer=proposer,
            params=self.genesis.params, quotas=self.quotas)
        assert not built.refused and not built.deferred, (built.refused, built.deferred)
        execution = rules.apply_block(self.state, built.block, quotas=self.quotas)
        assert execution == built.execution
        self.finalize(built.block, execution)
        return execution

    def commit_until(self, height: int) -> None:
        """Commit empty blocks until the head is at `height`."""
        while self.height < height:
            self.commit()

    def rotate(self, old: Identity, new: Identity, height: int,
               consent_by: Identity | None = None, consent_height: int | None = None
               ) -> NodeRotate:
        """`old`'s node.rotate to `new` from `height`, with the new key's consent (made by
        `consent_by` for `consent_height` instead, to forge one)."""
        consent = NodeRotate.new_key_consent(consent_by or new, CHAIN_ID, old.public_key,
                                             height if consent_height is None
                                             else consent_height)
        rotation: NodeRotate = self.tx(NodeRotate, old, new_key=new.public_key, height=height,
                                       new_signature=consent)
        return rotation

    def finalize(self, block: Block, execution: Execution) -> CommitCertificate:
        certificate = certify(block)
        self.state.commit(execution)
        self.blocks.append((block, certificate))
        self.states.append(self.state.items())
        self.time_ms = block.header.time_ms
        self.prev_hash = block.hash
        self.last_commit = certificate
        return certificate

    def anchor(self, author: Identity, patient: Identity, tags: Sequence[bytes],
               ciphertext: bytes | None = None, supersedes: bytes | None = None,
               ciphertext_bytes: int = 1024, with_emergency_wrap: bool = False) -> RecordAnchor:
        self.ciphertexts_made += 1
        body = ciphertext or f"ciphertext-{self.ciphertexts_made}".encode()
        return self.tx(RecordAnchor, author, patient=patient.public_key,
                       ciphertext_hash=digest(body), ciphertext_bytes=ciphertext_bytes,
                       tags=tuple(sorted(tags)), key_wraps=wrap_for(patient.public_key),
                       supersedes=supersedes,
                       emergency_wrap=emergency_wrap(self.genesis, patient.public_key,
                                                     digest(body)) if with_emergency_wrap
                       else None)

    def record_wrap(self, record_id: bytes, data_key: bytes = b"\x07" * 32) -> bytes:
        """An emergency wrap bound to an anchored record (its patient and ciphertext hash)."""
        record = queries.record(self.state, record_id)
        assert record is not None
        return emergency_wrap(self.genesis, record.patient, record.ciphertext_hash, data_key)
