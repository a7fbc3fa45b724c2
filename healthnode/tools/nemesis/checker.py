"""The checker: a pure function of a run's history and of every node's chain.

`check(events, chains)` answers the questions a run is for:

- lost: an acknowledged transaction missing from some node's chain;
- duplicated: a transaction in some node's chain more than once (acknowledged or not);
- misplaced: an acknowledged transaction at another height than the one it was acknowledged at;
- forks: a height at which two nodes hold different block hashes;
- and, for the report, how many operations, faults and acknowledgements there were and the worst
  recovery time after a heal.

Chains are compared up to the lowest height every node has: a node may be a block or two ahead when
they are read, which is not a fork. An acknowledged transaction above that height counts as lost,
since the runner waits for every node to pass the highest acknowledged height before reading.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Block:
    height: int
    hash: str
    txs: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Anomaly:
    kind: str  # lost | duplicated | misplaced | fork
    node: str | None
    detail: str


@dataclass(frozen=True, slots=True)
class Report:
    operations: int
    acknowledged: int
    failed_definite: int
    failed_indeterminate: int
    unacknowledged_committed: int  # failed or unfinished ops whose tx is on the chain anyway
    faults: int
    faults_by_kind: dict[str, int]
    recoveries_s: tuple[float, ...]
    recoveries_timed_out: int
    crashes: dict[str, int]  # node -> exits the nemesis did not cause
    heights_checked: int
    anomalies: tuple[Anomaly, ...] = field(default=())

    @property
    def lost(self) -> int:
        return sum(1 for a in self.anomalies if a.kind == "lost")

    @property
    def duplicated(self) -> int:
        return sum(1 for a in self.anomalies if a.kind == "duplicated")

    @property
    def misplaced(self) -> int:
        return sum(1 for a in self.anomalies if a.kind == "misplaced")

    @property
    def forks(self) -> int:
        return len({a.detail for a in self.anomalies if a.kind == "fork"})

    @property
    def valid(self) -> bool:
        return not self.anomalies

    def summary(self) -> dict[str, Any]:
        return {
            "valid": self.valid,
            "operations": self.operations,
            "acknowledged": self.acknowledged,
            "failed_definite": self.failed_definite,
            "failed_indeterminate": self.failed_indeterminate,
            "unacknowledged_committed": self.unacknowledged_committed,
            "faults": self.faults,
            "faults_by_kind": self.faults_by_kind,
            "lost": self.lost,
            "duplicated": self.duplicated,
            "misplaced": self.misplaced,
            "forks": self.forks,
            "heights_checked": self.heights_checked,
            "crashes": sum(self.crashes.values()),
            "crashes_by_node": self.crashes,
            "recoveries": len(self.recoveries_s),
            "recoveries_timed_out": self.recoveries_timed_out,
            "recovery_worst_s": round(max(self.recoveries_s), 2) if self.recoveries_s else None,
            "recovery_last_s": round(self.recoveries_s[-1], 2) if self.recoveries_s else None,
            "anomalies": [{"kind": a.kind, "node": a.node, "detail": a.detail}
                          for a in self.anomalies[:50]],
        }


def check(events: Iterable[Mapping[str, Any]], chains: Mapping[str, Sequence[Block]]) -> Report:
    """Check a history against the chains read from every node (node name -> blocks by height)."""
    invoked: dict[int, str] = {}
    acknowledged: dict[str, int] = {}  # tx hash -> height it was acknowledged at
    failed_definite = failed_indeterminate = 0
    faults: Counter[str] = Counter()
    recoveries: list[float] = []
    recoveries_timed_out = 0
    crashes: Counter[str] = Counter()
    for event in events:
        kind = event["type"]
        if kind == "invoke":
            invoked[int(event["op"])] = str(event["tx_hash"])
        elif kind == "ok":
            acknowledged[str(event["tx_hash"])] = int(event["height"])
        elif kind == "fail":
            if event.get("definite"):
                failed_definite += 1
            else:
                failed_indeterminate += 1
        elif kind == "nemesis" and event.get("phase") == "start":
            faults[str(event["fault"])] += 1
        elif kind == "recovery":
            recoveries.append(float(event["seconds"]))
            recoveries_timed_out += bool(event.get("timed_out"))
        elif kind == "crash":
            crashes[f"node{event['node']}"] += 1

    anomalies: list[Anomaly] = []
    common = min((len(blocks) for blocks in chains.values()), default=0)
    by_height: dict[int, dict[str, str]] = {}
    committed: set[str] = set()
    for node, blocks in sorted(chains.items()):
        for position, block in enumerate(blocks, 1):
            assert block.height == position, f"{node}: blocks must be given in height order"
        counts: Counter[str] = Counter()
        where: dict[str, int] = {}
        for block in blocks[:common]:
            by_height.setdefault(block.height, {})[node] = block.hash
            counts.update(block.txs)
            for tx_hash in block.txs:
                where[tx_hash] = block.height
        committed.update(counts)
        for tx_hash, count in sorted(counts.items()):
            if count > 1:
                anomalies.append(Anomaly("duplicated", node, f"{tx_hash} appears {count} times"))
        for tx_hash, height in sorted(acknowledged.items()):
            if tx_hash not in counts:
                anomalies.append(Anomaly("lost", node,
                                         f"{tx_hash} acknowledged at height {height} is missing"))
            elif where[tx_hash] != height:
                anomalies.append(Anomaly("misplaced", node, f"{tx_hash} acknowledged at height "
                                         f"{height} is at height {where[tx_hash]}"))
    for height, hashes in sorted(by_height.items()):
        if len(set(hashes.values())) > 1:
            nodes = ", ".join(f"{node}={h[:12]}" for node, h in sorted(hashes.items()))
            anomalies.append(Anomaly("fork", None, f"height {height}: {nodes}"))

    unacknowledged = set(invoked.values()) - set(acknowledged)
    return Report(
        operations=len(invoked),
        acknowledged=len(acknowledged),
        failed_definite=failed_definite,
        failed_indeterminate=failed_indeterminate,
        unacknowledged_committed=len(unacknowledged & committed),
        faults=sum(faults.values()),
        faults_by_kind=dict(sorted(faults.items())),
        recoveries_s=tuple(recoveries),
        recoveries_timed_out=recoveries_timed_out,
        crashes=dict(sorted(crashes.items())),
        heights_checked=common,
        anomalies=tuple(anomalies),
    )
