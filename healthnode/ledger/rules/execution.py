"""A block's execution: every transaction in order through the one transaction path (`ApplyTx`,
the package's `_apply_tx`), then the evidence, over an `Overlay`, to the state changes, tree
writes and state hash the header must carry. `apply_block` checks a proposed or finalized block,
`build_block` is the proposer's side, and `genesis_state` is height 0.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final

from healthnode import limits
from healthnode.ledger.rules import rotation, rounds
from healthnode.ledger.rules.block_context import BlockContext, chain_meta, context
from healthnode.ledger.rules.budgets import DEFAULT_QUOTAS, BlockTally, Quotas
from healthnode.ledger.rules.governance import apply_evidence, check_evidence
from healthnode.ledger.rules.refusals import DEFERRABLE, BlockRejected, Reason, Reject, Rejected
from healthnode.ledger.rules.tree import chain_meta_with, grow_tree, tree_root
from healthnode.ledger.state import (
    AUTHORITY_SET,
    EMERGENCY_KEY,
    GENESIS,
    META_KEY,
    RULES_SCHEDULE,
    Overlay,
    StateView,
    height_bytes,
    with_change,
)
from healthnode.protocol import block as blocks
from healthnode.protocol.block import Block, CommitCertificate, Evidence, Header
from healthnode.protocol.genesis import RULES_OLDEST, ConsensusParams, Genesis
from healthnode.protocol.state import AuthoritySet, ChainMeta, EmergencyKeyState, RulesScheduled
from healthnode.protocol.tx import AnyTx


@dataclass(frozen=True, slots=True)
class Execution:
    """What a block does to the state: its changes (key order, None = delete), the resulting
    state root, the chain meta after it, and the writes of the tree keyspace (new nodes, the
    nodes they make stale, the root of this height)."""

    changes: tuple[tuple[bytes, bytes | None], ...]
    state_hash: bytes
    meta: ChainMeta
    tree_changes: tuple[tuple[bytes, bytes | None], ...] = ()


ApplyTx = Callable[[Overlay, AnyTx, BlockContext, BlockTally], None]
"""The one path of a transaction through the rules (`rules._apply_tx`: its nonce, then the
handler of its kind), which raises `Reject` before it writes anything."""


def _execute(state: Overlay, now: BlockContext, txs: Sequence[AnyTx],
             evidence: Sequence[Evidence], verify_signatures: bool,
             previous: ChainMeta, apply_tx: ApplyTx, verified: Container[bytes] = ()
             ) -> Execution:
    tally = BlockTally()
    seen: set[bytes] = set()
    for index, tx in enumerate(txs):
        tx_hash = tx.hash
        if tx_hash in seen:
            raise BlockRejected(f"tx {index}: the same transaction twice in one block")
        seen.add(tx_hash)
        if (verify_signatures and tx_hash not in verified
                and not tx.signature_valid(now.chain_id)):
            bad = Rejected(Reason.BAD_SIGNATURE, "signature does not verify")
            raise BlockRejected(f"tx {index}: {bad}", bad)
        try:
            apply_tx(state, tx, now, tally)
        except Reject as refusal:
            raise BlockRejected(f"tx {index}: {refusal.rejected}", refusal.rejected) from None
    apply_evidence(state, evidence, now)
    _end_block(state, now)
    return _finish(state, now, previous)


def _end_block(state: Overlay, now: BlockContext) -> None:
    """What every block does after its transactions and evidence: from rules version 4, the
    node key rotations of the next height take effect (ledger/rules/rotation.py), and then the
    emergency key's round moves on (ledger/rules/rounds.py), so that it sees the holders
    relabelled and the next block's set as rotated."""
    if now.rules >= rotation.ROTATION_FROM:
        rotation.take_effect(state, now)
    if now.rules >= rounds.ROUNDS_FROM:
        rounds.advance(state, now)


def _finish(state: Overlay, now: BlockContext, previous: ChainMeta) -> Execution:
    changes = state.changes()
    root, tree_changes = grow_tree(state, tree_root(previous), now.height, changes)
    meta = chain_meta_with(previous.chain_id, now.height, now.time_ms, root)
    state.put(META_KEY, meta)
    return Execution(with_change(changes, META_KEY, meta.encode()), meta.state_hash, meta,
                     tree_changes)


def _block_context(view: StateView, header: Header, quotas: Quotas) -> tuple[BlockContext,
                                                                               ChainMeta]:
    meta = chain_meta(view)
    now = context(view, meta.height + 1, header.time_ms, quotas)  # the next block's context
    wrong = blocks.header_problem(header, chain_id=meta.chain_id, height=meta.height + 1,
                                  after_time_ms=meta.time_ms, authorities=now.authorities)
    if wrong is not None:
        raise BlockRejected(wrong[1])
    return now, meta


