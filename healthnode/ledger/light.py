"""Following a chain without believing the node that serves it: a light client's check of
certified headers from a pinned genesis (the wallet's; docs/wallet.md, "A wallet that believes
no single node").

Theory of operation
-------------------
A light client holds a **trusted head**: a header it has checked (at first, the genesis), the
authority set that signed it, and the set that signs the next height. To move to a newer header it
is given the header, its commit certificate, the header's authority set, and a state proof, at
that header, of the authority set of the height after it (present: a new set starts there;
absent: the set stays). It accepts the header when:

- the header is of the pinned chain, higher and later than the trusted head;
- the claimed authority set hashes to the header's `validators_hash`, and the certificate holds
  precommits of more than two thirds of that set for exactly this header;
- the header is linked to the trusted head: either it is the very next one (its `prev_hash` is the
  trusted block's hash and its set is the trusted next set), or, skipping heights, more than one
  third of the trusted next set signed its certificate (CometBFT's light client: with fewer than
  one third of those authorities faulty, at least one honest authority vouches for the header);
- the proof of the next set verifies against the header's state root.

The skipping rule assumes the trusted set was still honest by more than two thirds when the new
header was made: a wallet whose trusted head is older than the trusting period
(`TRUSTING_PERIOD_MS`) walks forward through intermediate headers instead (bisection, by the
caller). Pure: no clock is read; the caller passes the time it checks freshness against.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from healthnode.crypto import ZERO_HASH, digest
from healthnode.ledger import smt
from healthnode.ledger.rules import genesis_state
from healthnode.ledger.state import AUTHORITY_SET, decode_value, height_bytes
from healthnode.protocol.block import (
    CommitCertificate,
    Header,
    VerificationError,
    validators_hash,
    verify_commit,
)
from healthnode.protocol.genesis import Genesis
from healthnode.protocol.state import AuthoritySet

# A trusted head older than this no longer vouches for a header many heights later: its
# authorities may have left the network since and their keys be in other hands (a long-range
# attack). Two weeks, as CometBFT's default trusting period for a chain with weekly key changes.
TRUSTING_PERIOD_MS: Final = 14 * 24 * 3600 * 1000


class LightError(VerificationError):
    """A header, certificate or proof that does not hold up against the trusted head."""


@dataclass(frozen=True, slots=True)
class TrustedHead:
    chain_id: str
    genesis_hash: bytes
    height: int  # 0: the genesis
    block_hash: bytes  # ZERO_HASH at the genesis
    time_ms: int
    state_root: bytes
    authorities: tuple[bytes, ...]  # the set of this height
    next_authorities: tuple[bytes, ...]  # the set that certifies height + 1


def from_genesis(genesis: Genesis) -> TrustedHead:
    keys = genesis.authority_keys
    return TrustedHead(genesis.chain_id, genesis.hash, 0, ZERO_HASH, genesis.genesis_time_ms,
                       genesis_state(genesis).state_hash, keys, keys)


@dataclass(frozen=True, slots=True)
class NextSetProof:
    """The state proof, at a header, of the key `AUTHORITY_SET + (height + 1)`: its value (None:
    no new set starts at the next height) and the tree's proof."""

    value: bytes | None
    proof: smt.Proof


def next_set_key(height: int) -> bytes:
    return AUTHORITY_SET + height_bytes(height + 1)


def _certified(trusted: TrustedHead, header: Header, certificate: CommitCertificate,
               keys: tuple[bytes, ...]) -> None:
    """The header is of the pinned chain, `keys` is its authority set, and more than two thirds
    of that set signed the certificate for exactly this header."""
    if header.chain_id != trusted.chain_id:
        raise LightError(f"the header is of chain {header.chain_id!r}, not {trusted.chain_id!r}")
    if validators_hash(keys) != header.validators_hash:
        raise LightError("the authority set given is not the header's (validators_hash)")
    if certificate.height != header.height or certificate.block_hash != header.hash:
        raise LightError("the certificate is for another header")
    try:
        verify_commit(certificate, trusted.chain_id, keys)
    except VerificationError as error:
        raise LightError(f"certificate: {error}") from None


def _vouched(certificate: CommitCertificate, trusted_set: tuple[bytes, ...]) -> None:
    """More than a third of `trusted_set` signed: at least one honest authority vouches."""
    vouching = {s.signer for s in certificate.signatures} & set(trusted_set)
    if 3 * len(vouching) <= len(trusted_set):
        raise LightError(
            f"only {len(vouching)} of the {len(trusted_set)} trusted authorities signed this "
            f"header; more than a third must (ask for a header in between)")


def advance(trusted: TrustedHead, header: Header, certificate: CommitCertificate,
            authorities: Sequence[bytes], next_set: NextSetProof) -> TrustedHead:
    """The new trusted head at `header`, or LightError naming what does not hold."""
    keys = tuple(authorities)
    if header.height <= trusted.height:
        raise LightError(f"height {header.height} is not above the trusted {trusted.height}")
    if header.time_ms <= trusted.time_ms:
        raise LightError("the header is not later than the trusted head")
    _certified(trusted, header, certificate, keys)
    if header.height == trusted.height + 1:
        if header.prev_hash != trusted.block_hash:
            raise LightError("the header does not link to the trusted head (prev_hash)")
        if keys != trusted.next_authorities:
            raise LightError("the header's authority set is not the one the trusted head named")
    else:
        _vouched(certificate, trusted.next_authorities)
    key_hash = digest(next_set_key(header.height))
    value_hash = None if next_set.value is None else digest(next_set.value)
    if not smt.verify(header.state_hash, key_hash, value_hash, next_set.proof):
        raise LightError("the proof of the next authority set does not verify")
    next_keys = keys
    if next_set.value is not None:
        next_keys = decode_value(next_set.value, AuthoritySet,
                                 next_set_key(header.height)).keys
    return TrustedHead(trusted.chain_id, trusted.genesis_hash, header.height, header.hash,
                       header.time_ms, header.state_hash, keys, next_keys)


def check_header(trusted: TrustedHead, header: Header, certificate: CommitCertificate,
                 authorities: Sequence[bytes]) -> None:
    """LightError unless `header`, at any height, is certified and vouched for by the trusted
    head: the trusted header itself; else more than two thirds of its own set signed it and
    more than a third of the trusted set (the next one, for a later header) did too. For a
    header that the caller uses without moving its trusted head to it: a transaction's block,
    an answer from a node a little behind another."""
    keys = tuple(authorities)
    _certified(trusted, header, certificate, keys)
    if header.height == trusted.height:
        if header.hash != trusted.block_hash:
            raise LightError(f"a second certified header at height {header.height}, unlike the "
                             f"trusted one: a fork, or a forgery by a third of the authorities")
        return
    _vouched(certificate, trusted.next_authorities if header.height > trusted.height
             else trusted.authorities)


def check_fresh(trusted: TrustedHead, now_ms: int, bound_ms: int) -> None:
    """LightError unless the trusted head's time is within `bound_ms` of `now_ms`: a node that
    serves an old (if certified) state, from before a revocation, is caught here."""
    if now_ms - trusted.time_ms > bound_ms:
        raise LightError(f"the newest header served is {(now_ms - trusted.time_ms) // 1000} s "
                         f"old; more than {bound_ms // 1000} s: the node serves an old state")


def within_trusting_period(trusted: TrustedHead, now_ms: int) -> bool:
    """Whether the trusted head may vouch for a header by skipping (else: walk forward)."""
    return now_ms - trusted.time_ms <= TRUSTING_PERIOD_MS
