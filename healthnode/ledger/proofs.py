"""Checking a node's answer about the state without believing the node: a state key's value or
absence, proven by the state tree (ledger/smt.py) against a header whose commit certificate is
signed by more than two thirds of the authorities (docs/ledger.md, "The state root").

Pure, and meant to be shared: the checking wallet, state sync and the patient's export (later
issues) check the answers they act on with it.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from healthnode.crypto import digest
from healthnode.ledger import smt
from healthnode.ledger.rules import in_tree
from healthnode.protocol.block import VerificationError, verify_commit
from healthnode.protocol.client import StateProofResponse


@dataclass(frozen=True, slots=True)
class Proven:
    """A state key's value (None: absent) as of `height` and `time_ms`, the header's: the caller
    judges whether that is recent enough (an old certified answer is still a true one)."""

    value: bytes | None
    height: int
    time_ms: int


def verify_state_answer(answer: StateProofResponse, key: bytes, chain_id: str,
                        authorities: Collection[bytes]) -> Proven:
    """The value of `key` (None: absent) that `answer` proves, with the height and time of its
    header; VerificationError naming what failed otherwise. `authorities` is the authority set
    of that height, which the caller knows from a chain of certified headers (ledger/light.py)
    or the genesis."""
    if answer.key != key:
        raise VerificationError("the answer is about another key")
    if not in_tree(key):
        raise VerificationError("the chain meta and the indexes are outside the state tree")
    header, certificate = answer.header, answer.certificate
    if certificate.height != header.height or certificate.block_hash != header.hash:
        raise VerificationError("the certificate is for another header")
    if header.chain_id != chain_id:
        raise VerificationError(f"the header is for chain {header.chain_id!r}")
    verify_commit(certificate, chain_id, authorities)
    leaf = None
    if answer.leaf_key_hash is not None or answer.leaf_value_hash is not None:
        if answer.leaf_key_hash is None or answer.leaf_value_hash is None:
            raise VerificationError("the proof's leaf is half there")
        leaf = smt.Leaf(answer.leaf_key_hash, answer.leaf_value_hash)
    proof = smt.Proof(tuple(answer.siblings), leaf)
    value_hash = None if answer.value is None else digest(answer.value)
    if not smt.verify(header.state_hash, digest(key), value_hash, proof):
        raise VerificationError("the proof does not verify against the header's state root")
    return Proven(answer.value, header.height, header.time_ms)
