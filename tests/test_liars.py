"""A wallet that believes no single node (issue 21), against real lying nodes: a proxy in front
of a real node that rewrites its answers (tests/liar.py), with proofs that agree with each lie,
signed with the one authority key the liar holds. The wallet refuses each lie with an error that
names the liar, and the same command then succeeds through an honest node given after it. The
tests run in file order and share one 4-node network."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from healthnode import crypto
from healthnode.crypto import threshold
from healthnode.home import keys
from healthnode.home.config import KEY_FILE
from healthnode.home.layout import free_base_port, make_testnet
from healthnode.ledger.state import EMERGENCY_KEY, GRANT, RECORD, decode_value
from healthnode.protocol.client import (
    EmergencyInfoResponse,
    FetchResponse,
    GrantItem,
    GrantsResponse,
    NonceResponse,
    QueryRequest,
    RecordsResponse,
    StateProofRequest,
)
from healthnode.protocol.schema import replace
from healthnode.protocol.state import EmergencyKeyState, GrantState, RecordState
from healthnode.protocol.tx import ConsentGrant
from healthnode.wallet import sealing
from healthnode.wallet.connection import connect
from tests import wallet_cli as cli
from tests.cluster import Cluster
from tests.liar import Liar, forged_proofs, node_address

# A short bound, so that a replayed state is old within the test; honest heads stay within it (a
# block at least every 5 s).
FRESH_S = 8
FRESH = ("--fresh", f"{FRESH_S}s")


@dataclass
class World(cli.People):
    liar: Liar | None = None
    facts: dict[str, Any] | None = None

    def both(self, who: str, *args: str) -> list[str]:
        """`args` as `who`, through the liar first, then an honest node."""
        assert self.liar is not None
        return [*args, "--node", self.liar.address, "--node", str(self.cluster.homes[2]),
                "--as", str(self.keys[who])]

    def liar_only(self, who: str, *args: str) -> list[str]:
        assert self.liar is not None
        return [*args, "--node", self.liar.address, "--as", str(self.keys[who])]

    def honest(self, who: str, *args: str) -> list[str]:
        return [*args, *self.wallet(2, who)]


def caught(world: World, who: str, what: str, *args: str, alone: bool = False) -> Any:
    """Run `args` through the liar, then an honest node: it succeeds, and says that the liar
    lied, and `what` about. With `alone`, first through the liar alone: refused, one line
    naming the liar (a few lies are checked so; each wallet run costs a second or two)."""
    assert world.liar is not None
    if alone:
        refused = cli.run(*world.liar_only(who, *args))
        assert refused.returncode == 1, refused.stdout
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1 and f"node {world.liar.address} " in lines[0], refused.stderr
        assert what in lines[0], lines[0]
    result = cli.run(*world.both(who, *args))
    assert result.returncode == 0, result.stderr
    assert f"warning: node {world.liar.address} " in result.stderr, result.stderr
    assert what in result.stderr, result.stderr
    return _json(result)


def _json(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(result.stdout) if result.stdout.startswith(("{", "[")) else result.stdout


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("liars")
    cluster = Cluster(root / "net")
    cluster.start_all()
    w = World(cluster, root, facts={})
    try:
        for who, kind in [("patient", "patient"), ("dr", "provider"), ("er", "provider"),
                          ("dr2", "provider"), ("quiet", "patient")]:
            w.new(who, kind)
        w.register(0, "dr", ["clinician"], "Dr Liar-Test")
        w.register(0, "dr2", ["clinician"], "Dr Two")
        w.register(0, "er", ["emergency"], "Dr ER")
        liar = Liar(node_address(cluster.homes[1]),
                    keys.load_identity(cluster.homes[1] / KEY_FILE, None), free_base_port(1))
        for path in w.keys.values():
            identity = keys.load_identity(path, cli.PASSPHRASE)
            liar.wallets[identity.public_key] = identity
        liar.start()
        w.liar = liar
        yield w
    finally:
        if w.liar is not None:
            w.liar.stop()
        cluster.close()


def _record(world: World, name: str, category: str, text: str, *extra: str) -> str:
    source = world.dir / f"{name}.txt"
    source.write_text(text)
    added = cli.ok(*world.honest("patient", "record", "add", "--patient",
                                 world.public["patient"], "--category", category, *extra,
                                 str(source)))
    record: str = added["record_id"]
    return record


def _anchor_readers(world: World, record_id: str) -> set[str]:
    """Whom the record's data key is sealed to, as the chain holds it (asked of a node by the
    patient: the key wraps are public on chain)."""
    identity = keys.load_identity(world.keys["patient"], cli.PASSPHRASE)

    async def ask() -> set[str]:
        async with connect(identity, str(world.cluster.homes[3])) as connection:
            answer = await connection.request(QueryRequest("records", None, None))
            assert isinstance(answer, RecordsResponse)
            for item in answer.items:
                if item.record_id.hex() == record_id:
                    return {wrap.recipient.hex() for wrap in item.anchor.key_wraps}
        raise AssertionError("record not listed")

    return trio.run(ask)


def test_an_honest_proxy_is_believed(world: World) -> None:
    """The proxy itself changes nothing: with no lie, the wallet works through it alone."""
    cli.ok("grant", *world.liar_only("patient"), "--to", world.public["dr"], "--category",
           "lab", "--expires", "30d")
    assert world.facts is not None
    world.facts["lab"] = _record(world, "lab", "lab", "K 4.1 mmol/L")
    assert world.liar is not None
    world.liar.seen.clear()
    cli.ok("record", "get", *world.liar_only("dr"), world.facts["lab"], "--out",
           str(world.dir / "lab.out"))
    assert (world.dir / "lab.out").read_text() == "K 4.1 mmol/L"
    # Kept, for later tests to replay once the record is amended and this is old.
    world.facts["lab_proof"] = next(
        a for r, a in world.liar.seen if isinstance(r, StateProofRequest)
        and RECORD + bytes.fromhex(world.facts["lab"]) in r.keys)
    world.liar.seen.clear()
    cli.ok("emergency", "list", *world.liar_only("quiet"), "--json")
    world.facts["quiet_proof"] = next(a for r, a in world.liar.seen
                                      if isinstance(r, StateProofRequest))


def test_a_node_that_lists_an_extra_grantee_is_named(world: World) -> None:
    """(a) The liar lists a grant to its own hospital's key, and proves it with a tree of its
    own making certified by the only authority key it holds."""
    assert world.liar is not None
    liar_key = world.liar.authority.public_key
    patient = bytes.fromhex(world.public["patient"])
    tag_key = sealing.tag_key(keys.load_identity(world.keys["patient"], cli.PASSPHRASE))
    tags = (sealing.blind(tag_key, "lab"),)
    # As the patient's, though the liar cannot sign it so: the proofs are what it forges.
    fake = replace(ConsentGrant(patient, 999, liar_key, ("read",), (), tags, None, (), None)
                   .sign(world.liar.authority, world.cluster.genesis.chain_id), signer=patient)
    fake_state = GrantState(patient, liar_key, ("read",), (), tags, None, 2, 1, None, None)

    async def lie(request: Any, identity: Any, answer: Any, ask: Any) -> Any:
        if isinstance(answer, GrantsResponse) and request.what == "patient_grants":
            return replace(answer, items=(*answer.items, GrantItem(fake.hash, fake, fake_state)))
        return await forged_proofs(world.liar, request, identity, answer, ask,
                                   {GRANT + fake.hash: fake_state.encode()})

    world.liar.lie = lie
    source = world.dir / "more-lab.txt"
    source.write_text("Na 140 mmol/L")
    added = caught(world, "patient", "its proof does not hold up", "record", "add",
                   "--patient", world.public["patient"], "--category", "lab", str(source),
                   alone=True)
    world.liar.lie = None
    readers = _anchor_readers(world, added["record_id"])
    assert readers == {world.public["patient"], world.public["dr"]}
    assert liar_key.hex() not in readers


def test_a_node_that_hides_a_revocation_is_named(world: World) -> None:
    """The patient revoked dr2's grant; the liar lists it as in force, (1) with the true proof
    (the chain shows the revocation), (2) with a proof of its own that shows none, (3) with an
    older certified state from before the revocation, replayed."""
    assert world.liar is not None and world.facts is not None
    granted = cli.ok("grant", *world.honest("patient"), "--to", world.public["dr2"],
                     "--category", "lab", "--expires", "30d")
    grant_id = bytes.fromhex(granted["grant_id"])
    source = world.dir / "revoked.txt"
    source.write_text("glucose 5.2 mmol/L")
    add = ("record", "add", "--patient", world.public["patient"], "--category", "lab",
           str(source))
    # Through the honest proxy before the revocation: it keeps what it saw, to replay it later.
    world.liar.seen.clear()
    cli.ok(*world.liar_only("patient", *add))
    old_list = next(a for r, a in world.liar.seen
                    if isinstance(r, QueryRequest) and r.what == "patient_grants")
    old_proof = next(a for r, a in world.liar.seen
                     if isinstance(r, StateProofRequest) and GRANT + grant_id in r.keys)
    cli.ok("revoke", *world.honest("patient"), granted["grant_id"])

    async def listed(request: Any, identity: Any, answer: Any, ask: Any) -> Any:
        if isinstance(answer, GrantsResponse) and request.what == "patient_grants":
            return old_list
        return answer

    world.liar.lie = listed
    added = caught(world, "patient", f"grant {granted['grant_id'][:16]} as in force; the chain "
                                     f"shows it revoked", *add)
    assert world.public["dr2"] not in _anchor_readers(world, added["record_id"])

    unrevoked = cli.ok("grant", "list", *world.honest("patient"), "--json")
    assert any(g["grant_id"] == granted["grant_id"] and g["revoked_height"] for g in unrevoked)

    async def forged(request: Any, identity: Any, answer: Any, ask: Any) -> Any:
        if isinstance(answer, GrantsResponse) and request.what == "patient_grants":
            return old_list
        if isinstance(request, StateProofRequest) and GRANT + grant_id in request.keys:
            real = await ask(request)
            value = next(p.value for p in real.proofs if p.key == GRANT + grant_id)
            state = replace(decode_value(value, GrantState, GRANT), revoked_height=None,
                            revoked_time_ms=None)
            return await forged_proofs(world.liar, request, identity, answer, ask,
                                       {GRANT + grant_id: state.encode()})
        return answer

    world.liar.lie = forged
    caught(world, "patient", "its proof does not hold up", *add)

    async def replayed(request: Any, identity: Any, answer: Any, ask: Any) -> Any:
        if isinstance(answer, GrantsResponse) and request.what == "patient_grants":
            return old_list
        if isinstance(request, StateProofRequest) and GRANT + grant_id in request.keys:
            return old_proof
        return answer

    world.liar.lie = replayed  # seconds old only: the wallet's own revocation is the floor
    caught(world, "patient", "serves an old state: it proves at height", *add, alone=True)
    world.liar.lie = None


def test_a_node_that_substitutes_the_emergency_key_or_a_commitment_is_named(
        world: World) -> None:
    """(b) `emergency allow` would wrap every covered record for the liar's key; break-glass
    would check shares against the liar's commitment."""
    assert world.liar is not None and world.facts is not None
    own = threshold.deal(1, 1)

    async def key_lie(request: Any, identity: Any, answer: Any, ask: Any) -> Any:
        if isinstance(request, StateProofRequest) and EMERGENCY_KEY in request.keys:
            real = await ask(request)
            value = next(p.value for p in real.proofs if p.key == EMERGENCY_KEY)
            state = decode_value(value, EmergencyKeyState, EMERGENCY_KEY)
            forged = replace(state, key=replace(state.key, public_key=own.public_key))
            return await forged_proofs(world.liar, request, identity, answer, ask,
                                       {EMERGENCY_KEY: forged.encode()})
        return answer

    world.liar.lie = key_lie
    caught(world, "patient", "its proof does not hold up", "emergency", "allow",
           "--category", "allergy")
    world.facts["allergy"] = _record(world, "allergy", "allergy", "penicillin: anaphylaxis")

    async def commitment_lie(request: Any, identity: Any, answer: Any, ask: Any) -> Any:
        if isinstance(answer, EmergencyInfoResponse):
            first = answer.holders[0]
            return replace(answer, holders=(replace(first, commitment=own.commitments[0]),
                                            *answer.holders[1:]))
        return answer

    world.liar.lie = commitment_lie
    out = world.dir / "allergy.out"
    caught(world, "er", "key or commitment is not the chain's", "record", "get",
           world.facts["allergy"], "--out", str(out), "--break-glass")
    assert out.read_text() == "penicillin: anaphylaxis"
    world.liar.lie = None


