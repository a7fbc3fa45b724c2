"""`healthnode testnet` and `healthnode init`: genesis and homes a node can run from."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from healthnode import crypto
from healthnode.errors import GenesisError, HomeError
from healthnode.home import config, keys, layout
from healthnode.home.config import load_genesis
from healthnode.protocol import genesis as genesis_module
from healthnode.protocol.genesis import RULES_NEWEST


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "healthnode", *args], check=False,
                          capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_testnet_writes_a_genesis_and_four_usable_homes(tmp_path: Path) -> None:
    made = run_cli("testnet", "--nodes", "4", "--out", str(tmp_path / "net"))
    assert made.returncode == 0, made.stderr
    summary = json.loads(made.stdout)
    genesis = load_genesis(tmp_path / "net" / "genesis.json")
    assert summary["genesis_hash"] == genesis.hash.hex()
    assert len(genesis.authorities) == 4
    ports = set()
    for i, node in enumerate(summary["nodes"]):
        node_home = Path(node["home"])
        key_path = node_home / "node_key.json"
        assert key_path.stat().st_mode & 0o777 == 0o600
        identity = keys.load_identity(key_path, expected_kind="node")
        assert genesis.authorities[i].public_key == identity.public_key
        assert load_genesis(node_home / "genesis.json").hash == genesis.hash
        node_config = config.load_config(node_home)
        assert node_config.node.name == genesis.authorities[i].name
        ports.add(node_config.p2p.listen[0])
        # Every node dials every other node at its listen address with its peer id.
        dialed = {address.rsplit("/p2p/", 1)[1] for address in node_config.p2p.peers}
        others = {crypto.peer_id(a.public_key) for a in genesis.authorities} - {node["peer_id"]}
        assert dialed == others
    assert len(ports) == 4


def test_init_accepts_a_testnet_home_and_keeps_its_key(tmp_path: Path) -> None:
    _, homes = layout.make_testnet(4, tmp_path / "net")
    again = run_cli("init", "--home", str(homes[2].path), "--genesis",
                    str(tmp_path / "net" / "genesis.json"))
    assert again.returncode == 0, again.stderr
    described = json.loads(again.stdout)
    assert described["public_key"] == homes[2].public_key.hex()
    assert described["name"] == "node2"


def test_init_makes_a_new_home_with_its_own_key(tmp_path: Path) -> None:
    layout.make_testnet(4, tmp_path / "net")
    made = run_cli("init", "--home", str(tmp_path / "new" / "home"), "--genesis",
                   str(tmp_path / "net" / "genesis.json"))
    assert made.returncode == 0, made.stderr
    new_home = tmp_path / "new" / "home"
    assert (new_home / "node_key.json").stat().st_mode & 0o777 == 0o600
    assert config.load_config(new_home).node.name == "observer"
    assert json.loads(made.stdout)["name"] == "observer"


def test_init_refuses_to_move_a_home_to_another_network(tmp_path: Path) -> None:
    _, homes = layout.make_testnet(2, tmp_path / "a", chain_id="chain-a")
    layout.make_testnet(2, tmp_path / "b", chain_id="chain-b")
    refused = run_cli("init", "--home", str(homes[0].path), "--genesis",
                      str(tmp_path / "b" / "genesis.json"))
    assert refused.returncode == 1
    assert "another genesis" in refused.stderr


def test_testnet_refuses_to_overwrite(tmp_path: Path) -> None:
    layout.make_testnet(2, tmp_path / "net")
    with pytest.raises(HomeError, match="already holds a testnet"):
        layout.make_testnet(2, tmp_path / "net")


def test_host_template_gives_one_port_and_host_names(tmp_path: Path) -> None:
    _, homes = layout.make_testnet(4, tmp_path / "net", hosts="node{i}", base_port=30000)
    node_config = config.load_config(homes[1].path)
    assert node_config.p2p.listen == ("/ip4/0.0.0.0/tcp/30000",)
    assert [p.split("/")[2] for p in node_config.p2p.peers] == ["node0", "node2", "node3"]
    assert all("/tcp/30000/" in p for p in node_config.p2p.peers)


@pytest.mark.parametrize("args, message", [
    (["--nodes", "0"], "must be at least 1"),
    (["--nodes", "4", "--hosts", "node"], "must contain {i}"),
    (["--nodes", "4", "--base-port", "80"], "not a port"),
    (["--nodes", "4", "--chain-id", "Bad Chain"], "chain_id"),
])
def test_testnet_rejects_bad_arguments(tmp_path: Path, args: list[str], message: str) -> None:
    refused = run_cli("testnet", "--out", str(tmp_path / "net"), *args)
    assert refused.returncode in (1, 2)
    assert message in refused.stderr
    assert not (tmp_path / "net" / "genesis.json").exists()


def test_genesis_hash_ignores_json_formatting(tmp_path: Path) -> None:
    genesis, _ = layout.make_testnet(1, tmp_path / "net")
    path = tmp_path / "compact.json"
    path.write_text(json.dumps(genesis.to_json(), separators=(",", ":"), sort_keys=True))
    assert load_genesis(path).hash == genesis.hash


@pytest.mark.parametrize("change, message", [
    (lambda g: g.update(chain_id=""), "chain_id"),
    (lambda g: g["authorities"].append(dict(g["authorities"][0])), "appears twice"),
    (lambda g: g["params"].update(extra=1), r"unknown key 'extra' \(params\)"),
    (lambda g: g["params"].update(propose_timeout_ms=0), "propose_timeout_ms"),
    (lambda g: g["authorities"][0].update(public_key="00"), "public_key"),
    (lambda g: g.pop("params"), "missing field 'params'"),
    (lambda g: g.update(authorities=[]), "a genesis draft with no authority yet"),
    # A chain made before emergency wraps were bound to their records (docs/break-glass.md).
    (lambda g: g.pop("format"),
     f"format 1, and this healthnode runs chains of formats 2 to {RULES_NEWEST}"),
    # A chain that starts with rules this release does not carry.
    (lambda g: g.update(format=RULES_NEWEST + 1),
     f"format {RULES_NEWEST + 1}: its chain starts with rules version {RULES_NEWEST + 1}, and "
     f"this release carries versions 2 to {RULES_NEWEST}. Install a release"),
    (lambda g: g.update(format="3"), "format"),
])
def test_malformed_genesis_is_a_typed_error(tmp_path: Path, change: object,
                                            message: str) -> None:
    genesis, _ = layout.make_testnet(2, tmp_path / "net")
    data = genesis.to_json()
    change(data)  # type: ignore[operator]
    with pytest.raises(GenesisError, match=message):
        genesis_module.Genesis.from_json(data)


def test_non_json_genesis_is_a_typed_error(tmp_path: Path) -> None:
    path = tmp_path / "g.json"
    path.write_text("{not json")
    with pytest.raises(GenesisError, match="not JSON"):
        load_genesis(path)
    assert os.path.exists(path)
