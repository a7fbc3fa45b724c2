"""A hospital replaces its node key (issue 29; ledger/rules/rotation.py, node/rotation.py,
docs/operations.md, "Rotating a node key").

Over a ledger in memory (tests/chain.py): the authority set and the emergency key's share
commitment change at exactly the rotation's height H (the set of H is in the state after block
H-2, for the consensus core reads it then), and from there the old key's transactions are
refused and its votes and precommits count for nothing; an authority change decided in block
H-1 builds on the rotated set; a key voted out before its rotation's height is only retired.

The node's files, on a home of that chain with a real chain store: a new key staged as its
public half when the key is kept outside the home, or as it is (a sealed one opened with its
passphrase file), taken up only once the chain has rotated to it and never when the chain took
another; the old key refused at the start.

On real processes (slow): a hospital rotates its node's key on a running 4-node network with the
runbook's commands (docs/operations.md, "Rotating a node key").
"""

from __future__ import annotations

import json
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from healthnode import crypto
from healthnode.admin.client import AdminError
from healthnode.consensus.events import Effect, Ignored
from healthnode.consensus.height import HeightState
from healthnode.crypto import Identity
from healthnode.errors import KeyFileError
from healthnode.home import keys
from healthnode.home.config import EMERGENCY_SHARE_FILE, KEY_FILE, NEXT_KEY_FILE, write_genesis
from healthnode.home.layout import init_home
from healthnode.home.modes import private_umask
from healthnode.home.node_key import KeySource, load_node_key
from healthnode.ledger import rules
from healthnode.ledger.rules import Reason, rounds
from healthnode.ledger.state import EMERGENCY_REFRESH, read
from healthnode.node import rotation as node_rotation
from healthnode.node.daemon import Node
from healthnode.protocol import block as blocks
from healthnode.protocol.block import PREVOTE, CommitCertificate, Vote
from healthnode.protocol.genesis import Authority
from healthnode.protocol.state import EmergencyRefreshVotes, KeyRotation
from healthnode.protocol.tx import AnyTx, EmergencyRefresh, ProviderRegister, ValidatorVote
from healthnode.store.leveldb import ChainStore
from tests import wallet_cli as cli
from tests.chain import AUTHORITIES, World, identity
from tests.chain import CHAIN_ID as WORLD_CHAIN
from tests.cluster import CHAIN_ID, Cluster, Patient, wait_for

A0, A1, A2, A3 = AUTHORITIES
NEW = identity("hospital-2-new-node-key")
NEWCOMER = identity("new-hospital")
PROVIDER = identity("a-provider")


def _register(world: World, signer: Identity, provider: bytes) -> ProviderRegister:
    tx: ProviderRegister = world.tx(ProviderRegister, signer, provider=provider,
                                    roles=("clinician",), display_name="Dr Who")
    return tx


def _reason(world: World, tx: AnyTx) -> Reason | None:
    refusal = world.check(tx)
    return None if refusal is None else Reason(refusal.reason)


