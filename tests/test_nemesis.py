"""The nemesis checker finds what it is for (lost, duplicated and misplaced records, forks) in
synthetic histories, and a short real run (local nodes in network namespaces, root only) comes out
clean and still fails the checker once a record is deliberately dropped or duplicated."""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path

import pytest

from healthnode.tools.nemesis.checker import Block, check
from healthnode.tools.nemesis.faults import FAULT_KINDS, next_fault
from healthnode.tools.nemesis.history import HistoryWriter, read_history

SHORT_RUN_S = 25  # faults for 25 s, plus set-up, recovery and the final read: well under 90 s


def history(*acknowledged: tuple[str, int],
            failed: tuple[str, ...] = ()) -> list[dict[str, object]]:
    events: list[dict[str, object]] = []
    op = 0
    for tx_hash, height in acknowledged:
        op += 1
        events.append({"type": "invoke", "op": op, "node": 0, "tx_hash": tx_hash, "t": op})
        events.append({"type": "ok", "op": op, "node": 0, "tx_hash": tx_hash, "height": height,
                       "t": op})
    for tx_hash in failed:
        op += 1
        events.append({"type": "invoke", "op": op, "node": 1, "tx_hash": tx_hash, "t": op})
        events.append({"type": "fail", "op": op, "node": 1, "tx_hash": tx_hash,
                       "error": "timeout", "definite": False, "t": op})
    events.append({"type": "nemesis", "fault": "kill", "nodes": [2], "phase": "start", "t": 9})
    events.append({"type": "nemesis", "fault": "kill", "nodes": [2], "phase": "heal", "t": 10})
    events.append({"type": "recovery", "after": "kill", "seconds": 2.5, "t": 12})
    return events


def chain(*blocks: tuple[str, ...], prefix: str = "h") -> list[Block]:
    return [Block(height, f"{prefix}{height}", txs) for height, txs in enumerate(blocks, 1)]


def same_everywhere(blocks: list[Block], nodes: int = 4) -> dict[str, list[Block]]:
    return {f"node{i}": blocks for i in range(nodes)}


def test_a_history_whose_records_are_all_on_every_node_once_is_valid() -> None:
    events = history(("a", 1), ("b", 2), failed=("c",))
    report = check(events, same_everywhere(chain(("a",), ("b", "c"))))
    assert report.valid, report.anomalies
    assert (report.operations, report.acknowledged, report.failed_indeterminate) == (3, 2, 1)
    assert report.unacknowledged_committed == 1  # "c" timed out but was committed: allowed
    assert (report.faults, report.recoveries_s) == (1, (2.5,))


def test_an_acknowledged_record_missing_from_one_node_is_lost() -> None:
    chains = same_everywhere(chain(("a",), ("b",)))
    chains["node3"] = chain(("a",), (), prefix="h")  # same hashes, "b" missing: a lying node
    report = check(history(("a", 1), ("b", 2)), chains)
    assert report.lost == 1
    assert [a.node for a in report.anomalies if a.kind == "lost"] == ["node3"]


def test_a_record_twice_in_a_chain_is_duplicated_even_if_never_acknowledged() -> None:
    report = check(history(("a", 1), failed=("c",)),
                   same_everywhere(chain(("a", "c"), ("c",))))
    assert report.duplicated == 4  # "c" twice, on each of the 4 nodes
    assert report.lost == 0


def test_an_acknowledged_record_at_another_height_is_misplaced() -> None:
    report = check(history(("a", 2)), same_everywhere(chain(("a",), ())))
    assert report.misplaced == 4


def test_two_block_hashes_at_one_height_are_a_fork() -> None:
    chains = same_everywhere(chain(("a",), ("b",)))
    chains["node1"] = [chains["node1"][0], Block(2, "other", ("b",))]
    report = check(history(("a", 1), ("b", 2)), chains)
    assert report.forks == 1
    assert not report.valid


def test_a_node_ahead_of_the_others_is_compared_only_up_to_the_common_height() -> None:
    chains = same_everywhere(chain(("a",), ("b",)))
    chains["node0"] = chain(("a",), ("b",), ("x",))
    report = check(history(("a", 1), ("b", 2)), chains)
    assert report.valid and report.heights_checked == 2


def test_a_torn_last_history_line_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    writer = HistoryWriter(path)
    for event in history(("a", 1)):
        writer.write(event)
    writer.close()
    with path.open("a") as file:
        file.write('{"type": "invo')  # the writer was killed mid-line
    assert [e["type"] for e in read_history(path)][:2] == ["invoke", "ok"]


def test_the_fault_schedule_is_a_function_of_the_seed() -> None:
    first = [next_fault(random.Random(7), 4) for _ in range(20)]
    again = [next_fault(random.Random(7), 4) for _ in range(20)]
    assert first == again
    assert all(f.kind in FAULT_KINDS and all(0 <= n < 4 for n in f.nodes) for f in first)
    partitions = [f for f in (next_fault(random.Random(s), 4, ("partition",)) for s in range(20))]
    assert all(len(f.nodes) == 2 for f in partitions)  # 2|2: no side has a quorum


@pytest.mark.slow  # ~40 s: the default suite must stay under 8 minutes on the 2-core machine
def test_a_short_real_run_is_clean_and_the_checker_catches_an_injected_loss_and_duplicate(
        tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the nemesis needs root (network namespaces, nftables); run as root")
    if shutil.which("ip") is None or shutil.which("nft") is None:
        pytest.skip("iproute2 and nftables are needed (test_network_namespaces installs them)")
    from healthnode.tools.nemesis.backends import NamespaceBackend
    from healthnode.tools.nemesis.runner import Run, RunOptions

    started = time.monotonic()
    options = RunOptions(duration_s=SHORT_RUN_S, history=tmp_path / "history.jsonl",
                         seed=11, clients=2, kinds=("kill", "isolate", "partition"))
    backend = NamespaceBackend(tmp_path / "net")
    try:
        run = Run(backend, options, log=print)
        report = run.execute()
    finally:
        backend.close()
    print(json.dumps(report.summary()))
    assert report.valid, report.anomalies
    assert not report.crashes, f"nodes exited on their own: {report.crashes}"
    assert report.acknowledged > 10 and report.faults >= 1 and report.recoveries_s
    events = list(read_history(options.history))

    # Drop one acknowledged record from node2's copy of its block: the checker must call it lost.
    acknowledged = next(e for e in events if e["type"] == "ok")
    tx_hash, height = acknowledged["tx_hash"], acknowledged["height"]
    chains = {node: list(blocks) for node, blocks in run.chains.items()}
    block = chains["node2"][height - 1]
    chains["node2"][height - 1] = Block(block.height, block.hash,
                                        tuple(t for t in block.txs if t != tx_hash))
    assert check(events, chains).lost == 1

    # Replay it in a later block of node1: the checker must call it duplicated.
    chains = {node: list(blocks) for node, blocks in run.chains.items()}
    last = chains["node1"][-1]
    chains["node1"][-1] = Block(last.height, last.hash, (*last.txs, tx_hash))
    assert check(events, chains).duplicated == 1
    assert time.monotonic() - started < 90
