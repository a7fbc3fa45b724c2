"""A backup of a large store through the operator's command, with progress (slow: minutes).

The store is built in this process by the test ledger (tests/chain.py): 100 blocks of 1,000
record anchors from 1,000 patients, committed into a real LevelDB in a node home whose key is
one of the four authorities of the test genesis. That node runs alone (it finalizes nothing
without the other three, which does not matter to a backup); `healthnode backup` copies its
store in the background and shows progress until it is done.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from healthnode.crypto import Identity
from healthnode.home import config, keys
from healthnode.home.layout import free_base_port
from healthnode.home.modes import private_umask
from healthnode.store.leveldb import ChainStore
from healthnode.tools.launcher import NodeProcess
from tests.chain import AUTHORITIES, World
from tests.test_store import copy_into

RECORDS = 100_000
PER_BLOCK = 1_000
TAG = bytes(32)


class _LeanWorld(World):
    """The test ledger without its per-height copies of the state (100 copies of a state of
    100,000 records would take gigabytes); this test reads no past state."""

    def finalize(self, *args: Any, **kwargs: Any) -> Any:
        certificate = super().finalize(*args, **kwargs)
        self.states.clear()
        return certificate


@pytest.mark.slow
def test_a_backup_of_100000_records_completes_through_the_cli_with_progress(
        tmp_path: Path) -> None:
    started = time.monotonic()
    world = _LeanWorld()
    patients = [Identity.generate() for _ in range(PER_BLOCK)]
    for _ in range(RECORDS // PER_BLOCK):
        world.commit(*[world.anchor(patient, patient, [TAG]) for patient in patients])
    home = tmp_path / "node0"
    home.mkdir(mode=0o700)
    keys.write_private_file(home / config.KEY_FILE,
                            keys.encode_key_file("node", AUTHORITIES[0], None))
    config.write_genesis(world.genesis, home / config.GENESIS_FILE)
    port = free_base_port(1)
    config.write_config(config.NodeConfig(
        node=config.NodeSection(name="node0"),
        p2p=dataclasses.replace(config.P2PSection(), listen=(f"/ip4/127.0.0.1/tcp/{port}",),
                                peers=()),
        metrics=config.MetricsSection(listen=f"127.0.0.1:{port + 100}")), home)
    with private_umask(), ChainStore.open(home / "data" / "chain", world.genesis) as store:
        copy_into(store, world)  # its files private, as a node's own (home/modes.py)
    built_s = time.monotonic() - started

    node = NodeProcess(home)
    node.start()
    try:
        node.wait_ready(60)
        backup_started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "healthnode", "backup", "--home", str(home), "--dir",
             str(tmp_path / "backup"), "--interval", "0.2"],
            capture_output=True, text=True, timeout=900, check=False)
        backup_s = time.monotonic() - backup_started
    finally:
        node.stop()
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["state"] == "done" and result["height"] == RECORDS // PER_BLOCK
    assert result["keys"] == result["keys_copied"] > RECORDS
    progress = [line for line in done.stderr.splitlines() if line.startswith("backup: ")]
    assert progress, done.stderr
    print(f"\n{RECORDS:,} records in {RECORDS // PER_BLOCK} blocks built in {built_s:.0f} s; "
          f"backup of {result['keys']:,} keys, {result['bytes_copied'] / 2**20:.1f} MiB in "
          f"{backup_s:.1f} s with {len(progress)} progress lines; last: {progress[-1]}")
