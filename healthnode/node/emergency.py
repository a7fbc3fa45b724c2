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

Rounds (rules version 4 on)
---------------------------
From rules version 4 the key is made, refreshed and re-shared in rounds (ledger/rules/rounds.py),
and the node plays its part after every finalized block, as the open round's phase asks:
- **keys**: it makes a fresh epoch key `x`, writes it to `<home>/emergency_round_key.json` (mode
  0600, synced) before it posts `X = x·B` (`emergency.epoch_key`), so that a restart keeps it;
- **deals**: it deals (`emergency.deal`): a fresh random secret in a first round, its own share
  in a refresh or re-sharing, each recipient's sub-share encrypted to that recipient's epoch key;
- **verdicts**: it opens its sub-share of each dealing with `x`, checks it against the dealer's
  commitments, and posts its verdict (`emergency.verdict`) with a proven complaint for each
  sub-share that fails.
When the round closes with a new key state, the node combines its sub-shares of the qualified
dealings, checks the result against its new commitment, replaces its share file, and deletes the
epoch key: the sub-shares on chain then open with nothing that exists, and the old share is gone,
so neither old chain data with a stolen node key nor an old backup gives an old share. A node
that no longer holds a share deletes its share file. It asks for a refresh (`emergency.refresh`)
once the shares in force are `[emergency] refresh_blocks` old.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import nacl.exceptions

