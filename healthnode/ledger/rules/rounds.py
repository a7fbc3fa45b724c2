"""The emergency key's rounds (rules version 4 on): its holders make it, refresh its shares and
move it to a new authority set, without a dealer and without ever assembling it (crypto/dkg.py
has the cryptography and its papers; docs/break-glass.md, "Rounds", says it in words).

Theory of operation
-------------------
A round is opened by the ledger itself, at the end of a block (`advance`), when:
- the network has no emergency key (`found`: a distributed key generation by the authorities);
- the authority set of the next block is not the key's holders (`reshare`: the same key to the
  new set);
- a threshold of holders asked for a refresh of the shares in force (`refresh`: the same key,
  new shares), which their nodes do every `[emergency] refresh_blocks` blocks.

It then passes through three phases, each closed at the end of a block, as soon as every
authority concerned has acted or once it has lasted `ROUND_PHASE_BLOCKS` blocks and
`ROUND_PHASE_MS` of block time, whichever comes first:
1. **keys**: each authority of the round's set posts an epoch key (`emergency.epoch_key`). The
   ones that did are the round's recipients; fewer than the new threshold fail the round.
2. **deals**: each dealer (the recipients in a first round, the current holders otherwise) posts
   its dealing (`emergency.deal`): commitments and one encrypted sub-share per recipient. Fewer
   dealings than needed (the new threshold in a first round, the key's threshold otherwise)
   fail the round.
3. **verdicts**: each recipient posts its verdict (`emergency.verdict`), with a complaint, proven,
   for each dealer whose sub-share for it is wrong. A founded complaint disqualifies the dealer;
   an unfounded one is refused, so no recipient can exclude an honest dealer.

When the verdicts are in, the qualified dealings (not disqualified) make the new key state: a
first round's key is the sum of their secrets, a refresh or re-sharing keeps the key. The state
says which dealers counted, and each recipient's node combines its sub-shares from exactly those
dealings (node/emergency.py; `round_that_made` names the round). With too few qualified
dealings the round fails. A round whose authority set changes under it fails too (a re-sharing
to the new set follows). A first round or a re-sharing for the same set as the round that just
ended waits `ROUND_RETRY_BLOCKS` and `ROUND_RETRY_MS` after it, so that an absent authority does
not cause rounds back to back. The epoch keys, dealings and verdicts of a round stay in the state
until the round after next opens, so that a node that was behind still finds its sub-shares.

Proofs keep a complaint from opening anything but its own sub-share (crypto/dkg.py): every
sub-share carries its dealer's proof of knowledge of its `r`, every epoch key its authority's
proof of knowledge of `x`, and a dealer cannot complain of itself. A dealing whose polynomial is 0
at a recipient is refused (its commitment there would be the identity, which no complaint can
fault); a recipient whose combined commitment is the identity holds no share.

A round's transactions are valid only in their phase of the round that is open, only from the
authorities it names, once each: that is their budget. Time is the block height, as every rule's
time is the chain's, so every node decides alike.
"""

from __future__ import annotations

from typing import Final

__all__ = ["DONE", "ROUNDS_FROM", "ROUND_PHASE_BLOCKS", "ROUND_RETRY_BLOCKS", "advance",
           "current_round", "deal", "dealers_of", "epoch_key", "epoch_key_of", "recipient_index",
           "refresh", "round_deal", "round_deals", "round_is_open", "round_that_made",
           "round_verdict", "subshare_context", "verdict"]

from healthnode import limits
from healthnode.crypto import dkg, threshold
from healthnode.ledger.rules.block_context import BlockContext, authorities
from healthnode.ledger.rules.budgets import BlockTally
from healthnode.ledger.rules.refusals import Reason, Reject
from healthnode.ledger.state import (
    EMERGENCY_KEY,
    EMERGENCY_KEY_ROUND,
    EMERGENCY_REFRESH,
    EMERGENCY_ROUND,
    ROUND_DEAL,
    ROUND_EPOCH_KEY,
    ROUND_VERDICT,
    Overlay,
    StateView,
    decode_value,
    height_bytes,
    read,
)
from healthnode.protocol.genesis import ROUNDS_FROM, EmergencyKey, ShareCommitment
from healthnode.protocol.schema import replace
from healthnode.protocol.state import (
    EmergencyDealState,
    EmergencyEpochKeyState,
    EmergencyKeyRound,
    EmergencyKeyState,
    EmergencyRefreshVotes,
    EmergencyRound,
    EmergencyVerdictState,
)
from healthnode.protocol.tx import (
    EmergencyDeal,
    EmergencyEpochKey,
    EmergencyRefresh,
    EmergencyVerdict,
)

