"""The state sync protocol (`/healthnode/statesync/1`): what a node that joins asks its peers
for, and what they answer (docs/protocol.md, "State sync"; ledger/snapshot.py checks it all).

One `StateSyncRequest` per stream, one answer frame:
- `snapshots`: the snapshots the peer holds (`SnapshotList`), newest first;
- `chain`: the certified heads at which the authority set changed, from height 1 up to the
  requested height (`ChainProof`): each is the last header of a set, with the proof, against its
  state root, of the set that follows;
- `manifest`: a snapshot's manifest (`SnapshotManifest`): its certified head and the root of
  each chunk's subtree;
- `chunk`: one chunk (`SnapshotChunk`): the state's pairs under one path prefix, and the
  transactions those pairs name.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

from msgspec import Meta

from healthnode import limits
from healthnode.protocol.client import STATE_KEY_BYTES_MAX, CertifiedHead
from healthnode.protocol.fields import Height
from healthnode.protocol.schema import Message, Struct, decode_message
from healthnode.protocol.state import STATE_VALUE_BYTES_MAX
from healthnode.protocol.tx import AnyTx

STATESYNC_PROTOCOL: Final = "/healthnode/statesync/1"
# Chunks are cut by the first 1 to 3 nibbles of the tree path: at most 4,096 of them, so a
# manifest stays under 300 KiB whatever the state's size.
CHUNK_DEPTH_MAX: Final = 3
CHUNKS_MAX: Final = 16 ** CHUNK_DEPTH_MAX
# A chunk is one frame. A node cuts its snapshot so that chunks stay near CHUNK_BYTES_TARGET
# (ledger/snapshot.py `choose_depth`); the frame bound is eight times that.
CHUNK_BYTES_TARGET: Final = 2 * limits.MIB
STATESYNC_FRAME_BYTES_MAX: Final = 16 * limits.MIB
STATESYNC_REQUEST_BYTES_MAX: Final = 64
SNAPSHOTS_LISTED_MAX: Final = 16
# Set changes up to one height in one answer; a node that has more (or more than a frame holds)
# sends the first ones, a chain that does not prove (net/statesync.py `_answer`).
CHAIN_HEADS_MAX: Final = 4096
# The root of a chunk's subtree, as the manifest names it: empty (no key), a leaf (its key hash
# and value hash, 64 bytes) or an internal node (its hash, 32 bytes).
SubtreeRoot = Annotated[bytes, Meta(max_length=64)]


class StatePair(Struct):
    """A state key and its value: `[key, value]`, as a store keeps it in a snapshot."""

    key: Annotated[bytes, Meta(min_length=1, max_length=STATE_KEY_BYTES_MAX)]
    value: Annotated[bytes, Meta(min_length=1, max_length=STATE_VALUE_BYTES_MAX)]


class StateSyncRequest(Message, tag=28):
    what: Literal["snapshots", "chain", "manifest", "chunk"]
    height: Annotated[int, Meta(ge=0, le=limits.HEIGHT_MAX)] = 0
    index: Annotated[int, Meta(ge=0, le=CHUNKS_MAX - 1)] = 0


class SnapshotInfo(Message, tag=29):
    height: Height
    depth: Annotated[int, Meta(ge=1, le=CHUNK_DEPTH_MAX)]


class SnapshotList(Message, tag=32):
    snapshots: Annotated[tuple[SnapshotInfo, ...], Meta(max_length=SNAPSHOTS_LISTED_MAX)]


class ChainProof(Message, tag=33):
    """The certified heads where the authority set changed, up to `height`, in height order."""

    height: Height
    heads: Annotated[tuple[CertifiedHead, ...], Meta(max_length=CHAIN_HEADS_MAX)]


class SetChange(Message, tag=36):
    """How a store keeps the certified head of the last height of an authority set."""

    head: CertifiedHead


class SnapshotManifest(Message, tag=34):
    """A snapshot of the state after `head`'s height: the head as a light client takes it, and
    the roots of the 16**depth subtrees at `depth` nibbles (in path order), which fold up to the
    head's state root."""

    head: CertifiedHead
    depth: Annotated[int, Meta(ge=1, le=CHUNK_DEPTH_MAX)]
    roots: Annotated[tuple[SubtreeRoot, ...], Meta(min_length=16, max_length=CHUNKS_MAX)]


class SnapshotChunk(Message, tag=35):
    """The pairs of the state tree under chunk `index`'s path prefix (in key-hash order), and the
    transactions that those pairs name (a record's anchor, a grant, an access.log), which a node
    keeps to answer its clients."""

    height: Height
    index: Annotated[int, Meta(ge=0, le=CHUNKS_MAX - 1)]
    pairs: Annotated[tuple[StatePair, ...], Meta(max_length=1_000_000)]
    txs: Annotated[tuple[AnyTx, ...], Meta(max_length=1_000_000)]


StateSyncAnswer = SnapshotList | ChainProof | SnapshotManifest | SnapshotChunk
STATESYNC_ANSWERS: Final = (SnapshotList, ChainProof, SnapshotManifest, SnapshotChunk)


def decode_statesync_request(data: bytes) -> StateSyncRequest:
    request: StateSyncRequest = decode_message(data, StateSyncRequest, STATESYNC_REQUEST_BYTES_MAX)
    return request


def decode_statesync_answer(data: bytes) -> StateSyncAnswer:
    answer: StateSyncAnswer = decode_message(  # type: ignore[assignment]
        data, STATESYNC_ANSWERS, STATESYNC_FRAME_BYTES_MAX)
    return answer
