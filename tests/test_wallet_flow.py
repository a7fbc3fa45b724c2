"""Patients and providers end to end on a real 4-node network, through the wallet CLI.

One network for the module (starting it and every CLI call are real processes): the tests run in
file order and build on each other, like the story they tell. A patient adds a FHIR lab result at
hospital 0, grants a clinician of hospital 1, who reads it through another hospital; every refusal
the issue names is tried; the hospital that received the record is killed and its home deleted;
at the end every node's files, logs and stored values are searched for the record's content and
its category name.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import plyvel
import pytest
import trio

from healthnode.crypto import Identity
from healthnode.home.config import load_genesis
from healthnode.home.keys import load_identity
from healthnode.ledger import light
from healthnode.ledger.proofs import verify_state_answer
from healthnode.ledger.state import EMERGENCY_POLICY, GRANT, RECORD, decode_value
from healthnode.protocol.block import Block, VerificationError
from healthnode.protocol.client import StateProofRequest, StateProofResponse, SubmitRequest
from healthnode.protocol.signed import replace
from healthnode.protocol.state import RecordState
from healthnode.protocol.tx import ConsentGrant
from healthnode.store.blob_files import BlobFiles
from healthnode.store.leveldb import BLOCK, ChainStore
from healthnode.wallet.connection import Refused, connect
from tests import wallet_cli as cli
from tests.cluster import CHAIN_ID, Cluster, wait_for

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "fhir" / "bundle-healthy-1.json"
# Distinctive strings that must never reach a node: a category name and record content.
SECRET_CATEGORY = "zqx-oncology"
SECRET_NAME = "Quastleworthy"
SECRET_NOTE = "Xylographic consult note"


@dataclass
class World(cli.People):
    facts: dict[str, Any] = field(default_factory=dict)

    def node(self, index: int) -> str:
        return str(self.cluster.homes[index])

    def revoke_provider(self, hospital: int, who: str) -> None:
        done = self.cluster.admin(hospital, "provider_revoke", provider=self.public[who])
        self.cluster.wait_final([done["tx_hash"]], self.cluster.running(), 30)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("wallet")
    cluster = Cluster(root / "net")
    cluster.start_all()
    w = World(cluster, root)
    try:
        for who, kind in [("patient", "patient"), ("clinician_a", "provider"),
                          ("clinician_b", "provider"), ("lab", "provider"),
                          ("stranger", "provider")]:
            w.new(who, kind)
        for hospital, who, role in [(0, "clinician_a", "clinician"),
                                    (1, "clinician_b", "clinician"), (2, "lab", "lab")]:
            w.register(hospital, who, [role], f"{who} at node{hospital}")
        yield w
    finally:
        cluster.close()


def test_a_patient_adds_a_fhir_lab_result_at_hospital_0(world: World) -> None:
    bundle = json.loads(FIXTURE.read_text())
    for entry in bundle["entry"]:
        if entry["resource"]["resourceType"] == "Patient":
            entry["resource"]["name"][0]["family"] = SECRET_NAME
    document = world.dir / "result.json"
    document.write_text(json.dumps(bundle))
    added = cli.ok("record", "add", *world.wallet(0, "patient"), "--patient",
                     str(world.keys["patient"]), "--category", SECRET_CATEGORY, str(document))
    assert added["fhir"] == "Bundle" and added["height"] >= 1
    world.facts["record"] = added["record_id"]
    world.facts["ciphertext"] = added["ciphertext_hash"]
    world.facts["plaintext"] = document.read_bytes()
    listed = cli.ok("record", "list", *world.wallet(2, "patient"), "--json")
    assert [r["record_id"] for r in listed] == [added["record_id"]]
    assert listed[0]["categories"] == ["?"]  # not a known name: the wallet cannot guess it


def test_invalid_fhir_is_refused_before_anything_leaves(world: World) -> None:
    broken = world.dir / "broken.json"
    broken.write_text(json.dumps({"resourceType": "Observation", "status": "final"}))
    line = cli.run("record", "add", *world.wallet(0, "patient"), "--patient",
                    world.public["patient"], "--category", "lab", str(broken))
    assert line.returncode == 1 and "FHIR Observation does not validate" in line.stderr


def test_without_a_grant_a_clinician_is_refused(world: World) -> None:
    # Told no more than of an id that is no record's: not that the record exists.
    cli.refused("record_not_readable", "record", "get", *world.wallet(1, "clinician_b"),
                  world.facts["record"], "--out", str(world.dir / "nope"))


def test_the_patient_grants_a_clinician_who_reads_through_another_hospital(
        world: World) -> None:
    granted = cli.ok("grant", *world.wallet(1, "patient"), "--to",
                       str(world.keys["clinician_b"]), "--category", SECRET_CATEGORY)
    assert granted["records_rewrapped"] == 1
    world.facts["grant_b"] = granted["grant_id"]
    out = world.dir / "read-by-b.json"
    read = cli.ok("record", "get", *world.wallet(2, "clinician_b"), world.facts["record"],
                    "--out", str(out), "--note", SECRET_NOTE)
    assert out.read_bytes() == world.facts["plaintext"]
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    audit = cli.ok("audit", *world.wallet(3, "patient"), "--json")
    assert [(a["reader"], a["access_tx"], a["note"]) for a in audit] == [
        (world.public["clinician_b"], read["access_tx"], SECRET_NOTE)]
    assert audit[0]["hospital"] == world.cluster.public_keys[2].hex()


def test_a_record_outside_the_grants_category_is_refused(world: World) -> None:
    note = world.dir / "note.txt"
    note.write_text("a visit note in another category")
    other = cli.ok("record", "add", *world.wallet(0, "patient"), "--patient",
                     world.public["patient"], "--category", "visit-note", str(note))
    world.facts["other_record"] = other["record_id"]
    world.facts["other_ciphertext"] = other["ciphertext_hash"]
    cli.refused("record_not_readable", "record", "get", *world.wallet(1, "clinician_b"),
                  other["record_id"], "--out", str(world.dir / "nope"))


def test_an_expired_grant_is_refused(world: World) -> None:
    granted = cli.ok("grant", *world.wallet(0, "patient"), "--to",
                       world.public["clinician_a"], "--record", world.facts["record"],
                       "--expires", "2s")
    time.sleep(3)
    # Who may read is judged on finalized state: until a block after the expiry, clinician_a
    # is still a reader there (and the read's dry run, at the next block's time, says
    # grant_expired). From then on it is told no more than a stranger.
    world.cluster.wait_height(world.cluster.height(0) + 1, [0], 10)
    cli.refused("record_not_readable", "record", "get", *world.wallet(0, "clinician_a"),
                  world.facts["record"], "--out", str(world.dir / "nope"))
    grants = cli.ok("grant", "list", *world.wallet(0, "patient"), "--json")
    assert {g["grant_id"]: g["in_force"] for g in grants}[granted["grant_id"]] is False


def test_a_writer_adds_a_record_that_the_patient_reads(world: World) -> None:
    cli.ok("grant", *world.wallet(0, "patient"), "--to", world.public["lab"], "--category",
             "lab", "--write")
    result = world.dir / "potassium.txt"
    result.write_text("K+ 4.1 mmol/L")
    added = cli.ok("record", "add", *world.wallet(2, "lab"), "--patient",
                     world.public["patient"], "--category", "lab", str(result))
    out = world.dir / "potassium-read.txt"
    cli.ok("record", "get", *world.wallet(3, "patient"), added["record_id"], "--out", str(out))
    assert out.read_text() == "K+ 4.1 mmol/L"
    listed = cli.ok("record", "list", *world.wallet(3, "lab"), "--patient",
                      world.public["patient"], "--json")
    assert [r["categories"] for r in listed] == [["lab"]]  # a writer holds the tag key


def test_a_provider_without_write_grant_cannot_add(world: World) -> None:
    note = world.dir / "unasked.txt"
    note.write_text("unasked")
    line = cli.run("record", "add", *world.wallet(1, "clinician_a"), "--patient",
                    world.public["patient"], "--category", "lab", str(note))
    assert line.returncode == 1 and "no write grant" in line.stderr


def test_a_revoked_provider_is_refused(world: World) -> None:
    world.revoke_provider(2, "lab")
    cli.refused("record_not_readable", "record", "get", *world.wallet(2, "lab"),
                  world.facts["record"], "--out", str(world.dir / "nope"))


def test_a_wrong_signer_is_refused(world: World) -> None:
    cli.refused("not_grant_owner", "revoke", *world.wallet(1, "clinician_b"),
                  world.facts["grant_b"])
    cli.refused("not_record_owner", "record", "erase", *world.wallet(1, "clinician_b"),
                  world.facts["record"])


def test_a_forged_transaction_is_refused(world: World) -> None:
    """A grant in the patient's name, signed by someone else, sent straight to a node."""
    forger = Identity.generate()
    patient = bytes.fromhex(world.public["patient"])

    async def send() -> str:
        forged = ConsentGrant(b"", 50, bytes.fromhex(world.public["clinician_a"]), ("read",),
                              (bytes.fromhex(world.facts["record"]),), (), None, (), None
                              ).sign(forger, CHAIN_ID)
        forged = replace(forged, signer=patient)  # the patient's name, the forger's signature
        async with connect(forger, world.node(1)) as connection:
            try:
                await connection.request(SubmitRequest(forged, 0))
            except Refused as refused:
                return refused.code
        return "accepted"

    assert trio.run(send) == "bad_signature"


