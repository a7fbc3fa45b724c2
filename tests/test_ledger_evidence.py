"""Evidence of equivocation in blocks: committed once, whichever order its two messages come in;
anything that does not prove a conflict by one authority is refused."""

from __future__ import annotations

import pytest

from healthnode.crypto import Identity
from healthnode.ledger import rules
from healthnode.ledger.rules import BlockRejected
from healthnode.ledger.state import EVIDENCE, read
from healthnode.protocol import block as blocks
from healthnode.protocol.block import (
    PRECOMMIT,
    PREVOTE,
    Block,
    DuplicateProposal,
    DuplicateVote,
    Evidence,
    Header,
    Proposal,
    Vote,
)
from healthnode.protocol.evidence import evidence_key
from healthnode.protocol.schema import replace
from healthnode.protocol.state import EvidenceEntry
from tests.chain import AUTHORITIES, CHAIN_ID, World, identity

A0, A1, *_ = AUTHORITIES


def votes(signer_a: Identity = A0, signer_b: Identity = A0,
          hash_b: bytes | None = b"\x02" * 32, type_b: int = PREVOTE) -> DuplicateVote:
    vote_a = Vote(PREVOTE, 1, 0, b"\x01" * 32, b"").sign(signer_a, CHAIN_ID)
    vote_b = Vote(type_b, 1, 0, hash_b, b"").sign(signer_b, CHAIN_ID)
    return DuplicateVote(vote_a, vote_b)


def world_at_height_two() -> World:
    world = World()
    world.commit()
    return world


def propose_with(world: World, evidence: list[Evidence]) -> rules.Built:
    return rules.build_block(
        world.state, [], height=world.height + 1, time_ms=world.time_ms + 1000,
        prev_hash=world.prev_hash, last_commit=world.last_commit, evidence=evidence,
        proposer=A0.public_key, params=world.genesis.params)


def test_a_double_vote_is_committed_as_evidence_against_its_signer() -> None:
    world = world_at_height_two()
    built = propose_with(world, [votes()])
    assert built.block.evidence == (votes(),)
    world.finalize(built.block, rules.apply_block(world.state, built.block))
    entry = read(world.state, EVIDENCE + evidence_key(votes()), EvidenceEntry)
    assert entry is not None and entry.offender == A0.public_key and entry.height == 2


def test_the_same_equivocation_is_committed_only_once_in_either_order() -> None:
    world = world_at_height_two()
    built = propose_with(world, [votes()])
    world.finalize(built.block, rules.apply_block(world.state, built.block))
    swapped = DuplicateVote(votes().vote_b, votes().vote_a)
    assert propose_with(world, [swapped]).block.evidence == ()
    now = world.now()
    header = Header(CHAIN_ID, now.height, now.time_ms, world.prev_hash, world.last_commit,
                    blocks.txs_root(()), blocks.evidence_root([swapped]),
                    blocks.validators_hash(now.authorities), b"\0" * 32, A0.public_key)
    # In the other order the pair is not canonical, which every node refuses (one rule for the
    # core and the ledger: protocol/evidence.py); in its order it is already committed.
    with pytest.raises(BlockRejected, match="not in canonical order"):
        rules.apply_block(world.state, Block(header, (), (swapped,)))
    again = replace(header, evidence_root=blocks.evidence_root([votes()]))
    with pytest.raises(BlockRejected, match="already committed"):
        rules.apply_block(world.state, Block(again, (), (votes(),)))


def test_a_double_proposal_is_evidence() -> None:
    world = world_at_height_two()
    first = Proposal(1, 0, -1, b"\x01" * 32, b"").sign(A1, CHAIN_ID)
    second = Proposal(1, 0, -1, b"\x02" * 32, b"").sign(A1, CHAIN_ID)
    built = propose_with(world, [DuplicateProposal(first, second)])
    assert len(built.block.evidence) == 1


@pytest.mark.parametrize(("name", "evidence", "problem"), [
    ("same_block_twice", votes(hash_b=b"\x01" * 32), "do not conflict"),
    ("prevote_and_precommit", votes(type_b=PRECOMMIT), "different steps"),
    ("two_signers", votes(signer_b=A1), "different signers"),
    ("signer_no_authority", votes(signer_a=identity("x"), signer_b=identity("x")),
     "no authority"),
    ("forged_signature", DuplicateVote(votes().vote_a, replace(
        votes().vote_b, signature=bytes(64))), "does not verify"),
    ("future_height", DuplicateVote(
        Vote(PREVOTE, 9, 0, b"\x01" * 32, b"").sign(A0, CHAIN_ID),
        Vote(PREVOTE, 9, 0, None, b"").sign(A0, CHAIN_ID)), "future"),
])
def test_what_proves_no_equivocation_is_refused(name: str, evidence: Evidence,
                                                 problem: str) -> None:
    world = world_at_height_two()
    assert problem in (rules.check_evidence(world.state, evidence, world.now()) or "")
    assert propose_with(world, [evidence]).block.evidence == ()
