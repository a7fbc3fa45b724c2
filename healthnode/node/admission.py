"""Admission: the node's one door for transactions, and the port that its services submit
through (`Submitter`).

Every transaction enters the mempool here: a wallet's (through the client service), an
operator's (the admin socket), a peer's (gossip), and the node's own (its access.logs, provider
registrations, authority votes and re-sharing dealings, signed with the node key). A service is
handed this object, never the node: it may sign and submit the node's own transactions, offer a
wallet's, dry-run one against the rules, and wait for one to be final or refused.

A wallet's transaction signed by a patient's key passes the node's door budgets first
(`admit_wallet`; ledger/door.py): over every patient's key at once, so many fresh keys take
no more of this node than one.

It also keeps what finality needs of the shell: who waits for which transaction (answered when
the driver reports a committed block or a refusal), when each arrived (the finalize-latency
metric), and the client transactions still to be gossiped, in batches.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import trio

from healthnode.clock import Clock
from healthnode.crypto import Identity
from healthnode.errors import TxRefused
from healthnode.ledger import door, rules
from healthnode.ledger.mempool import Mempool
from healthnode.ledger.state import NONCE, read
from healthnode.metrics import NodeMetrics
from healthnode.protocol.block import Block
from healthnode.protocol.state import SignerNonce
from healthnode.protocol.tx import AnyTx
from healthnode.protocol.wire import encode_tx_batches
from healthnode.store.leveldb import ChainStore

PENDING_ARRIVALS_MAX: Final = 100_000  # arrival times kept for the finalize-latency metric


@dataclass(frozen=True, slots=True)
class TxOutcome:
    """What became of a transaction someone is waiting for: final at `height`, or refused."""

    height: int | None
    refusal: rules.Rejected | None = None
    timed_out: bool = False


class Submitter:
    """The node's door for transactions; see the module docstring."""

    def __init__(self, store: ChainStore, mempool: Mempool, identity: Identity, chain_id: str,
                 metrics: NodeMetrics, count_rejected: Callable[[str], None],
                 txs_available: Callable[[], None], clock: Clock,
                 budgets: door.Budgets | None = None) -> None:
        self._store = store
        self._budgets = budgets or door.Budgets({})
        self._clock = clock
        self._mempool = mempool
        self._identity = identity
        self._chain_id = chain_id
        self._metrics = metrics
        self._count_rejected = count_rejected
        self._txs_available = txs_available
        self._arrivals: dict[bytes, float] = {}
        self._waiters: dict[bytes, trio.Event] = {}
        self._outcomes: dict[bytes, TxOutcome] = {}
        self._outgoing: list[bytes] = []

    @property
    def public_key(self) -> bytes:
        """The node's key: the signer of its own transactions."""
        return self._identity.public_key

    # --- in -----------------------------------------------------------------------------------

    def offer(self, tx: AnyTx, size_bytes: int, *, relayed: bool) -> rules.Rejected | None:
        """Offer a transaction to the mempool; None if admitted, else why not. One from this
        node's clients is checked in full and gossiped; a `relayed` one came from a peer, which
        checked it in full (the mempool then checks its signature and nonce only)."""
        refusal = self._mempool.add(self._store, tx, size_bytes, self._clock.now_ms(),
                                    relayed=relayed)
        if refusal is not None:
            self._count_rejected(str(refusal.reason))
            return refusal
        if len(self._arrivals) < PENDING_ARRIVALS_MAX:
            self._arrivals[tx.hash] = trio.current_time()
        self._metrics.mempool_txs.set(len(self._mempool))
        if not relayed:
            self._outgoing.append(tx.encode())
        self._txs_available()
        return None

    def admit(self, tx: AnyTx, size_bytes: int | None = None) -> rules.Rejected | None:
        """Offer a transaction from this node's clients to the mempool and gossip it; None if
        admitted, else the refusal. `size_bytes`: its encoding's, when the caller has it."""
        return self.offer(tx, len(tx.encode()) if size_bytes is None else size_bytes,
                          relayed=False)

    def admit_wallet(self, tx: AnyTx) -> rules.Rejected | None:
        """`admit` a wallet's transaction; one of a patient's key only within the node's door
        budgets of its kind and of bytes, which it is charged to once the mempool took it."""
        size = len(tx.encode())
        if not door.is_patient(self._store, tx.signer):
            return self.admit(tx, size)
        now = self._clock.now_ms()
        refusal = door.tx_refusal(self._budgets, tx, size, now)
        if refusal is not None:
            self._count_rejected(refusal.reason)
            return refusal
        refusal = self.admit(tx, size)
        if refusal is None:
            door.charge_tx(self._budgets, tx, size, now)
        return refusal

    def check(self, tx: AnyTx) -> rules.Rejected | None:
        """What the mempool and the rules would say of `tx` now, without admitting it."""
        return self._mempool.check(self._store, tx, self._clock.now_ms())

    def is_waiting(self, tx_hash: bytes) -> bool:
        """Whether `tx_hash` waits in the mempool."""
        return tx_hash in self._mempool

    def next_nonce(self, signer: bytes) -> int:
        """The nonce after `signer`'s finalized and waiting transactions."""
        used = read(self._store, NONCE + signer, SignerNonce)
        waiting = self._mempool.highest_nonce(signer)
        return max(used.nonce if used else 0, waiting or 0) + 1

    # --- the node's own transactions ----------------------------------------------------------

    def sign_own(self, build: Callable[[int], AnyTx]) -> AnyTx:
        """`build(nonce)` signed by this node, with the nonce after its finalized and waiting
        ones (nothing is submitted: `submit_own` does that)."""
        return build(self.next_nonce(self.public_key)).sign(self._identity, self._chain_id)

    def submit_own(self, build: Callable[[int], AnyTx]) -> AnyTx:
        """Sign and submit a transaction of this node (an access.log, a provider registration,
        an authority vote). Synchronous, so two callers never take the same nonce. Raises
        TxRefused with the mempool's or the ledger's reason."""
        tx = self.sign_own(build)
        refusal = self.admit(tx)
        if refusal is not None:
            raise TxRefused(str(refusal.reason), refusal.detail)
        return tx

    # --- out ----------------------------------------------------------------------------------

    async def wait_final(self, tx_hash: bytes, timeout_s: float) -> TxOutcome:
        """Wait until `tx_hash` is final or refused; a TxOutcome that timed out otherwise."""
        location = self._store.tx_location(tx_hash)
        if location is not None:
            return TxOutcome(location[0])
        event = self._waiters.setdefault(tx_hash, trio.Event())
        try:
            with trio.move_on_after(timeout_s):
                await event.wait()
        finally:
            if tx_hash in self._waiters and not event.is_set():
                del self._waiters[tx_hash]
            # Taken in `finally`: a waiter cancelled just as its event fired (its wallet hung
            # up) must not leave the outcome behind for good.
            outcome = self._outcomes.pop(tx_hash, None)
        return outcome or TxOutcome(None, timed_out=True)

    def committed(self, block: Block) -> None:
        """`block` is final: answer whoever waits for its transactions, and time them from
        their arrival here."""
        finalized = trio.current_time()
        final = TxOutcome(block.height)
        for tx in block.txs:
            tx_hash = tx.hash
            arrived = self._arrivals.pop(tx_hash, None)
            if arrived is not None:
                self._metrics.finalize_seconds.observe(finalized - arrived)
            self._settle(tx_hash, final)

    def dropped(self, dropped: list[tuple[AnyTx, rules.Rejected]]) -> None:
        """These left the mempool and will never be final: count why, and tell their
        waiters."""
        for tx, refusal in dropped:
            self._count_rejected(str(refusal.reason))
            self._arrivals.pop(tx.hash, None)  # it will never be final: no latency to measure
            self._settle(tx.hash, TxOutcome(None, refusal))

    def _settle(self, tx_hash: bytes, outcome: TxOutcome) -> None:
        event = self._waiters.pop(tx_hash, None)
        if event is not None:
            self._outcomes[tx_hash] = outcome
            event.set()

    def outgoing_batches(self) -> list[bytes]:
        """The client transactions admitted since the last call, as gossip batches."""
        batches = encode_tx_batches(self._outgoing)
        self._outgoing.clear()
        return batches
