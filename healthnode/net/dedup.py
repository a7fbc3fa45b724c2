"""Which copies of gossip a node takes, sans-IO: one rule, run by the node's gossip
(net/gossip.py) and by the simulator (tools/sim/simulator.py), so that the simulator tests the
code the node runs.

A gossiped message reaches a node many times (every peer relays it once, and REBROADCAST re-sends
what a height holds). The first copy is delivered and remembered, and later copies are dropped
before they are decoded again. One exception: a message of a height the node has not reached yet
is delivered but **not remembered**. The consensus core can buffer only a few of those (a quota per
signer), and a node that is behind must still get a re-sent copy once it catches up. Remembering
them dropped exactly those re-sends: a byzantine authority one height ahead filled a lagging
node's buffer, the correct peers' messages were dropped, and their re-sent copies then too
(docs/consensus.md, "What the simulator found").

Remembered keys are bounded by count and, when `ttl_s` is given, by age.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable


class SeenGate:
    """The gossip copies a node has taken; see the module docstring."""

    def __init__(self, most: int, ttl_s: float | None = None) -> None:
        assert most > 0
        self._most = most
        self._ttl_s = ttl_s
        self._seen: OrderedDict[Hashable, float] = OrderedDict()  # key -> when, oldest first

    def __len__(self) -> int:
        return len(self._seen)

    def seen(self, key: Hashable) -> bool:
        """Whether a copy of this message was taken and remembered already."""
        return key in self._seen

    def take(self, key: Hashable, height: int | None, reached: int, now_s: float) -> bool:
        """Whether to deliver this copy: not if one was remembered. It is remembered unless it
        is of a height above `reached` (the node's height now); `height` None: not a
        consensus message of a height (a transaction batch, evidence), always remembered."""
        if key in self._seen:
            return False
        if height is None or height <= reached:
            self.remember(key, now_s)
        return True

    def remember(self, key: Hashable, now_s: float) -> None:
        """Remember a copy (one this node sent, or took)."""
        seen = self._seen
        seen[key] = now_s
        seen.move_to_end(key)
        while len(seen) > self._most or (
                self._ttl_s is not None and next(iter(seen.values())) < now_s - self._ttl_s):
            seen.popitem(last=False)
