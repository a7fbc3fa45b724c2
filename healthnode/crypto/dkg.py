"""The emergency key made and kept by its holders alone: a distributed key generation, refresh
and re-sharing of its shares, with sub-shares that any node can check when a recipient
complains (docs/break-glass.md, "Rounds").

The key generation is Pedersen's, with Feldman's commitments: the "joint Feldman" protocol (T.
Pedersen, "A threshold cryptosystem without a trusted party", EUROCRYPT 1991; P. Feldman, "A
practical scheme for non-interactive verifiable secret sharing", FOCS 1987). Each dealer i picks a
polynomial `f_i` of degree t-1, publishes `C_i,k = a_i,k·B` and gives recipient j the sub-share
`f_i(j)`; a recipient checks `f_i(j)·B = Σ_k j^k·C_i,k` and complains of a dealer whose sub-share
fails. The qualified dealers Q are those without a founded complaint; the key is
`E = Σ_{i∈Q} C_i,0`, recipient j's share `s_j = Σ_{i∈Q} f_i(j)`, its commitment
`S_j = Σ_{i∈Q} Σ_k j^k·C_i,k`. Nobody ever holds `s = Σ f_i(0)`.

Why not Gennaro, Jarecki, Krawczyk and Rabin's variant ("Secure distributed key generation for
discrete-log based cryptosystems", J. Cryptology 20, 2007), which adds Pedersen commitments so
that a rushing adversary cannot bias the distribution of `E`? The same authors showed ("Secure
applications of Pedersen's distributed key generation protocol", CT-RSA 2003) that the bias
does not help against schemes whose security reduces to the hardness of the discrete logarithm
or computational Diffie-Hellman in the random-oracle model, which is the case of the hashed
ElGamal (TDH2-style) wraps here. The bias is real: a corrupt dealer that sees the others'
dealings can deal or not, and with a corrupt recipient it can also have its dealing disqualified
in the verdicts phase (a dealer cannot complain of itself). The simpler protocol has half the
commitments and no second round of reveals. docs/break-glass.md states this trade-off.

**Refresh and re-sharing** (Herzberg, Jarecki, Krawczyk and Yung, "Proactive secret sharing",
CRYPTO 1995, in the re-dealing form of Desmedt and Jajodia, 1997): each current holder i deals
its own share with a fresh polynomial `g_i`, `g_i(0) = s_i` (so `C_i,0` must equal its commitment
`S_i`), and recipient j's new share is `Σ_{i∈Q} λ_i·g_i(j)` with Lagrange coefficients over the
dealers' old indexes (threshold.py). The key stays the same; the new shares lie on a new random
polynomial, so shares of two epochs combine to nothing.

**Sub-shares a complaint can open in public.** A sub-share is encrypted to the recipient's epoch
key `X = x·B`: `R = r·B` and `m = g(j) + H(R, X, r·X, context) mod L`, where the context is the
chain, the round, the dealer and `j`. The recipient computes `K = x·R`. To complain it publishes
`K` with a Chaum-Pedersen proof that `log_B(X) = log_R(K)` (threshold.decryption_share, in a
domain of its own and bound to the context), so every node can compute `g(j)` and see whether it
fails the commitments: the ledger takes a founded complaint and refuses an unfounded one, and
needs no answer from the dealer. The epoch key lives for one round and is then deleted, so
sub-shares on chain open with nothing that is still anywhere.

Two proofs of knowledge (Schnorr) keep a complaint from opening anything but the sub-share it is
about. Each sub-share carries a proof that its dealer knows `r`, bound to the context and `m`:
without it, a corrupt dealer could send recipient j another dealer's `R` (or `a·R + b·B`) with a
garbled `m`, and j's founded complaint would publish `x_j·R`, which opens the honest dealer's
sub-share to j; a few of those and colluders below the threshold rebuild the honest dealers'
polynomials. With it, the dealer knows `r` and so `K = r·X` already: a complaint tells it
nothing. Each epoch key carries a proof that its authority knows `x`, bound to the chain, round
and authority, so that no authority can post another's epoch key as its own.

Pure: randomness comes from the caller's `rand` (os.urandom by default).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from healthnode.crypto import threshold
from healthnode.crypto.threshold import (
    L,
    RandomScalar,
    ThresholdError,
    base_mul,
    evaluate_commitment,
    lagrange_at_zero,
    mul,
    random_scalar,
    scalar_bytes,
)

_SUBSHARE_DOMAIN: Final = b"healthnode/break-glass/round-subshare/1"
_EPHEMERAL_DOMAIN: Final = b"healthnode/break-glass/round-ephemeral/1"
_EPOCH_KEY_DOMAIN: Final = b"healthnode/break-glass/round-epoch-key/1"
_COMPLAINT_DOMAIN: Final = b"healthnode/break-glass/round-complaint/1"


@dataclass(frozen=True, slots=True)
class SubshareContext:
    """What an encrypted sub-share is bound to: a sub-share copied into another round, from
    another dealer or to another index opens to garbage."""

    chain_id: str
    round: int
    dealer: bytes
    index: int

    def encode(self) -> bytes:
        return (self.chain_id.encode() + b"\x00" + self.round.to_bytes(8, "big") + self.dealer
                + self.index.to_bytes(2, "big"))


def _mask(context: SubshareContext, ephemeral: bytes, epoch_key: bytes, shared: bytes) -> int:
    return threshold.hash_scalar(_SUBSHARE_DOMAIN, context.encode(), ephemeral, epoch_key,
                                  shared)


def epoch_keypair(rand: RandomScalar = random_scalar) -> tuple[int, bytes]:
    """A round's epoch key: the secret `x` (kept by the node for the round only) and `X`."""
    secret = rand()
    return secret, base_mul(secret)


