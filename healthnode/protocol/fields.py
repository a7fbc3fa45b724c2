"""Named field types shared by all messages, each an `Annotated` alias carrying its wire spec."""

from typing import Annotated, Final

from healthnode import limits
from healthnode.crypto import HASH_BYTES, PUBLIC_KEY_BYTES, SIGNATURE_BYTES
from healthnode.protocol.schema import Bytes, Int, Str

PublicKey = Annotated[bytes, Bytes(PUBLIC_KEY_BYTES)]
Hash = Annotated[bytes, Bytes(HASH_BYTES)]
# Empty until signed; encoding an unsigned message fails the 64-byte check, so it never leaves.
Signature = Annotated[bytes, Bytes(SIGNATURE_BYTES)]
Nonce = Annotated[int, Int(1, limits.NONCE_MAX)]
Height = Annotated[int, Int(1, limits.HEIGHT_MAX)]
Round = Annotated[int, Int(0, limits.ROUND_MAX)]
TimeMs = Annotated[int, Int(0, limits.TIME_MS_MAX)]
Name = Annotated[str, Str(limits.NAME_CHARS_MAX, chars_min=1)]
ChainId = Annotated[str, Str(limits.CHAIN_ID_CHARS_MAX, chars_min=1)]

UNSIGNED: Final = b""
