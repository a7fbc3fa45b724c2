"""The canonical codec: round trips, canonical form, and typed errors for every bad input."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from healthnode import codec, crypto, limits
from healthnode.codec import (
    CodecError,
    MalformedEncoding,
    MessageTooLarge,
    NonCanonicalEncoding,
    SchemaViolation,
    UnknownKind,
)
from healthnode.protocol import block, genesis, schema, tx
from tests import strategies

ALL_MESSAGES = strategies.all_messages()


def decode_any(data: bytes) -> Any:
    return schema.decode_message(data, ALL_MESSAGES, limits.BLOCK_BYTES_MAX)


@pytest.mark.parametrize("cls", ALL_MESSAGES, ids=lambda cls: cls.__name__)
@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_message_kind_round_trips(cls: type[Any], data: st.DataObject) -> None:
    value = data.draw(strategies.for_message(cls))
    encoded = value.encode()
    assert decode_any(encoded) == value
    assert schema.decode_message(encoded, cls, limits.BLOCK_BYTES_MAX) == value
    assert decode_any(encoded).encode() == encoded


def test_every_transaction_kind_is_registered() -> None:
    kinds = {cls.KIND for cls in tx.TX_CLASSES}
    # 1-8; 9, 10: emergency policy, re-sharing; 11, 12: rules, purge; 13-16: the key's rounds;
    # 17, 18: observers and addresses; 19: node key rotation; 27: revoke by provider, 37-39:
    # representatives and 100: a grant with purposes (rules version 5)
    assert kinds == {*range(1, 20), 27, *range(37, 40), 100}
    # vote, record purged
    assert set(tx.TX_CLASSES) <= set(ALL_MESSAGES)


# --- canonical form -------------------------------------------------------------------------

def valid_revoke() -> tx.ConsentRevoke:
    return tx.ConsentRevoke(signer=b"", nonce=1, grant_id=bytes(32)).sign(
        crypto.Identity.from_seed(bytes(32)), "test-chain"
    )


def test_integer_in_a_longer_form_than_needed_is_not_canonical() -> None:
    revoke = valid_revoke()
    wire = revoke.to_wire()
    # nonce 1 written as uint8 (0xcc 0x01) instead of a positive fixint.
    head = msgpack.packb(wire[:3], use_bin_type=True)[1:]
    tail = b"".join(msgpack.packb(v, use_bin_type=True) for v in wire[4:])
    data = bytes([0x90 | len(wire)]) + head + b"\xcc\x01" + tail
    assert msgpack.unpackb(data) == wire
    with pytest.raises(NonCanonicalEncoding):
        tx.decode_tx(data)


def test_bytes_written_as_a_string_type_are_rejected() -> None:
    wire = valid_revoke().to_wire()
    data = msgpack.packb(wire, use_bin_type=False)  # bytes packed as raw str
    with pytest.raises(CodecError):
        tx.decode_tx(data)


@pytest.mark.parametrize("value, problem", [
    ({"kind": 1}, "map"),
    ([5, 1, 1.5], "float"),
    ([5, 1, True], "bool"),
    (msgpack.ExtType(1, b"x"), "ext"),
])
def test_forbidden_types_are_malformed(value: Any, problem: str) -> None:
    data = msgpack.packb(value, use_bin_type=True)
    with pytest.raises(MalformedEncoding):
        codec.unpack(data, 1000)


def test_trailing_bytes_are_rejected() -> None:
    with pytest.raises(MalformedEncoding, match="trailing"):
        tx.decode_tx(valid_revoke().encode() + b"\x00")


def test_input_over_the_limit_is_rejected_before_parsing() -> None:
    with pytest.raises(MessageTooLarge, match=str(limits.TX_BYTES_MAX)):
        tx.decode_tx(b"\x90" * (limits.TX_BYTES_MAX + 1))


def test_empty_input_is_malformed() -> None:
    with pytest.raises(MalformedEncoding, match="empty"):
        tx.decode_tx(b"")


def test_unknown_kind_is_named() -> None:
    with pytest.raises(UnknownKind, match="kind 127"):
        tx.decode_tx(codec.pack([127, 1, b"x"]))


def test_a_block_is_not_accepted_where_a_transaction_is_expected() -> None:
    vote = block.Vote(block.PREVOTE, 1, 0, None, b"", b"").sign(
        crypto.Identity.from_seed(bytes(32)), "c")
    with pytest.raises(UnknownKind, match="Vote is not allowed here"):
        tx.decode_tx(vote.encode())


def test_schema_violation_names_the_field() -> None:
    wire = valid_revoke().to_wire()
    wire[4] = b"short"  # grant_id must be 32 bytes
    with pytest.raises(SchemaViolation, match=r"ConsentRevoke.grant_id: expected 32 bytes"):
        tx.decode_tx(codec.pack(wire))


def test_wrong_field_count_is_a_schema_violation() -> None:
    wire = valid_revoke().to_wire()
    with pytest.raises(SchemaViolation, match="expected 4 fields, got 3"):
        tx.decode_tx(codec.pack(wire[:-1]))


def test_unsorted_set_is_not_canonical_schema() -> None:
    identity = crypto.Identity.from_seed(bytes(32))
    grant = tx.ConsentGrant(
        signer=b"", nonce=1, grantee=bytes(32), actions=("read", "write"), scope_records=(),
        scope_tags=(b"\x01" * 32,), expires_at_ms=None, key_wraps=(), tag_key_wrap=None,
    ).sign(identity, "c")
    wire = grant.to_wire()
    wire[5] = ["write", "read"]
    with pytest.raises(SchemaViolation, match="sorted and without duplicates"):
        tx.decode_tx(codec.pack(wire))


def test_unsigned_message_cannot_be_encoded() -> None:
    unsigned = tx.RecordErase(signer=bytes(32), nonce=1, record_id=bytes(32))
    with pytest.raises(SchemaViolation, match="signature"):
        unsigned.encode()


def test_control_characters_in_names_are_rejected() -> None:
    identity = crypto.Identity.from_seed(bytes(32))
    register = tx.ProviderRegister(b"", 1, bytes(32), ("lab",), "Dr\x1b[31mEvil")
    with pytest.raises(SchemaViolation, match="non-printable"):
        register.sign(identity, "c")


# --- fuzzing: only typed errors -------------------------------------------------------------

def sample_encodings() -> list[bytes]:
    rng = random.Random(7)
    identity = crypto.Identity.from_seed(bytes(range(32)))
    chain = "fuzz-chain"
    anchor = tx.RecordAnchor(
        signer=b"", nonce=3, patient=identity.public_key, ciphertext_hash=rng.randbytes(32),
        ciphertext_bytes=4096, tags=(b"\x02" * 32, b"\x07" * 32),
        key_wraps=(tx.KeyWrap(identity.public_key, rng.randbytes(80)),), supersedes=None,
    ).sign(identity, chain)
    log = tx.AccessLog(b"", 9, rng.randbytes(32), rng.randbytes(32), rng.randbytes(32), None, 1,
                       "emergency", rng.randbytes(60)).sign(identity, chain)
    vote = block.Vote(block.PRECOMMIT, 5, 1, rng.randbytes(32), b"").sign(identity, chain)
    proposal = block.Proposal(5, 1, -1, rng.randbytes(32), b"").sign(identity, chain)
    certificate = block.CommitCertificate(
        4, 0, rng.randbytes(32), (block.CommitSig(identity.public_key, rng.randbytes(64)),))
    header = block.Header(chain, 5, 1000, rng.randbytes(32), certificate, rng.randbytes(32),
                          rng.randbytes(32), rng.randbytes(32), rng.randbytes(32),
                          identity.public_key)
    full_block = block.Block(header, (anchor, log), (block.DuplicateVote(vote, vote),))
    gen = genesis.Genesis(chain, 0, (genesis.Authority("a", identity.public_key),),
                          genesis.DEFAULT_PARAMS)
    return [m.encode() for m in (anchor, log, vote, proposal, full_block, gen)]


def mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    match rng.randrange(6):
        case 0:  # flip bits
            for _ in range(rng.randint(1, 4)):
                i = rng.randrange(len(buf))
                buf[i] ^= 1 << rng.randrange(8)
        case 1:  # truncate
            del buf[rng.randrange(len(buf)):]
        case 2:  # insert random bytes
            i = rng.randrange(len(buf) + 1)
            buf[i:i] = rng.randbytes(rng.randint(1, 8))
        case 3:  # overwrite with msgpack type markers
            i = rng.randrange(len(buf))
            buf[i] = rng.choice([0xC0, 0xC2, 0xC3, 0xCA, 0xCB, 0xDC, 0xDD, 0xDE, 0xDF, 0xC7, 0xFF])
        case 4:  # delete a slice
            i = rng.randrange(len(buf))
            del buf[i:i + rng.randint(1, 16)]
        case _:  # random bytes
            return rng.randbytes(rng.randint(0, 200))
    return bytes(buf)


DECODERS: dict[str, Callable[[bytes], Any]] = {
    "tx": tx.decode_tx,
    "block": block.decode_block,
    "consensus": block.decode_consensus_message,
    "genesis": lambda data: schema.decode_message(data, genesis.Genesis, limits.GENESIS_BYTES_MAX),
}


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_ten_thousand_random_and_mutated_inputs_raise_only_typed_errors(name: str) -> None:
    decoder = DECODERS[name]
    rng = random.Random(f"fuzz-{name}")
    samples = sample_encodings()
    outcomes = {"rejected": 0, "accepted": 0}
    for _ in range(10_000):
        data = mutate(rng, rng.choice(samples))
        try:
            decoded = decoder(data)
        except CodecError:
            outcomes["rejected"] += 1
        else:
            # Whatever is accepted must be canonical: it re-encodes to the same bytes.
            assert decoded.encode() == data
            outcomes["accepted"] += 1
    assert outcomes["rejected"] > 9_000


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_typed_errors(data: bytes) -> None:
    for decoder in DECODERS.values():
        with contextlib.suppress(CodecError):
            decoder(data)


def test_deep_nesting_is_rejected() -> None:
    value: Any = []
    for _ in range(20):
        value = [value]
    with pytest.raises(MalformedEncoding, match="nesting"):
        codec.unpack(codec.pack(value), 1000)


def test_a_full_emergency_policy_fits_one_transaction() -> None:
    """EMERGENCY_WRAPS_PER_TX_MAX bound wraps fit TX_BYTES_MAX; one more is refused by the
    schema (the wallet spreads more records over several policy transactions)."""
    from healthnode import limits
    from healthnode.crypto import Identity
    from healthnode.protocol.tx import EmergencyPolicy, EmergencyWrap, decode_tx

    patient = Identity.generate()
    wraps = tuple(EmergencyWrap(i.to_bytes(32, "big"), bytes(176))
                  for i in range(limits.EMERGENCY_WRAPS_PER_TX_MAX))
    tags = tuple(sorted(bytes([i]) * 32 for i in range(16)))
    full = EmergencyPolicy(patient.public_key, 1, tags, wraps).sign(patient, "c")
    assert len(full.encode()) <= limits.TX_BYTES_MAX
    assert decode_tx(full.encode()) == full
    with pytest.raises(ValueError, match=r"EmergencyPolicy\.wraps: expected 0\.\.256 items"):
        EmergencyPolicy(patient.public_key, 1, tags,
                        (*wraps, EmergencyWrap(b"\xff" * 32, bytes(176)))).sign(patient, "c")