def test_a_node_that_serves_forged_content_or_another_anchor_is_named(world: World) -> None:
    """(c) Made-up content with a data key sealed by the liar, and an anchor of another record."""
    assert world.liar is not None and world.facts is not None
    dr = bytes.fromhex(world.public["dr"])
    patient = bytes.fromhex(world.public["patient"])
    own_key = sealing.new_data_key()
    forged = sealing.encrypt_record(own_key, patient, b"K 9.9 mmol/L")

    async def content(request: Any, identity: Any, answer: Any, ask: Any) -> Any:
        if isinstance(answer, FetchResponse):
            return replace(answer, ciphertext=forged,
                           sealed_key=sealing.wrap_key(dr, own_key))
        return answer

    out = world.dir / "forged.out"
    world.liar.lie = content
    caught(world, "dr", "the ciphertext it served is not the one anchored", "record", "get",
           world.facts["lab"], "--out", str(out))
    assert out.read_text() == "K 4.1 mmol/L"

    async def anchor(request: Any, identity: Any, answer: Any, ask: Any) -> Any:
        if isinstance(answer, FetchResponse):
            return replace(answer, anchor=replace(answer.anchor, nonce=answer.anchor.nonce + 1))
        return answer

    world.liar.lie = anchor
    caught(world, "dr", "the anchor it served is not record", "record", "get",
           world.facts["lab"], "--out", str(out))
    world.liar.lie = None