ROUND_PHASE_BLOCKS: Final = limits.KEY_ROUND_PHASE_BLOCKS
ROUND_RETRY_BLOCKS: Final = limits.KEY_ROUND_RETRY_BLOCKS
ROUND_PHASE_MS: Final = limits.KEY_ROUND_PHASE_MS
ROUND_RETRY_MS: Final = limits.KEY_ROUND_RETRY_MS
DONE: Final = "done"


# --- reading ------------------------------------------------------------------------------------

def round_that_made(view: StateView, key: EmergencyKeyState) -> EmergencyKeyRound | None:
    """The round that made `key` (None: the genesis dealt it, or rules before 4 moved it)."""
    made = read(view, EMERGENCY_KEY_ROUND, EmergencyKeyRound)
    return made if made is not None and made.epoch == key.epoch else None


def current_round(view: StateView) -> EmergencyRound | None:
    """The round open, or the last one closed (None before the first)."""
    return read(view, EMERGENCY_ROUND, EmergencyRound)


def round_is_open(found: EmergencyRound | None) -> bool:
    return found is not None and found.phase != "closed"


def _round_prefix(prefix: bytes, number: int) -> bytes:
    return prefix + height_bytes(number)


def epoch_key_of(view: StateView, number: int, authority: bytes) -> bytes | None:
    posted = read(view, _round_prefix(ROUND_EPOCH_KEY, number) + authority,
                  EmergencyEpochKeyState)
    return None if posted is None else posted.public_key


def round_deals(view: StateView, number: int) -> list[EmergencyDealState]:
    prefix = _round_prefix(ROUND_DEAL, number)
    return [decode_value(raw, EmergencyDealState, key) for key, raw in view.scan(prefix)]


def round_deal(view: StateView, number: int, dealer: bytes) -> EmergencyDealState | None:
    return read(view, _round_prefix(ROUND_DEAL, number) + dealer, EmergencyDealState)


def round_verdict(view: StateView, number: int, recipient: bytes
                  ) -> EmergencyVerdictState | None:
    return read(view, _round_prefix(ROUND_VERDICT, number) + recipient, EmergencyVerdictState)


def subshare_context(chain_id: str, number: int, dealer: bytes, index: int
                     ) -> dkg.SubshareContext:
    return dkg.SubshareContext(chain_id, number, dealer, index)


def recipient_index(found: EmergencyRound, authority: bytes) -> int | None:
    """The authority's place in the round's set (from 1), if it is a recipient."""
    if authority not in found.target:
        return None
    index = found.target.index(authority) + 1
    return index if index in found.recipients else None


def dealers_of(view: StateView, found: EmergencyRound) -> dict[bytes, int]:
    """Who deals in the round, with the index its dealing counts under: the recipients in a
    first round (by place), the holders of the key in force otherwise (by share index)."""
    if found.purpose == "found":
        return {found.target[j - 1]: j for j in found.recipients}
    key = read(view, EMERGENCY_KEY, EmergencyKeyState)
    return {} if key is None else {c.authority: c.index for c in key.key.commitments}


# --- the transactions ---------------------------------------------------------------------------

def _open_round(state: StateView, number: int, phase: str, now: BlockContext) -> EmergencyRound:
    if now.rules < ROUNDS_FROM:
        raise Reject(Reason.KIND_NOT_IN_RULES,
                     f"the emergency key's rounds come with rules version {ROUNDS_FROM}")
    found = current_round(state)
    if found is None or not round_is_open(found) or found.number != number:
        open_now = found.number if round_is_open(found) and found is not None else None
        raise Reject(Reason.ROUND_NOT_OPEN, f"round {number} of the emergency key is not open"
                     + (f" (round {open_now} is)" if open_now else ""))
    if found.phase != phase:
        raise Reject(Reason.ROUND_NOT_IN_PHASE,
                     f"round {number} is in its {found.phase} phase, not {phase}")
    return found


