"""Node homes: `healthnode testnet` (a whole network's genesis and homes) and `healthnode init`.

A home holds what one hospital's node needs and nothing another hospital has:

    <home>/node_key.json   the node's Ed25519 identity (mode 0600) = libp2p identity = validator key
    <home>/genesis.json    the network's genesis (identical on every node; its hash is checked)
    <home>/config.toml     where this node listens and whom it dials (healthnode/config.py)
    <home>/data/           LevelDB and blobs, created by the daemon

`testnet` deals every node key itself, which is fine for a test network on one machine. A real
network is made with `init` on each hospital's machine: every node makes its own key, the public
keys are collected into one genesis, and the genesis is copied to every node
(docs/operations.md).

A backup (the admin method `backup`) is a directory that `init --restore` turns into a home again:

    <backup>/backup.json   the manifest, written last: chain id, genesis hash, the head copied, ...
    <backup>/chain/        a LevelDB copy of the chain store without its double-sign guard
    <backup>/genesis.json  <backup>/config.toml

It never holds the node key (that stays in the operator's key custody), and a restored store is
marked `restored`, which makes the daemon hold its signatures until it has synced past what the
network finalized (node/restore.py).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

from healthnode import clock, config, crypto, keys, limits
from healthnode.config import load_genesis, write_genesis
from healthnode.crypto import threshold
from healthnode.errors import GenesisError, HomeError, StoreError
from healthnode.files import read_limited
from healthnode.protocol.genesis import (
    DEFAULT_PARAMS,
    Authority,
    EmergencyKey,
    Genesis,
    ShareCommitment,
)

DEFAULT_BASE_PORT = 26600
METRICS_PORT_OFFSET = 100  # metrics of node i listen on base_port + 100 + i
DEFAULT_CHAIN_ID = "healthnode-testnet"
NODES_MAX = 64


@dataclass(frozen=True, slots=True)
class NodeHome:
    path: Path
    name: str
    public_key: bytes

    @property
    def peer_id(self) -> str:
        return crypto.peer_id(self.public_key)

    def describe(self) -> dict[str, str]:
        return {"home": str(self.path), "name": self.name,
                "public_key": self.public_key.hex(), "peer_id": self.peer_id}


def make_testnet(nodes: int, out: Path, base_port: int = DEFAULT_BASE_PORT,
                 hosts: str | None = None, chain_id: str = DEFAULT_CHAIN_ID,
                 now_ms: int | None = None) -> tuple[Genesis, list[NodeHome]]:
    """Write `out/genesis.json` and `out/node{i}/` homes for `nodes` authorities.

    Without `hosts`, node i listens on 127.0.0.1:`base_port + i`. With a template such as
    "node{i}", every node listens on 0.0.0.0:`base_port` and dials the others by host name
    (a compose network)."""
    if not 1 <= nodes <= NODES_MAX:
        raise HomeError(f"--nodes must be within 1..{NODES_MAX}, got {nodes}")
    if hosts is not None and "{i}" not in hosts:
        raise HomeError(f"--hosts template {hosts!r} must contain {{i}}")
    last_port = base_port + (0 if hosts else nodes - 1) + METRICS_PORT_OFFSET
    if base_port < 1024 or last_port > 65535:
        raise HomeError(f"--base-port {base_port} leaves ports outside 1024..65535")
    if (out / config.GENESIS_FILE).exists():
        raise HomeError(f"{out} already holds a testnet; choose another --out or remove it")
    out.mkdir(parents=True, exist_ok=True)
    identities = [crypto.Identity.generate() for _ in range(nodes)]
    names = [f"node{i}" for i in range(nodes)]
    # The break-glass key: dealt here, each share written to its authority's home only, and the
    # secret never kept (docs/break-glass.md gives the procedure for real hospitals).
    dealing = threshold.deal(threshold.quorum_threshold(nodes), nodes)
    emergency = EmergencyKey(dealing.public_key, dealing.threshold, tuple(
        ShareCommitment(identity.public_key, index + 1, commitment)
        for index, (identity, commitment) in enumerate(zip(identities, dealing.commitments,
                                                            strict=True))))
    genesis = Genesis(
        chain_id=chain_id,
        genesis_time_ms=now_ms if now_ms is not None else clock.now_ms(),
        authorities=tuple(
            Authority(name=name, public_key=identity.public_key)
            for name, identity in zip(names, identities, strict=True)
        ),
        params=DEFAULT_PARAMS,
        emergency=emergency,
    )
    try:
        genesis.validate()
    except GenesisError as error:
        raise HomeError(str(error)) from None
    write_genesis(genesis, out / config.GENESIS_FILE)

    def dial_address(i: int) -> str:
        peer = crypto.peer_id(identities[i].public_key)
        if hosts is not None:
            return f"/dns4/{hosts.format(i=i)}/tcp/{base_port}/p2p/{peer}"
        return f"/ip4/127.0.0.1/tcp/{base_port + i}/p2p/{peer}"

    homes = []
    for i, (name, identity) in enumerate(zip(names, identities, strict=True)):
        home = out / name
        home.mkdir()
        keys.write_private_file(home / config.KEY_FILE,
                                keys.encode_key_file("node", identity, None))
        keys.write_private_file(home / config.EMERGENCY_SHARE_FILE,
                                keys.encode_emergency_share(i + 1, dealing.shares[i]))
        write_genesis(genesis, home / config.GENESIS_FILE)
        if hosts is not None:
            listen, metrics = f"/ip4/0.0.0.0/tcp/{base_port}", f"0.0.0.0:{base_port + 100}"
        else:
            listen = f"/ip4/127.0.0.1/tcp/{base_port + i}"
            metrics = f"127.0.0.1:{base_port + METRICS_PORT_OFFSET + i}"
        node_config = config.NodeConfig(
            node=config.NodeSection(name=name),
            p2p=replace(config.P2PSection(), listen=(listen,),
                        peers=tuple(dial_address(j) for j in range(nodes) if j != i)),
            metrics=config.MetricsSection(listen=metrics),
        )
        config.write_config(node_config, home)
        homes.append(NodeHome(home, name, identity.public_key))
    return genesis, homes


def init_home(home: Path, genesis_path: Path) -> NodeHome:
    """Prepare one node's home: a new node key (kept if present), the genesis, a default config.

    Refuses a home that already has a different genesis: a node cannot silently change networks."""
    genesis = load_genesis(genesis_path)
    home.mkdir(parents=True, exist_ok=True)
    home_genesis = home / config.GENESIS_FILE
    if home_genesis.exists():
        existing = load_genesis(home_genesis)
        if existing.hash != genesis.hash:
            raise HomeError(f"{home} already belongs to chain {existing.chain_id!r} "
                            f"with another genesis; refusing to replace it")
    else:
        write_genesis(genesis, home_genesis)
    key_path = home / config.KEY_FILE
    if key_path.exists():
        identity = keys.load_identity(key_path, expected_kind="node")
    else:
        identity = keys.create_key_file(key_path, "node", None)
    names = {a.public_key: a.name for a in genesis.authorities}
    name = names.get(identity.public_key, "observer")
    if not (home / config.CONFIG_FILE).exists():
        config.write_config(config.NodeConfig(node=config.NodeSection(name=name)), home)
    else:
        config.load_config(home)  # an existing config must still be valid
    return NodeHome(home, name, identity.public_key)


# --- backup and restore ----------------------------------------------------------------------

BACKUP_MANIFEST: Final = "backup.json"
BACKUP_FORMAT: Final = 1
BACKUP_CHAIN: Final = "chain"
BACKUP_MANIFEST_BYTES_MAX: Final = 64 * 1024  # a few hundred bytes of JSON in practice
# The chain store guard that marks a restored store (node/restore.py reads and removes it).
RESTORED_GUARD: Final = b"restored"


@dataclass(frozen=True, slots=True)
class BackupManifest:
    """`backup.json`: what a backup holds, checked again by `restore_home`."""

    chain_id: str
    genesis_hash: bytes
    height: int  # the head at the snapshot
    head_hash: bytes
    created_ms: int
    node_public_key: bytes  # the node whose store this is: restore needs its key
    keys: int  # LevelDB keys copied

    def to_json(self) -> dict[str, Any]:
        return {"format": BACKUP_FORMAT, "chain_id": self.chain_id,
                "genesis_hash": self.genesis_hash.hex(), "height": self.height,
                "head_hash": self.head_hash.hex(), "created_ms": self.created_ms,
                "node_public_key": self.node_public_key.hex(), "keys": self.keys}

    @classmethod
    def from_json(cls, document: Any, source: Path) -> BackupManifest:
        if not isinstance(document, dict) or document.get("format") != BACKUP_FORMAT:
            raise HomeError(f"{source}: not a healthnode backup manifest (format {BACKUP_FORMAT})")

        def field(name: str, kind: type, hex_bytes: int | None = None) -> Any:
            value = document.get(name)
            if type(value) is not kind:
                raise HomeError(f"{source}: field {name!r} is missing or not a {kind.__name__}")
            if hex_bytes is None:
                return value
            try:
                raw = bytes.fromhex(value) if isinstance(value, str) else b""
            except ValueError:
                raw = b""
            if len(raw) != hex_bytes:
                raise HomeError(f"{source}: field {name!r} is not {hex_bytes} bytes of hex")
            return raw

        manifest = cls(field("chain_id", str), field("genesis_hash", str, 32),
                       field("height", int), field("head_hash", str, 32),
                       field("created_ms", int), field("node_public_key", str, 32),
                       field("keys", int))
        if manifest.height < 0 or manifest.keys < 0:
            raise HomeError(f"{source}: negative height or key count")
        return manifest


def read_backup_manifest(backup: Path) -> BackupManifest:
    path = backup / BACKUP_MANIFEST
    raw = read_limited(path, BACKUP_MANIFEST_BYTES_MAX, HomeError, "backup manifest",
                       " (not a healthnode backup, or one that did not finish)")
    try:
        document = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise HomeError(f"{path}: not JSON (a damaged backup manifest)") from None
    return BackupManifest.from_json(document, path)


def write_backup_manifest(backup: Path, manifest: BackupManifest) -> None:
    """Write the manifest last and durably: a backup without one is unfinished."""
    temporary = backup / (BACKUP_MANIFEST + ".tmp")
    with temporary.open("w") as handle:
        json.dump(manifest.to_json(), handle, indent=2)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    temporary.rename(backup / BACKUP_MANIFEST)
    directory = os.open(backup, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


@dataclass(frozen=True, slots=True)
class RestoreMark:
    """The `restored` guard: this store came from a backup, so its key may have signed at
    heights the store does not remember. `hold_through_height` is None until the node has
    learned the network's finalized height H from its peers; then H + 1."""

    backup_height: int
    restored_ms: int
    hold_through_height: int | None

    def encode(self) -> bytes:
        return json.dumps({"backup_height": self.backup_height, "restored_ms": self.restored_ms,
                           "hold_through_height": self.hold_through_height}).encode()

    @classmethod
    def decode(cls, raw: bytes) -> RestoreMark:
        """A mark read back from the store; StoreError when damaged (the node must not sign)."""
        try:
            document = json.loads(raw)
            mark = cls(document["backup_height"], document["restored_ms"],
                       document["hold_through_height"])
        except (ValueError, TypeError, KeyError):
            raise StoreError("the chain store's restore mark is damaged") from None
        through = mark.hold_through_height
        if type(mark.backup_height) is not int or type(mark.restored_ms) is not int or \
                not (through is None or type(through) is int):
            raise StoreError("the chain store's restore mark is damaged")
        return mark


