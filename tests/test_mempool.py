"""The mempool: checked on entry, bounded with named refusals, nonce-ordered, and cleaned of
what a finalized block made invalid."""

from __future__ import annotations

from pathlib import Path

import pytest

from healthnode.ledger import rules
from healthnode.ledger.mempool import DUPLICATE, NONCE_PENDING, POOL_FULL, SIGNER_FULL, Mempool
from healthnode.ledger.rules import Reason
from healthnode.protocol.schema import replace
from healthnode.protocol.tx import (
    AccessLog,
    AnyTx,
    ConsentRevoke,
    ConsentRevokeProvider,
    ProviderRegister,
    RepresentativeAppoint,
)
from tests.chain import AUTHORITIES, World, identity, make_genesis, tag
from tests.test_ledger_rules import NEWCOMER, act_tx, grant_tx, vote

PATIENT = identity("mempool-patient")
LAB_TAG = tag(b"p" * 32, "lab")


def pool(txs_max: int = 100, bytes_max: int = 1 << 20, per_signer: int = 10) -> Mempool:
    return Mempool(txs_max, bytes_max, per_signer)


def add(mempool: Mempool, world: World, tx: AnyTx) -> object:
    return mempool.add(world.state, tx, len(tx.encode()), world.time_ms + 1000)


def test_a_valid_transaction_waits_and_is_offered_once() -> None:
    world, mempool = World(), pool()
    tx = world.anchor(PATIENT, PATIENT, [LAB_TAG])
    assert add(mempool, world, tx) is None
    refusal = add(mempool, world, tx)
    assert getattr(refusal, "reason", None) == DUPLICATE
    assert mempool.candidates() == [tx] and len(mempool) == 1


def test_the_ledger_refuses_on_entry_with_its_own_reason() -> None:
    world, mempool = World(), pool()
    stranger_register = world.tx(ProviderRegister, PATIENT, provider=identity("x").public_key,
                                 roles=("lab",), display_name="x")
    assert getattr(add(mempool, world, stranger_register), "reason", None) == Reason.NOT_AUTHORITY
    forged = replace(world.anchor(PATIENT, PATIENT, [LAB_TAG]), signature=bytes(64))
    assert getattr(add(mempool, world, forged), "reason", None) == Reason.BAD_SIGNATURE
    assert len(mempool) == 0


def test_a_signers_consecutive_nonces_wait_together_and_gaps_are_refused() -> None:
    world, mempool = World(), pool()
    first, second = (world.anchor(PATIENT, PATIENT, [LAB_TAG]) for _ in range(2))
    skipped = world.anchor(PATIENT, PATIENT, [LAB_TAG], supersedes=None)
    fourth = world.anchor(PATIENT, PATIENT, [LAB_TAG])
    assert add(mempool, world, first) is None
    assert add(mempool, world, second) is None
    assert getattr(add(mempool, world, fourth), "reason", None) == Reason.NONCE_GAP
    other_second = replace(skipped, nonce=2, signature=b"").sign(PATIENT, "test-chain")
    assert getattr(add(mempool, world, other_second), "reason", None) == NONCE_PENDING
    assert mempool.candidates() == [first, second]


def test_limits_refuse_with_a_named_reason() -> None:
    world = World()
    small = pool(txs_max=2)
    txs = [world.anchor(identity(f"p{i}"), identity(f"p{i}"), [LAB_TAG]) for i in range(3)]
    assert add(small, world, txs[0]) is None and add(small, world, txs[1]) is None
    assert getattr(add(small, world, txs[2]), "reason", None) == POOL_FULL
    by_bytes = pool(bytes_max=len(txs[0].encode()) + 10)
    assert add(by_bytes, world, txs[0]) is None
    assert getattr(add(by_bytes, world, txs[1]), "reason", None) == POOL_FULL
    per_signer = pool(per_signer=1)
    mine = [world.anchor(PATIENT, PATIENT, [LAB_TAG]) for _ in range(2)]
    assert add(per_signer, world, mine[0]) is None
    assert getattr(add(per_signer, world, mine[1]), "reason", None) == SIGNER_FULL


