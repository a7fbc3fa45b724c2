"""Threshold ElGamal on the Ed25519 group: the cryptography of break-glass (docs/break-glass.md).

The network's emergency key is `E = s·B`. The secret `s` is never held anywhere: it is dealt once
as Shamir shares `s_i = f(i)` of a random polynomial of degree t-1 with `f(0) = s`, one per
authority, and the dealer forgets `f`. Each share is public only as its commitment `S_i = s_i·B`
(in the genesis), so anyone can check a decryption share against it.

- **Wrap** (the patient's wallet): for a data key `k` and the wrap's *label* (chain id, patient,
  the record's ciphertext hash), pick `r`, send `R = r·B`, `AEAD(key = H(r·E || R || E), k)` and
  a proof that the sender knows `r`, computed over the label. Only `s·R = r·E` opens it, and the
  proof makes the wrap useless under any other label (see "Bound wraps" below).
- **Decryption share** (one authority): `D_i = s_i·R`, with a Chaum-Pedersen proof that
  `log_B(S_i) = log_R(D_i)` (a DLEQ proof, Fiat-Shamir with BLAKE2b), so a wrong share is caught.
- **Combine** (the requester's wallet): with t valid shares, `s·R = Σ λ_i·D_i` (Lagrange
  coefficients at 0), then open the AEAD. Fewer than t shares reveal nothing about `s·R`.

Bound wraps (TDH2)
------------------
A bare ElGamal wrap is malleable: anyone can copy a patient's public wrap onto a record of their
own, or re-randomise it (`R' = R + r'·B`; from `s·R'` subtract `r'·E`), ask the holders for shares
of *that* record and open the patient's data key. The wrap is therefore made non-malleable and
bound to its record as in TDH2 (Shoup and Gennaro, "Securing threshold cryptosystems against
chosen ciphertext attack", J. Cryptology 15(2), 2002, section 5):

- a second generator `G` whose logarithm to `B` nobody knows (libsodium's Elligator 2 map,
  `crypto_core_ed25519_from_uniform`, of a domain-separated hash);
- `R̄ = r·G` beside `R = r·B`, and a Fiat-Shamir proof `(e, f)` that both use the same `r`:
  `w = k·B`, `w̄ = k·G`, `e = H(domain, E, label, body, R, w, R̄, w̄)`, `f = k + e·r`;
- verification recomputes `w = f·B - e·R` and `w̄ = f·G - e·R̄` and checks `e`.

The label (chain id, patient, ciphertext hash) is inside the hash, so a proof made for one label
fails for every other one: a copied wrap does not verify on another record, and a re-randomised
one does not verify at all without the new `r + r'`, which its maker does not know. The ledger
checks the proof wherever it admits a wrap, and every holder checks it again, against the record
that the finalized break-glass `access.log` names, before it releases a share. The label is also
the AEAD's associated data, so the opening wallet checks the binding too.

Pure: randomness comes in as bytes from the caller's `random_scalar` (os.urandom by default).
Group operations are libsodium's (`crypto_core_ed25519_*`, `crypto_scalarmult_ed25519_*noclamp`),
which reject non-canonical points and points of small order.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import nacl.bindings as sodium
import nacl.exceptions

from healthnode.errors import HealthnodeError

# The order of the Ed25519 prime-order subgroup.
L: Final = 2**252 + 27742317777372353535851937790883648493
POINT_BYTES: Final = 32
SCALAR_BYTES: Final = 32
DATA_KEY_BYTES: Final = 32
_SEALED_BYTES: Final = DATA_KEY_BYTES + 16  # the AEAD of the data key
# R, the AEAD of the data key, R̄ = r·G, then the proof (e, f).
WRAP_BYTES: Final = POINT_BYTES + _SEALED_BYTES + POINT_BYTES + 2 * SCALAR_BYTES
PROOF_BYTES: Final = 2 * SCALAR_BYTES
_WRAP_NONCE: Final = bytes(24)  # every wrap key is fresh (it hashes a fresh r·E): one use each
_PROOF_DOMAIN: Final = b"healthnode/break-glass/dleq/1"
_WRAP_DOMAIN: Final = b"healthnode/break-glass/wrap/2"
_LABEL_DOMAIN: Final = b"healthnode/break-glass/label/1"
_BINDING_DOMAIN: Final = b"healthnode/break-glass/tdh2-proof/1"
_GENERATOR_DOMAIN: Final = b"healthnode/break-glass/second-generator/1"


class ThresholdError(HealthnodeError):
    """A point, share, proof or wrap that does not verify, or too few shares."""


class WrapNotBound(ThresholdError):
    """A well-formed wrap whose proof does not verify for the label it is checked against."""


RandomScalar = Callable[[], int]


def random_scalar() -> int:
    """A uniform non-zero scalar mod L."""
    while True:
        value = int.from_bytes(os.urandom(64), "little") % L
        if value:
            return value


def scalar_bytes(value: int) -> bytes:
    return (value % L).to_bytes(SCALAR_BYTES, "little")


def scalar_from(data: bytes) -> int:
    if len(data) != SCALAR_BYTES:
        raise ThresholdError(f"a scalar is {SCALAR_BYTES} bytes, got {len(data)}")
    value = int.from_bytes(data, "little")
    if not 0 < value < L:
        raise ThresholdError("a scalar must be in 1..L-1")
    return value


def check_point(point: bytes, what: str) -> bytes:
    if len(point) != POINT_BYTES or not sodium.crypto_core_ed25519_is_valid_point(point):
        raise ThresholdError(f"{what} is not a valid point of the Ed25519 group")
    return point


def base_mul(scalar: int) -> bytes:
    """`scalar·B`; ThresholdError for a scalar of 0 mod L (the identity, which no key, share or
    commitment may be)."""
    try:
        point: bytes = sodium.crypto_scalarmult_ed25519_base_noclamp(scalar_bytes(scalar))
    except nacl.exceptions.RuntimeError:
        raise ThresholdError("scalar multiplication of 0 gave the identity") from None
    return point


def mul(scalar: int, point: bytes) -> bytes:
    try:
        result: bytes = sodium.crypto_scalarmult_ed25519_noclamp(scalar_bytes(scalar), point)
    except nacl.exceptions.RuntimeError:
        raise ThresholdError("scalar multiplication gave the identity (bad point)") from None
    return result


def add_points(p: bytes, q: bytes) -> bytes:
    result: bytes = sodium.crypto_core_ed25519_add(p, q)
    return result


def _sub(p: bytes, q: bytes) -> bytes:
    result: bytes = sodium.crypto_core_ed25519_sub(p, q)
    return result


def hash_scalar(*parts: bytes) -> int:
    h = hashlib.blake2b(digest_size=64)
    for part in parts:
        h.update(len(part).to_bytes(2, "big"))
        h.update(part)
    return int.from_bytes(h.digest(), "little") % L


# --- dealing ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Dealing:
    """The public key, the threshold, and share i (1-based) with its commitment, for n holders."""

    public_key: bytes
    threshold: int
    shares: tuple[int, ...]  # shares[i-1] = f(i): each goes to one holder only
    commitments: tuple[bytes, ...]  # commitments[i-1] = f(i)·B: public


def deal(threshold: int, holders: int, rand: RandomScalar = random_scalar) -> Dealing:
    """Deal a fresh secret to `holders` with `threshold`; the secret is not returned."""
    if not 1 <= threshold <= holders:
        raise ThresholdError(f"threshold {threshold} must be within 1..{holders}")
    coefficients = [rand() for _ in range(threshold)]  # f(0) = coefficients[0] = the secret

    def f(x: int) -> int:
        return sum(c * pow(x, k, L) for k, c in enumerate(coefficients)) % L

    shares = tuple(f(i) for i in range(1, holders + 1))
    public_key = base_mul(coefficients[0])
    coefficients.clear()
    return Dealing(public_key, threshold, shares, tuple(base_mul(s) for s in shares))


def quorum_threshold(holders: int) -> int:
    """t = the BFT quorum: more than two thirds of the holders."""
    return holders * 2 // 3 + 1


# --- wrapping ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WrapLabel:
    """What a wrap is bound to: the chain, the patient, and the record's ciphertext hash (not the
    record id: that is the hash of the anchor transaction, which carries the wrap)."""

    chain_id: str
    patient: bytes
    ciphertext_hash: bytes

    def encode(self) -> bytes:
        parts = (_LABEL_DOMAIN, self.chain_id.encode(), self.patient, self.ciphertext_hash)
        return b"".join(len(part).to_bytes(2, "big") + part for part in parts)


def _second_generator() -> bytes:
    uniform = hashlib.blake2b(_GENERATOR_DOMAIN, digest_size=32).digest()
    point: bytes = sodium.crypto_core_ed25519_from_uniform(uniform)
    return point


G: Final = _second_generator()  # TDH2's ḡ: a generator of unknown logarithm to B


def _wrap_key(shared: bytes, ephemeral: bytes, public_key: bytes) -> bytes:
    return hashlib.blake2b(_WRAP_DOMAIN + shared + ephemeral + public_key, digest_size=32).digest()


def _binding_challenge(public_key: bytes, label: WrapLabel, sealed: bytes, ephemeral: bytes,
                       commit: bytes, second: bytes, second_commit: bytes) -> int:
    return hash_scalar(_BINDING_DOMAIN, public_key, label.encode(), sealed, ephemeral, commit,
                        second, second_commit)


def _aad(ephemeral: bytes, label: WrapLabel) -> bytes:
    return ephemeral + label.encode()


def wrap(public_key: bytes, data_key: bytes, label: WrapLabel,
         rand: RandomScalar = random_scalar) -> bytes:
    """The data key wrapped for the emergency key and bound to `label`:
    `R || AEAD(H(r·E, R, E), data_key; R, label) || R̄ || e || f` (TDH2)."""
    check_point(public_key, "the emergency public key")
    if len(data_key) != DATA_KEY_BYTES:
        raise ThresholdError(f"a data key is {DATA_KEY_BYTES} bytes")
    r = rand()
    ephemeral = base_mul(r)
    key = _wrap_key(mul(r, public_key), ephemeral, public_key)
    sealed: bytes = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(
        data_key, _aad(ephemeral, label), _WRAP_NONCE, key)
    second = mul(r, G)
    k = rand()
    e = _binding_challenge(public_key, label, sealed, ephemeral, base_mul(k), second, mul(k, G))
    f = (k + e * r) % L
    return ephemeral + sealed + second + scalar_bytes(e) + scalar_bytes(f)


def _split(wrapped: bytes) -> tuple[bytes, bytes, bytes, bytes, bytes]:
    if len(wrapped) != WRAP_BYTES:
        raise ThresholdError(f"an emergency wrap is {WRAP_BYTES} bytes, got {len(wrapped)}")
    at = POINT_BYTES + _SEALED_BYTES
    return (wrapped[:POINT_BYTES], wrapped[POINT_BYTES:at], wrapped[at:at + POINT_BYTES],
            wrapped[at + POINT_BYTES:at + POINT_BYTES + SCALAR_BYTES],
            wrapped[at + POINT_BYTES + SCALAR_BYTES:])


def wrap_ephemeral(wrapped: bytes) -> bytes:
    """The `R` of a wrap: what authorities make decryption shares of. Checks only its form:
    release a share only for a wrap that `check_wrap` accepted for the record's label."""
    return check_point(_split(wrapped)[0], "the wrap's ephemeral point")


