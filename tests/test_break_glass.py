"""Break-glass on a real 4-node network: an emergency provider reads what the patient allowed for
emergencies with no grant, through t-of-n decryption shares collected by its own wallet; every
refusal; a wrong share skipped and reported; too few authorities; and no single node's disk can
open an emergency wrap. The tests run in file order and share one network."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

from healthnode import keys, threshold
from healthnode.config import EMERGENCY_SHARE_FILE, KEY_FILE, load_config
from healthnode.keys import load_identity
from healthnode.net.p2p import P2P, FramedStream
from healthnode.protocol.client import (
    CLIENT_FRAME_BYTES_MAX,
    CLIENT_PROTOCOL,
    EmergencyInfoRequest,
    EmergencyInfoResponse,
    ShareResponse,
)
from healthnode.protocol.genesis import load_genesis
from healthnode.wallet.connection import connect
from tests import wallet_cli as cli
from tests.cluster import Cluster


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
    cli.refused("break_glass_not_allowed", *world.break_glass(2, "er", "mental"))


def test_deny_takes_effect_for_every_authority_at_once(world: World) -> None:
    policy = cli.ok("emergency", "deny", *world.wallet(1, "patient"), "--category",
                      "blood-type")
    assert policy["allowed"] == ["allergy"]
    for index in range(4):
        cli.refused("break_glass_not_allowed", *world.break_glass(index, "er", "blood"))


def test_no_single_node_disk_can_open_an_emergency_wrap(world: World) -> None:
    genesis = load_genesis(world.cluster.homes[0] / "genesis.json")
    assert genesis.emergency is not None

    async def wrap() -> bytes:
        er = load_identity(world.keys["er"], cli.PASSPHRASE)
        async with connect(er, str(world.cluster.homes[2])) as connection:
            info = await connection.request(EmergencyInfoRequest(
                bytes.fromhex(world.records["allergy"])))
        assert isinstance(info, EmergencyInfoResponse)
        return info.wrap

    wrapped = trio.run(wrap)
    ephemeral = threshold.wrap_ephemeral(wrapped)
    for home in world.cluster.homes:
        share_files = [p for p in home.rglob("*") if p.is_file()
                       and b"emergency-share" in p.read_bytes()[:4096]]
        assert share_files == [home / EMERGENCY_SHARE_FILE]
        index, share = keys.load_emergency_share(home / EMERGENCY_SHARE_FILE)
        partial = threshold.mul(share, ephemeral)
        with pytest.raises(threshold.ThresholdError):
            threshold.open_wrap(genesis.emergency.public_key, wrapped, partial)
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
        await stream.send(ShareResponse(b"\x01" * 32, 1, wrong, os.urandom(64), None,
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