def test_a_pool_full_of_other_keys_still_takes_the_authorities_own() -> None:
    """The last `reserved_txs` (and `reserved_bytes`) are the authorities': a pool whose other
    room is full of patients' transactions, submitted or relayed, still takes a node's
    access.log of a read, and the reserve itself is bounded."""
    world = World()
    reader = identity("reserve-patient")
    record = world.anchor(reader, reader, [LAB_TAG])
    world.commit(record)

    def log(signer_index: int, nonce: int) -> AnyTx:
        tx: AnyTx = AccessLog(b"", nonce, reader.public_key, reader.public_key, record.hash,
                              None, 0, "patient-request", None).sign(
                                  AUTHORITIES[signer_index], "test-chain")
        return tx

    small = Mempool(5, 1 << 20, 10, reserved_txs=2)
    flood = [world.anchor(identity(f"r{i}"), identity(f"r{i}"), [LAB_TAG]) for i in range(5)]
    for tx in flood[:3]:
        assert add(small, world, tx) is None
    refused = add(small, world, flood[3])
    assert getattr(refused, "reason", None) == POOL_FULL and "authorities" in str(refused)
    relayed = small.add(world.state, flood[4], len(flood[4].encode()), world.time_ms + 1000,
                        relayed=True)
    assert getattr(relayed, "reason", None) == POOL_FULL
    assert add(small, world, log(0, 1)) is None  # a read's access.log: the reserve
    assert add(small, world, log(1, 1)) is None  # another authority's
    assert getattr(add(small, world, log(0, 2)), "reason", None) == POOL_FULL  # all 5 taken

    size = len(flood[0].encode())
    by_bytes = Mempool(100, 3 * size, 10, reserved_bytes=size + 1)
    assert add(by_bytes, world, flood[0]) is None
    assert getattr(add(by_bytes, world, flood[1]), "reason", None) == POOL_FULL
    assert add(by_bytes, world, log(0, 1)) is None


def test_a_finalized_block_removes_its_txs_and_evicts_what_it_made_invalid() -> None:
    world, mempool = World(), pool()
    clinician = identity("mempool-clinician")
    world.commit(world.tx(ProviderRegister, AUTHORITIES[0], provider=clinician.public_key,
                          roles=("clinician",), display_name="Dr M"))
    grant = grant_tx(world, clinician, scope_tags=(LAB_TAG,), signer=PATIENT)
    world.commit(grant)
    revoke = world.tx(ConsentRevoke, PATIENT, grant_id=grant.hash)
    # The patient's wallet also sent an anchor with the same nonce to this node...
    anchor = world.anchor(PATIENT, PATIENT, [LAB_TAG])
    stale = replace(anchor, nonce=revoke.nonce, signature=b"").sign(
        PATIENT, "test-chain")
    keeps = world.anchor(identity("bystander"), identity("bystander"), [LAB_TAG])
    assert add(mempool, world, stale) is None
    assert add(mempool, world, keeps) is None
    world.commit(revoke)  # ...and a block finalized the revoke, which used that nonce
    evicted = mempool.block_committed(world.state, [revoke], world.time_ms + 1000)
    assert [(tx, verdict.reason) for tx, verdict in evicted] == [(stale, Reason.NONCE_REPLAYED)]
    assert mempool.candidates() == [keeps]


def test_a_batch_joined_from_encoded_transactions_is_the_canonical_batch() -> None:
    from healthnode.protocol.wire import TxBatch, decode_gossip, encode_tx_batch
    world = World()
    for count in (1, 15, 16, 300):  # array headers change form at 16 items
        txs = tuple(world.anchor(identity(f"b{i}"), identity(f"b{i}"), [LAB_TAG])
                    for i in range(count))
        joined = encode_tx_batch([tx.encode() for tx in txs])
        assert joined == TxBatch(txs).encode()
        assert decode_gossip(joined) == TxBatch(txs)


