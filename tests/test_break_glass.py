"""Break-glass on a real 4-node network: an emergency provider reads what the patient allowed for
emergencies with no grant, through t-of-n decryption shares collected by its own wallet; every
refusal; a wrong share skipped and reported; too few authorities; and no single node's disk can
open an emergency wrap. The tests run in file order and share one network."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

from healthnode import crypto
from healthnode.admin.client import AdminError
from healthnode.crypto import threshold
from healthnode.home import keys
from healthnode.home.config import EMERGENCY_SHARE_FILE, KEY_FILE, load_config, load_genesis
from healthnode.home.keys import load_identity
from healthnode.home.modes import private_umask
from healthnode.ledger import rules
from healthnode.ledger.state import EMERGENCY_WRAP
from healthnode.net.framing import FramedStream
from healthnode.net.p2p import P2P
from healthnode.protocol.client import (
    CLIENT_FRAME_BYTES_MAX,
    CLIENT_PROTOCOL,
    QueryRequest,
    RecordItem,
    RecordsResponse,
    ShareRequest,
    ShareResponse,
)
from healthnode.protocol.state import EmergencyWrapState
from healthnode.protocol.tx import EmergencyPolicy, EmergencyWrap, KeyWrap, RecordAnchor
from healthnode.store.leveldb import STATE, ChainStore
from healthnode.wallet.connection import WalletError, connect
from tests import wallet_cli as cli
from tests.attacks import re_randomise, relabel
from tests.cluster import CHAIN_ID, Cluster


@dataclass
class World(cli.People):
    records: dict[str, str] = field(default_factory=dict)

    def break_glass(self, index: int, who: str, record: str, *extra: str) -> list[str]:
        return ["record", "get", *self.wallet(index, who), self.records[record], "--out",
                str(self.dir / f"{record}.out"), "--break-glass", *extra]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("breakglass")
    cluster = Cluster(root / "net")
    cluster.start_all()
    w = World(cluster, root)
    try:
        for who, kind in [("patient", "patient"), ("er", "provider"), ("clinician", "provider")]:
            w.new(who, kind)
        for hospital, who, roles in [(2, "er", ["clinician", "emergency"]),
                                     (1, "clinician", ["clinician"])]:
            w.register(hospital, who, roles, f"Dr {who.upper()}")
        patient = str(w.keys["patient"])
        for name, given, text in [
                ("blood", "blood-type", "blood type O negative"),
                ("allergy", None, json.dumps({
                    "resourceType": "AllergyIntolerance", "patient": {"reference": "Patient/1"},
                    "code": {"text": "penicillin"}, "criticality": "high"})),
                ("mental", "mental-health", "a mental-health note")]:
            category = given or "allergy"
            if given is None:  # after the first record: allow allergy and blood type
                policy = cli.ok("emergency", "allow", *w.wallet(0, "patient"), "--category",
                              "allergy", "--category", "blood-type")
                assert policy["records_wrapped"] == 1  # the blood type, anchored before
            source = root / f"{name}.in"
            source.write_text(text)
            added = cli.ok("record", "add", *w.wallet(0, "patient"), "--patient", patient,
                         "--category", category, str(source))
            w.records[name] = added["record_id"]
        yield w
    finally:
        cluster.close()


def test_an_emergency_provider_reads_an_allowed_record_without_a_grant(world: World) -> None:
    read = cli.ok(*world.break_glass(2, "er", "allergy", "--purpose", "er-unconscious",
                                       "--note", "Found unconscious at the station"))
    assert json.loads((world.dir / "allergy.out").read_text())["code"]["text"] == "penicillin"
    assert read["shares_from"] == [1, 2, 3] and read["invalid_shares"] == []
    audit = cli.ok("audit", *world.wallet(3, "patient"), "--json")
    glass = [line for line in audit if line["break_glass"]]
    assert len(glass) == 3  # one access.log per authority that released a share
    assert {line["hospital_name"] for line in glass} == {"node0", "node1", "node2"}
    assert {(line["reader_name"], line["purpose"], line["note"]) for line in glass} == {
        ("Dr ER", "er-unconscious", "Found unconscious at the station")}
    table = cli.run("audit", *world.wallet(3, "patient")).stdout
    assert table.count("BREAK-GLASS") == 3 and "Dr ER" in table
    assert world.cluster.metric(1, 'healthnode_break_glass_reads_total{hospital="node0"}') \
        == 1


def test_a_record_anchored_before_the_policy_is_readable_through_its_new_wrap(
        world: World) -> None:
    cli.ok(*world.break_glass(1, "er", "blood"))
    assert (world.dir / "blood.out").read_text() == "blood type O negative"


def test_a_provider_without_the_emergency_role_is_refused(world: World) -> None:
    cli.refused("reader_lacks_emergency_role", *world.break_glass(1, "clinician", "allergy"))


def test_a_category_the_patient_did_not_allow_is_refused(world: World) -> None:
    # Told as of any id the emergency provider may not read: not that the record exists.
    cli.refused("record_not_readable", *world.break_glass(2, "er", "mental"))


def test_deny_takes_effect_for_every_authority_at_once(world: World) -> None:
    policy = cli.ok("emergency", "deny", *world.wallet(1, "patient"), "--category",
                      "blood-type")
    assert policy["allowed"] == ["allergy"]
    for index in range(4):
        cli.refused("record_not_readable", *world.break_glass(index, "er", "blood"))


# --- the copied-wrap attack (docs/threat-model.md, "Break-glass") ------------------------------
# A hospital's operator registers an emergency provider of its own, makes a throw-away patient
# and a junk record, and tries to move the victim's public emergency wrap onto that record, so
# that the holders would release shares of the victim's wrap for a read logged on the junk
# patient. Each step must fail, and the victim's key must never be released.


async def _records_of(key: Path, node_home: Path) -> list[RecordItem]:
    who = load_identity(key, cli.PASSPHRASE)
    async with connect(who, str(node_home)) as connection:
        answer = await connection.request(QueryRequest("records", None, None))
    assert isinstance(answer, RecordsResponse)
    return list(answer.items)


def _victims_wrap(world: World) -> bytes:
    items = trio.run(_records_of, world.keys["patient"], world.cluster.homes[1])
    allergy = next(i for i in items if i.record_id.hex() == world.records["allergy"])
    assert allergy.anchor.emergency_wrap is not None
    return allergy.anchor.emergency_wrap


def _refused_by_every_node(world: World, tx: Any, reason: str) -> None:
    for index in range(4):
        with pytest.raises(AdminError, match=reason):
            world.cluster.submit(index, tx.encode())


@pytest.fixture(scope="module")
def attack(world: World) -> dict[str, Any]:
    """The attacker's setup: its own emergency provider, a throw-away patient, and a junk record
    of an emergency-allowed category that carries no wrap of its own."""
    world.new("mallory", "provider")
    world.register(1, "mallory", ["emergency"], "Dr Mallory")
    world.new("junk", "patient")
    source = world.dir / "junk.in"
    source.write_text("nothing")
    added = cli.ok("record", "add", *world.wallet(1, "junk"), "--patient",
                   str(world.keys["junk"]), "--category", "allergy", str(source))
    assert added["emergency_wrap"] is False
    junk = load_identity(world.keys["junk"], cli.PASSPHRASE)
    item = trio.run(_records_of, world.keys["junk"], world.cluster.homes[1])[0]
    return {"junk": junk, "record": item.record_id, "state": item.state,
            "victim_wrap": _victims_wrap(world),
            "nonce": 2,  # the junk patient's next: every forged transaction is refused
            "audit_before": cli.ok("audit", *world.wallet(0, "patient"), "--json")}


def _junk_glass(world: World, index: int, attack: dict[str, Any]) -> list[str]:
    return ["record", "get", *world.wallet(index, "mallory"), attack["record"].hex(), "--out",
            str(world.dir / "junk.out"), "--break-glass"]


def test_the_ledger_refuses_a_copied_wrap_on_a_new_anchor(world: World,
                                                          attack: dict[str, Any]) -> None:
    state = attack["state"]
    copy = RecordAnchor(attack["junk"].public_key, attack["nonce"],
                        attack["junk"].public_key, crypto.digest(b"another junk ciphertext"),
                        1024, state.tags, (KeyWrap(attack["junk"].public_key, b"w" * 80),),
                        None, attack["victim_wrap"]).sign(attack["junk"], CHAIN_ID)
    _refused_by_every_node(world, copy, "emergency_wrap_not_bound")


def test_the_ledger_refuses_a_copied_or_re_randomised_wrap_in_a_policy(
        world: World, attack: dict[str, Any]) -> None:
    genesis = load_genesis(world.cluster.homes[0] / "genesis.json")
    assert genesis.emergency is not None
    state, junk = attack["state"], attack["junk"]
    label = rules.wrap_label(CHAIN_ID, state)
    for forged in (attack["victim_wrap"],  # copied as it is on chain
                   relabel(genesis.emergency.public_key, attack["victim_wrap"], label),
                   re_randomise(attack["victim_wrap"], threshold.random_scalar()),
                   relabel(genesis.emergency.public_key,
                           re_randomise(attack["victim_wrap"], threshold.random_scalar()),
                           label)):
        policy = EmergencyPolicy(junk.public_key, attack["nonce"], state.tags,
                                 (EmergencyWrap(attack["record"], forged),)).sign(junk, CHAIN_ID)
        _refused_by_every_node(world, policy, "emergency_wrap_not_bound")


def _store_wrap_behind_the_ledgers_back(world: World, attack: dict[str, Any]) -> None:
    """A modified node: the victim's wrap lands in state under the junk record, as if a ledger
    had let it in. Done on every node, so that only the holders' own check is left."""
    genesis = load_genesis(world.cluster.homes[0] / "genesis.json")
    for index in range(4):
        world.cluster.kill(index, signal.SIGTERM)
    for home in world.cluster.homes:  # private files, as the node's own (home/modes.py)
        with private_umask(), ChainStore.open(home / "data" / "chain", genesis) as store:
            store._db.put(STATE + EMERGENCY_WRAP + attack["record"],
                          EmergencyWrapState(attack["victim_wrap"], 1).encode())
    world.cluster.start_all()


