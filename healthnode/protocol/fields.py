"""Named field types shared by all messages: `Annotated` aliases carrying their msgspec limits."""

from typing import Annotated, Final

from msgspec import Meta

from healthnode import limits
from healthnode.crypto import HASH_BYTES, PUBLIC_KEY_BYTES, SIGNATURE_BYTES
from healthnode.protocol.schema import PRINTABLE

PublicKey = Annotated[bytes, Meta(min_length=PUBLIC_KEY_BYTES, max_length=PUBLIC_KEY_BYTES)]
Hash = Annotated[bytes, Meta(min_length=HASH_BYTES, max_length=HASH_BYTES)]
# Empty until signed; encoding an unsigned message fails the 64-byte check, so it never leaves.
Signature = Annotated[bytes, Meta(min_length=SIGNATURE_BYTES, max_length=SIGNATURE_BYTES)]
Nonce = Annotated[int, Meta(ge=1, le=limits.NONCE_MAX)]
Height = Annotated[int, Meta(ge=1, le=limits.HEIGHT_MAX)]
RulesVersion = Annotated[int, Meta(ge=1, le=limits.RULES_VERSION_MAX)]
Round = Annotated[int, Meta(ge=0, le=limits.ROUND_MAX)]
TimeMs = Annotated[int, Meta(ge=0, le=limits.TIME_MS_MAX)]
Name = Annotated[str, Meta(min_length=1, max_length=limits.NAME_CHARS_MAX), PRINTABLE]
ChainId = Annotated[str, Meta(min_length=1, max_length=limits.CHAIN_ID_CHARS_MAX), PRINTABLE]

UNSIGNED: Final = b""
Bytes32 = Annotated[bytes, Meta(min_length=32, max_length=32)]  # a blinded tag, a record id
