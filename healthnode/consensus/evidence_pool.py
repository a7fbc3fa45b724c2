"""The pending evidence pool: equivocations this core detected or received, waiting to go into a
block it proposes, and the keys of evidence already committed (so gossip of old evidence does not
re-enter the pool). Evidence from peers enters only when it verifies. The pool outlives heights;
building and checking evidence is `protocol/evidence.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Final

from healthnode import limits
from healthnode.protocol import evidence as ev
from healthnode.protocol.block import Evidence, Verify

# Pending evidence: a few blocks' worth; more means many byzantine authorities, and the oldest
# already make the point.
EVIDENCE_POOL_MAX: Final = 4 * limits.BLOCK_EVIDENCE_MAX
# Evidence keys remembered as committed, so gossip of old evidence does not re-enter the pool.
COMMITTED_EVIDENCE_MEMORY: Final = 4096


class EvidencePool:
    """Pending evidence by key, oldest first, at most `EVIDENCE_POOL_MAX`."""

    def __init__(self) -> None:
        self._pending: dict[bytes, Evidence] = {}
        self._committed: dict[bytes, None] = {}  # insertion-ordered set

    def pending(self) -> tuple[Evidence, ...]:
        return tuple(self._pending.values())

    def add(self, item: Evidence) -> bool:
        """Pool `item` unless it is pending, committed, or the pool is full."""
        key = ev.evidence_key(item)
        if key in self._pending or key in self._committed:
            return False
        if len(self._pending) >= EVIDENCE_POOL_MAX:
            return False
        self._pending[key] = item
        return True

    def receive(self, item: Evidence, height: int,
                authorities: Callable[[int], tuple[bytes, ...]], verify: Verify) -> str | None:
        """Pool evidence from a peer when it verifies (the core is at `height`; `authorities`
        gives a height's authority set). Returns why it was rejected, or None."""
        evidence_height = ev.evidence_height(item)
        if evidence_height > height:
            return "evidence_from_the_future"
        problem = ev.check_evidence(item, authorities(evidence_height), verify)
        if problem is not None:
            return problem.code
        self.add(item)
        return None

    def committed(self, items: Iterable[Evidence]) -> None:
        """`items` are in a committed block: they leave the pool and are remembered."""
        for item in items:
            key = ev.evidence_key(item)
            self._pending.pop(key, None)
            self._committed[key] = None
        while len(self._committed) > COMMITTED_EVIDENCE_MEMORY:
            del self._committed[next(iter(self._committed))]