# A wrap is checked at admission, at block check or build and by the mempool's re-check, ~0.6 ms
# each time; verified ones are remembered (about 400 bytes each). Failures are not cached.
@functools.lru_cache(maxsize=1024)
def check_wrap(public_key: bytes, wrapped: bytes, label: WrapLabel) -> bytes:
    """`R`, when `wrapped` is a well-formed wrap for `public_key` whose TDH2 proof verifies for
    `label`; else a ThresholdError naming what failed."""
    ephemeral, sealed, second, e_bytes, f_bytes = _split(wrapped)
    check_point(ephemeral, "the wrap's ephemeral point")
    check_point(second, "the wrap's second ephemeral point")
    e = int.from_bytes(e_bytes, "little")
    f = int.from_bytes(f_bytes, "little")
    if not (0 < e < L and 0 < f < L):
        raise ThresholdError("the wrap's proof scalars are out of range")
    try:
        commit = _sub(base_mul(f), mul(e, ephemeral))
        second_commit = _sub(mul(f, G), mul(e, second))
    except (ThresholdError, nacl.exceptions.CryptoError):
        raise WrapNotBound("the wrap's proof does not verify") from None
    if e != _binding_challenge(public_key, label, sealed, ephemeral, commit, second,
                               second_commit):
        raise WrapNotBound(
            "the wrap's proof does not verify for this record (chain, patient, ciphertext "
            "hash): a wrap made for another record, re-randomised, or damaged")
    return ephemeral


