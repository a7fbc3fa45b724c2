"""This authority's part in the break-glass key: holding its share, re-dealing it when the
authority set changes, and taking up its new share (docs/break-glass.md).

Theory of operation
-------------------
The share lives in `<home>/emergency_share.json` (mode 0600, like the node key). At start and
after every finalized block the node compares it with the emergency key in force on the ledger:

- **Deal.** When the ledger says the key must move to a new authority set
  (`rules.reshare_target`) and this node holds a share that has not been re-dealt for it, the node
  re-deals its share (a fresh polynomial whose constant term is its share), seals each new
  holder's sub-share to that holder's node key, and submits an `emergency.reshare`. It retries
  after a block if its transaction was dropped.
- **Take up.** When the ledger's key has moved to a set this node belongs to, the node opens its
  sub-shares from the dealings the ledger recorded, checks each against its dealer's public
  coefficients, combines them, checks the result against its new public commitment, and replaces
  its share file (written to a temporary file, synced, renamed).
- **Retire.** When the key has moved to a set this node is not in, it deletes its share file: an
  old share is of no use to the network and of use only to an attacker collecting t of them.

A share that does not match its commitment is never used: the node refuses break-glass requests
(`no_emergency_share`) and logs why, so a damaged share file cannot release a wrong share.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

import nacl.exceptions

from healthnode import crypto, logs
from healthnode.crypto import Identity, threshold
from healthnode.errors import KeyFileError, TxRefused
from healthnode.home import keys
from healthnode.ledger import rules
from healthnode.ledger.state import StateView
from healthnode.protocol.block import Block
from healthnode.protocol.state import EmergencyKeyState
from healthnode.protocol.tx import EmergencyReshare, SealedSubshare

if TYPE_CHECKING:
    from healthnode.node.admission import Submitter

log = logs.get_logger("healthnode.emergency")


def load_emergency_share(path: Path, store: StateView, public_key: bytes
                         ) -> tuple[int, int] | None:
    """This authority's (index, share) of the emergency key in force, checked against its
    commitment; None (break-glass refused by this node, logged) when absent or not matching."""
    key = rules.emergency_key(store)
    if key is None:
        return None
    mine = [c for c in key.key.commitments if c.authority == public_key]
    if not mine:
        return None  # not a share holder (an observer, or not in the set the key is with)
    if not path.exists():
        log.warning("emergency_share_missing", file=str(path))
        return None
    try:
        index, share = keys.load_emergency_share(path)
    except KeyFileError as error:
        log.error("emergency_share_unreadable", error=str(error))
        return None
    if index != mine[0].index or threshold.base_mul(share) != mine[0].commitment:
        return None
    return index, share


class EmergencyDuties:
    """This authority's share of the emergency key (`share`), kept in step with the ledger.
    The node key (`identity`) opens the sub-shares sealed to it; the node's own
    `emergency.reshare` goes in through `submitter`."""

    def __init__(self, store: StateView, identity: Identity, submitter: Submitter,
                 path: Path) -> None:
        self.store = store
        self.identity = identity
        self.submitter = submitter
        self.path = path
        self.share: tuple[int, int] | None = None  # (index, secret): None, no valid share
        self._dealt: dict[int, bytes] = {}  # epoch -> our reshare transaction's hash

    def start(self) -> None:
        """At open: take up a share the key moved to while we were down, or load ours."""
        self.share = self._current_or_new_share()

    def block_committed(self, _block: Block) -> None:
        key = rules.emergency_key(self.store)
        if key is None:
            return
        if self.share is None or not self._matches(key, self.share):
            self.share = self._current_or_new_share()
        self._deal_if_due(key)

    # --- holding -------------------------------------------------------------------------------

    def _matches(self, key: EmergencyKeyState, share: tuple[int, int]) -> bool:
        mine = [c for c in key.key.commitments if c.authority == self.identity.public_key]
        return bool(mine) and mine[0].index == share[0] and \
            threshold.base_mul(share[1]) == mine[0].commitment

    def _current_or_new_share(self) -> tuple[int, int] | None:
        key = rules.emergency_key(self.store)
        if key is None:
            return None
        share = load_emergency_share(self.path, self.store, self.identity.public_key)
        if share is not None:
            return share
        mine = [c for c in key.key.commitments if c.authority == self.identity.public_key]
        if not mine:
            self._retire()
            return None
        if not key.dealers:  # the genesis dealing: the share file is all there is
            if self.path.exists():
                log.error("emergency_share_mismatch", file=str(self.path),
                          expected_index=mine[0].index)
            return None
        return self._take_up(key, mine[0].index, mine[0].commitment)

    def _take_up(self, key: EmergencyKeyState, index: int, commitment: bytes
                 ) -> tuple[int, int] | None:
        identity = self.identity
        subshares: dict[int, int] = {}
        for dealing in rules.emergency_dealings(self.store, key.epoch):
            if dealing.dealer_index not in key.dealers:
                continue
            sealed = next((s.sealed for s in dealing.sealed_shares
                           if s.recipient == identity.public_key), None)
            try:
                value = int.from_bytes(crypto.unseal(identity, sealed or b""), "little")
            except nacl.exceptions.CryptoError:  # a sealed box that does not open: a faulty dealer
                value = 0
            if not 0 < value < threshold.L or not threshold.subshare_valid(
                    dealing.coefficients, index, value):
                log.error("emergency_subshare_invalid", dealer_index=dealing.dealer_index,
                          epoch=key.epoch)
                return None
            subshares[dealing.dealer_index] = value
        share = threshold.combine_subshares(subshares)
        if threshold.base_mul(share) != commitment:
            log.error("emergency_share_mismatch_after_reshare", epoch=key.epoch)
            return None
        self._write(index, share)
        log.info("emergency_share_taken_up", index=index, epoch=key.epoch,
                 dealers=list(key.dealers))
        return index, share

    def _write(self, index: int, share: int) -> None:
        temporary = self.path.with_suffix(".tmp")
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        keys.write_private_file(temporary, keys.encode_emergency_share(index, share))
        os.replace(temporary, self.path)

    def _retire(self) -> None:
        if self.path.exists():
            self.path.unlink()
            log.info("emergency_share_retired", file=str(self.path))

    # --- dealing -------------------------------------------------------------------------------

    def _deal_if_due(self, key: EmergencyKeyState) -> None:
        target = rules.reshare_target(self.store)
        share = self.share
        if target is None or share is None:
            return
        epoch, new_set = target
        index, secret = share
        if self.store.get(rules.emergency_dealing_key(epoch, index)) is not None:
            return  # dealt and final
        pending = self._dealt.get(epoch)
        if pending is not None and self.submitter.is_waiting(pending):
            return  # dealt, waiting for a block
        new_keys = new_set.keys
        redealt = threshold.redeal(secret, threshold.quorum_threshold(len(new_keys)),
                                   len(new_keys))
        sealed = tuple(SealedSubshare(recipient, crypto.seal(
            recipient, threshold.scalar_bytes(redealt.subshares[j])))
            for j, recipient in enumerate(new_keys))
        try:
            tx = self.submitter.submit_own(lambda nonce: EmergencyReshare(
                self.identity.public_key, nonce, epoch, redealt.coefficients, sealed))
        except TxRefused as refused:  # try again after the next block
            log.warning("emergency_reshare_refused", epoch=epoch, reason=refused.code)
            return
        self._dealt[epoch] = tx.hash
        log.info("emergency_share_redealt", epoch=epoch, index=index, holders=len(new_keys),
                 threshold=len(redealt.coefficients))
