"""Child process of the crash-consistency test: commits blocks to a store as fast as it can and
prints each committed height (flushed) only after `commit` has returned, until it is killed.

Run as: python -m tests.crash_child STORE_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

from healthnode.crypto import digest
from healthnode.ledger import rules
from healthnode.ledger.state import NONCE, read
from healthnode.protocol.state import SignerNonce
from healthnode.protocol.tx import RecordAnchor
from healthnode.store.leveldb import ChainStore
from tests.chain import AUTHORITIES, CHAIN_ID, certify, identity, make_genesis, tag, wrap_for

PATIENTS = [identity(f"crash-patient-{i}") for i in range(7)]
LAB_TAG = tag(b"c" * 32, "lab")
# Blocks ten minutes apart keep each patient within its daily anchoring budget however long
# the test runs.
TEN_MINUTES_MS = 600_000


def main(path: Path) -> None:
    genesis = make_genesis()
    store = ChainStore.open(path, genesis)
    print("ready", store.head.height, flush=True)
    while True:
        head = store.head
        meta = rules.chain_meta(store)
        height = head.height + 1
        txs = []
        for index in (height % 7, (height + 3) % 7):
            patient = PATIENTS[index]
            used = read(store, NONCE + patient.public_key, SignerNonce)
            nonce = (used.nonce if used else 0) + 1
            txs.append(RecordAnchor(
                signer=b"", nonce=nonce, patient=patient.public_key,
                ciphertext_hash=digest(b"%d-%d" % (height, index)),
                ciphertext_bytes=1024, tags=(LAB_TAG,),
                key_wraps=wrap_for(patient.public_key), supersedes=None,
            ).sign(patient, CHAIN_ID))
        built = rules.build_block(
            store, txs, height=height, time_ms=meta.time_ms + TEN_MINUTES_MS,
            prev_hash=head.block_hash,
            last_commit=store.certificate(head.height), evidence=(),
            proposer=AUTHORITIES[height % 4].public_key, params=genesis.params)
        assert len(built.block.txs) == 2, built.refused
        execution = rules.apply_block(store, built.block)
        store.commit(built.block, certify(built.block), execution)
        print("committed", height, flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
