"""Snapshots of the state and their check (ledger/snapshot.py), over real LevelDB stores: a
snapshot written by one store, followed from the genesis, checked chunk by chunk and installed
into another, goes on executing blocks to the same roots; and every lie a peer can tell about a
chunk, a manifest or the chain to it is caught."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from msgspec.structs import replace

from healthnode.codec import pack
from healthnode.ledger import replay, rules, smt, snapshot
from healthnode.ledger.state import META_KEY, RECORD, MemoryState
from healthnode.protocol.block import Block, CommitCertificate, VerificationError
from healthnode.protocol.statesync import (
    ChainProof,
    SnapshotChunk,
    StatePair,
    decode_statesync_answer,
)
from healthnode.protocol.tx import (
    ACT_UNSIGNED,
    AccessLog,
    ConsentGrant,
    ConsentGrantPurposes,
    ConsentRevoke,
    ProviderRegister,
    RepresentativeAct,
    RepresentativeAppoint,
    ValidatorVote,
)
from healthnode.store.leveldb import SET_CHANGE, SNAPSHOT, TX, ChainStore, SnapshotInstall
from tests.chain import AUTHORITIES, World, certify, identity, tag

PATIENT = identity("snap-patient")
OTHER = identity("snap-other")
CLINICIAN = identity("snap-clinician")
PARENT = identity("snap-parent")
LAB_TAG = tag(b"t" * 32, "lab")
BY_KEY = {a.public_key: a for a in AUTHORITIES}


def certified(world: World, height: int) -> tuple[Block, CommitCertificate]:
    """Block `height` with a certificate by the authority set in force at it."""
    block = world.blocks[height - 1][0]
    keys = rules.authorities(MemoryState(world.state_at(height - 1)), height)
    return block, certify(block, [BY_KEY[key] for key in keys])


def build(records: int = 40, world: World | None = None) -> World:
    world = world or World()
    a0, a1, a2, a3 = AUTHORITIES
    world.commit(world.tx(ProviderRegister, a0, provider=CLINICIAN.public_key,
                          roles=("clinician",), display_name="Dr C"))
    anchors = []
    for start in range(0, records, 10):
        batch = [world.anchor(PATIENT if i % 2 else OTHER, PATIENT if i % 2 else OTHER,
                              [LAB_TAG]) for i in range(start, start + 10)]
        world.commit(*batch)
        anchors += batch
    grant = world.tx(ConsentGrant, PATIENT, grantee=CLINICIAN.public_key, actions=("read",),
                     scope_records=(), scope_tags=(LAB_TAG,), expires_at_ms=None, key_wraps=(),
                     tag_key_wrap=None)
    world.commit(grant)
    readable = [a for a in anchors if a.patient == PATIENT.public_key][:3]
    world.commit(*[world.tx(AccessLog, a0, reader=CLINICIAN.public_key,
                            patient=PATIENT.public_key, record_id=a.hash, grant_id=grant.hash,
                            break_glass=0, purpose="treatment", sealed_note=None)
                   for a in readable])
    # Grants with purposes: the patient's own, and a representative's (the act's hash is the
    # grant id: the state names the act), then the representative's revoke of it (an act that
    # no pair names).
    world.commit(world.tx(RepresentativeAppoint, PATIENT, representative=PARENT.public_key,
                          scopes=("grant",), ends_at_ms=world.time_ms + 10**9, key_wraps=(),
                          tag_key_wrap=None),
                 world.tx(ConsentGrantPurposes, PATIENT, grantee=CLINICIAN.public_key,
                          actions=("read",), scope_records=(), scope_tags=(LAB_TAG,),
                          expires_at_ms=None, key_wraps=(), tag_key_wrap=None,
                          purposes=("research",)))
    by_representative = _act(world, ConsentGrantPurposes, grantee=CLINICIAN.public_key,
                             actions=("read",), scope_records=(), scope_tags=(LAB_TAG,),
                             expires_at_ms=None, key_wraps=(), tag_key_wrap=None,
                             purposes=("treatment",))
    world.commit(by_representative)
    world.commit(_act(world, ConsentRevoke, grant_id=by_representative.hash))
    # The fourth authority is voted out: the set changes two blocks later.
    world.commit(*[world.tx(ValidatorVote, signer, action="remove", subject=a3.public_key,
                            name="hospital-3") for signer in (a0, a1, a2)])
    world.commit_until(world.height + 4)
    return world


def _act(world: World, cls: type[Any], **fields: Any) -> RepresentativeAct:
    """PARENT's act for PATIENT: `cls(...)` as the patient's, with the act's nonce."""
    nonce = world.nonces.get(PARENT.public_key, 0) + 1
    world.nonces[PARENT.public_key] = nonce
    act = cls(signer=PATIENT.public_key, nonce=nonce, signature=ACT_UNSIGNED, **fields)
    wrapped: RepresentativeAct = world.tx(RepresentativeAct, PARENT, nonce=nonce, act=act)
    return wrapped


