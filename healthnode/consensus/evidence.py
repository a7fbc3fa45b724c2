"""Evidence of equivocation: two conflicting signed messages of one authority.

Two prevotes (or two precommits) of one signer for the same (height, round) and different block
hashes, or two proposals of one signer for the same (height, round) that differ, can only come from
a byzantine authority (or a broken double-sign guard). The core detects them as votes arrive,
keeps them in a pool and offers the pool to `BlockSource.build_block`; a committed block's evidence
leaves the pool. The pair is put in a canonical order (by encoding) so that every node that detects
one equivocation produces byte-identical evidence, and one equivocation is committed once.

`check_evidence` is what a node requires of evidence that reaches it from a peer or inside a
proposed block: both halves signed by the same authority of that height, same slot, different.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from healthnode.crypto import digest
from healthnode.protocol.block import DuplicateProposal, DuplicateVote, Proposal, Vote
from healthnode.protocol.signed import Signed

Evidence = DuplicateVote | DuplicateProposal
Verify = Callable[[Signed], bool]


def duplicate_vote(a: Vote, b: Vote) -> DuplicateVote:
    assert a.signer == b.signer and a.block_hash != b.block_hash
    first, second = sorted((a, b), key=lambda vote: vote.encode())
    return DuplicateVote(first, second)


def duplicate_proposal(a: Proposal, b: Proposal) -> DuplicateProposal:
    assert a.signer == b.signer and a != b
    first, second = sorted((a, b), key=lambda proposal: proposal.encode())
    return DuplicateProposal(first, second)


def evidence_key(evidence: Evidence) -> bytes:
    return digest(evidence.encode())


def evidence_height(evidence: Evidence) -> int:
    if isinstance(evidence, DuplicateVote):
        return evidence.vote_a.height
    return evidence.proposal_a.height


def evidence_signer(evidence: Evidence) -> bytes:
    if isinstance(evidence, DuplicateVote):
        return evidence.vote_a.signer
    return evidence.proposal_a.signer


def check_evidence(evidence: Evidence, authorities: Collection[bytes],
                   verify: Verify) -> str | None:
    """None when `evidence` proves an equivocation by one of `authorities`, else why not."""
    if isinstance(evidence, DuplicateVote):
        a, b = evidence.vote_a, evidence.vote_b
        same_slot = (a.vote_type, a.height, a.round) == (b.vote_type, b.height, b.round)
        conflicting = a.block_hash != b.block_hash
        first_messages: tuple[Signed, Signed] = (a, b)
    else:
        p, q = evidence.proposal_a, evidence.proposal_b
        same_slot = (p.height, p.round) == (q.height, q.round)
        conflicting = p != q and (p.block_hash, p.pol_round) != (q.block_hash, q.pol_round)
        first_messages = (p, q)
    first, second = first_messages
    if first.signer != second.signer:
        return "evidence_signers_differ"
    if not same_slot:
        return "evidence_slots_differ"
    if not conflicting:
        return "evidence_not_conflicting"
    if first.signer not in authorities:
        return "evidence_signer_not_authority"
    if first.encode() >= second.encode():
        return "evidence_not_canonical"
    if not (verify(first) and verify(second)):
        return "evidence_bad_signature"
    return None
