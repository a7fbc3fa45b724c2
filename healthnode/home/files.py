"""Reading the small files a node trusts only after checking them (config, genesis, key files),
and writing the ones a home holds."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from healthnode.errors import HealthnodeError


def read_limited(path: Path, bytes_max: int, error: type[HealthnodeError], what: str,
                 missing_hint: str = "") -> bytes:
    """The bytes of `path`, reading at most `bytes_max + 1` of them; every failure is `error`
    naming the file and the problem."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(bytes_max + 1)
    except FileNotFoundError:
        raise error(f"{path}: no such {what}{missing_hint}") from None
    except OSError as failure:
        raise error(f"{path}: cannot read {what} ({failure.strerror})") from None
    if len(raw) > bytes_max:
        raise error(f"{path}: larger than {bytes_max} bytes, too large for a {what}")
    return raw


def write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` with mode 0600 (home/modes.py), replacing what it held; an existing
    file of a wider mode is tightened too, whatever the process's umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(fd, 0o600)
        handle.write(data)


def create_private(path: Path, data: bytes, error: type[HealthnodeError], hint: str = "") -> None:
    """Create `path` with mode 0600 holding `data`, synced; never replace an existing file
    (`error` naming it, and `hint` after: whoever made it may still need it)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise error(f"{path}: already exists; refusing to overwrite it{hint}") from None
    except OSError as failure:
        raise error(f"{path}: cannot create ({failure.strerror})") from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def replace_private(path: Path, data: bytes, error: type[HealthnodeError]) -> None:
    """Replace the file at `path` by one of mode 0600 holding `data`, at once: it is written
    and synced beside it first, then renamed over it, so a crash or a full disk leaves the
    old file whole rather than a truncated one."""
    try:
        fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as failure:
        raise error(f"{path}: cannot write beside it ({failure.strerror})") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException as failure:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        if isinstance(failure, OSError):
            raise error(f"{path}: cannot write ({failure.strerror})") from None
        raise
