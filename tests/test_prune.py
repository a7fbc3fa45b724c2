"""Pruning block bodies (store/leveldb.py `prune`) and `healthnode verify` on a store that pruned,
over real LevelDB stores filled from a ledger world: headers and certificates stay, the
transactions the state names stay readable, the others go; never above the oldest snapshot; a
bounded number of heights per call; and verify checks the headers from the genesis, re-executes
from the snapshot, and names what a damaged header, certificate or snapshot breaks."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from msgspec.structs import replace

from healthnode import cli
from healthnode.home.config import write_genesis
from healthnode.home.modes import private_umask
from healthnode.ledger import rules, snapshot
from healthnode.ledger.replay import check_headers
from healthnode.ledger.rules import Execution
from healthnode.ledger.state import MemoryState
from healthnode.protocol.block import Block, CommitCertificate, VerificationError
from healthnode.protocol.tx import (
    AccessLog,
    ConsentGrant,
    ConsentGrantPurposes,
    RecordAnchor,
    RepresentativeAct,
)
from healthnode.store.leveldb import CERTIFICATE, HEADER, SNAPSHOT, ChainStore
from tests.chain import World, certify
from tests.test_snapshot import BY_KEY, build, fill

KEEP = 2


class SignedBySet(World):
    """A world whose certificates (and so the next block's `last_commit`) are signed by the
    authority set in force at their height, as a real network's are: `verify` checks every one
    of them, through the set change that `build` makes."""

    def finalize(self, block: Block, execution: Execution) -> CommitCertificate:
        keys = rules.authorities(MemoryState(self.state_at(block.height - 1)), block.height)
        super().finalize(block, execution)
        certificate = certify(block, [BY_KEY[key] for key in keys])
        self.blocks[-1] = (block, certificate)
        self.last_commit = certificate
        return certificate


@pytest.fixture
def world() -> World:
    return build(records=20, world=SignedBySet())


def _named(world: World, height: int) -> list[bool]:
    """Whether the state at the head names each transaction of block `height`."""
    return [snapshot.names(world.state, tx, height) for tx in world.blocks[height - 1][0].txs]


def _store(path: Path, world: World, snapshot_at: int | None) -> ChainStore:
    """A store of the whole world's chain, with a snapshot at `snapshot_at` (None: none)."""
    with private_umask():
        store = ChainStore.open(path, world.genesis)
    if snapshot_at is not None:
        fill(store, world, snapshot_at)
        assert store.write_snapshot(store.pin(), keep=2) is not None
    fill(store, world, world.height)
    return store


def _prune_all(store: ChainStore, keep_blocks: int = KEEP) -> int:
    calls = 0
    while store.prune(keep_blocks):
        calls += 1
    return calls


def test_nothing_is_pruned_without_a_snapshot_or_with_keep_blocks_zero(
        world: World, tmp_path: Path) -> None:
    with _store(tmp_path / "chain", world, None) as store:
        assert store.prune(KEEP) == 0 and store.pruned == 0
        assert store.write_snapshot(store.pin(), keep=2) is not None
        assert store.prune(0) == 0 and store.first_body == 1


def test_pruned_heights_keep_header_certificate_and_the_transactions_the_state_names(
        world: World, tmp_path: Path) -> None:
    snapshot_at = world.height - 3
    with _store(tmp_path / "chain", world, snapshot_at) as store:
        head = store.head.height
        _prune_all(store)
        assert store.pruned == min(head - KEEP, snapshot_at) == snapshot_at
        assert store.first_body == snapshot_at + 1
        kinds_kept, kinds_gone = set(), set()
        for height in range(1, head + 1):
            block, _ = world.blocks[height - 1]
            assert store.header(height) == block.header
            assert store.certificate(height) is not None
            if height > store.pruned:
                assert store.block(height) == block
                continue
            assert store.block(height) is None and store.block_by_hash(block.hash) is None
            for tx, named in zip(block.txs, _named(world, height), strict=True):
                if named:
                    assert store.tx(tx.hash) == tx
                    assert store.tx_location(tx.hash)[0] == height  # type: ignore[index]
                    kinds_kept.add(type(tx))
                else:
                    assert store.tx(tx.hash) is None and store.tx_location(tx.hash) is None
                    kinds_gone.add(type(tx).__name__)
        # a representative's grant is kept (its act's hash is the grant id), its revoke is not
        assert kinds_kept == {RecordAnchor, ConsentGrant, ConsentGrantPurposes, RepresentativeAct,
                              AccessLog}
        assert kinds_gone == {"ProviderRegister", "ValidatorVote", "RepresentativeAppoint",
                              "RepresentativeAct"}
        assert store.state_items() == world.state.items()  # the state is not touched
        # The snapshot still serves every chunk: the transactions it names are kept (L).
        manifest = store.snapshot_manifest(snapshot_at)
        assert manifest is not None
        assert all(store.snapshot_chunk(manifest, i) is not None
                   for i in range(16 ** manifest.depth))
        with pytest.raises(Exception, match="not held here"):
            next(store.blocks())


def test_pruning_never_passes_the_oldest_snapshot_nor_the_kept_heights(
        world: World, tmp_path: Path) -> None:
    with _store(tmp_path / "chain", world, 4) as store:
        _prune_all(store, keep_blocks=KEEP)
        assert store.pruned == 4  # the snapshot, far below head - KEEP
        assert store.write_snapshot(store.pin(), keep=2) is not None  # a newer one, at the head
        _prune_all(store, keep_blocks=KEEP)
        assert store.pruned == 4  # the oldest kept is still 4
        assert store.write_snapshot(store.pin(), keep=1) is not None  # 4 is deleted
        _prune_all(store, keep_blocks=KEEP)
        assert store.pruned == store.head.height - KEEP


def test_each_call_prunes_a_bounded_number_of_heights_and_the_next_goes_on(
        world: World, tmp_path: Path) -> None:
    path = tmp_path / "chain"
    store = _store(path, world, world.height - 1)
    assert store.prune(KEEP, heights_max=3) == 3 and store.pruned == 3
    store.close()
    with ChainStore.open(path, world.genesis) as reopened:
        assert reopened.pruned == 3 and reopened.block(3) is None and reopened.block(4)
        calls = 1 + sum(1 for _ in iter(lambda: reopened.prune(KEEP, heights_max=3), 0))
        assert reopened.pruned == world.height - KEEP
        assert calls == -(-(world.height - KEEP) // 3)


# --- verify -------------------------------------------------------------------------------


def _pruned_backup(world: World, root: Path, snapshot_at: int) -> Path:
    """A directory as `verify` takes a backup: a pruned chain store and the genesis."""
    with private_umask():
        root.mkdir()
        write_genesis(world.genesis, root / "genesis.json")
    with _store(root / "chain", world, snapshot_at) as store:
        _prune_all(store)
        assert store.pruned == snapshot_at
    return root


def _verify(where: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, object],
                                                                          str]:
    code = cli.main(["verify", "--home", str(where)])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else {}), err


