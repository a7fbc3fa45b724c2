"""The mempool: transactions waiting for a block, bounded, deduplicated and checked on entry.

Theory of operation
-------------------
A transaction enters only if the ledger would accept it on top of the finalized state and the
signer's transactions already waiting (`ledger.check_tx` with the signer's nonce advanced past
its pending ones), and only while the pool has room in count, in bytes and in the signer's own
share. A full pool refuses with a named reason: the submitter is told, nothing is dropped
silently.

The last `reserved_txs` and `reserved_bytes` of the pool are kept for the authorities of the next
block: the node's own access.logs (no read is answered before its log is final), its purge
statements, and the other authorities' logs and votes. Whoever else signs, through whichever door
(wallets, the operator, a faulty authority's relays), fills the rest at most, so a pool full of
other keys' transactions still takes a read's access.log. Each authority's share of the reserve
is bounded like any signer's, by `txs_per_signer_max`.

A signer's transactions are kept in nonce order, and the pool hands them to the proposer in
arrival order, which respects each signer's nonce order because a nonce gap is refused on entry.

A transaction *relayed* by another authority (gossip) was checked in full by the authority it was
submitted to, which answered its submitter. Here it is checked for its signature and its nonce
only (`add(..., relayed=True)`): the ledger's rules run again when a proposer builds a block and
when every authority applies it, and a relayed transaction they refuse is dropped then (`drop`),
with its signer's later ones, which could never follow in nonce order. Running the rules a third
time on entry cost a loaded node about a tenth of its time (docs/benchmarks.md).

After a block is finalized, `block_committed` removes its transactions and evicts what the block
made invalid: a replayed nonce or a nonce gap of the block's signers, and, after a block that
holds a revocation, an erasure or an authority change, whatever the ledger now refuses
(signatures were verified once, on entry, and are not verified again).

Pure: no clock, no I/O. The shell passes the time it uses to judge grant expiry on entry.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from healthnode.ledger import rules
from healthnode.ledger.rules import Reason, Rejected
from healthnode.ledger.state import NONCE, Overlay, StateView, read
from healthnode.protocol.state import SignerNonce
from healthnode.protocol.tx import (
    AnyTx,
    ConsentRevoke,
    ConsentRevokeProvider,
    ProviderRevoke,
    RecordErase,
    ValidatorVote,
    acted,
)

# Refusals of the pool itself (the ledger's are `ledger.rules.Reason`).
DUPLICATE: Final = "duplicate"
POOL_FULL: Final = "mempool_full"
SIGNER_FULL: Final = "signer_mempool_full"
NONCE_PENDING: Final = "nonce_pending"
# Kinds whose effect can make other signers' waiting transactions invalid.
_INVALIDATING: Final = (ProviderRevoke, ConsentRevoke, ConsentRevokeProvider, RecordErase,
                        ValidatorVote)


@dataclass(frozen=True, slots=True)
class _Entry:
    tx: AnyTx
    size_bytes: int


class Mempool:
    def __init__(self, txs_max: int, bytes_max: int, txs_per_signer_max: int,
                 reserved_txs: int = 0, reserved_bytes: int = 0) -> None:
        assert 0 <= reserved_txs < txs_max and 0 <= reserved_bytes < bytes_max
        self.txs_max = txs_max
        self.bytes_max = bytes_max
        self.txs_per_signer_max = txs_per_signer_max
        self.reserved_txs = reserved_txs  # room kept for the authorities' own (module docstring)
        self.reserved_bytes = reserved_bytes
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()  # by hash, arrival order
        self._by_signer: dict[bytes, dict[int, bytes]] = {}  # signer -> nonce -> hash
        self._bytes = 0
        # The next block's context; its authority set is read once per state, not per offer.
        self._next_context = rules.NextContexts()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, tx_hash: object) -> bool:
        return tx_hash in self._entries

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def add(self, view: StateView, tx: AnyTx, size_bytes: int, time_ms: int,
            verify_signature: bool = True, relayed: bool = False) -> Rejected | None:
        """Admit `tx` (None) or say why not. `size_bytes` is its encoded size. A `relayed`
        transaction (from another authority) is checked for its signature and nonce only."""
        tx_hash = tx.hash
        if tx_hash in self._entries:
            return Rejected(DUPLICATE, "already waiting")
        count, after_bytes = len(self._entries), self._bytes + size_bytes
        if count >= self.txs_max or after_bytes > self.bytes_max:
            return Rejected(POOL_FULL, "the mempool is full; retry later")
        if (count >= self.txs_max - self.reserved_txs
                or after_bytes > self.bytes_max - self.reserved_bytes) \
                and tx.signer not in self._next_context.authorities(view):
            return Rejected(POOL_FULL, f"the mempool is full for all but the authorities (its "
                            f"last {self.reserved_txs} transactions and {self.reserved_bytes} "
                            f"bytes are theirs); retry later")
        pending = self._by_signer.get(tx.signer, {})
        if len(pending) >= self.txs_per_signer_max:
            return Rejected(SIGNER_FULL,
                           f"at most {self.txs_per_signer_max} waiting transactions per signer")
        if tx.nonce in pending:
            return Rejected(NONCE_PENDING, f"nonce {tx.nonce} is already waiting")
        # A transaction already finalized (a late gossip copy, a peer's backlog after a
        # restart) is refused here, before the costly signature check.
        used = read(view, NONCE + tx.signer, SignerNonce)
        if used is not None and tx.nonce <= used.nonce:
            return Rejected(Reason.NONCE_REPLAYED,
                            f"nonce {tx.nonce} already used, next is {used.nonce + 1}")
        if relayed:
            expected = max(pending) + 1 if pending else (used.nonce if used else 0) + 1
            if tx.nonce != expected:
                return Rejected(Reason.NONCE_GAP, f"nonce {tx.nonce} is ahead, next is {expected}")
            if verify_signature and not tx.signature_valid(self._next_context.chain_id(view)):
                return Rejected(Reason.BAD_SIGNATURE, "signature does not verify for this chain")
        else:
            verdict = rules.check_tx(self._after_pending(view, tx.signer), tx,
                                     self._next_context(view, time_ms), verify_signature)
            if verdict is not None:
                return verdict
        self._entries[tx_hash] = _Entry(tx, size_bytes)
        self._by_signer.setdefault(tx.signer, {})[tx.nonce] = tx_hash
        self._bytes += size_bytes
        return None

    def check(self, view: StateView, tx: AnyTx, time_ms: int) -> Rejected | None:
        """What `add` would say of `tx` from the ledger's side, without adding it or verifying
        its signature (a dry run for a transaction about to be signed)."""
        return rules.check_tx(self._after_pending(view, tx.signer), tx,
                              self._next_context(view, time_ms), verify_signature=False)

    def _after_pending(self, view: StateView, signer: bytes) -> StateView:
        """`view` with `signer`'s nonce advanced past its waiting transactions."""
        pending = self._by_signer.get(signer)
        if not pending:
            return view
        overlay = Overlay(view)
        overlay.put(NONCE + signer, SignerNonce(max(pending)))
        return overlay

    def candidates(self) -> list[AnyTx]:
        """Waiting transactions in arrival order (each signer's in nonce order)."""
        return [entry.tx for entry in self._entries.values()]

    def pending_of(self, signer: bytes) -> int:
        """How many transactions of `signer` wait here."""
        return len(self._by_signer.get(signer, ()))

    def highest_nonce(self, signer: bytes) -> int | None:
        """The highest nonce `signer` has waiting, or None."""
        pending = self._by_signer.get(signer)
        return max(pending) if pending else None

    def get(self, tx_hash: bytes) -> AnyTx | None:
        entry = self._entries.get(tx_hash)
        return entry.tx if entry else None

    def remove(self, tx_hash: bytes) -> None:
        entry = self._entries.pop(tx_hash, None)
        if entry is None:
            return
        self._bytes -= entry.size_bytes
        nonces = self._by_signer[entry.tx.signer]
        del nonces[entry.tx.nonce]
        if not nonces:
            del self._by_signer[entry.tx.signer]

    def drop(self, tx: AnyTx) -> list[AnyTx]:
        """Remove `tx`, which a proposer's build refused, and its signer's waiting transactions
        of higher nonces (they can no longer follow in order); returns those."""
        self.remove(tx.hash)
        pending = self._by_signer.get(tx.signer, {})
        followers = [self._entries[pending[nonce]].tx for nonce in sorted(pending)
                     if nonce > tx.nonce]
        for follower in followers:
            self.remove(follower.hash)
        return followers

    def block_committed(self, view: StateView, included: Sequence[AnyTx],
                        time_ms: int) -> list[tuple[AnyTx, Rejected]]:
        """Drop the block's transactions, then evict and return what the new state refuses.

        Re-checking the whole pool after every block costs O(pool) per block, which at full load
        was most of a node's time. So after most blocks only the nonces of the block's own
        signers are checked (they moved). A block that holds a kind that can invalidate other
        signers' transactions (a revocation, an erasure, an authority change) has everything
        re-checked against the ledger. Anything else that went stale is refused by
        `build_block` and dropped there, never proposed."""
        for tx in included:
            self.remove(tx.hash)
        full = any(isinstance(acted(tx), _INVALIDATING) for tx in included)  # an act's too
        if full:
            signers = list(self._by_signer)
        else:
            signers = list({tx.signer: None for tx in included if tx.signer in self._by_signer})
        evicted: list[tuple[AnyTx, Rejected]] = []
        try:
            now = self._next_context(view, time_ms) if full else None
        except rules.RulesUnknown:
            # The next height is to be decided by rules this release does not carry: the node
            # stops after this block (node/daemon.py), so only the nonces are re-checked.
            now = None
        for signer in signers:
            used = read(view, NONCE + signer, SignerNonce)
            expected = (used.nonce if used else 0) + 1
            overlay = Overlay(view)
            for nonce in sorted(self._by_signer[signer]):
                tx = self._entries[self._by_signer[signer][nonce]].tx
                if nonce != expected:
                    verdict: Rejected | None = Rejected(
                        Reason.NONCE_REPLAYED if nonce < expected else Reason.NONCE_GAP,
                        f"nonce {nonce}, next is {expected}")
                elif now is not None:
                    verdict = rules.check_tx(overlay, tx, now, verify_signature=False)
                else:
                    verdict = None
                if verdict is None:
                    expected += 1
                    if now is not None:  # the next check sees this nonce used
                        overlay.put(NONCE + signer, SignerNonce(nonce))
                    continue
                evicted.append((tx, verdict))
                self.remove(tx.hash)
        return evicted
