"""The node shell carries out the core's effects in order: the double-sign guard is on disk
before the signed message it covers leaves the node, and a block is in the store before its
transactions leave the mempool."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from healthnode.clock import now_ms
from healthnode.consensus.events import STEP_WAIT, TimeoutFired
from healthnode.consensus.safety import decode_safety_state
from healthnode.home.layout import make_testnet
from healthnode.node.daemon import Node
from healthnode.node.driver import SAFETY_GUARD
from healthnode.protocol.block import PREVOTE, Vote
from healthnode.protocol.tx import decode_tx
from healthnode.protocol.wire import CompactProposal, decode_gossip
from tests.cluster import Patient, free_base_port


class GuardCheckingGossip:
    """Stands in for the gossip layer: at each broadcast, reads the guard from disk."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.sent: list[Any] = []

    def connected(self) -> list[bytes]:
        return []

    def broadcast(self, frame: bytes, *, skip: bytes | None = None) -> None:
        message = decode_gossip(frame)
        raw = self.node.store.read_guard(SAFETY_GUARD)
        assert raw is not None, "a signed message left before any guard was written"
        guard = decode_safety_state(raw)
        if isinstance(message, CompactProposal):
            assert message.proposal.signature_valid("healthnode-testnet")
            assert (guard.proposal_round, guard.proposal_hash) == (
                message.proposal.round, message.proposal.block_hash)
        elif isinstance(message, Vote) and message.vote_type == PREVOTE:
            assert (guard.prevote_round, guard.prevote_hash) == (
                message.round, message.block_hash)
        self.sent.append(message)


async def test_the_guard_is_synced_before_the_proposal_and_vote_it_covers_are_sent(
        tmp_path: Path) -> None:
    make_testnet(4, tmp_path, free_base_port(4))
    node = Node(tmp_path / "node1")  # node1 proposes height 1, round 0
    node.open()
    try:
        gossip = GuardCheckingGossip(node)
        node.driver.gossip = gossip  # type: ignore[assignment]
        assert node.store.read_guard(SAFETY_GUARD) is None
        node.driver.apply(node.core.start(now_ms()), None)  # type: ignore[arg-type]
        anchor = decode_tx(Patient().anchor())
        assert node.submitter.offer(anchor, len(anchor.encode()), relayed=True) is None
        node.driver.apply(node.core.step(TimeoutFired(1, 0, STEP_WAIT, now_ms())),
                      None)  # type: ignore[arg-type]
        kinds = [type(message).__name__ for message in gossip.sent]
        assert kinds[:2] == ["CompactProposal", "Vote"], kinds
        proposal = gossip.sent[0]
        assert proposal.tx_hashes == (anchor.hash,)  # the admitted transaction is proposed
    finally:
        node.store.close()


async def test_a_block_is_in_the_store_before_its_transactions_leave_the_mempool(
        tmp_path: Path) -> None:
    make_testnet(1, tmp_path, free_base_port(1))  # one authority finalizes on its own
    node = Node(tmp_path / "node0")
    node.open()
    try:
        node.driver.gossip = GuardCheckingGossip(node)  # type: ignore[assignment]
        anchor = decode_tx(Patient().anchor())
        cleaned: list[bool] = []
        block_committed = node.mempool.block_committed

        def checking(view: Any, included: Any, time_ms: int) -> Any:
            cleaned.append(node.store.tx_location(anchor.hash) is not None)
            return block_committed(view, included, time_ms)

        node.mempool.block_committed = checking  # type: ignore[method-assign]
        node.driver.apply(node.core.start(now_ms()), None)  # type: ignore[arg-type]
        assert node.submitter.offer(anchor, len(anchor.encode()), relayed=True) is None
        node.driver.apply(node.core.step(TimeoutFired(1, 0, STEP_WAIT, now_ms())),
                      None)  # type: ignore[arg-type]
        assert node.store.head.height == 1
        assert cleaned == [True] and anchor.hash not in node.mempool  # (its announce may wait)
    finally:
        node.store.close()
