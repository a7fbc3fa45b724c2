"""A hospital replaces its node key (`node.rotate`, rules version 4 on; docs/ledger.md, "A
hospital replaces its node key").

Theory of operation
-------------------
The old key, an authority, signs a `node.rotate` that names the new key and the height H from
which the new key takes its place; the new key signs its consent to exactly that (chain, old key,
new key, H), so that nobody hands its place to a key it does not hold (a typo, another hospital's
key). The ledger keeps the rotation waiting under H (`rotdue/`). H is at least
`ROTATION_NOTICE_BLOCKS_MIN` blocks after the block of the transaction, as for every change of
the authority set (a change decided at h lands at h+2, so that every node knows the signers of a
block before it comes), and at most `ROTATION_NOTICE_BLOCKS_MAX` ahead. A key has one rotation
waiting at a time; the new key must be no authority now or in any set decided for later, no
provider's key (registered or revoked), no other waiting rotation's new key, and never a key
that a rotation retired.

It takes effect in two steps at the ends of blocks (`take_effect`, which execution._end_block
runs before the emergency key's rounds move):
- **at the end of block H-2**, the authority set from H gets the new key in the old key's place:
  the same name and the same position, so the proposers' order is kept. Not later: a node's
  consensus core enters height H, and reads its authorities, as soon as it has decided block
  H-1 and before its shell has written that block (consensus/core.py, `_start_height`), so the
  set of H must be in the state after H-2, as an authority vote's change decided at h lands at
  h+2. The old key still signs block H-1 and its transactions in it;
- **at the end of block H-1**, the emergency key's share commitment of the old key is relabelled
  to the new key, with the same index and the same commitment: the same hospital holds the same
  share, so `rounds.advance`, which compares the key's holders with the next block's set, opens
  no re-sharing for it (one step sooner it would: the set of H-1 still has the old key); the
  holders' requests for a refresh are relabelled alike. And the old key is retired
  (`rotated/`): from H every transaction it signs is refused (`key_rotated`, checked for every
  kind in rules._apply_tx), a vote to add it back is refused, and the consensus core no longer
  counts its votes (it is in no authority set from H).
A round of the emergency key open at H fails, its set having changed, as it does for any change
of the set; the next round opens by the usual rules.

If the old key is no longer in the set of H (the other authorities voted it out first: the
remedy against a rotation signed with a stolen key, docs/threat-model.md), the set and the share
commitments are left as they are, and the old key is retired all the same.

A hospital's providers stay its own across a rotation: `provider.revoke` follows the registering
key's rotations (governance.py). The budget of `node.rotate` is the rule of one waiting rotation
per key, signed by an authority only; the door's budgets, which are for patients' keys, do not
apply to it (ledger/door.py).
"""

from __future__ import annotations

from typing import Final

from healthnode import limits
from healthnode.ledger.rules.block_context import (
    BlockContext,
    authorities,
    authority_set,
    pending_rotations,
    rotated_to,
)
from healthnode.ledger.rules.budgets import BlockTally
from healthnode.ledger.rules.governance import require_authority
from healthnode.ledger.rules.refusals import Reason, Reject
from healthnode.ledger.state import (
    ADDRESS,
    AUTHORITY_SET,
    EMERGENCY_KEY,
    EMERGENCY_REFRESH,
    PROVIDER,
    ROTATED,
    ROTATION_DUE,
    Overlay,
    StateView,
    decode_value,
    height_bytes,
    read,
)
from healthnode.protocol.genesis import ROUNDS_FROM, Authority
from healthnode.protocol.schema import replace
from healthnode.protocol.state import (
    AuthoritySet,
    EmergencyKeyState,
    EmergencyRefreshVotes,
    KeyRotation,
)
from healthnode.protocol.tx import NodeRotate

ROTATION_FROM: Final = ROUNDS_FROM  # the rules version that brought `node.rotate` (4)
# As for an authority vote: never the block that decides it, nor the next (whose proposer may
# already have built it).
ROTATION_NOTICE_BLOCKS_MIN: Final = 2
ROTATION_NOTICE_BLOCKS_MAX: Final = limits.KEY_ROTATION_NOTICE_BLOCKS_MAX


def refuse_retired_signer(state: StateView, signer: bytes, now: BlockContext) -> None:
    """KEY_ROTATED when a rotation retired `signer`: it signs nothing more, of any kind."""
    if now.rules < ROTATION_FROM:
        return
    retired = rotated_to(state, signer)
    if retired is not None:
        raise Reject(Reason.KEY_ROTATED, f"this node key was replaced by "
                                         f"{retired.new_key.hex()[:16]} from height "
                                         f"{retired.height} (node.rotate) and signs nothing more")


