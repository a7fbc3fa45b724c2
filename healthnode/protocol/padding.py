"""Record sizes on chain are padded: a ciphertext's length is one of few values, so the size that
every hospital sees says little about what the record is.

The lengths are Padmé's (Nikitin, Barman, Lueks, Underwood, Hubaux and Ford, "Reducing Metadata
Leakage from Encrypted Files and Communication with PURBs", PoPETs 2019): a length `L` whose
binary exponent is `E = floor(log2 L)` keeps only its top `floor(log2 E) + 1` bits, and is rounded
up to the next length of that form. A padded length then leaks O(log log L) bits of `L` (a raw
one leaks O(log L)), for at most 6.25 % more bytes from 1 KiB up, and less the larger the
record (docs/ledger.md, "Padded sizes", gives the figures). Below `PADDED_MIN_BYTES` every
record takes that much, so that the many small ones (a lab value, a prescription) look alike.

The ledger refuses an anchor whose `ciphertext_bytes` is not a padded length (rules version 3
on); the wallet pads each plaintext so that its ciphertext has one (wallet/sealing.py).
"""

from __future__ import annotations

from typing import Final

PADDED_MIN_BYTES: Final = 1024


def padme(length: int) -> int:
    """Padmé: `length` rounded up to the next length whose bits below its top
    `floor(log2 E) + 1` are zero, `E` its binary exponent."""
    if length < 2:
        return length
    exponent = length.bit_length() - 1
    kept_bits = exponent.bit_length()  # floor(log2 E) + 1
    mask = (1 << (exponent - kept_bits)) - 1
    return (length + mask) & ~mask


def padded_size(length: int) -> int:
    """The length a ciphertext of `length` bytes is padded to."""
    return max(PADDED_MIN_BYTES, padme(length))


def is_padded(length: int) -> bool:
    return length == padded_size(length)
