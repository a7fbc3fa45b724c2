"""The operator's admin methods (node/operator.py), backups and `init --restore` (home.py), and the
restored node's signing hold (node/restore.py).

Parameter checks and the mempool side of `validator_discard` run against an in-process node that
is opened but not started (no network, so nothing it submits can become final). The rest runs on
a real network of four `healthnode run` processes (tests/cluster.py), shared by the tests below
that need one, and ends with the full backup, restore and rejoin of one of its nodes.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from healthnode.admin import rpc
from healthnode.admin.client import AdminError
from healthnode.crypto import Identity, peer_id
from healthnode.errors import HomeError
from healthnode.home.backup import (
    BACKUP_MANIFEST,
    RESTORED_GUARD,
    RestoreMark,
    restore_home,
    write_backup,
)
from healthnode.home.config import GENESIS_FILE, KEY_FILE, load_genesis
from healthnode.home.layout import free_base_port, make_testnet
from healthnode.node.daemon import Node
from healthnode.store.leveldb import GUARD, ChainStore
from tests.chain import World
from tests.cluster import Cluster, Patient, wait_for
from tests.test_store import build_world, copy_into

SOME_KEY = "ab" * 32
SOME_HASH = "cd" * 32

# --- an in-process node (opened, not started) ------------------------------------------------


@pytest.fixture
def idle_node(tmp_path: Path) -> Iterator[Node]:
    _, homes = make_testnet(4, tmp_path / "net", free_base_port(4))
    node = Node(homes[0].path)
    node.open()
    try:
        yield node
    finally:
        node.store.close()


async def answer(node: Node, method: str, **params: Any) -> dict[str, Any]:
    """One JSON-RPC exchange with the node's admin methods, as the socket would carry it."""
    line = json.dumps({"jsonrpc": "2.0", "id": 7, "method": method, "params": params})
    response: dict[str, Any] = json.loads(await rpc.handle_line(line.encode(),
                                                                node.admin_methods()))
    return response


BAD_PARAMETERS = [
    ("peer_add", {"address": "nonsense"}, "'address'"),
    ("peer_add", {"address": "/ip4/10.0.0.5/tcp/26600"}, "'address'"),  # no /p2p/
    ("observer_add", {"subject": "abc", "name": "x"}, "'subject'"),
    ("observer_add", {"subject": SOME_KEY}, "'name'"),
    ("validators", {"verbose": True}, "'verbose'"),
    ("validator_propose", {"action": "promote", "subject": SOME_KEY}, "'action'"),
    ("validator_propose", {"action": "add", "subject": "abc", "name": "x"}, "'subject'"),
    ("validator_propose", {"action": "add", "subject": SOME_KEY}, "'name'"),
    ("validator_propose", {"action": "add", "subject": SOME_KEY, "name": "x" * 65}, "'name'"),
    ("validator_propose", {"action": "add", "subject": SOME_KEY, "name": "x", "wait": 1},
     "'wait'"),
    ("validator_discard", {"tx_hash": "00"}, "'tx_hash'"),
    ("validator_discard", {"tx_hash": SOME_HASH, "action": "add"}, "'tx_hash'"),
    ("validator_discard", {"action": "add"}, "'subject'"),
    ("validator_discard", {}, "'action'"),
    ("mempool", {"limit": 1001}, "'limit'"),
    ("mempool", {"limit": "5"}, "'limit'"),
    ("evidence", {"limit": -1}, "'limit'"),
    ("certificate", {"height": 0}, "'height'"),
    ("certificate", {}, "'height'"),
    ("provider_register", {"provider": SOME_KEY, "roles": ["surgeon"], "display_name": "Dr"},
     "'roles'"),
    ("provider_register", {"provider": SOME_KEY, "roles": [], "display_name": "Dr"}, "'roles'"),
    ("provider_register", {"provider": SOME_KEY, "roles": "lab", "display_name": "Dr"},
     "'roles'"),
    ("provider_register", {"provider": SOME_KEY, "roles": ["lab"]}, "'display_name'"),
    ("provider_register", {"provider": "zz" * 32, "roles": ["lab"], "display_name": "Dr"},
     "'provider'"),
    ("provider_revoke", {}, "'provider'"),
    ("provider_revoke", {"provider": SOME_KEY, "wait": "yes"}, "'wait'"),
    ("audit", {"patient": 5}, "'patient'"),
    ("audit", {"patient": SOME_KEY, "limit": 10_001}, "'limit'"),
    ("backup", {}, "'dir'"),
    ("backup", {"dir": "relative/backup"}, "'dir'"),
    ("backup", {"dir": "/nonexistent-parent/backup"}, "'dir'"),
]


