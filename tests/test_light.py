"""The light client's header checks (healthnode/ledger/light.py): from a pinned genesis through
certified headers, adjacent and skipping, across a change of the authority set; and every lie a
node could tell about a header, its certificate, its authorities or the next set."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from healthnode.crypto import Identity, digest
from healthnode.ledger import light, rules, smt
from healthnode.ledger.state import MemoryState
from healthnode.protocol.block import CommitCertificate, Header
from healthnode.protocol.genesis import Authority
from healthnode.protocol.signed import replace
from healthnode.protocol.state import AuthoritySet
from healthnode.protocol.tx import ProviderRegister, ValidatorVote
from tests.chain import AUTHORITIES, World, certify, identity

A0, A1, A2, A3 = AUTHORITIES
PROVIDER = identity("light-provider")


def served(world: World, height: int, signers: Sequence[Identity] = AUTHORITIES
           ) -> tuple[Header, CommitCertificate, tuple[bytes, ...], light.NextSetProof]:
    """What an honest node serves for `height`: the header, a certificate by `signers`, the
    header's authority set, and the proof of the next set at that header."""
    block = world.blocks[height - 1][0]
    keys = rules.authorities(_view(world, height - 1), height)
    key = light.next_set_key(height)
    root = rules.tree_root_at(world.state, height)
    proof = smt.prove(world.state, root, digest(key))
    value = world.state_at(height).get(key)
    return block.header, certify(block, signers), keys, light.NextSetProof(value, proof)


def _view(world: World, height: int) -> MemoryState:
    return MemoryState(world.state_at(height))


@pytest.fixture
def world() -> World:
    w = World()
    for n in range(4):
        w.commit(w.tx(ProviderRegister, AUTHORITIES[n % 4], provider=identity(f"p{n}").public_key,
                      roles=("clinician",), display_name=f"Dr {n}"))
    return w


def test_from_the_genesis_through_every_header(world: World) -> None:
    head = light.from_genesis(world.genesis)
    for height in range(1, world.height + 1):
        head = light.advance(head, *served(world, height))
    assert head.height == world.height and head.state_root == world.blocks[-1][0].header.state_hash


def test_skipping_to_a_later_header(world: World) -> None:
    head = light.advance(light.from_genesis(world.genesis), *served(world, world.height))
    assert head.height == world.height


@pytest.mark.parametrize("lie, message", [
    (lambda h, c, k, n: (replace(h, chain_id="other-chain"), c, k, n), "chain"),
    (lambda h, c, k, n: (h, c, k[:3], n), "validators_hash"),
    (lambda h, c, k, n: (replace(h, time_ms=h.time_ms + 1), c, k, n), "another header"),
    (lambda h, c, k, n: (h, replace(c, signatures=c.signatures[:2]), k, n), "precommits"),
    (lambda h, c, k, n: (h, c, k, light.NextSetProof(AuthoritySet(
        (Authority("evil", Identity.generate().public_key),)).encode(), n.proof)),
     "next authority set"),
])
def test_every_lie_about_a_header_is_refused(world: World, lie: object, message: str) -> None:
    head = light.from_genesis(world.genesis)
    for height in range(1, 3):
        head = light.advance(head, *served(world, height))
    with pytest.raises(light.LightError, match=message):
        light.advance(head, *lie(*served(world, 3)))  # type: ignore[operator]


def test_a_header_that_does_not_link_to_the_trusted_one_is_refused(world: World) -> None:
    head = light.advance(light.from_genesis(world.genesis), *served(world, 1))
    forged = replace(head, block_hash=b"\x01" * 32)
    with pytest.raises(light.LightError, match="prev_hash"):
        light.advance(forged, *served(world, 2))
    with pytest.raises(light.LightError, match="not above"):
        light.advance(head, *served(world, 1))


def test_a_network_with_the_same_chain_id_and_other_keys_is_refused(world: World) -> None:
    """Its own authorities sign its headers properly, but none of the pinned ones does."""
    strangers = tuple(Identity.generate() for _ in range(4))
    other = World(genesis=replace(world.genesis, authorities=tuple(
        Authority(f"h{i}", s.public_key) for i, s in enumerate(strangers))))
    other.commit()
    other.commit()
    block = other.blocks[1][0]
    keys = tuple(s.public_key for s in strangers)
    key = light.next_set_key(2)
    proof = smt.prove(other.state, rules.tree_root_at(other.state, 2), digest(key))
    with pytest.raises(light.LightError, match="only 0 of the 4 trusted authorities"):
        light.advance(light.from_genesis(world.genesis), block.header,
                      certify(block, strangers), keys, light.NextSetProof(None, proof))


def test_the_authority_set_is_followed_through_a_change(world: World) -> None:
    """Three authorities vote the fourth out; from two blocks later the three sign alone. The
    light client learns the new set from the proof at the header before it, and a certificate
    by the old set is no longer enough."""
    world.commit(*[world.tx(ValidatorVote, signer, action="remove", subject=A3.public_key,
                            name="hospital-3") for signer in (A0, A1, A2)])
    for _ in range(3):
        world.commit()
    head = light.from_genesis(world.genesis)
    three = (A0, A1, A2)
    for height in range(1, world.height + 1):
        keys = rules.authorities(_view(world, height - 1), height)
        header, _, served_keys, next_set = served(world, height)
        signers = three if len(keys) == 3 else AUTHORITIES
        head = light.advance(head, header, certify(world.blocks[height - 1][0], signers),
                             served_keys, next_set)
    assert head.authorities == tuple(a.public_key for a in three)
    # A node that hides the change (says the old set goes on) is caught by the proof.
    votes_final = next(h for h in range(1, world.height + 1)
                       if world.state_at(h).get(light.next_set_key(h)) is not None)
    head = light.from_genesis(world.genesis)
    for height in range(1, votes_final):
        head = light.advance(head, *served(world, height))
    header, certificate, keys, next_set = served(world, votes_final)
    with pytest.raises(light.LightError, match="next authority set"):
        light.advance(head, header, certificate, keys, light.NextSetProof(None, next_set.proof))


def test_freshness_and_the_trusting_period(world: World) -> None:
    head = light.advance(light.from_genesis(world.genesis), *served(world, world.height))
    light.check_fresh(head, head.time_ms + 10_000, 60_000)
    with pytest.raises(light.LightError, match="old state"):
        light.check_fresh(head, head.time_ms + 61_000, 60_000)
    assert light.within_trusting_period(head, head.time_ms + light.TRUSTING_PERIOD_MS)
    assert not light.within_trusting_period(head, head.time_ms + light.TRUSTING_PERIOD_MS + 1)