def test_a_node_that_serves_an_old_version_or_an_anchor_not_on_chain_is_named(
        world: World) -> None:
    """The patient amends the lab record; the liar passes the old version off as the newest
    (a proof of its own). And it makes up a record that is not on the chain at all."""
    assert world.liar is not None and world.facts is not None
    old = world.facts["lab"]
    newer = _record(world, "lab-amended", "lab", "K 4.3 mmol/L (amended)", "--supersedes", old)
    key = RECORD + bytes.fromhex(old)

    async def unamended(request: Any, identity: Any, answer: Any, ask: Any) -> Any:
        if isinstance(request, StateProofRequest) and key in request.keys:
            real = await ask(request)
            value = next(p.value for p in real.proofs if p.key == key)
            state = replace(decode_value(value, RecordState, RECORD), superseded_by=None)
            return await forged_proofs(world.liar, request, identity, answer, ask,
                                       {key: state.encode()})
        return answer

    world.liar.lie = unamended
    alone = cli.run("record", "get", *world.liar_only("dr"), old, "--out",
                    str(world.dir / "old.out"))
    assert alone.returncode == 1 and f"node {world.liar.address} lied" in alone.stderr
    # Through an honest node after it: the true answer, that there is a newer version.
    result = cli.run("record", "get", *world.both("dr"), old, "--out", str(world.dir / "o.out"))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 2, result.stderr
    assert lines[0].startswith(f"warning: node {world.liar.address} lied")
    assert "(record_superseded)" in lines[1] and newer in lines[1]
    assert not (world.dir / "old.out").exists() and not (world.dir / "o.out").exists()
    cli.ok("record", "get", *world.both("dr"), newer, "--out", str(world.dir / "new.out"))

    # The same lie with a true, certified state from before the amendment, replayed: older than
    # the wallet accepts (a reader has no transaction of its own after the amendment).
    async def replayed(request: Any, identity: Any, answer: Any, ask: Any) -> Any:
        if isinstance(request, StateProofRequest) and key in request.keys:
            return world.facts["lab_proof"]
        return answer

    world.liar.lie = replayed
    old_state = cli.run("record", "get", *world.liar_only("dr"), old, "--out",
                        str(world.dir / "old.out"), *FRESH)
    assert old_state.returncode == 1, old_state.stdout
    assert f"node {world.liar.address} serves an old state: it proves at height" in \
        old_state.stderr  # below the newest header this wallet has taken
    assert not (world.dir / "old.out").exists()

    # A wallet that has seen nothing newer (its last command was the start of this module):
    # the replayed state is caught by its age.
    async def quiet(request: Any, identity: Any, answer: Any, ask: Any) -> Any:
        if isinstance(request, StateProofRequest):
            return world.facts["quiet_proof"]
        return answer

    world.liar.lie = quiet
    aged = cli.run("emergency", "list", *world.liar_only("quiet"), *FRESH)
    assert aged.returncode == 1, aged.stdout
    assert f"more than the {FRESH_S} s allowed" in aged.stderr, aged.stderr

    phantom_text = b"K 2.0 mmol/L"
    patient = bytes.fromhex(world.public["patient"])
    data_key = sealing.new_data_key()
    ciphertext = sealing.encrypt_record(data_key, patient, phantom_text)
    real_anchor: dict[str, Any] = {}

    async def phantom(request: Any, identity: Any, answer: Any, ask: Any) -> Any:
        anchor = real_anchor["anchor"]
        phantom_anchor = replace(anchor, ciphertext_hash=crypto.digest(ciphertext),
                                 ciphertext_bytes=len(ciphertext), nonce=anchor.nonce + 5000)
        phantom_key = RECORD + phantom_anchor.hash
        if isinstance(request, StateProofRequest) and phantom_key in request.keys:
            state = RecordState(patient, patient, phantom_anchor.ciphertext_hash,
                                len(ciphertext), anchor.tags, None, None, 3, 1, None, None)
            return await forged_proofs(world.liar, request, identity, answer, ask,
                                       {phantom_key: state.encode()})
        return answer

    records = trio.run(_records_of, world, "patient")
    real_anchor["anchor"] = next(i.anchor for i in records if i.record_id.hex() == newer)
    anchor = real_anchor["anchor"]
    phantom_id = replace(anchor, ciphertext_hash=crypto.digest(ciphertext),
                         ciphertext_bytes=len(ciphertext), nonce=anchor.nonce + 5000).hash.hex()
    world.liar.lie = phantom
    alone = cli.run("record", "get", *world.liar_only("dr"), phantom_id, "--out",
                    str(world.dir / "phantom.out"))
    assert alone.returncode == 1 and "its proof does not hold up" in alone.stderr
    assert not (world.dir / "phantom.out").exists()
    result = cli.run("record", "get", *world.both("dr"), phantom_id, "--out",
                     str(world.dir / "phantom.out"))
    assert result.returncode == 1 and "(record_not_readable)" in result.stderr
    world.liar.lie = None


