"""Verify a chain from its genesis, trusting nothing but the genesis.

Each block must link to the one before, carry in `last_commit` a certificate of the previous
block signed by more than two thirds of that height's authorities, match its own transaction
and evidence roots, and re-execute to the state root its header claims. Each block's own
certificate must be signed by more than two thirds of the authorities of its height, through
every change of the authority set. This is what `healthnode verify` runs over a stopped node's
store or a backup, what a node does to its own store after a crash test, and what anyone holding
a copy of a chain and its genesis can do offline.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from healthnode.crypto import ZERO_HASH
from healthnode.ledger.rules import (
    BlockRejected,
    apply_block,
    authorities,
    genesis_state,
)
from healthnode.ledger.state import MemoryState
from healthnode.protocol.block import (
    Block,
    CommitCertificate,
    VerificationError,
    verify_block_shape,
    verify_commit,
)
from healthnode.protocol.genesis import Genesis

Progress = Callable[[int], None]


def replay_chain(genesis: Genesis, chain: Iterable[tuple[Block, CommitCertificate]],
                 progress: Progress | None = None) -> MemoryState:
    """Re-execute `chain` (blocks from height 1, each with its certificate) from `genesis`;
    return the resulting state, or raise VerificationError that names the first height that
    fails and the check (`height 17: state root: ...`). `progress(height)` is called after each
    block. Old tree versions are dropped as it goes, so memory follows the state, not the
    chain's length."""
    state = MemoryState(prune_tree=True)
    state.commit(genesis_state(genesis))
    previous_hash = ZERO_HASH
    for height, (block, certificate) in enumerate(chain, start=1):
        where = f"height {height}"
        if block.height != height:
            raise VerificationError(f"{where}: height: the stored block says {block.height}")
        if block.header.prev_hash != previous_hash:
            raise VerificationError(f"{where}: link: prev_hash is not the hash of block "
                                    f"{height - 1}")
        try:
            verify_block_shape(block, genesis.chain_id)
        except VerificationError as error:
            raise VerificationError(f"{where}: roots: {error}") from None
        if block.header.last_commit is not None:
            try:
                verify_commit(block.header.last_commit, genesis.chain_id,
                              authorities(state, height - 1))
            except VerificationError as error:
                raise VerificationError(f"{where}: last_commit: {error}") from None
            if block.header.last_commit.block_hash != previous_hash:
                raise VerificationError(f"{where}: last_commit: certifies another block")
        elif height > 1:
            raise VerificationError(f"{where}: last_commit: missing")
        try:
            execution = apply_block(state, block)
        except BlockRejected as error:
            check = "state root" if "state_hash" in error.reason else "execution"
            raise VerificationError(f"{where}: {check}: {error.reason}") from None
        if certificate.height != height or certificate.block_hash != block.hash:
            raise VerificationError(f"{where}: certificate: it is for another block")
        try:
            verify_commit(certificate, genesis.chain_id, authorities(state, height))
        except VerificationError as error:
            raise VerificationError(f"{where}: certificate: {error}") from None
        state.commit(execution)
        previous_hash = block.hash
        if progress is not None:
            progress(height)
    return state
