"""The restored node's signing hold: a node restored from a backup signs nothing until it has
synced past the highest height the network has finalized, so a restore can never make it
double-sign.

Theory of operation
-------------------
A backup is a copy of the chain store without its double-sign guard (store/leveldb.py). The node
key, though, may have signed after the backup was taken: proposals and votes of heights the
backup does not hold, which the guard remembered and the backup forgot. A restored node that
signed at once could sign a second, different message for one of those (height, round, step)
slots: a double sign, which is evidence against this hospital and, with more than f such
authorities, a fork.

An authority signs only at the height it is working on, its head + 1, and its head is a height
the network finalized. So if H is the highest height the network has finalized, the original
node signed nothing above H + 1, and a restored node that signs nothing at heights <= H + 1
cannot repeat any slot the original used. The hold, as a rule of the consensus core
(`Core.sign_from_height`): below that height the core signs nothing, persists nothing and counts
no vote of its own, yet follows every height, committing what 2/3+ of the others precommit or
what block sync brings.

Learning H. `init --restore` marks the store (the `restored` guard, home.RestoreMark). At start
the node holds every height (`HOLD_ALL`) and asks the authorities it is connected to for their
heads: requests of the state sync protocol for the chain up to a height, which a peer answers for
exactly the heights up to its head (with its bodies pruned or not), galloping up from its own
head and then bisecting. It asks again every PROBE_INTERVAL_S until
at least as many other authorities have answered as a quorum needs (all others when that is
fewer), and takes H = the highest head any of them holds (or its own head, if higher). Then it
persists H + 1 in the mark (a restart keeps the hold without asking again) and signs from
H + 2. When it commits height H + 1 the mark is removed and the node is an ordinary authority.

Why a quorum of answers: if fewer other authorities than a quorum are reachable, the network
cannot finalize H + 1 without this node anyway, so waiting for more answers costs no liveness;
and the more heads it sees, the less a lagging peer can make H too low. The rule assumes what
any restore must: that the original node has stopped for good (a key running twice double-signs
by construction) and that the authorities that saw its last blocks have had the few seconds
gossip needs to finalize them everywhere, so every correct peer's head is at least the
original's. A lying peer can only claim a height that is too high, which delays this node's
return (it keeps following the chain), never makes it sign early.

The cost: until the node is past H + 1 the others must finalize without it. With fewer than four
authorities, or with another authority down, they cannot, and the network waits as it would for
any authority beyond the f it tolerates (docs/operations.md).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final

import trio

from healthnode import limits, logs
from healthnode.home.backup import RESTORED_GUARD, RestoreMark
from healthnode.ledger import rules
from healthnode.net.framing import PEER_FAULTS, Transport
from healthnode.net.statesync import NoAnswer, ask
from healthnode.net.sync import SyncError
from healthnode.protocol.block import Block, quorum
from healthnode.protocol.statesync import ChainProof, StateSyncRequest
from healthnode.store.leveldb import ChainStore

log = logs.get_logger("healthnode.restore")

HOLD_ALL: Final = limits.HEIGHT_MAX + 1  # signs at no height: H is not known yet
PROBE_INTERVAL_S: Final = 2  # between rounds of asking peers for their heads
PROBE_PEER_TIMEOUT_S: Final = 30  # one peer's whole answer (a few dozen one-block requests)


class RestoreHold:
    """Whether this node's signatures are held after a restore, and until which height."""

    def __init__(self, store: ChainStore, mark: RestoreMark | None) -> None:
        self._store = store
        self.mark = mark

    @classmethod
    def load(cls, store: ChainStore) -> RestoreHold:
        raw = store.read_guard(RESTORED_GUARD)
        hold = cls(store, RestoreMark.decode(raw) if raw is not None else None)
        through = hold.hold_through_height
        if through is not None and store.head.height >= through:
            hold._lift()  # crashed after committing H + 1 but before the mark was removed
        return hold

    @property
    def active(self) -> bool:
        return self.mark is not None

    @property
    def hold_through_height(self) -> int | None:
        return None if self.mark is None else self.mark.hold_through_height

    @property
    def sign_from_height(self) -> int:
        """The consensus core's `sign_from_height`: 0 without a hold."""
        if self.mark is None:
            return 0
        through = self.mark.hold_through_height
        return HOLD_ALL if through is None else through + 1

    def describe(self) -> dict[str, Any]:
        if self.mark is None:
            return {"held": False}
        return {"held": True, "backup_height": self.mark.backup_height,
                "hold_through_height": self.mark.hold_through_height,
                "learning_network_height": self.mark.hold_through_height is None}

    def block_committed(self, block: Block) -> None:
        """A commit hook: the hold ends once height H + 1 is committed."""
        through = self.hold_through_height
        if through is not None and block.height >= through:
            self._lift()

    def _lift(self) -> None:
        assert self.mark is not None
        self._store.delete_guard(RESTORED_GUARD)
        log.info("restore_hold_lifted", hold_through_height=self.mark.hold_through_height,
                 height=self._store.head.height)
        self.mark = None

    async def run(self, p2p: Transport, own_key: bytes, connected: Callable[[], list[bytes]],
                  hold: Callable[[int], Awaitable[None]]) -> None:
        """Learn H from the `connected` authorities (if not yet known), persist the hold, then
        tell the core to sign from H + 2 (`hold`: the `SigningHeld` event). Returns at once
        when there is nothing to learn."""
        if self.mark is None or self.mark.hold_through_height is not None:
            return
        log.info("restore_hold_learning", backup_height=self.mark.backup_height,
                 height=self._store.head.height)
        network_height, answers = await self._learn_network_height(p2p, own_key, connected)
        through = network_height + 1
        # Persist before the core may sign (persist before you speak).
        self.mark = RestoreMark(self.mark.backup_height, self.mark.restored_ms, through)
        self._store.write_guard(RESTORED_GUARD, self.mark.encode())
        await hold(through + 1)
        log.info("restore_hold_learned", network_height=network_height,
                 hold_through_height=through,
                 answers={peer.hex()[:16]: height for peer, height in answers.items()})
        if self._store.head.height >= through:
            self._lift()

    async def _learn_network_height(self, p2p: Transport, own_key: bytes,
                                    connected: Callable[[], list[bytes]]
                                    ) -> tuple[int, dict[bytes, int]]:
        answers: dict[bytes, int] = {}
        while True:
            authorities = rules.authorities(self._store, self._store.head.height + 1)
            others = [key for key in authorities if key != own_key]
            needed = min(len(others), quorum(len(authorities)))
            asked = [peer for peer in connected() if peer in others]
            async with trio.open_nursery() as nursery:
                for peer in asked:
                    nursery.start_soon(self._ask, p2p, peer, answers)
            answered = {peer: height for peer, height in answers.items() if peer in others}
            if len(answered) >= needed:
                return max([self._store.head.height, *answered.values()]), answered
            log.info("restore_hold_waiting", answered=len(answered), needed=needed)
            await trio.sleep(PROBE_INTERVAL_S)

    async def _ask(self, p2p: Transport, peer: bytes, answers: dict[bytes, int]) -> None:
        with trio.move_on_after(PROBE_PEER_TIMEOUT_S):
            try:
                height = await peer_head(p2p, peer, self._store.head.height)
            except PEER_FAULTS as error:  # SyncError, a timeout, a reset: ask again next round
                log.info("restore_hold_probe_failed", peer=peer.hex()[:16],
                         error=str(error)[:120])
                return
            answers[peer] = max(height, answers.get(peer, 0))


