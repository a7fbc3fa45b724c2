"""Padded record sizes (protocol/padding.py) and the wallet's padding (wallet/sealing.py)."""

from __future__ import annotations

import nacl.bindings
import pytest

from healthnode import limits
from healthnode.protocol.padding import PADDED_MIN_BYTES, is_padded, padded_size, padme
from healthnode.wallet import sealing

KEY = b"\x03" * 32
PATIENT = b"\x04" * 32


def test_padme_keeps_the_top_bits_of_a_length_and_rounds_up() -> None:
    """Padmé: with E = floor(log2 L), only the top floor(log2 E) + 1 bits may be set."""
    assert [padme(n) for n in (1, 2, 3, 9, 100, 1025, 32_769, 1 << 24)] == [
        1, 2, 3, 10, 104, 1088, 34_816, 1 << 24]
    for length in range(2, 1 << 16):
        padded = padme(length)
        exponent = padded.bit_length() - 1
        low_bits = exponent - exponent.bit_length()
        assert length <= padded and padded % (1 << low_bits) == 0
        assert padme(padded) == padded  # a padded length stays as it is


def test_the_figures_in_the_docs_hold() -> None:
    """docs/ledger.md, "Padded sizes": 353 lengths from 1 KiB to 16 MiB, at most 6.25 % more."""
    lengths, length, worst = [], PADDED_MIN_BYTES, 0.0
    while length <= limits.BLOB_BYTES_MAX:
        lengths.append(length)
        if length < limits.BLOB_BYTES_MAX:
            worst = max(worst, (padded_size(length + 1) - length - 1) / (length + 1))
        length = padded_size(length + 1)
    assert len(lengths) == 353 and lengths[-1] == limits.BLOB_BYTES_MAX
    assert 0.0624 < worst <= 0.0625


@pytest.mark.parametrize("size", [0, 1, 983, 984, 985, 5000, 1 << 20])
def test_a_sealed_record_has_a_padded_length_and_opens_to_its_plaintext(size: int) -> None:
    plaintext = bytes(range(256)) * (size // 256) + b"\x00" * (size % 256)  # zeros at its end
    sealed = sealing.encrypt_record(KEY, PATIENT, plaintext)
    assert is_padded(len(sealed)) and len(sealed) >= PADDED_MIN_BYTES
    assert sealing.decrypt_record(KEY, PATIENT, sealed) == plaintext


def test_the_largest_plaintext_fits_the_largest_ciphertext() -> None:
    from healthnode.wallet.commands import RECORD_PLAINTEXT_BYTES_MAX
    sealed = sealing.encrypt_record(KEY, PATIENT, b"\x01" * RECORD_PLAINTEXT_BYTES_MAX)
    assert len(sealed) == limits.BLOB_BYTES_MAX


def _sealed(padded_plaintext: bytes, associated: bytes) -> bytes:
    nonce = b"\x05" * sealing.NONCE_BYTES
    return nonce + nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
        padded_plaintext, associated, nonce, KEY)


def test_a_record_sealed_before_padding_opens_as_it_was() -> None:
    legacy = _sealed(b"K 4.1 mmol/L\x80\x00\x00", PATIENT)  # ends like padding, but is not
    assert sealing.decrypt_record(KEY, PATIENT, legacy) == b"K 4.1 mmol/L\x80\x00\x00"


def test_a_padded_record_without_its_marker_is_refused() -> None:
    for broken in (b"K 4.1 mmol/L" + bytes(20), b"", bytes(40)):
        with pytest.raises(sealing.SealingError, match="padding is malformed"):
            sealing.decrypt_record(KEY, PATIENT, _sealed(broken, PATIENT + sealing.PADDED))


def test_neither_form_opens_for_another_patient() -> None:
    sealed = sealing.encrypt_record(KEY, PATIENT, b"a note")
    with pytest.raises(sealing.SealingError, match="does not decrypt"):
        sealing.decrypt_record(KEY, b"\x09" * 32, sealed)
