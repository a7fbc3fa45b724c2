"""Threshold ElGamal for break-glass: any t of n shares open a wrap, fewer do not, and a wrong
decryption share is caught by its proof."""

from __future__ import annotations

import itertools
import os

import pytest

from healthnode import threshold as T


@pytest.fixture(scope="module")
def dealing() -> T.Dealing:
    return T.deal(3, 4)


def _partials(dealing: T.Dealing, ephemeral: bytes, indexes: tuple[int, ...]) -> dict[int, bytes]:
    partials = {}
    for index in indexes:
        partial, proof = T.decryption_share(dealing.shares[index - 1], ephemeral)
        assert T.verify_share(dealing.commitments[index - 1], ephemeral, partial, proof)
        partials[index] = partial
    return partials


def test_every_set_of_t_shares_opens_the_wrap(dealing: T.Dealing) -> None:
    data_key = os.urandom(32)
    wrapped = T.wrap(dealing.public_key, data_key)
    ephemeral = T.wrap_ephemeral(wrapped)
    for indexes in itertools.combinations(range(1, 5), 3):
        shared = T.combine(_partials(dealing, ephemeral, indexes), 3)
        assert T.open_wrap(dealing.public_key, wrapped, shared) == data_key


def test_fewer_than_t_shares_do_not(dealing: T.Dealing) -> None:
    wrapped = T.wrap(dealing.public_key, os.urandom(32))
    ephemeral = T.wrap_ephemeral(wrapped)
    partials = _partials(dealing, ephemeral, (1, 2))
    with pytest.raises(T.ThresholdError, match="3 needed"):
        T.combine(partials, 3)
    with pytest.raises(T.ThresholdError, match="does not open"):
        T.open_wrap(dealing.public_key, wrapped, T.combine(partials, 2))


def test_a_share_made_with_a_wrong_secret_fails_its_proof(dealing: T.Dealing) -> None:
    ephemeral = T.wrap_ephemeral(T.wrap(dealing.public_key, os.urandom(32)))
    partial, proof = T.decryption_share((dealing.shares[0] + 1) % T.L, ephemeral)
    assert not T.verify_share(dealing.commitments[0], ephemeral, partial, proof)


def test_a_tampered_share_or_proof_fails(dealing: T.Dealing) -> None:
    ephemeral = T.wrap_ephemeral(T.wrap(dealing.public_key, os.urandom(32)))
    partial, proof = T.decryption_share(dealing.shares[1], ephemeral)
    other, _ = T.decryption_share(dealing.shares[2], ephemeral)
    assert not T.verify_share(dealing.commitments[1], ephemeral, other, proof)
    assert not T.verify_share(dealing.commitments[2], ephemeral, partial, proof)
    flipped = bytes([proof[0] ^ 1]) + proof[1:]
    assert not T.verify_share(dealing.commitments[1], ephemeral, partial, flipped)
    assert not T.verify_share(dealing.commitments[1], ephemeral, b"\x00" * 32, proof)
    assert not T.verify_share(dealing.commitments[1], ephemeral, partial, b"short")


def test_garbage_points_are_refused() -> None:
    with pytest.raises(T.ThresholdError):
        T.wrap_ephemeral(b"\xff" * T.WRAP_BYTES)
    with pytest.raises(T.ThresholdError):
        T.wrap(b"\x01" + bytes(31), os.urandom(32))


def test_one_share_alone_is_no_key(dealing: T.Dealing) -> None:
    """A single holder's share is not the secret: its commitment differs from the public key."""
    assert all(c != dealing.public_key for c in dealing.commitments)


def test_the_threshold_is_the_bft_quorum() -> None:
    assert [T.quorum_threshold(n) for n in (1, 3, 4, 7, 10)] == [1, 3, 3, 5, 7]


def test_resharing_to_a_new_set_keeps_the_key_and_opens_old_wraps(dealing: T.Dealing) -> None:
    data_key = os.urandom(32)
    wrapped = T.wrap(dealing.public_key, data_key)
    ephemeral = T.wrap_ephemeral(wrapped)
    dealers = {i: T.redeal(dealing.shares[i - 1], 4, 5) for i in (1, 3, 4)}  # 4 -> 5 holders
    for i, redealt in dealers.items():
        assert redealt.coefficients[0] == dealing.commitments[i - 1]
        assert all(T.subshare_valid(redealt.coefficients, j, redealt.subshares[j - 1])
                   for j in range(1, 6))
    commitments = T.reshared_commitments({i: d.coefficients for i, d in dealers.items()}, 5)
    shares = {j: T.combine_subshares({i: d.subshares[j - 1] for i, d in dealers.items()})
              for j in range(1, 6)}
    assert all(T.base_mul(shares[j]) == commitments[j - 1] for j in shares)
    partials = {j: T.mul(shares[j], ephemeral) for j in (2, 3, 4, 5)}  # new threshold: 4
    assert T.open_wrap(dealing.public_key, wrapped, T.combine(partials, 4)) == data_key
    with pytest.raises(T.ThresholdError):  # three new shares are not enough any more
        T.open_wrap(dealing.public_key, wrapped, T.combine(dict(list(partials.items())[:3]), 3))


def test_a_wrong_subshare_is_detected(dealing: T.Dealing) -> None:
    redealt = T.redeal(dealing.shares[0], 3, 4)
    assert not T.subshare_valid(redealt.coefficients, 2, (redealt.subshares[1] + 1) % T.L)
