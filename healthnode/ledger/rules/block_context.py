"""What a transaction is judged against: the `BlockContext` of the block it is (or would be) in
(chain id, height, block time, the authorities and the rules version in force, the quotas), and
the reads it is made from: the chain meta, the authority set and the rules version in force at a
height, and the node keys that rotations retired or will (`node.rotate`, rules/rotation.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from healthnode.ledger.rules.budgets import DEFAULT_QUOTAS, Quotas
from healthnode.ledger.rules.refusals import BlockRejected
from healthnode.ledger.state import (
    AUTHORITY_SET,
    META_KEY,
    ROTATED,
    ROTATION_DUE,
    RULES_SCHEDULE,
    StateView,
    decode_value,
    height_bytes,
    read,
)
from healthnode.protocol.genesis import RULES_NEWEST, RULES_OLDEST
from healthnode.protocol.state import AuthoritySet, ChainMeta, KeyRotation, RulesScheduled


@dataclass(frozen=True, slots=True)
class BlockContext:
    """What a transaction is judged against: the block it is (or would be) in."""

    chain_id: str
    height: int
    time_ms: int
    authorities: tuple[bytes, ...]
    rules: int  # the version of these rules in force (protocol/genesis.py lists what each is)
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


def rotated_to(view: StateView, key: bytes) -> KeyRotation | None:
    """The rotation that retired node key `key` (None: it was never rotated away, or its
    rotation waits for its block). Written at the end of the block before the rotation's height,
    so a block that finds it is one from that height on."""
    return read(view, ROTATED + key, KeyRotation)


def pending_rotations(view: StateView) -> list[tuple[bytes, KeyRotation]]:
    """Every rotation waiting for its block, with the key it will retire, in height order."""
    skip = len(ROTATION_DUE) + 8
    return [(key[skip:], decode_value(value, KeyRotation, key))
            for key, value in view.scan(ROTATION_DUE)]


def current_key(view: StateView, key: bytes) -> bytes:
    """The node key that holds `key`'s place now, following its rotations (a rotation never
    goes to a retired key, so the chain of them ends)."""
    while (rotation := rotated_to(view, key)) is not None:
        key = rotation.new_key
    return key


def rules_schedule(view: StateView) -> list[tuple[int, RulesScheduled]]:
    """Every scheduled rules version, by the height it starts at, in height order (a chain of
    genesis format 2 has none for its first version; a later format stores it at height 1)."""
    return [(int.from_bytes(key[len(RULES_SCHEDULE):], "big"),
             decode_value(value, RulesScheduled, key))
            for key, value in view.scan(RULES_SCHEDULE)]


def rules_at(view: StateView, height: int) -> int:
    """The version of the ledger rules in force at `height`, known or not to this release."""
    version = RULES_OLDEST
    for start, scheduled in rules_schedule(view):
        if start > height:
            break
        version = scheduled.rules_version
    return version


class RulesUnknown(BlockRejected):
    """The chain's rules at a height are a version that this release does not carry: the node
    must stop there, not decide by other rules than its peers (and fork)."""

    def __init__(self, version: int, height: int) -> None:
        super().__init__(
            f"the network's ledger rules are version {version} from height {height}, and this "
            f"release carries versions {RULES_OLDEST} to {RULES_NEWEST}: install a release that "
            f"carries version {version} (docs/operations.md, 'Rules upgrades')")
        self.version = version
        self.height = height


def known_rules_at(view: StateView, height: int) -> int:
    """`rules_at`, or RulesUnknown when this release does not carry that version."""
    version = rules_at(view, height)
    if version > RULES_NEWEST:
        start = max(start for start, scheduled in rules_schedule(view)
                    if start <= height and scheduled.rules_version == version)
        raise RulesUnknown(version, start)
    return version


def context(view: StateView, height: int, time_ms: int,
            quotas: Quotas = DEFAULT_QUOTAS) -> BlockContext:
    meta = chain_meta(view)
    return BlockContext(meta.chain_id, height, time_ms, authorities(view, height),
                        known_rules_at(view, height), quotas)


def next_context(view: StateView, time_ms: int, quotas: Quotas = DEFAULT_QUOTAS) -> BlockContext:
    """The context of the block after the current head, at `time_ms` (the mempool's view)."""
    meta = chain_meta(view)
    return _context_after(meta, authorities(view, meta.height + 1),
                          known_rules_at(view, meta.height + 1), time_ms, quotas)


class NextContexts:
    """`next_context` for a caller that asks again and again (the mempool, for every transaction
    offered): the authority set is kept while the state, by its hash, is the same."""

    def __init__(self) -> None:
        self._keys_at: tuple[bytes, tuple[bytes, ...]] | None = None
        self._rules_at: tuple[bytes, int] | None = None
        self._chain_id: str | None = None

    def __call__(self, view: StateView, time_ms: int,
                 quotas: Quotas = DEFAULT_QUOTAS) -> BlockContext:
        meta = chain_meta(view)
        keys = self._authorities(view, meta)
        at = self._keys_at[0] if self._keys_at is not None else b""
        if self._rules_at is None or self._rules_at[0] != at:
            self._rules_at = (at, known_rules_at(view, meta.height + 1))
        return _context_after(meta, keys, self._rules_at[1], time_ms, quotas)

    def authorities(self, view: StateView) -> tuple[bytes, ...]:
        """The authorities of the block after the head (whatever the rules version there)."""
        return self._authorities(view, chain_meta(view))

    def _authorities(self, view: StateView, meta: ChainMeta) -> tuple[bytes, ...]:
        self._chain_id = meta.chain_id
        # By root and height: a block that changes nothing but the chain meta keeps the root,
        # and a scheduled authority set or rules version starts at a height.
        at = meta.state_hash + height_bytes(meta.height)
        if self._keys_at is None or self._keys_at[0] != at:
            self._keys_at = (at, authorities(view, meta.height + 1))
        return self._keys_at[1]

    def chain_id(self, view: StateView) -> str:
        """The chain's id (fixed at genesis), read from `view` only the first time."""
        return self._chain_id if self._chain_id is not None else chain_meta(view).chain_id


def _context_after(meta: ChainMeta, keys: tuple[bytes, ...], version: int, time_ms: int,
                   quotas: Quotas) -> BlockContext:
    return BlockContext(meta.chain_id, meta.height + 1, max(time_ms, meta.time_ms + 1), keys,
                        version, quotas)