def fill(store: ChainStore, world: World, until: int) -> None:
    for height in range(store.head.height + 1, until + 1):
        block, certificate = certified(world, height)
        store.commit(block, certificate, rules.apply_block(store, block))


def without_meta(store: ChainStore) -> dict[bytes, bytes]:
    """The state but the chain meta, whose root version is the snapshot's height in a store
    that took a snapshot (every node of it written then) and older in one that executed."""
    items = store.state_items()
    del items[META_KEY]
    return items


def chunks(store: ChainStore, manifest: snapshot.SnapshotManifest) -> list[SnapshotChunk]:
    out = []
    for index in range(16 ** manifest.depth):
        frame = store.snapshot_chunk(manifest, index)
        assert frame is not None
        answer = decode_statesync_answer(frame)
        assert isinstance(answer, SnapshotChunk)
        out.append(answer)
    return out


@pytest.fixture
def written(tmp_path: Path) -> tuple[World, ChainStore, snapshot.SnapshotManifest]:
    world = build()
    store = ChainStore.open(tmp_path / "a" / "chain", world.genesis)
    fill(store, world, world.height)
    manifest = store.write_snapshot(store.pin(), keep=2)
    assert manifest is not None
    yield world, store, manifest
    store.close()


def test_a_snapshot_followed_checked_and_installed_goes_on_as_the_replayed_store(
        written: tuple[World, ChainStore, snapshot.SnapshotManifest], tmp_path: Path) -> None:
    world, source, manifest = written
    height = manifest.head.header.height
    assert height == world.height and source.snapshots() == [height]
    chain = ChainProof(height, tuple(source.set_changes(height - 1)))
    assert len(chain.heads) == 1  # the last height of the first set
    trusted = snapshot.follow(world.genesis, chain, manifest)
    assert trusted.authorities == tuple(a.public_key for a in AUTHORITIES[:3])
    snapshot.check_manifest(manifest, trusted.state_root)
    install = SnapshotInstall(tmp_path / "b" / "chain", world.genesis, manifest)
    named = 0
    for chunk in chunks(source, manifest):
        checked = snapshot.check_chunk(manifest, chunk)
        named += len(checked.txs)
        install.add_chunk(checked)
    # every anchor, the three grants (one a representative's act) and each access.log
    assert named == 40 + 3 + 3
    block, certificate = certified(world, height)
    install.finish(block, certificate, chain.heads)
    with ChainStore.open(tmp_path / "b" / "chain", world.genesis) as taken:
        assert taken.head == source.head and taken.base == height
        assert without_meta(taken) == without_meta(source)  # indexes rebuilt
        mine, theirs = rules.chain_meta(taken), rules.chain_meta(source)
        assert (mine.height, mine.time_ms, mine.state_hash) == \
            (theirs.height, theirs.time_ms, theirs.state_hash)
        for key, _ in source.scan(RECORD):
            record_id = key[len(RECORD):]
            assert taken.tx(record_id) == source.tx(record_id)
            assert taken.tx_location(record_id)[0] == source.tx_location(record_id)[0]
        assert taken.snapshots() == [height] and taken.snapshot_manifest(height) == manifest
        assert taken.set_changes(height) == \
            list(chain.heads)
        # It executes on to the same roots (apply_block checks each header's state hash).
        world.commit(world.anchor(PATIENT, PATIENT, [LAB_TAG]))
        world.commit()
        fill(taken, world, world.height)
        fill(source, world, world.height)
        assert without_meta(taken) == without_meta(source)
        assert rules.chain_meta(taken).state_hash == rules.chain_meta(source).state_hash
        # and serves the same chunks it took.
        again = ChainProof(height, tuple(taken.set_changes(height - 1)))
        snapshot.check_manifest(manifest, snapshot.follow(world.genesis, again,
                                                          manifest).state_root)
        for index in range(16 ** manifest.depth):
            assert taken.snapshot_chunk(manifest, index) == \
                source.snapshot_chunk(manifest, index)