@pytest.mark.parametrize(("method", "params", "named"), BAD_PARAMETERS,
                         ids=[f"{m}-{i}" for i, (m, _, _) in enumerate(BAD_PARAMETERS)])
async def test_a_bad_parameter_is_an_invalid_params_error_naming_it(
        idle_node: Node, method: str, params: dict[str, Any], named: str) -> None:
    response = await answer(idle_node, method, **params)
    assert response["error"]["code"] == rpc.INVALID_PARAMS, response
    assert named in response["error"]["message"]
    assert idle_node.mempool.candidates() == []  # nothing was signed or submitted
    assert "result" in await answer(idle_node, "validators")  # and the node goes on


async def test_backup_refuses_a_directory_that_is_not_empty(idle_node: Node,
                                                             tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "something").write_text("x")
    response = await answer(idle_node, "backup", dir=str(tmp_path / "full"))
    assert response["error"]["code"] == rpc.INVALID_PARAMS
    assert "'dir'" in response["error"]["message"] and "not an empty" in \
        response["error"]["message"]


async def test_discard_withdraws_the_nodes_newest_waiting_vote(idle_node: Node) -> None:
    subject = Identity.generate().public_key.hex()
    proposed = (await answer(idle_node, "validator_propose", action="add", subject=subject,
                             name="hospital-x", force=True))["result"]
    assert proposed["status"] == "pending"
    pool = (await answer(idle_node, "mempool"))["result"]
    assert pool["by_kind"] == {"validator.vote": 1}
    assert pool["waiting"][0]["tx_hash"] == proposed["tx_hash"]
    discarded = (await answer(idle_node, "validator_discard", tx_hash=proposed["tx_hash"]))
    assert discarded["result"]["discarded"] == proposed["tx_hash"]
    assert (await answer(idle_node, "mempool"))["result"]["txs"] == 0
    again = await answer(idle_node, "validator_discard", tx_hash=proposed["tx_hash"])
    assert again["error"]["code"] == rpc.REFUSED and "no such transaction" in \
        again["error"]["message"]


async def test_discard_refuses_a_vote_that_later_own_transactions_wait_behind(
        idle_node: Node) -> None:
    subject = Identity.generate().public_key.hex()
    await answer(idle_node, "validator_propose", action="add", subject=subject, name="h-y",
                 force=True)
    registered = await answer(idle_node, "provider_register", provider=SOME_KEY,
                              roles=["lab"], display_name="Lab", wait=False)
    assert registered["result"]["status"] == "pending"
    refused = await answer(idle_node, "validator_discard", action="add", subject=subject)
    assert refused["error"]["code"] == rpc.REFUSED
    assert "nonces 2..2 wait behind it" in refused["error"]["message"]
    assert len(idle_node.mempool) == 2


async def test_discard_of_a_change_without_a_waiting_vote_is_refused(idle_node: Node) -> None:
    response = await answer(idle_node, "validator_discard", action="remove", subject=SOME_KEY)
    assert response["error"]["code"] == rpc.REFUSED
    assert "no waiting vote" in response["error"]["message"]


