"""Key files: modes, passphrase protection, clear errors, and the CLI contract."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from healthnode import crypto
from healthnode.errors import KeyFileError
from healthnode.home import keys

PASSPHRASE = "correct horse battery"


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != keys.PASSPHRASE_ENV}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "healthnode", *args], check=False,
                          capture_output=True,
                          text=True, env=full_env, stdin=subprocess.DEVNULL, timeout=60)


def test_node_key_file_is_private_and_reloads(tmp_path: Path) -> None:
    path = tmp_path / "node.json"
    identity = keys.create_key_file(path, "node", None)
    assert path.stat().st_mode & 0o777 == 0o600
    assert keys.load_identity(path).public_key == identity.public_key


@pytest.mark.parametrize("kind", ["patient", "provider"])
def test_patient_and_provider_keys_are_encrypted_under_the_passphrase(tmp_path: Path,
                                                                      kind: str) -> None:
    path = tmp_path / f"{kind}.json"
    identity = keys.create_key_file(path, kind, PASSPHRASE)
    assert path.stat().st_mode & 0o777 == 0o600
    assert identity.seed.hex() not in path.read_text()
    assert keys.load_identity(path, PASSPHRASE, expected_kind=kind).seed == identity.seed


def test_wrong_passphrase_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "patient.json"
    keys.create_key_file(path, "patient", PASSPHRASE)
    with pytest.raises(KeyFileError, match="wrong passphrase"):
        keys.load_identity(path, "not the passphrase")


def test_missing_passphrase_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "patient.json"
    keys.create_key_file(path, "patient", PASSPHRASE)
    with pytest.raises(KeyFileError, match="needs its passphrase"):
        keys.load_identity(path)


def test_short_passphrase_is_refused(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="at least 8"):
        keys.create_key_file(tmp_path / "p.json", "patient", "short")
    assert not (tmp_path / "p.json").exists()


def test_existing_key_file_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "node.json"
    first = keys.create_key_file(path, "node", None)
    with pytest.raises(KeyFileError, match="already exists"):
        keys.create_key_file(path, "node", None)
    assert keys.load_identity(path).public_key == first.public_key


def test_a_key_file_whose_public_key_was_swapped_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "patient.json"
    keys.create_key_file(path, "patient", PASSPHRASE)
    document = json.loads(path.read_text())
    document["public_key"] = crypto.Identity.generate().public_key.hex()
    path.write_text(json.dumps(document))
    with pytest.raises(KeyFileError, match="does not match"):
        keys.load_identity(path, PASSPHRASE)


@pytest.mark.parametrize("content, problem", [
    (b"\xff\xfe", "not JSON"),
    (b"[]", "format"),
    (b'{"format": 1, "kind": "admin", "public_key": "00"}', "unknown key kind"),
    (b'{"format": 1, "kind": "node", "public_key": "zz"}', "'public_key' is missing or malformed"),
    (b"x" * 20000, "too large"),
])
def test_malformed_key_files_are_typed_errors(tmp_path: Path, content: bytes,
                                              problem: str) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(KeyFileError, match=problem):
        keys.load_identity(path, PASSPHRASE)


def test_kdf_limits_from_a_crafted_file_are_bounded(tmp_path: Path) -> None:
    path = tmp_path / "patient.json"
    keys.create_key_file(path, "patient", PASSPHRASE)
    document = json.loads(path.read_text())
    document["encryption"]["memlimit"] = 2**40
    path.write_text(json.dumps(document))
    with pytest.raises(KeyFileError, match="out of range"):
        keys.load_identity(path, PASSPHRASE)


def test_cli_keys_new_and_show_print_the_public_key(tmp_path: Path) -> None:
    out = tmp_path / "patient.json"
    made = run_cli("keys", "new", "--kind", "patient", "--out", str(out),
                   env={keys.PASSPHRASE_ENV: PASSPHRASE})
    assert made.returncode == 0, made.stderr
    created = json.loads(made.stdout)
    shown = run_cli("keys", "show", str(out))
    assert json.loads(shown.stdout)["public_key"] == created["public_key"]
    assert keys.load_identity(out, PASSPHRASE).public_key.hex() == created["public_key"]


def test_cli_reads_the_passphrase_file(tmp_path: Path) -> None:
    secret = tmp_path / "pass.txt"
    secret.write_text(PASSPHRASE + "\n")
    out = tmp_path / "provider.json"
    made = run_cli("keys", "new", "--kind", "provider", "--out", str(out),
                   "--passphrase-file", str(secret))
    assert made.returncode == 0, made.stderr
    assert keys.load_identity(out, PASSPHRASE, expected_kind="provider")


def test_cli_without_a_passphrase_source_refuses_with_one_line(tmp_path: Path) -> None:
    made = run_cli("keys", "new", "--kind", "patient", "--out", str(tmp_path / "p.json"))
    assert made.returncode == 1
    assert made.stderr.strip().count("\n") == 0
    assert "HEALTHNODE_PASSPHRASE" in made.stderr
    assert not (tmp_path / "p.json").exists()


def test_cli_node_key_shows_its_peer_id(tmp_path: Path) -> None:
    out = tmp_path / "node.json"
    made = run_cli("keys", "new", "--kind", "node", "--out", str(out))
    described = json.loads(made.stdout)
    assert described["peer_id"] == crypto.peer_id(bytes.fromhex(described["public_key"]))


def test_cli_rejects_an_unknown_kind(tmp_path: Path) -> None:
    made = run_cli("keys", "new", "--kind", "admin", "--out", str(tmp_path / "k.json"))
    assert made.returncode == 2
    assert "invalid choice" in made.stderr


def test_the_log_salt_is_made_once_private_and_refused_when_damaged(tmp_path: Path) -> None:
    path = tmp_path / "log_salt"
    salt = keys.load_or_create_log_salt(path)
    assert len(salt) == 32 and path.stat().st_mode & 0o777 == 0o600
    assert keys.load_or_create_log_salt(path) == salt
    assert keys.load_or_create_log_salt(tmp_path / "other") != salt
    path.write_bytes(salt[:31])
    with pytest.raises(KeyFileError, match="not a log salt"):
        keys.load_or_create_log_salt(path)
