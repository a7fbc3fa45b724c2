"""The node configuration: `config.toml` in the node home, with defaults and strict validation.

Every key has a default, so an empty file is a valid configuration. An unknown key (often a typo
that would otherwise be silently ignored) or a value of the wrong type or range is a `ConfigError`
naming the file and the key, e.g. `config.toml: [p2p].peers_max: expected an integer, got "ten"`.
Network-wide settings (authorities, consensus timeouts) are not here but in the genesis: a node's
config only says where this node listens, whom it dials and how it runs.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import multiaddr
import multiaddr.exceptions
import tomli_w

from healthnode import limits
from healthnode.errors import ConfigError, GenesisError
from healthnode.home.files import read_limited, write_private
from healthnode.protocol.genesis import (
    Genesis,
    GenesisDraft,
    draft_from_bytes,
    genesis_from_bytes,
    genesis_text,
)
from healthnode.protocol.tx import peer_address_problem

CONFIG_FILE: Final = "config.toml"
KEY_FILE: Final = "node_key.json"
# A new node key waiting for its rotation to take effect (`admin key_rotate`): it takes
# KEY_FILE's place when the node starts after the rotation's height (node/rotation.py).
NEXT_KEY_FILE: Final = "node_key.next.json"
GENESIS_FILE: Final = "genesis.json"
EMERGENCY_SHARE_FILE: Final = "emergency_share.json"  # this authority's break-glass key share
# The secret of this authority's epoch key in the emergency key's round under way (rules
# version 4): made when the round opens, deleted when it is over (node/emergency.py).
ROUND_KEY_FILE: Final = "emergency_round_key.json"
LOG_SALT_FILE: Final = "log_salt"  # the salt of the log's pseudonyms (logs.py); in no backup
# The layout of config.toml (its top-level `config_version`). A file without one was written
# before the key existed, in layout 1. A release that changes the layout reads the layouts before
# it, and `healthnode migrate` rewrites the file (docs/operations.md, "Formats and versions").
CONFIG_VERSION: Final = 1
CONFIG_BYTES_MAX: Final = 256 * 1024

LOG_LEVELS: Final = ("debug", "info", "warning", "error")
LOG_FORMATS: Final = ("auto", "json", "console")


@dataclasses.dataclass(frozen=True, slots=True)
class NodeSection:
    name: str = "node"  # this hospital's name, as in the genesis; used in logs
    data_dir: str = "data"  # LevelDB and blobs, relative to the home
    # Heights whose state tree is kept, so that a proof at a recent certified height can be
    # served; older tree nodes are deleted at commit (docs/ledger.md, "The state root").
    state_versions_kept: int = 1000
    # A snapshot of the state every this-many heights (0: none), for nodes that join by state
    # sync and for `verify` on a node that prunes; the newest `snapshots_kept` are kept
    # (docs/operations.md, "State sync and pruning").
    snapshot_interval: int = 1000
    snapshots_kept: int = 2
    # A new node (an empty store) takes a peer's snapshot instead of replaying every block from
    # the genesis; `init --replay` writes false here.
    state_sync: bool = True
    # Block bodies kept: the last this-many heights and every height above the oldest snapshot
    # (0: every body, an archive node). Headers and certificates are always kept.
    keep_blocks: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class P2PSection:
    listen: tuple[str, ...] = ("/ip4/127.0.0.1/tcp/26600",)
    # Multiaddrs with /p2p/<peer id> of the other authorities (and observers) to dial.
    peers: tuple[str, ...] = ()
    # Peer ids that may receive gossip besides the authorities (read-only replicas); from rules
    # version 4 an authority vouches for one on chain instead (admin `observer_add`).
    observers: tuple[str, ...] = ()
    # Where other nodes can dial this one, announced on chain (rules version 4): multiaddrs of a
    # host and a TCP port, without /p2p/. Empty: the `listen` addresses, but 0.0.0.0 and ::.
    announce: tuple[str, ...] = ()
    # Dial addresses that other nodes announce on the loopback or link-local: only for a network
    # on one machine (`testnet` sets it); otherwise a faulty node could name this machine's own
    # services, or a cloud's metadata address, for every node to knock on.
    dial_local: bool = False
    # Connections from wallets and other peers that are neither authorities nor observers, at
    # once (authorities and observers have room of their own), per IP address and per key.
    peers_max: int = 128
    peers_per_ip_max: int = 64
    peers_per_key_max: int = 8
    # Connections still in their handshake (Noise, yamux), at once and per IP, and its deadline.
    handshakes_max: int = 64
    handshakes_per_ip_max: int = 16
    handshake_timeout_ms: int = 5000
    # A wallet's connection with no open stream for this long is closed.
    idle_timeout_ms: int = 60_000
    ping_interval_ms: int = 2000
    ping_timeout_ms: int = 2000
    redial_backoff_max_ms: int = 30_000


@dataclasses.dataclass(frozen=True, slots=True)
class AdminSection:
    socket: str = "admin.sock"  # relative to the home; always created with mode 0600


@dataclasses.dataclass(frozen=True, slots=True)
class MetricsSection:
    enabled: bool = True
    listen: str = "127.0.0.1:26700"  # host:port of the Prometheus endpoint


@dataclasses.dataclass(frozen=True, slots=True)
class MempoolSection:
    txs_max: int = 50_000
    bytes_max: int = 64 * 1024 * 1024
    txs_per_signer_max: int = 256  # pending transactions of one key (nonce gaps stay bounded)
    # The last of `txs_max` and `bytes_max` that only the authorities' own transactions may take
    # (the node's access.logs first: every wallet read waits for one), whoever else fills the
    # pool (ledger/mempool.py). Below `txs_max` and `bytes_max`.
    reserved_txs: int = 5_000
    reserved_bytes: int = 8 * 1024 * 1024


@dataclasses.dataclass(frozen=True, slots=True)
class BudgetsSection:
    """What this node's door takes over every key at once (ledger/door.py; limits.py gives
    the reasons for the defaults; docs/threat-model.md, "Budgets"). Patients' keys are those that
    are neither active providers nor authorities: anyone can make one. The per-minute budgets
    count the transactions of patients' keys that the client door takes, the daily ones uploads
    (UTC days of the node's clock, kept across restarts)."""

    patient_anchors_per_minute: int = limits.PATIENT_ANCHORS_PER_MINUTE
    patient_grants_per_minute: int = limits.PATIENT_GRANTS_PER_MINUTE
    patient_revokes_per_minute: int = limits.PATIENT_REVOKES_PER_MINUTE
    patient_erasures_per_minute: int = limits.PATIENT_ERASURES_PER_MINUTE
    patient_policies_per_minute: int = limits.PATIENT_POLICIES_PER_MINUTE
    patient_tx_bytes_per_minute: int = limits.PATIENT_TX_BYTES_PER_MINUTE
    patient_upload_bytes_per_day: int = limits.PATIENT_UPLOAD_BYTES_PER_DAY
    upload_bytes_per_day: int = limits.UPLOAD_BYTES_PER_DAY
    # Unanchored uploads held at once (each deleted an hour after it came), per key and in all.
    pending_upload_bytes_per_key: int = limits.PENDING_UPLOAD_BYTES_PER_CLIENT_MAX
    pending_upload_bytes: int = limits.PENDING_UPLOAD_BYTES_MAX


@dataclasses.dataclass(frozen=True, slots=True)
class EmergencySection:
    """This authority's part in keeping the emergency key (node/emergency.py)."""

    # Ask for a refresh of the emergency shares once those in force are this many blocks old
    # (0: never ask). A refresh happens when the key's threshold of holders have asked, so the
    # authorities should agree on it. The default is a day of an idle network's heartbeat
    # blocks (one every 5 s): a busy network refreshes sooner, as it makes blocks faster.
    refresh_blocks: int = 17_280


@dataclasses.dataclass(frozen=True, slots=True)
class LogSection:
    level: str = "info"
    format: str = "auto"  # json, console, or auto (console on a terminal, else JSON lines)


@dataclasses.dataclass(frozen=True, slots=True)
class NodeConfig:
    config_version: int = CONFIG_VERSION
    node: NodeSection = NodeSection()
    p2p: P2PSection = P2PSection()
    admin: AdminSection = AdminSection()
    metrics: MetricsSection = MetricsSection()
    mempool: MempoolSection = MempoolSection()
    budgets: BudgetsSection = BudgetsSection()
    emergency: EmergencySection = EmergencySection()
    log: LogSection = LogSection()

    def to_toml(self) -> str:
        return tomli_w.dumps(dataclasses.asdict(self))


_SECTIONS: Final[dict[str, type[Any]]] = {
    "node": NodeSection,
    "p2p": P2PSection,
    "admin": AdminSection,
    "metrics": MetricsSection,
    "mempool": MempoolSection,
    "budgets": BudgetsSection,
    "emergency": EmergencySection,
    "log": LogSection,
}


# Checks beyond the type of a value, per (section, key). Each returns a problem or None.
def _range(low: int, high: int) -> Callable[[Any], str | None]:
    return lambda v: None if low <= v <= high else f"must be within {low}..{high}"


def _choice(*allowed: str) -> Callable[[Any], str | None]:
    return lambda v: None if v in allowed else f"must be one of {', '.join(allowed)}"


def _multiaddrs(require_peer_id: bool) -> Callable[[Any], str | None]:
    def check(values: tuple[str, ...]) -> str | None:
        for value in values:
            try:
                address = multiaddr.Multiaddr(value)
            except (multiaddr.exceptions.Error, ValueError, TypeError) as error:
                return f"{value!r} is not a multiaddr ({str(error)[:80]})"
            protocols = {p.name for p in address.protocols()}
            if "tcp" not in protocols:
                return f"{value!r} has no /tcp/ port"
            if require_peer_id and "p2p" not in protocols:
                return f"{value!r} needs a /p2p/<peer id> part"
        return None

    return check


_PORT: Final = re.compile(r"[0-9]{1,5}")


def dial_address_problem(value: str) -> str | None:
    """What is wrong with a peer's address (a multiaddr with a TCP port and /p2p/), or None."""
    return _multiaddrs(require_peer_id=True)((value,))


def _announce_addresses(values: tuple[str, ...]) -> str | None:
    if len(values) > limits.PEER_ADDRESSES_MAX:
        return f"at most {limits.PEER_ADDRESSES_MAX} addresses"
    for value in values:
        problem = peer_address_problem(value)
        if problem is not None:
            return f"{value!r}: {problem}"
    return None


def _host_port(value: str) -> str | None:
    host, _, port = value.rpartition(":")
    # ASCII digits only: str.isdigit() also takes digits int() refuses (superscripts), and a
    # port of thousands of digits is more than int() converts.
    if not host or _PORT.fullmatch(port) is None or not 0 < int(port) < 65536:
        return f"{value!r} is not host:port"
    return None


def _relative_path(value: str) -> str | None:
    if not value or value.startswith("/") or ".." in Path(value).parts:
        return f"{value!r} must be a path inside the node home"
    return None


_CHECKS: Final[dict[tuple[str, str], Callable[[Any], str | None]]] = {
    ("node", "data_dir"): _relative_path,
    ("node", "state_versions_kept"): _range(1, 10_000_000),
    ("node", "snapshot_interval"): _range(0, 10_000_000),
    ("node", "snapshots_kept"): _range(1, 16),
    ("node", "keep_blocks"): _range(0, 1 << 40),
    ("p2p", "listen"): _multiaddrs(require_peer_id=False),
    ("p2p", "peers"): _multiaddrs(require_peer_id=True),
    ("p2p", "announce"): _announce_addresses,
    ("p2p", "peers_max"): _range(1, 1024),
    ("p2p", "peers_per_ip_max"): _range(1, 1024),
    ("p2p", "peers_per_key_max"): _range(1, 64),
    ("p2p", "handshakes_max"): _range(1, 1024),
    ("p2p", "handshakes_per_ip_max"): _range(1, 1024),
    ("p2p", "handshake_timeout_ms"): _range(100, 60_000),
    ("p2p", "idle_timeout_ms"): _range(1000, 3_600_000),
    ("p2p", "ping_interval_ms"): _range(100, 600_000),
    ("p2p", "ping_timeout_ms"): _range(100, 600_000),
    ("p2p", "redial_backoff_max_ms"): _range(100, 3_600_000),
    ("admin", "socket"): _relative_path,
    ("metrics", "listen"): _host_port,
    ("mempool", "txs_max"): _range(1, 10_000_000),
    ("mempool", "bytes_max"): _range(1024, 16 * 1024**3),
    ("mempool", "txs_per_signer_max"): _range(1, 100_000),
    ("mempool", "reserved_txs"): _range(0, 10_000_000),
    ("mempool", "reserved_bytes"): _range(0, 16 * 1024**3),
    **{("budgets", field.name): _range(0, 1 << 50)
       for field in dataclasses.fields(BudgetsSection)},
    ("emergency", "refresh_blocks"): _range(0, 1 << 40),
    ("log", "level"): _choice(*LOG_LEVELS),
    ("log", "format"): _choice(*LOG_FORMATS),
}

def _below(value: int, other: int) -> str | None:
    return None if value < other else "must be below"


# Checks of a value against another key of its section: (section, key) -> (other key, check).
_PAIRS: Final[dict[tuple[str, str], tuple[str, Callable[[Any, Any], str | None]]]] = {
    ("mempool", "reserved_txs"): ("txs_max", _below),
    ("mempool", "reserved_bytes"): ("bytes_max", _below),
}

_TOML_TYPE_NAMES: Final = {bool: "a boolean", int: "an integer", str: "a string",
                           tuple: "an array of strings"}


def parse_config(text: str, source: str) -> NodeConfig:
    """Parse and validate TOML text; `source` names the file in every error."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{source}: not valid TOML ({error})") from None
    except (ValueError, RecursionError):  # what tomllib lets through from int() and its recursion
        raise ConfigError(f"{source}: not valid TOML (a number of more than 4300 digits, or "
                          f"arrays or tables nested too deep)") from None
    version = data.pop("config_version", 1)
    if type(version) is not int or version < 1:
        raise ConfigError(f"{source}: config_version: expected a positive integer, got "
                          f"{version!r}")
    if version > CONFIG_VERSION:
        raise ConfigError(f"{source}: config_version {version} was written by a newer release; "
                          f"this one reads config_version {CONFIG_VERSION} (install the newer "
                          f"release, or restore the file from before it)")
    sections = {
        name: _parse_section(name, cls, data.pop(name, {}), source)
        for name, cls in _SECTIONS.items()
    }
    if data:
        raise ConfigError(f"{source}: unknown section or key {sorted(data)[0]!r}")
    for (name, key), (other, check) in _PAIRS.items():
        problem = check(getattr(sections[name], key), getattr(sections[name], other))
        if problem:
            raise ConfigError(f"{source}: [{name}].{key}: {problem} [{name}].{other} "
                              f"({getattr(sections[name], other)})")
    return NodeConfig(CONFIG_VERSION, **sections)


def _parse_section(name: str, cls: type[Any], table: Any, source: str) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: [{name}] must be a table")
    values: dict[str, Any] = {}
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key, raw_value in table.items():
        value = raw_value
        if key not in known:
            raise ConfigError(f"{source}: unknown key [{name}].{key}")
        default = known[key].default
        expected = type(default)
        if expected is tuple:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{source}: [{name}].{key}: expected an array of strings")
            value = tuple(value)
        elif type(value) is not expected:
            raise ConfigError(
                f"{source}: [{name}].{key}: expected {_TOML_TYPE_NAMES[expected]}, "
                f"got {value!r}"
            )
        check = _CHECKS.get((name, key))
        problem = check(value) if check else None
        if problem:
            raise ConfigError(f"{source}: [{name}].{key}: {problem}")
        values[key] = value
    return cls(**values)


def load_config(home: Path) -> NodeConfig:
    path = home / CONFIG_FILE
    raw = read_limited(path, CONFIG_BYTES_MAX, ConfigError, "config file",
                       missing_hint=" (run `healthnode init` first)")
    return config_from_bytes(raw, str(path))


def config_from_bytes(raw: bytes, source: str) -> NodeConfig:
    """`parse_config` of a file's bytes, which must be UTF-8; errors name `source`."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{source}: not UTF-8 text") from None
    return parse_config(text, source)


def write_config(config: NodeConfig, home: Path) -> Path:
    path = home / CONFIG_FILE
    # Validate what we write by parsing it back: a generated config must load.
    text = config.to_toml()
    parse_config(text, str(path))
    write_private(path, text.encode("utf-8"))
    return path


def load_genesis(path: Path) -> Genesis:
    """The genesis in the JSON file at `path`; GenesisError naming the file and the problem."""
    raw = read_limited(path, limits.GENESIS_BYTES_MAX, GenesisError, "genesis file")
    return genesis_from_bytes(raw, str(path))


def load_genesis_draft(path: Path) -> GenesisDraft:
    """The genesis draft in the JSON file at `path`, which may hold no authority yet
    (`healthnode genesis`); GenesisError naming the file and the problem."""
    raw = read_limited(path, limits.GENESIS_BYTES_MAX, GenesisError, "genesis file")
    return draft_from_bytes(raw, str(path))


def write_genesis(genesis: Genesis, path: Path) -> None:
    write_private(path, genesis_text(genesis).encode("utf-8"))
