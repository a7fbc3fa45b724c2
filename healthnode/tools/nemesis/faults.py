"""What the nemesis does to the network: a seeded schedule of faults (pure: an RNG in, faults out).

Each fault is applied, held for its duration, then healed:

    kill        SIGKILL one node; heal: start it again (crash recovery from its store)
    restart     SIGTERM one node (clean stop); heal: start it again
    pause       SIGSTOP / freeze one node (a slow or hung machine); heal: resume it
    isolate     cut one node off from every other (its links die silently); heal: reconnect
    partition   split the nodes into two halves, 2|2 (no quorum on either side); heal: rejoin
    kill_two    SIGKILL two nodes at once (no quorum); heal: start both

Durations are long enough for the links to be declared dead (ping interval + timeout, 4 s) and for
several round timeouts, so a heal exercises redial, block sync and round catch-up.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Final

FAULT_KINDS: Final = ("kill", "restart", "pause", "isolate", "partition", "kill_two")
FAULT_DURATION_S: Final = (6.0, 20.0)  # uniform; long enough for dead links and round timeouts
QUIET_S: Final = (4.0, 10.0)  # healthy time between a recovery and the next fault


@dataclass(frozen=True, slots=True)
class Fault:
    kind: str
    nodes: tuple[int, ...]  # the nodes it acts on (for a partition: the first side)
    duration_s: float

    def groups(self, node_count: int) -> list[list[int]]:
        """For isolate and partition: the sides of the cut."""
        other = [i for i in range(node_count) if i not in self.nodes]
        return [list(self.nodes), other]

    def describe(self) -> str:
        return f"{self.kind}({','.join(f'node{i}' for i in self.nodes)}, {self.duration_s:.1f}s)"


def next_fault(rng: random.Random, node_count: int,
               kinds: tuple[str, ...] = FAULT_KINDS) -> Fault:
    kind = rng.choice(kinds)
    duration_s = round(rng.uniform(*FAULT_DURATION_S), 1)
    nodes = list(range(node_count))
    if kind == "partition":
        chosen = tuple(sorted(rng.sample(nodes, node_count // 2)))
    elif kind == "kill_two":
        chosen = tuple(sorted(rng.sample(nodes, 2)))
    else:
        chosen = (rng.choice(nodes),)
    return Fault(kind, chosen, duration_s)


def quiet_s(rng: random.Random) -> float:
    return round(rng.uniform(*QUIET_S), 1)