def epoch_key(state: Overlay, tx: EmergencyEpochKey, now: BlockContext,
              _tally: BlockTally) -> None:
    found = _open_round(state, tx.round, "keys", now)
    if tx.signer not in found.target:
        raise Reject(Reason.NOT_ROUND_MEMBER, f"the signer is not in round {tx.round}'s set")
    if epoch_key_of(state, tx.round, tx.signer) is not None:
        raise Reject(Reason.ALREADY_IN_ROUND, "this authority already posted its epoch key")
    try:
        threshold.check_point(tx.public_key, "the epoch key")
    except threshold.ThresholdError as error:
        raise Reject(Reason.BAD_ROUND_TX, str(error)) from None
    if not dkg.epoch_key_proven(tx.public_key, tx.proof, now.chain_id, tx.round, tx.signer):
        raise Reject(Reason.BAD_ROUND_TX, "the proof that the signer knows its epoch key's "
                                          "secret does not verify (for this chain, round and "
                                          "signer)")
    state.put(_round_prefix(ROUND_EPOCH_KEY, tx.round) + tx.signer,
              EmergencyEpochKeyState(tx.public_key))


def deal(state: Overlay, tx: EmergencyDeal, now: BlockContext, _tally: BlockTally) -> None:
    found = _open_round(state, tx.round, "deals", now)
    dealers = dealers_of(state, found)
    if tx.signer not in dealers:
        raise Reject(Reason.NOT_ROUND_MEMBER, f"the signer deals in no part of round {tx.round}")
    if round_deal(state, tx.round, tx.signer) is not None:
        raise Reject(Reason.ALREADY_IN_ROUND, "this dealer already dealt in this round")
    if len(tx.coefficients) != found.threshold:
        raise Reject(Reason.BAD_ROUND_TX, f"expected {found.threshold} coefficient commitments "
                                          f"(the new threshold), got {len(tx.coefficients)}")
    if found.purpose != "found":
        key = read(state, EMERGENCY_KEY, EmergencyKeyState)
        assert key is not None  # a refresh or re-sharing opens only with a key in force
        own = next(c.commitment for c in key.key.commitments if c.authority == tx.signer)
        if tx.coefficients[0] != own:
            raise Reject(Reason.BAD_ROUND_TX, "a refresh or re-sharing deals the dealer's own "
                                              "share: the first commitment must be its own")
    if tuple(s.index for s in tx.subshares) != found.recipients:
        raise Reject(Reason.BAD_ROUND_TX, "one sub-share per recipient, in order: "
                                          + ", ".join(map(str, found.recipients)))
    try:
        for point in tx.coefficients:
            threshold.check_point(point, "a coefficient commitment")
        for subshare in tx.subshares:
            threshold.check_point(subshare.ephemeral, "a sub-share's ephemeral point")
            if int.from_bytes(subshare.masked, "little") >= threshold.L:
                raise threshold.ThresholdError("an encrypted sub-share is not below L")
            if not dkg.ephemeral_proven(subshare.ephemeral, subshare.masked, subshare.proof,
                                        subshare_context(now.chain_id, tx.round, tx.signer,
                                                         subshare.index)):
                raise threshold.ThresholdError(
                    f"the proof that the dealer knows the r of sub-share {subshare.index} "
                    f"does not verify")
            # g(j) = 0 would make recipient j's share commitment the identity, which is no
            # point of the group: a dealing that nobody could complain of, and that would fail
            # every refresh or re-sharing it is in.
            threshold.check_point(threshold.evaluate_commitment(tx.coefficients,
                                                                subshare.index),
                                  f"the commitment of sub-share {subshare.index}")
    except threshold.ThresholdError as error:
        raise Reject(Reason.BAD_ROUND_TX, str(error)) from None
    state.put(_round_prefix(ROUND_DEAL, tx.round) + tx.signer, EmergencyDealState(
        tx.signer, dealers[tx.signer], tx.coefficients, tx.subshares, None))