async def _records_of(world: World, who: str) -> Any:
    identity = keys.load_identity(world.keys[who], cli.PASSPHRASE)
    async with connect(identity, str(world.cluster.homes[3])) as connection:
        answer = await connection.request(QueryRequest("records", None, None))
        assert isinstance(answer, RecordsResponse)
        return answer.items


def test_a_node_that_claims_another_chain_id_is_named(world: World) -> None:
    """(d) The chain id the wallet signs for comes from the pinned genesis."""
    assert world.liar is not None

    async def chain(request: Any, identity: Any, answer: Any, ask: Any) -> Any:
        if isinstance(answer, NonceResponse):
            return replace(answer, chain_id="some-other-chain")
        return answer

    world.liar.lie = chain
    caught(world, "patient", "claims to be of chain 'some-other-chain'", "grant", "--to",
           world.public["dr2"], "--category", "imaging", "--expires", "1d")
    world.liar.lie = None


def test_a_node_that_names_a_nonce_ahead_holds_nothing(world: World) -> None:
    """A node that names a nonce ahead of the chain's could keep the signed transaction and
    submit it later, once the nonces below are used: a revoked grant back in force. The wallet
    signs with its proven nonce, so the grant is final at once, through the liar alone."""
    assert world.liar is not None

    async def ahead(request: Any, identity: Any, answer: Any, ask: Any) -> Any:
        if isinstance(answer, NonceResponse):
            return replace(answer, next_nonce=answer.next_nonce + 3)
        return answer

    world.liar.lie = ahead
    granted = cli.ok("grant", *world.liar_only("patient"), "--to", world.public["dr2"],
                     "--category", "vaccines", "--expires", "1d")
    assert granted["height"] >= 1
    world.liar.lie = None