def node_rotate(state: Overlay, tx: NodeRotate, now: BlockContext, _tally: BlockTally) -> None:
    if now.rules < ROTATION_FROM:
        raise Reject(Reason.KIND_NOT_IN_RULES,
                     f"node.rotate comes with rules version {ROTATION_FROM}")
    require_authority(tx.signer, now)
    pending = pending_rotations(state)
    waiting = next((rotation for old, rotation in pending if old == tx.signer), None)
    if waiting is not None:
        raise Reject(Reason.ROTATION_PENDING,
                     f"this key is replaced by {waiting.new_key.hex()[:16]} from height "
                     f"{waiting.height} already; one rotation per key at a time")
    if tx.height < now.height + ROTATION_NOTICE_BLOCKS_MIN:
        raise Reject(Reason.ROTATION_HEIGHT_TOO_SOON,
                     f"a rotation in block {now.height} takes effect at height "
                     f"{now.height + ROTATION_NOTICE_BLOCKS_MIN} or later")
    if tx.height > now.height + ROTATION_NOTICE_BLOCKS_MAX:
        raise Reject(Reason.ROTATION_HEIGHT_TOO_FAR,
                     f"a rotation in block {now.height} takes effect at height "
                     f"{now.height + ROTATION_NOTICE_BLOCKS_MAX} at the latest")
    _check_new_key(state, tx.new_key, now, pending)
    if not tx.new_key_consents(now.chain_id):
        raise Reject(Reason.BAD_ROTATION_SIGNATURE,
                     "the new key's signature over (chain, old key, new key, height) does not "
                     "verify: a rotation goes only to a key that consents")
    state.put(ROTATION_DUE + height_bytes(tx.height) + tx.signer,
              KeyRotation(tx.new_key, tx.height, now.height))


def _check_new_key(state: StateView, new_key: bytes, now: BlockContext,
                   pending: list[tuple[bytes, KeyRotation]]) -> None:
    if rotated_to(state, new_key) is not None:
        raise Reject(Reason.ROTATION_KEY_RETIRED,
                     "the new key was rotated away once and signs nothing more")
    if new_key in now.authorities or any(new_key in later.keys
                                         for _, later in _sets_after(state, now.height)):
        raise Reject(Reason.ROTATION_KEY_IN_USE, "the new key is an authority's")
    if state.get(PROVIDER + new_key) is not None:
        raise Reject(Reason.ROTATION_KEY_IN_USE,
                     "the new key is a provider's (registered or revoked); a node key is no "
                     "provider key")
    if any(rotation.new_key == new_key for _, rotation in pending):
        raise Reject(Reason.ROTATION_KEY_IN_USE, "the new key is another rotation's new key")


def _sets_after(view: StateView, height: int) -> list[tuple[int, AuthoritySet]]:
    """The authority sets stored for heights after `height` (decided, not yet in force)."""
    found = []
    for key, value in view.scan(AUTHORITY_SET):
        starts = int.from_bytes(key[len(AUTHORITY_SET):], "big")
        if starts > height:
            found.append((starts, decode_value(value, AuthoritySet, key)))
    return found


# --- the end of a block -------------------------------------------------------------------------

def take_effect(state: Overlay, now: BlockContext) -> None:
    """At the end of every block from rules version 4 on: the authority set of the rotations
    two heights ahead, then the share commitments and the retirement of those of the next
    height (module docstring: why two steps)."""
    in_two = now.height + 2
    for old, rotation in _due(state, in_two):
        members = authority_set(state, in_two)
        if old in members.keys:
            state.put(AUTHORITY_SET + height_bytes(in_two), AuthoritySet(tuple(
                Authority(a.name, rotation.new_key) if a.public_key == old else a
                for a in members.authorities)))
        # Its announced addresses go with the seat: the same machine, a new peer id, dialled
        # from H without waiting for the new key's own announcement.
        address = state.get(ADDRESS + old)
        if address is not None and state.get(ADDRESS + rotation.new_key) is None:
            state.put(ADDRESS + rotation.new_key, address)
            state.delete(ADDRESS + old)
    next_height = now.height + 1
    for old, rotation in _due(state, next_height):
        if rotation.new_key in authorities(state, next_height):
            _relabel_share(state, old, rotation.new_key)
        state.delete(ROTATION_DUE + height_bytes(next_height) + old)
        state.put(ROTATED + old, rotation)


def _due(view: StateView, height: int) -> list[tuple[bytes, KeyRotation]]:
    """The rotations waiting for `height`, with the keys they retire."""
    prefix = ROTATION_DUE + height_bytes(height)
    return [(key[len(prefix):], decode_value(value, KeyRotation, key))
            for key, value in view.scan(prefix)]


def _relabel_share(state: Overlay, old: bytes, new: bytes) -> None:
    key = read(state, EMERGENCY_KEY, EmergencyKeyState)
    if key is not None and any(c.authority == old for c in key.key.commitments):
        commitments = tuple(replace(c, authority=new) if c.authority == old else c
                            for c in key.key.commitments)
        state.put(EMERGENCY_KEY, replace(key, key=replace(key.key, commitments=commitments)))
    votes = read(state, EMERGENCY_REFRESH, EmergencyRefreshVotes)
    if votes is not None and old in votes.voters:
        state.put(EMERGENCY_REFRESH, replace(votes, voters=tuple(sorted(
            new if voter == old else voter for voter in votes.voters))))
