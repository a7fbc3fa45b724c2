"""The emergency key's rounds over a ledger in memory (ledger/rules/rounds.py, crypto/dkg.py):
a network without a dealer generates its key, a bad dealer is excluded by a proven complaint,
a silent authority is left out when its phase times out, refreshes keep the key and make old
shares useless with new ones, and a new authority set gets the key. Each authority's part is
played as its node would play it (tests/rounds.py); real nodes do it in test_keygen.py."""

from __future__ import annotations

from healthnode.crypto import threshold
from healthnode.ledger import rules
from healthnode.ledger.rules import rounds
from healthnode.ledger.state import ROUND_DEAL, ROUND_EPOCH_KEY, ROUND_VERDICT
from healthnode.protocol.genesis import RULES_NEWEST
from healthnode.protocol.tx import EmergencyPolicy, ValidatorVote
from tests import rounds as helper
from tests.chain import AUTHORITIES, CHAIN_ID, World, emergency_dealing, identity, make_genesis

A0, A1, A2, A3 = AUTHORITIES
PATIENT = identity("patient-x")
IDLE_MS = 5000  # an idle network's heartbeat: 12 blocks of it are the phase's minute


def founding_world() -> World:
    world = World(make_genesis(emergency=False))
    assert world.genesis.format == RULES_NEWEST >= rounds.ROUNDS_FROM
    world.commit()  # the first round opens at the end of block 1
    found = helper.open_round(world)
    assert (found.number, found.purpose, found.phase) == (1, "found", "keys")
    return world


def opens(world: World, key: bytes, shares: dict[bytes, int], patient: bytes = b"p" * 32
          ) -> bool:
    """Whether `shares` (a threshold of them) open a wrap made for the key in force."""
    label = threshold.WrapLabel(CHAIN_ID, patient, b"c" * 32)
    wrapped = threshold.wrap(key, b"\x07" * 32, label)
    ephemeral = threshold.wrap_ephemeral(wrapped)
    state_key = rules.emergency_key(world.state)
    assert state_key is not None and state_key.key.public_key == key
    index = {c.authority: c.index for c in state_key.key.commitments}
    partials = {index[holder]: threshold.mul(share, ephemeral) for holder, share in shares.items()}
    combined = threshold.combine(partials, state_key.key.threshold)
    return threshold.open_wrap(key, wrapped, label, combined) == b"\x07" * 32


def lagrange_secret(shares_by_index: dict[int, int]) -> int:
    """The interpolation at 0, done here and not by the product's code."""
    total = 0
    for i, share in shares_by_index.items():
        numerator, denominator = 1, 1
        for j in shares_by_index:
            if j != i:
                numerator = numerator * j % threshold.L
                denominator = denominator * (j - i) % threshold.L
        total += share * numerator * pow(denominator, -1, threshold.L)
    return total % threshold.L


def test_four_authorities_generate_the_key_and_no_one_deals_it() -> None:
    world = founding_world()
    assert rules.emergency_key(world.state) is None
    refusal = rules.check_tx(world.state, world.tx(EmergencyPolicy, PATIENT, allowed_tags=(),
                                                   wraps=()), world.now())
    assert refusal is not None and refusal.reason == "no_emergency_key"
    assert "generating the emergency key (round 1, keys phase)" in refusal.detail
    shares = helper.run_round(world, AUTHORITIES)
    key = rules.emergency_key(world.state)
    assert key is not None and key.key.threshold == 3 and key.dealers == (1, 2, 3, 4)
    assert [c.authority for c in key.key.commitments] == [a.public_key for a in AUTHORITIES]
    # The key is the sum of the four dealers' secrets: t shares give its logarithm, which no
    # dealer knew, and every 3 of the 4 shares open a wrap made for it.
    by_index = {c.index: shares[c.authority] for c in key.key.commitments}
    assert threshold.base_mul(lagrange_secret({i: by_index[i] for i in (1, 2, 3)})) == \
        key.key.public_key
    for left_out in AUTHORITIES:
        assert opens(world, key.key.public_key, {k: v for k, v in shares.items()
                                                 if k != left_out.public_key})
    assert rounds.current_round(world.state).outcome == rounds.DONE  # type: ignore[union-attr]
    # Nothing more happens: no round opens while the holders are the authorities.
    world.commit()
    assert rounds.current_round(world.state).number == 1  # type: ignore[union-attr]


