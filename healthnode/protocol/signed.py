"""Signed messages: transactions, proposals and votes share one signing rule.

A signed message has a `signer` public key among its fields and a 64-byte `signature` as its last
field. The signature covers the domain tag of the message's class, the chain id and the wire
value of every field but the signature (`crypto.signing_bytes`). Its identity (`hash`) is the
BLAKE2b-256 of the whole canonical encoding, signature included; Ed25519 as libsodium checks it is
not malleable, so one signed message has one hash.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Final, Self

from healthnode import codec, crypto
from healthnode.protocol import schema
from healthnode.protocol.schema import Message


class Signed(Message):
    DOMAIN: ClassVar[str]
    if TYPE_CHECKING:  # fields of each concrete class, in its order: `signature` is the last
        @property
        def signer(self) -> bytes: ...

        @property
        def signature(self) -> bytes: ...

    def sign(self, identity: crypto.Identity, chain_id: str) -> Self:
        """A copy signed by `identity`, whose public key becomes the signer. The copy is
        checked (a placeholder signature stands in while it is), then its unsigned encoding
        signed, and the signed copy's encoding kept."""
        assert type(self).__struct_fields__[-1] == "signature", "signature must be the last field"
        placeholder = schema.replace(self, signer=identity.public_key,
                                     signature=_PLACEHOLDER_SIGNATURE)
        encoded = placeholder.encode()  # checked: raises SchemaViolation naming a bad field
        signature = identity.signing_key.sign(crypto.signing_bytes_of_encoded(
            self.DOMAIN, chain_id, _unsigned(encoded, len(type(self).__struct_fields__))
        )).signature
        signed: Self = schema.replace(placeholder, signature=signature)
        # It differs from the checked copy in the signature only, 64 bytes in either.
        schema.keep_checked_encoding(signed, encoded[:-crypto.SIGNATURE_BYTES] + signature)
        return signed

    def unsigned_encoding(self) -> bytes:
        """The encoding of everything but the signature, cut from the message's own (kept)
        encoding: the array header one item shorter and the signature, the last item, left
        off."""
        return _unsigned(self.encode(), len(type(self).__struct_fields__))

    def signature_valid(self, chain_id: str) -> bool:
        if len(self.signature) != crypto.SIGNATURE_BYTES:
            return False
        return crypto.verify_encoded(
            self.signer, self.signature, self.DOMAIN, chain_id, self.unsigned_encoding()
        )

    @property
    def hash(self) -> bytes:
        known: bytes | None = self.__dict__.get("_hash")
        if known is None:
            known = self.__dict__["_hash"] = crypto.digest(self.encode())
        return known


# A 64-byte signature encodes as msgpack bin 8: 0xc4, the length, then the bytes.
_SIGNATURE_ENCODED_BYTES: Final = 2 + crypto.SIGNATURE_BYTES
_PLACEHOLDER_SIGNATURE: Final = bytes(crypto.SIGNATURE_BYTES)


def _unsigned(encoded: bytes, fields: int) -> bytes:
    """`encoded` ([kind, version, ...fields], the version being one of the `fields`) less its
    last item, the signature."""
    items = 1 + fields
    return (codec.array_header(items - 1)
            + encoded[len(codec.array_header(items)):-_SIGNATURE_ENCODED_BYTES])


def replace(obj: Any, **changes: Any) -> Any:
    """A copy of a message with `changes` (checked when it is encoded)."""
    return schema.replace(obj, **changes)
