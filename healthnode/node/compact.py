"""Compact proposals: a proposal goes out with its block as the transactions' hashes, and a peer
rebuilds the block from its own mempool, asking for the whole block (`BlockWanted`) only when a
transaction is missing. The idea is Bitcoin's compact block relay (BIP 152): the transactions
were already gossiped, so sending them again with the block would send them twice.

`CompactBlocks` keeps the blocks this node sent, to answer `BlockWanted`, and the blocks it
asked for, so a rebroadcast of the same proposal does not ask again. Both are bounded.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import trio

from healthnode.ledger.mempool import Mempool
from healthnode.metrics import NodeMetrics
from healthnode.net.gossip import Gossip
from healthnode.protocol.block import Block, Proposal
from healthnode.protocol.wire import BlockWanted, CompactProposal, encode_proposal_message

BLOCKS_SENT_MAX: Final = 16  # proposed blocks kept to answer BlockWanted (a few rounds' worth)
BLOCKS_WANTED_MAX: Final = 64  # blocks asked for, kept so a rebroadcast does not ask again
BLOCK_WANTED_RETRY_S: Final = 1.0  # ask again (and answer again) after this long


@dataclass
class _SentBlock:
    """A block this node sent as a compact proposal, kept to answer `BlockWanted`."""

    proposal: Proposal
    block: Block
    compact: bytes
    answered: dict[bytes, float] = field(default_factory=dict)  # peer -> when


class CompactBlocks:
    """The compact-proposal side of one node's gossip."""

    def __init__(self, gossip: Gossip, mempool: Mempool, head_height: Callable[[], int],
                 metrics: NodeMetrics, count_rejected: Callable[[str], None]) -> None:
        self._gossip = gossip
        self._mempool = mempool
        self._head_height = head_height
        self._metrics = metrics
        self._count_rejected = count_rejected
        self._sent: OrderedDict[bytes, _SentBlock] = OrderedDict()  # by block hash
        self._wanted: OrderedDict[bytes, float] = OrderedDict()  # block hash -> when
        self._nonces = random.SystemRandom()

    def frame(self, proposal: Proposal, block: Block | None) -> bytes:
        """The frame that carries `proposal`: compact when it has a block. The caller sends the
        transactions still waiting to be gossiped first, on the same streams, so that a peer has
        them when the proposal arrives."""
        if block is None:
            return encode_proposal_message(proposal, None)
        sent = self._sent.get(block.hash)
        if sent is None or sent.proposal != proposal:
            sent = _SentBlock(proposal, block, CompactProposal.of(proposal, block).encode())
            self._sent[block.hash] = sent
            while len(self._sent) > BLOCKS_SENT_MAX:
                self._sent.popitem(last=False)
        return sent.compact

    def rebuild(self, peer: bytes, message: CompactProposal) -> Block | None:
        """The block of a compact proposal whose header is the proposal's, rebuilt from the
        mempool; None if a transaction is missing (the sender is asked for the whole block)."""
        block = message.block(self._mempool.get)
        if block is None:
            self._metrics.compact_proposals.labels("incomplete").inc()
            self._want(peer, message)
        else:
            self._metrics.compact_proposals.labels("complete").inc()
        return block

    def _want(self, peer: bytes, message: CompactProposal) -> None:
        link = self._gossip.links.get(peer)
        block_hash = message.proposal.block_hash
        # The height being decided, or the next (this node may still be committing the last
        # block; the core keeps the next height's proposal for when it gets there, and the
        # proposer's re-sends are identical frames, dropped as seen). Other heights are block
        # sync's business.
        if link is None or not 1 <= message.header.height - self._head_height() <= 2:
            return
        asked = self._wanted.get(block_hash)
        now = trio.current_time()
        if asked is not None and now - asked < BLOCK_WANTED_RETRY_S:
            return
        self._wanted[block_hash] = now
        self._wanted.move_to_end(block_hash)
        while len(self._wanted) > BLOCKS_WANTED_MAX:
            self._wanted.popitem(last=False)
        self._gossip.send_to(link, BlockWanted(block_hash, self._nonces.getrandbits(63)).encode())

    def answer(self, peer: bytes, message: BlockWanted) -> None:
        """Send a peer the whole block of a compact proposal this node sent: at most once per
        peer and block in `BLOCK_WANTED_RETRY_S` (a block is up to 8 MiB)."""
        sent = self._sent.get(message.block_hash)
        link = self._gossip.links.get(peer)
        if sent is None or link is None:
            self._count_rejected("block_wanted_unknown")
            return
        now = trio.current_time()
        if now - sent.answered.get(peer, -BLOCK_WANTED_RETRY_S) < BLOCK_WANTED_RETRY_S:
            self._count_rejected("block_wanted_repeated")
            return
        sent.answered[peer] = now
        self._metrics.compact_proposals.labels("block_sent").inc()
        self._gossip.send_to(link, encode_proposal_message(sent.proposal, sent.block))
