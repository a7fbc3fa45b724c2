"""The break-glass wrap attacks of issue 19, as pure functions over wrap bytes: what an attacker
can do with a wrap that is public on chain and no secret (docs/threat-model.md)."""

from __future__ import annotations

import nacl.bindings as sodium

from healthnode.crypto import threshold as T

_SEALED_END = T.POINT_BYTES + T.DATA_KEY_BYTES + 16


def parts(wrapped: bytes) -> tuple[bytes, bytes, bytes, int, int]:
    """R, the AEAD body, R̄, e, f."""
    at = _SEALED_END
    return (wrapped[:T.POINT_BYTES], wrapped[T.POINT_BYTES:at], wrapped[at:at + 32],
            int.from_bytes(wrapped[at + 32:at + 64], "little"),
            int.from_bytes(wrapped[at + 64:], "little"))


def join(ephemeral: bytes, sealed: bytes, second: bytes, e: int, f: int) -> bytes:
    return ephemeral + sealed + second + T.scalar_bytes(e) + T.scalar_bytes(f)


def re_randomise(wrapped: bytes, r: int) -> bytes:
    """`R + r·B`, `R̄ + r·G`, the body and the proof kept. Shares of it give `s·R + r·E`, from
    which the attacker subtracts `r·E`: the old attack."""
    ephemeral, sealed, second, e, f = parts(wrapped)
    return join(sodium.crypto_core_ed25519_add(ephemeral, T.base_mul(r)), sealed,
                sodium.crypto_core_ed25519_add(second, T.mul(r, T.G)), e, f)


def relabel(public_key: bytes, wrapped: bytes, label: T.WrapLabel) -> bytes:
    """The wrap moved to `label`, with every part of its proof that needs no secret recomputed:
    the commitments `w = f·B - e·R`, `w̄ = f·G - e·R̄` (what a verifier recomputes), and the
    challenge `e'` over the new label. `f` needs `r` (or the commitment's `k`), so it stays."""
    ephemeral, sealed, second, e, f = parts(wrapped)
    commit = sodium.crypto_core_ed25519_sub(T.base_mul(f), T.mul(e, ephemeral))
    second_commit = sodium.crypto_core_ed25519_sub(T.mul(f, T.G), T.mul(e, second))
    new_e = T._binding_challenge(public_key, label, sealed, ephemeral, commit, second,
                                 second_commit)
    return join(ephemeral, sealed, second, new_e, f)
