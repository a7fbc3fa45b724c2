"""Verify a chain from its genesis, trusting nothing but the genesis.

Each block must link to the one before, carry in `last_commit` a certificate of the previous
block signed by more than two thirds of that height's authorities, and re-execute to the state
hash its header claims. The last block's own certificate closes the chain. This is what a node
does to its own store after a crash test, and what anyone holding a copy of a patient's history
and the genesis can do offline.
"""

from __future__ import annotations

from collections.abc import Iterable

from healthnode.crypto import ZERO_HASH
from healthnode.ledger.rules import (
    BlockRejected,
    apply_block,
    authorities,
    genesis_changes,
)
from healthnode.ledger.state import MemoryState
from healthnode.protocol.block import Block, CommitCertificate, VerificationError, verify_commit
from healthnode.protocol.genesis import Genesis


def replay_chain(genesis: Genesis,
                 chain: Iterable[tuple[Block, CommitCertificate]]) -> MemoryState:
    """Re-execute `chain` (blocks from height 1, each with its certificate) from `genesis`;
    return the resulting state, or raise VerificationError naming the first block that fails."""
    state = MemoryState()
    state.apply(genesis_changes(genesis))
    previous_hash = ZERO_HASH
    for height, (block, certificate) in enumerate(chain, start=1):
        where = f"block {height}"
        if block.height != height:
            raise VerificationError(f"{where}: has height {block.height}")
        if block.header.prev_hash != previous_hash:
            raise VerificationError(f"{where}: does not link to the block before it")
        if block.header.last_commit is not None:
            verify_commit(block.header.last_commit, genesis.chain_id,
                          authorities(state, height - 1))
        try:
            execution = apply_block(state, block)
        except BlockRejected as error:
            raise VerificationError(f"{where}: {error.reason}") from None
        if certificate.height != height or certificate.block_hash != block.hash:
            raise VerificationError(f"{where}: its certificate is for another block")
        verify_commit(certificate, genesis.chain_id, authorities(state, height))
        state.apply(execution.changes)
        previous_hash = block.hash
    return state