# --- decryption shares --------------------------------------------------------------------------


def decryption_share(share: int, ephemeral: bytes, rand: RandomScalar = random_scalar,
                     domain: bytes = _PROOF_DOMAIN, context: bytes = b""
                     ) -> tuple[bytes, bytes]:
    """`D_i = s_i·R` and a DLEQ proof `(c, z)` that it uses the committed share (Chaum and
    Pedersen, "Wallet databases with observers", CRYPTO 1992). `domain` and `context` bind the
    proof to one use: a break-glass share by default, a complaint of a sub-share in
    crypto/dkg.py."""
    check_point(ephemeral, "the wrap's ephemeral point")
    commitment = base_mul(share)
    partial = mul(share, ephemeral)
    k = rand()
    a1, a2 = base_mul(k), mul(k, ephemeral)
    c = hash_scalar(domain, *((context,) if context else ()), commitment, ephemeral, partial,
                    a1, a2)
    z = (k + c * share) % L
    return partial, scalar_bytes(c) + scalar_bytes(z)


def verify_share(commitment: bytes, ephemeral: bytes, partial: bytes, proof: bytes,
                 domain: bytes = _PROOF_DOMAIN, context: bytes = b"") -> bool:
    """Whether `partial` is `s_i·R` for the `s_i` behind `commitment`, proven for `domain` and
    `context`. Never raises."""
    try:
        check_point(commitment, "commitment")
        check_point(ephemeral, "ephemeral")
        check_point(partial, "decryption share")
        c, z = _proof_scalars(proof)
        a1 = _sub(base_mul(z), mul(c, commitment)) if c else base_mul(z)
        a2 = _sub(mul(z, ephemeral), mul(c, partial)) if c else mul(z, ephemeral)
    except (ThresholdError, nacl.exceptions.CryptoError):
        return False
    return c == hash_scalar(domain, *((context,) if context else ()), commitment, ephemeral,
                            partial, a1, a2)