def _lie(chunk: SnapshotChunk, **changes: object) -> SnapshotChunk:
    """The chunk as a lying peer re-encodes it: it decodes (the codec takes it)."""
    lied = replace(chunk, **changes)
    answer = decode_statesync_answer(lied.encode())
    assert isinstance(answer, SnapshotChunk)
    return answer


def test_every_lie_about_a_chunk_is_caught(
        written: tuple[World, ChainStore, snapshot.SnapshotManifest]) -> None:
    _, store, manifest = written
    chunk = max(chunks(store, manifest), key=lambda c: len(c.pairs))
    assert len(chunk.pairs) >= 2 and chunk.txs
    snapshot.check_chunk(manifest, chunk)
    first, *rest = chunk.pairs
    flipped = StatePair(first.key, first.value[:-1] + bytes([first.value[-1] ^ 1]))
    lies = {
        "altered value": _lie(chunk, pairs=(flipped, *rest)),
        "left out": _lie(chunk, pairs=tuple(rest)),
        "twice": _lie(chunk, pairs=(first, first, *rest)),
        "reordered": _lie(chunk, pairs=(*rest, first)),
        "another height": _lie(chunk, height=chunk.height - 1),
        "another chunk's pairs": _lie(chunk, index=(chunk.index + 1) % 16 ** manifest.depth),
        "a named tx missing": _lie(chunk, txs=chunk.txs[1:]),
        "an extra tx": _lie(chunk, txs=(*chunk.txs, *chunk.txs[:1])),
    }
    for name, lied in lies.items():
        with pytest.raises(snapshot.SnapshotError):
            snapshot.check_chunk(manifest, lied)
            pytest.fail(f"the lie {name!r} was taken")


def test_a_manifest_or_chain_that_lies_is_caught(
        written: tuple[World, ChainStore, snapshot.SnapshotManifest]) -> None:
    world, store, manifest = written
    height = manifest.head.header.height
    chain = ChainProof(height, tuple(store.set_changes(height - 1)))
    trusted = snapshot.follow(world.genesis, chain, manifest)
    # A root swapped for another chunk's: the roots no longer fold to the certified root.
    roots = list(manifest.roots)
    full = [i for i, r in enumerate(roots) if r]
    roots[full[0]], roots[full[1]] = roots[full[1]], roots[full[0]]
    with pytest.raises(snapshot.SnapshotError, match="do not fold"):
        snapshot.check_manifest(replace(manifest, roots=tuple(roots)), trusted.state_root)
    # A chain that claims a head that is no change, or none at all, is refused.
    change = chain.heads[0]
    no_change = replace(change, next_set=replace(change.next_set, value=None))
    with pytest.raises(snapshot.SnapshotError, match="no change"):
        snapshot.follow(world.genesis, ChainProof(height, (no_change,)), manifest)
    with pytest.raises(snapshot.SnapshotError, match="at or above"):
        snapshot.follow(world.genesis, ChainProof(height, (manifest.head,)), manifest)
    with pytest.raises(snapshot.SnapshotError, match="up to height"):
        snapshot.follow(world.genesis, ChainProof(height - 1, chain.heads), manifest)
    # A head certified by keys that are no authority is refused.
    strangers = [identity(f"stranger-{i}") for i in range(3)]
    forged_head = replace(manifest.head, certificate=certify(
        world.blocks[height - 1][0], strangers), authorities=tuple(
            s.public_key for s in strangers))
    with pytest.raises(VerificationError):  # a set other than the one in force
        snapshot.follow(world.genesis, chain, replace(manifest, head=forged_head))


