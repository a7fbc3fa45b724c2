"""The consensus round's timeouts. (Certificates are checked by the one rule of
`protocol.block.certificate_problem`, which the core calls with its memoising verifier: the
simulator runs thousands of cores over one set of messages.)"""

from __future__ import annotations

from typing import Final

from healthnode.consensus.events import STEP_PRECOMMIT, STEP_PREVOTE, STEP_PROPOSE
from healthnode.protocol.block import Verify
from healthnode.protocol.genesis import ConsensusParams

__all__ = ["Verify", "step_timeout_ms"]

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
