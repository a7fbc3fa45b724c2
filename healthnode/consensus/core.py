"""The consensus core: one authority's Tendermint round as a pure state machine.

Theory of operation
-------------------
`Core.step(event) -> list[effect]` is Algorithm 1 of Buchman, Kwon and Milosevic, "The latest
gossip on BFT consensus" (2018), for one height at a time. The rules are named by the paper's line
numbers in `_advance`, which re-evaluates them after every event until none applies:

- L11 StartRound: the proposer `V[(height + round) mod n]` proposes its valid block if it has one
  (with `pol_round` = valid round), else a new block from `BlockSource.build_block`.
- L22/L28 prevote the round's proposal if it is valid and does not conflict with the lock (or a
  newer proof of lock, a POL: 2/3+ prevotes at `pol_round`, releases it); else prevote nil.
- L34/L47 after 2/3+ prevotes (precommits) of any value, start the prevote (precommit) timer.
- L36 2/3+ prevotes for the valid proposal: lock it and precommit it; remember it as valid.
- L44 2/3+ prevotes for nil: precommit nil.
- L49 2/3+ precommits for a block in any round: commit it (immediate finality). The precommits
  become the commit certificate the next block carries in `header.last_commit`.
- L55 messages of more than a third of the authorities at a higher round: jump to it.
- L57-L65 the timeouts: prevote nil, precommit nil, next round.

Everything else is an addition the paper leaves to the implementation:

- Heartbeat (CometBFT's `create_empty_blocks_interval`): round 0 of a height starts in WAIT.
  The round proper (its propose timer) starts when transactions are available, when the heartbeat
  is due (`empty_block_interval_ms` after the previous block's time), or when the round-0 proposal
  arrives. So no node times out a height in which there is simply nothing to do.
- Double-sign guard (safety.py): every signature is decided against the persisted SafetyState;
  `PersistSafety` precedes the `Broadcast` of what it covers.
- Restore hold (`sign_from_height`): below that height the core signs nothing (no proposal, no
  vote, no `PersistSafety`) and counts no vote of its own, yet follows the height as an observer:
  it counts the others' votes and commits what 2/3+ of them precommit or what block sync brings.
  A node restored from a backup starts with the hold, because its key may have signed at heights
  its backup does not remember (docs/operations.md, "The restored node's signing hold").
- Retransmission: the paper assumes gossip eventually delivers to every correct node whatever one
  correct node received. Messages lost before the network healed are re-sent by a REBROADCAST
  timer that re-broadcasts every message this node holds for the height (its own and its peers')
  while the height lasts; it also asks for blocks when messages of a later height were seen (this
  node fell behind).
- Votes count per value and distinct signer, so an equivocating signer's votes each count for
  their own value, as the paper counts messages (docs/consensus.md says why this is needed).
- Block sync: `BlockFetched` commits a block whose certificate verifies, so a node that missed a
  height (crash, partition) catches up without replaying its rounds. Messages of the next height
  are buffered and farther ones make the core ask for blocks (catchup.py).
- Evidence (protocol/evidence.py) of conflicting votes or proposals is detected as messages
  arrive (height.py) and kept until a committed block carries it (evidence_pool.py).
- Bounds: at most `SIGNER_MESSAGES_MAX` messages per signer and `BLOCKS_MAX` blocks per height
  (height.py), `FUTURE_MESSAGES_PER_SIGNER` buffered messages per signer of the next height
  (catchup.py), `EVIDENCE_POOL_MAX` evidence (evidence_pool.py).

Authority sets come from the BlockSource per height (`authorities(h)`); a change decided at height
h applies from h+2, which the source knows; the core never caches a set across heights.

This module holds the rules, the lock and the signing; what they read is kept beside it: the
height's proposals, blocks and vote tallies (height.py), block validity (validity.py), the
BlockSource and `Committed` (source.py, re-exported here).
"""

from __future__ import annotations