def verdict(state: Overlay, tx: EmergencyVerdict, now: BlockContext,
            _tally: BlockTally) -> None:
    found = _open_round(state, tx.round, "verdicts", now)
    index = recipient_index(found, tx.signer)
    if index is None:
        raise Reject(Reason.NOT_ROUND_MEMBER, f"the signer is no recipient of round {tx.round}")
    if round_verdict(state, tx.round, tx.signer) is not None:
        raise Reject(Reason.ALREADY_IN_ROUND, "this recipient already gave its verdict")
    accused = [complaint.dealer for complaint in tx.complaints]
    if len(set(accused)) != len(accused):
        raise Reject(Reason.BAD_COMPLAINT, "two complaints of one dealer")
    if tx.signer in accused:
        # A dealer that could complain of itself could withdraw its dealing after seeing
        # everyone's: the verdicts phase would be a second chance to bias the key.
        raise Reject(Reason.BAD_COMPLAINT, "a dealer cannot complain of its own dealing")
    epoch_public = epoch_key_of(state, tx.round, tx.signer)
    assert epoch_public is not None  # a recipient is one that posted its epoch key
    disqualified = []
    for complaint in tx.complaints:
        dealing = round_deal(state, tx.round, complaint.dealer)
        if dealing is None:
            raise Reject(Reason.BAD_COMPLAINT, "a complaint of a dealer that did not deal")
        mine = next(s for s in dealing.subshares if s.index == index)
        context = subshare_context(now.chain_id, tx.round, complaint.dealer, index)
        try:
            founded = dkg.complaint_founded(epoch_public, mine.ephemeral, mine.masked,
                                            complaint.shared, complaint.proof,
                                            dealing.coefficients, context)
        except threshold.ThresholdError as error:
            raise Reject(Reason.BAD_COMPLAINT, str(error)) from None
        if not founded:
            raise Reject(Reason.COMPLAINT_UNFOUNDED,
                         f"dealer {complaint.dealer.hex()[:16]}'s sub-share for recipient "
                         f"{index} opens to a value its commitments confirm")
        disqualified.append(dealing)
    for dealing in disqualified:
        if dealing.disqualified_by is None:
            state.put(_round_prefix(ROUND_DEAL, tx.round) + dealing.dealer,
                      replace(dealing, disqualified_by=tx.signer))
    state.put(_round_prefix(ROUND_VERDICT, tx.round) + tx.signer,
              EmergencyVerdictState(tuple(sorted(accused))))


def refresh(state: Overlay, tx: EmergencyRefresh, now: BlockContext,
            _tally: BlockTally) -> None:
    if now.rules < ROUNDS_FROM:
        raise Reject(Reason.KIND_NOT_IN_RULES,
                     f"the emergency key's rounds come with rules version {ROUNDS_FROM}")
    key = read(state, EMERGENCY_KEY, EmergencyKeyState)
    if key is None:
        raise Reject(Reason.NO_EMERGENCY_KEY, "this network has no emergency key to refresh")
    if tx.epoch != key.epoch:
        raise Reject(Reason.REFRESH_NOT_DUE, f"the shares in force are of epoch {key.epoch}, "
                                             f"not {tx.epoch}")
    if all(c.authority != tx.signer for c in key.key.commitments):
        raise Reject(Reason.NOT_SHARE_HOLDER, "only a holder of an emergency share asks for "
                                              "a refresh")
    if round_is_open(current_round(state)):
        raise Reject(Reason.ROUND_OPEN, "a round of the emergency key is open already")
    votes = read(state, EMERGENCY_REFRESH, EmergencyRefreshVotes)
    voters = set(votes.voters) if votes is not None and votes.epoch == key.epoch else set()
    if tx.signer in voters:
        raise Reject(Reason.ALREADY_VOTED, "this holder already asked for this refresh")
    state.put(EMERGENCY_REFRESH,
              EmergencyRefreshVotes(key.epoch, tuple(sorted(voters | {tx.signer}))))


# --- the end of a block -------------------------------------------------------------------------

def advance(state: Overlay, now: BlockContext) -> None:
    """At the end of every block from rules version 4 on: move the open round on, or open one."""
    found = current_round(state)
    if round_is_open(found):
        assert found is not None
        found = _step(state, found, now)
    if not round_is_open(found):
        _maybe_open(state, found, now)


def _step(state: Overlay, found: EmergencyRound, now: BlockContext) -> EmergencyRound:
    height = now.height
    if authorities(state, height + 1) != found.target:
        return _close(state, found, now, "the authority set changed during the round")
    late = _waited(found, now, ROUND_PHASE_BLOCKS, ROUND_PHASE_MS)
    if found.phase == "keys":
        posted = tuple(j for j, member in enumerate(found.target, start=1)
                       if epoch_key_of(state, found.number, member) is not None)
        if len(posted) < len(found.target) and not late:
            return found
        if len(posted) < found.threshold:
            return _close(state, found, now, f"{len(posted)} epoch keys, "
                                                f"{found.threshold} needed")
        return _put(state, replace(found, phase="deals", phase_since=height,
                                           phase_since_ms=now.time_ms, recipients=posted))
    if found.phase == "deals":
        dealt = round_deals(state, found.number)
        if len(dealt) < len(dealers_of(state, found)) and not late:
            return found
        if len(dealt) < found.needed:
            return _close(state, found, now, f"{len(dealt)} dealings, {found.needed} needed")
        return _put(state, replace(found, phase="verdicts", phase_since=height,
                                           phase_since_ms=now.time_ms))
    # verdicts
    given = sum(1 for j in found.recipients
                if round_verdict(state, found.number, found.target[j - 1]) is not None)
    if given < len(found.recipients) and not late:
        return found
    return _finish(state, found, now)