def test_a_wallet_pinned_to_one_network_refuses_a_node_of_another(world: World,
                                                                   tmp_path: Path) -> None:
    """Another network with the same chain id (its own authorities): its node's headers are
    certified by none of the pinned genesis's authorities."""
    other = Cluster(tmp_path / "other", nodes=1)
    assert other.genesis.chain_id == world.cluster.genesis.chain_id
    other.start_all()
    try:
        other.wait_height(1, [0], 30)
        args = ("emergency", "list", "--as", str(world.keys["patient"]), "--json")
        alone = cli.run(*args, "--node", str(other.homes[0]))
        assert alone.returncode == 1
        assert "lied: its proof does not hold up" in alone.stderr, alone.stderr
        both = cli.run(*args, "--node", str(other.homes[0]), "--node",
                       str(world.cluster.homes[0]))
        assert both.returncode == 0 and "warning:" in both.stderr
        assert _json(both)["allowed"] == ["allergy"]
    finally:
        other.close()


def test_a_pin_of_another_network_is_refused(world: World) -> None:
    other_genesis, _ = make_testnet(1, world.dir / "third", free_base_port(1))
    refused = cli.run("audit", *world.honest("patient"), "--genesis",
                      other_genesis.hash.hex())
    assert refused.returncode == 1 and "is pinned to the network of genesis" in refused.stderr
    # By the hash alone: a key without a pin takes the genesis from the node, and checks it.
    cli.ok("patient", "new", "--out", str(world.dir / "late.key"))
    unpinned = cli.run("audit", "--node", str(world.cluster.homes[0]), "--as",
                       str(world.dir / "late.key"))
    assert unpinned.returncode == 1 and "not pinned to a network yet" in unpinned.stderr
    cli.ok("audit", "--node", str(world.cluster.homes[0]), "--as", str(world.dir / "late.key"),
           "--genesis", world.cluster.genesis.hash.hex())
    assert (world.dir / "late.key.pin.json").exists()