from healthnode import limits
from healthnode.consensus import safety
from healthnode.consensus.catchup import CatchUp
from healthnode.consensus.checks import Verify, step_timeout_ms
from healthnode.consensus.events import (
    STEP_NAMES,
    STEP_PRECOMMIT,
    STEP_PREVOTE,
    STEP_PROPOSE,
    STEP_REBROADCAST,
    STEP_WAIT,
    BlockFetched,
    Broadcast,
    Commit,
    CommitApplied,
    DropRefused,
    Effect,
    Event,
    EvidenceFound,
    EvidenceReceived,
    Ignored,
    PersistSafety,
    ProposalReceived,
    ScheduleTimeout,
    SigningHeld,
    TimeoutFired,
    TxsAvailable,
    VoteReceived,
)
from healthnode.consensus.evidence_pool import EvidencePool
from healthnode.consensus.height import HeightState
from healthnode.consensus.invariants import assert_invariants
from healthnode.consensus.safety import Decision, SafetyState
from healthnode.consensus.source import BlockSource, Committed, signature_verifier
from healthnode.consensus.validity import BlockValidity
from healthnode.crypto import Identity
from healthnode.protocol.block import (
    PRECOMMIT,
    PREVOTE,
    Block,
    CommitCertificate,
    Evidence,
    Proposal,
    Vote,
    certificate_problem,
)
from healthnode.protocol.genesis import ConsensusParams

# BlockSource, Committed and signature_verifier live in source.py; callers import them from here.
__all__ = ["BlockSource", "Committed", "Core", "signature_verifier"]


