"""What a transaction is judged against: the `BlockContext` of the block it is (or would be) in
(chain id, height, block time, the authorities in force, the quotas), and the reads it is made
from: the chain meta and the authority set in force at a height.
"""

from __future__ import annotations

from dataclasses import dataclass

from healthnode.ledger.rules.budgets import DEFAULT_QUOTAS, Quotas
from healthnode.ledger.rules.refusals import BlockRejected
from healthnode.ledger.state import AUTHORITY_SET, META_KEY, StateView, height_bytes, read
from healthnode.protocol.state import AuthoritySet, ChainMeta


@dataclass(frozen=True, slots=True)
class BlockContext:
    """What a transaction is judged against: the block it is (or would be) in."""

    chain_id: str
    height: int
    time_ms: int
    authorities: tuple[bytes, ...]
    quotas: Quotas = DEFAULT_QUOTAS


def chain_meta(view: StateView) -> ChainMeta:
    meta = read(view, META_KEY, ChainMeta)
    if meta is None:
        raise BlockRejected("state has no chain meta: it was never initialised from a genesis")
    return meta


def authority_set(view: StateView, height: int) -> AuthoritySet:
    """The authority set in force at `height` (changes decided at h are stored for h+2)."""
    found: AuthoritySet | None = None
    for key, _ in view.scan(AUTHORITY_SET):
        if int.from_bytes(key[len(AUTHORITY_SET):], "big") > height:
            break
        found = read(view, key, AuthoritySet)
    if found is None:
        raise BlockRejected(f"no authority set for height {height}")
    return found


def authorities(view: StateView, height: int) -> tuple[bytes, ...]:
    return authority_set(view, height).keys


def context(view: StateView, height: int, time_ms: int,
            quotas: Quotas = DEFAULT_QUOTAS) -> BlockContext:
    meta = chain_meta(view)
    return BlockContext(meta.chain_id, height, time_ms, authorities(view, height), quotas)


def next_context(view: StateView, time_ms: int, quotas: Quotas = DEFAULT_QUOTAS) -> BlockContext:
    """The context of the block after the current head, at `time_ms` (the mempool's view)."""
    meta = chain_meta(view)
    return _context_after(meta, authorities(view, meta.height + 1), time_ms, quotas)


class NextContexts:
    """`next_context` for a caller that asks again and again (the mempool, for every transaction
    offered): the authority set is kept while the state, by its hash, is the same."""

    def __init__(self) -> None:
        self._authorities_at: tuple[bytes, tuple[bytes, ...]] | None = None
        self._chain_id: str | None = None

    def __call__(self, view: StateView, time_ms: int,
                 quotas: Quotas = DEFAULT_QUOTAS) -> BlockContext:
        meta = chain_meta(view)
        self._chain_id = meta.chain_id
        # By root and height: a block that changes nothing but the chain meta keeps the root,
        # and a scheduled authority set starts at a height.
        at = meta.state_hash + height_bytes(meta.height)
        if self._authorities_at is None or self._authorities_at[0] != at:
            self._authorities_at = (at, authorities(view, meta.height + 1))
        return _context_after(meta, self._authorities_at[1], time_ms, quotas)

    def chain_id(self, view: StateView) -> str:
        """The chain's id (fixed at genesis), read from `view` only the first time."""
        return self._chain_id if self._chain_id is not None else chain_meta(view).chain_id


def _context_after(meta: ChainMeta, keys: tuple[bytes, ...], time_ms: int,
                   quotas: Quotas) -> BlockContext:
    return BlockContext(meta.chain_id, meta.height + 1, max(time_ms, meta.time_ms + 1), keys,
                        quotas)
