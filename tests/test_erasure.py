"""Erasure that erases, on real `healthnode run` processes (docs/ledger.md, "What remains after
an erasure").

A patient adds a 3 MB record that its emergency policy covers; a clinician reads it under a
grant; node1's operator backs its node up into its home. Every node's home holds the ciphertext
then (the scan below finds it: so it can find it). The patient erases the record; every node
deletes the ciphertext, compacts it out of its files and states the purge on chain, which the
patient's wallet shows. Then a scan of every byte of every file in every home, backups included,
finds no 32-byte slice of the ciphertext, each data directory is smaller by at least the record,
break-glass and the former grantee's read are refused, and node1, restored from its backup taken
before the erasure, holds none either once it serves again.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from healthnode.crypto import Identity
from healthnode.home import config
from healthnode.home.config import KEY_FILE
from healthnode.home.modes import private_umask
from healthnode.store.leveldb import ChainStore
from tests import wallet_cli as cli
from tests.cluster import Cluster, wait_for
from tests.scan import hits, slices_of
from tests.test_joining import newcomer_home, vouched_newcomer

pytestmark = pytest.mark.slow  # about two minutes: CI runs it (.ci/run)

RECORD_BYTES = 3_000_000  # "a 3 MB record"
SNAPSHOT_INTERVAL = 5


@dataclass
class World(cli.People):
    record: str = ""
    ciphertext: bytes = b""
    backup: Path = field(default_factory=Path)

    def slices(self) -> list[bytes]:
        return slices_of(self.ciphertext)


def identity_hex() -> str:
    return Identity.generate().public_key.hex()


def data_bytes(home: Path, part: str = "") -> int:
    """The bytes of the files in the home's data directory (or in its `part`)."""
    return sum(path.stat().st_size for path in (home / "data" / part).rglob("*")
               if path.is_file())


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("erasure")
    cluster = Cluster(root / "net")
    for home in cluster.homes:  # snapshots every few heights, for a node that joins after
        node_config = config.load_config(home)
        config.write_config(dataclasses.replace(node_config, node=dataclasses.replace(
            node_config.node, snapshot_interval=SNAPSHOT_INTERVAL)), home)
    cluster.start_all()
    w = World(cluster, root)
    try:
        for who, kind in [("patient", "patient"), ("er", "provider"),
                          ("clinician", "provider")]:
            w.new(who, kind)
        w.register(2, "er", ["clinician", "emergency"], "Dr ER")
        w.register(1, "clinician", ["clinician"], "Dr Clinician")
        cli.ok("emergency", "allow", *w.wallet(0, "patient"), "--category", "imaging")
        source = root / "scan.bin"
        source.write_bytes(os.urandom(RECORD_BYTES))
        added = cli.ok("record", "add", *w.wallet(0, "patient"), "--patient",
                       w.public["patient"], "--category", "imaging", str(source))
        assert added["emergency_wrap"] is True
        w.record = added["record_id"]
        cli.ok("grant", *w.wallet(0, "patient"), "--to", w.public["clinician"], "--category",
               "imaging")
        cli.ok("record", "get", *w.wallet(1, "clinician"), w.record, "--out",
               str(root / "read.bin"))
        assert (root / "read.bin").read_bytes() == source.read_bytes()
        w.ciphertext = _ciphertext(cluster, 3, bytes.fromhex(added["ciphertext_hash"]))
        yield w
    finally:
        cluster.close()


def _ciphertext(cluster: Cluster, index: int, ciphertext_hash: bytes) -> bytes:
    """The ciphertext as node `index` stores it (read from its store while it is stopped)."""
    cluster.nodes[index].stop()
    with private_umask(), \
            ChainStore.open(cluster.homes[index] / "data" / "chain", cluster.genesis) as store:
        data = store.blob(ciphertext_hash)
    cluster.start(index)
    cluster.wait_ready(index)
    assert data is not None and len(data) >= RECORD_BYTES
    return data


def _backup(cluster: Cluster, index: int, destination: Path) -> None:
    cluster.admin(index, "backup", dir=str(destination))
    done = wait_for(lambda: (status := cluster.admin(index, "backup_status"))["state"] != "running"
                    and status, 60, "the backup")
    assert done["state"] == "done", done