def test_verify_checks_headers_then_re_executes_from_the_snapshot(
        world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    snapshot_at = world.height - 3
    where = _pruned_backup(world, tmp_path / "b", snapshot_at)
    code, answer, err = _verify(where, capsys)
    assert code == 0, err
    assert answer["ok"] and answer["height"] == world.height
    assert answer["replayed_from"] == answer["headers_checked_to"] == snapshot_at
    assert answer["pruned_to"] == snapshot_at


def test_verify_of_a_store_that_pruned_nothing_re_executes_from_the_genesis(
        world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with private_umask():
        (tmp_path / "b").mkdir()
        write_genesis(world.genesis, tmp_path / "b" / "genesis.json")
    _store(tmp_path / "b" / "chain", world, world.height - 3).close()
    code, answer, err = _verify(tmp_path / "b", capsys)
    assert code == 0, err
    assert answer["replayed_from"] == 0 and answer["pruned_to"] == 0


@pytest.fixture
def damaged(world: World, tmp_path: Path) -> Iterator[tuple[World, Path]]:
    yield world, _pruned_backup(world, tmp_path / "b", world.height - 3)


def _damage(world: World, where: Path, key: bytes, value: bytes) -> None:
    with ChainStore.open(where / "chain", world.genesis) as store:
        store._db.put(key, value)


def test_verify_names_a_changed_pruned_header(
        damaged: tuple[World, Path], capsys: pytest.CaptureFixture[str]) -> None:
    world, where = damaged
    header = world.blocks[4][0].header  # height 5, pruned
    _damage(world, where, HEADER + (5).to_bytes(8, "big"),
            replace(header, time_ms=header.time_ms + 1).encode())
    code, _, err = _verify(where, capsys)
    assert code == 1 and "verify failed at height 5: certificate" in err


def test_verify_names_a_certificate_of_another_block(
        damaged: tuple[World, Path], capsys: pytest.CaptureFixture[str]) -> None:
    world, where = damaged
    _damage(world, where, CERTIFICATE + (3).to_bytes(8, "big"), world.blocks[3][1].encode())
    code, _, err = _verify(where, capsys)
    assert code == 1 and "verify failed at height 3: certificate: it is for another block" in err


def test_verify_names_a_snapshot_that_does_not_fold_to_the_certified_root(
        damaged: tuple[World, Path], capsys: pytest.CaptureFixture[str]) -> None:
    world, where = damaged
    height = world.height - 3
    with ChainStore.open(where / "chain", world.genesis) as store:
        keys = store._db.iterator(prefix=SNAPSHOT + height.to_bytes(8, "big"),
                                  include_value=False)
        pair = next(keys)
        keys.close()
        store._db.delete(pair)  # a pair left out
    code, _, err = _verify(where, capsys)
    assert code == 1 and f"verify failed at height {height}: snapshot" in err


def test_a_set_change_with_no_kept_head_is_refused(world: World, tmp_path: Path) -> None:
    """The fourth authority leaves (tests/test_snapshot.py `build`): the headers check with the
    kept head that proves the new set; without it, the first header the new set signed is
    refused, and so is a head whose proof is of another height."""
    chain = [(block.header, certificate) for block, certificate in world.blocks]
    assert len(chain[-1][1].signatures) == 3  # the set after the change signs
    with _store(tmp_path / "chain", world, None) as store:
        changes = {head.header.height: head for head in store.set_changes(world.height)}
    assert len(changes) == 1
    assert check_headers(world.genesis, chain, changes, 1) == chain[-1][0]
    changed_at = next(iter(changes))
    with pytest.raises(VerificationError, match=f"height {changed_at + 1}: authority set"):
        check_headers(world.genesis, chain, {}, 1)
    moved = {changed_at - 1: replace(changes[changed_at], header=chain[changed_at - 2][0])}
    with pytest.raises(VerificationError, match="proves no set for the next height"):
        check_headers(world.genesis, chain, moved, 1)


def test_verify_on_a_node_that_joined_by_state_sync_follows_the_set_changes_to_its_base(
        world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A store made from a snapshot (SnapshotInstall) holds no header below its base but the
    set-change heads: verify checks those from the genesis, then the base's header and every
    block after it; then it prunes up to a newer snapshot and verify still passes."""
    from healthnode.protocol.statesync import ChainProof
    from healthnode.store.leveldb import SnapshotInstall
    from tests.test_snapshot import LAB_TAG, PATIENT, certified, chunks

    height = world.height
    with _store(tmp_path / "source", world, height) as source:
        manifest = source.snapshot_manifest(height)
        assert manifest is not None
        heads = tuple(source.set_changes(height - 1))
        assert len(heads) == 1
        snapshot.follow(world.genesis, ChainProof(height, heads), manifest)
        with private_umask():
            (tmp_path / "b").mkdir()
            write_genesis(world.genesis, tmp_path / "b" / "genesis.json")
        install = SnapshotInstall(tmp_path / "b" / "chain", world.genesis, manifest)
        for chunk in chunks(source, manifest):
            install.add_chunk(snapshot.check_chunk(manifest, chunk))
        install.finish(*certified(world, height), heads)
    for _ in range(3):
        world.commit(world.anchor(PATIENT, PATIENT, [LAB_TAG]))
    with ChainStore.open(tmp_path / "b" / "chain", world.genesis) as taken:
        fill(taken, world, world.height)
        assert taken.base == height and taken.header(height - 1) is None
    code, answer, err = _verify(tmp_path / "b", capsys)
    assert code == 0, err
    assert answer["base"] == answer["replayed_from"] == height and answer["pruned_to"] == 0
    with ChainStore.open(tmp_path / "b" / "chain", world.genesis) as taken:
        assert taken.write_snapshot(taken.pin(), keep=1) is not None
        _prune_all(taken, keep_blocks=1)
        assert taken.pruned == world.height - 1
    code, answer, err = _verify(tmp_path / "b", capsys)
    assert code == 0, err
    assert answer["replayed_from"] == world.height and answer["pruned_to"] == world.height - 1
