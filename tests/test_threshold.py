"""Threshold ElGamal for break-glass: any t of n shares open a wrap, fewer do not, a wrong
decryption share is caught by its proof, and a wrap is bound to its label (TDH2)."""

from __future__ import annotations

import itertools
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from healthnode.crypto import threshold as T
from tests.attacks import re_randomise, relabel

LABEL = T.WrapLabel("test-chain", b"p" * 32, b"c" * 32)


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
    wrapped = T.wrap(dealing.public_key, data_key, LABEL)
    ephemeral = T.wrap_ephemeral(wrapped)
    for indexes in itertools.combinations(range(1, 5), 3):
        shared = T.combine(_partials(dealing, ephemeral, indexes), 3)
        assert T.open_wrap(dealing.public_key, wrapped, LABEL, shared) == data_key


def test_fewer_than_t_shares_do_not(dealing: T.Dealing) -> None:
    wrapped = T.wrap(dealing.public_key, os.urandom(32), LABEL)
    ephemeral = T.wrap_ephemeral(wrapped)
    partials = _partials(dealing, ephemeral, (1, 2))
    with pytest.raises(T.ThresholdError, match="3 needed"):
        T.combine(partials, 3)
    with pytest.raises(T.ThresholdError, match="does not open"):
        T.open_wrap(dealing.public_key, wrapped, LABEL, T.combine(partials, 2))


def test_a_share_made_with_a_wrong_secret_fails_its_proof(dealing: T.Dealing) -> None:
    ephemeral = T.wrap_ephemeral(T.wrap(dealing.public_key, os.urandom(32), LABEL))
    partial, proof = T.decryption_share((dealing.shares[0] + 1) % T.L, ephemeral)
    assert not T.verify_share(dealing.commitments[0], ephemeral, partial, proof)


def test_a_tampered_share_or_proof_fails(dealing: T.Dealing) -> None:
    ephemeral = T.wrap_ephemeral(T.wrap(dealing.public_key, os.urandom(32), LABEL))
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
        T.wrap(b"\x01" + bytes(31), os.urandom(32), LABEL)


def test_one_share_alone_is_no_key(dealing: T.Dealing) -> None:
    """A single holder's share is not the secret: its commitment differs from the public key."""
    assert all(c != dealing.public_key for c in dealing.commitments)


def test_the_threshold_is_the_bft_quorum() -> None:
    assert [T.quorum_threshold(n) for n in (1, 3, 4, 7, 10)] == [1, 3, 3, 5, 7]


def test_resharing_to_a_new_set_keeps_the_key_and_opens_old_wraps(dealing: T.Dealing) -> None:
    data_key = os.urandom(32)
    wrapped = T.wrap(dealing.public_key, data_key, LABEL)
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
    assert T.open_wrap(dealing.public_key, wrapped, LABEL, T.combine(partials, 4)) == data_key
    with pytest.raises(T.ThresholdError):  # three new shares are not enough any more
        T.open_wrap(dealing.public_key, wrapped, LABEL,
                    T.combine(dict(list(partials.items())[:3]), 3))


def test_a_wrong_subshare_is_detected(dealing: T.Dealing) -> None:
    redealt = T.redeal(dealing.shares[0], 3, 4)
    assert not T.subshare_valid(redealt.coefficients, 2, (redealt.subshares[1] + 1) % T.L)


# --- bound wraps (TDH2) -------------------------------------------------------------------------

def _labels_differing_from(label: T.WrapLabel) -> list[T.WrapLabel]:
    return [T.WrapLabel(label.chain_id + "x", label.patient, label.ciphertext_hash),
            T.WrapLabel(label.chain_id, bytes([label.patient[0] ^ 1]) + label.patient[1:],
                        label.ciphertext_hash),
            T.WrapLabel(label.chain_id, label.patient,
                        label.ciphertext_hash[:-1] + bytes([label.ciphertext_hash[-1] ^ 0x80]))]