def test_the_set_and_the_share_commitment_change_at_exactly_the_rotation_height() -> None:
    world = World()
    key_before = rules.emergency_key(world.state)
    assert key_before is not None
    # hospital-2 asks for a refresh of the shares (one of the three needed) before it rotates
    world.commit(world.tx(EmergencyRefresh, A2, epoch=key_before.epoch))
    height = world.height + 5
    world.commit(world.rotate(A2, NEW, height))
    decided = world.height
    old_set = rules.authority_set(world.state, height - 1)

    world.commit_until(height - 3)
    assert rules.authority_set(world.state, height) == old_set
    world.commit()  # block H-2: the set of H is known at its end, as a vote's change would be
    assert rules.pending_rotations(world.state) == [
        (A2.public_key, KeyRotation(NEW.public_key, height, decided))]
    new_set = rules.authority_set(world.state, height)
    assert new_set.authorities == tuple(
        Authority(a.name, NEW.public_key) if a.public_key == A2.public_key else a
        for a in old_set.authorities)  # same name, same place
    assert rules.authority_set(world.state, height - 1) == old_set
    assert rules.emergency_key(world.state) == key_before
    assert rules.rotated_to(world.state, A2.public_key) is None
    assert _reason(world, _register(world, A2, PROVIDER.public_key)) is None  # in block H-1
    world.nonces[A2.public_key] -= 1  # (only checked)

    world.commit()  # block H-1: the share's commitment and the old key's retirement at its end
    assert world.height == height - 1
    assert rules.authority_set(world.state, height) == new_set
    assert rules.pending_rotations(world.state) == []
    assert rules.rotated_to(world.state, A2.public_key) == KeyRotation(NEW.public_key, height,
                                                                       decided)
    key_after = rules.emergency_key(world.state)
    assert key_after is not None
    assert key_after.key.public_key == key_before.key.public_key
    assert (key_after.epoch, key_after.dealers) == (key_before.epoch, key_before.dealers)
    assert [(c.index, c.commitment) for c in key_after.key.commitments] == \
        [(c.index, c.commitment) for c in key_before.key.commitments]
    assert [c.authority for c in key_after.key.commitments] == \
        [NEW.public_key if c.authority == A2.public_key else c.authority
         for c in key_before.key.commitments]
    assert rounds.current_round(world.state) is None  # no re-sharing opened for it
    votes = read(world.state, EMERGENCY_REFRESH, EmergencyRefreshVotes)
    assert votes is not None and votes.voters == (NEW.public_key,)

    # From H the old key signs nothing; its hospital signs with the new key, once per request.
    refused = world.check(_register(world, A2, PROVIDER.public_key))
    assert refused is not None and refused.reason == Reason.KEY_ROTATED
    assert f"replaced by {NEW.public_key.hex()[:16]} from height {height}" in refused.detail
    assert _reason(world, world.tx(EmergencyRefresh, NEW, epoch=key_before.epoch)) == \
        Reason.ALREADY_VOTED
    world.nonces[NEW.public_key] -= 1
    world.commit(_register(world, NEW, PROVIDER.public_key))  # block H
    assert world.blocks[-1][0].header.validators_hash == blocks.validators_hash(new_set.keys)
    assert _reason(world, world.tx(ValidatorVote, A2, action="add",
                                   subject=NEWCOMER.public_key, name="new")) == \
        Reason.KEY_ROTATED

    # The consensus core counts no vote of the old key at H, and no certificate holds one.
    state = HeightState(rules.authorities(world.state, height))
    out: list[Effect] = []
    old_vote = Vote(PREVOTE, height, 0, None, b"").sign(A2, WORLD_CHAIN)
    assert not state.admit(old_vote, lambda m: m.signature_valid(WORLD_CHAIN), out)
    assert out == [Ignored("not_authority")]
    assert state.admit(Vote(PREVOTE, height, 0, None, b"").sign(NEW, WORLD_CHAIN),
                       lambda m: m.signature_valid(WORLD_CHAIN), out)
    block_h = world.blocks[-1][0]
    with_old = CommitCertificate.signed_by(block_h, (A0, A1, A2), WORLD_CHAIN, 0)
    with_new = CommitCertificate.signed_by(block_h, (A0, A1, NEW), WORLD_CHAIN, 0)
    verify = lambda m: m.signature_valid(WORLD_CHAIN)  # noqa: E731
    problem = blocks.certificate_problem(with_old, new_set.keys, verify)
    assert problem is not None and problem[0] == "certificate_signer_not_authority"
    assert blocks.certificate_problem(with_new, new_set.keys, verify) is None

    world.commit_until(height + 3)
    assert rounds.current_round(world.state) is None


