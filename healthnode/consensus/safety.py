"""The double-sign guard: what this authority has signed, kept on disk, consulted before signing.

An honest authority that signs two different prevotes for one (height, round) is indistinguishable
from a byzantine one, and one that forgets its lock after a restart can help finalize a
conflicting block. So before the core emits any signed proposal or vote it updates `SafetyState`
and asks the shell to persist it with sync (`PersistSafety`, ordered before the `Broadcast`).

For each kind of signature (proposal, prevote, precommit) the state holds the last round signed at
`height` and the block hash signed. Before signing kind K at (h, r) for hash X, `decide` answers:

- `SIGN`: nothing of kind K signed at (h, r) or later: sign X and persist first.
- `RESEND`: kind K was already signed at exactly (h, r): sign the persisted hash again (Ed25519
  is deterministic, so this reproduces the same signature) and never X if X differs.
- `REFUSE`: kind K was signed at a later round, or the state is for a later height (a node
  restored from a backup): sign nothing.

The lock (`locked_round`, `locked_hash`) is persisted in the same write as the precommit that takes
it, so a restarted core keeps refusing to prevote against it. The valid block (the latest block
seen with 2/3+ prevotes) is persisted with its proof of lock (those prevotes): locked nodes
accept only that block or a newer proof of lock, so if every correct node that held the block
forgot it in a crash, the height could never finish. With it, a restarted node re-proposes the
block and re-sends the proof, as the paper's valid-value rule requires.
"""

from __future__ import annotations

import enum
from typing import Annotated, Final

from msgspec import Meta

from healthnode import limits
from healthnode.codec import CodecError
from healthnode.errors import HealthnodeError
from healthnode.protocol.block import Block, Vote
from healthnode.protocol.fields import Bytes32, Height
from healthnode.protocol.schema import Message, decode_message, replace

# Signature kinds; PREVOTE and PRECOMMIT keep the values of protocol/block.py.
PROPOSAL: Final = 0

OptionalRound = Annotated[int, Meta(ge=-1, le=limits.ROUND_MAX)]  # -1: none at this height
OptionalHash = Bytes32 | None

# Small fields, the valid block and one prevote per authority.
SAFETY_STATE_BYTES_MAX: Final = limits.BLOCK_BYTES_MAX + 64 * limits.KIB


class SafetyStateError(HealthnodeError):
    """The persisted safety state cannot be read or is inconsistent: the node must not sign."""


class Decision(enum.Enum):
    SIGN = "sign"
    RESEND = "resend"
    REFUSE = "refuse"


class SafetyState(Message, tag=44):
    """What this authority signed at `height`, and its lock there."""

    height: Height
    proposal_round: OptionalRound
    proposal_hash: OptionalHash
    proposal_pol_round: OptionalRound  # so a re-sent proposal is the same proposal
    prevote_round: OptionalRound
    prevote_hash: OptionalHash  # None with a round >= 0: a nil prevote
    precommit_round: OptionalRound
    precommit_hash: OptionalHash
    locked_round: OptionalRound
    locked_hash: OptionalHash
    valid_round: OptionalRound
    valid_hash: OptionalHash
    valid_block: Block | None
    valid_pol: Annotated[tuple[Vote, ...], Meta(max_length=limits.AUTHORITIES_MAX)]

    @classmethod
    def empty(cls, height: int) -> SafetyState:
        return cls(height, -1, None, -1, -1, None, -1, None, -1, None, -1, None, None, ())

    def signed(self, kind: int) -> tuple[int, bytes | None]:
        """(round, hash) last signed of `kind` at `height`; round -1 when none."""
        if kind == PROPOSAL:
            return self.proposal_round, self.proposal_hash
        if kind == 2:
            return self.precommit_round, self.precommit_hash
        return self.prevote_round, self.prevote_hash

    def validate(self) -> None:
        """Rules beyond the schema, for a state read back from disk."""
        if (self.proposal_round == -1) != (self.proposal_hash is None):
            raise SafetyStateError("safety state: proposal round and hash disagree")
        if self.proposal_pol_round >= max(self.proposal_round, 0):
            raise SafetyStateError("safety state: proposal proof of lock not from an earlier round")
        for name in ("locked", "valid"):
            round_, hash_ = getattr(self, f"{name}_round"), getattr(self, f"{name}_hash")
            if (round_ == -1) != (hash_ is None):
                raise SafetyStateError(f"safety state: {name} round and hash disagree")
        for kind_name in ("prevote", "precommit"):
            if getattr(self, f"{kind_name}_round") == -1 and \
                    getattr(self, f"{kind_name}_hash") is not None:
                raise SafetyStateError(f"safety state: {kind_name} hash without a round")
        if self.locked_round > self.precommit_round:
            raise SafetyStateError("safety state: locked in a round it never precommitted")
        if self.valid_block is not None and self.valid_block.hash != self.valid_hash:
            raise SafetyStateError("safety state: valid block does not match its hash")
        for vote in self.valid_pol:
            if (vote.vote_type, vote.height, vote.round, vote.block_hash) != \
                    (1, self.height, self.valid_round, self.valid_hash):
                raise SafetyStateError("safety state: proof of lock is not for the valid block")


def decode_safety_state(data: bytes) -> SafetyState:
    """Read a persisted state; SafetyStateError names what is wrong (the node must stop)."""
    try:
        state: SafetyState = decode_message(data, SafetyState, SAFETY_STATE_BYTES_MAX)
    except CodecError as error:
        raise SafetyStateError(f"safety state: {error}") from None
    state.validate()
    return state


def decide(state: SafetyState | None, height: int, round_: int, kind: int,
           block_hash: bytes | None) -> tuple[Decision, bytes | None]:
    """May this authority sign `kind` for `block_hash` at (height, round)? Returns the decision
    and the hash to sign (the persisted one for RESEND)."""
    if state is None or state.height < height:
        return Decision.SIGN, block_hash
    if state.height > height:
        return Decision.REFUSE, None
    signed_round, signed_hash = state.signed(kind)
    if round_ > signed_round:
        return Decision.SIGN, block_hash
    if round_ == signed_round:
        return Decision.RESEND, signed_hash
    return Decision.REFUSE, None


def record(state: SafetyState | None, height: int, round_: int, kind: int,
           block_hash: bytes | None, pol_round: int = -1) -> SafetyState:
    """The state after signing `kind` for `block_hash` at (height, round)."""
    if state is None or state.height < height:
        state = SafetyState.empty(height)
    assert state.height == height, "record() after decide() refused"
    if kind == PROPOSAL:
        assert block_hash is not None
        return replace(state, proposal_round=round_, proposal_hash=block_hash,
                                   proposal_pol_round=pol_round)
    if kind == 2:
        return replace(state, precommit_round=round_, precommit_hash=block_hash)
    return replace(state, prevote_round=round_, prevote_hash=block_hash)


def with_lock(state: SafetyState, locked_round: int, locked_hash: bytes | None,
              valid_round: int, valid_hash: bytes | None, valid_block: Block | None = None,
              valid_pol: tuple[Vote, ...] = ()) -> SafetyState:
    return replace(state, locked_round=locked_round, locked_hash=locked_hash,
                               valid_round=valid_round, valid_hash=valid_hash,
                               valid_block=valid_block, valid_pol=valid_pol)