def _epoch_key_context(chain_id: str, round_number: int, authority: bytes) -> bytes:
    return chain_id.encode() + b"\x00" + round_number.to_bytes(8, "big") + authority


def epoch_key_proof(secret: int, chain_id: str, round_number: int, authority: bytes,
                    rand: RandomScalar = random_scalar) -> bytes:
    """The proof that `authority` knows its epoch key's `x`, for this chain and round."""
    return threshold.prove_knowledge(secret, base_mul(secret), _EPOCH_KEY_DOMAIN,
                                     _epoch_key_context(chain_id, round_number, authority), rand)


def epoch_key_proven(epoch_key: bytes, proof: bytes, chain_id: str, round_number: int,
                     authority: bytes) -> bool:
    return threshold.knows(epoch_key, proof, _EPOCH_KEY_DOMAIN,
                           _epoch_key_context(chain_id, round_number, authority))


def encrypt_subshare(epoch_key: bytes, subshare: int, context: SubshareContext,
                     rand: RandomScalar = random_scalar) -> tuple[bytes, bytes, bytes]:
    """`(R, m, proof)`: the sub-share encrypted to `epoch_key`, and the proof that the dealer
    knows `r`, bound to the context and `m`."""
    threshold.check_point(epoch_key, "the recipient's epoch key")
    r = rand()
    ephemeral = base_mul(r)
    masked = scalar_bytes((subshare + _mask(context, ephemeral, epoch_key,
                                            mul(r, epoch_key))) % L)
    proof = threshold.prove_knowledge(r, ephemeral, _EPHEMERAL_DOMAIN,
                                      context.encode() + masked, rand)
    return ephemeral, masked, proof


def ephemeral_proven(ephemeral: bytes, masked: bytes, proof: bytes, context: SubshareContext
                     ) -> bool:
    """Whether the dealer proved that it knows the `r` of this sub-share's `R`."""
    return threshold.knows(ephemeral, proof, _EPHEMERAL_DOMAIN, context.encode() + masked)


def open_subshare(epoch_key: bytes, ephemeral: bytes, masked: bytes, shared: bytes,
                  context: SubshareContext) -> int:
    """The sub-share, given `K = x·R` (the recipient's own, or revealed in a complaint)."""
    value = int.from_bytes(masked, "little")
    if len(masked) != threshold.SCALAR_BYTES or value >= L:
        raise ThresholdError("an encrypted sub-share is not a scalar below L")
    return (value - _mask(context, ephemeral, epoch_key, shared)) % L


