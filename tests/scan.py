"""Searching a node's files for bytes that must not be there (an erased ciphertext)."""

from __future__ import annotations

from pathlib import Path


def slices_of(data: bytes, count: int = 64, width: int = 32) -> list[bytes]:
    """`count` slices of `width` bytes of `data`, at evenly spread offsets."""
    step = len(data) // count
    return [data[at:at + width] for at in range(0, step * count, step)]


def hits(root: Path, slices: list[bytes]) -> dict[str, int]:
    """Every file under `root` that holds any of `slices`, with how many of them it holds."""
    found = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.is_symlink():
            continue
        data = path.read_bytes()
        count = sum(1 for piece in slices if piece in data)
        if count:
            found[str(path.relative_to(root))] = count
    return found
