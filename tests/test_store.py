"""The LevelDB chain store: what it keeps, what it refuses to open, and that its state is the
ledger's state."""

from __future__ import annotations

from pathlib import Path

import plyvel
import pytest

from healthnode.codec import pack
from healthnode.crypto import ZERO_HASH, digest
from healthnode.errors import StoreError
from healthnode.ledger import queries, rules, smt
from healthnode.ledger.replay import replay_chain
from healthnode.ledger.state import NONCE, RECORD, TREE_NODE
from healthnode.protocol.block import VerificationError
from healthnode.protocol.tx import ConsentGrant, ProviderRegister
from healthnode.store import leveldb
from healthnode.store.blob_files import TEMPORARY_PREFIX, BlobFiles
from healthnode.store.leveldb import RECENT_BLOCKS, ChainStore
from tests.chain import AUTHORITIES, World, identity, make_genesis, tag

PATIENT = identity("patient")
CLINICIAN = identity("clinician")
LAB_TAG = tag(b"t" * 32, "lab")


def build_world(blocks: int = 3) -> World:
    world = World()
    world.commit(world.tx(ProviderRegister, AUTHORITIES[0], provider=CLINICIAN.public_key,
                          roles=("clinician",), display_name="Dr C"))
    for _ in range(blocks - 1):
        world.commit(world.anchor(PATIENT, PATIENT, [LAB_TAG]),
                     world.anchor(PATIENT, PATIENT, [LAB_TAG]))
    return world


def copy_into(store: ChainStore, world: World) -> None:
    """Commit the world's blocks into `store`, applying each on the store's own state."""
    for block, certificate in world.blocks[store.head.height:]:
        store.commit(block, certificate, rules.apply_block(store, block))


def test_a_new_store_starts_at_the_genesis_state(tmp_path: Path) -> None:
    genesis = make_genesis()
    with ChainStore.open(tmp_path / "chain", genesis) as store:
        assert store.head.height == 0 and store.head.block_hash == ZERO_HASH
        assert rules.chain_meta(store).state_hash == rules.genesis_state(genesis).state_hash
        assert rules.authorities(store, 1) == genesis.authority_keys


def test_committed_blocks_state_and_indexes_survive_a_reopen(tmp_path: Path) -> None:
    world = build_world()
    with ChainStore.open(tmp_path / "chain", world.genesis) as store:
        copy_into(store, world)
    with ChainStore.open(tmp_path / "chain", world.genesis) as store:
        assert store.head.height == world.height
        assert store.head.block_hash == world.prev_hash
        for height, (block, certificate) in enumerate(world.blocks, start=1):
            assert store.block(height) == block
            assert store.block_by_hash(block.hash) == block
            assert store.certificate(height) == certificate
            for index, tx in enumerate(block.txs):
                assert store.tx_location(tx.hash) == (height, index)
                assert store.tx(tx.hash) == tx
        assert store.state_items() == world.state.items()
        assert len(queries.patient_records(store, PATIENT.public_key)) == 2 * (world.height - 1)


def test_the_last_committed_blocks_are_served_as_committed_and_older_ones_from_disk(
        tmp_path: Path) -> None:
    world = build_world(blocks=RECENT_BLOCKS + 2)
    with ChainStore.open(tmp_path / "chain", world.genesis) as store:
        copy_into(store, world)
        for height, (block, _) in enumerate(world.blocks, start=1):
            served = store.block(height)
            assert served == block
            # The newest RECENT_BLOCKS are the objects committed; older ones decoded again.
            assert (served is block) == (height > world.height - RECENT_BLOCKS)


def test_the_stored_chain_replays_from_genesis_to_the_stored_state(tmp_path: Path) -> None:
    world = build_world(5)
    with ChainStore.open(tmp_path / "chain", world.genesis) as store:
        copy_into(store, world)
        assert replay_chain(world.genesis, store.blocks()).items() == store.state_items()


def test_replay_refuses_a_chain_whose_certificate_is_not_a_quorum(tmp_path: Path) -> None:
    world = build_world(2)
    block, _ = world.blocks[-1]
    from tests.chain import certify
    weak = certify(block, AUTHORITIES[:2])
    with pytest.raises(VerificationError, match="needs 3"):
        replay_chain(world.genesis, [*world.blocks[:-1], (block, weak)])


def test_a_store_of_another_genesis_is_refused(tmp_path: Path) -> None:
    ChainStore.open(tmp_path / "chain", make_genesis(4)).close()
    with pytest.raises(StoreError, match="another genesis"):
        ChainStore.open(tmp_path / "chain", make_genesis(3))


def test_a_store_in_use_is_refused(tmp_path: Path) -> None:
    genesis = make_genesis()
    with ChainStore.open(tmp_path / "chain", genesis), pytest.raises(StoreError, match="in use"):
        ChainStore.open(tmp_path / "chain", genesis)


