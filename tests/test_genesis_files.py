"""Genesis files and drafts: `healthnode genesis new`, `add-authority` and `hash`, `init --genesis
--key`, and the strict reading of every genesis file (an unknown or misspelled key at any level
is refused, naming it and where it is). The network these make, running, is
tests/test_founding.py's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

from healthnode import crypto
from healthnode.errors import GenesisError
from healthnode.home import config, keys, layout
from healthnode.home.config import load_genesis, load_genesis_draft
from healthnode.protocol.genesis import (
    DEFAULT_PARAMS,
    RULES_NEWEST,
    RULES_OLDEST,
    Authority,
    Genesis,
    GenesisDraft,
    draft_from_bytes,
    genesis_from_bytes,
    genesis_text,
)
from healthnode.tools.fuzz.seeds import make_genesis

PASSPHRASE = "correct horse battery staple"
FIXTURES = Path(__file__).parent / "fixtures"


def healthnode(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """One `healthnode` command as a process of its own, with no terminal to ask a passphrase
    on (and none in its environment unless `env` gives one)."""
    environment = {k: v for k, v in os.environ.items() if k != keys.PASSPHRASE_ENV} | (env or {})
    return subprocess.run([sys.executable, "-m", "healthnode", *args], capture_output=True,
                          text=True, timeout=60, check=False, stdin=subprocess.DEVNULL,
                          env=environment)


def ok(*args: str, env: dict[str, str] | None = None) -> Any:
    done = healthnode(*args, env=env)
    assert done.returncode == 0, f"healthnode {' '.join(args[:2])}: {done.stderr}"
    return json.loads(done.stdout)


def refused(*args: str) -> str:
    """The one line of a command's refusal (exit 1, no traceback)."""
    done = healthnode(*args)
    assert done.returncode == 1, f"healthnode {' '.join(args[:2])} was not refused: {done.stdout}"
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("healthnode: error: "), done.stderr
    return lines[0].removeprefix("healthnode: error: ")


def node_key(directory: Path, name: str = "node_key.json") -> tuple[Path, str]:
    """A hospital's own node key, made by `keys new`: its file and its public key (hex)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    return path, ok("keys", "new", "--kind", "node", "--out", str(path))["public_key"]


# --- strict genesis files ---------------------------------------------------------------------


def _misspell(document: dict[str, Any], where: list[str | int], right: str, wrong: str) -> None:
    target: Any = document
    for step in where:
        target = target[step]
    target[wrong] = target.pop(right)


MISSPELLINGS = [
    ([], "emergency", "emergncy", "top level"),
    ([], "format", "fromat", "top level"),
    (["params"], "propose_timeout_ms", "propose_timout_ms", "params"),
    (["authorities", 2], "public_key", "publc_key", "authorities[2]"),
    (["emergency"], "threshold", "treshold", "emergency"),
    (["emergency", "commitments", 1], "index", "indx", "emergency.commitments[1]"),
]


@pytest.mark.parametrize("where, right, wrong, named", MISSPELLINGS,
                         ids=[m[2] for m in MISSPELLINGS])
def test_a_misspelled_key_at_every_level_is_refused_naming_it_and_where(
        where: list[str | int], right: str, wrong: str, named: str) -> None:
    document = make_genesis().to_json()
    _misspell(document, where, right, wrong)
    raw = json.dumps(document).encode()
    for read in (genesis_from_bytes, draft_from_bytes):
        with pytest.raises(GenesisError) as refusal:
            read(raw, "genesis.json")
        assert str(refusal.value).startswith(f"genesis.json: unknown key {wrong!r} ({named})")
    # A key the genesis has, added where it has no place, is as unknown there.
    document = make_genesis().to_json()
    document["params"]["chain_id"] = "x"
    with pytest.raises(GenesisError, match=r"^genesis.json: unknown key 'chain_id' \(params\)"):
        genesis_from_bytes(json.dumps(document).encode(), "genesis.json")


def test_every_command_that_reads_a_genesis_refuses_a_misspelled_key(tmp_path: Path) -> None:
    """The typo of the issue: `emergncy` was read as "no break-glass on this network"."""
    document = make_genesis().to_json()
    _misspell(document, [], "emergency", "emergncy")
    path = tmp_path / "genesis.json"
    path.write_text(json.dumps(document, indent=2))
    expected = f"{path}: unknown key 'emergncy' (top level)"
    assert refused("genesis", "hash", str(path)).startswith(expected)
    assert refused("init", "--home", str(tmp_path / "home"), "--genesis",
                   str(path)).startswith(expected)
    assert not (tmp_path / "home").exists()
    key, _ = node_key(tmp_path / "hospital")
    assert refused("genesis", "add-authority", "--genesis", str(path), "--name", "h",
                   "--key", str(key)).startswith(expected)


def test_a_draft_without_authority_holds_no_emergency_key() -> None:
    """The stand-in authority that a draft is checked with is no share holder, whatever its
    key: a draft's emergency key could belong to no authority."""
    document = make_genesis(1).to_json()
    document["authorities"] = []
    document["emergency"]["commitments"][0]["authority"] = "00" * 32
    with pytest.raises(GenesisError, match=r"^d.json: emergency: a share holder is not an "
                                           r"authority \(the draft has no authority yet\)$"):
        draft_from_bytes(json.dumps(document).encode(), "d.json")