def test_a_rotation_at_the_soonest_height_sets_the_set_in_its_own_block() -> None:
    world = World()
    block = world.height + 1
    world.commit(world.rotate(A1, NEW, block + 2))
    assert NEW.public_key in rules.authorities(world.state, block + 2)
    assert A1.public_key in rules.authorities(world.state, block + 1)
    world.commit(_register(world, A1, PROVIDER.public_key))  # block H-1: still A1's
    world.commit()  # block H, proposed, checked and certified by the rotated set
    assert world.blocks[-1][0].header.validators_hash == blocks.validators_hash(
        rules.authorities(world.state, block + 2))
    assert _reason(world, world.tx(ValidatorVote, A1, action="add", subject=NEWCOMER.public_key,
                                   name="new")) == Reason.KEY_ROTATED


def test_a_change_decided_in_the_block_before_the_rotation_builds_on_the_rotated_set() -> None:
    """A newcomer voted in by the block before the rotation's height lands one height after
    it, in the set of H with the new key, which is known from the end of block H-2 on."""
    world = World()
    height = world.height + 4
    world.commit(world.rotate(A2, NEW, height),
                 *(world.tx(ValidatorVote, signer, action="add", subject=NEWCOMER.public_key,
                            name="new") for signer in (A0, A1)))
    world.commit_until(height - 2)
    world.commit(world.tx(ValidatorVote, A3, action="add", subject=NEWCOMER.public_key,
                          name="new"))  # block H-1: the quorum, for H+1
    assert rules.authorities(world.state, height) == (
        A0.public_key, A1.public_key, NEW.public_key, A3.public_key)
    assert rules.authorities(world.state, height + 1) == (
        A0.public_key, A1.public_key, NEW.public_key, A3.public_key, NEWCOMER.public_key)


def test_a_key_voted_out_before_its_rotation_is_only_retired() -> None:
    """The other authorities' remedy against a rotation signed with a stolen key: they vote
    the key out before the rotation's height. The new key then takes no place and no share,
    the old one is retired all the same, and the key moves to the remaining set."""
    world = World()
    height = world.height + 6
    world.commit(world.rotate(A3, NEW, height))
    world.commit(*(world.tx(ValidatorVote, signer, action="remove", subject=A3.public_key,
                            name="hospital-3") for signer in (A0, A1, A2)))
    world.commit_until(height - 1)
    assert rules.authorities(world.state, height) == (A0.public_key, A1.public_key,
                                                      A2.public_key)
    key = rules.emergency_key(world.state)
    assert key is not None
    assert NEW.public_key not in [c.authority for c in key.key.commitments]
    assert rules.rotated_to(world.state, A3.public_key) is not None
    assert _reason(world, world.tx(EmergencyRefresh, A3, epoch=key.epoch)) == Reason.KEY_ROTATED
    found = rounds.current_round(world.state)
    assert found is not None and found.purpose == "reshare"


# --- the node's files: staging, taking up, refusing the old key ---------------------------------
# A home of the in-memory world's chain, whose chain store is the world's blocks written by the
# store as a node writes them; the node's functions then run on real files and a real LevelDB.

OTHER = identity("another-new-node-key")
PASSPHRASE = "correct horse battery staple"


def _file(path: Path, data: bytes) -> Path:
    path.parent.mkdir(mode=0o700, exist_ok=True)
    keys.write_private_file(path, data)
    return path


def _home(world: World, tmp_path: Path, given: bytes) -> Path:
    """hospital-2's home, made by `init` with the key file `given` (the key, or its half)."""
    genesis_file = tmp_path / "genesis.json"
    write_genesis(world.genesis, genesis_file)
    home = tmp_path / "home"
    init_home(home, genesis_file, _file(tmp_path / "given" / "node_key.json", given))
    return home


def _write_chain(world: World, home: Path) -> None:
    """The world's blocks the home's store lacks, each with a certificate of its own set."""
    identities = (*AUTHORITIES, NEW, OTHER)
    with private_umask(), ChainStore.open(home / "data" / "chain", world.genesis) as store:
        for block, _ in world.blocks[store.head.height:]:
            members = rules.authorities(store, block.height)
            certificate = CommitCertificate.signed_by(
                block, [i for i in identities if i.public_key in members][:3], WORLD_CHAIN, 0)
            store.commit(block, certificate, rules.apply_block(store, block))


