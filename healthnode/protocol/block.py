"""Blocks, proposals, votes, commit certificates and evidence.

A block's identity is the hash of its header. The header commits to everything else: the
transactions (`txs_root`, a Merkle root over transaction hashes), the evidence, the authority set
that must sign the next certificate (`validators_hash`), the state after applying the block
(`state_hash`) and, through `last_commit`, the precommit signatures that finalized the previous
block. So anyone holding the genesis can verify a chain offline, block by block
(`verify_commit`), without trusting the node that served it.

Votes and proposals are signed messages (protocol/signed.py) with their own domain tags. A vote for
nil has `block_hash` nil. Two different votes of one signer for the same (type, height, round), or
two proposals for the same (height, round), are evidence of equivocation.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Annotated, Final

from msgspec import Meta

from healthnode import codec, limits
from healthnode.crypto import DOMAIN_PROPOSAL, DOMAIN_VOTE, Identity, digest
from healthnode.errors import HealthnodeError
from healthnode.protocol import merkle
from healthnode.protocol.fields import (
    UNSIGNED,
    Bytes32,
    ChainId,
    Hash,
    Height,
    PublicKey,
    Round,
    Signature,
    TimeMs,
)
from healthnode.protocol.schema import (
    SORTED_UNIQUE,
    Message,
    Struct,
    decode_message,
    keep_checked_encoding,
)
from healthnode.protocol.signed import Signed
from healthnode.protocol.tx import TX_CLASSES, AnyTx

PREVOTE: Final = 1
PRECOMMIT: Final = 2


def quorum(authority_count: int) -> int:
    """Smallest number of authorities that is more than two thirds of them."""
    return authority_count * 2 // 3 + 1


class Vote(Signed, tag=21):
    """A prevote or precommit for `block_hash` (nil: for no block) at (height, round)."""

    DOMAIN = DOMAIN_VOTE
    vote_type: Annotated[int, Meta(ge=PREVOTE, le=PRECOMMIT)]
    height: Height
    round: Round
    block_hash: Bytes32 | None
    signer: PublicKey
    signature: Signature = UNSIGNED


class Proposal(Signed, tag=22):
    """The round's proposer proposes `block_hash`; `pol_round` is the round of the proof of lock
    it re-proposes from, or -1 for a fresh block (Tendermint's validRound)."""

    DOMAIN = DOMAIN_PROPOSAL
    height: Height
    round: Round
    pol_round: Annotated[int, Meta(ge=-1, le=limits.ROUND_MAX)]
    block_hash: Hash
    signer: PublicKey
    signature: Signature = UNSIGNED


class CommitSig(Struct):
    signer: PublicKey
    signature: Signature


class CommitCertificate(Message, tag=23):
    """More than two thirds of the authorities' precommits for one block, in signer order."""

    height: Height
    round: Round
    block_hash: Hash
    signatures: Annotated[
        tuple[CommitSig, ...], Meta(min_length=1, max_length=limits.AUTHORITIES_MAX), SORTED_UNIQUE
    ]

    def precommit(self, sig: CommitSig) -> Vote:
        """The precommit vote that `sig` signed."""
        return Vote(PRECOMMIT, self.height, self.round, self.block_hash, sig.signer, sig.signature)

    @classmethod
    def signed_by(cls, block: Block, signers: Sequence[Identity], chain_id: str,
                  round_: int = 0) -> CommitCertificate:
        """The certificate of `signers`' precommits for `block`, for a tool that holds every
        signer's key (the bench's pipeline floor, test chains). Nodes build theirs from the
        precommits they receive (consensus/height.py)."""
        sigs = [CommitSig(vote.signer, vote.signature) for vote in (
            Vote(PRECOMMIT, block.height, round_, block.hash, b"").sign(signer, chain_id)
            for signer in signers)]
        return cls(block.height, round_, block.hash,
                   tuple(sorted(sigs, key=lambda sig: sig.signer)))


class DuplicateVote(Message, tag=24):
    """Two conflicting votes of one authority for the same (type, height, round)."""

    vote_a: Vote
    vote_b: Vote


class DuplicateProposal(Message, tag=25):
    """Two different proposals of one authority for the same (height, round)."""

    proposal_a: Proposal
    proposal_b: Proposal


Evidence = DuplicateVote | DuplicateProposal
EVIDENCE_CLASSES: Final = (DuplicateVote, DuplicateProposal)


class Header(Message, tag=20):
    chain_id: ChainId
    height: Height
    time_ms: TimeMs
    prev_hash: Hash  # all zero at height 1
    last_commit: CommitCertificate | None  # nil at height 1
    txs_root: Hash
    evidence_root: Hash
    validators_hash: Hash  # the authority set of this height
    state_hash: Hash  # the state after applying this block
    proposer: PublicKey

    @property
    def hash(self) -> bytes:
        return digest(self.encode())


class Block(Message, tag=26):
    header: Header
    txs: Annotated[tuple[AnyTx, ...], Meta(max_length=limits.BLOCK_TXS_MAX)]
    evidence: Annotated[tuple[Evidence, ...], Meta(max_length=limits.BLOCK_EVIDENCE_MAX)]

    @property
    def hash(self) -> bytes:
        return self.header.hash

    @property
    def height(self) -> int:
        return self.header.height

    def encode(self) -> bytes:
        """The canonical encoding, joined from the parts' own (kept) encodings: msgpack writes an
        array as its header followed by its items, so a block built from the mempool's
        transactions, or from a compact proposal, need not walk each transaction's schema again.
        The parts check their own fields; the counts and kinds are checked here, and anything
        else takes the schema walk, which names the problem."""
        known: bytes | None = self.__dict__.get("_wire_bytes")
        if known is not None:
            return known
        txs, evidence = self.txs, self.evidence
        if (type(self.header) is not Header or len(txs) > limits.BLOCK_TXS_MAX
                or len(evidence) > limits.BLOCK_EVIDENCE_MAX
                or not all(type(tx) in _TX_TYPES for tx in txs)
                or not all(type(item) in _EVIDENCE_TYPES for item in evidence)):
            return super().encode()
        known = b"".join([
            _BLOCK_PREFIX, self.header.encode(), codec.array_header(len(txs)),
            *[tx.encode() for tx in txs], codec.array_header(len(evidence)),
            *[item.encode() for item in evidence]])
        keep_checked_encoding(self, known)  # its parts were checked as they were encoded
        return known

    def tx_spans(self) -> list[tuple[AnyTx, int, int]]:
        """Each transaction with where its bytes are in `encode()`: msgpack writes an array as
        its header and then its items, so the transactions follow the block's prefix, the
        header and the array's length, one after another (a store keeps these, to read one
        transaction without decoding its block)."""
        at = len(_BLOCK_PREFIX) + len(self.header.encode()) + len(codec.array_header(
            len(self.txs)))
        spans = []
        for tx in self.txs:
            length = len(tx.encode())
            spans.append((tx, at, length))
            at += length
        return spans

    def computed_txs_root(self) -> bytes:
        """The Merkle root of this block's transactions (not the header's claim of it)."""
        # Kept once computed: the consensus core and the ledger both check a block's shape, and
        # the root costs two hashes per transaction.
        known: bytes | None = self.__dict__.get("_txs_root")
        if known is None:
            known = self.__dict__["_txs_root"] = txs_root(self.txs)
        return known


_BLOCK_PREFIX: Final = codec.array_header(5) + codec.pack(Block.KIND) + codec.pack(Block.VERSION)
_TX_TYPES: Final = frozenset(TX_CLASSES)
_EVIDENCE_TYPES: Final = frozenset(EVIDENCE_CLASSES)


def txs_root(txs: Sequence[AnyTx]) -> bytes:
    return merkle.root([tx.hash for tx in txs])


def evidence_root(evidence: Sequence[Evidence]) -> bytes:
    return merkle.root([digest(item.encode()) for item in evidence])


def validators_hash(authorities: Sequence[bytes]) -> bytes:
    """Hash of the ordered authority public keys."""
    return digest(b"".join(authorities))


def decode_block(data: bytes) -> Block:
    block: Block = decode_message(data, Block, limits.BLOCK_BYTES_MAX)
    return block


def decode_consensus_message(data: bytes) -> Vote | Proposal | DuplicateVote | DuplicateProposal:
    result: Vote | Proposal | DuplicateVote | DuplicateProposal = decode_message(
        data, (Vote, Proposal, DuplicateVote, DuplicateProposal),
        limits.CONSENSUS_MESSAGE_BYTES_MAX,
    )  # type: ignore[assignment]
    return result


class VerificationError(HealthnodeError):
    """A block, certificate or signature from outside does not verify; `reason` names why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


Verify = Callable[[Signed], bool]


def certificate_problem(certificate: CommitCertificate, authorities: Collection[bytes],
                        verify: Verify) -> tuple[str, str] | None:
    """None when `certificate` holds valid precommits of more than two thirds of `authorities`
    for its block; else why not, as (a fixed code, a sentence). The one certificate rule: the
    consensus core calls it with its memoising verifier, everyone else through `verify_commit`."""
    seen: set[bytes] = set()
    for sig in certificate.signatures:
        signer = sig.signer.hex()[:16]
        if sig.signer not in authorities:
            return ("certificate_signer_not_authority",
                    f"certificate signer {signer} is no authority")
        if sig.signer in seen:
            return "certificate_signer_twice", f"certificate signer {signer} appears twice"
        if not verify(certificate.precommit(sig)):
            return ("certificate_bad_signature",
                    f"certificate signature of {signer} is invalid")
        seen.add(sig.signer)
    needed = quorum(len(authorities))
    if len(seen) < needed:
        return ("certificate_without_quorum",
                f"certificate has {len(seen)} precommits, needs {needed}")
    return None


def verify_commit(certificate: CommitCertificate, chain_id: str,
                  authorities: Collection[bytes]) -> None:
    """Raise VerificationError unless `certificate` holds valid precommits of more than two
    thirds of `authorities` for its block."""
    problem = certificate_problem(certificate, authorities,
                                  lambda message: message.signature_valid(chain_id))
    if problem is not None:
        raise VerificationError(problem[1])


def header_problem(header: Header, *, chain_id: str, height: int, after_time_ms: int,
                   authorities: Sequence[bytes],
                   prev_hash: bytes | None = None) -> tuple[str, str] | None:
    """None when `header` is the next header of this chain: its chain, height, time after the
    previous block's, authority set and proposer (and, when the caller knows it, the previous
    block's hash); else why not, as (a fixed code, a sentence). The one header rule: the
    consensus core checks a proposal with it, the ledger a block it applies."""
    if header.chain_id != chain_id:
        return "block_wrong_chain", f"block is for chain {header.chain_id!r}, not {chain_id!r}"
    if header.height != height:
        return "block_wrong_height", f"block height {header.height}, expected {height}"
    if prev_hash is not None and header.prev_hash != prev_hash:
        return "block_wrong_prev_hash", "block does not follow the previous block (prev_hash)"
    if header.time_ms <= after_time_ms:
        return "block_time_not_after_previous", "block time is not after the previous block's"
    if header.validators_hash != validators_hash(authorities):
        return ("block_wrong_validators_hash",
                "validators_hash does not match the authority set of this height")
    if header.proposer not in authorities:
        return "block_proposer_not_authority", "the block's proposer is no authority"
    return None


def verify_block_shape(block: Block, chain_id: str) -> None:
    """Checks that need no chain state: chain id and the header's roots match the body."""
    header = block.header
    if header.chain_id != chain_id:
        raise VerificationError(f"block is for chain {header.chain_id!r}, not {chain_id!r}")
    if header.txs_root != block.computed_txs_root():
        raise VerificationError("txs_root does not match the block's transactions")
    if header.evidence_root != evidence_root(block.evidence):
        raise VerificationError("evidence_root does not match the block's evidence")
    if (header.height == 1) != (header.last_commit is None):
        raise VerificationError("only the first block lacks a commit certificate")
    if header.last_commit is not None:
        if header.last_commit.height != header.height - 1:
            raise VerificationError("last_commit is not for the previous height")
        if header.last_commit.block_hash != header.prev_hash:
            raise VerificationError("last_commit is not for prev_hash")