def restore_home(home: Path, backup: Path, key_file: Path | None) -> tuple[NodeHome,
                                                                          BackupManifest]:
    """Make `home` a node home again from `backup` (the admin method `backup` wrote it).

    Checks the manifest against the backup's genesis, refuses a home that holds anything but
    the node key and that same genesis, takes the node key from `key_file` (or the one already
    in the home) and requires it to be the key of the node the backup came from, copies genesis,
    config and chain in, opens the chain to verify its head against the manifest, and marks the
    store restored. On any failure it removes what it wrote."""
    manifest = read_backup_manifest(backup)
    genesis = load_genesis(backup / config.GENESIS_FILE)
    if genesis.hash != manifest.genesis_hash or genesis.chain_id != manifest.chain_id:
        raise HomeError(f"{backup}: the manifest names genesis {manifest.genesis_hash.hex()[:16]}"
                        f" of {manifest.chain_id!r}, but genesis.json is "
                        f"{genesis.hash.hex()[:16]} of {genesis.chain_id!r}")
    if not (backup / BACKUP_CHAIN).is_dir() or not (backup / config.CONFIG_FILE).is_file():
        raise HomeError(f"{backup}: incomplete backup (chain/ or config.toml is missing)")
    key_path = home / config.KEY_FILE
    if home.exists():
        if not home.is_dir():
            raise HomeError(f"{home}: not a directory")
        others = sorted(set(os.listdir(home)) - {config.KEY_FILE, config.GENESIS_FILE})
        if others:
            raise HomeError(f"{home} is not empty ({', '.join(others[:5])}); restore into a new "
                            f"home (it may hold only the node key and the genesis)")
        home_genesis = home / config.GENESIS_FILE
        if home_genesis.exists() and load_genesis(home_genesis).hash != genesis.hash:
            raise HomeError(f"{home} belongs to another genesis than the backup of chain "
                            f"{manifest.chain_id!r}; refusing to mix networks")
    identity = _restore_identity(key_path, key_file)
    if identity.public_key != manifest.node_public_key:
        raise HomeError(f"the node key {identity.public_key.hex()[:16]} is not the key of the "
                        f"node this backup was taken from ({manifest.node_public_key.hex()[:16]})")
    written: list[Path] = [] if home.exists() else [home]
    home.mkdir(parents=True, exist_ok=True)
    try:
        if not key_path.exists():
            assert key_file is not None
            written.append(key_path)
            keys.write_private_file(key_path, read_limited(
                key_file, limits.KEY_FILE_BYTES_MAX, HomeError, "key file"))
        for name in (config.GENESIS_FILE, config.CONFIG_FILE):
            if not (home / name).exists():  # a genesis already there is the backup's
                written.append(home / name)
                shutil.copyfile(backup / name, home / name)
        node_config = config.load_config(home)
        chain = home / node_config.node.data_dir / BACKUP_CHAIN
        written.append(home / node_config.node.data_dir)
        shutil.copytree(backup / BACKUP_CHAIN, chain)
        _mark_restored(chain, genesis, manifest)
    except BaseException:
        for path in reversed(written):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        raise
    return NodeHome(home, node_config.node.name, identity.public_key), manifest


