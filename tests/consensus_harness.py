"""A harness for transcripts of one consensus core: the test plays the other authorities.

`Harness` runs the core under test (authority 0 unless chosen otherwise) over a fake ledger, and
signs proposals and votes of the other authorities on demand, so a test reads as the sequence of
messages the core sees and the effects it answers with.
"""

from __future__ import annotations

from typing import Any

from healthnode.consensus import events as ev
from healthnode.consensus.core import Committed, Core
from healthnode.consensus.safety import SafetyState
from healthnode.consensus.source import Built
from healthnode.crypto import ZERO_HASH, Identity, digest
from healthnode.protocol.block import (
    PRECOMMIT,
    PREVOTE,
    Block,
    CommitCertificate,
    CommitSig,
    Header,
    Proposal,
    Vote,
    evidence_root,
    txs_root,
    validators_hash,
)
from healthnode.protocol.genesis import DEFAULT_PARAMS, ConsensusParams
from healthnode.protocol.schema import replace

CHAIN = "test-chain"
IDENTITIES = [Identity.from_seed(digest(b"harness-%d" % i)) for i in range(7)]


class Ledger:
    """A fake ledger and mempool: empty blocks whose state hash chains the heights."""

    def __init__(self, authorities_by_height: dict[int, tuple[bytes, ...]] | None,
                 authorities: tuple[bytes, ...], params: ConsensusParams) -> None:
        self.default = authorities
        self.by_height = authorities_by_height or {}
        self.params = params
        self.blocks: list[tuple[Block, CommitCertificate]] = []
        self.txs = False
        self.built_with_evidence: list[tuple[Any, ...]] = []
        self.proposer_key = b""

    def authorities(self, height: int) -> tuple[bytes, ...]:
        return self.by_height.get(height, self.default)

    def previous(self) -> tuple[bytes, int, bytes]:
        if not self.blocks:
            return ZERO_HASH, 0, ZERO_HASH
        block = self.blocks[-1][0]
        return block.hash, block.header.time_ms, block.header.state_hash

    def make_block(self, height: int, now_ms: int, last_commit: CommitCertificate | None,
                   evidence: tuple[Any, ...], proposer: bytes) -> Block:
        prev_hash, prev_time, prev_state = self.previous()
        header = Header(CHAIN, height, max(now_ms, prev_time + 1), prev_hash, last_commit,
                        txs_root(()), evidence_root(evidence),
                        validators_hash(self.authorities(height)),
                        digest(prev_state + height.to_bytes(8, "big")), proposer)
        return Block(header, (), evidence)

    def build_block(self, height: int, round_: int, now_ms: int,
                    last_commit: CommitCertificate | None,
                    evidence: tuple[Any, ...]) -> Built:
        _, prev_time, _ = self.previous()
        if not self.txs and now_ms < prev_time + self.params.empty_block_interval_ms:
            return Built(None)
        self.built_with_evidence.append(evidence)
        return Built(self.make_block(height, now_ms, last_commit, evidence, self.proposer_key))

    def check_block(self, block: Block, now_ms: int, certified: bool = False) -> str | None:
        _, _, prev_state = self.previous()
        if block.header.state_hash != digest(prev_state + block.height.to_bytes(8, "big")):
            return "wrong_state_hash"
        return None


