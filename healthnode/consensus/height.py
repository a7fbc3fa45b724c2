"""The per-height bookkeeping of the core: what it holds of the current height (proposals,
blocks, votes), the tallies its rules read, and the equivocations it detects as messages arrive.

Votes count per value and distinct signer (docs/consensus.md says why): a signer normally has
one vote per (type, round); an equivocating one has several, and each counts for its own value,
as in Tendermint's "The latest gossip on BFT consensus", which counts messages. `HeightState`
applies no rule and signs nothing; the core (core.py) reads it and is dropped with it when the
height commits.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Final

from healthnode.consensus.events import Effect, Ignored
from healthnode.protocol import evidence as ev
from healthnode.protocol.block import (
    PRECOMMIT,
    Block,
    CommitCertificate,
    CommitSig,
    Evidence,
    Proposal,
    Verify,
    Vote,
    quorum,
)

# A round makes at most three messages per signer (proposal, prevote, precommit): 1024 covers
# ~340 rounds of one height, far beyond any recovery, and bounds what one byzantine signer can
# make this node hold.
SIGNER_MESSAGES_MAX: Final = 1024
# Blocks kept per height: one per proposal, and a byzantine proposer can equivocate. A block is up
# to limits.BLOCK_BYTES_MAX, so keep few.
BLOCKS_MAX: Final = 16


class HeightState:
    """Everything the core knows about the current height; dropped when the height commits."""

    def __init__(self, authorities: tuple[bytes, ...]) -> None:
        self.authorities = authorities
        count = len(authorities)
        self.quorum = quorum(count)
        self.third_plus = count // 3 + 1  # more than a third: at least one is correct
        self.proposals: dict[int, Proposal] = {}  # round -> first proposal of its proposer
        # Every proposal per round, by block hash: an equivocating proposer's other block may be
        # the one 2/3+ prevoted, and the lock rule must see it (as the paper's "upon" does).
        self.round_proposals: dict[int, dict[bytes, Proposal]] = defaultdict(dict)
        self.blocks: dict[bytes, Block] = {}
        self.proposal_of_block: dict[bytes, Proposal] = {}
        # (type, round) -> signer -> block hash -> vote. A signer normally has one vote per
        # (type, round); an equivocating one has several, and each counts for its own value, as
        # in the paper, which counts messages: quorum intersection still holds, since any two
        # quorums share a correct signer, and it keeps a POL that a byzantine split visible.
        self.votes: dict[tuple[int, int], dict[bytes, dict[bytes | None, Vote]]] = \
            defaultdict(dict)
        self.counts: dict[tuple[int, int], dict[bytes | None, int]] = defaultdict(
            lambda: defaultdict(int))
        self.totals: dict[tuple[int, int], int] = defaultdict(int)
        self.round_signers: dict[int, set[bytes]] = defaultdict(set)
        self.signer_messages: dict[bytes, int] = defaultdict(int)
        self.precommit_quorums: set[tuple[int, bytes]] = set()
        self.skip_round = -1  # highest round with messages of more than a third
        self.prevote_timer_rounds: set[int] = set()
        self.precommit_timer_rounds: set[int] = set()
        self.lock_rule_rounds: set[int] = set()
        self.proposed_rounds: set[int] = set()
        self.own_messages: list[tuple[Proposal | Vote, Block | None]] = []
        self.evidence_slots: set[tuple[bytes, int, int, int]] = set()
        self.invalid_commits_reported: set[bytes] = set()

    # --- messages in ----------------------------------------------------------------------

    def admit(self, message: Proposal | Vote, verify: Verify, out: list[Effect]) -> bool:
        """True when `message` is an authority's, within its signer's bound, and signed."""
        if message.signer not in self.authorities:
            out.append(Ignored("not_authority"))
            return False
        if self.signer_messages[message.signer] >= SIGNER_MESSAGES_MAX:
            out.append(Ignored("signer_message_limit"))
            return False
        if not verify(message):
            out.append(Ignored("bad_signature"))
            return False
        self.signer_messages[message.signer] += 1
        return True

    def has_vote(self, vote: Vote) -> bool:
        existing = self.votes[(vote.vote_type, vote.round)].get(vote.signer, {})
        return existing.get(vote.block_hash) == vote

    def has_proposal(self, proposal: Proposal, block: Block | None) -> bool:
        """True when `proposal` is held already, and its block too if `block` comes with it."""
        existing = self.round_proposals[proposal.round].get(proposal.block_hash)
        return existing == proposal and (block is None or proposal.block_hash in self.blocks)

    def add_vote(self, vote: Vote) -> Evidence | None:
        """Count `vote` for its value. Returns new evidence when the signer voted another value
        in the same slot (the first time this height for that slot)."""
        key = (vote.vote_type, vote.round)
        by_value = self.votes[key].setdefault(vote.signer, {})
        if vote.block_hash in by_value:
            return None
        found = None
        if by_value:
            first = next(iter(by_value.values()))
            slot = (vote.signer, vote.vote_type, vote.height, vote.round)
            found = self._evidence(ev.duplicate_vote(first, vote), slot)
        else:
            self.totals[key] += 1  # distinct signers, for the "2/3+ of any value" rules
        by_value[vote.block_hash] = vote
        count = self.counts[key][vote.block_hash] + 1
        self.counts[key][vote.block_hash] = count
        if vote.vote_type == PRECOMMIT and vote.block_hash is not None and count >= self.quorum:
            self.precommit_quorums.add((vote.round, vote.block_hash))
        self._note_round_signer(vote.round, vote.signer)
        return found

    def add_proposal(self, proposal: Proposal, block: Block | None, block_hash: bytes | None,
                     out: list[Effect]) -> Evidence | None:
        """Hold `proposal` (and its block, within `BLOCKS_MAX`). Returns new evidence when its
        proposer already proposed something else in this round."""
        if block is not None and block_hash is not None and block_hash not in self.blocks:
            if len(self.blocks) < BLOCKS_MAX:
                self.blocks[block_hash] = block
                self.proposal_of_block.setdefault(block_hash, proposal)
            else:
                out.append(Ignored("block_limit"))
        by_hash = self.round_proposals[proposal.round]
        if len(by_hash) < BLOCKS_MAX:
            by_hash.setdefault(proposal.block_hash, proposal)
        existing = self.proposals.get(proposal.round)
        if existing is None:
            self.proposals[proposal.round] = proposal
            self._note_round_signer(proposal.round, proposal.signer)
        elif existing != proposal:
            slot = (proposal.signer, 0, proposal.height, proposal.round)
            return self._evidence(ev.duplicate_proposal(existing, proposal), slot)
        return None

    def _note_round_signer(self, round_: int, signer: bytes) -> None:
        signers = self.round_signers[round_]
        signers.add(signer)
        if len(signers) >= self.third_plus and round_ > self.skip_round:
            self.skip_round = round_

    def _evidence(self, item: Evidence, slot: tuple[bytes, int, int, int]) -> Evidence | None:
        if slot in self.evidence_slots:
            return None  # one piece of evidence per equivocation slot is enough
        self.evidence_slots.add(slot)
        return item

    # --- what the rules read --------------------------------------------------------------

    def has_quorum(self, vote_type: int, round_: int, value: bytes | None) -> bool:
        """2/3+ votes of `vote_type` at `round_` for `value` (None: nil)."""
        return self.counts[(vote_type, round_)].get(value, 0) >= self.quorum

    def has_quorum_of_any(self, vote_type: int, round_: int) -> bool:
        """2/3+ distinct signers voted `vote_type` at `round_`, whatever the values."""
        return self.totals[(vote_type, round_)] >= self.quorum

    def votes_for(self, vote_type: int, round_: int, value: bytes) -> tuple[Vote, ...]:
        """The votes of `vote_type` at `round_` for `value`, one per signer."""
        return tuple(by_value[value] for by_value in self.votes[(vote_type, round_)].values()
                     if value in by_value)

    def certificate(self, height: int, round_: int, block_hash: bytes) -> CommitCertificate:
        """The commit certificate of the precommits for `block_hash` at `round_`."""
        signatures = tuple(sorted(
            (CommitSig(vote.signer, vote.signature)
             for vote in self.votes_for(PRECOMMIT, round_, block_hash)),
            key=lambda sig: sig.signer))
        return CommitCertificate(height, round_, block_hash, signatures)

    def proposal_of_commit(self, round_: int, block_hash: bytes) -> Proposal | None:
        """The proposal that carried a block committed at `round_`: that round's, else the first
        proposal of the block in any round."""
        proposal = self.proposals.get(round_)
        if proposal is None or proposal.block_hash != block_hash:
            proposal = self.proposal_of_block.get(block_hash)
        return proposal

    def proposal_for(self, block_hash: bytes) -> tuple[Proposal, Block] | None:
        block = self.blocks.get(block_hash)
        proposal = self.proposal_of_block.get(block_hash)
        return None if block is None or proposal is None else (proposal, block)

    def held_messages(self) -> list[tuple[Proposal | Vote, Block | None]]:
        """Every message held for the height, with blocks: this node's own first, then its
        peers' proposals, then their votes (what REBROADCAST re-sends)."""
        held = list(self.own_messages)
        own = {message for message, _ in self.own_messages}
        for by_hash in self.round_proposals.values():
            for proposal in by_hash.values():
                if proposal not in own:
                    held.append((proposal, self.blocks.get(proposal.block_hash)))
        for by_signer in self.votes.values():
            for by_value in by_signer.values():
                for vote in by_value.values():
                    if vote not in own:
                        held.append((vote, None))
        return held