def test_a_proposal_frame_joined_from_its_parts_is_the_canonical_frame() -> None:
    from healthnode.protocol.block import Proposal
    from healthnode.protocol.wire import ProposalMessage, encode_proposal_message
    world = World()
    world.commit(world.anchor(PATIENT, PATIENT, [LAB_TAG]))
    block = world.blocks[-1][0]
    proposal = Proposal(1, 0, -1, block.hash, b"").sign(AUTHORITIES[1], "test-chain")
    for carried in (block, None):
        assert encode_proposal_message(proposal, carried) == ProposalMessage(
            proposal, carried).encode()


def test_a_revocation_evicts_what_it_invalidated_for_other_signers() -> None:
    world, mempool = World(), pool()
    clinician = identity("mempool-writer")
    world.commit(world.tx(ProviderRegister, AUTHORITIES[0], provider=clinician.public_key,
                          roles=("clinician",), display_name="Dr W"))
    grant = grant_tx(world, clinician, actions=("write",), scope_tags=(LAB_TAG,), signer=PATIENT)
    world.commit(grant)
    written = world.anchor(clinician, PATIENT, [LAB_TAG])
    assert add(mempool, world, written) is None
    revoke = world.tx(ConsentRevoke, PATIENT, grant_id=grant.hash)
    world.commit(revoke)
    evicted = mempool.block_committed(world.state, [revoke], world.time_ms + 1000)
    assert [(tx, verdict.reason) for tx, verdict in evicted] == [(written, Reason.NO_WRITE_GRANT)]


def test_a_representatives_revocation_evicts_what_it_invalidated_as_the_patients_does() -> None:
    world, mempool = World(), pool()
    clinician, parent = identity("mempool-writer-2"), identity("mempool-parent")
    world.commit(world.tx(ProviderRegister, AUTHORITIES[0], provider=clinician.public_key,
                          roles=("clinician",), display_name="Dr R"),
                 world.tx(RepresentativeAppoint, PATIENT, representative=parent.public_key,
                          scopes=("grant",), ends_at_ms=world.time_ms + 10**9, key_wraps=(),
                          tag_key_wrap=None))
    grant = grant_tx(world, clinician, actions=("write",), scope_tags=(LAB_TAG,), signer=PATIENT)
    world.commit(grant)
    written = world.anchor(clinician, PATIENT, [LAB_TAG])
    assert add(mempool, world, written) is None
    revoke = act_tx(world, parent, ConsentRevokeProvider, PATIENT,
                    grantee=clinician.public_key)
    world.commit(revoke)
    evicted = mempool.block_committed(world.state, [revoke], world.time_ms + 1000)
    assert [(tx, verdict.reason) for tx, verdict in evicted] == [(written, Reason.NO_WRITE_GRANT)]


def test_the_mempool_follows_an_authority_change() -> None:
    """The mempool keeps the next block's authority set between blocks; a new set must be
    seen as soon as it is in force."""
    world, mempool = World(make_genesis(4)), pool()
    a0, a1, a2 = AUTHORITIES[:3]
    register = world.tx(ProviderRegister, NEWCOMER, provider=identity("dr").public_key,
                        roles=("lab",), display_name="Dr")
    assert getattr(add(mempool, world, register), "reason", None) == Reason.NOT_AUTHORITY
    world.commit(*(vote(world, signer, "add", NEWCOMER.public_key, "new")
                   for signer in (a0, a1, a2)))
    assert getattr(add(mempool, world, register), "reason", None) == Reason.NOT_AUTHORITY
    world.commit()  # the change decided at h is in force from h + 2
    assert add(mempool, world, register) is None


def relay(mempool: Mempool, world: World, tx: AnyTx) -> object:
    return mempool.add(world.state, tx, len(tx.encode()), world.time_ms + 1000, relayed=True)