def test_genesis_files_of_running_networks_keep_their_hashes() -> None:
    """The draft changed how a file is read, not the Genesis message: the genesis files of the
    stores kept as fixtures hash as they did when those stores were written (their chains are
    named by these hashes), and a genesis made through a draft is the one built directly."""
    expected = {
        "store-format1-682adae":
            "2f5ceee02c6eb6e2a2faed91b69f05d79c1ccb6e3e417af952946b4b380a5131",
        "store-format2-6033ef8":
            "0c45242a3920a03c37375877abc2439a6737915b5dc1c79820aeedf9bf2d8c0e",
    }
    for name, hash_hex in expected.items():
        with tarfile.open(FIXTURES / f"{name}.tar.gz") as archive:
            member = archive.extractfile("node0/genesis.json")
            assert member is not None
            raw = member.read()
        made = genesis_from_bytes(raw, name)
        assert made.hash.hex() == hash_hex
        assert genesis_text(made) == genesis_text(GenesisDraft.of(made))
    keys_ = [crypto.Identity.from_seed(bytes([n]) * 32).public_key for n in (1, 2)]
    draft = GenesisDraft.new("founded", 1_700_000_000_000)
    for index, public_key in enumerate(keys_):
        draft = draft.with_authority(f"h{index}", public_key)
    direct = Genesis(chain_id="founded", genesis_time_ms=1_700_000_000_000,
                     authorities=tuple(Authority(f"h{i}", k) for i, k in enumerate(keys_)),
                     params=DEFAULT_PARAMS, emergency=None)
    assert draft.genesis().hash == direct.hash
    assert draft.genesis().encode() == direct.encode()


# --- genesis new, add-authority, hash ---------------------------------------------------------


def test_genesis_new_writes_a_draft_without_authority_or_emergency_key(tmp_path: Path) -> None:
    path = tmp_path / "genesis.json"
    made = ok("genesis", "new", "--out", str(path), "--chain-id", "founded",
              "--time-ms", "1700000000000", "--rules", "2")
    assert made == {"genesis": str(path), "chain_id": "founded",
                    "genesis_time_ms": 1_700_000_000_000, "rules": 2, "authorities": [],
                    "emergency": None}
    document = json.loads(path.read_text())
    assert document["authorities"] == [] and document["emergency"] is None
    assert document["format"] == 2
    assert document["params"] == GenesisDraft.of(make_genesis()).to_json()["params"]
    assert path.stat().st_mode & 0o777 == 0o600
    draft = load_genesis_draft(path)
    assert draft.params == DEFAULT_PARAMS and draft.authorities == ()
    # Now, when --time-ms is not given.
    now = ok("genesis", "new", "--out", str(tmp_path / "now.json"), "--chain-id", "founded")
    assert abs(now["genesis_time_ms"] - 1_000 * time.time()) < 60_000


def test_genesis_new_never_overwrites_and_checks_its_arguments(tmp_path: Path) -> None:
    path = tmp_path / "genesis.json"
    ok("genesis", "new", "--out", str(path), "--chain-id", "founded")
    before = path.read_bytes()
    assert "already exists; refusing to overwrite it" in refused(
        "genesis", "new", "--out", str(path), "--chain-id", "other")
    assert path.read_bytes() == before
    assert "chain_id 'Bad Chain' must be lowercase" in refused(
        "genesis", "new", "--out", str(tmp_path / "bad.json"), "--chain-id", "Bad Chain")
    assert f"--rules must be within {RULES_OLDEST}..{RULES_NEWEST}" in refused(
        "genesis", "new", "--out", str(tmp_path / "bad.json"), "--chain-id", "x", "--rules", "9")
    assert not (tmp_path / "bad.json").exists()


