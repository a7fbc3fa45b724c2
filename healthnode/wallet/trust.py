"""What a wallet believes, and from where: the network's genesis, pinned once, and the light
client's trusted head, both kept beside the key file (`KEY.pin.json`).

The genesis is given once, as a file or as its hash (docs/wallet.md, "Pinning the network"):
from it come the chain id the wallet signs for and the first authority set. Every answer that the
wallet acts on is then checked against headers that the light client (ledger/light.py) takes from
that genesis, never against a node's word. The trusted head moves up with each checked answer and
is written back, so a wallet never again believes a state older than one it has seen checked.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from healthnode.config import load_genesis
from healthnode.errors import GenesisError, HealthnodeError
from healthnode.files import read_limited
from healthnode.ledger import light
from healthnode.protocol.genesis import Genesis

PIN_SUFFIX: Final = ".pin.json"
PIN_FORMAT: Final = 1
PIN_BYTES_MAX: Final = 1024 * 1024  # a genesis of 64 authorities, and the trusted head
# How old the newest certified header that a node serves may be. A network makes a block at
# least every 5 s (its heartbeat); two minutes also covers a few failed rounds. Older: the node
# is behind, cut off, or hiding something newer (a revocation).
FRESH_MS_DEFAULT: Final = 120_000


class PinError(HealthnodeError):
    """No pin, a pin of another network, or a pin file that does not hold up."""


def pin_path(key_file: Path) -> Path:
    return key_file.with_name(key_file.name + PIN_SUFFIX)


@dataclass
class Pin:
    """The pinned genesis and the trusted head; `path` None: kept in memory only."""

    genesis: Genesis
    trusted: light.TrustedHead
    path: Path | None = None

    @classmethod
    def of(cls, genesis: Genesis, path: Path | None = None) -> Pin:
        return cls(genesis, light.from_genesis(genesis), path)

    @property
    def chain_id(self) -> str:
        return self.genesis.chain_id

    def moved_to(self, trusted: light.TrustedHead) -> None:
        """Take a newer trusted head, and keep it on disk unless another command of this
        wallet already kept a newer one."""
        if trusted.height <= self.trusted.height:
            return
        self.trusted = trusted
        if self.path is None:
            return
        with contextlib.suppress(PinError, OSError):
            on_disk = load_pin(self.path)
            if on_disk is not None and on_disk.trusted.height >= trusted.height:
                return
        save_pin(self)


def parse_genesis_argument(text: str) -> Genesis | bytes:
    """`--genesis`: a genesis file, or the genesis hash (64 hex digits) that a hospital gives
    its patients."""
    if len(text) == 64 and all(c in "0123456789abcdefABCDEF" for c in text):
        return bytes.fromhex(text)
    path = Path(text)
    if not path.is_file():
        raise PinError(f"--genesis {text[:80]!r}: neither a genesis file nor a genesis hash "
                       "(64 hex digits)")
    try:
        return load_genesis(path)
    except GenesisError as error:
        raise PinError(f"--genesis: {error}") from None


def _trusted_json(trusted: light.TrustedHead) -> dict[str, Any]:
    return {"height": trusted.height, "block_hash": trusted.block_hash.hex(),
            "time_ms": trusted.time_ms, "state_root": trusted.state_root.hex(),
            "authorities": [key.hex() for key in trusted.authorities],
            "next_authorities": [key.hex() for key in trusted.next_authorities]}


def _hex(value: Any, size: int, what: str) -> bytes:
    if not isinstance(value, str) or len(value) != 2 * size:
        raise ValueError(f"{what} is not {size} bytes of hex")
    return bytes.fromhex(value)


def _trusted_from(data: Any, genesis: Genesis) -> light.TrustedHead:
    if not isinstance(data, dict):
        raise ValueError("trusted is not an object")
    height, time_ms = data.get("height"), data.get("time_ms")
    if not isinstance(height, int) or height < 0 or not isinstance(time_ms, int):
        raise ValueError("trusted height or time is not a whole number")
    keys = []
    for field in ("authorities", "next_authorities"):
        items = data.get(field)
        if not isinstance(items, list) or not items or len(items) > 64:
            raise ValueError(f"trusted {field} is not a list of 1 to 64 keys")
        keys.append(tuple(_hex(item, 32, field) for item in items))
    return light.TrustedHead(genesis.chain_id, genesis.hash, height,
                             _hex(data.get("block_hash"), 32, "block_hash"), time_ms,
                             _hex(data.get("state_root"), 32, "state_root"), keys[0], keys[1])


def load_pin(path: Path) -> Pin | None:
    """The pin kept at `path`, None if there is none; PinError if it does not hold up."""
    if not path.exists():
        return None
    raw = read_limited(path, PIN_BYTES_MAX, PinError, "pin file")
    try:
        data = json.loads(raw)
        if not isinstance(data, dict) or data.get("format") != PIN_FORMAT:
            raise ValueError(f"not a pin of format {PIN_FORMAT}")
        genesis = Genesis.from_json(data.get("genesis"), source=f"{path} genesis")
        if genesis.hash.hex() != data.get("genesis_hash"):
            raise ValueError("its genesis does not hash to its genesis_hash")
        trusted = _trusted_from(data.get("trusted"), genesis)
    except (ValueError, GenesisError) as error:  # JSONDecodeError is a ValueError
        raise PinError(f"{path}: {error}; remove it and pin the network again with "
                       f"--genesis") from None
    return Pin(genesis, trusted, path)


def save_pin(pin: Pin) -> None:
    """Write the pin at its path, atomically, readable by its owner only."""
    assert pin.path is not None, "a pin kept in memory is not saved"
    document = {"format": PIN_FORMAT, "genesis_hash": pin.genesis.hash.hex(),
                "genesis": pin.genesis.to_json(), "trusted": _trusted_json(pin.trusted)}
    directory = pin.path.parent
    fd, temporary = tempfile.mkstemp(prefix=pin.path.name, suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(document, handle, indent=1)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, pin.path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def pin_for(key_file: Path, given: Genesis | bytes | None) -> Pin | bytes:
    """The wallet's pin for `key_file`: the one kept beside it (which `given`, if any, must
    match), or a new one from a given genesis file. A genesis hash alone, with no pin kept yet,
    comes back as it is: the caller takes the genesis from a node and checks it against it."""
    path = pin_path(key_file)
    kept = load_pin(path)
    if kept is not None:
        wanted = given.hash if isinstance(given, Genesis) else given
        if wanted is not None and wanted != kept.genesis.hash:
            raise PinError(f"{key_file} is pinned to the network of genesis "
                           f"{kept.genesis.hash.hex()} ({kept.chain_id}), not {wanted.hex()}; "
                           f"a key serves one network")
        return kept
    if given is None:
        raise PinError(f"{key_file} is not pinned to a network yet: give --genesis once, the "
                       f"network's genesis file or its hash (from your hospital)")
    if isinstance(given, bytes):
        return given
    pin = Pin.of(given, path)
    save_pin(pin)
    return pin


def pin_fetched(key_file: Path, genesis_hash: bytes, genesis: Genesis) -> Pin:
    """Pin a genesis that a node served for a hash the user gave: it must hash to it."""
    if genesis.hash != genesis_hash:
        raise PinError(f"the node served a genesis that hashes to {genesis.hash.hex()}, not the "
                       f"{genesis_hash.hex()} given")
    try:
        genesis.validate()
    except GenesisError as error:
        raise PinError(f"the genesis served: {error}") from None
    pin = Pin.of(genesis, pin_path(key_file))
    save_pin(pin)
    return pin


__all__ = ["FRESH_MS_DEFAULT", "Pin", "PinError", "parse_genesis_argument", "pin_fetched",
           "pin_for", "pin_path"]
