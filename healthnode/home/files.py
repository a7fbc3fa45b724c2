"""Reading the small files a node trusts only after checking them (config, genesis, key files),
and writing the ones a home holds."""

from __future__ import annotations

import os
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