class Core:
    """One authority's consensus state machine. Call `start` once, then `step` per event."""

    def __init__(self, identity: Identity, chain_id: str, params: ConsensusParams,
                 source: BlockSource, committed: Committed, safety_state: SafetyState | None,
                 *, verify: Verify | None = None, sign_from_height: int = 0) -> None:
        self.identity = identity
        self.public_key = identity.public_key
        self.chain_id = chain_id
        self.params = params
        self.source = source
        self.committed = committed
        self.safety = safety_state
        self._verify: Verify = verify or signature_verifier(chain_id)
        self.height = committed.height + 1
        self.round = 0
        self.step_ = STEP_WAIT
        self.locked_round = -1
        self.locked_hash: bytes | None = None
        self.valid_round = -1
        self.valid_hash: bytes | None = None
        self._valid_pol: tuple[Vote, ...] = ()
        self._state = HeightState(())
        self._validity = self._new_validity()
        self._catchup = CatchUp(source, self._verify, params.propose_timeout_ms)
        self._evidence = EvidencePool()
        self._started = False
        # The height whose Commit the shell has not acknowledged yet (CommitApplied): the next
        # height is entered on the acknowledgement, and no other event may come before it.
        self._unapplied: int | None = None
        self._signed: list[Proposal | Vote] = []  # signed in the current step (invariants)
        # The first height this authority may sign at. The shell may raise or lower it between
        # steps (a restored node learns it from its peers); 0: no hold.
        self.sign_from_height = sign_from_height

    # --- public surface -------------------------------------------------------------------

    def start(self, now_ms: int) -> list[Effect]:
        assert not self._started, "start() called twice"
        self._started = True
        out: list[Effect] = []
        guard_before, self._signed = self.safety, []
        self._start_height(now_ms, out, deferred=False)
        self._advance(now_ms, out)
        assert_invariants(self.locked_round, self.valid_round, self.round, self.height,
                          self.committed.height, guard_before, self.safety, self._signed, out,
                          self._unapplied)
        return out

    def step(self, event: Event) -> list[Effect]:
        assert self._started, "step() before start()"
        guard_before, self._signed = self.safety, []
        out: list[Effect] = []
        now = event.now_ms
        if self._unapplied is not None:
            assert isinstance(event, CommitApplied) and event.height == self._unapplied, \
                f"the Commit of height {self._unapplied} must be acknowledged before {event!r}"
        if isinstance(event, CommitApplied):
            assert event.height == self._unapplied, f"no Commit of height {event.height} to apply"
            self._unapplied = None
            self._enter_height(now, out)
        elif isinstance(event, VoteReceived):
            self._receive_vote(event.vote, now, out)
        elif isinstance(event, ProposalReceived):
            self._receive_proposal(event.proposal, event.block, now, out)
        elif isinstance(event, TimeoutFired):
            self._on_timeout(event, out)
        elif isinstance(event, TxsAvailable):
            self._on_txs_available(now, out)
        elif isinstance(event, BlockFetched):
            self._on_block_fetched(event, out)
        elif isinstance(event, EvidenceReceived):
            self._on_evidence_received(event.evidence, out)
        elif isinstance(event, SigningHeld):
            self.sign_from_height = event.sign_from_height
        self._advance(now, out)
        assert_invariants(self.locked_round, self.valid_round, self.round, self.height,
                          self.committed.height, guard_before, self.safety, self._signed, out,
                          self._unapplied)
        return out

    @property
    def step_name(self) -> str:
        return STEP_NAMES[self.step_]

    @property
    def authorities(self) -> tuple[bytes, ...]:
        return self._state.authorities

    def proposer(self, round_: int) -> bytes:
        authorities = self._state.authorities
        return authorities[(self.height + round_) % len(authorities)]

    def evidence_pool(self) -> tuple[Evidence, ...]:
        return self._evidence.pending()

    def proposal_for(self, block_hash: bytes) -> tuple[Proposal, Block] | None:
        """The proposal and block of this height with `block_hash`, to serve a peer."""
        return self._state.proposal_for(block_hash)

    # --- heights and rounds ---------------------------------------------------------------

    def _start_height(self, now: int, out: list[Effect], *, deferred: bool) -> None:
        """Reset for the next height. After a commit (`deferred`) the shell has not yet written
        the block, so nothing that reads the new chain state (check_block, build_block) may run
        in this step: the height is entered when the shell acknowledges the commit
        (CommitApplied)."""
        self.height = self.committed.height + 1
        authorities = tuple(self.source.authorities(self.height))
        assert authorities, "a height without authorities"
        self._state = HeightState(authorities)
        self._validity = self._new_validity()
        self.round, self.step_ = 0, STEP_WAIT
        self.locked_round, self.locked_hash = -1, None
        self.valid_round, self.valid_hash = -1, None
        self._valid_pol = ()
        self._catchup.new_height()
        if deferred:
            self._unapplied = self.committed.height
        else:
            self._enter_height(now, out)

    def _enter_height(self, now: int, out: list[Effect]) -> None:
        out.append(ScheduleTimeout(self.height, 0, STEP_REBROADCAST,
                                   now + step_timeout_ms(self.params, STEP_PROPOSE, 0)))
        resume_round = -1
        if self.safety is not None and self.safety.height == self.height:
            # Restarted in the middle of this height: keep the persisted lock and resume at the
            # last round this authority signed in (the guard re-issues what it signed there).
            state = self.safety
            self.locked_round, self.locked_hash = state.locked_round, state.locked_hash
            self.valid_round, self.valid_hash = state.valid_round, state.valid_hash
            if state.valid_block is not None and state.valid_hash is not None:
                # Read back from disk: check at both ends (the block's hash was checked on decode;
                # the proof of lock's signatures are checked here).
                self._state.blocks[state.valid_hash] = state.valid_block
                self._valid_pol = tuple(vote for vote in state.valid_pol
                                        if vote.signer in self._state.authorities
                                        and self._verify(vote))
                for vote in self._valid_pol:
                    self._add_vote(vote, out)
            resume_round = max(state.proposal_round, state.prevote_round, state.precommit_round)
        for message, block in self._catchup.release():
            if message.height == self.height:
                if isinstance(message, Vote):
                    self._receive_vote(message, now, out)
                else:
                    self._receive_proposal(message, block, now, out)
        if resume_round >= 0:
            self._start_round(resume_round, now, out)
            return
        # Heartbeat: round 0 waits for transactions (TxsAvailable, which the shell also sends
        # after a commit when its mempool is not empty), the round-0 proposal, or this timer.
        heartbeat_due = max(now, self.committed.time_ms + self.params.empty_block_interval_ms)
        out.append(ScheduleTimeout(self.height, 0, STEP_WAIT, heartbeat_due))

    def _start_round(self, round_: int, now: int, out: list[Effect]) -> None:
        self.round, self.step_ = round_, STEP_PROPOSE
        out.append(ScheduleTimeout(self.height, round_, STEP_PROPOSE,
                                   now + step_timeout_ms(self.params, STEP_PROPOSE, round_)))
        if self.proposer(round_) == self.public_key:
            self._propose(now, out, None)

    def _end_wait(self, now: int, out: list[Effect], block: Block | None) -> None:
        assert self.step_ == STEP_WAIT and self.round == 0
        self.step_ = STEP_PROPOSE
        out.append(ScheduleTimeout(self.height, 0, STEP_PROPOSE,
                                   now + step_timeout_ms(self.params, STEP_PROPOSE, 0)))
        if self.proposer(0) == self.public_key:
            self._propose(now, out, block)

    def _build_block(self, now: int, out: list[Effect]) -> Block | None:
        pool = self._evidence.pending()[: limits.BLOCK_EVIDENCE_MAX]
        built = self.source.build_block(self.height, self.round, now,
                                        self.committed.certificate, pool)
        if built.refused:
            out.append(DropRefused(built.refused))
        block = built.block
        assert block is None or block.height == self.height, "source built another height"
        return block

    def _propose(self, now: int, out: list[Effect], block: Block | None) -> None:
        """L11-L21: propose the valid block with its POL round, else a new block."""
        state = self._state
        if self.round in state.proposed_rounds:
            return
        if self._signing_held(out):
            return
        pol_round = -1
        if self.valid_hash is not None:
            # A restarted core may know the valid hash but not the block: propose nothing.
            block = state.blocks.get(self.valid_hash)
            if block is None:
                return
            # A proof of lock must be from an earlier round; a core restarted into the round of
            # its valid block proposes it as new (or re-sends what it proposed, below).
            pol_round = self.valid_round if self.valid_round < self.round else -1
        elif block is None:
            block = self._build_block(now, out)
            if block is None:
                return
        block_hash = block.hash
        decision, signed_hash = safety.decide(self.safety, self.height, self.round,
                                              safety.PROPOSAL, block_hash)
        if decision is Decision.REFUSE:
            out.append(Ignored("guard_refused_proposal"))
            return
        if decision is Decision.RESEND and signed_hash != block_hash:
            # Proposed another block in this round before a restart: only that one may go out.
            known = state.blocks.get(signed_hash or b"")
            if known is None:
                return
            block, block_hash = known, known.hash
        if decision is Decision.RESEND:
            assert self.safety is not None
            pol_round = self.safety.proposal_pol_round  # the very proposal signed before
        state.proposed_rounds.add(self.round)
        if decision is Decision.SIGN:
            self._persist(safety.record(self.safety, self.height, self.round, safety.PROPOSAL,
                                        block_hash, pol_round), out)
        proposal = Proposal(self.height, self.round, pol_round, block_hash,
                            self.public_key).sign(self.identity, self.chain_id)
        out.append(Broadcast(proposal, block))
        self._signed.append(proposal)
        state.own_messages.append((proposal, block))
        self._add_proposal(proposal, block, block_hash, out)

    def _sign_vote(self, vote_type: int, block_hash: bytes | None, out: list[Effect],
                   *, lock: bool = False) -> None:
        """Sign and broadcast a vote of this round, behind the double-sign guard. With `lock`,
        the lock on `block_hash` is taken in the same persisted write as the precommit."""
        if self._signing_held(out):
            return  # nothing signed, so nothing of ours is counted either
        decision, signed_hash = safety.decide(self.safety, self.height, self.round, vote_type,
                                              block_hash)
        if decision is Decision.REFUSE:
            out.append(Ignored("guard_refused_vote"))
            return
        if lock and signed_hash == block_hash:
            self.locked_round, self.locked_hash = self.round, block_hash
        if decision is Decision.SIGN:
            self._persist(safety.record(self.safety, self.height, self.round, vote_type,
                                        signed_hash), out)
        vote = Vote(vote_type, self.height, self.round, signed_hash,
                    self.public_key).sign(self.identity, self.chain_id)
        out.append(Broadcast(vote))
        self._signed.append(vote)
        self._state.own_messages.append((vote, None))
        self._add_vote(vote, out)

    def _signing_held(self, out: list[Effect]) -> bool:
        """True (and counted) when the restore hold forbids signing at this height."""
        if self.height < self.sign_from_height:
            out.append(Ignored("signing_held"))
            return True
        return False

    def _persist(self, state: SafetyState, out: list[Effect]) -> None:
        valid_block = None if self.valid_hash is None else self._state.blocks.get(self.valid_hash)
        self.safety = safety.with_lock(state, self.locked_round, self.locked_hash,
                                       self.valid_round, self.valid_hash, valid_block,
                                       self._valid_pol)
        out.append(PersistSafety(self.safety))

    # --- the rules ------------------------------------------------------------------------

    def _advance(self, now: int, out: list[Effect]) -> None:
        """Apply the paper's upon-rules until none applies."""
        while self._unapplied is None:
            if self._commit_rule(now, out):  # L49
                continue
            state = self._state
            if state.skip_round > self.round:  # L55
                self._start_round(state.skip_round, now, out)
                continue
            if self.step_ == STEP_WAIT and 0 in state.proposals:
                self._end_wait(now, out, None)
                continue
            if self.step_ == STEP_PROPOSE and self._prevote_rule(now, out):  # L22, L28
                continue
            if (self.step_ == STEP_PREVOTE and state.has_quorum_of_any(PREVOTE, self.round)
                    and self.round not in state.prevote_timer_rounds):  # L34
                state.prevote_timer_rounds.add(self.round)
                out.append(ScheduleTimeout(
                    self.height, self.round, STEP_PREVOTE,
                    now + step_timeout_ms(self.params, STEP_PREVOTE, self.round)))
            if self.step_ in (STEP_PREVOTE, STEP_PRECOMMIT) and self._lock_rule(now, out):  # L36
                continue
            if self.step_ == STEP_PREVOTE and state.has_quorum(PREVOTE, self.round, None):  # L44
                self._sign_vote(PRECOMMIT, None, out)
                self.step_ = STEP_PRECOMMIT
                continue
            if (state.has_quorum_of_any(PRECOMMIT, self.round)
                    and self.round not in state.precommit_timer_rounds):  # L47
                state.precommit_timer_rounds.add(self.round)
                out.append(ScheduleTimeout(
                    self.height, self.round, STEP_PRECOMMIT,
                    now + step_timeout_ms(self.params, STEP_PRECOMMIT, self.round)))
            return

    def _prevote_rule(self, now: int, out: list[Effect]) -> bool:
        state = self._state
        proposal = state.proposals.get(self.round)
        if proposal is None or proposal.block_hash not in state.blocks:
            return False
        block_hash = proposal.block_hash
        pol_round = proposal.pol_round
        if pol_round == -1:
            acceptable = self.locked_round == -1 or self.locked_hash == block_hash
        elif pol_round < self.round and state.has_quorum(PREVOTE, pol_round, block_hash):
            acceptable = self.locked_round <= pol_round or self.locked_hash == block_hash
        else:
            return False  # wait for the proof of lock, or the propose timeout
        good = acceptable and self._valid(block_hash, now, at_commit=False)
        self._sign_vote(PREVOTE, block_hash if good else None, out)
        self.step_ = STEP_PREVOTE
        return True

    def _lock_rule(self, now: int, out: list[Effect]) -> bool:
        state = self._state
        if self.round in state.lock_rule_rounds:
            return False
        candidates = [
            block_hash for block_hash in state.round_proposals[self.round]
            if state.has_quorum(PREVOTE, self.round, block_hash)
            and self._valid(block_hash, now, at_commit=False)
        ]
        if not candidates:
            return False
        # Two candidates need two prevote quorums: more than f byzantine. Not this node's bug.
        block_hash = candidates[0]
        state.lock_rule_rounds.add(self.round)
        self.valid_round, self.valid_hash = self.round, block_hash
        self._valid_pol = state.votes_for(PREVOTE, self.round, block_hash)
        if self.step_ == STEP_PREVOTE:
            self._sign_vote(PRECOMMIT, block_hash, out, lock=True)  # persists lock and valid
            self.step_ = STEP_PRECOMMIT
        else:
            base = self.safety
            if base is None or base.height < self.height:
                base = SafetyState.empty(self.height)
            if base.height == self.height and self.height >= self.sign_from_height:
                self._persist(base, out)
        return True

    def _commit_rule(self, now: int, out: list[Effect]) -> bool:
        state = self._state
        for round_, block_hash in sorted(state.precommit_quorums):
            block = state.blocks.get(block_hash)
            if block is None:
                # 2/3+ precommitted a block we never received: fetch it from peers.
                self._catchup.request_blocks(self.height, now, out)
                continue
            if not self._valid(block_hash, now, at_commit=True):
                if block_hash not in state.invalid_commits_reported:
                    state.invalid_commits_reported.add(block_hash)
                    out.append(Ignored("certified_block_invalid",
                                        str(self._validity.why_invalid(block_hash))))
                continue
            certificate = state.certificate(self.height, round_, block_hash)
            proposal = state.proposal_of_commit(round_, block_hash)
            self._commit(block, block_hash, certificate, proposal, now, out)
            return True
        return False

    def _commit(self, block: Block, block_hash: bytes, certificate: CommitCertificate,
                proposal: Proposal | None, now: int, out: list[Effect]) -> None:
        out.append(Commit(block, certificate, proposal))
        self.committed = Committed(self.height, block_hash, block.header.time_ms, certificate)
        self._evidence.committed(block.evidence)
        self._start_height(now, out, deferred=True)

    # --- validity -------------------------------------------------------------------------

    def _valid(self, block_hash: bytes, now: int, *, at_commit: bool) -> bool:
        block = self._state.blocks.get(block_hash)
        return block is not None and \
            self._validity.valid(block, block_hash, now, at_commit=at_commit)

    def _new_validity(self) -> BlockValidity:
        return BlockValidity(chain_id=self.chain_id, height=self.height, committed=self.committed,
                             authorities=self._state.authorities, source=self.source,
                             verify=self._verify,
                             time_ahead_ms_max=self.params.block_time_ahead_ms_max)

    # --- inputs ---------------------------------------------------------------------------

    def _receive_vote(self, vote: Vote, now: int, out: list[Effect]) -> None:
        if not self._catchup.gate(vote, None, self.height, now, out):
            return
        if self._state.has_vote(vote):
            out.append(Ignored("duplicate"))
            return
        if not self._state.admit(vote, self._verify, out):
            return
        self._add_vote(vote, out)

    def _add_vote(self, vote: Vote, out: list[Effect]) -> None:
        self._found(self._state.add_vote(vote), out)

    def _receive_proposal(self, proposal: Proposal, block: Block | None, now: int,
                          out: list[Effect]) -> None:
        if not self._catchup.gate(proposal, block, self.height, now, out):
            return
        if self._state.has_proposal(proposal, block):
            out.append(Ignored("duplicate"))
            return
        if proposal.signer != self.proposer(proposal.round):
            out.append(Ignored("not_proposer"))
            return
        if not self._state.admit(proposal, self._verify, out):
            return
        block_hash = None
        if block is not None:
            block_hash = block.hash
            if block_hash != proposal.block_hash:
                out.append(Ignored("block_hash_mismatch"))
                return
        self._add_proposal(proposal, block, block_hash, out)

    def _add_proposal(self, proposal: Proposal, block: Block | None, block_hash: bytes | None,
                      out: list[Effect]) -> None:
        self._found(self._state.add_proposal(proposal, block, block_hash, out), out)

    def _found(self, item: Evidence | None, out: list[Effect]) -> None:
        """Pool and announce evidence the height state detected (once per equivocation slot)."""
        if item is not None:
            self._evidence.add(item)
            out.append(EvidenceFound(item))

    def _on_evidence_received(self, item: Evidence, out: list[Effect]) -> None:
        problem = self._evidence.receive(item, self.height, self.source.authorities, self._verify)
        if problem is not None:
            out.append(Ignored(problem))

    def _on_timeout(self, event: TimeoutFired, out: list[Effect]) -> None:
        now = event.now_ms
        if event.height != self.height:
            return
        if event.step == STEP_REBROADCAST:
            self._rebroadcast(now, out)
            return
        if event.step == STEP_WAIT:
            if self.step_ == STEP_WAIT:
                self._end_wait(now, out, None)
            elif self.step_ == STEP_PROPOSE and self.proposer(self.round) == self.public_key:
                self._propose(now, out, None)  # the heartbeat is due now
            return
        if event.round != self.round:
            return
        if event.step == STEP_PROPOSE and self.step_ == STEP_PROPOSE:  # L57
            self._sign_vote(PREVOTE, None, out)
            self.step_ = STEP_PREVOTE
        elif event.step == STEP_PREVOTE and self.step_ == STEP_PREVOTE:  # L61
            self._sign_vote(PRECOMMIT, None, out)
            self.step_ = STEP_PRECOMMIT
        elif event.step == STEP_PRECOMMIT:  # L65
            self._start_round(self.round + 1, now, out)

    def _on_txs_available(self, now: int, out: list[Effect]) -> None:
        if self.step_ == STEP_WAIT:
            self._end_wait(now, out, None)
        elif self.step_ == STEP_PROPOSE and self.proposer(self.round) == self.public_key:
            self._propose(now, out, None)

    def _rebroadcast(self, now: int, out: list[Effect]) -> None:
        """Re-send every message this node holds for the height, its own and its peers' (with
        their blocks): the paper's gossip assumption, that a message one correct node received
        reaches every correct node once the network is good, does not hold for messages lost or
        cut off before that unless someone sends them again (CometBFT's vote gossip does this
        per peer; without peer state, this node sends all)."""
        out.extend(Broadcast(message, block) for message, block in self._state.held_messages())
        if self._catchup.later_height_seen:
            self._catchup.request_blocks(self.height, now, out)
        out.append(ScheduleTimeout(self.height, self.round, STEP_REBROADCAST,
                                   now + step_timeout_ms(self.params, STEP_PROPOSE, self.round)))

    def _on_block_fetched(self, event: BlockFetched, out: list[Effect]) -> None:
        block, certificate = event.block, event.certificate
        if block.height != self.height:
            out.append(Ignored("fetched_not_next_height"))
            return
        block_hash = block.hash
        if certificate.height != block.height or certificate.block_hash != block_hash:
            out.append(Ignored("fetched_certificate_mismatch"))
            return
        problem = certificate_problem(certificate, self._state.authorities, self._verify)
        reason = problem[0] if problem is not None else self._validity.problem(
            block, event.now_ms, certified=True)
        if reason is not None:
            out.append(Ignored("fetched_block_invalid", reason))
            return
        self._commit(block, block_hash, certificate, None, event.now_ms, out)
