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
  height (crash, partition) catches up without replaying its rounds.
- Evidence (evidence.py) of conflicting votes or proposals is detected as messages arrive.
- Bounds: at most `SIGNER_MESSAGES_MAX` messages per signer and `BLOCKS_MAX` blocks per height,
  `FUTURE_MESSAGES_PER_SIGNER` buffered messages per signer of the next height,
  `EVIDENCE_POOL_MAX` evidence.

Authority sets come from the BlockSource per height (`authorities(h)`); a change decided at height
h applies from h+2, which the source knows; the core never caches a set across heights.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Final, Protocol

from healthnode import limits
from healthnode.consensus import safety
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
    Effect,
    Event,
    EvidenceFound,
    EvidenceReceived,
    PersistSafety,
    ProposalReceived,
    Rejected,
    RequestBlocks,
    ScheduleTimeout,
    TimeoutFired,
    TxsAvailable,
    VoteReceived,
)
from healthnode.consensus.safety import Decision, SafetyState
from healthnode.crypto import ZERO_HASH, Identity
from healthnode.protocol import evidence as ev
from healthnode.protocol.block import (
    PRECOMMIT,
    PREVOTE,
    Block,
    CommitCertificate,
    CommitSig,
    Evidence,
    Proposal,
    VerificationError,
    Vote,
    certificate_problem,
    header_problem,
    quorum,
    verify_block_shape,
)
from healthnode.protocol.genesis import ConsensusParams
from healthnode.protocol.signed import Signed

# A round makes at most three messages per signer (proposal, prevote, precommit): 1024 covers
# ~340 rounds of one height, far beyond any recovery, and bounds what one byzantine signer can
# make this node hold.
SIGNER_MESSAGES_MAX: Final = 1024
# Blocks kept per height: one per proposal, and a byzantine proposer can equivocate. A block is up
# to limits.BLOCK_BYTES_MAX, so keep few.
BLOCKS_MAX: Final = 16
# Messages of the next height that arrive before this one commits (faster peers), per signer: a
# correct signer makes at most three per round, and peers do not get far ahead of a node whose
# vote they need. Missed ones come again by REBROADCAST after this node catches up.
FUTURE_MESSAGES_PER_SIGNER: Final = 16
# Pending evidence: a few blocks' worth; more means many byzantine authorities, and the oldest
# already make the point.
EVIDENCE_POOL_MAX: Final = 4 * limits.BLOCK_EVIDENCE_MAX
# Evidence keys remembered as committed, so gossip of old evidence does not re-enter the pool.
COMMITTED_EVIDENCE_MEMORY: Final = 4096


class BlockSource(Protocol):
    """What the core needs from the ledger and mempool (the node shell implements it)."""

    def authorities(self, height: int) -> tuple[bytes, ...]:
        """The ordered authority public keys that vote at `height`."""
        ...

    def build_block(self, height: int, round_: int, now_ms: int,
                    last_commit: CommitCertificate | None,
                    evidence: tuple[Evidence, ...]) -> Block | None:
        """A new block to propose, or None when there is nothing to propose yet (no
        transactions and the heartbeat is not due)."""
        ...

    def check_block(self, block: Block, now_ms: int, certified: bool = False) -> str | None:
        """None when the block's content is valid (transactions, state hash), else why not.
        The answer for one block must not change within a height: the core caches it.
        `certified`: the block came with a verified commit certificate (block sync), so the
        authorities already verified its transactions' signatures; the source may skip that."""
        ...


@dataclass(frozen=True, slots=True)
class Committed:
    """The last committed block as the store holds it (height 0: the genesis)."""

    height: int
    block_hash: bytes
    time_ms: int
    certificate: CommitCertificate | None

    @classmethod
    def genesis(cls, genesis_time_ms: int) -> Committed:
        return cls(0, ZERO_HASH, genesis_time_ms, None)


def signature_verifier(chain_id: str) -> Verify:
    def verify(message: Signed) -> bool:
        return message.signature_valid(chain_id)
    return verify