def _proof_scalars(proof: bytes) -> tuple[int, int]:
    """A proof's `(c, z)`: c below L and z in 1..L-1, or ThresholdError."""
    if len(proof) != PROOF_BYTES:
        raise ThresholdError(f"a proof is {PROOF_BYTES} bytes, got {len(proof)}")
    c = int.from_bytes(proof[:SCALAR_BYTES], "little")
    z = int.from_bytes(proof[SCALAR_BYTES:], "little")
    if not (c < L and 0 < z < L):
        raise ThresholdError("a proof's scalars are out of range")
    return c, z


def prove_knowledge(secret: int, point: bytes, domain: bytes, context: bytes,
                    rand: RandomScalar = random_scalar) -> bytes:
    """A Schnorr proof `(c, z)` that whoever made it knows `secret` with `point = secret·B`
    (C. P. Schnorr, "Efficient signature generation by smart cards", J. Cryptology 4, 1991;
    Fiat-Shamir over BLAKE2b), bound to `domain` and `context`: copied into another context it
    does not verify."""
    k = rand()
    commitment = base_mul(k)
    c = hash_scalar(domain, context, point, commitment)
    return scalar_bytes(c) + scalar_bytes((k + c * secret) % L)


def knows(point: bytes, proof: bytes, domain: bytes, context: bytes) -> bool:
    """Whether `proof` shows knowledge of `point`'s logarithm, for `domain` and `context`.
    Never raises."""
    try:
        check_point(point, "the point")
        c, z = _proof_scalars(proof)
        commitment = _sub(base_mul(z), mul(c, point)) if c else base_mul(z)
    except (ThresholdError, nacl.exceptions.CryptoError):
        return False
    return c == hash_scalar(domain, context, point, commitment)


