"""Hashes, Ed25519 signatures with domain separation, and the keys derived from an identity.

- Hash: BLAKE2b-256 everywhere (`digest`).
- Signatures cover `pack([domain, chain_id, wire])`: the domain tag says what kind of object is
  signed (a transaction is never a valid vote), the chain id says on which network (a grant signed
  for a test network is void on the production one), and the canonical wire value says what.
- Every identity is an Ed25519 key. A patient's X25519 key for sealed boxes is derived from it
  (libsodium's birational map), so a patient has one secret to keep.
- A node's libp2p peer id is computed from its public key here, without importing libp2p, so that
  configuration tools stay fast (importing libp2p costs about 0.7 s: docs/network.md).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Final

import base58
import nacl.exceptions
import nacl.public
import nacl.signing

from healthnode import codec

HASH_BYTES: Final = 32
PUBLIC_KEY_BYTES: Final = 32
SIGNATURE_BYTES: Final = 64
SEED_BYTES: Final = 32
ZERO_HASH: Final = bytes(HASH_BYTES)

# Domain tags: one per kind of signed object. Changing one invalidates every such signature.
DOMAIN_TX: Final = "healthnode/tx/1"
DOMAIN_PROPOSAL: Final = "healthnode/proposal/1"
DOMAIN_VOTE: Final = "healthnode/vote/1"
# The new key's consent to take an authority's place (protocol/tx.py, NodeRotate).
DOMAIN_ROTATE: Final = "healthnode/rotate/1"


def digest(data: bytes) -> bytes:
    """BLAKE2b-256 of `data`."""
    return hashlib.blake2b(data, digest_size=HASH_BYTES).digest()


def keyed_digest(key: bytes, data: bytes) -> bytes:
    """BLAKE2b-256 keyed with `key` (blinded category tags: only key holders can link them)."""
    return hashlib.blake2b(data, digest_size=HASH_BYTES, key=key).digest()


def signing_bytes(domain: str, chain_id: str, wire: codec.Wire) -> bytes:
    return codec.pack([domain, chain_id, wire])


def signing_bytes_of_encoded(domain: str, chain_id: str, encoded_wire: bytes) -> bytes:
    """`signing_bytes` when the wire value is already encoded (msgpack arrays concatenate)."""
    return _SIGNING_HEADER + codec.pack(domain) + codec.pack(chain_id) + encoded_wire


_SIGNING_HEADER: Final = codec.array_header(3)


@dataclass(frozen=True, slots=True, repr=False)
class Identity:
    """An Ed25519 key pair. `repr` never shows the secret."""

    signing_key: nacl.signing.SigningKey

    @classmethod
    def generate(cls) -> Identity:
        return cls(nacl.signing.SigningKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        if len(seed) != SEED_BYTES:
            raise ValueError(f"an Ed25519 seed is {SEED_BYTES} bytes, got {len(seed)}")
        return cls(nacl.signing.SigningKey(seed))

    @property
    def seed(self) -> bytes:
        return bytes(self.signing_key)

    @property
    def public_key(self) -> bytes:
        return bytes(self.signing_key.verify_key)

    def sign(self, domain: str, chain_id: str, wire: codec.Wire) -> bytes:
        return self.signing_key.sign(signing_bytes(domain, chain_id, wire)).signature

    def box_private_key(self) -> nacl.public.PrivateKey:
        """The X25519 key for opening sealed boxes, derived from the Ed25519 key."""
        return self.signing_key.to_curve25519_private_key()

    def __repr__(self) -> str:
        return f"Identity(public_key={self.public_key.hex()})"


def verify(public_key: bytes, signature: bytes, domain: str, chain_id: str,
           wire: codec.Wire) -> bool:
    """True when `signature` by `public_key` covers (domain, chain_id, wire). Never raises."""
    return verify_encoded(public_key, signature, domain, chain_id, codec.pack(wire))


def verify_encoded(public_key: bytes, signature: bytes, domain: str, chain_id: str,
                   encoded_wire: bytes) -> bool:
    """`verify` when the wire value is already encoded. Never raises."""
    if len(public_key) != PUBLIC_KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        nacl.signing.VerifyKey(public_key).verify(
            signing_bytes_of_encoded(domain, chain_id, encoded_wire), signature
        )
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.CryptoError, ValueError):
        return False
    return True


def box_public_key(public_key: bytes) -> nacl.public.PublicKey:
    """The X25519 key of an Ed25519 identity, for sealing a box to it."""
    return nacl.signing.VerifyKey(public_key).to_curve25519_public_key()


def seal(public_key: bytes, plaintext: bytes) -> bytes:
    """An anonymous sealed box that only the holder of `public_key`'s identity can open."""
    return nacl.public.SealedBox(box_public_key(public_key)).encrypt(plaintext)


def unseal(identity: Identity, sealed: bytes) -> bytes:
    return nacl.public.SealedBox(identity.box_private_key()).decrypt(sealed)


# libp2p peer id of an Ed25519 key: base58btc(multihash-identity(protobuf PublicKey{Ed25519, key})).
_PROTOBUF_ED25519_PREFIX: Final = bytes([0x08, 0x01, 0x12, 0x20])
_MULTIHASH_IDENTITY_PREFIX: Final = bytes([0x00, len(_PROTOBUF_ED25519_PREFIX) + 32])


def peer_id(public_key: bytes) -> str:
    """The libp2p peer id (`12D3KooW...`) of an Ed25519 public key."""
    if len(public_key) != PUBLIC_KEY_BYTES:
        raise ValueError(f"an Ed25519 public key is {PUBLIC_KEY_BYTES} bytes")
    raw = _MULTIHASH_IDENTITY_PREFIX + _PROTOBUF_ED25519_PREFIX + public_key
    encoded: bytes = base58.b58encode(raw)
    return encoded.decode("ascii")


def public_key_from_peer_id(peer: str) -> bytes:
    """The Ed25519 public key inside a libp2p peer id; ValueError for any other kind of id."""
    try:
        raw: bytes = base58.b58decode(peer)
    except ValueError:
        raise ValueError(f"{peer[:60]!r} is not a base58 peer id") from None
    prefix = _MULTIHASH_IDENTITY_PREFIX + _PROTOBUF_ED25519_PREFIX
    if len(raw) != len(prefix) + PUBLIC_KEY_BYTES or not raw.startswith(prefix):
        raise ValueError(f"{peer[:60]!r} is not the peer id of an Ed25519 key")
    return raw[len(prefix):]
