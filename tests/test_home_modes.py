"""Node homes at rest (home/modes.py): every way a home is made leaves it 0700 with every file
0600, LevelDB's files, backups and the node's log included, and `healthnode run` refuses a home
that others may use, with the path, its mode and the command that fixes it."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from healthnode.admin.client import call
from healthnode.errors import HomeError
from healthnode.home import config, keys
from healthnode.home.layout import free_base_port, make_testnet
from healthnode.home.modes import (
    access_by_others,
    check_home,
    home_entry_problem,
    secret_file_problem,
)
from healthnode.tools.launcher import NodeProcess
from tests.cluster import wait_for

USUAL_UMASK = 0o022  # what a shell gives: files 0644, directories 0755


def healthnode(*arguments: str) -> subprocess.CompletedProcess[str]:
    """A `healthnode` command run under the usual umask, so that what it makes private is
    made private by healthnode itself."""
    return subprocess.run([sys.executable, "-m", "healthnode", *arguments], capture_output=True,
                          text=True, timeout=120, check=False, umask=USUAL_UMASK,
                          stdin=subprocess.DEVNULL)


def not_private(root: Path) -> list[str]:
    """Every entry under `root` (itself included) that is not a 0700 directory or a 0600 file."""
    wrong = []
    for path in [root, *sorted(root.rglob("*"))]:
        mode = path.lstat().st_mode
        expected = 0o700 if stat.S_ISDIR(mode) else 0o600
        if stat.S_IMODE(mode) != expected or stat.S_ISLNK(mode):
            wrong.append(f"{path}: {stat.filemode(mode)}")
    return wrong


def move_ports(home: Path) -> None:
    """Free ports for the node of `home` (a default config listens on 26600)."""
    port = free_base_port(1)
    node_config = config.load_config(home)
    config.write_config(dataclasses.replace(
        node_config,
        p2p=dataclasses.replace(node_config.p2p, listen=(f"/ip4/127.0.0.1/tcp/{port}",)),
        metrics=dataclasses.replace(node_config.metrics, listen=f"127.0.0.1:{port + 100}")),
        home)


def run_and_back_up(home: Path) -> Path:
    """Run the node of `home` until a backup it takes in the background into the home is done;
    the backup's directory."""
    node = NodeProcess(home)
    node.start()
    try:
        node.wait_ready(30)
        socket = home / config.load_config(home).admin.socket
        (home / "backups").mkdir(mode=0o700)
        call(socket, "backup", {"dir": str((home / "backups" / "b1").absolute())})
        wait_for(lambda: call(socket, "backup_status")["state"] == "done", 60,
                 "the background backup")
    finally:
        assert node.stop() == 0, node.log_tail()
    return home / "backups" / "b1"


# --- the pure check ---------------------------------------------------------------------------

@pytest.mark.parametrize(("mode", "expected"), [
    (0o600, None), (0o700, None), (0o400, None), (0o000, None),
    (0o640, "group may read"),
    (0o604, "others may read"),
    (0o620, "group may write"),
    (0o710, "group may execute"),
    (0o755, "group may read and execute; others may read and execute"),
    (0o777, "group may read and write and execute; others may read and write and execute"),
    (stat.S_IFDIR | 0o750, "group may read and execute"),
])
def test_access_by_others_names_what_group_and_others_may_do(mode: int,
                                                            expected: str | None) -> None:
    assert access_by_others(mode) == expected


def test_an_entry_others_may_read_is_refused_with_its_mode_and_the_fix() -> None:
    problem = home_entry_problem("/srv/hn/data/chain/000005.ldb", stat.S_IFREG | 0o644, 1000,
                                 1000, "/srv/hn")
    assert problem == ("/srv/hn/data/chain/000005.ldb has mode 0644 (group may read; others may "
                       "read), but a node home must be its user's alone: chmod -R go-rwx /srv/hn")
    assert home_entry_problem("/srv/hn", stat.S_IFDIR | 0o700, 1000, 1000, "/srv/hn") is None
    quoted = home_entry_problem("/a b/x", stat.S_IFREG | 0o660, 7, 7, "/a b")
    assert quoted is not None and quoted.endswith("chmod -R go-rwx '/a b'")


def test_an_entry_of_another_user_or_a_link_is_refused() -> None:
    owned = home_entry_problem("/srv/hn/config.toml", stat.S_IFREG | 0o600, 0, 1000, "/srv/hn")
    assert owned is not None and "belongs to uid 0, not to uid 1000" in owned
    assert "chown -R 1000 /srv/hn" in owned
    link = home_entry_problem("/srv/hn/data", stat.S_IFLNK | 0o777, 1000, 1000, "/srv/hn")
    assert link is not None and "symbolic link" in link
    assert home_entry_problem("/srv/hn/admin.sock", stat.S_IFSOCK | 0o600, 1000, 1000,
                              "/srv/hn") is None


