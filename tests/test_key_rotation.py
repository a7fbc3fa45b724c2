"""A hospital replaces its node key (issue 29; ledger/rules/rotation.py, node/rotation.py,
docs/operations.md, "Rotating a node key").

Over a ledger in memory (tests/chain.py): the authority set and the emergency key's share
commitment change at exactly the rotation's height, and from there the old key's transactions
are refused and its votes and precommits count for nothing; a rotation reaches the sets decided
for later heights; a key voted out before its rotation's height is only retired.
"""

from __future__ import annotations

from healthnode.consensus.events import Effect, Ignored
from healthnode.consensus.height import HeightState
from healthnode.crypto import Identity
from healthnode.ledger import rules
from healthnode.ledger.rules import Reason, rounds
from healthnode.ledger.state import EMERGENCY_REFRESH, read
from healthnode.protocol import block as blocks
from healthnode.protocol.block import PREVOTE, CommitCertificate, Vote
from healthnode.protocol.genesis import Authority
from healthnode.protocol.state import EmergencyRefreshVotes, KeyRotation
from healthnode.protocol.tx import AnyTx, EmergencyRefresh, ProviderRegister, ValidatorVote
from tests.chain import AUTHORITIES, CHAIN_ID, World, identity

A0, A1, A2, A3 = AUTHORITIES
NEW = identity("hospital-2-new-node-key")
NEWCOMER = identity("new-hospital")
PROVIDER = identity("a-provider")


def _register(world: World, signer: Identity, provider: bytes) -> ProviderRegister:
    tx: ProviderRegister = world.tx(ProviderRegister, signer, provider=provider,
                                    roles=("clinician",), display_name="Dr Who")
    return tx


def _reason(world: World, tx: AnyTx) -> Reason | None:
    refusal = world.check(tx)
    return None if refusal is None else Reason(refusal.reason)


def test_the_set_and_the_share_commitment_change_at_exactly_the_rotation_height() -> None:
    world = World()
    key_before = rules.emergency_key(world.state)
    assert key_before is not None
    # hospital-2 asks for a refresh of the shares (one of the three needed) before it rotates
    world.commit(world.tx(EmergencyRefresh, A2, epoch=key_before.epoch))
    height = world.height + 5
    world.commit(world.rotate(A2, NEW, height))
    decided = world.height
    old_set = rules.authority_set(world.state, height - 1)

    world.commit_until(height - 2)
    assert rules.pending_rotations(world.state) == [
        (A2.public_key, KeyRotation(NEW.public_key, height, decided))]
    assert rules.authority_set(world.state, height) == old_set
    assert rules.emergency_key(world.state) == key_before
    assert _reason(world, _register(world, A2, PROVIDER.public_key)) is None  # in block H-1
    world.nonces[A2.public_key] -= 1  # (only checked)

    world.commit()  # block H-1: the rotation takes effect at its end
    assert world.height == height - 1
    new_set = rules.authority_set(world.state, height)
    assert new_set.authorities == tuple(
        Authority(a.name, NEW.public_key) if a.public_key == A2.public_key else a
        for a in old_set.authorities)  # same name, same place
    assert rules.authority_set(world.state, height - 1) == old_set
    assert rules.pending_rotations(world.state) == []
    assert rules.rotated_to(world.state, A2.public_key) == KeyRotation(NEW.public_key, height,
                                                                       decided)
    key_after = rules.emergency_key(world.state)
    assert key_after is not None
    assert key_after.key.public_key == key_before.key.public_key
    assert (key_after.epoch, key_after.dealers) == (key_before.epoch, key_before.dealers)
    assert [(c.index, c.commitment) for c in key_after.key.commitments] == \
        [(c.index, c.commitment) for c in key_before.key.commitments]
    assert [c.authority for c in key_after.key.commitments] == \
        [NEW.public_key if c.authority == A2.public_key else c.authority
         for c in key_before.key.commitments]
    assert rounds.current_round(world.state) is None  # no re-sharing opened for it
    votes = read(world.state, EMERGENCY_REFRESH, EmergencyRefreshVotes)
    assert votes is not None and votes.voters == (NEW.public_key,)

    # From H the old key signs nothing; its hospital signs with the new key, once per request.
    refused = world.check(_register(world, A2, PROVIDER.public_key))
    assert refused is not None and refused.reason == Reason.KEY_ROTATED
    assert f"replaced by {NEW.public_key.hex()[:16]} from height {height}" in refused.detail
    assert _reason(world, world.tx(EmergencyRefresh, NEW, epoch=key_before.epoch)) == \
        Reason.ALREADY_VOTED
    world.nonces[NEW.public_key] -= 1
    world.commit(_register(world, NEW, PROVIDER.public_key))  # block H
    assert world.blocks[-1][0].header.validators_hash == blocks.validators_hash(new_set.keys)
    assert _reason(world, world.tx(ValidatorVote, A2, action="add",
                                   subject=NEWCOMER.public_key, name="new")) == \
        Reason.KEY_ROTATED

    # The consensus core counts no vote of the old key at H, and no certificate holds one.
    state = HeightState(rules.authorities(world.state, height))
    out: list[Effect] = []
    old_vote = Vote(PREVOTE, height, 0, None, b"").sign(A2, CHAIN_ID)
    assert not state.admit(old_vote, lambda m: m.signature_valid(CHAIN_ID), out)
    assert out == [Ignored("not_authority")]
    assert state.admit(Vote(PREVOTE, height, 0, None, b"").sign(NEW, CHAIN_ID),
                       lambda m: m.signature_valid(CHAIN_ID), out)
    block_h = world.blocks[-1][0]
    with_old = CommitCertificate.signed_by(block_h, (A0, A1, A2), CHAIN_ID, 0)
    with_new = CommitCertificate.signed_by(block_h, (A0, A1, NEW), CHAIN_ID, 0)
    verify = lambda m: m.signature_valid(CHAIN_ID)  # noqa: E731
    problem = blocks.certificate_problem(with_old, new_set.keys, verify)
    assert problem is not None and problem[0] == "certificate_signer_not_authority"
    assert blocks.certificate_problem(with_new, new_set.keys, verify) is None

    world.commit_until(height + 3)
    assert rounds.current_round(world.state) is None