async def _ask_for_a_share(world: World, index: int, record_id: bytes) -> str:
    mallory = load_identity(world.keys["mallory"], cli.PASSPHRASE)
    async with connect(mallory, str(world.cluster.homes[index])) as connection:
        with pytest.raises(WalletError) as refused:
            await connection.request(ShareRequest(record_id, "emergency", None, 1))
    return str(refused.value)


def test_holders_refuse_a_wrap_not_bound_to_the_record_even_when_their_state_has_it(
        world: World, attack: dict[str, Any]) -> None:
    junk = attack["junk"]
    # The junk patient allows its category; its record has no wrap, so break-glass is refused.
    allow = EmergencyPolicy(junk.public_key, attack["nonce"], attack["state"].tags, ()
                            ).sign(junk, CHAIN_ID)
    world.cluster.wait_final([world.cluster.submit(1, allow.encode())], [0, 1, 2, 3], 30)
    cli.refused("no_emergency_wrap", *_junk_glass(world, 1, attack))
    _store_wrap_behind_the_ledgers_back(world, attack)
    # The wallet's way (info first), then straight to every holder with a share request.
    cli.refused("emergency_wrap_not_bound", *_junk_glass(world, 2, attack))
    for index in range(4):
        assert "emergency_wrap_not_bound" in trio.run(_ask_for_a_share, world, index,
                                                      attack["record"])
        log = (world.cluster.homes[index] / "node.log").read_text()
        assert "break_glass_wrap_not_bound" in log
        assert attack["record"].hex()[:16] not in "".join(
            line for line in log.splitlines() if "break_glass_share_released" in line)
    # Nothing was logged for the junk record, and the victim's audit did not change.
    assert not [line for line in cli.ok("audit", *world.wallet(0, "junk"), "--json")
                if line["break_glass"]]
    assert cli.ok("audit", *world.wallet(0, "patient"), "--json") == attack["audit_before"]
    assert not (world.dir / "junk.out").exists()