def test_a_chain_that_hides_a_set_change_is_refused(
        written: tuple[World, ChainStore, snapshot.SnapshotManifest], tmp_path: Path) -> None:
    """The snapshot's head is signed by three of the four authorities that the light client
    still trusts when the change is left out: more than a third, which the light client's
    skipping rule takes. But a chain proof's heads are the last heights of each set, so each is
    signed by exactly the set that the head before named: a head signed by another set means a
    change was left out. Taken, the hidden change would be kept for good (the store's A
    keyspace), served to the next node, and refused by `verify` on this one."""
    world, store, manifest = written
    height = manifest.head.header.height
    with pytest.raises(snapshot.SnapshotError, match="left out"):
        snapshot.follow(world.genesis, ChainProof(height, ()), manifest)
    # What `verify` would say of a store that took the chain without the change.
    assert len(store.set_changes(height - 1)) == 1
    headers = list(store.headers(1, height))
    with pytest.raises(VerificationError, match="authority set"):
        replay.check_headers(world.genesis, headers, {}, 1)


def test_only_the_newest_snapshots_are_kept_and_an_unfinished_one_is_deleted(
        tmp_path: Path) -> None:
    world = build(records=10)
    path = tmp_path / "chain"
    store = ChainStore.open(path, world.genesis)
    for height in (3, 5, 7):
        fill(store, world, height)
        assert store.write_snapshot(store.pin(), keep=2) is not None
    assert store.snapshots() == [7, 5]
    assert store.snapshot_manifest(3) is None and list(store.snapshot_pairs(3)) == []
    assert len(list(store.snapshot_pairs(5))) > 10
    # Pairs written without their manifest, as a crash leaves them: deleted at the next open.
    store._db.put(SNAPSHOT + (8).to_bytes(8, "big") + b"\x01" * 32, pack([b"k", b"v"]))
    assert len(list(store.snapshot_pairs(8))) == 1
    store.close()
    with ChainStore.open(path, world.genesis) as reopened:
        assert reopened.snapshots() == [7, 5]
        assert list(reopened.snapshot_pairs(8)) == []
        assert len(list(reopened.snapshot_pairs(7))) > 10


def test_migrating_from_format_3_proves_the_past_set_changes_by_replay(tmp_path: Path) -> None:
    """A format-3 store kept no set changes: the migration's replay proves them again, equal to
    what commit keeps, though the tree of those heights is long pruned."""
    world = build(records=10)
    path = tmp_path / "chain"
    with ChainStore.open(path, world.genesis) as store:
        store.tree_versions_kept = 2  # the tree of the change's height is pruned since
        fill(store, world, world.height)
        kept = store.set_changes(world.height)
        assert len(kept) == 1
        store._db.delete(SET_CHANGE + kept[0].header.height.to_bytes(8, "big"))
        assert store.set_changes(world.height) == []
        # Format 3 indexed a transaction by its block and place only.
        anchor_id = next(key for key, _ in store.scan(RECORD))[len(RECORD):]
        indexed = store._db.get(TX + anchor_id)
        store._db.put(TX + anchor_id, indexed[:12])
        assert store.keep_set_changes_by_replay() == 1
        assert store.set_changes(world.height) == kept
        assert store._db.get(TX + anchor_id) == indexed and len(indexed) == 20