def test_a_revoked_grant_is_refused(world: World) -> None:
    cli.ok("revoke", *world.wallet(3, "patient"), world.facts["grant_b"])
    cli.refused("record_not_readable", "record", "get", *world.wallet(1, "clinician_b"),
                  world.facts["record"], "--out", str(world.dir / "nope"))


def test_break_glass_without_the_emergency_role_is_refused(world: World) -> None:
    line = cli.refused("reader_lacks_emergency_role", "record", "get",
                         *world.wallet(1, "clinician_a"), world.facts["record"], "--out",
                         str(world.dir / "nope"), "--break-glass")
    assert "emergency role" in line


def test_every_node_holds_the_ciphertext(world: World) -> None:
    for index in range(4):
        wait_for(lambda i=index: world.cluster.metric(i, "healthnode_blobs_missing ") == 0,
                 30, f"node{index} to hold every ciphertext")


def test_the_record_survives_its_receiving_hospital(world: World) -> None:
    """Hospital 0 received the upload: kill it, delete its home, read through hospital 2."""
    cli.ok("grant", *world.wallet(1, "patient"), "--to", world.public["clinician_a"],
             "--category", SECRET_CATEGORY)
    world.cluster.kill(0)
    shutil.rmtree(world.cluster.homes[0])
    out = world.dir / "after-loss.json"
    cli.ok("record", "get", *world.wallet(2, "clinician_a"), world.facts["record"], "--out",
             str(out))
    assert out.read_bytes() == world.facts["plaintext"]


