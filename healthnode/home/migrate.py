"""`healthnode migrate --home H`: take a stopped node's chain store to this release's format,
after a backup (docs/operations.md, "Upgrading a node").

Every release reads one store format (`store.leveldb.STORE_FORMAT`) and refuses any other with an
error that names this command. A migration is a list of steps, each from one format to the next,
run in order; the format number is written after each step, synced, so a migration cut short
resumes at the step it stopped in (each step may be run again). Before the first step, the whole
store is backed up (`home/backup.write_backup`: a verified copy that `init --restore` takes), so a
migration that goes wrong costs a restore, never the chain.

The steps:
- 1 → 2: the store gains its format number. Nothing else differs between formats 1 and 2; the
  step exists so that the stores written before numbers existed can be named and moved on.
- 2 → 3: ciphertexts move out of LevelDB into files of their own (store/blob_files.py), and the
  LevelDB store is rewritten without them, so that the ciphertexts of records erased before the
  migration leave the disk too (a LevelDB delete never promised that).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from healthnode import logs
from healthnode.errors import HomeError
from healthnode.home import config, keys
from healthnode.home.backup import write_backup
from healthnode.home.modes import private_umask

if TYPE_CHECKING:
    from healthnode.protocol.genesis import Genesis
    from healthnode.store.leveldb import ChainStore

log = logs.get_logger("healthnode.migrate")


def _number_the_format(_store: ChainStore) -> None:
    """1 → 2: nothing to change but the format number, which `migrate` writes after each step."""


def _ciphertexts_to_files(store: ChainStore) -> None:
    """2 → 3: the ciphertexts become files, and the store is rewritten without them."""
    moved = store.move_blobs_to_files()
    log.info("migrate_ciphertexts_moved", ciphertexts=moved)


def _keep_set_changes(store: ChainStore) -> None:
    """3 → 4: the certified heads where the authority set changed, proven by a replay."""
    kept = store.keep_set_changes_by_replay()
    log.info("migrate_set_changes_kept", changes=kept)


# From each format, the step to the next.
STEPS: Final[dict[int, Callable[[ChainStore], None]]] = {1: _number_the_format,
                                                         2: _ciphertexts_to_files,
                                                         3: _keep_set_changes}


@dataclass(frozen=True, slots=True)
class Migrated:
    from_format: int
    to_format: int
    height: int
    backup: Path | None  # None: nothing to migrate, so no backup was taken

    def to_json(self) -> dict[str, object]:
        return {"from_format": self.from_format, "to_format": self.to_format,
                "height": self.height, "backup": None if self.backup is None else str(self.backup)}


def _new_backup_dir(home: Path, found: int) -> Path:
    """HOME/backups/pre-migrate-format<N>-<time>, with a count when that name is taken."""
    stem = f"pre-migrate-format{found}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}"
    candidate, count = home / "backups" / stem, 1
    while candidate.exists():
        count += 1
        candidate = home / "backups" / f"{stem}-{count}"
    return candidate


def migrate_home(home: Path, backup: Path | None = None) -> Migrated:
    """Migrate the chain store of the stopped node at `home` (module docstring); the backup goes
    to `backup`, or to `home/backups/pre-migrate-format<N>-<time>`. The home's node key may be
    clear, sealed or its public half: only its public key goes into the backup's manifest."""
    node_config = config.load_config(home)
    genesis = config.load_genesis(home / config.GENESIS_FILE)
    node_key = keys.read_node_public_key(home / config.KEY_FILE)
    chain = home / node_config.node.data_dir / "chain"
    if not chain.is_dir():
        raise HomeError(f"{chain}: no chain store to migrate")
    with private_umask():  # the backup and the store's new files stay the node user's alone
        return _migrate_store(home, chain, genesis, node_key, backup)


def _migrate_store(home: Path, chain: Path, genesis: Genesis, node_key: bytes,
                   backup: Path | None) -> Migrated:
    from healthnode.store.leveldb import STORE_FORMAT, ChainStore, StoreFormatError  # noqa: PLC0415 (plyvel: only this command)

    with ChainStore.open(chain, genesis, any_format=True) as store:
        found = store.format
        if found > STORE_FORMAT:
            raise StoreFormatError(f"{chain}: format {found} was written by a newer release; "
                                   f"this release migrates up to format {STORE_FORMAT}")
        if found == STORE_FORMAT:
            return Migrated(found, found, store.head.height, None)
        destination = backup or _new_backup_dir(home, found)
        if destination.exists() and (not destination.is_dir() or any(destination.iterdir())):
            raise HomeError(f"--backup {destination}: exists and is not an empty directory "
                            "(a backup goes into a new one; nothing was changed)")
        destination.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_backup(store, home, genesis, node_key, destination)
        log.info("migrate_backup_written", dir=str(destination), format=found,
                 height=store.head.height)
        for step_from in range(found, STORE_FORMAT):
            STEPS[step_from](store)
            store.set_format(step_from + 1)
            log.info("migrate_step_done", from_format=step_from, to_format=step_from + 1)
        height = store.head.height
    ChainStore.open(chain, genesis).close()  # as the node will: this release's format, verified
    return Migrated(found, STORE_FORMAT, height, destination)
