"""The state tree (healthnode/ledger/smt.py): one root per set of keys whatever the order of the
updates, proofs of presence and absence that verify exactly when they should, and stale-node
accounting that lets old versions be pruned without touching the live tree."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from healthnode.ledger import smt


class Store:
    """Tree nodes by storage key, with each node's stale-since version."""

    def __init__(self) -> None:
        self.nodes: dict[bytes, bytes] = {}
        self.stale: dict[bytes, int] = {}
        self.roots: dict[int, smt.Ref | None] = {0: None}

    def tree_node(self, key: bytes) -> bytes | None:
        return self.nodes.get(key)

    def apply(self, version: int, changes: dict[bytes, bytes | None]) -> smt.Ref | None:
        done = smt.update(self, self.roots[max(self.roots)], version, changes.items())
        assert not set(done.written) & set(self.nodes), "a node key is written twice"
        self.nodes.update(done.written)
        for key in done.stale:
            assert key in self.nodes and key not in self.stale, "stale: not live, or twice"
            self.stale[key] = version
        self.roots[version] = done.root
        return done.root

    def prune_below(self, version: int) -> None:
        """Drop every node stale since a version <= `version`: what versions < it needed."""
        for key, since in list(self.stale.items()):
            if since <= version:
                del self.nodes[key], self.stale[key]


def h(n: int) -> bytes:
    return smt.hash_bytes(n.to_bytes(8, "big"))


def scratch_root(state: dict[bytes, bytes]) -> bytes:
    return smt.root_hash(smt.update(Store(), None, 1, state.items()).root)


def check_proofs(store: Store, root: smt.Ref | None, state: dict[bytes, bytes],
                 absent: list[bytes]) -> None:
    root_hash = smt.root_hash(root)
    for key, value in state.items():
        proof = smt.prove(store, root, key)
        assert smt.verify(root_hash, key, value, proof)
        assert not smt.verify(root_hash, key, smt.hash_bytes(value), proof)
        assert not smt.verify(root_hash, key, None, proof)
    for key in absent:
        if key in state:
            continue
        proof = smt.prove(store, root, key)
        assert smt.verify(root_hash, key, None, proof)
        assert not smt.verify(root_hash, key, h(1), proof)


def test_an_empty_tree_proves_every_absence() -> None:
    store = Store()
    proof = smt.prove(store, None, h(1))
    assert proof == smt.Proof((), None)
    assert smt.verify(smt.EMPTY, h(1), None, proof)
    assert not smt.verify(smt.EMPTY, h(1), h(2), proof)


def test_one_key_is_a_leaf_at_the_root() -> None:
    store = Store()
    root = store.apply(1, {h(1): h(10)})
    assert root is not None and root.leaf and root.hash == smt.leaf_hash(h(1), h(10))
    check_proofs(store, root, {h(1): h(10)}, [h(2), h(3)])


def test_keys_sharing_a_long_prefix() -> None:
    a = bytes(31) + b"\x00"
    b = bytes(31) + b"\x01"  # parts from a at the very last bit
    store = Store()
    root = store.apply(1, {a: h(1), b: h(2)})
    assert root == smt.Ref(root.hash if root else b"", 1, False)
    proof = smt.prove(store, root, a)
    assert len(proof.siblings) == 64 * 15  # 64 internal nodes, 15 other children each
    check_proofs(store, root, {a: h(1), b: h(2)}, [bytes(31) + b"\x02", b"\x80" + bytes(31)])
    root = store.apply(2, {b: None})  # the other leaf moves all the way up
    assert root is not None and root.leaf and root.hash == smt.leaf_hash(a, h(1))
    store.prune_below(2)
    check_proofs(store, root, {a: h(1)}, [b])


def test_deleting_everything_empties_the_tree() -> None:
    store = Store()
    store.apply(1, {h(i): h(i + 100) for i in range(50)})
    root = store.apply(2, {h(i): None for i in range(50)})
    assert root is None
    store.prune_below(2)
    assert store.nodes == {}


