"""Checking a node's answer about the state without believing the node: state keys' values or
absences, proven by the state tree (ledger/smt.py) against a header that the light client
(ledger/light.py) takes from the pinned genesis; and a transaction's inclusion in a certified
block (protocol/merkle.py). docs/ledger.md, "The state root"; docs/wallet.md, "A wallet that
believes no single node".

Pure, and meant to be shared: the checking wallet, state sync and the patient's export (later
issues) check the answers they act on with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from healthnode.crypto import digest
from healthnode.ledger import light, smt
from healthnode.ledger.rules import in_tree
from healthnode.protocol import merkle
from healthnode.protocol.block import VerificationError
from healthnode.protocol.client import CertifiedHead, KeyProof, StateProofResponse, TxInclusion


@dataclass(frozen=True, slots=True)
class Proven:
    """State keys' values (None: absent) as of `height` and `time_ms`, the header's: the caller
    judges whether that is recent enough (an old certified answer is still a true one).
    `trusted` is the light client's head after the answer (moved up to it if it was newer)."""

    values: dict[bytes, bytes | None]
    height: int
    time_ms: int
    trusted: light.TrustedHead


def tree_proof(proof: KeyProof) -> smt.Proof:
    """The state tree's proof that a KeyProof carries; VerificationError for half a leaf."""
    leaf = None
    if proof.leaf_key_hash is not None or proof.leaf_value_hash is not None:
        if proof.leaf_key_hash is None or proof.leaf_value_hash is None:
            raise VerificationError(f"the proof of key {proof.key[:8]!r}… has half a leaf")
        leaf = smt.Leaf(proof.leaf_key_hash, proof.leaf_value_hash)
    return smt.Proof(tuple(proof.siblings), leaf)


def key_value(state_root: bytes, proof: KeyProof) -> bytes | None:
    """The value (None: absent) of `proof.key` that `proof` shows under `state_root`, or
    VerificationError."""
    if not in_tree(proof.key):
        raise VerificationError("the chain meta and the indexes are outside the state tree")
    value_hash = None if proof.value is None else digest(proof.value)
    if not smt.verify(state_root, digest(proof.key), value_hash, tree_proof(proof)):
        raise VerificationError(f"the proof of key {proof.key[:8]!r}… does not verify against "
                                f"the header's state root")
    return proof.value


def take_head(trusted: light.TrustedHead, head: CertifiedHead) -> light.TrustedHead:
    """The trusted head after checking `head`: moved up to it when it is newer, else the same
    (an equal or older header is checked against the trusted one). LightError otherwise."""
    header = head.header
    if header.height > trusted.height:
        next_set = head.next_set
        if next_set.key != light.next_set_key(header.height):
            raise light.LightError("the next authority set is proven for another height")
        return light.advance(trusted, header, head.certificate, head.authorities,
                             light.NextSetProof(next_set.value, tree_proof(next_set)))
    light.check_header(trusted, header, head.certificate, head.authorities)
    return trusted


def verify_state_answer(answer: StateProofResponse, keys: Sequence[bytes],
                        trusted: light.TrustedHead) -> Proven:
    """The values of `keys` that `answer` proves, at a head the light client takes from
    `trusted`; VerificationError (a LightError for the head) naming what failed otherwise."""
    head = take_head(trusted, answer.head)
    if tuple(p.key for p in answer.proofs) != tuple(keys):
        raise VerificationError("the answer proves other keys than those asked")
    root = answer.head.header.state_hash
    values = {proof.key: key_value(root, proof) for proof in answer.proofs}
    return Proven(values, answer.head.header.height, answer.head.header.time_ms, head)


def verify_inclusion(inclusion: TxInclusion, tx_hash: bytes, height: int,
                     trusted: light.TrustedHead) -> None:
    """VerificationError unless `tx_hash` is in the certified block of `height`."""
    header = inclusion.header
    if header.height != height:
        raise VerificationError(f"the inclusion is at height {header.height}, not {height}")
    light.check_header(trusted, header, inclusion.certificate, inclusion.authorities)
    if not merkle.verify_inclusion(header.txs_root, tx_hash, inclusion.index, inclusion.size,
                                   inclusion.path):
        raise VerificationError("the transaction's Merkle path does not lead to the block's "
                                "txs_root")


def key_proof(view: smt.NodeReader, root: smt.Ref | None, key: bytes,
              value: bytes | None) -> KeyProof:
    """The prover's side: `key`'s value (None: absent) and its path in the state tree under
    `root`, as a node answers it (node/client.py)."""
    proof = smt.prove(view, root, digest(key))
    leaf = proof.leaf
    return KeyProof(key, value, proof.siblings, leaf.key_hash if leaf else None,
                    leaf.value_hash if leaf else None)