def test_a_key_kept_outside_the_home_is_swapped_as_its_public_half(tmp_path: Path) -> None:
    world = World()
    home = _home(world, tmp_path, keys.encode_public_key_file(A2.public_key))
    old_file = _file(tmp_path / "custody" / "old.json", keys.encode_key_file("node", A2, None))
    new_file = _file(tmp_path / "custody" / "new.json", keys.encode_key_file("node", NEW, None))
    raw, new = node_rotation.open_new_key(new_file, None)
    staged = node_rotation.stage_new_key(home, raw, new.public_key, replace_other=True)
    assert staged == home / NEXT_KEY_FILE
    assert keys.secret_form(keys.read_key_document(staged)) == "none"  # no secret in the home
    assert keys.read_node_public_key(staged) == NEW.public_key

    height = world.height + 4
    world.commit(world.rotate(A2, NEW, height))
    world.commit_until(height - 2)
    _write_chain(world, home)
    assert node_rotation.take_up_staged_key(home) is None  # not in force yet: it waits
    assert staged.exists()
    world.commit()  # H-1
    _write_chain(world, home)
    taken = node_rotation.take_up_staged_key(home)
    assert taken is not None and taken.height == height
    assert keys.read_node_public_key(home / KEY_FILE) == NEW.public_key
    assert not staged.exists()

    # The operator gives the node the new key; the old one is refused, naming both.
    with pytest.raises(KeyFileError, match="but this home's node is"):
        load_node_key(home, KeySource(file=old_file))
    assert load_node_key(home, KeySource(file=new_file)).public_key == NEW.public_key
    # A node that has its old key all the same (no half in the home to tell) stops at once.
    (home / KEY_FILE).unlink()
    with pytest.raises(node_rotation.KeyRotated, match=f"replaced by {NEW.public_key.hex()[:16]} "
                                                       f"from height {height}"):
        Node(home, identity=A2).open()


def test_a_sealed_new_key_is_staged_as_it_is_and_a_key_the_chain_did_not_take_is_refused(
        tmp_path: Path) -> None:
    world = World()
    home = _home(world, tmp_path, keys.encode_key_file("node", A2, None))
    sealed = _file(tmp_path / "custody" / "new.json", keys.encode_key_file("node", NEW,
                                                                           PASSPHRASE))
    with pytest.raises(KeyFileError, match="a sealed key: give its passphrase_file"):
        node_rotation.open_new_key(sealed, None)
    passphrase = _file(tmp_path / "custody" / "passphrase", PASSPHRASE.encode())
    raw, new = node_rotation.open_new_key(sealed, passphrase)
    assert new.public_key == NEW.public_key
    staged = node_rotation.stage_new_key(home, raw, NEW.public_key, replace_other=True)
    assert staged is not None and staged.read_bytes() == sealed.read_bytes()

    # Another key while this node's rotation waits in its mempool: refused; otherwise it takes
    # the place of the key of an attempt that never became final.
    other_raw = keys.encode_key_file("node", OTHER, None)
    with pytest.raises(KeyFileError, match="waits in its mempool"):
        node_rotation.stage_new_key(home, other_raw, OTHER.public_key, replace_other=False)
    node_rotation.stage_new_key(home, other_raw, OTHER.public_key, replace_other=True)
    assert keys.read_node_public_key(home / NEXT_KEY_FILE) == OTHER.public_key

    height = world.height + 3
    world.commit(world.rotate(A2, NEW, height))
    world.commit_until(height - 1)
    _write_chain(world, home)
    with pytest.raises(KeyFileError, match=f"replaced this node's key {A2.public_key.hex()[:16]} "
                                           f"by {NEW.public_key.hex()[:16]}.*put that key's "
                                           f"file at"):
        node_rotation.take_up_staged_key(home)
    assert keys.read_node_public_key(home / KEY_FILE) == A2.public_key  # nothing swapped