async def test_a_removal_of_no_authority_is_refused_by_the_ledger(idle_node: Node) -> None:
    response = await answer(idle_node, "validator_propose", action="remove", subject=SOME_KEY,
                            name="ghost")
    assert response["error"]["code"] == rpc.REFUSED
    assert "subject_not_authority" in response["error"]["message"]


# --- the store's backup and restore_home -------------------------------------------------------


def test_a_store_backup_is_the_snapshot_without_the_guard(tmp_path: Path) -> None:
    world: World = build_world(3)
    with ChainStore.open(tmp_path / "chain", world.genesis) as store:
        copy_into(store, world)
        store.write_guard(b"safety", b"not for the backup")
        copied = store.backup(tmp_path / "backup")
        assert (copied.height, copied.head_hash) == (3, store.head.block_hash)
        state = store.state_items()
    with ChainStore.open(tmp_path / "backup", world.genesis) as backup:
        assert backup.head == store.head
        assert backup.state_items() == state
        assert backup.read_guard(b"safety") is None
        assert [block.hash for block, _ in backup.blocks()] == [b.hash for b, _ in world.blocks]
        assert copied.keys == sum(1 for _ in backup._db.iterator(include_value=False))
        assert next(backup._db.iterator(prefix=GUARD), None) is None


@pytest.fixture
def backup_of_node0(tmp_path: Path, idle_node: Node) -> Path:
    """A backup of node0 (height 0) written by the admin method's own function."""
    destination = tmp_path / "backup"
    write_backup(idle_node.store, idle_node.home, idle_node.genesis,
                 idle_node.identity.public_key, destination)
    return destination


def test_a_backup_holds_chain_genesis_config_and_manifest_but_never_the_key(
        backup_of_node0: Path, idle_node: Node) -> None:
    assert backup_of_node0.stat().st_mode & 0o777 == 0o700
    assert sorted(p.name for p in backup_of_node0.iterdir()) == \
        [BACKUP_MANIFEST, "chain", "config.toml", GENESIS_FILE]
    manifest = json.loads((backup_of_node0 / BACKUP_MANIFEST).read_text())
    assert manifest["genesis_hash"] == idle_node.genesis.hash.hex()
    assert manifest["node_public_key"] == idle_node.identity.public_key.hex()
    seed = json.loads((idle_node.home / KEY_FILE).read_text())["seed"]
    for path in backup_of_node0.rglob("*"):
        assert path.is_dir() or seed.encode() not in path.read_bytes()


def test_restore_makes_a_home_whose_store_is_marked_restored(
        backup_of_node0: Path, idle_node: Node, tmp_path: Path) -> None:
    home, manifest = restore_home(tmp_path / "restored", backup_of_node0,
                                  idle_node.home / KEY_FILE)
    assert home.public_key == idle_node.identity.public_key and home.name == "node0"
    with ChainStore.open(tmp_path / "restored" / "data" / "chain", idle_node.genesis) as store:
        assert store.head.height == manifest.height
        raw = store.read_guard(RESTORED_GUARD)
        assert raw is not None
        mark = RestoreMark.decode(raw)
        assert mark.backup_height == 0 and mark.hold_through_height is None


def test_restore_refuses_a_home_that_is_not_empty(backup_of_node0: Path, idle_node: Node,
                                                  tmp_path: Path) -> None:
    home = tmp_path / "busy"
    home.mkdir()
    (home / "data").mkdir()
    with pytest.raises(HomeError, match="is not empty"):
        restore_home(home, backup_of_node0, idle_node.home / KEY_FILE)
    assert sorted(p.name for p in home.iterdir()) == ["data"]  # nothing written