def test_a_rotation_reaches_the_sets_decided_for_later_heights() -> None:
    """A newcomer voted in by the block before the rotation's height lands one height after
    it, in a set computed before the rotation took effect: that set gets the new key too."""
    world = World()
    height = world.height + 4
    world.commit(world.rotate(A2, NEW, height),
                 *(world.tx(ValidatorVote, signer, action="add", subject=NEWCOMER.public_key,
                            name="new") for signer in (A0, A1)))
    world.commit_until(height - 2)
    world.commit(world.tx(ValidatorVote, A3, action="add", subject=NEWCOMER.public_key,
                          name="new"))  # block H-1: the quorum, for H+1
    assert rules.authorities(world.state, height) == (
        A0.public_key, A1.public_key, NEW.public_key, A3.public_key)
    assert rules.authorities(world.state, height + 1) == (
        A0.public_key, A1.public_key, NEW.public_key, A3.public_key, NEWCOMER.public_key)


def test_a_key_voted_out_before_its_rotation_is_only_retired() -> None:
    """The other authorities' remedy against a rotation signed with a stolen key: they vote
    the key out before the rotation's height. The new key then takes no place and no share,
    the old one is retired all the same, and the key moves to the remaining set."""
    world = World()
    height = world.height + 6
    world.commit(world.rotate(A3, NEW, height))
    world.commit(*(world.tx(ValidatorVote, signer, action="remove", subject=A3.public_key,
                            name="hospital-3") for signer in (A0, A1, A2)))
    world.commit_until(height - 1)
    assert rules.authorities(world.state, height) == (A0.public_key, A1.public_key,
                                                      A2.public_key)
    key = rules.emergency_key(world.state)
    assert key is not None
    assert NEW.public_key not in [c.authority for c in key.key.commitments]
    assert rules.rotated_to(world.state, A3.public_key) is not None
    assert _reason(world, world.tx(EmergencyRefresh, A3, epoch=key.epoch)) == Reason.KEY_ROTATED
    found = rounds.current_round(world.state)
    assert found is not None and found.purpose == "reshare"