def test_peers_follow_their_rotations_and_a_node_knows_its_former_keys() -> None:
    world = World()
    world.commit(world.rotate(A2, NEW, world.height + 3))
    world.commit_until(world.height + 2)
    world.commit(world.rotate(NEW, OTHER, world.height + 3))
    world.commit_until(world.height + 2)
    address = f"/ip4/10.0.0.2/tcp/26600/p2p/{crypto.peer_id(A2.public_key)}"
    assert node_rotation.follow_rotations(world.state, {A2.public_key: address}) == {
        OTHER.public_key: f"/ip4/10.0.0.2/tcp/26600/p2p/{crypto.peer_id(OTHER.public_key)}"}
    assert node_rotation.former_keys(world.state, OTHER.public_key) == {A2.public_key,
                                                                         NEW.public_key}
    assert node_rotation.former_keys(world.state, A0.public_key) == set()


# --- on real processes ------------------------------------------------------------------------

def admin(home: Path, method: str, **params: Any) -> Any:
    """`healthnode admin --home HOME METHOD --param NAME=VALUE ...`, as the runbook has it
    (docs/operations.md, "Rotating a node key")."""
    options = [f"{name}={json.dumps(value) if isinstance(value, bool) else value}"
               for name, value in params.items()]
    return cli.ok("admin", "--home", str(home), method,
                  *(arg for option in options for arg in ("--param", option)))


def drive(cluster: Cluster, patient: Patient, until: Callable[[], bool], what: str,
          node: int = 0, timeout_s: float = 90) -> None:
    """Submit a patient's anchors to `node`, each making a block soon, until `until()`."""
    def step() -> bool:
        if until():
            return True
        cluster.submit(node, patient.anchor())
        time.sleep(0.3)
        return until()
    wait_for(step, timeout_s, what, interval_s=0)


def signers(cluster: Cluster, node: int, height: int) -> set[str]:
    certificate = cluster.admin(node, "certificate", height=height)
    assert certificate is not None, f"no certificate of height {height} on node{node}"
    return {signer["public_key"] for signer in certificate["signers"]}