def test_a_foreign_leveldb_is_refused(tmp_path: Path) -> None:
    db = plyvel.DB(str(tmp_path / "other"), create_if_missing=True)
    db.put(b"somebody", b"else's data")
    db.close()
    with pytest.raises(StoreError, match="not a healthnode chain store"):
        ChainStore.open(tmp_path / "other", make_genesis())


def _tamper(path: Path, key: bytes, value: bytes | None) -> None:
    db = plyvel.DB(str(path))
    if value is None:
        db.delete(key)
    else:
        db.put(key, value)
    db.close()


@pytest.mark.parametrize(("name", "key", "value", "problem"), [
    ("head_points_elsewhere", b"Mhead", pack([3, b"\x01" * 32]), "hash does not match"),
    ("head_is_garbage", b"Mhead", b"\xc1", "does not verify"),
    ("head_block_missing", b"B" + (3).to_bytes(8, "big"), None, "missing"),
    ("head_block_damaged", b"B" + (3).to_bytes(8, "big"), b"\x93\x01\x02", "damaged"),
    ("certificate_missing", b"C" + (3).to_bytes(8, "big"), None, "certificate"),
    ("head_ahead_of_state", b"Mhead", pack([2, b"\x01" * 32]), "state is at height 3"),
])
def test_a_store_whose_head_does_not_verify_is_refused(
        tmp_path: Path, name: str, key: bytes, value: bytes | None, problem: str) -> None:
    world = build_world(3)
    with ChainStore.open(tmp_path / "chain", world.genesis) as store:
        copy_into(store, world)
    _tamper(tmp_path / "chain", key, value)
    with pytest.raises(StoreError, match=problem):
        ChainStore.open(tmp_path / "chain", world.genesis)


def test_the_guard_record_is_kept_across_reopen(tmp_path: Path) -> None:
    genesis = make_genesis()
    with ChainStore.open(tmp_path / "chain", genesis) as store:
        assert store.read_guard(b"safety") is None
        store.write_guard(b"safety", b"signed h=5 r=0")
    with ChainStore.open(tmp_path / "chain", genesis) as store:
        assert store.read_guard(b"safety") == b"signed h=5 r=0"


def test_queries_answer_from_the_store(tmp_path: Path) -> None:
    world = build_world(2)
    records = [record_id for chain in queries.patient_records(world.state, PATIENT.public_key)
               for record_id in (chain[0].record_id,)]
    grant = world.tx(ConsentGrant, PATIENT, grantee=CLINICIAN.public_key, actions=("read",),
                     scope_records=tuple(sorted(records)), scope_tags=(),
                     expires_at_ms=world.time_ms + 60_000, key_wraps=(), tag_key_wrap=None)
    world.commit(grant)
    with ChainStore.open(tmp_path / "chain", world.genesis) as store:
        copy_into(store, world)
        by_patient = queries.grants_by_patient(store, PATIENT.public_key)
        by_grantee = queries.grants_by_grantee(store, CLINICIAN.public_key)
        assert [entry.grant_id for entry in by_patient] == [grant.hash]
        assert by_grantee == by_patient
        assert queries.grant_in_force(store, grant.hash, world.time_ms)
        assert not queries.grant_in_force(store, grant.hash, world.time_ms + 60_000)
        assert not queries.grant_in_force(store, grant.hash, world.time_ms - 1)


def test_the_state_tree_is_kept_for_recent_heights_and_pruned_below(tmp_path: Path) -> None:
    """Each height's root and nodes are kept for TREE_VERSIONS_KEPT heights, so a proof at a
    recent height verifies against that height's header; older versions are deleted at commit,
    and the tree's size follows the state, not the number of blocks."""
    world = World()
    record = world.anchor(PATIENT, PATIENT, [LAB_TAG])
    world.commit(record)
    for _ in range(12):  # the patient's nonce changes at every height
        world.commit(world.anchor(PATIENT, PATIENT, [LAB_TAG]))
    nonce_key = NONCE + PATIENT.public_key
    with ChainStore.open(tmp_path / "chain", world.genesis) as store:
        store.tree_versions_kept = 3
        copy_into(store, world)
        head = store.head.height
        kept = [h for h in range(head + 1) if store.tree_root(h) is not None]
        assert kept == [head - 3, head - 2, head - 1, head]
        for height in kept:
            root = rules.tree_root_at(store, height)
            header = store.block(height)
            assert header is not None and smt.root_hash(root) == header.header.state_hash
            for key in (nonce_key, RECORD + record.hash, RECORD + b"\x00" * 32):
                value = world.state_at(height).get(key)
                proof = smt.prove(store, root, digest(key))
                assert smt.verify(header.header.state_hash, digest(key),
                                  None if value is None else digest(value), proof)
        nodes = sum(1 for _ in store._db.iterator(prefix=leveldb.TREE + TREE_NODE))
        live = len(store.state_items())
        assert nodes < 4 * live  # the live tree and three older versions' few changed paths


