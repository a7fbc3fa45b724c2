"""Signed messages: transactions, proposals and votes share one signing rule.

A signed message has a `signer` public key among its fields and a 64-byte `signature` as its last
field. The signature covers the domain tag of the message's class, the chain id and the wire
value of every field but the signature (`crypto.signing_bytes`). Its identity (`hash`) is the
BLAKE2b-256 of the whole canonical encoding, signature included; Ed25519 as libsodium checks it is
not malleable, so one signed message has one hash.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Final, Self

from healthnode import codec, crypto
from healthnode.codec import Wire
from healthnode.protocol.schema import Message


class Signed(Message):
    DOMAIN: ClassVar[str]
    # The hash, kept once computed: a transaction's id is asked for by the mempool, the block's
    # Merkle root, the rules (a record's id) and the duplicate check, several times per node.
    __slots__ = ("_hash",)

    # Declared by each concrete class (dataclass fields): the last one must be `signature`.
    signer: bytes
    signature: bytes

    def unsigned_wire(self) -> list[Wire]:
        name = type(self).__name__
        fields = self.WIRE_FIELDS
        assert fields[-1][0] == "signature", f"{name}: signature must be the last field"
        return [self.KIND, self.VERSION] + [
            spec.to_wire(getattr(self, field), f"{name}.{field}") for field, spec in fields[:-1]
        ]

    def sign(self, identity: crypto.Identity, chain_id: str) -> Self:
        """A copy signed by `identity`, whose public key becomes the signer."""
        unsigned = dataclasses.replace(self, signer=identity.public_key)  # type: ignore[type-var]
        signature = identity.sign(self.DOMAIN, chain_id, unsigned.unsigned_wire())
        signed: Self = dataclasses.replace(unsigned, signature=signature)  # type: ignore[type-var]
        return signed

    def unsigned_encoding(self) -> bytes:
        """The encoding of `unsigned_wire()`, cut from the message's own (kept) encoding: the
        array header one item shorter and the signature, the last item, left off."""
        encoded = self.encode()
        items = 2 + len(self.WIRE_FIELDS)
        return (codec.array_header(items - 1)
                + encoded[len(codec.array_header(items)):-_SIGNATURE_ENCODED_BYTES])

    def signature_valid(self, chain_id: str) -> bool:
        if len(self.signature) != crypto.SIGNATURE_BYTES:
            return False
        return crypto.verify_encoded(
            self.signer, self.signature, self.DOMAIN, chain_id, self.unsigned_encoding()
        )

    @property
    def hash(self) -> bytes:
        known: bytes | None = getattr(self, "_hash", None)
        if known is None:
            known = crypto.digest(self.encode())
            object.__setattr__(self, "_hash", known)
        return known


# A 64-byte signature encodes as msgpack bin 8: 0xc4, the length, then the bytes.
_SIGNATURE_ENCODED_BYTES: Final = 2 + crypto.SIGNATURE_BYTES


def replace(obj: Any, **changes: Any) -> Any:
    """dataclasses.replace, re-exported so callers need not import dataclasses for messages."""
    return dataclasses.replace(obj, **changes)