def test_a_relayed_transaction_is_checked_for_signature_and_nonce_only() -> None:
    """A peer checked it in full; the ledger's rules run again when a block is built."""
    world, mempool = World(), pool()
    stranger_register = world.tx(ProviderRegister, PATIENT, provider=identity("y").public_key,
                                 roles=("lab",), display_name="y")
    assert relay(mempool, world, stranger_register) is None  # the rules would refuse it...
    built = rules.build_block(
        world.state, mempool.candidates(), height=world.height + 1, time_ms=world.time_ms + 1000,
        prev_hash=world.prev_hash, last_commit=world.last_commit, evidence=(),
        proposer=AUTHORITIES[0].public_key, params=world.genesis.params)
    assert [(tx, verdict.reason) for tx, verdict in built.refused] == [
        (stranger_register, Reason.NOT_AUTHORITY)]  # ...and do, when a block is built
    assert built.block.txs == ()
    other = identity("relayed-other")
    forger = identity("relayed-forger")
    forged = replace(world.anchor(forger, forger, [LAB_TAG]), signature=bytes(64))
    assert getattr(relay(mempool, world, forged), "reason", None) == Reason.BAD_SIGNATURE
    first, second, third = (world.anchor(other, other, [LAB_TAG]) for _ in range(3))
    assert getattr(relay(mempool, world, second), "reason", None) == Reason.NONCE_GAP
    assert relay(mempool, world, first) is None
    assert getattr(relay(mempool, world, third), "reason", None) == Reason.NONCE_GAP
    assert relay(mempool, world, second) is None
    world.commit(first)
    assert getattr(relay(pool(), world, first), "reason", None) == Reason.NONCE_REPLAYED
    assert mempool.candidates() == [stranger_register, first, second]


def test_after_an_ordinary_block_its_signers_waiting_nonces_are_checked_again() -> None:
    world, mempool = World(), pool()
    first, second, third = (world.anchor(PATIENT, PATIENT, [LAB_TAG]) for _ in range(3))
    for tx in (first, second, third):
        assert add(mempool, world, tx) is None
    # Another node's block finalized a different transaction with the second nonce.
    other_second = replace(world.anchor(PATIENT, PATIENT, [LAB_TAG]), nonce=2,
                                       signature=b"").sign(PATIENT, "test-chain")
    world.commit(first, other_second)
    evicted = mempool.block_committed(world.state, [first, other_second], world.time_ms + 1000)
    assert [(tx, verdict.reason) for tx, verdict in evicted] == [(second, Reason.NONCE_REPLAYED)]
    assert mempool.candidates() == [third]  # nonce 3 follows the finalized 2


def test_a_compact_proposal_rebuilds_its_block_from_the_mempool_or_says_it_cannot() -> None:
    from healthnode.protocol.block import Proposal
    from healthnode.protocol.wire import CompactProposal, decode_gossip
    world, mempool = World(), pool()
    txs = [world.anchor(identity(f"c{i}"), identity(f"c{i}"), [LAB_TAG]) for i in range(3)]
    world.commit(*txs)
    block = world.blocks[-1][0]
    proposal = Proposal(1, 0, -1, block.hash, b"").sign(AUTHORITIES[1], "test-chain")
    compact = decode_gossip(CompactProposal.of(proposal, block).encode())
    assert isinstance(compact, CompactProposal)
    assert compact.tx_hashes == tuple(tx.hash for tx in txs)
    assert len(compact.encode()) < len(block.encode())
    for tx in txs[:2]:
        assert add(mempool, World(), tx) is None
    assert compact.block(mempool.get) is None  # the third is not waiting here
    assert add(mempool, World(), txs[2]) is None
    rebuilt = compact.block(mempool.get)
    assert rebuilt == block and rebuilt is not None
    assert rebuilt.hash == proposal.block_hash and rebuilt.encode() == block.encode()


