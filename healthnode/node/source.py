"""The consensus core's `BlockSource`, over the ledger, the mempool and the chain store.

The proposer's block is built by `ledger.build_block` from the mempool, which it only reads: the
transactions the rules refused go back to the core in `Built`, and the core hands them to the
driver (`DropRefused`), which drops them with `drop`. A peer's block is checked
by `ledger.apply_block` on the committed state. Either way the execution (state changes and state
hash) is kept by block hash until the height commits, so the block that is finalized is executed
once, not twice. A block that arrives by block sync with a verified commit certificate is applied
without verifying each transaction signature again: the authorities that precommitted it did.
"""

from __future__ import annotations

from typing import Final

from healthnode.consensus.source import Built
from healthnode.crypto import Identity
from healthnode.ledger import rules
from healthnode.ledger.mempool import Mempool
from healthnode.ledger.rules import DEFAULT_QUOTAS, BlockRejected, Execution, Quotas
from healthnode.protocol.block import (
    Block,
    CommitCertificate,
    Evidence,
    VerificationError,
)
from healthnode.protocol.genesis import ConsensusParams
from healthnode.protocol.tx import AnyTx
from healthnode.store.leveldb import ChainStore

# A proposer puts at most this many transactions in one block, so that every authority can
# check it well within the propose timeout on modest hardware (~60 us per transaction to apply
# on this project's 2-core reference machine: about 0.15 s). A block too big to check in time
# makes every round time out while the pool only grows (seen at 5,750 transactions).
BLOCK_BUILD_TXS_MAX: Final = 2500


class LedgerSource:
    def __init__(self, store: ChainStore, mempool: Mempool, identity: Identity,
                 params: ConsensusParams, quotas: Quotas = DEFAULT_QUOTAS) -> None:
        self.store = store
        self.mempool = mempool
        self.public_key = identity.public_key
        self.params = params
        self.quotas = quotas
        self._executions: dict[bytes, Execution] = {}

    def authorities(self, height: int) -> tuple[bytes, ...]:
        return rules.authorities(self.store, height)

    def build_block(self, height: int, round_: int, now_ms: int,
                    last_commit: CommitCertificate | None,
                    evidence: tuple[Evidence, ...]) -> Built:
        """A block of the mempool's candidates, and those the rules refused (for `drop`)."""
        meta = rules.chain_meta(self.store)
        built = rules.build_block(
            self.store, self.mempool.candidates()[:BLOCK_BUILD_TXS_MAX], height=height,
            time_ms=max(now_ms, meta.time_ms + 1), prev_hash=self.store.head.block_hash,
            last_commit=last_commit, evidence=evidence, proposer=self.public_key,
            params=self.params, verify_signatures=False, quotas=self.quotas)
        self._executions[built.block.hash] = built.execution
        return Built(built.block, tuple(built.refused))

    def drop(self, refused: tuple[object, ...]) -> list[tuple[AnyTx, rules.Rejected]]:
        """Carry out `DropRefused`: take the refused transactions out of the mempool, with the
        later nonces of their signers (they can never follow); what was dropped, and why."""
        dropped: list[tuple[AnyTx, rules.Rejected]] = []
        for item in refused:
            assert isinstance(item, tuple), "build_block puts (transaction, refusal) pairs in"
            tx, refusal = item
            assert isinstance(refusal, rules.Rejected)
            if tx.hash not in self.mempool:
                continue  # dropped already, as a follower of its signer's refused transaction
            dropped.append((tx, refusal))
            for follower in self.mempool.drop(tx):
                dropped.append((follower, rules.Rejected(
                    rules.Reason.NONCE_GAP, f"nonce {follower.nonce} follows the refused nonce "
                                            f"{tx.nonce}")))
        return dropped

    def check_block(self, block: Block, now_ms: int, certified: bool = False) -> str | None:
        if block.hash in self._executions:
            return None
        try:
            # Each signature is verified once per node: on mempool entry, or here for a
            # proposed block's transactions this node has not seen; not at all for a block
            # whose commit certificate verified (the authorities that signed it verified them).
            execution = rules.apply_block(self.store, block, params=self.params,
                                          quotas=self.quotas, verified=self.mempool,
                                          verify_signatures=not certified)
        except (BlockRejected, VerificationError) as error:
            return error.reason
        self._executions[block.hash] = execution
        return None

    def commit(self, block: Block, certificate: CommitCertificate) -> Execution:
        """Write a finalized block (its certificate verified by the core) to the store."""
        execution = self._executions.get(block.hash)
        if execution is None:
            execution = rules.apply_block(self.store, block, verify_signatures=False,
                                          quotas=self.quotas)
        self.store.commit(block, certificate, execution)
        self._executions.clear()
        return execution
