"""The node key outside the clear home file (home/node_key.py): sealed under a passphrase, or kept
outside the home and handed over as a file, a descriptor or an environment file; real nodes start
from each, and neither the key nor the passphrase shows in the command line or the log."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from healthnode import crypto
from healthnode.admin.client import call
from healthnode.errors import HomeError, KeyFileError
from healthnode.home import config, keys
from healthnode.home.backup import restore_home, write_backup
from healthnode.home.layout import free_base_port, make_testnet
from healthnode.home.modes import check_home
from healthnode.home.node_key import (
    KEY_ENV,
    KeySource,
    key_from_env_file,
    load_node_key,
    parse_env_file,
)
from healthnode.store.leveldb import ChainStore
from healthnode.tools.launcher import NodeProcess
from tests.cluster import wait_for

PASSPHRASE = "a hospital's long passphrase"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv(keys.PASSPHRASE_ENV, raising=False)
    _, homes = make_testnet(1, tmp_path / "net", free_base_port(1))
    return homes[0].path


def private_file(path: Path, data: bytes) -> Path:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    keys.write_private_file(path, data)
    return path


def seal_in_place(home: Path) -> crypto.Identity:
    """The home's clear key replaced by the same key sealed under PASSPHRASE."""
    key_path = home / config.KEY_FILE
    identity = keys.load_identity(key_path)
    key_path.unlink()
    keys.write_private_file(key_path, keys.encode_key_file("node", identity, PASSPHRASE))
    return identity


def move_out(home: Path, to: Path) -> crypto.Identity:
    """The home's key moved to `to`, its public half left in the home."""
    key_path = home / config.KEY_FILE
    public_key = keys.read_node_public_key(key_path)
    private_file(to, key_path.read_bytes())
    key_path.unlink()
    keys.write_private_file(key_path, keys.encode_public_key_file(public_key))
    document = keys.read_key_document(to)
    return keys.open_identity(document, str(to), PASSPHRASE if "encryption" in document else None)


def pipe_holding(data: bytes) -> int:
    """The read end of a pipe that holds `data` and then ends."""
    read_end, write_end = os.pipe()
    os.write(write_end, data)
    os.close(write_end)
    return read_end


# --- environment files -----------------------------------------------------------------------

def test_an_environment_file_is_read_as_systemd_and_docker_write_them() -> None:
    text = "# comment\n; another\n\nA=1\n B = two words \nC='quoted'\nD=\"x=y\"\nE=\n"
    assert parse_env_file(text, "f") == {"A": "1", "B": "two words", "C": "quoted", "D": "x=y",
                                         "E": ""}


def test_an_environment_file_error_names_the_line_never_its_content() -> None:
    with pytest.raises(KeyFileError) as refused:
        parse_env_file("A=1\nsecret-seed-bytes\n", "node.env")
    assert str(refused.value) == "node.env: line 2 is not NAME=VALUE"
    with pytest.raises(KeyFileError) as refused:
        key_from_env_file(f"{KEY_ENV}=not*base64*secret\n", "node.env")
    assert "not base64" in str(refused.value) and "secret" not in str(refused.value)
    with pytest.raises(KeyFileError, match=f"no {KEY_ENV}= line"):
        key_from_env_file("OTHER=1\n", "node.env")


def test_an_environment_file_carries_a_key_file_in_base64() -> None:
    identity = crypto.Identity.generate()
    encoded = base64.b64encode(keys.encode_key_file("node", identity, None)).decode()
    document = key_from_env_file(f"{KEY_ENV}={encoded}\n", "node.env")
    assert keys.open_identity(document, "node.env").seed == identity.seed


# --- where the key comes from ------------------------------------------------------------------

