"""State sync on real `healthnode run` processes (docs/network.md, "State sync"): a new hospital
joins a network that holds 10,000 finalized records (100,000 under -m slow) by taking a snapshot
from its peers, fetches no block body below it, reaches the head and votes once voted in; a peer
that corrupts every chunk and manifest it serves costs one retry per chunk it was asked for.

The records are made in the test process, as blocks certified by the four authorities' own keys
(the testnet's), written into node0's store with their ciphertexts and copied to the other three
before they start: the same chain the network would have made, in seconds rather than minutes.
Everything after that runs over libp2p between processes."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
import urllib.request
from pathlib import Path

import pytest
import trio

from healthnode.crypto import ZERO_HASH, Identity, digest
from healthnode.home import config
from healthnode.home.config import KEY_FILE
from healthnode.home.keys import load_identity
from healthnode.home.layout import free_base_port
from healthnode.home.modes import private_umask
from healthnode.ledger import rules
from healthnode.protocol.block import CommitCertificate
from healthnode.protocol.client import QueryRequest, RecordsResponse
from healthnode.protocol.tx import KeyWrap, RecordAnchor
from healthnode.store.blob_files import BlobFiles
from healthnode.store.leveldb import BLOB_DIR, ChainStore
from healthnode.wallet.connection import connect
from tests import wallet_cli as cli
from tests.cluster import LAB_TAG, Cluster, wait_for
from tests.statesync_liar import StateSyncLiar
from tests.test_joining import newcomer_home, vote_in_and_see_it_sign, vouched_newcomer

PER_PATIENT = 10  # records a patient anchors (its quota: 16 a block, 200 a day)
BLOCK_RECORDS = 500  # records a block: 10,000 records are 20 blocks, 100,000 are 200
CIPHERTEXT_BYTES = 1024


def ciphertext(patient: Identity, nonce: int) -> bytes:
    seed = digest(patient.public_key + nonce.to_bytes(8, "big"))
    return (seed * (CIPHERTEXT_BYTES // len(seed)))[:CIPHERTEXT_BYTES]


def patients(records: int) -> list[Identity]:
    return [Identity.from_seed(digest(b"statesync-patient" + i.to_bytes(4, "big")))
            for i in range(records // PER_PATIENT)]


async def records_of(patient: Identity, home: str) -> RecordsResponse:
    async with connect(patient, home) as connection:
        answer = await connection.request(QueryRequest("records", None, None))
    assert isinstance(answer, RecordsResponse), answer
    return answer


def metric(home: Path, name: str) -> float:
    listen = config.load_config(home).metrics.listen
    with urllib.request.urlopen(f"http://{listen}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + " ") or line.startswith(name + "{"))


def blob_file(blobs: BlobFiles, body: bytes) -> None:
    """A ciphertext file where the store keeps it, written without the store's fsyncs (what
    the test makes, it makes again if a crash loses it)."""
    path = blobs.path(digest(body))
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.write_bytes(body)


def _link_blobs(source: str, destination: str) -> None:
    """Copy a store's file, but link a ciphertext's (each node deletes its own link at an
    erasure, and a file is never rewritten): ten thousand copies take seconds."""
    if f"/{BLOB_DIR}/" in source:
        os.link(source, destination)
    else:
        shutil.copy2(source, destination)


def make_records(cluster: Cluster, records: int) -> int:
    """`records` anchors, in blocks of BLOCK_RECORDS, certified by the four authorities, written
    into node0's store with their ciphertexts and a snapshot of the last height; the store is
    then copied to the three others. The height of the last block."""
    signers = [load_identity(home / KEY_FILE, expected_kind="node") for home in cluster.homes]
    genesis = cluster.genesis
    data = [config.load_config(home).node.data_dir for home in cluster.homes]
    with private_umask(), ChainStore.open(cluster.homes[0] / data[0] / "chain",
                                          genesis) as store:
        previous, last_commit, time_ms = ZERO_HASH, None, genesis.genesis_time_ms
        people = patients(records)
        blobs = BlobFiles(cluster.homes[0] / data[0] / BLOB_DIR)
        anchors = []
        for nonce in range(1, PER_PATIENT + 1):  # nonce by nonce: each patient's in order
            for patient in people:
                body = ciphertext(patient, nonce)
                blob_file(blobs, body)
                anchors.append(RecordAnchor(
                    signer=b"", nonce=nonce, patient=patient.public_key,
                    ciphertext_hash=digest(body), ciphertext_bytes=CIPHERTEXT_BYTES,
                    tags=(LAB_TAG,), key_wraps=(KeyWrap(patient.public_key, b"w" * 80),),
                    supersedes=None).sign(patient, genesis.chain_id))
        for first in range(0, len(anchors), BLOCK_RECORDS):
            txs = anchors[first:first + BLOCK_RECORDS]
            height = store.head.height + 1
            time_ms += 1  # in the past by the time the nodes start: their next block is now
            built = rules.build_block(
                store, txs, height=height, time_ms=time_ms, prev_hash=previous,
                last_commit=last_commit, evidence=(),
                proposer=signers[height % len(signers)].public_key, params=genesis.params)
            assert not built.refused and len(built.block.txs) == len(txs)
            certificate = CommitCertificate.signed_by(built.block, signers, genesis.chain_id, 0)
            store.commit(built.block, certificate, built.execution)
            previous, last_commit = built.block.hash, certificate
        assert store.write_snapshot(store.pin(), keep=2) is not None
        height = store.head.height
    for index in range(1, len(cluster.homes)):  # ciphertext files are never written in place
        shutil.copytree(cluster.homes[0] / data[0], cluster.homes[index] / data[index],
                        copy_function=_link_blobs)
    return height


def log_events(home: Path, event: str) -> list[dict[str, object]]:
    lines = (home / "node.log").read_text().splitlines() if (home / "node.log").exists() else []
    found = []
    for line in lines:
        if f'"{event}"' in line:
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
    return found


def join_by_replay(tmp_path: Path, cluster: Cluster) -> float:
    """A sixth hospital joins the same network by replaying every block (`init --replay`): the
    seconds from its start to the head, and its store holds every body."""
    home, sixth = newcomer_home(tmp_path / "sixth", cluster)
    assert config.load_config(home).node.state_sync
    cli.ok("init", "--home", str(home), "--genesis", str(cluster.genesis_file), "--replay")
    assert not config.load_config(home).node.state_sync
    node = vouched_newcomer(cluster, home, sixth, "sixth", 2)
    started = time.monotonic()
    node.start()
    node.wait_ready(600)
    index = len(cluster.homes) - 1
    head = cluster.height(0)
    wait_for(lambda: cluster.height(index) >= head, 600, "the sixth to replay to the head")
    seconds = time.monotonic() - started
    assert cluster.admin(index, "status")["store"]["base"] == 0
    assert cluster.admin(index, "block", height=1) is not None
    assert not log_events(home, "statesync_done")
    return seconds


def join_by_state_sync(tmp_path: Path, records: int, ready_s: float,
                       replay_too: bool = False) -> None:
    cluster = Cluster(tmp_path / "net")
    liar: StateSyncLiar | None = None
    boaster: StateSyncLiar | None = None
    try:
        started = time.monotonic()
        snapshot_height = make_records(cluster, records)
        made_s = time.monotonic() - started
        cluster.start_all()
        wait_for(lambda: all(member["addresses"] for member in
                             cluster.admin(0, "validators")["authorities"]["members"]),
                 30, "the four authorities' announcements")
        assert cluster.admin(0, "status")["store"]["snapshots"] == [snapshot_height]
        # Two liars ask node1 for what they serve, as observers the network vouched for: one
        # corrupts every chunk and manifest, one offers a snapshot that nobody holds.
        seed1 = config.load_config(cluster.homes[1]).p2p.listen[0] + \
            f"/p2p/{cluster.status(1)['peer_id']}"
        liar = StateSyncLiar(seed1, free_base_port(1))
        boaster = StateSyncLiar(seed1, free_base_port(1) + 5, corrupt=False, made_up_offer=True)
        for one, name in ((liar, "liar"), (boaster, "boaster")):
            one.start()
            cli.ok("admin", "--home", str(cluster.homes[1]), "observer_add", "--param",
                   f"subject={one.identity.public_key.hex()}", "--param", f"name={name}",
                   "--param", "wait=true")
        home, fifth = newcomer_home(tmp_path / "fifth", cluster)
        node_config = config.load_config(home)
        config.write_config(dataclasses.replace(node_config, p2p=dataclasses.replace(
            node_config.p2p, peers=(*node_config.p2p.peers, liar.address, boaster.address))),
            home)
        node = vouched_newcomer(cluster, home, fifth, "fifth", 1)
        joined = time.monotonic()
        node.start()
        node.wait_ready(ready_s)
        head = cluster.height(0)
        wait_for(lambda: cluster.height(4) >= head, 60, "the fifth to reach the head")
        joined_s = time.monotonic() - joined
        status = cluster.admin(4, "status")
        assert status["store"] == {"base": snapshot_height, "snapshots": [snapshot_height]}
        done = log_events(home, "statesync_done")
        assert len(done) == 1 and done[0]["height"] == snapshot_height
        # No block body below the snapshot: the fifth holds none; node0 holds them all.
        for height in (1, snapshot_height // 2, snapshot_height - 1):
            assert cluster.admin(4, "block", height=height) is None
            assert cluster.admin(0, "block", height=height) is not None
        assert cluster.admin(4, "block", height=snapshot_height + 1) is not None
        # The liar's answers were each refused, and each chunk it spoiled was asked again of
        # another peer, once: the chunk was taken (the snapshot was installed whole). The
        # boaster's newest offer was tried first, refused, and passed over for the real one.
        refused = log_events(home, "statesync_answer_refused")
        by_peer: dict[str, list[str]] = {}
        for entry in refused:
            by_peer.setdefault(str(entry["peer"]), []).append(str(entry["what"]))
        liar_key, boaster_key = (one.identity.public_key.hex()[:16] for one in (liar, boaster))
        assert set(by_peer) <= {liar_key, boaster_key}, by_peer
        assert by_peer[boaster_key] == ["manifest"]
        assert boaster.served[0][0] == "chain"  # of its made-up height: nothing behind it
        spoiled = [index for what, index in liar.served if what == "chunk"]
        assert spoiled, "the liar was asked for no chunk"
        chunk_refusals = [what for what in by_peer[liar_key] if what != "manifest"]
        assert sorted(chunk_refusals) == sorted(f"chunk {index}" for index in spoiled)
        assert len(set(chunk_refusals)) == len(chunk_refusals)  # each once
        assert by_peer[liar_key].count("manifest") == int(("manifest", 0) in liar.served)
        # It serves a patient's records with their anchors, which came with the snapshot.
        listed = trio.run(records_of, patients(records)[7], str(home))
        assert len(listed.items) == PER_PATIENT
        assert {item.anchor.patient for item in listed.items} == {patients(records)[7].public_key}
        # It votes once voted in: its signature is in later certificates.
        vote_in_and_see_it_sign(cluster, fifth)
        # The ciphertexts follow by blob replication (docs/benchmarks.md has its rate).
        wait_for(lambda: metric(home, "healthnode_blobs_missing") < records - 1000, 60,
                 "a thousand ciphertexts on the fifth")
        print(f"\nstate sync of {records} records: made in {made_s:.1f} s, joined and at the "
              f"head in {joined_s:.1f} s; {done[0]}")
        if replay_too:
            print(f"the same chain by replay: at the head in "
                  f"{join_by_replay(tmp_path, cluster):.1f} s")
    finally:
        for one in (liar, boaster):
            if one is not None:
                one.stop()
        cluster.close()


def test_a_new_hospital_joins_10000_records_by_state_sync_past_a_lying_peer(
        tmp_path: Path) -> None:
    join_by_state_sync(tmp_path, 10_000, 60)


@pytest.mark.slow
def test_a_new_hospital_joins_100000_records_by_state_sync(tmp_path: Path) -> None:
    join_by_state_sync(tmp_path, 100_000, 300, replay_too=True)
