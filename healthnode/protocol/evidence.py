"""Evidence of equivocation: two conflicting signed messages of one authority. The one owner of
the rule: the consensus core checks evidence that reaches it, and the ledger checks the evidence
in a block, both here.

Two prevotes (or two precommits) of one signer for the same (height, round) and different block
hashes, or two proposals of one signer for the same (height, round) that name different blocks
or proof-of-lock rounds, can only come from a byzantine authority (or a broken double-sign
guard). The core detects them as votes arrive, keeps them in a pool and offers the pool to
`BlockSource.build_block`; a committed block's evidence leaves the pool. The pair is put in a
canonical order (by encoding) so that every node that detects one equivocation produces
byte-identical evidence, and `evidence_key` names one equivocation, whichever node found it, so
that it is committed once.

`check_evidence` is what a node requires of evidence from a peer or in a block: both halves
signed by the same authority of that height, same slot, conflicting, in canonical order.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

from healthnode.crypto import digest
from healthnode.protocol.block import DuplicateProposal, DuplicateVote, Evidence, Proposal, Vote
from healthnode.protocol.signed import Signed

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
    """One identity for one equivocation, whichever order its two messages come in (the state
    key of committed evidence, and the core's pool key)."""
    a, b = _pair(evidence)
    first, second = a.encode(), b.encode()
    return digest(min(first, second) + max(first, second))


def _pair(evidence: Evidence) -> tuple[Signed, Signed]:
    if isinstance(evidence, DuplicateVote):
        return evidence.vote_a, evidence.vote_b
    return evidence.proposal_a, evidence.proposal_b


def evidence_height(evidence: Evidence) -> int:
    if isinstance(evidence, DuplicateVote):
        return evidence.vote_a.height
    return evidence.proposal_a.height


def evidence_signer(evidence: Evidence) -> bytes:
    if isinstance(evidence, DuplicateVote):
        return evidence.vote_a.signer
    return evidence.proposal_a.signer


@dataclass(frozen=True, slots=True)
class Problem:
    """Why evidence does not hold: a fixed `code` (the core's rejection reason) and a `detail`
    for people (the ledger's refusal of a block)."""

    code: str
    detail: str


def check_evidence(evidence: Evidence, authorities: Collection[bytes],
                   verify: Verify) -> Problem | None:
    """None when `evidence` proves an equivocation by one of `authorities`, else why not."""
    if isinstance(evidence, DuplicateVote):
        a, b = evidence.vote_a, evidence.vote_b
        if (a.vote_type, a.height, a.round) != (b.vote_type, b.height, b.round):
            return Problem("evidence_slots_differ", "the votes are for different steps")
        if a.block_hash == b.block_hash:
            return Problem("evidence_not_conflicting", "the votes do not conflict")
    else:
        p, q = evidence.proposal_a, evidence.proposal_b
        if (p.height, p.round) != (q.height, q.round):
            return Problem("evidence_slots_differ", "the proposals are for different rounds")
        if (p.block_hash, p.pol_round) == (q.block_hash, q.pol_round):
            return Problem("evidence_not_conflicting", "the proposals do not conflict")
    first, second = _pair(evidence)
    if first.signer != second.signer:
        return Problem("evidence_signers_differ", "the messages have different signers")
    if first.signer not in authorities:
        return Problem("evidence_signer_not_authority",
                       "the signer was no authority at that height")
    if first.encode() >= second.encode():
        return Problem("evidence_not_canonical", "the two messages are not in canonical order")
    if not (verify(first) and verify(second)):
        return Problem("evidence_bad_signature", "a signature does not verify")
    return None