def test_restore_refuses_a_missing_or_garbled_manifest(backup_of_node0: Path, idle_node: Node,
                                                       tmp_path: Path) -> None:
    key = idle_node.home / KEY_FILE
    manifest_path = backup_of_node0 / BACKUP_MANIFEST
    good = manifest_path.read_text()
    manifest_path.write_text("{not json")
    with pytest.raises(HomeError, match="not JSON"):
        restore_home(tmp_path / "a", backup_of_node0, key)
    manifest_path.write_text(json.dumps({**json.loads(good), "format": 99}))
    with pytest.raises(HomeError, match="not a healthnode backup manifest"):
        restore_home(tmp_path / "b", backup_of_node0, key)
    manifest_path.write_text(json.dumps({**json.loads(good), "head_hash": "11" * 32}))
    with pytest.raises(HomeError, match="head"):
        restore_home(tmp_path / "c", backup_of_node0, key)
    assert not (tmp_path / "c").exists()  # a refused restore leaves nothing behind
    manifest_path.unlink()
    with pytest.raises(HomeError, match="no such backup manifest"):
        restore_home(tmp_path / "d", backup_of_node0, key)


def test_restore_refuses_a_backup_of_another_genesis(backup_of_node0: Path, idle_node: Node,
                                                     tmp_path: Path) -> None:
    other_genesis, _ = make_testnet(4, tmp_path / "other", free_base_port(4),
                                    chain_id="another-chain")
    key = idle_node.home / KEY_FILE
    home = tmp_path / "home"
    home.mkdir()
    shutil.copyfile(tmp_path / "other" / GENESIS_FILE, home / GENESIS_FILE)
    with pytest.raises(HomeError, match="another genesis"):
        restore_home(home, backup_of_node0, key)
    shutil.copyfile(tmp_path / "other" / GENESIS_FILE, backup_of_node0 / GENESIS_FILE)
    assert load_genesis(backup_of_node0 / GENESIS_FILE).hash == other_genesis.hash
    with pytest.raises(HomeError, match="manifest names genesis"):
        restore_home(tmp_path / "fresh", backup_of_node0, key)


def test_restore_needs_the_key_of_the_backed_up_node(backup_of_node0: Path, tmp_path: Path,
                                                     idle_node: Node) -> None:
    with pytest.raises(HomeError, match="restore needs the node's key"):
        restore_home(tmp_path / "a", backup_of_node0, None)
    other_key = idle_node.home.parent / "node1" / KEY_FILE
    with pytest.raises(HomeError, match="is not the key of the node"):
        restore_home(tmp_path / "b", backup_of_node0, other_key)


# --- a real network ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path_factory.mktemp("operator") / "net")
    cluster.start_all()
    try:
        yield cluster
    finally:
        cluster.close()


def test_a_provider_registered_then_revoked_is_final_on_every_node(network: Cluster) -> None:
    provider = Identity.generate().public_key.hex()
    registered = network.admin(0, "provider_register", provider=provider,
                               roles=["lab", "clinician"], display_name="Dr Lab")
    assert registered["height"] >= 1
    network.wait_final([registered["tx_hash"]], [0, 1, 2, 3], timeout_s=15)
    with pytest.raises(AdminError, match="provider_already_registered"):
        network.admin(1, "provider_register", provider=provider, roles=["lab"],
                      display_name="Again")
    with pytest.raises(AdminError, match="not_registering_authority"):
        network.admin(1, "provider_revoke", provider=provider)
    revoked = network.admin(0, "provider_revoke", provider=provider)
    assert revoked["height"] > registered["height"]
    network.wait_final([revoked["tx_hash"]], [0, 1, 2, 3], timeout_s=15)
    with pytest.raises(AdminError, match="provider_already_revoked"):
        network.admin(0, "provider_revoke", provider=provider)