def test_a_bad_dealer_is_excluded_by_a_proven_complaint_and_the_key_still_works() -> None:
    world = founding_world()

    def wrong_for_a1(index: int, value: int) -> int:
        return value + 1 if index == 2 else value

    shares = helper.run_round(world, AUTHORITIES, tampers={A3.public_key: wrong_for_a1})
    deals = {d.dealer: d for d in rounds.round_deals(world.state, 1)}
    assert deals[A3.public_key].disqualified_by == A1.public_key
    assert all(deals[a.public_key].disqualified_by is None for a in (A0, A1, A2))
    key = rules.emergency_key(world.state)
    assert key is not None and key.dealers == (1, 2, 3)  # A3's dealing is not in the key
    # Every holder, A3 too, combines the three good dealings: its share is good.
    assert len(shares) == 4 and opens(world, key.key.public_key, shares)


def test_a_silent_authority_is_left_out_when_the_keys_phase_times_out() -> None:
    world = founding_world()
    world.commit(*[helper.epoch_key_tx(world, a) for a in (A0, A1, A2)], advance_ms=IDLE_MS)
    for _ in range(rounds.ROUND_PHASE_BLOCKS - 2):
        world.commit(advance_ms=IDLE_MS)
        assert helper.open_round(world).phase == "keys"
    world.commit(advance_ms=IDLE_MS)
    found = helper.open_round(world)
    assert found.phase == "deals" and found.recipients == (1, 2, 3)
    world.commit(*[helper.deal_tx(world, a) for a in (A0, A1, A2)])
    opened = {a.public_key: helper.my_subshares(world, a, found.number) for a in (A0, A1, A2)}
    world.commit(*[helper.verdict_tx(world, a) for a in (A0, A1, A2)])
    key = rules.emergency_key(world.state)
    assert key is not None and [c.authority for c in key.key.commitments] == \
        [A0.public_key, A1.public_key, A2.public_key]
    shares = {member: sum(subs.values()) % threshold.L for member, subs in opened.items()}
    assert opens(world, key.key.public_key, shares)
    # The holders are not the authority set: a re-sharing brings A3 in when it comes back,
    # but not in rounds back to back while it is away: the next waits ROUND_RETRY_BLOCKS.
    closed_at = world.height
    while world.height < closed_at + rounds.ROUND_RETRY_BLOCKS - 1:
        world.commit(advance_ms=IDLE_MS)
        assert not rounds.round_is_open(rounds.current_round(world.state))
    world.commit(advance_ms=IDLE_MS)
    assert helper.open_round(world).purpose == "reshare"
    new = helper.run_round(world, AUTHORITIES, shares=shares)  # A3 is back
    assert set(new) == {a.public_key for a in AUTHORITIES}
    assert opens(world, key.key.public_key, new)


def test_too_few_epoch_keys_fail_the_round_and_the_next_one_opens() -> None:
    world = founding_world()
    world.commit(*[helper.epoch_key_tx(world, a) for a in (A0, A1)], advance_ms=IDLE_MS)
    for _ in range(rounds.ROUND_PHASE_BLOCKS - 1):
        world.commit(advance_ms=IDLE_MS)
    failed = rounds.current_round(world.state)
    assert failed is not None and failed.number == 1 and failed.outcome == "2 epoch keys, 3 needed"
    assert rules.emergency_key(world.state) is None
    for _ in range(rounds.ROUND_RETRY_BLOCKS):  # the next round waits, then opens
        world.commit(advance_ms=IDLE_MS)
    found = helper.open_round(world)
    assert (found.number, found.phase) == (2, "keys")
    # Round 1's parts stay until round 3 opens; then they go.
    assert list(world.state.scan(ROUND_EPOCH_KEY + (1).to_bytes(8, "big")))
    for _ in range(rounds.ROUND_PHASE_BLOCKS + rounds.ROUND_RETRY_BLOCKS):
        world.commit(advance_ms=IDLE_MS)
    assert helper.open_round(world).number == 3
    assert not list(world.state.scan(ROUND_EPOCH_KEY + (1).to_bytes(8, "big")))