def test_a_block_joined_from_its_parts_encodings_is_the_canonical_encoding() -> None:
    from hypothesis import given, settings

    from healthnode import codec
    from healthnode.protocol.block import Block
    from healthnode.protocol.schema import SchemaViolation, replace
    from tests.strategies import for_message

    @settings(max_examples=60, deadline=None)
    @given(for_message(Block))
    def joined(block: Block) -> None:
        assert block.encode() == codec.pack(block.to_wire())

    joined()
    world = World()
    world.commit(world.anchor(PATIENT, PATIENT, [LAB_TAG]))
    block = world.blocks[-1][0]
    wrong = replace(block, txs=(block.header,))  # a header where a tx must be
    try:
        wrong.encode()
    except SchemaViolation as error:
        assert "Block.txs[0]" in str(error)
    else:
        raise AssertionError("a block holding a header as a transaction encoded")


def test_a_transaction_refused_at_build_takes_its_signers_later_ones_with_it(
        tmp_path: Path) -> None:
    """A relayed transaction the rules refuse is dropped when a block is built, and so are its
    signer's later ones: they could never follow in nonce order, and would wait for ever."""
    from healthnode.node.source import LedgerSource
    from healthnode.store.leveldb import ChainStore
    world, mempool = World(), pool()
    store = ChainStore.open(tmp_path / "chain", world.genesis)
    try:
        source = LedgerSource(store, mempool, AUTHORITIES[0], world.genesis.params)
        stranger = identity("refused-relay")
        refused = world.tx(ProviderRegister, stranger, provider=identity("z").public_key,
                           roles=("lab",), display_name="z")  # only authorities register
        follower = world.anchor(stranger, stranger, [LAB_TAG])
        other = world.anchor(PATIENT, PATIENT, [LAB_TAG])
        for tx in (refused, follower, other):
            assert mempool.add(store, tx, len(tx.encode()), world.time_ms + 1000,
                               relayed=True) is None
        built = source.build_block(1, 0, world.time_ms + 1000, None, ())
        assert built.block is not None and built.block.txs == (other,)
        assert len(mempool) == 3  # building only reads the mempool
        dropped = source.drop(built.refused)  # the driver's DropRefused
        assert [(tx, verdict.reason) for tx, verdict in dropped] == [
            (refused, Reason.NOT_AUTHORITY), (follower, Reason.NONCE_GAP)]
        assert mempool.candidates() == [other]
    finally:
        store.close()


def test_a_block_before_rules_this_release_lacks_is_taken_with_its_nonces_only() -> None:
    """The block before a height whose rules version this release does not carry: the pool
    drops its transactions and re-checks nonces, and judges nothing by the unknown rules (the
    node stops after the block; an erasure in it must still reach every commit hook)."""
    from healthnode.protocol.genesis import RULES_NEWEST
    from healthnode.protocol.tx import RecordErase, RulesVote
    from tests.test_ledger_rules import A0, A1, A2

    world, mempool = World(), pool()
    start = world.height + 4
    world.commit(*(world.tx(RulesVote, signer, rules_version=RULES_NEWEST + 1, height=start)
                   for signer in (A0, A1, A2)))
    anchor = world.anchor(PATIENT, PATIENT, [LAB_TAG])
    world.commit(anchor)
    keeps = world.anchor(identity("bystander"), identity("bystander"), [LAB_TAG])
    assert add(mempool, world, keeps) is None
    erase = world.tx(RecordErase, PATIENT, record_id=anchor.hash)
    while world.height + 2 < start:
        world.commit()
    world.commit(erase)  # block start - 1: it invalidates, so the whole pool is re-checked
    assert world.height == start - 1
    with pytest.raises(rules.RulesUnknown):
        world.now()
    assert mempool.block_committed(world.state, [erase], world.time_ms + 1000) == []
    assert mempool.candidates() == [keeps]