def test_a_secret_file_outside_the_home_is_judged_by_its_mode_alone() -> None:
    assert secret_file_problem("/run/credentials/hn/node_key", stat.S_IFREG | 0o400) is None
    problem = secret_file_problem("/etc/hn/node.env", stat.S_IFREG | 0o644)
    assert problem is not None and "mode 0644" in problem
    assert problem.endswith("chmod go-rwx /etc/hn/node.env")


# --- the walk -----------------------------------------------------------------------------------

def test_check_home_finds_a_deep_file_a_link_and_another_owner(tmp_path: Path) -> None:
    _, homes = make_testnet(1, tmp_path / "net", free_base_port(1))
    home = homes[0].path
    check_home(home)
    deep = home / "data" / "chain"
    deep.mkdir(parents=True, mode=0o700)
    deep.parent.chmod(0o700)
    table = deep / "000005.ldb"
    table.write_bytes(b"x")
    table.chmod(0o604)
    with pytest.raises(HomeError, match=r"000005\.ldb has mode 0604 \(others may read\)"):
        check_home(home)
    table.chmod(0o600)
    check_home(home)
    link = home / "data" / "elsewhere"
    link.symlink_to(tmp_path)
    with pytest.raises(HomeError, match="elsewhere is a symbolic link"):
        check_home(home)
    link.unlink()
    if os.geteuid() == 0:  # only root may give a file away
        os.chown(table, 4242, -1)
        with pytest.raises(HomeError, match="belongs to uid 4242"):
            check_home(home)
    with pytest.raises(HomeError, match="no such node home"):
        check_home(tmp_path / "absent")


def test_a_home_reached_through_a_link_is_judged_by_its_directory(tmp_path: Path) -> None:
    _, homes = make_testnet(1, tmp_path / "net", free_base_port(1))
    (tmp_path / "link").symlink_to(homes[0].path)
    check_home(tmp_path / "link")


# --- real homes, after a real node ran in them ------------------------------------------------

def test_homes_of_testnet_init_restore_and_backups_are_private_after_a_node_ran(
        tmp_path: Path) -> None:
    made = healthnode("testnet", "--nodes", "1", "--out", str(tmp_path / "net"),
                      "--base-port", str(free_base_port(1)))
    assert made.returncode == 0, made.stderr
    testnet_home = tmp_path / "net" / "node0"
    backup = run_and_back_up(testnet_home)
    assert (testnet_home / "node.log").exists() and any((backup / "chain").iterdir())
    assert list((testnet_home / "data" / "chain").glob("*.log"))  # LevelDB's files are walked
    assert not_private(testnet_home) == []
    assert not_private(tmp_path / "net") == []  # the testnet's own genesis too

    # A hospital's home: a directory made beforehand with the usual 0755, its key, then init.
    hospital = tmp_path / "hospital"
    hospital.mkdir()
    hospital.chmod(0o755)
    keys.write_private_file(hospital / config.KEY_FILE,
                            (testnet_home / config.KEY_FILE).read_bytes())
    done = healthnode("init", "--home", str(hospital), "--genesis",
                      str(tmp_path / "net" / "genesis.json"))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["name"] == "node0"
    move_ports(hospital)
    run_and_back_up(hospital)
    assert not_private(hospital) == []

    for path in backup.rglob("*"):  # as a backup of an older release may be: a copy keeps them
        path.chmod(0o755 if path.is_dir() else 0o644)
    restored = tmp_path / "restored"
    done = healthnode("init", "--home", str(restored), "--restore", str(backup),
                      "--key", str(testnet_home / config.KEY_FILE))
    assert done.returncode == 0, done.stderr
    assert not_private(restored) == []


def test_run_refuses_a_group_readable_file_and_a_world_readable_home(tmp_path: Path) -> None:
    _, homes = make_testnet(1, tmp_path / "net", free_base_port(1))
    home = homes[0].path
    (home / config.CONFIG_FILE).chmod(0o640)
    refused = healthnode("run", "--home", str(home))
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        f"healthnode: error: {home / config.CONFIG_FILE} has mode 0640 (group may read), but a "
        f"node home must be its user's alone: chmod -R go-rwx {home}")

    (home / config.CONFIG_FILE).chmod(0o600)
    home.chmod(0o755)
    refused = healthnode("run", "--home", str(home))
    assert refused.returncode == 1
    assert f"healthnode: error: {home} has mode 0755 (group may read and execute; others may " \
           f"read and execute)" in refused.stderr
    assert f"chmod -R go-rwx {home}" in refused.stderr and "Traceback" not in refused.stderr
    assert not (home / "data").exists()  # refused before the store was opened