def decrypt_subshare(secret: int, ephemeral: bytes, masked: bytes, context: SubshareContext
                     ) -> int:
    """The recipient's own sub-share, with its epoch secret `x`."""
    threshold.check_point(ephemeral, "a sub-share's ephemeral point")
    return open_subshare(base_mul(secret), ephemeral, masked, mul(secret, ephemeral), context)


def complaint_evidence(secret: int, ephemeral: bytes, context: SubshareContext,
                       rand: RandomScalar = random_scalar) -> tuple[bytes, bytes]:
    """`(K, proof)`: what a recipient reveals to complain of a sub-share. K opens that sub-share
    only, and its dealer, who proved it knows `r`, knew K already."""
    return threshold.decryption_share(secret, ephemeral, rand, _COMPLAINT_DOMAIN,
                                      context.encode())


def complaint_founded(epoch_key: bytes, ephemeral: bytes, masked: bytes, shared: bytes,
                      proof: bytes, coefficients: Sequence[bytes], context: SubshareContext
                      ) -> bool:
    """Whether a complaint holds: `shared` is proven to be `x·R` for the recipient's epoch key,
    and the sub-share it opens fails the dealer's commitments. Raises ThresholdError when the
    proof does not verify (the complaint is then not evidence of anything)."""
    if not threshold.verify_share(epoch_key, ephemeral, shared, proof, _COMPLAINT_DOMAIN,
                                  context.encode()):
        raise ThresholdError("the complaint's proof does not show K = x·R for the epoch key")
    subshare = open_subshare(epoch_key, ephemeral, masked, shared, context)
    return not threshold.subshare_valid(coefficients, context.index, subshare)


@dataclass(frozen=True, slots=True)
class Dealing:
    coefficients: tuple[bytes, ...]  # C_k = a_k·B
    subshares: dict[int, int]  # recipient index -> g(index)


def deal(constant: int | None, degree_plus_one: int, indexes: Sequence[int],
         rand: RandomScalar = random_scalar) -> Dealing:
    """A polynomial of `degree_plus_one` coefficients with constant term `constant` (a holder's
    share; None: a fresh random secret, the first round), its commitments and its values at
    `indexes`."""
    if degree_plus_one < 1:
        raise ThresholdError("a polynomial needs at least one coefficient")
    coefficients = [rand() if constant is None else constant]
    coefficients += [rand() for _ in range(degree_plus_one - 1)]
    values = {j: sum(c * pow(j, k, L) for k, c in enumerate(coefficients)) % L for j in indexes}
    return Dealing(tuple(base_mul(c) for c in coefficients), values)


def _sum_points(points: Sequence[bytes]) -> bytes:
    total = points[0]
    for point in points[1:]:
        total = threshold.add_points(total, point)
    return total


def joint_key(dealings: Sequence[Sequence[bytes]]) -> bytes:
    """The first round's key `E = Σ C_i,0` over the qualified dealings."""
    return _sum_points([coefficients[0] for coefficients in dealings])


def joint_commitment(dealings: Sequence[Sequence[bytes]], index: int) -> bytes:
    """The first round's share commitment of recipient `index`: `Σ_i Σ_k index^k·C_i,k`."""
    return _sum_points([evaluate_commitment(coefficients, index) for coefficients in dealings])


def redealt_commitment(dealings: Mapping[int, Sequence[bytes]], index: int) -> bytes:
    """A refresh's or a re-sharing's share commitment of recipient `index`, from the dealings by
    their dealers' old indexes: `Σ_i λ_i·Σ_k index^k·C_i,k`."""
    dealers = sorted(dealings)
    return _sum_points([mul(lagrange_at_zero(i, dealers), evaluate_commitment(dealings[i], index))
                        for i in dealers])


def joint_share(subshares: Sequence[int]) -> int:
    """A first-round share: the sum of the qualified dealers' sub-shares."""
    return sum(subshares) % L


def redealt_share(subshares: Mapping[int, int]) -> int:
    """A refreshed or re-shared share, from the sub-shares by their dealers' old indexes."""
    return threshold.combine_subshares(subshares)
