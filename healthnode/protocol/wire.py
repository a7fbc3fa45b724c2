"""The messages of the node's own stream protocols, and their limits.

Protocols (libp2p protocol ids; each stream carries length-prefixed frames, net/framing.py):

- `/healthnode/gossip/2` between authorities (and configured observers): one long-lived stream per
  peer and direction. A frame is one of `Vote`, `CompactProposal` (a proposal with its block's
  header and transaction hashes), `BlockWanted` (the answer when some of those transactions are
  unknown here) and `ProposalMessage` (a proposal with its whole block), `DuplicateVote`,
  `DuplicateProposal`, `TxBatch`, or `Ping`/`Pong` (the application ping that finds a silently
  cut link; libp2p's own checks do not: docs/network.md).
- `/healthnode/sync/1` from any authority or observer: the request is one `SyncRequest`; the answer
  is up to `count` frames of `SyncBlock` (a block with the certificate that finalized it), in
  height order, then the stream is closed.
- `/healthnode/blob/1` between authorities: the request is one `BlobRequest` naming up to 64
  ciphertext hashes; the answer is one `BlobItem` frame per ciphertext the peer holds (anchored and
  not erased), then the stream is closed (net/blobs.py).

Every frame is decoded with the bound of its protocol before anything else looks at it, and a
frame that does not decode is dropped and counted (never a crash, never stored).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Final

from msgspec import Meta

from healthnode import limits
from healthnode.codec import array_header, pack
from healthnode.protocol.block import (
    Block,
    CommitCertificate,
    DuplicateProposal,
    DuplicateVote,
    Evidence,
    Header,
    Proposal,
    Vote,
)
from healthnode.protocol.fields import Bytes32, Hash, Height
from healthnode.protocol.schema import SORTED_UNIQUE, Message, decode_message
from healthnode.protocol.tx import AnyTx

# /2 since the streams open with a Hello: a node of a release before it speaks /1, and the two
# refuse each other at the protocol's negotiation, before any frame (docs/operations.md).
GOSSIP_PROTOCOL: Final = "/healthnode/gossip/2"
SYNC_PROTOCOL: Final = "/healthnode/sync/1"

# A batch is what one node gathered in one gossip interval: bounded so one frame stays small
# next to consensus messages on the same stream.
TX_BATCH_TXS_MAX: Final = 512
TX_BATCH_BYTES_MAX: Final = 2 * limits.MIB
# A proposal frame carries the whole block.
GOSSIP_FRAME_BYTES_MAX: Final = limits.BLOCK_BYTES_MAX + 64 * limits.KIB
SYNC_BLOCKS_PER_REQUEST_MAX: Final = 64
SYNC_FRAME_BYTES_MAX: Final = limits.BLOCK_BYTES_MAX + 64 * limits.KIB
SYNC_REQUEST_BYTES_MAX: Final = 64
BLOB_PROTOCOL: Final = "/healthnode/blob/1"
BLOB_HASHES_PER_REQUEST_MAX: Final = 64
BLOB_REQUEST_BYTES_MAX: Final = 16 + BLOB_HASHES_PER_REQUEST_MAX * 34
BLOB_FRAME_BYTES_MAX: Final = limits.BLOB_BYTES_MAX + 1 * limits.KIB


class TxBatch(Message, tag=60):
    txs: Annotated[tuple[AnyTx, ...], Meta(min_length=1, max_length=TX_BATCH_TXS_MAX)]


class ProposalMessage(Message, tag=61):
    proposal: Proposal
    block: Block | None


class CompactProposal(Message, tag=68):
    """A proposal with its block as the header, the transactions' hashes and the evidence.

    The transactions of a block are gossiped before it (`TxBatch`), so each authority has them in
    its mempool: sending them again in every proposal cost each node a decode per transaction
    and the proposer an encode, and most of a proposal's bytes. An authority that lacks some of
    them asks the sender for the whole block (`BlockWanted`); the header's `txs_root` binds the
    hashes to the block either way."""

    proposal: Proposal
    header: Header
    tx_hashes: Annotated[tuple[Bytes32, ...], Meta(max_length=limits.BLOCK_TXS_MAX)]
    evidence: Annotated[tuple[Evidence, ...], Meta(max_length=limits.BLOCK_EVIDENCE_MAX)]

    @classmethod
    def of(cls, proposal: Proposal, block: Block) -> CompactProposal:
        return cls(proposal, block.header, tuple(tx.hash for tx in block.txs), block.evidence)

    def block(self, known: Callable[[bytes], AnyTx | None]) -> Block | None:
        """The whole block, with each transaction looked up by its hash in `known`; None when
        one is not known."""
        txs = []
        for tx_hash in self.tx_hashes:
            tx = known(tx_hash)
            if tx is None:
                return None
            txs.append(tx)
        return Block(self.header, tuple(txs), self.evidence)


class BlockWanted(Message, tag=69):
    """Asks the peer that sent a `CompactProposal` for the proposal with its whole block. The
    nonce makes each request its own frame (gossip drops a frame it has seen)."""

    block_hash: Hash
    nonce: Annotated[int, Meta(ge=0, le=2**63 - 1)]


# The version of the node-to-node protocol (gossip, sync, blobs) this release speaks. A node says
# it in its `Hello`, the first frame of every gossip stream, and refuses a peer that speaks
# another (net/gossip.py); a release that changes the protocol raises it.
PROTOCOL_VERSION: Final = 1


class Hello(Message, tag=79):
    """The first frame on a gossip stream, in each direction: the protocol version the node
    speaks and the genesis of its network."""

    protocol: Annotated[int, Meta(ge=1, le=65_535)]
    genesis_hash: Hash


class Ping(Message, tag=62):
    nonce: Annotated[int, Meta(ge=0, le=2**63 - 1)]


class Pong(Message, tag=63):
    nonce: Annotated[int, Meta(ge=0, le=2**63 - 1)]


class SyncRequest(Message, tag=64):
    from_height: Height
    count: Annotated[int, Meta(ge=1, le=SYNC_BLOCKS_PER_REQUEST_MAX)]


class SyncBlock(Message, tag=65):
    block: Block
    certificate: CommitCertificate


class BlobRequest(Message, tag=66):
    hashes: Annotated[
        tuple[Bytes32, ...],
        Meta(min_length=1, max_length=BLOB_HASHES_PER_REQUEST_MAX),
        SORTED_UNIQUE,
    ]


class BlobItem(Message, tag=67):
    ciphertext_hash: Hash
    ciphertext: Annotated[bytes, Meta(min_length=1, max_length=limits.BLOB_BYTES_MAX)]


GossipMessage = (Vote | CompactProposal | BlockWanted | ProposalMessage | DuplicateVote
                 | DuplicateProposal | TxBatch | Ping | Pong)
GOSSIP_CLASSES: Final = (Vote, CompactProposal, BlockWanted, ProposalMessage, DuplicateVote,
                         DuplicateProposal, TxBatch, Ping, Pong)


def encode_tx_batch(encoded_txs: Sequence[bytes]) -> bytes:
    """`TxBatch(txs).encode()` from the transactions' own encodings, without re-encoding them."""
    assert 1 <= len(encoded_txs) <= TX_BATCH_TXS_MAX
    return (array_header(3) + pack(TxBatch.KIND) + pack(TxBatch.VERSION)
            + array_header(len(encoded_txs)) + b"".join(encoded_txs))