def test_the_root_after_a_reopen_is_the_one_before(tmp_path: Path) -> None:
    world = build_world(4)
    with ChainStore.open(tmp_path / "chain", world.genesis) as store:
        copy_into(store, world)
        before = rules.chain_meta(store).state_hash
    with ChainStore.open(tmp_path / "chain", world.genesis) as store:
        assert rules.chain_meta(store).state_hash == before
        world.commit(world.anchor(PATIENT, PATIENT, [LAB_TAG]))
        copy_into(store, world)
        assert rules.chain_meta(store).state_hash == world.blocks[-1][0].header.state_hash


# --- ciphertexts as files (store/blob_files.py) -------------------------------------------------

def test_a_ciphertext_is_a_file_checked_on_read_and_gone_when_deleted(tmp_path: Path) -> None:
    blobs = BlobFiles(tmp_path / "blobs")
    data = b"\x01" * 5000
    kept = blobs.put(data)
    assert blobs.get(kept) == data and blobs.has(kept) and list(blobs.hashes()) == [kept]
    path = blobs.path(kept)
    assert path.stat().st_mode & 0o777 == 0o600
    path.write_bytes(b"\x02" * 5000)
    with pytest.raises(StoreError, match="is damaged"):
        blobs.get(kept)
    blobs.delete(kept)
    assert not path.exists() and blobs.get(kept) is None and list(blobs.hashes()) == []


def test_an_upload_cut_short_leaves_no_ciphertext_and_no_pending_mark(tmp_path: Path) -> None:
    """A crash after the pending mark and before the file is in place: the partial file and
    the mark both go when the uploads are recovered."""
    with ChainStore.open(tmp_path / "chain", make_genesis()) as store:
        data = b"\x05" * 3000
        ciphertext_hash = digest(data)
        store.put_blob(data, (1000, b"\x07" * 32))
        path = BlobFiles(tmp_path / "blobs").path(ciphertext_hash)
        path.rename(path.with_name(f"{TEMPORARY_PREFIX}{path.name}-123"))
        assert list(store.pending_blobs()) == []
        assert list(path.parent.iterdir()) == []
        assert list(store.pending_blobs()) == []  # the mark went too


def test_a_rewrite_cut_short_is_undone_or_finished_at_the_next_open(tmp_path: Path) -> None:
    chain = tmp_path / "chain"
    world = World()
    world.commit()
    world.commit()
    with ChainStore.open(chain, world.genesis) as store:
        for block, certificate in world.blocks:
            store.commit(block, certificate, rules.apply_block(store, block))
        head = store.head
    assert head.height == 2
    # Cut after the old store moved aside, before the new one was in place: undone.
    chain.rename(chain.with_name("chain" + leveldb.OLD_SUFFIX))
    (tmp_path / ("chain" + leveldb.REWRITE_SUFFIX)).mkdir()  # half copied
    with ChainStore.open(chain, world.genesis) as store:
        assert store.head == head
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chain"]
    # Cut after the new one was in place, before the old one was deleted: finished.
    (tmp_path / ("chain" + leveldb.OLD_SUFFIX)).mkdir()
    (tmp_path / "chain.old").mkdir()  # an operator's own copy is none of the store's business
    with ChainStore.open(chain, world.genesis) as store:
        store.rewrite()
        assert store.head == head
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chain", "chain.old"]


def test_purge_statements_go_a_few_a_round_and_wait_while_held_or_refused(
        tmp_path: Path) -> None:
    """The blob keeper states purges (net/blobs.py) at most PURGE_STATEMENTS_PER_ROUND a round;
    one the node cannot state now stays queued, and none goes while the node is held."""
    from healthnode.clock import SystemClock
    from healthnode.net.blobs import PURGE_STATEMENTS_PER_ROUND, BlobKeeper

    with ChainStore.open(tmp_path / "chain", make_genesis()) as store:
        keeper = BlobKeeper(store, None, list, lambda _reason: None,  # type: ignore[arg-type]
                            SystemClock())
        stated: list[bytes] = []
        room = [3]

        def state(record_id: bytes) -> bool:
            if room[0] == 0:
                return False
            room[0] -= 1
            stated.append(record_id)
            return True

        keeper.on_purged = state
        for number in range(20):
            keeper._unstated[bytes([number]) * 32] = None
        keeper.statements_held = lambda: True
        assert keeper.state_purges() == 0 and stated == []
        keeper.statements_held = lambda: False
        assert keeper.state_purges() == 3  # the node had room for three
        room[0] = 100
        assert keeper.state_purges() == PURGE_STATEMENTS_PER_ROUND
        assert len(stated) == 3 + PURGE_STATEMENTS_PER_ROUND
        assert len(keeper._unstated) == 20 - len(stated)
        assert stated == [bytes([n]) * 32 for n in range(len(stated))]  # oldest first