def lagrange_at_zero(index: int, indexes: Sequence[int]) -> int:
    numerator, denominator = 1, 1
    for other in indexes:
        if other != index:
            numerator = numerator * other % L
            denominator = denominator * (other - index) % L
    return numerator * pow(denominator, -1, L) % L


def combine(partials: Mapping[int, bytes], threshold: int) -> bytes:
    """`s·R` from at least `threshold` verified decryption shares, by holder index (1-based)."""
    if len(partials) < threshold:
        raise ThresholdError(f"{len(partials)} valid shares, {threshold} needed")
    chosen = sorted(partials)[:threshold]
    total: bytes | None = None
    for index in chosen:
        term = mul(lagrange_at_zero(index, chosen), partials[index])
        total = term if total is None else add_points(total, term)
    assert total is not None
    return total


def open_wrap(public_key: bytes, wrapped: bytes, label: WrapLabel, shared: bytes) -> bytes:
    """The data key, from a wrap bound to `label` and the combined `s·R`."""
    ephemeral = check_wrap(public_key, wrapped, label)
    key = _wrap_key(shared, ephemeral, public_key)
    try:
        data_key: bytes = sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(
            _split(wrapped)[1], _aad(ephemeral, label), _WRAP_NONCE, key)
    except nacl.exceptions.CryptoError:
        raise ThresholdError("the emergency wrap does not open with the combined shares") \
            from None
    return data_key


# --- re-sharing to a new set of holders -----------------------------------------------------------
# Each of t old holders re-deals its own share s_i with a fresh polynomial g_i of degree t'-1,
# g_i(0) = s_i, publishing commitments C_i,k = a_i,k·B (so C_i,0 = S_i, checkable against the old
# commitment) and g_i(j) sealed to new holder j. New holder j's share is Σ λ_i·g_i(j) over the t
# dealers (λ at 0 over the dealers' old indexes): the same secret s, never assembled, because
# Σ λ_i·g_i(0) = Σ λ_i·s_i = s. Its commitment is public: Σ λ_i·Σ_k j^k·C_i,k.


@dataclass(frozen=True, slots=True)
class Redealing:
    coefficients: tuple[bytes, ...]  # C_k = a_k·B, C_0 = the dealer's share commitment
    subshares: tuple[int, ...]  # subshares[j-1] = g(j): each sealed to new holder j


def redeal(share: int, new_threshold: int, new_holders: int,
           rand: RandomScalar = random_scalar) -> Redealing:
    if not 1 <= new_threshold <= new_holders:
        raise ThresholdError(f"threshold {new_threshold} must be within 1..{new_holders}")
    coefficients = [share] + [rand() for _ in range(new_threshold - 1)]
    subshares = tuple(sum(c * pow(j, k, L) for k, c in enumerate(coefficients)) % L
                      for j in range(1, new_holders + 1))
    return Redealing(tuple(base_mul(c) for c in coefficients), subshares)


def evaluate_commitment(coefficients: Sequence[bytes], index: int) -> bytes:
    """Σ_k index^k·C_k: the commitment of g(index)."""
    total = coefficients[0]
    for k, point in enumerate(coefficients[1:], start=1):
        total = add_points(total, mul(pow(index, k, L), point))
    return total


def subshare_valid(coefficients: Sequence[bytes], index: int, subshare: int) -> bool:
    try:
        return base_mul(subshare) == evaluate_commitment(coefficients, index)
    except ThresholdError:
        return False


def reshared_commitments(dealings: Mapping[int, Sequence[bytes]], new_holders: int
                         ) -> tuple[bytes, ...]:
    """The new holders' share commitments from the dealers' coefficient commitments (by old
    index)."""
    dealers = sorted(dealings)
    result = []
    for j in range(1, new_holders + 1):
        total: bytes | None = None
        for i in dealers:
            term = mul(lagrange_at_zero(i, dealers), evaluate_commitment(dealings[i], j))
            total = term if total is None else add_points(total, term)
        assert total is not None
        result.append(total)
    return tuple(result)


def combine_subshares(subshares: Mapping[int, int]) -> int:
    """A new holder's share from its subshares, by dealer (old index)."""
    dealers = sorted(subshares)
    return sum(lagrange_at_zero(i, dealers) * subshares[i] for i in dealers) % L