def test_an_erased_record_is_gone_everywhere(world: World) -> None:
    record = world.facts["other_record"]
    cli.ok("record", "erase", *world.wallet(1, "patient"), record)
    cli.refused("record_erased", "record", "get", *world.wallet(3, "patient"), record,
                  "--out", str(world.dir / "nope"))
    listed = cli.ok("record", "list", *world.wallet(2, "patient"), "--json")
    assert {r["record_id"]: r["erased_height"] for r in listed}[record] is not None


async def _prove(world: World, who: str, index: int, *keys: bytes) -> Any:
    """The node's answer, or the code of its refusal."""
    identity = load_identity(world.keys[who], cli.PASSPHRASE)
    async with connect(identity, world.node(index)) as connection:
        try:
            return await connection.request(StateProofRequest(keys))
        except Refused as refused:
            return refused.code


def _lie(answer: StateProofResponse, **change: Any) -> StateProofResponse:
    """The answer with its first key's proof changed."""
    return replace(answer, proofs=(replace(answer.proofs[0], **change), *answer.proofs[1:]))


def test_a_wallet_checks_a_state_value_or_its_absence_against_a_certified_header(
        world: World) -> None:
    genesis = load_genesis(world.cluster.homes[2] / "genesis.json")
    trusted = light.from_genesis(genesis)
    record_key = RECORD + bytes.fromhex(world.facts["record"])
    patient_key = bytes.fromhex(world.public["patient"])
    absent_key = EMERGENCY_POLICY + patient_key  # the patient set no emergency policy
    answer = trio.run(_prove, world, "patient", 2, record_key, absent_key)
    proven = verify_state_answer(answer, (record_key, absent_key), trusted)
    value = proven.values[record_key]
    assert proven.height == answer.head.header.height and value is not None
    assert proven.trusted.height == proven.height  # the light client moved up to the head
    assert decode_value(value, RecordState, record_key).patient == patient_key
    assert proven.values[absent_key] is None
    # An absence of a key the asker chooses freely is not proven: its proof would end at the
    # leaf of some other key, whose hashes would let a guess about that key be checked.
    assert trio.run(_prove, world, "patient", 2, GRANT + b"\x00" * 32) == "not_found"
    # A node that lies: a value for an absent key, an absent value for a present one, a proof
    # of another key, or a header certified by keys that are not the authorities.
    absent = trio.run(_prove, world, "patient", 2, absent_key)
    with pytest.raises(VerificationError, match="does not verify"):
        verify_state_answer(_lie(absent, value=b"\x01"), (absent_key,), trusted)
    present = trio.run(_prove, world, "patient", 2, record_key)
    with pytest.raises(VerificationError, match="does not verify"):
        verify_state_answer(_lie(present, value=None), (record_key,), trusted)
    with pytest.raises(VerificationError, match="other keys"):
        verify_state_answer(present, (absent_key,), trusted)
    strangers = tuple(Identity.generate().public_key for _ in range(3))
    with pytest.raises(VerificationError, match="authority set given is not the header's"):
        verify_state_answer(replace(present, head=replace(
            present.head, authorities=genesis.authority_keys[:1] + strangers)),
            (record_key,), trusted)
    # A wallet pinned to another network (same chain id, other authorities) takes none of it.
    other = light.from_genesis(replace(genesis, authorities=tuple(
        replace(a, public_key=key) for a, key in zip(
            genesis.authorities, [Identity.generate().public_key for _ in genesis.authorities],
            strict=True))))
    with pytest.raises(VerificationError, match="trusted authorities signed"):
        verify_state_answer(present, (record_key,), other)
    # A stranger is not shown the patient's record, nor told that it exists.
    assert trio.run(_prove, world, "stranger", 2, record_key) == "record_not_readable"
    assert trio.run(_prove, world, "stranger", 2, EMERGENCY_POLICY + patient_key) == \
        "not_your_state"


