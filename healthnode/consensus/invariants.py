"""What holds after every step of the consensus core (`Core.step` checks it): a broken invariant
is our bug, and the node stops (docs/architecture.md, rule 5)."""

from __future__ import annotations

from healthnode.consensus import safety
from healthnode.consensus.events import Broadcast, Commit, Effect, PersistSafety
from healthnode.consensus.safety import SafetyState
from healthnode.protocol.block import Proposal, Vote


def assert_invariants(locked_round: int, valid_round: int, round_: int, height: int,
                      committed_height: int, guard_before: SafetyState | None,
                      guard: SafetyState | None, signed: list[Proposal | Vote],
                      out: list[Effect], unapplied: int | None) -> None:
    """The lock is no newer than the valid value, which is no newer than the round; the
    height is the one after the last commit; a commit waiting for the shell's acknowledgement
    (`unapplied`) is the last commit, and its Commit is the step's last consensus action
    (nothing after it reads the new height's state); and every proposal or vote the core
    `signed` in this step and sent is covered by the double-sign `guard`, persisted before it
    went out unless the guard before the step (`guard_before`) covered it already."""
    assert locked_round <= valid_round <= round_, (locked_round, valid_round, round_)
    assert height == committed_height + 1, (height, committed_height)
    if unapplied is not None:
        assert unapplied == committed_height, (unapplied, committed_height)
        commits = [effect.block.height for effect in out if isinstance(effect, Commit)]
        assert commits == [unapplied], \
            "a commit waits for its acknowledgement without its Commit effect in this step"
    signed_now = {id(message) for message in signed}
    persisted = False
    for effect in out:
        if isinstance(effect, PersistSafety):
            persisted = True
            continue
        if not isinstance(effect, Broadcast) or id(effect.message) not in signed_now:
            continue  # a re-send, checked when it was signed; or another's message
        message = effect.message
        assert isinstance(message, Proposal | Vote)
        kind = safety.PROPOSAL if isinstance(message, Proposal) else message.vote_type
        what = (message.height, message.round, kind, message.block_hash)
        assert _guard_covers(guard, *what), \
            "a message of ours went out that the guard does not cover"
        assert persisted or _guard_covers(guard_before, *what), \
            "a message of ours went out before the guard that covers it was persisted"


def _guard_covers(state: SafetyState | None, height: int, round_: int, kind: int,
                  block_hash: bytes | None) -> bool:
    """Whether the guard `state` records a signature like this one: a later height, an earlier
    round of this kind at this height (whose hash the guard no longer keeps), or this very
    round with this hash."""
    if state is None or state.height < height:
        return False
    if state.height > height:
        return True
    signed_round, signed_hash = state.signed(kind)
    return round_ < signed_round or (round_ == signed_round and signed_hash == block_hash)