def test_the_home_key_clear_or_sealed(home: Path, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    clear = load_node_key(home, KeySource())
    identity = seal_in_place(home)
    assert identity.seed == clear.seed
    with pytest.raises(KeyFileError, match="no passphrase"):
        load_node_key(home, KeySource())
    passphrase_file = private_file(tmp_path / "secrets" / "passphrase", PASSPHRASE.encode())
    assert load_node_key(home, KeySource(passphrase_file=passphrase_file)).seed == clear.seed
    wrong = private_file(tmp_path / "secrets" / "wrong", b"not the passphrase\n")
    with pytest.raises(KeyFileError, match="wrong passphrase"):
        load_node_key(home, KeySource(passphrase_file=wrong))
    assert load_node_key(home, KeySource(passphrase_fd=pipe_holding(PASSPHRASE.encode()))) \
        .seed == clear.seed
    monkeypatch.setenv(keys.PASSPHRASE_ENV, PASSPHRASE)
    assert load_node_key(home, KeySource()).seed == clear.seed
    assert keys.PASSPHRASE_ENV not in os.environ  # nothing the node starts inherits it


def test_a_passphrase_file_others_may_read_is_refused(home: Path, tmp_path: Path) -> None:
    seal_in_place(home)
    passphrase_file = tmp_path / "passphrase"
    passphrase_file.write_text(PASSPHRASE)
    passphrase_file.chmod(0o644)
    with pytest.raises(KeyFileError, match=r"mode 0644 .* chmod go-rwx"):
        load_node_key(home, KeySource(passphrase_file=passphrase_file))


def test_a_key_outside_the_home_by_file_descriptor_and_environment_file(
        home: Path, tmp_path: Path) -> None:
    outside = tmp_path / "custody" / "node_key.json"
    identity = move_out(home, outside)
    with pytest.raises(KeyFileError, match="public key only"):
        load_node_key(home, KeySource())
    assert load_node_key(home, KeySource(file=outside)).seed == identity.seed
    fd = pipe_holding(outside.read_bytes())
    assert load_node_key(home, KeySource(fd=fd)).seed == identity.seed
    with pytest.raises(OSError):
        os.fstat(fd)  # read once, then closed
    env_file = private_file(tmp_path / "custody" / "node.env",
                            f"{KEY_ENV}={base64.b64encode(outside.read_bytes()).decode()}\n"
                            .encode())
    assert load_node_key(home, KeySource(env_file=env_file)).seed == identity.seed
    with pytest.raises(KeyFileError, match="--key-fd 999: not an open descriptor"):
        load_node_key(home, KeySource(fd=999))


def test_a_clear_key_outside_the_home_must_be_private(home: Path, tmp_path: Path) -> None:
    outside = tmp_path / "custody" / "node_key.json"
    move_out(home, outside)
    outside.chmod(0o640)
    with pytest.raises(KeyFileError, match=r"node_key.json has mode 0640 \(group may read\)"):
        load_node_key(home, KeySource(file=outside))


def test_a_node_takes_its_key_from_one_place(home: Path, tmp_path: Path) -> None:
    outside = private_file(tmp_path / "custody" / "node_key.json",
                           (home / config.KEY_FILE).read_bytes())
    with pytest.raises(KeyFileError, match="holds the node key too, and --key-file"):
        load_node_key(home, KeySource(file=outside))
    other = private_file(tmp_path / "custody" / "other.json",
                         keys.encode_key_file("node", crypto.Identity.generate(), None))
    move_out(home, tmp_path / "custody" / "moved.json")
    with pytest.raises(KeyFileError, match="give this node's key"):
        load_node_key(home, KeySource(file=other))
    with pytest.raises(KeyFileError, match="takes no passphrase"):
        load_node_key(home, KeySource(file=tmp_path / "custody" / "moved.json",
                                      passphrase_fd=pipe_holding(b"x")))


def test_init_backup_and_restore_read_only_the_public_key(home: Path, tmp_path: Path) -> None:
    identity = seal_in_place(home)
    assert keys.read_node_public_key(home / config.KEY_FILE) == identity.public_key
    again = subprocess.run(
        [sys.executable, "-m", "healthnode", "init", "--home", str(home), "--genesis",
         str(home / config.GENESIS_FILE)], capture_output=True, text=True, timeout=60,
        check=False, stdin=subprocess.DEVNULL, env={k: v for k, v in os.environ.items()
                                                    if k != keys.PASSPHRASE_ENV})
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["public_key"] == identity.public_key.hex()
    move_out(home, tmp_path / "custody" / "moved.json")  # sealed, moved: the public half stays
    assert keys.read_node_public_key(home / config.KEY_FILE) == identity.public_key
    genesis = config.load_genesis(home / config.GENESIS_FILE)
    with ChainStore.open(home / "data" / "chain", genesis) as store:
        write_backup(store, home, genesis, identity.public_key, tmp_path / "backup")
    restored, _ = restore_home(tmp_path / "restored", tmp_path / "backup", home / config.KEY_FILE)
    assert restored.public_key == identity.public_key
    assert keys.secret_form(keys.read_key_document(restored.path / config.KEY_FILE)) == "none"


# --- the keys commands --------------------------------------------------------------------------

def keys_cli(*arguments: str) -> dict[str, str]:
    done = subprocess.run([sys.executable, "-m", "healthnode", "keys", *arguments],
                          capture_output=True, text=True, timeout=60, check=False,
                          stdin=subprocess.DEVNULL,
                          env={**os.environ, keys.PASSPHRASE_ENV: PASSPHRASE})
    assert done.returncode == 0, done.stderr
    shown: dict[str, str] = json.loads(done.stdout)
    return shown


def test_keys_new_sealed_seal_public_and_show(tmp_path: Path) -> None:
    made = keys_cli("new", "--kind", "node", "--sealed", "--out", str(tmp_path / "sealed.json"))
    assert made["secret"] == "sealed"
    assert keys.load_identity(tmp_path / "sealed.json", PASSPHRASE).public_key.hex() == \
        made["public_key"]
    clear = keys_cli("new", "--kind", "node", "--out", str(tmp_path / "clear.json"))
    assert clear["secret"] == "clear"
    sealed = keys_cli("seal", str(tmp_path / "clear.json"), "--out", str(tmp_path / "s.json"))
    assert (sealed["public_key"], sealed["peer_id"]) == (clear["public_key"], clear["peer_id"])
    assert json.loads((tmp_path / "clear.json").read_text())["seed"] not in \
        (tmp_path / "s.json").read_text()
    public = keys_cli("public", str(tmp_path / "s.json"), "--out", str(tmp_path / "p.json"))
    assert public["secret"] == "none" and public["public_key"] == clear["public_key"]
    assert keys_cli("show", str(tmp_path / "p.json"))["secret"] == "none"
    assert (tmp_path / "p.json").stat().st_mode & 0o777 == 0o600


# --- real nodes -------------------------------------------------------------------------------

@pytest.fixture
def started() -> Iterator[list[NodeProcess]]:
    nodes: list[NodeProcess] = []
    yield nodes
    for node in nodes:
        node.stop()


@pytest.mark.parametrize("source", ["sealed-home-passphrase-fd", "key-fd", "sealed-env-file"])
def test_a_node_starts_with_its_key_from_each_source(home: Path, tmp_path: Path, source: str,
                                                    started: list[NodeProcess]) -> None:
    environment = {k: v for k, v in os.environ.items() if k != keys.PASSPHRASE_ENV}
    if source == "sealed-home-passphrase-fd":
        identity = seal_in_place(home)
        fd = pipe_holding(PASSPHRASE.encode() + b"\n")
        options, fds = ("--passphrase-fd", str(fd)), (fd,)
    elif source == "key-fd":
        identity = move_out(home, tmp_path / "custody" / "node_key.json")
        fd = pipe_holding((tmp_path / "custody" / "node_key.json").read_bytes())
        options, fds = ("--key-fd", str(fd)), (fd,)
    else:
        identity = move_out(home, tmp_path / "custody" / "clear.json")
        sealed = keys.encode_key_file("node", identity, PASSPHRASE)
        env_file = private_file(tmp_path / "custody" / "node.env",
                                f"{KEY_ENV}={base64.b64encode(sealed).decode()}\n".encode())
        options, fds = ("--key-env-file", str(env_file)), ()
        environment[keys.PASSPHRASE_ENV] = PASSPHRASE
    node = NodeProcess(home, options=options, pass_fds=fds, env=environment)
    node.start()
    started.append(node)
    for fd in fds:
        os.close(fd)
    node.wait_ready(30)
    socket = home / "admin.sock"
    assert call(socket, "status")["peer_id"] == crypto.peer_id(identity.public_key)
    wait_for(lambda: call(socket, "status")["height"] >= 1, 30, "a block the node signed")
    command_line = Path(f"/proc/{node.pid}/cmdline").read_bytes()
    node.stop()
    log = (home / "node.log").read_text()
    assert '"node_started"' in log
    for secret in (PASSPHRASE, identity.seed.hex()):
        assert secret.encode() not in command_line and secret not in log


def test_run_refuses_a_wrong_passphrase_in_one_line_that_does_not_quote_it(home: Path) -> None:
    seal_in_place(home)
    fd = pipe_holding(b"not the passphrase")
    refused = subprocess.run(
        [sys.executable, "-m", "healthnode", "run", "--home", str(home), "--passphrase-fd",
         str(fd)], capture_output=True, text=True, timeout=60, check=False,
        stdin=subprocess.DEVNULL, pass_fds=(fd,))
    os.close(fd)
    assert refused.returncode == 1
    assert refused.stderr == (f"healthnode: error: {home / config.KEY_FILE}: wrong passphrase "
                              f"(or the key file was altered)\n")
    assert not (home / "data").exists()


def test_check_home_still_guards_a_home_whose_key_is_elsewhere(home: Path,
                                                               tmp_path: Path) -> None:
    move_out(home, tmp_path / "custody" / "node_key.json")
    check_home(home)
    (home / config.KEY_FILE).chmod(0o644)  # a public half, but the rule is the home's
    with pytest.raises(HomeError, match="chmod -R go-rwx"):
        check_home(home)