from healthnode import crypto, logs
from healthnode.crypto import Identity, dkg, threshold
from healthnode.errors import KeyFileError, TxRefused
from healthnode.home import keys
from healthnode.ledger import rules
from healthnode.ledger.rules import rounds
from healthnode.ledger.state import EMERGENCY_REFRESH, StateView, read
from healthnode.protocol.block import Block
from healthnode.protocol.state import (
    EmergencyKeyRound,
    EmergencyKeyState,
    EmergencyRefreshVotes,
    EmergencyRound,
)
from healthnode.protocol.tx import (
    AnyTx,
    Complaint,
    EmergencyDeal,
    EmergencyEpochKey,
    EmergencyRefresh,
    EmergencyReshare,
    EmergencyVerdict,
    EncryptedSubshare,
    SealedSubshare,
)

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
                 path: Path, round_key_path: Path | None = None, refresh_blocks: int = 0
                 ) -> None:
        self.store = store
        self.identity = identity
        self.submitter = submitter
        self.path = path
        self.round_key_path = round_key_path or path.with_name("emergency_round_key.json")
        self.refresh_blocks = refresh_blocks
        self.share: tuple[int, int] | None = None  # (index, secret): None, no valid share
        self._dealt: dict[int, bytes] = {}  # epoch -> our reshare transaction's hash
        self._sent: dict[tuple[int, str], bytes] = {}  # (round or epoch, kind) -> tx hash

    def start(self) -> None:
        """At open: take up a share the key moved to while we were down, or load ours."""
        if not self._rotated_away():
            self.share = self._current_or_new_share()

    def _rotated_away(self) -> bool:
        """Whether the ledger rotated this node's key away (node/rotation.py): the share file
        then waits, untouched, for the node's start under its new key, to which the ledger
        relabelled its commitment (same index, same share); under the old key it would look
        like a share of no holder, and be deleted."""
        return rules.rotated_to(self.store, self.identity.public_key) is not None

    def block_committed(self, _block: Block) -> None:
        if self._rotated_away():
            return
        meta = rules.chain_meta(self.store)
        with_rounds = rules.rules_at(self.store, meta.height + 1) >= rounds.ROUNDS_FROM
        key = rules.emergency_key(self.store)
        if key is not None and (self.share is None or not self._matches(key, self.share)):
            self.share = self._current_or_new_share()
        if with_rounds:
            self._round_duties(meta.chain_id, meta.height, key)
        elif key is not None:
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
        made_by = rounds.round_that_made(self.store, key)
        if made_by is None:
            return self._take_up(key, mine[0].index, mine[0].commitment)
        share = self._take_up_from_round(made_by, key, mine[0].index, mine[0].commitment)
        if share is None and self.path.exists():
            # A share of the epoch before: worth nothing to the network now, and something to
            # an attacker collecting old shares.
            self.path.unlink()
            log.warning("emergency_share_of_an_old_epoch_deleted", file=str(self.path))
        return share

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
        if not subshares:
            log.error("emergency_subshares_missing", epoch=key.epoch)
            return None
        share = threshold.combine_subshares(subshares)
        if not share or threshold.base_mul(share) != commitment:
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
        keys.sync_directory(self.path.parent)

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

    # --- rounds (rules version 4 on) ------------------------------------------------------------

    def _round_duties(self, chain_id: str, head: int, key: EmergencyKeyState | None) -> None:
        found = rounds.current_round(self.store)
        own = self.identity.public_key
        if rounds.round_is_open(found):
            assert found is not None
            self._forget_round_key(found.number)  # an earlier round's: its take-up is behind
            if found.phase == "keys" and own in found.target:
                self._post_epoch_key(chain_id, found)
            elif found.phase == "deals" and own in rounds.dealers_of(self.store, found):
                self._deal(chain_id, found)
            elif found.phase == "verdicts" and rounds.recipient_index(found, own) is not None:
                self._give_verdict(chain_id, found)
        else:
            self._forget_round_key(None if found is None else found.number + 1)
            if key is not None:
                self._ask_refresh_if_due(head, key)

    def _waiting(self, number: int, kind: str) -> bool:
        """Whether this node's transaction of this kind for round `number` waits in the pool."""
        pending = self._sent.get((number, kind))
        return pending is not None and self.submitter.is_waiting(pending)

    def _submit_once(self, number: int, kind: str, build: Callable[[int], AnyTx]) -> None:
        """Submit this node's transaction of a round unless one waits in the pool already; a
        refused one is tried again after the next block."""
        if self._waiting(number, kind):
            return
        try:
            tx = self.submitter.submit_own(build)
        except TxRefused as refused:
            log.warning("emergency_round_tx_refused", round=number, kind=kind,
                        reason=refused.code)
            return
        self._sent = {k: v for k, v in self._sent.items() if k[0] >= number}
        self._sent[(number, kind)] = tx.hash
        log.info("emergency_round_tx_sent", round=number, kind=kind)

    def _round_secret(self, number: int) -> int | None:
        """This node's epoch secret of round `number`, if its file holds that round's."""
        if not self.round_key_path.exists():
            return None
        try:
            held_round, secret = keys.load_round_key(self.round_key_path)
        except KeyFileError as error:
            log.error("emergency_round_key_unreadable", error=str(error))
            return None
        return secret if held_round == number else None

    def _forget_round_key(self, before: int | None) -> None:
        """Delete the epoch key of a round before `before` (None: of any round)."""
        if not self.round_key_path.exists():
            return
        with contextlib.suppress(KeyFileError):
            held_round, _ = keys.load_round_key(self.round_key_path)
            if before is not None and held_round >= before:
                return
        self.round_key_path.unlink()
        log.info("emergency_round_key_deleted", file=str(self.round_key_path))

    def _post_epoch_key(self, chain_id: str, found: EmergencyRound) -> None:
        own = self.identity.public_key
        if rounds.epoch_key_of(self.store, found.number, own) is not None:
            return
        secret = self._round_secret(found.number)
        if secret is None:
            self._forget_round_key(None)
            secret, _ = dkg.epoch_keypair()
            keys.write_private_file(self.round_key_path,
                                    keys.encode_round_key(found.number, secret))
        public = threshold.base_mul(secret)
        proof = dkg.epoch_key_proof(secret, chain_id, found.number, own)
        self._submit_once(found.number, "epoch_key", lambda nonce: EmergencyEpochKey(
            own, nonce, found.number, public, proof))

    def _deal(self, chain_id: str, found: EmergencyRound) -> None:
        own = self.identity.public_key
        if rounds.round_deal(self.store, found.number, own) is not None:
            return
        if self._waiting(found.number, "deal"):  # (before a dealing is made in vain)
            return
        if found.purpose == "found":
            constant = None
        elif self.share is None:
            log.error("emergency_round_cannot_deal", round=found.number,
                      reason="this node holds no valid share of the key in force")
            return
        else:
            constant = self.share[1]
        epoch_keys = {j: rounds.epoch_key_of(self.store, found.number, found.target[j - 1])
                      for j in found.recipients}
        dealing = dkg.deal(constant, found.threshold, found.recipients)
        subshares = []
        for j in found.recipients:
            epoch_key = epoch_keys[j]
            assert epoch_key is not None  # a recipient is one that posted its epoch key
            ephemeral, masked, proof = dkg.encrypt_subshare(
                epoch_key, dealing.subshares[j],
                rounds.subshare_context(chain_id, found.number, own, j))
            subshares.append(EncryptedSubshare(j, ephemeral, masked, proof))
        self._submit_once(found.number, "deal", lambda nonce: EmergencyDeal(
            own, nonce, found.number, dealing.coefficients, tuple(subshares)))

    def _give_verdict(self, chain_id: str, found: EmergencyRound) -> None:
        own = self.identity.public_key
        if rounds.round_verdict(self.store, found.number, own) is not None:
            return
        secret = self._round_secret(found.number)
        if secret is None:
            log.error("emergency_round_key_missing", round=found.number,
                      file=str(self.round_key_path))
            return
        index = rounds.recipient_index(found, own)
        assert index is not None
        complaints = []
        for dealing in rounds.round_deals(self.store, found.number):
            mine = next(s for s in dealing.subshares if s.index == index)
            context = rounds.subshare_context(chain_id, found.number, dealing.dealer, index)
            value = dkg.decrypt_subshare(secret, mine.ephemeral, mine.masked, context)
            if threshold.subshare_valid(dealing.coefficients, index, value):
                continue
            shared, proof = dkg.complaint_evidence(secret, mine.ephemeral, context)
            complaints.append(Complaint(dealing.dealer, shared, proof))
            log.warning("emergency_round_complaint", round=found.number,
                        dealer=dealing.dealer.hex()[:16])
        self._submit_once(found.number, "verdict", lambda nonce: EmergencyVerdict(
            own, nonce, found.number, tuple(complaints)))

    def _take_up_from_round(self, made: EmergencyKeyRound, key: EmergencyKeyState, index: int,
                            commitment: bytes) -> tuple[int, int] | None:
        secret = self._round_secret(made.round)
        if secret is None:
            log.error("emergency_round_key_missing", round=made.round,
                      file=str(self.round_key_path))
            return None
        chain_id = rules.chain_meta(self.store).chain_id
        subshares: dict[int, int] = {}
        for dealing in rounds.round_deals(self.store, made.round):
            if dealing.disqualified_by is not None:
                continue
            mine = next(s for s in dealing.subshares if s.index == index)
            context = rounds.subshare_context(chain_id, made.round, dealing.dealer, index)
            value = dkg.decrypt_subshare(secret, mine.ephemeral, mine.masked, context)
            if not threshold.subshare_valid(dealing.coefficients, index, value):
                log.error("emergency_subshare_invalid", round=made.round,
                          dealer_index=dealing.dealer_index)
                return None
            subshares[dealing.dealer_index] = value
        share = dkg.joint_share(list(subshares.values())) if made.purpose == "found" \
            else dkg.redealt_share(subshares)
        if not subshares or not share or threshold.base_mul(share) != commitment:
            log.error("emergency_share_mismatch_after_round", round=made.round)
            return None
        self._write(index, share)  # (a new file, or the old epoch's replaced)
        self._forget_round_key(None)
        log.info("emergency_share_taken_up", index=index, round=made.round,
                 purpose=made.purpose, dealers=list(key.dealers))
        return index, share

    def _ask_refresh_if_due(self, head: int, key: EmergencyKeyState) -> None:
        own = self.identity.public_key
        if self.refresh_blocks <= 0 or self.share is None or \
                head + 1 - key.epoch < self.refresh_blocks:
            return
        votes = read(self.store, EMERGENCY_REFRESH, EmergencyRefreshVotes)
        if votes is not None and votes.epoch == key.epoch and own in votes.voters:
            return
        self._submit_once(key.epoch, "refresh", lambda nonce: EmergencyRefresh(
            own, nonce, key.epoch))
