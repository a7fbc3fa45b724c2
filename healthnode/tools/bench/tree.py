"""The state tree's own cost for the bench, in memory and apart from the network (`tree_cost`)."""

from __future__ import annotations

import random
import time
from typing import Any, Final

from healthnode.codec import pack
from healthnode.crypto import digest
from healthnode.ledger import smt

TREE_STATE_KEYS: Final = 100_000  # a state of this many keys (a busy hospital's first months)
TREE_BLOCK_KEYS: Final = 5_000  # keys one full block changes (1,000 anchors x ~5 keys)
TREE_BLOCKS: Final = 5


def tree_cost() -> dict[str, Any]:
    """The state tree's own cost, in memory, apart from the network: the root update of a block
    that changes TREE_BLOCK_KEYS keys of a state of TREE_STATE_KEYS, per block and per key
    changed, and the mean size of a proof (ledger/smt.py). The nodes' reads come from a dict, so
    this is the CPU of the tree's code; a node adds its LevelDB reads."""
    nodes: dict[bytes, bytes] = {}

    class Reader:
        def tree_node(self, key: bytes) -> bytes | None:
            return nodes.get(key)

    reader = Reader()
    first = smt.update(reader, None, 1, ((digest(i.to_bytes(8, "big")), digest(b"v" + bytes(8)))
                                         for i in range(TREE_STATE_KEYS)))
    nodes.update(first.written)
    root = first.root
    chance = random.Random(7)  # noqa: S311  (which keys a block changes; no secret)
    started = time.perf_counter()
    for block in range(TREE_BLOCKS):
        changed = chance.sample(range(TREE_STATE_KEYS), TREE_BLOCK_KEYS)
        done = smt.update(reader, root, 2 + block, (
            (digest(i.to_bytes(8, "big")), digest(bytes([block]) + i.to_bytes(8, "big")))
            for i in changed))
        nodes.update(done.written)
        root = done.root
    per_block = (time.perf_counter() - started) / TREE_BLOCKS
    sizes = [len(pack(smt.prove(reader, root, digest(i.to_bytes(8, "big"))).wire()))
             for i in chance.sample(range(TREE_STATE_KEYS), 200)]
    return {"tree_state_keys": TREE_STATE_KEYS, "tree_block_keys": TREE_BLOCK_KEYS,
            "tree_update_ms_per_block": round(per_block * 1000, 1),
            "tree_update_us_per_key": round(per_block * 1e6 / TREE_BLOCK_KEYS, 1),
            "tree_proof_bytes": round(sum(sizes) / len(sizes))}
