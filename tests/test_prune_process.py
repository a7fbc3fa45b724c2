"""Pruning on real `healthnode run` processes (docs/operations.md, "Pruning"): a network of two
nodes, node 1 with `[node] keep_blocks`, node 0 an archive, under a load of transactions that
the state does not name (patients' emergency policies of 32 tags, ~1.2 KB each, that replace one
another). The pruning node keeps committing and serving a wallet (a record whose block body it
pruned is read through it), `healthnode verify` passes on it once stopped, and after a second,
equal load and a compaction its chain store is no larger than at the snapshot (plus the headers
and certificates of the new heights), while the archive's grew by the load's bytes.

The snapshot is written in-process while the network is stopped (`ChainStore.write_snapshot`,
what the node's snapshot hook does every `snapshot_interval` heights once it runs one)."""

from __future__ import annotations

import dataclasses
import os
import signal
from pathlib import Path

import pytest

from healthnode.crypto import Identity
from healthnode.home.config import load_config, load_genesis, write_config
from healthnode.home.modes import private_umask
from healthnode.protocol.tx import EmergencyPolicy
from healthnode.store.leveldb import ChainStore
from tests import wallet_cli as cli
from tests.cluster import CHAIN_ID, Cluster, wait_for

pytestmark = pytest.mark.slow  # about 16 s: CI runs it (.ci/run); the default suite has no room

KEEP_BLOCKS = 2
STATE_VERSIONS_KEPT = 8  # both nodes: the old trees would otherwise outweigh the load
PATIENTS = 50
POLICIES_PER_PATIENT = 6  # per load; the day's budget is 64 a patient
TAGS = 32  # GRANT_TAGS_MAX: the largest policy
# What a pruned height keeps: its header (with the previous block's certificate), its own
# certificate and its hash index, about 0.8 KB with two authorities (docs/operations.md).
KEPT_BYTES_PER_HEIGHT = 1024


def _policies(patients: list[Identity], nonces: dict[bytes, int]) -> list[str]:
    """One new emergency policy of each patient, hex."""
    txs = []
    for patient in patients:
        nonce = nonces[patient.public_key] = nonces.get(patient.public_key, 0) + 1
        tags = tuple(sorted(os.urandom(32) for _ in range(TAGS)))
        txs.append(EmergencyPolicy(signer=b"", nonce=nonce, allowed_tags=tags, wraps=())
                   .sign(patient, CHAIN_ID).encode().hex())
    return txs


def _load(cluster: Cluster, patients: list[Identity], nonces: dict[bytes, int]) -> int:
    """POLICIES_PER_PATIENT rounds of a policy of each patient, each round final on both nodes
    before the next (a block or two each). The load's bytes."""
    loaded = 0
    for _ in range(POLICIES_PER_PATIENT):
        txs = _policies(patients, nonces)
        answer = cluster.admin(0, "submit_txs", txs=txs)
        assert not answer["refused"], answer["refused"][:3]
        wait_for(lambda: cluster.admin(0, "status")["mempool_txs"] == 0, 30, "a round final")
        cluster.wait_height(cluster.height(0), [1], 30)
        loaded += sum(len(tx) // 2 for tx in txs)
    return loaded


def _chain_bytes(home: Path) -> int:
    """The chain store's bytes on disk after a full LevelDB compaction (node stopped)."""
    genesis = load_genesis(home / "genesis.json")
    with private_umask(), ChainStore.open(home / "data" / "chain", genesis) as store:
        store.compact()
    return sum(path.stat().st_size for path in (home / "data" / "chain").rglob("*")
               if path.is_file())


def _stop(cluster: Cluster, index: int) -> None:
    assert cluster.kill(index, signal.SIGTERM) == 0, cluster.log_tail(index)


def test_a_pruning_node_serves_verifies_and_stays_under_its_disk_bound(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path / "net", nodes=2)
    for index, keep in ((0, 0), (1, KEEP_BLOCKS)):
        home = cluster.homes[index]
        config = load_config(home)
        with private_umask():
            write_config(dataclasses.replace(config, node=dataclasses.replace(
                config.node, keep_blocks=keep, state_versions_kept=STATE_VERSIONS_KEPT)), home)
    people = cli.People(cluster, tmp_path)
    patients = [Identity.generate() for _ in range(PATIENTS)]
    nonces: dict[bytes, int] = {}
    try:
        cluster.start_all()
        cluster.wait_height(1, [0, 1], 30)  # a wallet takes a certified head first
        people.new("pat", "patient")
        source = tmp_path / "note.txt"
        source.write_text("potassium 4.1 mmol/L")
        record = cli.ok("record", "add", *people.wallet(1, "pat"), "--patient",
                        str(people.keys["pat"]), "--category", "lab", str(source))["record_id"]
        record_height = cluster.admin(1, "tx", tx_hash=record)["height"]
        first_load = _load(cluster, patients, nonces)
        # Both stopped: the snapshot, and each store's size at it.
        _stop(cluster, 0)
        _stop(cluster, 1)
        genesis = load_genesis(cluster.homes[1] / "genesis.json")
        with private_umask(), \
                ChainStore.open(cluster.homes[1] / "data" / "chain", genesis) as store:
            assert store.write_snapshot(store.pin(), keep=2) is not None
            snapshot_at = store.head.height
        archive_before, pruning_before = (_chain_bytes(home) for home in cluster.homes)
        cluster.start_all()
        second_load = _load(cluster, patients, nonces)
        # Node 1 pruned up to its snapshot, a bounded number of heights per commit, and goes on.
        wait_for(lambda: cluster.admin(1, "block", height=snapshot_at)["body"] == "pruned", 30,
                 "node 1 pruned up to its snapshot")
        assert cluster.admin(1, "block", height=record_height)["txs"] is None
        assert cluster.admin(1, "block", height=snapshot_at + 1)["body"] == "held"
        assert cluster.admin(0, "block", height=record_height)["body"] == "held"
        read = cli.ok("record", "get", *people.wallet(1, "pat"), record, "--out",
                      str(tmp_path / "read.txt"))
        assert read is not None and (tmp_path / "read.txt").read_text() == source.read_text()
        head = cluster.height(1)
        _stop(cluster, 0)
        _stop(cluster, 1)
        verified = cli.ok("verify", "--home", str(cluster.homes[1]))
        assert verified["ok"] and verified["height"] == head
        assert verified["replayed_from"] == snapshot_at and verified["pruned_to"] == snapshot_at
        assert cli.ok("verify", "--home", str(cluster.homes[0]))["replayed_from"] == 0
        archive_after, pruning_after = (_chain_bytes(home) for home in cluster.homes)
    finally:
        cluster.close()
    new_heights = head - snapshot_at
    bound = pruning_before + new_heights * KEPT_BYTES_PER_HEIGHT
    print(f"loads {first_load} + {second_load} B over {head} heights; archive "
          f"{archive_before} -> {archive_after} B; pruning {pruning_before} -> {pruning_after} "
          f"B (bound {bound} B)")
    assert pruning_after <= bound
    assert archive_after - archive_before >= 0.8 * second_load