def test_add_authority_takes_any_form_of_a_node_key_without_its_passphrase(
        tmp_path: Path) -> None:
    """The public half `keys public` writes, a clear key, a sealed key (no passphrase asked:
    there is no terminal and none in the environment): each adds its public key only."""
    path = tmp_path / "genesis.json"
    ok("genesis", "new", "--out", str(path), "--chain-id", "founded")
    clear, clear_key = node_key(tmp_path / "a")
    ok("keys", "public", str(clear), "--out", str(tmp_path / "a" / "public.json"))
    sealed = tmp_path / "b" / "node_key.json"
    (tmp_path / "b").mkdir()
    sealed_key = ok("keys", "new", "--kind", "node", "--sealed", "--out", str(sealed),
                    env={keys.PASSPHRASE_ENV: PASSPHRASE})["public_key"]
    other, other_key = node_key(tmp_path / "c")
    added = ok("genesis", "add-authority", "--genesis", str(path), "--name", "st-mary",
               "--key", str(tmp_path / "a" / "public.json"))
    assert added["added"] == {"name": "st-mary", "public_key": clear_key,
                              "peer_id": crypto.peer_id(bytes.fromhex(clear_key))}
    assert added["authorities"] == ["st-mary"]
    ok("genesis", "add-authority", "--genesis", str(path), "--name", "general", "--key",
       str(sealed))
    last = ok("genesis", "add-authority", "--genesis", str(path), "--name", "university",
              "--key", str(other))
    assert last["authorities"] == ["st-mary", "general", "university"]
    genesis = load_genesis(path)
    assert [a.public_key.hex() for a in genesis.authorities] == [clear_key, sealed_key,
                                                                 other_key]
    assert genesis.emergency is None
    assert path.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c", "genesis.json"]


def test_add_authority_refuses_a_key_or_a_name_twice_naming_who_has_it(tmp_path: Path) -> None:
    path = tmp_path / "genesis.json"
    ok("genesis", "new", "--out", str(path), "--chain-id", "founded")
    first, first_key = node_key(tmp_path / "a")
    second, second_key = node_key(tmp_path / "b")
    ok("genesis", "add-authority", "--genesis", str(path), "--name", "st-mary", "--key",
       str(first))
    before = path.read_bytes()
    assert refused("genesis", "add-authority", "--genesis", str(path), "--name", "general",
                   "--key", str(first)) == \
        f"{path}: the key {first_key[:16]} is already authority 'st-mary'"
    assert refused("genesis", "add-authority", "--genesis", str(path), "--name", "st-mary",
                   "--key", str(second)) == \
        f"{path}: the name 'st-mary' is already taken by the authority of key {first_key[:16]}"
    assert path.read_bytes() == before
    assert second_key not in path.read_text()


def test_add_authority_refuses_what_is_not_a_node_key(tmp_path: Path) -> None:
    path = tmp_path / "genesis.json"
    ok("genesis", "new", "--out", str(path), "--chain-id", "founded")
    patient = tmp_path / "patient.key"
    ok("keys", "new", "--kind", "patient", "--out", str(patient),
       env={keys.PASSPHRASE_ENV: PASSPHRASE})
    assert refused("genesis", "add-authority", "--genesis", str(path), "--name", "h", "--key",
                   str(patient)) == f"{patient}: holds a patient key, expected a node key"
    key, _ = node_key(tmp_path / "a")
    assert "Genesis.authorities[0].name" in refused(
        "genesis", "add-authority", "--genesis", str(path), "--name", "tab\there", "--key",
        str(key))
    assert load_genesis_draft(path).authorities == ()


def test_a_draft_without_authority_is_refused_by_hash_init_and_run(tmp_path: Path) -> None:
    draft = tmp_path / "genesis.json"
    ok("genesis", "new", "--out", str(draft), "--chain-id", "founded")
    why = (f"{draft}: a genesis draft with no authority yet, which no node can run: add each "
           f"founding hospital's node key with `healthnode genesis add-authority` "
           f"(docs/operations.md, 'Founding a network')")
    assert refused("genesis", "hash", str(draft)) == why
    key, _ = node_key(tmp_path / "hospital")
    assert refused("init", "--home", str(tmp_path / "home"), "--genesis", str(draft), "--key",
                   str(key)) == why
    assert not (tmp_path / "home").exists()
    # A home whose genesis.json was replaced by a draft by hand: the node does not start.
    ok("genesis", "add-authority", "--genesis", str(draft), "--name", "h", "--key", str(key))
    home = tmp_path / "home"
    ok("init", "--home", str(home), "--genesis", str(draft), "--key", str(key))
    empty = tmp_path / "empty.json"
    ok("genesis", "new", "--out", str(empty), "--chain-id", "founded")
    (home / config.GENESIS_FILE).write_bytes(empty.read_bytes())
    run = healthnode("run", "--home", str(home))
    assert run.returncode == 1, run.stderr
    assert run.stderr.strip().splitlines()[-1] == \
        "healthnode: error: " + why.replace(str(draft), str(home / config.GENESIS_FILE))


