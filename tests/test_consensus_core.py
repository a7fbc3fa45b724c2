"""The consensus core, one authority at a time: the test plays the other three authorities.

Authority 0 is the core under test unless a test says otherwise. At height 1 the proposer of
round r is authority (1 + r) mod 4: round 0 -> 1, round 1 -> 2, round 2 -> 3, round 3 -> 0.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from healthnode.consensus import events as ev
from healthnode.consensus.checks import step_timeout_ms
from healthnode.consensus.core import Core
from healthnode.consensus.safety import SafetyState
from healthnode.protocol.block import (
    PRECOMMIT,
    PREVOTE,
    CommitCertificate,
    DuplicateProposal,
    DuplicateVote,
    VerificationError,
    Vote,
    certificate_problem,
    verify_commit,
)
from healthnode.protocol.genesis import DEFAULT_PARAMS
from healthnode.protocol.signed import replace
from tests.consensus_harness import (
    CHAIN,
    IDENTITIES,
    Harness,
    of_type,
    own_proposals,
    own_votes,
)

P = DEFAULT_PARAMS


def locked_on_x_in_round_zero() -> tuple[Harness, bytes]:
    """Authority 0 prevotes and precommits block X in round 0; the round ends without commit."""
    h = Harness()
    h.start(0)
    h.txs(10)
    x = h.block(1, now_ms=5)
    h.propose(1, 0, x, 20)
    effects = h.votes([1, 2], PREVOTE, 0, x.hash, 30)
    assert [vote.block_hash for vote in own_votes(effects, PRECOMMIT)] == [x.hash]
    h.votes([1, 2], PRECOMMIT, 0, None, 40)
    h.timeout(ev.STEP_PRECOMMIT, 600, round_=0)
    assert h.core.round == 1
    return h, x.hash


def test_proposer_rotates_by_height_plus_round() -> None:
    h = Harness()
    h.start(0)
    assert [h.keys.index(h.core.proposer(r)) for r in range(5)] == [1, 2, 3, 0, 1]


def test_step_timeouts_grow_with_the_round_up_to_the_cap() -> None:
    grown = [step_timeout_ms(P, ev.STEP_PROPOSE, r) for r in (0, 1, 2)]
    assert grown == [P.propose_timeout_ms + r * P.timeout_increase_ms for r in (0, 1, 2)]
    assert step_timeout_ms(P, ev.STEP_PREVOTE, 10_000) == P.round_timeout_cap_ms


def test_round_zero_waits_for_transactions_before_its_propose_timer() -> None:
    h = Harness()
    effects = h.start(0)
    timers = of_type(effects, ev.ScheduleTimeout)
    assert ev.STEP_PROPOSE not in [t.step for t in timers]
    assert ev.ScheduleTimeout(1, 0, ev.STEP_WAIT, P.empty_block_interval_ms) in timers
    effects = h.txs(100)
    assert ev.ScheduleTimeout(1, 0, ev.STEP_PROPOSE, 100 + P.propose_timeout_ms) in effects


def test_proposer_makes_no_empty_block_before_the_heartbeat_is_due() -> None:
    h = Harness(me=1)
    assert own_proposals(h.start(0)) == []
    assert own_proposals(h.timeout(ev.STEP_WAIT, 1000, round_=0)) == []  # not due yet
    effects = h.timeout(ev.STEP_WAIT, P.empty_block_interval_ms, round_=0)
    assert len(own_proposals(effects)) == 1


def test_proposal_ends_the_wait_of_a_node_without_transactions() -> None:
    h = Harness()
    h.start(0)
    x = h.block(1)
    effects = h.propose(1, 0, x, 100)
    assert [vote.block_hash for vote in own_votes(effects)] == [x.hash]


def test_persist_safety_precedes_the_broadcast_of_every_signature() -> None:
    h = Harness(me=1)
    h.start(0)
    effects = h.txs(10)  # proposes and prevotes its own block
    kinds = [type(effect).__name__ for effect in effects
             if isinstance(effect, ev.PersistSafety | ev.Broadcast)]
    assert kinds == ["PersistSafety", "Broadcast", "PersistSafety", "Broadcast"]


def test_quorum_of_precommits_commits_with_a_certificate_the_next_block_carries() -> None:
    h = Harness(me=2)  # proposer of height 2, round 0
    h.start(0)
    h.txs(10)
    x = h.block(1, now_ms=5)
    h.propose(1, 0, x, 20)
    h.votes([0, 1], PREVOTE, 0, x.hash, 30)
    effects = h.votes([0, 1], PRECOMMIT, 0, x.hash, 40)
    [commit] = of_type(effects, ev.Commit)
    assert commit.block == x and commit.proposal.signer == h.keys[1]
    verify_commit(commit.certificate, CHAIN, h.keys)
    assert len(commit.certificate.signatures) == 3
    assert h.core.height == 2
    [(proposal, block)] = own_proposals(h.txs(50))
    assert block is not None and block.header.last_commit == commit.certificate
    assert block.header.prev_hash == x.hash and proposal.height == 2


def test_proposer_that_is_down_is_replaced_in_the_next_round() -> None:
    h = Harness()
    h.start(0)
    h.txs(10)
    assert [v.block_hash for v in own_votes(h.timeout(ev.STEP_PROPOSE, 1010))] == [None]
    assert [v.block_hash for v in own_votes(h.votes([2, 3], PREVOTE, 0, None, 1020),
                                            PRECOMMIT)] == [None]
    h.votes([2, 3], PRECOMMIT, 0, None, 1030)
    h.timeout(ev.STEP_PRECOMMIT, 1530, round_=0)
    assert h.core.round == 1
    y = h.block(2, now_ms=1540)
    h.propose(2, 1, y, 1550)
    h.votes([2, 3], PREVOTE, 1, y.hash, 1560)
    [commit] = of_type(h.votes([2, 3], PRECOMMIT, 1, y.hash, 1570), ev.Commit)
    assert commit.block == y and commit.certificate.round == 1


def test_lock_holds_against_a_fresh_proposal_in_a_later_round() -> None:
    h, x_hash = locked_on_x_in_round_zero()
    y = h.block(2, now_ms=700)
    effects = h.propose(2, 1, y, 710)
    assert [vote.block_hash for vote in own_votes(effects)] == [None]
    assert h.core.locked_hash == x_hash


def test_lock_holds_across_restart() -> None:
    h, x_hash = locked_on_x_in_round_zero()
    h.restart(650)
    assert (h.core.locked_round, h.core.locked_hash) == (0, x_hash)
    h.votes([2, 3], PRECOMMIT, 1, None, 660)  # brings the restarted core to round 1
    y = h.block(2, now_ms=700)
    assert [vote.block_hash for vote in own_votes(h.propose(2, 1, y, 710))] == [None]


def test_locked_block_reproposed_with_its_proof_of_lock_gets_a_prevote() -> None:
    h, x_hash = locked_on_x_in_round_zero()
    h.timeout(ev.STEP_PROPOSE, 2000)
    h.votes([1, 2], PREVOTE, 1, None, 2010)
    h.votes([1, 2], PRECOMMIT, 1, None, 2020)
    h.timeout(ev.STEP_PRECOMMIT, 3000, round_=1)
    x = h.core.proposal_for(x_hash)
    assert x is not None
    effects = h.propose(3, 2, x[1], 3010, pol_round=0)
    assert [vote.block_hash for vote in own_votes(effects)] == [x_hash]


def test_newer_proof_of_lock_releases_the_lock() -> None:
    h, _ = locked_on_x_in_round_zero()
    y = h.block(2, now_ms=700)
    h.propose(2, 1, y, 710)  # prevotes nil: locked on X
    h.votes([1, 2, 3], PREVOTE, 1, y.hash, 720)  # but Y has a POL in round 1
    h.votes([1, 2, 3], PRECOMMIT, 1, None, 730)
    h.timeout(ev.STEP_PRECOMMIT, 2000, round_=1)
    effects = h.propose(3, 2, y, 2010, pol_round=1)
    assert [vote.block_hash for vote in own_votes(effects)] == [y.hash]


def test_locked_proposer_reproposes_its_valid_block_with_its_round() -> None:
    h, x_hash = locked_on_x_in_round_zero()
    for round_ in (1, 2):
        h.timeout(ev.STEP_PROPOSE, 1000 * round_ + 900)
        h.votes([1, 2], PREVOTE, round_, None, 1000 * round_ + 910)
        h.votes([1, 2], PRECOMMIT, round_, None, 1000 * round_ + 920)
        effects = h.timeout(ev.STEP_PRECOMMIT, 1000 * round_ + 990, round_=round_)
    [(proposal, block)] = own_proposals(effects)  # round 3: authority 0 proposes
    assert (proposal.round, proposal.pol_round, proposal.block_hash) == (3, 0, x_hash)
    assert block is not None and block.hash == x_hash


def test_messages_of_more_than_a_third_at_a_higher_round_move_the_core_there() -> None:
    h = Harness()
    h.start(0)
    h.txs(10)
    h.votes([2], PREVOTE, 5, None, 20)
    assert h.core.round == 0
    h.votes([3], PREVOTE, 5, None, 30)
    assert h.core.round == 5


def test_block_too_far_ahead_of_the_clock_gets_a_nil_prevote() -> None:
    h = Harness()
    h.start(0)
    h.txs(10)
    x = h.block(1, now_ms=20 + P.block_time_ahead_ms_max + 1)
    assert [vote.block_hash for vote in own_votes(h.propose(1, 0, x, 20))] == [None]


@pytest.mark.parametrize("change", [
    {"prev_hash": b"\x01" * 32},
    {"state_hash": b"\x02" * 32},
    {"validators_hash": b"\x03" * 32},
    {"chain_id": "another-chain"},
])
def test_invalid_block_gets_a_nil_prevote(change: dict[str, object]) -> None:
    h = Harness()
    h.start(0)
    h.txs(10)
    x = h.block(1, now_ms=5, **change)
    assert [vote.block_hash for vote in own_votes(h.propose(1, 0, x, 20))] == [None]


def test_conflicting_prevotes_of_one_authority_become_evidence() -> None:
    h = Harness()
    h.start(0)
    h.votes([2], PREVOTE, 0, b"\x0a" * 32, 10)
    effects = h.votes([2], PREVOTE, 0, b"\x0b" * 32, 20)
    [found] = of_type(effects, ev.EvidenceFound)
    assert isinstance(found.evidence, DuplicateVote)
    assert {found.evidence.vote_a.block_hash, found.evidence.vote_b.block_hash} == \
        {b"\x0a" * 32, b"\x0b" * 32}
    assert h.core.evidence_pool() == (found.evidence,)


def test_conflicting_proposals_of_the_proposer_become_evidence() -> None:
    h = Harness()
    h.start(0)
    h.propose(1, 0, h.block(1, now_ms=5), 10)
    effects = h.propose(1, 0, h.block(1, now_ms=6), 20)
    [found] = of_type(effects, ev.EvidenceFound)
    assert isinstance(found.evidence, DuplicateProposal)


def test_evidence_is_offered_to_the_next_block_and_leaves_the_pool_when_committed() -> None:
    h = Harness(me=2)
    h.start(0)
    h.txs(5)
    h.votes([3], PREVOTE, 0, b"\x0a" * 32, 10)
    [found] = of_type(h.votes([3], PREVOTE, 0, b"\x0b" * 32, 11), ev.EvidenceFound)
    x = h.block(1, now_ms=5)
    h.propose(1, 0, x, 20)
    h.votes([0, 1], PREVOTE, 0, x.hash, 30)
    h.votes([0, 1], PRECOMMIT, 0, x.hash, 40)
    [(_, block)] = own_proposals(h.txs(50))  # height 2, round 0: authority 2 proposes
    assert block is not None and block.evidence == (found.evidence,)
    h.votes([0, 1], PREVOTE, 0, block.hash, 60)
    h.votes([0, 1], PRECOMMIT, 0, block.hash, 70)
    assert h.core.height == 3 and h.core.evidence_pool() == ()


def test_evidence_from_a_peer_joins_the_pool_only_when_it_verifies() -> None:
    h = Harness()
    h.start(0)
    a = h.vote(3, PREVOTE, 0, b"\x0a" * 32)
    b = h.vote(3, PREVOTE, 0, b"\x0b" * 32)
    first, second = sorted((a, b), key=lambda vote: vote.encode())
    forged = replace(second, signature=bytes(64))
    effects = h.step(ev.EvidenceReceived(DuplicateVote(first, forged), 10))
    assert [r.reason for r in of_type(effects, ev.Ignored)] == ["evidence_bad_signature"]
    h.step(ev.EvidenceReceived(DuplicateVote(first, second), 20))
    assert h.core.evidence_pool() == (DuplicateVote(first, second),)


@pytest.mark.parametrize(("make", "reason"), [
    (lambda h: replace(h.vote(2, PREVOTE, 0, None), signature=bytes(64)), "bad_signature"),
    (lambda h: h.vote(2, PREVOTE, 0, None).sign(IDENTITIES[6], CHAIN), "not_authority"),
    (lambda h: h.vote(2, PREVOTE, 0, None).sign(IDENTITIES[2], "other"), "bad_signature"),
    (lambda h: h.vote(2, PREVOTE, 0, None, height=9), "far_height"),
])
def test_votes_that_do_not_verify_are_rejected_with_a_reason(
        make: Callable[[Harness], Vote], reason: str) -> None:
    h = Harness()
    h.start(0)
    effects = h.step(ev.VoteReceived(make(h), 10))
    assert reason in [r.reason for r in of_type(effects, ev.Ignored)]
    assert not of_type(effects, ev.Broadcast)


def test_replayed_vote_of_a_finished_height_is_rejected() -> None:
    h = Harness()
    h.start(0)
    old = h.vote(2, PREVOTE, 0, None)
    x = h.block(1)
    h.step(ev.BlockFetched(x, h.certificate([1, 2, 3], 0, x), 10))
    effects = h.step(ev.VoteReceived(old, 20))
    assert [r.reason for r in of_type(effects, ev.Ignored)] == ["old_height"]


def test_restarted_core_resends_its_persisted_prevote_instead_of_a_conflicting_one() -> None:
    h = Harness()
    h.start(0)
    h.txs(10)
    x = h.block(1, now_ms=5)
    [signed] = own_votes(h.propose(1, 0, x, 20))
    assert signed.block_hash == x.hash
    h.restart(30)  # the proposal is forgotten; the persisted prevote is not
    effects = h.timeout(ev.STEP_PROPOSE, 2000)  # would prevote nil
    assert own_votes(effects) == [signed]
    assert not of_type(effects, ev.PersistSafety)


def test_core_with_safety_state_of_a_later_height_signs_nothing() -> None:
    later = SafetyState.empty(5)
    h = Harness(me=1, safety=later)  # restored from a backup: the store is at height 0
    effects = h.start(0) + h.txs(10) + h.timeout(ev.STEP_PROPOSE, 2000)
    assert not of_type(effects, ev.Broadcast)
    assert "guard_refused_vote" in [r.reason for r in of_type(effects, ev.Ignored)]


def test_block_sync_commits_a_block_with_a_valid_certificate() -> None:
    h = Harness()
    h.start(0)
    x = h.block(1)
    effects = h.step(ev.BlockFetched(x, h.certificate([1, 2, 3], 4, x), 10))
    [commit] = of_type(effects, ev.Commit)
    assert commit.block == x and commit.proposal is None and h.core.height == 2


def test_block_sync_refuses_a_certificate_without_quorum() -> None:
    h = Harness()
    h.start(0)
    x = h.block(1)
    effects = h.step(ev.BlockFetched(x, h.certificate([1, 2], 0, x), 10))
    assert not of_type(effects, ev.Commit)
    [rejected] = of_type(effects, ev.Ignored)
    assert rejected.detail == "certificate_without_quorum"


def test_authority_set_of_each_height_comes_from_the_source() -> None:
    five = tuple(identity.public_key for identity in IDENTITIES[:5])
    h = Harness(authorities_by_height={2: five, 3: five})
    h.start(0)
    newcomer_vote = h.vote(4, PREVOTE, 0, None)
    assert "not_authority" in [r.reason for r in
                               of_type(h.step(ev.VoteReceived(newcomer_vote, 5)), ev.Ignored)]
    x = h.block(1)
    h.step(ev.BlockFetched(x, h.certificate([1, 2, 3], 0, x), 10))
    assert h.core.authorities == five
    assert h.core.proposer(0) == five[2]  # (height 2 + round 0) mod 5
    effects = h.step(ev.VoteReceived(h.vote(4, PREVOTE, 0, None), 20))
    assert not of_type(effects, ev.Ignored)


def test_a_certificate_is_checked_by_one_rule_with_either_verifier() -> None:
    """The core's memoising verifier and verify_commit's fresh one give the same answers."""
    h = Harness()
    h.start(0)
    x = h.block(1)
    good = h.certificate([0, 1, 2], 0, x)
    short = h.certificate([0, 1], 0, x)
    forged_first = replace(good.signatures[0], signature=bytes(64))
    forged = CommitCertificate(1, 0, x.hash, (forged_first, *good.signatures[1:]))
    for certificate, code in [(good, None), (short, "certificate_without_quorum"),
                              (forged, "certificate_bad_signature")]:
        problem = certificate_problem(certificate, h.keys, lambda m: m.signature_valid(CHAIN))
        assert (problem[0] if problem else None) == code
        try:
            verify_commit(certificate, CHAIN, h.keys)
            verified = True
        except VerificationError:
            verified = False
        assert (problem is None) == verified


def test_core_never_steps_before_start() -> None:
    h = Harness()
    core = Core(IDENTITIES[0], CHAIN, P, h.ledger, h.committed(), None)
    with pytest.raises(AssertionError):
        core.step(ev.TxsAvailable(0))


def test_restarted_proposer_resends_the_very_proposal_it_signed() -> None:
    h = Harness(me=1)  # proposer of height 1, round 0
    h.start(0)
    [(proposal, block)] = own_proposals(h.txs(10))
    assert block is not None
    h.votes([0, 2], PREVOTE, 0, block.hash, 20)  # locks its own block in round 0
    assert h.core.locked_round == 0
    effects = h.restart(30)
    assert own_proposals(effects) == [(proposal, block)]  # same pol_round, same signature
    assert not of_type(effects, ev.PersistSafety)


def test_restarted_locked_core_reproposes_its_valid_block_and_resends_the_proof() -> None:
    h, x_hash = locked_on_x_in_round_zero()
    h.restart(700)  # the proposal and the round-0 prevotes are forgotten, except as persisted
    effects = h.votes([2, 3], PRECOMMIT, 3, None, 710)  # more than a third are in round 3
    [(proposal, block)] = own_proposals(effects)  # round 3: authority 0 proposes
    assert (proposal.round, proposal.pol_round, proposal.block_hash) == (3, 0, x_hash)
    assert block is not None and block.hash == x_hash
    resent = own_votes(h.timeout(ev.STEP_REBROADCAST, 2000), PREVOTE)
    proof = {vote.signer for vote in resent if vote.round == 0 and vote.block_hash == x_hash}
    assert proof == {h.keys[0], h.keys[1], h.keys[2]}


def test_the_core_checks_its_invariants_after_every_step() -> None:
    """A broken invariant is our bug: the step raises instead of going on (lock newer than
    the valid value here; the others are height = committed + 1 and each guard persisted
    before what it covers goes out)."""
    h = Harness()
    h.start(0)
    h.core.locked_round, h.core.valid_round = 0, -1
    with pytest.raises(AssertionError):
        h.step(ev.TxsAvailable(10))