class _HeightState:
    """Everything the core knows about the current height; dropped when the height commits."""

    def __init__(self) -> None:
        self.proposals: dict[int, Proposal] = {}  # round -> first proposal of its proposer
        # Every proposal per round, by block hash: an equivocating proposer's other block may be
        # the one 2/3+ prevoted, and the lock rule must see it (as the paper's "upon" does).
        self.round_proposals: dict[int, dict[bytes, Proposal]] = defaultdict(dict)
        self.blocks: dict[bytes, Block] = {}
        self.proposal_of_block: dict[bytes, Proposal] = {}
        self.validity: dict[bytes, str | None] = {}  # block hash -> why invalid (None: valid)
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
        self._state = _HeightState()
        self._authorities: tuple[bytes, ...] = ()
        self._quorum = 1
        self._third_plus = 1
        self._future: dict[Proposal | Vote, Block | None] = {}
        self._future_per_signer: dict[bytes, int] = {}
        self._later_height_seen = False
        self._sync_requested_ms: int | None = None
        self._evidence_pool: dict[bytes, Evidence] = {}
        self._committed_evidence: dict[bytes, None] = {}  # insertion-ordered set
        self._started = False
        self._entered = False
        # The first height this authority may sign at. The shell may raise or lower it between
        # steps (a restored node learns it from its peers); 0: no hold.
        self.sign_from_height = sign_from_height

    # --- public surface -------------------------------------------------------------------

    def start(self, now_ms: int) -> list[Effect]:
        assert not self._started, "start() called twice"
        self._started = True
        out: list[Effect] = []
        self._start_height(now_ms, out, deferred=False)
        self._advance(now_ms, out)
        return out

    def step(self, event: Event) -> list[Effect]:
        assert self._started, "step() before start()"
        out: list[Effect] = []
        now = event.now_ms
        if not self._entered:
            self._enter_height(now, out)
        if isinstance(event, VoteReceived):
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
        self._advance(now, out)
        return out

    @property
    def step_name(self) -> str:
        return STEP_NAMES[self.step_]

    @property
    def authorities(self) -> tuple[bytes, ...]:
        return self._authorities

    def proposer(self, round_: int) -> bytes:
        return self._authorities[(self.height + round_) % len(self._authorities)]

    def evidence_pool(self) -> tuple[Evidence, ...]:
        return tuple(self._evidence_pool.values())

    def proposal_for(self, block_hash: bytes) -> tuple[Proposal, Block] | None:
        """The proposal and block of this height with `block_hash`, to serve a peer."""
        block = self._state.blocks.get(block_hash)
        proposal = self._state.proposal_of_block.get(block_hash)
        return None if block is None or proposal is None else (proposal, block)

    # --- heights and rounds ---------------------------------------------------------------

    def _start_height(self, now: int, out: list[Effect], *, deferred: bool) -> None:
        """Reset for the next height. After a commit (`deferred`) the shell has not yet written
        the block, so nothing that reads the new chain state (check_block, build_block) may run
        in this step: the height is entered at the next event, which a REBROADCAST timer due
        now guarantees."""
        self.height = self.committed.height + 1
        self._state = _HeightState()
        self._authorities = tuple(self.source.authorities(self.height))
        assert self._authorities, "a height without authorities"
        count = len(self._authorities)
        self._quorum = quorum(count)
        self._third_plus = count // 3 + 1  # more than a third: at least one is correct
        self.round, self.step_ = 0, STEP_WAIT
        self.locked_round, self.locked_hash = -1, None
        self.valid_round, self.valid_hash = -1, None
        self._valid_pol = ()
        self._later_height_seen = False
        self._entered = False
        first_rebroadcast = now if deferred else \
            now + step_timeout_ms(self.params, STEP_PROPOSE, 0)
        out.append(ScheduleTimeout(self.height, 0, STEP_REBROADCAST, first_rebroadcast))
        if not deferred:
            self._enter_height(now, out)

    def _enter_height(self, now: int, out: list[Effect]) -> None:
        self._entered = True
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
                                        if vote.signer in self._authorities
                                        and self._verify(vote))
                for vote in self._valid_pol:
                    self._add_vote(vote, out)
            resume_round = max(state.proposal_round, state.prevote_round, state.precommit_round)
        future, self._future = self._future, {}
        self._future_per_signer = {}
        for message, block in future.items():
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

    def _build_block(self, now: int) -> Block | None:
        pool = tuple(self._evidence_pool.values())[: limits.BLOCK_EVIDENCE_MAX]
        block = self.source.build_block(self.height, self.round, now,
                                        self.committed.certificate, pool)
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
            block = self._build_block(now)
            if block is None:
                return
        block_hash = block.hash
        decision, signed_hash = safety.decide(self.safety, self.height, self.round,
                                              safety.PROPOSAL, block_hash)
        if decision is Decision.REFUSE:
            out.append(Rejected("guard_refused_proposal"))
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
            out.append(Rejected("guard_refused_vote"))
            return
        if lock and signed_hash == block_hash:
            self.locked_round, self.locked_hash = self.round, block_hash
        if decision is Decision.SIGN:
            self._persist(safety.record(self.safety, self.height, self.round, vote_type,
                                        signed_hash), out)
        vote = Vote(vote_type, self.height, self.round, signed_hash,
                    self.public_key).sign(self.identity, self.chain_id)
        out.append(Broadcast(vote))
        self._state.own_messages.append((vote, None))
        self._add_vote(vote, out)

    def _signing_held(self, out: list[Effect]) -> bool:
        """True (and counted) when the restore hold forbids signing at this height."""
        if self.height < self.sign_from_height:
            out.append(Rejected("signing_held"))
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
        while self._entered:
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
            key = (PREVOTE, self.round)
            if (self.step_ == STEP_PREVOTE and state.totals[key] >= self._quorum
                    and self.round not in state.prevote_timer_rounds):  # L34
                state.prevote_timer_rounds.add(self.round)
                out.append(ScheduleTimeout(
                    self.height, self.round, STEP_PREVOTE,
                    now + step_timeout_ms(self.params, STEP_PREVOTE, self.round)))
            if self.step_ in (STEP_PREVOTE, STEP_PRECOMMIT) and self._lock_rule(now, out):  # L36
                continue
            if self.step_ == STEP_PREVOTE and state.counts[key].get(None, 0) >= self._quorum:  # L44
                self._sign_vote(PRECOMMIT, None, out)
                self.step_ = STEP_PRECOMMIT
                continue
            key = (PRECOMMIT, self.round)
            if (state.totals[key] >= self._quorum
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
        elif pol_round < self.round and \
                state.counts[(PREVOTE, pol_round)].get(block_hash, 0) >= self._quorum:
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
            if state.counts[(PREVOTE, self.round)].get(block_hash, 0) >= self._quorum
            and self._valid(block_hash, now, at_commit=False)
        ]
        if not candidates:
            return False
        # Two candidates need two prevote quorums: more than f byzantine. Not this node's bug.
        block_hash = candidates[0]
        state.lock_rule_rounds.add(self.round)
        self.valid_round, self.valid_hash = self.round, block_hash
        self._valid_pol = tuple(by_value[block_hash]
                                for by_value in state.votes[(PREVOTE, self.round)].values()
                                if block_hash in by_value)
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
                self._request_blocks(now, out)
                continue
            if not self._valid(block_hash, now, at_commit=True):
                if block_hash not in state.invalid_commits_reported:
                    state.invalid_commits_reported.add(block_hash)
                    out.append(Rejected("certified_block_invalid",
                                        str(state.validity.get(block_hash))))
                continue
            signatures = tuple(sorted(
                (CommitSig(by_value[block_hash].signer, by_value[block_hash].signature)
                 for by_value in state.votes[(PRECOMMIT, round_)].values()
                 if block_hash in by_value),
                key=lambda sig: sig.signer))
            certificate = CommitCertificate(self.height, round_, block_hash, signatures)
            proposal = state.proposals.get(round_)
            if proposal is None or proposal.block_hash != block_hash:
                proposal = state.proposal_of_block.get(block_hash)
            self._commit(block, block_hash, certificate, proposal, now, out)
            return True
        return False

    def _commit(self, block: Block, block_hash: bytes, certificate: CommitCertificate,
                proposal: Proposal | None, now: int, out: list[Effect]) -> None:
        out.append(Commit(block, certificate, proposal))
        self.committed = Committed(self.height, block_hash, block.header.time_ms, certificate)
        for item in block.evidence:
            key = ev.evidence_key(item)
            self._evidence_pool.pop(key, None)
            self._committed_evidence[key] = None
        while len(self._committed_evidence) > COMMITTED_EVIDENCE_MEMORY:
            del self._committed_evidence[next(iter(self._committed_evidence))]
        self._start_height(now, out, deferred=True)

    # --- validity -------------------------------------------------------------------------

    def _valid(self, block_hash: bytes, now: int, *, at_commit: bool) -> bool:
        state = self._state
        block = state.blocks.get(block_hash)
        if block is None:
            return False
        if block_hash not in state.validity:
            state.validity[block_hash] = self._check_block(block, now)
        if state.validity[block_hash] is not None:
            return False
        # A block time may be at most block_time_ahead_ms_max ahead of this node's clock. This
        # is the one clock-dependent check, so it is not cached; and a block 2/3+ precommitted
        # is committed whatever this clock says.
        return at_commit or block.header.time_ms <= now + self.params.block_time_ahead_ms_max

    def _check_block(self, block: Block, now: int, certified: bool = False) -> str | None:
        """Consensus-level facts about a block of this height, then the source's content check."""
        header = block.header
        try:
            verify_block_shape(block, self.chain_id)
        except VerificationError as error:
            return f"block_shape: {error.reason}"
        wrong = header_problem(header, chain_id=self.chain_id, height=self.height,
                               after_time_ms=self.committed.time_ms,
                               authorities=self._authorities,
                               prev_hash=self.committed.block_hash)
        if wrong is not None:
            return wrong[0]
        if header.last_commit is not None:
            uncertified = certificate_problem(
                header.last_commit, self.source.authorities(self.height - 1), self._verify)
            if uncertified is not None:
                return f"block_last_commit: {uncertified[0]}"
        keys: set[bytes] = set()
        for item in block.evidence:
            height = ev.evidence_height(item)
            if height > self.height:
                return "block_evidence_from_the_future"
            problem = ev.check_evidence(item, self.source.authorities(height), self._verify)
            if problem is not None:
                return f"block_{problem.code}"
            key = ev.evidence_key(item)
            if key in keys:
                return "block_evidence_twice"
            keys.add(key)
        return self.source.check_block(block, now, certified)

    # --- inputs ---------------------------------------------------------------------------

    def _height_gate(self, message: Proposal | Vote, block: Block | None, now: int,
                     out: list[Effect]) -> bool:
        """True when `message` is of the current height; buffers the next height's."""
        if message.height == self.height:
            return True
        if message.height < self.height:
            out.append(Rejected("old_height"))
        elif message.height == self.height + 1:
            # A faster peer already committed this height. Keep its messages (verified, bounded)
            # for when this node catches up; REBROADCAST later asks for blocks if it does not.
            if message.signer not in self.source.authorities(message.height):
                out.append(Rejected("not_authority"))
            elif not self._verify(message):
                out.append(Rejected("bad_signature"))
            else:
                self._later_height_seen = True
                signer_count = self._future_per_signer.get(message.signer, 0)
                if message in self._future:
                    if block is not None:
                        self._future[message] = block
                elif signer_count < FUTURE_MESSAGES_PER_SIGNER:
                    # A quota per signer: a byzantine flood cannot crowd out correct peers.
                    self._future_per_signer[message.signer] = signer_count + 1
                    self._future[message] = block
                else:
                    out.append(Rejected("future_buffer_full"))
        else:
            # Unverifiable here (this node may not know that height's authorities): a byzantine
            # peer can make us ask for blocks, which the rate limit keeps cheap.
            out.append(Rejected("far_height"))
            self._request_blocks(now, out)
        return False

    def _admit(self, message: Proposal | Vote, out: list[Effect]) -> bool:
        state = self._state
        if message.signer not in self._authorities:
            out.append(Rejected("not_authority"))
            return False
        if state.signer_messages[message.signer] >= SIGNER_MESSAGES_MAX:
            out.append(Rejected("signer_message_limit"))
            return False
        if not self._verify(message):
            out.append(Rejected("bad_signature"))
            return False
        state.signer_messages[message.signer] += 1
        return True

    def _receive_vote(self, vote: Vote, now: int, out: list[Effect]) -> None:
        if not self._height_gate(vote, None, now, out):
            return
        existing = self._state.votes[(vote.vote_type, vote.round)].get(vote.signer, {})
        if existing.get(vote.block_hash) == vote:
            out.append(Rejected("duplicate"))
            return
        if not self._admit(vote, out):
            return
        self._add_vote(vote, out)

    def _add_vote(self, vote: Vote, out: list[Effect]) -> None:
        state = self._state
        key = (vote.vote_type, vote.round)
        by_value = state.votes[key].setdefault(vote.signer, {})
        if vote.block_hash in by_value:
            return
        if by_value:
            first = next(iter(by_value.values()))
            slot = (vote.signer, vote.vote_type, vote.height, vote.round)
            self._found_evidence(ev.duplicate_vote(first, vote), slot, out)
        else:
            state.totals[key] += 1  # distinct signers, for the "2/3+ of any value" rules
        by_value[vote.block_hash] = vote
        count = state.counts[key][vote.block_hash] + 1
        state.counts[key][vote.block_hash] = count
        if vote.vote_type == PRECOMMIT and vote.block_hash is not None and count >= self._quorum:
            state.precommit_quorums.add((vote.round, vote.block_hash))
        self._note_round_signer(vote.round, vote.signer)

    def _note_round_signer(self, round_: int, signer: bytes) -> None:
        state = self._state
        signers = state.round_signers[round_]
        signers.add(signer)
        if len(signers) >= self._third_plus and round_ > state.skip_round:
            state.skip_round = round_

    def _receive_proposal(self, proposal: Proposal, block: Block | None, now: int,
                          out: list[Effect]) -> None:
        if not self._height_gate(proposal, block, now, out):
            return
        state = self._state
        existing = state.round_proposals[proposal.round].get(proposal.block_hash)
        if existing == proposal and (block is None or proposal.block_hash in state.blocks):
            out.append(Rejected("duplicate"))
            return
        if proposal.signer != self.proposer(proposal.round):
            out.append(Rejected("not_proposer"))
            return
        if not self._admit(proposal, out):
            return
        block_hash = None
        if block is not None:
            block_hash = block.hash
            if block_hash != proposal.block_hash:
                out.append(Rejected("block_hash_mismatch"))
                return
        self._add_proposal(proposal, block, block_hash, out)

    def _add_proposal(self, proposal: Proposal, block: Block | None, block_hash: bytes | None,
                      out: list[Effect]) -> None:
        state = self._state
        if block is not None and block_hash is not None and block_hash not in state.blocks:
            if len(state.blocks) < BLOCKS_MAX:
                state.blocks[block_hash] = block
                state.proposal_of_block.setdefault(block_hash, proposal)
            else:
                out.append(Rejected("block_limit"))
        by_hash = state.round_proposals[proposal.round]
        if len(by_hash) < BLOCKS_MAX:
            by_hash.setdefault(proposal.block_hash, proposal)
        existing = state.proposals.get(proposal.round)
        if existing is None:
            state.proposals[proposal.round] = proposal
            self._note_round_signer(proposal.round, proposal.signer)
        elif existing != proposal:
            slot = (proposal.signer, 0, proposal.height, proposal.round)
            self._found_evidence(ev.duplicate_proposal(existing, proposal), slot, out)

    def _found_evidence(self, item: Evidence, slot: tuple[bytes, int, int, int],
                        out: list[Effect]) -> None:
        state = self._state
        if slot in state.evidence_slots:
            return  # one piece of evidence per equivocation slot is enough
        state.evidence_slots.add(slot)
        self._pool_evidence(item)
        out.append(EvidenceFound(item))

    def _pool_evidence(self, item: Evidence) -> bool:
        key = ev.evidence_key(item)
        if key in self._evidence_pool or key in self._committed_evidence:
            return False
        if len(self._evidence_pool) >= EVIDENCE_POOL_MAX:
            return False
        self._evidence_pool[key] = item
        return True

    def _on_evidence_received(self, item: Evidence, out: list[Effect]) -> None:
        height = ev.evidence_height(item)
        if height > self.height:
            out.append(Rejected("evidence_from_the_future"))
            return
        problem = ev.check_evidence(item, self.source.authorities(height), self._verify)
        if problem is not None:
            out.append(Rejected(problem.code))
            return
        self._pool_evidence(item)

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
        state = self._state
        for message, block in state.own_messages:
            out.append(Broadcast(message, block))
        own = {message for message, _ in state.own_messages}
        for by_hash in state.round_proposals.values():
            for proposal in by_hash.values():
                if proposal not in own:
                    out.append(Broadcast(proposal, state.blocks.get(proposal.block_hash)))
        for by_signer in state.votes.values():
            for by_value in by_signer.values():
                for vote in by_value.values():
                    if vote not in own:
                        out.append(Broadcast(vote))
        if self._later_height_seen:
            self._request_blocks(now, out)
        out.append(ScheduleTimeout(self.height, self.round, STEP_REBROADCAST,
                                   now + step_timeout_ms(self.params, STEP_PROPOSE, self.round)))

    def _request_blocks(self, now: int, out: list[Effect]) -> None:
        last = self._sync_requested_ms
        if last is None or now - last >= self.params.propose_timeout_ms:
            self._sync_requested_ms = now
            out.append(RequestBlocks(self.height))

    def _on_block_fetched(self, event: BlockFetched, out: list[Effect]) -> None:
        block, certificate = event.block, event.certificate
        if block.height != self.height:
            out.append(Rejected("fetched_not_next_height"))
            return
        block_hash = block.hash
        if certificate.height != block.height or certificate.block_hash != block_hash:
            out.append(Rejected("fetched_certificate_mismatch"))
            return
        problem = certificate_problem(certificate, self._authorities, self._verify)
        reason = problem[0] if problem is not None else self._check_block(
            block, event.now_ms, certified=True)
        if reason is not None:
            out.append(Rejected("fetched_block_invalid", reason))
            return
        self._commit(block, block_hash, certificate, None, event.now_ms, out)

