"""What a wallet believes, and from where: the network's genesis, pinned once, and the light
client's trusted head, both kept beside the key file (`KEY.pin.json`).

The genesis is given once, as a file or as its hash (docs/wallet.md, "Pinning the network"):
from it come the chain id the wallet signs for and the first authority set. Every answer that the
wallet acts on is then checked against headers that the light client (ledger/light.py) takes from
that genesis, never against a node's word. The trusted head moves up with each checked answer and
is written back; so is the height of the wallet's newest final transaction (`floor`), below which
no state is believed again: a revocation the wallet made is never hidden by an older state.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from healthnode import limits
from healthnode.errors import GenesisError, HealthnodeError
from healthnode.home.config import load_genesis
from healthnode.home.files import read_limited
from healthnode.ledger import light
from healthnode.protocol.genesis import Genesis

PIN_SUFFIX: Final = ".pin.json"
PIN_FORMAT: Final = 1
PIN_BYTES_MAX: Final = 1024 * 1024  # a genesis of 64 authorities, and the trusted head
# How old the newest certified header that a node serves may be. A network makes a block at
# least every 5 s (its heartbeat); two minutes also covers a few failed rounds. Older: the node
# is behind, cut off, or hiding something newer (a revocation).
FRESH_MS_DEFAULT: Final = 120_000


# A transaction in flight that no node shows after this long is taken to be dropped (a mempool
# keeps nothing for ten minutes); until then no state without it is believed.
PENDING_TTL_MS: Final = 10 * 60 * 1000


@dataclass(frozen=True, slots=True)
class Pending:
    """This wallet's transaction in flight: submitted, not yet seen final."""

    nonce: int
    tx_hash: bytes
    since_ms: int


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
    # The height of this wallet's newest final transaction: no state from below it is believed
    # (a revocation the wallet made is never hidden by a state from before it).
    floor: int = 0
    pending: Pending | None = None
    settled_nonce: int = 0  # the highest nonce of this wallet seen final

    @classmethod
    def of(cls, genesis: Genesis, path: Path | None = None) -> Pin:
        return cls(genesis, light.from_genesis(genesis), path)

    @property
    def chain_id(self) -> str:
        return self.genesis.chain_id

    def moved_to(self, trusted: light.TrustedHead) -> None:
        """Take a newer trusted head, and keep it on disk (with the higher floor of this pin's
        and the one on disk: another command of this wallet may have written since)."""
        if trusted.height <= self.trusted.height:
            return
        self.trusted = trusted
        self._keep()

    def set_pending(self, pending: Pending) -> None:
        """A transaction of this wallet is about to be submitted."""
        self.pending = pending
        self._keep()

    def settled(self, nonce: int, height: int) -> None:
        """This wallet's transaction of `nonce` is final at `height`: no state from below it is
        believed again, and it is in flight no more."""
        self.settled_nonce = max(self.settled_nonce, nonce)
        self.floor = max(self.floor, height)
        self._keep()

    def refused(self, nonce: int) -> None:
        """The node refused this wallet's transaction of `nonce`: it is not in flight."""
        if self.pending is not None and self.pending.nonce == nonce:
            self.pending = None
        self._keep(refused_nonce=nonce)

    def pending_now(self, now_ms: int) -> Pending | None:
        """The transaction in flight, unless it is older than PENDING_TTL_MS (dropped)."""
        if self.pending is not None and now_ms - self.pending.since_ms > PENDING_TTL_MS:
            return None
        return self.pending

    def _keep(self, refused_nonce: int | None = None) -> None:
        """Write the pin, merged with what another command of this wallet may have written
        since: the higher head, the higher floor, the newer transaction in flight. Under a lock,
        so that two commands cannot undo each other's writes."""
        if self.path is None:
            return
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            with contextlib.suppress(PinError, OSError):
                on_disk = load_pin(self.path)
                if on_disk is not None:
                    self.floor = max(self.floor, on_disk.floor)
                    self.settled_nonce = max(self.settled_nonce, on_disk.settled_nonce)
                    if on_disk.trusted.height > self.trusted.height:
                        self.trusted = on_disk.trusted
                    if on_disk.pending is not None and (
                            self.pending is None or on_disk.pending.nonce > self.pending.nonce):
                        self.pending = on_disk.pending
            if self.pending is not None and (self.pending.nonce <= self.settled_nonce
                                             or self.pending.nonce == refused_nonce):
                self.pending = None
            save_pin(self)
        finally:
            os.close(fd)  # releases the lock


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


