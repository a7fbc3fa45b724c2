"""Versioned stores and `healthnode migrate`, on a real home of the release before the format
number existed.

`fixtures/store-format1-682adae.tar.gz` is a one-authority home made by commit 682adae (the last
commit before stores carried a format): `healthnode testnet --nodes 1 --base-port 29410
--chain-id store-format-1`, then `healthnode run` until height 2. Its store has no format record,
so it is format 1.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from healthnode.admin.client import call
from healthnode.home import config
from healthnode.home.migrate import migrate_home
from healthnode.store.leveldb import STORE_FORMAT, ChainStore, StoreFormatError
from healthnode.tools.launcher import NodeProcess
from tests import wallet_cli as cli
from tests.scan import hits
from tests.test_home_modes import move_ports, not_private

FIXTURE = Path(__file__).parent / "fixtures" / "store-format1-682adae.tar.gz"
FIXTURE_HEIGHT = 2
# A one-authority home made by 6033ef8 (format 2, ciphertexts in LevelDB): `testnet --nodes 1
# --chain-id store-format-2`, a patient (its key and pin beside the home, passphrase the tests'),
# two records of random bytes, the second erased at height 5, then stopped. `fixture.json` names
# the records, the kept one's plaintext digest, and 64 slices of the erased one's ciphertext,
# which that release left in its LevelDB tables after the erasure.
FIXTURE_2 = Path(__file__).parent / "fixtures" / "store-format2-6033ef8.tar.gz"


def healthnode(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "healthnode", *arguments],
                          capture_output=True, text=True, timeout=120, check=False)


def extract_old_home(tmp_path: Path, fixture: Path = FIXTURE) -> Path:
    """The fixture's home as the archive holds it: 0755 directories and 0644 files, as every
    release made them before homes were private (home/modes.py); its ports moved to free
    ones."""
    with tarfile.open(fixture) as archive:
        archive.extractall(tmp_path, filter="data")
    home = tmp_path / "node0"
    move_ports(home)
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
    assert f"format 1; this release reads format {STORE_FORMAT}" in refused.stderr, refused.stderr


def test_an_old_store_is_refused_then_migrated_and_runs_with_its_chain(old_home: Path) -> None:
    refused = healthnode("run", "--home", str(old_home))
    assert refused.returncode != 0
    assert f"format 1; this release reads format {STORE_FORMAT}" in refused.stderr, refused.stderr
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


def test_a_format_2_store_moves_its_ciphertexts_to_files_and_drops_what_was_erased(
        tmp_path: Path) -> None:
    home = extract_old_home(tmp_path, FIXTURE_2)
    subprocess.run(["chmod", "-R", "go-rwx", str(home)], check=True)
    facts = json.loads((tmp_path / "fixture.json").read_text())
    erased = [bytes.fromhex(piece) for piece in facts["erased_ciphertext_slices"]]
    assert hits(home, erased) == {"data/chain/000005.ldb": 64}  # the old release kept it

    report = migrate_home(home)
    assert (report.from_format, report.to_format) == (2, STORE_FORMAT)
    assert report.backup is not None and report.backup.is_relative_to(home)
    assert hits(home, erased) == {}  # the store, the ciphertext files and the backup
    assert len(list((home / "data" / "blobs").rglob("*"))) == 2  # one directory, one file

    node = NodeProcess(home)
    node.start()
    try:
        node.wait_ready(30)
        patient = ["--node", str(home), "--as", str(tmp_path / "patient.key")]
        got = cli.run("record", "get", *patient, facts["kept_record"], "--out",
                      str(tmp_path / "kept.out"))
        assert got.returncode == 0, got.stderr
        assert hashlib.sha256((tmp_path / "kept.out").read_bytes()).hexdigest() == \
            facts["kept_sha256"]
        cli.refused("record_erased", "record", "get", *patient, facts["erased_record"],
                    "--out", str(tmp_path / "erased.out"))
    finally:
        node.stop()