class Harness:
    def __init__(self, count: int = 4, me: int = 0, params: ConsensusParams = DEFAULT_PARAMS,
                 safety: SafetyState | None = None,
                 authorities_by_height: dict[int, tuple[bytes, ...]] | None = None) -> None:
        self.ids = IDENTITIES[:count]
        self.keys = tuple(identity.public_key for identity in self.ids)
        self.me = me
        self.params = params
        self.ledger = Ledger(authorities_by_height, self.keys, params)
        self.ledger.proposer_key = self.keys[me]
        self.persisted: SafetyState | None = safety
        self.core = self._new_core(safety)
        self.effects: list[ev.Effect] = []

    def _new_core(self, safety: SafetyState | None) -> Core:
        return Core(self.ids[self.me], CHAIN, self.params, self.ledger, self.committed(), safety)

    def committed(self) -> Committed:
        if not self.ledger.blocks:
            return Committed.genesis(0)
        block, certificate = self.ledger.blocks[-1]
        return Committed(block.height, block.hash, block.header.time_ms, certificate)

    # --- driving ---------------------------------------------------------------------------

    def start(self, now_ms: int = 0) -> list[ev.Effect]:
        return self._carry_out(self.core.start(now_ms), now_ms)

    def step(self, event: ev.Event) -> list[ev.Effect]:
        return self._carry_out(self.core.step(event), event.now_ms)

    def _carry_out(self, effects: list[ev.Effect], now_ms: int) -> list[ev.Effect]:
        """What the shell does: persist, store commits (in order), and acknowledge each commit
        (CommitApplied) at once; the effects of the acknowledgement follow the step's."""
        done: list[ev.Effect] = []
        while effects:
            done += effects
            committed = None
            for effect in effects:
                if isinstance(effect, ev.PersistSafety):
                    self.persisted = effect.state
                elif isinstance(effect, ev.Commit):
                    self.ledger.blocks.append((effect.block, effect.certificate))
                    committed = effect.block.height
            effects = [] if committed is None else \
                self.core.step(ev.CommitApplied(committed, now_ms))
        self.effects = done
        return done

    def restart(self, now_ms: int) -> list[ev.Effect]:
        """A crash: only the ledger and the persisted safety state survive."""
        self.core = self._new_core(self.persisted)
        return self.start(now_ms)

    def txs(self, now_ms: int) -> list[ev.Effect]:
        self.ledger.txs = True
        return self.step(ev.TxsAvailable(now_ms))

    def timeout(self, step: int, now_ms: int, round_: int | None = None) -> list[ev.Effect]:
        round_ = self.core.round if round_ is None else round_
        return self.step(ev.TimeoutFired(self.core.height, round_, step, now_ms))

    # --- the other authorities ---------------------------------------------------------------

    def block(self, proposer: int, now_ms: int = 100, **header_changes: Any) -> Block:
        block = self.ledger.make_block(self.core.height, now_ms, self.committed().certificate,
                                       (), self.keys[proposer])
        if header_changes:
            block = Block(replace(block.header, **header_changes), block.txs,
                          block.evidence)
        return block

    def proposal(self, proposer: int, round_: int, block: Block, pol_round: int = -1,
                 height: int | None = None) -> Proposal:
        height = self.core.height if height is None else height
        unsigned = Proposal(height, round_, pol_round, block.hash, b"")
        return unsigned.sign(IDENTITIES[proposer], CHAIN)

    def vote(self, signer: int, vote_type: int, round_: int, block_hash: bytes | None,
             height: int | None = None) -> Vote:
        height = self.core.height if height is None else height
        return Vote(vote_type, height, round_, block_hash, b"").sign(IDENTITIES[signer], CHAIN)

    def propose(self, proposer: int, round_: int, block: Block, now_ms: int,
                pol_round: int = -1) -> list[ev.Effect]:
        return self.step(ev.ProposalReceived(self.proposal(proposer, round_, block, pol_round),
                                             block, now_ms))

    def votes(self, signers: list[int], vote_type: int, round_: int, block_hash: bytes | None,
              now_ms: int) -> list[ev.Effect]:
        effects: list[ev.Effect] = []
        for signer in signers:
            effects += self.step(ev.VoteReceived(self.vote(signer, vote_type, round_,
                                                           block_hash), now_ms))
        return effects

    def certificate(self, signers: list[int], round_: int, block: Block) -> CommitCertificate:
        sigs = [CommitSig(self.keys[i], self.vote(i, PRECOMMIT, round_, block.hash,
                                                   height=block.height).signature)
                for i in signers]
        return CommitCertificate(block.height, round_, block.hash,
                                 tuple(sorted(sigs, key=lambda sig: sig.signer)))


def own_votes(effects: list[ev.Effect], vote_type: int = PREVOTE) -> list[Vote]:
    return [effect.message for effect in effects
            if isinstance(effect, ev.Broadcast) and isinstance(effect.message, Vote)
            and effect.message.vote_type == vote_type]


def own_proposals(effects: list[ev.Effect]) -> list[tuple[Proposal, Block | None]]:
    return [(effect.message, effect.block) for effect in effects
            if isinstance(effect, ev.Broadcast) and isinstance(effect.message, Proposal)]


def of_type(effects: list[ev.Effect], cls: type[Any]) -> list[Any]:
    return [effect for effect in effects if isinstance(effect, cls)]