def test_refreshes_keep_the_key_and_shares_of_two_epochs_combine_to_nothing() -> None:
    world = World()  # a dealt key: a refresh works on any key, dealt or generated
    dealing = emergency_dealing(4)
    shares = {a.public_key: dealing.shares[i] for i, a in enumerate(AUTHORITIES)}
    public_key = dealing.public_key
    epochs = [shares]
    for _ in range(2):
        world.commit(*helper.refresh_votes(world, (A0, A1)))
        assert not rounds.round_is_open(rounds.current_round(world.state))  # 2 of 3 asked
        world.commit(*helper.refresh_votes(world, (A2,)))
        assert helper.open_round(world).purpose == "refresh"
        shares = helper.run_round(world, AUTHORITIES, shares=shares)
        key = rules.emergency_key(world.state)
        assert key is not None and key.key.public_key == public_key
        assert opens(world, public_key, shares)
        epochs.append(shares)
    index = {a.public_key: i + 1 for i, a in enumerate(AUTHORITIES)}
    secret = lagrange_secret({index[k]: v for k, v in list(epochs[2].items())[:3]})
    assert threshold.base_mul(secret) == public_key
    first, last = epochs[0], epochs[2]
    # Two shares of the first epoch and one of the last: not the secret.
    mixed = {1: first[A0.public_key], 2: first[A1.public_key], 3: last[A2.public_key]}
    assert threshold.base_mul(lagrange_secret(mixed)) != public_key
    assert all(first[k] != last[k] for k in first)


def test_a_new_authority_set_gets_the_same_key_in_a_round() -> None:
    world = World()
    dealing = emergency_dealing(4)
    shares = {a.public_key: dealing.shares[i] for i, a in enumerate(AUTHORITIES)}
    world.commit(*[world.tx(ValidatorVote, signer, action="remove", subject=A3.public_key,
                            name="hospital-3") for signer in (A0, A1, A2)])
    world.commit()  # the new set holds from two blocks after the vote
    found = helper.open_round(world)
    assert found.purpose == "reshare" and found.target == (A0.public_key, A1.public_key,
                                                           A2.public_key)
    new = helper.run_round(world, AUTHORITIES, shares=shares)  # A3 still deals its share
    key = rules.emergency_key(world.state)
    assert key is not None and key.key.public_key == dealing.public_key
    assert set(new) == {A0.public_key, A1.public_key, A2.public_key}
    assert opens(world, dealing.public_key, new)


def test_a_round_whose_authority_set_changes_fails_and_a_new_one_follows() -> None:
    world = founding_world()
    world.commit(*[helper.epoch_key_tx(world, a) for a in AUTHORITIES])
    world.commit(*[world.tx(ValidatorVote, signer, action="remove", subject=A3.public_key,
                            name="hospital-3") for signer in (A0, A1, A2)])
    world.commit()
    found = helper.open_round(world)
    assert (found.number, found.purpose, found.phase) == (2, "found", "keys")
    assert found.target == (A0.public_key, A1.public_key, A2.public_key)
    helper.run_round(world, (A0, A1, A2))
    key = rules.emergency_key(world.state)
    assert key is not None and len(key.key.commitments) == 3


def test_a_sub_share_that_opens_to_zero_is_complained_of_and_nothing_fails() -> None:
    """A3 sends A0 a sub-share that opens to 0 (its mask as the masked value, with a good proof
    of r): A0's check and complaint, and the ledger's check of it, are refusals as any other."""
    world = founding_world()
    world.commit(*[helper.epoch_key_tx(world, a) for a in AUTHORITIES])
    world.commit(*[helper.deal_tx(world, a) for a in (A0, A1, A2)],
                 helper.deal_tx(world, A3, tamper=lambda j, v: 0 if j == 1 else v))
    world.commit(*[helper.verdict_tx(world, a) for a in AUTHORITIES])
    deals = {d.dealer: d for d in rounds.round_deals(world.state, 1)}
    assert deals[A3.public_key].disqualified_by == A0.public_key
    key = rules.emergency_key(world.state)
    assert key is not None and key.dealers == (1, 2, 3)


def test_twenty_refreshes_leave_at_most_two_rounds_of_parts_in_the_state() -> None:
    """A network that refreshes for months: each round's epoch keys, dealings and verdicts go
    when the round after next opens, so the state holds at most two rounds' parts, whatever the
    number of rounds (and the key stays the key)."""
    world = World()
    dealing = emergency_dealing(4)
    shares = {a.public_key: dealing.shares[i] for i, a in enumerate(AUTHORITIES)}
    for _ in range(20):
        world.commit(*helper.refresh_votes(world, (A0, A1, A2)))
        shares = helper.run_round(world, AUTHORITIES, shares=shares)
        parts = [key for prefix in (ROUND_EPOCH_KEY, ROUND_DEAL, ROUND_VERDICT)
                 for key, _ in world.state.scan(prefix)]
        assert len(parts) <= 2 * 3 * len(AUTHORITIES)
    key = rules.emergency_key(world.state)
    assert key is not None and key.key.public_key == dealing.public_key
    assert rounds.current_round(world.state).number == 20  # type: ignore[union-attr]
    assert opens(world, dealing.public_key, shares)