def encode_tx_batches(encoded_txs: Sequence[bytes]) -> list[bytes]:
    """Transactions (their own encodings) as gossip frames of at most TX_BATCH_TXS_MAX each,
    in order; none for none."""
    return [encode_tx_batch(encoded_txs[start:start + TX_BATCH_TXS_MAX])
            for start in range(0, len(encoded_txs), TX_BATCH_TXS_MAX)]


def encode_proposal_message(proposal: Proposal, block: Block | None) -> bytes:
    """`ProposalMessage(proposal, block).encode()` from the parts' own (cached) encodings, so a
    re-sent proposal does not walk its block's schema again."""
    return (array_header(4) + pack(ProposalMessage.KIND) + pack(ProposalMessage.VERSION)
            + proposal.encode() + (block.encode() if block is not None else pack(None)))


def decode_gossip(data: bytes) -> GossipMessage:
    decoded: GossipMessage = decode_message(  # type: ignore[assignment]
        data, GOSSIP_CLASSES, GOSSIP_FRAME_BYTES_MAX)
    return decoded


def decode_sync_request(data: bytes) -> SyncRequest:
    request: SyncRequest = decode_message(data, SyncRequest, SYNC_REQUEST_BYTES_MAX)
    return request


def decode_sync_block(data: bytes) -> SyncBlock:
    item: SyncBlock = decode_message(data, SyncBlock, SYNC_FRAME_BYTES_MAX)
    return item


def decode_blob_request(data: bytes) -> BlobRequest:
    request: BlobRequest = decode_message(data, BlobRequest, BLOB_REQUEST_BYTES_MAX)
    return request


def decode_blob_item(data: bytes) -> BlobItem:
    item: BlobItem = decode_message(data, BlobItem, BLOB_FRAME_BYTES_MAX)
    return item
