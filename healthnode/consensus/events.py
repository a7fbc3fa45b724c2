"""What goes into the consensus core (events) and what comes out of it (effects).

The core is driven by the shell: every input is an event carrying the shell's clock as `now_ms`,
and every output is an effect the shell carries out **in list order**. Order is the contract:

- `PersistSafety` must be written with sync before any later effect of the same list is carried
  out. It always precedes the `Broadcast` of the signed message it covers, so a crash at any point
  leaves on disk at least what the network may have seen (the double-sign guard).
- `Commit` must be durable before later effects: the core has already moved to the next height and
  may sign messages of it in the same list.
- `ScheduleTimeout` asks for a `TimeoutFired` with the same (height, round, step) at `at_ms`. The
  core ignores timeouts that no longer apply, so the shell never needs to cancel one.
- `Broadcast` goes to every peer; the gossip layer relays messages it has not seen before.
- `RequestBlocks` asks peers for committed blocks from `from_height` on, each with the certificate
  that finalized it; replies come back as `BlockFetched`, in height order.
- `EvidenceFound` names a new equivocation this core detected; the shell gossips it (peers feed it
  to their cores as `EvidenceReceived`) and shows it on the admin socket.
- `Ignored` names why an input was ignored (bad signature, wrong height, ...): the node counts
  them per reason and may penalise the peer. It never changes the core's state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from healthnode.consensus.safety import SafetyState
from healthnode.protocol.block import (
    Block,
    CommitCertificate,
    Evidence,
    Proposal,
    Vote,
)

# Steps of a round. WAIT is round 0 of a new height before the propose timer runs (heartbeat).
# (Vote types are protocol.block.PREVOTE and PRECOMMIT; these are steps and timers.)
STEP_WAIT: Final = 0
STEP_PROPOSE: Final = 1
STEP_PREVOTE: Final = 2
STEP_PRECOMMIT: Final = 3
# Not a step: the timer that re-sends this height's own signed messages (see core.py).
STEP_REBROADCAST: Final = 4

STEP_NAMES: Final = {
    STEP_WAIT: "wait", STEP_PROPOSE: "propose", STEP_PREVOTE: "prevote",
    STEP_PRECOMMIT: "precommit", STEP_REBROADCAST: "rebroadcast",
}



# --- events -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TimeoutFired:
    height: int
    round: int
    step: int
    now_ms: int


@dataclass(frozen=True, slots=True)
class ProposalReceived:
    """A proposal with its block (None when the block has not arrived with it)."""

    proposal: Proposal
    block: Block | None
    now_ms: int


@dataclass(frozen=True, slots=True)
class VoteReceived:
    vote: Vote
    now_ms: int


@dataclass(frozen=True, slots=True)
class TxsAvailable:
    """The mempool holds transactions: a waiting height may start its round."""

    now_ms: int


@dataclass(frozen=True, slots=True)
class BlockFetched:
    """A committed block from block sync, with a certificate of precommits for it."""

    block: Block
    certificate: CommitCertificate
    now_ms: int


@dataclass(frozen=True, slots=True)
class EvidenceReceived:
    evidence: Evidence
    now_ms: int


@dataclass(frozen=True, slots=True)
class SigningHeld:
    """A restored node learned how far the network had finalized: sign nothing below
    `sign_from_height` (node/restore.py). Persisted by the shell before it is sent."""

    sign_from_height: int
    now_ms: int


@dataclass(frozen=True, slots=True)
class CommitApplied:
    """The shell carried out the `Commit` of `height`: the block, its certificate and its state
    are in the store, so the core may enter the next height and read the new chain state
    (raft's `Advance`). The shell sends it right after that `Commit`, before any other event."""

    height: int
    now_ms: int


Event = TimeoutFired | ProposalReceived | VoteReceived | TxsAvailable | BlockFetched | \
    EvidenceReceived | SigningHeld | CommitApplied


# --- effects ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PersistSafety:
    """Write `state` durably (fsync) before carrying out any later effect of the list."""

    state: SafetyState


@dataclass(frozen=True, slots=True)
class Broadcast:
    """Send a signed message to all peers; a proposal travels with its block."""

    message: Proposal | Vote
    block: Block | None = None


@dataclass(frozen=True, slots=True)
class ScheduleTimeout:
    height: int
    round: int
    step: int
    at_ms: int


@dataclass(frozen=True, slots=True)
class Commit:
    """Write `block` and the certificate that finalized it to the store. `proposal` is the signed
    proposal that carried the block (None when the block came from block sync, or from the valid
    block a restarted core read back from its safety state)."""

    block: Block
    certificate: CommitCertificate
    proposal: Proposal | None


@dataclass(frozen=True, slots=True)
class RequestBlocks:
    from_height: int


@dataclass(frozen=True, slots=True)
class EvidenceFound:
    evidence: Evidence


@dataclass(frozen=True, slots=True)
class Ignored:
    """An input was ignored; `reason` is a fixed snake_case name, `detail` says more."""

    reason: str
    detail: str = ""

@dataclass(frozen=True, slots=True)
class DropRefused:
    """Drop what the block source refused while building a block (`Built.refused`, opaque to
    the core) from the shell's pool, and tell whoever waits for it."""

    refused: tuple[object, ...]


Effect = PersistSafety | Broadcast | ScheduleTimeout | Commit | RequestBlocks | EvidenceFound | \
    Ignored | DropRefused