def _waited(found: EmergencyRound, now: BlockContext, blocks: int, ms: int) -> bool:
    """Whether the phase (or, for a closed round, the time since it closed) has lasted `blocks`
    blocks and `ms` of block time: a busy chain makes blocks fast, and an authority's node needs
    seconds, not blocks, to take its part."""
    return now.height - found.phase_since >= blocks and \
        now.time_ms - found.phase_since_ms >= ms


def _finish(state: Overlay, found: EmergencyRound, now: BlockContext) -> EmergencyRound:
    height = now.height
    qualified = [d for d in round_deals(state, found.number) if d.disqualified_by is None]
    if len(qualified) < found.needed:
        return _close(state, found, now, f"{len(qualified)} qualified dealings, "
                                            f"{found.needed} needed")
    key = read(state, EMERGENCY_KEY, EmergencyKeyState)
    if found.purpose == "found":
        coefficients = [d.coefficients for d in qualified]
        try:
            public_key = threshold.check_point(dkg.joint_key(coefficients), "the joint key")
        except threshold.ThresholdError as error:
            return _close(state, found, now, str(error))
    else:
        assert key is not None
        public_key = key.key.public_key
        by_index = {d.dealer_index: d.coefficients for d in qualified}
    holders = []
    for j in found.recipients:
        # A recipient whose commitment comes out as the identity (a share of 0: only a corrupt
        # dealer's choice, against its own recipient) holds no share.
        try:
            commitment = threshold.check_point(
                dkg.joint_commitment(coefficients, j) if found.purpose == "found"
                else dkg.redealt_commitment(by_index, j), "a share commitment")
        except threshold.ThresholdError:
            continue
        holders.append(ShareCommitment(found.target[j - 1], j, commitment))
    if len(holders) < found.threshold:
        return _close(state, found, now, f"{len(holders)} share commitments, "
                                            f"{found.threshold} needed")
    state.put(EMERGENCY_KEY, EmergencyKeyState(
        EmergencyKey(public_key, found.threshold, tuple(holders)), height,
        tuple(sorted(d.dealer_index for d in qualified))))
    state.put(EMERGENCY_KEY_ROUND, EmergencyKeyRound(found.number, found.purpose, height))
    state.delete(EMERGENCY_REFRESH)
    return _close(state, found, now, DONE)


def _close(state: Overlay, found: EmergencyRound, now: BlockContext, outcome: str
           ) -> EmergencyRound:
    return _put(state, replace(found, phase="closed", phase_since=now.height,
                               phase_since_ms=now.time_ms, outcome=outcome[:200]))


def _put(state: Overlay, found: EmergencyRound) -> EmergencyRound:
    state.put(EMERGENCY_ROUND, found)
    return found


def _maybe_open(state: Overlay, last: EmergencyRound | None, now: BlockContext) -> None:
    height = now.height
    key = read(state, EMERGENCY_KEY, EmergencyKeyState)
    target = authorities(state, height + 1)
    new_threshold = threshold.quorum_threshold(len(target))
    if key is None:
        purpose, needed = "found", new_threshold
    elif {c.authority for c in key.key.commitments} != set(target):
        purpose, needed = "reshare", key.key.threshold
    else:
        votes = read(state, EMERGENCY_REFRESH, EmergencyRefreshVotes)
        if votes is None or votes.epoch != key.epoch or len(votes.voters) < key.key.threshold:
            return
        purpose, needed = "refresh", key.key.threshold
        state.delete(EMERGENCY_REFRESH)
    if purpose != "refresh" and last is not None and last.target == target \
            and not _waited(last, now, ROUND_RETRY_BLOCKS, ROUND_RETRY_MS):
        return  # the last round for this set just ended: an absent authority gets time
    number = 1 if last is None else last.number + 1
    if number > 2:  # the round before the last one closed: nobody needs its parts any more
        for prefix in (ROUND_EPOCH_KEY, ROUND_DEAL, ROUND_VERDICT):
            for stale, _ in list(state.scan(_round_prefix(prefix, number - 2))):
                state.delete(stale)
    _put(state, EmergencyRound(number, purpose, height, "keys", height, now.time_ms, target,
                               new_threshold,
                               needed, (), ""))
