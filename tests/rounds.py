"""Test helpers for the emergency key's rounds (ledger/rules/rounds.py) over a `World`: each
authority's part as its node would play it (node/emergency.py), from fixed epoch secrets, with
ways to misbehave."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from healthnode.crypto import Identity, dkg, threshold
from healthnode.ledger import rules
from healthnode.ledger.rules import rounds
from healthnode.protocol.state import EmergencyRound
from healthnode.protocol.tx import (
    Complaint,
    EmergencyDeal,
    EmergencyEpochKey,
    EmergencyRefresh,
    EmergencyVerdict,
    EncryptedSubshare,
)
from tests.chain import CHAIN_ID, World, seeded_scalars


def epoch_secret(authority: Identity, number: int) -> int:
    """A fixed epoch secret per authority and round."""
    return int.from_bytes(authority.public_key[:16], "little") * 1009 + number


def open_round(world: World) -> EmergencyRound:
    found = rounds.current_round(world.state)
    assert found is not None and rounds.round_is_open(found), found
    return found


def epoch_key_tx(world: World, authority: Identity, number: int | None = None) -> EmergencyEpochKey:
    number = open_round(world).number if number is None else number
    secret = epoch_secret(authority, number)
    tx: EmergencyEpochKey = world.tx(
        EmergencyEpochKey, authority, round=number, public_key=threshold.base_mul(secret),
        proof=dkg.epoch_key_proof(secret, CHAIN_ID, number, authority.public_key,
                                  seeded_scalars(number)))
    return tx


Tamper = Callable[[int, int], int]  # (recipient index, sub-share) -> what is sent


def deal_tx(world: World, dealer: Identity, share: int | None = None,
            tamper: Tamper | None = None, seed: int = 5) -> EmergencyDeal:
    """`dealer`'s dealing in the open round: of `share` (a refresh or re-sharing) or of a fresh
    secret (a first round); `tamper` changes the sub-shares sent."""
    found = open_round(world)
    dealing = dkg.deal(share, found.threshold, found.recipients,
                       seeded_scalars(seed + found.number * 31 + dealer.public_key[0]))
    subshares = []
    for j in found.recipients:
        epoch_key = rounds.epoch_key_of(world.state, found.number, found.target[j - 1])
        assert epoch_key is not None
        value = dealing.subshares[j] if tamper is None else tamper(j, dealing.subshares[j])
        ephemeral, masked, proof = dkg.encrypt_subshare(
            epoch_key, value, rounds.subshare_context(CHAIN_ID, found.number,
                                                      dealer.public_key, j),
            seeded_scalars(j * 7 + found.number))
        subshares.append(EncryptedSubshare(j, ephemeral, masked, proof))
    tx: EmergencyDeal = world.tx(EmergencyDeal, dealer, round=found.number,
                                 coefficients=dealing.coefficients, subshares=tuple(subshares))
    return tx


def my_subshares(world: World, recipient: Identity, number: int) -> dict[bytes, int]:
    """The recipient's sub-share of each dealing of round `number`, by dealer."""
    found = rounds.current_round(world.state)
    assert found is not None and found.number == number
    index = rounds.recipient_index(found, recipient.public_key)
    assert index is not None
    secret = epoch_secret(recipient, number)
    opened = {}
    for dealing in rounds.round_deals(world.state, number):
        mine = next(s for s in dealing.subshares if s.index == index)
        opened[dealing.dealer] = dkg.decrypt_subshare(
            secret, mine.ephemeral, mine.masked,
            rounds.subshare_context(CHAIN_ID, number, dealing.dealer, index))
    return opened


def verdict_tx(world: World, recipient: Identity, accuse: Sequence[bytes] = ()
               ) -> EmergencyVerdict:
    """The recipient's verdict: a complaint of each dealer whose sub-share fails (and of those in
    `accuse`, founded or not)."""
    found = open_round(world)
    index = rounds.recipient_index(found, recipient.public_key)
    assert index is not None
    secret = epoch_secret(recipient, found.number)
    complaints = []
    for dealing in rounds.round_deals(world.state, found.number):
        mine = next(s for s in dealing.subshares if s.index == index)
        context = rounds.subshare_context(CHAIN_ID, found.number, dealing.dealer, index)
        value = dkg.decrypt_subshare(secret, mine.ephemeral, mine.masked, context)
        if dealing.dealer in accuse or not threshold.subshare_valid(
                dealing.coefficients, index, value):
            shared, proof = dkg.complaint_evidence(secret, mine.ephemeral, context,
                                                   seeded_scalars(3))
            complaints.append(Complaint(dealing.dealer, shared, proof))
    tx: EmergencyVerdict = world.tx(EmergencyVerdict, recipient, round=found.number,
                                    complaints=tuple(complaints))
    return tx


def refresh_votes(world: World, holders: Sequence[Identity]) -> list[Any]:
    key = rules.emergency_key(world.state)
    assert key is not None
    return [world.tx(EmergencyRefresh, holder, epoch=key.epoch) for holder in holders]


def run_round(world: World, members: Sequence[Identity], shares: dict[bytes, int] | None = None,
              tampers: dict[bytes, Tamper] | None = None) -> dict[bytes, int]:
    """Play the open round to its end with `members` acting (all honest unless `tampers`), and
    return each new holder's share, as its node would combine it. `shares`: the current holders'
    shares (a refresh or re-sharing)."""
    found = open_round(world)
    world.commit(*[epoch_key_tx(world, m) for m in members if m.public_key in found.target])
    found = open_round(world)
    assert found.phase == "deals", found
    dealers = rounds.dealers_of(world.state, found)
    world.commit(*[deal_tx(world, m, None if shares is None else shares[m.public_key],
                           (tampers or {}).get(m.public_key))
                   for m in members if m.public_key in dealers])
    found = open_round(world)
    assert found.phase == "verdicts", found
    recipients = [m for m in members if rounds.recipient_index(found, m.public_key) is not None]
    opened = {m.public_key: my_subshares(world, m, found.number) for m in recipients}
    world.commit(*[verdict_tx(world, m) for m in recipients])
    closed = rounds.current_round(world.state)
    assert closed is not None and closed.outcome == rounds.DONE, closed
    key = rules.emergency_key(world.state)
    assert key is not None
    qualified = {d.dealer: d.dealer_index for d in rounds.round_deals(world.state, found.number)
                 if d.disqualified_by is None}
    new_shares = {}
    for m in recipients:
        subs = {index: opened[m.public_key][dealer] for dealer, index in qualified.items()}
        share = dkg.joint_share(list(subs.values())) if found.purpose == "found" \
            else dkg.redealt_share(subs)
        mine = next(c for c in key.key.commitments if c.authority == m.public_key)
        assert threshold.base_mul(share) == mine.commitment
        new_shares[m.public_key] = share
    return new_shares
