"""Versioned stores and `healthnode migrate`, on a real home of the release before the format
number existed.

`fixtures/store-format1-682adae.tar.gz` is a one-authority home made by commit 682adae (the last
commit before stores carried a format): `healthnode testnet --nodes 1 --base-port 29410
--chain-id store-format-1`, then `healthnode run` until height 2. Its store has no format record,
so it is format 1.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from healthnode.admin.client import call
from healthnode.home import config
from healthnode.home.layout import free_base_port
from healthnode.home.migrate import migrate_home
from healthnode.store.leveldb import STORE_FORMAT, ChainStore, StoreFormatError
from healthnode.tools.launcher import NodeProcess
from tests.test_home_modes import not_private

FIXTURE = Path(__file__).parent / "fixtures" / "store-format1-682adae.tar.gz"
FIXTURE_HEIGHT = 2


def healthnode(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "healthnode", *arguments],
                          capture_output=True, text=True, timeout=120, check=False)


def extract_old_home(tmp_path: Path) -> Path:
    """The fixture's home as the archive holds it: 0755 directories and 0644 files, as every
    release made them before homes were private (home/modes.py)."""
    with tarfile.open(FIXTURE) as archive:
        archive.extractall(tmp_path, filter="data")
    home = tmp_path / "node0"
    port = free_base_port(1)
    node_config = config.load_config(home)
    config.write_config(dataclasses.replace(
        node_config,
        p2p=dataclasses.replace(node_config.p2p, listen=(f"/ip4/127.0.0.1/tcp/{port}",)),
        metrics=dataclasses.replace(node_config.metrics, listen=f"127.0.0.1:{port + 100}")),
        home)
    return home


@pytest.fixture
def old_home(tmp_path: Path) -> Path:
    """The old home after the command its first refusal names (the test below)."""
    home = extract_old_home(tmp_path)
    subprocess.run(["chmod", "-R", "go-rwx", str(home)], check=True)
    return home


def test_an_old_home_is_refused_for_its_modes_until_the_command_named(tmp_path: Path) -> None:
    home = extract_old_home(tmp_path)
    refused = healthnode("run", "--home", str(home))
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert f"{home} has mode 0755" in refused.stderr, refused.stderr
    assert f"chmod -R go-rwx {home}" in refused.stderr
    subprocess.run(["chmod", "-R", "go-rwx", str(home)], check=True)
    refused = healthnode("run", "--home", str(home))
    assert "format 1; this release reads format 2" in refused.stderr, refused.stderr


def test_an_old_store_is_refused_then_migrated_and_runs_with_its_chain(old_home: Path) -> None:
    refused = healthnode("run", "--home", str(old_home))
    assert refused.returncode != 0
    assert "format 1; this release reads format 2" in refused.stderr, refused.stderr
    assert "healthnode migrate --home" in refused.stderr and "Traceback" not in refused.stderr

    done = healthnode("migrate", "--home", str(old_home))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["from_format"], report["to_format"], report["height"]) == \
        (1, STORE_FORMAT, FIXTURE_HEIGHT)
    backup = Path(report["backup"])
    assert json.loads((backup / "backup.json").read_text())["height"] == FIXTURE_HEIGHT
    assert backup.is_relative_to(old_home) and not_private(old_home) == []

    verified = healthnode("verify", "--home", str(old_home))
    assert verified.returncode == 0, verified.stderr

    node = NodeProcess(old_home)
    node.start()
    try:
        node.wait_ready(30)
        status = call(old_home / config.load_config(old_home).admin.socket, "status")
        assert status["height"] >= FIXTURE_HEIGHT and status["chain_id"] == "store-format-1"
    finally:
        node.stop()

    again = healthnode("migrate", "--home", str(old_home))  # nothing left to do
    assert json.loads(again.stdout)["backup"] is None


def test_a_store_of_a_newer_format_is_refused_by_run_and_by_migrate(old_home: Path) -> None:
    migrate_home(old_home)
    node_config = config.load_config(old_home)
    genesis = config.load_genesis(old_home / config.GENESIS_FILE)
    chain = old_home / node_config.node.data_dir / "chain"
    with ChainStore.open(chain, genesis) as store:
        store.set_format(STORE_FORMAT + 1)
    with pytest.raises(StoreFormatError, match="written by a newer release"):
        ChainStore.open(chain, genesis)
    with pytest.raises(StoreFormatError, match="newer release"):
        migrate_home(old_home)


def test_migrate_refuses_a_backup_directory_that_holds_something(old_home: Path,
                                                                  tmp_path: Path) -> None:
    earlier = tmp_path / "before-upgrade"
    (earlier / "chain").mkdir(parents=True)
    (earlier / "backup.json").write_text("{}")
    done = healthnode("migrate", "--home", str(old_home), "--backup", str(earlier))
    assert done.returncode != 0 and "not an empty directory" in done.stderr
    assert sorted(p.name for p in earlier.iterdir()) == ["backup.json", "chain"]  # untouched
    refused = healthnode("run", "--home", str(old_home))  # and the store still format 1
    assert "format 1" in refused.stderr


def test_the_backup_taken_before_a_migration_verifies_and_restores(old_home: Path,
                                                                   tmp_path: Path) -> None:
    report = migrate_home(old_home, tmp_path / "pre")
    assert report.backup == tmp_path / "pre"
    verified = healthnode("verify", "--home", str(report.backup))
    assert verified.returncode == 0, verified.stderr
    restored = tmp_path / "restored"
    done = healthnode("init", "--home", str(restored), "--restore", str(report.backup),
                      "--key", str(old_home / config.KEY_FILE))
    assert done.returncode == 0, done.stderr
    assert not_private(restored) == []
    # The restored home is the old format again: the node asks for the migration.
    refused = healthnode("run", "--home", str(restored))
    assert "format 1" in refused.stderr and "healthnode migrate" in refused.stderr
    again = migrate_home(restored)
    assert (again.from_format, again.to_format, again.height) == (1, STORE_FORMAT,
                                                                  FIXTURE_HEIGHT)