async def peer_head(p2p: Transport, peer: bytes, floor: int) -> int:
    """The highest height `peer` has finalized, or `floor` if none above it: gallop up from
    `floor` (1, 2, 4, ... above it), then bisect, asking each time whether the peer holds that
    height (`_holds`), so about 2 log2(head - floor) requests find it."""
    low, step = floor, 1
    while low + step <= limits.HEIGHT_MAX and await _holds(p2p, peer, low + step):
        low += step
        step *= 2
    high = low + step  # not held (or beyond any height)
    while high - low > 1:
        middle = (low + high) // 2
        if await _holds(p2p, peer, middle):
            low = middle
        else:
            high = middle
    return low


async def _holds(p2p: Transport, peer: bytes, height: int) -> bool:
    """Whether `peer` has finalized `height`: it answers the state sync protocol's chain request
    for exactly the heights up to its head (net/statesync.py), whether or not it still holds
    their bodies (a pruning node does not: block sync would say no below its bodies, and make
    the network's height look lower than it is). A peer that lies can only claim more, which
    delays this node's return, never makes it sign early."""
    try:
        answer = await ask(p2p, peer, StateSyncRequest("chain", height))
    except NoAnswer:
        return False
    if not isinstance(answer, ChainProof) or answer.height != height:
        raise SyncError(f"the peer answered the chain request for {height} with another")
    return True