def test_sixty_snapshots_in_a_row_leave_two_and_no_more_pairs(tmp_path: Path) -> None:
    """A node writes a snapshot every interval for months: the store keeps the newest two, and
    the snapshot keyspace holds their pairs and nothing of the older ones."""
    world = build(records=10)
    world.commit_until(60)
    with ChainStore.open(tmp_path / "chain", world.genesis) as store:
        fill(store, world, 3)
        for height in range(3, 61):
            fill(store, world, height)
            assert store.write_snapshot(store.pin(), keep=2) is not None
        assert store.snapshots() == [60, 59]
        with store._db.iterator(prefix=SNAPSHOT, include_value=False) as keys:
            held = sum(1 for _ in keys)
        assert held == len(list(store.snapshot_pairs(60))) + len(list(store.snapshot_pairs(59)))


def _fold(roots: tuple[bytes, ...], depth: int) -> bytes:
    """The root hash that `roots` fold to by the tree's shape rules alone (smt.join)."""
    subtrees = [None if not r else smt.Leaf(r[:32], r[32:]) if len(r) == 64 else
                smt.Ref(r, 0, False) for r in roots]
    return smt.root_hash(smt.join(subtrees, depth, 0).root)


def test_a_manifest_root_that_no_chunk_could_match_is_refused_before_any_chunk(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two roots fold to the certified root whatever their chunk, yet no chunk could ever
    rebuild them: a lone leaf named in another chunk of its parent (a lone leaf moves up, so
    its place among empty siblings is not in the hash), and the empty hash named as an
    internal node's beside other children (an empty child hashes as zeros). The manifest is
    refused at once, rather than every holder's chunk of it."""
    monkeypatch.setattr(snapshot, "CHUNK_BYTES_TARGET", 1)  # the deepest cut: 4,096 chunks
    world = build()
    with ChainStore.open(tmp_path / "chain", world.genesis) as store:
        fill(store, world, world.height)
        manifest = store.write_snapshot(store.pin(), keep=2)
        assert manifest is not None and manifest.depth == snapshot.COUNT_DEPTH
        root = manifest.head.header.state_hash
        snapshot.check_manifest(manifest, root)
        groups = [manifest.roots[start:start + 16]
                  for start in range(0, len(manifest.roots), 16)]
        lone = next(g for g, roots in enumerate(groups) if sum(map(bool, roots)) == 1)
        busy = next(g for g, roots in enumerate(groups) if sum(map(bool, roots)) >= 2)
        roots = list(manifest.roots)
        at = next(16 * lone + i for i, r in enumerate(groups[lone]) if r)
        moved = 16 * lone + (at + 1) % 16
        roots[at], roots[moved] = b"", roots[at]
        misplaced = replace(manifest, roots=tuple(roots))
        roots = list(manifest.roots)
        roots[next(16 * busy + i for i, r in enumerate(groups[busy]) if not r)] = bytes(32)
        zeros = replace(manifest, roots=tuple(roots))
        for lie in (misplaced, zeros):
            # It folds: the certified root alone does not tell.
            assert _fold(lie.roots, lie.depth) == root
            with pytest.raises(snapshot.SnapshotError):
                snapshot.check_manifest(lie, root)


def test_a_snapshot_told_to_stop_ends_unfinished_and_is_never_served(tmp_path: Path) -> None:
    """What a node that stops does to the snapshot it is writing: the copy ends, no manifest is
    written (nothing serves it), and the next open deletes its pairs."""
    world = build(records=40)
    path = tmp_path / "chain"
    with ChainStore.open(path, world.genesis) as store:
        fill(store, world, world.height)
        asked = []

        def stopping() -> bool:
            asked.append(True)
            return True
        assert store.write_snapshot(store.pin(), keep=2, stopping=stopping) is None
        assert asked and store.snapshots() == []
        assert list(store.snapshot_pairs(world.height))  # its pairs, until the next open
    with ChainStore.open(path, world.genesis) as reopened:
        assert list(reopened.snapshot_pairs(world.height)) == []
