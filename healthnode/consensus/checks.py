"""Consensus-level checks of certificates and blocks, with an injectable signature verifier.

`protocol.block.verify_commit` checks a certificate with a fresh Ed25519 verification per
signature. The core checks the same facts here through a `Verify` function so that a caller that
sees the same vote many times (the simulator runs thousands of cores over one set of messages)
can memoise verification by message. The rules are the same as verify_commit's; a test holds the
two to the same answers.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Final

from healthnode.consensus.events import STEP_PRECOMMIT, STEP_PREVOTE, STEP_PROPOSE
from healthnode.protocol.block import CommitCertificate, quorum
from healthnode.protocol.genesis import ConsensusParams
from healthnode.protocol.signed import Signed

Verify = Callable[[Signed], bool]

_BASE_TIMEOUT_FIELD: Final = {
    STEP_PROPOSE: "propose_timeout_ms",
    STEP_PREVOTE: "prevote_timeout_ms",
    STEP_PRECOMMIT: "precommit_timeout_ms",
}


def step_timeout_ms(params: ConsensusParams, step: int, round_: int) -> int:
    """The step's base timeout plus `timeout_increase_ms` per round, at most the cap: after a
    partition heals, no step waits longer than `round_timeout_cap_ms`."""
    base: int = getattr(params, _BASE_TIMEOUT_FIELD[step])
    return min(base + round_ * params.timeout_increase_ms, params.round_timeout_cap_ms)


def check_certificate(certificate: CommitCertificate, authorities: Collection[bytes],
                      verify: Verify) -> str | None:
    """None when `certificate` holds valid precommits of more than two thirds of
    `authorities` for its block; otherwise the reason (a fixed name)."""
    seen: set[bytes] = set()
    for sig in certificate.signatures:
        if sig.signer not in authorities:
            return "certificate_signer_not_authority"
        if sig.signer in seen:
            return "certificate_signer_twice"
        if not verify(certificate.precommit(sig)):
            return "certificate_bad_signature"
        seen.add(sig.signer)
    if len(seen) < quorum(len(authorities)):
        return "certificate_without_quorum"
    return None