def test_a_wrap_verifies_for_its_label(dealing: T.Dealing) -> None:
    wrapped = T.wrap(dealing.public_key, os.urandom(32), LABEL)
    assert len(wrapped) == T.WRAP_BYTES == 176
    assert T.check_wrap(dealing.public_key, wrapped, LABEL) == T.wrap_ephemeral(wrapped)


def test_a_proof_for_label_l_fails_for_every_other_label(dealing: T.Dealing) -> None:
    wrapped = T.wrap(dealing.public_key, os.urandom(32), LABEL)
    for other in _labels_differing_from(LABEL):
        with pytest.raises(T.WrapNotBound, match="another record"):
            T.check_wrap(dealing.public_key, wrapped, other)
        # The copier recomputes every part of the proof that needs no secret: still refused.
        with pytest.raises(T.WrapNotBound):
            T.check_wrap(dealing.public_key, relabel(dealing.public_key, wrapped, other), other)


def test_a_re_randomised_wrap_fails(dealing: T.Dealing) -> None:
    wrapped = T.wrap(dealing.public_key, os.urandom(32), LABEL)
    moved = re_randomise(wrapped, T.random_scalar())
    with pytest.raises(T.WrapNotBound):
        T.check_wrap(dealing.public_key, moved, LABEL)
    with pytest.raises(T.WrapNotBound):  # and moved to a label of the attacker's
        other = _labels_differing_from(LABEL)[1]
        T.check_wrap(dealing.public_key, relabel(dealing.public_key, moved, other), other)


def test_a_wrap_for_another_emergency_key_fails(dealing: T.Dealing) -> None:
    other_key = T.deal(3, 4).public_key
    wrapped = T.wrap(other_key, os.urandom(32), LABEL)
    with pytest.raises(T.WrapNotBound):
        T.check_wrap(dealing.public_key, wrapped, LABEL)


def test_any_flipped_byte_breaks_the_wrap(dealing: T.Dealing) -> None:
    wrapped = T.wrap(dealing.public_key, os.urandom(32), LABEL)
    for position in range(0, T.WRAP_BYTES, 5):
        damaged = bytearray(wrapped)
        damaged[position] ^= 0x01
        with pytest.raises(T.ThresholdError):
            T.check_wrap(dealing.public_key, bytes(damaged), LABEL)


def test_the_label_is_the_aead_associated_data_too(dealing: T.Dealing) -> None:
    """Even with `s·R` in hand, a wallet opens the wrap only under its own label."""
    data_key = os.urandom(32)
    wrapped = T.wrap(dealing.public_key, data_key, LABEL)
    shared = T.combine(_partials(dealing, T.wrap_ephemeral(wrapped), (1, 2, 3)), 3)
    assert T.open_wrap(dealing.public_key, wrapped, LABEL, shared) == data_key
    with pytest.raises(T.ThresholdError):
        T.open_wrap(dealing.public_key, wrapped, _labels_differing_from(LABEL)[2], shared)


_labels = st.builds(T.WrapLabel, st.text(min_size=1, max_size=64),
                    st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32))


@settings(max_examples=40, deadline=None)
@given(label=_labels, other=_labels, data_key=st.binary(min_size=32, max_size=32),
       shift=st.integers(min_value=1, max_value=T.L - 1))
def test_random_labels_and_wraps(dealing: T.Dealing, label: T.WrapLabel, other: T.WrapLabel,
                                 data_key: bytes, shift: int) -> None:
    wrapped = T.wrap(dealing.public_key, data_key, label)
    T.check_wrap(dealing.public_key, wrapped, label)
    if other != label:
        with pytest.raises(T.WrapNotBound):
            T.check_wrap(dealing.public_key, wrapped, other)
        with pytest.raises(T.WrapNotBound):
            T.check_wrap(dealing.public_key, relabel(dealing.public_key, wrapped, other), other)
    with pytest.raises(T.WrapNotBound):
        T.check_wrap(dealing.public_key, re_randomise(wrapped, shift), label)