def test_a_key_twice_in_one_update_is_refused() -> None:
    with pytest.raises(ValueError, match="twice"):
        smt.update(Store(), None, 1, [(h(1), h(2)), (h(1), h(3))])


def test_a_node_that_does_not_match_its_parent_is_refused() -> None:
    store = Store()
    root = store.apply(1, {h(i): h(i) for i in range(8)})
    key = next(iter(store.nodes))
    store.nodes[key] = smt.Leaf(h(99), h(99)).encode()
    with pytest.raises(smt.TreeError):
        for i in range(8):
            smt.prove(store, root, h(i))


_keys = st.integers(min_value=0, max_value=60).map(h)
_batches = st.lists(st.dictionaries(_keys, st.one_of(st.none(), st.integers(0, 5).map(h)),
                                    max_size=12), min_size=1, max_size=8)


@settings(max_examples=150, deadline=None)
@given(batches=_batches, absent=st.lists(_keys, max_size=6))
def test_random_updates_give_the_canonical_root_and_proofs(
        batches: list[dict[bytes, bytes | None]], absent: list[bytes]) -> None:
    store = Store()
    state: dict[bytes, bytes] = {}
    history: list[tuple[int, dict[bytes, bytes]]] = []
    for version, batch in enumerate(batches, start=1):
        root = store.apply(version, batch)
        for key, value in batch.items():
            if value is None:
                state.pop(key, None)
            else:
                state[key] = value
        assert smt.root_hash(root) == scratch_root(state)  # one shape per set of keys
        check_proofs(store, root, state, absent)
        history.append((version, dict(state)))
    # Every kept version still proves its own state; after pruning, the newest still does.
    for version, old_state in history:
        check_proofs(store, store.roots[version], old_state, absent)
    last = len(batches)
    store.prune_below(last)
    check_proofs(store, store.roots[last], state, absent)


@settings(max_examples=100, deadline=None)
@given(state=st.dictionaries(_keys, st.integers(0, 5).map(h), min_size=1, max_size=30),
       data=st.data())
def test_a_proof_with_any_byte_changed_or_against_another_root_fails(
        state: dict[bytes, bytes], data: Any) -> None:
    store = Store()
    root = store.apply(1, state)
    root_hash = smt.root_hash(root)
    key = data.draw(st.sampled_from(sorted(state)))
    proof = smt.prove(store, root, key)
    other_root = scratch_root({**state, key: smt.hash_bytes(state[key])})
    assert not smt.verify(other_root, key, state[key], proof)
    wire = proof.wire()
    flat = b"".join(wire[0]) + (wire[1][0] + wire[1][1] if wire[1] else b"")  # type: ignore[index,operator]
    position = data.draw(st.integers(0, len(flat) - 1))
    changed = bytearray(flat)
    changed[position] ^= 1 << data.draw(st.integers(0, 7))
    count = len(proof.siblings)
    siblings = tuple(bytes(changed[i * 32:(i + 1) * 32]) for i in range(count))
    leaf_bytes = bytes(changed[count * 32:])
    tampered = smt.Proof(siblings, smt.Leaf(leaf_bytes[:32], leaf_bytes[32:]))
    assert not smt.verify(root_hash, key, state[key], tampered)
    assert not smt.verify(root_hash, key, None, tampered)


def test_proofs_survive_the_wire() -> None:
    store = Store()
    root = store.apply(1, {h(i): h(i) for i in range(20)})
    for key in (h(3), h(99)):
        proof = smt.prove(store, root, key)
        assert smt.Proof.from_wire(proof.wire()) == proof
    with pytest.raises(smt.TreeError):
        smt.Proof.from_wire([[b"short"], None])


def test_an_update_touches_a_few_nodes_per_key_not_the_whole_tree() -> None:
    store = Store()
    store.apply(1, {h(i): h(i) for i in range(4096)})
    done = smt.update(store, store.roots[1], 2, [(h(7), h(8)), (h(9), None)])
    assert len(done.written) <= 2 * 20 and len(done.stale) <= 2 * 20
