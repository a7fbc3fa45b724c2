"""The consensus core's restore hold (`sign_from_height`): below it the core signs nothing and
persists nothing, yet follows the chain. Authority 0 is the core under test; at height 1 the
proposer of round r is authority (1 + r) mod 4, at height 2 it is (2 + r) mod 4."""

from __future__ import annotations

from healthnode.consensus import events as ev
from healthnode.consensus.core import Committed, Core
from healthnode.protocol.block import PRECOMMIT, PREVOTE, Proposal, Vote
from tests.consensus_harness import CHAIN, Harness, of_type, own_proposals, own_votes


def held(sign_from_height: int, me: int = 0) -> Harness:
    h = Harness(me=me)
    h.core.sign_from_height = sign_from_height
    return h


def signed_anything(effects: list[ev.Effect]) -> bool:
    return any(isinstance(effect, ev.PersistSafety) or (
        isinstance(effect, ev.Broadcast) and isinstance(effect.message, Proposal | Vote))
        for effect in effects)


def commit_height_one_by_the_others(h: Harness) -> list[ev.Effect]:
    """Authorities 1-3 propose, prevote and precommit block X at height 1, round 0."""
    h.start(0)
    h.txs(10)
    x = h.block(1, now_ms=5)
    effects = h.propose(1, 0, x, 20)
    effects += h.votes([1, 2, 3], PREVOTE, 0, x.hash, 30)
    effects += h.votes([1, 2, 3], PRECOMMIT, 0, x.hash, 40)
    return effects


def test_the_constructor_takes_the_hold() -> None:
    h = Harness()
    core = Core(h.ids[0], CHAIN, h.params, h.ledger, Committed.genesis(0), None,
                sign_from_height=5)
    assert core.sign_from_height == 5


def test_the_hold_learned_later_is_an_event_of_the_core() -> None:
    """A restored node learns how far the network got after it started: the shell tells the
    core by an event (SigningHeld), never by setting its fields from outside."""
    h = Harness()
    h.start(0)
    assert h.core.sign_from_height == 0
    assert not signed_anything(h.step(ev.SigningHeld(3, 1)))
    assert h.core.sign_from_height == 3
    effects = h.txs(10)
    x = h.block(1, now_ms=5)
    effects += h.propose(1, 0, x, 20)
    effects += h.votes([1, 2, 3], PREVOTE, 0, x.hash, 30)
    assert not signed_anything(effects)
    assert ev.Ignored("signing_held") in effects


def test_a_held_core_signs_and_persists_nothing_yet_commits_what_the_others_finalize() -> None:
    h = held(sign_from_height=3)
    effects = commit_height_one_by_the_others(h)
    assert not signed_anything(effects)
    assert h.persisted is None
    commits = of_type(effects, ev.Commit)
    assert [commit.block.height for commit in commits] == [1]
    signers = {sig.signer for sig in commits[0].certificate.signatures}
    assert signers == {h.keys[1], h.keys[2], h.keys[3]}, "counted a vote it never signed"
    assert ev.Ignored("signing_held") in effects


def test_a_held_proposer_proposes_nothing_and_the_round_times_out_to_the_next_proposer() -> None:
    h = held(sign_from_height=2, me=1)  # authority 1 proposes round 0 of height 1
    effects = h.start(0) + h.txs(10)
    assert own_proposals(effects) == []
    effects = h.timeout(ev.STEP_PROPOSE, 10 + h.params.propose_timeout_ms)
    assert own_votes(effects, PREVOTE) == [] and h.core.step_name == "prevote"
    assert not signed_anything(h.effects)


def test_a_held_core_commits_blocks_from_block_sync() -> None:
    h = held(sign_from_height=10)
    h.start(0)
    x = h.block(1, now_ms=5)
    effects = h.step(ev.BlockFetched(x, h.certificate([1, 2, 3], 0, x), 50))
    assert [commit.block.hash for commit in of_type(effects, ev.Commit)] == [x.hash]
    assert not signed_anything(effects)


def test_the_core_signs_again_from_the_hold_height() -> None:
    h = held(sign_from_height=2)
    commit_height_one_by_the_others(h)
    assert h.core.height == 2
    h.txs(100)  # enters height 2 and starts its round
    y = h.block(2, now_ms=110)
    effects = h.propose(2, 0, y, 120)
    assert [vote.block_hash for vote in own_votes(effects, PREVOTE)] == [y.hash]
    persisted = of_type(effects, ev.PersistSafety)
    assert persisted and persisted[0].state.height == 2


def test_lifting_the_hold_lets_the_core_sign_in_the_current_height() -> None:
    h = held(sign_from_height=2**63)  # the shell has not yet learned the network's height
    h.start(0)
    h.txs(10)
    h.core.sign_from_height = 1  # learned: nothing of this key can exist at height 1
    x = h.block(1, now_ms=5)
    effects = h.propose(1, 0, x, 20)
    assert [vote.block_hash for vote in own_votes(effects, PREVOTE)] == [x.hash]