@pytest.mark.slow  # about 30 s: CI runs it (.ci/run)
def test_a_hospital_rotates_its_node_key_on_a_running_network(tmp_path: Path) -> None:
    """node2 rotates its key with `admin key_rotate`, stops after the block before the
    rotation's height, is started again and runs as the new key: its peers accept it although
    their configs name its old peer id, the certificates from the height on hold the new key's
    precommits and never the old key's, a transaction signed with the old key is refused, and
    a break-glass read that needs node2's share (node3 stopped: 3 holders of 4 up, the
    threshold) opens the record."""
    cluster = Cluster(tmp_path / "net", nodes=4)
    people_dir = tmp_path / "people"
    people_dir.mkdir()
    people = cli.People(cluster, people_dir)
    patient = Patient()
    home = cluster.homes[2]
    try:
        cluster.start_all()
        # Kept by the test only: the node deletes its old key file at the take-up.
        old = keys.load_identity(home / KEY_FILE, expected_kind="node")
        share_file = (home / EMERGENCY_SHARE_FILE).read_bytes()

        # 1. the new key, made by the operator
        key_dir = tmp_path / "custody"
        key_dir.mkdir(mode=0o700)
        new_file = key_dir / "node_key.new.json"
        made = cli.ok("keys", "new", "--kind", "node", "--out", str(new_file))
        new_key = bytes.fromhex(made["public_key"])

        # 2. the rotation, a few blocks ahead
        height = admin(home, "status")["height"] + 6
        answer = admin(home, "key_rotate", key_file=new_file, height=height, wait=True)
        assert (answer["new_key"], answer["from_height"]) == (new_key.hex(), height)
        assert answer["peer_id"] == crypto.peer_id(new_key)
        staged = home / NEXT_KEY_FILE
        assert answer["staged"] == str(staged)
        assert stat.S_IMODE(staged.stat().st_mode) == 0o600
        assert staged.read_bytes() == new_file.read_bytes()
        assert admin(cluster.homes[0], "validators")["rotations"] == [
            {"name": "node2", "public_key": old.public_key.hex(), "new_key": new_key.hex(),
             "from_height": height}]

        # 3. node2 commits height - 1 and stops, saying what to do
        drive(cluster, patient, lambda: cluster.nodes[2].exited, "node2 to stop")
        node2 = cluster.nodes[2].process
        assert node2 is not None and node2.returncode == 1
        tail = cluster.log_tail(2, 20_000)
        stopped = [json.loads(line) for line in tail.splitlines()
                   if '"event": "node_key_rotated"' in line]
        assert len(stopped) == 1, tail
        assert (stopped[0]["head"], stopped[0]["from_height"]) == (height - 1, height)
        assert f"it takes up the new key staged in {staged}" in stopped[0]["detail"]
        last = tail.rstrip().splitlines()[-1]
        assert last.startswith(f"healthnode: error: this node's key {old.public_key.hex()[:16]} "
                               f"is replaced by {new_key.hex()[:16]} from height {height}"), last
        assert last.endswith(f"it takes up the new key staged in {staged} (docs/operations.md, "
                             f"'Rotating a node key')"), last
        assert (home / EMERGENCY_SHARE_FILE).read_bytes() == share_file

        # 4. started again: the staged key is the node's key, the old key's file is gone
        cluster.start(2)
        cluster.wait_ready(2)
        assert keys.read_node_public_key(home / KEY_FILE) == new_key
        assert not staged.exists()
        assert old.seed.hex() not in (home / KEY_FILE).read_text()
        status = admin(home, "status")
        assert status["peer_id"] == crypto.peer_id(new_key)
        assert new_key.hex() in status["validators"]
        assert old.public_key.hex() not in status["validators"]
        members = admin(cluster.homes[0], "validators")["authorities"]["members"]
        assert {k: v for k, v in members[2].items() if k != "addresses"} == {
            "public_key": new_key.hex(), "peer_id": crypto.peer_id(new_key), "name": "node2"}
        assert (home / EMERGENCY_SHARE_FILE).read_bytes() == share_file

        # 5. node3 stops: every block now needs node2's precommit, under its new key, and
        # node2 hears its peers although their configs name its old peer id (links back)
        cluster.nodes[3].stop()
        first = cluster.height(0) + 1
        drive(cluster, patient, lambda: cluster.height(2) >= first + 3, "blocks without node3")
        for at in range(height, first + 3):
            assert old.public_key.hex() not in signers(cluster, 0, at), at
        for at in range(first + 1, first + 3):
            assert new_key.hex() in signers(cluster, 0, at), at
        assert new_key.hex() in {signer["public_key"] for signer in admin(
            home, "certificate", height=first + 2)["signers"]}  # the runbook's last command
        assert any(peer["public_key"] == new_key.hex() and peer["connected"]
                   for peer in cluster.admin(0, "peers"))

        # 6. the old key signs nothing more: a vote signed with it, by hand with its next
        # nonce (the mempool refuses a used one before the rules see it), is refused
        refusals = []
        for nonce in range(1, 8):
            forged = ValidatorVote(signer=b"", nonce=nonce, action="remove",
                                   subject=cluster.public_keys[3], name="node3").sign(old,
                                                                                      CHAIN_ID)
            with pytest.raises(AdminError) as refused:
                cluster.admin(0, "submit_tx", tx=forged.encode().hex())
            refusals.append(str(refused.value))
            if "nonce_replayed" not in refusals[-1]:
                break
        assert "transaction refused: key_rotated: this node key was replaced by " \
               f"{new_key.hex()[:16]} from height {height}" in refusals[-1], refusals

        # 7. a break-glass read through node2, whose share is one of the three up
        cli.break_glass_read(people, "potassium 4.1 mmol/L\n", node=1)
    finally:
        cluster.close()
