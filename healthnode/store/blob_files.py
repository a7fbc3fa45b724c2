"""Ciphertexts as files: one file per ciphertext, named by its hash, under the node's data
directory (`data/blobs/<first two hex digits>/<hash in hex>`).

Why files and not LevelDB: erasure must take the bytes off the disk. A LevelDB delete writes a
tombstone, and the value stays in the tables until a compaction happens to rewrite them; LevelDB
never rewrites a table at its deepest level for a delete, so an erased record's ciphertext could
stay for good (a test found one there, 3 MB, after `CompactRange` over its key). An unlinked file
is gone from the file system; what the file system does with the freed blocks is its own (docs/
operations.md says what full-disk encryption adds). Ciphertexts are large (up to 16 MiB) and
written once, which suits files better than a log-structured store anyway.

A file is written under a temporary name, synced, renamed into place and its directory synced,
so a crash leaves the whole file or none. Every read checks the bytes against the hash.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from healthnode.crypto import HASH_BYTES, digest
from healthnode.errors import StoreError

TEMPORARY_PREFIX: Final = ".partial-"


class BlobFiles:
    def __init__(self, root: Path) -> None:
        self.root = root  # made with the first ciphertext (a store's backup holds none)

    def path(self, ciphertext_hash: bytes) -> Path:
        name = ciphertext_hash.hex()
        return self.root / name[:2] / name

    def put(self, ciphertext: bytes) -> bytes:
        """Keep `ciphertext` durably (a no-op when it is kept already); its hash."""
        ciphertext_hash = digest(ciphertext)
        final = self.path(ciphertext_hash)
        if final.exists():
            return ciphertext_hash
        self.root.mkdir(mode=0o700, exist_ok=True)
        final.parent.mkdir(mode=0o700, exist_ok=True)
        partial = final.with_name(f"{TEMPORARY_PREFIX}{final.name}-{os.getpid()}")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(ciphertext)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(partial, final)
        sync_directory(final.parent)
        return ciphertext_hash

    def get(self, ciphertext_hash: bytes) -> bytes | None:
        """The ciphertext, checked against its hash; None when it is not kept."""
        try:
            data = self.path(ciphertext_hash).read_bytes()
        except FileNotFoundError:
            return None
        if digest(data) != ciphertext_hash:
            raise StoreError(f"{self.root}: a stored ciphertext is damaged (its bytes do not "
                             f"match its hash)")
        return data

    def has(self, ciphertext_hash: bytes) -> bool:
        return self.path(ciphertext_hash).exists()

    def size(self, ciphertext_hash: bytes) -> int | None:
        try:
            return self.path(ciphertext_hash).stat().st_size
        except FileNotFoundError:
            return None

    def delete(self, ciphertext_hash: bytes) -> None:
        """Unlink the ciphertext's file (and any partial one a crash left), durably."""
        final = self.path(ciphertext_hash)
        if not final.parent.is_dir():
            return
        for leftover in final.parent.glob(f"{TEMPORARY_PREFIX}{final.name}-*"):
            leftover.unlink(missing_ok=True)
        final.unlink(missing_ok=True)
        sync_directory(final.parent)

    def hashes(self) -> Iterator[bytes]:
        """The hash of every ciphertext kept (partial files aside)."""
        if not self.root.is_dir():
            return
        for directory in sorted(self.root.iterdir()):
            if not directory.is_dir():
                continue
            for entry in sorted(directory.iterdir()):
                if entry.name.startswith(TEMPORARY_PREFIX):
                    continue
                try:
                    raw = bytes.fromhex(entry.name)
                except ValueError:
                    continue
                if len(raw) == HASH_BYTES:
                    yield raw

    def remove_partials(self) -> int:
        """Delete what a crash left half written; how many files."""
        removed = 0
        for leftover in self.root.glob(f"*/{TEMPORARY_PREFIX}*"):
            leftover.unlink(missing_ok=True)
            removed += 1
        return removed


def sync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