def test_every_node_computed_the_same_state_root(world: World) -> None:
    """After the mixed workload above (records, grants, reads, revokes, erasure, a node
    restarted), each running node's own state root, computed from its own LevelDB state, is the
    same: blocks that change nothing but the chain meta keep the root, so heights may differ."""
    cluster = world.cluster
    running = cluster.running()
    assert len(running) >= 3

    def roots() -> set[str] | None:
        found = {cluster.status(index)["state_root"] for index in running}
        return found if len(found) == 1 else None

    (root,) = wait_for(roots, 20, "the same state root on every node")
    height = cluster.height(running[0])
    assert cluster.admin(running[0], "block", height=height)["state_hash"] == root


def test_no_node_holds_plaintext_or_a_category_name(world: World) -> None:
    """Every file and log of every remaining node, raw, and every value of its chain store read
    back through LevelDB (which compresses, so a raw scan alone could miss)."""
    cluster = world.cluster
    for index in cluster.running():
        cluster.kill(index, 15)
    secrets = [SECRET_CATEGORY.encode(), SECRET_NAME.encode(), SECRET_NOTE.encode(),
               b"K+ 4.1 mmol/L", b"visit-note", b"a visit note in another category"]
    scanned_files = scanned_values = 0
    for home in cluster.homes[1:]:
        for path in home.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                scanned_files += 1
                for secret in secrets:
                    assert secret not in data, f"{secret!r} found in {path}"
        # The erased record's ciphertext is gone from every node; the other one is there.
        blobs = BlobFiles(home / "data" / "blobs")
        assert not blobs.has(bytes.fromhex(world.facts["other_ciphertext"]))
        assert blobs.has(bytes.fromhex(world.facts["ciphertext"]))
        db = plyvel.DB(str(home / "data" / "chain"))
        try:
            for key, value in db.iterator():
                scanned_values += 1
                for secret in secrets:
                    assert secret not in key and secret not in value, \
                        f"{secret!r} stored in {home.name} under {key[:24]!r}"
        finally:
            db.close()
    assert scanned_files > 10 and scanned_values > 50


def test_verify_passes_on_a_stopped_nodes_chain_and_names_a_changed_block(world: World) -> None:
    """`healthnode verify` re-executes a real node's chain from its genesis. Then one decoded
    field of one stored block is changed through the store's API (so LevelDB's checksums
    cannot see it): verify fails and names that height and the check."""
    home = world.cluster.homes[1]  # stopped by the test above
    passed = cli.ok("verify", "--home", str(home))
    assert passed["ok"] and passed["height"] > 10
    genesis = load_genesis(home / "genesis.json")
    with ChainStore.open(home / "data" / "chain", genesis) as store:
        height = next(h for h in range(2, store.head.height)
                      if store.block(h).txs)  # type: ignore[union-attr]
        block = store.block(height)
        assert block is not None
        changed = Block(block.header, block.txs[:-1], block.evidence)  # one transaction dropped
        store._db.put(BLOCK + height.to_bytes(8, "big"), changed.encode())
    failed = cli.run("verify", "--home", str(home))
    assert failed.returncode == 1
    assert f"verify failed at height {height}: roots: txs_root does not match" in failed.stderr
