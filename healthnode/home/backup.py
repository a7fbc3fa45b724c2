"""Backup and restore of a node home.

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
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from healthnode import clock, limits
from healthnode.errors import HomeError, StoreError
from healthnode.home import config, keys
from healthnode.home.config import load_genesis
from healthnode.home.files import read_limited
from healthnode.home.layout import NodeHome
from healthnode.home.modes import make_private_dir, make_tree_private, private_umask
from healthnode.protocol.genesis import Genesis

if TYPE_CHECKING:  # the store is the caller's, open
    from healthnode.store.leveldb import ChainStore

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
    return backup_manifest_from_bytes(raw, path)


def backup_manifest_from_bytes(raw: bytes, source: Path) -> BackupManifest:
    """The manifest in the bytes of `backup.json`; HomeError naming `source` and the problem."""
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError):  # also a number too long for int(), or nesting too deep
        raise HomeError(f"{source}: not JSON (a damaged backup manifest)") from None
    return BackupManifest.from_json(document, source)


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
        except (ValueError, TypeError, KeyError, RecursionError):
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
    public_key = _restore_public_key(key_path, key_file)
    if public_key != manifest.node_public_key:
        raise HomeError(f"the node key {public_key.hex()[:16]} is not the key of the "
                        f"node this backup was taken from ({manifest.node_public_key.hex()[:16]})")
    written: list[Path] = [] if home.exists() else [home]
    try:
        with private_umask():
            make_private_dir(home)
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
            make_tree_private(home / node_config.node.data_dir)  # a copy keeps its source's modes
            _mark_restored(chain, genesis, manifest)
    except BaseException:
        for path in reversed(written):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        raise
    return NodeHome(home, node_config.node.name, public_key), manifest


def _restore_public_key(key_path: Path, key_file: Path | None) -> bytes:
    """The restored node's public key, from `key_file` or the home's key (clear, sealed or its
    public half: keys.py), which must agree when both are there."""
    if key_file is None:
        if not key_path.exists():
            raise HomeError("restore needs the node's key (backups never hold it): pass "
                            "--key NODE_KEY_FILE or put it in the home first")
        return keys.read_node_public_key(key_path)
    public_key = keys.read_node_public_key(key_file)
    if key_path.exists() and keys.read_node_public_key(key_path) != public_key:
        raise HomeError(f"{key_path} holds another node key than {key_file}")
    return public_key


def _mark_restored(chain: Path, genesis: Genesis, manifest: BackupManifest) -> None:
    # The store module imports plyvel; `keys` and `testnet` should not pay for it.
    from healthnode.store.leveldb import ChainStore  # noqa: PLC0415

    try:
        # A backup of an older release restores as it is; the node then asks for `migrate`.
        with ChainStore.open(chain, genesis, any_format=True) as store:
            head = store.head
            if (head.height, head.block_hash) != (manifest.height, manifest.head_hash):
                raise HomeError(f"the restored chain's head is {head.height} "
                                f"{head.block_hash.hex()[:16]}, the manifest says "
                                f"{manifest.height} {manifest.head_hash.hex()[:16]}")
            mark = RestoreMark(manifest.height, clock.now_ms(), None)
            store.write_guard(RESTORED_GUARD, mark.encode())
    except StoreError as error:
        raise HomeError(f"the backup's chain does not verify: {error}") from None


def write_backup(store: ChainStore, home: Path, genesis: Genesis, node_key: bytes,
                 destination: Path,
                 progress: Callable[[int, int], None] | None = None) -> BackupManifest:
    """Write a backup of the node of `home` (its open `store`, its `genesis`, its public
    `node_key`) into `destination` (absent or empty); blocking, for a worker thread. The
    manifest comes last, so a backup cut short has none and `restore` refuses it; on an error
    here everything written is removed."""
    created = not destination.exists()
    try:
        with private_umask():  # its store's files, copies and manifest: 0600, its dirs 0700
            make_private_dir(destination)  # also when it existed empty, whatever the umask
            copy = store.backup(destination / BACKUP_CHAIN, progress)
            for name in (config.GENESIS_FILE, config.CONFIG_FILE):
                shutil.copyfile(home / name, destination / name)
            manifest = BackupManifest(genesis.chain_id, genesis.hash, copy.height,
                                      copy.head_hash, clock.now_ms(), node_key, copy.keys)
            write_backup_manifest(destination, manifest)
    except BaseException:
        if created:
            shutil.rmtree(destination, ignore_errors=True)
        else:
            for child in destination.iterdir():
                if child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
        raise
    return manifest