def test_validators_show_the_set_and_an_open_removal_that_cannot_be_discarded_once_final(
        network: Cluster) -> None:
    shown = network.admin(0, "validators")
    assert [m["name"] for m in shown["authorities"]["members"]] == \
        ["node0", "node1", "node2", "node3"]
    assert [m["peer_id"] for m in shown["authorities"]["members"]] == \
        [peer_id(key) for key in network.public_keys]
    assert shown["next"] is None
    assert shown["self"]["authority"] is True and shown["self"]["signing_hold"] == {
        "held": False}
    node3 = network.public_keys[3].hex()
    vote = network.admin(0, "validator_propose", action="remove", subject=node3, wait=True)

    def open_proposal() -> Any:
        return network.admin(1, "validators")["proposals"]
    proposals = wait_for(open_proposal, 10, "the removal to show as an open proposal")
    assert proposals == [{
        "id": proposals[0]["id"], "action": "remove", "subject": node3, "name": "node3",
        "voters": [{"public_key": network.public_keys[0].hex(), "name": "node0"}],
        "backing": 1, "needed": 3}]
    with pytest.raises(AdminError, match=f"already final at height {vote['height']}; a final "
                                         f"vote cannot be withdrawn; vote the opposite action"):
        network.admin(0, "validator_discard", tx_hash=vote["tx_hash"])
    with pytest.raises(AdminError, match="already final"):
        network.admin(0, "validator_discard", action="remove", subject=node3)
    with pytest.raises(AdminError, match="already_voted"):
        network.admin(0, "validator_propose", action="remove", subject=node3)


def test_mempool_evidence_audit_and_certificates_answer_in_shape(network: Cluster) -> None:
    pool = network.admin(0, "mempool", limit=5)
    assert set(pool) == {"txs", "bytes", "txs_max", "bytes_max", "reserved_txs",
                         "reserved_bytes", "by_kind", "waiting"}
    assert pool["txs"] >= 0 and len(pool["waiting"]) <= 5
    evidence = network.admin(0, "evidence")
    assert evidence == {"committed": [], "committed_total": 0, "pending": []}
    patient = Identity.generate().public_key.hex()
    assert network.admin(2, "audit", patient=patient) == {
        "patient": patient, "total": 0, "entries": []}
    certificate = network.admin(0, "certificate", height=1)
    assert certificate["height"] == 1
    assert len(certificate["signers"]) >= 3
    assert {s["name"] for s in certificate["signers"]} <= {"node0", "node1", "node2", "node3"}
    assert network.admin(0, "certificate", height=10**9) is None


def signed_by(network: Cluster, nodes: list[int], height: int, key: bytes) -> bool:
    """Whether a commit certificate for `height`, as any of `nodes` stored it, carries `key`."""
    for index in nodes:
        certificate = network.admin(index, "certificate", height=height)
        if certificate is not None and key.hex() in {s["public_key"]
                                                     for s in certificate["signers"]}:
            return True
    return False


def log_events(path: Path, event: str) -> list[dict[str, Any]]:
    found = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("event") == event:
            found.append(record)
    return found