def test_no_single_node_disk_can_open_an_emergency_wrap(world: World) -> None:
    genesis = load_genesis(world.cluster.homes[0] / "genesis.json")
    assert genesis.emergency is not None

    items = trio.run(_records_of, world.keys["patient"], world.cluster.homes[2])
    allergy = next(i for i in items if i.record_id.hex() == world.records["allergy"])
    wrapped = allergy.anchor.emergency_wrap
    assert wrapped is not None
    label = rules.wrap_label(genesis.chain_id, allergy.state)
    ephemeral = threshold.check_wrap(genesis.emergency.public_key, wrapped, label)
    for home in world.cluster.homes:
        share_files = [p for p in home.rglob("*") if p.is_file()
                       and b"emergency-share" in p.read_bytes()[:4096]]
        assert share_files == [home / EMERGENCY_SHARE_FILE]
        index, share = keys.load_emergency_share(home / EMERGENCY_SHARE_FILE)
        partial = threshold.mul(share, ephemeral)
        with pytest.raises(threshold.ThresholdError):
            threshold.open_wrap(genesis.emergency.public_key, wrapped, label, partial)
        with pytest.raises(threshold.ThresholdError, match="needed"):
            threshold.combine({index: partial}, genesis.emergency.threshold)
        assert threshold.base_mul(share) != genesis.emergency.public_key