def _restore_identity(key_path: Path, key_file: Path | None) -> crypto.Identity:
    if key_file is None:
        if not key_path.exists():
            raise HomeError("restore needs the node's key (backups never hold it): pass "
                            "--key NODE_KEY_FILE or put it in the home first")
        return keys.load_identity(key_path, expected_kind="node")
    identity = keys.load_identity(key_file, expected_kind="node")
    if key_path.exists() and \
            keys.load_identity(key_path, expected_kind="node").public_key != identity.public_key:
        raise HomeError(f"{key_path} holds another node key than {key_file}")
    return identity


def _mark_restored(chain: Path, genesis: Genesis, manifest: BackupManifest) -> None:
    # The store module imports plyvel; `keys` and `testnet` should not pay for it.
    from healthnode.store.leveldb import ChainStore  # noqa: PLC0415

    try:
        with ChainStore.open(chain, genesis) as store:
            head = store.head
            if (head.height, head.block_hash) != (manifest.height, manifest.head_hash):
                raise HomeError(f"the restored chain's head is {head.height} "
                                f"{head.block_hash.hex()[:16]}, the manifest says "
                                f"{manifest.height} {manifest.head_hash.hex()[:16]}")
            mark = RestoreMark(manifest.height, clock.now_ms(), None)
            store.write_guard(RESTORED_GUARD, mark.encode())
    except StoreError as error:
        raise HomeError(f"the backup's chain does not verify: {error}") from None


def testnet_summary(genesis: Genesis, homes: list[NodeHome], out: Path) -> str:
    return json.dumps({
        "chain_id": genesis.chain_id,
        "genesis": str(out / config.GENESIS_FILE),
        "genesis_hash": genesis.hash.hex(),
        "nodes": [home.describe() for home in homes],
    }, indent=2)


def free_base_port(count: int, attempts: int = 200) -> int:
    """A base port P such that P..P+count-1 (p2p) and P+100.. (metrics) are free on 127.0.0.1
    right now, for throwaway networks (tests, benchmarks)."""
    chooser = random.SystemRandom()
    for _ in range(attempts):
        # Below Linux's ephemeral range (32768-60999 by default): a port found free there can
        # be taken a moment later as the local end of some outgoing connection.
        base = chooser.randrange(20_000, 32_000, 10)
        ports = [base + i for i in range(count)]
        ports += [base + METRICS_PORT_OFFSET + i for i in range(count)]
        if all(_port_free(port) for port in ports):
            return base
    raise HomeError(f"no free range of {count} ports found on 127.0.0.1")


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
