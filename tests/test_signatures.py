"""Signatures: bound to the signer, the chain id, the domain and every field."""

from __future__ import annotations

from typing import Any

import nacl.exceptions
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from healthnode import crypto
from healthnode.protocol import block, schema, signed
from tests import strategies

SIGNED_CLASSES = [cls for cls in schema.registered_messages() if issubclass(cls, signed.Signed)]
IDENTITY = crypto.Identity.from_seed(bytes(range(32)))


def test_every_transaction_vote_and_proposal_is_signed() -> None:
    names = {cls.__name__ for cls in SIGNED_CLASSES}
    assert {"ProviderRegister", "ProviderRevoke", "RecordAnchor", "ConsentGrant",
            "ConsentRevoke", "AccessLog", "RecordErase", "ValidatorVote",
            "Vote", "Proposal"} <= names


@pytest.mark.parametrize("cls", SIGNED_CLASSES, ids=lambda cls: cls.__name__)
@settings(max_examples=25, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_signature_over_one_chain_id_fails_on_another(cls: type[Any], data: st.DataObject) -> None:
    message = data.draw(strategies.for_message(cls)).sign(IDENTITY, "chain-a")
    assert message.signature_valid("chain-a")
    assert not message.signature_valid("chain-b")


@pytest.mark.parametrize("cls", SIGNED_CLASSES, ids=lambda cls: cls.__name__)
@settings(max_examples=25, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_tampering_with_any_field_breaks_the_signature(cls: type[Any],
                                                       data: st.DataObject) -> None:
    message = data.draw(strategies.for_message(cls)).sign(IDENTITY, "chain-a")
    field, spec = data.draw(st.sampled_from(cls.WIRE_FIELDS[:-1]))
    other = data.draw(strategies.for_spec(spec).filter(lambda v: v != getattr(message, field)))
    tampered = signed.replace(message, **{field: other})
    assert not tampered.signature_valid("chain-a")


def test_signature_from_another_key_fails() -> None:
    vote = block.Vote(block.PREVOTE, 3, 0, bytes(32), b"").sign(IDENTITY, "c")
    impostor = crypto.Identity.from_seed(b"\x01" * 32)
    forged = signed.replace(vote, signer=impostor.public_key)
    assert not forged.signature_valid("c")


def test_domain_tags_separate_kinds_of_signed_objects() -> None:
    wire = [1, 2, 3]
    signature = IDENTITY.sign(crypto.DOMAIN_VOTE, "c", wire)
    assert crypto.verify(IDENTITY.public_key, signature, crypto.DOMAIN_VOTE, "c", wire)
    assert not crypto.verify(IDENTITY.public_key, signature, crypto.DOMAIN_PROPOSAL, "c", wire)
    assert not crypto.verify(IDENTITY.public_key, signature, crypto.DOMAIN_TX, "c", wire)


def test_malformed_public_key_or_signature_verifies_false_without_raising() -> None:
    assert not crypto.verify(b"\x00" * 32, b"\x00" * 64, crypto.DOMAIN_TX, "c", [])
    assert not crypto.verify(b"short", b"\x00" * 64, crypto.DOMAIN_TX, "c", [])
    assert not crypto.verify(IDENTITY.public_key, b"short", crypto.DOMAIN_TX, "c", [])


def test_identity_repr_never_shows_the_secret() -> None:
    assert IDENTITY.seed.hex() not in repr(IDENTITY)


def test_sealed_box_to_the_ed25519_identity_opens_with_its_derived_x25519_key() -> None:
    patient = crypto.Identity.generate()
    data_key = bytes(range(32))
    sealed = crypto.seal(patient.public_key, data_key)
    assert len(sealed) == 80
    assert crypto.unseal(patient, sealed) == data_key
    with pytest.raises(nacl.exceptions.CryptoError):
        crypto.unseal(crypto.Identity.generate(), sealed)


def test_peer_id_matches_libp2p() -> None:
    from libp2p.crypto.ed25519 import Ed25519PublicKey
    from libp2p.peer.id import ID

    for _ in range(5):
        public_key = crypto.Identity.generate().public_key
        expected = ID.from_pubkey(Ed25519PublicKey.from_bytes(public_key)).to_base58()
        assert crypto.peer_id(public_key) == expected