def test_an_erased_record_leaves_every_file_of_every_home(world: World) -> None:
    cluster = world.cluster
    slices = world.slices()
    world.backup = cluster.homes[1] / "backups" / "before-erasure"
    world.backup.parent.mkdir()
    _backup(cluster, 1, world.backup)
    for home in cluster.homes:  # the scan finds what is there
        assert hits(home / "data", slices), home.name
    assert hits(world.backup, slices) == {}  # backups hold no ciphertexts
    before = [(data_bytes(home), data_bytes(home, "chain")) for home in cluster.homes]

    erased = cli.ok("record", "erase", *world.wallet(2, "patient"), world.record)
    erasure = wait_for(lambda: (e := cli.ok("record", "erasure", *world.wallet(3, "patient"),
                                            world.record, "--json"))["not_yet"] == [] and e,
                       60, "every node to state its purge")
    assert erasure["erased_height"] == erased["erased_height"] and erasure["proven"]
    assert sorted(purge["name"] for purge in erasure["purged"]) == [
        "node0", "node1", "node2", "node3"]
    assert all(purge["height"] > erased["erased_height"] for purge in erasure["purged"])
    shown = cli.run("record", "erasure", *world.wallet(0, "patient"), world.record).stdout
    assert shown.count("purged by node") == 4 and "not yet" not in shown

    for home in cluster.homes:
        assert hits(home, slices) == {}, home.name
    # Smaller by the record at least, but for the blocks that the chain store took meanwhile.
    for home, (size, chain) in zip(cluster.homes, before, strict=True):
        grown = data_bytes(home, "chain") - chain
        assert data_bytes(home) <= size - RECORD_BYTES + grown, (home.name, grown)

    audit = cli.ok("audit", *world.wallet(1, "patient"), "--json")
    assert [line["record_id"] for line in audit if line["kind"] == "erasure"] == [world.record]


def test_no_read_of_an_erased_record_is_let_through(world: World) -> None:
    """Break-glass, the grantee's read and the patient's own: each told the record was erased
    (all three may read it, so all three are told why), and nothing written."""
    for who, index, extra in [("er", 2, ["--break-glass"]), ("clinician", 1, []),
                              ("patient", 0, [])]:
        cli.refused("record_erased", "record", "get", *world.wallet(index, who), world.record,
                    "--out", str(world.dir / f"{who}.out"), *extra)
        assert not (world.dir / f"{who}.out").exists()


def test_a_node_restored_from_a_backup_before_the_erasure_holds_none_of_it(
        world: World) -> None:
    cluster = world.cluster
    custody = world.dir / "custody"
    custody.mkdir()
    shutil.copyfile(cluster.homes[1] / KEY_FILE, custody / KEY_FILE)
    shutil.move(world.backup, custody / "backup")
    cluster.kill(1)
    shutil.rmtree(cluster.homes[1])
    restored = subprocess.run(
        [sys.executable, "-m", "healthnode", "init", "--home", str(cluster.homes[1]),
         "--restore", str(custody / "backup"), "--key", str(custody / KEY_FILE)],
        capture_output=True, text=True, timeout=60, check=False)
    assert restored.returncode == 0, restored.stderr
    slices = world.slices()
    assert hits(cluster.homes[1], slices) == {}
    cluster.start(1)
    cluster.wait_ready(1)
    wait_for(lambda: cluster.admin(1, "validators")["self"]["signing_hold"]["held"] is False,
             90, "the restored node to catch up")
    listed = cli.ok("record", "list", *world.wallet(1, "patient"), "--json")
    assert {r["record_id"]: r["erased_height"] for r in listed}[world.record] is not None
    assert hits(cluster.homes[1], slices) == {}


def test_a_node_that_joins_by_state_sync_after_the_erasure_holds_none_of_it(
        world: World, tmp_path: Path) -> None:
    """A fifth hospital joins after the erasure and takes a snapshot made after it: the record is
    in the snapshot, as the ledger keeps it (erased), and its ciphertext is nowhere in the new
    node's home, since no snapshot holds a ciphertext and blob replication fetches none of an
    erased record."""
    cluster = world.cluster
    erased_height = cli.ok("record", "erasure", *world.wallet(0, "patient"), world.record,
                           "--json")["erased_height"]
    while cluster.height(0) < erased_height + 2 * SNAPSHOT_INTERVAL:  # a few blocks on
        cluster.admin(0, "provider_register", provider=identity_hex(), roles=["clinician"],
                      display_name="Dr Filler")
        time.sleep(0.2)
    snapshot = wait_for(lambda: (s := cluster.admin(0, "status")["store"]["snapshots"]) and
                        s[0] > erased_height and s[0], 60, "a snapshot after the erasure")
    home, fifth = newcomer_home(tmp_path / "fifth", cluster)
    node = vouched_newcomer(cluster, home, fifth, "fifth", 0)
    node.start()
    node.wait_ready(60)
    status = cluster.admin(4, "status")
    assert status["store"]["base"] >= snapshot > erased_height
    listed = cli.ok("record", "list", "--node", str(home), "--as",
                    str(world.keys["patient"]), "--json")
    assert {r["record_id"]: r["erased_height"] for r in listed}[world.record] == erased_height
    time.sleep(2)  # blob replication rounds: it must fetch nothing of the erased record
    assert hits(home, world.slices()) == {}