async def _byzantine_holder(home: Path, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """An authority gone bad: it answers every share request with a wrong share."""
    identity = load_identity(home / KEY_FILE)
    p2p = P2P(identity)

    async def answer(_peer: bytes, stream: FramedStream) -> None:
        await stream.receive()
        wrong = threshold.base_mul(threshold.random_scalar())
        await stream.send(ShareResponse(b"\x01" * 32, 1, wrong, os.urandom(64),
                                        os.urandom(threshold.WRAP_BYTES), None,
                                        b"\x02" * 32, 1).encode())
        await stream.close()

    async with p2p.running(list(load_config(home).p2p.listen)):
        p2p.set_handler(CLIENT_PROTOCOL, answer, lambda _peer: True, CLIENT_FRAME_BYTES_MAX)
        task_status.started()
        await trio.sleep_forever()


async def test_a_wrong_share_is_skipped_and_reported(world: World) -> None:
    world.cluster.kill(0)
    async with trio.open_nursery() as nursery:
        await nursery.start(_byzantine_holder, world.cluster.homes[0])
        result = await trio.run_process(
            cli.command(*world.break_glass(2, "er", "allergy")), env=cli.environment(),
            capture_stdout=True, capture_stderr=True, check=False)
        nursery.cancel_scope.cancel()
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    read = json.loads(result.stdout)
    assert read["invalid_shares"] == [world.cluster.public_keys[0].hex()]
    assert read["shares_from"] == [2, 3, 4]


def test_fewer_than_t_reachable_authorities_release_nothing(world: World) -> None:
    """node0 is gone; stop node3 too: two of four holders remain, three are needed."""
    before = world.cluster.metric(2, 'healthnode_client_requests_total{kind="ShareRequest"')
    world.cluster.kill(3)
    result = cli.run(*world.break_glass(2, "er", "allergy"))
    assert result.returncode == 1
    assert "only 2 of 4 share holders are reachable and 3 are needed; nothing was requested" \
        in result.stderr
    after = world.cluster.metric(2, 'healthnode_client_requests_total{kind="ShareRequest"')
    assert after == before
