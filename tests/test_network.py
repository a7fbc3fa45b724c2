"""The node daemon as a network: real `healthnode run` processes on 127.0.0.1 talking libp2p,
with real LevelDB homes, driven through their admin sockets.

Bounds stated here (docs/operations.md repeats them): with the default consensus parameters
(propose 1 s, prevote and precommit 0.5 s, +0.5 s per round, capped at 10 s; heartbeat 5 s)
- a restarted node is back in consensus within 20 s of its start;
- after a stall for lack of quorum, finalization resumes within 30 s of the quorum returning.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from healthnode.protocol.tx import decode_tx
from tests.cluster import Cluster, Patient, wait_for

REJOIN_BOUND_S = 20
RESUME_BOUND_S = 30


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    network = Cluster(tmp_path / "net")
    network.start_all()
    try:
        yield network
    finally:
        network.close()


def submit_records(cluster: Cluster, count: int, nodes: list[int]) -> list[str]:
    """`count` anchors spread over `nodes`; each patient's wallet talks to one node, as a wallet
    does (its nonces arrive in order)."""
    patients = {index: Patient() for index in nodes}
    return [cluster.submit(nodes[i % len(nodes)], patients[nodes[i % len(nodes)]].anchor())
            for i in range(count)]


def assert_same_chain(cluster: Cluster, nodes: list[int]) -> int:
    """Every node reports the same block hash at every height up to the lowest head."""
    top = min(cluster.height(i) for i in nodes)
    for height in range(1, top + 1):
        hashes = {cluster.block_hash(i, height) for i in nodes}
        assert len(hashes) == 1, f"nodes disagree at height {height}: {hashes}"
    return top


def test_four_nodes_finalize_submitted_transactions_with_identical_blocks(
        cluster: Cluster) -> None:
    txs = submit_records(cluster, 40, [0, 1, 2, 3])
    cluster.wait_final(txs, [0, 1, 2, 3], timeout_s=30)
    assert assert_same_chain(cluster, [0, 1, 2, 3]) >= 1
    status = cluster.status(0)
    assert status["peers"] == 3 and len(status["validators"]) == 4


def test_a_node_killed_with_sigkill_catches_up_by_block_sync_and_rejoins(
        cluster: Cluster) -> None:
    killed_at = cluster.height(0)
    cluster.kill(1)
    for _ in range(4):  # one block at least for each round, so node1 misses several
        txs = submit_records(cluster, 5, [0, 2, 3])
        cluster.wait_final(txs, [0, 2, 3], timeout_s=40)
    behind = cluster.height(0)
    # Signer liveness (node/health.py) on a node that stayed: node1 signed no certificate after
    # the height it was killed at, and each of its proposal turns was decided in a later round.
    status = cluster.status(0)
    signers = status["signers"]
    missed = signers["node1"]
    assert missed["missed_precommits"] >= behind - killed_at - 1 >= 3, missed
    keys = status["validators"]
    turns = [h for h in range(killed_at + 2, behind + 1)
             if keys[h % len(keys)] == missed["public_key"]]
    assert missed["missed_proposals"] >= len(turns), (missed, turns)
    print(f"\nnode1 killed at height {killed_at}, head {behind}: {missed}")
    cluster.start(1)
    cluster.wait_ready(1)
    cluster.wait_height(behind, [1], timeout_s=REJOIN_BOUND_S)
    # Rejoined: a transaction submitted through it is finalized by everyone.
    again = submit_records(cluster, 4, [1])
    cluster.wait_final(again, [0, 1, 2, 3], timeout_s=REJOIN_BOUND_S)
    assert_same_chain(cluster, [0, 1, 2, 3])


@pytest.mark.slow  # 19 s: in CI's slow step (.ci/run), out of the default suite's time
def test_without_a_quorum_nothing_finalizes_and_one_node_back_resumes_within_the_bound(
        cluster: Cluster) -> None:
    assert cluster.kill(2, signal.SIGTERM) == 0  # a clean stop
    assert cluster.kill(3, signal.SIGTERM) == 0
    stalled = max(cluster.height(0), cluster.height(1))
    txs = submit_records(cluster, 3, [0])
    time.sleep(8)  # more than a heartbeat and several rounds
    assert cluster.height(0) <= stalled + 1 and not any(cluster.is_final(0, h) for h in txs[-1:])
    stalled_height = cluster.height(0)
    time.sleep(3)
    assert cluster.height(0) == stalled_height, "finalized without a quorum"
    back = time.monotonic()
    cluster.start(2)
    cluster.wait_final(txs, [0, 1, 2], timeout_s=RESUME_BOUND_S)
    print(f"\nresumed {time.monotonic() - back:.1f} s after the third node was started")


@pytest.mark.slow  # 25 s: in CI's slow step (.ci/run), out of the default suite's time
def test_a_node_restarted_ten_times_rejoins_each_time_and_the_others_never_stall(
        cluster: Cluster) -> None:
    patient = Patient()
    worst_rejoin_s = 0.0
    for cycle in range(10):
        cluster.kill(3)
        before = cluster.height(0)
        tx = cluster.submit(0, patient.anchor())
        cluster.wait_final([tx], [0, 1, 2], timeout_s=15)  # the others go on
        assert cluster.height(0) > before
        started = time.monotonic()
        cluster.start(3)
        cluster.wait_ready(3)
        target = cluster.height(0)
        wait_for(lambda t=target: cluster.height(3) >= t, REJOIN_BOUND_S,
                 f"node3 back at height {target} (cycle {cycle})")
        worst_rejoin_s = max(worst_rejoin_s, time.monotonic() - started)
        time.sleep(1)
    assert_same_chain(cluster, [0, 1, 2, 3])
    # Killed ten times while blocks were being committed, node3 computes, from its own LevelDB
    # state, the same state root as the others (docs/ledger.md, "The state root").
    wait_for(lambda: len({cluster.status(i)["state_root"] for i in range(4)}) == 1, 10,
             "the same state root on every node")
    print(f"\nworst rejoin after restart: {worst_rejoin_s:.1f} s")


def test_a_node_lacking_a_proposals_transactions_asks_for_the_whole_block_and_is_sent_it(
        tmp_path: Path) -> None:
    """Proposals travel compact (transaction hashes). node3's mempool holds one transaction, so
    it lacks most of those proposed: it asks the proposer for the whole block and is sent it.
    (Whether node3 also falls a block behind and syncs depends on timing, so it is not checked.)"""
    network = Cluster(tmp_path / "net")
    config = network.homes[3] / "config.toml"
    config.write_text(config.read_text().replace("txs_max = 50000", "txs_max = 1")
                      .replace("reserved_txs = 5000", "reserved_txs = 0"))
    network.start_all()
    try:
        for index in range(4):  # every link up, so that node3 is sent the batch
            wait_for(lambda i=index: network.status(i)["peers"] == 3, 20, f"node{index} linked")
        patient = Patient()
        raw = [patient.anchor() for _ in range(12)]
        # One request, so node0 gossips them in one batch: node3 takes the first and has no
        # room for the rest, which the proposers (any of nodes 0-2) put in their blocks.
        accepted = network.admin(0, "submit_txs", txs=[tx.hex() for tx in raw])
        assert accepted == {"accepted": 12, "refused": []}
        txs = [decode_tx(tx).hash.hex() for tx in raw]
        network.wait_final(txs, [0, 1, 2, 3], timeout_s=30)
        assert network.rejected(3, "mempool_full") >= 1
        assert network.metric(3, 'healthnode_compact_proposals_total{outcome="incomplete"}') >= 1
        assert sum(network.metric(i, 'healthnode_compact_proposals_total{outcome="block_sent"}')
                   for i in (0, 1, 2)) >= 1
        assert network.metric(0, 'healthnode_compact_proposals_total{outcome="complete"}') >= 1
        assert_same_chain(network, [0, 1, 2, 3])
    finally:
        network.close()