def test_a_restored_node_rejoins_holds_its_signatures_past_the_network_height_then_signs(
        network: Cluster, tmp_path: Path) -> None:
    patient = Patient()
    restored, others = 2, [0, 1, 3]
    key = network.public_keys[restored]
    key_file = tmp_path / "custody" / "node2_key.json"  # the operator's key custody
    key_file.parent.mkdir()
    shutil.copyfile(network.homes[restored] / KEY_FILE, key_file)
    network.wait_final([network.submit(0, patient.anchor())], [restored], timeout_s=15)
    backup = tmp_path / "backup"
    # The operator's command: it starts the backup and follows it to its end.
    done = subprocess.run(
        [sys.executable, "-m", "healthnode", "backup", "--home", str(network.homes[restored]),
         "--dir", str(backup), "--interval", "0.2"],
        capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    taken = json.loads(done.stdout)
    assert taken["state"] == "done" and taken["keys_copied"] == taken["keys"]
    assert taken["height"] >= 1 and taken["keys"] > 0
    assert not (backup / KEY_FILE).exists()

    # The node goes on signing after the backup, then its machine is lost.
    network.wait_final([network.submit(0, patient.anchor())], [restored], timeout_s=15)
    last_own_height = network.height(restored)
    network.kill(restored)
    shutil.rmtree(network.homes[restored])
    network.wait_final([network.submit(0, patient.anchor()) for _ in range(3)], others,
                       timeout_s=15)

    done = subprocess.run(
        [sys.executable, "-m", "healthnode", "init", "--home", str(network.homes[restored]),
         "--restore", str(backup), "--key", str(key_file)],
        capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    described = json.loads(done.stdout)
    assert described["public_key"] == key.hex() and described["height"] == taken["height"]

    network_height_at_restart = max(network.height(i) for i in others)
    network.start(restored)
    network.wait_ready(restored)

    # Nothing is submitted until the node has learned the height and caught up with it, so the
    # next block (at most a heartbeat comes between) is one the node follows live and is held at.
    hold = wait_for(
        lambda: log_events(network.homes[restored] / "node.log", "restore_hold_learned"), 30,
        "the restored node to learn the network height")[0]
    assert hold["network_height"] >= network_height_at_restart
    hold_through = hold["hold_through_height"]
    assert hold_through == hold["network_height"] + 1
    wait_for(lambda: network.height(restored) >= hold["network_height"], 30,
             "the restored node to sync to the network height")

    def signs_again() -> int | None:
        network.wait_final([network.submit(1, patient.anchor())], others, timeout_s=15)
        top = min(network.height(i) for i in others)
        return next((h for h in range(hold_through + 1, top + 1)
                     if signed_by(network, others, h, key)), None)
    first_signed = wait_for(signs_again, 30, "a certificate signed by the restored node")
    assert first_signed > hold_through
    # Neither the lost original (dead) nor the restored node (held) signed in between.
    for height in range(last_own_height + 2, hold_through + 1):
        assert not signed_by(network, others, height, key), f"signed at height {height}"
    assert network.rejected(restored, "signing_held") > 0
    status = network.admin(restored, "validators")["self"]["signing_hold"]
    assert status == {"held": False}
    assert log_events(network.homes[restored] / "node.log", "restore_hold_lifted")
    # Rejoined: it has the network's chain and finalizes what is submitted through it.
    tx = network.submit(restored, patient.anchor())
    network.wait_final([tx], [0, 1, 2, 3], timeout_s=15)
    top = min(network.height(i) for i in range(4))
    for height in (1, taken["height"], last_own_height, hold_through, top):
        assert len({network.block_hash(i, height) for i in range(4)}) == 1


# --- the operator's client ------------------------------------------------------------------


async def test_methods_lists_every_method_with_its_parameters_and_help(idle_node: Node) -> None:
    listed = (await answer(idle_node, "methods"))["result"]
    assert [item["method"] for item in listed] == sorted(idle_node.admin_methods())
    assert all(item["help"] for item in listed)
    backup = next(item for item in listed if item["method"] == "backup")
    assert backup["params"].startswith("dir")


def test_the_client_waits_longer_than_any_wait_of_the_node() -> None:
    from healthnode.admin.client import TIMEOUT_S_DEFAULT
    from healthnode.node.operator import WAIT_FINAL_TIMEOUT_S

    assert TIMEOUT_S_DEFAULT > WAIT_FINAL_TIMEOUT_S + 10  # the node's explanation comes first


def test_the_cli_reaches_a_socket_by_path_and_names_its_timeout(tmp_path: Path) -> None:
    import socket as sockets

    silent = tmp_path / "silent.sock"
    with sockets.socket(sockets.AF_UNIX, sockets.SOCK_STREAM) as server:
        server.bind(str(silent))
        server.listen(1)  # accepts, never answers
        done = subprocess.run(
            [sys.executable, "-m", "healthnode", "admin", "--socket", str(silent),
             "--timeout", "0.5", "status"], capture_output=True, text=True, timeout=60,
            check=False)
    assert done.returncode != 0
    assert "status: no answer within 0.5 s (--timeout)" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    nowhere = subprocess.run([sys.executable, "-m", "healthnode", "admin", "status"],
                             capture_output=True, text=True, timeout=60, check=False)
    assert nowhere.returncode != 0 and "--home DIR" in nowhere.stderr


async def test_a_backup_runs_in_the_background_and_its_status_shows_progress(
        idle_node: Node, tmp_path: Path) -> None:
    import trio

    world = build_world(20)  # a store with some blocks, so that there is something to copy
    store = ChainStore.open(tmp_path / "other-chain", world.genesis)
    copy_into(store, world)
    idle_node.store.close()
    idle_node.store = store  # the operator reads through the port only
    table = idle_node.admin_methods()  # one table, as the admin socket keeps

    async def answer(_node: Node, method: str, **params: Any) -> dict[str, Any]:
        line = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
        response: dict[str, Any] = json.loads(await rpc.handle_line(line.encode(), table))
        return response

    async with trio.open_nursery() as nursery:
        idle_node._nursery = nursery
        started = (await answer(idle_node, "backup", dir=str(tmp_path / "b1")))["result"]
        assert started["state"] == "running" and started["dir"] == str(tmp_path / "b1")
        again = await answer(idle_node, "backup", dir=str(tmp_path / "b2"))
        assert again["error"]["code"] == rpc.REFUSED and "backup_status" in \
            again["error"]["message"]
        with trio.fail_after(30):
            while (status := (await answer(idle_node, "backup_status"))["result"])["state"] \
                    == "running":
                await trio.sleep(0.05)
    assert status["state"] == "done", status
    assert status["height"] == 20 and status["keys_copied"] == status["keys"] > 0
    assert status["bytes_copied"] > 0
    with ChainStore.open(tmp_path / "b1" / "chain", world.genesis) as copy:
        assert copy.head == store.head


async def test_a_backup_that_fails_is_reported_and_the_node_and_later_backups_go_on(
        idle_node: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import trio

    from healthnode.node import operator

    def broken(*_args: Any) -> None:
        raise RuntimeError("a bug in the copy")

    table = idle_node.admin_methods()

    async def ask(method: str, **params: Any) -> dict[str, Any]:
        line = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
        response: dict[str, Any] = json.loads(await rpc.handle_line(line.encode(), table))
        return response

    async with trio.open_nursery() as nursery:
        idle_node._nursery = nursery
        monkeypatch.setattr(operator, "write_backup", broken)
        await ask("backup", dir=str(tmp_path / "b1"))
        with trio.fail_after(10):
            while (status := (await ask("backup_status"))["result"])["state"] == "running":
                await trio.sleep(0.05)
        assert status["state"] == "failed" and "RuntimeError" in status["error"]
        monkeypatch.undo()
        answer = await ask("backup", dir=str(tmp_path / "b2"), wait=True)
        assert "result" in answer, answer
        done = answer["result"]
        assert done["state"] == "done"


def test_every_transaction_kind_has_a_name_for_the_mempool_listing() -> None:
    """`mempool` names each waiting transaction's kind: an emergency policy waiting there once
    made the method fail, as it had no name."""
    from healthnode.node.operator import KIND_NAMES
    from healthnode.protocol.tx import TX_CLASSES

    assert set(KIND_NAMES) == set(TX_CLASSES)
    assert len(set(KIND_NAMES.values())) == len(TX_CLASSES)


async def test_a_peer_added_by_hand_is_dialled(idle_node: Node) -> None:
    other = Identity.generate().public_key
    address = f"/ip4/10.0.0.5/tcp/26600/p2p/{peer_id(other)}"
    added = (await answer(idle_node, "peer_add", address=address))["result"]
    assert added == {"public_key": other.hex(), "address": address}
    assert idle_node.peers[other] == address and idle_node.gossip.links[other].address == address
    linked = (await answer(idle_node, "peers"))["result"]
    assert any(peer["public_key"] == other.hex() for peer in linked)
