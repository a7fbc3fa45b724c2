"""Node configuration: defaults, and errors that name the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from healthnode.errors import ConfigError
from healthnode.home import config

REPO = Path(__file__).resolve().parent.parent


def test_an_empty_file_gives_the_defaults() -> None:
    assert config.parse_config("", "config.toml") == config.NodeConfig()


def test_defaults_round_trip_through_toml() -> None:
    text = config.NodeConfig().to_toml()
    assert text.startswith(f"config_version = {config.CONFIG_VERSION}\n")
    assert config.parse_config(text, "x.toml") == config.NodeConfig()


def test_a_file_from_before_config_versions_reads_as_version_1() -> None:
    assert config.parse_config("[node]\nname = 'st-mary'\n", "x.toml").config_version == 1


@pytest.mark.parametrize("text, message", [
    ("[p2p]\npeer_max = 3\n", r"x.toml: unknown key \[p2p\].peer_max"),
    ("[p2pp]\n", r"x.toml: unknown section or key 'p2pp'"),
    ("[p2p]\npeers_max = 'ten'\n", r"x.toml: \[p2p\].peers_max: expected an integer"),
    ("[p2p]\npeers_max = 0\n", r"\[p2p\].peers_max: must be within 1..1024"),
    ("[metrics]\nenabled = 1\n", r"\[metrics\].enabled: expected a boolean"),
    ("[metrics]\nlisten = 'localhost'\n", r"\[metrics\].listen: 'localhost' is not host:port"),
    ("[log]\nlevel = 'loud'\n", r"\[log\].level: must be one of"),
    ("[p2p]\nlisten = ['/ip4/300.0.0.1/tcp/1']\n", r"\[p2p\].listen: .* is not a multiaddr"),
    ("[p2p]\npeers = ['/ip4/127.0.0.1/tcp/1']\n", r"\[p2p\].peers: .* needs a /p2p/"),
    ("[p2p]\npeers = 'x'\n", r"\[p2p\].peers: expected an array of strings"),
    ("[node]\ndata_dir = '../elsewhere'\n", r"\[node\].data_dir: .* inside the node home"),
    ("[admin]\nsocket = '/tmp/a.sock'\n", r"\[admin\].socket: .* inside the node home"),
    ("node = 3\n", r"x.toml: \[node\] must be a table"),
    ("[p2p\n", r"x.toml: not valid TOML"),
    ("config_version = 2\n", r"x.toml: config_version 2 was written by a newer release; this "
                             r"one reads config_version 1"),
    ("config_version = '1'\n", r"x.toml: config_version: expected a positive integer"),
    ("config_version = 0\n", r"x.toml: config_version: expected a positive integer"),
    ("[mempool]\ntxs_max = 100\nreserved_txs = 100\n",
     r"x.toml: \[mempool\].reserved_txs: must be below \[mempool\].txs_max \(100\)"),
    ("[mempool]\nreserved_bytes = 67108864\n",
     r"\[mempool\].reserved_bytes: must be below \[mempool\].bytes_max \(67108864\)"),
    ("[mempool]\nreserved_txs = -1\n", r"\[mempool\].reserved_txs: must be within 0.."),
])
def test_bad_config_names_file_and_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config.parse_config(text, "x.toml")


def test_missing_config_says_to_run_init(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="run `healthnode init` first"):
        config.load_config(tmp_path)


def test_binary_config_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="not UTF-8"):
        config.load_config(tmp_path)


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_example_configs_are_valid(path: Path) -> None:
    config.parse_config(path.read_text(), str(path))


def test_there_are_example_configs() -> None:
    assert len(list((REPO / "configs").glob("*.toml"))) >= 2
