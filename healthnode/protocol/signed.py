"""Signed messages: transactions, proposals and votes share one signing rule.

A signed message has a `signer` public key among its fields and a 64-byte `signature` as its last
field. The signature covers the domain tag of the message's class, the chain id and the wire
value of every field but the signature (`crypto.signing_bytes`). Its identity (`hash`) is the
BLAKE2b-256 of the whole canonical encoding, signature included; Ed25519 as libsodium checks it is
not malleable, so one signed message has one hash.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Self

from healthnode import crypto
from healthnode.protocol.codec import Wire
from healthnode.protocol.schema import Message


class Signed(Message):
    DOMAIN: ClassVar[str]
    __slots__ = ()

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

    def signature_valid(self, chain_id: str) -> bool:
        return crypto.verify(
            self.signer, self.signature, self.DOMAIN, chain_id, self.unsigned_wire()
        )

    @property
    def hash(self) -> bytes:
        return crypto.digest(self.encode())


def replace(obj: Any, **changes: Any) -> Any:
    """dataclasses.replace, re-exported so callers need not import dataclasses for messages."""
    return dataclasses.replace(obj, **changes)
