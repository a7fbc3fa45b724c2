"""The signed workload of the bench: record anchors from many patients and, every tenth
transaction, a grant to a provider, each patient's transactions in nonce order and all of them
given to one node (`make_workload`), signed before any clock starts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from healthnode import crypto
from healthnode.protocol.tx import AnyTx, ConsentGrant, KeyWrap, RecordAnchor

RECORDS_PER_PATIENT: Final = 40  # below the per-day patient budget of the ledger
PROVIDERS: Final = 8


@dataclass
class Workload:
    """Signed transactions per node, each node's list in submission order."""

    per_node: list[list[AnyTx]]

    @property
    def count(self) -> int:
        return sum(len(txs) for txs in self.per_node)

    def interleaved(self) -> list[tuple[int, AnyTx]]:
        """(node, tx) in an order that spreads load over the nodes."""
        out: list[tuple[int, AnyTx]] = []
        longest = max(len(txs) for txs in self.per_node)
        for position in range(longest):
            for node, txs in enumerate(self.per_node):
                if position < len(txs):
                    out.append((node, txs[position]))
        return out


def make_workload(count: int, nodes: int, chain_id: str, providers: list[bytes],
                  label: str) -> Workload:
    tag = crypto.keyed_digest(b"bench-tag-key".ljust(32, b"."), b"lab")
    per_node: list[list[AnyTx]] = [[] for _ in range(nodes)]
    patients = max(1, -(-count // RECORDS_PER_PATIENT))
    made = 0
    for number in range(patients):
        patient = crypto.Identity.from_seed(crypto.digest(f"{label}-patient-{number}".encode()))
        node = number % nodes
        nonce = 0
        while made < count and nonce < RECORDS_PER_PATIENT:
            nonce += 1
            made += 1
            if nonce % 10 == 0:
                tx: AnyTx = ConsentGrant(
                    signer=b"", nonce=nonce, grantee=providers[number % len(providers)],
                    actions=("read",), scope_records=(), scope_tags=(tag,), expires_at_ms=None,
                    key_wraps=(), tag_key_wrap=None).sign(patient, chain_id)
            else:
                tx = RecordAnchor(
                    signer=b"", nonce=nonce, patient=patient.public_key,
                    ciphertext_hash=crypto.digest(f"{label}-{number}-{nonce}".encode()),
                    ciphertext_bytes=2048, tags=(tag,),
                    key_wraps=(KeyWrap(patient.public_key, b"w" * 80),), supersedes=None,
                ).sign(patient, chain_id)
            per_node[node].append(tx)
    return Workload(per_node)
