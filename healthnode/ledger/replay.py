"""Verify a chain from its genesis, trusting nothing but the genesis.

Each block must link to the one before, carry in `last_commit` a certificate of the previous
block signed by more than two thirds of that height's authorities, match its own transaction
and evidence roots, and re-execute to the state root its header claims. Each block's own
certificate must be signed by more than two thirds of the authorities of its height, through
every change of the authority set. This is what `healthnode verify` runs over a stopped node's
store or a backup, what a node does to its own store after a crash test, and what anyone holding
a copy of a chain and its genesis can do offline.

A node that prunes block bodies (docs/operations.md, "Pruning"), or that joined from a snapshot
by state sync, holds no bodies below some height. Its chain is checked in two parts:
`check_headers` walks the headers and certificates it keeps from the genesis up to its oldest
kept state, following the authority set through the certified heads of the set changes (each
proves the next set against its header's state root), and `replay_chain` re-executes the bodies
it holds from that state on (`Start`: the state rebuilt from the snapshot, whose root the
walked header certifies).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from healthnode.crypto import ZERO_HASH, digest
from healthnode.ledger import light, proofs, smt
from healthnode.ledger.rules import (
    BlockRejected,
    apply_block,
    authorities,
    genesis_state,
)
from healthnode.ledger.state import CorruptState, MemoryState, decode_value
from healthnode.protocol.block import (
    Block,
    CommitCertificate,
    Header,
    VerificationError,
    validators_hash,
    verify_block_shape,
    verify_commit,
)
from healthnode.protocol.client import CertifiedHead
from healthnode.protocol.genesis import Genesis
from healthnode.protocol.state import AuthoritySet

Progress = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class Start:
    """Where a replay starts when not from the genesis: the state after `height` (a snapshot's,
    its root checked against the certified header of `height`) and that block's hash."""

    state: MemoryState
    height: int
    block_hash: bytes


def check_headers(genesis: Genesis, chain: Iterable[tuple[Header, CommitCertificate]],
                  set_changes: Mapping[int, CertifiedHead], linked_from: int,
                  progress: Progress | None = None) -> Header | None:
    """Check certified headers from the genesis without their bodies; return the last one (None
    for an empty `chain`), or raise VerificationError naming the first height that fails.

    `chain` holds headers in height order, each with its certificate: every height from
    `linked_from` on, each linked to the one before (`prev_hash`, and its `last_commit`
    certifies it); below `linked_from` (a node that joined by state sync holds no headers
    there) only the heads of the authority set changes. The set that must certify each header
    starts as the genesis's; at a height in `set_changes` (the certified head of the last
    height of a set) the next set is taken from that head's proof, which must verify against
    the header's state root. A header whose `validators_hash` is not the set's own means the
    set changed where no kept head proves it: refused, so a set change cannot be skipped."""
    keys = genesis.authority_keys  # the set that certifies the header now checked
    previous: Header | None = None
    previous_keys = keys
    for header, certificate in chain:
        height = header.height
        where = f"height {height}"
        if header.chain_id != genesis.chain_id:
            raise VerificationError(f"{where}: header: of chain {header.chain_id!r}")
        linked = previous is not None and previous.height == height - 1
        if previous is not None and (height <= previous.height
                                     or header.time_ms <= previous.time_ms):
            raise VerificationError(f"{where}: header: not above and after height "
                                    f"{previous.height}")
        if height == 1:
            if header.prev_hash != ZERO_HASH or header.last_commit is not None:
                raise VerificationError(f"{where}: link: the first block links to a block")
        elif linked:
            assert previous is not None
            if header.prev_hash != previous.hash:
                raise VerificationError(f"{where}: link: prev_hash is not the hash of header "
                                        f"{height - 1}")
            last_commit = header.last_commit
            if last_commit is None or last_commit.block_hash != previous.hash:
                raise VerificationError(f"{where}: last_commit: missing, or certifies another "
                                        f"block")
            try:
                verify_commit(last_commit, genesis.chain_id, previous_keys)
            except VerificationError as error:
                raise VerificationError(f"{where}: last_commit: {error}") from None
        elif height > linked_from:
            raise VerificationError(f"height {height - 1}: header: missing (headers are kept "
                                    f"for every height from {linked_from})")
        if validators_hash(keys) != header.validators_hash:
            raise VerificationError(f"{where}: authority set: the header's is not the one in "
                                    f"force, and no kept set-change head proves the change")
        if certificate.height != height or certificate.block_hash != header.hash:
            raise VerificationError(f"{where}: certificate: it is for another block")
        try:
            verify_commit(certificate, genesis.chain_id, keys)
        except VerificationError as error:
            raise VerificationError(f"{where}: certificate: {error}") from None
        previous_keys = keys
        head = set_changes.get(height)
        if head is not None:
            keys = _next_set(head, header, where)
        previous = header
        if progress is not None:
            progress(height)
    return previous


