"""A scheduled rules upgrade on real `healthnode run` processes (docs/operations.md, "Rules
upgrades").

Four nodes start a chain with ledger rules version 2. Three run this release, which carries
versions 2 and 3; node3 runs a release that carries version 2 only: the same code with its newest
version set to 2 before anything else imports it, which is what a release made before version 3
(with the upgrade mechanism) is to the chain. Three authorities vote version 3 from height H.
Then, on the three:
- a record erased before H keeps its emergency wrap in the state (rules 2), and one erased after
  H does not (rules 3), on every node alike;
- `status` and `rules` report version 3 from H.
And node3 finalizes H - 1, logs `rules_upgrade_needed` and exits with an error that names the
version, the height and what to do; started again with the old release it refuses at once with
the same error; started with this release it catches up past H on the others' chain.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from healthnode.admin.client import AdminError
from healthnode.crypto import Identity, digest, threshold
from healthnode.home.modes import private_umask
from healthnode.ledger.state import EMERGENCY_WRAP
from healthnode.protocol.genesis import RULES_NEWEST
from healthnode.protocol.tx import KeyWrap, RecordAnchor, RecordErase
from healthnode.store.leveldb import ChainStore
from healthnode.tools.launcher import NodeProcess
from tests.cluster import CHAIN_ID, LAB_TAG, Cluster, wait_for

pytestmark = pytest.mark.slow  # about a minute: CI runs it (.ci/run)

OLD_RELEASE = ("-c", "import sys, healthnode.protocol.genesis as g; g.RULES_NEWEST = 2; "
                     "from healthnode.cli import main; sys.exit(main())")


class WrappingPatient:
    """A patient whose records carry an emergency wrap bound to them."""

    def __init__(self, emergency_key: bytes) -> None:
        self.identity = Identity.generate()
        self.emergency_key = emergency_key
        self.nonce = 0

    def sign(self, tx: RecordAnchor | RecordErase) -> bytes:
        return tx.sign(self.identity, CHAIN_ID).encode()

    def anchor(self) -> tuple[bytes, bytes]:
        """The anchor's bytes and its record id."""
        self.nonce += 1
        patient = self.identity.public_key
        ciphertext_hash = digest(patient + self.nonce.to_bytes(8, "big"))
        wrap = threshold.wrap(self.emergency_key, os.urandom(32),
                              threshold.WrapLabel(CHAIN_ID, patient, ciphertext_hash))
        tx = RecordAnchor(
            signer=b"", nonce=self.nonce, patient=patient, ciphertext_hash=ciphertext_hash,
            ciphertext_bytes=1024, tags=(LAB_TAG,), key_wraps=(KeyWrap(patient, b"w" * 80),),
            supersedes=None, emergency_wrap=wrap).sign(self.identity, CHAIN_ID)
        return tx.encode(), tx.hash

    def erase(self, record_id: bytes) -> bytes:
        self.nonce += 1
        return self.sign(RecordErase(signer=b"", nonce=self.nonce, record_id=record_id))


def _final_height(cluster: Cluster, tx_hash: str) -> int:
    cluster.wait_final([tx_hash], [0], 30)
    return int(cluster.admin(0, "tx", tx_hash=tx_hash)["height"])


def test_a_rules_upgrade_takes_effect_at_its_height_and_an_old_release_stops_there(
        tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, nodes=4, rules_version=2)
    old = NodeProcess(cluster.homes[3], entry=OLD_RELEASE)
    cluster.nodes[3] = old
    assert cluster.genesis.emergency is not None
    patient = WrappingPatient(cluster.genesis.emergency.public_key)
    try:
        cluster.start_all()
        assert cluster.status(0)["rules"] == {"version": 2, "next": None,
                                              "release_carries": [2, RULES_NEWEST]}
        assert cluster.status(3)["rules"]["release_carries"] == [2, 2]

        # A record erased under rules 2: its wrap stays.
        anchor, before = patient.anchor()
        _final_height(cluster, cluster.submit(0, anchor))
        _final_height(cluster, cluster.submit(0, patient.erase(before)))

        # The old release will not vote for what it does not carry.
        start = cluster.height(0) + 8
        with pytest.raises(AdminError, match="carries rules versions 2 to 2"):
            cluster.admin(3, "rules_propose", version=3, height=start)
        for index in (0, 1, 2):
            cluster.admin(index, "rules_propose", version=3, height=start, wait=True)
        scheduled = wait_for(lambda: (answer := cluster.admin(1, "rules"))["schedule"]
                             and answer, 10, "the schedule on node1")
        assert scheduled["schedule"][-1]["version"] == 3
        assert scheduled["schedule"][-1]["from_height"] == start
        assert scheduled["proposals"] == []
        assert cluster.status(2)["rules"]["next"] == {"version": 3, "from_height": start}

        # node3 finalizes start - 1 and stops with the error that says what to do.
        code = old.process.wait(timeout=120) if old.process else None
        assert code == 1, old.log_tail()
        tail = old.log_tail(20_000)
        needed = [json.loads(line) for line in tail.splitlines()
                  if '"event": "rules_upgrade_needed"' in line]
        assert len(needed) == 1, tail
        assert (needed[0]["head"], needed[0]["from_height"], needed[0]["version"]) == \
            (start - 1, start, 3)
        assert f"rules are version 3 from height {start}" in needed[0]["detail"]
        assert "install a release that carries version 3" in needed[0]["detail"]
        assert tail.rstrip().endswith(f"healthnode: error: {needed[0]['detail']}")

        cluster.wait_height(start + 1, [0, 1, 2], 90)
        for index in (0, 1, 2):
            assert cluster.status(index)["rules"]["version"] == 3

        # A record erased under rules 3: its wrap goes.
        anchor, after = patient.anchor()
        _final_height(cluster, cluster.submit(0, anchor))
        erased_at = _final_height(cluster, cluster.submit(0, patient.erase(after)))
        assert erased_at >= start

        # The old release, started again, refuses at once with the same error.
        again = subprocess.run([sys.executable, *OLD_RELEASE, "run", "--home",
                                str(cluster.homes[3])], capture_output=True, text=True,
                               timeout=60, check=False)
        assert again.returncode == 1
        assert f"rules are version 3 from height {start}" in again.stderr

        # This release on node3's home: it catches up past the upgrade on the others' chain.
        cluster.nodes[3] = NodeProcess(cluster.homes[3])
        cluster.start(3)
        cluster.wait_ready(3)
        cluster.wait_height(erased_at, [3], 90)
        assert cluster.block_hash(3, erased_at) == cluster.block_hash(0, erased_at)
        assert cluster.status(3)["rules"]["version"] == 3
    finally:
        cluster.close()

    for home in cluster.homes:  # every node's state, read from its store
        with private_umask(), ChainStore.open(home / "data" / "chain", cluster.genesis) as store:
            assert store.head.height >= erased_at
            assert store.get(EMERGENCY_WRAP + before) is not None, home.name
            assert store.get(EMERGENCY_WRAP + after) is None, home.name