def apply_block(view: StateView, block: Block, apply_tx: ApplyTx, *,
                verify_signatures: bool = True, params: ConsensusParams | None = None,
                quotas: Quotas = DEFAULT_QUOTAS, verified: Container[bytes] = ()) -> Execution:
    """Apply `block` on top of `view`'s head, each transaction through `apply_tx`; raise
    BlockRejected unless every transaction passes and the header's validators and state hash
    match. Writes nothing to `view`.

    `verify_signatures=False` is for blocks that arrive with a commit certificate of the
    authorities, who verified every signature before precommitting (catch-up). `verified` names
    transactions (by hash) whose signatures this node has already verified (its mempool), so each
    node verifies each signature once."""
    header = block.header
    blocks.verify_block_shape(block, header.chain_id)
    now, meta = _block_context(view, header, quotas)
    if params is not None:
        if len(block.txs) > params.block_txs_max:
            raise BlockRejected(f"block has {len(block.txs)} txs, at most {params.block_txs_max}")
        if len(block.encode()) > params.block_bytes_max:
            raise BlockRejected(f"block is larger than {params.block_bytes_max} bytes")
    execution = _execute(Overlay(view), now, block.txs, block.evidence, verify_signatures, meta,
                         apply_tx, verified)
    if execution.state_hash != header.state_hash:
        raise BlockRejected("state_hash does not match the state after this block")
    return execution


@dataclass(frozen=True, slots=True)
class Built:
    """A proposer's block and what happened to each candidate that did not make it in."""

    block: Block
    execution: Execution
    refused: tuple[tuple[AnyTx, Rejected], ...]  # invalid now; the mempool drops them
    deferred: tuple[AnyTx, ...]  # may pass in a later block; the mempool keeps them


def build_block(view: StateView, candidates: Iterable[AnyTx], apply_tx: ApplyTx, *,
                height: int, time_ms: int, prev_hash: bytes, last_commit: CommitCertificate | None,
                evidence: Sequence[Evidence], proposer: bytes, params: ConsensusParams,
                verify_signatures: bool = True, quotas: Quotas = DEFAULT_QUOTAS) -> Built:
    """Assemble the next block from `candidates` in order, keeping those that pass `apply_tx`,
    within the block's count and byte bounds. Signatures are verified unless the caller (the
    mempool) has already verified each one on entry."""
    meta = chain_meta(view)
    now = context(view, height, time_ms, quotas)
    if height != meta.height + 1 or time_ms <= meta.time_ms:
        raise BlockRejected("a block must follow the head in height and time")
    state = Overlay(view)
    tally = BlockTally()
    chosen: list[AnyTx] = []
    refused: list[tuple[AnyTx, Rejected]] = []
    deferred: list[AnyTx] = []
    seen: set[bytes] = set()
    # Keep a margin under the byte bound for the header, certificate and evidence.
    budget_bytes = params.block_bytes_max - 64 * limits.KIB
    used_bytes = 0
    for tx in candidates:
        if len(chosen) >= params.block_txs_max:
            deferred.append(tx)
            continue
        size = len(tx.encode())
        if used_bytes + size > budget_bytes:
            deferred.append(tx)
            continue
        if tx.hash in seen:
            continue
        if verify_signatures and not tx.signature_valid(now.chain_id):
            refused.append((tx, Rejected(Reason.BAD_SIGNATURE, "signature does not verify")))
            continue
        try:
            apply_tx(state, tx, now, tally)
        except Reject as refusal:
            if refusal.rejected.reason in DEFERRABLE:
                deferred.append(tx)
            else:
                refused.append((tx, refusal.rejected))
            continue
        seen.add(tx.hash)
        chosen.append(tx)
        used_bytes += size
    good_evidence = [item for item in evidence if check_evidence(state, item, now) is None]
    apply_evidence(state, good_evidence, now)
    _end_block(state, now)
    execution = _finish(state, now, meta)
    header = Header(
        chain_id=meta.chain_id, height=height, time_ms=time_ms, prev_hash=prev_hash,
        last_commit=last_commit, txs_root=blocks.txs_root(chosen),
        evidence_root=blocks.evidence_root(good_evidence),
        validators_hash=blocks.validators_hash(now.authorities), state_hash=execution.state_hash,
        proposer=proposer)
    return Built(Block(header, tuple(chosen), tuple(good_evidence)), execution, tuple(refused),
                 tuple(deferred))


def genesis_state(genesis: Genesis) -> Execution:
    """The state before block 1 (height 0): the first authority set, the emergency key and the
    rules version the chain starts with, their tree, and the chain meta with its root."""
    state = Overlay(_EMPTY)
    # The genesis hash, in the tree: its time, parameters and format are then bound into every
    # root, as the first authorities and the emergency key are.
    state.put(GENESIS, genesis.hash)
    state.put(AUTHORITY_SET + height_bytes(1), AuthoritySet(genesis.authorities))
    if genesis.emergency is not None:
        state.put(EMERGENCY_KEY, EmergencyKeyState(genesis.emergency, 1, ()))
    if genesis.format != RULES_OLDEST:  # (a chain of the oldest format stores none: its roots)
        state.put(RULES_SCHEDULE + height_bytes(1), RulesScheduled(genesis.format, 0))
    changes = state.changes()
    root, tree_changes = grow_tree(_EMPTY, None, 0, changes)
    meta = chain_meta_with(genesis.chain_id, 0, genesis.genesis_time_ms, root)
    return Execution(with_change(changes, META_KEY, meta.encode()), meta.state_hash, meta,
                     tree_changes)


class _Empty:
    def get(self, key: bytes) -> bytes | None:
        return None

    def scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        return iter(())

    def tree_node(self, key: bytes) -> bytes | None:
        return None


_EMPTY: Final = _Empty()
