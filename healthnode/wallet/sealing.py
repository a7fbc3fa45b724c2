"""Record encryption, key wrapping and category blinding: the wallet's pure cryptography.

- A record is encrypted with a fresh 32-byte data key under XChaCha20-Poly1305 (libsodium's
  IETF construction); the ciphertext is `nonce(24) || sealed`. The patient's public key is the
  associated data, so a ciphertext cannot be passed off as another patient's record.
- The data key is wrapped for each reader with an anonymous sealed box to the reader's X25519 key,
  derived from its Ed25519 identity (crypto.seal).
- A category travels only as a blinded tag `BLAKE2b(key=tag_key, category)`. The patient's tag key
  is derived from its identity, so the patient never has to store it; it is shared (sealed) only
  with a provider the patient lets *write*, who must tag new records the same way. A read-only
  grantee never learns it, so it cannot tell which categories the patient's other records carry.
"""

from __future__ import annotations

import re
from typing import Final

import nacl.bindings
import nacl.exceptions
import nacl.utils

from healthnode import crypto
from healthnode.errors import HealthnodeError
from healthnode.protocol.padding import padded_size

DATA_KEY_BYTES: Final = 32
NONCE_BYTES: Final = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_NPUBBYTES
TAG_BYTES: Final = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_ABYTES
# Appended to the associated data of a padded record (after the patient's key).
PADDED: Final = b"healthnode padded record v1"
TAG_KEY_CONTEXT: Final = b"healthnode/tag-key/1"
CATEGORY_PATTERN: Final = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
# Names a wallet tries when it shows a record's blinded tags back to a key holder.
KNOWN_CATEGORIES: Final = (
    "lab", "prescription", "medication", "visit-note", "imaging", "allergy", "immunization",
    "vital-signs", "discharge-summary", "referral", "hiv", "mental-health", "genetic",
    "sexual-health", "substance-use", "blood-type", "implant", "emergency",
)


class SealingError(HealthnodeError):
    """A ciphertext or key wrap does not open (wrong key, damaged, not for this patient)."""


def check_category(name: str) -> str:
    if not CATEGORY_PATTERN.fullmatch(name):
        raise HealthnodeError(
            f"category {name[:40]!r}: use 1-32 lowercase letters, digits or '-' (e.g. lab)")
    return name


def tag_key(identity: crypto.Identity) -> bytes:
    """The patient's category tag key, derived from (and only from) its secret."""
    return crypto.keyed_digest(identity.seed, TAG_KEY_CONTEXT)


def blind(key: bytes, category: str) -> bytes:
    return crypto.keyed_digest(key, check_category(category).encode())


def unblind(key: bytes, tags: tuple[bytes, ...], extra: tuple[str, ...] = ()) -> list[str]:
    """The names of `tags` among the known categories (and `extra`), '?' for the others."""
    names = {blind(key, name): name for name in (*KNOWN_CATEGORIES, *extra)}
    return [names.get(tag, "?") for tag in tags]


def new_data_key() -> bytes:
    return nacl.utils.random(DATA_KEY_BYTES)


def encrypt_record(data_key: bytes, patient: bytes, plaintext: bytes) -> bytes:
    """`nonce || XChaCha20-Poly1305(padded plaintext)`, the patient's key and `PADDED` as its
    associated data. The plaintext is followed by 0x80 and zeros (ISO/IEC 7816-4) up to the
    length that makes the ciphertext a padded length (protocol/padding.py)."""
    overhead = NONCE_BYTES + TAG_BYTES
    target = padded_size(overhead + len(plaintext) + 1)
    padded = plaintext + b"\x80" + bytes(target - overhead - len(plaintext) - 1)
    nonce = nacl.utils.random(NONCE_BYTES)
    sealed: bytes = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
        padded, patient + PADDED, nonce, data_key)
    return nonce + sealed


def decrypt_record(data_key: bytes, patient: bytes, ciphertext: bytes) -> bytes:
    """The plaintext of a padded record, or of one sealed before padding (its associated data
    is the patient's key alone, so neither form passes for the other)."""
    if len(data_key) != DATA_KEY_BYTES or len(ciphertext) < NONCE_BYTES + TAG_BYTES:
        raise SealingError("the record's ciphertext or data key is malformed")
    nonce, sealed = ciphertext[:NONCE_BYTES], ciphertext[NONCE_BYTES:]
    try:
        padded: bytes = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
            sealed, patient + PADDED, nonce, data_key)
    except nacl.exceptions.CryptoError:
        pass
    else:
        end = padded.rstrip(b"\x00")
        if not end.endswith(b"\x80"):
            raise SealingError("the record's padding is malformed")
        return end[:-1]
    try:
        plaintext: bytes = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
            sealed, patient, nonce, data_key)
    except nacl.exceptions.CryptoError:
        raise SealingError("the record does not decrypt (damaged, or not this patient's)") \
            from None
    return plaintext


def wrap_key(recipient: bytes, data_key: bytes) -> bytes:
    return crypto.seal(recipient, data_key)


def unwrap_key(identity: crypto.Identity, sealed: bytes) -> bytes:
    try:
        data_key = crypto.unseal(identity, sealed)
    except nacl.exceptions.CryptoError:
        raise SealingError("the key wrap does not open with this key") from None
    if len(data_key) != DATA_KEY_BYTES:
        raise SealingError("the key wrap holds no data key")
    return data_key