def _keys_from(data: Any, what: str) -> tuple[bytes, ...]:
    if not isinstance(data, list) or not 1 <= len(data) <= limits.AUTHORITIES_MAX:
        raise ValueError(f"trusted {what} is not a list of 1 to {limits.AUTHORITIES_MAX} keys")
    keys = tuple(_hex(item, 32, what) for item in data)
    if len(set(keys)) != len(keys):
        raise ValueError(f"trusted {what} names a key twice")
    return keys


def _whole(value: Any, what: str) -> int:
    if type(value) is not int or value < 0:
        raise ValueError(f"{what} is not a whole number")
    return value


def _pending_from(data: Any) -> Pending | None:
    if data is None:
        return None
    if not isinstance(data, dict):
        raise ValueError("pending is not an object")
    return Pending(_whole(data.get("nonce"), "pending nonce"),
                   _hex(data.get("tx_hash"), 32, "pending tx_hash"),
                   _whole(data.get("since_ms"), "pending since_ms"))


def _trusted_json(trusted: light.TrustedHead) -> dict[str, Any]:
    return {"height": trusted.height, "block_hash": trusted.block_hash.hex(),
            "time_ms": trusted.time_ms, "state_root": trusted.state_root.hex(),
            "authorities": [key.hex() for key in trusted.authorities],
            "next_authorities": [key.hex() for key in trusted.next_authorities]}


def _hex(value: Any, size: int, what: str) -> bytes:
    raw = bytes.fromhex(value) if isinstance(value, str) else b""
    if len(raw) != size:  # counted after: bytes.fromhex skips spaces (found by fuzzing)
        raise ValueError(f"{what} is not {size} bytes of hex")
    return raw


def _trusted_from(data: Any, genesis: Genesis) -> light.TrustedHead:
    if not isinstance(data, dict):
        raise ValueError("trusted is not an object")
    return light.TrustedHead(
        genesis.chain_id, genesis.hash, _whole(data.get("height"), "trusted height"),
        _hex(data.get("block_hash"), 32, "block_hash"), _whole(data.get("time_ms"), "time_ms"),
        _hex(data.get("state_root"), 32, "state_root"),
        _keys_from(data.get("authorities"), "authorities"),
        _keys_from(data.get("next_authorities"), "next_authorities"))


def load_pin(path: Path) -> Pin | None:
    """The pin kept at `path`, None if there is none; PinError if it does not hold up."""
    if not path.exists():
        return None
    return pin_from_bytes(read_limited(path, PIN_BYTES_MAX, PinError, "pin file"), path)


def pin_from_bytes(raw: bytes, path: Path) -> Pin:
    """The pin in the bytes of the pin file at `path`; PinError if it does not hold up."""
    try:
        data = json.loads(raw)
        if not isinstance(data, dict) or data.get("format") != PIN_FORMAT:
            raise ValueError(f"not a pin of format {PIN_FORMAT}")
        genesis = Genesis.from_json(data.get("genesis"), source=f"{path} genesis")
        if genesis.hash.hex() != data.get("genesis_hash"):
            raise ValueError("its genesis does not hash to its genesis_hash")
        trusted = _trusted_from(data.get("trusted"), genesis)
        floor = _whole(data.get("floor", 0), "floor")
        settled = _whole(data.get("settled_nonce", 0), "settled_nonce")
        pending = _pending_from(data.get("pending"))
    except (ValueError, GenesisError, RecursionError) as error:  # JSON errors are ValueErrors
        raise PinError(f"{path}: {str(error)[:200]}; remove it and pin the network again "
                       f"with --genesis") from None
    return Pin(genesis, trusted, path, floor, pending, settled)


def pin_json(pin: Pin) -> dict[str, Any]:
    """The pin file's document (what `save_pin` writes and `pin_from_bytes` reads back)."""
    return {"format": PIN_FORMAT, "genesis_hash": pin.genesis.hash.hex(),
            "genesis": pin.genesis.to_json(), "trusted": _trusted_json(pin.trusted),
            "floor": pin.floor, "settled_nonce": pin.settled_nonce,
            "pending": None if pin.pending is None else {
                "nonce": pin.pending.nonce, "tx_hash": pin.pending.tx_hash.hex(),
                "since_ms": pin.pending.since_ms}}


def save_pin(pin: Pin) -> None:
    """Write the pin at its path, atomically, readable by its owner only."""
    assert pin.path is not None, "a pin kept in memory is not saved"
    document = pin_json(pin)
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


__all__ = ["FRESH_MS_DEFAULT", "Pending", "Pin", "PinError", "parse_genesis_argument",
           "pin_fetched", "pin_for", "pin_path"]