def _next_set(head: CertifiedHead, header: Header, where: str) -> tuple[bytes, ...]:
    """The authority set that a kept set-change head proves for the height after `header`."""
    next_set = head.next_set
    if head.header != header:
        raise VerificationError(f"{where}: set change: its head is not the stored header")
    if next_set.key != light.next_set_key(header.height) or next_set.value is None:
        raise VerificationError(f"{where}: set change: it proves no set for the next height")
    try:
        proven = smt.verify(header.state_hash, digest(next_set.key), digest(next_set.value),
                            proofs.tree_proof(next_set))
        keys = decode_value(next_set.value, AuthoritySet, next_set.key).keys
    except (VerificationError, ValueError, CorruptState) as error:  # a half leaf, a bad value
        raise VerificationError(f"{where}: set change: {error}") from None
    if not proven:
        raise VerificationError(f"{where}: set change: the proof of the next set does not "
                                f"verify against the header's state root")
    return keys


def replay_chain(genesis: Genesis, chain: Iterable[tuple[Block, CommitCertificate]],
                 progress: Progress | None = None, start: Start | None = None) -> MemoryState:
    """Re-execute `chain` (blocks from height 1, each with its certificate) from `genesis`, or
    (`start`) the blocks after a given state; return the resulting state, or raise
    VerificationError that names the first height that fails and the check (`height 17: state
    root: ...`). `progress(height)` is called after each block. Old tree versions are dropped as
    it goes, so memory follows the state, not the chain's length."""
    if start is None:
        state = MemoryState(prune_tree=True)
        state.commit(genesis_state(genesis))
        first, previous_hash = 1, ZERO_HASH
    else:
        state, first, previous_hash = start.state, start.height + 1, start.block_hash
    for height, (block, certificate) in enumerate(chain, start=first):
        where = f"height {height}"
        if block.height != height:
            raise VerificationError(f"{where}: height: the stored block says {block.height}")
        if block.header.prev_hash != previous_hash:
            raise VerificationError(f"{where}: link: prev_hash is not the hash of block "
                                    f"{height - 1}")
        try:
            verify_block_shape(block, genesis.chain_id)
        except VerificationError as error:
            raise VerificationError(f"{where}: roots: {error}") from None
        if block.header.last_commit is not None:
            try:
                verify_commit(block.header.last_commit, genesis.chain_id,
                              authorities(state, height - 1))
            except VerificationError as error:
                raise VerificationError(f"{where}: last_commit: {error}") from None
            if block.header.last_commit.block_hash != previous_hash:
                raise VerificationError(f"{where}: last_commit: certifies another block")
        elif height > 1:
            raise VerificationError(f"{where}: last_commit: missing")
        try:
            execution = apply_block(state, block)
        except BlockRejected as error:
            check = "state root" if "state_hash" in error.reason else "execution"
            raise VerificationError(f"{where}: {check}: {error.reason}") from None
        if certificate.height != height or certificate.block_hash != block.hash:
            raise VerificationError(f"{where}: certificate: it is for another block")
        try:
            verify_commit(certificate, genesis.chain_id, authorities(state, height))
        except VerificationError as error:
            raise VerificationError(f"{where}: certificate: {error}") from None
        state.commit(execution)
        previous_hash = block.hash
        if progress is not None:
            progress(height)
    return state