def test_genesis_hash_prints_the_hash_and_the_authorities(tmp_path: Path) -> None:
    path = tmp_path / "genesis.json"
    ok("genesis", "new", "--out", str(path), "--chain-id", "founded", "--time-ms", "5")
    key, public = node_key(tmp_path / "a")
    ok("genesis", "add-authority", "--genesis", str(path), "--name", "st-mary", "--key", str(key))
    assert ok("genesis", "hash", str(path)) == {
        "genesis_hash": load_genesis(path).hash.hex(), "chain_id": "founded",
        "genesis_time_ms": 5, "rules": RULES_NEWEST,
        "authorities": [{"name": "st-mary", "public_key": public}], "emergency_key": False}


# --- init --genesis --key ---------------------------------------------------------------------


def _founded(tmp_path: Path, hospitals: int = 2) -> tuple[Path, list[tuple[Path, str]]]:
    """A finished genesis of `hospitals` authorities and each one's own key file."""
    path = tmp_path / "genesis.json"
    layout.new_genesis_draft(path, "founded")
    made = []
    for index in range(hospitals):
        key, public = node_key(tmp_path / f"hospital{index}")
        layout.add_genesis_authority(path, f"hospital{index}", key)
        made.append((key, public))
    return path, made


@pytest.mark.parametrize("form", ["clear", "sealed", "none"])
def test_init_key_puts_the_hospital_s_own_key_in_the_home_as_it_holds_it(
        tmp_path: Path, form: str) -> None:
    """Clear, sealed (no passphrase asked), or its public half (the key then stays outside the
    home, and `run` takes it by --key-file, --key-fd or --key-env-file)."""
    genesis_path = tmp_path / "genesis.json"
    layout.new_genesis_draft(genesis_path, "founded")
    directory = tmp_path / "hospital"
    directory.mkdir()
    key = directory / "node_key.json"
    public = ok("keys", "new", "--kind", "node", "--out", str(key),
                *(["--sealed"] if form == "sealed" else []),
                env={keys.PASSPHRASE_ENV: PASSPHRASE})["public_key"]
    given = key
    if form == "none":
        given = directory / "public.json"
        ok("keys", "public", str(key), "--out", str(given))
    layout.add_genesis_authority(genesis_path, "st-mary", given)
    home = tmp_path / "home"
    made = ok("init", "--home", str(home), "--genesis", str(genesis_path), "--key", str(given))
    assert made == {"home": str(home), "name": "st-mary", "public_key": public,
                    "peer_id": crypto.peer_id(bytes.fromhex(public)),
                    "genesis_hash": load_genesis(genesis_path).hash.hex(), "secret": form}
    assert (home / config.KEY_FILE).read_bytes() == given.read_bytes()
    assert (home / config.KEY_FILE).stat().st_mode & 0o777 == 0o600
    assert config.load_config(home).node.name == "st-mary"
    # Again, as an operator repeats a step: the same key is kept.
    assert ok("init", "--home", str(home), "--genesis", str(genesis_path), "--key",
              str(given))["name"] == "st-mary"


def test_init_key_not_in_the_genesis_gives_an_observer_home(tmp_path: Path) -> None:
    genesis_path, _ = _founded(tmp_path)
    stranger, public = node_key(tmp_path / "stranger")
    home = tmp_path / "home"
    made = ok("init", "--home", str(home), "--genesis", str(genesis_path), "--key",
              str(stranger))
    assert made["name"] == "observer" and made["public_key"] == public
    assert config.load_config(home).node.name == "observer"
    assert keys.read_node_public_key(home / config.KEY_FILE).hex() == public


def test_init_key_refuses_a_home_that_holds_another_key_and_changes_nothing(
        tmp_path: Path) -> None:
    genesis_path, [(first, first_key), (second, second_key)] = _founded(tmp_path)
    home = tmp_path / "home"
    ok("init", "--home", str(home), "--genesis", str(genesis_path), "--key", str(first))
    before = {p.name: p.read_bytes() for p in home.iterdir()}
    assert refused("init", "--home", str(home), "--genesis", str(genesis_path), "--key",
                   str(second)) == \
        (f"{home / config.KEY_FILE} holds node key {first_key[:16]}, not {second_key[:16]} of "
         f"{second}: a home has one node key; init a new home for this key")
    assert {p.name: p.read_bytes() for p in home.iterdir()} == before
    # Nor is a home written at all when the key given is not a node key.
    patient = tmp_path / "patient.key"
    ok("keys", "new", "--kind", "patient", "--out", str(patient),
       env={keys.PASSPHRASE_ENV: PASSPHRASE})
    assert "holds a patient key, expected a node key" in refused(
        "init", "--home", str(tmp_path / "other"), "--genesis", str(genesis_path), "--key",
        str(patient))
    assert not (tmp_path / "other").exists()
